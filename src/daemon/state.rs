//! The gateway's state in one place: the admission core, the licenses in
//! force, the book of pool leases and the cloud's sync record, behind one
//! lock so every decision sees one cap and one count. The cap, the pool
//! reports and the status are computed here from that state (pure, the
//! instants are arguments); `Shared` adds the lock and what the tasks share.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use std::collections::{BTreeMap, BTreeSet};

use super::denials::Denials;
use crate::admission::access::Policy;
use crate::admission::over_cap::{self, Countdown, Order};
use crate::admission::seats::Seats;
use crate::alerts::{Thresholds, Tracker};
use crate::cloud::demand::{Attempts, PoolSeen, PoolView};
use crate::cloud::policy::SyncRecord;
use crate::cloud::wire::{PoolReport, POOL_HEADROOM};
use crate::config::policy::SeatPolicy;
use crate::config::Config;
use crate::license::in_force::Licenses;
use crate::license::lease::{pool_usage, LeaseBook};
use crate::license::Cap;
use crate::status::{AdmissionStats, PolicyStatus, PoolStatus, Rounds, Status};
use crate::usage::History;

pub struct State {
    pub device: String,
    pub seats: Seats,
    pub licenses: Licenses,
    /// Slice leases of shared pools (docs/pools.md).
    pub leases: LeaseBook,
    /// The cloud sync's record, for status (None without `[cloud]`).
    pub cloud: Option<SyncRecord>,
    /// Why a state file could not be read or written, for status.
    pub file_warnings: Vec<String>,
    /// Clients refused for want of seats, counted once per window: the
    /// unmet demand in pool reports.
    pub attempts: Attempts,
    /// The last change of each pool's slice, for status: (pool, when on
    /// the license clock, `grown 40 -> 60`).
    pub slice_changes: Vec<(String, DateTime<Utc>, String)>,
    /// Background rounds finished, for status (and tests that wait for them).
    pub rounds: Rounds,
    /// Sessions each VPN server lists that the table does not know, by
    /// reconcile source: what accounts for lost seats (a damaged snapshot).
    pub lost_by_source: BTreeMap<String, u32>,
    /// Admission answers that could not be delivered.
    pub unanswered: u64,
    /// The usage alert level (`alerts`), and the thresholds it was fed with.
    pub alerts: Tracker,
    pub alert_thresholds: Thresholds,
    /// The last denials and their counts, for status.
    pub denial_log: Denials,
    /// Keys of the license warnings logged (`notices.json`).
    pub said: BTreeSet<String>,
    /// Admission counts and latency since the start, for status.
    pub admissions: AdmissionStats,
    /// Peaks per hour and day (kept in `usage.json` by the writer).
    pub usage: History,
    /// When the writer last wrote `usage.json` in this run (None: not yet).
    pub usage_saved: Option<Instant>,
    /// The over-cap countdown (`evict::look`), and the disconnecting
    /// policy it runs under (None: drain).
    pub countdown: Countdown,
    pub enforcing: Option<(Order, std::time::Duration)>,
}

impl State {
    pub fn cap_parts(&self, system: DateTime<Utc>, mono: Instant) -> Cap {
        self.licenses
            .entitlement
            .cap_with(self.licenses.now(system, mono), &self.leases.slices(mono))
    }

    pub fn cap(&self, system: DateTime<Utc>, mono: Instant) -> u32 {
        self.cap_parts(system, mono).total()
    }

    /// The cap a disconnecting `over_cap` enforces. On a gateway with
    /// leased pools (a member, or draining one it left) the sessions beyond
    /// its non-pool seats are pool sessions, and those drain, never cut
    /// (docs/pools.md): a slice that shrank or ran out with the cloud
    /// unreachable takes no seat from a session.
    pub fn enforced_cap(&self, system: DateTime<Utc>, mono: Instant) -> u32 {
        let cap = self.cap(system, mono);
        if self.report_pools(system, mono).is_empty() {
            cap
        } else {
            cap.max(self.seats.in_use())
        }
    }

    /// The pools to report, in report order: leased pools of the licenses
    /// in force (by id), then pools this gateway left but has not reported
    /// drained (remembered across restarts in `pools.json`). With each: its
    /// slice at `mono` (0 without a valid lease) and whether it is a member.
    fn report_pools(&self, system: DateTime<Utc>, mono: Instant) -> Vec<(String, u32, bool)> {
        let now = self.licenses.now(system, mono);
        let mut pools: Vec<(String, u32, bool)> = self
            .licenses
            .entitlement
            .leased_pools(now)
            .into_iter()
            .map(|p| {
                let slice = self.leases.slice(&p.id, mono).unwrap_or(0);
                (p.id.clone(), slice, true)
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
        self.pool_view(system, mono)
            .pools
            .into_iter()
            .map(|p| p.report)
            .collect()
    }

    /// What the pool loop sees: the reports, each pool's slice and lease,
    /// and the refusals so far.
    pub fn pool_view(&self, system: DateTime<Utc>, mono: Instant) -> PoolView {
        let pools = self.report_pools(system, mono);
        let cap = self.cap_parts(system, mono);
        let table = self.seats.table();
        let beyond = table
            .in_use()
            .saturating_sub(cap.builtin.saturating_add(cap.licensed));
        let slices: Vec<(&str, u32)> = pools.iter().map(|(p, s, _)| (p.as_str(), *s)).collect();
        let usage = pool_usage(beyond, &slices);
        let waiting = self.attempts.waiting(mono);
        let pools = pools
            .iter()
            .zip(usage)
            .map(|((pool, _, member), in_use)| {
                let held = self.leases.get(pool);
                PoolSeen {
                    report: PoolReport {
                        pool: pool.clone(),
                        in_use,
                        wanted: if *member {
                            in_use.saturating_add(POOL_HEADROOM).saturating_add(waiting)
                        } else {
                            0
                        },
                        // A pool left is no longer used here, whatever its lease says.
                        held_epoch: self.leases.held_epoch(pool, mono).filter(|_| *member),
                    },
                    member: *member,
                    slice: self.leases.slice(pool, mono).filter(|_| *member),
                    expires: held.map(|h| h.expires),
                    asked: held.map(|h| h.sent),
                    limited: held.and_then(|h| h.lease.limited),
                }
            })
            .collect();
        PoolView {
            pools,
            refused: self.attempts.refused,
        }
    }

    /// The pools this gateway may lease now (from the licenses in force).
    pub fn leased_pools(&self, system: DateTime<Utc>, mono: Instant) -> Vec<String> {
        let now = self.licenses.now(system, mono);
        self.licenses
            .entitlement
            .leased_pools(now)
            .into_iter()
            .map(|p| p.id.clone())
            .collect()
    }

    /// What status shows of each pool.
    fn pool_status(&self, system: DateTime<Utc>, mono: Instant) -> Vec<PoolStatus> {
        let now = self.licenses.now(system, mono);
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
            let slice = match (lic.counts_at(now), leased, valid) {
                (false, _, _) => 0,
                (true, true, true) => self.leases.slice(&p.id, mono).unwrap_or(0),
                (true, true, false) => 0,
                (true, false, _) => p.static_share().unwrap_or(0),
            };
            let changed = self.slice_changes.iter().find(|c| c.0 == p.id);
            out.push(PoolStatus {
                id: p.id.clone(),
                license: lic.id.clone(),
                seats: p.seats,
                leased,
                slice,
                in_use: usage(&p.id),
                lease_expires,
                lease_valid: valid,
                changed_at: changed.map(|c| c.1),
                change: changed.map(|c| c.2.clone()),
                others: p
                    .members
                    .iter()
                    .filter(|m| **m != self.device)
                    .cloned()
                    .collect(),
                limited: self.leases.get(&p.id).and_then(|h| h.lease.limited),
            });
        }
        out
    }

    /// Records the seats in use now against `cap` (the cap now) in the
    /// usage history, and a denial. True when the history changed and a
    /// write of it is due (the writer writes it at most every
    /// `persist::USAGE_EVERY`).
    pub fn record_usage(
        &mut self,
        system: DateTime<Utc>,
        mono: Instant,
        cap: u32,
        denied: bool,
    ) -> bool {
        let now = self.licenses.now(system, mono);
        let in_use = self.seats.in_use();
        self.usage.record(now, in_use, cap, denied) && self.usage_due(mono)
    }

    pub fn usage_due(&self, mono: Instant) -> bool {
        self.usage_saved
            .is_none_or(|t| mono.saturating_duration_since(t) >= super::persist::USAGE_EVERY)
    }

    pub fn usage_report(&self, system: DateTime<Utc>, mono: Instant) -> crate::usage::Report {
        crate::usage::Report {
            now: self.licenses.now(system, mono),
            cap: self.cap(system, mono),
            in_use: self.seats.in_use(),
            history: self.usage.clone(),
        }
    }

    pub fn status(&self, system: DateTime<Utc>, mono: Instant, policy: &SeatPolicy) -> Status {
        let mut status = Status::build(
            &self.device,
            self.seats.table(),
            &self.licenses,
            self.cloud.as_ref(),
            self.licenses.now(system, mono),
            &self.leases.slices(mono),
            self.pool_status(system, mono),
        );
        status.warnings.extend(self.file_warnings.iter().cloned());
        if let Some(fault) = self.seats.fault() {
            status.warnings.push(format!(
                "{fault}: new sessions are refused until it can be written again (sessions held keep their seats)"
            ));
        }
        status.rounds = self.rounds;
        status.unanswered = self.unanswered;
        status.alert_level = self.alerts.level;
        status.alerts = self.alert_thresholds.clone();
        self.denial_log.fill(&mut status);
        status.admissions = self.admissions.clone();
        if let Some((order, grace)) = self.enforcing {
            let over_for = self.countdown.over_for(mono);
            let cap = self.enforced_cap(system, mono);
            status.over_cap =
                over_cap::plan(self.seats.table(), cap, order, grace, over_for, system);
        }
        status.policy = PolicyStatus::build(policy, self.seats.table(), status.cap_total);
        status
    }
}

/// What the daemon's tasks share: the state behind its lock, the running
/// config and peer policy (replaced whole on SIGHUP), and the persistence
/// writer's doorbell.
pub struct Shared {
    state: Mutex<State>,
    /// Counts `lock` calls: a status rendering is current while it stays.
    touched: AtomicU64,
    /// The reason new sessions are being denied for (0: none since the
    /// last admission), so a run of denials is one warning, not a flood.
    pub denying: AtomicU8,
    pub config: watch::Receiver<Arc<Config>>,
    pub policy: watch::Receiver<Arc<Policy>>,
    pub persist: super::persist::Doorbell,
    pub status_cache: super::status_cache::StatusCache,
    /// Wakes the pool loop to look at demand now (`cloud::demand`).
    pub pool_bell: Arc<tokio::sync::Notify>,
}

impl Shared {
    pub fn new(
        state: State,
        config: watch::Receiver<Arc<Config>>,
        policy: watch::Receiver<Arc<Policy>>,
        persist: super::persist::Doorbell,
    ) -> Shared {
        Shared {
            state: Mutex::new(state),
            touched: AtomicU64::new(0),
            denying: AtomicU8::new(0),
            config,
            policy,
            persist,
            status_cache: Default::default(),
            pool_bell: Default::default(),
        }
    }

    /// Asks the pool loop to look at demand (a refusal, usage near the
    /// top of a slice, seats freed); cheap, rings fold into one look.
    pub fn ring_pools(&self) {
        self.pool_bell.notify_one();
    }

    /// Locks the state. A panic while holding the lock cannot leave the
    /// table half-changed (every change is one map operation), so a
    /// poisoned lock is taken over rather than taking the daemon down.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.touched.fetch_add(1, Ordering::Relaxed);
        self.peek()
    }

    /// Locks the state to read it: a caller that changes nothing.
    pub fn peek(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes whenever the state may have changed.
    pub fn version(&self) -> u64 {
        self.touched.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }
}
