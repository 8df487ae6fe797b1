//! Ending sessions on purpose, one way for every reason: through the VPN
//! server that holds them (`reconcile::control`), freeing their seats by
//! what the server said, each logged with who or what asked. Operator
//! evictions, over-cap enforcement (the `over_cap` loop here) and the seat
//! policy all come through `disconnect`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::alerting;
use super::gateway::log_release_fault;
use super::state::Shared;
use crate::admission::over_cap::{self, Order, Step};
use crate::admission::protocol::{EvictOutcome, Evicted};
use crate::admission::table::Session;
use crate::config::OverCap;
use crate::reconcile::control::{self, Outcome};
use crate::text::shown;

/// Why sessions are ended: the log says so, and it decides what becomes
/// of a seat whose end the server did not confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// `seatgate evict` (the peer's credentials). The operator asked for
    /// the seat: it is freed even when the tunnel may still be up.
    Operator { uid: u32, pid: i32 },
    /// The seats in use exceed the cap (`[admission] over_cap`). A seat is
    /// freed only when the server confirmed the session ended: freeing a
    /// live tunnel's seat would let one more in over the cap.
    OverCap,
    /// A seat policy rule ("replace_oldest"): the session's seat went to
    /// the new one already; unconfirmed, it is given a seat again.
    Policy(&'static str),
}

/// What became of one session.
#[derive(Debug, Clone)]
pub struct Ended {
    pub session: Session,
    pub outcome: Outcome,
    /// Whether this call freed its seat (false also when it was freed
    /// already, e.g. by the disconnect hook).
    pub freed: bool,
}

impl Ended {
    /// What happened, in words (log lines and the `evict` answer).
    pub fn message(&self) -> String {
        let kept = if self.freed {
            ""
        } else {
            "; it keeps its seat"
        };
        match &self.outcome {
            Outcome::Disconnected { via } => format!("disconnected through {via}"),
            Outcome::Gone { via } => format!("had ended already ({via})"),
            Outcome::NoControl if self.freed => {
                "seat freed; the tunnel is still up: no [[reconcile]] entry controls this server"
                    .into()
            }
            Outcome::NoControl => {
                format!("not disconnected: no [[reconcile]] entry controls this server{kept}")
            }
            Outcome::Failed { via, error } if self.freed => {
                format!("seat freed, but the tunnel may still be up: {via}: {error}")
            }
            Outcome::Failed { via, error } => format!("not disconnected: {via}: {error}{kept}"),
        }
    }

    pub fn wire(&self) -> Evicted {
        Evicted {
            key: self.session.key.clone(),
            user: self.session.user.clone(),
            outcome: match self.outcome {
                Outcome::Disconnected { .. } => EvictOutcome::Disconnected,
                Outcome::Gone { .. } => EvictOutcome::Gone,
                Outcome::NoControl => EvictOutcome::NoControl,
                Outcome::Failed { .. } => EvictOutcome::Failed,
            },
            freed: self.freed,
            message: self.message(),
        }
    }
}

/// Ends `sessions` through their servers (bounded by each `[[reconcile]]`
/// entry's timeout), frees their seats as `why` allows, and logs each.
/// Only the very admission instance given is freed: a session re-admitted
/// under the same key meanwhile keeps its seat.
///
/// Boxed: one copy of the servers' conversations in the binary, however
/// many callers await it.
pub fn disconnect(
    shared: &Shared,
    sessions: Vec<Session>,
    why: Why,
) -> Pin<Box<dyn Future<Output = Vec<Ended>> + Send + '_>> {
    Box::pin(disconnect_now(shared, sessions, why))
}

async fn disconnect_now(shared: &Shared, sessions: Vec<Session>, why: Why) -> Vec<Ended> {
    if sessions.is_empty() {
        return Vec::new();
    }
    let config = shared.config();
    let outcomes = control::disconnect(&config.reconcile, &sessions).await;
    let mut state = shared.lock();
    let mut fault = None;
    let ended: Vec<Ended> = sessions
        .into_iter()
        .zip(outcomes)
        .map(|(session, outcome)| {
            let confirmed = matches!(outcome, Outcome::Disconnected { .. } | Outcome::Gone { .. });
            let mut freed = false;
            if confirmed || matches!(why, Why::Operator { .. }) {
                let (s, f) = state.seats.release_instance(&session.key, session.instance);
                freed = s.is_some();
                if fault.is_none() {
                    fault = f;
                }
            } else if matches!(why, Why::Policy(_)) {
                // Replaced: its seat went to the new session; its tunnel
                // may still be up, so it counts again.
                let f = state.seats.reinstate(session.clone());
                if fault.is_none() {
                    fault = f;
                }
            }
            Ended {
                session,
                outcome,
                freed,
            }
        })
        .collect();
    let in_use = state.seats.in_use();
    drop(state);
    log_release_fault(fault);
    // One log line per session (one call site: each costs flash).
    let (asker, uid, pid) = match why {
        Why::Operator { uid, pid } => ("evicted by an operator", Some(uid), Some(pid)),
        Why::OverCap => ("over the cap", None, None),
        Why::Policy(rule) => (rule, None, None),
    };
    for e in &ended {
        let (key, user, message) = (shown(&e.session.key), shown(&e.session.user), e.message());
        let freed = e.freed;
        tracing::warn!(%key, %user, freed, in_use, operator_uid = uid, operator_pid = pid, "{asker}: {message}");
    }
    if ended.iter().any(|e| e.freed) {
        alerting::usage(shared);
    }
    ended
}

/// `disconnect` on its own task, for callers that must not wait (an
/// admission): the outcome is in the log.
pub fn spawn_disconnect(shared: Arc<Shared>, sessions: Vec<Session>, why: Why) {
    spawn(Box::pin(async move {
        disconnect(&shared, sessions, why).await;
    }));
}

/// Runs `job` on its own task. Boxed: every such task shares one task
/// type (one copy of tokio's task code in the binary).
pub fn spawn(job: Pin<Box<dyn Future<Output = ()> + Send>>) {
    tokio::spawn(job);
}

/// Which sessions `policy` disconnects first (None: it drains).
pub fn order(policy: OverCap) -> Option<Order> {
    match policy {
        OverCap::Drain => None,
        OverCap::DisconnectNewest => Some(Order::Newest),
        OverCap::DisconnectOldest => Some(Order::Oldest),
    }
}

/// Over-cap enforcement, looked at by the reaper (every
/// `server_check_ms`): starts the countdown when the seats in use exceed
/// the cap under a disconnecting `over_cap`, ends it when the cap recovers
/// or sessions end, and when it runs out disconnects the plan's sessions
/// (`admission::over_cap`) on their own task. A disconnect the server did
/// not confirm keeps its seat and is tried again after another grace.
pub fn look(shared: &Arc<Shared>) {
    let enforcing = {
        let config = shared.config();
        let a = &config.admission;
        order(a.over_cap).map(|o| (o, a.over_cap_grace))
    };
    let (now, mono) = (Utc::now(), Instant::now());
    let quiet = {
        let state = shared.peek();
        // Draining over the cap needs nothing either.
        let act = enforcing.is_some() && state.seats.in_use() > state.enforced_cap(now, mono);
        !act && state.countdown.since.is_none() && state.enforcing == enforcing
    };
    if quiet {
        return;
    }
    let mut state = shared.lock();
    state.enforcing = enforcing;
    let cap = state.enforced_cap(now, mono);
    let over_by = state.seats.in_use().saturating_sub(cap);
    let step = state.countdown.step(over_by > 0, enforcing.is_some(), mono);
    if step == Step::Cancelled {
        tracing::info!(
            cap,
            "the over-cap countdown ends: back within the cap, or over_cap is \"drain\" now"
        );
    }
    let Some((order, grace)) = enforcing.filter(|_| step != Step::Cancelled) else {
        return;
    };
    let over_for = state.countdown.over_for(mono);
    let Some(plan) = over_cap::plan(state.seats.table(), cap, order, grace, over_for, now) else {
        return;
    };
    if step == Step::Started {
        let which = format!("{order:?}").to_lowercase();
        tracing::warn!(cap, over_by, grace_ms = grace.as_millis() as u64, "over the cap by {over_by}: disconnecting the {} {which} sessions at {} unless the cap recovers or sessions end first", plan.keys.len(), plan.at.format("%H:%M:%S"));
    }
    // One try at a time: a server that never answers holds it for its
    // entry's timeout, and the next looks wait for it.
    if !plan.due() || state.countdown.busy {
        return;
    }
    // Another grace before trying again what the servers refuse.
    state.countdown.since = Some(mono);
    if plan.lost > 0 {
        tracing::error!(lost = plan.lost, "over the cap by {}: {} of those seats are held by sessions lost with a damaged snapshot and cannot be disconnected (check the VPN servers, then `seatgate evict --lost`)", plan.over_by, plan.lost);
    }
    let table = state.seats.table();
    let victims: Vec<Session> = plan
        .keys
        .iter()
        .filter_map(|k| table.get(k).cloned())
        .collect();
    if victims.is_empty() {
        return;
    }
    state.countdown.busy = true;
    drop(state);
    let shared = shared.clone();
    spawn(Box::pin(async move {
        let n = victims.len();
        let ended = disconnect(&shared, victims, Why::OverCap).await;
        {
            let mut state = shared.lock();
            state.countdown.busy = false;
            // The next try a whole grace after this one ended.
            if state.countdown.since.is_some() {
                state.countdown.since = Some(Instant::now());
            }
        }
        let done = |e: &&Ended| {
            e.freed
                || matches!(
                    e.outcome,
                    Outcome::Disconnected { .. } | Outcome::Gone { .. }
                )
        };
        let freed = ended.iter().filter(done).count();
        if freed < n {
            tracing::warn!(freed, asked = n, "over the cap: not every session could be disconnected; trying again after another grace period");
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::protocol::ServerKind;
    use crate::admission::table::ServerId;

    fn ended(outcome: Outcome, freed: bool) -> Ended {
        Ended {
            session: Session {
                key: "k".into(),
                instance: 1,
                user: "u".into(),
                group: String::new(),
                remote: String::new(),
                server: ServerId {
                    kind: ServerKind::Openvpn,
                    pid: 1,
                    start_ticks: 1,
                    ns_pid: 1,
                },
                since: chrono::DateTime::UNIX_EPOCH,
            },
            outcome,
            freed,
        }
    }

    #[test]
    fn each_outcome_is_said_plainly_and_mapped_to_the_wire() {
        let via = || "openvpn /run/m.sock".to_string();
        let failed = || Outcome::Failed {
            via: via(),
            error: "timed out".into(),
        };
        let cases = [
            (
                ended(Outcome::Disconnected { via: via() }, true),
                EvictOutcome::Disconnected,
                "disconnected through openvpn /run/m.sock",
            ),
            (
                ended(Outcome::Gone { via: via() }, false),
                EvictOutcome::Gone,
                "had ended already (openvpn /run/m.sock)",
            ),
            (
                ended(Outcome::NoControl, true),
                EvictOutcome::NoControl,
                "seat freed; the tunnel is still up: no [[reconcile]] entry controls this server",
            ),
            (
                ended(Outcome::NoControl, false),
                EvictOutcome::NoControl,
                "not disconnected: no [[reconcile]] entry controls this server; it keeps its seat",
            ),
            (
                ended(failed(), true),
                EvictOutcome::Failed,
                "seat freed, but the tunnel may still be up: openvpn /run/m.sock: timed out",
            ),
            (
                ended(failed(), false),
                EvictOutcome::Failed,
                "not disconnected: openvpn /run/m.sock: timed out; it keeps its seat",
            ),
        ];
        for (e, outcome, message) in cases {
            let wire = e.wire();
            assert_eq!((wire.outcome, wire.message.as_str()), (outcome, message));
            assert_eq!((wire.key.as_str(), wire.freed), ("k", e.freed));
        }
    }

    #[test]
    fn only_the_disconnecting_policies_have_an_order() {
        assert_eq!(order(OverCap::Drain), None);
        assert_eq!(order(OverCap::DisconnectNewest), Some(Order::Newest));
        assert_eq!(order(OverCap::DisconnectOldest), Some(Order::Oldest));
    }
}
