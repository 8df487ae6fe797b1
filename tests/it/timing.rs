//! Behaviour over time, on the daemon run in this process
//! (`util::InProcess`): dead servers reaped, cap steps and expiry, a clean
//! stop. No sleeps: each test waits for the event the daemon shows in its
//! status (a cap, a round counter), and a check that nothing changed comes
//! after proof that the daemon looked (`after_reaps`).

use std::time::Duration;

use chrono::Utc;
use seatgate::admission::protocol::{DenyReason, Request, Response};
use seatgate::license::License;

use super::util::*;

const SOON: Duration = Duration::from_secs(5);

#[test]
fn a_dead_servers_seats_are_freed_by_the_next_reap_round_and_live_servers_keep_theirs() {
    let gw = Gateway::new(10);
    let d = gw.start_in_process();
    let mut doomed = FakeServer::start(&gw.socket());
    let live = FakeServer::start(&gw.socket());
    for i in 0..5 {
        assert!(admitted(
            &doomed.try_call(&doomed.admit(&format!("d{i}"))).unwrap()
        ));
    }
    assert!(admitted(&live.try_call(&live.admit("o")).unwrap()));
    // Two full rounds with both servers alive free nothing.
    assert_eq!(d.after_reaps(2).in_use, 6);

    doomed.kill();
    // The round under way when the kill returned may have looked before
    // it; the one after it must have seen the process gone.
    let st = d.after_reaps(2);
    assert_eq!(st.in_use, 1, "{:?}", st.sessions);
    assert_eq!(st.sessions[0].key, "o");
    assert_eq!(st.sessions[0].server_pid, live.pid());
}

#[test]
fn cap_follows_the_timeline_on_time_without_a_restart() {
    let gw = Gateway::new(0);
    let now = Utc::now();
    let later = License {
        activated_at: Some(now + chrono::Duration::milliseconds(1500)),
        associated_at: None,
        ..spc("LIC-LATER", 7)
    };
    let mut b = bundle(2, vec![spc("LIC-NOW", 10), later]);
    b.not_after = now + chrono::Duration::milliseconds(3500);
    gw.write_bundle(&b);
    let d = gw.start_in_process();
    let st = d.status();
    assert_eq!(st.cap_total, 12);
    assert_eq!(st.next_change.map(|s| s.cap), Some(19));
    wait_for("the license to activate", SOON, || {
        (d.status().cap_total == 19).then_some(())
    });
    // Past the bundle's not_after: built-in seats only, said in status.
    let st = wait_for("the bundle to run out", SOON, || {
        Some(d.status()).filter(|s| s.cap_total == 2)
    });
    assert!(st.bundle.is_some_and(|b| b.ran_out));
    let text = String::from_utf8_lossy(&gw.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("RAN OUT"), "{text}");
}

#[test]
fn a_license_expiring_under_held_sessions_drains_them_and_denies_new_ones() {
    let gw = Gateway::new(0);
    // Its 365-day term ends 1.2 s from now.
    let start = Utc::now() + chrono::Duration::milliseconds(1200) - chrono::Duration::days(365);
    let ending = License {
        issued_at: start - chrono::Duration::days(1),
        associated_at: Some(start),
        activated_at: Some(start),
        ..spc("LIC-END", 4)
    };
    gw.write_bundle(&bundle(2, vec![ending]));
    let d = gw.start_in_process();
    let vpn = FakeServer::start(&gw.socket());
    for i in 0..5 {
        assert!(admitted(
            &vpn.try_call(&vpn.admit(&format!("s{i}"))).unwrap()
        ));
    }
    assert_eq!(d.status().next_change.map(|s| s.cap), Some(2));

    let st = wait_for("the license to expire", SOON, || {
        Some(d.status()).filter(|s| s.cap_total == 2)
    });
    assert_eq!((st.in_use, st.over_cap_by), (5, 3));
    match vpn.try_call(&vpn.admit("new")).unwrap() {
        Response::Admit(r) => assert_eq!(r.reason, Some(DenyReason::OverCap), "{r:?}"),
        other => panic!("{other:?}"),
    }
    // Sessions are never cut: two reap rounds later they are all still held.
    let st = d.after_reaps(2);
    assert_eq!((st.in_use, st.over_cap_by), (5, 3));
    // Draining to the cap lets nobody in; below it, one.
    for i in 0..3 {
        call(
            &d.socket,
            &Request::Release {
                key: format!("s{i}"),
            },
        )
        .unwrap();
    }
    assert!(!admitted(&vpn.try_call(&vpn.admit("new")).unwrap()));
    call(&d.socket, &Request::Release { key: "s3".into() }).unwrap();
    assert!(admitted(&vpn.try_call(&vpn.admit("new")).unwrap()));
}

#[test]
fn the_shutdown_future_stops_run_cleanly_and_the_next_run_keeps_the_sessions() {
    let gw = Gateway::new(4);
    let d = gw.start_in_process();
    let vpn = FakeServer::start(&gw.socket());
    for key in ["a", "b"] {
        assert!(admitted(&vpn.try_call(&vpn.admit(key)).unwrap()));
    }
    d.stop().expect("run returns Ok after shutdown");
    assert!(!gw.socket().exists(), "socket file removed");
    let d = gw.start_in_process();
    let st = d.status();
    assert_eq!(st.in_use, 2);
    assert!(st.sessions.iter().all(|s| s.server_pid == vpn.pid()));
}
