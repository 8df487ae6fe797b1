//! devcloud: a development cloud for seatgate, for tests and demos only
//! (its own crate in the workspace, so its server-side dependencies never
//! reach the gateway binary). It implements docs/cloud-api.md from a JSON
//! state file: organizations (implicit in devices), devices and licenses, with
//! subcommands for the license lifecycle (add, move, expire, replace a
//! device, share and unshare). It signs bundles with its Ed25519 key through
//! seatgate's own `license::bundle::sign`, serves HTTPS with certificates it
//! makes itself (a CA, a server certificate for 127.0.0.1/localhost, device
//! client certificates), requires a client certificate and maps its CN to
//! the device serial. Every bundle answer (200 and 304) carries a signed
//! time stamp for the request's nonce (`Seatgate-Time`).
//!
//!   cargo run -p devcloud -- --dir /tmp/dc init --device ESG-A1 --org ORG-1 --config-dir /etc/seatgate
//!   cargo run -p devcloud -- --dir /tmp/dc license add LIC-1 --device ESG-A1 --seats 20
//!   cargo run -p devcloud -- --dir /tmp/dc serve --addr 127.0.0.1:8443
//!
//! Shared pools are handed out in signed slice leases (docs/pools.md) by the
//! pure allocator in `alloc.rs`; its state is DIR/pools.json, written by
//! `serve` only, before each answer.

mod alloc;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use seatgate::cloud::wire::{PoolReport, UsageReport, NONCE_HEADER, STAMP_HEADER};
use seatgate::license::bundle::{
    encode_public_key, encode_secret_key, parse_secret_key, sign, Bundle, Signed, FORMAT,
};
use seatgate::license::lease::{sign_lease, Lease, LEASE_FORMAT};
use seatgate::license::model::{MAX_POOL_MEMBERS, MIN_SHARED_SEATS};
use seatgate::license::stamp::{sign_stamp, Stamp, STAMP_FORMAT};
use seatgate::license::{Binding, License, Pool};
use seatgate::store::write_atomic;

#[derive(Parser)]
#[command(
    name = "devcloud",
    about = "Development cloud for seatgate (tests and demos; never on a gateway)"
)]
struct Cli {
    /// The cloud's directory: state.json, keys, certificates, usage reports.
    #[arg(long)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA, the server certificate, the signing key and an empty state.
    Init {
        /// Sign bundles with this key (base64 seed, as `seatgate bundle keygen` prints).
        #[arg(long)]
        signing_key: Option<String>,
        /// Bundles are valid this long after issue (their not_after).
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        ttl_secs: u64,
        /// Also register this device and issue its client certificate, so
        /// the printed `[cloud]` section is complete.
        #[arg(long)]
        device: Option<String>,
        /// The device's organization (with --device).
        #[arg(long, default_value = "ORG-DEV")]
        org: String,
        /// The directory the gateway's seatgate.toml will live in: the
        /// printed paths are relative to it (seatgate resolves relative
        /// paths against the config file's directory). Without it they are
        /// absolute.
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// The URL the gateway reaches `serve` at (its default address).
        #[arg(long, default_value = "https://127.0.0.1:8443/")]
        url: String,
    },
    /// Serve the cloud API over HTTPS (writes the bound address to DIR/addr).
    Serve {
        #[arg(long, default_value = "127.0.0.1:8443")]
        addr: SocketAddr,
        /// How long a pool slice lease is valid (gateways renew at a third).
        #[arg(long, default_value_t = 300_000)]
        lease_ms: u64,
    },
    #[command(subcommand)]
    Device(DeviceCmd),
    #[command(subcommand)]
    License(LicenseCmd),
    /// Make the cloud misbehave for one device (to test the gateway's checks).
    Fault { serial: String, fault: Fault },
    /// Set how long new bundles are valid.
    Ttl { secs: u64 },
    /// Print the state and the last usage reports.
    Show,
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Register a device in an organization and issue its client certificate
    /// (DIR/devices/SERIAL.pem and .key).
    Add {
        serial: String,
        #[arg(long)]
        org: String,
    },
    /// Replace Device: the new device takes over the old one's licenses and
    /// pool memberships; the old one keeps syncing and gets an empty bundle.
    Replace { old: String, new: String },
}

#[derive(Subcommand)]
enum LicenseCmd {
    /// Add License: a license bound to a device, active from now.
    Add {
        id: String,
        #[arg(long)]
        device: String,
        #[arg(long)]
        seats: u32,
        #[arg(long, default_value_t = 365)]
        term_days: u32,
        #[arg(long, default_value = "SPC-1YR-LIC")]
        sku: String,
    },
    /// Move License to another device.
    Move {
        id: String,
        #[arg(long)]
        to: String,
    },
    /// Let a license's term run out (as if activated term_days + 1 days ago).
    Expire { id: String },
    /// Share a license (> 100 seats) with another device of its organization.
    Share {
        id: String,
        #[arg(long)]
        with: String,
    },
    /// Undo a share: the device's replica is unbound.
    Unshare {
        id: String,
        #[arg(long)]
        from: String,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum Fault {
    #[default]
    None,
    /// Payload altered after signing (more seats): the signature fails.
    Tamper,
    /// A validly signed bundle for another device.
    Foreign,
    /// A validly signed bundle with an older generation (a replay).
    Older,
    /// Bundle answers without the signed time stamp (an older cloud).
    #[value(name = "no-stamp")]
    #[serde(rename = "no-stamp")]
    NoStamp,
    /// Bundle answers whose time stamp is signed by another key.
    #[value(name = "bad-stamp")]
    #[serde(rename = "bad-stamp")]
    BadStamp,
    /// Bundle answers whose time stamp answers another nonce (a replay).
    #[value(name = "replayed-stamp")]
    #[serde(rename = "replayed-stamp")]
    ReplayedStamp,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// Grows with every change; each bundle carries it.
    generation: u64,
    ttl_secs: u64,
    devices: BTreeMap<String, Device>,
    licenses: BTreeMap<String, Lic>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Device {
    org: String,
    #[serde(default)]
    replaced_by: Option<String>,
    #[serde(default)]
    fault: Fault,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lic {
    sku: String,
    seats: u32,
    term_days: u32,
    issued_at: DateTime<Utc>,
    activated_at: DateTime<Utc>,
    device: String,
    #[serde(default)]
    shared_with: Vec<String>,
    /// Shared at least once: stays a pool (of its owner alone, after every
    /// share is undone), so replicas still draining are accounted for.
    #[serde(default)]
    pooled: bool,
}

const CA_CN: &str = "seatgate devcloud CA";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let dir = cli.dir;
    match cli.command {
        Command::Init {
            signing_key,
            ttl_secs,
            device,
            org,
            config_dir,
            url,
        } => {
            init(&dir, signing_key, ttl_secs)?;
            if let Some(serial) = &device {
                add_device(&dir, serial, &org)?;
            }
            print_section(&dir, device.as_deref(), config_dir.as_deref(), &url)
        }
        Command::Serve { addr, lease_ms } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(serve(dir, addr, lease_ms.max(300))),
        Command::Show => show(&dir),
        Command::Device(DeviceCmd::Add { serial, org }) => add_device(&dir, &serial, &org),
        Command::Device(DeviceCmd::Replace { old, new }) => {
            let fresh = !load(&dir)?.devices.contains_key(&new);
            change(&dir, |s| {
                let org = device(s, &old)?.org.clone();
                if old == new {
                    bail!("a device cannot replace itself");
                }
                let entry = s.devices.entry(new.clone()).or_insert(Device {
                    org: org.clone(),
                    replaced_by: None,
                    fault: Fault::None,
                });
                if entry.org != org {
                    bail!(
                        "{new} is in {}, not {org}; Replace Device stays in one organization",
                        entry.org
                    );
                }
                for l in s.licenses.values_mut() {
                    if l.device == old {
                        l.device = new.clone();
                    }
                    for m in l.shared_with.iter_mut().filter(|m| **m == old) {
                        *m = new.clone();
                    }
                }
                device_mut(s, &old)?.replaced_by = Some(new.clone());
                Ok(())
            })?;
            if fresh {
                issue_device_cert(&dir, &new)?;
            }
            Ok(())
        }
        Command::License(cmd) => change(&dir, |s| license(s, cmd)),
        // Test knobs, not license changes: the generation stays, so `older`
        // replays the generation before the one the gateway holds.
        Command::Fault { serial, fault } => edit(&dir, false, |s| {
            device_mut(s, &serial)?.fault = fault;
            Ok(())
        }),
        Command::Ttl { secs } => edit(&dir, false, |s| {
            s.ttl_secs = secs.max(2);
            Ok(())
        }),
    }
}

fn license(s: &mut State, cmd: LicenseCmd) -> Result<()> {
    let now = Utc::now();
    match cmd {
        LicenseCmd::Add {
            id,
            device: to,
            seats,
            term_days,
            sku,
        } => {
            device(s, &to)?;
            if s.licenses.contains_key(&id) {
                bail!("license {id} exists");
            }
            s.licenses.insert(
                id,
                Lic {
                    sku,
                    seats,
                    term_days,
                    issued_at: now - Duration::days(1),
                    activated_at: now - Duration::minutes(1),
                    device: to,
                    shared_with: Vec::new(),
                    pooled: false,
                },
            );
        }
        LicenseCmd::Move { id, to } => {
            device(s, &to)?;
            let l = lic_mut(s, &id)?;
            if l.pooled {
                bail!(
                    "license {id} is shared with {:?}; unshare it first",
                    l.shared_with
                );
            }
            l.device = to;
        }
        LicenseCmd::Expire { id } => {
            let l = lic_mut(s, &id)?;
            let start = now - Duration::days(i64::from(l.term_days) + 1);
            l.issued_at = start;
            l.activated_at = start;
        }
        LicenseCmd::Share { id, with } => {
            let with_org = device(s, &with)?.org.clone();
            let owner = s
                .licenses
                .get(&id)
                .map(|l| l.device.clone())
                .unwrap_or_default();
            let owner_org = device(s, &owner)?.org.clone();
            let l = lic_mut(s, &id)?;
            if l.seats <= MIN_SHARED_SEATS {
                bail!("license {id} has {} seats; only licenses of more than {MIN_SHARED_SEATS} can be shared", l.seats);
            }
            if with_org != owner_org {
                bail!("{with} is in {with_org}, the license in {owner_org}; sharing stays in one organization");
            }
            if with == l.device || l.shared_with.contains(&with) {
                bail!("{with} already draws from license {id}");
            }
            if l.shared_with.len() + 1 >= MAX_POOL_MEMBERS {
                bail!("license {id} is already shared by {MAX_POOL_MEMBERS} gateways");
            }
            l.shared_with.push(with);
            l.pooled = true;
        }
        LicenseCmd::Unshare { id, from } => {
            let l = lic_mut(s, &id)?;
            let before = l.shared_with.len();
            l.shared_with.retain(|m| *m != from);
            if l.shared_with.len() == before {
                bail!("license {id} is not shared with {from}");
            }
        }
    }
    Ok(())
}

fn device<'a>(s: &'a State, serial: &str) -> Result<&'a Device> {
    s.devices
        .get(serial)
        .with_context(|| format!("no device {serial}; add it with `device add`"))
}

fn device_mut<'a>(s: &'a mut State, serial: &str) -> Result<&'a mut Device> {
    s.devices
        .get_mut(serial)
        .with_context(|| format!("no device {serial}; add it with `device add`"))
}

fn lic_mut<'a>(s: &'a mut State, id: &str) -> Result<&'a mut Lic> {
    s.licenses
        .get_mut(id)
        .with_context(|| format!("no license {id}"))
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn load(dir: &Path) -> Result<State> {
    let path = state_path(dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}; run `init` first", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a devcloud state", path.display()))
}

fn save(dir: &Path, s: &State) -> Result<()> {
    let text = serde_json::to_string_pretty(s)?;
    write_atomic(&state_path(dir), text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", state_path(dir).display()))
}

/// Applies one change and bumps the generation, so every bundle it touches
/// is newer than the last one served.
fn change(dir: &Path, f: impl FnOnce(&mut State) -> Result<()>) -> Result<()> {
    edit(dir, true, f)
}

fn edit(dir: &Path, bump: bool, f: impl FnOnce(&mut State) -> Result<()>) -> Result<()> {
    let mut s = load(dir)?;
    f(&mut s)?;
    s.generation += u64::from(bump);
    save(dir, &s)?;
    println!("generation {}", s.generation);
    Ok(())
}

fn show(dir: &Path) -> Result<()> {
    println!("{}", std::fs::read_to_string(state_path(dir))?);
    if let Ok(text) = std::fs::read_to_string(pools_path(dir)) {
        println!("pools: {text}");
    }
    let usage = dir.join("usage");
    if let Ok(entries) = std::fs::read_dir(&usage) {
        for e in entries.flatten() {
            println!(
                "usage {}: {}",
                e.file_name().to_string_lossy(),
                std::fs::read_to_string(e.path())?
            );
        }
    }
    Ok(())
}

// ---- certificates ----

/// The CA's parameters, fixed but for a name taken from its key, so two
/// devclouds never have CAs of the same name.
fn ca_params(key: &KeyPair) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    let tag: String = key
        .public_key_raw()
        .iter()
        .rev()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    dn.push(DnType::CommonName, format!("{CA_CN} {tag}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The CA as an issuer: its parameters are fixed, so re-signing them with
/// the stored key gives the same subject and key as DIR/ca.pem.
fn ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key"))?)?;
    let cert = ca_params(&key)?.self_signed(&key)?;
    Ok((cert, key))
}

fn init(dir: &Path, signing_key: Option<String>, ttl_secs: u64) -> Result<()> {
    std::fs::create_dir_all(dir.join("devices"))?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params(&ca_key)?.self_signed(&ca_key)?;
    write_atomic(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    write_atomic(
        &dir.join("ca.key"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server = params.signed_by(&server_key, &ca_cert, &ca_key)?;
    write_atomic(&dir.join("server.pem"), server.pem().as_bytes(), 0o644)?;
    write_atomic(
        &dir.join("server.key"),
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let key = match signing_key {
        Some(text) => parse_secret_key(&text)?,
        None => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed)?;
            SigningKey::from_bytes(&seed)
        }
    };
    write_atomic(
        &dir.join("signing.key"),
        encode_secret_key(&key).as_bytes(),
        0o600,
    )?;
    let public = encode_public_key(&key.verifying_key());
    write_atomic(&dir.join("signing.pub"), public.as_bytes(), 0o644)?;
    save(
        dir,
        &State {
            ttl_secs: ttl_secs.max(2),
            ..State::default()
        },
    )?;
    println!("devcloud initialised in {}", dir.display());
    Ok(())
}

fn add_device(dir: &Path, serial: &str, org: &str) -> Result<()> {
    change(dir, |s| {
        if s.devices.contains_key(serial) {
            bail!("device {serial} is already registered");
        }
        s.devices.insert(
            serial.to_string(),
            Device {
                org: org.to_string(),
                replaced_by: None,
                fault: Fault::None,
            },
        );
        Ok(())
    })?;
    issue_device_cert(dir, serial)
}

/// Prints what a gateway's config needs to use this cloud: the trusted key
/// and a `[cloud]` section that works pasted as it is (paths relative to
/// `config_dir` when given, else absolute).
fn print_section(
    dir: &Path,
    device: Option<&str>,
    config_dir: Option<&Path>,
    url: &str,
) -> Result<()> {
    let dir = std::path::absolute(dir)?;
    let base = config_dir.map(std::path::absolute).transpose()?;
    let shown = |p: PathBuf| -> String {
        let p = match &base {
            Some(b) => relative(&p, b),
            None => p,
        };
        // TOML basic string: the path's backslashes and quotes escaped.
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    let public = std::fs::read_to_string(dir.join("signing.pub"))?;
    let mut out = match &base {
        Some(b) => format!(
            "# For the gateway's seatgate.toml in {} (relative paths follow the config file):\n",
            b.display()
        ),
        None => "# For the gateway's seatgate.toml (absolute paths):\n".to_string(),
    };
    if let Some(serial) = device {
        out += &format!("device = \"{serial}\"\n");
    }
    out += &format!("\n[license]\ntrusted_keys = [\"{}\"]\n", public.trim());
    out += &format!(
        "\n[cloud]\nurl = \"{url}\"\nca_file = \"{}\"\n",
        shown(dir.join("ca.pem"))
    );
    match device {
        Some(serial) => {
            out += &format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"\n",
                shown(dir.join(format!("devices/{serial}.pem"))),
                shown(dir.join(format!("devices/{serial}.key")))
            );
        }
        None => {
            out += "# client_cert, client_key: `devcloud device add SERIAL` issues them in DIR/devices/ (or init with --device SERIAL)\n";
        }
    }
    print!("{out}");
    Ok(())
}

/// `path` relative to the directory `base` (both absolute), going up with
/// `..` where they part.
fn relative(path: &Path, base: &Path) -> PathBuf {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

fn issue_device_cert(dir: &Path, serial: &str) -> Result<()> {
    let (ca_cert, ca_key) = ca(dir)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, serial);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    let devices = dir.join("devices");
    std::fs::create_dir_all(&devices)?;
    write_atomic(
        &devices.join(format!("{serial}.pem")),
        cert.pem().as_bytes(),
        0o644,
    )?;
    write_atomic(
        &devices.join(format!("{serial}.key")),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    println!(
        "client certificate for {serial}: {}",
        devices.join(format!("{serial}.pem")).display()
    );
    Ok(())
}

// ---- bundles ----

/// The bundle for `serial` now. Issue times are rounded down to half the
/// TTL, so the same state gives the same bytes (and ETag) until the bundle
/// needs renewing.
fn bundle_for(s: &State, serial: &str, now: DateTime<Utc>) -> Result<(Bundle, String)> {
    let dev = device(s, serial)?;
    let half = (s.ttl_secs / 2).max(1) as i64;
    let issued_secs = now.timestamp() / half * half;
    let issued_at = DateTime::from_timestamp(issued_secs, 0).context("time out of range")?;
    let mut licenses = Vec::new();
    for (id, l) in &s.licenses {
        let pool = l.pooled.then(|| Pool {
            id: pool_id(id),
            seats: l.seats,
            members: members(l),
            share: None,
        });
        let binding = if l.device == serial {
            Binding::Bound
        } else if l.shared_with.iter().any(|m| m == serial) {
            Binding::Replica
        } else {
            continue;
        };
        licenses.push(License {
            id: id.clone(),
            product: "spc".into(),
            sku: l.sku.clone(),
            seats: l.seats,
            term_days: l.term_days,
            issued_at: l.issued_at,
            associated_at: Some(l.activated_at),
            activated_at: Some(l.activated_at),
            device: serial.to_string(),
            binding,
            pool,
        });
    }
    let bundle = Bundle {
        format: FORMAT,
        device: serial.to_string(),
        org: dev.org.clone(),
        generation: s.generation,
        issued_at,
        not_after: issued_at + Duration::seconds(s.ttl_secs as i64),
        licenses,
    };
    let etag = format!("\"g{}-{}-{:?}\"", s.generation, issued_secs, dev.fault).to_lowercase();
    Ok((bundle, etag))
}

fn pool_id(license: &str) -> String {
    format!("POOL-{license}")
}

fn members(l: &Lic) -> Vec<String> {
    std::iter::once(l.device.clone())
        .chain(l.shared_with.iter().cloned())
        .collect()
}

// ---- pools ----

fn pools_path(dir: &Path) -> PathBuf {
    dir.join("pools.json")
}

fn load_alloc(dir: &Path) -> Result<alloc::Alloc> {
    match std::fs::read_to_string(pools_path(dir)) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a pool allocation", pools_path(dir).display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(alloc::Alloc::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", pools_path(dir).display())),
    }
}

/// The allocator as `serve` keeps it: state, lease length, and the end of
/// the quiet period of each pool this cloud had granted slices of before it
/// (re)started.
struct Pools {
    alloc: alloc::Alloc,
    lease_ms: u64,
    quiet_until: BTreeMap<String, DateTime<Utc>>,
}

impl Pools {
    /// After a start with state: each pool the cloud ever granted for may
    /// have leases in force it does not know (a lost answer, an older
    /// file), so one lease length of granting nothing beyond reported
    /// usage. A pool without state never had a lease: served at once.
    fn start(alloc: alloc::Alloc, lease_ms: u64, now: DateTime<Utc>) -> Pools {
        let until = now + Duration::milliseconds(lease_ms as i64);
        let quiet_until = alloc
            .granted_pools()
            .map(|id| (id.to_string(), until))
            .collect();
        Pools {
            alloc,
            lease_ms,
            quiet_until,
        }
    }
}

/// Grants `serial` its slices for `reports`, persisting the allocation
/// before the signed leases are returned.
fn grant_slices(
    dir: &Path,
    state: &State,
    pools: &Mutex<Pools>,
    serial: &str,
    reports: &[PoolReport],
) -> Result<Vec<Signed>> {
    let key = parse_secret_key(&std::fs::read_to_string(dir.join("signing.key"))?)?;
    let now = Utc::now();
    let mut p = pools.lock().unwrap_or_else(|e| e.into_inner());
    for (id, l) in state.licenses.iter().filter(|(_, l)| l.pooled) {
        p.alloc.set_pool(&pool_id(id), l.seats, &members(l));
    }
    let mut grants = Vec::new();
    for r in reports {
        let quiet = p.quiet_until.get(&r.pool).copied().filter(|t| now < *t);
        if let Some(d) = p.alloc.request(serial, r, now, quiet)? {
            eprintln!(
                "INFO grant pool={} device={serial} seats={} in_use={} wanted={} reason={}",
                r.pool,
                d.grant.seats,
                r.in_use,
                r.wanted,
                d.reason()
            );
            grants.push((r.pool.clone(), d));
        }
    }
    let text = serde_json::to_string_pretty(&p.alloc)?;
    write_atomic(&pools_path(dir), text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", pools_path(dir).display()))?;
    Ok(grants
        .into_iter()
        .map(|(pool, d)| {
            let lease = Lease {
                format: LEASE_FORMAT,
                device: serial.to_string(),
                pool,
                seats: d.grant.seats,
                epoch: d.grant.epoch,
                issued_at: d.grant.at,
                valid_for_ms: p.lease_ms,
                limited: d.limit,
            };
            sign_lease(&lease, &key)
        })
        .collect())
}

/// Applies a device's fault to its bundle.
fn faulty(bundle: Bundle, fault: Fault, key: &SigningKey) -> Signed {
    let extra = |mut b: Bundle| {
        b.licenses.push(License {
            id: "LIC-FAULT".into(),
            product: "spc".into(),
            sku: "SPC-1YR-LIC".into(),
            seats: 500,
            term_days: 365,
            issued_at: b.issued_at - Duration::days(1),
            associated_at: Some(b.issued_at - Duration::days(1)),
            activated_at: Some(b.issued_at - Duration::days(1)),
            device: b.device.clone(),
            binding: Binding::Bound,
            pool: None,
        });
        b
    };
    match fault {
        Fault::None | Fault::NoStamp | Fault::BadStamp | Fault::ReplayedStamp => sign(&bundle, key),
        Fault::Tamper => {
            let good = sign(&bundle, key);
            let altered = sign(&extra(bundle), key);
            Signed {
                payload: altered.payload,
                signature: good.signature,
            }
        }
        Fault::Foreign => sign(
            &extra(Bundle {
                device: "ESG-FOREIGN".into(),
                generation: bundle.generation + 1,
                ..bundle
            }),
            key,
        ),
        Fault::Older => sign(
            &extra(Bundle {
                generation: bundle.generation.saturating_sub(1),
                ..bundle
            }),
            key,
        ),
    }
}

/// The signed time stamp header for a bundle answer to `nonce`
/// (docs/cloud-api.md), or none: no nonce sent, or the `no-stamp` fault.
fn time_stamp(serial: &str, nonce: Option<&str>, fault: Fault, key: &SigningKey) -> Option<String> {
    let nonce = nonce?;
    let stamp = |nonce: &str| Stamp {
        format: STAMP_FORMAT,
        device: serial.to_string(),
        nonce: nonce.to_string(),
        at: Utc::now(),
    };
    match fault {
        Fault::NoStamp => None,
        Fault::BadStamp => Some(sign_stamp(
            &stamp(nonce),
            &SigningKey::from_bytes(&[0x5a; 32]),
        )),
        Fault::ReplayedStamp => Some(sign_stamp(&stamp("AAAAAAAAAAAAAAAAAAAAAA=="), key)),
        _ => Some(sign_stamp(&stamp(nonce), key)),
    }
}

// ---- HTTPS server ----

fn tls_config(dir: &Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = CertificateDer::from_pem_file(dir.join("ca.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let server = CertificateDer::from_pem_file(dir.join("server.pem"))?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server, ca], key)?)
}

async fn serve(dir: PathBuf, addr: SocketAddr, lease_ms: u64) -> Result<()> {
    // Refuses to serve an uninitialised directory ("run `init` first").
    load(&dir)?;
    let pools = Pools::start(load_alloc(&dir)?, lease_ms, Utc::now());
    for (id, until) in &pools.quiet_until {
        eprintln!("INFO pool {id}: restarted with its allocation; no new grants until {until}");
    }
    let pools = Arc::new(Mutex::new(pools));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&dir)?));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    write_atomic(&dir.join("addr"), local.to_string().as_bytes(), 0o644)?;
    println!("devcloud listening on https://{local}/");
    let dir = Arc::new(dir);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (acceptor, dir, pools) = (acceptor.clone(), dir.clone(), pools.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("{peer}: TLS handshake refused: {e}");
                    return;
                }
            };
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| seatgate::config::subject_cn(c.as_ref()));
            let service = hyper::service::service_fn(move |req| {
                let (dir, cn, pools) = (dir.clone(), cn.clone(), pools.clone());
                async move { Ok::<_, Infallible>(handle(&dir, &pools, cn.as_deref(), req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                eprintln!("{peer}: connection ended: {e}");
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    reply(status, body)
}

async fn handle(
    dir: &Path,
    pools: &Mutex<Pools>,
    cn: Option<&str>,
    req: Request<Incoming>,
) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let r = route(dir, pools, cn, req).await.unwrap_or_else(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("{e:#}"),
        )
    });
    eprintln!(
        "{method} {path} from {} -> {}",
        cn.unwrap_or("?"),
        r.status().as_u16()
    );
    r
}

async fn route(
    dir: &Path,
    pools: &Mutex<Pools>,
    cn: Option<&str>,
    req: Request<Incoming>,
) -> Result<Reply> {
    let parts: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(String::from)
        .collect();
    let [v1, devices, serial, what] = parts.as_slice() else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ));
    };
    if v1 != "v1" || devices != "devices" {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ));
    }
    let Some(cn) = cn else {
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            "no_certificate",
            "a device certificate is required",
        ));
    };
    if cn != serial {
        return Ok(error(
            StatusCode::FORBIDDEN,
            "wrong_device",
            &format!("the certificate is for {cn}, not {serial}"),
        ));
    }
    let state = load(dir)?;
    let Some(dev) = state.devices.get(serial.as_str()) else {
        return Ok(error(
            StatusCode::FORBIDDEN,
            "not_registered",
            &format!("device {serial} is not registered"),
        ));
    };
    match (req.method().clone(), what.as_str()) {
        (Method::GET, "bundle") => {
            let (bundle, etag) = bundle_for(&state, serial, Utc::now())?;
            let wanted = req
                .headers()
                .get("if-none-match")
                .and_then(|v| v.to_str().ok());
            let key = parse_secret_key(&std::fs::read_to_string(dir.join("signing.key"))?)?;
            // 200 and 304 alike carry the signed time for the request's nonce.
            let nonce = req
                .headers()
                .get(NONCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|n| n.len() <= 64);
            let stamp = time_stamp(serial, nonce, dev.fault, &key);
            if wanted == Some(etag.as_str()) {
                let mut r = reply(StatusCode::NOT_MODIFIED, Bytes::new());
                r.headers_mut().remove("content-type");
                r.headers_mut().insert("etag", etag.parse()?);
                if let Some(s) = stamp {
                    r.headers_mut().insert(STAMP_HEADER, s.parse()?);
                }
                return Ok(r);
            }
            let signed = faulty(bundle, dev.fault, &key);
            let mut r = reply(StatusCode::OK, signed.to_json());
            r.headers_mut().insert("etag", etag.parse()?);
            if let Some(s) = stamp {
                r.headers_mut().insert(STAMP_HEADER, s.parse()?);
            }
            r.headers_mut()
                .insert("cache-control", "private, no-cache".parse()?);
            Ok(r)
        }
        (Method::POST, "usage") => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Ok(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "usage report over 64 KiB",
                    ))
                }
            };
            let report: UsageReport = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, "bad_report", &e.to_string())),
            };
            if report.device != *serial {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "bad_report",
                    "report is for another device",
                ));
            }
            let stored = serde_json::json!({ "received_at": Utc::now(), "report": report });
            let usage = dir.join("usage");
            std::fs::create_dir_all(&usage)?;
            write_atomic(
                &usage.join(format!("{serial}.json")),
                stored.to_string().as_bytes(),
                0o644,
            )?;
            Ok(reply(StatusCode::NO_CONTENT, Bytes::new()))
        }
        (Method::POST, "pools") => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Ok(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "pool report over 64 KiB",
                    ))
                }
            };
            let reports: Vec<PoolReport> = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, "bad_report", &e.to_string())),
            };
            let leases = grant_slices(dir, &state, pools, serial, &reports)?;
            Ok(reply(StatusCode::OK, serde_json::to_string(&leases)?))
        }
        _ => Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            "GET bundle, POST usage or POST pools",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_after_a_start_only_for_pools_granted_before() {
        let now = Utc::now();
        let mut alloc = alloc::Alloc::default();
        let members = ["ESG-A".to_string(), "ESG-B".to_string()];
        alloc.set_pool("P-OLD", 150, &members);
        alloc.set_pool("P-NEW", 150, &members);
        let r = PoolReport {
            pool: "P-OLD".into(),
            in_use: 0,
            wanted: 4,
            held_epoch: None,
        };
        alloc.request("ESG-A", &r, now, None).unwrap().unwrap();
        // Through the file, as a restarted `serve` finds it.
        let alloc = serde_json::from_str(&serde_json::to_string(&alloc).unwrap()).unwrap();
        let pools = Pools::start(alloc, 300_000, now);
        let until = now + Duration::milliseconds(300_000);
        assert_eq!(
            pools.quiet_until,
            BTreeMap::from([("P-OLD".to_string(), until)]),
            "a pool without a grant before is served at once"
        );
        let fresh = Pools::start(alloc::Alloc::default(), 300_000, now);
        assert!(fresh.quiet_until.is_empty());
    }

    #[test]
    fn paths_relative_to_the_config_directory() {
        let cases = [
            ("/a/dc/ca.pem", "/a/dc", "ca.pem"),
            ("/a/dc/devices/X.pem", "/a/gw", "../dc/devices/X.pem"),
            ("/tmp/dc/ca.pem", "/etc/seatgate", "../../tmp/dc/ca.pem"),
        ];
        for (path, base, want) in cases {
            assert_eq!(
                relative(Path::new(path), Path::new(base)),
                PathBuf::from(want)
            );
        }
    }
}
