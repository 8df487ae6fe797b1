//! The one writer of the state directory: rung whenever something it keeps
//! changed (a bundle accepted, leases taken, the clock moved on, license
//! warnings said), it takes
//! the state as it is when its turn comes (the latest state wins) and
//! writes what differs from what it wrote last, off the runtime thread.
//! A failure is logged once and shown in status; it never costs a seat.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::state::Shared;
use crate::license::bundle::Signed;
use crate::license::disk;
use crate::license::in_force::ClockState;
use crate::license::lease::Remembered;

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
}

/// What is to be written, taken from the state under its lock.
struct Wanted {
    dir: PathBuf,
    bundle: Option<Signed>,
    clock: ClockState,
    pools: Remembered,
    said: BTreeSet<String>,
}

pub fn doorbell(pools_on_disk: Option<Remembered>) -> (Doorbell, Writer) {
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
            let job = tokio::task::spawn_blocking(move || write(&shared2, on_disk));
            self.on_disk = job.await.unwrap_or_default();
            let _ = self.done.send(ticket);
        }
        let ticket = *self.rung.borrow();
        self.on_disk = write(&shared, std::mem::take(&mut self.on_disk));
        let _ = self.done.send(ticket);
    }
}

/// One write: what changed since `on_disk`. Returns what is on disk now.
fn write(shared: &Shared, mut on_disk: OnDisk) -> OnDisk {
    let wanted = {
        let mut state = shared.peek();
        Wanted {
            dir: shared.config().state_dir.clone(),
            bundle: state.licenses.signed().cloned(),
            // The trusted now (the clock's mark moves up to it).
            clock: state
                .licenses
                .observe(Utc::now(), std::time::Instant::now()),
            pools: state.leases.remembered(),
            said: state.said.clone(),
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
    let mut state = shared.lock();
    for w in &warnings {
        if !state.file_warnings.contains(w) {
            tracing::warn!("{w}");
        }
    }
    state.file_warnings = warnings;
    on_disk
}
