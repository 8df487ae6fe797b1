//! Fixtures: a gateway on a temp dir (keys, signed bundle, config) and the
//! real `seatgate` binary running on it; readiness polled with a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use seatgate::admission::protocol::{AdmitRequest, Request, Response, ServerKind, ServerRef};
use seatgate::license::bundle::{encode_public_key, sign, Bundle, FORMAT};
use seatgate::license::{Binding, License};

pub const DEVICE: &str = "ESG-TEST";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_seatgate")
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Polls `f` every 10 ms until it returns Some, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An active `spc` license for DEVICE with `seats`, activated a month ago.
pub fn spc(id: &str, seats: u32) -> License {
    let start = Utc::now() - chrono::Duration::days(30);
    License {
        id: id.into(),
        product: "spc".into(),
        sku: "SPC-1YR-LIC".into(),
        seats,
        term_days: 365,
        issued_at: start - chrono::Duration::days(1),
        associated_at: Some(start),
        activated_at: Some(start),
        device: DEVICE.into(),
        binding: Binding::Bound,
        pool: None,
    }
}

pub fn bundle(generation: u64, licenses: Vec<License>) -> Bundle {
    Bundle {
        format: FORMAT,
        device: DEVICE.into(),
        org: "ORG-T".into(),
        generation,
        issued_at: Utc::now() - chrono::Duration::minutes(1),
        not_after: Utc::now() + chrono::Duration::days(30),
        licenses,
    }
}

/// A gateway's files in a temp dir: signing key, config, bundle file.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub extra_config: String,
}

impl Gateway {
    /// A gateway whose bundle grants `licensed` seats on top of the 2 built-in.
    pub fn new(licensed: u32) -> Gateway {
        Self::with_config(licensed, "")
    }

    pub fn with_config(licensed: u32, admission_extra: &str) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("seatgate-it-")
            .tempdir()
            .unwrap();
        let gw = Gateway {
            dir,
            key: SigningKey::from_bytes(&[42; 32]),
            extra_config: admission_extra.into(),
        };
        let lics = if licensed > 0 {
            vec![spc("LIC-1", licensed)]
        } else {
            vec![]
        };
        gw.write_bundle(&bundle(1, lics));
        gw.write_config();
        gw
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/seatgate.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("seatgate.toml")
    }

    pub fn write_bundle(&self, b: &Bundle) {
        std::fs::write(self.path("bundle.json"), sign(b, &self.key).to_json()).unwrap();
    }

    pub fn write_config(&self) {
        let text = format!(
            "device = \"{DEVICE}\"\nlog_level = \"info\"\n[license]\ntrusted_keys = [\"{}\"]\nbundle_file = \"bundle.json\"\n[paths]\nsocket = \"run/seatgate.sock\"\nruntime_dir = \"run\"\nstate_dir = \"state\"\n[admission]\nserver_check_ms = 100\n{}\n",
            encode_public_key(&self.key.verifying_key()),
            self.extra_config
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Starts the real daemon and waits until it answers.
    pub fn start(&self) -> Daemon {
        let d = self.spawn("warn");
        d.wait_ready();
        d
    }

    /// Starts the real daemon with a log level, without waiting for it.
    pub fn spawn(&self, log: &str) -> Daemon {
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(self.config_path())
            .env_remove("SEATGATE_SOCKET")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon {
            child,
            socket: self.socket(),
        }
    }

    /// Runs a seatgate subcommand against this gateway's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env_remove("SEATGATE_SOCKET")
            .output()
            .unwrap()
    }
}

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn wait_ready(&self) {
        wait_for("the daemon to answer ping", Duration::from_secs(10), || {
            matches!(call(&self.socket, &Request::Ping), Ok(Response::Pong(_))).then_some(())
        });
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGSTOP, and wait until every thread is stopped (the signal is
    /// delivered asynchronously; a thread may still answer meanwhile).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.child.id());
        wait_for("the daemon to stop", Duration::from_secs(5), || {
            let all_stopped = std::fs::read_dir(&tasks).ok()?.all(|t| {
                let stat = t
                    .ok()
                    .and_then(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                    .unwrap_or_default();
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next());
                matches!(state, Some("T") | Some("t"))
            });
            all_stopped.then_some(())
        });
    }

    /// Waits for the process to exit and returns its stderr.
    pub fn wait_exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let status = wait_for("the daemon to exit", limit, || {
            self.child.try_wait().unwrap()
        });
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn status(&self) -> seatgate::status::Status {
        match call(&self.socket, &Request::Status).unwrap() {
            Response::Status(s) => serde_json::from_value(s.status).unwrap(),
            other => panic!("status expected, got {other:?}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn call(
    socket: &Path,
    req: &Request,
) -> Result<Response, seatgate::admission::client::ClientError> {
    seatgate::admission::client::call(socket, req, Duration::from_secs(5))
}

/// A stand-in VPN server process: sessions name it, killing it must free
/// them. The daemon accepts a server only where the kernel shows it: the
/// calling process itself or one of its ancestors. So the stand-in is a
/// `socat` relay whose forked children carry each connection to the
/// daemon: requests sent through `socket()` come from its own children.
pub struct FakeServer {
    pub child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeServer {
    pub fn start(daemon_socket: &Path) -> FakeServer {
        Self::start_as(daemon_socket, None)
    }

    /// A server running as `uid` (its group the same number): a VPN
    /// server user, not root, as on a gateway.
    pub fn start_as(daemon_socket: &Path, uid: Option<u32>) -> FakeServer {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new()
            .prefix("seatgate-fake-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("relay.sock");
        let mut cmd = Command::new("socat");
        cmd.arg(format!("UNIX-LISTEN:{},fork,backlog=512", socket.display()))
            .arg(format!("UNIX-CONNECT:{}", daemon_socket.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        if let Some(uid) = uid {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            cmd.uid(uid).gid(uid);
        }
        let child = cmd
            .spawn()
            .expect("socat is needed for the daemon tests (scripts/test installs it)");
        // Listening, not just bound (a connect between socat's bind and
        // listen is refused): the kernel's socket table says which.
        wait_for("the relay to listen", Duration::from_secs(10), || {
            listening(&socket).then_some(())
        });
        FakeServer {
            child,
            socket,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where to connect to talk to the daemon as this server's hook.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn admit(&self, key: &str) -> Request {
        Request::Admit(AdmitRequest {
            key: key.into(),
            user: format!("user-{key}"),
            server: ServerRef {
                kind: ServerKind::Other,
                pid: self.pid(),
            },
            remote: "192.0.2.7".into(),
        })
    }

    /// Sends a request as this server's hook.
    pub fn try_call(
        &self,
        req: &Request,
    ) -> Result<Response, seatgate::admission::client::ClientError> {
        call(&self.socket, req)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Unix socket is listening at `path` (/proc/net/unix: the
/// `__SO_ACCEPTCON` flag).
pub fn listening(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let path = path.to_string_lossy();
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[7] == path && f[3] == "00010000"
    })
}

pub fn admitted(resp: &Response) -> bool {
    matches!(resp, Response::Admit(a) if a.admitted)
}
