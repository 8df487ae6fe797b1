//! The real VPN servers (OpenVPN 2.6, ocserv 1.1) against the real daemon:
//! exact caps, rejected clients' disconnects, killed servers, cipher
//! failures caught by reconciliation, fail-closed hooks. Each test has its
//! own network namespace (see vpn_harness.rs); the daemon runs outside it
//! and is reached through its socket path.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::util::*;
use super::vpn_harness::*;

fn in_use(d: &Daemon) -> u32 {
    d.status().in_use
}

fn wait_in_use(d: &Daemon, want: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    wait_for(&format!("in_use == {want}"), limit, || {
        (in_use(d) == want).then_some(())
    });
    start.elapsed()
}

/// Common names of the sessions holding seats.
fn holders(d: &Daemon) -> HashSet<String> {
    d.status().sessions.iter().map(|s| s.user.clone()).collect()
}

fn names(ids: impl IntoIterator<Item = usize>) -> HashSet<String> {
    ids.into_iter().map(|i| format!("client{i}")).collect()
}

#[test]
fn openvpn_cap_5_of_10_then_two_leave_two_join_then_killed_server_frees_all() {
    let ns = Netns::new(12);
    let gw = Gateway::new(3);
    let d = gw.start();
    let mut server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());

    let mut clients: Vec<Proc> = (1..=10).map(|i| openvpn_client(&ns, i, "")).collect();
    let outcomes = expect_connected(&clients, 5, &server.proc);
    let connected: Vec<usize> = (1..=10)
        .filter(|&i| outcomes[i - 1] == Outcome::Connected)
        .collect();
    for (c, o) in clients.iter().zip(&outcomes) {
        if *o == Outcome::AuthFailed {
            assert!(c
                .log_text()
                .contains("AUTH: Received control message: AUTH_FAILED"));
        }
    }
    let log = server.proc.log_text();
    assert_eq!(
        log.matches("REJECTED client").count(),
        5,
        "the hook says why: {log}"
    );
    assert!(log.contains("all 5 seats are in use"));
    // OpenVPN runs client-disconnect for the 5 rejected clients too (within
    // ms of each refusal, before AUTH_FAILED reaches them): no effect.
    wait_for(
        "client-disconnect of the 5 rejected clients",
        Duration::from_secs(10),
        || (server.proc.log_text().matches("held no seat").count() == 5).then_some(()),
    );
    let st = d.status();
    assert_eq!((st.in_use, st.cap_total), (5, 5));
    assert_eq!(holders(&d), names(connected.iter().copied()));

    // Two leave (TCP: client-disconnect at once), two others get in.
    for &i in &connected[..2] {
        clients[i - 1].stop(Duration::from_secs(5));
    }
    wait_in_use(&d, 3, Duration::from_secs(5));
    let late: Vec<Proc> = (11..=12).map(|i| openvpn_client(&ns, i, "")).collect();
    for c in &late {
        assert_eq!(outcome(c, CONNECT), Outcome::Connected, "{}", c.log_text());
    }
    assert_eq!(in_use(&d), 5);
    let mut held: HashSet<String> = names(connected[2..].iter().copied());
    held.extend(names([11, 12]));
    assert_eq!(holders(&d), held);

    // SIGKILL: no hook runs; the daemon sees the process gone.
    server.proc.kill9();
    let took = wait_in_use(&d, 0, Duration::from_secs(2));
    eprintln!("seats free {took:?} after the server was SIGKILLed");
    clients.clear();
}

#[test]
fn openvpn_reconciliation_frees_cipher_failed_and_missed_disconnect_seats_keeps_live_ones() {
    let ns = Netns::new(2);
    let gw = Gateway::with_config(0, "");
    // The management socket exists once the server runs; the daemon keeps
    // trying until then (a failed round releases nothing).
    let interval_ms = 500;
    reconcile_openvpn(&gw.config_path(), &ns, interval_ms);
    let server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());
    let d = gw.start();

    let good = openvpn_client(&ns, 1, "");
    assert_eq!(outcome(&good, CONNECT), Outcome::Connected);
    // Admitted by client-connect, then refused for want of a common cipher:
    // OpenVPN never calls client-disconnect for it.
    let bad = openvpn_client(&ns, 2, "data-ciphers AES-192-GCM");
    assert_eq!(outcome(&bad, CONNECT), Outcome::AuthFailed);
    assert!(bad.log_text().contains("cipher negotiation failed"));
    let failed_at = Instant::now();
    assert!(
        holders(&d).contains("client2"),
        "client-connect admitted the cipher-failed client"
    );
    // OpenVPN keeps the instance (listed in status 3) for 5 s, then drops it
    // silently; the next reconciliation round frees the seat.
    wait_for(
        "the cipher-failed client's seat to be released",
        Duration::from_secs(5) + Duration::from_millis(3 * interval_ms) + Duration::from_secs(4),
        || (!holders(&d).contains("client2")).then_some(()),
    );
    eprintln!(
        "cipher-failed seat freed {:?} after AUTH_FAILED",
        failed_at.elapsed()
    );
    assert_eq!(holders(&d), names([1]), "the live client keeps its seat");
    // Several more rounds: the connected client is listed, so it stays.
    d.after_reconciles(3);
    assert_eq!(holders(&d), names([1]));
    let log = server.proc.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("released openvpn:") && l.contains(":client2:")),
        "client-disconnect never ran for client2, so reconciliation freed it:\n{log}"
    );
    d.signal(Signal::SIGTERM);
    let (_, err) = d.wait_exit(Duration::from_secs(10));
    assert!(
        err.contains("no longer in the VPN server's list") && err.contains("client2"),
        "{err}"
    );
    assert!(
        !err.contains("cannot reconcile"),
        "every round worked: {err}"
    );

    // While the daemon is down client1 leaves: its disconnect cannot be
    // told. The restarted daemon reconciles at start-up and frees the seat.
    let mut good = good;
    good.stop(Duration::from_secs(5));
    server
        .proc
        .wait_log(&["could not release openvpn:"], Duration::from_secs(5));
    let d = gw.start();
    let took = wait_in_use(&d, 0, Duration::from_secs(5));
    eprintln!("seat of a disconnect missed while the daemon was down freed {took:?} after restart");
}

#[test]
fn openvpn_hook_fails_closed_while_the_daemon_is_down_and_the_server_keeps_serving() {
    let ns = Netns::new(4);
    let gw = Gateway::new(0);
    let d = gw.start();
    let _server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());

    // A hung daemon (SIGSTOP): the hook gives up after its 500 ms deadline.
    d.pause();
    let c1 = openvpn_client(&ns, 1, "");
    let r = outcome(&c1, CONNECT);
    d.signal(Signal::SIGCONT);
    assert_eq!(r, Outcome::AuthFailed);
    let log = _server.proc.log_text();
    assert!(
        log.contains("REJECTED (fail-closed): no answer from") && log.contains("within 500 ms"),
        "{log}"
    );
    let c2 = openvpn_client(&ns, 2, "");
    assert_eq!(outcome(&c2, CONNECT), Outcome::Connected);
    assert_eq!(holders(&d), names([2]));

    // A stopped daemon (socket gone): refused at once; back, and in again.
    d.kill9();
    let c3 = openvpn_client(&ns, 3, "");
    assert_eq!(outcome(&c3, CONNECT), Outcome::AuthFailed);
    assert!(_server
        .proc
        .log_text()
        .contains("REJECTED (fail-closed): cannot connect to"));
    let d = gw.start();
    let c4 = openvpn_client(&ns, 4, "");
    assert_eq!(outcome(&c4, CONNECT), Outcome::Connected);
    assert_eq!(
        holders(&d),
        names([2, 4]),
        "the journal kept client2's seat"
    );
}

#[test]
fn hook_alone_answers_within_its_deadline_when_the_daemon_hangs() {
    let gw = Gateway::new(0);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    d.pause();
    let start = Instant::now();
    let out = std::process::Command::new(bin())
        .args(["hook", "openvpn"])
        .env_clear()
        .env("SEATGATE_SOCKET", gw.socket())
        .env("script_type", "client-connect")
        .env("daemon_pid", server.pid().to_string())
        .env("time_unix", "1")
        .env("common_name", "client1")
        .output()
        .unwrap();
    let took = start.elapsed();
    d.signal(Signal::SIGCONT);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[test]
fn ocserv_cap_2_of_3_users_and_a_disconnect_frees_the_seat() {
    let ns = Netns::new(1);
    let gw = Gateway::new(0);
    let mut config = std::fs::read_to_string(gw.config_path()).unwrap();
    config.push_str(&format!(
        "[[reconcile]]\nkind = \"ocserv\"\nocctl_socket = \"{}\"\ninterval_ms = 300\ntimeout_ms = 250\n",
        ns.path("occtl.sock").display()
    ));
    std::fs::write(gw.config_path(), config).unwrap();
    let server = Ocserv::start(&ns, 3, &format!("{} hook ocserv", bin()), &gw.socket());
    let d = gw.start();

    let mut u1 = openconnect(&ns, 1, "a");
    let u2 = openconnect(&ns, 2, "a");
    for c in [&u1, &u2] {
        assert_eq!(
            c.wait_log(&["Configured as", "Cookie was rejected"], CONNECT),
            0,
            "{}",
            c.log_text()
        );
    }
    let u3 = openconnect(&ns, 3, "a");
    assert_eq!(
        u3.wait_log(&["Configured as", "Cookie was rejected"], CONNECT),
        1
    );
    assert!(u3.log_text().contains("401"), "{}", u3.log_text());
    assert!(server.proc.log_text().contains("all 2 seats are in use"));
    let users: HashSet<String> = d.status().sessions.iter().map(|s| s.user.clone()).collect();
    assert_eq!(users, HashSet::from(["user1".into(), "user2".into()]));

    // Reconciliation rounds with occtl keep both live sessions. (It speaks
    // for the workers ocserv forked: each session's ID.)
    for s in d.status().sessions {
        assert_eq!(
            seatgate::sys::process::parent_pid(s.server_pid),
            Some(server.proc.pid())
        );
    }
    d.after_reconciles(2);
    assert_eq!(in_use(&d), 2);

    u1.stop(Duration::from_secs(5));
    wait_in_use(&d, 1, Duration::from_secs(5));
    let u3 = openconnect(&ns, 3, "b");
    assert_eq!(
        u3.wait_log(&["Configured as", "Cookie was rejected"], CONNECT),
        0,
        "{}",
        u3.log_text()
    );
    let users: HashSet<String> = d.status().sessions.iter().map(|s| s.user.clone()).collect();
    assert_eq!(users, HashSet::from(["user2".into(), "user3".into()]));
    d.signal(Signal::SIGTERM);
    let (_, err) = d.wait_exit(Duration::from_secs(10));
    assert!(
        !err.contains("cannot reconcile"),
        "every round worked: {err}"
    );
    assert!(
        !err.contains("no longer in"),
        "nothing was released by reconciliation: {err}"
    );
}
