//! `seatgate check`: the daemon's status judged with the monitoring-plugin
//! conventions (Nagios, Icinga): exit 0 OK, 1 WARNING, 2 CRITICAL,
//! 3 UNKNOWN, one line of text and perfdata after a `|`. Pure: the status
//! (or why there is none) in, the verdict out.
//!
//! A daemon that does not answer (no socket, refused, timed out) is
//! CRITICAL, not UNKNOWN: the VPN servers' hooks then reject every
//! connection (or, with `on_error = admit`, nothing counts seats). UNKNOWN
//! is kept for what the check itself cannot tell: no right to read status,
//! an answer it cannot read.

use crate::admission::client::ClientError;
use crate::cloud::policy::Severity;
use crate::license::notices::NoticeKind;
use crate::status::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }

    /// How bad, for picking the worst: UNKNOWN ranks below CRITICAL.
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Unknown => 1,
            State::Warning => 2,
            State::Critical => 3,
        }
    }
}

/// Seat usage limits in percent of the cap; None: from the daemon's
/// `[alerts]` thresholds (WARNING at the first, CRITICAL at the second, or
/// at 100 % when there is one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub warning: Option<u8>,
    pub critical: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: State,
    /// The plugin's one line of output.
    pub line: String,
}

/// Seats for `pct` % of `cap`, rounded up (80 % of 32 is 26).
fn seats(pct: u8, cap: u32) -> u32 {
    let s = (u64::from(pct) * u64::from(cap)).div_ceil(100);
    u32::try_from(s).unwrap_or(u32::MAX)
}

/// One line: no newlines, and no `|` (it starts the perfdata).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '|' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

fn verdict(state: State, text: &str, perfdata: &str) -> Verdict {
    let mut line = format!("SEATGATE {} - {}", state.label(), one_line(text));
    if !perfdata.is_empty() {
        line.push_str(" | ");
        line.push_str(perfdata);
    }
    Verdict { state, line }
}

/// The verdict on a status.
pub fn judge(s: &Status, limits: Limits) -> Verdict {
    let t = &s.alerts.thresholds;
    let warn_pct = limits.warning.or(t.first().copied()).unwrap_or(80);
    let crit_pct = limits
        .critical
        .or(t.get(1).copied())
        .unwrap_or(100)
        .max(warn_pct);
    let cap = s.cap_total;
    let (warn, crit) = (seats(warn_pct, cap), seats(crit_pct, cap));
    let mut found: Vec<(State, String)> = Vec::new();
    if s.over_cap_by > 0 {
        found.push((
            State::Critical,
            match &s.over_cap {
                Some(p) if !p.keys.is_empty() => format!(
                    "over the cap by {}, disconnecting {} sessions in {} s",
                    s.over_cap_by,
                    p.keys.len(),
                    p.in_ms.div_ceil(1000)
                ),
                _ => format!("over the cap by {}", s.over_cap_by),
            },
        ));
    }
    let seat_state = if s.in_use >= crit {
        State::Critical
    } else if s.in_use >= warn {
        State::Warning
    } else {
        State::Ok
    };
    if let Some(b) = s.bundle.as_ref().filter(|b| b.ran_out) {
        found.push((
            State::Critical,
            format!(
                "license bundle ran out at {}: built-in seats only",
                b.not_after.format("%Y-%m-%d %H:%M UTC")
            ),
        ));
    }
    for n in &s.license_warnings {
        if n.kind != NoticeKind::LicenseExpiry {
            continue;
        }
        let state = if n.within_days <= 3 {
            State::Critical
        } else {
            State::Warning
        };
        let left = (n.at - s.now).num_hours().max(0);
        let when = if left < 48 {
            format!("in {left} hours")
        } else {
            format!("in {} days", left / 24)
        };
        let id = n.license.as_deref().unwrap_or("?");
        found.push((state, format!("license {id} expires {when}")));
    }
    if let Some(a) = s.cloud.as_ref().and_then(|c| c.alarm.as_ref()) {
        let state = match a.severity {
            Severity::Error => State::Critical,
            Severity::Warning => State::Warning,
        };
        found.push((state, format!("cloud: {}", a.message)));
    }
    if s.lost > 0 {
        found.push((
            State::Warning,
            "seats held by sessions lost with a damaged snapshot (see seatgate status)".into(),
        ));
    }
    if let Some(w) = &s.policy.warning {
        found.push((State::Warning, w.clone()));
    }
    if let Some(w) = s.warnings.first() {
        found.push((State::Warning, w.clone()));
    }
    found.sort_by_key(|(state, _)| std::cmp::Reverse(state.rank()));
    let state = found
        .iter()
        .map(|(s, _)| *s)
        .chain([seat_state])
        .max_by_key(|s| s.rank())
        .unwrap_or(State::Ok);
    let mut text = format!("{} of {cap} seats in use", s.in_use);
    if seat_state != State::Ok {
        let at = if seat_state == State::Critical {
            crit_pct
        } else {
            warn_pct
        };
        text.push_str(&format!(" (at or above {at} %)"));
    }
    for (_, what) in &found {
        text.push_str("; ");
        text.push_str(what);
    }
    let perfdata = format!(
        "in_use={};{warn};{crit};0;{cap} cap={cap};;;0 denials={}c alert_level={};;;0;100 lost={}",
        s.in_use, s.denials, s.alert_level, s.lost
    );
    verdict(state, &text, &perfdata)
}

/// The verdict when the daemon's status could not be had.
pub fn unreachable(e: &ClientError) -> Verdict {
    use std::io::ErrorKind;
    let state = match e {
        ClientError::Connect { source, .. } if source.kind() == ErrorKind::PermissionDenied => {
            return verdict(
                State::Unknown,
                &format!("{e}; run the check as a user of an [admission] operator_groups group"),
                "",
            )
        }
        ClientError::Connect { .. } | ClientError::Timeout { .. } => State::Critical,
        ClientError::Io { .. } | ClientError::Closed { .. } | ClientError::Garbled { .. } => {
            State::Unknown
        }
    };
    let text = match state {
        State::Critical => format!("the daemon does not answer: {e}"),
        _ => e.to_string(),
    };
    verdict(state, &text, "")
}

/// The verdict when the check cannot tell (refused, unreadable answer).
pub fn unknown(why: &str) -> Verdict {
    verdict(State::Unknown, why, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::table::Table;
    use crate::cloud::policy::Alarm;
    use crate::license::in_force::Licenses;
    use crate::license::model::tests::t;
    use crate::license::notices::Notice;
    use std::path::PathBuf;

    fn status(in_use: u32, cap: u32) -> Status {
        let now = t("2026-06-01T00:00:00Z");
        let mut s = Status::build(
            "ESG-A1",
            &Table::default(),
            &Licenses::builtin_only(cap),
            None,
            now,
            &Default::default(),
            Vec::new(),
        );
        s.in_use = in_use;
        s.over_cap_by = in_use.saturating_sub(cap);
        s
    }

    fn expiring(days: i64) -> Notice {
        let now = t("2026-06-01T00:00:00Z");
        Notice {
            kind: NoticeKind::LicenseExpiry,
            key: String::new(),
            at: now + chrono::Duration::days(days),
            within_days: [3, 30, 60].into_iter().find(|d| days <= *d).unwrap(),
            license: Some("LIC-1".into()),
            cap_from: None,
            cap_to: None,
            message: String::new(),
        }
    }

    #[test]
    fn seat_usage_against_the_alert_thresholds() {
        let cases = [
            (17, 32, Limits::default(), State::Ok),
            (25, 32, Limits::default(), State::Ok),
            (26, 32, Limits::default(), State::Warning),
            (29, 32, Limits::default(), State::Critical),
            (32, 32, Limits::default(), State::Critical),
            (
                29,
                32,
                Limits {
                    warning: Some(50),
                    critical: Some(95),
                },
                State::Warning,
            ),
            (0, 0, Limits::default(), State::Critical),
        ];
        for (in_use, cap, limits, want) in cases {
            let v = judge(&status(in_use, cap), limits);
            assert_eq!(v.state, want, "{in_use}/{cap} {limits:?}: {}", v.line);
        }
        assert_eq!(
            judge(&status(17, 32), Limits::default()).line,
            "SEATGATE OK - 17 of 32 seats in use | in_use=17;26;29;0;32 cap=32;;;0 denials=0c alert_level=0;;;0;100 lost=0"
        );
        let v = judge(&status(30, 32), Limits::default());
        assert!(
            v.line
                .starts_with("SEATGATE CRITICAL - 30 of 32 seats in use (at or above 90 %) | "),
            "{}",
            v.line
        );
    }

    #[test]
    fn licenses_bundle_cloud_and_over_cap() {
        let mut s = status(1, 12);
        s.license_warnings = vec![expiring(45)];
        let v = judge(&s, Limits::default());
        assert_eq!(v.state, State::Warning);
        assert!(
            v.line
                .contains("1 of 12 seats in use; license LIC-1 expires in 45 days |"),
            "{}",
            v.line
        );
        s.license_warnings = vec![expiring(2)];
        let v = judge(&s, Limits::default());
        assert_eq!(v.state, State::Critical, "{}", v.line);
        assert!(v.line.contains("expires in 2 days"), "{}", v.line);

        let mut s = status(14, 12);
        let v = judge(&s, Limits::default());
        assert_eq!(v.state, State::Critical);
        assert!(v.line.contains("; over the cap by 2"), "{}", v.line);
        s.over_cap = Some(crate::admission::over_cap::Plan {
            order: crate::admission::over_cap::Order::Newest,
            over_by: 2,
            at: s.now,
            in_ms: 24_500,
            keys: vec!["a".into(), "b".into()],
            lost: 0,
            counting: true,
        });
        let v = judge(&s, Limits::default());
        assert_eq!(v.state, State::Critical);
        assert!(
            v.line
                .contains("; over the cap by 2, disconnecting 2 sessions in 25 s"),
            "{}",
            v.line
        );
        s.over_cap = None;
        s.over_cap_by = 0;
        s.in_use = 0;
        s.cloud = Some(crate::cloud::policy::CloudStatus {
            sync: Default::default(),
            bundle_not_after: None,
            bundle_issued_at: None,
            alarm: Some(Alarm {
                severity: Severity::Warning,
                message: "no sync for 2 hours |\nretrying".into(),
            }),
        });
        let v = judge(&s, Limits::default());
        assert_eq!(v.state, State::Warning);
        assert!(
            v.line.contains("cloud: no sync for 2 hours / retrying |"),
            "{}",
            v.line
        );
        s.cloud.as_mut().unwrap().alarm.as_mut().unwrap().severity = Severity::Error;
        assert_eq!(judge(&s, Limits::default()).state, State::Critical);
    }

    #[test]
    fn a_cap_below_the_seats_reserved_is_a_warning() {
        let mut s = status(0, 2);
        assert_eq!(judge(&s, Limits::default()).state, State::Ok);
        s.policy = crate::status::PolicyStatus {
            reserved: 3,
            unfilled: 3,
            warning: Some("the cap in force (2) is below the 3 seats reserved by [policy]".into()),
            ..Default::default()
        };
        let v = judge(&s, Limits::default());
        assert_eq!(v.state, State::Warning);
        assert!(
            v.line
                .contains("the cap in force (2) is below the 3 seats reserved"),
            "{}",
            v.line
        );
    }

    #[test]
    fn a_silent_daemon_is_critical_and_what_cannot_be_told_unknown() {
        let path = PathBuf::from("/run/seatgate/seatgate.sock");
        let io = |k: std::io::ErrorKind| std::io::Error::from(k);
        let cases = [
            (
                ClientError::Connect {
                    path: path.clone(),
                    source: io(std::io::ErrorKind::NotFound),
                },
                State::Critical,
            ),
            (
                ClientError::Connect {
                    path: path.clone(),
                    source: io(std::io::ErrorKind::ConnectionRefused),
                },
                State::Critical,
            ),
            (
                ClientError::Timeout {
                    path: path.clone(),
                    ms: 5000,
                },
                State::Critical,
            ),
            (
                ClientError::Connect {
                    path: path.clone(),
                    source: io(std::io::ErrorKind::PermissionDenied),
                },
                State::Unknown,
            ),
            (ClientError::Closed { path: path.clone() }, State::Unknown),
        ];
        for (e, want) in cases {
            let v = unreachable(&e);
            assert_eq!(v.state, want, "{}", v.line);
            assert!(!v.line.contains('\n'));
        }
        assert!(unreachable(&ClientError::Timeout { path, ms: 5 })
            .line
            .starts_with("SEATGATE CRITICAL - the daemon does not answer: no answer from"));
    }
}
