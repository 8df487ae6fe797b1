//! The one writer of the state directory: rung whenever something it keeps
//! changed (a bundle accepted, leases taken, the clock moved on, license
//! warnings said), it takes
//! the state as it is when its turn comes (the latest state wins) and
//! writes what differs from what it wrote last, off the runtime thread.
//! A failure is logged once and shown in status; it never costs a seat.
//! The usage history is written at most every `USAGE_EVERY` (flash wears)
//! and when the daemon stops; a damaged `usage.json` is reported and
//! replaced, never fatal.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::state::Shared;
use crate::license::bundle::Signed;
use crate::license::disk;
use crate::license::in_force::ClockState;
use crate::license::lease::Remembered;
use crate::store;
use crate::usage::History;

/// The usage history's file in the state directory.
pub const USAGE_FILE: &str = "usage.json";
/// The usage history is written at most this often while it changes
/// (and at every stop): a crash loses at most this much of it.
pub const USAGE_EVERY: Duration = Duration::from_secs(300);

/// Reads `usage.json`: the history, what is on disk (None when the file
/// must be replaced) and why it could not be used, if so.
pub fn load_usage(state_dir: &Path) -> (History, Option<History>, Option<String>) {
    let path = state_dir.join(USAGE_FILE);
    match store::read_optional(&path) {
        Ok(None) => (History::new(), None, None),
        Ok(Some(text)) => match History::parse(&text) {
            Ok(h) => (h.clone(), Some(h), None),
            Err(e) => (
                History::new(),
                None,
                Some(format!(
                    "{} is not a usage history ({e}); the history starts empty and the file is replaced",
                    path.display()
                )),
            ),
        },
        Err(e) => (
            History::new(),
            None,
            Some(format!(
                "cannot read {}: {e}; the history starts empty and the file is replaced",
                path.display()
            )),
        ),
    }
}

fn write_usage(state_dir: &Path, history: &History) -> std::io::Result<()> {
    let text = serde_json::to_string(history).expect("a usage history serialises");
    store::ensure_dir(state_dir, 0o750)?;
    store::write_atomic(&state_dir.join(USAGE_FILE), text.as_bytes(), 0o640)
}

/// Asks the writer for a write, and can wait until one has finished.
pub struct Doorbell {
    rung: watch::Sender<u64>,
    done: watch::Receiver<u64>,
}

/// The writer's end of the doorbell.
pub struct Writer {
    rung: watch::Receiver<u64>,
    done: watch::Sender<u64>,
    on_disk: OnDisk,
}

/// What the writer wrote last (None: nothing yet in this run).
#[derive(Default)]
struct OnDisk {
    bundle: Option<Signed>,
    pools: Option<Remembered>,
    /// The license warnings said (`notices.json`).
    said: Option<BTreeSet<String>>,
    usage: Option<History>,
}

/// What is to be written, taken from the state under its lock.
struct Wanted {
    dir: PathBuf,
    bundle: Option<Signed>,
    clock: ClockState,
    pools: Remembered,
    said: BTreeSet<String>,
    /// The usage history, when it changed and a write is due.
    usage: Option<History>,
}

pub fn doorbell(
    pools_on_disk: Option<Remembered>,
    usage_on_disk: Option<History>,
) -> (Doorbell, Writer) {
    let (rung_tx, rung_rx) = watch::channel(0);
    let (done_tx, done_rx) = watch::channel(0);
    (
        Doorbell {
            rung: rung_tx,
            done: done_rx,
        },
        Writer {
            rung: rung_rx,
            done: done_tx,
            on_disk: OnDisk {
                bundle: None,
                pools: pools_on_disk,
                said: None,
                usage: usage_on_disk,
            },
        },
    )
}

impl Doorbell {
    /// Asks for a write; returns at once. Rings while a write is under way
    /// fold into one more write.
    pub fn ring(&self) -> u64 {
        let mut ticket = 0;
        self.rung.send_modify(|n| {
            *n += 1;
            ticket = *n;
        });
        ticket
    }

    /// Asks for a write and waits until it (or a later one) has finished.
    pub async fn flush(&self) {
        let ticket = self.ring();
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d >= ticket).await;
    }
}

impl Writer {
    /// Writes whenever rung, until `cancel`; then writes once more and
    /// returns (the daemon stops the writer after every other task).
    pub async fn run(mut self, shared: Arc<Shared>, cancel: CancellationToken) {
        loop {
            let rung = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.rung.changed() => r,
            };
            if rung.is_err() {
                break;
            }
            let ticket = *self.rung.borrow_and_update();
            let shared2 = shared.clone();
            let on_disk = std::mem::take(&mut self.on_disk);
            let job = tokio::task::spawn_blocking(move || write(&shared2, on_disk, false));
            self.on_disk = job.await.unwrap_or_default();
            let _ = self.done.send(ticket);
        }
        let ticket = *self.rung.borrow();
        self.on_disk = write(&shared, std::mem::take(&mut self.on_disk), true);
        let _ = self.done.send(ticket);
    }
}

/// One write: what changed since `on_disk` (the usage history only when
/// due, or at the `last` write). Returns what is on disk now.
fn write(shared: &Shared, mut on_disk: OnDisk, last: bool) -> OnDisk {
    let wanted = {
        let mut state = shared.peek();
        let usage_due = last || state.usage_due(Instant::now());
        let usage = (usage_due && on_disk.usage.as_ref() != Some(&state.usage))
            .then(|| state.usage.clone());
        Wanted {
            dir: shared.config().state_dir.clone(),
            bundle: state.licenses.signed().cloned(),
            // The trusted now (the clock's mark moves up to it).
            clock: state
                .licenses
                .observe(Utc::now(), std::time::Instant::now()),
            pools: state.leases.remembered(),
            said: state.said.clone(),
            usage,
        }
    };
    let mut warnings = Vec::new();
    if let Some(bundle) = wanted.bundle.filter(|b| on_disk.bundle.as_ref() != Some(b)) {
        match disk::write_bundle(&wanted.dir, &bundle) {
            Ok(()) => on_disk.bundle = Some(bundle),
            Err(e) => warnings.push(format!(
                "cannot write {}: {e}; the accepted bundle is in force but a restart without the cloud would fall back to the last stored one",
                wanted.dir.join(disk::BUNDLE_FILE).display()
            )),
        }
    }
    if let Err(e) = disk::write_clock(&wanted.dir, &wanted.clock) {
        warnings.push(format!(
            "cannot write {}: {e}; the clock's high-water mark is not kept across a restart",
            wanted.dir.join(disk::CLOCK_FILE).display()
        ));
    }
    if on_disk.pools.as_ref() != Some(&wanted.pools) {
        match disk::write_pools(&wanted.dir, &wanted.pools) {
            Ok(()) => on_disk.pools = Some(wanted.pools),
            Err(e) => warnings.push(e.to_string()),
        }
    }
    if on_disk.said.as_ref() != Some(&wanted.said) {
        match disk::write_said(&wanted.dir, &wanted.said) {
            Ok(()) => on_disk.said = Some(wanted.said),
            Err(e) => warnings.push(format!(
                "cannot write {}: {e}; license warnings logged may be logged again after a restart",
                wanted.dir.join(disk::NOTICES_FILE).display()
            )),
        }
    }
    let mut usage_saved = None;
    if let Some(usage) = wanted.usage {
        match write_usage(&wanted.dir, &usage) {
            Ok(()) => {
                on_disk.usage = Some(usage);
                usage_saved = Some(Instant::now());
            }
            Err(e) => warnings.push(format!(
                "cannot write {}: {e}; the usage history since the last write is lost at a restart; check the state directory",
                wanted.dir.join(USAGE_FILE).display()
            )),
        }
    }
    let mut state = shared.lock();
    if usage_saved.is_some() {
        state.usage_saved = usage_saved;
    }
    for w in &warnings {
        if !state.file_warnings.contains(w) {
            tracing::warn!("{w}");
        }
    }
    state.file_warnings = warnings;
    on_disk
}
