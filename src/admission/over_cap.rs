//! Over-cap enforcement, the plan (pure): when the cap drops below the
//! seats in use and the policy disconnects, which sessions go (the newest
//! or the oldest by admission time) and when (a grace period after the
//! over-cap state began, measured on the monotonic clock: a wall clock
//! moved does not fire it early). Seats of sessions lost with a damaged
//! snapshot count against the cap but cannot be disconnected: the plan
//! says how many.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::table::{Session, Table};

/// Which sessions go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Newest,
    Oldest,
}

/// What will be done about the seats over the cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub order: Order,
    /// Seats in use beyond the cap.
    pub over_by: u32,
    /// When the sessions are disconnected (wall clock, for people).
    pub at: DateTime<Utc>,
    /// Milliseconds from now until then (0: due).
    pub in_ms: u64,
    /// The sessions that will go, in the order they go.
    pub keys: Vec<String>,
    /// Seats over the cap held by lost sessions: they cannot be
    /// disconnected (`seatgate evict --lost` once the servers are checked).
    pub lost: u32,
    /// Whether the countdown runs (false: the daemon starts it at its next
    /// look, within a second; `at` is then a grace from now).
    #[serde(default)]
    pub counting: bool,
}

impl Plan {
    pub fn due(&self) -> bool {
        self.in_ms == 0
    }
}

/// When the over-cap state began (monotonic), if a countdown runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Countdown {
    pub since: Option<Instant>,
    /// Disconnects are under way (one try at a time).
    pub busy: bool,
}

/// What a look at the table did to the countdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No countdown, none needed.
    Idle,
    /// Over the cap with a disconnecting policy: the countdown began now.
    Started,
    /// The countdown goes on.
    Running,
    /// Back within the cap (or the policy is drain now): countdown over.
    Cancelled,
}

impl Countdown {
    /// Moves the countdown on: `over` whether the seats in use exceed the
    /// cap, `enforcing` whether the policy disconnects.
    pub fn step(&mut self, over: bool, enforcing: bool, now: Instant) -> Step {
        match (over && enforcing, self.since) {
            (true, Some(_)) => Step::Running,
            (true, None) => {
                self.since = Some(now);
                Step::Started
            }
            (false, Some(_)) => {
                self.since = None;
                Step::Cancelled
            }
            (false, None) => Step::Idle,
        }
    }

    /// How long the over-cap state has lasted (None: no countdown).
    pub fn over_for(&self, now: Instant) -> Option<Duration> {
        self.since.map(|s| now.saturating_duration_since(s))
    }
}

/// The plan for `table` against `cap`, the over-cap state having lasted
/// `over_for` of `grace` (None: no countdown yet, a full grace from
/// `now`); None when the table is within the cap.
pub fn plan(
    table: &Table,
    cap: u32,
    order: Order,
    grace: Duration,
    over_for: Option<Duration>,
    now: DateTime<Utc>,
) -> Option<Plan> {
    let over_by = table.in_use().checked_sub(cap).filter(|&n| n > 0)?;
    // The first `over_by` in the order, picked one at a time: no sort
    // code in the binary for a rare event (k x n comparisons).
    fn rank<'a>(s: &&'a Session) -> (DateTime<Utc>, &'a str) {
        (s.since, s.key.as_str())
    }
    let mut keys: Vec<String> = Vec::new();
    let mut last: Option<(DateTime<Utc>, &str)> = None;
    for _ in 0..over_by {
        let after = |s: &&Session| match (order, last) {
            (_, None) => true,
            (Order::Oldest, Some(l)) => rank(s) > l,
            (Order::Newest, Some(l)) => rank(s) < l,
        };
        let candidates = table.sessions().filter(after);
        let next = match order {
            Order::Oldest => candidates.min_by_key(rank),
            Order::Newest => candidates.max_by_key(rank),
        };
        let Some(s) = next else { break };
        last = Some(rank(&s));
        keys.push(s.key.clone());
    }
    let lost = over_by - u32::try_from(keys.len()).unwrap_or(u32::MAX).min(over_by);
    let left = grace.saturating_sub(over_for.unwrap_or_default());
    Some(Plan {
        order,
        over_by,
        at: chrono::Duration::from_std(left)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        in_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        keys,
        lost,
        counting: over_for.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::protocol::ServerKind;
    use crate::admission::table::ServerId;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    /// Sessions k0..kN admitted a second apart, listed out of order.
    fn table(n: usize, lost: u32) -> Table {
        let sessions = (0..n)
            .rev()
            .map(|i| Session {
                key: format!("k{i}"),
                instance: i as u64,
                user: "u".into(),
                group: String::new(),
                remote: String::new(),
                server: ServerId {
                    kind: ServerKind::Openvpn,
                    pid: 7,
                    start_ticks: 1,
                    ns_pid: 7,
                },
                since: at(i as i64),
            })
            .collect();
        let mut t = Table::default().with_sessions(sessions);
        t.lost = lost;
        t
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn within_the_cap_there_is_no_plan() {
        for (n, cap) in [(0, 0), (3, 3), (3, 5)] {
            assert_eq!(
                plan(&table(n, 0), cap, Order::Newest, GRACE, Some(GRACE), at(9)),
                None
            );
        }
        // Lost seats count: 2 known + 2 lost over a cap of 3.
        assert!(plan(&table(2, 2), 3, Order::Newest, GRACE, Some(GRACE), at(9)).is_some());
    }

    #[test]
    fn newest_or_oldest_go_first() {
        let t = table(5, 0);
        let p = plan(&t, 2, Order::Newest, GRACE, Some(Duration::ZERO), at(9)).unwrap();
        assert_eq!((p.over_by, p.lost), (3, 0));
        assert_eq!(p.keys, ["k4", "k3", "k2"]);
        let p = plan(&t, 2, Order::Oldest, GRACE, Some(Duration::ZERO), at(9)).unwrap();
        assert_eq!(p.keys, ["k0", "k1", "k2"]);
        // Admitted at the same instant: by key, so the plan is stable.
        let mut same = table(0, 0);
        same = same.with_sessions(
            ["b", "a", "c"]
                .iter()
                .map(|k| Session {
                    key: k.to_string(),
                    since: at(0),
                    ..t.get("k0").unwrap().clone()
                })
                .collect(),
        );
        let p = plan(&same, 1, Order::Oldest, GRACE, Some(GRACE), at(0)).unwrap();
        assert_eq!(p.keys, ["a", "b"]);
    }

    #[test]
    fn the_grace_counts_down_from_when_the_cap_was_exceeded() {
        let t = table(3, 0);
        let p = plan(
            &t,
            2,
            Order::Newest,
            GRACE,
            Some(Duration::from_secs(35)),
            at(100),
        )
        .unwrap();
        assert_eq!((p.in_ms, p.at, p.due()), (25_000, at(125), false));
        assert!(p.counting);
        // Not started yet: a full grace from now, and said so.
        let p = plan(&t, 2, Order::Newest, GRACE, None, at(100)).unwrap();
        assert_eq!((p.in_ms, p.at, p.counting), (60_000, at(160), false));
        let p = plan(&t, 2, Order::Newest, GRACE, Some(GRACE), at(100)).unwrap();
        assert_eq!((p.in_ms, p.at, p.due()), (0, at(100), true));
        let p = plan(&t, 2, Order::Newest, GRACE, Some(GRACE * 10), at(100)).unwrap();
        assert!(p.due());
        // No grace: due at once.
        let p = plan(&t, 2, Order::Newest, Duration::ZERO, None, at(100)).unwrap();
        assert!(p.due());
        // A grace too long for the wall clock still plans (never panics).
        let huge = Duration::from_secs(u64::MAX);
        let p = plan(&t, 2, Order::Newest, huge, None, at(100)).unwrap();
        assert!(!p.due());
    }

    #[test]
    fn the_countdown_starts_runs_and_is_cancelled_when_the_cap_recovers() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let mut c = Countdown::default();
        assert_eq!(c.step(false, true, t0), Step::Idle);
        // Over the cap but draining: no countdown.
        assert_eq!(c.step(true, false, t0), Step::Idle);
        assert_eq!(c.step(true, true, t0), Step::Started);
        assert_eq!(c.step(true, true, later), Step::Running);
        assert_eq!(c.over_for(later), Some(Duration::from_secs(5)));
        // Sessions ended (or the cap came back): cancelled, and a new
        // over-cap state starts a full grace again.
        assert_eq!(c.step(false, true, later), Step::Cancelled);
        assert_eq!(c.over_for(later), None);
        assert_eq!(c.step(true, true, later), Step::Started);
        assert_eq!(c.over_for(later), Some(Duration::ZERO));
        // The policy switched to drain by a reload: cancelled too.
        assert_eq!(c.step(true, false, later), Step::Cancelled);
    }

    #[test]
    fn lost_seats_cannot_be_disconnected() {
        // 2 known + 3 lost over a cap of 1: both known go, 2 lost remain over.
        let p = plan(&table(2, 3), 1, Order::Newest, GRACE, Some(GRACE), at(9)).unwrap();
        assert_eq!((p.over_by, p.keys.len(), p.lost), (4, 2, 2));
        // Lost seats within what the known sessions cover: all disconnectable.
        let p = plan(&table(4, 1), 3, Order::Oldest, GRACE, Some(GRACE), at(9)).unwrap();
        assert_eq!((p.over_by, p.keys.len(), p.lost), (2, 2, 0));
        // Only lost seats: nothing to disconnect.
        let p = plan(&table(0, 5), 2, Order::Oldest, GRACE, Some(GRACE), at(9)).unwrap();
        assert_eq!((p.over_by, p.keys.len(), p.lost), (3, 0, 3));
    }
}
