//! The pool allocator of the development cloud (docs/pools.md): who holds
//! how many seats of each shared pool, and the slice each member is granted
//! when it reports. A member gets what it wants while the pool covers every
//! member's demand (the rest stays ungranted, a reserve the next asker gets
//! at once); under contention the pool is shared in proportion above each
//! member's reported usage, which is its floor; and never more than the
//! others may still hold leaves free (take before give). Pure: the clock
//! and the quiet period are arguments. Lives in the devcloud, so the
//! gateway binary never carries it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use seatgate::cloud::wire::{PoolReport, POOL_HEADROOM};
use seatgate::license::lease::Limit;

/// Every pool's allocation; persisted by the devcloud (DIR/pools.json).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alloc {
    pub pools: BTreeMap<String, PoolAlloc>,
    /// The last epoch granted (any pool, any device): epochs only grow.
    pub last_epoch: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolAlloc {
    pub seats: u32,
    pub members: BTreeMap<String, Member>,
    /// The cloud granted a slice of this pool at least once: a cloud that
    /// restarts with this state keeps the quiet period for it; a pool that
    /// never had a grant has no lease in force to fear and is served at once.
    #[serde(default)]
    pub granted: bool,
}

/// What the cloud knows of one gateway of a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// A current member (false: the share was undone; it drains).
    pub member: bool,
    /// Pool usage in its last report.
    pub reported: u32,
    pub wanted: u32,
    /// Grants it may hold since its last report: the lease it said it held
    /// and what it was granted in answer.
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub epoch: u64,
    pub seats: u32,
    pub at: DateTime<Utc>,
}

impl Member {
    fn max_grant(&self) -> u32 {
        self.grants.iter().map(|g| g.seats).max().unwrap_or(0)
    }

    /// Seats this member may be using: its reported usage, or a slice it may
    /// have filled since (sessions are never cut, so a grant leaves `held`
    /// only through a later report, never by expiring).
    pub fn held(&self) -> u32 {
        self.reported.max(self.max_grant())
    }

    /// What it asks for: its wanted, and never less than its usage.
    fn demand(&self) -> u32 {
        self.wanted.max(self.reported)
    }

    /// What it needs: its usage and the clients it turned away, i.e. its
    /// demand less the headroom every gateway adds (docs/cloud-api.md).
    fn need(&self) -> u32 {
        self.demand()
            .saturating_sub(POOL_HEADROOM)
            .max(self.reported)
    }

    fn forgettable(&self) -> bool {
        !self.member && self.reported == 0 && self.grants.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("allocator bug: slices of pool {pool} would total {sum}, more than its {seats} seats; no lease granted")]
    Oversubscribed { pool: String, sum: u32, seats: u32 },
}

/// One grant and why it is less than the member wanted (None: it got its
/// demand, from the reserve or from its own slice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub grant: Grant,
    pub limit: Option<Limit>,
}

impl Decision {
    /// The reason word of the grant log line.
    pub fn reason(&self) -> &'static str {
        match self.limit {
            None => "reserve",
            Some(Limit::Quiet { .. }) => "quiet",
            Some(Limit::Contended) => "contended",
            Some(Limit::Held) => "held",
        }
    }
}

impl PoolAlloc {
    /// Σ over members of the largest slice each may hold.
    pub fn slices_in_force(&self) -> u32 {
        self.members.values().map(Member::max_grant).sum()
    }

    fn check(&self, pool: &str) -> Result<(), AllocError> {
        let sum = self.slices_in_force();
        if sum > self.seats {
            return Err(AllocError::Oversubscribed {
                pool: pool.to_string(),
                sum,
                seats: self.seats,
            });
        }
        Ok(())
    }

    /// What `device` may be granted without taking anything the other
    /// members may still hold: `seats − Σ held(others)`.
    pub fn available(&self, device: &str) -> u32 {
        let others: u64 = self
            .members
            .iter()
            .filter(|(name, _)| *name != device)
            .map(|(_, m)| u64::from(m.held()))
            .sum();
        u32::try_from(u64::from(self.seats).saturating_sub(others)).unwrap_or(0)
    }

    /// Whether the current members' demand exceeds what they share (the
    /// pool less what members that left still hold).
    #[cfg(test)]
    pub fn contended(&self) -> bool {
        let (share, demand, _) = self.demand();
        demand > share
    }

    /// (seats the current members share, Σ demand, Σ floor), demand being
    /// `max(wanted, reported)` and the floor `reported`.
    fn demand(&self) -> (u64, u64, u64) {
        let share = self.share();
        (share, self.sum(Member::demand), self.sum(|m| m.reported))
    }

    /// The seats the current members share: the pool less what members
    /// that left still hold.
    fn share(&self) -> u64 {
        let left: u64 = self
            .members
            .values()
            .filter(|m| !m.member)
            .map(|m| u64::from(m.held()))
            .sum();
        u64::from(self.seats).saturating_sub(left)
    }

    fn current(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter().filter(|(_, m)| m.member)
    }

    fn sum(&self, level: impl Fn(&Member) -> u32) -> u64 {
        self.current().map(|(_, m)| u64::from(level(m))).sum()
    }

    /// A current member's target by demand, in three tiers. While the pool
    /// covers everyone's demand: its demand (the rest stays in reserve).
    /// Else, while it covers every member's need (its usage and the
    /// clients it turned away: its demand less the headroom): its need,
    /// and the seats left shared in proportion to headroom. Else: its floor
    /// (usage) and the seats above all floors shared in proportion to its
    /// need above its floor. So refused users anywhere go before headroom.
    fn target(&self, device: &str) -> u32 {
        let Some(me) = self.members.get(device) else {
            return 0;
        };
        let (share, demand, floor) = self.demand();
        if demand <= share {
            return me.demand();
        }
        let need = self.sum(Member::need);
        if need <= share {
            return self.split(me, device, share - need, Member::need, Member::demand);
        }
        self.split(
            me,
            device,
            share.saturating_sub(floor),
            |m| m.reported,
            Member::need,
        )
    }

    /// `lo(me)` plus its part of `spare` seats shared in proportion to
    /// `hi − lo` over the current members, the seats rounding leaves going
    /// one each to the largest remainders (so none is lost). `spare` is
    /// less than `Σ (hi − lo)`: never above `hi(me)`.
    fn split(
        &self,
        me: &Member,
        device: &str,
        spare: u64,
        lo: impl Fn(&Member) -> u32,
        hi: impl Fn(&Member) -> u32,
    ) -> u32 {
        let above = |m: &Member| u64::from(hi(m).saturating_sub(lo(m)));
        let excess = self.sum(|m| hi(m).saturating_sub(lo(m)));
        if excess == 0 {
            return lo(me);
        }
        let leftover = spare
            - self
                .current()
                .map(|(_, m)| spare * above(m) / excess)
                .sum::<u64>();
        let rem = |m: &Member| spare * above(m) % excess;
        let mine = rem(me);
        let ahead = self
            .current()
            .filter(|(n, m)| rem(m) > mine || (rem(m) == mine && n.as_str() < device))
            .count() as u64;
        let bonus = u64::from(mine > 0 && ahead < leftover);
        lo(me) + u32::try_from(spare * above(me) / excess + bonus).unwrap_or(0)
    }
}

impl Alloc {
    /// Brings a pool in line with the licenses: its seats and current members.
    /// Members that left stay (not current) until they report drained.
    pub fn set_pool(&mut self, pool: &str, seats: u32, members: &[String]) {
        let p = self.pools.entry(pool.to_string()).or_default();
        p.seats = seats;
        for (name, m) in p.members.iter_mut() {
            m.member = members.contains(name);
        }
        for name in members {
            p.members.entry(name.clone()).or_default().member = true;
        }
        p.members.retain(|_, m| !m.forgettable());
    }

    /// The pools this cloud ever granted a slice of (those a restart keeps
    /// quiet).
    pub fn granted_pools(&self) -> impl Iterator<Item = &str> {
        self.pools
            .iter()
            .filter(|(_, p)| p.granted)
            .map(|(id, _)| id.as_str())
    }

    /// Takes `device`'s report for a pool and grants its next slice (None
    /// for a pool it is not a member of). `quiet_until`: the cloud restarted
    /// with state for this pool less than one lease length ago and grants
    /// nothing beyond reported usage until then.
    pub fn request(
        &mut self,
        device: &str,
        report: &PoolReport,
        now: DateTime<Utc>,
        quiet_until: Option<DateTime<Utc>>,
    ) -> Result<Option<Decision>, AllocError> {
        let Some(p) = self.pools.get_mut(&report.pool) else {
            return Ok(None);
        };
        let Some(m) = p.members.get_mut(device) else {
            return Ok(None);
        };
        m.reported = report.in_use;
        m.wanted = report.wanted;
        let demand = m.demand();
        // The gateway holds at most the lease it named; older grants were
        // replaced there, newer ones never arrived (one request in flight).
        m.grants.retain(|g| Some(g.epoch) == report.held_epoch);
        if !m.member {
            if m.forgettable() {
                p.members.remove(device);
            }
            return Ok(None);
        }
        let available = p.available(device);
        let target = match quiet_until {
            Some(_) => report.in_use,
            None => p.target(device),
        };
        let seats = target.min(available);
        // `contended` also on a member that got its demand: while others
        // wait, every member reports often so seats move (docs/pools.md).
        let (share, wanted_all, _) = p.demand();
        let limit = match quiet_until {
            Some(until) if seats < demand => Some(Limit::Quiet { until }),
            _ if seats < target => Some(Limit::Held),
            _ if wanted_all > share => Some(Limit::Contended),
            _ => None,
        };
        let epoch = (self.last_epoch + 1).max(u64::try_from(now.timestamp_millis()).unwrap_or(0));
        let grant = Grant {
            epoch,
            seats,
            at: now,
        };
        let m = p.members.get_mut(device).expect("checked above");
        m.grants.push(grant.clone());
        if let Err(e) = p.check(&report.pool) {
            if let Some(m) = p.members.get_mut(device) {
                m.grants.pop();
            }
            return Err(e);
        }
        p.granted = true;
        self.last_epoch = epoch;
        Ok(Some(Decision { grant, limit }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn report(in_use: u32, wanted: u32, held: Option<u64>) -> PoolReport {
        PoolReport {
            pool: "P".into(),
            in_use,
            wanted,
            held_epoch: held,
        }
    }

    fn pool(a: &Alloc) -> &PoolAlloc {
        &a.pools["P"]
    }

    /// `device` reports; the decision (a current member: always one).
    fn ask(a: &mut Alloc, device: &str, r: PoolReport) -> Decision {
        a.request(device, &r, t0(), None).unwrap().unwrap()
    }

    #[test]
    fn spare_seats_stay_in_the_pool_and_the_next_asker_gets_them_at_once() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "B", "C"]));
        let ga = ask(&mut a, "A", report(96, 100, None));
        assert_eq!((ga.grant.seats, ga.limit), (100, None));
        // B wants 22 and gets 22, not a share of the spare seats.
        let gb = ask(&mut a, "B", report(18, 22, None));
        assert_eq!((gb.grant.seats, gb.reason()), (22, "reserve"));
        assert_eq!(pool(&a).slices_in_force(), 122, "28 seats in reserve");
        // C asks for 28: all of the reserve, in this one answer.
        let gc = ask(&mut a, "C", report(0, 28, None));
        assert_eq!((gc.grant.seats, gc.limit), (28, None));
        assert_eq!(pool(&a).slices_in_force(), 150);
        assert!(!pool(&a).contended());
    }

    #[test]
    fn a_shrink_frees_seats_only_when_acknowledged() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "C"]));
        let ga = ask(&mut a, "A", report(96, 100, None));
        let gc = ask(&mut a, "C", report(0, 50, None));
        assert_eq!((ga.grant.seats, gc.grant.seats), (100, 50));
        // Demand moves: A needs 14 now, C 120. A's shrink is granted...
        let ga2 = ask(&mut a, "A", report(10, 14, Some(ga.grant.epoch)));
        assert_eq!((ga2.grant.seats, ga2.limit), (14, None));
        // ...but C gets nothing more until A acknowledges it, and is told why.
        let gc2 = ask(&mut a, "C", report(46, 120, Some(gc.grant.epoch)));
        assert_eq!(
            (gc2.grant.seats, gc2.limit),
            (50, Some(Limit::Held)),
            "A may still hold 100"
        );
        let ga3 = ask(&mut a, "A", report(10, 14, Some(ga2.grant.epoch)));
        assert_eq!(ga3.grant.seats, 14);
        // A's smaller lease acknowledged: C gets all it asks at once.
        let gc3 = ask(&mut a, "C", report(50, 120, Some(gc2.grant.epoch)));
        assert_eq!((gc3.grant.seats, gc3.limit), (120, None));
        assert!(pool(&a).slices_in_force() <= 150);
        // A lost answer does not count as acknowledged: A names the lease
        // it really holds (ga3), so the 120 it never saw stays out of it.
        let ga4 = ask(&mut a, "A", report(10, 40, Some(ga3.grant.epoch)));
        assert_eq!(ga4.grant.seats, 150 - 120);
    }

    #[test]
    fn turned_away_users_go_before_headroom_and_a_member_that_got_its_demand_hears_of_contention() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "C"]));
        // A holds 90 sessions and asks for its headroom: uncontended.
        let ga = ask(&mut a, "A", report(90, 94, None));
        assert_eq!((ga.grant.seats, ga.limit), (94, None));
        // 60 users turned away at C: 0 + 4 headroom + 60. The pool covers
        // every need (90 + 60), not every demand (94 + 64).
        let gc = ask(&mut a, "C", report(0, 64, None));
        assert_eq!((gc.grant.seats, gc.limit), (56, Some(Limit::Held)));
        // A's headroom goes to C's users: A is cut to its need and told
        // the pool is contended (so it reports often while it lasts).
        let ga2 = ask(&mut a, "A", report(90, 94, Some(ga.grant.epoch)));
        assert_eq!((ga2.grant.seats, ga2.limit), (90, Some(Limit::Contended)));
        ask(&mut a, "A", report(90, 94, Some(ga2.grant.epoch)));
        let gc2 = ask(&mut a, "C", report(56, 64, Some(gc.grant.epoch)));
        assert_eq!(gc2.grant.seats, 60, "every turned-away user gets in");
        // Even a member that got all it asked hears of the contention.
        assert_eq!(gc2.limit, Some(Limit::Contended));
        assert!(pool(&a).slices_in_force() <= 150);
    }

    #[test]
    fn contention_is_shared_above_each_members_steady_use_and_retries_buy_nothing_below_it() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "C"]));
        let ga = ask(&mut a, "A", report(0, 100, None));
        let gc = ask(&mut a, "C", report(0, 42, None));
        assert_eq!((ga.grant.seats, gc.grant.seats), (100, 42));
        // A fills its slice and its clients retry hard: a huge wanted.
        let ga2 = ask(&mut a, "A", report(100, 900, Some(ga.grant.epoch)));
        assert!(pool(&a).contended());
        assert_eq!(
            (ga2.grant.seats, ga2.limit),
            (108, Some(Limit::Held)),
            "its share is larger, but C may hold 42"
        );
        // C has 38 steady sessions: the floor holds against A's storm.
        // Floors 100 + 38, the 12 seats above them shared by demand above
        // the floors (800 and 4): C 38 + 0 (by demand alone: 150 × 42 / 942
        // = 6).
        let gc2 = ask(&mut a, "C", report(38, 42, Some(gc.grant.epoch)));
        assert_eq!((gc2.grant.seats, gc2.limit), (38, Some(Limit::Contended)));
        let ga3 = ask(&mut a, "A", report(108, 900, Some(ga2.grant.epoch)));
        assert_eq!((ga3.grant.seats, ga3.limit), (108, Some(Limit::Held)));
        let gc3 = ask(&mut a, "C", report(38, 42, Some(gc2.grant.epoch)));
        assert_eq!(gc3.grant.seats, 38, "never below its 38 sessions");
        assert_eq!(gc3.limit, Some(Limit::Contended));
        // Even a member with no retries at all, against any storm.
        for storm in [200, 10_000, u32::MAX] {
            let mut b = a.clone();
            ask(&mut b, "A", report(108, storm, Some(ga3.grant.epoch)));
            let g = ask(&mut b, "C", report(38, 38, Some(gc3.grant.epoch)));
            assert_eq!(g.grant.seats, 38, "storm {storm}");
        }
    }

    #[test]
    fn no_seat_is_lost_to_rounding_under_contention() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "B", "C"]));
        let mut held = BTreeMap::new();
        for (who, n) in [("A", 60), ("B", 49), ("C", 40)] {
            let g = ask(&mut a, who, report(0, n, None));
            let g = ask(&mut a, who, report(n, n, Some(g.grant.epoch)));
            held.insert(who, g.grant.epoch);
        }
        // B's users are refused; A and C want only their headroom. One
        // seat above the floors: proportionally B's 251/259 of it rounds
        // to 0 as do A's and C's 4/259, so it goes to the largest remainder.
        for (who, in_use, wanted) in [("B", 49, 300), ("A", 60, 64), ("C", 40, 44), ("B", 49, 300)]
        {
            let g = ask(&mut a, who, report(in_use, wanted, Some(held[who])));
            held.insert(who, g.grant.epoch);
            let want = if who == "B" { 50 } else { in_use };
            assert_eq!(
                (who, g.grant.seats, g.limit),
                (who, want, Some(Limit::Contended))
            );
        }
        assert_eq!(pool(&a).slices_in_force(), 150);
    }

    #[test]
    fn a_member_cut_off_keeps_its_seats_held_even_after_its_lease_expired() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "C"]));
        let ga = ask(&mut a, "A", report(0, 140, None));
        // A fills its slice, then is never heard from again.
        let later = t0() + chrono::Duration::hours(1);
        let gc = a
            .request("C", &report(0, 140, None), later, None)
            .unwrap()
            .unwrap();
        assert_eq!(gc.grant.seats, 150 - ga.grant.seats);
        assert_eq!(gc.limit, Some(Limit::Held));
    }

    #[test]
    fn a_restarted_cloud_grants_only_reported_usage_while_quiet_and_says_until_when() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "B"]));
        assert_eq!(a.granted_pools().count(), 0, "no grant yet");
        let until = t0() + chrono::Duration::minutes(5);
        let g = a
            .request("A", &report(12, 40, None), t0(), Some(until))
            .unwrap()
            .unwrap();
        assert_eq!(g.grant.seats, 12);
        assert_eq!(
            (g.limit, g.reason()),
            (Some(Limit::Quiet { until }), "quiet")
        );
        // Granted once: what a restart must know, and it survives the file.
        let text = serde_json::to_string(&a).unwrap();
        let back: Alloc = serde_json::from_str(&text).unwrap();
        assert_eq!(back.granted_pools().collect::<Vec<_>>(), ["P"]);
        // A state file from before the flag: no pool counts as granted.
        let old = r#"{"pools":{"P":{"seats":150,"members":{}}},"last_epoch":7}"#;
        let old: Alloc = serde_json::from_str(old).unwrap();
        assert_eq!(old.granted_pools().count(), 0);
    }

    #[test]
    fn an_unshared_member_drains_before_its_seats_return() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "C"]));
        let gc = ask(&mut a, "C", report(0, 140, None));
        assert_eq!(gc.grant.seats, 140);
        a.set_pool("P", 150, &names(&["A"]));
        assert_eq!(
            a.request("C", &report(90, 0, None), t0(), None).unwrap(),
            None
        );
        let ga = ask(&mut a, "A", report(0, 150, None));
        assert_eq!(ga.grant.seats, 60, "C's 90 sessions are still there");
        assert_eq!(ga.limit, Some(Limit::Contended), "150 wanted, 60 to share");
        assert_eq!(
            a.request("C", &report(0, 0, None), t0(), None).unwrap(),
            None
        );
        assert!(!pool(&a).members.contains_key("C"), "drained: forgotten");
        let ga = ask(&mut a, "A", report(0, 150, Some(ga.grant.epoch)));
        assert_eq!(ga.grant.seats, 150);
    }

    #[test]
    fn epochs_only_grow() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A"]));
        let g1 = ask(&mut a, "A", report(0, 4, None));
        let g2 = ask(&mut a, "A", report(0, 4, Some(g1.grant.epoch)));
        assert!(g2.grant.epoch > g1.grant.epoch);
        assert_eq!(g1.grant.epoch, t0().timestamp_millis() as u64);
    }

    /// A gateway as the allocator's tests see it: the lease it holds (the
    /// newest it received) and its sessions, admitted only within that lease.
    #[derive(Debug, Clone, Default)]
    struct Gw {
        lease: Option<Grant>,
        in_use: u32,
        member: bool,
    }

    proptest! {
        /// Any sequence of admissions, releases, reports (with realistic or
        /// arbitrary demand, retry storms included) with lost answers,
        /// gateway restarts, cloud restarts (state reloaded, then quiet)
        /// and unshares: the slices in force never exceed the pool, nor do
        /// the sessions admitted on them; and every grant keeps the rules:
        /// never below min(usage, what the others leave), never above the
        /// member's demand, and without contention exactly its demand
        /// when free (the reserve in one answer).
        #[test]
        fn never_oversubscribed_and_every_grant_keeps_the_rules(
            ops in prop::collection::vec((0usize..3, 0u8..8, 0u32..80, any::<bool>(), any::<bool>()), 1..300)
        ) {
            let seats = 150;
            let all = names(&["A", "B", "C"]);
            let mut a = Alloc::default();
            a.set_pool("P", seats, &all);
            let mut gws = vec![Gw { member: true, ..Gw::default() }; 3];
            let mut now = t0();
            let mut quiet_until = None;
            for (i, op, n, flag, real) in ops {
                now += chrono::Duration::milliseconds(100);
                let name = all[i].as_str();
                match op {
                    // Admit up to n sessions within the slice held.
                    0 => {
                        let slice = if gws[i].member { gws[i].lease.as_ref().map_or(0, |g| g.seats) } else { 0 };
                        gws[i].in_use = gws[i].in_use.max(slice.min(gws[i].in_use + n));
                    }
                    1 => gws[i].in_use = gws[i].in_use.saturating_sub(n),
                    // Report; the answer may be lost (flag). Demand as a
                    // gateway computes it (usage + headroom + denials, n of
                    // them, a storm when n is large) or anything at all.
                    2..=4 => {
                        let wanted = match (gws[i].member, real) {
                            (false, _) => 0,
                            (true, true) => gws[i].in_use + 4 + n * n,
                            (true, false) => n,
                        };
                        let r = PoolReport {
                            pool: "P".into(),
                            in_use: gws[i].in_use,
                            wanted,
                            held_epoch: gws[i].lease.as_ref().map(|g| g.epoch),
                        };
                        let quiet = quiet_until.filter(|t| now < *t);
                        let avail = pool(&a).available(name);
                        let g = a.request(name, &r, now, quiet);
                        prop_assert!(g.is_ok(), "{g:?}");
                        let Some(d) = g.unwrap() else {
                            prop_assert!(!gws[i].member);
                            continue;
                        };
                        prop_assert!(gws[i].member);
                        let got = d.grant.seats;
                        let demand = r.wanted.max(r.in_use);
                        prop_assert!(got >= r.in_use.min(avail), "floor: {got} < min({}, {avail})", r.in_use);
                        prop_assert!(got <= demand, "{got} more than asked {demand}");
                        prop_assert!(got <= avail, "take before give: {got} > {avail}");
                        if quiet.is_none() && !pool(&a).contended() {
                            prop_assert_eq!(got, demand.min(avail), "reserve in one answer");
                        }
                        if quiet.is_some() {
                            prop_assert!(got <= r.in_use, "quiet: nothing beyond usage");
                        }
                        // Contended: the targets share out exactly what
                        // the current members share, none lost to rounding.
                        let p = pool(&a);
                        let (share, _, floors) = p.demand();
                        if p.contended() && floors <= share {
                            let names = p.members.iter().filter(|(_, m)| m.member).map(|(n, _)| n);
                            let sum: u64 = names.map(|n| u64::from(p.target(n))).sum();
                            prop_assert_eq!(sum, share);
                        }
                        // Less than asked always says why; a member that got
                        // its demand may still be told the pool is contended.
                        prop_assert!(got >= demand || d.limit.is_some());
                        prop_assert!(d.limit.is_none() || got < demand || p.contended());
                        // Turned-away users anywhere go before headroom:
                        // while the pool covers every member's need, every
                        // target covers it.
                        if p.contended() && p.sum(Member::need) <= share {
                            for (n, m) in p.members.iter().filter(|(_, m)| m.member) {
                                prop_assert!(p.target(n) >= m.need(), "{n}: target below need");
                            }
                        }
                        if !flag {
                            gws[i].lease = Some(d.grant);
                        }
                    }
                    // The lease runs out, or the gateway restarts.
                    5 => gws[i].lease = None,
                    // The cloud restarts: state reloaded from its file,
                    // quiet for one lease length (1.5 s) if it ever granted.
                    6 => {
                        let text = serde_json::to_string(&a).unwrap();
                        a = serde_json::from_str(&text).unwrap();
                        quiet_until = (a.granted_pools().count() > 0)
                            .then(|| now + chrono::Duration::milliseconds(1500));
                    }
                    // Unshare / re-share.
                    _ => {
                        gws[i].member = !gws[i].member;
                        if !gws[i].member { gws[i].lease = None; }
                        let members: Vec<String> = all.iter().zip(&gws).filter(|(_, g)| g.member).map(|(n, _)| n.clone()).collect();
                        a.set_pool("P", seats, &members);
                    }
                }
                prop_assert!(pool(&a).slices_in_force() <= seats);
                let used: u32 = gws.iter().map(|g| g.in_use).sum();
                prop_assert!(used <= seats, "sessions {used} > {seats}: {gws:?} {a:?}");
            }
        }

        /// Demand moving from one member to another settles in a bounded
        /// number of reports: the one that gives back reports twice (the
        /// smaller lease, then its acknowledgement), the asker once more,
        /// and it has what it asked for (docs/pools.md, convergence).
        #[test]
        fn demand_moving_settles_in_three_reports(
            from in 0u32..146, to in 0u32..146, other in 0u32..146,
        ) {
            let seats = 150;
            let mut a = Alloc::default();
            a.set_pool("P", seats, &names(&["A", "B", "C"]));
            // Before: A uses `from`, B `other`, C a few; each holds its grant.
            let mut lease = BTreeMap::new();
            let plan = [("A", from.min(seats)), ("B", other.min(seats - from.min(seats))), ("C", 0)];
            for (who, n) in plan {
                let d = ask(&mut a, who, report(0, n, None));
                let r = report(d.grant.seats, d.grant.seats, Some(d.grant.epoch));
                let d = ask(&mut a, who, r);
                lease.insert(who, (d.grant.clone(), d.grant.seats));
            }
            // After: A drops to nothing, C wants `to` (uncontended: within
            // what B and A's headroom leave).
            let want_c = to.min(seats - lease["B"].1 - 4);
            let ga = ask(&mut a, "A", report(0, 4, Some(lease["A"].0.epoch)));
            let ga = ask(&mut a, "A", report(0, 4, Some(ga.grant.epoch)));
            prop_assert_eq!(ga.grant.seats, 4);
            let gc = ask(&mut a, "C", report(0, want_c, Some(lease["C"].0.epoch)));
            prop_assert_eq!((gc.grant.seats, gc.limit), (want_c, None));
        }
    }
}
