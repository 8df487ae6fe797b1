//! The plugin's own thread. OpenVPN's thread only hands it work through a
//! channel and returns; this thread keeps one connection to the daemon,
//! sends requests back to back without waiting (the daemon answers in
//! order, so answers are matched first in, first out), reconnects by
//! itself, writes each client-connect verdict to the client's
//! `client_connect_deferred_file` when the answer arrives or its deadline
//! passes, and sends releases. A second thread per connection only reads
//! answer lines and hands them over.

use std::collections::{HashMap, VecDeque};
use std::ffi::c_int;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use seatgate::admission::client;
use seatgate::admission::protocol::{encode_request, AdmitRequest, ErrorCode, Request, Response};
use seatgate::hook::{openvpn, Action, OnError};

use crate::abi::{FUNC_DEFERRED, FUNC_ERROR, FUNC_SUCCESS};
use crate::log;
use crate::settings::Settings;

/// A connect attempt gives up after this (a full listen queue: a hung daemon).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// A request line that cannot be written in this time ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// Pause between connection attempts.
const RETRY: Duration = Duration::from_millis(100);
/// An idle connection is closed after this, before the daemon's own idle
/// timeout (30 s by default) can cross a request on its way.
const IDLE_CLOSE: Duration = Duration::from_secs(5);
/// A release that could not be sent for this long is dropped: the daemon
/// frees the seat itself when it reconciles (or the server exits).
const RELEASE_GIVE_UP: Duration = Duration::from_secs(60);
/// At most this many requests wait to be sent; past it, releases are dropped
/// (reconciliation frees them) and connects are answered at once.
const MAX_QUEUED: usize = 4096;
/// At close (server exit or SIGHUP), queued releases get this long.
const STOP_BUDGET: Duration = Duration::from_millis(500);
/// The longest answer line read (admit and release answers are ~150 bytes).
const MAX_ANSWER: u64 = 64 << 10;

/// A client-connect waiting for its verdict.
#[derive(Debug)]
pub struct Connect {
    pub id: u64,
    pub req: AdmitRequest,
    /// OpenVPN's `client_connect_deferred_file`: '1' admits, '0' refuses.
    pub file: PathBuf,
    pub started: Instant,
    pub deadline: Instant,
}

enum Event {
    Connect(Connect),
    Release(String),
    Answer { gen: u64, line: Vec<u8> },
    Closed { gen: u64 },
    Stop,
}

enum Job {
    /// `written`: the verdict already written (by the deadline or on_error).
    Connect {
        c: Connect,
        written: Option<bool>,
    },
    Release {
        key: String,
        since: Instant,
    },
}

impl Job {
    fn request(&self) -> Request {
        match self {
            Job::Connect { c, .. } => Request::Admit(c.req.clone()),
            Job::Release { key, .. } => Request::Release { key: key.clone() },
        }
    }
}

/// The quick path: OpenVPN's thread waits up to `wait_ms` for the verdict
/// of the connect it just handed over; the worker hands it over here
/// instead of writing the file while that thread still waits. One mutex
/// decides which of the two happens, so a verdict is never lost.
#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    cv: Condvar,
    /// A wait ran out and the daemon has not answered anything since:
    /// later connects defer at once (a hung daemon costs one wait, not one
    /// per client).
    missed: AtomicBool,
}

#[derive(Default)]
struct Slot {
    id: u64,
    waiting: bool,
    verdict: Option<bool>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `admit` to the waiting OpenVPN thread, or writes the file.
    fn deliver(&self, c: &Connect, admit: bool) -> std::io::Result<()> {
        {
            let mut s = self.lock();
            if s.waiting && s.id == c.id && s.verdict.is_none() {
                s.verdict = Some(admit);
                self.cv.notify_all();
                return Ok(());
            }
        }
        write_verdict(c, admit)
    }
}

/// What OpenVPN's thread holds: the way to the worker.
pub struct Handle {
    tx: Sender<Event>,
    thread: Option<JoinHandle<()>>,
    settings: Settings,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl Handle {
    pub fn start(settings: Settings) -> std::io::Result<Handle> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            shared: shared.clone(),
            settings: settings.clone(),
            rx,
            tx: tx.clone(),
            conn: None,
            gen: 0,
            inflight: VecDeque::new(),
            unsent: VecDeque::new(),
            retry_at: Instant::now(),
            last_error: String::new(),
            active_at: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("seatgate".into())
            .spawn(move || worker.run())?;
        Ok(Handle {
            tx,
            thread: Some(thread),
            settings,
            shared,
            next_id: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// OPENVPN_PLUGIN_CLIENT_CONNECT: queue the admission, return at once.
    pub fn connect(&self, mut env: HashMap<String, String>) -> c_int {
        // OpenVPN sets script_type for scripts only; the mapping wants it.
        env.insert("script_type".into(), "client-connect".into());
        if let Some(var) = &self.settings.group_var {
            env.insert(openvpn::GROUP_VAR.into(), var.clone());
        }
        let mut req = match openvpn::action(&env) {
            Ok(Action::Connect(req)) => req,
            Ok(Action::Disconnect { .. }) => return FUNC_ERROR,
            Err(why) => {
                log(format_args!("REJECTED: {why}"));
                return FUNC_ERROR;
            }
        };
        // The server is this very process, whatever the environment says
        // (the key keeps daemon_pid: the same key as the script hook's).
        req.server.pid = std::process::id();
        let Some(file) = env
            .get("client_connect_deferred_file")
            .filter(|f| !f.is_empty())
        else {
            log(format_args!(
                "REJECTED {}: OpenVPN gave no client_connect_deferred_file (OpenVPN 2.6 or later is needed)",
                req.user
            ));
            return FUNC_ERROR;
        };
        let started = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let wait = self.settings.wait;
        let quick = !wait.is_zero() && !self.shared.missed.load(Ordering::Relaxed);
        if quick {
            *self.shared.lock() = Slot {
                id,
                waiting: true,
                verdict: None,
            };
        }
        let c = Connect {
            id,
            req,
            file: file.into(),
            started,
            deadline: started + self.settings.timeout,
        };
        match self.tx.send(Event::Connect(c)) {
            Ok(()) if quick => {
                let s = self.shared.lock();
                let (mut s, _) = self
                    .shared
                    .cv
                    .wait_timeout_while(s, wait, |s| s.verdict.is_none())
                    .unwrap_or_else(|p| p.into_inner());
                s.waiting = false;
                match s.verdict.take() {
                    Some(true) => FUNC_SUCCESS,
                    Some(false) => FUNC_ERROR,
                    None => {
                        self.shared.missed.store(true, Ordering::Relaxed);
                        FUNC_DEFERRED
                    }
                }
            }
            Ok(()) => FUNC_DEFERRED,
            Err(mpsc::SendError(Event::Connect(c))) => {
                self.shared.lock().waiting = false;
                let admit = self.settings.on_error == OnError::Admit;
                log_fallback(&c, admit, "the plugin's thread is gone");
                if admit {
                    FUNC_SUCCESS
                } else {
                    FUNC_ERROR
                }
            }
            Err(_) => FUNC_ERROR,
        }
    }

    /// OPENVPN_PLUGIN_CLIENT_DISCONNECT: queue the release, never wait.
    pub fn disconnect(&self, mut env: HashMap<String, String>) -> c_int {
        env.insert("script_type".into(), "client-disconnect".into());
        match openvpn::action(&env) {
            Ok(Action::Disconnect { key }) => {
                let _ = self.tx.send(Event::Release(key));
            }
            Ok(Action::Connect(_)) => {}
            Err(why) => log(format_args!("cannot release: {why}")),
        }
        FUNC_SUCCESS
    }

    /// Sends what is queued (bounded by STOP_BUDGET) and ends the threads:
    /// OpenVPN unloads the library after this returns.
    pub fn stop(mut self) {
        let _ = self.tx.send(Event::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn log_fallback(c: &Connect, admit: bool, why: &str) {
    if admit {
        log(format_args!(
            "ADMITTED {} WITHOUT A SEAT (on_error=admit): {why}",
            c.req.user
        ));
    } else {
        log(format_args!("REJECTED {} (fail-closed): {why}", c.req.user));
    }
}

/// Writes a verdict where OpenVPN looks for it. Never creates the file:
/// when it is gone, so is the client instance.
fn write_verdict(c: &Connect, admit: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(&c.file)?;
    f.write_all(if admit { b"1" } else { b"0" })
}

struct Conn {
    stream: UnixStream,
    reader: JoinHandle<()>,
}

struct Worker {
    shared: Arc<Shared>,
    settings: Settings,
    rx: Receiver<Event>,
    tx: Sender<Event>,
    conn: Option<Conn>,
    /// Numbers connections, so a closed one's late answers are ignored.
    gen: u64,
    /// Sent, answer pending, in the order sent.
    inflight: VecDeque<Job>,
    unsent: VecDeque<Job>,
    retry_at: Instant,
    /// Why the last connection attempt failed (for verdict log lines).
    last_error: String,
    /// The last request sent or answer read.
    active_at: Instant,
}

impl Worker {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            self.expire(now);
            if self.conn.is_none() && !self.unsent.is_empty() && now >= self.retry_at {
                self.open();
            }
            self.flush();
            if self.conn.is_some()
                && self.inflight.is_empty()
                && self.unsent.is_empty()
                && now.duration_since(self.active_at) >= IDLE_CLOSE
            {
                self.close(false);
            }
            let wait = self.next_wake(Instant::now());
            let event = match self.rx.recv_timeout(wait) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => Event::Stop,
            };
            if !self.on(event) {
                self.drain();
                return;
            }
            // Take whatever else is ready before writing (one flush for a burst).
            while let Ok(e) = self.rx.try_recv() {
                if !self.on(e) {
                    self.drain();
                    return;
                }
            }
        }
    }

    /// Handles one event; false on Stop.
    fn on(&mut self, event: Event) -> bool {
        match event {
            Event::Connect(c) => {
                if self.unsent.len() >= MAX_QUEUED {
                    self.give_verdict_now(c, "too many requests waiting for the daemon");
                } else {
                    self.unsent.push_back(Job::Connect { c, written: None });
                }
            }
            Event::Release(key) => {
                if self.unsent.len() >= MAX_QUEUED {
                    log(format_args!(
                        "could not release {key}: too many requests waiting for the daemon; the daemon frees it when it reconciles"
                    ));
                } else {
                    self.unsent.push_back(Job::Release {
                        key,
                        since: Instant::now(),
                    });
                }
            }
            Event::Answer { gen, line } if gen == self.gen && self.conn.is_some() => {
                self.active_at = Instant::now();
                self.shared.missed.store(false, Ordering::Relaxed);
                self.answer(&line);
            }
            Event::Closed { gen } if gen == self.gen && self.conn.is_some() => {
                self.last_error =
                    format!("{} closed the connection", self.settings.socket.display());
                self.close(true);
            }
            Event::Answer { .. } | Event::Closed { .. } => {}
            Event::Stop => return false,
        }
        true
    }

    fn give_verdict_now(&mut self, c: Connect, why: &str) {
        let admit = self.settings.on_error == OnError::Admit;
        log_fallback(&c, admit, why);
        if let Err(e) = self.shared.deliver(&c, admit) {
            log(format_args!(
                "cannot write the verdict for {} to {}: {e}",
                c.req.user,
                c.file.display()
            ));
        }
    }

    /// Writes the on_error verdict for connects past their deadline; drops
    /// connects never sent and releases too old to matter.
    fn expire(&mut self, now: Instant) {
        let admit = self.settings.on_error == OnError::Admit;
        let why = if self.conn.is_none() && !self.last_error.is_empty() {
            self.last_error.clone()
        } else {
            format!(
                "no answer from {} within {} ms",
                self.settings.socket.display(),
                self.settings.timeout.as_millis()
            )
        };
        for job in self.inflight.iter_mut() {
            if let Job::Connect { c, written } = job {
                if written.is_none() && c.deadline <= now {
                    resolve(&self.shared, c, admit, &why);
                    *written = Some(admit);
                }
            }
        }
        let shared = &self.shared;
        self.unsent.retain_mut(|job| match job {
            Job::Connect { c, written } => {
                if written.is_none() && c.deadline <= now {
                    // Never sent: nothing to undo at the daemon.
                    resolve(shared, c, admit, &why);
                    return false;
                }
                // A refused client's admit resent after a reconnect is now
                // a release (see `close`); a written one is kept.
                true
            }
            Job::Release { key, since } => {
                if now.duration_since(*since) >= RELEASE_GIVE_UP {
                    log(format_args!(
                        "could not release {key}: {why}; the daemon frees it when it reconciles"
                    ));
                    return false;
                }
                true
            }
        });
    }

    fn next_wake(&self, now: Instant) -> Duration {
        let mut at = now + Duration::from_secs(1);
        for job in self.inflight.iter().chain(self.unsent.iter()) {
            if let Job::Connect { c, written: None } = job {
                at = at.min(c.deadline);
            }
        }
        if self.conn.is_none() && !self.unsent.is_empty() {
            at = at.min(self.retry_at);
        }
        if self.conn.is_some() && self.inflight.is_empty() {
            at = at.min(self.active_at + IDLE_CLOSE);
        }
        at.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    fn open(&mut self) {
        let stream = client::connect(&self.settings.socket, CONNECT_TIMEOUT).and_then(|s| {
            s.set_write_timeout(Some(WRITE_TIMEOUT))?;
            let r = s.try_clone()?;
            Ok((s, r))
        });
        match stream {
            Ok((stream, read_half)) => {
                self.gen += 1;
                let (gen, tx) = (self.gen, self.tx.clone());
                let reader = std::thread::Builder::new()
                    .name("seatgate-read".into())
                    .spawn(move || read_answers(read_half, gen, tx));
                match reader {
                    Ok(reader) => {
                        self.conn = Some(Conn { stream, reader });
                        self.active_at = Instant::now();
                        self.last_error.clear();
                    }
                    Err(e) => {
                        self.last_error = format!("cannot start a thread: {e}");
                        self.retry_at = Instant::now() + RETRY;
                    }
                }
            }
            Err(e) => {
                self.last_error = format!(
                    "cannot connect to {}: {e} (is `seatgate run` running? is the socket path right?)",
                    self.settings.socket.display()
                );
                self.retry_at = Instant::now() + RETRY;
                let hung = matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
                if !hung {
                    // No daemon at all: answer now, as the script hook does,
                    // instead of holding clients until their deadline.
                    let now = Instant::now();
                    for job in self.unsent.iter_mut() {
                        if let Job::Connect { c, written: None } = job {
                            c.deadline = c.deadline.min(now);
                        }
                    }
                    self.expire(now);
                }
            }
        }
    }

    /// Ends the connection; with `requeue`, what was in flight is sent
    /// again on the next one (admit and release are idempotent).
    fn close(&mut self, requeue: bool) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.stream.shutdown(Shutdown::Both);
            let _ = conn.reader.join();
        }
        self.retry_at = Instant::now() + Duration::from_millis(10);
        if !requeue {
            return;
        }
        while let Some(job) = self.inflight.pop_back() {
            let job = match job {
                // Refused already: its admit may have been counted with the
                // answer lost; releasing is right either way.
                Job::Connect {
                    c,
                    written: Some(false),
                } => Job::Release {
                    key: c.req.key,
                    since: Instant::now(),
                },
                other => other,
            };
            self.unsent.push_front(job);
        }
    }

    fn flush(&mut self) {
        while let Some(conn) = &self.conn {
            let Some(job) = self.unsent.pop_front() else {
                return;
            };
            let line = encode_request(&job.request());
            match (&conn.stream).write_all(&line) {
                Ok(()) => {
                    self.inflight.push_back(job);
                    self.active_at = Instant::now();
                }
                Err(e) => {
                    self.last_error = format!("writing to {}: {e}", self.settings.socket.display());
                    self.unsent.push_front(job);
                    self.close(true);
                    self.retry_at = Instant::now() + RETRY;
                }
            }
        }
    }

    fn answer(&mut self, line: &[u8]) {
        let Some(job) = self.inflight.pop_front() else {
            // Nothing asked: the daemon's idle-timeout notice; it closes next.
            return;
        };
        let answer: Result<Response, String> =
            serde_json::from_slice(line).map_err(|e| format!("garbled answer: {e}"));
        if let Ok(Response::Error(e)) = &answer {
            if matches!(e.error.code, ErrorCode::Timeout | ErrorCode::Busy) {
                // About the connection, not the request: ask again on a new one.
                self.last_error = e.error.message.clone();
                self.inflight.push_front(job);
                self.close(true);
                self.retry_at = Instant::now() + RETRY;
                return;
            }
        }
        match job {
            Job::Connect { c, written } => self.connect_answer(c, written, answer),
            Job::Release { key, .. } => release_answer(&key, answer),
        }
    }

    fn connect_answer(
        &mut self,
        c: Connect,
        written: Option<bool>,
        answer: Result<Response, String>,
    ) {
        let user = &c.req.user;
        match (written, answer) {
            (None, Ok(Response::Admit(r))) if r.admitted => {
                let us = c.started.elapsed().as_micros();
                match self.shared.deliver(&c, true) {
                    Ok(()) => log(format_args!(
                        "admitted {user} ({} of {} seats in use, {us} us)",
                        r.in_use, r.cap
                    )),
                    Err(e) => {
                        // The client instance is gone: give the seat back.
                        log(format_args!(
                            "admitted {user} but cannot tell OpenVPN ({}: {e}); releasing",
                            c.file.display()
                        ));
                        self.queue_release(c.req.key);
                    }
                }
            }
            (None, Ok(Response::Admit(r))) => {
                let why = r.message.unwrap_or_else(|| "denied".into());
                log(format_args!(
                    "REJECTED {user}: {why} ({} of {} seats in use)",
                    r.in_use, r.cap
                ));
                if let Err(e) = self.shared.deliver(&c, false) {
                    log(format_args!(
                        "cannot write the verdict for {user} to {}: {e}",
                        c.file.display()
                    ));
                }
            }
            (None, other) => {
                let why = match other {
                    Ok(Response::Error(e)) => {
                        format!("daemon refused the request: {}", e.error.message)
                    }
                    Ok(other) => format!("unexpected answer {other:?}"),
                    Err(e) => e,
                };
                let admit = self.settings.on_error == OnError::Admit;
                resolve(&self.shared, &c, admit, &why);
            }
            (Some(false), Ok(Response::Admit(r))) if r.admitted => {
                log(format_args!(
                    "the daemon admitted {user} after the deadline, when the client was already refused; releasing"
                ));
                self.queue_release(c.req.key);
            }
            (Some(true), Ok(Response::Admit(r))) if r.admitted => log(format_args!(
                "{user}, admitted without a seat, now holds one ({} of {} seats in use)",
                r.in_use, r.cap
            )),
            (Some(_), _) => {}
        }
    }

    fn queue_release(&mut self, key: String) {
        self.unsent.push_back(Job::Release {
            key,
            since: Instant::now(),
        });
    }

    /// At Stop: answer waiting connects, send queued releases, within budget.
    fn drain(&mut self) {
        let end = Instant::now() + STOP_BUDGET;
        for job in self.inflight.iter_mut().chain(self.unsent.iter_mut()) {
            if let Job::Connect { c, written: None } = job {
                c.deadline = Instant::now();
            }
        }
        loop {
            let now = Instant::now();
            self.expire(now);
            self.unsent.retain(|j| matches!(j, Job::Release { .. }));
            let releases_left = self
                .inflight
                .iter()
                .chain(self.unsent.iter())
                .any(|j| matches!(j, Job::Release { .. }));
            if !releases_left || now >= end {
                break;
            }
            if self.conn.is_none() && now >= self.retry_at {
                self.open();
            }
            self.flush();
            let wait = end.saturating_duration_since(now).min(RETRY);
            match self.rx.recv_timeout(wait) {
                Ok(e @ (Event::Answer { .. } | Event::Closed { .. })) => {
                    self.on(e);
                }
                Ok(Event::Release(key)) => self.queue_release(key),
                Ok(Event::Connect(c)) => self.give_verdict_now(c, "OpenVPN is closing the plugin"),
                Ok(Event::Stop) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for job in self.inflight.iter().chain(self.unsent.iter()) {
            if let Job::Release { key, .. } = job {
                log(format_args!(
                    "could not release {key} before OpenVPN closed the plugin; the daemon frees it when it reconciles"
                ));
            }
        }
        self.close(false);
    }
}

fn resolve(shared: &Shared, c: &Connect, admit: bool, why: &str) {
    log_fallback(c, admit, why);
    if let Err(e) = shared.deliver(c, admit) {
        log(format_args!(
            "cannot write the verdict for {} to {}: {e}",
            c.req.user,
            c.file.display()
        ));
    }
}

fn release_answer(key: &str, answer: Result<Response, String>) {
    match answer {
        Ok(Response::Release(r)) if r.released => {
            log(format_args!("released {key} ({} seats in use)", r.in_use))
        }
        // OpenVPN also reports the end of clients it refused.
        Ok(Response::Release(_)) => log(format_args!("{key} held no seat; nothing to release")),
        Ok(Response::Error(e)) => log(format_args!(
            "could not release {key}: daemon refused the request: {}",
            e.error.message
        )),
        Ok(other) => log(format_args!(
            "could not release {key}: unexpected answer {other:?}"
        )),
        Err(e) => log(format_args!("could not release {key}: {e}")),
    }
}

/// The reading half: one answer line at a time to the worker, then Closed.
fn read_answers(stream: UnixStream, gen: u64, tx: Sender<Event>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::with_capacity(256);
        match (&mut reader).take(MAX_ANSWER).read_until(b'\n', &mut line) {
            Ok(_) if line.last() == Some(&b'\n') => {
                if tx.send(Event::Answer { gen, line }).is_err() {
                    return;
                }
            }
            _ => break,
        }
    }
    let _ = tx.send(Event::Closed { gen });
}
