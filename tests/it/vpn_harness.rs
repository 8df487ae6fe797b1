//! Real VPN servers for the integration tests: a private network namespace
//! per test (a holder process from `unshare --net`, everything else joins it
//! with `nsenter`), optionally with a pid namespace of its own for the
//! servers (a container: `unshare --pid --fork --mount-proc`; the clients
//! and the daemon stay in the host pid namespace), a throwaway PKI (tests/vpn/mkpki.sh), configs rendered
//! from tests/vpn/*.tmpl, OpenVPN and ocserv servers and clients. Every
//! wait has a deadline; Drop stops exactly the processes started here.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::util::{bin, wait_for};

const TOOLS: &[&str] = &[
    "openvpn",
    "ocserv",
    "occtl",
    "openconnect",
    "openssl",
    "ip",
    "unshare",
    "nsenter",
    "socat",
];

/// Fails with a clear message when a tool or root is missing.
pub fn require_tools() {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the VPN integration tests need {missing:?}; run `sudo scripts/test`, which installs them \
         (apt-get install openvpn ocserv openconnect socat iproute2 util-linux openssl)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "the VPN integration tests need root (network namespaces, tun devices) and fail without it; \
         run `sudo scripts/test`"
    );
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn vpn_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vpn")
}

/// A process started in the namespace, stopped in Drop (TERM, then KILL).
pub struct Proc {
    pub name: String,
    /// What we spawned: the process itself, or for a server in the pid
    /// namespace the `nsenter` (host side) whose child it is.
    pub child: Child,
    /// The process itself, by its host pid (signals go here).
    target: u32,
    pub log: PathBuf,
}

impl Proc {
    /// The process's pid in the host (the daemon's) pid namespace.
    pub fn pid(&self) -> u32 {
        self.target
    }

    /// The pid the process sees for itself (in its own pid namespace).
    pub fn ns_pid(&self) -> u32 {
        seatgate::sys::process::read(self.target)
            .map(|p| p.own_pid())
            .unwrap_or_else(|| panic!("{} is gone", self.name))
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.target as i32), sig);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains one of `needles`; returns its index.
    pub fn wait_log(&self, needles: &[&str], limit: Duration) -> usize {
        wait_for(
            &format!("{} log to show one of {needles:?}", self.name),
            limit,
            || {
                let text = self.log_text();
                needles.iter().position(|n| text.contains(n))
            },
        )
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited() {
            return;
        }
        self.signal(Signal::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
    }

    /// SIGKILL to the process itself (nsenter then exits with it); reaps.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // ocserv needs ~2.5 s to reap its workers on SIGTERM; the rest exit at once.
        self.stop(Duration::from_secs(4));
    }
}

/// A private network namespace with `lo` up, a work dir and a PKI; with
/// `with_pid_ns`, also a pid (and mount, for its /proc) namespace where
/// the servers run.
pub struct Netns {
    holder: Child,
    /// The pid namespace's init (`sleep`, pid 1 inside), by its host pid.
    init: Option<u32>,
    pub dir: tempfile::TempDir,
}

impl Netns {
    /// `clients`: how many client certificates (client1..clientN) to issue.
    pub fn new(clients: usize) -> Netns {
        Self::create(clients, false)
    }

    /// The same, and servers started here run in a pid namespace of their
    /// own (as in a container); clients stay in the host pid namespace.
    pub fn with_pid_ns(clients: usize) -> Netns {
        Self::create(clients, true)
    }

    fn create(clients: usize, pid_ns: bool) -> Netns {
        require_tools();
        let mut unshare = Command::new("unshare");
        unshare.arg("--net");
        if pid_ns {
            // --kill-child: the namespace (its init, so every process in
            // it) dies with the holder.
            unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
        }
        let mut holder = unshare
            .args([
                "--",
                "sh",
                "-c",
                "ip link set lo up && echo ready && exec sleep 600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot run unshare");
        let mut line = String::new();
        use std::io::BufRead;
        let out = holder.stdout.take().unwrap();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("could not create a network namespace with lo up (unshare --net as root)");
        }
        let init = pid_ns.then(|| only_child(holder.id(), "the pid namespace's init"));
        let dir = tempfile::Builder::new()
            .prefix("seatgate-vpn-")
            .tempdir()
            .unwrap();
        let ns = Netns { holder, init, dir };
        let out = Command::new(vpn_dir().join("mkpki.sh"))
            .arg(ns.path("pki"))
            .arg(clients.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mkpki.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // ocserv's workers run as nobody and read the server key.
        std::fs::set_permissions(
            ns.path("pki/server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(
            ns.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        ns
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command that runs `program` inside the network namespace (in the
    /// host pid namespace: clients, occtl).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.holder.id()))
            .arg("--")
            .arg(program);
        c
    }

    /// A command that runs `program` where the servers run: the network
    /// namespace and, with `with_pid_ns`, the pid and mount namespaces too
    /// (nsenter forks; `program` is its child there).
    pub fn server_command(&self, program: &str) -> Command {
        match self.init {
            None => self.command(program),
            Some(init) => {
                let mut c = Command::new("nsenter");
                c.arg("-t")
                    .arg(init.to_string())
                    .args(["--net", "--pid", "--mount", "--"])
                    .arg(program);
                c
            }
        }
    }

    /// The pid namespace's init, by its host pid (None without one).
    pub fn init_pid(&self) -> Option<u32> {
        self.init
    }

    /// Makes `pid` the next pid the servers' pid namespace hands out
    /// (`ns_last_pid`, written from inside it): the next process started
    /// there, and nothing else forks there meanwhile, gets that number.
    pub fn set_next_pid(&self, pid: u32) {
        assert!(self.init.is_some(), "no pid namespace of its own");
        let out = self
            .server_command("sh")
            .arg("-c")
            .arg(format!("echo {} > /proc/sys/kernel/ns_last_pid", pid - 1))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot set ns_last_pid: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Spawns a server (`cmd` from `server_command`); in a pid namespace
    /// the returned Proc signals the server, not the nsenter outside.
    pub fn spawn_server(&self, name: &str, cmd: Command) -> Proc {
        let mut proc = self.spawn(name, cmd);
        if self.init.is_some() {
            proc.target = only_child(proc.child.id(), &format!("{name} under nsenter"));
        }
        proc
    }

    /// Spawns `cmd` with stdout+stderr to `name.log` in the work dir.
    pub fn spawn(&self, name: &str, mut cmd: Command) -> Proc {
        let log = self.path(&format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.into(),
            target: child.id(),
            child,
            log,
        }
    }

    fn render(&self, template: &str, out: &str, vars: &[(&str, &str)]) -> PathBuf {
        let mut text = std::fs::read_to_string(vpn_dir().join(template)).unwrap();
        for (k, v) in vars {
            text = text.replace(k, v);
        }
        let path = self.path(out);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The one child of `parent` (waits up to 5 s for it to appear).
fn only_child(parent: u32, what: &str) -> u32 {
    wait_for(
        what,
        Duration::from_secs(5),
        || match seatgate::sys::process::children(parent)[..] {
            [one] => Some(one),
            _ => None,
        },
    )
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The hook command line for a server config: `seatgate hook KIND` with its
/// absolute path (OpenVPN passes hooks no PATH).
/// Adds an OpenVPN `[[reconcile]]` entry (the namespace's management
/// socket, asked every `interval_ms`) to a gateway's config.
pub fn reconcile_openvpn(config: &Path, ns: &Netns, interval_ms: u64) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "[[reconcile]]\nkind = \"openvpn\"\nmanagement = \"{}\"\ninterval_ms = {interval_ms}\ntimeout_ms = 400\ngrace_ms = 1000\n",
        ns.path("mgmt.sock").display()
    ));
    std::fs::write(config, text).unwrap();
}

pub fn seatgate_hook(kind: &str) -> String {
    format!("\"{} hook {kind}\"", bin())
}

pub const OPENVPN_PORT: &str = "1194";

/// The OpenVPN plugin (`libseatgate_openvpn.so`), built once per test run
/// with `cargo build -p seatgate-openvpn` into this test binary's target
/// directory (the dev profile: it unwinds on panic, as the plugin must).
pub fn plugin_so() -> &'static Path {
    static SO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SO.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // <target>/debug/deps/it-HASH
        let target = exe.ancestors().nth(3).unwrap().to_path_buf();
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--locked",
                "--quiet",
                "-p",
                "seatgate-openvpn",
                "--target-dir",
            ])
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cannot run cargo");
        assert!(
            out.status.success(),
            "cargo build -p seatgate-openvpn failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let so = target.join("debug/libseatgate_openvpn.so");
        assert!(so.is_file(), "no plugin at {}", so.display());
        so
    })
}

/// The `plugin` line for the seatgate plugin talking to `socket`.
pub fn seatgate_plugin(socket: &Path, extra: &str) -> String {
    format!(
        "{} socket={} {extra}",
        plugin_so().display(),
        socket.display()
    )
}

/// An OpenVPN 2.6 server over TCP (disconnects are seen at once).
pub struct OpenvpnServer {
    pub proc: Proc,
    pub management: PathBuf,
}

impl OpenvpnServer {
    /// `hook`: the client-connect/-disconnect command; `socket`: the
    /// seatgate socket given to it with `setenv SEATGATE_SOCKET`.
    pub fn start(ns: &Netns, hook: &str, socket: &Path) -> OpenvpnServer {
        Self::start_with(ns, hook, socket, "")
    }

    /// The same with `extra` lines at the end of its config (e.g.
    /// `duplicate-cn`, `setenv SEATGATE_GROUP_VAR common_name`).
    pub fn start_with(ns: &Netns, hook: &str, socket: &Path, extra: &str) -> OpenvpnServer {
        let conf = Self::config(ns, hook, socket);
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{text}{extra}\n")).unwrap();
        Self::run(ns, conf)
    }

    /// The same server with `plugin LINE` (the seatgate plugin) in place
    /// of the client-connect/-disconnect scripts.
    pub fn start_plugin(ns: &Netns, plugin: &str) -> OpenvpnServer {
        let conf = Self::config(ns, "/bin/false", Path::new("/nonexistent"));
        let text: String = std::fs::read_to_string(&conf)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("client-connect ") && !l.starts_with("client-disconnect "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&conf, format!("{text}plugin {plugin}\n")).unwrap();
        Self::run(ns, conf)
    }

    fn config(ns: &Netns, hook: &str, socket: &Path) -> PathBuf {
        let dir = ns.dir.path().to_string_lossy().into_owned();
        ns.render(
            "openvpn-server.conf.tmpl",
            "server.conf",
            &[
                ("@DIR@", &dir),
                ("@PROTO@", "tcp4-server"),
                ("@PORT@", OPENVPN_PORT),
                ("@HOOK@", hook),
                ("@SOCK@", &socket.to_string_lossy()),
            ],
        )
    }

    fn run(ns: &Netns, conf: PathBuf) -> OpenvpnServer {
        let mut cmd = ns.server_command("openvpn");
        cmd.arg("--config").arg(conf);
        let proc = ns.spawn_server("server", cmd);
        proc.wait_log(
            &[
                "Initialization Sequence Completed",
                "Exiting due to fatal error",
            ],
            Duration::from_secs(10),
        );
        assert!(
            proc.log_text()
                .contains("Initialization Sequence Completed"),
            "openvpn server did not start:\n{}",
            proc.log_text()
        );
        OpenvpnServer {
            proc,
            management: ns.path("mgmt.sock"),
        }
    }
}

/// How an OpenVPN client run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    AuthFailed,
}

/// Starts OpenVPN client `clientN` over TCP; `extra` lines go at the end of
/// its config (e.g. `data-ciphers AES-192-GCM`).
pub fn openvpn_client(ns: &Netns, n: usize, extra: &str) -> Proc {
    openvpn_client_as(ns, n, &format!("client{n}"), extra)
}

/// Starts an OpenVPN client named `name` (its config and log) with the
/// certificate of `clientN`: several clients may share one certificate
/// (a server with `duplicate-cn` admits them all).
pub fn openvpn_client_as(ns: &Netns, n: usize, name: &str, extra: &str) -> Proc {
    let dir = ns.dir.path().to_string_lossy().into_owned();
    let cert = format!("client{n}");
    let conf = ns.render(
        "openvpn-client.conf.tmpl",
        &format!("{name}.conf"),
        &[
            ("@DIR@", &dir),
            ("@PROTO@", "tcp4-client"),
            ("@PORT@", OPENVPN_PORT),
            ("@CLIENT@", &cert),
            // UDP-only option; TCP sees the close at once.
            ("explicit-exit-notify 1", ""),
        ],
    );
    if !extra.is_empty() {
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(extra);
        text.push('\n');
        std::fs::write(&conf, text).unwrap();
    }
    let mut cmd = ns.command("openvpn");
    cmd.arg("--config").arg(conf);
    ns.spawn(name, cmd)
}

/// Waits for an OpenVPN client to connect or be refused (judged by its log:
/// the exit code is 0 either way).
pub fn outcome(client: &Proc, limit: Duration) -> Outcome {
    match client.wait_log(&["Initialization Sequence Completed", "AUTH_FAILED"], limit) {
        0 => Outcome::Connected,
        _ => Outcome::AuthFailed,
    }
}

/// How long a client may take to connect or be refused.
pub const CONNECT: Duration = Duration::from_secs(20);

/// Waits for every client's outcome and checks that exactly `connected`
/// of them got in (the server's log in the failure message).
pub fn expect_connected(clients: &[Proc], connected: usize, server: &Proc) -> Vec<Outcome> {
    let outcomes: Vec<Outcome> = clients.iter().map(|c| outcome(c, CONNECT)).collect();
    let n = outcomes
        .iter()
        .filter(|o| **o == Outcome::Connected)
        .count();
    assert_eq!(
        n,
        connected,
        "outcomes {outcomes:?}; server log:\n{}",
        server.log_text()
    );
    outcomes
}

pub const OCSERV_PORT: &str = "4443";

/// ocserv 1.1.6 with plain password auth for `users` (user1:pass1, ...).
pub struct Ocserv {
    pub proc: Proc,
    pub occtl_socket: PathBuf,
}

impl Ocserv {
    pub fn start(ns: &Netns, users: usize, hook: &str, socket: &Path) -> Ocserv {
        Self::start_with_groups(ns, &vec![""; users], hook, socket)
    }

    /// The same with user N (from 1) in the plain-auth group `groups[N-1]`
    /// ("" for none): ocserv then reports it as GROUPNAME.
    pub fn start_with_groups(ns: &Netns, groups: &[&str], hook: &str, socket: &Path) -> Ocserv {
        let dir = ns.dir.path().to_string_lossy().into_owned();
        let mut mk = Command::new(vpn_dir().join("mkocpasswd.sh"));
        mk.arg(ns.path("ocpasswd"));
        for (i, g) in groups.iter().enumerate() {
            let i = i + 1;
            match *g {
                "" => mk.arg(format!("user{i}:pass{i}")),
                g => mk.arg(format!("user{i}:pass{i}:{g}")),
            };
        }
        assert!(mk.status().unwrap().success(), "mkocpasswd.sh failed");
        // ocserv.conf takes the script path without arguments: a wrapper.
        let wrapper = ns.path("ocserv-hook.sh");
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec {hook}\n")).unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let conf = ns.render(
            "ocserv.conf.tmpl",
            "ocserv.conf",
            &[
                ("@DIR@", &dir),
                ("@PORT@", OCSERV_PORT),
                ("@HOOK@", &wrapper.to_string_lossy()),
            ],
        );
        let mut cmd = ns.server_command("env");
        cmd.args(["-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .arg(format!("SEATGATE_SOCKET={}", socket.display()))
            .args(["ocserv", "-f", "-c"])
            .arg(conf);
        let proc = ns.spawn_server("ocserv", cmd);
        let occtl_socket = ns.path("occtl.sock");
        wait_for("ocserv to answer occtl", Duration::from_secs(10), || {
            let ok = ns
                .command("occtl")
                .arg("-s")
                .arg(&occtl_socket)
                .args(["show", "status"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(())
        });
        Ocserv { proc, occtl_socket }
    }
}

/// Starts openconnect as `userN`; connected when its log says "Configured as".
pub fn openconnect(ns: &Netns, n: usize, tag: &str) -> Proc {
    let pw = ns.path(&format!("pw{n}"));
    std::fs::write(&pw, format!("pass{n}\n")).unwrap();
    let mut cmd = ns.command("sh");
    cmd.arg("-c").arg(format!(
        "exec openconnect --non-inter --passwd-on-stdin --no-dtls --reconnect-timeout 1 \
         -u user{n} --cafile {} --script /bin/true https://127.0.0.1:{OCSERV_PORT}/ < {}",
        ns.path("pki/ca.crt").display(),
        pw.display()
    ));
    ns.spawn(&format!("oc-user{n}-{tag}"), cmd)
}
