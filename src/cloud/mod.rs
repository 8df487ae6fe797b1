//! Cloud sync: the gateway pulls its signed bundle (bound and replica
//! licenses) from the cloud and reports its seat usage. `wire` (endpoints,
//! bodies, status codes: no I/O), `policy` (next attempt, backoff, jitter,
//! the status to show: pure), `client` (HTTPS with mTLS, reqwest + rustls),
//! `sync` (the bundle loop), `pools` (the slice-lease loop of shared pools,
//! docs/pools.md) with `demand` (when it asks early: pure) and `slices`
//! (what a slice did: pure). Both loops talk to the gateway through
//! `Gateway` only.
//! The contract is written down in docs/cloud-api.md.

pub mod client;
pub mod demand;
pub mod policy;
pub mod pools;
pub mod slices;
pub mod sync;
pub mod wire;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::license::bundle::{BundleError, Signed};
use crate::license::lease::LeaseError;
use demand::PoolView;
use policy::SyncRecord;
use wire::{PoolReport, UsageReport};

/// What offering a bundle changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    /// False when the bundle is the one in force already.
    pub changed: bool,
    pub cap_before: u32,
    pub cap_after: u32,
    pub generation: Option<u64>,
}

/// What taking the cloud's leases did.
#[derive(Debug, Default)]
pub struct Taken {
    pub refused: Vec<LeaseError>,
    /// The shortest lease now held, for the retry schedule.
    pub shortest: Option<Duration>,
}

/// What the cloud loops need of the gateway: a narrow view of its seats
/// and licenses.
pub trait Gateway: Send + Sync + 'static {
    /// Offers a signed bundle; the licensing rules decide.
    fn offer_bundle(&self, text: &str) -> Result<Offered, BundleError>;
    /// A verified time stamp from a bundle answer: the cloud's signed time
    /// `at`, fresh for the request sent at `sent` (corrects the license
    /// clock like a new lease's `issued_at`).
    fn stamp(&self, at: DateTime<Utc>, sent: Instant);
    /// When the bundle in force runs out.
    fn bundle_not_after(&self) -> Option<DateTime<Utc>>;
    /// Counters for the portal.
    fn usage(&self) -> UsageReport;
    /// Pool usage and demand to report (docs/pools.md), the slices and
    /// the refusals so far, at `mono`.
    fn pool_view(&self, mono: Instant) -> PoolView;
    /// A slice changed (for status).
    fn slice_changed(&self, change: &slices::Change);
    /// Takes the cloud's answer to `reports`, sent at `sent`.
    fn take_leases(&self, reports: &[PoolReport], leases: &[Signed], sent: Instant) -> Taken;
    /// When the leases want renewing (None: no valid lease).
    fn lease_renew_at(&self, mono: Instant) -> Option<Instant>;
    /// The sync record, for status (None: no `[cloud]`).
    fn set_sync_record(&self, record: Option<SyncRecord>);
    /// Something the state directory must keep changed (a new bundle, leases).
    fn persist(&self);
}
