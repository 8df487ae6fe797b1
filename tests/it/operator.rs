//! The operator's view against the real binary: usage alerts in the log at
//! the right levels, license warnings said once across a restart, the
//! denial list and counts in status, and `seatgate check`'s exit codes.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use seatgate::admission::protocol::{
    AdmitRequest, DenyReason, Request, Response, ServerKind, ServerRef,
};

use super::util::*;

/// The lines of a daemon log that contain `what`.
fn lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// Stops the daemon with SIGTERM and returns its log.
fn stop(d: Daemon) -> String {
    d.signal(Signal::SIGTERM);
    let (status, log) = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{log}");
    log
}

fn release(fs: &FakeServer, key: &str) {
    let resp = fs.try_call(&Request::Release { key: key.into() }).unwrap();
    assert!(
        matches!(resp, Response::Release(ref r) if r.released),
        "{resp:?}"
    );
}

#[test]
fn usage_alerts_go_up_at_warn_and_down_at_info_and_the_first_denial_is_an_error() {
    // Cap 10: one seat is 10 %. Default thresholds 80/90/100, hysteresis 5.
    let gw = Gateway::new(8);
    let d = gw.spawn("info");
    d.wait_ready();
    let fs = FakeServer::start(&d.socket);
    for i in 1..=10 {
        assert!(admitted(&fs.try_call(&fs.admit(&format!("K{i}"))).unwrap()));
    }
    assert_eq!(d.status().alert_level, 100);
    for key in ["K11", "K12"] {
        assert!(!admitted(&fs.try_call(&fs.admit(key)).unwrap()));
    }
    release(&fs, "K10"); // 90 %: below 100 - 5
    assert_eq!(d.status().alert_level, 90);
    release(&fs, "K9"); // 80 %: held above 90 - 5? no: 80 < 85
    assert_eq!(d.status().alert_level, 80);
    release(&fs, "K8"); // 70 %: below 80 - 5
    let s = d.status();
    assert_eq!(s.alert_level, 0);
    assert_eq!(s.alerts.thresholds, [80, 90, 100]);
    let log = stop(d);

    let ups = lines(&log, "seat usage alert:");
    assert_eq!(ups.len(), 3, "{log}");
    for (line, pct) in ups.iter().zip([80, 90, 100]) {
        assert!(line.contains(" WARN "), "{line}");
        assert!(
            line.contains(&format!("at or above the {pct} % threshold")),
            "{line}"
        );
    }
    let downs = lines(&log, "seat usage back below");
    assert_eq!(downs.len(), 3, "{log}");
    for (line, pct) in downs.iter().zip([100, 90, 80]) {
        assert!(line.contains(" INFO "), "{line}");
        assert!(
            line.contains(&format!("back below the {pct} % alert")),
            "{line}"
        );
    }
    // Two denials at the cap: the first an error, the second at info only.
    let denying = lines(&log, "denying new sessions");
    assert_eq!(denying.len(), 1, "{log}");
    assert!(denying[0].contains("ERROR"), "{}", denying[0]);
    assert_eq!(lines(&log, "seat denied").len(), 2, "{log}");
    assert!(lines(&log, "nearly exhausted").is_empty(), "{log}");
}

#[test]
fn status_lists_the_last_denials_and_counts_them_by_reason() {
    let gw = Gateway::new(0); // cap 2
    let d = gw.start();
    let fs = FakeServer::start(&d.socket);
    for key in ["A", "B"] {
        assert!(admitted(&fs.try_call(&fs.admit(key)).unwrap()));
    }
    // A hostile user name: escaped when rendered.
    let Request::Admit(mut evil) = fs.admit("C") else {
        unreachable!()
    };
    evil.user = "eve\x1b[31m\nroot".into();
    assert!(!admitted(
        &fs.try_call(&Request::Admit(evil.clone())).unwrap()
    ));
    // A request naming a process that is not the caller's server.
    let mut other = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stranger = Request::Admit(AdmitRequest {
        key: "D".into(),
        user: "mallory".into(),
        server: ServerRef {
            kind: ServerKind::Other,
            pid: other.id(),
        },
        remote: "198.51.100.9".into(),
        group: String::new(),
    });
    match call(&d.socket, &stranger).unwrap() {
        Response::Admit(a) => assert_eq!(a.reason, Some(DenyReason::UnknownServer), "{a:?}"),
        r => panic!("{r:?}"),
    }
    let _ = other.kill();
    let _ = other.wait();

    let s = d.status();
    assert_eq!(s.denials, 2);
    let got: Vec<(&str, &str, &str)> = s
        .recent_denials
        .iter()
        .map(|x| (x.user.as_str(), x.remote.as_str(), x.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("eve\x1b[31m\nroot", "192.0.2.7", "cap_reached"),
            ("mallory", "198.51.100.9", "unknown_server")
        ]
    );
    assert_eq!(s.denials_by_reason["cap_reached"], 1);
    assert_eq!(s.denials_by_reason["unknown_server"], 1);
    let today = s.daily_denials.last().unwrap();
    assert_eq!(today.day, s.now.date_naive());
    assert_eq!(today.by_reason.values().sum::<u64>(), 2);

    let out = gw.cli(&["status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("denials since start: cap_reached 1, unknown_server 1"),
        "{text}"
    );
    assert!(text.contains("last denials (newest first):"), "{text}");
    assert!(!text.contains('\x1b'), "escaped: {text:?}");
    assert!(text.contains(r"eve\u{1b}[31m\nroot"), "{text}");
}

#[test]
fn license_warnings_are_logged_once_per_threshold_even_across_a_restart() {
    let gw = Gateway::new(0);
    // Activated 30 days ago for 50 days: expires in 20 (within 30).
    let mut lic = spc("LIC-SOON", 8);
    lic.term_days = 50;
    gw.write_bundle(&bundle(1, vec![lic]));

    let d = gw.spawn("warn");
    d.wait_ready();
    let s = d.status();
    let kinds: Vec<(String, i64)> = s
        .license_warnings
        .iter()
        .map(|n| (format!("{:?}", n.kind), n.within_days))
        .collect();
    assert_eq!(
        kinds,
        [
            ("LicenseExpiry".to_string(), 30),
            ("CapDrop".to_string(), 30)
        ]
    );
    let text = String::from_utf8(gw.cli(&["status"]).stdout).unwrap();
    assert!(
        text.contains("license warning: license LIC-SOON (8 seats) expires at"),
        "{text}"
    );
    assert!(text.contains("the seat cap drops from 10 to 2"), "{text}");
    let log = stop(d);
    let said = lines(&log, "license warning:");
    assert_eq!(said.len(), 2, "{log}");
    assert!(said.iter().all(|l| l.contains(" WARN ")), "{log}");
    assert!(gw.path("state/notices.json").exists());

    // Restarted: the same warnings are in status but not said again.
    let d = gw.spawn("warn");
    d.wait_ready();
    assert_eq!(d.status().license_warnings.len(), 2);
    let log = stop(d);
    assert!(lines(&log, "license warning:").is_empty(), "{log}");
}

/// `seatgate check` against this gateway: (exit code, its one line).
fn check(gw: &Gateway, args: &[&str]) -> (i32, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out = gw.cli(&all);
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.lines().count(), 1, "one line: {line:?}");
    (out.status.code().unwrap(), line.trim_end().to_string())
}

#[test]
fn check_exits_ok_warning_critical_and_unknown() {
    let gw = Gateway::new(8); // cap 10: WARNING from 8, CRITICAL from 9
    let d = gw.start();
    let fs = FakeServer::start(&d.socket);
    let (code, line) = check(&gw, &[]);
    assert_eq!(
        (code, line.as_str()),
        (
            0,
            "SEATGATE OK - 0 of 10 seats in use | in_use=0;8;9;0;10 cap=10;;;0 denials=0c alert_level=0;;;0;100 lost=0"
        )
    );
    for i in 1..=8 {
        assert!(admitted(&fs.try_call(&fs.admit(&format!("K{i}"))).unwrap()));
    }
    let (code, line) = check(&gw, &[]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with(
            "SEATGATE WARNING - 8 of 10 seats in use (at or above 80 %) | in_use=8;8;9;0;10"
        ),
        "{line}"
    );
    // Limits from flags instead of [alerts].
    assert_eq!(check(&gw, &["-w", "90", "-c", "100"]).0, 0);
    assert!(admitted(&fs.try_call(&fs.admit("K9")).unwrap()));
    let (code, line) = check(&gw, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(line.starts_with("SEATGATE CRITICAL - 9 of 10"), "{line}");

    // Usage errors are UNKNOWN, as plugins do.
    assert_eq!(gw.cli(&["check", "-w", "200"]).status.code(), Some(3));
    // An answer the check cannot read: UNKNOWN.
    let garbled = gw.path("garbled.sock");
    let listener = std::os::unix::net::UnixListener::bind(&garbled).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"hello\n").unwrap();
    });
    let (code, line) = check(&gw, &["--socket", garbled.to_str().unwrap()]);
    server.join().unwrap();
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("SEATGATE UNKNOWN - "), "{line}");

    // The daemon gone: CRITICAL (hooks now reject every connection).
    stop(d);
    let (code, line) = check(&gw, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("SEATGATE CRITICAL - the daemon does not answer: cannot connect"),
        "{line}"
    );
}
