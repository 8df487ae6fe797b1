//! The TOML config: a raw serde shape (unknown keys refused) validated once
//! into typed values. `parse` is pure; `load` adds the file system checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::alerts::{self, Thresholds};
use crate::license::bundle::parse_public_key;

mod keys;
pub mod policy;
use crate::license::in_force::Rules;
use crate::sys::users;

pub const DEFAULT_PATH: &str = "/etc/seatgate/seatgate.toml";
pub const DEFAULT_SOCKET: &str = "/run/seatgate/seatgate.sock";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/seatgate";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/seatgate";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    device: Option<String>,
    builtin_seats: Option<u32>,
    log_level: Option<String>,
    #[serde(default)]
    license: RawLicense,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    admission: RawAdmission,
    #[serde(default)]
    reconcile: Vec<RawReconcile>,
    cloud: Option<RawCloud>,
    #[serde(default)]
    alerts: RawAlerts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    thresholds: Option<Vec<i64>>,
    hysteresis: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    kind: Option<String>,
    management: Option<PathBuf>,
    occtl: Option<PathBuf>,
    occtl_socket: Option<PathBuf>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    poll_interval_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLicense {
    #[serde(default)]
    trusted_keys: Vec<String>,
    bundle_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    socket: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmission {
    over_cap: Option<OverCap>,
    over_cap_grace_ms: Option<u64>,
    max_connections: Option<usize>,
    idle_timeout_ms: Option<u64>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    vpn_users: Option<Vec<String>>,
    vpn_groups: Option<Vec<String>>,
    operator_groups: Option<Vec<String>>,
    status_public: Option<bool>,
    server_check_ms: Option<u64>,
    lock_wait_ms: Option<u64>,
}

/// What to do with sessions already admitted when the cap drops below them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverCap {
    /// Keep them; deny new sessions until usage is back under the cap.
    Drain,
    /// After `over_cap_grace_ms`, disconnect the newest sessions down to
    /// the cap (through the `[[reconcile]]` entries).
    DisconnectNewest,
    /// The same, oldest sessions first.
    DisconnectOldest,
}

/// The default `over_cap_grace_ms`: a license moved back, a bundle fixed
/// or a share redone within a minute disconnects nobody, and users who
/// were about to leave anyway get to.
pub const DEFAULT_OVER_CAP_GRACE_MS: u64 = 60_000;

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// This gateway's serial.
    pub device: String,
    pub builtin_seats: u32,
    pub log_level: String,
    pub trusted_keys: Vec<VerifyingKey>,
    pub bundle_file: Option<PathBuf>,
    pub socket: PathBuf,
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
    pub admission: Admission,
    /// The VPN servers whose own session lists are compared with the table.
    pub reconcile: Vec<Reconcile>,
    /// Cloud sync; `None` when the config has no `[cloud]` section.
    pub cloud: Option<Cloud>,
    /// Usage alert thresholds (`[alerts]`).
    pub alerts: Thresholds,
    /// Per-user limits and reserved seats (`[policy]`, docs/policy.md).
    pub policy: policy::SeatPolicy,
}

pub const DEFAULT_OCCTL: &str = "/usr/bin/occtl";

/// One `[[reconcile]]` entry: where a VPN server lists its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconcile {
    pub source: Source,
    /// How often the server is asked (the first time at start-up).
    pub interval: Duration,
    /// The longest one listing may take; slower answers are dropped.
    pub timeout: Duration,
    /// Sessions admitted less than this before a listing was asked for are
    /// kept even if it does not show them yet.
    pub grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// OpenVPN's management interface (`management PATH unix`).
    Openvpn { management: PathBuf },
    /// ocserv through `occtl` (`occtl [-s SOCKET] -j show users`).
    Ocserv {
        occtl: PathBuf,
        socket: Option<PathBuf>,
    },
}

impl Source {
    /// A short name for logs: the socket or the occtl socket.
    pub fn describe(&self) -> String {
        match self {
            Source::Openvpn { management } => format!("openvpn {}", management.display()),
            Source::Ocserv { occtl, socket } => match socket {
                Some(s) => format!("ocserv {} -s {}", occtl.display(), s.display()),
                None => format!("ocserv {}", occtl.display()),
            },
        }
    }
}

/// Where and how the daemon syncs its bundle with the cloud. Holds paths
/// only: the key itself is read once when the HTTPS client is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    /// Base URL (https); the endpoints are joined to it.
    pub url: reqwest::Url,
    /// The CA that signed the cloud's server certificate: the only trust anchor.
    pub ca_file: PathBuf,
    /// This gateway's client certificate (PEM), the CA-signed device identity.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
}

pub const DEFAULT_POLL_INTERVAL_MS: u64 = 15 * 60 * 1000;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 60 * 60 * 1000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 20 * 1000;

#[derive(Debug, Clone)]
pub struct Admission {
    pub over_cap: OverCap,
    /// How long the seats in use may exceed the cap before a
    /// disconnecting `over_cap` acts.
    pub over_cap_grace: Duration,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    /// Users whose processes may admit and release (the VPN servers' hooks).
    pub vpn_users: Vec<String>,
    pub vpn_groups: Vec<String>,
    /// Groups that may read status; root and the daemon's own user always may.
    pub operator_groups: Vec<String>,
    /// Let everyone on the gateway read status (read-only).
    pub status_public: bool,
    /// How often VPN server processes are checked for life.
    pub server_check: Duration,
    /// How long a starting daemon waits for another one on the same
    /// runtime directory to stop before it refuses to start.
    pub lock_wait: Duration,
}

/// One thing wrong with a config, with the key and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

/// Parses and validates config text. Relative paths are taken relative to
/// `base` (the config file's directory). Returns every problem found.
pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
    let (raw, mut problems, left_out, policy) = keys::read::<RawConfig>(text, "policy")?;
    let device = match raw.device {
        Some(d) if valid_serial(&d) => d,
        Some(d) => {
            problems.push(problem("device", format!("{d:?} is not a gateway serial; use letters, digits, '-' and '_' (1-64 characters)")));
            String::new()
        }
        None => {
            problems.push(problem(
                "device",
                "missing; set it to this gateway's serial, e.g. device = \"ESG-A1B2C3\"",
            ));
            String::new()
        }
    };
    let mut trusted_keys = Vec::new();
    for (i, k) in raw.license.trusted_keys.iter().enumerate() {
        match parse_public_key(k) {
            Ok(key) => trusted_keys.push(key),
            Err(e) => problems.push(problem(
                &format!("license.trusted_keys[{i}]"),
                format!("{e}; paste the public key printed by `seatgate bundle keygen`"),
            )),
        }
    }
    if trusted_keys.is_empty() && raw.license.bundle_file.is_some() {
        problems.push(problem(
            "license.trusted_keys",
            "empty, so no bundle can ever verify; add the license signer's public key",
        ));
    }
    let log_level = raw.log_level.unwrap_or_else(|| "info".into());
    if log_level
        .parse::<tracing_subscriber::filter::LevelFilter>()
        .is_err()
    {
        problems.push(problem(
            "log_level",
            format!("{log_level:?} is not a level; use error, warn, info, debug or trace"),
        ));
    }
    let a = raw.admission;
    let socket_mode = match a.socket_mode.as_deref().map(|m| u32::from_str_radix(m, 8)) {
        None => 0o660,
        Some(Ok(m)) if m <= 0o777 => m,
        Some(_) => {
            problems.push(problem(
                "admission.socket_mode",
                "must be an octal mode as a string, e.g. \"0660\"",
            ));
            0o660
        }
    };
    let max_connections = a.max_connections.unwrap_or(256);
    if max_connections == 0 {
        problems.push(problem("admission.max_connections", "must be at least 1"));
    }
    let idle_timeout = millis(
        &mut problems,
        "admission.idle_timeout_ms",
        a.idle_timeout_ms,
        30_000,
    );
    let server_check = millis(
        &mut problems,
        "admission.server_check_ms",
        a.server_check_ms,
        500,
    );
    let lock_wait = a
        .lock_wait_ms
        .map_or(Duration::from_secs(10), Duration::from_millis);
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let over_cap = a.over_cap.unwrap_or(OverCap::Drain);
    if over_cap != OverCap::Drain && raw.reconcile.is_empty() {
        problems.push(problem(
            "admission.over_cap",
            "disconnecting over the cap needs a [[reconcile]] entry for each VPN server to disconnect through; add them or use \"drain\"",
        ));
    }
    let reconcile: Vec<Reconcile> = raw
        .reconcile
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| reconcile_entry(&mut problems, i, r, &resolve))
        .collect();
    let cloud = raw
        .cloud
        .and_then(|c| parse_cloud(&mut problems, c, &resolve, trusted_keys.is_empty()));
    let alerts = match alerts::validate(
        &raw.alerts
            .thresholds
            .unwrap_or_else(|| alerts::DEFAULT_THRESHOLDS.map(i64::from).to_vec()),
        raw.alerts
            .hysteresis
            .unwrap_or(i64::from(alerts::DEFAULT_HYSTERESIS)),
    ) {
        Ok(a) => a,
        Err((key, message)) => {
            problems.push(problem(key, message));
            Thresholds::default()
        }
    };
    let ends = |ocserv: bool| {
        reconcile
            .iter()
            .any(|r| matches!(r.source, Source::Ocserv { .. }) == ocserv)
    };
    let policy = policy::read(policy, text, &mut problems).ending(ends(false), ends(true));
    if policy.at_user_limit == policy::AtUserLimit::ReplaceOldest && reconcile.is_empty() {
        problems.push(problem(
            "policy.at_user_limit",
            "replacing a user's oldest session needs a [[reconcile]] entry for each VPN server to disconnect it through (else the old tunnel stays up without a seat); add them or use \"refuse\"",
        ));
    }
    let config = Config {
        device,
        builtin_seats: raw.builtin_seats.unwrap_or(2),
        log_level,
        trusted_keys,
        bundle_file: raw.license.bundle_file.map(resolve),
        socket: resolve(raw.paths.socket.unwrap_or_else(|| DEFAULT_SOCKET.into())),
        runtime_dir: resolve(
            raw.paths
                .runtime_dir
                .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into()),
        ),
        state_dir: resolve(
            raw.paths
                .state_dir
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        ),
        admission: Admission {
            over_cap,
            over_cap_grace: Duration::from_millis(
                a.over_cap_grace_ms.unwrap_or(DEFAULT_OVER_CAP_GRACE_MS),
            ),
            max_connections,
            idle_timeout,
            socket_mode,
            socket_group: a.socket_group,
            vpn_users: a.vpn_users.unwrap_or_else(|| vec!["root".into()]),
            vpn_groups: a.vpn_groups.unwrap_or_default(),
            operator_groups: a.operator_groups.unwrap_or_else(|| vec!["adm".into()]),
            status_public: a.status_public.unwrap_or(false),
            server_check,
            lock_wait,
        },
        reconcile,
        cloud,
        alerts,
        policy,
    };
    // A key of the wrong type was reported as such (the first problems):
    // not again as missing.
    let mut index = 0;
    problems.retain(|p| {
        index += 1;
        index <= left_out.len() || !left_out.contains(&p.key)
    });
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn parse_cloud(
    problems: &mut Vec<Problem>,
    c: RawCloud,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    no_trusted_keys: bool,
) -> Option<Cloud> {
    let before = problems.len();
    let url = match c.url.as_deref().map(reqwest::Url::parse) {
        None => {
            problems.push(problem(
                "cloud.url",
                "missing; set the cloud's base URL, e.g. url = \"https://cloud.example.com/\", or remove [cloud]",
            ));
            None
        }
        Some(Err(e)) => {
            problems.push(problem(
                "cloud.url",
                format!("not a URL ({e}); write it as https://host[:port]/[path]"),
            ));
            None
        }
        Some(Ok(u)) if u.scheme() != "https" => {
            problems.push(problem(
                "cloud.url",
                format!(
                    "scheme {:?} is not allowed; the cloud is reached over https only",
                    u.scheme()
                ),
            ));
            None
        }
        Some(Ok(u)) if !u.username().is_empty() || u.password().is_some() => {
            problems.push(problem(
                "cloud.url",
                "must not carry a user or password; the gateway authenticates with client_cert",
            ));
            None
        }
        Some(Ok(u)) if u.query().is_some() || u.fragment().is_some() => {
            problems.push(problem(
                "cloud.url",
                "must not have a query or fragment; give the base URL only",
            ));
            None
        }
        Some(Ok(mut u)) => {
            // A base without a trailing slash would lose its last segment when joined.
            if !u.path().ends_with('/') {
                let path = format!("{}/", u.path());
                u.set_path(&path);
            }
            Some(u)
        }
    };
    let mut file = |key: &str, value: Option<PathBuf>, what: &str| match value {
        Some(p) => Some(resolve(p)),
        None => {
            problems.push(problem(
                &format!("cloud.{key}"),
                format!("missing; set it to {what}"),
            ));
            None
        }
    };
    let ca_file = file(
        "ca_file",
        c.ca_file,
        "the PEM file of the CA that signed the cloud's server certificate",
    );
    let client_cert = file(
        "client_cert",
        c.client_cert,
        "this gateway's client certificate (PEM) issued by the cloud",
    );
    let client_key = file(
        "client_key",
        c.client_key,
        "the private key (PEM) of client_cert",
    );
    let poll_interval = millis(
        problems,
        "cloud.poll_interval_ms",
        c.poll_interval_ms,
        DEFAULT_POLL_INTERVAL_MS,
    );
    let max_backoff = millis(
        problems,
        "cloud.max_backoff_ms",
        c.max_backoff_ms,
        DEFAULT_MAX_BACKOFF_MS,
    );
    let request_timeout = millis(
        problems,
        "cloud.request_timeout_ms",
        c.request_timeout_ms,
        DEFAULT_REQUEST_TIMEOUT_MS,
    );
    if no_trusted_keys && !problems.iter().any(|p| p.key == "license.trusted_keys") {
        problems.push(problem(
            "license.trusted_keys",
            "empty, so no bundle from the cloud can ever verify; add the license signer's public key",
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(Cloud {
        url: url?,
        ca_file: ca_file?,
        client_cert: client_cert?,
        client_key: client_key?,
        poll_interval,
        max_backoff,
        request_timeout,
    })
}

fn millis(problems: &mut Vec<Problem>, key: &str, value: Option<u64>, default: u64) -> Duration {
    match value {
        Some(0) => {
            problems.push(problem(key, "must be at least 1 (milliseconds)"));
            Duration::from_millis(default)
        }
        v => Duration::from_millis(v.unwrap_or(default)),
    }
}

/// Validates one `[[reconcile]]` entry; None (with problems) when unusable.
fn reconcile_entry(
    problems: &mut Vec<Problem>,
    i: usize,
    r: RawReconcile,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Option<Reconcile> {
    let key = |name: &str| format!("reconcile[{i}].{name}");
    let before = problems.len();
    let interval = millis(problems, &key("interval_ms"), r.interval_ms, 5_000);
    let timeout = millis(problems, &key("timeout_ms"), r.timeout_ms, 2_000);
    let grace = Duration::from_millis(r.grace_ms.unwrap_or(2_000));
    if timeout >= interval {
        problems.push(problem(
            &key("timeout_ms"),
            format!(
                "{} ms is not shorter than interval_ms ({} ms); lower it or raise interval_ms",
                timeout.as_millis(),
                interval.as_millis()
            ),
        ));
    }
    let only = |problems: &mut Vec<Problem>, name: &str, set: bool, kind: &str| {
        if set {
            problems.push(problem(
                &key(name),
                format!("only for kind = \"{kind}\"; remove it"),
            ));
        }
    };
    let source = match r.kind.as_deref() {
        Some("openvpn") => {
            only(problems, "occtl", r.occtl.is_some(), "ocserv");
            only(problems, "occtl_socket", r.occtl_socket.is_some(), "ocserv");
            match r.management {
                Some(m) => Some(Source::Openvpn {
                    management: resolve(m),
                }),
                None => {
                    problems.push(problem(&key("management"), "missing; set it to the path of the server's `management PATH unix` line, e.g. \"/run/openvpn/server.sock\""));
                    None
                }
            }
        }
        Some("ocserv") => {
            only(problems, "management", r.management.is_some(), "openvpn");
            Some(Source::Ocserv {
                occtl: resolve(r.occtl.unwrap_or_else(|| DEFAULT_OCCTL.into())),
                socket: r.occtl_socket.map(resolve),
            })
        }
        Some(other) => {
            problems.push(problem(
                &key("kind"),
                format!("{other:?} is not a VPN server kind; use \"openvpn\" or \"ocserv\""),
            ));
            None
        }
        None => {
            problems.push(problem(&key("kind"), "missing; set kind = \"openvpn\" (management interface) or kind = \"ocserv\" (occtl)"));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(Reconcile {
        source: source?,
        interval,
        timeout,
        grace,
    })
}

fn valid_serial(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Where the config comes from: `--config`, else `SEATGATE_CONFIG`, else the default.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SEATGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| DEFAULT_PATH.into())
}

/// Reads, parses and checks a config file, including what only the file
/// system can tell (the bundle file exists, the users and groups exist).
/// `SEATGATE_SOCKET` overrides the socket path.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
    let mut config = parse(&text, base).map_err(invalid)?;
    if let Some(socket) = std::env::var_os("SEATGATE_SOCKET") {
        config.socket = socket.into();
    }
    let problems = check_config_on_host(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(problems))
    }
}

/// Checks what only the host can tell about a config: the bundle file is
/// there, the named users and groups exist.
pub fn check_config_on_host(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(path) = &config.bundle_file {
        if !path.is_file() {
            problems.push(Problem {
                key: "license.bundle_file".into(),
                message: format!(
                    "{} does not exist; point it at a signed bundle or remove the key",
                    path.display()
                ),
            });
        }
    }
    if let Some(cloud) = &config.cloud {
        problems.extend(check_cloud_files(cloud));
    }
    let a = &config.admission;
    for (i, name) in a.vpn_users.iter().enumerate() {
        if users::uid_of(name).is_none() {
            problems.push(Problem {
                key: format!("admission.vpn_users[{i}]"),
                message: format!("no user {name:?} on this host; name the user your VPN server runs its scripts as"),
            });
        }
    }
    let groups = [
        ("admission.vpn_groups", &a.vpn_groups),
        ("admission.operator_groups", &a.operator_groups),
    ];
    for (key, list) in groups {
        for (i, name) in list.iter().enumerate() {
            if users::gid_of(name).is_none() {
                problems.push(Problem {
                    key: format!("{key}[{i}]"),
                    message: format!("no group {name:?} on this host; create it or remove it"),
                });
            }
        }
    }
    if let Some(name) = &a.socket_group {
        if users::gid_of(name).is_none() {
            problems.push(Problem {
                key: "admission.socket_group".into(),
                message: format!("no group {name:?} on this host; create it or remove the key"),
            });
        }
    }
    for (i, r) in config.reconcile.iter().enumerate() {
        if let Source::Ocserv { occtl, .. } = &r.source {
            if !occtl.is_file() {
                problems.push(Problem {
                    key: format!("reconcile[{i}].occtl"),
                    message: format!(
                        "{} does not exist; install ocserv (it ships occtl) or point occtl at it",
                        occtl.display()
                    ),
                });
            }
        }
    }
    problems
}

/// The cloud's files exist, and the client key is not readable by everyone.
fn check_cloud_files(cloud: &Cloud) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt;
    let mut problems = Vec::new();
    let files = [
        (
            "cloud.ca_file",
            &cloud.ca_file,
            "the cloud's CA certificate (PEM)",
        ),
        (
            "cloud.client_cert",
            &cloud.client_cert,
            "this gateway's client certificate (PEM)",
        ),
        (
            "cloud.client_key",
            &cloud.client_key,
            "the client certificate's private key (PEM)",
        ),
    ];
    for (key, path, what) in files {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {
                if key == "cloud.client_key" && m.permissions().mode() & 0o004 != 0 {
                    problems.push(Problem {
                        key: key.into(),
                        message: format!(
                            "{} is readable by every user; chmod 600 it (owned by the daemon's user)",
                            path.display()
                        ),
                    });
                }
            }
            _ => problems.push(Problem {
                key: key.into(),
                message: format!(
                    "{} does not exist or is not a file; install {what} there",
                    path.display()
                ),
            }),
        }
    }
    problems
}

/// `check-config`'s look at the cloud identity (not `load`'s: a daemon
/// with a wrong certificate still serves the bundle it has, and the cloud's
/// refusal shows in status).
pub fn check_identity(config: &Config) -> Vec<Problem> {
    match &config.cloud {
        Some(c) if c.client_cert.is_file() && c.client_key.is_file() => {
            check_cloud_identity(c, &config.device)
        }
        _ => Vec::new(),
    }
}

/// The client certificate is for this device (its subject CN is the serial,
/// as the cloud issues them) and the client key is its key.
fn check_cloud_identity(cloud: &Cloud, device: &str) -> Vec<Problem> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let problem = |key: &str, message: String| Problem {
        key: key.into(),
        message,
    };
    let cert = match CertificateDer::from_pem_file(&cloud.client_cert) {
        Ok(c) => c,
        Err(e) => {
            return vec![problem(
                "cloud.client_cert",
                format!(
                    "{}: not a PEM certificate ({e})",
                    cloud.client_cert.display()
                ),
            )]
        }
    };
    let mut problems = Vec::new();
    match subject_cn(&cert) {
        Some(cn) if cn == device => {}
        Some(cn) => problems.push(problem(
            "cloud.client_cert",
            format!(
                "certificate is for {}, this gateway is {device}; install this gateway's own certificate and key",
                crate::text::shown(&cn)
            ),
        )),
        None => problems.push(problem(
            "cloud.client_cert",
            format!(
                "{}: no subject CN (the cloud names the device there); install the certificate the cloud issued for {device}",
                cloud.client_cert.display()
            ),
        )),
    }
    let key = match PrivateKeyDer::from_pem_file(&cloud.client_key) {
        Ok(k) => k,
        Err(e) => {
            problems.push(problem(
                "cloud.client_key",
                format!(
                    "{}: not a PEM private key ({e})",
                    cloud.client_key.display()
                ),
            ));
            return problems;
        }
    };
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(vec![cert], key, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => problems.push(problem(
            "cloud.client_key",
            "does not match cloud.client_cert; install the key the certificate was issued for"
                .into(),
        )),
        Err(e) => problems.push(problem(
            "cloud.client_key",
            format!(
                "{}: not a usable private key ({e})",
                cloud.client_key.display()
            ),
        )),
    }
    problems
}

/// The subject CN of a DER certificate, read with a minimal DER walk (the
/// gateway needs nothing else from a certificate: no X.509 crate for it).
pub fn subject_cn(der: &[u8]) -> Option<String> {
    /// One DER element: (tag, contents, the bytes after it).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |l, b| l << 8 | usize::from(*b));
            rest = &rest[n..];
            len
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() && fields.len() < 7 {
        let (tag, value, rest) = tlv(tbs)?;
        fields.push((tag, value));
        tbs = rest;
    }
    // [0] version (optional), serial, signature, issuer, validity, subject.
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let mut rdns = fields.get(skip + 4)?.1;
    while !rdns.is_empty() {
        let (_, mut set, rest) = tlv(rdns)?;
        rdns = rest;
        while !set.is_empty() {
            let (_, atv, rest) = tlv(set)?;
            set = rest;
            let (tag, oid, value) = tlv(atv)?;
            if tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = tlv(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

impl Config {
    /// The licensing rules this config sets.
    pub fn license_rules(&self) -> Rules {
        Rules {
            device: self.device.clone(),
            trusted_keys: self.trusted_keys.clone(),
            builtin: self.builtin_seats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("device = \"ESG-A1\"", Path::new("/etc/seatgate")).unwrap();
        assert_eq!(c.device, "ESG-A1");
        assert_eq!(c.builtin_seats, 2);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.admission.socket_mode, 0o660);
        assert_eq!(c.admission.over_cap, OverCap::Drain);
        assert_eq!(c.admission.over_cap_grace, Duration::from_secs(60));
        assert_eq!(c.admission.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn over_cap_policies() {
        let entry = "[[reconcile]]\nkind = \"ocserv\"\n";
        for (policy, want) in [
            ("drain", OverCap::Drain),
            ("disconnect_newest", OverCap::DisconnectNewest),
            ("disconnect_oldest", OverCap::DisconnectOldest),
        ] {
            let text = format!("device = \"D\"\n[admission]\nover_cap = \"{policy}\"\nover_cap_grace_ms = 1500\n{entry}");
            let c = parse(&text, Path::new("/")).unwrap();
            assert_eq!(c.admission.over_cap, want);
            assert_eq!(c.admission.over_cap_grace, Duration::from_millis(1500));
        }
        // Nothing to disconnect through.
        let text = "device = \"D\"\n[admission]\nover_cap = \"disconnect_newest\"\n";
        let e = parse(text, Path::new("/")).unwrap_err();
        assert!(
            e.iter()
                .any(|p| p.key == "admission.over_cap" && p.message.contains("[[reconcile]]")),
            "{e:?}"
        );
        let text = "device = \"D\"\n[admission]\nover_cap = \"kill_all\"\n";
        assert!(parse(text, Path::new("/")).is_err());
        // The same for replacing a user's oldest session.
        let text = "device = \"D\"\n[policy]\nmax_sessions_per_user = 1\nat_user_limit = \"replace_oldest\"\n";
        let e = parse(text, Path::new("/")).unwrap_err();
        assert!(
            e.iter()
                .any(|p| p.key == "policy.at_user_limit" && p.message.contains("[[reconcile]]")),
            "{e:?}"
        );
        assert!(parse(&format!("{text}{entry}"), Path::new("/")).is_ok());
    }

    #[test]
    fn alerts_default_and_are_validated() {
        let c = parse("device = \"D\"", Path::new("/")).unwrap();
        assert_eq!(c.alerts, Thresholds::default());
        let c = parse(
            "device = \"D\"\n[alerts]\nthresholds = [50, 75]\nhysteresis = 0\n",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.alerts.thresholds, [50, 75]);
        assert_eq!(c.alerts.hysteresis, 0);
        for (text, key) in [
            ("thresholds = []", "alerts.thresholds"),
            ("thresholds = [90, 80]", "alerts.thresholds"),
            ("thresholds = [80, 120]", "alerts.thresholds"),
            ("hysteresis = 60", "alerts.hysteresis"),
        ] {
            let problems = parse(
                &format!("device = \"D\"\n[alerts]\n{text}\n"),
                Path::new("/"),
            )
            .unwrap_err();
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].key, key, "{text}");
        }
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let text = format!(
            "device = \"D\"\n[license]\ntrusted_keys = [\"{KEY}\"]\nbundle_file = \"b.json\"\n[paths]\nsocket = \"run/s.sock\"\n"
        );
        let c = parse(&text, Path::new("/opt/demo")).unwrap();
        assert_eq!(c.bundle_file, Some(PathBuf::from("/opt/demo/b.json")));
        assert_eq!(c.socket, PathBuf::from("/opt/demo/run/s.sock"));
        assert_eq!(c.trusted_keys.len(), 1);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = "device = \"bad serial!\"\nlog_level = \"loud\"\n[license]\ntrusted_keys = [\"xyz\"]\nbundle_file = \"b\"\n[admission]\nsocket_mode = \"999\"\nmax_connections = 0\nidle_timeout_ms = 0\n";
        let problems = parse(text, Path::new("/")).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "device",
                "license.trusted_keys[0]",
                "license.trusted_keys",
                "log_level",
                "admission.socket_mode",
                "admission.max_connections",
                "admission.idle_timeout_ms"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_name_the_line() {
        let problems = parse(
            "device = \"D\"\n\n[admission]\nmax_conections = 3\n",
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(problems[0].key, "admission.max_conections (line 4)");
        assert!(
            problems[0].message.contains(
                "unknown key \"max_conections\"; the keys here are over_cap, over_cap_grace_ms, max_connections"
            ),
            "{:?}",
            problems[0]
        );
        let problems = parse("device = ", Path::new("/")).unwrap_err();
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn reconcile_entries() {
        let text = "device = \"D\"\n[[reconcile]]\nkind = \"openvpn\"\nmanagement = \"/run/openvpn/server.sock\"\n[[reconcile]]\nkind = \"ocserv\"\nocctl_socket = \"occtl.sock\"\ninterval_ms = 1000\ntimeout_ms = 500\ngrace_ms = 0\n";
        let c = parse(text, Path::new("/etc/seatgate")).unwrap();
        assert_eq!(
            c.reconcile,
            vec![
                Reconcile {
                    source: Source::Openvpn {
                        management: "/run/openvpn/server.sock".into()
                    },
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(2),
                    grace: Duration::from_secs(2),
                },
                Reconcile {
                    source: Source::Ocserv {
                        occtl: DEFAULT_OCCTL.into(),
                        socket: Some("/etc/seatgate/occtl.sock".into())
                    },
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_millis(500),
                    grace: Duration::ZERO,
                },
            ]
        );
        assert!(parse("device = \"D\"", Path::new("/"))
            .unwrap()
            .reconcile
            .is_empty());
    }

    #[test]
    fn reconcile_problems_name_the_entry_and_key() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["reconcile[0].kind"]),
            ("kind = \"wireguard\"", &["reconcile[0].kind"]),
            ("kind = \"openvpn\"", &["reconcile[0].management"]),
            (
                "kind = \"openvpn\"\nmanagement = \"/m\"\nocctl = \"/o\"",
                &["reconcile[0].occtl"],
            ),
            (
                "kind = \"ocserv\"\nmanagement = \"/m\"",
                &["reconcile[0].management"],
            ),
            (
                "kind = \"ocserv\"\ninterval_ms = 0",
                &["reconcile[0].interval_ms"],
            ),
            (
                "kind = \"ocserv\"\ninterval_ms = 1000\ntimeout_ms = 1000",
                &["reconcile[0].timeout_ms"],
            ),
        ];
        for (entry, want) in cases {
            let text = format!("device = \"D\"\n[[reconcile]]\n{entry}\n");
            let problems = parse(&text, Path::new("/")).unwrap_err();
            let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(&keys, want, "{entry}: {problems:?}");
        }
        let problems = parse(
            "device = \"D\"\n[[reconcile]]\nkind = \"openvpn\"\nmanagment = \"/m\"\n",
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(problems[0].key, "reconcile[0].managment (line 4)");
        assert!(problems[0].message.contains("unknown key"), "{problems:?}");
        // Every problem in one pass, in the config's words.
        let problems = parse(
            "device = 5\nbuiltin_seats = \"2\"\n[admission]\nmax_connections = -1\nstatus_public = \"yes\"\nsocket_mode = \"9\"\n",
            Path::new("/"),
        )
        .unwrap_err();
        let got: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            got,
            [
                "admission.max_connections (line 4): -1 is out of range; expected a whole number from 0 to 18446744073709551615",
                "admission.status_public (line 5): expected true or false, got a string (\"yes\")",
                "builtin_seats (line 2): expected a whole number, got a string (\"2\")",
                "device (line 1): expected a string (in quotes), got a whole number (5)",
                "admission.socket_mode: must be an octal mode as a string, e.g. \"0660\"",
            ]
        );
    }

    #[test]
    fn missing_device_says_what_to_do() {
        let problems = parse("", Path::new("/")).unwrap_err();
        assert_eq!(problems[0].key, "device");
        assert!(problems[0].message.contains("serial"));
    }

    #[test]
    fn cloud_section_is_validated_into_typed_values() {
        let text = format!(
            "device = \"D\"\n[license]\ntrusted_keys = [\"{KEY}\"]\n[cloud]\nurl = \"https://cloud.example/api\"\nca_file = \"ca.pem\"\nclient_cert = \"/etc/seatgate/device.crt\"\nclient_key = \"device.key\"\npoll_interval_ms = 60000\n"
        );
        let c = parse(&text, Path::new("/opt/demo")).unwrap().cloud.unwrap();
        assert_eq!(c.url.as_str(), "https://cloud.example/api/");
        assert_eq!(c.ca_file, PathBuf::from("/opt/demo/ca.pem"));
        assert_eq!(c.client_cert, PathBuf::from("/etc/seatgate/device.crt"));
        assert_eq!(c.client_key, PathBuf::from("/opt/demo/device.key"));
        assert_eq!(c.poll_interval, Duration::from_secs(60));
        assert_eq!(c.max_backoff, Duration::from_millis(DEFAULT_MAX_BACKOFF_MS));
        assert_eq!(
            c.request_timeout,
            Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS)
        );
        assert!(parse("device = \"D\"", Path::new("/"))
            .unwrap()
            .cloud
            .is_none());
    }

    #[test]
    fn cloud_problems_name_their_keys() {
        let keys = |cloud: &str| -> Vec<String> {
            let text = format!("device = \"D\"\n[cloud]\n{cloud}");
            parse(&text, Path::new("/"))
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect()
        };
        let files = "ca_file = \"a\"\nclient_cert = \"b\"\nclient_key = \"c\"\n";
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            (
                "empty section",
                String::new(),
                vec!["cloud.url: missing", "cloud.ca_file: missing", "cloud.client_cert: missing", "cloud.client_key: missing", "license.trusted_keys: empty"],
            ),
            ("plain http", format!("url = \"http://c/\"\n{files}"), vec!["cloud.url: scheme \"http\" is not allowed", "license.trusted_keys"]),
            ("not a url", format!("url = \"cloud\"\n{files}"), vec!["cloud.url: not a URL", "license.trusted_keys"]),
            ("credentials", format!("url = \"https://u:p@c/\"\n{files}"), vec!["cloud.url: must not carry a user or password", "license.trusted_keys"]),
            ("query", format!("url = \"https://c/?a=1\"\n{files}"), vec!["cloud.url: must not have a query", "license.trusted_keys"]),
            ("zero times", format!("url = \"https://c/\"\n{files}poll_interval_ms = 0\nmax_backoff_ms = 0\nrequest_timeout_ms = 0\n"), vec!["cloud.poll_interval_ms: must be at least 1", "cloud.max_backoff_ms: must be at least 1", "cloud.request_timeout_ms: must be at least 1", "license.trusted_keys"]),
        ];
        for (name, cloud, want) in cases {
            let got = keys(&cloud);
            assert_eq!(got.len(), want.len(), "{name}: {got:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(g.starts_with(w), "{name}: {g:?} does not start with {w:?}");
            }
        }
    }

    #[test]
    fn client_certificate_must_be_this_devices_and_match_its_key() {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let cert_for = |serial: &str, key: &KeyPair| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, serial);
            params.self_signed(key).unwrap().pem()
        };
        let (k1, k2) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let cloud = |cert: &str, key: &str| Cloud {
            url: "https://c/".parse().unwrap(),
            ca_file: dir.path().join("ca.pem"),
            client_cert: write("c.pem", cert),
            client_key: write("c.key", key),
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        let got = |c: &Cloud| -> Vec<String> {
            check_cloud_identity(c, "ESG-A1")
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect()
        };
        let a1 = cert_for("ESG-A1", &k1);
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(a1.as_bytes()).unwrap();
        let der: rustls::pki_types::CertificateDer = der;
        assert_eq!(subject_cn(&der).as_deref(), Some("ESG-A1"));
        assert_eq!(subject_cn(b"\x30\x05junk"), None);
        assert!(got(&cloud(&a1, &k1.serialize_pem())).is_empty());
        let wrong = got(&cloud(&cert_for("ESG-B2", &k1), &k1.serialize_pem()));
        assert_eq!(wrong.len(), 1, "{wrong:?}");
        assert!(
            wrong[0].starts_with(
                "cloud.client_cert: certificate is for ESG-B2, this gateway is ESG-A1"
            ),
            "{wrong:?}"
        );
        let mismatch = got(&cloud(&a1, &k2.serialize_pem()));
        assert_eq!(mismatch.len(), 1, "{mismatch:?}");
        assert!(
            mismatch[0].starts_with("cloud.client_key: does not match cloud.client_cert"),
            "{mismatch:?}"
        );
        let garbage = got(&cloud("not pem", "not pem"));
        assert!(garbage[0].starts_with("cloud.client_cert:"), "{garbage:?}");
    }
}
