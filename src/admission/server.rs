//! The Unix-socket server: accepts connections up to a cap, checks each
//! peer's credentials, reads one request per line (bounded length, idle
//! timeout) and writes one response per line. Handlers return a Response;
//! only the connection loop writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::access::{Peer, Policy, Rights};
use super::protocol::{
    self, DenyReason, ErrorCode, PongResponse, Request, Response, StatusResponse, MAX_LINE,
};
use super::seats::Seats;
use super::table::ServerId;
use crate::sys;

/// What every connection shares.
pub struct Ctx {
    pub seats: Mutex<Seats>,
    pub policy: Mutex<Policy>,
    pub idle_timeout: Duration,
    pub start_times: StartTimes,
}

/// VPN server start times, remembered for a second so a burst of hook
/// calls from one live server costs one /proc read. A pid that died and was
/// reused within that second by another VPN server would have its new
/// sessions filed under the dead one and freed by the next liveness check:
/// never more seats than the cap, and not worth a /proc read per admission.
#[derive(Default)]
pub struct StartTimes(Mutex<HashMap<u32, (u64, Instant)>>);

const START_TIME_TTL: Duration = Duration::from_secs(1);

impl StartTimes {
    pub fn get(&self, pid: u32) -> Option<u64> {
        let now = Instant::now();
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ticks, at)) = cache.get(&pid) {
            if now.duration_since(*at) < START_TIME_TTL {
                return Some(*ticks);
            }
        }
        let ticks = sys::process_start_ticks(pid)?;
        if cache.len() >= 1024 {
            cache.retain(|_, (_, at)| now.duration_since(*at) < START_TIME_TTL);
        }
        cache.insert(pid, (ticks, now));
        Some(ticks)
    }
}

impl Ctx {
    /// Locks the seats. A panic while holding the lock cannot leave the table
    /// half-changed (every change is one map operation), so a poisoned lock
    /// is taken over rather than taking the daemon down.
    pub fn seats(&self) -> std::sync::MutexGuard<'_, Seats> {
        self.seats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn policy(&self) -> Policy {
        self.policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Serves until `cancel` fires. At most `max_connections` at once; further
/// peers wait in the listen queue.
pub async fn serve(
    listener: UnixListener,
    ctx: Arc<Ctx>,
    max_connections: usize,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        tracker.spawn(async move {
            let peer = peer_of(&stream, &ctx.policy());
            let span = tracing::debug_span!(
                "conn",
                uid = peer.as_ref().map_or(-1, |p| p.uid as i64),
                pid = peer.as_ref().map_or(-1, |p| p.pid)
            );
            connection(stream, peer, ctx, cancel).instrument(span).await;
            drop(permit);
        });
    }
}

fn peer_of(stream: &UnixStream, policy: &Policy) -> Option<Peer> {
    let cred = stream.peer_cred().ok()?;
    let pid = cred.pid().unwrap_or(0);
    let groups = if policy.needs_groups() {
        // As recorded at connect; /proc only on kernels older than 4.13.
        sys::peer_groups(stream).unwrap_or_else(|| sys::supplementary_groups(pid))
    } else {
        Vec::new()
    };
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

async fn connection(
    stream: UnixStream,
    peer: Option<Peer>,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
) {
    let rights = peer
        .as_ref()
        .map_or(Rights::default(), |p| ctx.policy().rights(p));
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::with_capacity(MAX_LINE, rd);
    let mut line = Vec::with_capacity(256);
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(ctx.idle_timeout, read_line_limited(&mut reader, &mut line)) => r,
        };
        let (response, keep_going) = match read {
            Ok(Ok(LineRead::Line)) => (handle(&ctx, rights, &line), true),
            Ok(Ok(LineRead::Eof)) | Ok(Err(_)) => return,
            Ok(Ok(LineRead::TooLong)) => (
                Response::error(
                    ErrorCode::LineTooLong,
                    format!("request line longer than {MAX_LINE} bytes; closing"),
                ),
                false,
            ),
            Err(_) => (
                Response::error(
                    ErrorCode::Timeout,
                    format!(
                        "no complete request line within {} ms; closing",
                        ctx.idle_timeout.as_millis()
                    ),
                ),
                false,
            ),
        };
        // A peer that stops reading must not hold its slot (or shutdown)
        // forever: the answer goes out within the idle timeout or not at all.
        let bytes = response.encode();
        let written = tokio::select! {
            _ = cancel.cancelled() => false,
            r = tokio::time::timeout(ctx.idle_timeout, wr.write_all(&bytes)) => matches!(r, Ok(Ok(()))),
        };
        if !written {
            undo_unanswered_admit(&ctx, &line, &response);
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

/// A hook whose answer cannot be delivered has given up (its deadline
/// passed and it exited) and told its VPN server "rejected"; nothing would
/// ever release a seat admitted for it, so the admission is undone. Seen on
/// a real OpenVPN server with a stalled daemon: the queued admit was served
/// after the hook had already refused the client.
fn undo_unanswered_admit(ctx: &Ctx, line: &[u8], response: &Response) {
    let Response::Admit(answer) = response else {
        return;
    };
    if !answer.admitted || answer.again {
        return;
    }
    if let Ok(Request::Admit(req)) = protocol::decode(line) {
        tracing::warn!(key = %req.key, "the hook left before its admission could be answered (past its deadline); seat released");
        ctx.seats().release(&req.key);
    }
}

/// Decides one request line. Never panics on input.
pub fn handle(ctx: &Ctx, rights: Rights, line: &[u8]) -> Response {
    let request = match protocol::decode(line) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let forbidden = |what: &str| {
        Response::error(
            ErrorCode::Forbidden,
            format!("this user may not {what}; see [admission] in the seatgate config"),
        )
    };
    match request {
        Request::Ping => Response::Pong(PongResponse {
            ok: true,
            pong: true,
            version: env!("CARGO_PKG_VERSION").into(),
        }),
        Request::Admit(_) | Request::Release { .. } if !rights.seats => {
            forbidden("admit or release sessions")
        }
        Request::Status if !rights.read => forbidden("read status"),
        Request::Evict { .. } if !rights.operate => forbidden("evict sessions"),
        Request::Admit(req) => {
            let now = Utc::now();
            // Read /proc outside the lock.
            let Some(start_ticks) = ctx.start_times.get(req.server.pid) else {
                return Response::Admit(ctx.seats().deny(&req, DenyReason::UnknownServer, now));
            };
            let server = ServerId {
                kind: req.server.kind,
                pid: req.server.pid,
                start_ticks,
            };
            Response::Admit(ctx.seats().admit(&req, server, now))
        }
        Request::Release { key } | Request::Evict { key } => {
            Response::Release(ctx.seats().release(&key))
        }
        Request::Status => Response::Status(Box::new(StatusResponse {
            ok: true,
            status: ctx.seats().status(Utc::now()),
        })),
    }
}
