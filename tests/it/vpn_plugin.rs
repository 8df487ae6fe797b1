//! The OpenVPN plugin (openvpn-plugin/, `libseatgate_openvpn.so`) in the
//! real OpenVPN 2.6 server against the real daemon: the exact cap, a
//! refill, rejected clients' disconnects, a killed server, and a hung or
//! stopped daemon that refuses clients within the deadline while the
//! server keeps serving the others.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::util::*;
use super::vpn_harness::*;

fn wait_in_use(d: &Daemon, want: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    wait_for(&format!("in_use == {want}"), limit, || {
        (d.status().in_use == want).then_some(())
    });
    start.elapsed()
}

fn holders(d: &Daemon) -> HashSet<String> {
    d.status().sessions.iter().map(|s| s.user.clone()).collect()
}

fn names(ids: impl IntoIterator<Item = usize>) -> HashSet<String> {
    ids.into_iter().map(|i| format!("client{i}")).collect()
}

/// One `status` over the management socket; how long the answer took.
fn management_status(path: &Path) -> Duration {
    let start = Instant::now();
    let s = UnixStream::connect(path).expect("management socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&s).write_all(b"status\n").unwrap();
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "management closed");
        if line.starts_with("END") {
            break;
        }
    }
    let took = start.elapsed();
    let _ = (&s).write_all(b"quit\n");
    took
}

#[test]
fn openvpn_plugin_cap_5_of_10_refill_rejected_disconnects_free_nothing_killed_server_frees_all() {
    let ns = Netns::new(12);
    let gw = Gateway::new(3);
    let d = gw.start();
    let mut server = OpenvpnServer::start_plugin(&ns, &seatgate_plugin(&gw.socket(), ""));
    assert!(server
        .proc
        .log_text()
        .contains("seatgate plugin openvpn: loaded: socket="));

    let mut clients: Vec<Proc> = (1..=10).map(|i| openvpn_client(&ns, i, "")).collect();
    let outcomes = expect_connected(&clients, 5, &server.proc);
    let connected: Vec<usize> = (1..=10)
        .filter(|&i| outcomes[i - 1] == Outcome::Connected)
        .collect();
    let log = server.proc.log_text();
    assert_eq!(log.matches("REJECTED client").count(), 5, "{log}");
    assert!(log.contains("all 5 seats are in use"));
    // OpenVPN sends client-disconnect for the refused clients too: the
    // daemon frees nothing for them.
    wait_for(
        "client-disconnect of the 5 rejected clients",
        Duration::from_secs(10),
        || (server.proc.log_text().matches("held no seat").count() == 5).then_some(()),
    );
    let st = d.status();
    assert_eq!((st.in_use, st.cap_total), (5, 5));
    assert_eq!(holders(&d), names(connected.iter().copied()));
    // Held by the OpenVPN process itself (the plugin's peer).
    for s in &st.sessions {
        assert_eq!(s.server_pid, server.proc.pid());
    }

    // Two leave; two others get their seats.
    for &i in &connected[..2] {
        clients[i - 1].stop(Duration::from_secs(5));
    }
    wait_in_use(&d, 3, Duration::from_secs(5));
    let late: Vec<Proc> = (11..=12).map(|i| openvpn_client(&ns, i, "")).collect();
    for c in &late {
        assert_eq!(outcome(c, CONNECT), Outcome::Connected, "{}", c.log_text());
    }
    let mut held = names(connected[2..].iter().copied());
    held.extend(names([11, 12]));
    assert_eq!(holders(&d), held);

    // SIGKILL: no disconnect at all; the daemon sees the process gone.
    server.proc.kill9();
    let took = wait_in_use(&d, 0, Duration::from_secs(2));
    eprintln!("plugin: seats free {took:?} after the server was SIGKILLed");
    clients.clear();
}

#[test]
fn openvpn_plugin_hung_or_stopped_daemon_refuses_and_the_server_keeps_serving() {
    let ns = Netns::new(24);
    let gw = Gateway::new(30);
    let d = gw.start();
    let server = OpenvpnServer::start_plugin(&ns, &seatgate_plugin(&gw.socket(), "timeout_ms=500"));
    let first = openvpn_client(&ns, 1, "");
    assert_eq!(outcome(&first, CONNECT), Outcome::Connected);

    // Hung daemon (SIGSTOP): 20 clients at once. Each is refused at its
    // own deadline, none waits for another; the server answers its
    // management interface throughout.
    d.pause();
    let start = Instant::now();
    let clients: Vec<Proc> = (2..=21).map(|i| openvpn_client(&ns, i, "")).collect();
    let mut slowest_status = Duration::ZERO;
    let mut resolved = 0;
    while resolved < clients.len() {
        assert!(start.elapsed() < CONNECT, "clients not resolved");
        slowest_status = slowest_status.max(management_status(&server.management));
        resolved = clients
            .iter()
            .filter(|c| {
                let t = c.log_text();
                t.contains("AUTH_FAILED") || t.contains("Initialization Sequence Completed")
            })
            .count();
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = start.elapsed();
    d.signal(Signal::SIGCONT);
    for c in &clients {
        assert_eq!(outcome(c, CONNECT), Outcome::AuthFailed, "{}", c.log_text());
    }
    let log = server.proc.log_text();
    assert_eq!(
        log.matches("(fail-closed): no answer from").count(),
        20,
        "{log}"
    );
    eprintln!(
        "plugin, daemon hung: 20 concurrent clients resolved in {all:?}; slowest management status {slowest_status:?}"
    );
    assert!(
        slowest_status < Duration::from_millis(100),
        "the server stalled: status took {slowest_status:?}"
    );
    // The plugin gave back whatever the daemon admitted once it woke up
    // (it never admitted them: they waited in its socket).
    wait_for("the daemon to catch up", Duration::from_secs(5), || {
        (holders(&d) == names([1])).then_some(())
    });
    let c22 = openvpn_client(&ns, 22, "");
    assert_eq!(outcome(&c22, CONNECT), Outcome::Connected);
    assert!(
        !first.log_text().contains("SIGUSR1"),
        "the first client kept its session"
    );

    // Stopped daemon (socket gone): refused at once; back, and in again.
    d.kill9();
    let t = Instant::now();
    let c23 = openvpn_client(&ns, 23, "");
    assert_eq!(outcome(&c23, CONNECT), Outcome::AuthFailed);
    eprintln!("plugin, daemon stopped: refused after {:?}", t.elapsed());
    assert!(server
        .proc
        .log_text()
        .contains("REJECTED client23 (fail-closed): cannot connect to"));
    let d = gw.start();
    let c24 = openvpn_client(&ns, 24, "");
    assert_eq!(outcome(&c24, CONNECT), Outcome::Connected);
    assert_eq!(
        holders(&d),
        names([1, 22, 24]),
        "the journal kept the seats"
    );
}
