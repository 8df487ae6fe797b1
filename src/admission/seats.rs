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
    /// Admissions whose answers are still on their way, by key. Once one
    /// is delivered the session is acknowledged and never undone.
    in_flight: HashMap<String, InFlight>,
    /// What the last admission replaced, until `answer_pending` files it.
    replacing: Option<InFlight>,
}

/// An admission whose answer is on its way.
#[derive(Debug)]
struct InFlight {
    instance: u64,
    /// How many answers (first and repeated admits) carry it.
    answers: u32,
    /// The acknowledged session whose seat it took (`replace_oldest`):
    /// disconnected once the answer is delivered, put back if none is.
    replaced: Option<Session>,
    /// Unacknowledged sessions it replaced in turn: disconnected either way.
    also: Vec<Session>,
}

/// What became of an admission's answer.
#[derive(Debug, Default)]
pub struct Answered {
    /// The admission undone: none of its answers was delivered.
    pub undone: Option<Session>,
    /// Sessions it replaced, to disconnect through their servers now.
    pub disconnect: Vec<Session>,
    /// The replaced session given its seat back (the admission was undone).
    pub restored: Option<Session>,
    pub fault: Fault,
}

impl Seats {
    /// Loads the table from the runtime directory (snapshot + journal).
    pub fn open(dir: &Path, now: DateTime<Utc>) -> io::Result<(Seats, Opened)> {
        let opened = Journal::open(dir, now)?;
        let seats = Seats {
            table: opened.table.clone(),
            journal: opened.journal,
            in_flight: HashMap::new(),
            replacing: None,
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
        // A replacement waits for its answer to be delivered before its
        // predecessor is disconnected (`answered`); one that replaces an
        // admission still in flight takes over what that one replaced.
        let mut pending = None;
        if let Some(old) = admission.replaced.take() {
            let mut next = InFlight {
                instance: 0,
                answers: 0,
                replaced: None,
                also: Vec::new(),
            };
            match self.in_flight.remove(&old.key) {
                Some(f) => {
                    next.replaced = f.replaced;
                    next.also = f.also;
                    next.also.push(old.clone());
                }
                None => next.replaced = Some(old.clone()),
            }
            admission.replaced = Some(old);
            pending = Some(next);
        }
        self.replacing = pending;
        admission.in_use = self.table.in_use();
        (admission, fault)
    }

    /// Notes that an answer admitting `instance` of `key` is on its way;
    /// false when the session was acknowledged already (nothing to undo).
    /// Called right after `admit`, under the same lock.
    pub fn answer_pending(&mut self, key: &str, instance: u64, fresh: bool) -> bool {
        let replacing = self.replacing.take();
        if fresh {
            let mut f = replacing.unwrap_or(InFlight {
                instance,
                answers: 1,
                replaced: None,
                also: Vec::new(),
            });
            (f.instance, f.answers) = (instance, 1);
            // An earlier admission of the key ended with its answer still
            // on its way: what it replaced is disconnected with this one.
            if let Some(earlier) = self.in_flight.insert(key.to_string(), f) {
                let f = self.in_flight.get_mut(key).expect("just inserted");
                f.also
                    .extend(earlier.replaced.into_iter().chain(earlier.also));
            }
            return true;
        }
        match self.in_flight.get_mut(key) {
            Some(f) if f.instance == instance => {
                f.answers += 1;
                true
            }
            _ => false,
        }
    }

    /// An answer admitting `instance` of `key` was delivered (`ok`) or not.
    /// Delivered: the sessions it replaced are to be disconnected. When none
    /// of its answers was delivered the admission is undone (its hooks gave
    /// up and refused their clients) and the acknowledged session it
    /// replaced gets its seat back: it was never disconnected.
    pub fn answered(&mut self, key: &str, instance: u64, ok: bool) -> Answered {
        let mut out = Answered::default();
        let Some(f) = self.in_flight.get_mut(key) else {
            return out;
        };
        if f.instance != instance {
            return out;
        }
        if !ok {
            f.answers -= 1;
            if f.answers > 0 {
                return out;
            }
        }
        let Some(f) = self.in_flight.remove(key) else {
            return out;
        };
        out.disconnect = f.also;
        if ok {
            out.disconnect.extend(f.replaced);
            return out;
        }
        let Some((session, release)) = self.table.release_instance(key, instance) else {
            out.disconnect.extend(f.replaced);
            return out;
        };
        out.undone = Some(session);
        match f.replaced {
            Some(old) if self.table.get(&old.key).is_none() => {
                self.table.restore(old.clone());
                let changes = [release, Change::Admit(old.clone())];
                if self.journal.record_all(&changes, &self.table).is_err() {
                    // Unrecorded, it would be lost at a restart: it ends.
                    self.table.forget(&old.key);
                    let [release, _] = changes;
                    out.fault = self.record_release(release);
                    out.disconnect.push(old);
                } else {
                    out.restored = Some(old);
                }
            }
            old => {
                out.disconnect.extend(old);
                out.fault = self.record_release(release);
            }
        }
        out
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
                self.settle(key);
                (Some(session), self.record_release(change))
            }
            None => (None, None),
        }
    }

    /// Forgets the answer on its way for `key` (its session ended), unless
    /// it still has sessions it replaced to disconnect when it resolves.
    fn settle(&mut self, key: &str) {
        if self
            .in_flight
            .get(key)
            .is_some_and(|f| f.replaced.is_none() && f.also.is_empty())
        {
            self.in_flight.remove(key);
        }
    }

    /// Gives a replaced session its seat back: its server did not confirm
    /// it ended, so its tunnel may be up and must count (reconciliation
    /// frees it if it is gone). A key held again meanwhile is left alone.
    pub fn reinstate(&mut self, session: Session) -> Fault {
        if self.table.get(&session.key).is_some() {
            return None;
        }
        self.table.restore(session.clone());
        // Written like a release: in force now, written later if it must.
        self.record_release(Change::Admit(session))
    }

    fn release_unchecked(&mut self, key: &str) -> (Option<Session>, Fault) {
        self.settle(key);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::AtUserLimit;

    use crate::admission::table::tests::{req, server};

    const SERVER: ServerId = server(10);

    /// Admits `key` for alice (limit 1, replace_oldest, cap 2) as the
    /// service does: the admission, then its answer on its way.
    fn admit(seats: &mut Seats, key: &str, minute: i64) -> Admission {
        let policy =
            SeatPolicy::new(Some(1), AtUserLimit::ReplaceOldest, Vec::new()).ending(true, true);
        let now = Utc::now() + chrono::Duration::minutes(minute);
        let (a, _) = seats.admit(&req(key), SERVER, 2, &policy, now, |_| true);
        let s = a.session.as_ref().unwrap();
        assert!(seats.answer_pending(&s.key, s.instance, true));
        a
    }

    fn keys(seats: &Seats) -> Vec<String> {
        seats.table().sessions().map(|s| s.key.clone()).collect()
    }

    /// Attack: a replacing admission whose hook gives up before reading
    /// its answer (a daemon slow under load). Its client is refused; the
    /// user's session it replaced must neither be disconnected nor lose
    /// its seat, also after a restart.
    #[test]
    fn an_unanswered_replacement_leaves_the_replaced_session_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (mut seats, _) = Seats::open(dir.path(), Utc::now()).unwrap();
        let a = admit(&mut seats, "laptop", 0);
        let a = a.session.unwrap();
        let done = seats.answered("laptop", a.instance, true);
        assert!(done.disconnect.is_empty() && done.undone.is_none());
        let b = admit(&mut seats, "phone", 1);
        assert_eq!(b.replaced.as_ref().map(|s| s.key.as_str()), Some("laptop"));
        let b = b.session.unwrap();
        assert_eq!(keys(&seats), ["phone"]);
        // The phone's hook left: its answer is never delivered.
        let done = seats.answered("phone", b.instance, false);
        assert_eq!(done.undone.map(|s| s.key), Some("phone".into()));
        assert!(done.disconnect.is_empty(), "{:?}", done.disconnect);
        assert_eq!(done.restored.map(|s| s.key), Some("laptop".into()));
        assert_eq!(keys(&seats), ["laptop"]);
        drop(seats);
        let (seats, _) = Seats::open(dir.path(), Utc::now()).unwrap();
        assert_eq!(keys(&seats), ["laptop"], "the journal replays it");
        assert_eq!(seats.table().get("laptop"), Some(&a));
    }

    /// The replaced session is disconnected only once the replacing
    /// admission's answer is delivered; a chain of replacements still in
    /// flight disconnects every session it replaced.
    #[test]
    fn a_delivered_replacement_disconnects_every_session_it_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut seats, _) = Seats::open(dir.path(), Utc::now()).unwrap();
        let a = admit(&mut seats, "laptop", 0).session.unwrap();
        seats.answered("laptop", a.instance, true);
        let b = admit(&mut seats, "phone", 1).session.unwrap();
        // The tablet comes while the phone's answer is still on its way.
        let c = admit(&mut seats, "tablet", 2).session.unwrap();
        assert_eq!(keys(&seats), ["tablet"]);
        // The phone's answer resolves (either way): nothing of its own.
        let done = seats.answered("phone", b.instance, true);
        assert!(done.disconnect.is_empty() && done.undone.is_none());
        let done = seats.answered("tablet", c.instance, true);
        let mut gone: Vec<_> = done.disconnect.into_iter().map(|s| s.key).collect();
        gone.sort();
        assert_eq!(gone, ["laptop", "phone"]);
        assert_eq!(keys(&seats), ["tablet"]);
    }
}
