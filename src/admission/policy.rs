//! The seat policy's decision (pure): may one more session of this user
//! and group have a seat, given the sessions held, the cap and `[policy]`?
//! The table calls it inside its check-and-insert step, so it runs under
//! the same lock as the cap check and concurrent admissions cannot break
//! a rule. docs/policy.md states the rules; this is their one home.

use super::protocol::{DenyReason, ServerKind};
use super::table::{Session, Table};
use crate::config::policy::{same_name, AtUserLimit, SeatPolicy};

/// What the policy says about a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admit it; with `replace`, in the seat of that session of the same
    /// user (its oldest), which the caller frees in the same step.
    Admit {
        replace: Option<Session>,
    },
    Deny(DenyReason),
}

/// Seats held by the members of each `[[policy.group]]` entry, in entry
/// order, leaving out the session `except` (one about to be replaced).
pub fn entry_usage(table: &Table, policy: &SeatPolicy, except: Option<&str>) -> Vec<u32> {
    let mut used = vec![0u32; policy.groups.len()];
    if used.is_empty() {
        return used;
    }
    for s in table.sessions() {
        if Some(s.key.as_str()) == except {
            continue;
        }
        if let Some(n) = policy
            .entry_of(&s.user, &s.group)
            .and_then(|e| used.get_mut(e))
        {
            *n += 1;
        }
    }
    used
}

/// Decides a new session of `user` reporting `group` against `cap`.
/// Rules, in order: no seats at all; the user's session limit (refuse, or
/// replace the user's oldest session: the count of seats never grows);
/// the user's entry's `max`; the cap; and the seats entries still have
/// reserved, which only their own members may take. The user's own limits
/// come before the cap, so the reason given is the one that holds
/// whatever the usage.
pub fn decide(table: &Table, cap: u32, policy: &SeatPolicy, user: &str, group: &str) -> Verdict {
    if cap == 0 {
        return Verdict::Deny(DenyReason::NoLicense);
    }
    let limit = policy.max_sessions_per_user.filter(|_| !user.is_empty());
    // One pass over the sessions (this runs under the state's lock): the
    // user's sessions and oldest one, and each entry's seats.
    let mut used = vec![0u32; policy.groups.len()];
    let (mut held, mut oldest) = (0u32, None::<&Session>);
    if limit.is_some() || !used.is_empty() {
        for s in table.sessions() {
            if limit.is_some() && same_name(&s.user, user) {
                held += 1;
                let ends = match s.server.kind {
                    ServerKind::Openvpn => policy.ends_openvpn,
                    ServerKind::Ocserv => policy.ends_ocserv,
                    ServerKind::Other => false,
                };
                if ends && oldest.is_none_or(|o| (s.since, s.instance) < (o.since, o.instance)) {
                    oldest = Some(s);
                }
            }
            if let Some(n) = policy
                .entry_of(&s.user, &s.group)
                .and_then(|e| used.get_mut(e))
            {
                *n += 1;
            }
        }
    }
    let mut replace = None;
    if limit.is_some_and(|l| held >= l) {
        // Only a session its server can end is replaced (`oldest` is the
        // oldest of those): none, and the new one is refused.
        if policy.at_user_limit == AtUserLimit::Refuse || oldest.is_none() {
            return Verdict::Deny(DenyReason::UserLimit);
        }
        replace = oldest;
    }
    // The seats as they are once the replaced session is gone.
    if let Some(r) = replace {
        if let Some(n) = policy
            .entry_of(&r.user, &r.group)
            .and_then(|e| used.get_mut(e))
        {
            *n = n.saturating_sub(1);
        }
    }
    // The user's own rules first: they refuse whatever the usage.
    let mine = policy.entry_of(user, group);
    let mut filling = false;
    if let Some(e) = mine {
        let (g, u) = (&policy.groups[e], used[e]);
        if g.max.is_some_and(|max| u >= max) {
            return Verdict::Deny(DenyReason::GroupLimit);
        }
        filling = u < g.reserved;
    }
    // With a replacement the new session takes the freed seat.
    let in_use = table.in_use() - u32::from(replace.is_some());
    if in_use >= cap {
        return Verdict::Deny(if table.in_use() > cap {
            DenyReason::OverCap
        } else {
            DenyReason::CapReached
        });
    }
    let unfilled = policy.groups.iter().zip(&used).fold(0u32, |n, (g, u)| {
        n.saturating_add(g.reserved.saturating_sub(*u))
    });
    // A member filling its own entry's reservation takes one of the
    // unfilled seats; anyone else must leave all of them free.
    if !filling && in_use.saturating_add(1).saturating_add(unfilled) > cap {
        return Verdict::Deny(DenyReason::Reserved);
    }
    Verdict::Admit {
        replace: replace.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::protocol::{AdmitRequest, ServerKind};
    use crate::admission::table::{tests, tests::now, Decision, ServerId};
    use crate::config::policy::Group;
    use chrono::Duration;
    use proptest::prelude::*;

    const SERVER: ServerId = tests::server(10);

    fn req(key: &str, user: &str, group: &str) -> AdmitRequest {
        AdmitRequest {
            user: user.into(),
            group: group.into(),
            ..tests::req(key)
        }
    }

    fn group(
        name: &str,
        users: &[&str],
        groups: &[&str],
        reserved: u32,
        max: Option<u32>,
    ) -> Group {
        Group {
            name: name.into(),
            users: users.iter().map(|u| u.to_string()).collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            reserved,
            max,
        }
    }

    /// Admits `key` at minute `minute`; the decision and the session it replaced.
    fn admit(
        t: &mut Table,
        p: &SeatPolicy,
        cap: u32,
        key: &str,
        user: &str,
        g: &str,
        minute: i64,
    ) -> (Decision, Option<Session>) {
        let (d, _, replaced) = t.admit(
            &req(key, user, g),
            SERVER,
            cap,
            p,
            now() + Duration::minutes(minute),
        );
        (d, replaced)
    }

    const IN: Decision = Decision::Admitted { again: false };
    fn denied(r: DenyReason) -> Decision {
        Decision::Denied(r)
    }

    #[test]
    fn the_docs_example_oncall_still_gets_in_at_30_of_32() {
        let p = SeatPolicy::new(
            None,
            AtUserLimit::Refuse,
            vec![group("oncall", &["alice", "bob"], &[], 2, None)],
        );
        let mut t = Table::default();
        for i in 0..30 {
            assert_eq!(
                admit(&mut t, &p, 32, &format!("k{i}"), &format!("u{i}"), "", 0).0,
                IN
            );
        }
        assert_eq!(
            admit(&mut t, &p, 32, "k30", "carol", "", 0).0,
            denied(DenyReason::Reserved)
        );
        assert_eq!(admit(&mut t, &p, 32, "a", "alice", "", 0).0, IN);
        assert_eq!(admit(&mut t, &p, 32, "b", "bob", "", 0).0, IN);
        assert_eq!(
            admit(&mut t, &p, 32, "a2", "alice", "", 0).0,
            denied(DenyReason::CapReached)
        );
        assert_eq!(t.in_use(), 32);
    }

    #[test]
    fn members_beyond_their_reservation_count_as_everyone_else() {
        let p = SeatPolicy::new(
            None,
            AtUserLimit::Refuse,
            vec![
                group("oncall", &["alice"], &[], 1, None),
                group("ops", &[], &["ops"], 2, None),
            ],
        );
        let mut t = Table::default();
        // cap 5, 3 reserved: 2 for everyone.
        assert_eq!(admit(&mut t, &p, 5, "a1", "alice", "", 0).0, IN);
        // alice filled hers: her second session needs a free unreserved seat.
        assert_eq!(admit(&mut t, &p, 5, "a2", "alice", "", 0).0, IN);
        assert_eq!(admit(&mut t, &p, 5, "a3", "alice", "", 0).0, IN);
        assert_eq!(
            admit(&mut t, &p, 5, "a4", "alice", "", 0).0,
            denied(DenyReason::Reserved)
        );
        // The ops group (by the server's group name) still gets its two.
        assert_eq!(admit(&mut t, &p, 5, "o1", "dave", "ops", 0).0, IN);
        assert_eq!(admit(&mut t, &p, 5, "o2", "erin", "ops", 0).0, IN);
        assert_eq!(t.in_use(), 5);
    }

    #[test]
    fn a_group_max_caps_its_members_only() {
        let p = SeatPolicy::new(
            None,
            AtUserLimit::Refuse,
            vec![group("contractors", &[], &["ext"], 0, Some(2))],
        );
        let mut t = Table::default();
        assert_eq!(admit(&mut t, &p, 9, "c1", "x", "ext", 0).0, IN);
        assert_eq!(admit(&mut t, &p, 9, "c2", "y", "ext", 0).0, IN);
        assert_eq!(
            admit(&mut t, &p, 9, "c3", "z", "ext", 0).0,
            denied(DenyReason::GroupLimit)
        );
        assert_eq!(admit(&mut t, &p, 9, "s1", "z", "staff", 0).0, IN);
        t.release("c1");
        assert_eq!(admit(&mut t, &p, 9, "c3", "z", "ext", 0).0, IN);
    }

    #[test]
    fn the_user_limit_refuses_across_servers_and_spares_nameless_sessions() {
        let p = SeatPolicy::new(Some(2), AtUserLimit::Refuse, Vec::new());
        let mut t = Table::default();
        assert_eq!(admit(&mut t, &p, 9, "1", "alice", "", 0).0, IN);
        let other = ServerId {
            kind: ServerKind::Ocserv,
            pid: 11,
            ..SERVER
        };
        let (d, _, _) = t.admit(&req("2", "alice", ""), other, 9, &p, now());
        assert_eq!(d, IN);
        assert_eq!(
            admit(&mut t, &p, 9, "3", "alice", "", 0).0,
            denied(DenyReason::UserLimit)
        );
        // A repeated admit of a held key is no new session.
        assert_eq!(
            admit(&mut t, &p, 9, "1", "alice", "", 0).0,
            Decision::Admitted { again: true }
        );
        for k in ["n1", "n2", "n3"] {
            assert_eq!(admit(&mut t, &p, 9, k, "", "", 0).0, IN);
        }
        assert_eq!(admit(&mut t, &p, 9, "b", "bob", "", 0).0, IN);
    }

    #[test]
    fn replace_oldest_frees_the_users_oldest_seat_in_the_same_step() {
        let p = SeatPolicy::new(Some(2), AtUserLimit::ReplaceOldest, Vec::new()).ending(true, true);
        let mut t = Table::default();
        assert_eq!(admit(&mut t, &p, 3, "late", "alice", "", 5).0, IN);
        assert_eq!(admit(&mut t, &p, 3, "early", "alice", "", 1).0, IN);
        assert_eq!(admit(&mut t, &p, 3, "b", "bob", "", 0).0, IN);
        // At the cap and at alice's limit: her new session takes the seat
        // of her oldest (by start, not by admission order).
        let (d, replaced) = admit(&mut t, &p, 3, "new", "alice", "", 9);
        assert_eq!(d, IN);
        assert_eq!(replaced.map(|s| s.key), Some("early".into()));
        assert!(t.get("early").is_none() && t.get("new").is_some());
        assert_eq!(t.in_use(), 3);
        assert_eq!(t.peak, 3, "the swap never shows one seat more");
        // Over the cap (it dropped to 2): a replacement would keep it over.
        assert_eq!(
            admit(&mut t, &p, 2, "newer", "alice", "", 10),
            (denied(DenyReason::OverCap), None)
        );
        assert!(t.get("late").is_some());
    }

    #[test]
    fn a_replacement_still_respects_other_entries_reservations() {
        // alice's old session filled oncall's seat; her new one reports a
        // group outside it... she is named by user, so it is hers again.
        let p = SeatPolicy::new(
            Some(1),
            AtUserLimit::ReplaceOldest,
            vec![group("oncall", &["bob"], &[], 1, None)],
        )
        .ending(true, true);
        let mut t = Table::default();
        assert_eq!(admit(&mut t, &p, 2, "a", "alice", "", 0).0, IN);
        // One seat left and it is bob's: alice's replacement takes her own.
        let (d, replaced) = admit(&mut t, &p, 2, "a2", "alice", "", 1);
        assert_eq!((d, replaced.map(|s| s.key)), (IN, Some("a".into())));
        assert_eq!(
            admit(&mut t, &p, 2, "c", "carol", "", 1).0,
            denied(DenyReason::Reserved)
        );
        assert_eq!(admit(&mut t, &p, 2, "b", "bob", "", 1).0, IN);
    }

    #[test]
    fn reservations_never_raise_the_cap() {
        // 4 reserved, cap 2: members come first-come, nobody else at all.
        let p = SeatPolicy::new(
            None,
            AtUserLimit::Refuse,
            vec![
                group("a", &["a1", "a2"], &[], 2, None),
                group("b", &["b1", "b2"], &[], 2, None),
            ],
        );
        let mut t = Table::default();
        assert_eq!(
            admit(&mut t, &p, 2, "x", "x", "", 0).0,
            denied(DenyReason::Reserved)
        );
        assert_eq!(admit(&mut t, &p, 2, "1", "a1", "", 0).0, IN);
        assert_eq!(admit(&mut t, &p, 2, "2", "b1", "", 0).0, IN);
        assert_eq!(
            admit(&mut t, &p, 2, "3", "b2", "", 0).0,
            denied(DenyReason::CapReached)
        );
    }

    /// Attack: `replace_oldest` with a `[[reconcile]]` entry for OpenVPN
    /// only. alice's oldest session is on ocserv, which nothing can
    /// disconnect: replacing it freed its seat with its tunnel up, and
    /// alternating servers she piled up tunnels on one seat. Only a session
    /// the daemon can end is replaced; with none, she is refused.
    #[test]
    fn replace_oldest_replaces_only_sessions_a_server_can_end() {
        let p =
            SeatPolicy::new(Some(1), AtUserLimit::ReplaceOldest, Vec::new()).ending(true, false);
        let ocserv = ServerId {
            kind: ServerKind::Ocserv,
            ..SERVER
        };
        let mut t = Table::default();
        let (d, _, _) = t.admit(&req("oc", "alice", ""), ocserv, 9, &p, now());
        assert_eq!(d, IN);
        assert_eq!(
            admit(&mut t, &p, 9, "ovpn", "alice", "", 1),
            (denied(DenyReason::UserLimit), None),
            "her ocserv session cannot be ended: refused"
        );
        // Limit 2: the OpenVPN one is replaced, though not the oldest.
        let p =
            SeatPolicy::new(Some(2), AtUserLimit::ReplaceOldest, Vec::new()).ending(true, false);
        assert_eq!(admit(&mut t, &p, 9, "ovpn", "alice", "", 1).0, IN);
        let (d, replaced) = admit(&mut t, &p, 9, "ovpn2", "alice", "", 2);
        assert_eq!((d, replaced.map(|s| s.key)), (IN, Some("ovpn".into())));
        assert!(t.get("oc").is_some());
    }

    /// Attack: an auth backend that ignores case (LDAP, RADIUS, AD) lets
    /// alice log in as "Alice" and "ALICE": each is a new user to the
    /// limit, and "BOB" is outside the entry that keeps bob out.
    #[test]
    fn a_user_name_in_another_case_is_the_same_user() {
        let p = SeatPolicy::new(
            Some(1),
            AtUserLimit::Refuse,
            vec![group("banned", &["bob"], &[], 0, Some(0))],
        );
        let mut t = Table::default();
        assert_eq!(admit(&mut t, &p, 9, "1", "alice", "", 0).0, IN);
        assert_eq!(
            admit(&mut t, &p, 9, "2", "Alice", "", 0).0,
            denied(DenyReason::UserLimit)
        );
        assert_eq!(
            admit(&mut t, &p, 9, "3", "BOB", "", 0).0,
            denied(DenyReason::GroupLimit)
        );
    }

    /// Every rule, checked against the table after each step.
    fn check(t: &Table, cap: u32, p: &SeatPolicy) -> Result<(), TestCaseError> {
        let used = entry_usage(t, p, None);
        let in_use = t.in_use();
        prop_assert!(in_use <= cap, "in use {in_use} over cap {cap}");
        for (g, u) in p.groups.iter().zip(&used) {
            if let Some(max) = g.max {
                prop_assert!(*u <= max, "{} holds {u} > max {max}", g.name);
            }
        }
        if let Some(limit) = p.max_sessions_per_user {
            for s in t.sessions().filter(|s| !s.user.is_empty()) {
                let n = t.sessions().filter(|o| same_name(&o.user, &s.user)).count();
                prop_assert!(n as u32 <= limit, "{} holds {n} > {limit}", s.user);
            }
        }
        Ok(())
    }

    const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "", "erin"];
    const GROUPS: [&str; 3] = ["", "ops", "ext"];

    proptest! {
        /// Random admits and releases of random users and groups under a
        /// random policy: the cap, every group max and the user limit hold
        /// after every step, and a seat a non-member took never came out of
        /// another entry's unfilled reservation.
        #[test]
        fn no_sequence_breaks_a_rule(
            cap in 1u32..8,
            limit in prop::option::of(1u32..3),
            replace in any::<bool>(),
            oncall_reserved in 0u32..3,
            ops_reserved in 0u32..3,
            ext_max in prop::option::of(0u32..3),
            ops in prop::collection::vec((any::<bool>(), 0u8..16, 0usize..6, 0usize..3), 0..120),
        ) {
            let p = SeatPolicy::new(limit, if replace { AtUserLimit::ReplaceOldest } else { AtUserLimit::Refuse }, vec![
                    group("oncall", &["alice"], &[], oncall_reserved, None),
                    group("ops", &["bob"], &["ops"], ops_reserved, None),
                    group("ext", &[], &["ext"], 0, ext_max),
                ]).ending(true, true);
            let mut t = Table::default();
            for (minute, (is_admit, k, u, g)) in ops.into_iter().enumerate() {
                let key = format!("k{k}");
                if !is_admit {
                    t.release(&key);
                    continue;
                }
                let (user, grp) = (USERS[u], GROUPS[g]);
                let old = t.clone();
                let (d, replaced) = admit(&mut t, &p, cap, &key, user, grp, minute as i64);
                check(&t, cap, &p)?;
                if d != IN {
                    prop_assert_eq!(t.in_use(), old.in_use());
                    prop_assert!(replaced.is_none());
                    continue;
                }
                // The seats before the step, the replaced one left out.
                let gone = replaced.as_ref().map(|r| r.key.as_str());
                let before = entry_usage(&old, &p, gone);
                let unfilled: u32 = p.groups.iter().zip(&before)
                    .map(|(g, u)| g.reserved.saturating_sub(*u)).sum();
                let in_use = old.in_use() - u32::from(gone.is_some());
                let mine = p.entry_of(user, grp);
                let filling = mine.is_some_and(|e| before[e] < p.groups[e].reserved);
                if !filling {
                    // A non-member (or a member past its reservation) got
                    // in only with every unfilled reserved seat left free.
                    prop_assert!(in_use + 1 + unfilled <= cap);
                }
                if let Some(r) = &replaced {
                    prop_assert_eq!(&r.user, user);
                    prop_assert!(!user.is_empty());
                    prop_assert_eq!(t.in_use(), old.in_use());
                    let oldest = old.sessions().filter(|s| same_name(&s.user, user))
                        .map(|s| (s.since, s.instance)).min();
                    prop_assert_eq!(oldest, Some((r.since, r.instance)));
                }
            }
        }
    }
}
