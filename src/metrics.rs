//! The daemon's status as Prometheus metrics, in the text exposition
//! format (version 0.0.4) that node_exporter's textfile collector reads.
//! Pure: one function per family group, each from the status alone; a
//! group for a new status field is one more function in `render`.

use std::fmt::Write;

use crate::admission::protocol::DenyReason;
use crate::status::Status;

/// Every denial reason, so each series exists (at 0) before its first denial.
const REASONS: [DenyReason; 9] = [
    DenyReason::CapReached,
    DenyReason::OverCap,
    DenyReason::NoLicense,
    DenyReason::UnknownServer,
    DenyReason::Internal,
    DenyReason::KeyHeld,
    DenyReason::UserLimit,
    DenyReason::Reserved,
    DenyReason::GroupLimit,
];

/// The metrics of `status`, one family after another, each with its HELP
/// and TYPE lines.
pub fn render(status: &Status) -> String {
    let mut out = Out::default();
    up(&mut out, true);
    build_info(&mut out, status);
    seats(&mut out, status);
    admissions(&mut out, status);
    latency(&mut out, status);
    licenses(&mut out, status);
    cloud(&mut out, status);
    alerts(&mut out, status);
    out.0
}

/// What a collector file says when the daemon did not answer: only that
/// (stale numbers would look current).
pub fn render_down() -> String {
    let mut out = Out::default();
    up(&mut out, false);
    out.0
}

#[derive(Default)]
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// Label values: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text: backslash and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn up(out: &mut Out, up: bool) {
    out.gauge(
        "seatgate_up",
        "1 when the seatgate daemon answered the status query, else 0.",
        u8::from(up),
    );
}

fn build_info(out: &mut Out, s: &Status) {
    out.family(
        "seatgate_build_info",
        "gauge",
        "Always 1; the seatgate version and the gateway's serial as labels.",
    );
    out.sample(
        "seatgate_build_info",
        &[("version", &s.version), ("device", &s.device)],
        1,
    );
}

fn seats(out: &mut Out, s: &Status) {
    out.gauge(
        "seatgate_seats_cap",
        "VPN client seats the gateway may use now (built-in, licensed and pooled).",
        s.cap_total,
    );
    out.gauge(
        "seatgate_seats_in_use",
        "VPN client seats held by sessions (lost ones included).",
        s.in_use,
    );
    out.gauge(
        "seatgate_seats_free",
        "VPN client seats free for new sessions.",
        s.free,
    );
    out.gauge(
        "seatgate_seats_over_cap",
        "Sessions above the cap (after it dropped); new sessions wait until 0.",
        s.over_cap_by,
    );
    out.gauge(
        "seatgate_seats_lost",
        "Seats held by sessions lost with a damaged session snapshot.",
        s.lost,
    );
}

fn admissions(out: &mut Out, s: &Status) {
    let a = &s.admissions;
    out.family(
        "seatgate_admissions_total",
        "counter",
        "New VPN sessions admitted since the daemon started.",
    );
    out.sample("seatgate_admissions_total", &[], a.admitted);
    out.family(
        "seatgate_denials_total",
        "counter",
        "VPN sessions denied a seat since the daemon started, by reason.",
    );
    let known = REASONS.map(DenyReason::as_str);
    for reason in known {
        let n = a.denied.get(reason).copied().unwrap_or(0);
        out.sample("seatgate_denials_total", &[("reason", reason)], n);
    }
    // Reasons of a newer daemon than this command.
    for (reason, n) in a
        .denied
        .iter()
        .filter(|(r, _)| !known.contains(&r.as_str()))
    {
        out.sample("seatgate_denials_total", &[("reason", reason)], n);
    }
}

fn latency(out: &mut Out, s: &Status) {
    let l = &s.admissions.latency;
    let name = "seatgate_admission_duration_seconds";
    out.family(
        name,
        "histogram",
        "Time the daemon took to decide an admission (finding the VPN server, the journal write).",
    );
    let bucket = format!("{name}_bucket");
    let mut total = 0u64;
    for (bound, count) in l.bounds_us.iter().zip(&l.counts) {
        total += count;
        let le = seconds(*bound);
        out.sample(&bucket, &[("le", &le)], total);
    }
    let count = l.count();
    out.sample(&bucket, &[("le", "+Inf")], count);
    out.sample(&format!("{name}_sum"), &[], seconds(l.sum_us));
    out.sample(&format!("{name}_count"), &[], count);
}

/// Microseconds as seconds, exactly (`0.00025`, `1`).
fn seconds(us: u64) -> String {
    let (whole, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

fn licenses(out: &mut Out, s: &Status) {
    out.family(
        "seatgate_license_expiry_timestamp_seconds",
        "gauge",
        "When each license in force expires (Unix time); no grace after it.",
    );
    for l in &s.licenses {
        out.sample(
            "seatgate_license_expiry_timestamp_seconds",
            &[("license", &l.id), ("product", &l.product)],
            l.expiry.timestamp(),
        );
    }
    if let Some(b) = &s.bundle {
        out.gauge(
            "seatgate_license_bundle_expiry_timestamp_seconds",
            "When the license bundle runs out (Unix time): built-in seats only after it.",
            b.not_after.timestamp(),
        );
    }
}

/// Without `[cloud]` in the config: no cloud metrics at all.
fn cloud(out: &mut Out, s: &Status) {
    let Some(c) = &s.cloud else { return };
    let up = c.sync.last_success.is_some() && c.sync.last_error.is_none();
    out.gauge(
        "seatgate_cloud_up",
        "1 when the last license sync with the cloud succeeded, else 0.",
        u8::from(up),
    );
    if let Some(t) = c.sync.last_success {
        out.gauge(
            "seatgate_cloud_last_sync_timestamp_seconds",
            "When the last license sync with the cloud succeeded (Unix time).",
            t.timestamp(),
        );
    }
    out.gauge(
        "seatgate_cloud_sync_failures",
        "Failed cloud sync attempts since the last success.",
        c.sync.failures,
    );
}

/// The usage alert level (0 ok, 1 warning, 2 critical). Status has no
/// alert level yet: 0 until the field exists, then read here.
fn alerts(out: &mut Out, s: &Status) {
    out.gauge(
        "seatgate_alert_level",
        "Usage alert level: the highest [alerts] threshold reached, in percent of the cap (0: none).",
        s.alert_level,
    );
    out.gauge(
        "seatgate_license_warnings",
        "License warnings in force: VPN licenses expiring and cap drops coming within 60, 30 or 3 days.",
        s.license_warnings.len(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::policy::{CloudStatus, FailureKind, LastError, SyncRecord};
    use crate::license::model::tests::t;
    use crate::license::report::BundleInfo;
    use crate::license::Cap;
    use crate::status::{AdmissionStats, LicenseExpiry, Rounds};

    fn status() -> Status {
        Status {
            version: "0.2.0".into(),
            device: "ESG-1".into(),
            now: t("2026-06-01T00:00:00Z"),
            cap: Cap {
                builtin: 2,
                licensed: 10,
                pooled: 0,
            },
            cap_total: 12,
            in_use: 5,
            free: 7,
            over_cap_by: 0,
            over_cap: None,
            peak: 6,
            peak_at: None,
            daily_peaks: vec![],
            denials: 0,
            lost: 0,
            next_change: None,
            timeline: vec![],
            bundle: None,
            refused: vec![],
            dropped: None,
            warnings: vec![],
            cloud: None,
            pools: vec![],
            sessions: vec![],
            rounds: Rounds::default(),
            unanswered: 0,
            admissions: AdmissionStats::default(),
            licenses: vec![],
            policy: Default::default(),
            alert_level: 0,
            alerts: Default::default(),
            license_warnings: vec![],
            recent_denials: vec![],
            denials_by_reason: Default::default(),
            daily_denials: vec![],
        }
    }

    /// The samples of `text` (no comments), as `name{labels} value` lines.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn seats_and_counters() {
        let mut s = status();
        for (admitted, denied, us) in [
            (true, None, 80),
            (true, None, 300),
            (false, Some("cap_reached"), 1_000),
            (false, Some("cap_reached"), 2_000_000),
            (false, Some("future_reason"), 5),
            (false, None, 100),
        ] {
            s.admissions
                .record(admitted, denied, std::time::Duration::from_micros(us));
        }
        let text = render(&s);
        let got = samples(&text);
        for want in [
            "seatgate_seats_cap 12",
            "seatgate_seats_in_use 5",
            "seatgate_seats_free 7",
            "seatgate_admissions_total 2",
            "seatgate_denials_total{reason=\"cap_reached\"} 2",
            "seatgate_denials_total{reason=\"key_held\"} 0",
            "seatgate_denials_total{reason=\"future_reason\"} 1",
            "seatgate_admission_duration_seconds_bucket{le=\"0.0001\"} 3",
            "seatgate_admission_duration_seconds_bucket{le=\"0.00025\"} 3",
            "seatgate_admission_duration_seconds_bucket{le=\"0.0005\"} 4",
            "seatgate_admission_duration_seconds_bucket{le=\"0.001\"} 5",
            "seatgate_admission_duration_seconds_bucket{le=\"0.5\"} 5",
            "seatgate_admission_duration_seconds_bucket{le=\"+Inf\"} 6",
            "seatgate_admission_duration_seconds_sum 2.001485",
            "seatgate_admission_duration_seconds_count 6",
            "seatgate_alert_level 0",
            "seatgate_up 1",
            "seatgate_build_info{version=\"0.2.0\",device=\"ESG-1\"} 1",
        ] {
            assert!(got.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("seatgate_cloud"),
            "no [cloud]: no cloud metrics"
        );
    }

    #[test]
    fn licenses_bundle_and_cloud() {
        let mut s = status();
        s.licenses = vec![LicenseExpiry {
            id: "LIC \"1\"\\\n".into(),
            product: "spc".into(),
            seats: 10,
            expiry: t("2027-06-10T00:00:00Z"),
        }];
        s.bundle = Some(BundleInfo {
            org: "O".into(),
            generation: 3,
            issued_at: t("2026-01-01T00:00:00Z"),
            not_after: t("2026-07-01T00:00:00Z"),
            ran_out: false,
            age_secs: 0,
        });
        let mut sync = SyncRecord::new("https://cloud.example/");
        let cases = [
            (None, None, "seatgate_cloud_up 0", None),
            (
                Some(t("2026-05-31T23:00:00Z")),
                None,
                "seatgate_cloud_up 1",
                Some("seatgate_cloud_last_sync_timestamp_seconds 1780268400"),
            ),
            (
                Some(t("2026-05-31T23:00:00Z")),
                Some(LastError {
                    kind: FailureKind::Transient,
                    message: "down".into(),
                    at: t("2026-05-31T23:30:00Z"),
                }),
                "seatgate_cloud_up 0",
                Some("seatgate_cloud_last_sync_timestamp_seconds 1780268400"),
            ),
        ];
        for (success, error, up, last) in cases {
            sync.last_success = success;
            sync.last_error = error;
            s.cloud = Some(CloudStatus::build(&sync, None, s.now));
            let text = render(&s);
            let got = samples(&text);
            assert!(got.contains(&up), "{up} in\n{text}");
            match last {
                Some(l) => assert!(got.contains(&l), "{l} in\n{text}"),
                None => assert!(!text.contains("last_sync_timestamp_seconds "), "{text}"),
            }
            assert!(got.contains(
                &"seatgate_license_expiry_timestamp_seconds{license=\"LIC \\\"1\\\"\\\\\\n\",product=\"spc\"} 1812585600"
            ), "{text}");
            assert!(got.contains(&"seatgate_license_bundle_expiry_timestamp_seconds 1782864000"));
        }
    }

    #[test]
    fn down_is_only_up_0() {
        assert_eq!(
            render_down(),
            "# HELP seatgate_up 1 when the seatgate daemon answered the status query, else 0.\n# TYPE seatgate_up gauge\nseatgate_up 0\n"
        );
    }

    #[test]
    fn seconds_are_exact() {
        for (us, want) in [
            (100, "0.0001"),
            (250, "0.00025"),
            (1_000_000, "1"),
            (2_500_000, "2.5"),
            (0, "0"),
        ] {
            assert_eq!(seconds(us), want);
        }
    }

    /// Every family has HELP and TYPE before its samples, each once, and
    /// every sample belongs to the family announced last.
    #[test]
    fn families_are_well_formed() {
        let mut s = status();
        s.cloud = Some(CloudStatus::build(
            &SyncRecord::new("https://c/"),
            None,
            s.now,
        ));
        let text = render(&s);
        let mut seen = std::collections::BTreeSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "{current} announced twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|sfx| name.strip_suffix(sfx).filter(|b| *b == current))
                    .unwrap_or(name);
                assert_eq!(base, current, "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }
}
