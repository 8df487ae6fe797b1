//! The socket server's `Service`: decodes a request, checks the peer's
//! rights, asks the admission core, and turns what happened into the answer
//! and the log line. The one place where results and errors meet the wire.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::alerting;
use super::evict::{self, Ended, Why};
use super::gateway::log_release_fault;
use super::state::Shared;
use super::status_cache::Lookup;
use crate::admission::access::{Peer, Rights};
use crate::admission::protocol::{
    self, AdmitRequest, AdmitResponse, DenyReason, ErrorCode, PongResponse, ReleaseResponse,
    Request, Response, ServerKind, UsageResponse,
};
use crate::admission::seats::{Admission, Asker, Release};
use crate::admission::server::{Bytes, Reply, Service, Undo};
use crate::admission::table::{Decision, ServerId, Session};
use crate::cloud::demand::HIGH_WATER_GAP;
use crate::config::policy::same_name;
use crate::sys::process::{self, Relation};
use crate::text::shown;

/// What one connection's requests share: the server its peer belongs to,
/// found once (a hook's connection comes from one process).
#[derive(Default)]
pub struct Conn {
    server: Option<((ServerKind, u32), ServerId)>,
}

impl Service for Shared {
    type Conn = Conn;

    fn rights(&self, peer: &Peer) -> Rights {
        self.policy.borrow().rights(peer)
    }

    fn handle(self: Arc<Self>, conn: &mut Conn, peer: &Peer, rights: Rights, line: &[u8]) -> Reply {
        let request = match protocol::decode(line) {
            Ok(r) => r,
            Err(resp) => return answer(resp),
        };
        let forbidden = |what: &str| {
            answer(Response::error(
                ErrorCode::Forbidden,
                format!("this user may not {what}; see [admission] in the seatgate config"),
            ))
        };
        match request {
            Request::Ping => answer(Response::Pong(PongResponse {
                ok: true,
                pong: true,
                version: env!("CARGO_PKG_VERSION").into(),
            })),
            Request::Admit(_) | Request::Release { .. } if !rights.seats => {
                forbidden("admit or release sessions")
            }
            Request::Status | Request::Usage if !rights.read => forbidden("read status"),
            Request::Evict { .. } | Request::ForgetLost if !rights.operate => {
                forbidden("evict sessions")
            }
            Request::Admit(req) => self.admit(conn, peer, &req),
            Request::Release { key } => {
                let asker = if rights.operate {
                    Some(Asker::Operator)
                } else {
                    self.holder(peer, &key)
                };
                self.release(&key, asker)
            }
            Request::Evict { key, user } => self.evict(peer, key, user),
            Request::Status => self.status_reply(),
            Request::Usage => {
                let report = self.peek().usage_report(Utc::now(), Instant::now());
                let usage = serde_json::to_value(&report).expect("a usage report serialises");
                answer(Response::Usage(Box::new(UsageResponse { ok: true, usage })))
            }
            Request::ForgetLost => self.forget_lost(peer),
        }
    }

    fn delivered(self: Arc<Self>, undo: Undo, ok: bool) {
        let mut state = self.lock();
        if !ok {
            state.unanswered += 1;
        }
        let answered = state.seats.answered(&undo.key, undo.instance, ok);
        let in_use = state.seats.in_use();
        drop(state);
        log_release_fault(answered.fault);
        if answered.undone.is_some() {
            alerting::usage(&self);
            tracing::warn!(key = %shown(&undo.key), in_use, "the hook left before its admission could be answered (past its deadline); seat released");
        }
        if let Some(old) = answered.restored {
            tracing::warn!(key = %shown(&old.key), user = %shown(&old.user), in_use, "user limit: the session that was to replace this one was never answered; it keeps its seat");
        }
        if !answered.disconnect.is_empty() {
            evict::spawn_disconnect(
                self,
                answered.disconnect,
                Why::Policy("user limit: replaced the oldest session of the user"),
            );
        }
    }
}

/// How the kernel must relate a hook to the server it names, and the
/// command names a server of that kind has.
fn relation(kind: ServerKind) -> (Relation, fn(&str) -> bool) {
    match kind {
        ServerKind::Openvpn => (Relation::SelfOrAncestor, |c| c.starts_with("openvpn")),
        ServerKind::Ocserv => (Relation::ChildOfAncestor, |c| c.starts_with("ocserv")),
        ServerKind::Other => (Relation::SelfOrAncestor, |_| true),
    }
}

/// The server process a hook names, found from the hook's own process
/// (the kernel's peer credentials) and its ancestry, never from the
/// number alone.
fn locate(peer: &Peer, kind: ServerKind, claimed: u32) -> Option<ServerId> {
    let (relation, named) = relation(kind);
    let peer_pid = u32::try_from(peer.pid).ok()?;
    let found = process::locate(
        peer_pid,
        claimed,
        relation,
        named,
        process::read,
        process::children,
    )?;
    Some(ServerId {
        kind,
        pid: found.pid,
        start_ticks: found.start_ticks,
        ns_pid: found.own_pid(),
    })
}

fn alive(server: &ServerId) -> bool {
    process::process_start_ticks(server.pid) == Some(server.start_ticks)
}

impl Shared {
    /// Ends a session, or every session of a user, through its server; the
    /// answer waits for the servers off the socket server's way.
    fn evict(self: Arc<Self>, peer: &Peer, key: Option<String>, user: Option<String>) -> Reply {
        // Who ended a session by hand is the operator's audit trail.
        let (uid, pid) = (peer.uid, peer.pid);
        let (sessions, in_use) = {
            let state = self.peek();
            let table = state.seats.table();
            let sessions: Vec<Session> = match (&key, &user) {
                (Some(k), _) => table.get(k).cloned().into_iter().collect(),
                (None, Some(u)) => table
                    .sessions()
                    .filter(|s| same_name(&s.user, u))
                    .cloned()
                    .collect(),
                (None, None) => Vec::new(),
            };
            (sessions, state.seats.in_use())
        };
        let (k, u) = (key.as_deref().map(shown), user.as_deref().map(shown));
        let (k, u) = (k.unwrap_or_default(), u.unwrap_or_default());
        tracing::warn!(key = %k, user = %u, sessions = sessions.len(), operator_uid = uid, operator_pid = pid, "evict asked by an operator");
        let reply = |ended: &[Ended], in_use| {
            let wire: Vec<_> = ended.iter().map(Ended::wire).collect();
            Response::Release(ReleaseResponse {
                ok: true,
                released: ended.iter().any(|e| e.freed),
                in_use,
                sessions: Some(serde_json::to_value(wire).expect("evictions serialise")),
            })
        };
        if sessions.is_empty() {
            return answer(reply(&[], in_use));
        }
        let (done, pending) = tokio::sync::watch::channel(None);
        evict::spawn(Box::pin(async move {
            let ended = evict::disconnect(&self, sessions, Why::Operator { uid, pid }).await;
            let response = reply(&ended, self.peek().seats.in_use());
            let _ = done.send(Some(Arc::new(response.encode())));
        }));
        Reply {
            bytes: Bytes::Pending(pending),
            undo: None,
        }
    }

    /// Frees the seats of sessions lost with a damaged snapshot.
    fn forget_lost(&self, peer: &Peer) -> Reply {
        let mut state = self.lock();
        let was = state.seats.table().lost;
        let fault = state.seats.set_lost(0);
        let in_use = state.seats.in_use();
        drop(state);
        log_release_fault(fault);
        if was > 0 {
            alerting::usage(self);
            tracing::warn!(
                lost = was,
                in_use,
                operator_uid = peer.uid,
                operator_pid = peer.pid,
                "an operator freed the seats of sessions lost with a damaged snapshot"
            );
        }
        answer(Response::Release(ReleaseResponse {
            ok: true,
            released: was > 0,
            in_use,
            sessions: None,
        }))
    }

    fn admit(self: &Arc<Self>, conn: &mut Conn, peer: &Peer, req: &AdmitRequest) -> Reply {
        let started = Instant::now();
        let now = Utc::now();
        // /proc is read outside the lock, once per connection and server.
        let claim = (req.server.kind, req.server.pid);
        let server = match conn.server {
            Some((c, id)) if c == claim => Some(id),
            _ => {
                let found = locate(peer, claim.0, claim.1);
                conn.server = found.map(|id| (claim, id));
                found
            }
        };
        let config = self.config();
        let mut state = self.lock();
        let mono = Instant::now();
        let parts = state.cap_parts(now, mono);
        let cap = parts.total();
        let (admission, fault) = match server {
            Some(server) => state
                .seats
                .admit(req, server, cap, &config.policy, now, alive),
            None => (state.seats.deny(DenyReason::UnknownServer, cap), None),
        };
        let mut first_at_cap = false;
        if let Decision::Denied(reason) = admission.decision {
            state
                .denial_log
                .record(now, &req.user, &req.remote, reason.as_str());
            if matches!(
                reason,
                DenyReason::CapReached | DenyReason::OverCap | DenyReason::NoLicense
            ) {
                first_at_cap = state.alerts.denied_at_cap();
                state.attempts.refused(&req.user, &req.remote, mono);
            }
        }
        let fresh = admission.decision == Decision::Admitted { again: false };
        if fresh {
            state.attempts.admitted(&req.user, &req.remote);
        }
        // The pool loop looks now at a refusal for want of seats, or at an
        // admission near the top of a slice (`cloud::demand`).
        let ring_pools = matches!(
            admission.decision,
            Decision::Denied(DenyReason::CapReached | DenyReason::OverCap | DenyReason::NoLicense)
        ) || (fresh
            && parts.pooled > 0
            && admission.in_use.saturating_add(HIGH_WATER_GAP) >= cap);
        let undo = match (&admission.decision, &admission.session) {
            (Decision::Admitted { again }, Some(s)) => state
                .seats
                .answer_pending(&s.key, s.instance, !again)
                .then(|| Undo {
                    key: s.key.clone(),
                    instance: s.instance,
                }),
            _ => None,
        };
        let denied = match admission.decision {
            Decision::Denied(reason) => Some(reason.as_str()),
            Decision::Admitted { .. } => None,
        };
        state.admissions.record(fresh, denied, started.elapsed());
        let write_usage = state.record_usage(now, mono, cap, denied.is_some());
        let alert = alerting::feed(&mut state, &config.alerts, admission.in_use, cap);
        drop(state);
        if write_usage {
            self.persist.ring();
        }
        if ring_pools {
            self.ring_pools();
        }
        log_release_fault(fault);
        log_admission(req, &admission, &self.denying, first_at_cap);
        alerting::log(alert, admission.in_use, cap);
        // A session it replaced is disconnected once this answer is
        // delivered (`delivered`): if it never is, that session stays.
        let bytes = Response::Admit(admit_response(&admission)).encode();
        Reply {
            bytes: Bytes::Owned(bytes),
            undo,
        }
    }

    /// The asker of a release by a hook: the server process holding the
    /// key, if the kernel shows the hook belongs to it.
    fn holder(&self, peer: &Peer, key: &str) -> Option<Asker> {
        let server = self.peek().seats.table().get(key)?.server;
        let found = locate(peer, server.kind, server.own_pid())?;
        (found.pid == server.pid && found.start_ticks == server.start_ticks)
            .then_some(Asker::Server(server))
    }

    fn release(&self, key: &str, asker: Option<Asker>) -> Reply {
        let mut state = self.lock();
        let (release, fault) = match asker {
            Some(asker) => state.seats.release(key, asker),
            None => match state.seats.table().get(key) {
                Some(s) => (Release::NotYours(s.clone()), None),
                None => (Release::NotHeld, None),
            },
        };
        let in_use = state.seats.in_use();
        let pooled = state.leases.pools().next().is_some();
        drop(state);
        log_release_fault(fault);
        let released = match release {
            Release::Released(s) => {
                tracing::info!(key = %shown(key), user = %shown(&s.user), in_use, "seat released");
                alerting::usage(self);
                if pooled {
                    // Seats of a slice may be idle now: give-back (`cloud::demand`).
                    self.ring_pools();
                }
                true
            }
            Release::NotHeld => false,
            Release::NotYours(s) => {
                tracing::warn!(key = %shown(key), holder_pid = s.server.pid, "release refused: the key is held by another VPN server process");
                return answer(Response::error(
                    ErrorCode::Forbidden,
                    "this session is held by another VPN server process; only its own server's hooks (or an operator's evict) may release it",
                ));
            }
        };
        answer(Response::Release(ReleaseResponse {
            ok: true,
            released,
            in_use,
            sessions: None,
        }))
    }

    fn status_reply(self: Arc<Self>) -> Reply {
        let version = self.version();
        let bytes = match self.status_cache.lookup(version, Instant::now()) {
            Lookup::Ready(bytes) => Bytes::Shared(bytes),
            Lookup::Rendering(pending) => Bytes::Pending(pending),
            Lookup::Render(done) => {
                let pending = done.subscribe();
                // Off the runtime thread: a large table takes milliseconds
                // to render, and admissions must not wait for it.
                tokio::task::spawn_blocking(move || {
                    let (started, cpu) = (Instant::now(), process::thread_cpu_time());
                    let write = |line: &mut Vec<u8>| {
                        let config = self.config();
                        let status = self
                            .peek()
                            .status(Utc::now(), Instant::now(), &config.policy);
                        serde_json::to_writer(&mut *line, &status)
                            .expect("a status always serialises");
                        // Only a large table is ever served stale for a while.
                        if status.sessions.len() < SMALL_TABLE {
                            Duration::ZERO
                        } else {
                            process::thread_cpu_time().saturating_sub(cpu)
                        }
                    };
                    self.status_cache.finish(version, started, write, done);
                });
                Bytes::Pending(pending)
            }
        };
        Reply { bytes, undo: None }
    }
}

/// Status renderings of tables smaller than this are always fresh (see
/// `status_cache`: a large table's rendering is spaced by its cost).
const SMALL_TABLE: usize = 1000;

fn answer(response: Response) -> Reply {
    Reply {
        bytes: Bytes::Owned(response.encode()),
        undo: None,
    }
}

fn admit_response(a: &Admission) -> AdmitResponse {
    match a.decision {
        Decision::Admitted { again } => AdmitResponse {
            ok: true,
            admitted: true,
            again,
            reason: None,
            message: None,
            cap: a.cap,
            in_use: a.in_use,
        },
        Decision::Denied(reason) => AdmitResponse {
            ok: true,
            admitted: false,
            again: false,
            reason: Some(reason),
            message: Some(deny_message(reason, a.cap, a.in_use)),
            cap: a.cap,
            in_use: a.in_use,
        },
    }
}

/// One line per admission and denial at info; a run of denials for one
/// reason starts with a warning (so `journalctl -p warning` shows that the
/// gateway turns users away without a line per retrying client).
/// Logs a decision: each at info; the first of a run of denials for one
/// reason at warn, and the first denial for want of seats since usage last
/// reached the top alert threshold (`first_at_cap`) at error.
fn log_admission(req: &AdmitRequest, a: &Admission, denying: &AtomicU8, first_at_cap: bool) {
    let (key, user, remote) = (shown(&req.key), shown(&req.user), shown(&req.remote));
    let (cap, in_use) = (a.cap, a.in_use);
    if let Some(e) = &a.fault {
        tracing::error!(%key, error = %e, "cannot record the session in the runtime directory; denying it");
    }
    match a.decision {
        Decision::Admitted { again: true } => {}
        Decision::Admitted { again: false } => {
            denying.store(0, Ordering::Relaxed);
            tracing::info!(%key, %user, %remote, in_use, cap, "seat admitted");
        }
        Decision::Denied(reason) => {
            let message = deny_message(reason, cap, in_use);
            let code = reason as u8 + 1;
            let reason = reason.as_str();
            let new_run = denying.swap(code, Ordering::Relaxed) != code;
            if first_at_cap {
                tracing::error!(%reason, in_use, cap, "denying new sessions: {message} (the seat cap is reached: the first denial since usage reached the top alert threshold; each denial follows at info)");
            } else if new_run {
                tracing::warn!(%reason, in_use, cap, "denying new sessions: {message} (each denial follows at info)");
            }
            tracing::info!(%key, %user, %remote, %reason, in_use, cap, "seat denied: {message}");
        }
    }
}

fn deny_message(reason: DenyReason, cap: u32, in_use: u32) -> String {
    match reason {
        DenyReason::CapReached => format!("all {cap} seats are in use"),
        DenyReason::OverCap => format!(
            "{in_use} sessions hold seats but the cap is now {cap}; new sessions wait until {} end",
            in_use.saturating_sub(cap) + 1
        ),
        DenyReason::NoLicense => {
            "the seat cap is 0: no built-in seats and no active license".into()
        }
        DenyReason::UnknownServer => {
            "the VPN server process named in the request is not the calling hook's own server (the kernel shows no such process among its ancestors); run the hook from the VPN server it names".into()
        }
        DenyReason::Internal => "the daemon could not record the session; see its log".into(),
        DenyReason::KeyHeld => {
            "this session key is held by another VPN server process that is still running".into()
        }
        DenyReason::UserLimit => {
            "this user holds as many sessions as one user may ([policy] max_sessions_per_user)"
                .into()
        }
        DenyReason::Reserved => {
            "every free seat is reserved for other users ([[policy.group]] reserved)".into()
        }
        DenyReason::GroupLimit => {
            "this user's group holds all the seats it may ([[policy.group]] max)".into()
        }
    }
}
