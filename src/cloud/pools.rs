//! The pool part of cloud sync (docs/pools.md): report this gateway's pool
//! usage and demand, take the signed slice leases the cloud answers, and
//! renew them a third into the lease. Runs beside the bundle loop with its
//! own client built from the same `[cloud]` section (same mTLS identity).
//! When to try next is `next_wait`, pure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::CloudClient;
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

/// Runs until `cancel`. After each answer the gateway is asked to persist
/// what the lease book must remember across a restart (pools, epochs).
pub async fn run<G: Gateway>(
    gateway: Arc<G>,
    configs: watch::Receiver<Arc<Config>>,
    cancel: CancellationToken,
) {
    let mut client: Option<(Cloud, CloudClient)> = None;
    let mut wait = Duration::ZERO;
    let mut failures: u32 = 0;
    let mut lease_len: Option<Duration> = None;
    let mut cycle: u64 = 0;
    loop {
        if cancel
            .run_until_cancelled(tokio::time::sleep(wait))
            .await
            .is_none()
        {
            return;
        }
        let config = configs.borrow().clone();
        let Some(cloud) = config.cloud.clone() else {
            client = None;
            wait = IDLE_CHECK;
            continue;
        };
        if client.as_ref().map(|(c, _)| c) != Some(&cloud) {
            match CloudClient::new(&cloud, &config.device) {
                Ok(c) => client = Some((cloud.clone(), c)),
                Err(e) => {
                    // The bundle loop reports this in status; just wait.
                    tracing::debug!("pool sync cannot start: {e}");
                    client = None;
                    wait = MAX_RETRY;
                    continue;
                }
            }
        }
        let Some((_, http)) = client.as_ref() else {
            continue;
        };
        let reports = gateway.pool_reports(Instant::now());
        if reports.is_empty() {
            wait = IDLE_CHECK;
            continue;
        }
        cycle += 1;
        let span = tracing::info_span!("pools", cycle);
        let cycle_done = async {
            let sent = Instant::now();
            match http.post_pools(&reports).await {
                Ok(leases) => {
                    if failures > 0 {
                        tracing::info!(after_failures = failures, "pool leases renewed again");
                    }
                    failures = 0;
                    let taken = gateway.take_leases(&reports, &leases, sent);
                    for e in taken.refused {
                        tracing::error!("{e}");
                    }
                    lease_len = taken.shortest.or(lease_len);
                    gateway.persist();
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
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
        wait = next_wait(now, renew_at, failures, lease_len);
    }
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
