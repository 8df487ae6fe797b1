//! Keeps the session table across daemon crashes and upgrades: a snapshot
//! plus an append-only journal of changes in the runtime directory (tmpfs,
//! so it lives exactly as long as the VPN sessions do). Each change is
//! written before its answer is sent; a write that returned is in the kernel,
//! so a SIGKILL loses nothing that was acknowledged. The files are the
//! daemon's alone (0600: they hold users, keys and addresses).
//!
//! When the directory cannot be written (a full tmpfs) the journal is
//! `faulted`: admissions are refused (nothing unrecorded is acknowledged),
//! releases are kept in memory and written first once space returns
//! (`retry`), and a start-up that cannot write the snapshot goes on from
//! the files as they are.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::snapshot;
use super::table::{Change, Table};
use crate::store;

pub const SNAPSHOT: &str = "sessions.json";
pub const JOURNAL: &str = "sessions.journal";
/// Where a damaged snapshot is copied before it is replaced.
pub const DAMAGED: &str = "sessions.json.damaged";
/// Space kept aside so that releases can still be written on a full
/// directory: deleted when a release cannot be written, made again once
/// the directory can be written.
pub const RESERVE: &str = "sessions.reserve";
const RESERVE_BYTES: usize = 64 * 1024;
/// Journal lines after which the table is folded into a fresh snapshot.
const COMPACT_AFTER: usize = 20_000;
/// The runtime directory: hooks must reach the socket in it, nobody may
/// list it. Its files: the daemon's only.
const DIR_MODE: u32 = 0o711;
const FILE_MODE: u32 = 0o600;

pub struct Journal {
    dir: PathBuf,
    file: File,
    lines: usize,
    /// Bytes in the journal file: where a failed write is cut back to.
    len: u64,
    /// Changes applied in memory that could not be written yet (releases).
    deferred: Vec<Change>,
    /// Why the directory cannot be written, while it cannot.
    fault: Option<String>,
    /// A compaction is due (one failed, or the start-up's).
    compact_owed: bool,
}

/// The table read back at start-up.
pub struct Opened {
    pub journal: Journal,
    pub table: Table,
    /// What could not be read, said once in the log.
    pub warnings: Vec<String>,
    /// The snapshot was damaged: sessions may be missing (see `Table::lost`).
    pub damaged: Option<String>,
}

impl Journal {
    /// Loads snapshot + journal from `dir`, folds them into a new snapshot and
    /// empties the journal (when the directory can be written).
    pub fn open(dir: &Path, now: DateTime<Utc>) -> io::Result<Opened> {
        store::ensure_dir(dir, DIR_MODE)?;
        let mut warnings = Vec::new();
        for name in [SNAPSHOT, JOURNAL, DAMAGED, RESERVE] {
            restrict(&dir.join(name))?;
        }
        let mut damaged = None;
        let mut table = match store::read_optional_bytes(&dir.join(SNAPSHOT))? {
            None => Table::default(),
            Some(bytes) => {
                let decoded = snapshot::decode(&bytes);
                if let Some(why) = decoded.damage {
                    let copy = store::write_atomic(&dir.join(DAMAGED), &bytes, FILE_MODE);
                    let kept = match copy {
                        Ok(()) => format!("a copy is in {DAMAGED}"),
                        Err(e) => format!("no copy kept: {e}"),
                    };
                    warnings.push(format!(
                        "{SNAPSHOT} is damaged ({why}; {kept}); {} seats of sessions that could not be read stay held until the VPN servers' own lists account for them ([[reconcile]]) or an operator clears them (`seatgate evict --lost`)",
                        decoded.table.lost
                    ));
                    damaged = Some(why);
                }
                decoded.table
            }
        };
        let mut lines_found = 0;
        if let Some(bytes) = store::read_optional_bytes(&dir.join(JOURNAL))? {
            let lines: Vec<&[u8]> = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            lines_found = lines.len();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_slice::<Change>(line) {
                    Ok(change) => table.apply(&change, now),
                    // A torn last line was never acknowledged: its hook got no answer.
                    Err(_) if i + 1 == lines.len() => {
                        warnings.push(format!("{JOURNAL}: ignored an incomplete last line"))
                    }
                    Err(e) => warnings.push(format!(
                        "{JOURNAL} line {}: unreadable ({e}); skipped",
                        i + 1
                    )),
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(dir.join(JOURNAL))?;
        let len = file.metadata()?.len();
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            file,
            lines: lines_found,
            len,
            deferred: Vec::new(),
            fault: None,
            compact_owed: true,
        };
        match journal.compact(&table) {
            Ok(()) => journal.keep_reserve(),
            Err(e) => warnings.push(format!("cannot write a fresh snapshot in {}: {e}; going on from the files as they are, admissions are refused until the directory can be written", dir.display())),
        }
        Ok(Opened {
            journal,
            table,
            warnings,
            damaged,
        })
    }

    /// Why the runtime directory cannot be written, while it cannot.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// Appends one change; the caller answers only after this returned Ok.
    /// Changes deferred before go first. A write that fails part-way (a
    /// full tmpfs) is cut back off, so the next change never lands glued to
    /// a fragment that replay would skip.
    pub fn record(&mut self, change: &Change, table: &Table) -> io::Result<()> {
        self.record_all(std::slice::from_ref(change), table)
    }

    /// Appends changes that are one step (a release and the admission that
    /// took its seat) in one write: recorded together or not at all.
    pub fn record_all(&mut self, changes: &[Change], table: &Table) -> io::Result<()> {
        self.write_deferred()?;
        self.append(changes)?;
        if self.lines >= COMPACT_AFTER || self.compact_owed {
            // The change is recorded whatever happens here; a failed
            // compaction is tried again later.
            let _ = self.compact(table);
        }
        Ok(())
    }

    /// Keeps a change that is in force in memory but could not be written
    /// (a release: the seat is free now); it is written before anything else.
    pub fn defer(&mut self, change: Change) {
        self.deferred.push(change);
    }

    /// Tries again to write what is owed (deferred changes, a compaction).
    /// Ok once nothing is owed.
    pub fn retry(&mut self, table: &Table) -> io::Result<()> {
        self.write_deferred()?;
        if self.compact_owed || self.lines >= COMPACT_AFTER {
            self.compact(table)?;
        }
        self.keep_reserve();
        Ok(())
    }

    /// Makes the reserve if it is missing (best effort).
    fn keep_reserve(&self) {
        let path = self.dir.join(RESERVE);
        if !path.exists() {
            let made = store::write_atomic(&path, &[0; RESERVE_BYTES], FILE_MODE);
            if made.is_err() {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Gives the reserve's space back to the directory; true when there
    /// was one to give.
    pub fn free_reserve(&self) -> bool {
        std::fs::remove_file(self.dir.join(RESERVE)).is_ok()
    }

    fn write_deferred(&mut self) -> io::Result<()> {
        while let Some(change) = self.deferred.first().cloned() {
            self.append(std::slice::from_ref(&change))?;
            self.deferred.remove(0);
        }
        Ok(())
    }

    fn append(&mut self, changes: &[Change]) -> io::Result<()> {
        let mut lines = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut lines, change).expect("changes always serialise");
            lines.push(b'\n');
        }
        if let Err(e) = self.file.write_all(&lines) {
            let _ = self.file.set_len(self.len);
            return Err(self.failed(e));
        }
        self.len += lines.len() as u64;
        self.lines += changes.len();
        Ok(())
    }

    fn failed(&mut self, e: io::Error) -> io::Error {
        self.fault = Some(format!(
            "cannot write the runtime directory {}: {e}",
            self.dir.display()
        ));
        e
    }

    /// Writes the whole table as the snapshot, then empties the journal.
    /// A crash in between is harmless: replaying the journal over the new
    /// snapshot gives the same table (each change sets or clears one key).
    pub fn compact(&mut self, table: &Table) -> io::Result<()> {
        let bytes = snapshot::encode(table);
        let written = store::write_atomic(&self.dir.join(SNAPSHOT), &bytes, FILE_MODE)
            .and_then(|()| self.file.set_len(0));
        if let Err(e) = written {
            self.compact_owed = true;
            return Err(self.failed(e));
        }
        self.lines = 0;
        self.len = 0;
        self.compact_owed = false;
        if self.deferred.is_empty() {
            self.fault = None;
        }
        Ok(())
    }
}

/// Narrows a file's mode to the daemon's alone (files of older versions
/// were readable by every local user).
fn restrict(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::protocol::{AdmitRequest, ServerKind, ServerRef};
    use crate::admission::table::ServerId;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    fn admit(t: &mut Table, j: &mut Journal, key: &str) {
        let req = AdmitRequest {
            key: key.into(),
            user: "u".into(),
            server: ServerRef {
                kind: ServerKind::Ocserv,
                pid: 1,
            },
            remote: String::new(),
            group: String::new(),
        };
        let server = ServerId {
            kind: ServerKind::Ocserv,
            pid: 1,
            start_ticks: 1,
            ns_pid: 1,
        };
        let (_, change, _) = t.admit(&req, server, 100, &Default::default(), now());
        j.record(&change.unwrap(), t).unwrap();
    }

    fn open(dir: &Path) -> (Journal, Table, Vec<String>) {
        let o = Journal::open(dir, now()).unwrap();
        (o.journal, o.table, o.warnings)
    }

    #[test]
    fn survives_reopen_without_clean_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut t, w) = open(dir.path());
        assert!(w.is_empty());
        for k in ["a", "b", "c"] {
            admit(&mut t, &mut j, k);
        }
        let (_, change) = t.release("b").unwrap();
        j.record(&change, &t).unwrap();
        drop(j); // no compaction: as after SIGKILL
        let (_, t2, w) = open(dir.path());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(t2.in_use(), 2);
        assert!(t2.get("a").is_some() && t2.get("c").is_some() && t2.get("b").is_none());
        assert_eq!(t2.peak, 3);
        for name in [SNAPSHOT, JOURNAL] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn a_replacement_is_one_write_and_replays_without_a_higher_peak() {
        use crate::config::policy::{AtUserLimit, SeatPolicy};
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut t, _) = open(dir.path());
        admit(&mut t, &mut j, "old");
        let policy =
            SeatPolicy::new(Some(1), AtUserLimit::ReplaceOldest, Vec::new()).ending(true, true);
        let req = AdmitRequest {
            key: "new".into(),
            user: "u".into(),
            server: ServerRef {
                kind: ServerKind::Ocserv,
                pid: 1,
            },
            remote: String::new(),
            group: "ops".into(),
        };
        let server = ServerId {
            kind: ServerKind::Ocserv,
            pid: 1,
            start_ticks: 1,
            ns_pid: 1,
        };
        let (_, change, replaced) = t.admit(&req, server, 1, &policy, now());
        let replaced = replaced.expect("the old session is replaced");
        j.record_all(&[Change::Release(replaced.key), change.unwrap()], &t)
            .unwrap();
        drop(j);
        let (_, t2, w) = open(dir.path());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(t2.in_use(), 1);
        assert_eq!(t2.get("new").map(|s| s.group.as_str()), Some("ops"));
        assert_eq!(t2.peak, 1, "replay never held both");
    }

    #[test]
    fn journal_lines_of_older_versions_load_without_a_group() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        append(
            dir.path(),
            br#"{"admit":{"key":"k","instance":1,"user":"u","remote":"","server":{"kind":"openvpn","pid":5,"start_ticks":1},"since":"2026-11-27T12:00:00Z"}}
"#,
        );
        let (_, t, w) = open(dir.path());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(t.get("k").map(|s| s.group.as_str()), Some(""));
    }

    fn append(dir: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(JOURNAL))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn a_damaged_line_with_bad_utf8_is_skipped_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut t, _) = open(dir.path());
        admit(&mut t, &mut j, "a");
        admit(&mut t, &mut j, "b");
        let (_, release_b) = t.release("b").unwrap();
        drop(j);
        append(dir.path(), b"{\"admit\":\xff\xfe garbage\n");
        let mut line = serde_json::to_vec(&release_b).unwrap();
        line.push(b'\n');
        append(dir.path(), &line);
        let (_, t2, w) = open(dir.path());
        assert_eq!(t2.in_use(), 1, "a kept, b released after the damaged line");
        assert!(t2.get("a").is_some());
        assert!(w.iter().any(|w| w.contains("line 3: unreadable")), "{w:?}");
    }

    #[test]
    fn torn_last_line_is_ignored_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut t, _) = open(dir.path());
        admit(&mut t, &mut j, "a");
        drop(j);
        append(dir.path(), br#"{"admit":{"key":"half"#);
        let (_, t2, w) = open(dir.path());
        assert_eq!(t2.in_use(), 1);
        assert!(w[0].contains("incomplete last line"), "{w:?}");
    }

    #[test]
    fn a_damaged_snapshot_keeps_its_lost_seats_and_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut t, _) = open(dir.path());
        for k in ["a", "b", "c", "d"] {
            admit(&mut t, &mut j, k);
        }
        j.compact(&t).unwrap();
        drop(j);
        let path = dir.path().join(SNAPSHOT);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 30]).unwrap();
        let o = Journal::open(dir.path(), now()).unwrap();
        assert!(o.damaged.is_some());
        assert_eq!((o.table.known(), o.table.lost, o.table.in_use()), (3, 1, 4));
        assert!(dir.path().join(DAMAGED).exists());
        drop(o);
        // The lost seat is in the fresh snapshot: a second restart keeps it.
        let (_, t2, w) = open(dir.path());
        assert_eq!((t2.known(), t2.lost), (3, 1), "{w:?}");
    }
}
