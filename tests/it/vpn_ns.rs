//! The real VPN servers in a pid namespace of their own (as in a
//! container), the daemon outside in the host pid namespace, the hooks
//! inside talking to it over its socket path. The pids the servers report
//! mean other processes here: on purpose, a host process sits at the very
//! number the server (or a session's worker) has inside, and the daemon
//! must track the real process (found from the hook's peer credentials and
//! ancestry), never the host process at that number.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::util::*;
use super::vpn_harness::*;

/// How soon the seats of a dead containerised server must be free again.
const BACK_WITHIN: Duration = Duration::from_secs(2);
const REFUSED: &str = "is not the calling hook's own server";

/// A host process (pid namespace of the daemon) whose pid number the test
/// hands to a process inside the container too.
struct Decoy(Child);

impl Decoy {
    fn start() -> Decoy {
        Decoy(
            Command::new("sleep")
                .arg("120")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&self) -> bool {
        seatgate::sys::process::process_start_ticks(self.pid()).is_some()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until in_use == want and returns how long after `since` it was.
fn in_use_by(d: &Daemon, want: u32, since: Instant, limit: Duration) -> Duration {
    wait_for(&format!("in_use == {want}"), limit, || {
        (d.status().in_use == want).then_some(())
    });
    since.elapsed()
}

/// Waits for `n` more reaper rounds than now (the daemon has looked at
/// every server's liveness `n` times since).
fn reaper_rounds(d: &Daemon, n: u64) {
    let from = d.status().rounds.reap;
    wait_for(
        &format!("{n} reaper rounds"),
        Duration::from_secs(5),
        || (d.status().rounds.reap >= from + n).then_some(()),
    );
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "(none)".into())
}

/// Runs `seatgate hook KIND` with `env` from `cmd` (a command that runs
/// programs somewhere: inside the container or on the host); returns its
/// exit code and stderr.
fn hook(
    mut cmd: Command,
    kind: &str,
    socket: &std::path::Path,
    env: &[(&str, &str)],
) -> (i32, String) {
    cmd.arg(bin()).args(["hook", kind]).env_clear();
    cmd.env("SEATGATE_SOCKET", socket);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn openvpn_in_a_pid_namespace_cap_3_of_5_then_sigkilled_frees_every_seat_within_2s() {
    let ns = Netns::with_pid_ns(5);
    let gw = Gateway::new(1);
    let d = gw.start();
    // The server's own pid (its daemon_pid) is the pid of a live host process.
    let decoy = Decoy::start();
    ns.set_next_pid(decoy.pid());
    let mut server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());
    let (host_pid, inner) = (server.proc.pid(), server.proc.ns_pid());
    assert_eq!(
        inner,
        decoy.pid(),
        "the server took the decoy's number inside"
    );
    assert_ne!(host_pid, inner);

    let clients: Vec<Proc> = (1..=5).map(|i| openvpn_client(&ns, i, "")).collect();
    expect_connected(&clients, 3, &server.proc);
    assert!(server.proc.log_text().contains("all 3 seats are in use"));
    let st = d.status();
    assert_eq!((st.in_use, st.cap_total), (3, 3));
    for s in &st.sessions {
        // Keyed by daemon_pid as the server sees itself, held by the host pid.
        assert!(s.key.starts_with(&format!("openvpn:{inner}:")), "{}", s.key);
        assert_eq!(s.server_pid, host_pid, "not the decoy {inner}");
    }
    eprintln!(
        "openvpn in a pid namespace: daemon_pid {inner} (host pid {inner} is `{}`), sessions held by host pid {host_pid}",
        comm(inner)
    );

    // SIGKILL: no hook runs. The decoy at the same number lives on.
    let killed = Instant::now();
    server.proc.kill9();
    let took = in_use_by(&d, 0, killed, BACK_WITHIN);
    eprintln!("openvpn in a pid namespace: 3 seats back {took:?} after SIGKILL");
    assert!(decoy.alive());
}

#[test]
fn openvpn_in_a_pid_namespace_reconciles_and_refuses_unmappable_hooks() {
    let ns = Netns::with_pid_ns(2);
    let gw = Gateway::with_config(0, "");
    let interval_ms = 500;
    reconcile_openvpn(&gw.config_path(), &ns, interval_ms);
    // No pid set: the server gets a small number inside, a kernel thread
    // (or whatever sits there) on the host.
    let server = OpenvpnServer::start(&ns, &seatgate_hook("openvpn"), &gw.socket());
    let d = gw.start();
    let (host_pid, inner) = (server.proc.pid(), server.proc.ns_pid());
    assert!(
        std::path::Path::new(&format!("/proc/{inner}")).exists(),
        "host pid {inner} exists"
    );
    eprintln!(
        "openvpn in a pid namespace: daemon_pid {inner}; host pid {inner} is `{}`",
        comm(inner)
    );

    let good = openvpn_client(&ns, 1, "");
    assert_eq!(outcome(&good, CONNECT), Outcome::Connected);
    assert_eq!(d.status().sessions[0].server_pid, host_pid);
    // Admitted, then no common cipher: no client-disconnect ever; the
    // management interface (pid as the server sees itself) frees it.
    let bad = openvpn_client(&ns, 2, "data-ciphers AES-192-GCM");
    assert_eq!(outcome(&bad, CONNECT), Outcome::AuthFailed);
    assert_eq!(d.status().in_use, 2);
    let failed_at = Instant::now();
    wait_for(
        "reconciliation to free the cipher-failed seat",
        Duration::from_secs(5) + Duration::from_millis(3 * interval_ms) + Duration::from_secs(4),
        || (d.status().sessions.iter().all(|s| s.user != "client2")).then_some(()),
    );
    eprintln!(
        "openvpn in a pid namespace: reconciliation freed the cipher-failed seat {:?} after AUTH_FAILED",
        failed_at.elapsed()
    );
    assert_eq!(d.status().in_use, 1, "the live client keeps its seat");

    // Hooks whose claim the kernel cannot back are refused, with the reason.
    let inner_s = inner.to_string();
    let env = |pid: &str| {
        vec![
            ("script_type", "client-connect".to_string()),
            ("daemon_pid", pid.to_string()),
            ("time_unix", "1".into()),
            ("common_name", "intruder".into()),
        ]
    };
    let cases = [
        // Inside the container, the server's own number, but not its child.
        (
            "inside, not the server's child",
            ns.server_command("env"),
            env(&inner_s),
        ),
        // Inside, the container's init: an ancestor, but not an openvpn.
        (
            "inside, the container's init",
            ns.server_command("env"),
            env("1"),
        ),
        // On the host, the server's inner number: there, another process.
        ("host, the inner number", Command::new("env"), env(&inner_s)),
        // On the host, the server's host pid: not the hook's ancestor.
        (
            "host, the host pid",
            Command::new("env"),
            env(&host_pid.to_string()),
        ),
    ];
    for (what, cmd, env) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, err) = hook(cmd, "openvpn", &gw.socket(), &env);
        assert_eq!(code, 1, "{what}: {err}");
        assert!(
            err.contains("REJECTED intruder") && err.contains(REFUSED),
            "{what}: {err}"
        );
        eprintln!("openvpn hook {what}: {}", err.trim());
    }
    assert_eq!(d.status().in_use, 1);

    d.signal(Signal::SIGTERM);
    let (_, err) = d.wait_exit(Duration::from_secs(10));
    assert!(
        !err.contains("cannot reconcile"),
        "every round worked: {err}"
    );
    assert!(
        err.contains("no longer in the VPN server's list") && err.contains("client2"),
        "{err}"
    );
}

/// The worker serving `user`'s session: (host pid, ID as ocserv sees it).
fn worker_of(d: &Daemon, user: &str) -> (u32, u32) {
    let st = d.status();
    let s = st
        .sessions
        .iter()
        .find(|s| s.user == user)
        .unwrap_or_else(|| panic!("{user} holds no seat"));
    let id: u32 = s.key.split(':').nth(1).unwrap().parse().unwrap();
    (s.server_pid, id)
}

fn connects(c: &Proc) -> bool {
    c.wait_log(&["Configured as", "Cookie was rejected"], CONNECT) == 0
}

#[test]
fn ocserv_in_a_pid_namespace_cap_2_of_3_colliding_host_pid_frees_nothing_dead_workers_free_within_2s(
) {
    let ns = Netns::with_pid_ns(1);
    let gw = Gateway::new(0);
    let mut config = std::fs::read_to_string(gw.config_path()).unwrap();
    config.push_str(&format!(
        "[[reconcile]]\nkind = \"ocserv\"\nocctl_socket = \"{}\"\ninterval_ms = 300\ntimeout_ms = 250\n",
        ns.path("occtl.sock").display()
    ));
    std::fs::write(gw.config_path(), config).unwrap();
    let mut server = Ocserv::start(&ns, 3, &format!("{} hook ocserv", bin()), &gw.socket());
    let d = gw.start();
    let main = server.proc.pid();

    // user1's worker gets the number of a live host process inside.
    let mut decoy = Decoy::start();
    ns.set_next_pid(decoy.pid());
    let u1 = openconnect(&ns, 1, "a");
    assert!(connects(&u1), "{}", u1.log_text());
    let u2 = openconnect(&ns, 2, "a");
    assert!(connects(&u2), "{}", u2.log_text());
    let u3 = openconnect(&ns, 3, "a");
    assert!(!connects(&u3), "the third user is refused");
    assert!(server.proc.log_text().contains("all 2 seats are in use"));
    let st = d.status();
    assert_eq!((st.in_use, st.cap_total), (2, 2));

    let (w1, id1) = worker_of(&d, "user1");
    let (w2, id2) = worker_of(&d, "user2");
    for (w, id) in [(w1, id1), (w2, id2)] {
        assert_eq!(seatgate::sys::process::parent_pid(w), Some(main));
        assert_eq!(seatgate::sys::process::read(w).unwrap().own_pid(), id);
        assert_ne!(w, id);
    }
    eprintln!(
        "ocserv in a pid namespace: worker IDs {id1}, {id2} held by host pids {w1}, {w2}; host pid {id1} is `{}` (the decoy: {}), host pid {id2} is `{}`",
        comm(id1),
        decoy.pid(),
        comm(id2)
    );
    assert_eq!(
        id1,
        decoy.pid(),
        "user1's worker took the decoy's number inside"
    );

    // The host process at user1's worker number exits: nothing is freed.
    decoy.kill();
    reaper_rounds(&d, 3);
    assert_eq!(d.status().in_use, 2, "a colliding host pid freed a seat");
    assert!(!u1.log_text().contains("disconnected"));
    // And occtl rounds keep both live sessions.
    let rounds = d.status().rounds.reconcile;
    wait_for("two reconciliation rounds", Duration::from_secs(5), || {
        (d.status().rounds.reconcile >= rounds + 2).then_some(())
    });
    assert_eq!(d.status().in_use, 2);

    // user1's worker is SIGKILLed: its seat is back, and user3 gets in.
    // (user1's openconnect is held still first: it would reconnect with
    // its cookie and take the seat again.)
    let mut u1 = u1;
    u1.signal(Signal::SIGSTOP);
    let killed = Instant::now();
    kill(Pid::from_raw(w1 as i32), Signal::SIGKILL).unwrap();
    let took = in_use_by(&d, 1, killed, BACK_WITHIN);
    let by_hook = server
        .proc
        .log_text()
        .contains(&format!("released ocserv:{id1}:user1"));
    eprintln!(
        "ocserv in a pid namespace: seat back {took:?} after a worker's SIGKILL ({})",
        if by_hook {
            "ocserv-main ran disconnect-script"
        } else {
            "reaped by the daemon"
        }
    );
    u1.kill9();
    let u3 = openconnect(&ns, 3, "b");
    assert!(
        connects(&u3),
        "{}\nserver log:\n{}",
        u3.log_text(),
        server.proc.log_text()
    );
    assert_eq!(d.status().in_use, 2);

    // The main process is SIGKILLed (its workers end with it; no script runs).
    let killed = Instant::now();
    server.proc.kill9();
    let took = in_use_by(&d, 0, killed, BACK_WITHIN);
    eprintln!("ocserv in a pid namespace: 2 seats back {took:?} after ocserv-main's SIGKILL");
    drop(u2);
}

#[test]
fn ocserv_hook_claiming_a_worker_it_does_not_descend_from_is_refused() {
    let ns = Netns::with_pid_ns(1);
    let gw = Gateway::new(0);
    let server = Ocserv::start(&ns, 1, &format!("{} hook ocserv", bin()), &gw.socket());
    let d = gw.start();
    let u1 = openconnect(&ns, 1, "a");
    assert!(connects(&u1), "{}", u1.log_text());
    let (w1, id1) = worker_of(&d, "user1");
    assert_eq!(
        seatgate::sys::process::parent_pid(w1),
        Some(server.proc.pid())
    );
    let id = id1.to_string();
    let env = [
        ("REASON", "connect"),
        ("ID", id.as_str()),
        ("USERNAME", "intruder"),
        ("IP_REAL", "192.0.2.1"),
    ];
    // Inside the container (not ocserv's child), and on the host.
    for (what, cmd) in [
        ("inside", ns.server_command("env")),
        ("host", Command::new("env")),
    ] {
        let (code, err) = hook(cmd, "ocserv", &gw.socket(), &env);
        assert_eq!(code, 1, "{what}: {err}");
        assert!(
            err.contains("REJECTED intruder") && err.contains(REFUSED),
            "{what}: {err}"
        );
        eprintln!("ocserv hook {what}: {}", err.trim());
    }
    assert_eq!(d.status().in_use, 1);

    // The whole container dies (its init is killed: every process in it).
    let killed = Instant::now();
    let init = ns.init_pid().unwrap();
    kill(Pid::from_raw(init as i32), Signal::SIGKILL).unwrap();
    let took = in_use_by(&d, 0, killed, BACK_WITHIN);
    eprintln!("ocserv in a pid namespace: seat back {took:?} after the container was SIGKILLed");
    drop((u1, server));
}
