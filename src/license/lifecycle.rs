//! A license's lifecycle at any instant: activation, merging window, expiry
//! warnings, expiry, and the seats it adds. Pure: the instant is an argument.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::model::License;
use crate::license::time::later;

/// A license activates by force this long after issue if nobody associated it.
pub const FORCED_ACTIVATION_DAYS: i64 = 90;
/// After association a license can still be undone for this long.
pub const MERGING_DAYS: i64 = 7;
/// Expiry warnings, in days before expiry, most urgent first.
pub const WARNING_DAYS: [i64; 3] = [3, 30, 60];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "within_days")]
pub enum Status {
    /// Not yet activated; adds nothing.
    Inactive,
    /// Associated less than 7 days ago, and not in the future (still
    /// undoable); adds its seats.
    Merging,
    Active,
    /// Active, with a warning: expires within this many days (60, 30 or 3).
    Expiring(i64),
    /// Past its term; adds nothing. There is no grace period.
    Expired,
}

impl Status {
    pub fn adds_seats(self) -> bool {
        matches!(self, Status::Merging | Status::Active | Status::Expiring(_))
    }

    pub fn label(self) -> String {
        match self {
            Status::Inactive => "inactive".into(),
            Status::Merging => "merging".into(),
            Status::Active => "active".into(),
            Status::Expiring(d) => format!("expiring (<{d}d)"),
            Status::Expired => "expired".into(),
        }
    }
}

impl License {
    /// When the license starts counting: the first of association or
    /// activation, and at the latest 90 days after issue.
    pub fn activation(&self) -> DateTime<Utc> {
        let forced = later(self.issued_at, Duration::days(FORCED_ACTIVATION_DAYS));
        [self.activated_at, self.associated_at]
            .into_iter()
            .flatten()
            .min()
            .map_or(forced, |at| at.min(forced))
    }

    /// The first instant the license no longer counts.
    pub fn expiry(&self) -> DateTime<Utc> {
        later(self.activation(), Duration::days(i64::from(self.term_days)))
    }

    pub fn status(&self, now: DateTime<Utc>) -> Status {
        let (start, end) = (self.activation(), self.expiry());
        if now < start {
            return Status::Inactive;
        }
        if now >= end {
            return Status::Expired;
        }
        // Merging: the 7 days after the association, never before it (a
        // license forced active before its association is plainly active).
        if let Some(assoc) = self.associated_at {
            if assoc <= now && now < later(assoc, Duration::days(MERGING_DAYS)) {
                return Status::Merging;
            }
        }
        let left = end - now;
        WARNING_DAYS
            .iter()
            .find(|d| left <= Duration::days(**d))
            .map_or(Status::Active, |d| Status::Expiring(*d))
    }

    /// Whether this record adds VPN seats at `now` (an active `spc` license).
    pub fn counts_at(&self, now: DateTime<Utc>) -> bool {
        self.is_spc() && self.status(now).adds_seats()
    }

    /// VPN seats this record adds at `now` on its own: all its seats, or for
    /// a shared license its static `share` (a leased pool adds its live
    /// slice instead, see `Entitlement::cap_with`). Non-`spc` products never
    /// add VPN seats.
    pub fn seats_at(&self, now: DateTime<Utc>) -> u32 {
        if !self.counts_at(now) {
            return 0;
        }
        self.pool
            .as_ref()
            .map_or(self.seats, |p| p.static_share().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{spc, t};
    use super::*;

    #[test]
    fn status_table() {
        // Issued 2026-01-01, associated+activated 2026-01-10, one year.
        let lic = spc("L1", 20, 365, "2026-01-10T00:00:00Z");
        let cases = [
            ("2026-01-05T00:00:00Z", Status::Inactive, 0),
            ("2026-01-10T00:00:00Z", Status::Merging, 20),
            ("2026-01-16T23:59:59Z", Status::Merging, 20),
            ("2026-01-17T00:00:00Z", Status::Active, 20),
            ("2026-11-10T23:59:59Z", Status::Active, 20),
            ("2026-11-11T00:00:00Z", Status::Expiring(60), 20),
            ("2026-12-11T00:00:00Z", Status::Expiring(30), 20),
            ("2027-01-07T00:00:00Z", Status::Expiring(3), 20),
            ("2027-01-09T23:59:59Z", Status::Expiring(3), 20),
            ("2027-01-10T00:00:00Z", Status::Expired, 0),
            ("2030-01-01T00:00:00Z", Status::Expired, 0),
        ];
        for (at, status, seats) in cases {
            assert_eq!(lic.status(t(at)), status, "status at {at}");
            assert_eq!(lic.seats_at(t(at)), seats, "seats at {at}");
        }
    }

    #[test]
    fn forced_activation_ninety_days_after_issue() {
        let lic = License {
            associated_at: None,
            activated_at: None,
            ..spc("L1", 10, 365, "2026-01-10T00:00:00Z")
        };
        assert_eq!(lic.activation(), t("2026-04-01T00:00:00Z"));
        assert_eq!(lic.expiry(), t("2027-04-01T00:00:00Z"));
        assert_eq!(lic.status(t("2026-03-31T23:59:59Z")), Status::Inactive);
        // Forced, not associated: no merging window.
        assert_eq!(lic.status(t("2026-04-01T00:00:00Z")), Status::Active);
    }

    #[test]
    fn late_association_does_not_push_past_forced_activation() {
        let lic = License {
            associated_at: Some(t("2026-06-01T00:00:00Z")),
            activated_at: Some(t("2026-06-01T00:00:00Z")),
            ..spc("L1", 10, 30, "2026-06-01T00:00:00Z")
        };
        assert_eq!(lic.activation(), t("2026-04-01T00:00:00Z"));
        assert_eq!(lic.status(t("2026-06-02T00:00:00Z")), Status::Expired);
    }

    #[test]
    fn merging_is_only_the_seven_days_after_association() {
        // Issued 2026-01-01, forced active 2026-04-01, associated 2026-06-01
        // (after the forced activation), term long enough to stay active.
        let late = License {
            associated_at: Some(t("2026-06-01T00:00:00Z")),
            activated_at: None,
            ..spc("L1", 10, 3 * 365, "2026-06-01T00:00:00Z")
        };
        // Associated on its issue day and activated at once.
        let early = License {
            activated_at: None,
            associated_at: Some(t("2026-01-01T00:00:00Z")),
            ..spc("L2", 10, 365, "2026-01-01T00:00:00Z")
        };
        let cases = [
            (&late, "2026-03-31T23:59:59Z", Status::Inactive),
            (&late, "2026-04-01T00:00:00Z", Status::Active),
            (&late, "2026-05-31T23:59:59Z", Status::Active),
            (&late, "2026-06-01T00:00:00Z", Status::Merging),
            (&late, "2026-06-07T23:59:59Z", Status::Merging),
            (&late, "2026-06-08T00:00:00Z", Status::Active),
            (&early, "2025-12-31T23:59:59Z", Status::Inactive),
            (&early, "2026-01-01T00:00:00Z", Status::Merging),
            (&early, "2026-01-07T23:59:59Z", Status::Merging),
            (&early, "2026-01-08T00:00:00Z", Status::Active),
        ];
        for (lic, at, want) in cases {
            assert_eq!(lic.status(t(at)), want, "{} at {at}", lic.id);
            assert_eq!(lic.seats_at(t(at)), if want.adds_seats() { 10 } else { 0 });
        }
    }

    #[test]
    fn association_counts_as_activation() {
        let lic = License {
            activated_at: None,
            ..spc("L1", 10, 365, "2026-02-01T00:00:00Z")
        };
        assert_eq!(lic.activation(), t("2026-02-01T00:00:00Z"));
        assert_eq!(lic.status(t("2026-02-02T00:00:00Z")), Status::Merging);
    }

    #[test]
    fn pro_license_never_adds_vpn_seats() {
        let pro = License {
            product: "pro".into(),
            ..spc("P1", 50, 365, "2026-01-10T00:00:00Z")
        };
        assert_eq!(pro.status(t("2026-06-01T00:00:00Z")), Status::Active);
        assert_eq!(pro.seats_at(t("2026-06-01T00:00:00Z")), 0);
        assert_eq!(pro.seats_at(t("2028-06-01T00:00:00Z")), 0);
    }
}
