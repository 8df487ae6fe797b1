//! Ending sessions through the real VPN servers: `seatgate evict` ends a
//! real OpenVPN client (management `client-kill CID HALT`) and real
//! openconnect clients (`occtl disconnect id`), says plainly when no
//! `[[reconcile]]` entry controls the server, and `over_cap =
//! "disconnect_newest"` disconnects exactly the newest real clients down
//! to a cap that dropped, after its grace, while `drain` keeps them.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use seatgate::admission::protocol::{AdmitRequest, Request, ServerKind, ServerRef};

use super::util::*;
use super::vpn_harness::*;

const EXIT: Duration = Duration::from_secs(15);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The common names OpenVPN's own `status 3` lists.
fn openvpn_lists(management: &Path) -> HashSet<String> {
    let mut s = UnixStream::connect(management).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"status 3\n").unwrap();
    let mut names = HashSet::new();
    for line in BufReader::new(s.try_clone().unwrap()).lines() {
        let line = line.unwrap();
        let line = line.trim_end();
        if line == "END" {
            break;
        }
        if let Some(row) = line.strip_prefix("CLIENT_LIST\t") {
            names.insert(row.split('\t').next().unwrap().to_string());
        }
    }
    let _ = s.write_all(b"quit\n");
    names
}

fn key_of(d: &Daemon, user: &str) -> String {
    d.status()
        .sessions
        .into_iter()
        .find(|s| s.user == user)
        .unwrap_or_else(|| panic!("no session of {user}"))
        .key
}

fn holders(d: &Daemon) -> HashSet<String> {
    d.status().sessions.iter().map(|s| s.user.clone()).collect()
}

fn names(ids: impl IntoIterator<Item = usize>) -> HashSet<String> {
    ids.into_iter().map(|i| format!("client{i}")).collect()
}

fn wait_exit(p: &mut Proc) {
    let name = p.name.clone();
    wait_for(&format!("{name} to exit"), EXIT, || {
        p.exited().then_some(())
    });
}

#[test]
fn evict_ends_a_real_openvpn_client_and_frees_its_seat() {
    require_tools();
    let ns = Netns::new(2);
    let gw = Gateway::new(3);
    reconcile_openvpn(&gw.config_path(), &ns, 1000);
    let server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());
    let d = gw.spawn("info");
    d.wait_ready();
    let mut c1 = openvpn_client(&ns, 1, "");
    assert_eq!(outcome(&c1, CONNECT), Outcome::Connected);
    let mut c2 = openvpn_client(&ns, 2, "");
    assert_eq!(outcome(&c2, CONNECT), Outcome::Connected);
    assert_eq!(openvpn_lists(&server.management), names([1, 2]));

    let out = gw.cli(&["evict", &key_of(&d, "client1")]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "disconnected through openvpn {}",
            server.management.display()
        )),
        "{text}"
    );
    assert!(text.contains("1 seats in use"), "{text}");
    // HALT: the client exits instead of reconnecting for a seat again.
    wait_exit(&mut c1);
    assert!(
        c1.log_text().contains("server-pushed-halt"),
        "the client was told to halt: {}",
        c1.log_text()
    );
    assert_eq!(holders(&d), names([2]));
    wait_for("OpenVPN to drop client1", EXIT, || {
        (openvpn_lists(&server.management) == names([2])).then_some(())
    });
    assert!(!c2.exited(), "the other client stays");
    // Evicting it again: nothing holds a seat.
    let out = gw.cli(&["evict", "openvpn:no:such:key:x:"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing holds a seat"),
        "{}",
        stderr(&out)
    );

    d.signal(Signal::SIGTERM);
    let (_, log) = d.wait_exit(Duration::from_secs(10));
    let uid = nix::unistd::geteuid().as_raw();
    let line = log
        .lines()
        .find(|l| l.contains("evicted by an operator"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&format!("operator_uid={uid}")), "{line}");
    assert!(line.contains("freed=true"), "{line}");
    assert!(line.contains("disconnected through openvpn"), "{line}");
}

#[test]
fn evict_ends_real_openconnect_clients_one_by_key_and_a_users_all() {
    require_tools();
    let ns = Netns::new(1);
    let gw = Gateway::new(3);
    let mut config = std::fs::read_to_string(gw.config_path()).unwrap();
    config.push_str(&format!(
        "[[reconcile]]\nkind = \"ocserv\"\nocctl_socket = \"{}\"\ninterval_ms = 1000\ntimeout_ms = 900\n",
        ns.path("occtl.sock").display()
    ));
    std::fs::write(gw.config_path(), config).unwrap();
    let _server = Ocserv::start(&ns, 2, &format!("{} hook ocserv", bin()), &gw.socket());
    let d = gw.start();
    // Two sessions of user1, one of user2.
    let mut clients = vec![
        openconnect(&ns, 1, "a"),
        openconnect(&ns, 1, "b"),
        openconnect(&ns, 2, "a"),
    ];
    for c in &clients {
        assert_eq!(
            c.wait_log(&["Configured as", "Cookie was rejected"], CONNECT),
            0,
            "{}",
            c.log_text()
        );
    }
    assert_eq!(d.status().in_use, 3);

    let out = gw.cli(&["evict", &key_of(&d, "user2")]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("disconnected through ocserv"),
        "{}",
        stdout(&out)
    );
    wait_exit(&mut clients[2]);
    assert!(!clients[0].exited() && !clients[1].exited());
    assert_eq!(d.status().in_use, 2);

    let out = gw.cli(&["evict", "--user", "user1"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.matches("disconnected through ocserv").count(),
        2,
        "{text}"
    );
    assert!(text.contains("0 seats in use"), "{text}");
    wait_exit(&mut clients[0]);
    wait_exit(&mut clients[1]);
    assert_eq!(d.status().in_use, 0);
    // No session of that user any more: an error, said so.
    let out = gw.cli(&["evict", "--user", "user1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("user \"user1\": nothing holds a seat"),
        "{}",
        stderr(&out)
    );
}

/// Without a `[[reconcile]]` entry the seat is freed and the answer says
/// the tunnel is still up; the real client indeed stays connected.
#[test]
fn evict_without_control_frees_the_seat_and_says_the_tunnel_is_up() {
    require_tools();
    let ns = Netns::new(1);
    let gw = Gateway::new(3);
    let server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());
    let d = gw.start();
    let mut c1 = openvpn_client(&ns, 1, "");
    assert_eq!(outcome(&c1, CONNECT), Outcome::Connected);
    let out = gw.cli(&["evict", &key_of(&d, "client1")]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "seat freed; the tunnel is still up: no [[reconcile]] entry controls this server"
        ),
        "{text}"
    );
    assert_eq!(d.status().in_use, 0);
    // The tunnel is up: OpenVPN still lists the client, which runs on.
    assert_eq!(openvpn_lists(&server.management), names([1]));
    assert!(!c1.exited());
}

/// A license moved away: with `drain` the sessions stay; switched to
/// `disconnect_newest` (grace 1 s) the 3 newest real clients are
/// disconnected down to the cap, after status showed the countdown.
#[test]
fn over_cap_drains_or_disconnects_the_newest_real_clients_down_to_the_cap() {
    require_tools();
    let ns = Netns::new(5);
    let gw = Gateway::new(3);
    reconcile_openvpn(&gw.config_path(), &ns, 500);
    let server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());
    let d = gw.spawn("info");
    d.wait_ready();
    // One after another, so their admission order is known.
    let mut clients: Vec<Proc> = Vec::new();
    for i in 1..=5 {
        let c = openvpn_client(&ns, i, "");
        assert_eq!(outcome(&c, CONNECT), Outcome::Connected, "{}", c.log_text());
        clients.push(c);
    }
    let st = d.status();
    assert_eq!((st.in_use, st.cap_total), (5, 5));
    let newest: Vec<String> = (3..=5)
        .rev()
        .map(|i| key_of(&d, &format!("client{i}")))
        .collect();

    // The 3-seat license moved away: cap 2. The default policy drains.
    gw.write_bundle(&bundle(2, vec![]));
    d.signal(Signal::SIGHUP);
    wait_for("the reload", Duration::from_secs(5), || {
        (d.status().cap_total == 2).then_some(())
    });
    let st = d.after_reconciles(3);
    assert_eq!(
        (st.in_use, st.over_cap_by, st.over_cap.is_some()),
        (5, 3, false)
    );
    assert!(
        clients.iter_mut().all(|c| !c.exited()),
        "drain disconnects nobody"
    );
    let text = stdout(&gw.cli(&["status"]));
    assert!(
        text.contains("OVER CAP BY 3: existing sessions drain"),
        "{text}"
    );

    // Now the operator chooses to disconnect the newest after 1 s.
    let mut config = std::fs::read_to_string(gw.config_path()).unwrap();
    config = config.replace(
        "[admission]\n",
        "[admission]\nover_cap = \"disconnect_newest\"\nover_cap_grace_ms = 1000\n",
    );
    std::fs::write(gw.config_path(), config).unwrap();
    d.signal(Signal::SIGHUP);
    let plan = wait_for(
        "status to show the countdown",
        Duration::from_secs(5),
        || d.status().over_cap.filter(|p| p.counting),
    );
    assert_eq!(plan.keys, newest, "{plan:?}");
    assert_eq!((plan.over_by, plan.lost), (3, 0));
    let st = wait_for("the disconnects", Duration::from_secs(15), || {
        let st = d.status();
        (st.in_use == 2).then_some(st)
    });
    assert_eq!(st.over_cap, None);
    assert_eq!(holders(&d), names([1, 2]));
    for c in &mut clients[2..] {
        wait_exit(c);
    }
    wait_for("OpenVPN to list only the 2 oldest", EXIT, || {
        (openvpn_lists(&server.management) == names([1, 2])).then_some(())
    });
    assert!(
        !clients[0].exited() && !clients[1].exited(),
        "the 2 oldest stay"
    );
    // They stay: a few more rounds change nothing.
    d.after_reconciles(2);
    assert_eq!(holders(&d), names([1, 2]));

    d.signal(Signal::SIGTERM);
    let (_, log) = d.wait_exit(Duration::from_secs(10));
    assert!(
        log.contains("over the cap by 3: disconnecting the 3 newest sessions"),
        "{log}"
    );
    assert_eq!(
        log.matches("over the cap: disconnected through openvpn")
            .count(),
        3,
        "{log}"
    );
    assert!(log.contains("back within the cap"), "{log}");
}

/// A server that cannot be asked (its management socket is not where the
/// entry says): the operator's eviction still frees the seat, says the
/// tunnel may still be up and why, and exits non-zero.
#[test]
fn evict_through_an_unreachable_server_frees_the_seat_and_says_so() {
    require_tools();
    let ns = Netns::new(1);
    let gw = Gateway::new(3);
    let mut config = std::fs::read_to_string(gw.config_path()).unwrap();
    config.push_str("[[reconcile]]\nkind = \"openvpn\"\nmanagement = \"/nonexistent/mgmt.sock\"\n");
    std::fs::write(gw.config_path(), config).unwrap();
    let server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());
    let d = gw.start();
    let mut c1 = openvpn_client(&ns, 1, "");
    assert_eq!(outcome(&c1, CONNECT), Outcome::Connected);
    let out = gw.cli(&["evict", &key_of(&d, "client1")]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("seat freed, but the tunnel may still be up: openvpn /nonexistent/mgmt.sock: cannot connect"),
        "{text}"
    );
    assert_eq!(d.status().in_use, 0);
    assert_eq!(openvpn_lists(&server.management), names([1]));
    assert!(!c1.exited());
}

/// Over the cap, sessions no entry can disconnect keep their seats (a
/// freed seat with a live tunnel would let one more in over the cap): the
/// countdown starts again; the cap coming back ends it.
#[test]
fn over_cap_keeps_seats_it_cannot_disconnect_and_the_cap_coming_back_ends_the_countdown() {
    let gw = Gateway::with_config(
        3,
        "over_cap = \"disconnect_oldest\"\nover_cap_grace_ms = 300",
    );
    let mut config = std::fs::read_to_string(gw.config_path()).unwrap();
    config.push_str("[[reconcile]]\nkind = \"openvpn\"\nmanagement = \"/nonexistent/mgmt.sock\"\n");
    std::fs::write(gw.config_path(), config).unwrap();
    let d = gw.spawn("info");
    d.wait_ready();
    let server = FakeServer::start(&gw.socket());
    for k in ["k1", "k2", "k3"] {
        assert!(admitted(&server.try_call(&server.admit(k)).unwrap()));
    }
    gw.write_bundle(&bundle(2, vec![]));
    d.signal(Signal::SIGHUP);
    let first = wait_for("the countdown", Duration::from_secs(5), || {
        d.status().over_cap.filter(|p| p.counting)
    });
    assert_eq!(first.keys, ["k1"], "the oldest goes first: {first:?}");
    // Tried and refused (no entry controls it): a new countdown, seat kept.
    let again = wait_for(
        "the countdown to start again",
        Duration::from_secs(5),
        || {
            // `at` is wall clock from a monotonic countdown: it wobbles by
            // microseconds; a new countdown moves it by about the grace.
            let moved = first.at + chrono::Duration::milliseconds(150);
            d.status().over_cap.filter(|p| p.counting && p.at > moved)
        },
    );
    assert_eq!(again.keys, ["k1"]);
    assert_eq!(d.status().in_use, 3);
    let text = stdout(&gw.cli(&["status"]));
    assert!(
        text.contains("OVER CAP BY 1: disconnecting the 1 oldest sessions"),
        "{text}"
    );
    // The license comes back: no countdown, nothing disconnected.
    gw.write_bundle(&bundle(3, vec![spc("LIC-1", 3)]));
    d.signal(Signal::SIGHUP);
    wait_for("the countdown to end", Duration::from_secs(5), || {
        d.status().over_cap.is_none().then_some(())
    });
    assert_eq!(d.status().in_use, 3);
    // Status is within the cap as soon as the reload is in; the countdown
    // ends at the reaper's next round (it looks after every round).
    d.after_reaps(2);
    d.signal(Signal::SIGTERM);
    let (_, log) = d.wait_exit(Duration::from_secs(10));
    assert!(
        log.contains("over the cap: not disconnected: no [[reconcile]] entry controls this server; it keeps its seat"),
        "{log}"
    );
    assert!(log.contains("freed=false"), "{log}");
    assert!(log.contains("back within the cap"), "{log}");
}

/// Attack: a management socket that accepts and never answers, under a
/// short grace (0: act at once). Each over-cap look used to start another
/// disconnect while the last one still waited out its timeout: a pile of
/// conversations with a stuck server, each logging its failure. One at a
/// time: the next try comes a grace after the last one ended.
#[test]
fn over_cap_asks_a_server_that_never_answers_one_conversation_at_a_time() {
    let gw = Gateway::with_config(3, "over_cap = \"disconnect_newest\"\nover_cap_grace_ms = 0");
    let mgmt = gw.path("mgmt.sock");
    let listener = std::os::unix::net::UnixListener::bind(&mgmt).unwrap();
    let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held = open.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            // Accepted and never answered; kept open.
            if let Ok(mut held) = held.lock() {
                held.push(s);
            }
        }
    });
    let mut config = std::fs::read_to_string(gw.config_path()).unwrap();
    config.push_str(&format!(
        "[[reconcile]]\nkind = \"openvpn\"\nmanagement = \"{}\"\ninterval_ms = 3600000\ntimeout_ms = 5000\n",
        mgmt.display()
    ));
    std::fs::write(gw.config_path(), config).unwrap();
    let d = gw.start();
    // A stand-in OpenVPN: the FakeServer relay under a command name the
    // daemon takes for OpenVPN's, so the entry above controls its sessions.
    let socat =
        String::from_utf8(Command::new("which").arg("socat").output().unwrap().stdout).unwrap();
    let fake = gw.path("openvpn-fake");
    std::fs::copy(socat.trim(), &fake).unwrap();
    let relay = gw.path("relay.sock");
    let vpn = Command::new(&fake)
        .arg(format!("UNIX-LISTEN:{},fork", relay.display()))
        .arg(format!("UNIX-CONNECT:{}", gw.socket().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let vpn = KillOnDrop(vpn);
    wait_for("the relay to listen", Duration::from_secs(10), || {
        listening(&relay).then_some(())
    });
    for k in ["k1", "k2", "k3", "k4", "k5"] {
        let req = Request::Admit(AdmitRequest {
            key: format!("openvpn:{}:1:1:{k}:", vpn.0.id()),
            user: k.into(),
            server: ServerRef {
                kind: ServerKind::Openvpn,
                pid: vpn.0.id(),
            },
            remote: String::new(),
            group: String::new(),
        });
        assert!(admitted(&call(&relay, &req).unwrap()), "{k}");
    }
    let conversations = || open.lock().unwrap().len();
    // The entry's first reconciliation round (it waits out its 5 s).
    wait_for("the first reconciliation", Duration::from_secs(5), || {
        (conversations() == 1).then_some(())
    });
    gw.write_bundle(&bundle(2, vec![]));
    d.signal(Signal::SIGHUP);
    wait_for("the first disconnect", Duration::from_secs(5), || {
        (conversations() == 2).then_some(())
    });
    // Twenty looks (every 100 ms) while the first try waits out its 5 s.
    d.after_reaps(20);
    assert_eq!(conversations(), 2, "one try at a time");
    assert_eq!(d.status().in_use, 5, "nothing confirmed: seats kept");
}

/// A child killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
