//! The sync loop: on the policy's schedule, fetch this device's bundle,
//! offer it to the gateway (the licensing rules decide), have an accepted
//! one persisted, report usage, and keep the record status shows. One
//! tracing span per cycle. Stops on the daemon's CancellationToken; a
//! config change (SIGHUP) rebuilds the client and syncs at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::{CloudClient, CloudError, Fetched};
use super::policy::{self, FailureKind, Outcome, Severity, StampSeen, SyncRecord, Timing};
use super::Gateway;
use crate::config::{Cloud, Config};
use crate::license::bundle::BundleError;
use crate::license::stamp::{self, NONCE_BYTES};

/// What went wrong in one cycle.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// The bundle failed verification or the acceptance rules; the bundle
    /// in force stays.
    #[error("bundle from the cloud refused, keeping the bundle in force: {0}")]
    Rejected(#[from] BundleError),
}

impl SyncError {
    pub fn kind(&self) -> FailureKind {
        match self {
            SyncError::Cloud(e) => e.kind(),
            SyncError::Rejected(_) => FailureKind::Rejected,
        }
    }
}

/// How long to sleep when there is no `[cloud]` section: only a reload wakes it.
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// Runs until `cancel`.
pub async fn run<G: Gateway>(
    gateway: Arc<G>,
    mut configs: watch::Receiver<Arc<Config>>,
    cancel: CancellationToken,
) {
    let mut client: Option<(Cloud, CloudClient)> = None;
    let mut record = SyncRecord::default();
    let mut etag: Option<String> = None;
    let mut wait = Duration::ZERO;
    let mut cycle: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            changed = configs.changed() => {
                if changed.is_err() {
                    return;
                }
                // The reload re-read the licenses from disk: fetch in full,
                // and re-read the key files (they may have been renewed).
                client = None;
            }
        }
        let config = configs.borrow_and_update().clone();
        let Some(cloud) = config.cloud.clone() else {
            if client.take().is_some() {
                tracing::info!("[cloud] removed from the config; cloud sync stopped");
            }
            gateway.set_sync_record(None);
            wait = IDLE;
            continue;
        };
        let timing = Timing {
            poll: cloud.poll_interval,
            max_backoff: cloud.max_backoff,
        };
        if client.as_ref().map(|(c, _)| c) != Some(&cloud) {
            etag = None;
            if record.url != cloud.url.as_str() {
                record = SyncRecord::new(cloud.url.as_str());
            }
            match CloudClient::new(&cloud, &config.device) {
                Ok(c) => {
                    tracing::info!(url = %cloud.url, poll_ms = cloud.poll_interval.as_millis() as u64, "cloud sync configured");
                    client = Some((cloud.clone(), c));
                }
                Err(e) => {
                    tracing::error!("cloud sync cannot start: {e}");
                    client = None;
                    let outcome = Outcome::Failed {
                        kind: FailureKind::Unexpected,
                        message: e.to_string(),
                        retry_after: None,
                    };
                    wait = record.record(&outcome, timing, Utc::now(), random());
                    gateway.set_sync_record(Some(record.clone()));
                    continue;
                }
            }
        }
        let Some((_, http)) = client.as_ref() else {
            continue;
        };
        cycle += 1;
        let span = tracing::info_span!("sync", cycle, url = %cloud.url);
        let cycle_done = async {
            let result = sync_once(http, &*gateway, &config, &mut etag, &mut record).await;
            let outcome = match result {
                Ok(()) => {
                    if record.failures > 0 {
                        tracing::info!(after_failures = record.failures, "cloud sync recovered");
                    }
                    Outcome::Synced
                }
                Err(e) => {
                    let kind = e.kind();
                    if kind.is_transient() {
                        tracing::warn!(kind = kind.label(), "cloud sync failed: {e}");
                    } else {
                        tracing::error!(kind = kind.label(), "cloud sync failed: {e}");
                    }
                    Outcome::Failed {
                        kind,
                        message: e.to_string(),
                        retry_after: match &e {
                            SyncError::Cloud(c) => c.retry_after(),
                            SyncError::Rejected(_) => None,
                        },
                    }
                }
            };
            let now = Utc::now();
            wait = record.record(&outcome, timing, now, random());
            if outcome != Outcome::Synced {
                say_what_it_means(&*gateway, &record, now);
            }
            if outcome == Outcome::Synced {
                report_usage(http, &*gateway, &mut record).await;
            }
            tracing::debug!(next_in_ms = wait.as_millis() as u64, "next sync attempt");
        }
        .instrument(span);
        // A request in flight must not hold up shutdown.
        if cancel.run_until_cancelled(cycle_done).await.is_none() {
            return;
        }
        gateway.set_sync_record(Some(record.clone()));
    }
}

/// Fetches the bundle and offers it to the gateway; first hands the
/// answer's time stamp, if it verifies, to the license clock (so the bundle
/// is judged at the corrected clock).
async fn sync_once(
    http: &CloudClient,
    gateway: &impl Gateway,
    config: &Config,
    etag: &mut Option<String>,
    record: &mut SyncRecord,
) -> Result<(), SyncError> {
    let nonce = stamp::nonce(nonce_bytes());
    let sent = Instant::now();
    let answer = http.fetch_bundle(etag.as_deref(), &nonce).await?;
    let seen = match answer.stamp.as_deref() {
        None => StampSeen::Missing,
        Some(header) => match stamp::verify(header, &config.trusted_keys, &config.device, &nonce) {
            Ok(s) => {
                gateway.stamp(s.at, sent);
                StampSeen::Verified { at: s.at }
            }
            Err(e) => StampSeen::Refused {
                reason: e.to_string(),
            },
        },
    };
    if seen.differs_from(record.stamp.as_ref()) {
        match &seen {
            StampSeen::Verified { at } => {
                tracing::info!(%at, "the cloud's answers carry a verified signed time; it keeps the license clock right")
            }
            StampSeen::Missing => {
                tracing::info!("the cloud's answers carry no signed time stamp; a forward jump of the license clock heals only through a pool lease")
            }
            StampSeen::Refused { reason } => {
                tracing::warn!("signed time stamp from the cloud refused, the license clock ignores it: {reason}")
            }
        }
    }
    record.stamp = Some(seen);
    match answer.fetched {
        Fetched::NotModified => {
            tracing::debug!("bundle unchanged (304)");
            Ok(())
        }
        Fetched::Bundle { text, etag: tag } => {
            let offered = gateway.offer_bundle(&text)?;
            *etag = tag;
            let generation = offered.generation;
            if offered.changed {
                tracing::info!(
                    generation,
                    cap_before = offered.cap_before,
                    cap = offered.cap_after,
                    "new bundle accepted from the cloud"
                );
                if offered.cap_after != offered.cap_before {
                    tracing::warn!(
                        from = offered.cap_before,
                        to = offered.cap_after,
                        "the seat cap changed with the cloud's bundle"
                    );
                }
                gateway.persist();
            } else {
                tracing::debug!(generation, "bundle from the cloud is the one in force");
            }
            Ok(())
        }
    }
}

/// Says loudly what a failed sync means for the seats.
fn say_what_it_means(gateway: &impl Gateway, record: &SyncRecord, now: chrono::DateTime<Utc>) {
    let alarm = policy::alarm(record.last_success, gateway.bundle_not_after(), now);
    match alarm.severity {
        Severity::Error => tracing::error!(failures = record.failures, "{}", alarm.message),
        Severity::Warning => tracing::warn!(failures = record.failures, "{}", alarm.message),
    }
}

async fn report_usage(http: &CloudClient, gateway: &impl Gateway, record: &mut SyncRecord) {
    let report = gateway.usage();
    match http.report_usage(&report).await {
        Ok(()) => record.last_report = Some(Utc::now()),
        Err(e) => tracing::warn!("usage report not delivered (the next sync tries again): {e}"),
    }
}

/// A nonce's bytes from the OS. Should that fail, the time and a counter
/// still make it unique in this run, which is what refuses replays (the
/// cloud is reached over mTLS only).
fn nonce_bytes() -> [u8; NONCE_BYTES] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; NONCE_BYTES];
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    bytes
}

/// Jitter source: any value will do, a failing OS source gives no jitter.
fn random() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_or(0, |()| u64::from_le_bytes(bytes))
}
