//! The sync decisions, pure: when to try next after an outcome (poll
//! interval with jitter, exponential back-off with a cap, slow retries for
//! problems a retry cannot fix), and what the cloud part of status says.
//! The instant and the random value are arguments.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The first retry after a transient failure waits about this long (or one
/// poll interval, if shorter); each further failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);

/// How a sync attempt failed; drives back-off and what status shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Timeout, refused connection, 5xx, 429: the cloud is away or busy.
    Transient,
    /// 401/403 or a refused client certificate: this device is not accepted.
    Unauthorized,
    /// The server certificate does not verify against `[cloud] ca_file`.
    UntrustedServer,
    /// The bundle failed verification or the acceptance rules.
    Rejected,
    /// An answer outside the contract (unexpected status, oversized body).
    Unexpected,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::UntrustedServer => "untrusted server",
            FailureKind::Rejected => "rejected bundle",
            FailureKind::Unexpected => "unexpected answer",
        }
    }

    /// Retried with back-off; everything else needs someone to fix something,
    /// so it is retried slowly instead of hammering the cloud.
    pub fn is_transient(self) -> bool {
        self == FailureKind::Transient
    }
}

/// What one sync attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A bundle was accepted, or the cloud said ours is current (304).
    Synced,
    Failed {
        kind: FailureKind,
        message: String,
        /// The cloud's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub poll: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub kind: FailureKind,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// What the sync loop knows; kept beside the seats for status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub url: String,
    pub last_success: Option<DateTime<Utc>>,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub next_attempt: Option<DateTime<Utc>>,
    pub last_report: Option<DateTime<Utc>>,
    /// The signed time stamp on the last bundle answer (None: no answer yet).
    #[serde(default)]
    pub stamp: Option<StampSeen>,
}

/// What the last bundle answer's time stamp was (docs/cloud-api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StampSeen {
    /// Verified: its time was offered to the license clock as a fresh
    /// signed time.
    Verified { at: DateTime<Utc> },
    /// The cloud sent none (a cloud that does not stamp): nothing changes.
    Missing,
    /// Refused, for this reason: the license clock ignored it.
    Refused { reason: String },
}

impl StampSeen {
    /// Whether `self` says something different from `before` (what the log
    /// repeats only when it changes).
    pub fn differs_from(&self, before: Option<&StampSeen>) -> bool {
        match (self, before) {
            (StampSeen::Verified { .. }, Some(StampSeen::Verified { .. })) => false,
            (_, Some(b)) => self != b,
            (_, None) => true,
        }
    }
}

impl SyncRecord {
    pub fn new(url: &str) -> Self {
        SyncRecord {
            url: url.to_string(),
            ..SyncRecord::default()
        }
    }

    /// Records an outcome at `now` and returns the wait before the next
    /// attempt. `random` is any random value (jitter).
    pub fn record(
        &mut self,
        outcome: &Outcome,
        timing: Timing,
        now: DateTime<Utc>,
        random: u64,
    ) -> Duration {
        self.last_attempt = Some(now);
        let wait = match outcome {
            Outcome::Synced => {
                self.last_success = Some(now);
                self.last_error = None;
                self.failures = 0;
                spread(timing.poll, random)
            }
            Outcome::Failed {
                kind,
                message,
                retry_after,
            } => {
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(LastError {
                    kind: *kind,
                    message: message.clone(),
                    at: now,
                });
                next_after_failure(timing, *kind, self.failures, *retry_after, random)
            }
        };
        self.next_attempt = Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
        wait
    }
}

/// The wait after the `failures`-th failure in a row.
pub fn next_after_failure(
    timing: Timing,
    kind: FailureKind,
    failures: u32,
    retry_after: Option<Duration>,
    random: u64,
) -> Duration {
    if !kind.is_transient() {
        return spread(timing.poll.max(timing.max_backoff), random);
    }
    let first = FIRST_RETRY.min(timing.poll);
    let doublings = failures.saturating_sub(1).min(30);
    let base = first
        .checked_mul(1 << doublings)
        .unwrap_or(timing.max_backoff)
        .min(timing.max_backoff);
    // Equal jitter: half fixed, half random, so gateways that lost the cloud
    // together do not come back together.
    let wait = base / 2 + fraction(base / 2, random);
    match retry_after {
        Some(asked) => wait.max(asked).min(timing.max_backoff),
        None => wait,
    }
}

/// `d` spread by +-10% so polls of many gateways do not line up.
pub fn spread(d: Duration, random: u64) -> Duration {
    d - d / 10 + fraction(d / 5, random)
}

/// A random part of `d` (0..=d) from `random`, at millisecond grain.
fn fraction(d: Duration, random: u64) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % ms.saturating_add(1))
}

/// The cloud part of status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudStatus {
    /// The sync loop's record, its fields at the top level of the JSON.
    #[serde(flatten)]
    pub sync: SyncRecord,
    /// When the bundle in force runs out (then only built-in seats count).
    pub bundle_not_after: Option<DateTime<Utc>>,
    /// When the bundle in force was issued (its age is what an operator
    /// reads when no sync happened since the daemon started).
    #[serde(default)]
    pub bundle_issued_at: Option<DateTime<Utc>>,
    /// Set when the last attempt failed: what that means for the seats.
    pub alarm: Option<Alarm>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    pub severity: Severity,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl CloudStatus {
    pub fn build(
        record: &SyncRecord,
        not_after: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Self {
        CloudStatus {
            sync: record.clone(),
            bundle_not_after: not_after,
            bundle_issued_at: None,
            alarm: record
                .last_error
                .as_ref()
                .map(|_| alarm(record.last_success, not_after, now)),
        }
    }
}

/// What a failed sync means for the seats, given the bundle in force.
pub fn alarm(
    last_success: Option<DateTime<Utc>>,
    not_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Alarm {
    let since = last_success.map_or("the daemon started".to_string(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    });
    match not_after {
        None => Alarm {
            severity: Severity::Error,
            message: format!("no bundle and no sync since {since}: built-in seats only until a sync succeeds"),
        },
        Some(end) if now >= end => Alarm {
            severity: Severity::Error,
            message: format!(
                "the bundle RAN OUT at {} and the cloud has not synced since {since}: built-in seats only until a sync succeeds",
                end.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        },
        Some(end) => Alarm {
            severity: Severity::Warning,
            message: format!(
                "no sync since {since}; licensed seats hold until the bundle runs out at {} (in {})",
                end.format("%Y-%m-%d %H:%M:%S UTC"),
                human(end - now)
            ),
        },
    }
}

/// A duration for people: the two largest units.
pub fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    let (days, hours, mins, secs) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    match () {
        _ if days > 0 => format!("{days}d {hours}h"),
        _ if hours > 0 => format!("{hours}h {mins}m"),
        _ if mins > 0 => format!("{mins}m {secs}s"),
        _ => format!("{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::tests::t;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn timing() -> Timing {
        Timing {
            poll: Duration::from_secs(900),
            max_backoff: Duration::from_secs(3600),
        }
    }

    fn failed(kind: FailureKind, retry_after: Option<Duration>) -> Outcome {
        Outcome::Failed {
            kind,
            message: "m".into(),
            retry_after,
        }
    }

    #[test]
    fn next_delay_table() {
        use FailureKind::*;
        // (outcome, failures before, random, expected wait)
        let cases: Vec<(&str, Outcome, u32, u64, Duration)> = vec![
            ("synced, no jitter", Outcome::Synced, 0, 0, MS(810_000)),
            (
                "synced, max jitter",
                Outcome::Synced,
                0,
                180_000,
                MS(990_000),
            ),
            (
                "synced, jitter wraps",
                Outcome::Synced,
                0,
                180_001,
                MS(810_000),
            ),
            (
                "synced after failures",
                Outcome::Synced,
                5,
                90_000,
                MS(900_000),
            ),
            (
                "first transient, low",
                failed(Transient, None),
                0,
                0,
                MS(1_000),
            ),
            (
                "first transient, high",
                failed(Transient, None),
                0,
                1_000,
                MS(2_000),
            ),
            ("second transient", failed(Transient, None), 1, 0, MS(2_000)),
            ("third transient", failed(Transient, None), 2, 0, MS(4_000)),
            (
                "eleventh transient",
                failed(Transient, None),
                10,
                0,
                MS(1_024_000),
            ),
            (
                "twelfth transient is capped",
                failed(Transient, None),
                11,
                0,
                MS(1_800_000),
            ),
            (
                "hundredth transient is capped",
                failed(Transient, None),
                99,
                u64::MAX,
                MS(1_800_000 + u64::MAX % 1_800_001),
            ),
            (
                "retry-after honoured",
                failed(Transient, Some(Duration::from_secs(120))),
                0,
                0,
                MS(120_000),
            ),
            (
                "retry-after capped",
                failed(Transient, Some(Duration::from_secs(99_999))),
                0,
                0,
                MS(3_600_000),
            ),
            (
                "unauthorized is slow",
                failed(Unauthorized, None),
                0,
                0,
                MS(3_240_000),
            ),
            (
                "untrusted server is slow",
                failed(UntrustedServer, None),
                3,
                0,
                MS(3_240_000),
            ),
            (
                "rejected bundle is slow",
                failed(Rejected, None),
                0,
                720_000,
                MS(3_960_000),
            ),
            (
                "unexpected is slow",
                failed(Unexpected, Some(MS(1))),
                0,
                0,
                MS(3_240_000),
            ),
        ];
        for (name, outcome, before, random, want) in cases {
            let mut rec = SyncRecord::new("https://c/");
            rec.failures = before;
            let now = t("2026-06-01T00:00:00Z");
            let got = rec.record(&outcome, timing(), now, random);
            assert_eq!(got, want, "{name}");
            assert_eq!(
                rec.next_attempt,
                Some(now + chrono::Duration::from_std(want).unwrap()),
                "{name}"
            );
            assert_eq!(rec.last_attempt, Some(now), "{name}");
        }
    }

    #[test]
    fn short_polls_back_off_from_the_poll_interval() {
        let timing = Timing {
            poll: MS(100),
            max_backoff: MS(1_000),
        };
        let waits: Vec<Duration> = (1..=6)
            .map(|n| next_after_failure(timing, FailureKind::Transient, n, None, u64::MAX))
            .collect();
        let bases = [100, 200, 400, 800, 1000, 1000];
        for (w, b) in waits.iter().zip(bases) {
            assert!(
                *w >= MS(b / 2) && *w <= MS(b),
                "{w:?} not in [{}, {b}] ms",
                b / 2
            );
        }
        assert_eq!(
            next_after_failure(timing, FailureKind::Unauthorized, 1, None, 0),
            MS(900),
            "slow retry is max(poll, max_backoff) -10%"
        );
    }

    #[test]
    fn success_clears_the_error_and_failure_count() {
        let mut rec = SyncRecord::new("https://c/");
        let t0 = t("2026-06-01T00:00:00Z");
        rec.record(&failed(FailureKind::Unauthorized, None), timing(), t0, 0);
        rec.record(&failed(FailureKind::Transient, None), timing(), t0, 0);
        assert_eq!(rec.failures, 2);
        assert_eq!(
            rec.last_error.as_ref().map(|e| e.kind),
            Some(FailureKind::Transient)
        );
        let t1 = t("2026-06-01T00:10:00Z");
        rec.record(&Outcome::Synced, timing(), t1, 0);
        assert_eq!(
            (rec.failures, rec.last_error.clone(), rec.last_success),
            (0, None, Some(t1))
        );
    }

    #[test]
    fn status_alarm_table() {
        let ok = SyncRecord {
            last_success: Some(t("2026-06-01T00:00:00Z")),
            ..SyncRecord::new("https://c/")
        };
        let mut down = ok.clone();
        down.record(
            &failed(FailureKind::Transient, None),
            timing(),
            t("2026-06-01T01:00:00Z"),
            0,
        );
        let mut never = SyncRecord::new("https://c/");
        never.record(
            &failed(FailureKind::Unauthorized, None),
            timing(),
            t("2026-06-01T01:00:00Z"),
            0,
        );
        let end = Some(t("2026-06-03T03:00:00Z"));
        let now = t("2026-06-01T01:00:00Z");
        type Case<'a> = (
            &'a str,
            &'a SyncRecord,
            Option<DateTime<Utc>>,
            DateTime<Utc>,
            Option<(Severity, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            ("synced: no alarm", &ok, end, now, None),
            ("down, bundle valid", &down, end, now, Some((Severity::Warning, "no sync since 2026-06-01 00:00:00 UTC; licensed seats hold until the bundle runs out at 2026-06-03 03:00:00 UTC (in 2d 2h)"))),
            ("down, bundle ran out", &down, end, t("2026-06-03T03:00:00Z"), Some((Severity::Error, "the bundle RAN OUT at 2026-06-03 03:00:00 UTC and the cloud has not synced since 2026-06-01 00:00:00 UTC: built-in seats only"))),
            ("never synced, no bundle", &never, None, now, Some((Severity::Error, "no bundle and no sync since the daemon started: built-in seats only"))),
        ];
        for (name, rec, not_after, now, want) in cases {
            let s = CloudStatus::build(rec, not_after, now);
            match (s.alarm, want) {
                (None, None) => {}
                (Some(a), Some((sev, msg))) => {
                    assert_eq!(a.severity, sev, "{name}");
                    assert!(
                        a.message.contains(msg),
                        "{name}: {:?} lacks {msg:?}",
                        a.message
                    );
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn stamp_changes_are_said_once() {
        let ok = |at: &str| StampSeen::Verified { at: t(at) };
        let bad = |r: &str| StampSeen::Refused { reason: r.into() };
        let cases = [
            (ok("2026-06-01T00:00:00Z"), None, true),
            (
                ok("2026-06-01T00:01:00Z"),
                Some(ok("2026-06-01T00:00:00Z")),
                false,
            ),
            (bad("x"), Some(ok("2026-06-01T00:00:00Z")), true),
            (bad("x"), Some(bad("x")), false),
            (bad("y"), Some(bad("x")), true),
            (StampSeen::Missing, Some(StampSeen::Missing), false),
            (ok("2026-06-01T00:00:00Z"), Some(StampSeen::Missing), true),
        ];
        for (now, before, want) in cases {
            assert_eq!(
                now.differs_from(before.as_ref()),
                want,
                "{now:?} after {before:?}"
            );
        }
        let json = serde_json::to_value(bad("x")).unwrap();
        assert_eq!(json, serde_json::json!({"state": "refused", "reason": "x"}));
    }

    #[test]
    fn human_durations() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (61, "1m 1s"),
            (3_700, "1h 1m"),
            (90_000, "1d 1h"),
            (-5, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(human(chrono::Duration::seconds(secs)), want);
        }
    }
}
