//! The admission core: the session table and its journal. Every decision
//! is one step under `&mut self` against a cap the caller computed, and
//! returns what happened (decision, cap, in use, the session) for the edge
//! to answer and log; nothing here formats wire bytes or log lines.
//! Synchronous and short: never held across an await.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::journal::Journal;
use super::protocol::{AdmitRequest, DenyReason};
use super::table::{Change, Decision, ServerId, Session, Table};
use crate::config::policy::SeatPolicy;

/// The outcome of an admission request.
#[derive(Debug)]
pub struct Admission {
    pub decision: Decision,
    pub cap: u32,
    pub in_use: u32,
    /// The session holding the seat (admitted now or before).
    pub session: Option<Session>,
    /// The user's oldest session, whose seat the new one took
    /// (`at_user_limit = "replace_oldest"`): out of the table, to be
    /// disconnected through its VPN server.
    pub replaced: Option<Session>,
    /// The journal could not record the admission: it was undone and denied.
    pub fault: Option<io::Error>,
}

/// Who asks for a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// The VPN server process that holds the session (as the kernel says).
    Server(ServerId),
    /// An operator or root: may free any session.
    Operator,
}

/// The outcome of a release request.
#[derive(Debug)]
pub enum Release {
    Released(Session),
    /// The key holds no seat (OpenVPN reports clients it rejected too).
    NotHeld,
    /// The key is held by another server process than the one asking.
    NotYours(Session),
}

/// A change applied to the table whose journal write failed.
pub type Fault = Option<io::Error>;

/// What opening the table found.
pub struct Opened {
    pub warnings: Vec<String>,
    /// The snapshot was damaged; the table counts its lost seats.
    pub damaged: Option<String>,
}

pub struct Seats {
    table: Table,
    journal: Journal,
    /// Admissions whose answers are still on their way, by key: the
    /// instance and how many answers (first and repeated admits) carry it.
    /// Once one is delivered the session is acknowledged and never undone.
    in_flight: HashMap<String, (u64, u32)>,
}

impl Seats {
    /// Loads the table from the runtime directory (snapshot + journal).
    pub fn open(dir: &Path, now: DateTime<Utc>) -> io::Result<(Seats, Opened)> {
        let opened = Journal::open(dir, now)?;
        let seats = Seats {
            table: opened.table.clone(),
            journal: opened.journal,
            in_flight: HashMap::new(),
        };
        let report = Opened {
            warnings: opened.warnings,
            damaged: opened.damaged,
        };
        Ok((seats, report))
    }

    /// Why the runtime directory cannot be written, while it cannot:
    /// admissions are refused meanwhile.
    pub fn fault(&self) -> Option<&str> {
        self.journal.fault()
    }

    /// Writes what a full directory held back; Ok once nothing is owed.
    pub fn retry(&mut self) -> io::Result<()> {
        self.journal.retry(&self.table)
    }

    /// Sets the seats held by sessions that could not be read back (from
    /// reconciliation's count, or 0 when an operator clears them).
    pub fn set_lost(&mut self, lost: u32) -> Fault {
        if self.table.lost == lost {
            return None;
        }
        self.table.lost = lost;
        self.journal.compact(&self.table).err()
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn in_use(&self) -> u32 {
        self.table.in_use()
    }

    /// Decides `req` from `server` against `cap` and `policy`. The same key
    /// from another server process is a new session only once the old
    /// process is gone (`old_alive` says whether it still runs): a live
    /// holder keeps it.
    pub fn admit(
        &mut self,
        req: &AdmitRequest,
        server: ServerId,
        cap: u32,
        policy: &SeatPolicy,
        now: DateTime<Utc>,
        old_alive: impl FnOnce(&ServerId) -> bool,
    ) -> (Admission, Fault) {
        let mut fault = None;
        if let Some(old) = self.table.get(&req.key).cloned() {
            if old.server != server {
                if old_alive(&old.server) {
                    return (self.denied(DenyReason::KeyHeld, cap), None);
                }
                fault = self.release_unchecked(&req.key).1;
            }
        }
        let (decision, change, replaced) = self.table.admit(req, server, cap, policy, now);
        let mut admission = Admission {
            decision,
            cap,
            in_use: 0,
            session: self.table.get(&req.key).cloned(),
            replaced,
            fault: None,
        };
        if let Some(change) = change {
            // The replaced session's release and the admission: one write.
            let mut changes = Vec::with_capacity(2);
            changes.extend(
                admission
                    .replaced
                    .as_ref()
                    .map(|s| Change::Release(s.key.clone())),
            );
            changes.push(change);
            if let Err(e) = self.journal.record_all(&changes, &self.table) {
                self.table.forget(&req.key);
                if let Some(old) = admission.replaced.take() {
                    self.table.restore(old);
                }
                self.table.denials += 1;
                admission.decision = Decision::Denied(DenyReason::Internal);
                admission.session = None;
                admission.fault = Some(e);
            }
        }
        if let Some(old) = &admission.replaced {
            self.in_flight.remove(&old.key);
        }
        admission.in_use = self.table.in_use();
        (admission, fault)
    }

    /// Notes that an answer admitting `instance` of `key` is on its way;
    /// false when the session was acknowledged already (nothing to undo).
    pub fn answer_pending(&mut self, key: &str, instance: u64, fresh: bool) -> bool {
        if fresh {
            self.in_flight.insert(key.to_string(), (instance, 1));
            return true;
        }
        match self.in_flight.get_mut(key) {
            Some((i, n)) if *i == instance => {
                *n += 1;
                true
            }
            _ => false,
        }
    }

    /// An answer admitting `instance` of `key` was delivered (`ok`) or not.
    /// When none of its answers was delivered the admission is undone: its
    /// hooks gave up and refused their clients. Returns the undone session.
    pub fn answered(&mut self, key: &str, instance: u64, ok: bool) -> (Option<Session>, Fault) {
        let Some((i, n)) = self.in_flight.get_mut(key) else {
            return (None, None);
        };
        if *i != instance {
            return (None, None);
        }
        if ok {
            self.in_flight.remove(key);
            return (None, None);
        }
        *n -= 1;
        if *n > 0 {
            return (None, None);
        }
        self.in_flight.remove(key);
        match self.table.release_instance(key, instance) {
            Some((session, change)) => (Some(session), self.record_release(change)),
            None => (None, None),
        }
    }

    /// Refuses an admission decided before the table (e.g. an unknown server).
    pub fn deny(&mut self, reason: DenyReason, cap: u32) -> Admission {
        self.denied(reason, cap)
    }

    fn denied(&mut self, reason: DenyReason, cap: u32) -> Admission {
        self.table.denials += 1;
        Admission {
            decision: Decision::Denied(reason),
            cap,
            in_use: self.table.in_use(),
            session: None,
            replaced: None,
            fault: None,
        }
    }

    /// Frees `key` if `asker` may: its own server process, or an operator.
    pub fn release(&mut self, key: &str, asker: Asker) -> (Release, Fault) {
        match (self.table.get(key), asker) {
            (None, _) => (Release::NotHeld, None),
            (Some(s), Asker::Server(server)) if s.server != server => {
                (Release::NotYours(s.clone()), None)
            }
            _ => {
                let (session, fault) = self.release_unchecked(key);
                (session.map_or(Release::NotHeld, Release::Released), fault)
            }
        }
    }

    /// Frees `instance` of `key` only (an eviction decided on that very
    /// session: a newer admission of the key keeps its seat).
    pub fn release_instance(&mut self, key: &str, instance: u64) -> (Option<Session>, Fault) {
        match self.table.release_instance(key, instance) {
            Some((session, change)) => {
                self.in_flight.remove(key);
                (Some(session), self.record_release(change))
            }
            None => (None, None),
        }
    }

    fn release_unchecked(&mut self, key: &str) -> (Option<Session>, Fault) {
        self.in_flight.remove(key);
        match self.table.release(key) {
            Some((session, change)) => (Some(session), self.record_release(change)),
            None => (None, None),
        }
    }

    /// A release is in force at once (the seat is free); if it cannot be
    /// written now it is written before the next change.
    fn record_release(&mut self, change: Change) -> Fault {
        let mut result = self.journal.record(&change, &self.table);
        if result.is_err() && self.journal.free_reserve() {
            result = self.journal.record(&change, &self.table);
        }
        result.err().inspect(|_| self.journal.defer(change))
    }

    /// The VPN server processes sessions live in (to check outside the lock).
    pub fn servers(&self) -> Vec<ServerId> {
        self.table.servers()
    }

    /// Releases every session of a server process that is gone.
    pub fn release_server(&mut self, server: ServerId) -> (Vec<Session>, Fault) {
        let keys: Vec<String> = self
            .table
            .sessions()
            .filter(|s| s.server == server)
            .map(|s| s.key.clone())
            .collect();
        self.release_keys(keys)
    }

    /// Releases the sessions `stale` picks (e.g. those a VPN server's own
    /// listing no longer shows).
    pub fn release_where(&mut self, stale: impl Fn(&Session) -> bool) -> (Vec<Session>, Fault) {
        let keys: Vec<String> = self
            .table
            .sessions()
            .filter(|s| stale(s))
            .map(|s| s.key.clone())
            .collect();
        self.release_keys(keys)
    }

    fn release_keys(&mut self, keys: Vec<String>) -> (Vec<Session>, Fault) {
        let mut freed = Vec::new();
        let mut fault = None;
        for key in keys {
            let (session, f) = self.release_unchecked(&key);
            freed.extend(session);
            fault = fault.or(f);
        }
        (freed, fault)
    }

    /// Folds the journal into a snapshot (clean shutdown).
    pub fn flush(&mut self) -> io::Result<()> {
        self.journal.compact(&self.table)
    }
}
