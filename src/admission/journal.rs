//! Keeps the session table across daemon crashes and upgrades: a snapshot
//! plus an append-only journal of changes in the runtime directory (tmpfs,
//! so it lives exactly as long as the VPN sessions do). Each change is
//! written before its answer is sent; a write that returned is in the kernel,
//! so a SIGKILL loses nothing that was acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::table::{Change, Table};
use crate::store;

pub const SNAPSHOT: &str = "sessions.json";
pub const JOURNAL: &str = "sessions.journal";
/// Journal lines after which the table is folded into a fresh snapshot.
const COMPACT_AFTER: usize = 20_000;

pub struct Journal {
    dir: PathBuf,
    file: File,
    lines: usize,
    /// Bytes in the journal file: where a failed write is cut back to.
    len: u64,
}

impl Journal {
    /// Loads snapshot + journal from `dir`, folds them into a new snapshot and
    /// opens an empty journal. Warnings say what could not be read.
    pub fn open(dir: &Path, now: DateTime<Utc>) -> io::Result<(Journal, Table, Vec<String>)> {
        // Traversable: the socket usually lives here; the files are 0640.
        store::ensure_dir(dir, 0o755)?;
        let mut warnings = Vec::new();
        let mut table = match store::read_optional_bytes(&dir.join(SNAPSHOT))? {
            None => Table::default(),
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warnings.push(format!(
                    "{SNAPSHOT} unreadable ({e}); starting from the journal alone"
                ));
                Table::default()
            }),
        };
        if let Some(bytes) = store::read_optional_bytes(&dir.join(JOURNAL))? {
            let lines: Vec<&[u8]> = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
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
            .open(dir.join(JOURNAL))?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            file,
            lines: 0,
            len: 0,
        };
        journal.compact(&table)?;
        Ok((journal, table, warnings))
    }

    /// Appends one change; the caller answers only after this returned Ok.
    /// A write that fails part-way (a full tmpfs) is cut back off, so the
    /// next change never lands glued to a fragment that replay would skip.
    pub fn record(&mut self, change: &Change, table: &Table) -> io::Result<()> {
        let mut line = serde_json::to_vec(change).expect("changes always serialise");
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += line.len() as u64;
        self.lines += 1;
        if self.lines >= COMPACT_AFTER {
            // The change is recorded whatever happens here; a failed
            // compaction is retried after another stretch of changes.
            if let Err(e) = self.compact(table) {
                tracing::error!(error = %e, "cannot fold the session journal into a snapshot; the journal keeps growing");
                self.lines = COMPACT_AFTER - COMPACT_AFTER / 10;
            }
        }
        Ok(())
    }

    /// Writes the whole table as the snapshot, then empties the journal.
    /// A crash in between is harmless: replaying the journal over the new
    /// snapshot gives the same table (each change sets or clears one key).
    pub fn compact(&mut self, table: &Table) -> io::Result<()> {
        let text = serde_json::to_vec(table).expect("the table always serialises");
        store::write_atomic(&self.dir.join(SNAPSHOT), &text, 0o640)?;
        self.file.set_len(0)?;
        self.lines = 0;
        self.len = 0;
        Ok(())
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
        };
        let server = ServerId {
            kind: ServerKind::Ocserv,
            pid: 1,
            start_ticks: 1,
            ns_pid: 1,
        };
        let (_, change) = t.admit(&req, server, 100, now());
        j.record(&change.unwrap(), t).unwrap();
    }

    #[test]
    fn survives_reopen_without_clean_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut t, w) = Journal::open(dir.path(), now()).unwrap();
        assert!(w.is_empty());
        for k in ["a", "b", "c"] {
            admit(&mut t, &mut j, k);
        }
        let (_, change) = t.release("b").unwrap();
        j.record(&change, &t).unwrap();
        drop(j); // no compaction: as after SIGKILL
        let (_, t2, w) = Journal::open(dir.path(), now()).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(t2.in_use(), 2);
        assert!(t2.get("a").is_some() && t2.get("c").is_some() && t2.get("b").is_none());
        assert_eq!(t2.peak, 3);
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
        let (mut j, mut t, _) = Journal::open(dir.path(), now()).unwrap();
        admit(&mut t, &mut j, "a");
        admit(&mut t, &mut j, "b");
        let (_, release_b) = t.release("b").unwrap();
        drop(j);
        append(dir.path(), b"{\"admit\":\xff\xfe garbage\n");
        let mut line = serde_json::to_vec(&release_b).unwrap();
        line.push(b'\n');
        append(dir.path(), &line);
        let (_, t2, w) = Journal::open(dir.path(), now()).unwrap();
        assert_eq!(t2.in_use(), 1, "a kept, b released after the damaged line");
        assert!(t2.get("a").is_some());
        assert!(w.iter().any(|w| w.contains("line 3: unreadable")), "{w:?}");
    }

    #[test]
    fn torn_last_line_is_ignored_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, mut t, _) = Journal::open(dir.path(), now()).unwrap();
        admit(&mut t, &mut j, "a");
        drop(j);
        append(dir.path(), br#"{"admit":{"key":"half"#);
        let (_, t2, w) = Journal::open(dir.path(), now()).unwrap();
        assert_eq!(t2.in_use(), 1);
        assert!(w[0].contains("incomplete last line"), "{w:?}");
    }
}
