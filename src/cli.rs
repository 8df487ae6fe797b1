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
    /// Operator: free a session's seat by hand (the key as `status` shows
    /// it), or with --lost the seats of sessions lost with a damaged snapshot.
    Evict {
        #[command(flatten)]
        target: SocketArg,
        #[arg(
            value_name = "KEY",
            required_unless_present = "lost",
            conflicts_with = "lost"
        )]
        key: Option<String>,
        /// Free the seats status shows as lost (check first that the VPN
        /// servers hold no more sessions than status lists).
        #[arg(long)]
        lost: bool,
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
        /// Evaluate at this instant (RFC 3339) instead of now.
        #[arg(long, value_name = "RFC3339")]
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
        #[arg(value_name = "PREFIX")]
        prefix: PathBuf,
    },
    /// Sign an unsigned bundle (JSON) with a secret key.
    Sign {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(value_name = "BUNDLE.json")]
        input: PathBuf,
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
        #[arg(value_name = "SIGNED.json")]
        input: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match dispatch(cli.command) {
        Ok(code) => code,
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
        Command::Evict { target, key, .. } => evict(&target.path(), key),
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

fn status(socket: &Path, json: bool) -> Result<ExitCode> {
    match client::call(socket, &Request::Status, OPERATOR_TIMEOUT)? {
        Response::Status(s) if json => println!("{}", serde_json::to_string_pretty(&s.status)?),
        Response::Status(s) => {
            let status: crate::status::Status = serde_json::from_value(s.status)
                .with_context(|| format!("{}: the status answer is not one this seatgate reads (a different version?)", socket.display()))?;
            print!("{}", status.render_text())
        }
        Response::Error(e) => bail!("{}: {}", socket.display(), e.error.message),
        other => bail!("{}: unexpected answer {other:?}", socket.display()),
    }
    Ok(ExitCode::SUCCESS)
}

fn evict(socket: &Path, key: Option<String>) -> Result<ExitCode> {
    let request = match &key {
        Some(key) => Request::Evict { key: key.clone() },
        None => Request::ForgetLost,
    };
    let what = key.map_or("the lost sessions' seats".to_string(), |k| format!("{k:?}"));
    match client::call(socket, &request, OPERATOR_TIMEOUT)? {
        Response::Release(r) if r.released => {
            println!("released {what}; {} seats in use", r.in_use)
        }
        Response::Release(_) => bail!("{what}: nothing holds a seat (see `seatgate status`)"),
        Response::Error(e) => bail!("{}: {}", socket.display(), e.error.message),
        other => bail!("{}: unexpected answer {other:?}", socket.display()),
    }
    Ok(ExitCode::SUCCESS)
}

fn check_config(flag: Option<&Path>) -> Result<ExitCode> {
    let path = config::locate(flag);
    match config::load(&path) {
        Ok(c) => {
            println!(
                "{}: ok (device {}, socket {}, {} trusted key(s))",
                path.display(),
                c.device,
                c.socket.display(),
                c.trusted_keys.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
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
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
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
                format!("{}\n", bundle::encode_secret_key(&key)).as_bytes(),
                0o600,
            )
            .with_context(|| format!("cannot write {}", secret_path.display()))?;
            store::write_atomic(&public_path, format!("{public}\n").as_bytes(), 0o644)
                .with_context(|| format!("cannot write {}", public_path.display()))?;
            println!("{public}");
            eprintln!(
                "wrote {} (keep secret) and {}; put the public key in [license] trusted_keys",
                secret_path.display(),
                public_path.display()
            );
        }
        BundleCmd::Sign { key, input, out } => {
            let key = bundle::parse_secret_key(&read(&key)?)
                .with_context(|| format!("secret key {}", key.display()))?;
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
                    vec![bundle::parse_public_key(&read(&p)?)
                        .with_context(|| format!("public key {}", p.display()))?],
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
            println!(
                "{}: signature ok; device {} org {} generation {} issued {} not after {}; cap now {}",
                input.display(), b.device, b.org, b.generation, b.issued_at, b.not_after, ent.cap_at(now).total()
            );
            for r in &rejected {
                println!("rejected: {} {}", r.id, r.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
