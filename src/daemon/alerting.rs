//! What the operator is told in the log about usage and licenses: the
//! usage alert level (`alerts`), fed after every change of the seat count
//! or cap, and the license warnings (`license::notices`), each said once
//! per threshold and remembered in the state directory (`persist` writes
//! it) so a restart does not say it again.

use std::time::Instant;

use chrono::Utc;

use super::state::{Shared, State};
use crate::alerts::{percent, Change, Thresholds};
use crate::license::notices::notices;

/// Feeds the alert level the usage now; logs a change.
pub fn usage(shared: &Shared) {
    let config = shared.config();
    let mut state = shared.lock();
    let cap = state.cap(Utc::now(), Instant::now());
    let in_use = state.seats.in_use();
    let change = feed(&mut state, &config.alerts, in_use, cap);
    drop(state);
    log(change, in_use, cap);
}

/// Feeds the alert level `in_use` of `cap`, under the state's lock (an
/// admission has both at hand already).
pub fn feed(state: &mut State, thresholds: &Thresholds, in_use: u32, cap: u32) -> Option<Change> {
    if state.alert_thresholds != *thresholds {
        state.alert_thresholds = thresholds.clone();
    }
    state.alerts.update(thresholds, in_use, cap)
}

/// Logs what `feed` changed, outside the lock.
pub fn log(change: Option<Change>, in_use: u32, cap: u32) {
    let pct = percent(in_use, cap);
    match change {
        Some(Change::Up { to, .. }) => tracing::warn!(
            level = to,
            in_use,
            cap,
            "seat usage alert: {in_use} of {cap} seats in use ({pct} %), at or above the {to} % threshold"
        ),
        Some(Change::Down { from, to }) => tracing::info!(
            level = to,
            in_use,
            cap,
            "seat usage back below the {from} % alert: {in_use} of {cap} seats in use ({pct} %)"
        ),
        None => {}
    }
}

/// Logs the license warnings not said yet, and has what was said written.
pub fn licenses(shared: &Shared) {
    let mut state = shared.lock();
    let now = state.licenses.now(Utc::now(), Instant::now());
    let current = notices(&state.licenses.entitlement, now);
    let fresh: Vec<_> = current
        .iter()
        .filter(|n| !state.said.contains(&n.key))
        .cloned()
        .collect();
    // Forget what is no longer in force (a threshold passed, a license
    // renewed or gone): only current keys can come up again.
    let said: std::collections::BTreeSet<String> = current.into_iter().map(|n| n.key).collect();
    let changed = said != state.said;
    state.said = said;
    drop(state);
    for n in &fresh {
        tracing::warn!(
            kind = ?n.kind,
            within_days = n.within_days,
            at = %n.at,
            "license warning: {}",
            n.message
        );
    }
    if changed {
        shared.persist.ring();
    }
}
