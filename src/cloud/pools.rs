//! The pool part of cloud sync (docs/pools.md): report this gateway's pool
//! usage and demand, take the signed slice leases the cloud answers, and
//! renew them a third into the lease, or sooner when demand moves
//! (`demand`). Runs beside the bundle loop with its own client built from
//! the same `[cloud]` section (same mTLS identity). Every slice change is
//! logged (`slices`). When to renew or retry is `next_wait`, pure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::CloudClient;
use super::demand::{Pacer, PoolView};
use super::slices::{Kind, Watch};
use super::Gateway;
use crate::config::{Cloud, Config};

/// First retry after a failed pool request; doubles per failure.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Retries never wait longer than this (nor a third of the last lease).
pub const MAX_RETRY: Duration = Duration::from_secs(5);
/// With nothing to report (no leased pool), look again this often: a new
/// bundle or a reload may bring a pool.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The wait before the next pool request. `renew_at` is when the leases
/// want renewing (None: no valid lease), `failures` the failed requests in
/// a row, `lease` the last lease length seen.
pub fn next_wait(
    now: Instant,
    renew_at: Option<Instant>,
    failures: u32,
    lease: Option<Duration>,
) -> Duration {
    let cap = lease.map_or(MAX_RETRY, |l| (l / 3).min(MAX_RETRY));
    if failures > 0 {
        let backoff = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16));
        return backoff.min(cap).max(Duration::from_millis(50));
    }
    match renew_at {
        Some(at) => at.saturating_duration_since(now),
        None => cap,
    }
}

/// A ring wakes the loop to look again no sooner than this after its last
/// look: a storm of refusals costs a few looks a second, not thousands.
pub const LOOK_GAP: Duration = Duration::from_millis(50);

/// Runs until `cancel`. Looks at the gateway whenever `bell` rings (a
/// refusal, an admission near the top of the slice, a release), when a
/// lease runs out and when a request is due; asks the cloud when
/// `demand::Pacer` says so. After each answer the gateway is asked to
/// persist what the lease book must remember across a restart.
pub async fn run<G: Gateway>(
    gateway: Arc<G>,
    configs: watch::Receiver<Arc<Config>>,
    bell: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut client: Option<(Cloud, CloudClient)> = None;
    let mut scheduled = Instant::now();
    let mut failures: u32 = 0;
    let mut last_error = String::new();
    let mut lease_len: Option<Duration> = None;
    let mut cycle: u64 = 0;
    let mut pacer = Pacer::default();
    let mut slices = Watch::default();
    loop {
        let now = Instant::now();
        let view = gateway.pool_view(now);
        note(&*gateway, &mut slices, &view, failures, &last_error);
        let config = configs.borrow().clone();
        let cloud = config.cloud.clone().filter(|_| !view.pools.is_empty());
        let due = match cloud {
            Some(_) => pacer.due(now, &view, scheduled, failures > 0),
            None => now + IDLE_CHECK,
        };
        if due > now {
            let wake = view.next_expiry().map_or(due, |e| e.min(due));
            let rung = async {
                tokio::time::sleep(LOOK_GAP).await;
                bell.notified().await
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = rung => {}
            }
            continue;
        }
        let Some(cloud) = cloud else { continue };
        if client.as_ref().map(|(c, _)| c) != Some(&cloud) {
            match CloudClient::new(&cloud, &config.device) {
                Ok(c) => client = Some((cloud.clone(), c)),
                Err(e) => {
                    // The bundle loop reports this in status; just wait.
                    tracing::debug!("pool sync cannot start: {e}");
                    client = None;
                    failures = failures.saturating_add(1);
                    scheduled = now + MAX_RETRY;
                    continue;
                }
            }
        }
        let Some((_, http)) = client.as_ref() else {
            continue;
        };
        cycle += 1;
        let span = tracing::info_span!("pools", cycle);
        let reports = view.reports();
        let cycle_done = async {
            let sent = Instant::now();
            pacer.sent(sent);
            match http.post_pools(&reports).await {
                Ok(leases) => {
                    if failures > 0 {
                        tracing::info!(after_failures = failures, "pool leases renewed again");
                    }
                    failures = 0;
                    let taken = gateway.take_leases(&reports, &leases, sent);
                    for e in taken.refused {
                        tracing::error!("{e}; the slice in force stays until its lease runs out");
                    }
                    lease_len = taken.shortest.or(lease_len);
                    gateway.persist();
                    let after = gateway.pool_view(Instant::now());
                    let shrunk = note(&*gateway, &mut slices, &after, 0, "");
                    pacer.delivered(&view, shrunk);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    last_error = e.to_string();
                    tracing::warn!(
                        failures,
                        "pool slice renewal failed (slices hold until their leases run out): {e}"
                    );
                }
            }
        }
        .instrument(span);
        // A request in flight must not hold up shutdown.
        if cancel.run_until_cancelled(cycle_done).await.is_none() {
            return;
        }
        let now = Instant::now();
        let renew_at = gateway.lease_renew_at(now);
        scheduled = now + next_wait(now, renew_at, failures, lease_len);
    }
}

/// The wall-clock time of `at`, for a log line.
fn wall(at: Option<Instant>) -> String {
    let Some(at) = at else {
        return "-".into();
    };
    let now = Instant::now();
    let d = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
    let t = if at >= now {
        Utc::now() + d(at - now)
    } else {
        Utc::now() - d(now - at)
    };
    t.format("%H:%M:%S").to_string()
}

/// Logs what each slice did since the last look and tells status; true
/// when one shrank (the cloud must hear the smaller lease is held).
fn note<G: Gateway>(
    gateway: &G,
    slices: &mut Watch,
    view: &PoolView,
    failures: u32,
    last_error: &str,
) -> bool {
    let mut shrunk = false;
    for c in slices.observe(&view.pools) {
        let Some(p) = view.pools.iter().find(|p| p.report.pool == c.pool) else {
            continue;
        };
        let (pool, from, to, kind) = (&c.pool, c.from, c.to, c.kind.as_str());
        let (in_use, wanted) = (p.report.in_use, p.report.wanted);
        let head = format!("slice of {pool} {kind}: pooled seats {from} -> {to}");
        match c.kind {
            Kind::Granted | Kind::Grown | Kind::Shrunk => {
                shrunk |= c.kind == Kind::Shrunk;
                let drain = if in_use > to {
                    " (pool sessions here drain)"
                } else {
                    ""
                };
                let why = p.limited.map(|l| format!("; {l}")).unwrap_or_default();
                tracing::info!(
                    "{head}{drain}, wanted {wanted}, in use {in_use}, lease until {}{why}",
                    wall(p.expires)
                );
            }
            Kind::Expired | Kind::Withdrawn => {
                let why = if c.kind == Kind::Withdrawn {
                    "this gateway is no longer a member (share undone); its pool sessions drain"
                        .into()
                } else if failures > 0 {
                    format!("lease not renewed since {} (renewal failing: {last_error}); pool sessions here stay, new ones wait for a lease", wall(p.asked))
                } else {
                    format!(
                        "lease not renewed since {} (the cloud's answers carried no lease for it)",
                        wall(p.asked)
                    )
                };
                tracing::warn!("{head}, {why}");
            }
        }
        gateway.slice_changed(&c);
    }
    shrunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_a_third_into_the_lease_and_backs_off_on_failure() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let lease = Some(ms(1500));
        let cases = [
            (Some(t0 + ms(500)), 0, lease, ms(500)),
            (Some(t0), 0, lease, ms(0)),
            (None, 0, lease, ms(500)),
            (None, 0, None, MAX_RETRY),
            (Some(t0 + ms(500)), 1, lease, ms(250)),
            (Some(t0 + ms(500)), 2, lease, ms(500)),
            (Some(t0 + ms(500)), 5, lease, ms(500)),
            (None, 9, None, MAX_RETRY),
            (None, 40, Some(Duration::from_secs(3600)), MAX_RETRY),
        ];
        for (renew, failures, lease, want) in cases {
            assert_eq!(
                next_wait(t0, renew, failures, lease),
                want,
                "{renew:?} {failures} {lease:?}"
            );
        }
    }
}
