//! The `seatgate` command line: parses arguments and runs one subcommand.
//! Errors end here, printed with their causes; exit code 1 (2 for usage).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::admission::client;
use crate::admission::protocol::{Request, Response};
use crate::config;
use crate::hook;
use crate::license::bundle::{self, Bundle, Signed};
use crate::license::disk;
use crate::license::report::LicenseReport;
use crate::store;
use crate::text::shown;

#[derive(Parser)]
#[command(
    name = "seatgate",
    version,
    about = "SecuPoint VPN client seat enforcer for EnGenius ESG gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Config file [default: $SEATGATE_CONFIG or /etc/seatgate/seatgate.toml]
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (in the foreground; systemd supervises it).
    Run(ConfigArg),
    /// Show cap, seats in use, the next cap change and who holds a seat.
    Status {
        #[command(flatten)]
        target: SocketArg,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Peak seats in use per hour and per day against the cap, as a chart.
    Usage {
        #[command(flatten)]
        target: SocketArg,
        /// Days to show (one row each; the daemon keeps 400).
        #[arg(long, value_name = "N", default_value_t = 14)]
        days: usize,
        /// Hours to show (one row each; the daemon keeps 168; 0: none).
        #[arg(long, value_name = "N", default_value_t = 24)]
        hours: usize,
        /// Print JSON for scripts (the same hours and days).
        #[arg(long)]
        json: bool,
    },
    /// Print the status as Prometheus metrics (text exposition format).
    Metrics {
        #[command(flatten)]
        target: SocketArg,
        /// Write them to FILE atomically (mode 0644), e.g. for
        /// node_exporter's textfile collector, instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Operator: end a session (the key as `status` shows it) or every
    /// session of a user through the VPN server that holds it, and free
    /// its seat; or with --lost free the seats of sessions lost with a
    /// damaged snapshot.
    Evict {
        #[command(flatten)]
        target: SocketArg,
        /// The session key, as `seatgate status` lists it.
        #[arg(
            value_name = "KEY",
            required_unless_present_any = ["lost", "user"],
            conflicts_with_all = ["lost", "user"]
        )]
        key: Option<String>,
        /// Every session of this user (the USER column of `seatgate status`).
        #[arg(long, value_name = "NAME", conflicts_with = "lost")]
        user: Option<String>,
        /// Free the seats status shows as lost (check first that the VPN
        /// servers hold no more sessions than status lists).
        #[arg(long)]
        lost: bool,
    },
    /// Monitoring plugin (Nagios, Icinga): one line with perfdata; exit 0
    /// OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Check {
        /// Config file, for the socket path [default: $SEATGATE_CONFIG or /etc/seatgate/seatgate.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Socket path [default: $SEATGATE_SOCKET, else the config's, else /run/seatgate/seatgate.sock]
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// WARNING at this percentage of the cap in use [default: the first [alerts] threshold]
        #[arg(short = 'w', long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
        warning: Option<u8>,
        /// CRITICAL at this percentage of the cap in use [default: the second [alerts] threshold, else 100]
        #[arg(short = 'c', long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
        critical: Option<u8>,
    },
    /// The VPN server's hook: exit 0 admits, 1 rejects.
    #[command(subcommand)]
    Hook(HookCmd),
    /// Check a config file and print every problem found.
    CheckConfig(ConfigArg),
    /// Show the licenses in force, the seat cap and its timeline.
    Licenses {
        #[command(flatten)]
        config: ConfigArg,
        /// Evaluate at this date (YYYY-MM-DD: midnight UTC) or instant
        /// (RFC 3339, e.g. 2027-07-01T12:00:00Z) instead of now.
        #[arg(long, value_name = "DATE|RFC3339", value_parser = parse_at)]
        at: Option<DateTime<Utc>>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make, sign and verify license bundles (air-gapped gateways, demos, tests).
    #[command(subcommand)]
    Bundle(BundleCmd),
}

#[derive(Subcommand)]
enum HookCmd {
    /// OpenVPN client-connect and client-disconnect (script-security 2).
    Openvpn(HookArgs),
    /// ocserv connect-script and disconnect-script.
    Ocserv(HookArgs),
}

#[derive(clap::Args)]
struct HookArgs {
    /// Socket path [default: $SEATGATE_SOCKET, else /run/seatgate/seatgate.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Give up after this long [default: $SEATGATE_HOOK_TIMEOUT_MS, else 500]
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// When the daemon cannot answer [default: $SEATGATE_HOOK_ON_ERROR, else reject]
    #[arg(long, value_enum)]
    on_error: Option<hook::OnError>,
    /// Ignored: what the server appends (OpenVPN gives client-connect the
    /// path of a config file it may write; seatgate writes none).
    #[arg(value_name = "SERVER_ARGS")]
    _server_args: Vec<std::ffi::OsString>,
}

#[derive(clap::Args)]
struct SocketArg {
    #[command(flatten)]
    config: ConfigArg,
    /// Socket path [default: $SEATGATE_SOCKET, else the config's, else /run/seatgate/seatgate.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl SocketArg {
    fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| std::env::var_os("SEATGATE_SOCKET").map(PathBuf::from))
            .or_else(|| {
                let path = config::locate(self.config.config.as_deref());
                let text = std::fs::read_to_string(&path).ok()?;
                config::parse(&text, path.parent()?).ok().map(|c| c.socket)
            })
            .unwrap_or_else(|| config::DEFAULT_SOCKET.into())
    }
}

#[derive(Subcommand)]
enum BundleCmd {
    /// Generate an Ed25519 key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen {
        /// Path and name without extension: writes PREFIX.key and PREFIX.pub.
        #[arg(value_name = "PREFIX")]
        prefix: PathBuf,
    },
    /// Sign an unsigned bundle (JSON) with a secret key.
    Sign {
        /// The secret key file (PREFIX.key from keygen; never the .pub).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The unsigned bundle (fields: docs/bundle.md).
        #[arg(value_name = "BUNDLE.json")]
        input: PathBuf,
        /// Where to write the signed bundle.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify a signed bundle and show what it grants to its device now.
    Verify {
        /// Public key file (as written by keygen) ...
        #[arg(long, value_name = "FILE", conflicts_with = "config")]
        public_key: Option<PathBuf>,
        /// ... or the trusted keys and device of a config.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// The signed bundle to check.
        #[arg(value_name = "SIGNED.json")]
        input: PathBuf,
    },
}

/// The command definitions, for the man pages and completions (xtask/).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// stdout was closed by its reader (`seatgate status | head -1`).
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
struct ClosedStdout;

/// Writes to stdout; a closed pipe becomes `ClosedStdout` instead of the
/// panic `print!` would raise.
fn write_out(args: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedStdout.into()),
        r => r.context("cannot write to stdout"),
    }
}

macro_rules! out {
    ($($t:tt)*) => { write_out(format_args!($($t)*))? };
}

macro_rules! outln {
    ($($t:tt)*) => { write_out(format_args!("{}\n", format_args!($($t)*)))? };
}

/// `--at`: a date (midnight UTC) or an RFC 3339 instant.
fn parse_at(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!("{text:?} is not a date (2027-07-01, midnight UTC) or an RFC 3339 time (2027-07-01T12:00:00Z)")
        })
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // A monitoring plugin's usage errors are UNKNOWN (3).
            let plugin = std::env::args().nth(1).as_deref() == Some("check");
            return if e.use_stderr() {
                ExitCode::from(if plugin { 3 } else { 2 })
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match dispatch(cli.command) {
        Ok(code) => code,
        // The reader went away (`| head`): done, quietly, as ripgrep does.
        Err(e) if e.is::<ClosedStdout>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seatgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(c) => run(c.config.as_deref()),
        Command::Status { target, json } => status(&target.path(), json),
        Command::Evict {
            target, key, user, ..
        } => evict(&target.path(), key, user),
        Command::Usage {
            target,
            days,
            hours,
            json,
        } => usage(&target.path(), days, hours, json),
        Command::Metrics { target, output } => metrics(&target.path(), output.as_deref()),
        Command::Hook(cmd) => {
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            let (name, args, action) = match cmd {
                HookCmd::Openvpn(a) => ("openvpn", a, hook::openvpn::action(&env)),
                HookCmd::Ocserv(a) => ("ocserv", a, hook::ocserv::action(&env)),
            };
            let (settings, warnings) =
                hook::Settings::resolve(&env, args.socket, args.timeout_ms, args.on_error);
            Ok(hook::run(name, action, &settings, &warnings))
        }
        Command::CheckConfig(c) => check_config(c.config.as_deref()),
        Command::Check {
            config,
            socket,
            warning,
            critical,
        } => {
            let target = SocketArg {
                config: ConfigArg { config },
                socket,
            };
            let limits = crate::check::Limits { warning, critical };
            check(&target.path(), limits)
        }
        Command::Licenses { config, at, json } => licenses(config.config.as_deref(), at, json),
        Command::Bundle(cmd) => bundle_cmd(cmd),
    }
}

fn run(flag: Option<&Path>) -> Result<ExitCode> {
    let path = config::locate(flag);
    let config = config::load(&path)?;
    crate::logging::init(&config.log_level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::daemon::run(path, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot listen for SIGTERM/SIGINT; stopping");
        }
    }
}

const OPERATOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// An eviction waits for the VPN servers (each within its entry's timeout).
const EVICT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The daemon's status, decoded.
fn fetch_status(socket: &Path) -> Result<crate::status::Status> {
    match client::call(socket, &Request::Status, OPERATOR_TIMEOUT)? {
        Response::Status(s) => crate::status::Status::from_json(s.status).with_context(|| {
            format!(
                "{}: the status answer is not one this seatgate reads (a different version?)",
                socket.display()
            )
        }),
        Response::Error(e) => bail!("{}: {}", socket.display(), e.error.message),
        other => bail!("{}: unexpected answer {other:?}", socket.display()),
    }
}

fn metrics(socket: &Path, output: Option<&Path>) -> Result<ExitCode> {
    let status = match (fetch_status(socket), output) {
        (Ok(s), _) => s,
        (Err(e), None) => return Err(e),
        // The collector file must not go on showing the last numbers.
        (Err(e), Some(path)) => {
            if let Err(w) =
                store::write_atomic(path, crate::metrics::render_down().as_bytes(), 0o644)
            {
                eprintln!("seatgate: cannot write {}: {w}", path.display());
            }
            return Err(e);
        }
    };
    let text = crate::metrics::render(&status);
    match output {
        None => out!("{text}"),
        // The textfile collector must never read half a file.
        Some(path) => store::write_atomic(path, text.as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", path.display()))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn usage(socket: &Path, days: usize, hours: usize, json: bool) -> Result<ExitCode> {
    use crate::usage::{chart, ChartStyle, Report, Span, DAYS, HOURS};
    use std::io::IsTerminal;
    let report: Report = match client::call(socket, &Request::Usage, OPERATOR_TIMEOUT)? {
        Response::Usage(u) => serde_json::from_value(u.usage).with_context(|| {
            format!(
                "{}: the usage answer is not one this seatgate reads (a different version?)",
                socket.display()
            )
        })?,
        Response::Error(e) => bail!("{}: {}", socket.display(), e.error.message),
        other => bail!("{}: unexpected answer {other:?}", socket.display()),
    };
    let (days, hours) = (days.min(DAYS), hours.min(HOURS));
    if json {
        let recent = Report {
            history: report.history.recent(report.now, hours, days),
            ..report
        };
        outln!("{}", serde_json::to_string_pretty(&recent)?);
        return Ok(ExitCode::SUCCESS);
    }
    let style = ChartStyle {
        width: 40,
        colour: std::io::stdout().is_terminal(),
    };
    outln!(
        "seats in use now: {} of {}; peaks (in use/cap at the peak), UTC",
        report.in_use,
        report.cap
    );
    if hours > 0 {
        let rows = report.rows(Span::Hour, hours);
        out!(
            "\n{}",
            chart(&format!("last {hours} hours"), Span::Hour, &rows, style)
        );
    }
    if days > 0 {
        let rows = report.rows(Span::Day, days);
        out!(
            "\n{}",
            chart(&format!("last {days} days"), Span::Day, &rows, style)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status(socket: &Path, json: bool) -> Result<ExitCode> {
    match client::call(socket, &Request::Status, OPERATOR_TIMEOUT)? {
        Response::Status(s) if json => outln!("{}", serde_json::to_string_pretty(&s.status)?),
        Response::Status(s) => {
            let status = crate::status::Status::from_json(s.status).with_context(|| {
                format!(
                    "{}: the status answer is not one this seatgate reads (a different version?)",
                    socket.display()
                )
            })?;
            out!("{}", status.render_text())
        }
        Response::Error(e) => bail!("{}: {}", socket.display(), e.error.message),
        other => bail!("{}: unexpected answer {other:?}", socket.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `seatgate check`: never an error exit of its own; every failure is
/// one of the plugin states (crate::check).
fn check(socket: &Path, limits: crate::check::Limits) -> Result<ExitCode> {
    use crate::check;
    let verdict = match client::call(socket, &Request::Status, OPERATOR_TIMEOUT) {
        Err(e) => check::unreachable(&e),
        Ok(Response::Status(s)) => match crate::status::Status::from_json(s.status) {
            Ok(status) => check::judge(&status, limits),
            Err(e) => check::unknown(&format!(
                "{}: cannot read the status answer (a different seatgate version?): {e}",
                socket.display()
            )),
        },
        Ok(Response::Error(e)) => {
            check::unknown(&format!("{}: {}", socket.display(), e.error.message))
        }
        Ok(other) => check::unknown(&format!(
            "{}: unexpected answer {other:?}",
            socket.display()
        )),
    };
    outln!("{}", verdict.line);
    Ok(ExitCode::from(verdict.state as u8))
}

fn evict(socket: &Path, key: Option<String>, user: Option<String>) -> Result<ExitCode> {
    let request = match (&key, &user) {
        (None, None) => Request::ForgetLost,
        _ => Request::Evict {
            key: key.clone(),
            user: user.clone(),
        },
    };
    let what = match (key, user) {
        (Some(k), _) => format!("session {k:?}"),
        (None, Some(u)) => format!("user {u:?}"),
        (None, None) => "the lost sessions' seats".to_string(),
    };
    // The servers are asked in turn, each within its [[reconcile]] timeout.
    match client::call(socket, &request, EVICT_TIMEOUT)? {
        Response::Release(r) => match r.sessions.as_ref().and_then(|s| s.as_array()) {
            // An evict answer: what became of each session it matched.
            Some(sessions) if !sessions.is_empty() => {
                let text =
                    |s: &serde_json::Value, k: &str| shown(s[k].as_str().unwrap_or_default());
                for s in sessions {
                    outln!(
                        "{} ({}): {}",
                        text(s, "key"),
                        text(s, "user"),
                        text(s, "message")
                    );
                }
                outln!("{} seats in use", r.in_use);
                if sessions.iter().any(|s| s["outcome"] == "failed") {
                    return Ok(ExitCode::FAILURE);
                }
            }
            _ if r.released && r.sessions.is_none() => {
                outln!("released {what}; {} seats in use", r.in_use)
            }
            _ => bail!("{what}: nothing holds a seat (see `seatgate status`)"),
        },
        Response::Error(e) => bail!("{}: {}", socket.display(), e.error.message),
        other => bail!("{}: unexpected answer {other:?}", socket.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The config, then the bundle file it names, judged as the daemon would
/// judge it (signature against the trusted keys, device, generation, issue
/// time); every problem found is printed. Exit 1 when the daemon would
/// refuse the config or the bundle file.
fn check_config(flag: Option<&Path>) -> Result<ExitCode> {
    let path = config::locate(flag);
    let c = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let identity = config::check_identity(&c);
    if !identity.is_empty() {
        let e = config::ConfigError::Invalid {
            path: path.clone(),
            problems: identity,
        };
        eprintln!("{e}");
        return Ok(ExitCode::FAILURE);
    }
    let mut notes = Vec::new();
    let bundle = match &c.bundle_file {
        None => "no bundle file".to_string(),
        Some(file) => match check_bundle_file(&c, file) {
            Ok((line, mut more)) => {
                notes.append(&mut more);
                line
            }
            Err(problem) => {
                eprintln!(
                    "config {} has 1 problem(s):\n  - license.bundle_file: {problem}",
                    path.display()
                );
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    outln!(
        "{}: ok (device {}, socket {}, {} trusted key(s); {bundle})",
        path.display(),
        c.device,
        c.socket.display(),
        c.trusted_keys.len()
    );
    for n in notes {
        eprintln!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The bundle file, through the license engine's acceptance against what
/// the state directory holds: a summary and notes, or why it is refused.
fn check_bundle_file(c: &config::Config, file: &Path) -> Result<(String, Vec<String>), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let rules = c.license_rules();
    // The accepted bundle and the trusted clock, as the daemon starts from them.
    let stored = disk::load(&c.state_dir, None, &rules, Utc::now());
    let now = stored.now(Utc::now(), std::time::Instant::now());
    let mut notes = Vec::new();
    let last = stored.bundle().map(|b| b.generation);
    let acceptance = bundle::Acceptance {
        device: &c.device,
        last_generation: None,
        now,
    };
    let (_, b) = bundle::accept(&text, &c.trusted_keys, acceptance)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(last) = last.filter(|last| b.generation < *last) {
        // Not a fault of the file's: the daemon keeps the newer one it has.
        notes.push(format!(
            "{}: generation {} is older than the generation {last} in force (from {}); the daemon keeps that one and ignores the file",
            file.display(),
            b.generation,
            c.state_dir.display()
        ));
    }
    let (ent, rejected) = b.entitlement(c.builtin_seats);
    if now >= b.not_after {
        notes.push(format!(
            "{}: ran out at {}; it grants the built-in seats only",
            file.display(),
            b.not_after
        ));
    }
    for r in &rejected {
        notes.push(format!(
            "{}: license {} refused: {}",
            file.display(),
            r.id,
            r.reason
        ));
    }
    let line = format!(
        "bundle file generation {} signature ok, cap now {}",
        b.generation,
        ent.cap_at(now).total()
    );
    Ok((line, notes))
}

fn licenses(flag: Option<&Path>, at: Option<DateTime<Utc>>, json: bool) -> Result<ExitCode> {
    let config = config::load(&config::locate(flag))?;
    let lic = disk::load(
        &config.state_dir,
        config.bundle_file.as_deref(),
        &config.license_rules(),
        Utc::now(),
    );
    let at = at.unwrap_or_else(|| lic.now(Utc::now(), std::time::Instant::now()));
    let report = LicenseReport::build(&config.device, &lic, at);
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.render_text());
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Secret,
    Public,
}

/// Reads a key file of one kind. Typed files (what keygen writes) say
/// their kind; a bare one from before is taken by its name (`.key` secret,
/// `.pub` public), and refused when the name says the other kind.
fn read_key_file<K>(
    path: &Path,
    kind: KeyKind,
    parse: fn(&str) -> Result<K, bundle::BundleError>,
) -> Result<K> {
    let (what, wrong_ext) = match kind {
        KeyKind::Secret => ("secret key", "pub"),
        KeyKind::Public => ("public key", "key"),
    };
    let text = read(path)?;
    if !bundle::is_typed_key(&text) {
        if path.extension().is_some_and(|e| e == wrong_ext) {
            bail!(
                "{}: an untyped key file named .{wrong_ext} is not a {what}; give the {what} file (keygen writes PREFIX.key and PREFIX.pub)",
                path.display()
            );
        }
        eprintln!(
            "note: {} is an untyped key file (from before seatgate-ed25519-*-v1:); taken as a {what}",
            path.display()
        );
    }
    parse(&text).with_context(|| format!("{what} {}", path.display()))
}

fn bundle_cmd(cmd: BundleCmd) -> Result<ExitCode> {
    match cmd {
        BundleCmd::Keygen { prefix } => {
            let (secret_path, public_path) =
                (prefix.with_extension("key"), prefix.with_extension("pub"));
            for p in [&secret_path, &public_path] {
                if p.exists() {
                    bail!(
                        "{} exists; refusing to overwrite a key (remove it first)",
                        p.display()
                    );
                }
            }
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).context("the OS gave no random bytes")?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let public = bundle::encode_public_key(&key.verifying_key());
            store::write_atomic(
                &secret_path,
                format!("{}\n", bundle::secret_key_file(&key)).as_bytes(),
                0o600,
            )
            .with_context(|| format!("cannot write {}", secret_path.display()))?;
            let public_file = bundle::public_key_file(&key.verifying_key());
            store::write_atomic(&public_path, format!("{public_file}\n").as_bytes(), 0o644)
                .with_context(|| format!("cannot write {}", public_path.display()))?;
            outln!("{public}");
            eprintln!(
                "wrote {} (keep secret) and {}; put the public key in [license] trusted_keys",
                secret_path.display(),
                public_path.display()
            );
        }
        BundleCmd::Sign { key, input, out } => {
            let key = read_key_file(&key, KeyKind::Secret, bundle::parse_secret_key)?;
            let unsigned: Bundle = serde_json::from_str(&read(&input)?).with_context(|| {
                format!(
                    "{} is not a bundle (the fields: docs/bundle.md in the seatgate sources, or README \"Signed license bundles\")",
                    input.display()
                )
            })?;
            if unsigned.format != bundle::FORMAT {
                bail!("{}: format must be {}", input.display(), bundle::FORMAT);
            }
            let signed = bundle::sign(&unsigned, &key);
            store::write_atomic(&out, format!("{}\n", signed.to_json()).as_bytes(), 0o644)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "signed generation {} for {} into {}",
                unsigned.generation,
                unsigned.device,
                out.display()
            );
        }
        BundleCmd::Verify {
            public_key,
            config: cfg,
            input,
        } => {
            let (keys, device, builtin) = match (public_key, cfg) {
                (Some(p), _) => (
                    vec![read_key_file(
                        &p,
                        KeyKind::Public,
                        bundle::parse_public_key,
                    )?],
                    None,
                    2,
                ),
                (None, flag) => {
                    let c = config::load(&config::locate(flag.as_deref()))?;
                    (c.trusted_keys, Some(c.device), c.builtin_seats)
                }
            };
            let signed =
                Signed::parse(&read(&input)?).with_context(|| input.display().to_string())?;
            let b = signed
                .verify(&keys)
                .with_context(|| input.display().to_string())?;
            if let Some(device) = device.filter(|d| *d != b.device) {
                bail!(
                    "{}: signature ok, but the bundle is for {} and this gateway is {device}",
                    input.display(),
                    b.device
                );
            }
            let (ent, rejected) = b.entitlement(builtin);
            let now = Utc::now();
            outln!(
                "{}: signature ok; device {} org {} generation {} issued {} not after {}; cap now {}",
                input.display(), b.device, b.org, b.generation, b.issued_at, b.not_after, ent.cap_at(now).total()
            );
            for r in &rejected {
                outln!("rejected: {} {}", r.id, r.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and every argument says what it is for in --help.
    #[test]
    fn everything_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "seatgate", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn at_takes_a_date_or_an_instant() {
        let t = |s: &str| parse_at(s).map(|t| t.to_rfc3339());
        assert_eq!(t("2027-07-01").unwrap(), "2027-07-01T00:00:00+00:00");
        assert_eq!(
            t("2027-07-01T12:30:00+02:00").unwrap(),
            "2027-07-01T10:30:00+00:00"
        );
        assert!(t("2027-07-32").is_err());
        assert!(t("tomorrow").unwrap_err().contains("is not a date"));
    }
}
