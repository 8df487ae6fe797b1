//! `seatgate run`: the wiring. Loads the config, the licenses and the
//! session table into one shared state, publishes the config (and the peer
//! rules made from it) on watch channels that a SIGHUP replaces, and runs
//! the socket server and the background duties under one shutdown:
//! - `state`: the state behind its lock, and what is computed from it;
//! - `service`: requests to answers (the socket server's `Service`);
//! - `gateway`: the views the cloud loops and reconciliation get;
//! - `status_cache`: one status rendering shared by every reader;
//! - `persist`: the one writer of the state directory;
//! - `summary`: the STATUS line systemd shows;
//! - `alerting`: usage alerts and license warnings in the log;
//! - `denials`: the last denials and their counts, for status;
//! - `evict`: ending sessions through their VPN servers (operator
//!   evictions, over-cap enforcement, the seat policy);
//! - `tasks`: reaper, ticker, watchdog, STATUS updates, SIGHUP reload.

mod alerting;
mod denials;
mod evict;
mod gateway;
mod persist;
mod service;
mod state;
mod status_cache;
mod summary;
mod tasks;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::Utc;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::lock;
use crate::admission::seats::Seats;
use crate::admission::server::{self, Limits};
use crate::config::{self, Config};
use crate::license::disk;
use crate::license::in_force::Licenses;
use crate::license::lease::LeaseBook;
use crate::status::Rounds;
use crate::{cloud, reconcile, store, sys};
use state::{Shared, State};

/// Peers without admit rights share this many connection slots...
const OTHER_CONNECTIONS: usize = 64;
/// ...and one uid among them holds at most this many.
const PER_UID_CONNECTIONS: usize = 8;
/// Status answers written per second, all readers together (a status of
/// 10,000 sessions is 2 MB: 16 of them a second; a small one, thousands).
const STATUS_BYTES_PER_SEC: u64 = 32 << 20;

/// Runs the daemon until `shutdown` resolves. `config_path` is re-read on SIGHUP.
pub async fn run(config_path: PathBuf, shutdown: impl Future<Output = ()>) -> Result<()> {
    let config = config::load(&config_path)?;
    let now = Utc::now();
    let licenses = disk::load(
        &config.state_dir,
        config.bundle_file.as_deref(),
        &config.license_rules(),
        now,
    );
    report_licenses(&config.device, &licenses);
    // One daemon per runtime directory, before its files are read or the
    // socket bound: an overlapping start waits for the old one to finish.
    store::ensure_dir(&config.runtime_dir, 0o711)
        .with_context(|| format!("cannot create {}", config.runtime_dir.display()))?;
    let runtime = config.runtime_dir.clone();
    let wait = config.admission.lock_wait;
    let lock = tokio::task::spawn_blocking(move || lock::acquire(&runtime, wait))
        .await
        .context("the runtime lock wait did not finish")??;
    let (seats, opened) = Seats::open(&config.runtime_dir, now).with_context(|| {
        format!(
            "cannot open the session journal in {}",
            config.runtime_dir.display()
        )
    })?;
    for w in &opened.warnings {
        tracing::warn!("session journal: {w}");
    }
    if let Some(why) = &opened.damaged {
        tracing::error!(lost = seats.table().lost, "the session snapshot was damaged ({why}); seats of sessions that could not be read stay held until accounted for");
    }
    tracing::info!(sessions = seats.in_use(), "session table loaded");
    let (leases, pools_on_disk, mut file_warnings) = match disk::load_pools(&config.state_dir) {
        Ok(saved) => (LeaseBook::restore(&saved), Some(saved), Vec::new()),
        Err(e) => {
            tracing::warn!("{e}");
            (LeaseBook::default(), None, vec![e.to_string()])
        }
    };
    let said = match disk::load_said(&config.state_dir) {
        Ok(said) => said,
        Err(e) => {
            tracing::warn!("{e}");
            Default::default()
        }
    };
    let (usage, usage_on_disk, usage_warning) = persist::load_usage(&config.state_dir);
    if let Some(w) = usage_warning {
        tracing::error!("{w}");
        file_warnings.push(w);
    }
    let state = State {
        lost_by_source: Default::default(),
        unanswered: 0,
        device: config.device.clone(),
        seats,
        licenses,
        leases,
        cloud: None,
        file_warnings,
        attempts: Default::default(),
        slice_changes: Default::default(),
        rounds: Rounds::default(),
        alerts: Default::default(),
        alert_thresholds: config.alerts.clone(),
        denial_log: Default::default(),
        said,
        admissions: Default::default(),
        usage,
        usage_saved: None,
        countdown: Default::default(),
        enforcing: None,
    };
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let (policy_tx, policy_rx) = watch::channel(Arc::new(tasks::policy(&config)));
    let (doorbell, writer) = persist::doorbell(pools_on_disk, usage_on_disk);
    let shared = Arc::new(Shared::new(state, config_rx, policy_rx, doorbell));
    tasks::reap(&shared);
    alerting::usage(&shared);
    alerting::licenses(&shared);

    let (listener, bound) = listen(&config)?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let stop_writer = CancellationToken::new();
    let writer = tokio::spawn(writer.run(shared.clone(), stop_writer.clone()));
    shared.persist.ring();
    let limits = Limits {
        hooks: config.admission.max_connections,
        others: OTHER_CONNECTIONS,
        per_uid: PER_UID_CONNECTIONS,
        idle: config.admission.idle_timeout,
        shared_bytes_per_sec: STATUS_BYTES_PER_SEC,
    };
    tracker.spawn(server::serve(
        listener,
        shared.clone(),
        limits,
        cancel.clone(),
        tracker.clone(),
    ));
    let every = config.admission.server_check;
    tracker.spawn(tasks::reaper(shared.clone(), every, cancel.clone()));
    // At start-up and on an interval: sessions whose disconnect never came.
    for entry in &config.reconcile {
        let task = reconcile::task::run(shared.clone(), entry.clone(), cancel.clone());
        tracker.spawn(task);
    }
    tracker.spawn(tasks::ticker(shared.clone(), cancel.clone()));
    let configs = shared.config.clone();
    tracker.spawn(cloud::sync::run(
        shared.clone(),
        configs.clone(),
        cancel.clone(),
    ));
    let bell = shared.pool_bell.clone();
    tracker.spawn(cloud::pools::run(
        shared.clone(),
        configs,
        bell,
        cancel.clone(),
    ));
    if let Some(every) = sys::systemd::watchdog_interval() {
        tracker.spawn(tasks::watchdog(every, cancel.clone()));
    }
    let (refused_tx, refused_rx) = watch::channel(None);
    let publish = tasks::Publish {
        config: config_tx,
        policy: policy_tx,
        refused: refused_tx,
    };
    tracker.spawn(tasks::reloader(
        config_path,
        shared.clone(),
        publish,
        cancel.clone(),
    ));

    let (cap, in_use) = {
        let state = shared.peek();
        (state.cap(Utc::now(), Instant::now()), state.seats.in_use())
    };
    let socket = bound
        .as_ref()
        .map_or("(systemd)".into(), |g| g.0.display().to_string());
    tracing::info!(%socket, cap, in_use, "seatgate ready");
    let line = tasks::summary_line(&shared, None);
    sys::systemd::notify(&format!("READY=1\nSTATUS={line}"));
    if sys::systemd::notify_socket_set() {
        let task = tasks::systemd_status(shared.clone(), line, refused_rx, cancel.clone());
        tracker.spawn(task);
    }

    shutdown.await;
    tracing::info!("shutting down");
    sys::systemd::notify("STOPPING=1");
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    stop_writer.cancel();
    let _ = writer.await;
    if let Err(e) = shared.lock().seats.flush() {
        tracing::error!(error = %e, "cannot write the session snapshot; the journal still holds every change");
    }
    drop(bound);
    // Only now may another daemon take the runtime directory.
    drop(lock);
    Ok(())
}

/// The listening socket: handed over by systemd, or bound here.
fn listen(config: &Config) -> Result<(UnixListener, Option<SocketGuard>)> {
    let (listener, bound) = match sys::systemd::activated_listener() {
        Some(l) => (l, None),
        None => {
            let a = &config.admission;
            let mode = a.socket_mode | if a.status_public { 0o666 } else { 0 };
            let group = a.socket_group.as_deref().and_then(sys::users::gid_of);
            let l = sys::systemd::bind_socket(&config.socket, mode, group)
                .with_context(|| format!("cannot listen on {}", config.socket.display()))?;
            let id = socket_id(&config.socket);
            (l, Some(SocketGuard(config.socket.clone(), id)))
        }
    };
    let listener =
        UnixListener::from_std(listener).context("cannot register the socket with the runtime")?;
    Ok((listener, bound))
}

/// Removes the socket file this process bound when the daemon stops, and
/// only that file: never one another daemon bound at the same path since.
struct SocketGuard(PathBuf, Option<(u64, u64)>);

fn socket_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.1.is_some() && socket_id(&self.0) == self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn report_licenses(device: &str, lic: &Licenses) {
    for w in &lic.warnings {
        tracing::warn!("licenses: {w}");
    }
    for r in &lic.rejected {
        tracing::warn!(license = %r.id, "license record refused: {}", r.reason);
    }
    let now = lic.now(Utc::now(), Instant::now());
    let cap = lic.entitlement.cap_at(now);
    if lic.bundle().is_some_and(|b| now >= b.not_after) {
        tracing::error!(
            "the license bundle ran out: built-in seats only until a fresh bundle arrives"
        );
    }
    tracing::info!(
        device,
        generation = lic.bundle().map(|b| b.generation),
        cap = cap.total(),
        builtin = cap.builtin,
        licensed = cap.licensed,
        pooled = cap.pooled,
        "licenses loaded"
    );
}
