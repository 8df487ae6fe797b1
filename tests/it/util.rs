//! Fixtures: a gateway on a temp dir (keys, signed bundle, a config made by
//! the one `ConfigBuilder`), the daemon running on it, either the real
//! `seatgate` binary (`Daemon`: signals, restarts, file modes) or
//! `seatgate::daemon::run` in this process (`InProcess`); readiness and
//! background rounds polled with a deadline, never slept for.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use seatgate::admission::protocol::{AdmitRequest, Request, Response, ServerKind, ServerRef};
use seatgate::license::bundle::{encode_public_key, sign, Bundle, FORMAT};
use seatgate::license::{Binding, License};
use seatgate::status::{Rounds, Status};

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

/// The one place tests write seatgate's TOML. Defaults: the test gateway
/// `DEVICE`, its bundle file, paths in the gateway's dir, dead servers
/// checked every 100 ms.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    device: String,
    trusted_key: String,
    log_level: Option<String>,
    bundle_file: bool,
    server_check_ms: u64,
    admission: String,
    cloud: Option<Cloud>,
    reconcile: Vec<String>,
    policy: String,
}

/// A `[cloud]` section: where and as whom, and how fast to poll.
#[derive(Debug, Clone)]
pub struct Cloud {
    pub addr: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub poll_ms: u64,
    pub max_backoff_ms: u64,
}

impl ConfigBuilder {
    pub fn new(key: &SigningKey) -> ConfigBuilder {
        ConfigBuilder {
            device: DEVICE.into(),
            trusted_key: encode_public_key(&key.verifying_key()),
            log_level: Some("info".into()),
            bundle_file: true,
            server_check_ms: 100,
            admission: String::new(),
            cloud: None,
            reconcile: Vec::new(),
            policy: String::new(),
        }
    }

    pub fn device(mut self, serial: &str) -> Self {
        self.device = serial.into();
        self
    }

    /// No `bundle_file`: licenses come from the cloud only.
    pub fn no_bundle_file(mut self) -> Self {
        self.bundle_file = false;
        self
    }

    pub fn server_check_ms(mut self, ms: u64) -> Self {
        self.server_check_ms = ms;
        self
    }

    /// More lines for `[admission]` (`key = value`, one per line).
    pub fn admission(mut self, lines: &str) -> Self {
        if !lines.is_empty() {
            self.admission.push_str(lines);
            self.admission.push('\n');
        }
        self
    }

    pub fn cloud(mut self, cloud: Cloud) -> Self {
        self.cloud = Some(cloud);
        self
    }

    /// One `[[reconcile]]` entry (its `key = value` lines).
    pub fn reconcile(mut self, lines: &str) -> Self {
        self.reconcile.push(lines.into());
        self
    }

    /// `[policy]` and `[[policy.group]]` lines, as they go in the file.
    pub fn policy(mut self, text: &str) -> Self {
        self.policy.push_str(text);
        self.policy.push('\n');
        self
    }

    pub fn build(&self) -> String {
        let mut t = format!("device = \"{}\"\n", self.device);
        if let Some(level) = &self.log_level {
            t += &format!("log_level = \"{level}\"\n");
        }
        t += &format!("[license]\ntrusted_keys = [\"{}\"]\n", self.trusted_key);
        if self.bundle_file {
            t += "bundle_file = \"bundle.json\"\n";
        }
        t += "[paths]\nsocket = \"run/seatgate.sock\"\nruntime_dir = \"run\"\nstate_dir = \"state\"\n";
        t += &format!(
            "[admission]\nserver_check_ms = {}\n{}",
            self.server_check_ms, self.admission
        );
        if let Some(c) = &self.cloud {
            t += &format!(
                "[cloud]\nurl = \"https://{}/\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\npoll_interval_ms = {}\nmax_backoff_ms = {}\nrequest_timeout_ms = 1000\n",
                c.addr,
                c.ca.display(),
                c.cert.display(),
                c.key.display(),
                c.poll_ms,
                c.max_backoff_ms,
            );
        }
        for r in &self.reconcile {
            t += &format!("[[reconcile]]\n{r}\n");
        }
        t + &self.policy
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.build()).unwrap();
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

    /// The builder for this gateway's config (its key, `extra_config`).
    pub fn config(&self) -> ConfigBuilder {
        ConfigBuilder::new(&self.key).admission(&self.extra_config)
    }

    /// Writes the default config (`config()`).
    pub fn write_config(&self) {
        self.config().write(&self.config_path());
    }

    /// Writes `config` as this gateway's config.
    pub fn write(&self, config: &ConfigBuilder) {
        config.write(&self.config_path());
    }

    /// Runs the daemon in this process (see `InProcess`).
    pub fn start_in_process(&self) -> InProcess {
        InProcess::start(self)
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

    pub fn status(&self) -> Status {
        status_of(&self.socket)
    }

    /// Status after `n` more dead-server checks (see `after_rounds`).
    pub fn after_reaps(&self, n: u64) -> Status {
        after_rounds(&self.socket, "dead-server checks", |r| r.reap, n)
    }

    /// Status after `n` more reconciliation rounds.
    pub fn after_reconciles(&self, n: u64) -> Status {
        after_rounds(&self.socket, "reconciliation rounds", |r| r.reconcile, n)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn status_of(socket: &Path) -> Status {
    match call(socket, &Request::Status).unwrap() {
        Response::Status(s) => Status::from_json(s.status).unwrap(),
        other => panic!("status expected, got {other:?}"),
    }
}

/// Proof that the daemon looked: waits until the round counter `count`
/// picks has grown by `n` since now, and returns the status then. A round
/// in progress when this is called may have read the old state, so a check
/// that "nothing changed" asks for 2: one round wholly after the change.
pub fn after_rounds(socket: &Path, what: &str, count: fn(&Rounds) -> u64, n: u64) -> Status {
    let start = count(&status_of(socket).rounds);
    wait_for(
        &format!("{n} more {what} (from {start})"),
        Duration::from_secs(10),
        || {
            let s = status_of(socket);
            (count(&s.rounds) >= start + n).then_some(s)
        },
    )
}

/// The daemon's `run` on a current-thread runtime in a thread of this test
/// process, stopped through its shutdown future: for behaviour over time
/// (rounds, steps, expiry) where a process boundary adds nothing. Logging
/// stays off (only the CLI calls `logging::init`).
///
/// Time here is real, not tokio's paused clock: the daemon's time-dependent
/// decisions read the wall clock (`Utc::now`, licenses) and `std::time::Instant`
/// (slice leases), and what it waits for is real (a process gone from /proc,
/// bytes on a socket). A paused clock would only make its intervals fire
/// back to back whenever the runtime idles on that real I/O. Tests wait for
/// the events the daemon counts instead (`after_rounds`).
pub struct InProcess {
    pub socket: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    pub fn start(gw: &Gateway) -> InProcess {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let config = gw.config_path();
        let thread = std::thread::Builder::new()
            .name("seatgate-daemon".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(seatgate::daemon::run(config, async {
                    let _ = rx.await;
                }))
            })
            .unwrap();
        let mut d = InProcess {
            socket: gw.socket(),
            shutdown: Some(tx),
            thread: Some(thread),
        };
        wait_for(
            "the in-process daemon to answer ping",
            Duration::from_secs(10),
            || {
                if d.thread.as_ref().is_some_and(|t| t.is_finished()) {
                    let result = d.thread.take().unwrap().join().unwrap();
                    panic!("the in-process daemon stopped at start: {result:?}");
                }
                matches!(call(&d.socket, &Request::Ping), Ok(Response::Pong(_))).then_some(())
            },
        );
        d
    }

    pub fn status(&self) -> Status {
        status_of(&self.socket)
    }

    /// Status after `n` more dead-server checks (see `after_rounds`).
    pub fn after_reaps(&self, n: u64) -> Status {
        after_rounds(&self.socket, "dead-server checks", |r| r.reap, n)
    }

    /// Resolves the shutdown future and returns what `run` returned.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.take().map(|tx| tx.send(()));
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.take().map(|tx| tx.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    kind: ServerKind,
}

impl FakeServer {
    pub fn start(daemon_socket: &Path) -> FakeServer {
        Self::start_as(daemon_socket, None)
    }

    /// The relay under a command name the daemon takes for OpenVPN's
    /// (`openvpn-fake`): its admissions name an OpenVPN server, whose
    /// sessions a `[[reconcile]]` openvpn entry can be asked to end.
    pub fn start_openvpn(daemon_socket: &Path) -> FakeServer {
        let dir = tempfile::Builder::new()
            .prefix("seatgate-fake-")
            .tempdir()
            .unwrap();
        let which = Command::new("which").arg("socat").output().unwrap();
        let socat = String::from_utf8(which.stdout).unwrap();
        let fake = dir.path().join("openvpn-fake");
        std::fs::copy(socat.trim(), &fake).unwrap();
        let mut server = Self::spawn(Command::new(&fake), dir, daemon_socket);
        server.kind = ServerKind::Openvpn;
        server
    }

    /// A server running as `uid` (its group the same number): a VPN
    /// server user, not root, as on a gateway.
    pub fn start_as(daemon_socket: &Path, uid: Option<u32>) -> FakeServer {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new()
            .prefix("seatgate-fake-")
            .tempdir()
            .unwrap();
        let mut cmd = Command::new("socat");
        if let Some(uid) = uid {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            cmd.uid(uid).gid(uid);
        }
        Self::spawn(cmd, dir, daemon_socket)
    }

    fn spawn(mut cmd: Command, dir: tempfile::TempDir, daemon_socket: &Path) -> FakeServer {
        let socket = dir.path().join("relay.sock");
        cmd.arg(format!("UNIX-LISTEN:{},fork,backlog=512", socket.display()))
            .arg(format!("UNIX-CONNECT:{}", daemon_socket.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("socat is needed for the daemon tests (scripts/test installs it)");
        // The file appears at bind(), before listen(): wait for the kernel
        // to list it as listening.
        wait_for("the relay to listen", Duration::from_secs(10), || {
            listening(&socket).then_some(())
        });
        FakeServer {
            child,
            socket,
            _dir: dir,
            kind: ServerKind::Other,
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
                kind: self.kind,
                pid: self.pid(),
            },
            remote: "192.0.2.7".into(),
            group: String::new(),
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

/// True when the kernel lists a listening Unix socket bound at `path`
/// (/proc/net/unix: flags `00010000` is `__SO_ACCEPTCON`).
pub fn listening(path: &Path) -> bool {
    let Some(path) = path.to_str() else {
        return false;
    };
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8 && f[3] == "00010000" && f[7] == path
        })
    })
}

/// Fails a test that needs root with the way to run it (never skips it).
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test {why}, which needs root; run `sudo scripts/test`"
    );
}

pub fn admitted(resp: &Response) -> bool {
    matches!(resp, Response::Admit(a) if a.admitted)
}

/// A stand-in OpenVPN management interface at `path` for the server `pid`:
/// it answers `pid`, lists no client in `status 3` (so every session asked
/// to end "had ended already"), and serves connections until the test ends.
pub fn empty_management(path: &Path, pid: u32) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut out = &stream;
            let _ = out.write_all(b">INFO:OpenVPN Management Interface\r\n");
            for line in BufReader::new(&stream).lines().map_while(Result::ok) {
                let answer = match line.trim() {
                    "pid" => format!("SUCCESS: pid={pid}\r\n"),
                    "status 3" => "HEADER\tCLIENT_LIST\tCommon Name\tVirtual Address\tConnected Since (time_t)\tClient ID\r\nEND\r\n".to_string(),
                    _ => break,
                };
                if out.write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
}
