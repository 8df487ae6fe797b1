//! The Unix-socket server: accepts every connection at once, learns each
//! peer's credentials from the kernel, and gives it a slot of its class:
//! peers that may admit (the VPN servers' hooks) have their own slots, so
//! no other local user can crowd them out; everyone else shares a smaller
//! pool with a cap per uid. A peer with no slot free is told `busy` and
//! closed at once. Reads one request per line (bounded length, idle
//! timeout), asks the `Service` for the answer and writes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::access::{Peer, Rights};
use super::protocol::{ErrorCode, Response, MAX_LINE};
use crate::sys;

/// An answer's bytes: its own, one rendering shared by many readers, or
/// one still being made (off the runtime thread).
#[derive(Debug)]
pub enum Bytes {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>),
    Pending(watch::Receiver<Option<Arc<Vec<u8>>>>),
}

impl Bytes {
    /// The bytes, once they are made (None: their maker is gone).
    async fn ready(self) -> Option<Bytes> {
        match self {
            Bytes::Pending(mut rx) => {
                let made = rx.wait_for(Option::is_some).await.ok()?.clone();
                made.map(Bytes::Shared)
            }
            done => Some(done),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Shared(a) => a,
            Bytes::Pending(_) => &[],
        }
    }
}

/// One admission instance to undo if its answer cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    pub key: String,
    pub instance: u64,
}

/// The answer to one request line.
#[derive(Debug)]
pub struct Reply {
    pub bytes: Bytes,
    /// Set for an admission not yet delivered to anyone: a hook that
    /// cannot be answered has already given up and refused its client, so
    /// nothing would ever release the seat.
    pub undo: Option<Undo>,
}

/// What the server asks of the daemon.
pub trait Service: Send + Sync + 'static {
    /// What the service remembers about one connection (its peer's server).
    type Conn: Default + Send;
    /// What a peer may do.
    fn rights(&self, peer: &Peer) -> Rights;
    /// Answers one request line. Never panics on input.
    fn handle(
        self: Arc<Self>,
        conn: &mut Self::Conn,
        peer: &Peer,
        rights: Rights,
        line: &[u8],
    ) -> Reply;
    /// Whether the answer carrying `undo` reached the peer's socket.
    fn delivered(self: Arc<Self>, undo: Undo, ok: bool);
}

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Slots for peers that may admit and release (VPN server hooks); one
    /// uid holds at most three quarters of them.
    pub hooks: usize,
    /// Slots shared by every other peer (operators, status readers, strangers).
    pub others: usize,
    /// Of those, the most one uid may hold.
    pub per_uid: usize,
    /// A connection idle this long, or not reading its answer, is closed.
    pub idle: Duration,
    /// Bytes per second of shared answers (status renderings) written to
    /// all peers together: however many read status, writing it never
    /// takes the thread that admits.
    pub shared_bytes_per_sec: u64,
}

/// A token bucket of bytes for shared answers: a writer waits (asleep,
/// costing nothing) until its answer's bytes are in the bucket.
struct Budget {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl Budget {
    fn new(rate: u64) -> Budget {
        let rate = rate.max(1) as f64;
        Budget {
            rate,
            burst: rate / 4.0,
            state: Mutex::new((rate / 4.0, tokio::time::Instant::now())),
        }
    }

    async fn take(&self, bytes: usize) {
        // An answer larger than the burst goes out once the bucket is full.
        let want = (bytes as f64).min(self.burst);
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = tokio::time::Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
                s.1 = now;
                if s.0 >= want {
                    s.0 -= want;
                    return;
                }
                Duration::from_secs_f64((want - s.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// The connection slots of one class of peers, with a cap per uid, taken
/// without waiting.
struct Class {
    slots: Arc<Semaphore>,
    by_uid: Mutex<HashMap<u32, usize>>,
    per_uid: usize,
}

/// A slot held for one connection; frees itself when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    class: Arc<Class>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_uid = self.class.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                by_uid.remove(&self.uid);
            }
        }
    }
}

impl Class {
    fn new(slots: usize, per_uid: usize) -> Arc<Class> {
        Arc::new(Class {
            slots: Arc::new(Semaphore::new(slots)),
            by_uid: Mutex::new(HashMap::new()),
            per_uid: per_uid.max(1),
        })
    }

    fn take(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        let held = by_uid.entry(uid).or_default();
        if *held >= self.per_uid {
            return None;
        }
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        *held += 1;
        Some(Slot {
            _permit: permit,
            class: self.clone(),
            uid,
        })
    }
}

/// Serves until `cancel` fires.
pub async fn serve<S: Service>(
    listener: UnixListener,
    service: Arc<S>,
    limits: Limits,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let budget = Arc::new(Budget::new(limits.shared_bytes_per_sec));
    // Hooks: a quarter of their slots stays free for other VPN-server
    // users than the busiest one. Everyone else: a small pool, a few each.
    let hooks = Class::new(limits.hooks, limits.hooks - limits.hooks / 4);
    let others = Class::new(limits.others, limits.per_uid);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: give the
                    // connections being served a moment to end.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(peer) = peer_of(&stream) else {
            continue;
        };
        let rights = service.rights(&peer);
        let class = if rights.seats { &hooks } else { &others };
        let Some(slot) = class.take(peer.uid) else {
            refuse_busy(stream);
            continue;
        };
        let (service, cancel, budget) = (service.clone(), cancel.clone(), budget.clone());
        let span = tracing::debug_span!("conn", uid = peer.uid, pid = peer.pid);
        tracker.spawn(
            async move {
                let conn = Conn {
                    peer,
                    rights,
                    idle: limits.idle,
                    budget,
                };
                connection(stream, conn, service, cancel).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Tells a peer without a free slot why, without waiting for it.
fn refuse_busy(stream: UnixStream) {
    let bytes = Response::error(
        ErrorCode::Busy,
        "too many connections from this user or class; try again",
    )
    .encode();
    let _ = stream.try_write(&bytes);
}

fn peer_of(stream: &UnixStream) -> Option<Peer> {
    let cred = stream.peer_cred().ok()?;
    let pid = cred.pid().unwrap_or(0);
    // As recorded at connect; /proc only on kernels older than 4.13.
    let groups =
        sys::peer::peer_groups(stream).unwrap_or_else(|| sys::peer::supplementary_groups(pid));
    Some(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid,
        groups,
    })
}

/// What reading one request line can end in.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads up to and excluding the next newline into `buf` (cleared first),
/// refusing to buffer more than `MAX_LINE` bytes.
pub async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let avail = reader.fill_buf().await?;
        if avail.is_empty() {
            return Ok(LineRead::Eof);
        }
        let (chunk, found) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..i], true),
            None => (avail, false),
        };
        if buf.len() + chunk.len() >= MAX_LINE {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(found);
        reader.consume(used);
        if found {
            return Ok(LineRead::Line);
        }
    }
}

/// What one connection knows of its peer and shares with the others.
struct Conn {
    peer: Peer,
    rights: Rights,
    idle: Duration,
    budget: Arc<Budget>,
}

async fn connection<S: Service>(
    stream: UnixStream,
    conn: Conn,
    service: Arc<S>,
    cancel: CancellationToken,
) {
    let Conn {
        peer,
        rights,
        idle,
        budget,
    } = conn;
    let mut remembered = S::Conn::default();
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::with_capacity(MAX_LINE, rd);
    let mut line = Vec::with_capacity(256);
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(idle, read_line_limited(&mut reader, &mut line)) => r,
        };
        let (reply, keep_going) = match read {
            Ok(Ok(LineRead::Line)) => {
                let reply = service
                    .clone()
                    .handle(&mut remembered, &peer, rights, &line);
                (reply, true)
            }
            Ok(Ok(LineRead::Eof)) | Ok(Err(_)) => return,
            Ok(Ok(LineRead::TooLong)) => (
                framing_error(
                    ErrorCode::LineTooLong,
                    format!("request line longer than {MAX_LINE} bytes; closing"),
                ),
                false,
            ),
            Err(_) => (
                framing_error(
                    ErrorCode::Timeout,
                    format!(
                        "no complete request line within {} ms; closing",
                        idle.as_millis()
                    ),
                ),
                false,
            ),
        };
        // A peer that stops reading must not hold its slot (or shutdown)
        // forever: the answer goes out within the idle timeout or not at all.
        let write = async {
            let bytes = reply.bytes.ready().await?;
            if let Bytes::Shared(shared) = &bytes {
                budget.take(shared.len()).await;
            }
            wr.write_all(bytes.as_slice()).await.ok()
        };
        let written = tokio::select! {
            _ = cancel.cancelled() => false,
            r = tokio::time::timeout(idle, write) => matches!(r, Ok(Some(()))),
        };
        if let Some(undo) = reply.undo {
            service.clone().delivered(undo, written);
        }
        if !written {
            return;
        }
        if !keep_going {
            // Closing with unread input would reset the connection and the
            // peer might never read the error: stop writing, then discard
            // what it still sends, bounded in bytes and time.
            let _ = wr.shutdown().await;
            let mut sink = tokio::io::sink();
            let mut rest = (&mut reader).take(1 << 20);
            let drain = tokio::io::copy(&mut rest, &mut sink);
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            return;
        }
    }
}

fn framing_error(code: ErrorCode, message: String) -> Reply {
    Reply {
        bytes: Bytes::Owned(Response::error(code, message).encode()),
        undo: None,
    }
}
