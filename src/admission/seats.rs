//! The seat authority: the session table, its journal and the licenses in
//! force, kept together behind one lock so every decision sees one cap and
//! one count. Synchronous and short: never held across an await.

use chrono::{DateTime, Utc};

use super::journal::Journal;
use super::protocol::{AdmitRequest, AdmitResponse, DenyReason, ReleaseResponse};
use super::table::{Decision, ServerId, Session, Table};
use crate::cloud::policy::SyncRecord;
use crate::config::Config;
use crate::license::bundle::{BundleError, SignedBundle};
use crate::licensing::Licenses;
use crate::reconcile::Listing;
use crate::status::Status;

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
}

impl Seats {
    pub fn new(device: String, table: Table, journal: Journal, licenses: Licenses) -> Self {
        Seats {
            device,
            table,
            journal,
            licenses,
            cloud: None,
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
        self.licenses
            .entitlement
            .cap_at(self.licenses.now(system))
            .total()
    }

    pub fn admit(
        &mut self,
        req: &AdmitRequest,
        server: ServerId,
        system: DateTime<Utc>,
    ) -> AdmitResponse {
        let cap = self.cap(system);
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
        Status::build(
            &self.device,
            &self.table,
            &self.licenses,
            self.cloud.as_ref(),
            self.licenses.now(system),
        )
    }

    /// The counters alone, for reports that do not list sessions.
    pub fn usage(&self, system: DateTime<Utc>) -> Usage {
        let now = self.licenses.now(system);
        Usage {
            now,
            cap: self.licenses.entitlement.cap_at(now).total(),
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
