//! The engine's clock: the last trusted instant keeps running on the
//! monotonic clock, so setting the system clock back neither revives an
//! expired license nor stops time (licenses still expire on time), and a
//! fresh signed time from the cloud corrects it, also backwards, so a
//! mistaken forward jump of the system clock heals at the next sync.
//! Pure: system and monotonic instants are arguments.
//!
//! The rules (`TrustedClock`):
//! - now = max(system clock, anchor + monotonic time since the anchor). The
//!   anchor starts at the persisted mark (`clock.json`, the trusted now the
//!   daemon last wrote) and is moved up to now whenever the daemon writes
//!   the mark (`observe`), so the mark never goes backwards on its own.
//! - A fresh signed time moves the anchor to itself, backwards too
//!   (`correct`). Fresh means signed for one request of this run: a slice
//!   lease newly accepted (its epoch must grow), or the time stamp on a
//!   bundle answer (`stamp`: it carries the random nonce the request sent).
//!   Either is paired with the monotonic instant its request was SENT (so
//!   the clock runs at most one round trip ahead, never behind). A signed time is refused as a
//!   correction when it is stale (more than `SIGNED_SLACK` behind the last
//!   accepted signed time, run forward on the monotonic clock, or behind
//!   the one persisted before a restart) or from the future (more than
//!   `MAX_FUTURE_SKEW_MINUTES` ahead of the trusted now: a clock is wrong,
//!   refuse rather than guess).
//! - If, at a correction, the system clock is ahead of the signed time by
//!   more than `TOLERANCE`, the system clock is distrusted: now follows the
//!   signed time + monotonic time while the system clock stays that far
//!   ahead, until it agrees again within `TOLERANCE` (then `observe` trusts
//!   it again). The distrust is persisted with the mark.
//! - A bundle's `issued_at` only raises the clock (`raise`), never moves it
//!   back: a bundle is only as fresh as the bundle (the cloud serves the
//!   same one until something changes, a file may be months old).

use std::time::Instant;

use chrono::{DateTime, Duration, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::bundle::MAX_FUTURE_SKEW_MINUTES;

/// How far the system clock may be ahead of the trusted signed clock and
/// still be believed.
pub const TOLERANCE: TimeDelta = TimeDelta::minutes(5);
/// How far a signed time may be behind the last one (run forward on the
/// monotonic clock) and still correct the clock: round trips differ and the
/// monotonic clock drifts a little.
pub const SIGNED_SLACK: TimeDelta = TimeDelta::minutes(1);

/// `at + delta`, saturating at the end of representable time instead of
/// panicking: instants come from signed but outside data (a license's
/// terms, a stored high-water mark).
pub fn later(at: DateTime<Utc>, delta: TimeDelta) -> DateTime<Utc> {
    at.checked_add_signed(delta)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `at - delta`, saturating at the start of representable time.
fn earlier(at: DateTime<Utc>, delta: TimeDelta) -> DateTime<Utc> {
    at.checked_sub_signed(delta)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `at` + the monotonic time from `from` to `to` (nothing if `to` is
/// earlier), saturating.
fn run(at: DateTime<Utc>, from: Instant, to: Instant) -> DateTime<Utc> {
    let d = TimeDelta::from_std(to.saturating_duration_since(from)).unwrap_or(TimeDelta::MAX);
    later(at, d)
}

/// The clock as the state directory keeps it (`clock.json`). Fields other
/// than `high_water` are optional, so older files still read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// The trusted now when it was written: the clock restarts from here.
    pub high_water: DateTime<Utc>,
    /// The newest signed time that corrected the clock.
    #[serde(default)]
    pub signed: Option<DateTime<Utc>>,
    /// The system clock was ahead of the signed time and has not agreed since.
    #[serde(default)]
    pub distrust_system: bool,
}

/// What a signed time did to the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// The clock now follows it: the trusted now went from `from` to `to`.
    Applied {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        distrust_system: bool,
    },
    /// Older than a signed time already accepted: ignored.
    Stale { floor: DateTime<Utc> },
    /// Too far ahead of the trusted now: ignored.
    FromTheFuture { now: DateTime<Utc> },
}

/// The engine's clock (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrustedClock {
    /// The last trusted instant and the monotonic instant it held at.
    anchor: Option<(DateTime<Utc>, Instant)>,
    /// The newest signed time accepted, and when (None: before a restart).
    signed: Option<(DateTime<Utc>, Option<Instant>)>,
    distrust_system: bool,
}

impl TrustedClock {
    /// A clock restarted from what was persisted, at monotonic `mono`.
    pub fn restore(state: &ClockState, mono: Instant) -> Self {
        TrustedClock {
            anchor: Some((state.high_water, mono)),
            signed: state.signed.map(|s| (s, None)),
            distrust_system: state.distrust_system,
        }
    }

    /// The last trusted instant run forward to `mono`.
    fn running(&self, mono: Instant) -> Option<DateTime<Utc>> {
        self.anchor.map(|(at, m)| run(at, m, mono))
    }

    /// The trusted now.
    pub fn now(&self, system: DateTime<Utc>, mono: Instant) -> DateTime<Utc> {
        match self.running(mono) {
            None => system,
            Some(r) if self.distrust_system && system > later(r, TOLERANCE) => r,
            Some(r) => r.max(system),
        }
    }

    pub fn distrusts_system(&self) -> bool {
        self.distrust_system
    }

    /// Moves the anchor up to now (what the daemon persists), and trusts the
    /// system clock again once it agrees within `TOLERANCE`.
    pub fn observe(&mut self, system: DateTime<Utc>, mono: Instant) -> ClockState {
        let now = self.now(system, mono);
        if self.distrust_system && (system - now).abs() <= TOLERANCE {
            self.distrust_system = false;
        }
        self.anchor = Some((now, mono));
        self.state()
    }

    /// What to persist, without moving anything.
    pub fn state(&self) -> ClockState {
        ClockState {
            high_water: self.anchor.map_or(DateTime::<Utc>::MIN_UTC, |(at, _)| at),
            signed: self.signed.map(|(s, _)| s),
            distrust_system: self.distrust_system,
        }
    }

    /// A floor from signed data of unknown freshness (a bundle's
    /// `issued_at`): the clock is at least `at` from `mono` on; never back.
    pub fn raise(&mut self, at: DateTime<Utc>, system: DateTime<Utc>, mono: Instant) {
        let now = self.now(system, mono);
        self.anchor = Some((now.max(at), mono));
    }

    /// A fresh signed time `signed`, valid at monotonic `mono` (see the
    /// module doc for what fresh means and when it is refused).
    pub fn correct(
        &mut self,
        signed: DateTime<Utc>,
        system: DateTime<Utc>,
        mono: Instant,
    ) -> Correction {
        let from = self.now(system, mono);
        if let Some((last, at)) = self.signed {
            let floor = match at {
                Some(m) => earlier(run(last, m, mono), SIGNED_SLACK),
                None => last,
            };
            if signed < floor {
                return Correction::Stale { floor };
            }
        }
        if signed > later(from, Duration::minutes(MAX_FUTURE_SKEW_MINUTES)) {
            return Correction::FromTheFuture { now: from };
        }
        self.anchor = Some((signed, mono));
        self.signed = Some((signed, Some(mono)));
        self.distrust_system = system > later(signed, TOLERANCE);
        Correction::Applied {
            from,
            to: self.now(system, mono),
            distrust_system: self.distrust_system,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::tests::{spc, t};
    use crate::license::Entitlement;
    use std::time::Duration as Std;

    fn secs(s: u64) -> Std {
        Std::from_secs(s)
    }

    fn restored(mark: &str, base: Instant) -> TrustedClock {
        let state = ClockState {
            high_water: t(mark),
            ..Default::default()
        };
        TrustedClock::restore(&state, base)
    }

    /// Bound license activated 2026-01-10 for `days`, ends at the instant
    /// `end` if the term is picked for it.
    fn ending(end: &str) -> Entitlement {
        let start = t("2026-01-10T00:00:00Z");
        let mut lic = spc("L1", 20, 1, "2026-01-10T00:00:00Z");
        lic.term_days = u32::try_from((t(end) - start).num_days()).unwrap();
        assert_eq!(lic.expiry(), t(end));
        Entitlement {
            builtin: 2,
            licenses: vec![lic],
            not_after: None,
        }
    }

    #[test]
    fn later_saturates_instead_of_panicking() {
        let max = DateTime::<Utc>::MAX_UTC;
        assert_eq!(later(max, TimeDelta::days(1)), max);
        assert_eq!(
            later(t("2026-01-01T00:00:00Z"), TimeDelta::days(1)),
            t("2026-01-02T00:00:00Z")
        );
        let base = Instant::now();
        let far = ClockState {
            high_water: max,
            ..Default::default()
        };
        let c = TrustedClock::restore(&far, base);
        assert_eq!(c.now(t("2026-01-01T00:00:00Z"), base + secs(9)), max);
    }

    #[test]
    fn now_table() {
        let base = Instant::now();
        let mark = "2026-06-01T00:00:00Z";
        let cases: Vec<(&str, TrustedClock, &str, u64, &str)> = vec![
            (
                "nothing known: the system clock",
                TrustedClock::default(),
                "2026-01-01T00:00:00Z",
                5,
                "2026-01-01T00:00:00Z",
            ),
            (
                "system ahead of the mark",
                restored(mark, base),
                "2026-07-01T00:00:00Z",
                5,
                "2026-07-01T00:00:00Z",
            ),
            (
                "system behind: the mark keeps running",
                restored(mark, base),
                "2025-06-01T00:00:00Z",
                5,
                "2026-06-01T00:00:05Z",
            ),
            (
                "system a second behind the running mark",
                restored(mark, base),
                "2026-06-01T00:00:04Z",
                5,
                "2026-06-01T00:00:05Z",
            ),
        ];
        for (name, clock, system, after, want) in cases {
            assert_eq!(clock.now(t(system), base + secs(after)), t(want), "{name}");
        }
    }

    #[test]
    fn clock_set_back_a_year_licenses_still_expire_on_time() {
        // The mark: 2027-01-10T00:00:00Z minus 2 s; the license ends at
        // 2027-01-10T00:00:00Z; the system clock is a year behind throughout.
        let e = ending("2027-01-10T00:00:00Z");
        let base = Instant::now();
        let clock = restored("2027-01-09T23:59:58Z", base);
        let system = |s: i64| t("2026-01-09T23:59:58Z") + TimeDelta::seconds(s);
        let cap = |after: u64| {
            let mono = base + Std::from_millis(after);
            e.cap_at(clock.now(system(after as i64 / 1000), mono))
                .total()
        };
        assert_eq!(cap(0), 22);
        assert_eq!(cap(1_999), 22);
        assert_eq!(cap(2_000), 2, "expired after 2 s of monotonic time");
        assert_eq!(cap(3_600_000), 2);
        // The raw clock, a year behind, would count it for another year.
        assert_eq!(e.cap_at(system(86_400 * 30)).total(), 22);
        assert_eq!(e.cap_at(clock.now(system(86_400 * 30), base)).total(), 22);
        let month = base + secs(86_400 * 30);
        assert_eq!(e.cap_at(clock.now(system(86_400 * 30), month)).total(), 2);
    }

    #[test]
    fn a_restart_with_the_clock_set_back_starts_from_the_mark_and_runs() {
        let e = ending("2027-01-10T00:00:00Z");
        let base = Instant::now();
        let mut clock = restored("2027-01-09T23:59:00Z", base);
        let behind = t("2026-01-01T00:00:00Z");
        // Written at +30 s, restarted 1 s later (the daemon was down 1 s of
        // monotonic time the clock cannot know about).
        let saved = clock.observe(behind, base + secs(30));
        assert_eq!(saved.high_water, t("2027-01-09T23:59:30Z"));
        let text = serde_json::to_string(&saved).unwrap();
        let back: ClockState = serde_json::from_str(&text).unwrap();
        let base2 = base + secs(31);
        let clock = TrustedClock::restore(&back, base2);
        assert_eq!(e.cap_at(clock.now(behind, base2 + secs(29))).total(), 22);
        assert_eq!(e.cap_at(clock.now(behind, base2 + secs(30))).total(), 2);
    }

    #[test]
    fn old_clock_files_still_read() {
        let old: ClockState =
            serde_json::from_str(r#"{"high_water":"2026-06-01T00:00:00Z"}"#).unwrap();
        assert_eq!(old.high_water, t("2026-06-01T00:00:00Z"));
        assert_eq!(old.signed, None);
        assert!(!old.distrust_system);
    }

    #[test]
    fn a_forward_jump_heals_at_the_next_fresh_signed_time() {
        let e = ending("2027-01-10T00:00:00Z");
        let base = Instant::now();
        let real = |s: u64| t("2026-06-01T00:00:00Z") + TimeDelta::seconds(s as i64);
        let ahead = |s: u64| later(real(s), TimeDelta::days(3653));
        // The system clock jumped 10 years ahead and the daemon persisted it.
        let mut clock = TrustedClock::default();
        let saved = clock.observe(ahead(0), base);
        let mut clock = TrustedClock::restore(&saved, base + secs(1));
        assert_eq!(e.cap_at(clock.now(ahead(2), base + secs(2))).total(), 2);
        // A lease signed at real(9), requested at mono +10 s.
        let got = clock.correct(real(9), ahead(10), base + secs(10));
        assert!(
            matches!(got, Correction::Applied { to, distrust_system: true, .. } if to == real(9)),
            "{got:?}"
        );
        // Licenses count again, and time runs while the system stays ahead.
        let now = clock.now(ahead(70), base + secs(70));
        assert_eq!(now, real(69));
        assert_eq!(e.cap_at(now).total(), 22);
        // Persisted: the mark follows the signed time, the distrust stays.
        let saved = clock.observe(ahead(80), base + secs(80));
        assert_eq!(saved.high_water, real(79));
        assert!(saved.distrust_system);
        assert_eq!(saved.signed, Some(real(9)));
        let restarted = TrustedClock::restore(&saved, base + secs(81));
        assert_eq!(restarted.now(ahead(90), base + secs(90)), real(88));
        // The operator sets the clock right: trusted again...
        let saved = clock.observe(real(100) + TimeDelta::seconds(30), base + secs(100));
        assert!(!saved.distrust_system);
        assert_eq!(saved.high_water, real(130));
        // ...so a later legitimate step forward (NTP) is followed.
        assert_eq!(
            clock.now(real(200) + TimeDelta::hours(1), base + secs(200)),
            real(200) + TimeDelta::hours(1)
        );
    }

    #[test]
    fn a_signed_time_agreeing_with_the_system_clock_changes_nothing_visible() {
        let base = Instant::now();
        let real = |s: u64| t("2026-06-01T00:00:00Z") + TimeDelta::seconds(s as i64);
        let mut clock = restored("2026-06-01T00:00:00Z", base);
        let got = clock.correct(real(10) + TimeDelta::seconds(1), real(10), base + secs(10));
        assert!(
            matches!(
                got,
                Correction::Applied {
                    distrust_system: false,
                    ..
                }
            ),
            "{got:?}"
        );
        assert_eq!(clock.now(real(20), base + secs(20)), real(21));
        // The system clock a minute ahead of the signed time: within tolerance.
        let got = clock.correct(real(30), real(90), base + secs(30));
        assert!(
            matches!(
                got,
                Correction::Applied {
                    distrust_system: false,
                    ..
                }
            ),
            "{got:?}"
        );
        assert_eq!(clock.now(real(90), base + secs(30)), real(90));
    }

    #[test]
    fn stale_replayed_and_future_signed_times_cannot_move_it() {
        let base = Instant::now();
        let real = |s: i64| t("2026-06-01T00:00:00Z") + TimeDelta::seconds(s);
        let mut clock = restored("2026-06-01T00:00:00Z", base);
        assert!(matches!(
            clock.correct(real(10), real(10), base + secs(10)),
            Correction::Applied { .. }
        ));
        let before = clock;
        let cases = [
            ("an hour-old signed time", real(-3600), 20, "stale"),
            (
                "the same time again 2 minutes later",
                real(10),
                130,
                "stale",
            ),
            (
                "withheld, delivered 10 minutes late",
                real(60),
                610,
                "stale",
            ),
            ("signed an hour ahead", real(3620), 20, "future"),
        ];
        for (name, signed, after, want) in cases {
            let mut c = before;
            let got = c.correct(signed, real(after as i64), base + secs(after));
            let kind = match got {
                Correction::Stale { .. } => "stale",
                Correction::FromTheFuture { .. } => "future",
                Correction::Applied { .. } => "applied",
            };
            assert_eq!(kind, want, "{name}: {got:?}");
            assert_eq!(c, before, "{name}: the clock did not move");
        }
        // Within the slack (round trips differ): still applied.
        let mut c = before;
        assert!(matches!(
            c.correct(real(25), real(80), base + secs(80)),
            Correction::Applied { .. }
        ));
        // After a restart the persisted signed time is the floor.
        let saved = clock.observe(real(100), base + secs(100));
        let mut c = TrustedClock::restore(&saved, base + secs(101));
        let got = c.correct(real(9), real(5), base + secs(101));
        assert!(matches!(got, Correction::Stale { .. }), "{got:?}");
    }

    #[test]
    fn a_bundle_time_only_raises_the_clock() {
        let base = Instant::now();
        let mut clock = restored("2026-06-01T00:00:00Z", base);
        let behind = t("2025-01-01T00:00:00Z");
        clock.raise(t("2026-01-01T00:00:00Z"), behind, base + secs(1));
        assert_eq!(clock.now(behind, base + secs(1)), t("2026-06-01T00:00:01Z"));
        clock.raise(t("2026-07-01T00:00:00Z"), behind, base + secs(2));
        assert_eq!(clock.now(behind, base + secs(3)), t("2026-07-01T00:00:01Z"));
    }
}
