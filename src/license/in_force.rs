//! The licenses in force: the accepted bundle, its entitlement, the records
//! it refused and the engine's trusted clock, and how a new bundle (from
//! the cloud, a file or the state directory) replaces them. Pure: the texts,
//! the rules and the instant are arguments; `disk` reads and writes them.

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::bundle::{self, Acceptance, Bundle, BundleError, Signed};
pub use super::time::ClockState;
use super::time::{Correction, TrustedClock};
use super::{Entitlement, Rejected};

/// What this gateway accepts: bundles for `device`, signed by one of
/// `trusted_keys`, on top of `builtin` seats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub device: String,
    pub trusted_keys: Vec<VerifyingKey>,
    pub builtin: u32,
}

/// The licenses in force and where they came from.
#[derive(Debug, Clone)]
pub struct Licenses {
    /// The accepted bundle, signed form and decoded form.
    pub current: Option<(Signed, Bundle)>,
    pub entitlement: Entitlement,
    pub rejected: Vec<Rejected>,
    /// The engine's clock (`time`): the last trusted instant, running on
    /// the monotonic clock, corrected by fresh signed times.
    pub clock: TrustedClock,
    /// Problems met while loading (a bad bundle file, an unreadable state file).
    pub warnings: Vec<String>,
    /// Licenses an accepted bundle no longer carries though the bundle
    /// before it did (moved to another device, the device replaced, a share
    /// undone). Known only since the daemon started: it compares the
    /// bundles it saw.
    pub dropped: Option<Dropped>,
}

/// Licenses no longer bound here, and the generation that dropped them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub since_generation: u64,
    pub ids: Vec<String>,
}

impl Dropped {
    /// The operator's line: what went and the usual reasons.
    pub fn message(&self) -> String {
        format!(
            "licenses no longer bound here since generation {}: {} (moved, replaced or unshared)",
            self.since_generation,
            self.ids.join(", ")
        )
    }

    /// What `after` drops that `before` had: `previous` (what was dropped
    /// earlier) loses the ids `after` carries again and gains the new ones.
    pub fn between(previous: Option<&Dropped>, before: &Bundle, after: &Bundle) -> Option<Dropped> {
        let has = |b: &Bundle, id: &str| b.licenses.iter().any(|l| l.id == id);
        let mut gone: Vec<String> = before
            .licenses
            .iter()
            .filter(|l| !has(after, &l.id))
            .map(|l| l.id.clone())
            .collect();
        if !gone.is_empty() {
            let mut ids: Vec<String> = previous
                .map(|p| p.ids.iter().filter(|id| !has(after, id)).cloned().collect())
                .unwrap_or_default();
            ids.append(&mut gone);
            ids.sort();
            ids.dedup();
            return Some(Dropped {
                since_generation: after.generation,
                ids,
            });
        }
        let p = previous?;
        let ids: Vec<String> = p.ids.iter().filter(|id| !has(after, id)).cloned().collect();
        (!ids.is_empty()).then_some(Dropped {
            since_generation: p.since_generation,
            ids,
        })
    }
}

impl Licenses {
    pub fn builtin_only(builtin: u32) -> Self {
        Licenses {
            current: None,
            entitlement: Entitlement::builtin_only(builtin),
            rejected: Vec::new(),
            clock: TrustedClock::default(),
            warnings: Vec::new(),
            dropped: None,
        }
    }

    pub fn bundle(&self) -> Option<&Bundle> {
        self.current.as_ref().map(|(_, b)| b)
    }

    pub fn signed(&self) -> Option<&Signed> {
        self.current.as_ref().map(|(s, _)| s)
    }

    /// The engine's now for the system clock and the monotonic clock read
    /// together (see `time::TrustedClock`).
    pub fn now(&self, system: DateTime<Utc>, mono: Instant) -> DateTime<Utc> {
        self.clock.now(system, mono)
    }

    /// Moves the clock's mark up to now and returns what to persist: the
    /// trusted now, so a restart with the clock set back starts from it.
    pub fn observe(&mut self, system: DateTime<Utc>, mono: Instant) -> ClockState {
        self.clock.observe(system, mono)
    }

    /// A fresh signed time from the cloud (a newly accepted slice lease's
    /// `issued_at`, or a bundle answer's verified time stamp), paired with
    /// the instant its request was sent.
    pub fn correct(
        &mut self,
        signed: DateTime<Utc>,
        system: DateTime<Utc>,
        mono: Instant,
    ) -> Correction {
        self.clock.correct(signed, system, mono)
    }

    /// Takes what a reload read from disk, keeping the running clock (it
    /// knows more than the mark on disk).
    pub fn replace(&mut self, new: Licenses) {
        let clock = self.clock;
        let dropped = match (self.dropped.take(), new.bundle()) {
            (Some(d), Some(b)) => Dropped::between(Some(&d), b, b),
            _ => None,
        };
        *self = new;
        self.clock = clock;
        self.dropped = self.dropped.take().or(dropped);
    }

    /// Offers a new signed bundle (from the cloud or a file). Accepted, it
    /// replaces the current one and the answer says whether it differs;
    /// refused, nothing changes.
    pub fn offer(
        &mut self,
        rules: &Rules,
        text: &str,
        system: DateTime<Utc>,
        mono: Instant,
    ) -> Result<bool, BundleError> {
        let acceptance = Acceptance {
            device: &rules.device,
            last_generation: self.bundle().map(|b| b.generation),
            now: self.now(system, mono),
        };
        let (signed, bundle) = bundle::accept(text, &rules.trusted_keys, acceptance)?;
        // A bundle's issued_at is as fresh as the bundle: a floor, never a
        // correction backwards (`time`).
        self.clock.raise(bundle.issued_at, system, mono);
        if self.signed() == Some(&signed) {
            return Ok(false);
        }
        let (entitlement, rejected) = bundle.entitlement(rules.builtin);
        self.entitlement = entitlement;
        self.rejected = rejected;
        if let Some(before) = self.bundle() {
            self.dropped = Dropped::between(self.dropped.as_ref(), before, &bundle);
        }
        self.current = Some((signed, bundle));
        Ok(true)
    }
}

/// Decides what is in force from the texts found on disk. The stored bundle
/// is re-verified (the state directory is not trusted more than the cloud);
/// the bundle file is offered on top of it and wins only if acceptable.
pub fn resolve(
    rules: &Rules,
    stored: Option<&str>,
    file: Option<(&Path, &str)>,
    clock: Option<&str>,
    system: DateTime<Utc>,
    mono: Instant,
) -> Licenses {
    let mut lic = Licenses::builtin_only(rules.builtin);
    if let Some(text) = clock {
        match serde_json::from_str::<ClockState>(text) {
            Ok(c) => lic.clock = TrustedClock::restore(&c, mono),
            Err(e) => lic.warnings.push(format!(
                "{}: unreadable ({e}); the clock high-water mark starts again from now",
                super::disk::CLOCK_FILE
            )),
        }
    }
    if let Some(text) = stored {
        if let Err(e) = lic.offer(rules, text, system, mono) {
            lic.warnings
                .push(format!("stored {} refused: {e}", super::disk::BUNDLE_FILE));
        }
    }
    if let Some((path, text)) = file {
        if let Err(e) = lic.offer(rules, text, system, mono) {
            lic.warnings
                .push(format!("bundle file {} refused: {e}", path.display()));
        }
    }
    lic
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::license::bundle::{sign, FORMAT};
    use crate::license::model::tests::{spc, t};
    use ed25519_dalek::SigningKey;

    pub(crate) fn rules() -> Rules {
        Rules {
            device: "ESG-A1".into(),
            trusted_keys: vec![SigningKey::from_bytes(&[1; 32]).verifying_key()],
            builtin: 2,
        }
    }

    /// A bundle for ESG-A1 (issued 2026-06-01, valid a year) of `licenses`,
    /// signed with the test key `key` (1 is the trusted one).
    pub(crate) fn signed_with(
        generation: u64,
        licenses: Vec<crate::license::License>,
        key: u8,
    ) -> String {
        let b = Bundle {
            format: FORMAT,
            device: "ESG-A1".into(),
            org: "O".into(),
            generation,
            issued_at: t("2026-06-01T00:00:00Z"),
            not_after: t("2027-06-01T00:00:00Z"),
            licenses,
        };
        sign(&b, &SigningKey::from_bytes(&[key; 32])).to_json()
    }

    pub(crate) fn signed(generation: u64, seats: u32, key: u8) -> String {
        signed_with(
            generation,
            vec![spc("L1", seats, 365, "2026-01-10T00:00:00Z")],
            key,
        )
    }

    pub(crate) fn cap(lic: &Licenses) -> u32 {
        let now = lic.now(t("2026-06-02T00:00:00Z"), Instant::now());
        lic.entitlement.cap_at(now).total()
    }

    #[test]
    fn nothing_on_disk_gives_builtin_seats() {
        let lic = resolve(
            &rules(),
            None,
            None,
            None,
            t("2026-06-02T00:00:00Z"),
            Instant::now(),
        );
        assert_eq!(cap(&lic), 2);
        assert!(lic.warnings.is_empty());
    }

    #[test]
    fn newer_file_replaces_stored_and_older_file_is_refused() {
        let c = rules();
        let now = t("2026-06-02T00:00:00Z");
        let newer = signed(4, 30, 1);
        let lic = resolve(
            &c,
            Some(&signed(3, 20, 1)),
            Some((Path::new("f"), &newer)),
            None,
            now,
            Instant::now(),
        );
        assert_eq!(cap(&lic), 32);
        assert_eq!(lic.bundle().map(|b| b.generation), Some(4));
        let lic = resolve(
            &c,
            Some(&signed(3, 20, 1)),
            Some((Path::new("f"), &signed(2, 99, 1))),
            None,
            now,
            Instant::now(),
        );
        assert_eq!(cap(&lic), 22, "replayed older file must not win");
        assert_eq!(lic.bundle().map(|b| b.generation), Some(3));
        assert!(
            lic.warnings[0].contains("older than the accepted generation 3"),
            "{:?}",
            lic.warnings
        );
    }

    fn with_ids(generation: u64, ids: &[&str]) -> String {
        let licenses = ids
            .iter()
            .map(|id| spc(id, 10, 365, "2026-01-10T00:00:00Z"))
            .collect();
        signed_with(generation, licenses, 1)
    }

    #[test]
    fn a_newer_bundle_without_licenses_says_which_went() {
        let (r, now, mono) = (rules(), t("2026-06-02T00:00:00Z"), Instant::now());
        let mut lic = Licenses::builtin_only(2);
        lic.offer(&r, &with_ids(1, &["L1", "L2", "L3"]), now, mono)
            .unwrap();
        assert_eq!(lic.dropped, None, "the first bundle drops nothing");
        lic.offer(&r, &with_ids(2, &["L1"]), now, mono).unwrap();
        let d = lic.dropped.clone().unwrap();
        assert_eq!(
            (d.since_generation, d.ids.clone()),
            (2, vec!["L2".into(), "L3".into()])
        );
        assert_eq!(
            d.message(),
            "licenses no longer bound here since generation 2: L2, L3 (moved, replaced or unshared)"
        );
        // A bundle that changes something else keeps the notice.
        lic.offer(&r, &with_ids(3, &["L1", "L4"]), now, mono)
            .unwrap();
        assert_eq!(lic.dropped.as_ref().map(|d| d.since_generation), Some(2));
        // One comes back: only the other is still gone.
        lic.offer(&r, &with_ids(4, &["L1", "L3", "L4"]), now, mono)
            .unwrap();
        assert_eq!(lic.dropped.as_ref().unwrap().ids, vec!["L2".to_string()]);
        // A reload of the same bundle keeps it; all back clears it.
        let reloaded = resolve(
            &r,
            Some(&with_ids(4, &["L1", "L3", "L4"])),
            None,
            None,
            now,
            mono,
        );
        lic.replace(reloaded);
        assert_eq!(lic.dropped.as_ref().unwrap().ids, vec!["L2".to_string()]);
        lic.offer(&r, &with_ids(5, &["L1", "L2", "L3", "L4"]), now, mono)
            .unwrap();
        assert_eq!(lic.dropped, None);
    }

    #[test]
    fn tampered_state_file_is_refused_and_said() {
        let c = rules();
        let forged = signed(9, 500, 2);
        let lic = resolve(
            &c,
            Some(&forged),
            None,
            None,
            t("2026-06-02T00:00:00Z"),
            Instant::now(),
        );
        assert_eq!(cap(&lic), 2);
        assert!(
            lic.warnings[0].contains("stored bundle.json refused: signature"),
            "{:?}",
            lic.warnings
        );
    }
}
