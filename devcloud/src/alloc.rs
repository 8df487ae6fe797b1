//! The pool allocator of the development cloud (docs/pools.md): who holds
//! how many seats of each shared pool, and the slice each member is granted
//! when it reports. Pure: the clock and the quiet flag are arguments. Lives
//! in the example, so the gateway binary never carries it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use seatgate::cloud::wire::PoolReport;

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

    fn forgettable(&self) -> bool {
        !self.member && self.reported == 0 && self.grants.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("allocator bug: slices of pool {pool} would total {sum}, more than its {seats} seats; no lease granted")]
    Oversubscribed { pool: String, sum: u32, seats: u32 },
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

    /// A current member's target by demand: spare seats spread evenly, or a
    /// proportional cut when demand exceeds the pool.
    fn target(&self, device: &str) -> u32 {
        let current: Vec<(&String, &Member)> =
            self.members.iter().filter(|(_, m)| m.member).collect();
        let n = current.len().max(1) as u64;
        let total: u64 = current.iter().map(|(_, m)| u64::from(m.wanted)).sum();
        let wanted = u64::from(self.members.get(device).map_or(0, |m| m.wanted));
        let seats = u64::from(self.seats);
        let t = if total <= seats {
            wanted + (seats - total) / n
        } else {
            seats * wanted / total
        };
        u32::try_from(t).unwrap_or(u32::MAX)
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

    /// Takes `device`'s report for a pool and grants its next slice (None
    /// for a pool it is not a member of). `quiet`: the cloud restarted less
    /// than one lease length ago and grants nothing beyond reported usage.
    pub fn request(
        &mut self,
        device: &str,
        report: &PoolReport,
        now: DateTime<Utc>,
        quiet: bool,
    ) -> Result<Option<Grant>, AllocError> {
        let Some(p) = self.pools.get_mut(&report.pool) else {
            return Ok(None);
        };
        let Some(m) = p.members.get_mut(device) else {
            return Ok(None);
        };
        m.reported = report.in_use;
        m.wanted = report.wanted;
        // The gateway holds at most the lease it named; older grants were
        // replaced there, newer ones never arrived (one request in flight).
        m.grants.retain(|g| Some(g.epoch) == report.held_epoch);
        if !m.member {
            if m.forgettable() {
                p.members.remove(device);
            }
            return Ok(None);
        }
        let others: u32 = p
            .members
            .iter()
            .filter(|(name, _)| *name != device)
            .map(|(_, m)| m.held())
            .sum();
        let available = p.seats.saturating_sub(others);
        let target = if quiet {
            report.in_use
        } else {
            p.target(device)
        };
        let epoch = (self.last_epoch + 1).max(u64::try_from(now.timestamp_millis()).unwrap_or(0));
        let grant = Grant {
            epoch,
            seats: target.min(available),
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
        self.last_epoch = epoch;
        Ok(Some(grant))
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

    #[test]
    fn spare_seats_are_spread_and_a_shrink_frees_seats_only_when_acknowledged() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "B", "C"]));
        let ga = a
            .request("A", &report(0, 100, None), t0(), false)
            .unwrap()
            .unwrap();
        // A wants 100, others nothing yet: 100 + 50/3.
        assert_eq!(ga.seats, 116);
        let gc = a
            .request("C", &report(0, 4, None), t0(), false)
            .unwrap()
            .unwrap();
        assert_eq!(
            gc.seats,
            4 + (150 - 104) / 3,
            "C's target, within what A does not hold"
        );
        // Demand moves: A needs 10 now, C 100. A's shrink is granted...
        let ga2 = a
            .request("A", &report(10, 14, Some(ga.epoch)), t0(), false)
            .unwrap()
            .unwrap();
        assert!(ga2.seats < 116);
        // ...but C gets nothing more until A acknowledges it.
        let gc2 = a
            .request("C", &report(30, 100, Some(gc.epoch)), t0(), false)
            .unwrap()
            .unwrap();
        assert_eq!(gc2.seats, 150 - 116, "A may still hold 116");
        let ga3 = a
            .request("A", &report(10, 14, Some(ga2.epoch)), t0(), false)
            .unwrap()
            .unwrap();
        let gc3 = a
            .request("C", &report(34, 100, Some(gc2.epoch)), t0(), false)
            .unwrap()
            .unwrap();
        assert_eq!(gc3.seats, 150 - ga2.seats.max(ga3.seats));
        assert!(pool(&a).slices_in_force() <= 150);
    }

    #[test]
    fn a_member_cut_off_keeps_its_seats_held_even_after_its_lease_expired() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "C"]));
        let ga = a
            .request("A", &report(0, 140, None), t0(), false)
            .unwrap()
            .unwrap();
        // A fills its slice, then is never heard from again.
        let later = t0() + chrono::Duration::hours(1);
        let gc = a
            .request("C", &report(0, 140, None), later, false)
            .unwrap()
            .unwrap();
        assert_eq!(gc.seats, 150 - ga.seats);
    }

    #[test]
    fn a_restarted_cloud_grants_only_reported_usage_while_quiet() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "B"]));
        let g = a
            .request("A", &report(12, 40, None), t0(), true)
            .unwrap()
            .unwrap();
        assert_eq!(g.seats, 12);
    }

    #[test]
    fn an_unshared_member_drains_before_its_seats_return() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A", "C"]));
        let gc = a
            .request("C", &report(0, 140, None), t0(), false)
            .unwrap()
            .unwrap();
        assert_eq!(gc.seats, 140 + 10 / 2);
        a.set_pool("P", 150, &names(&["A"]));
        assert_eq!(
            a.request("C", &report(90, 0, None), t0(), false).unwrap(),
            None
        );
        let ga = a
            .request("A", &report(0, 150, None), t0(), false)
            .unwrap()
            .unwrap();
        assert_eq!(ga.seats, 60, "C's 90 sessions are still there");
        assert_eq!(
            a.request("C", &report(0, 0, None), t0(), false).unwrap(),
            None
        );
        assert!(!pool(&a).members.contains_key("C"), "drained: forgotten");
        let ga = a
            .request("A", &report(0, 150, Some(ga.epoch)), t0(), false)
            .unwrap()
            .unwrap();
        assert_eq!(ga.seats, 150);
    }

    #[test]
    fn epochs_only_grow() {
        let mut a = Alloc::default();
        a.set_pool("P", 150, &names(&["A"]));
        let g1 = a
            .request("A", &report(0, 4, None), t0(), false)
            .unwrap()
            .unwrap();
        let g2 = a
            .request("A", &report(0, 4, Some(g1.epoch)), t0(), false)
            .unwrap()
            .unwrap();
        assert!(g2.epoch > g1.epoch);
        assert_eq!(g1.epoch, t0().timestamp_millis() as u64);
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
        /// Any sequence of admissions, releases, reports with lost answers,
        /// cloud restarts (quiet) and unshares: the slices in force never
        /// exceed the pool, and neither do the sessions admitted on them.
        #[test]
        fn never_oversubscribed(
            ops in prop::collection::vec((0usize..3, 0u8..6, 0u32..80, any::<bool>()), 1..300)
        ) {
            let seats = 150;
            let all = names(&["A", "B", "C"]);
            let mut a = Alloc::default();
            a.set_pool("P", seats, &all);
            let mut gws = vec![Gw { member: true, ..Gw::default() }; 3];
            let mut now = t0();
            for (i, op, n, flag) in ops {
                now += chrono::Duration::milliseconds(100);
                let name = all[i].as_str();
                match op {
                    // Admit up to n sessions within the slice held.
                    0 => {
                        let slice = if gws[i].member { gws[i].lease.as_ref().map_or(0, |g| g.seats) } else { 0 };
                        gws[i].in_use = gws[i].in_use.max(slice.min(gws[i].in_use + n));
                    }
                    1 => gws[i].in_use = gws[i].in_use.saturating_sub(n),
                    // Report; the answer may be lost (flag), the cloud may be quiet.
                    2 | 3 => {
                        let r = PoolReport {
                            pool: "P".into(),
                            in_use: gws[i].in_use,
                            wanted: n,
                            held_epoch: gws[i].lease.as_ref().map(|g| g.epoch),
                        };
                        let g = a.request(name, &r, now, op == 3);
                        prop_assert!(g.is_ok(), "{g:?}");
                        if let (Some(g), false) = (g.unwrap(), flag) {
                            gws[i].lease = Some(g);
                        }
                    }
                    // The lease runs out, or the gateway restarts.
                    4 => gws[i].lease = None,
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
    }
}
