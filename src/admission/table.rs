//! The session table: who holds a seat. Check-and-insert is one step on
//! `&mut self`, so with the table behind one lock exactly `cap` sessions get
//! in however many ask at once. Pure: the cap and the instant are arguments.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::policy::{decide, Verdict};
use super::protocol::{AdmitRequest, DenyReason, ServerKind};
use crate::config::policy::SeatPolicy;

/// A VPN server process, identified across pid reuse by its start time in
/// clock ticks since boot (from /proc/PID/stat). `pid` is in the daemon's
/// pid namespace; `ns_pid` is the pid the server sees for itself (what its
/// hooks and its management interface say), different inside a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServerId {
    pub kind: ServerKind,
    pub pid: u32,
    pub start_ticks: u64,
    /// 0 in records written before it was kept: then it is `pid`.
    #[serde(default)]
    pub ns_pid: u32,
}

impl ServerId {
    /// The pid the server sees for itself.
    pub fn own_pid(&self) -> u32 {
        if self.ns_pid == 0 {
            self.pid
        } else {
            self.ns_pid
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub key: String,
    /// Which admission of the key this is (grows with every admission):
    /// undoing an unanswered admission removes only that very instance.
    #[serde(default)]
    pub instance: u64,
    pub user: String,
    pub remote: String,
    pub server: ServerId,
    pub since: DateTime<Utc>,
    /// The group the VPN server reported (empty: none, and in records
    /// written before it was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admitted { again: bool },
    Denied(DenyReason),
}

/// A change to the table, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Admit(Session),
    Release(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    sessions: HashMap<String, Session>,
    /// Highest number of sessions ever held at once.
    pub peak: u32,
    #[serde(default)]
    pub peak_at: Option<DateTime<Utc>>,
    /// Admissions refused since the table was created.
    #[serde(default)]
    pub denials: u64,
    /// Peak usage per UTC day (the most sessions held right after an
    /// admission that day), for the last `DAILY_PEAK_DAYS` days with any.
    #[serde(default)]
    pub daily_peaks: BTreeMap<NaiveDate, u32>,
    /// The last admission's instance number.
    #[serde(default)]
    pub instances: u64,
    /// Seats held by sessions that could not be read back (a damaged
    /// snapshot): they count against the cap until reconciliation with the
    /// VPN servers' own lists, or an operator, accounts for them.
    #[serde(default)]
    pub lost: u32,
}

/// `lost` when not even the number of sessions could be read back: more
/// than any cap, so nothing is admitted until they are accounted for.
pub const LOST_UNKNOWN: u32 = u32::MAX / 2;

/// How many days of peaks the table keeps.
pub const DAILY_PEAK_DAYS: usize = 31;

impl Table {
    /// Seats held: the sessions known and the seats of lost ones.
    pub fn in_use(&self) -> u32 {
        self.known().saturating_add(self.lost)
    }

    /// Sessions known by key.
    pub fn known(&self) -> u32 {
        u32::try_from(self.sessions.len()).unwrap_or(u32::MAX)
    }

    pub fn get(&self, key: &str) -> Option<&Session> {
        self.sessions.get(key)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// A table of `sessions` with the counters of `self` (snapshot reading).
    pub fn with_sessions(mut self, sessions: Vec<Session>) -> Table {
        self.sessions = sessions.into_iter().map(|s| (s.key.clone(), s)).collect();
        self
    }

    /// Decides an admission against `cap` and `policy`. On admission the
    /// returned change must be journaled before the answer goes out; a
    /// session the new one replaced (`at_user_limit = "replace_oldest"`) is
    /// already out of the table and comes back third, to be journaled first.
    pub fn admit(
        &mut self,
        req: &AdmitRequest,
        server: ServerId,
        cap: u32,
        policy: &SeatPolicy,
        now: DateTime<Utc>,
    ) -> (Decision, Option<Change>, Option<Session>) {
        if self.sessions.contains_key(&req.key) {
            return (Decision::Admitted { again: true }, None, None);
        }
        let replace = match decide(self, cap, policy, &req.user, &req.group) {
            Verdict::Admit { replace } => replace,
            Verdict::Deny(reason) => {
                self.denials += 1;
                return (Decision::Denied(reason), None, None);
            }
        };
        let replaced = replace.and_then(|s| self.sessions.remove(&s.key));
        let session = Session {
            key: req.key.clone(),
            instance: self.instances + 1,
            user: req.user.clone(),
            remote: req.remote.clone(),
            server,
            since: now,
            group: req.group.clone(),
        };
        let change = Change::Admit(session);
        self.apply(&change, now);
        (Decision::Admitted { again: false }, Some(change), replaced)
    }

    /// Puts back a session taken out by a replacement that could not be
    /// recorded (no peak is counted: it held its seat all along).
    pub fn restore(&mut self, session: Session) {
        self.sessions.insert(session.key.clone(), session);
    }

    /// Frees a session's seat. Unknown keys are no-ops and return None.
    pub fn release(&mut self, key: &str) -> Option<(Session, Change)> {
        let session = self.sessions.remove(key)?;
        Some((session, Change::Release(key.to_string())))
    }

    /// Undoes an admission whose journal write failed.
    pub fn forget(&mut self, key: &str) {
        self.sessions.remove(key);
    }

    /// Frees `key` only while it is still admission `instance`.
    pub fn release_instance(&mut self, key: &str, instance: u64) -> Option<(Session, Change)> {
        if self.sessions.get(key)?.instance != instance {
            return None;
        }
        self.release(key)
    }

    /// Applies a recorded change (journal replay). Idempotent per key.
    pub fn apply(&mut self, change: &Change, now: DateTime<Utc>) {
        match change {
            Change::Admit(s) => {
                self.instances = self.instances.max(s.instance);
                self.sessions.insert(s.key.clone(), s.clone());
                let in_use = self.in_use();
                if in_use > self.peak {
                    self.peak = in_use;
                    self.peak_at = Some(now.max(s.since));
                }
                let day = self.daily_peaks.entry(s.since.date_naive()).or_default();
                *day = (*day).max(in_use);
                while self.daily_peaks.len() > DAILY_PEAK_DAYS {
                    self.daily_peaks.pop_first();
                }
            }
            Change::Release(key) => {
                self.sessions.remove(key);
            }
        }
    }

    /// The distinct VPN server processes sessions live in.
    pub fn servers(&self) -> Vec<ServerId> {
        let mut ids: Vec<ServerId> = self.sessions.values().map(|s| s.server).collect();
        ids.sort_by_key(|s| (s.pid, s.start_ticks));
        ids.dedup();
        ids
    }

    /// Releases every session of a server that is gone.
    pub fn release_server(&mut self, server: ServerId) -> Vec<(Session, Change)> {
        let keys: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.server == server)
            .map(|s| s.key.clone())
            .collect();
        keys.iter().filter_map(|k| self.release(k)).collect()
    }
}

/// Fixtures the admission tests share (table, seats, policy).
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::admission::protocol::ServerRef;
    use proptest::prelude::*;

    pub(in crate::admission) fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Alice's session `key` on OpenVPN server pid 10.
    pub(in crate::admission) fn req(key: &str) -> AdmitRequest {
        AdmitRequest {
            key: key.into(),
            user: "alice".into(),
            server: ServerRef {
                kind: ServerKind::Openvpn,
                pid: 10,
            },
            remote: "192.0.2.1".into(),
            group: String::new(),
        }
    }

    pub(in crate::admission) const fn server(pid: u32) -> ServerId {
        ServerId {
            kind: ServerKind::Openvpn,
            pid,
            start_ticks: 7,
            ns_pid: pid,
        }
    }

    #[test]
    fn admits_up_to_the_cap_then_denies() {
        let mut t = Table::default();
        for i in 0..3 {
            assert_eq!(
                t.admit(
                    &req(&format!("k{i}")),
                    server(10),
                    3,
                    &SeatPolicy::default(),
                    now()
                )
                .0,
                Decision::Admitted { again: false }
            );
        }
        assert_eq!(
            t.admit(&req("k3"), server(10), 3, &SeatPolicy::default(), now())
                .0,
            Decision::Denied(DenyReason::CapReached)
        );
        assert_eq!(t.in_use(), 3);
        assert_eq!(t.denials, 1);
        assert_eq!(t.peak, 3);
    }

    #[test]
    fn daily_peaks_follow_the_session_start_day_and_stay_bounded() {
        let mut t = Table::default();
        let day = |d: i64| now() + chrono::Duration::days(d);
        for d in 0..40i64 {
            for i in 0..(d % 5 + 1) {
                t.admit(
                    &req(&format!("d{d}-{i}")),
                    server(10),
                    100,
                    &SeatPolicy::default(),
                    day(d),
                );
            }
            for i in 0..(d % 5 + 1) {
                t.release(&format!("d{d}-{i}"));
            }
        }
        assert_eq!(t.daily_peaks.len(), DAILY_PEAK_DAYS);
        assert_eq!(t.daily_peaks.keys().next(), Some(&day(9).date_naive()));
        assert_eq!(t.daily_peaks[&day(39).date_naive()], 5);
        assert_eq!(t.daily_peaks[&day(35).date_naive()], 1);
    }

    #[test]
    fn repeated_admit_does_not_count_twice() {
        let mut t = Table::default();
        t.admit(&req("k"), server(10), 1, &SeatPolicy::default(), now());
        let (d, change, _) = t.admit(&req("k"), server(10), 1, &SeatPolicy::default(), now());
        assert_eq!(d, Decision::Admitted { again: true });
        assert_eq!(change, None);
        assert_eq!(t.in_use(), 1);
    }

    #[test]
    fn releasing_unknown_keys_changes_nothing() {
        let mut t = Table::default();
        t.admit(&req("k"), server(10), 2, &SeatPolicy::default(), now());
        // A rejected client's disconnect: its key never got a seat.
        assert_eq!(
            t.admit(&req("k2"), server(10), 1, &SeatPolicy::default(), now())
                .0,
            Decision::Denied(DenyReason::CapReached)
        );
        assert!(t.release("k2").is_none());
        assert_eq!(t.in_use(), 1);
    }

    #[test]
    fn over_cap_drains() {
        let mut t = Table::default();
        for i in 0..5 {
            t.admit(
                &req(&format!("k{i}")),
                server(10),
                5,
                &SeatPolicy::default(),
                now(),
            );
        }
        // The cap dropped to 2: existing sessions stay, new ones wait.
        assert_eq!(
            t.admit(&req("new"), server(10), 2, &SeatPolicy::default(), now())
                .0,
            Decision::Denied(DenyReason::OverCap)
        );
        for i in 0..3 {
            t.release(&format!("k{i}"));
        }
        assert_eq!(
            t.admit(&req("new"), server(10), 2, &SeatPolicy::default(), now())
                .0,
            Decision::Denied(DenyReason::CapReached)
        );
        t.release("k3");
        assert_eq!(
            t.admit(&req("new"), server(10), 2, &SeatPolicy::default(), now())
                .0,
            Decision::Admitted { again: false }
        );
    }

    #[test]
    fn zero_cap_is_no_license() {
        let mut t = Table::default();
        assert_eq!(
            t.admit(&req("k"), server(10), 0, &SeatPolicy::default(), now())
                .0,
            Decision::Denied(DenyReason::NoLicense)
        );
    }

    #[test]
    fn dead_server_releases_only_its_sessions() {
        let mut t = Table::default();
        t.admit(&req("a"), server(10), 9, &SeatPolicy::default(), now());
        t.admit(&req("b"), server(10), 9, &SeatPolicy::default(), now());
        t.admit(&req("c"), server(11), 9, &SeatPolicy::default(), now());
        assert_eq!(t.servers(), vec![server(10), server(11)]);
        let freed = t.release_server(server(10));
        assert_eq!(freed.len(), 2);
        assert_eq!(t.in_use(), 1);
        assert!(t.get("c").is_some());
    }

    proptest! {
        /// Any interleaving of admits and releases: in-use never exceeds the
        /// cap, and replaying the changes rebuilds the same table.
        #[test]
        fn never_over_cap_and_replay_is_exact(
            cap in 0u32..8,
            ops in prop::collection::vec((any::<bool>(), 0u8..12), 0..200),
        ) {
            let mut t = Table::default();
            let mut log = Vec::new();
            for (is_admit, k) in ops {
                let key = format!("k{k}");
                if is_admit {
                    let (_, change, _) = t.admit(&req(&key), server(10), cap, &SeatPolicy::default(), now());
                    log.extend(change);
                } else if let Some((_, change)) = t.release(&key) {
                    log.push(change);
                }
                prop_assert!(t.in_use() <= cap);
            }
            let mut replayed = Table::default();
            for c in &log {
                replayed.apply(c, now());
            }
            prop_assert_eq!(&replayed.sessions, &t.sessions);
            // Replaying the whole log again over the final state changes nothing.
            for c in &log {
                replayed.apply(c, now());
            }
            prop_assert_eq!(replayed.sessions, t.sessions);
        }
    }
}
