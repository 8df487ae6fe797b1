//! The systemd protocol with the real binary: socket activation through
//! Debian's `systemd-socket-activate` (no systemd as PID 1 needed) and a
//! fake NOTIFY_SOCKET that records READY=1, WATCHDOG=1, STOPPING=1, the
//! STATUS line and the reload protocol; log priorities as journald reads them.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use seatgate::admission::protocol::{Request, Response};

use super::util::*;

#[test]
fn socket_activation_and_notify_protocol() {
    let activate = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(activate).exists(),
        "{activate} is missing: `sudo scripts/test` installs Debian's systemd package"
    );
    let gw = Gateway::new(3);
    let notify_path = gw.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::fs::create_dir_all(gw.path("run")).unwrap();
    let child = Command::new(activate)
        .arg("-l")
        .arg(gw.socket())
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--setenv=WATCHDOG_USEC=200000")
        .args([bin(), "run", "--config"])
        .arg(gw.config_path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        socket: gw.socket(),
    };
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = notify.recv(&mut buf).expect("a notify message within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // systemd-socket-activate binds the socket and, like systemd, starts the
    // service on the first connection, passing the listening socket as fd 3.
    // That first connection queues until seatgate is up and answers it.
    let socket = gw.socket();
    wait_for("the activation socket", Duration::from_secs(5), || {
        socket.exists().then_some(())
    });
    assert!(matches!(
        call(&d.socket, &Request::Ping).unwrap(),
        Response::Pong(_)
    ));
    let first = recv();
    assert!(first.starts_with("READY=1"), "{first:?}");
    assert!(first.contains("STATUS=cap 5, in use 0"), "{first:?}");
    let pings = (0..3).map(|_| recv()).filter(|m| m == "WATCHDOG=1").count();
    assert_eq!(pings, 3, "watchdog pings every WATCHDOG_USEC/2");
    d.signal(Signal::SIGTERM);
    let stopping = (0..10).map(|_| recv()).find(|m| m == "STOPPING=1");
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    let (status, _) = d.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(
        gw.socket().exists(),
        "an activated socket belongs to systemd and is left in place"
    );
}

/// A fake notify socket: waits for the first message that `want` accepts.
struct Notify(UnixDatagram);

impl Notify {
    fn bind(path: &std::path::Path) -> Notify {
        let s = UnixDatagram::bind(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Notify(s)
    }

    fn until(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut buf = [0u8; 1024];
        let mut seen = Vec::new();
        loop {
            let n = self
                .0
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no notify message for {what} ({e}); seen {seen:?}"));
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if want(&m) {
                return m;
            }
            seen.push(m);
        }
    }
}

#[test]
fn status_line_follows_the_seats_and_reloads_report_refusal() {
    let gw = Gateway::new(0);
    let notify_path = gw.path("notify.sock");
    let notify = Notify::bind(&notify_path);
    // stderr is "the journal": a file whose device and inode JOURNAL_STREAM names.
    let log_path = gw.path("journal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&log)).unwrap();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(gw.config_path())
        .env_remove("SEATGATE_SOCKET")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        socket: gw.socket(),
    };
    let ready = notify.until("READY=1", |m| m.starts_with("READY=1"));
    assert_eq!(ready, "READY=1\nSTATUS=cap 2, in use 0");

    // The line follows the seats (checked once a second).
    let server = FakeServer::start(&gw.socket());
    for key in ["a", "b"] {
        assert!(admitted(&server.try_call(&server.admit(key)).unwrap()));
    }
    notify.until("the STATUS update", |m| m == "STATUS=cap 2, in use 2");
    assert!(!admitted(&server.try_call(&server.admit("c")).unwrap()));

    // A good reload: RELOADING=1 with the monotonic time, then READY=1.
    d.signal(Signal::SIGHUP);
    let reloading = notify.until("RELOADING=1", |m| m.starts_with("RELOADING=1"));
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    let done = notify.until("READY=1 after the reload", |m| m.starts_with("READY=1"));
    assert_eq!(done, "READY=1\nSTATUS=cap 2, in use 2");

    // A refused reload says so, and keeps saying so.
    std::fs::write(gw.config_path(), "device = 5\n").unwrap();
    d.signal(Signal::SIGHUP);
    notify.until("RELOADING=1", |m| m.starts_with("RELOADING=1"));
    let done = notify.until("READY=1 after the refused reload", |m| {
        m.starts_with("READY=1")
    });
    assert!(
        done.contains("STATUS=cap 2, in use 2; RELOAD REFUSED, previous config kept: config ")
            && done.contains("has 1 problem(s)"),
        "{done:?}"
    );

    d.signal(Signal::SIGTERM);
    wait_for("the daemon to exit", Duration::from_secs(10), || {
        d.child.try_wait().unwrap()
    });
    let journal = std::fs::read_to_string(&log_path).unwrap();
    let line = |what: &str| {
        journal
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in {journal}"))
            .to_string()
    };
    assert!(line("seatgate ready").starts_with("<6>"), "{journal}");
    // The first denial for want of seats is an error (usage alerts).
    let denying = line("denying new sessions");
    assert!(denying.starts_with("<3>"), "{denying}");
    assert!(denying.contains("reason=cap_reached"), "{denying}");
    let denied = line("seat denied");
    assert!(denied.starts_with("<6>"), "{denied}");
    assert!(denied.contains("reason=cap_reached"), "{denied}");
    assert!(line("reload refused").starts_with("<3>"), "{journal}");
    for l in journal.lines() {
        assert!(l.starts_with('<'), "every line carries its priority: {l:?}");
    }
}

#[test]
fn no_priority_prefix_unless_stderr_is_the_journal() {
    let gw = Gateway::new(0);
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(gw.config_path())
        .env_remove("SEATGATE_SOCKET")
        .env_remove("NOTIFY_SOCKET")
        // Inherited from a parent, but stderr is a pipe, not that stream.
        .env("JOURNAL_STREAM", "8:12345")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        socket: gw.socket(),
    };
    d.wait_ready();
    d.signal(Signal::SIGTERM);
    let (status, err) = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert!(err.contains("seatgate ready"), "{err}");
    assert!(!err.contains("<6>"), "{err}");
}
