//! The systemd protocol with the real binary: socket activation through
//! Debian's `systemd-socket-activate` (no systemd as PID 1 needed) and a
//! fake NOTIFY_SOCKET that records READY=1, WATCHDOG=1 and STOPPING=1.

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
    assert!(first.contains("STATUS=cap 5 in use 0"), "{first:?}");
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
