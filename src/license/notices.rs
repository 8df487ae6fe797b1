//! License warnings: a VPN license expiring within 60, 30 or 3 days, and a
//! drop of the seat cap coming within as many days (licenses expiring; not
//! the bundle's `not_after`, which the cloud keeps renewing). Each carries a key naming it and its threshold,
//! so the daemon can say it once per threshold and remember it across
//! restarts. Pure: the instant is an argument.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::cap::Entitlement;
use super::lifecycle::{Status, WARNING_DAYS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A VPN license expires: its seats go.
    LicenseExpiry,
    /// The seat cap drops (from `cap_from` to `cap_to`).
    CapDrop,
}

/// One license warning in force now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    /// Names the event and the threshold: what is remembered as said.
    pub key: String,
    /// When it happens.
    pub at: DateTime<Utc>,
    /// The threshold it is within (60, 30 or 3 days).
    pub within_days: i64,
    /// The license expiring (`license_expiry`).
    #[serde(default)]
    pub license: Option<String>,
    /// The cap before and after the drop (`cap_drop`).
    #[serde(default)]
    pub cap_from: Option<u32>,
    #[serde(default)]
    pub cap_to: Option<u32>,
    /// One line for people.
    pub message: String,
}

/// The smallest warning threshold (days) `left` is within.
fn threshold(left: Duration) -> Option<i64> {
    WARNING_DAYS
        .iter()
        .copied()
        .find(|d| left <= Duration::days(*d))
}

/// The license warnings at `now`: license expiries first (by license id),
/// then cap drops (in time order).
pub fn notices(ent: &Entitlement, now: DateTime<Utc>) -> Vec<Notice> {
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let mut out = Vec::new();
    let mut licenses: Vec<_> = ent.licenses.iter().filter(|l| l.is_spc()).collect();
    licenses.sort_by(|a, b| a.id.cmp(&b.id));
    for l in licenses {
        let Status::Expiring(d) = l.status(now) else {
            continue;
        };
        let at = l.expiry();
        out.push(Notice {
            kind: NoticeKind::LicenseExpiry,
            key: format!("expiry:{}:{}:{d}", l.id, at.to_rfc3339()),
            at,
            within_days: d,
            license: Some(l.id.clone()),
            cap_from: None,
            cap_to: None,
            message: format!(
                "license {} ({} seats) expires at {} (within {d} days); renew it or the seats go",
                l.id,
                l.seats,
                day(at)
            ),
        });
    }
    let mut before = ent.cap_at(now).total();
    for step in ent.timeline(now) {
        let from = std::mem::replace(&mut before, step.cap);
        if step.cap >= from {
            continue;
        }
        // The bundle running out is no warning of its own: the cloud
        // renews it days ahead (a new `not_after` each time), and a sync
        // failing long enough to matter raises the cloud's alarm.
        if ent.not_after == Some(step.at) {
            continue;
        }
        let Some(d) = threshold(step.at - now) else {
            break;
        };
        out.push(Notice {
            kind: NoticeKind::CapDrop,
            key: format!("cap:{}:{from}:{}:{d}", step.at.to_rfc3339(), step.cap),
            at: step.at,
            within_days: d,
            license: None,
            cap_from: Some(from),
            cap_to: Some(step.cap),
            message: format!(
                "the seat cap drops from {from} to {} at {} (within {d} days)",
                step.cap,
                day(step.at)
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{spc, t};
    use super::*;

    fn ent(not_after: Option<&str>) -> Entitlement {
        // Activated 2026-01-10: L1 (1 year) ends 2027-01-10, L2 (3 years) 2029-01-09.
        Entitlement {
            builtin: 2,
            licenses: vec![
                spc("L1", 20, 365, "2026-01-10T00:00:00Z"),
                spc("L2", 10, 1095, "2026-01-10T00:00:00Z"),
            ],
            not_after: not_after.map(t),
        }
    }

    #[test]
    fn nothing_more_than_60_days_ahead() {
        assert!(notices(&ent(None), t("2026-11-10T00:00:00Z")).is_empty());
    }

    #[test]
    fn expiry_and_cap_drop_at_each_threshold() {
        let e = ent(None);
        for (now, days) in [
            ("2026-11-11T00:00:00Z", 60),
            ("2026-12-11T00:00:00Z", 30),
            ("2027-01-07T00:00:00Z", 3),
        ] {
            let n = notices(&e, t(now));
            assert_eq!(n.len(), 2, "{now}: {n:?}");
            assert_eq!(n[0].kind, NoticeKind::LicenseExpiry);
            assert_eq!(n[0].license.as_deref(), Some("L1"));
            assert_eq!(n[0].within_days, days);
            assert_eq!(
                n[0].key,
                format!("expiry:L1:2027-01-10T00:00:00+00:00:{days}")
            );
            assert_eq!(n[1].kind, NoticeKind::CapDrop);
            assert_eq!((n[1].cap_from, n[1].cap_to), (Some(32), Some(12)));
            assert_eq!(n[1].within_days, days);
            assert!(n[1].message.contains("from 32 to 12"), "{}", n[1].message);
        }
        assert!(notices(&e, t("2027-01-10T00:00:00Z")).is_empty(), "expired");
    }

    #[test]
    fn the_bundle_running_out_is_no_cap_drop_warning() {
        // The cloud renews bundles days ahead; its alarm covers a failing sync.
        let n = notices(
            &ent(Some("2026-06-20T00:00:00Z")),
            t("2026-06-01T00:00:00Z"),
        );
        assert!(n.is_empty(), "{n:?}");
        // A license expiring before the bundle runs out still is one.
        let n = notices(
            &ent(Some("2027-01-20T00:00:00Z")),
            t("2027-01-01T00:00:00Z"),
        );
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!((n[1].cap_from, n[1].cap_to), (Some(32), Some(12)));
    }
}
