//! The seat authority: the session table, its journal and the licenses in
//! force, kept together behind one lock so every decision sees one cap and
//! one count. Synchronous and short: never held across an await.

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::journal::Journal;
use super::protocol::{AdmitRequest, AdmitResponse, DenyReason, ReleaseResponse};
use super::table::{Decision, ServerId, Session, Table};
use crate::cloud::policy::SyncRecord;
use crate::cloud::wire::{PoolReport, POOL_HEADROOM};
use crate::config::Config;
use crate::license::bundle::SignedBundle as Signed;
use crate::license::bundle::{BundleError, SignedBundle};
use crate::license::lease::{pool_usage, LeaseBook, LeaseError, Remembered};
use crate::licensing::{Licenses, PoolsFileError};
use crate::reconcile::Listing;
use crate::status::{PoolStatus, Status};

/// Seat counters at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub now: DateTime<Utc>,
    pub cap: u32,
    pub in_use: u32,
    pub peak: u32,
    pub peak_at: Option<DateTime<Utc>>,
    pub denials: u64,
    pub generation: Option<u64>,
}

pub struct Seats {
    pub device: String,
    table: Table,
    journal: Journal,
    licenses: Licenses,
    /// The cloud sync's record, for status (None without `[cloud]`).
    cloud: Option<SyncRecord>,
    /// Slice leases of shared pools (docs/pools.md).
    leases: LeaseBook,
    /// What `pools.json` holds (as far as this process knows).
    pools_saved: Remembered,
    /// Why `pools.json` could not be read or written, for status.
    pools_file_warning: Option<String>,
    /// `table.denials` when the last pool report was delivered.
    denials_reported: u64,
}

impl Seats {
    pub fn new(device: String, table: Table, journal: Journal, licenses: Licenses) -> Self {
        Seats {
            device,
            table,
            journal,
            licenses,
            cloud: None,
            leases: LeaseBook::default(),
            pools_saved: Remembered::default(),
            pools_file_warning: None,
            denials_reported: 0,
        }
    }

    /// Takes what `pools.json` remembered into the lease book (start-up).
    /// Unreadable, the book stays empty and status says why.
    pub fn restore_leases(&mut self, loaded: Result<Remembered, PoolsFileError>) {
        match loaded {
            Ok(saved) => {
                self.leases = LeaseBook::restore(&saved);
                self.pools_saved = saved;
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.pools_file_warning = Some(e.to_string());
            }
        }
    }

    /// What `pools.json` should hold now, if that differs from what it holds.
    pub fn pools_to_save(&self) -> Option<Remembered> {
        let now = self.leases.remembered();
        (now != self.pools_saved).then_some(now)
    }

    /// Records the outcome of writing `saved` to `pools.json`.
    pub fn note_pools_saved(&mut self, saved: Remembered, result: Result<(), PoolsFileError>) {
        match result {
            Ok(()) => {
                self.pools_saved = saved;
                self.pools_file_warning = None;
            }
            Err(e) => {
                // Retried at the next pool cycle; said once, not every cycle.
                if self.pools_file_warning.is_none() {
                    tracing::warn!("{e}");
                }
                self.pools_file_warning = Some(e.to_string());
            }
        }
    }

    pub fn licenses(&self) -> &Licenses {
        &self.licenses
    }

    pub fn set_licenses(&mut self, licenses: Licenses) {
        self.licenses = licenses;
    }

    /// Offers a signed bundle from the cloud to the licenses in force under
    /// the licensing rules. Returns whether it replaced the bundle in force;
    /// refused, nothing changes.
    pub fn offer_bundle(
        &mut self,
        config: &Config,
        text: &str,
        system: DateTime<Utc>,
    ) -> Result<bool, BundleError> {
        let before = self.licenses.current.as_ref().map(|(s, _)| s.clone());
        self.licenses.offer(config, text, system)?;
        Ok(self.licenses.current.as_ref().map(|(s, _)| s) != before.as_ref())
    }

    /// Records that `signed` is on disk: no need to write it again.
    pub fn note_persisted(&mut self, signed: Option<&SignedBundle>) {
        if self.licenses.current.as_ref().map(|(s, _)| s) == signed {
            self.licenses.changed = false;
        }
    }

    pub fn set_cloud(&mut self, record: Option<SyncRecord>) {
        self.cloud = record;
    }

    /// Records that the clock's high-water mark reached `at` on disk.
    pub fn note_high_water(&mut self, at: Option<DateTime<Utc>>) {
        self.licenses.high_water = self.licenses.high_water.max(at);
    }

    pub fn cap(&self, system: DateTime<Utc>) -> u32 {
        self.cap_parts(system, Instant::now()).total()
    }

    fn cap_parts(&self, system: DateTime<Utc>, mono: Instant) -> crate::license::Cap {
        self.licenses
            .entitlement
            .cap_with(self.licenses.now(system), &self.leases.slices(mono))
    }

    /// The pools to report, in report order: leased pools of the licenses in
    /// force (by id), then pools this gateway left but has not reported
    /// drained (remembered across restarts in `pools.json`). With each: its slice at `mono` (0 without a valid lease).
    fn report_pools(&self, system: DateTime<Utc>, mono: Instant) -> Vec<(String, u32, bool)> {
        let now = self.licenses.now(system);
        let mut pools: Vec<(String, u32, bool)> = self
            .licenses
            .entitlement
            .leased_pools(now)
            .into_iter()
            .map(|p| {
                (
                    p.id.clone(),
                    self.leases.slice(&p.id, mono).unwrap_or(0),
                    true,
                )
            })
            .collect();
        let left: Vec<String> = self
            .leases
            .pools()
            .filter(|id| !pools.iter().any(|(p, _, _)| p == id))
            .map(str::to_string)
            .collect();
        pools.extend(left.into_iter().map(|id| (id, 0, false)));
        pools
    }

    /// This gateway's pool usage and demand, for the cloud (docs/pools.md).
    pub fn pool_reports(&self, system: DateTime<Utc>, mono: Instant) -> Vec<PoolReport> {
        let pools = self.report_pools(system, mono);
        let cap = self.cap_parts(system, mono);
        let beyond = self
            .table
            .in_use()
            .saturating_sub(cap.builtin.saturating_add(cap.licensed));
        let slices: Vec<(&str, u32)> = pools.iter().map(|(p, s, _)| (p.as_str(), *s)).collect();
        let usage = pool_usage(beyond, &slices);
        let denied = u32::try_from(self.table.denials.saturating_sub(self.denials_reported))
            .unwrap_or(u32::MAX);
        pools
            .iter()
            .zip(usage)
            .map(|((pool, _, member), in_use)| PoolReport {
                pool: pool.clone(),
                in_use,
                wanted: if *member {
                    in_use.saturating_add(POOL_HEADROOM).saturating_add(denied)
                } else {
                    0
                },
                // A pool left is no longer used here, whatever its lease says.
                held_epoch: self.leases.held_epoch(pool, mono).filter(|_| *member),
            })
            .collect()
    }

    /// Takes the cloud's answer to `reports` (sent at `sent`): accepts each
    /// lease the rules allow, forgets left pools reported drained. Returns
    /// the refused leases' errors.
    pub fn take_leases(
        &mut self,
        config: &Config,
        reports: &[PoolReport],
        leases: &[Signed],
        sent: Instant,
    ) -> Vec<LeaseError> {
        let now = self.licenses.now(Utc::now());
        let pools: Vec<String> = self
            .licenses
            .entitlement
            .leased_pools(now)
            .into_iter()
            .map(|p| p.id.clone())
            .collect();
        let allowed: Vec<&str> = pools.iter().map(String::as_str).collect();
        let mut errors = Vec::new();
        for signed in leases {
            match self
                .leases
                .accept(signed, &config.trusted_keys, &self.device, &allowed, sent)
            {
                Ok(held) => {
                    tracing::debug!(pool = %held.lease.pool, seats = held.lease.seats, epoch = held.lease.epoch, "slice lease accepted")
                }
                Err(e) => errors.push(e),
            }
        }
        for r in reports {
            if r.in_use == 0 && !pools.contains(&r.pool) {
                tracing::info!(pool = %r.pool, "left pool reported drained; forgotten");
                self.leases.forget(&r.pool);
            }
        }
        self.denials_reported = self.table.denials;
        errors
    }

    /// The lease held for `pool`, valid or not.
    pub fn lease(&self, pool: &str) -> Option<&crate::license::lease::Held> {
        self.leases.get(pool)
    }

    /// When the slice leases want renewing (None: no valid lease).
    pub fn lease_renew_at(&self, mono: Instant) -> Option<Instant> {
        self.leases.renew_at(mono)
    }

    /// What status shows of each pool.
    fn pool_status(&self, system: DateTime<Utc>, mono: Instant) -> Vec<PoolStatus> {
        let now = self.licenses.now(system);
        let reports = self.pool_reports(system, mono);
        let usage = |id: &str| {
            reports
                .iter()
                .find(|r| r.pool == id)
                .map_or(0, |r| r.in_use)
        };
        let expiry = |id: &str| {
            self.leases.get(id).map(|h| {
                let left = h.expires.saturating_duration_since(mono);
                let wall = system + chrono::Duration::from_std(left).unwrap_or_default();
                (wall, h.expires > mono)
            })
        };
        let mut out: Vec<PoolStatus> = Vec::new();
        for lic in &self.licenses.entitlement.licenses {
            let Some(p) = &lic.pool else { continue };
            let leased = p.static_share().is_none();
            let (lease_expires, valid) = expiry(&p.id).map_or((None, false), |(w, v)| (Some(w), v));
            out.push(PoolStatus {
                id: p.id.clone(),
                license: lic.id.clone(),
                seats: p.seats,
                leased,
                slice: if !lic.counts_at(now) {
                    0
                } else if leased {
                    if valid {
                        self.leases.slice(&p.id, mono).unwrap_or(0)
                    } else {
                        0
                    }
                } else {
                    p.static_share().unwrap_or(0)
                },
                in_use: usage(&p.id),
                lease_expires,
                lease_valid: valid,
                others: p
                    .members
                    .iter()
                    .filter(|m| **m != self.device)
                    .cloned()
                    .collect(),
            });
        }
        out
    }

    pub fn admit(
        &mut self,
        req: &AdmitRequest,
        server: ServerId,
        system: DateTime<Utc>,
    ) -> AdmitResponse {
        let cap = self.cap(system);
        // The same key from another server process (a pid reused by a new
        // worker before the old one's death was noticed) is a new session:
        // the old one is over, and the new one must pass the cap itself.
        if self
            .table
            .get(&req.key)
            .is_some_and(|old| old.server != server)
        {
            tracing::warn!(key = %req.key, "session key seen again from another server process; the old session is over");
            self.release(&req.key);
        }
        let (decision, change) = self.table.admit(req, server, cap, system);
        let mut decision = decision;
        if let Some(change) = change {
            if let Err(e) = self.journal.record(&change, &self.table) {
                tracing::error!(key = %req.key, error = %e, "cannot record the session in the runtime directory; denying it");
                self.table.forget(&req.key);
                decision = Decision::Denied(DenyReason::Internal);
            }
        }
        self.respond(req, decision, cap)
    }

    /// Refuses an admission decided outside the table (e.g. an unknown server).
    pub fn deny(
        &mut self,
        req: &AdmitRequest,
        reason: DenyReason,
        system: DateTime<Utc>,
    ) -> AdmitResponse {
        self.table.denials += 1;
        let cap = self.cap(system);
        self.respond(req, Decision::Denied(reason), cap)
    }

    fn respond(&self, req: &AdmitRequest, decision: Decision, cap: u32) -> AdmitResponse {
        let in_use = self.table.in_use();
        match decision {
            Decision::Admitted { again } => {
                if !again {
                    tracing::info!(key = %req.key, user = %req.user, remote = %req.remote, in_use, cap, "seat admitted");
                    if in_use == near_cap(cap) {
                        tracing::warn!(
                            in_use,
                            cap,
                            "seats nearly exhausted: {in_use} of {cap} in use"
                        );
                    }
                }
                AdmitResponse {
                    ok: true,
                    admitted: true,
                    again,
                    reason: None,
                    message: None,
                    cap,
                    in_use,
                }
            }
            Decision::Denied(reason) => {
                let message = deny_message(reason, cap, in_use);
                tracing::info!(key = %req.key, user = %req.user, remote = %req.remote, ?reason, in_use, cap, "seat denied: {message}");
                AdmitResponse {
                    ok: true,
                    admitted: false,
                    again: false,
                    reason: Some(reason),
                    message: Some(message),
                    cap,
                    in_use,
                }
            }
        }
    }

    pub fn release(&mut self, key: &str) -> ReleaseResponse {
        let released = self.table.release(key);
        if let Some((session, change)) = &released {
            if let Err(e) = self.journal.record(change, &self.table) {
                tracing::error!(key, error = %e, "cannot record a release; a restart before the next snapshot would bring this session back until its server is checked");
            }
            tracing::info!(key, user = %session.user, in_use = self.table.in_use(), "seat released");
        }
        ReleaseResponse {
            ok: true,
            released: released.is_some(),
            in_use: self.table.in_use(),
        }
    }

    /// The VPN server processes sessions live in (to check outside the lock).
    pub fn servers(&self) -> Vec<ServerId> {
        self.table.servers()
    }

    /// Releases every session of a server process that is gone.
    pub fn release_server(&mut self, server: ServerId) -> Vec<Session> {
        let freed = self.table.release_server(server);
        for (_, change) in &freed {
            if let Err(e) = self.journal.record(change, &self.table) {
                tracing::error!(error = %e, "cannot record a release");
            }
        }
        if !freed.is_empty() {
            tracing::warn!(pid = server.pid, kind = ?server.kind, freed = freed.len(), in_use = self.table.in_use(), "VPN server process is gone; its seats are free again");
        }
        freed.into_iter().map(|(s, _)| s).collect()
    }

    /// Releases the sessions a VPN server's own listing shows are gone
    /// (see `Listing::is_stale`), journaling each release.
    pub fn release_stale(
        &mut self,
        listing: &Listing,
        grace: std::time::Duration,
        source: &str,
    ) -> Vec<Session> {
        let keys: Vec<String> = self
            .table
            .sessions()
            .filter(|s| listing.is_stale(s, grace))
            .map(|s| s.key.clone())
            .collect();
        let mut freed = Vec::new();
        for key in keys {
            let Some((session, change)) = self.table.release(&key) else {
                continue;
            };
            if let Err(e) = self.journal.record(&change, &self.table) {
                tracing::error!(key, error = %e, "cannot record a release");
            }
            tracing::warn!(key, user = %session.user, since = %session.since, source, in_use = self.table.in_use(), "session is no longer in the VPN server's list; its seat is free again");
            freed.push(session);
        }
        freed
    }

    pub fn status(&self, system: DateTime<Utc>) -> Status {
        let mono = Instant::now();
        let mut status = Status::build(
            &self.device,
            &self.table,
            &self.licenses,
            self.cloud.as_ref(),
            self.licenses.now(system),
            &self.leases.slices(mono),
            self.pool_status(system, mono),
        );
        status.warnings.extend(self.pools_file_warning.clone());
        status
    }

    /// The counters alone, for reports that do not list sessions.
    pub fn usage(&self, system: DateTime<Utc>) -> Usage {
        let now = self.licenses.now(system);
        Usage {
            now,
            cap: self.cap(system),
            in_use: self.table.in_use(),
            peak: self.table.peak,
            peak_at: self.table.peak_at,
            denials: self.table.denials,
            generation: self.licenses.bundle().map(|b| b.generation),
        }
    }

    /// Folds the journal into a snapshot (clean shutdown).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.journal.compact(&self.table)
    }
}

/// The usage at which operators are warned: 90 % of the cap, rounded up.
fn near_cap(cap: u32) -> u32 {
    cap - cap / 10
}

fn deny_message(reason: DenyReason, cap: u32, in_use: u32) -> String {
    match reason {
        DenyReason::CapReached => format!("all {cap} seats are in use"),
        DenyReason::OverCap => format!(
            "{in_use} sessions hold seats but the cap is now {cap}; new sessions wait until {} end",
            in_use - cap + 1
        ),
        DenyReason::NoLicense => {
            "the seat cap is 0: no built-in seats and no active license".into()
        }
        DenyReason::UnknownServer => {
            "the VPN server process named in the request does not exist".into()
        }
        DenyReason::Internal => "the daemon could not record the session; see its log".into(),
    }
}
