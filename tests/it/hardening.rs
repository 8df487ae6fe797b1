//! Hardening: every attack that bent the count of seatgate 0.1, reproduced
//! against the real binary. Each test names the attack it replays.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use seatgate::admission::protocol::{
    encode_request, AdmitRequest, DenyReason, Request, Response, ServerKind, ServerRef,
};

use super::util::*;

const NOBODY: u32 = 65534;

/// An admission naming this test process as its VPN server (the daemon
/// accepts the caller itself or its ancestors).
fn self_admit(key: &str, user: &str) -> Request {
    Request::Admit(AdmitRequest {
        key: key.into(),
        user: user.into(),
        server: ServerRef {
            kind: ServerKind::Other,
            pid: std::process::id(),
        },
        remote: "192.0.2.1".into(),
        group: String::new(),
    })
}

/// Bytes waiting to be read on a socket (FIONREAD).
fn unread(s: &UnixStream) -> usize {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { nix::libc::ioctl(s.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0);
    n as usize
}

fn denied_with(resp: &Response) -> Option<DenyReason> {
    match resp {
        Response::Admit(a) if !a.admitted => a.reason,
        _ => None,
    }
}

/// Lets other users reach the gateway's socket (as on a gateway, where the
/// VPN servers' users and strangers share the host).
fn open_to_all(gw: &Gateway) {
    std::fs::set_permissions(gw.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Attack 1: a peer whose answer to `admit X` cannot be written (its
/// receive side full), another peer told X is admitted (`again`), then the
/// first leaves: 0.1 undid X and let 33 in at cap 32.
#[test]
fn an_undelivered_answer_never_undoes_an_admission_another_peer_was_told() {
    let gw = Gateway::new(30);
    let d = gw.start();
    let ping = encode_request(&Request::Ping);
    let pong_len = {
        let s = UnixStream::connect(&d.socket).unwrap();
        (&s).write_all(&ping).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        line.len()
    };
    // How many answers the daemon can write to a peer that never reads,
    // before its writes block: wait until the queue stops growing across
    // several round trips of another connection (each lets the blocked
    // connection's task run again).
    let fit = {
        let c = UnixStream::connect(&d.socket).unwrap();
        (&c).write_all(&ping.repeat(4000)).unwrap();
        let mut last = (0, 0);
        for _ in 0..5000 {
            assert!(matches!(
                call(&d.socket, &Request::Ping),
                Ok(Response::Pong(_))
            ));
            let n = unread(&c);
            last = if n == last.0 { (n, last.1 + 1) } else { (n, 0) };
            if last.1 == 5 {
                break;
            }
        }
        assert_eq!(last.1, 5, "the queue never settled");
        assert_eq!(last.0 % pong_len, 0, "answers are written whole");
        last.0 / pong_len
    };
    assert!(fit > 1 && fit < 4000, "{fit} answers fit");
    // A: exactly that many pings, then `admit X`: X is decided and its
    // answer cannot be written.
    let a = UnixStream::connect(&d.socket).unwrap();
    let mut burst = ping.repeat(fit);
    burst.extend(encode_request(&self_admit("X", "alice")));
    (&a).write_all(&burst).unwrap();
    wait_for("X to be admitted", Duration::from_secs(10), || {
        d.status()
            .sessions
            .iter()
            .any(|s| s.key == "X")
            .then_some(())
    });
    assert_eq!(unread(&a), fit * pong_len, "X's answer is not delivered");
    // B: the same server admits X again and is told it holds a seat.
    match call(&d.socket, &self_admit("X", "alice")).unwrap() {
        Response::Admit(r) => assert!(r.admitted && r.again, "{r:?}"),
        other => panic!("{other:?}"),
    }
    // A leaves: the daemon's write of X's answer fails.
    let before = d.status().unanswered;
    drop(a);
    wait_for("the undelivered answer", Duration::from_secs(10), || {
        (d.status().unanswered > before).then_some(())
    });
    let st = d.status();
    assert!(
        st.sessions.iter().any(|s| s.key == "X"),
        "B was told X holds a seat"
    );
    // The cap holds exactly: 31 more, and everyone after is refused.
    for i in 0..31 {
        let r = call(&d.socket, &self_admit(&format!("k{i}"), "bob")).unwrap();
        assert!(admitted(&r), "{i}: {r:?}");
    }
    let r = call(&d.socket, &self_admit("one-too-many", "eve")).unwrap();
    assert_eq!(denied_with(&r), Some(DenyReason::CapReached), "{r:?}");
    assert_eq!(d.status().in_use, 32);
}

/// Attack 4: SIGTERM to the old daemon and an immediate start of a new
/// one. 0.1's stopping daemon deleted the new one's socket and truncated
/// its journal: 5 acknowledged admissions were lost at the next restart.
#[test]
fn an_overlapping_restart_waits_for_the_old_daemon_and_loses_nothing() {
    let gw = Gateway::new(10);
    let old = gw.start();
    let server = FakeServer::start(&gw.socket());
    for i in 0..5 {
        assert!(admitted(
            &server.try_call(&server.admit(&format!("k{i}"))).unwrap()
        ));
    }
    old.signal(Signal::SIGTERM);
    let new = gw.spawn("warn");
    let (status, _) = old.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    new.wait_ready();
    assert!(gw.socket().exists(), "the new daemon's socket is in place");
    assert_eq!(new.status().in_use, 5);
    let more = server.try_call(&server.admit("after")).unwrap();
    assert!(admitted(&more), "{more:?}");
    new.kill9();
    let third = gw.start();
    let keys: Vec<String> = third.status().sessions.into_iter().map(|s| s.key).collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
}

/// One daemon per runtime directory: a second one waits, then refuses and
/// names the first.
#[test]
fn a_second_daemon_on_the_same_runtime_directory_refuses_naming_the_first() {
    let gw = Gateway::with_config(0, "lock_wait_ms = 200");
    let d = gw.start();
    let out = gw.cli(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("another seatgate (pid {})", d.child.id())),
        "{err}"
    );
    assert!(
        matches!(call(&d.socket, &Request::Ping), Ok(Response::Pong(_))),
        "the first one still serves"
    );
}

/// Attack 5: a snapshot cut short after a clean stop. 0.1 started with 0
/// sessions and handed their seats out again.
#[test]
fn a_damaged_snapshot_keeps_the_seats_it_lost_until_an_operator_clears_them() {
    let gw = Gateway::new(2); // cap 4
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    for i in 0..4 {
        assert!(admitted(
            &server.try_call(&server.admit(&format!("k{i}"))).unwrap()
        ));
    }
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    let snapshot = gw.path("run/sessions.json");
    let bytes = std::fs::read(&snapshot).unwrap();
    std::fs::write(&snapshot, &bytes[..bytes.len() - 40]).unwrap();
    let d = gw.start();
    let st = d.status();
    assert_eq!((st.in_use, st.lost, st.sessions.len()), (4, 1, 3));
    let r = server.try_call(&server.admit("new")).unwrap();
    assert_eq!(denied_with(&r), Some(DenyReason::CapReached), "{r:?}");
    let text = String::from_utf8_lossy(&gw.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("DEGRADED: 1 seats held by sessions lost"),
        "{text}"
    );
    assert!(gw.path("run/sessions.json.damaged").exists());
    let out = gw.cli(&["evict", "--lost"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.status().lost, 0);
    assert!(admitted(&server.try_call(&server.admit("new")).unwrap()));
}

/// The same, with `[[reconcile]]`: the VPN server's own list accounts for
/// the lost sessions (here a stand-in OpenVPN management socket listing
/// two clients that the table does not know).
#[test]
fn reconciliation_accounts_for_seats_lost_with_a_damaged_snapshot() {
    let management = tempfile::Builder::new()
        .prefix("seatgate-mgmt-")
        .tempdir()
        .unwrap();
    let mgmt = management.path().join("mgmt.sock");
    let listener = std::os::unix::net::UnixListener::bind(&mgmt).unwrap();
    // The sample begins with the greeting, which the stand-in sends itself.
    let sample: String = include_str!("../vpn/samples/openvpn-status3.txt")
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sample = sample.clone();
            std::thread::spawn(move || fake_management(stream, &sample));
        }
    });
    let listed = include_str!("../vpn/samples/openvpn-status3.txt")
        .lines()
        .filter(|l| l.starts_with("CLIENT_LIST"))
        .count() as u32;
    assert!(listed >= 1);
    let gw = Gateway::new(20);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    for i in 0..6 {
        assert!(admitted(
            &server.try_call(&server.admit(&format!("k{i}"))).unwrap()
        ));
    }
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).0.success());
    // Everything but the header is lost.
    let snapshot = gw.path("run/sessions.json");
    let bytes = std::fs::read(&snapshot).unwrap();
    let header = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    std::fs::write(&snapshot, &bytes[..header]).unwrap();
    let mut gw = gw;
    gw.extra_config = format!(
        "[[reconcile]]\nkind = \"openvpn\"\nmanagement = \"{}\"\ninterval_ms = 200\ntimeout_ms = 150\n",
        mgmt.display()
    );
    gw.write_config();
    let d = gw.start();
    let st = wait_for("a reconcile round", Duration::from_secs(10), || {
        Some(d.status()).filter(|s| s.rounds.reconcile >= 1)
    });
    assert_eq!((st.lost, st.in_use), (listed, listed), "{st:?}");
}

/// Answers `pid` and `status 3` like OpenVPN's management interface.
fn fake_management(stream: UnixStream, status3: &str) {
    let mut out = stream.try_clone().unwrap();
    let _ = out.write_all(
        b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n",
    );
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let reply = match line.trim() {
            "pid" => "SUCCESS: pid=4242\r\n".to_string(),
            "status 3" => status3.replace('\n', "\r\n"),
            "quit" => return,
            _ => "ERROR: unknown command\r\n".to_string(),
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Holds `count` connections to `socket` as `uid` until dropped; returns
/// how many the daemon let it open (a `busy` one is closed at once, but
/// counts here: the point is how many it tried).
struct Holder(std::process::Child, usize);

impl Holder {
    fn start(socket: &Path, uid: u32, count: usize) -> Holder {
        let script = r#"use IO::Socket::UNIX; my @c;
            for (1..$ARGV[1]) { my $s = IO::Socket::UNIX->new(Peer => $ARGV[0], Type => SOCK_STREAM()) or last; push @c, $s; }
            print scalar(@c), "\n"; STDOUT->flush(); <STDIN>;"#;
        let mut child = Command::new("perl")
            .args(["-e", script])
            .arg(socket)
            .arg(count.to_string())
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut opened = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut opened)
            .unwrap();
        Holder(child, opened.trim().parse().unwrap())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// 50 admissions on fresh connections, each within the hook's deadline;
/// returns p50 and p99.
fn probe_admissions(socket: &Path, tag: &str) -> (Duration, Duration) {
    let mut took = Vec::new();
    for i in 0..50 {
        let start = Instant::now();
        let r = seatgate::admission::client::call(
            socket,
            &self_admit(&format!("{tag}-{i}"), "alice"),
            Duration::from_millis(500),
        );
        took.push(start.elapsed());
        assert!(matches!(&r, Ok(a) if admitted(a)), "probe {i}: {r:?}");
    }
    took.sort();
    (took[25], took[49])
}

/// Attack 8: idle connections from a user with no rights took every
/// connection slot; admissions failed for as long as they were held.
#[test]
fn idle_connections_of_a_stranger_never_hold_up_an_admission() {
    require_root("runs its stranger as nobody (uid 65534)");
    let gw = Gateway::with_config(100, "socket_mode = \"0666\"\nvpn_users = []");
    open_to_all(&gw);
    let d = gw.start();
    let holder = Holder::start(&d.socket, NOBODY, 600);
    assert!(
        holder.1 >= 300,
        "the stranger holds {} connections",
        holder.1
    );
    let (p50, p99) = probe_admissions(&d.socket, "probe");
    eprintln!(
        "admissions beside {} idle stranger connections: p50 {p50:?}, p99 {p99:?}",
        holder.1
    );
}

/// The same from one VPN-server user (with admit rights) holding idle
/// connections: a quarter of the hooks' slots stays for the other servers.
#[test]
fn one_vpn_user_holding_connections_leaves_slots_for_the_others() {
    require_root("runs a VPN-server user as nobody (uid 65534)");
    let gw = Gateway::with_config(
        100,
        "socket_mode = \"0666\"\nvpn_users = [\"nobody\"]\nmax_connections = 16",
    );
    open_to_all(&gw);
    let d = gw.start();
    let holder = Holder::start(&d.socket, NOBODY, 100);
    assert_eq!(holder.1, 100);
    let (p50, p99) = probe_admissions(&d.socket, "probe");
    eprintln!("admissions beside one VPN user's 100 idle connections: p50 {p50:?}, p99 {p99:?}");
}

/// A small tmpfs mounted on a directory for the length of a test.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0711"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "mount needs root (run the tests with scripts/test as root)"
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("fill")).unwrap();
        let chunk = vec![0u8; 4096];
        let err = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Attack 10: a full runtime directory. 0.1 acknowledged releases it had
/// not journaled, and after a SIGKILL could not start at all.
#[test]
fn a_full_runtime_directory_fails_admissions_closed_and_recovers_by_itself() {
    require_root("mounts a small tmpfs");
    let gw = Gateway::new(200);
    let fs = Tmpfs::mount(&gw.path("run"), "256k");
    let d = gw.start();
    // Replaced sessions must be of a server an entry can end.
    let server = FakeServer::start_openvpn(&gw.socket());
    for i in 0..3 {
        assert!(admitted(
            &server.try_call(&server.admit(&format!("k{i}"))).unwrap()
        ));
    }
    fs.fill();
    // The journal's last page may still take a few lines; then admissions
    // are refused: nothing is acknowledged that is not recorded.
    let mut extra = Vec::new();
    let refused = (0..200).find_map(|i| {
        let key = format!("x{i}");
        let r = server.try_call(&server.admit(&key)).unwrap();
        if admitted(&r) {
            extra.push(key);
            None
        } else {
            Some(r)
        }
    });
    let r = refused.expect("admissions are refused on a full directory");
    assert_eq!(denied_with(&r), Some(DenyReason::Internal), "{r:?}");
    let st = d.status();
    assert!(
        st.warnings.iter().any(|w| w.contains("No space left")),
        "{:?}",
        st.warnings
    );
    // A release is still recorded (the journal keeps space aside for it).
    match server
        .try_call(&Request::Release { key: "k0".into() })
        .unwrap()
    {
        Response::Release(r) => assert!(r.released),
        other => panic!("{other:?}"),
    }
    d.kill9();
    // It starts on the full directory, with what it had acknowledged.
    let d = gw.start();
    let st = d.status();
    let mut keys: Vec<String> = st.sessions.iter().map(|s| s.key.clone()).collect();
    keys.sort();
    let mut want: Vec<String> = ["k1", "k2"]
        .iter()
        .map(|k| k.to_string())
        .chain(extra.clone())
        .collect();
    want.sort();
    assert_eq!(
        keys, want,
        "every acknowledged change, the release included"
    );
    assert!(
        st.warnings.iter().any(|w| w.contains("No space left")),
        "{:?}",
        st.warnings
    );
    let refused = (0..200).find_map(|i| {
        let r = server.try_call(&server.admit(&format!("y{i}"))).unwrap();
        (!admitted(&r)).then_some(r)
    });
    let r = refused.expect("admissions are refused on a full directory");
    assert_eq!(denied_with(&r), Some(DenyReason::Internal), "{r:?}");
    let held = d.status().in_use;
    // Space returns: it recovers without a restart.
    std::fs::remove_file(gw.path("run/fill")).unwrap();
    wait_for("the fault to clear", Duration::from_secs(10), || {
        d.status().warnings.is_empty().then_some(())
    });
    assert!(admitted(&server.try_call(&server.admit("k3")).unwrap()));
    assert_eq!(d.status().in_use, held + 1);
}

/// A replacement (`at_user_limit = "replace_oldest"`) on a full runtime
/// directory: the release of the oldest session and the new admission are
/// one write, so when it fails neither happened: the user keeps the session
/// held, the new one is refused, and a restart finds exactly what was
/// acknowledged.
#[test]
fn a_replacement_on_a_full_runtime_directory_keeps_the_session_held() {
    require_root("mounts a small tmpfs");
    let gw = Gateway::new(10);
    gw.write(&gw.config().policy(concat!(
        "[policy]\nmax_sessions_per_user = 1\nat_user_limit = \"replace_oldest\"\n",
        // Required with replace_oldest: the server there has ended every
        // replaced session already (a session it did not confirm ended
        // would count again).
        "[[reconcile]]\nkind = \"openvpn\"\nmanagement = \"mgmt.sock\"\ninterval_ms = 3600000\n",
    )));
    let fs = Tmpfs::mount(&gw.path("run"), "256k");
    // Replaced sessions must be of a server an entry can end.
    let server = FakeServer::start_openvpn(&gw.socket());
    empty_management(&gw.path("mgmt.sock"), server.pid());
    let d = gw.start();
    let admit = |key: &str| {
        let mut req = server.admit(key);
        if let Request::Admit(a) = &mut req {
            a.user = "alice".into();
        }
        server.try_call(&req).unwrap()
    };
    assert!(admitted(&admit("r0")));
    assert!(admitted(&admit("r1")), "r1 replaces r0");
    assert_eq!(d.status().sessions.len(), 1);
    fs.fill();
    let mut last = "r1".to_string();
    let refused = (2..200).find_map(|i| {
        let key = format!("r{i}");
        let r = admit(&key);
        if admitted(&r) {
            last = key;
            None
        } else {
            Some(r)
        }
    });
    let r = refused.expect("admissions are refused on a full directory");
    assert_eq!(denied_with(&r), Some(DenyReason::Internal), "{r:?}");
    let keys =
        |d: &Daemon| -> Vec<String> { d.status().sessions.iter().map(|s| s.key.clone()).collect() };
    assert_eq!(keys(&d), [last.clone()], "the held session is kept");
    d.kill9();
    let d = gw.start();
    assert_eq!(
        keys(&d),
        [last.clone()],
        "what was acknowledged, after a restart"
    );
    std::fs::remove_file(gw.path("run/fill")).unwrap();
    wait_for("the fault to clear", Duration::from_secs(10), || {
        d.status().warnings.is_empty().then_some(())
    });
    assert!(admitted(&admit("after")));
    assert_eq!(keys(&d), ["after"]);
}

/// Attack 12: `sessions.journal` was 0644 in a 0755 directory: any local
/// user read session keys, user names, remote addresses and pids.
#[test]
fn runtime_and_state_files_are_the_daemons_alone() {
    require_root("reads the files as nobody (uid 65534)");
    let gw = Gateway::new(3);
    open_to_all(&gw);
    // A journal left readable by an older version is narrowed at start
    // (its directory as systemd makes it: RuntimeDirectoryMode=0711).
    std::fs::create_dir_all(gw.path("run")).unwrap();
    std::fs::set_permissions(gw.path("run"), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::write(gw.path("run/sessions.journal"), b"").unwrap();
    std::fs::set_permissions(
        gw.path("run/sessions.journal"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    assert!(admitted(
        &server.try_call(&server.admit("secret-key")).unwrap()
    ));
    let mode = |p: &str| std::fs::metadata(gw.path(p)).unwrap().permissions().mode() & 0o777;
    for (file, want) in [
        ("run/sessions.journal", 0o600),
        ("run/sessions.json", 0o600),
        ("run/seatgate.lock", 0o600),
        ("state", 0o750),
        ("state/clock.json", 0o640),
        ("state/bundle.json", 0o640),
    ] {
        wait_for(&format!("{file} to exist"), Duration::from_secs(10), || {
            gw.path(file).exists().then_some(())
        });
        assert_eq!(mode(file), want, "{file}");
    }
    let run = mode("run");
    assert_eq!(
        run & 0o044,
        0,
        "the runtime directory cannot be listed by others ({run:o})"
    );
    for file in [
        "run/sessions.journal",
        "run/sessions.json",
        "state/clock.json",
    ] {
        let out = Command::new("cat")
            .arg(gw.path(file))
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file} is readable by nobody");
    }
    drop(d);
}

/// Attack 13: user names, keys and addresses with control characters
/// reached the log unescaped (a forged log line) and the status table raw.
#[test]
fn control_characters_from_a_peer_are_escaped_in_the_log_and_status() {
    let gw = Gateway::new(3);
    let d = gw.spawn("info");
    d.wait_ready();
    let evil = "eve\u{1b}[2J\nMon Jan 1 seatgate: FORGED LINE\r";
    let mut req = self_admit("key\u{1b}]0;title\u{7}", evil);
    if let Request::Admit(a) = &mut req {
        a.remote = "203.0.113.5\n".into();
    }
    assert!(admitted(&call(&d.socket, &req).unwrap()));
    let text = String::from_utf8_lossy(&gw.cli(&["status"]).stdout).into_owned();
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(text.contains("eve\\u{1b}[2J\\nMon Jan 1"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("Mon Jan 1")), "{text}");
    d.signal(Signal::SIGTERM);
    let (_, log) = d.wait_exit(Duration::from_secs(10));
    assert!(log.contains("seat admitted"), "{log}");
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
    assert!(!log.lines().any(|l| l.starts_with("Mon Jan 1")), "{log}");
    assert!(
        log.contains("eve\\u{1b}[2J\\nMon Jan 1 seatgate: FORGED LINE\\r"),
        "{log}"
    );
}
