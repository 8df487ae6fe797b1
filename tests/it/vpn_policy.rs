//! `[policy]` with the real VPN servers: one OpenVPN certificate on four
//! clients (`duplicate-cn`) under a per-user limit (refused, and replacing
//! the oldest), and a reserved seat taken by its member when the gateway is
//! otherwise full (the member found through the group variable the hook
//! is told to read). The daemon runs outside the namespace (vpn_harness.rs).

use std::time::Duration;

use nix::sys::signal::Signal;

use super::util::*;
use super::vpn_harness::*;

fn denied(d: &Daemon, reason: &str) -> u64 {
    d.status()
        .denials_by_reason
        .get(reason)
        .copied()
        .unwrap_or(0)
}

#[test]
fn openvpn_one_certificate_on_4_clients_under_a_limit_of_2_refuses_2() {
    let ns = Netns::new(1);
    let gw = Gateway::new(8);
    gw.write(&gw.config().policy("[policy]\nmax_sessions_per_user = 2\n"));
    let d = gw.start();
    let server =
        OpenvpnServer::start_with(&ns, &seatgate_hook("openvpn"), &gw.socket(), "duplicate-cn");
    // Four devices of one user, all at once, with client1's certificate.
    let clients: Vec<Proc> = (1..=4)
        .map(|i| openvpn_client_as(&ns, 1, &format!("device{i}"), ""))
        .collect();
    let outcomes = expect_connected(&clients, 2, &server.proc);
    let st = d.status();
    assert_eq!((st.in_use, st.cap_total), (2, 10));
    assert!(
        st.sessions.iter().all(|s| s.user == "client1"),
        "{:?}",
        st.sessions
    );
    assert_eq!(
        st.denials_by_reason.get("user_limit"),
        Some(&2),
        "{:?}",
        st.denials_by_reason
    );
    assert_eq!(st.denials_by_reason.len(), 1);
    assert!(st
        .recent_denials
        .iter()
        .all(|r| r.user == "client1" && r.reason == "user_limit"));
    let log = server.proc.log_text();
    assert_eq!(
        log.matches("REJECTED client1: this user holds as many sessions as one user may ([policy] max_sessions_per_user)").count(),
        2,
        "the hook says why: {log}"
    );
    // The refused clients' disconnect hooks free nothing: still 2.
    wait_for(
        "client-disconnect of the 2 refused clients",
        Duration::from_secs(10),
        || (server.proc.log_text().matches("held no seat").count() == 2).then_some(()),
    );
    assert_eq!(d.status().in_use, 2);
    // One of the two leaves: a device of the same user gets its seat.
    let mut clients = clients;
    let first = outcomes
        .iter()
        .position(|o| *o == Outcome::Connected)
        .unwrap();
    let leaver = &mut clients[first];
    leaver.stop(Duration::from_secs(5));
    wait_for("the seat freed", Duration::from_secs(10), || {
        (d.status().in_use == 1).then_some(())
    });
    let again = openvpn_client_as(&ns, 1, "device5", "");
    assert_eq!(outcome(&again, CONNECT), Outcome::Connected);
    assert_eq!(d.status().in_use, 2);
}

#[test]
fn openvpn_replace_oldest_gives_the_new_device_the_oldest_sessions_seat() {
    let ns = Netns::new(1);
    // cap 3: the user's limit (2), not the cap, decides.
    let gw = Gateway::new(1);
    gw.write(
        &gw.config()
            .policy("[policy]\nmax_sessions_per_user = 2\nat_user_limit = \"replace_oldest\"\n"),
    );
    // The oldest session is ended through the management interface.
    reconcile_openvpn(&gw.config_path(), &ns, 60_000);
    let d = gw.spawn("warn");
    d.wait_ready();
    let server =
        OpenvpnServer::start_with(&ns, &seatgate_hook("openvpn"), &gw.socket(), "duplicate-cn");
    let mut keys = Vec::new();
    let mut clients = Vec::new();
    for i in 1..=2 {
        let c = openvpn_client_as(&ns, 1, &format!("device{i}"), "");
        assert_eq!(outcome(&c, CONNECT), Outcome::Connected);
        clients.push(c);
        // The key of the session just admitted: the one not seen before.
        let st = d.status();
        assert_eq!(st.in_use, i);
        let new = st
            .sessions
            .iter()
            .find(|s| !keys.contains(&s.key))
            .unwrap()
            .key
            .clone();
        keys.push(new);
    }
    let third = openvpn_client_as(&ns, 1, "device3", "");
    assert_eq!(
        outcome(&third, CONNECT),
        Outcome::Connected,
        "{}",
        server.proc.log_text()
    );
    let st = d.status();
    assert_eq!(st.in_use, 2, "the count never goes up: {:?}", st.sessions);
    let held: Vec<&str> = st.sessions.iter().map(|s| s.key.as_str()).collect();
    assert!(
        !held.contains(&keys[0].as_str()),
        "the oldest is replaced: {held:?}"
    );
    assert!(held.contains(&keys[1].as_str()), "{held:?}");
    assert_eq!(st.denials, 0);
    // device1, the oldest real client, is told to halt by its server and
    // exits; the server's client-disconnect then finds its key held no seat.
    let oldest = &mut clients[0];
    wait_for(
        "the oldest device to be disconnected",
        Duration::from_secs(20),
        || oldest.exited().then_some(()),
    );
    assert!(
        oldest.log_text().contains("server-pushed-halt"),
        "{}",
        oldest.log_text()
    );
    assert!(!clients[1].exited(), "the second device stays connected");
    assert_eq!(d.status().in_use, 2);
    d.signal(Signal::SIGTERM);
    let (_, log) = d.wait_exit(Duration::from_secs(10));
    assert_eq!(
        log.matches(
            "user limit: replaced the oldest session of the user: disconnected through openvpn"
        )
        .count(),
        1,
        "{log}"
    );
}

#[test]
fn openvpn_a_reserved_seat_stays_free_for_its_group_when_the_gateway_is_otherwise_full() {
    let ns = Netns::new(4);
    let gw = Gateway::new(1); // cap 3
    gw.write(
        &gw.config()
            .policy("[[policy.group]]\nname = \"oncall\"\ngroups = [\"client4\"]\nreserved = 1\n"),
    );
    let d = gw.start();
    // The group is the variable the hook is told to read: here the common
    // name (a real setup names e.g. X509_0_OU).
    let server = OpenvpnServer::start_with(
        &ns,
        &seatgate_hook("openvpn"),
        &gw.socket(),
        "setenv SEATGATE_GROUP_VAR common_name",
    );
    let c1 = openvpn_client(&ns, 1, "");
    let c2 = openvpn_client(&ns, 2, "");
    assert_eq!(outcome(&c1, CONNECT), Outcome::Connected);
    assert_eq!(outcome(&c2, CONNECT), Outcome::Connected);
    let c3 = openvpn_client(&ns, 3, "");
    assert_eq!(outcome(&c3, CONNECT), Outcome::AuthFailed);
    assert_eq!(denied(&d, "reserved"), 1);
    assert!(server
        .proc
        .log_text()
        .contains("REJECTED client3: every free seat is reserved for other users"));
    let st = d.status();
    assert_eq!((st.in_use, st.free), (2, 1));
    let p = &st.policy;
    assert_eq!((p.reserved, p.unfilled, p.groups[0].in_use), (1, 1, 0));
    let c4 = openvpn_client(&ns, 4, "");
    assert_eq!(
        outcome(&c4, CONNECT),
        Outcome::Connected,
        "{}",
        server.proc.log_text()
    );
    let st = d.status();
    assert_eq!(st.in_use, 3);
    let p = st.policy;
    assert_eq!((p.unfilled, p.groups[0].in_use), (0, 1));
    assert!(d.status().sessions.iter().any(|s| s.user == "client4"));
}

#[test]
fn ocserv_a_group_reservation_through_groupname() {
    let ns = Netns::new(1);
    let gw = Gateway::new(1); // cap 3
    gw.write(
        &gw.config()
            .policy("[[policy.group]]\nname = \"ops\"\ngroups = [\"ops\"]\nreserved = 1\n"),
    );
    let d = gw.start();
    let _server = Ocserv::start_with_groups(
        &ns,
        &["", "", "", "ops"],
        &format!("{} hook ocserv", bin()),
        &gw.socket(),
    );
    let connected = |p: &Proc| p.wait_log(&["Configured as", "Cookie was rejected"], CONNECT) == 0;
    let u1 = openconnect(&ns, 1, "a");
    assert!(connected(&u1), "{}", u1.log_text());
    let u2 = openconnect(&ns, 2, "a");
    assert!(connected(&u2), "{}", u2.log_text());
    let u3 = openconnect(&ns, 3, "a");
    assert!(!connected(&u3), "{}", u3.log_text());
    assert_eq!(denied(&d, "reserved"), 1);
    let u4 = openconnect(&ns, 4, "a");
    assert!(connected(&u4), "{}", u4.log_text());
    let st = d.status();
    assert_eq!(st.in_use, 3);
    let ops = st.sessions.iter().find(|s| s.user == "user4").unwrap();
    assert_eq!(ops.group, "ops");
    assert_eq!(st.policy.groups[0].in_use, 1);
}

#[test]
fn openvpn_plugin_reads_the_group_from_its_group_var_argument() {
    let ns = Netns::new(3);
    let gw = Gateway::new(0); // cap 2
    gw.write(
        &gw.config()
            .policy("[[policy.group]]\nname = \"oncall\"\ngroups = [\"client2\"]\nreserved = 1\n"),
    );
    let d = gw.start();
    let server =
        OpenvpnServer::start_plugin(&ns, &seatgate_plugin(&gw.socket(), "group_var=common_name"));
    assert!(server
        .proc
        .log_text()
        .contains("on_error=reject group_var=common_name"));
    let c1 = openvpn_client(&ns, 1, "");
    assert_eq!(outcome(&c1, CONNECT), Outcome::Connected);
    // One seat free, and it is client2's.
    let c3 = openvpn_client(&ns, 3, "");
    assert_eq!(outcome(&c3, CONNECT), Outcome::AuthFailed);
    assert_eq!(denied(&d, "reserved"), 1);
    let c2 = openvpn_client(&ns, 2, "");
    assert_eq!(
        outcome(&c2, CONNECT),
        Outcome::Connected,
        "{}",
        server.proc.log_text()
    );
    let st = d.status();
    assert_eq!(st.in_use, 2);
    let s = st.sessions.iter().find(|s| s.user == "client2").unwrap();
    assert_eq!(s.group, "client2");
}
