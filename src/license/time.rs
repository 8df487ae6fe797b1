//! The engine's clock never goes backwards: setting the system clock back
//! cannot revive an expired license.

use chrono::{DateTime, TimeDelta, Utc};

/// `at + delta`, saturating at the end of representable time instead of
/// panicking: instants come from signed but outside data (a license's
/// terms, a stored high-water mark).
pub fn later(at: DateTime<Utc>, delta: TimeDelta) -> DateTime<Utc> {
    at.checked_add_signed(delta)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Effective now: the latest of the system clock, the highest instant seen and
/// persisted before, and the newest accepted bundle's `issued_at`.
pub fn effective_now(
    system: DateTime<Utc>,
    high_water: Option<DateTime<Utc>>,
    newest_issued: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    [Some(system), high_water, newest_issued]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(system)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::tests::{spc, t};
    use crate::license::Entitlement;

    #[test]
    fn later_saturates_instead_of_panicking() {
        let max = DateTime::<Utc>::MAX_UTC;
        assert_eq!(later(max, TimeDelta::days(1)), max);
        assert_eq!(
            later(t("2026-01-01T00:00:00Z"), TimeDelta::days(1)),
            t("2026-01-02T00:00:00Z")
        );
    }

    #[test]
    fn takes_the_latest_instant() {
        let (a, b, c) = (
            t("2026-01-01T00:00:00Z"),
            t("2026-02-01T00:00:00Z"),
            t("2026-03-01T00:00:00Z"),
        );
        assert_eq!(effective_now(a, None, None), a);
        assert_eq!(effective_now(a, Some(c), Some(b)), c);
        assert_eq!(effective_now(c, Some(a), Some(b)), c);
        assert_eq!(effective_now(a, None, Some(b)), b);
    }

    #[test]
    fn clock_set_back_a_year_does_not_revive_an_expired_license() {
        let e = Entitlement {
            builtin: 2,
            licenses: vec![spc("L1", 20, 365, "2026-01-10T00:00:00Z")],
            not_after: None,
        };
        let seen = t("2027-02-01T00:00:00Z");
        let set_back = t("2026-02-01T00:00:00Z");
        assert_eq!(
            e.cap_at(set_back).total(),
            22,
            "the raw clock would revive it"
        );
        assert_eq!(
            e.cap_at(effective_now(set_back, Some(seen), None)).total(),
            2
        );
    }
}
