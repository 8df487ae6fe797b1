//! When the pool loop asks the cloud, beyond renewing a third into the
//! lease (docs/pools.md, "Timing promise"), and the unmet demand it
//! reports. Pure: the clock and what the gateway looks like are arguments.
//!
//! - **Demand**: a refusal for want of seats while this gateway is a pool
//!   member, or pool usage grown into the top of the slice (within
//!   `HIGH_WATER_GAP` of it) since the cloud last heard, asks after
//!   `DEBOUNCE`, so a burst of refusals is one request.
//! - **Give-back**: a slice more than `POOL_HEADROOM` above what is wanted,
//!   with demand lower than the cloud last heard, or a left pool whose
//!   sessions went down, for `GIVE_BACK_AFTER`: report early so the seats
//!   can go to another member.
//! - **Acknowledge**: a lease that shrank is reported held at once: the
//!   cloud counts the larger one until it hears that (take before give).
//! - **Contended**: while a lease says the pool is contended or the slice
//!   waits for seats others hold, report every `CONTENDED_EVERY` and give
//!   idle seats back after `DEBOUNCE`: seats move only on reports.
//! - Never more than one request per `MIN_INTERVAL`; while requests fail,
//!   the retry back-off alone decides.
//!
//! `Attempts` counts refused clients once per `ATTEMPT_WINDOW`, so a client
//! retrying every 100 ms is one seat of demand, not ten a second.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use super::wire::{PoolReport, POOL_HEADROOM};
use crate::license::lease::Limit;

/// A burst of refusals within this becomes one request.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// At most one pool request per this (and one in flight).
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// A slice idle beyond demand for this long is given back.
pub const GIVE_BACK_AFTER: Duration = Duration::from_secs(1);
/// While the cloud says the pool is contended (or this slice waits for
/// seats others hold), report at least this often, and give idle seats
/// back after `DEBOUNCE` instead of `GIVE_BACK_AFTER`: others wait for them.
pub const CONTENDED_EVERY: Duration = Duration::from_secs(1);
/// Usage within this of the slice asks for more before anyone is refused.
pub const HIGH_WATER_GAP: u32 = POOL_HEADROOM / 2;
/// A refused client counts as demand until this long after its last try.
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(30);
/// Refused clients remembered at most (the oldest go first).
pub const MAX_ATTEMPTS: usize = 4096;

/// One pool as the loop sees it: what it would report, and its slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSeen {
    pub report: PoolReport,
    /// A current member (false: a pool this gateway left, still draining).
    pub member: bool,
    /// The slice usable now (None: no valid lease).
    pub slice: Option<u32>,
    /// When the lease in force runs out, and when it was asked for.
    pub expires: Option<Instant>,
    pub asked: Option<Instant>,
    /// Why the cloud granted less than wanted, as its lease says.
    pub limited: Option<Limit>,
}

/// What the gateway looks like to the pool loop at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    pub pools: Vec<PoolSeen>,
    /// Admissions refused for want of seats since the start (a counter).
    pub refused: u64,
}

impl PoolView {
    pub fn reports(&self) -> Vec<PoolReport> {
        self.pools.iter().map(|p| p.report.clone()).collect()
    }

    /// The earliest expiry of a lease valid now: the loop looks then.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.pools
            .iter()
            .filter(|p| p.slice.is_some())
            .filter_map(|p| p.expires)
            .min()
    }
}

/// The loop's memory between looks: what the cloud last heard and which
/// early request is pending.
#[derive(Debug, Default)]
pub struct Pacer {
    last_sent: Option<Instant>,
    /// `refused` in the last report the cloud received.
    refused_told: u64,
    /// (pool, in_use, wanted) the cloud last received.
    told: Vec<(String, u32, u32)>,
    /// When demand was first seen since the last request.
    demand_since: Option<Instant>,
    /// Since when a slice has been idle beyond demand.
    idle_since: Option<Instant>,
    ack: bool,
}

impl Pacer {
    /// When to send the next request, looking at `view` at `now`;
    /// `scheduled` is the regular time (renewal, or the retry back-off
    /// while `failing`).
    pub fn due(
        &mut self,
        now: Instant,
        view: &PoolView,
        scheduled: Instant,
        failing: bool,
    ) -> Instant {
        let told = |pool: &str| {
            let t = self.told.iter().find(|t| t.0 == pool);
            t.map(|t| (t.1, t.2))
        };
        let refused = view.refused > self.refused_told && view.pools.iter().any(|p| p.member);
        let high = view.pools.iter().any(|p| {
            let r = &p.report;
            p.member
                && p.slice
                    .is_some_and(|s| r.in_use.saturating_add(HIGH_WATER_GAP) >= s)
                && told(&r.pool).is_none_or(|(u, _)| r.in_use > u)
        });
        let idle = view.pools.iter().any(|p| {
            let r = &p.report;
            match told(&r.pool) {
                None => false,
                Some((u, _)) if !p.member => r.in_use < u,
                Some((_, w)) => {
                    r.wanted < w
                        && p.slice
                            .is_some_and(|s| s > r.wanted.saturating_add(POOL_HEADROOM))
                }
            }
        });
        if refused || high {
            self.demand_since.get_or_insert(now);
        }
        if idle {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
        if failing {
            return scheduled;
        }
        let contended = view.pools.iter().any(|p| {
            p.slice.is_some() && matches!(p.limited, Some(Limit::Contended | Limit::Held))
        });
        let earliest = self.last_sent.map_or(now, |t| t + MIN_INTERVAL);
        let mut due = scheduled;
        if contended {
            due = due.min(self.last_sent.map_or(now, |t| t + CONTENDED_EVERY));
        }
        if let Some(t) = self.demand_since {
            due = due.min((t + DEBOUNCE).max(earliest));
        }
        if let Some(t) = self.idle_since {
            let after = if contended { DEBOUNCE } else { GIVE_BACK_AFTER };
            due = due.min((t + after).max(earliest));
        }
        if self.ack {
            due = due.min(earliest);
        }
        due
    }

    /// A request built from `view` went out at `at`.
    pub fn sent(&mut self, at: Instant) {
        self.last_sent = Some(at);
        self.demand_since = None;
        self.idle_since = None;
        self.ack = false;
    }

    /// The cloud received the report built from `view`; `shrunk`: a slice
    /// got smaller in the answer (the cloud must hear it is held).
    pub fn delivered(&mut self, view: &PoolView, shrunk: bool) {
        self.refused_told = view.refused;
        self.told = view
            .pools
            .iter()
            .map(|p| (p.report.pool.clone(), p.report.in_use, p.report.wanted))
            .collect();
        self.ack = shrunk;
    }
}

/// Clients refused for want of seats, each counted once while it keeps
/// trying (by user and remote address; hashed, bounded).
#[derive(Debug, Default)]
pub struct Attempts {
    /// (client, last refused); few enough to search.
    last: Vec<(u64, Instant)>,
    /// Every refusal, retries too: what wakes the pool loop.
    pub refused: u64,
}

fn client(user: &str, remote: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (user, remote).hash(&mut h);
    h.finish()
}

impl Attempts {
    pub fn refused(&mut self, user: &str, remote: &str, now: Instant) {
        self.refused += 1;
        let c = client(user, remote);
        if let Some(t) = self.last.iter_mut().find(|t| t.0 == c) {
            t.1 = now;
            return;
        }
        if self.last.len() >= MAX_ATTEMPTS {
            self.last
                .retain(|t| now.saturating_duration_since(t.1) < ATTEMPT_WINDOW);
        }
        if self.last.len() >= MAX_ATTEMPTS {
            let oldest = (0..self.last.len()).min_by_key(|i| self.last[*i].1);
            if let Some(i) = oldest {
                self.last.swap_remove(i);
            }
        }
        self.last.push((c, now));
    }

    /// The client got a seat: it is no longer unmet demand.
    pub fn admitted(&mut self, user: &str, remote: &str) {
        if !self.last.is_empty() {
            let c = client(user, remote);
            self.last.retain(|t| t.0 != c);
        }
    }

    /// Distinct clients refused within the window before `now`.
    pub fn waiting(&self, now: Instant) -> u32 {
        let n = self
            .last
            .iter()
            .filter(|t| now.saturating_duration_since(t.1) < ATTEMPT_WINDOW)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn seen(pool: &str, in_use: u32, wanted: u32, slice: Option<u32>) -> PoolSeen {
        PoolSeen {
            report: PoolReport {
                pool: pool.into(),
                in_use,
                wanted,
                held_epoch: slice.map(|_| 1),
            },
            member: true,
            slice,
            expires: None,
            asked: None,
            limited: None,
        }
    }

    fn view(pools: Vec<PoolSeen>, refused: u64) -> PoolView {
        PoolView { pools, refused }
    }

    /// A pacer that told the cloud `v` at `at` and got an answer.
    fn told(v: &PoolView, at: Instant) -> Pacer {
        let mut p = Pacer::default();
        p.sent(at);
        p.delivered(v, false);
        p
    }

    #[test]
    fn a_refusal_asks_after_the_debounce_not_at_the_renewal() {
        let t0 = Instant::now();
        let renew = t0 + Duration::from_secs(100);
        let quiet = view(vec![seen("P", 10, 14, Some(14))], 3);
        let mut p = told(&quiet, t0);
        let now = t0 + Duration::from_secs(5);
        assert_eq!(p.due(now, &quiet, renew, false), renew, "nothing new");
        // A burst of refusals: one request, DEBOUNCE after the first.
        let busy = view(vec![seen("P", 14, 20, Some(14))], 9);
        assert_eq!(p.due(now, &busy, renew, false), now + DEBOUNCE);
        let later = view(vec![seen("P", 14, 25, Some(14))], 40);
        assert_eq!(p.due(now + ms(100), &later, renew, false), now + DEBOUNCE);
        // While failing, the back-off decides.
        assert_eq!(p.due(now + ms(100), &later, renew, true), renew);
        // A left pool's refusals (no member) ask nothing.
        let mut left = seen("P", 14, 0, None);
        left.member = false;
        let mut q = told(&quiet, t0);
        assert_eq!(q.due(now, &view(vec![left], 9), renew, false), renew);
    }

    #[test]
    fn requests_are_at_least_min_interval_apart() {
        let t0 = Instant::now();
        let renew = t0 + Duration::from_secs(100);
        let v = view(vec![seen("P", 10, 14, Some(14))], 0);
        let mut p = told(&v, t0);
        let busy = view(vec![seen("P", 14, 18, Some(14))], 1);
        // Seen 10 ms after a request: the interval, not the debounce, rules.
        assert_eq!(p.due(t0 + ms(10), &busy, renew, false), t0 + MIN_INTERVAL);
        p.sent(t0 + MIN_INTERVAL);
        // Still refusing after the answer (the cloud had nothing): the
        // next request no sooner than MIN_INTERVAL later.
        let more = view(vec![seen("P", 14, 18, Some(14))], 50);
        let at = t0 + MIN_INTERVAL + ms(5);
        assert_eq!(p.due(at, &more, renew, false), t0 + MIN_INTERVAL * 2);
        // A request that failed told the cloud nothing: demand stays.
        let mut q = told(&v, t0);
        q.due(t0 + ms(300), &busy, renew, false);
        q.sent(t0 + ms(450));
        let due = q.due(t0 + ms(460), &busy, renew, false);
        assert_eq!(due, t0 + ms(650));
    }

    #[test]
    fn usage_at_the_top_of_the_slice_asks_once_per_growth() {
        let t0 = Instant::now();
        let renew = t0 + Duration::from_secs(100);
        let v = view(vec![seen("P", 10, 14, Some(14))], 0);
        let mut p = told(&v, t0);
        let cases = [
            (11, 14, renew, "below the high-water mark"),
            (12, 14, t0 + ms(1000) + DEBOUNCE, "within 2 of the slice"),
        ];
        for (in_use, slice, want, what) in cases {
            let now = t0 + ms(1000);
            let mut q = told(&v, t0);
            let look = view(vec![seen("P", in_use, in_use + 4, Some(slice))], 0);
            assert_eq!(q.due(now, &look, renew, false), want, "{what}");
        }
        // The cloud heard 12 and answered 14: no asking again at 12...
        let at12 = view(vec![seen("P", 12, 16, Some(14))], 0);
        p.sent(t0);
        p.delivered(&at12, false);
        assert_eq!(p.due(t0 + ms(500), &at12, renew, false), renew);
        // ...but at 13.
        let at13 = view(vec![seen("P", 13, 17, Some(14))], 0);
        assert_eq!(
            p.due(t0 + ms(500), &at13, renew, false),
            t0 + ms(500) + DEBOUNCE
        );
    }

    #[test]
    fn a_contended_pool_is_reported_every_second_and_idle_seats_go_back_at_once() {
        let t0 = Instant::now();
        let renew = t0 + Duration::from_secs(100);
        let mut full = seen("P", 100, 104, Some(104));
        full.limited = Some(Limit::Contended);
        let mut p = told(&view(vec![full.clone()], 0), t0);
        // Nothing new here, but others wait: report a second after the last.
        assert_eq!(
            p.due(t0 + ms(10), &view(vec![full.clone()], 0), renew, false),
            t0 + CONTENDED_EVERY
        );
        // Waiting for seats others hold is the same.
        let mut held = full.clone();
        held.limited = Some(Limit::Held);
        assert_eq!(
            p.due(t0 + ms(10), &view(vec![held], 0), renew, false),
            t0 + CONTENDED_EVERY
        );
        // Users left: the idle seats go back after the debounce, not a second.
        let mut empty = seen("P", 0, 4, Some(104));
        empty.limited = Some(Limit::Contended);
        let t1 = t0 + ms(500);
        assert_eq!(
            p.due(t1, &view(vec![empty], 0), renew, false),
            t1 + DEBOUNCE
        );
        // A cloud that is not contended: the regular renewal.
        full.limited = None;
        let mut q = told(&view(vec![full.clone()], 0), t0);
        assert_eq!(
            q.due(t0 + ms(10), &view(vec![full], 0), renew, false),
            renew
        );
    }

    #[test]
    fn an_idle_slice_is_given_back_after_a_second_and_only_once() {
        let t0 = Instant::now();
        let renew = t0 + Duration::from_secs(100);
        let full = view(vec![seen("P", 100, 104, Some(104))], 0);
        let mut p = told(&full, t0);
        let empty = view(vec![seen("P", 0, 4, Some(104))], 0);
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(p.due(t1, &empty, renew, false), t1 + GIVE_BACK_AFTER);
        // Busy again before the second is up: nothing to give back.
        assert_eq!(p.due(t1 + ms(500), &full, renew, false), renew);
        assert_eq!(
            p.due(t1 + ms(600), &empty, renew, false),
            t1 + ms(600) + GIVE_BACK_AFTER
        );
        // Given back: the cloud knows the demand; a cloud that still
        // leaves a large slice here is not asked again and again.
        p.sent(t1 + ms(1600));
        p.delivered(&empty, false);
        let spread = view(vec![seen("P", 0, 4, Some(50))], 0);
        assert_eq!(p.due(t1 + ms(5000), &spread, renew, false), renew);
        // A slice within the headroom of demand is not idle.
        let mut q = told(&full, t0);
        let near = view(vec![seen("P", 96, 100, Some(104))], 0);
        assert_eq!(q.due(t1, &near, renew, false), renew);
    }

    #[test]
    fn a_shrunk_lease_is_acknowledged_after_the_interval() {
        let t0 = Instant::now();
        let renew = t0 + Duration::from_secs(100);
        let v = view(vec![seen("P", 0, 4, Some(4))], 0);
        let mut p = Pacer::default();
        p.sent(t0);
        p.delivered(&v, true);
        assert_eq!(p.due(t0 + ms(20), &v, renew, false), t0 + MIN_INTERVAL);
        p.sent(t0 + MIN_INTERVAL);
        p.delivered(&v, false);
        assert_eq!(p.due(t0 + ms(400), &v, renew, false), renew);
    }

    #[test]
    fn the_loop_looks_again_when_the_first_valid_lease_runs_out() {
        let t0 = Instant::now();
        let mut a = seen("A", 0, 4, Some(10));
        a.expires = Some(t0 + ms(900));
        let mut b = seen("B", 0, 4, Some(10));
        b.expires = Some(t0 + ms(300));
        let mut gone = seen("C", 0, 4, None);
        gone.expires = Some(t0 + ms(100));
        let v = view(vec![a, b.clone(), gone.clone()], 0);
        assert_eq!(v.next_expiry(), Some(t0 + ms(300)), "expired ones are past");
        assert_eq!(view(vec![gone], 0).next_expiry(), None);
        assert_eq!(v.reports().len(), 3);
    }

    #[test]
    fn a_left_pool_draining_reports_after_the_give_back_delay() {
        let t0 = Instant::now();
        let renew = t0 + Duration::from_secs(100);
        let mut left = seen("P", 5, 0, None);
        left.member = false;
        let mut p = told(&view(vec![left.clone()], 0), t0);
        left.report.in_use = 4;
        let at = t0 + ms(300);
        assert_eq!(
            p.due(at, &view(vec![left], 0), renew, false),
            at + GIVE_BACK_AFTER
        );
    }

    #[test]
    fn a_retrying_client_counts_once_per_window() {
        let t0 = Instant::now();
        let mut a = Attempts::default();
        // One client every 100 ms for 10 s, another twice.
        for i in 0..100 {
            a.refused("alice", "192.0.2.1", t0 + ms(100 * i));
        }
        a.refused("bob", "192.0.2.2", t0);
        a.refused("bob", "192.0.2.2", t0 + ms(50));
        // The same user from another address is another client.
        a.refused("alice", "198.51.100.7", t0 + ms(10));
        assert_eq!(a.refused, 103);
        assert_eq!(a.waiting(t0 + Duration::from_secs(10)), 3);
        // Out of the window: bob and the second alice stopped trying.
        let late = t0 + Duration::from_secs(31);
        assert_eq!(a.waiting(late), 1);
        assert_eq!(a.waiting(t0 + Duration::from_secs(40)), 0);
        // Admitted: no longer waiting.
        a.refused("carol", "192.0.2.3", late);
        a.admitted("carol", "192.0.2.3");
        a.admitted("nobody", "192.0.2.4");
        assert_eq!(a.waiting(late), 1);
    }

    #[test]
    fn attempts_stay_bounded() {
        let t0 = Instant::now();
        let mut a = Attempts::default();
        for i in 0..MAX_ATTEMPTS as u64 + 10 {
            a.refused(&format!("u{i}"), "192.0.2.1", t0 + ms(i));
        }
        assert_eq!(a.last.len(), MAX_ATTEMPTS);
        let now = t0 + ms(MAX_ATTEMPTS as u64 + 10);
        assert_eq!(a.waiting(now), MAX_ATTEMPTS as u32);
        // The oldest went first.
        a.admitted("u10", "192.0.2.1");
        assert_eq!(a.waiting(now), MAX_ATTEMPTS as u32 - 1);
        a.admitted("u0", "192.0.2.1");
        assert_eq!(a.waiting(now), MAX_ATTEMPTS as u32 - 1);
    }
}
