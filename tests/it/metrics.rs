//! The operator's view on the real binary: the usage history across
//! restarts (SIGTERM and SIGKILL), `seatgate usage`, `seatgate metrics`
//! checked by promtool, `--output` written atomically.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use seatgate::admission::protocol::{Request, Response};
use seatgate::usage::Report;

use super::util::*;

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn usage(socket: &std::path::Path) -> Report {
    match call(socket, &Request::Usage).unwrap() {
        Response::Usage(u) => serde_json::from_value(u.usage).unwrap(),
        other => panic!("usage expected, got {other:?}"),
    }
}

/// The highest peak and all denials in the history (a test may cross an
/// hour or a day: look at every bucket).
fn peak_and_denials(r: &Report) -> (u32, u64) {
    let peak = r.history.days.iter().map(|b| b.peak).max().unwrap_or(0);
    let denials = r.history.days.iter().map(|b| b.denials).sum();
    let hour_peak = r.history.hours.iter().map(|b| b.peak).max().unwrap_or(0);
    assert_eq!(peak, hour_peak, "hours and days agree: {r:?}");
    (peak, denials)
}

fn on_disk(gw: &Gateway) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(gw.path("state/usage.json")).ok()?;
    let h = seatgate::usage::History::parse(&text).ok()?;
    let peak = h.days.iter().map(|b| b.peak).max().unwrap_or(0);
    Some((peak, h.days.iter().map(|b| b.denials).sum()))
}

#[test]
fn usage_history_survives_sigterm_and_sigkill() {
    let gw = Gateway::new(1); // cap 3
    let d = gw.start();
    let server = FakeServer::start(&d.socket);
    for k in ["a", "b"] {
        assert!(admitted(&server.try_call(&server.admit(k)).unwrap()));
    }
    assert_eq!(peak_and_denials(&usage(&d.socket)), (2, 0));
    d.signal(Signal::SIGTERM);
    let (status, err) = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    let mode = std::fs::metadata(gw.path("state/usage.json"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o640);

    // After a stop: all of it.
    let d = gw.start();
    assert_eq!(peak_and_denials(&usage(&d.socket)), (2, 0));
    // The first change of a run is written at once...
    assert!(admitted(&server.try_call(&server.admit("c")).unwrap()));
    wait_for("usage.json with peak 3", Duration::from_secs(10), || {
        (on_disk(&gw) == Some((3, 0))).then_some(())
    });
    // ...later ones at most every 5 minutes: this denial only in memory.
    assert!(!admitted(&server.try_call(&server.admit("d")).unwrap()));
    assert_eq!(peak_and_denials(&usage(&d.socket)), (3, 1));
    d.kill9();

    // After a crash: what was written last.
    let d = gw.start();
    assert_eq!(peak_and_denials(&usage(&d.socket)), (3, 0));
    drop(d);

    // A damaged file: reported, replaced, never fatal.
    std::fs::write(gw.path("state/usage.json"), "{\"hours\":[").unwrap();
    let d = gw.start();
    wait_for("usage.json replaced", Duration::from_secs(10), || {
        on_disk(&gw).map(|_| ())
    });
    assert_eq!(peak_and_denials(&usage(&d.socket)), (0, 0));
    d.signal(Signal::SIGTERM);
    let (status, err) = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert!(err.contains("usage.json is not a usage history"), "{err}");
}

#[test]
fn usage_command_draws_a_chart_and_prints_json() {
    let gw = Gateway::new(1); // cap 3
    let d = gw.start();
    let server = FakeServer::start(&d.socket);
    for k in ["a", "b"] {
        assert!(admitted(&server.try_call(&server.admit(k)).unwrap()));
    }
    let text = stdout(&gw.cli(&["usage", "--hours", "2", "--days", "3"]));
    assert!(text.starts_with("seats in use now: 2 of 3;"), "{text}");
    assert!(text.contains("\nlast 2 hours\n"), "{text}");
    assert!(text.contains("\nlast 3 days\n"), "{text}");
    // 2 rows of hours and 3 of days; today's and this hour's: 2 of 3.
    let bars: Vec<&str> = text.lines().filter(|l| l.contains("2/3  [")).collect();
    assert!(bars.len() >= 2, "{text}");
    assert!(
        bars.iter()
            .all(|l| l.ends_with("[###########################.............]")),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when not a terminal: {text:?}"
    );
    let rows = text
        .lines()
        .filter(|l| l.contains("  [") || l.contains("no data"))
        .count();
    assert_eq!(rows, 5, "{text}");

    let json: serde_json::Value = serde_json::from_str(&stdout(
        &gw.cli(&["usage", "--json", "--days", "1", "--hours", "0"]),
    ))
    .unwrap();
    assert_eq!(json["cap"], 3);
    assert_eq!(json["in_use"], 2);
    assert_eq!(json["hours"].as_array().unwrap().len(), 0);
    assert_eq!(json["days"][0]["peak"], 2);
    assert_eq!(json["days"][0]["cap"], 3);
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package prometheus; scripts/test installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_count_admissions_and_denials() {
    let gw = Gateway::new(1); // cap 3
    let d = gw.start();
    let server = FakeServer::start(&d.socket);
    for k in ["a", "b", "c"] {
        assert!(admitted(&server.try_call(&server.admit(k)).unwrap()));
    }
    // A repeated admit is no new admission; the fourth key is denied.
    assert!(admitted(&server.try_call(&server.admit("a")).unwrap()));
    assert!(!admitted(&server.try_call(&server.admit("d")).unwrap()));

    let text = stdout(&gw.cli(&["metrics"]));
    promtool_check(&text);
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "seatgate_seats_cap 3",
        "seatgate_seats_in_use 3",
        "seatgate_seats_free 0",
        "seatgate_admissions_total 3",
        "seatgate_denials_total{reason=\"cap_reached\"} 1",
        "seatgate_denials_total{reason=\"over_cap\"} 0",
        "seatgate_admission_duration_seconds_count 5",
        "seatgate_admission_duration_seconds_bucket{le=\"+Inf\"} 5",
        "seatgate_alert_level 100",
        "seatgate_license_warnings 0",
        "seatgate_up 1",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in\n{text}");
    }
    let expiry = lines
        .iter()
        .find(|l| l.starts_with("seatgate_license_expiry_timestamp_seconds{license=\"LIC-1\""))
        .unwrap_or_else(|| panic!("no LIC-1 expiry in\n{text}"));
    let at: i64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let want = (spc("LIC-1", 1).activated_at.unwrap() + chrono::Duration::days(365)).timestamp();
    assert!((at - want).abs() < 60, "{expiry} vs {want}");

    // --output: replaced by rename (a new inode), mode 0644, nothing left over.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seatgate.prom");
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::metadata(&file).unwrap().ino();
    let out = gw.cli(&["metrics", "--output", file.to_str().unwrap()]);
    assert!(stdout(&out).is_empty());
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert_ne!(meta.ino(), before, "written to a temp file and renamed");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let written = std::fs::read_to_string(&file).unwrap();
    promtool_check(&written);
    assert!(
        written.contains("\nseatgate_admissions_total 3\n"),
        "{written}"
    );

    // The daemon gone: the file says so (no stale numbers) and the run fails.
    drop(server);
    d.kill9();
    let out = gw.cli(&["metrics", "--output", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let written = std::fs::read_to_string(&file).unwrap();
    promtool_check(&written);
    assert!(written.ends_with("\nseatgate_up 0\n"), "{written}");
    assert!(!written.contains("seats"), "{written}");
}
