//! The narrow views the background loops get of the shared state: the
//! cloud loops' `Gateway` and reconciliation's `Sessions`. Each call takes
//! the lock once and logs what it changed.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::state::Shared;
use crate::admission::seats::Fault;
use crate::admission::table::{ServerId, Session};
use crate::cloud::policy::SyncRecord;
use crate::cloud::wire::{PoolReport, UsageReport, USAGE_FORMAT};
use crate::cloud::{Gateway, Offered, Taken};
use crate::license::bundle::{BundleError, Signed};
use crate::license::notices::notices;
use crate::license::time::{Correction, TOLERANCE};
use crate::reconcile::task::Sessions;
use crate::reconcile::Listing;

/// Logs what a signed time did to the engine's clock (`license::time`).
fn log_correction(c: Correction, signed: DateTime<Utc>) {
    match c {
        Correction::Applied {
            from,
            to,
            distrust_system,
        } => {
            if (to - from).abs() > TOLERANCE {
                tracing::warn!(%from, %to, "the license clock was corrected by a signed time from the cloud");
            }
            if distrust_system {
                tracing::warn!(%signed, system = %Utc::now(), "the system clock is ahead of the cloud's signed time; licenses follow the signed time until the system clock agrees (check NTP)");
            }
        }
        Correction::Stale { floor } => {
            tracing::debug!(%signed, %floor, "signed time older than one accepted before; the clock ignores it")
        }
        Correction::FromTheFuture { now } => {
            tracing::warn!(%signed, %now, "signed time from the cloud is ahead of the license clock; the clock ignores it (check the cloud's clock)")
        }
    }
}

/// Logs a journal write that failed after a release.
pub fn log_release_fault(fault: Fault) {
    if let Some(e) = fault {
        tracing::error!(error = %e, "cannot record a release in the runtime directory; a restart before the next snapshot would bring the session back until its server is checked");
    }
}

impl Gateway for Shared {
    fn offer_bundle(&self, text: &str) -> Result<Offered, BundleError> {
        let rules = self.config().license_rules();
        let (now, mono) = (Utc::now(), Instant::now());
        let mut state = self.lock();
        let cap_before = state.cap(now, mono);
        let dropped_before = state.licenses.dropped.clone();
        let changed = state.licenses.offer(&rules, text, now, mono)?;
        if let Some(d) = &state.licenses.dropped {
            if dropped_before.as_ref() != Some(d) {
                tracing::warn!(generation = d.since_generation, licenses = %d.ids.join(","), "{}", crate::text::shown(&d.message()));
            }
        }
        let offered = Offered {
            changed,
            cap_before,
            cap_after: state.cap(now, mono),
            generation: state.licenses.bundle().map(|b| b.generation),
        };
        drop(state);
        if changed {
            super::alerting::usage(self);
            super::alerting::licenses(self);
        }
        Ok(offered)
    }

    fn stamp(&self, at: DateTime<Utc>, sent: Instant) {
        let c = self.lock().licenses.correct(at, Utc::now(), sent);
        log_correction(c, at);
        // A clock moved by the correction is written at once, so a restart
        // does not bring the wrong mark back.
        if matches!(c, Correction::Applied { from, to, distrust_system } if distrust_system || (to - from).abs() > TOLERANCE)
        {
            self.persist.ring();
        }
    }

    fn bundle_not_after(&self) -> Option<DateTime<Utc>> {
        self.lock().licenses.bundle().map(|b| b.not_after)
    }

    fn usage(&self) -> UsageReport {
        let (system, mono) = (Utc::now(), Instant::now());
        let state = self.lock();
        let table = state.seats.table();
        UsageReport {
            format: USAGE_FORMAT,
            device: state.device.clone(),
            at: state.licenses.now(system, mono),
            cap: state.cap(system, mono),
            in_use: table.in_use(),
            peak: table.peak,
            peak_at: table.peak_at,
            denials: table.denials,
            generation: state.licenses.bundle().map(|b| b.generation),
            alert_level: Some(state.alerts.level),
            license_warnings: notices(
                &state.licenses.entitlement,
                state.licenses.now(system, mono),
            ),
        }
    }

    fn pool_reports(&self, mono: Instant) -> Vec<PoolReport> {
        self.lock().pool_reports(Utc::now(), mono)
    }

    fn take_leases(&self, reports: &[PoolReport], leases: &[Signed], sent: Instant) -> Taken {
        let config = self.config();
        let mut state = self.lock();
        let pools = state.leased_pools(Utc::now(), Instant::now());
        let allowed: Vec<&str> = pools.iter().map(String::as_str).collect();
        let mut taken = Taken::default();
        for signed in leases {
            match state
                .leases
                .accept(signed, &config.trusted_keys, &config.device, &allowed, sent)
            {
                Ok(held) => {
                    tracing::debug!(pool = %held.lease.pool, seats = held.lease.seats, epoch = held.lease.epoch, "slice lease accepted");
                    // Newly granted for this request (not a repeat): a fresh
                    // signed time, valid no earlier than the send instant.
                    if held.sent == sent {
                        let signed = held.lease.issued_at;
                        let c = state.licenses.correct(signed, Utc::now(), sent);
                        log_correction(c, signed);
                    }
                }
                Err(e) => taken.refused.push(e),
            }
        }
        for r in reports {
            if r.in_use == 0 && !pools.contains(&r.pool) {
                tracing::info!(pool = %r.pool, "left pool reported drained; forgotten");
                state.leases.forget(&r.pool);
            }
        }
        state.denials_reported = state.seats.table().denials;
        taken.shortest = reports
            .iter()
            .filter_map(|r| state.leases.get(&r.pool).map(|h| h.lease.valid_for()))
            .min();
        taken
    }

    fn lease_renew_at(&self, mono: Instant) -> Option<Instant> {
        self.lock().leases.renew_at(mono)
    }

    fn set_sync_record(&self, record: Option<SyncRecord>) {
        self.lock().cloud = record;
    }

    fn persist(&self) {
        self.persist.ring();
    }
}

impl Sessions for Shared {
    fn servers(&self) -> Vec<ServerId> {
        self.lock().seats.servers()
    }

    fn release_stale(&self, listing: &Listing, grace: Duration, source: &str) -> usize {
        let sources = self.config().reconcile.len();
        let mut state = self.lock();
        let (freed, mut fault) = state.seats.release_where(|s| listing.is_stale(s, grace));
        // Sessions the server lists that the table does not know hold the
        // seats lost with a damaged snapshot; once every server has been
        // asked, the lost seats are exactly those.
        let known = state
            .seats
            .table()
            .sessions()
            .filter(|s| listing.covers(s))
            .count();
        let unknown = listing.len().saturating_sub(known);
        let unknown = u32::try_from(unknown).unwrap_or(u32::MAX);
        state.lost_by_source.insert(source.to_string(), unknown);
        let lost = state.seats.table().lost;
        if lost > 0 && state.lost_by_source.len() >= sources {
            let counted = state
                .lost_by_source
                .values()
                .fold(0u32, |a, b| a.saturating_add(*b));
            if counted < lost {
                fault = fault.or(state.seats.set_lost(counted));
                tracing::warn!(from = lost, to = counted, "the VPN servers' own lists account for the sessions lost with the damaged snapshot");
            }
        }
        let in_use = state.seats.in_use();
        drop(state);
        log_release_fault(fault);
        for s in &freed {
            tracing::warn!(key = %s.key, user = %s.user, since = %s.since, source, in_use, "session is no longer in the VPN server's list; its seat is free again");
        }
        if !freed.is_empty() {
            super::alerting::usage(self);
        }
        freed.len()
    }

    fn round_done(&self) {
        self.lock().rounds.reconcile += 1;
    }
}

/// Releases every session of a server process that is gone; logs them.
pub fn release_server(shared: &Shared, server: ServerId) -> Vec<Session> {
    let mut state = shared.lock();
    let (freed, fault) = state.seats.release_server(server);
    let in_use = state.seats.in_use();
    drop(state);
    log_release_fault(fault);
    if !freed.is_empty() {
        tracing::warn!(pid = server.pid, kind = ?server.kind, freed = freed.len(), in_use, "VPN server process is gone; its seats are free again");
        super::alerting::usage(shared);
    }
    freed
}
