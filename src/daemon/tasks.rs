//! The daemon's background duties, each a loop that stops on the shared
//! CancellationToken: reaping the sessions of dead VPN server processes,
//! logging cap changes on time, the systemd watchdog and STATUS line, and
//! SIGHUP reloads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::gateway::release_server;
use super::state::Shared;
use super::summary::Summary;
use crate::admission::access::Policy;
use crate::config::{self, Config};
use crate::license::disk;
use crate::sys;

/// Releases the sessions of VPN server processes that are gone, and
/// writes what a full runtime directory held back once it can. (The
/// reaper also looks at the over-cap countdown: `evict::look`.)
pub fn reap(shared: &Shared) {
    let faulted = shared.peek().seats.fault().is_some();
    if faulted {
        let mut state = shared.lock();
        if state.seats.retry().is_ok() {
            tracing::warn!("the runtime directory can be written again; admissions resume");
        }
    }
    let servers = shared.peek().seats.servers();
    for server in servers {
        if sys::process::process_start_ticks(server.pid) != Some(server.start_ticks) {
            release_server(shared, server);
        }
    }
    shared.lock().rounds.reap += 1;
}

pub async fn reaper(shared: Arc<Shared>, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while cancel.run_until_cancelled(tick.tick()).await.is_some() {
        reap(&shared);
        super::evict::look(&shared);
    }
}

/// Logs cap changes when the timeline reaches a step, records the seats in
/// use in the usage history (so an hour without admissions still shows the
/// sessions held through it) and has the clock's high-water mark (and the
/// usage history, when due) written at least once a minute. Admission computes the
/// cap from the clock on every request, so the cap itself never waits.
pub async fn ticker(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut last_cap = shared.peek().cap(Utc::now(), Instant::now());
    loop {
        let wait = {
            let state = shared.peek();
            let now = state.licenses.now(Utc::now(), Instant::now());
            let next = state.licenses.entitlement.next_change(now);
            next.map_or(Duration::from_secs(60), |s| {
                (s.at - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(Duration::from_secs(60))
            })
        };
        let sleep = tokio::time::sleep(wait + Duration::from_millis(5));
        if cancel.run_until_cancelled(sleep).await.is_none() {
            return;
        }
        {
            let (now, mono) = (Utc::now(), Instant::now());
            let mut state = shared.lock();
            let cap = state.cap(now, mono);
            state.record_usage(now, mono, cap, false);
        }
        let (cap, in_use, ran_out) = {
            let state = shared.peek();
            let now = state.licenses.now(Utc::now(), Instant::now());
            let ran_out = state.licenses.bundle().is_some_and(|b| now >= b.not_after);
            (
                state.cap(Utc::now(), Instant::now()),
                state.seats.in_use(),
                ran_out,
            )
        };
        if cap != last_cap {
            tracing::warn!(
                from = last_cap,
                to = cap,
                in_use,
                over_cap_by = in_use.saturating_sub(cap),
                "the seat cap changed"
            );
            last_cap = cap;
            if ran_out {
                tracing::error!(
                    "the license bundle ran out: built-in seats only until a fresh bundle arrives (check the cloud sync in `seatgate status`)"
                );
            }
        }
        super::alerting::usage(&shared);
        super::alerting::licenses(&shared);
        shared.persist.ring();
    }
}

pub async fn watchdog(every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    while cancel.run_until_cancelled(tick.tick()).await.is_some() {
        sys::systemd::notify("WATCHDOG=1");
    }
}

/// The peer rules a config sets, with names looked up (NSS: blocking).
pub fn policy(config: &Config) -> Policy {
    let a = &config.admission;
    let ids =
        |names: &[String], f: fn(&str) -> Option<u32>| names.iter().filter_map(|n| f(n)).collect();
    Policy {
        own_uid: nix::unistd::geteuid().as_raw(),
        vpn_uids: ids(&a.vpn_users, sys::users::uid_of),
        vpn_gids: ids(&a.vpn_groups, sys::users::gid_of),
        operator_gids: ids(&a.operator_groups, sys::users::gid_of),
        status_public: a.status_public,
    }
}

/// Where a reload's results go.
pub struct Publish {
    pub config: watch::Sender<Arc<Config>>,
    pub policy: watch::Sender<Arc<Policy>>,
    /// Why the last reload was refused (None after a good one): systemd's
    /// STATUS line says so until the next good reload.
    pub refused: watch::Sender<Option<String>>,
}

/// SIGHUP: re-read the config and the licenses; sessions stay. The new
/// config is published, so the cloud loops pick up a changed `[cloud]` at
/// once. Speaks systemd's reload protocol: `RELOADING=1` with
/// `MONOTONIC_USEC=`, then `READY=1` with a STATUS line that says whether
/// the reload was taken or refused (a refused one keeps the running config;
/// systemd has no way yet to fail a reload job from the service's side).
pub async fn reloader(
    path: PathBuf,
    shared: Arc<Shared>,
    publish: Publish,
    cancel: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    while cancel
        .run_until_cancelled(hup.recv())
        .await
        .flatten()
        .is_some()
    {
        sys::systemd::notify(&sys::systemd::reloading_message());
        // The reload reads the state directory: first make sure it holds
        // what is in force (a bundle the cloud just sent may not be written).
        shared.persist.flush().await;
        // File reads, user lookups: off the single runtime thread.
        let (p, s) = (path.clone(), shared.clone());
        let refused = match tokio::task::spawn_blocking(move || reload(&p, &s)).await {
            Ok(Ok((config, policy))) => {
                publish.policy.send_replace(Arc::new(policy));
                publish.config.send_replace(Arc::new(config));
                tracing::info!("config and licenses reloaded; sessions kept");
                super::alerting::usage(&shared);
                super::alerting::licenses(&shared);
                None
            }
            Ok(Err(why)) => Some(why),
            Err(e) => {
                tracing::error!(error = %e, "the reload did not finish; the running config stays");
                Some("the reload did not finish".to_string())
            }
        };
        publish.refused.send_replace(refused.clone());
        let line = summary_line(&shared, refused.as_deref());
        sys::systemd::notify(&format!("READY=1\nSTATUS={line}"));
    }
}

/// The STATUS line for the state as it is now.
pub fn summary_line(shared: &Shared, reload_refused: Option<&str>) -> String {
    let state = shared.peek();
    Summary {
        cap: state.cap(Utc::now(), Instant::now()),
        in_use: state.seats.in_use(),
        cloud: state.cloud.as_ref(),
        reload_refused,
    }
    .line()
}

/// Keeps systemd's STATUS line (`systemctl status`) current: looks once a
/// second and sends it when it changed, so at most once a second.
pub async fn systemd_status(
    shared: Arc<Shared>,
    mut sent: String,
    refused: watch::Receiver<Option<String>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while cancel.run_until_cancelled(tick.tick()).await.is_some() {
        let line = summary_line(&shared, refused.borrow().as_deref());
        if line != sent {
            sys::systemd::notify(&format!("STATUS={line}"));
            sent = line;
        }
    }
}

fn reload(path: &std::path::Path, shared: &Shared) -> Result<(Config, Policy), String> {
    let new = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, keeping the running config: {e}");
            // The first line names the file and counts the problems; the
            // journal has them all.
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            return Err(format!("{first} (see the journal)"));
        }
    };
    let current = shared.config();
    if new.socket != current.socket
        || new.runtime_dir != current.runtime_dir
        || new.device != current.device
        || new.reconcile != current.reconcile
        || new.admission.max_connections != current.admission.max_connections
    {
        tracing::warn!(
            "socket, runtime_dir, device, max_connections and [[reconcile]] changes take effect at the next restart"
        );
    }
    let lic = disk::load(
        &new.state_dir,
        new.bundle_file.as_deref(),
        &new.license_rules(),
        Utc::now(),
    );
    super::report_licenses(&new.device, &lic);
    shared.lock().licenses.replace(lic);
    shared.persist.ring();
    let policy = policy(&new);
    Ok((new, policy))
}
