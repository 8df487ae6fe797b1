//! The seat cap at an instant and its timeline: every future instant where the
//! cap changes. Pure: licenses and instants are arguments.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{License, Pool};

/// The parts a cap is made of, so status can show where seats come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    pub builtin: u32,
    /// Seats of active `spc` licenses bound to this gateway alone.
    pub licensed: u32,
    /// This gateway's part of shared pools: live leased slices, or a static
    /// pool's stated share.
    pub pooled: u32,
}

impl Cap {
    pub fn total(&self) -> u32 {
        self.builtin
            .saturating_add(self.licensed)
            .saturating_add(self.pooled)
    }
}

/// The licenses that count, with the instant after which none of them does
/// (the bundle's `not_after`: past it the gateway falls back to its built-in
/// seats until a fresh bundle arrives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub builtin: u32,
    pub licenses: Vec<License>,
    pub not_after: Option<DateTime<Utc>>,
}

/// One step of the timeline: from `at` on, the cap is `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub cap: u32,
    /// The step is the bundle's `not_after`: the bundle ends there (the
    /// cloud renews it before; no license expires), not a license.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bundle_ends: bool,
}

impl Entitlement {
    pub fn builtin_only(builtin: u32) -> Self {
        Entitlement {
            builtin,
            licenses: Vec::new(),
            not_after: None,
        }
    }

    /// The cap without any live slice: leased pools add nothing. The
    /// timeline is built on it.
    pub fn cap_at(&self, now: DateTime<Utc>) -> Cap {
        self.cap_with(now, &BTreeMap::new())
    }

    /// The cap with the live slices of leased pools (pool id -> seats of a
    /// valid lease). A slice counts only while its license does, and never
    /// above the pool.
    pub fn cap_with(&self, now: DateTime<Utc>, slices: &BTreeMap<String, u32>) -> Cap {
        let mut cap = Cap {
            builtin: self.builtin,
            licensed: 0,
            pooled: 0,
        };
        if self.not_after.is_some_and(|end| now >= end) {
            return cap;
        }
        for lic in &self.licenses {
            let seats = match &lic.pool {
                Some(p) if p.static_share().is_none() && lic.counts_at(now) => {
                    slices.get(&p.id).map_or(0, |s| (*s).min(p.seats))
                }
                _ => lic.seats_at(now),
            };
            let part = if lic.pool.is_some() {
                &mut cap.pooled
            } else {
                &mut cap.licensed
            };
            *part = part.saturating_add(seats);
        }
        cap
    }

    /// The leased pools (no static share) whose license counts at `now`.
    pub fn leased_pools(&self, now: DateTime<Utc>) -> Vec<&Pool> {
        if self.not_after.is_some_and(|end| now >= end) {
            return Vec::new();
        }
        let mut pools: Vec<&Pool> = self
            .licenses
            .iter()
            .filter(|l| l.counts_at(now))
            .filter_map(|l| l.pool.as_ref())
            .filter(|p| p.static_share().is_none())
            .collect();
        pools.sort_by(|a, b| a.id.cmp(&b.id));
        pools
    }

    /// Every instant after `now` where the total cap changes, with its new
    /// value, in time order.
    pub fn timeline(&self, now: DateTime<Utc>) -> Vec<Step> {
        let mut instants: Vec<DateTime<Utc>> = self
            .licenses
            .iter()
            .flat_map(|l| [l.activation(), l.expiry()])
            .chain(self.not_after)
            .filter(|at| *at > now)
            .collect();
        instants.sort();
        instants.dedup();
        let mut last = self.cap_at(now).total();
        let mut steps = Vec::new();
        for at in instants {
            let cap = self.cap_at(at).total();
            if cap != last {
                steps.push(Step {
                    at,
                    cap,
                    bundle_ends: self.not_after == Some(at),
                });
                last = cap;
            }
        }
        steps
    }

    /// The next instant the cap changes, if any.
    pub fn next_change(&self, now: DateTime<Utc>) -> Option<Step> {
        self.timeline(now).into_iter().next()
    }
}

/// "32 until 2027-01-10, then 12 until 2029-01-10, then 2"; a step at the
/// bundle's `not_after` reads "then 2 (bundle ends)".
pub fn describe_timeline(now_cap: u32, steps: &[Step]) -> String {
    let mut out = now_cap.to_string();
    for step in steps {
        out.push_str(&format!(
            " until {}, then {}{}",
            step.at.format("%Y-%m-%d %H:%M UTC"),
            step.cap,
            if step.bundle_ends {
                " (bundle ends)"
            } else {
                ""
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{spc, t};
    use super::super::model::{Binding, Pool};
    use super::*;
    use proptest::prelude::*;

    fn vendor_example() -> Entitlement {
        Entitlement {
            builtin: 2,
            licenses: vec![
                License {
                    sku: "SPC-1YR-LIC".into(),
                    ..spc("L1", 20, 365, "2026-01-10T00:00:00Z")
                },
                License {
                    sku: "SPC-3YR-LIC".into(),
                    ..spc("L3", 10, 3 * 365 + 1, "2026-01-10T00:00:00Z")
                },
            ],
            not_after: None,
        }
    }

    #[test]
    fn vendor_example_32_then_12_then_2() {
        let e = vendor_example();
        let cases = [
            ("2026-01-09T00:00:00Z", 2),
            ("2026-01-10T00:00:00Z", 32),
            ("2027-01-09T23:59:59Z", 32),
            ("2027-01-10T00:00:00Z", 12),
            ("2029-01-09T23:59:59Z", 12),
            ("2029-01-10T00:00:00Z", 2),
        ];
        for (at, cap) in cases {
            assert_eq!(e.cap_at(t(at)).total(), cap, "cap at {at}");
        }
        let now = t("2026-06-01T00:00:00Z");
        let steps = e.timeline(now);
        assert_eq!(
            steps,
            vec![
                Step {
                    at: t("2027-01-10T00:00:00Z"),
                    cap: 12,
                    bundle_ends: false,
                },
                Step {
                    at: t("2029-01-10T00:00:00Z"),
                    cap: 2,
                    bundle_ends: false,
                },
            ]
        );
        assert_eq!(
            describe_timeline(32, &steps),
            "32 until 2027-01-10 00:00 UTC, then 12 until 2029-01-10 00:00 UTC, then 2"
        );
    }

    #[test]
    fn timeline_includes_future_activation() {
        let e = vendor_example();
        let steps = e.timeline(t("2026-01-01T00:00:00Z"));
        assert_eq!(
            steps[0],
            Step {
                at: t("2026-01-10T00:00:00Z"),
                cap: 32,
                bundle_ends: false,
            }
        );
        assert_eq!(steps.len(), 3);
    }

    #[test]
    fn not_after_falls_back_to_builtin() {
        let e = Entitlement {
            not_after: Some(t("2026-07-01T00:00:00Z")),
            ..vendor_example()
        };
        assert_eq!(e.cap_at(t("2026-06-30T00:00:00Z")).total(), 32);
        assert_eq!(e.cap_at(t("2026-07-01T00:00:00Z")).total(), 2);
        assert_eq!(
            e.timeline(t("2026-06-01T00:00:00Z")),
            vec![Step {
                at: t("2026-07-01T00:00:00Z"),
                cap: 2,
                bundle_ends: true,
            }]
        );
        assert_eq!(
            describe_timeline(32, &e.timeline(t("2026-06-01T00:00:00Z"))),
            "32 until 2026-07-01 00:00 UTC, then 2 (bundle ends)"
        );
    }

    #[test]
    fn pooled_part_is_the_live_slice_or_a_static_share_never_a_split() {
        let shared = License {
            seats: 150,
            binding: Binding::Replica,
            pool: Some(Pool {
                id: "P".into(),
                seats: 150,
                members: vec!["ESG-A1".into(), "B".into(), "C".into()],
                share: None,
            }),
            ..spc("S1", 150, 365, "2026-01-10T00:00:00Z")
        };
        let mut e = Entitlement {
            builtin: 2,
            licenses: vec![shared],
            not_after: Some(t("2026-06-01T00:00:00Z")),
        };
        let at = t("2026-03-01T00:00:00Z");
        let pooled = |e: &Entitlement, slices: &[(&str, u32)], at| {
            let map = slices.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            e.cap_with(at, &map).pooled
        };
        assert_eq!(pooled(&e, &[], at), 0, "no lease: nothing");
        assert_eq!(pooled(&e, &[("P", 60)], at), 60);
        assert_eq!(pooled(&e, &[("P", 999)], at), 150, "never above the pool");
        assert_eq!(pooled(&e, &[("Q", 60)], at), 0, "another pool's slice");
        assert_eq!(e.leased_pools(at).len(), 1);
        let late = t("2026-06-01T00:00:00Z");
        assert_eq!(pooled(&e, &[("P", 60)], late), 0, "past not_after");
        assert!(e.leased_pools(late).is_empty());
        e.licenses[0].pool.as_mut().unwrap().share = Some(40);
        assert_eq!(pooled(&e, &[("P", 60)], at), 40, "static share, no lease");
        assert!(e.leased_pools(at).is_empty());
    }

    #[test]
    fn huge_seats_are_refused_and_the_cap_saturates() {
        use crate::license::bundle::{Bundle, FORMAT};
        let huge = License {
            seats: u32::MAX,
            ..spc("L1", 20, 365, "2026-01-10T00:00:00Z")
        };
        let at = t("2026-06-01T00:00:00Z");
        // Through the rules: the record is refused, only built-in seats.
        let b = Bundle {
            format: FORMAT,
            device: "ESG-A1".into(),
            org: "O".into(),
            generation: 1,
            issued_at: t("2026-01-01T00:00:00Z"),
            not_after: t("2027-01-01T00:00:00Z"),
            licenses: vec![huge.clone()],
        };
        let (e, rejected) = b.entitlement(2);
        assert_eq!(e.cap_at(at).total(), 2);
        assert!(rejected[0].reason.contains("more than the 100000"));
        // Unvalidated, the sums saturate instead of overflowing.
        let e = Entitlement {
            builtin: 2,
            licenses: vec![
                huge.clone(),
                License {
                    id: "L2".into(),
                    ..huge
                },
            ],
            not_after: None,
        };
        assert_eq!(e.cap_at(at).licensed, u32::MAX);
        assert_eq!(e.cap_at(at).total(), u32::MAX);
    }

    fn arb_license() -> impl Strategy<Value = License> {
        (
            1u32..500,
            1u32..2000,
            0i64..400,
            prop::option::of(0i64..200),
            any::<bool>(),
        )
            .prop_map(|(seats, term, issue_off, assoc_off, is_spc)| {
                let issued = t("2026-01-01T00:00:00Z") + chrono::Duration::days(issue_off);
                let assoc = assoc_off.map(|d| issued + chrono::Duration::days(d));
                License {
                    product: if is_spc { "spc".into() } else { "pro".into() },
                    issued_at: issued,
                    associated_at: assoc,
                    activated_at: assoc,
                    ..spc("X", seats, term, "2026-01-01T00:00:00Z")
                }
            })
    }

    proptest! {
        /// The cap is never below the built-in seats nor above all seats together,
        /// and the timeline predicts the cap at every instant.
        #[test]
        fn cap_bounds_and_timeline_agree(
            lics in prop::collection::vec(arb_license(), 0..6),
            probe_days in prop::collection::vec(0i64..3000, 1..20),
        ) {
            let e = Entitlement { builtin: 2, licenses: lics.clone(), not_after: None };
            let start = t("2025-12-01T00:00:00Z");
            let total: u32 = 2 + lics.iter().filter(|l| l.is_spc()).map(|l| l.seats).sum::<u32>();
            let steps = e.timeline(start);
            for w in steps.windows(2) {
                prop_assert!(w[0].at < w[1].at);
                prop_assert_ne!(w[0].cap, w[1].cap);
            }
            for d in probe_days {
                let at = start + chrono::Duration::days(d);
                let cap = e.cap_at(at).total();
                prop_assert!((2..=total).contains(&cap));
                let predicted = steps.iter().rev().find(|s| s.at <= at)
                    .map_or(e.cap_at(start).total(), |s| s.cap);
                prop_assert_eq!(cap, predicted);
            }
            // Long after everything expired (forced activation + max term), only built-in seats.
            prop_assert_eq!(e.cap_at(t("2040-01-01T00:00:00Z")).total(), 2);
        }

        /// Pro licenses never change the VPN cap, whatever their state.
        #[test]
        fn pro_licenses_do_not_matter(
            lics in prop::collection::vec(arb_license(), 0..6),
            day in 0i64..3000,
        ) {
            let at = t("2025-12-01T00:00:00Z") + chrono::Duration::days(day);
            let all = Entitlement { builtin: 2, licenses: lics.clone(), not_after: None };
            let spc_only = Entitlement {
                builtin: 2,
                licenses: lics.into_iter().filter(|l| l.is_spc()).collect(),
                not_after: None,
            };
            prop_assert_eq!(all.cap_at(at), spc_only.cap_at(at));
        }
    }
}
