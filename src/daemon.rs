//! `seatgate run`: wires config, licenses, the session journal, the socket
//! server and the background duties (dead-server reaping, clock and cap
//! ticks, cloud sync, systemd notify and watchdog, SIGHUP reload) under one
//! shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::access::Policy;
use crate::admission::journal::Journal;
use crate::admission::seats::Seats;
use crate::admission::server::{self, Ctx};
use crate::cloud;
use crate::config::{self, Config};
use crate::licensing::{self, Licenses};
use crate::reconcile;
use crate::sys;

/// Runs the daemon until `shutdown` resolves. `config_path` is re-read on SIGHUP.
pub async fn run(config_path: PathBuf, shutdown: impl Future<Output = ()>) -> Result<()> {
    let config = config::load(&config_path)?;
    let now = Utc::now();
    let mut licenses = licensing::load(&config, now);
    report_licenses(&config, &licenses);
    if let Err(e) = licensing::persist(&config, &mut licenses, now) {
        tracing::warn!(dir = %config.state_dir.display(), error = %e, "cannot write the state directory; the clock high-water mark and new bundles are not kept");
    }
    let (journal, table, warnings) =
        Journal::open(&config.runtime_dir, now).with_context(|| {
            format!(
                "cannot open the session journal in {}",
                config.runtime_dir.display()
            )
        })?;
    for w in warnings {
        tracing::warn!("session journal: {w}");
    }
    tracing::info!(sessions = table.in_use(), "session table loaded");
    let mut seats = Seats::new(config.device.clone(), table, journal, licenses);
    seats.restore_leases(licensing::load_pools(&config));
    let ctx = Arc::new(Ctx {
        seats: Mutex::new(seats),
        policy: Mutex::new(policy(&config)),
        idle_timeout: config.admission.idle_timeout,
        start_times: Default::default(),
    });
    reap(&ctx);

    let (listener, bound) = match sys::activated_listener() {
        Some(l) => (l, None),
        None => {
            let mode = config.admission.socket_mode
                | if config.admission.status_public {
                    0o666
                } else {
                    0
                };
            let group = config
                .admission
                .socket_group
                .as_deref()
                .and_then(sys::gid_of);
            let l = sys::bind_socket(&config.socket, mode, group)
                .with_context(|| format!("cannot listen on {}", config.socket.display()))?;
            (l, Some(SocketGuard(config.socket.clone())))
        }
    };
    let listener =
        UnixListener::from_std(listener).context("cannot register the socket with the runtime")?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(server::serve(
        listener,
        ctx.clone(),
        config.admission.max_connections,
        cancel.clone(),
        tracker.clone(),
    ));
    tracker.spawn(reaper(
        ctx.clone(),
        config.admission.server_check,
        cancel.clone(),
    ));
    // At start-up and on an interval: sessions whose disconnect never came.
    for entry in &config.reconcile {
        tracker.spawn(reconcile::task::run(
            ctx.clone(),
            entry.clone(),
            cancel.clone(),
        ));
    }
    let config = Arc::new(Mutex::new(config));
    tracker.spawn(ticker(ctx.clone(), config.clone(), cancel.clone()));
    let reloaded = Arc::new(Notify::new());
    tracker.spawn(cloud::sync::run(
        ctx.clone(),
        config.clone(),
        reloaded.clone(),
        {
            let (ctx, config) = (ctx.clone(), config.clone());
            move || persist_in_background(&ctx, &config)
        },
        cancel.clone(),
    ));
    tracker.spawn(cloud::pools::run(
        ctx.clone(),
        config.clone(),
        {
            let (ctx, config) = (ctx.clone(), config.clone());
            move || persist_pools_in_background(&ctx, &config)
        },
        cancel.clone(),
    ));
    if let Some(every) = sys::watchdog_interval() {
        tracker.spawn(watchdog(every, cancel.clone()));
    }
    tracker.spawn(reloader(
        config_path,
        config.clone(),
        ctx.clone(),
        reloaded,
        cancel.clone(),
    ));

    let status = ctx.seats().status(Utc::now());
    tracing::info!(socket = %bound.as_ref().map_or("(systemd)".into(), |g| g.0.display().to_string()), cap = status.cap_total, in_use = status.in_use, "seatgate ready");
    sys::notify(&format!(
        "READY=1\nSTATUS=cap {} in use {}",
        status.cap_total, status.in_use
    ));

    shutdown.await;
    tracing::info!("shutting down");
    sys::notify("STOPPING=1");
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    if let Err(e) = ctx.seats().flush() {
        tracing::error!(error = %e, "cannot write the session snapshot; the journal still holds every change");
    }
    persist_licenses(&ctx, &config);
    persist_pools(&ctx, &config);
    drop(bound);
    Ok(())
}

/// Removes the socket file this process bound when the daemon stops.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn policy(config: &Config) -> Policy {
    let a = &config.admission;
    let ids =
        |names: &[String], f: fn(&str) -> Option<u32>| names.iter().filter_map(|n| f(n)).collect();
    Policy {
        own_uid: nix::unistd::geteuid().as_raw(),
        vpn_uids: ids(&a.vpn_users, sys::uid_of),
        vpn_gids: ids(&a.vpn_groups, sys::gid_of),
        operator_gids: ids(&a.operator_groups, sys::gid_of),
        status_public: a.status_public,
    }
}

fn report_licenses(config: &Config, lic: &Licenses) {
    for w in &lic.warnings {
        tracing::warn!("licenses: {w}");
    }
    for r in &lic.rejected {
        tracing::warn!(license = %r.id, "license record refused: {}", r.reason);
    }
    let now = lic.now(Utc::now());
    let cap = lic.entitlement.cap_at(now);
    if lic.bundle().is_some_and(|b| now >= b.not_after) {
        tracing::error!(
            "the license bundle ran out: built-in seats only until a fresh bundle arrives"
        );
    }
    tracing::info!(device = %config.device, generation = lic.bundle().map(|b| b.generation), cap = cap.total(), builtin = cap.builtin, licensed = cap.licensed, pooled = cap.pooled, "licenses loaded");
}

/// Releases the sessions of VPN server processes that are gone.
fn reap(ctx: &Ctx) {
    let servers = ctx.seats().servers();
    for server in servers {
        if sys::process_start_ticks(server.pid) != Some(server.start_ticks) {
            ctx.seats().release_server(server);
        }
    }
}

async fn reaper(ctx: Arc<Ctx>, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while cancel.run_until_cancelled(tick.tick()).await.is_some() {
        reap(&ctx);
    }
}

/// Logs cap changes when the timeline reaches a step and keeps the clock's
/// high-water mark on disk. Admission computes the cap from the clock on
/// every request, so the cap itself never waits for this.
async fn ticker(ctx: Arc<Ctx>, config: Arc<Mutex<Config>>, cancel: CancellationToken) {
    let mut last_cap = ctx.seats().cap(Utc::now());
    loop {
        let wait = {
            let seats = ctx.seats();
            let now = seats.licenses().now(Utc::now());
            let next = seats.licenses().entitlement.next_change(now);
            next.map_or(Duration::from_secs(60), |s| {
                (s.at - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(Duration::from_secs(60))
            })
        };
        if cancel
            .run_until_cancelled(tokio::time::sleep(wait + Duration::from_millis(5)))
            .await
            .is_none()
        {
            return;
        }
        let (usage, ran_out) = {
            let seats = ctx.seats();
            let usage = seats.usage(Utc::now());
            let ran_out = seats
                .licenses()
                .bundle()
                .is_some_and(|b| usage.now >= b.not_after);
            (usage, ran_out)
        };
        if usage.cap != last_cap {
            tracing::warn!(
                from = last_cap,
                to = usage.cap,
                in_use = usage.in_use,
                over_cap_by = usage.in_use.saturating_sub(usage.cap),
                "the seat cap changed"
            );
            last_cap = usage.cap;
            if ran_out {
                tracing::error!(
                    "the license bundle ran out: built-in seats only until a fresh bundle arrives (check the cloud sync in `seatgate status`)"
                );
            }
        }
        persist_in_background(&ctx, &config);
    }
}

/// `persist_licenses` off the runtime thread: the runtime is single-threaded
/// and an fsync on a gateway's flash must not hold up admissions.
fn persist_in_background(ctx: &Arc<Ctx>, config: &Arc<Mutex<Config>>) {
    let (ctx, config) = (ctx.clone(), config.clone());
    tokio::task::spawn_blocking(move || persist_licenses(&ctx, &config));
}

/// Writes the clock's high-water mark (and a new bundle) to the state
/// directory, outside the seats lock: flash can be slow.
fn persist_licenses(ctx: &Ctx, config: &Mutex<Config>) {
    // The ticker and the cloud sync both persist: one at a time, so an older
    // snapshot is never written after a newer one.
    static PERSISTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = PERSISTING.lock().unwrap_or_else(|p| p.into_inner());
    let config = config.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut lic = ctx.seats().licenses().clone();
    match licensing::persist(&config, &mut lic, Utc::now()) {
        Ok(()) => {
            let mut seats = ctx.seats();
            seats.note_high_water(lic.high_water);
            seats.note_persisted(lic.current.as_ref().map(|(s, _)| s));
        }
        Err(e) => {
            tracing::warn!(dir = %config.state_dir.display(), error = %e, "cannot persist the clock high-water mark")
        }
    }
}

/// `persist_pools` off the runtime thread, and only when the pools or an
/// epoch changed since the last write.
fn persist_pools_in_background(ctx: &Arc<Ctx>, config: &Arc<Mutex<Config>>) {
    if ctx.seats().pools_to_save().is_none() {
        return;
    }
    let (ctx, config) = (ctx.clone(), config.clone());
    tokio::task::spawn_blocking(move || persist_pools(&ctx, &config));
}

/// Writes what the lease book must remember (`pools.json`), outside the
/// seats lock. A failure is logged and in status; the book in memory stays.
fn persist_pools(ctx: &Ctx, config: &Mutex<Config>) {
    // One write at a time, each taking the book as it is once its turn
    // comes, so an older record is never written after a newer one.
    static PERSISTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = PERSISTING.lock().unwrap_or_else(|p| p.into_inner());
    let Some(saved) = ctx.seats().pools_to_save() else {
        return;
    };
    let config = config.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let result = licensing::persist_pools(&config, &saved);
    ctx.seats().note_pools_saved(saved, result);
}

async fn watchdog(every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    while cancel.run_until_cancelled(tick.tick()).await.is_some() {
        sys::notify("WATCHDOG=1");
    }
}

/// SIGHUP: re-read the config and the licenses; sessions stay. The cloud
/// sync is told, so a changed `[cloud]` section takes effect at once.
async fn reloader(
    path: PathBuf,
    config: Arc<Mutex<Config>>,
    ctx: Arc<Ctx>,
    reloaded: Arc<Notify>,
    cancel: CancellationToken,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    while cancel
        .run_until_cancelled(hup.recv())
        .await
        .flatten()
        .is_some()
    {
        sys::notify("RELOADING=1");
        // File reads, user lookups and fsyncs: off the single runtime
        // thread. Reload reads the state directory, so first make sure it
        // holds what is in force (a bundle the cloud just sent may not be
        // written yet).
        let (p, c, x) = (path.clone(), config.clone(), ctx.clone());
        let done = tokio::task::spawn_blocking(move || {
            persist_licenses(&x, &c);
            reload(&p, &c, &x);
        });
        if let Err(e) = done.await {
            tracing::error!(error = %e, "the reload did not finish; the running config stays");
        }
        reloaded.notify_one();
        sys::notify("READY=1");
    }
}

fn reload(path: &Path, current: &Mutex<Config>, ctx: &Ctx) {
    let new = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, keeping the running config: {e}");
            return;
        }
    };
    let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
    if new.socket != current.socket
        || new.runtime_dir != current.runtime_dir
        || new.device != current.device
        || new.reconcile != current.reconcile
    {
        tracing::warn!(
            "socket, runtime_dir, device and [[reconcile]] changes take effect at the next restart"
        );
    }
    let now = Utc::now();
    let mut lic = licensing::load(&new, now);
    report_licenses(&new, &lic);
    if let Err(e) = licensing::persist(&new, &mut lic, now) {
        tracing::warn!(error = %e, "cannot write the state directory");
    }
    ctx.seats().set_licenses(lic);
    *ctx.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy(&new);
    *current = new;
    tracing::info!("config and licenses reloaded; sessions kept");
}
