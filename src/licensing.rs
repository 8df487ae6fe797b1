//! Where the license engine meets the disk: the last accepted bundle in the
//! state directory, an operator-supplied bundle file, and the clock's high
//! water mark, and what the book of pool leases must remember across a
//! restart (`pools.json`, docs/pools.md). Deciding is pure (`resolve`);
//! reading and writing is `load`, `persist`, `load_pools` and `persist_pools`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::effective_now;
use crate::config::Config;
use crate::license::bundle::{self, Acceptance, Bundle, BundleError, SignedBundle};
use crate::license::lease::Remembered;
use crate::license::{Entitlement, Rejected};
use crate::store;

pub const BUNDLE_FILE: &str = "bundle.json";
pub const CLOCK_FILE: &str = "clock.json";
pub const POOLS_FILE: &str = "pools.json";

/// Why `pools.json` could not be read or written. Neither ever costs a seat
/// count: the book in memory stays as it is.
#[derive(Debug, thiserror::Error)]
pub enum PoolsFileError {
    #[error("cannot read {}: {source}; pools left before the restart are not reported to the cloud (their seats stay held there) until the file is readable; check the state directory", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a pool record ({source}); pools left before the restart are not reported to the cloud (their seats stay held there); the file is rewritten at the next lease", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}; a restart now would forget the pools and lease epochs since the last write; check the state directory", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The licenses in force and where they came from.
#[derive(Debug, Clone)]
pub struct Licenses {
    /// The accepted bundle, signed form and decoded form.
    pub current: Option<(SignedBundle, Bundle)>,
    pub entitlement: Entitlement,
    pub rejected: Vec<Rejected>,
    /// Highest instant seen so far: the clock never goes back behind it.
    pub high_water: Option<DateTime<Utc>>,
    /// Problems met while loading (a bad bundle file, an unreadable state file).
    pub warnings: Vec<String>,
    /// True when `current` is newer than what the state directory holds.
    pub changed: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ClockState {
    high_water: DateTime<Utc>,
}

impl Licenses {
    pub fn builtin_only(builtin: u32) -> Self {
        Licenses {
            current: None,
            entitlement: Entitlement::builtin_only(builtin),
            rejected: Vec::new(),
            high_water: None,
            warnings: Vec::new(),
            changed: false,
        }
    }

    pub fn bundle(&self) -> Option<&Bundle> {
        self.current.as_ref().map(|(_, b)| b)
    }

    /// The engine's now for a given system time: never behind what was seen.
    pub fn now(&self, system: DateTime<Utc>) -> DateTime<Utc> {
        effective_now(system, self.high_water, self.bundle().map(|b| b.issued_at))
    }

    /// Offers a new signed bundle (from the cloud or a file). Accepted, it
    /// replaces the current one; refused, nothing changes.
    pub fn offer(
        &mut self,
        config: &Config,
        text: &str,
        system: DateTime<Utc>,
    ) -> Result<(), BundleError> {
        let rules = Acceptance {
            device: &config.device,
            last_generation: self.bundle().map(|b| b.generation),
            now: self.now(system),
        };
        let (signed, bundle) = bundle::accept(text, &config.trusted_keys, rules)?;
        if self.current.as_ref().is_some_and(|(s, _)| *s == signed) {
            return Ok(());
        }
        let (entitlement, rejected) = bundle.entitlement(config.builtin_seats);
        self.entitlement = entitlement;
        self.rejected = rejected;
        self.current = Some((signed, bundle));
        self.changed = true;
        Ok(())
    }
}

/// Decides what is in force from the texts found on disk. The stored bundle
/// is re-verified (the state directory is not trusted more than the cloud);
/// the bundle file is offered on top of it and wins only if acceptable.
pub fn resolve(
    config: &Config,
    stored: Option<&str>,
    file: Option<(&Path, &str)>,
    clock: Option<&str>,
    system: DateTime<Utc>,
) -> Licenses {
    let mut lic = Licenses::builtin_only(config.builtin_seats);
    if let Some(text) = clock {
        match serde_json::from_str::<ClockState>(text) {
            Ok(c) => lic.high_water = Some(c.high_water),
            Err(e) => lic.warnings.push(format!(
                "{CLOCK_FILE}: unreadable ({e}); the clock high-water mark starts again from now"
            )),
        }
    }
    if let Some(text) = stored {
        match lic.offer(config, text, system) {
            Ok(()) => lic.changed = false,
            Err(e) => lic
                .warnings
                .push(format!("stored {BUNDLE_FILE} refused: {e}")),
        }
    }
    if let Some((path, text)) = file {
        if let Err(e) = lic.offer(config, text, system) {
            lic.warnings
                .push(format!("bundle file {} refused: {e}", path.display()));
        }
    }
    lic
}

fn state_path(config: &Config, name: &str) -> PathBuf {
    config.state_dir.join(name)
}

/// Reads the state directory and the configured bundle file and resolves them.
/// Reads only: `persist` writes.
pub fn load(config: &Config, system: DateTime<Utc>) -> Licenses {
    let mut warnings = Vec::new();
    let mut read = |path: &Path| match store::read_optional(path) {
        Ok(text) => text,
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}", path.display()));
            None
        }
    };
    let stored = read(&state_path(config, BUNDLE_FILE));
    let clock = read(&state_path(config, CLOCK_FILE));
    let file = config
        .bundle_file
        .as_ref()
        .and_then(|p| read(p).map(|t| (p.clone(), t)));
    let mut lic = resolve(
        config,
        stored.as_deref(),
        file.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
        clock.as_deref(),
        system,
    );
    warnings.append(&mut lic.warnings);
    lic.warnings = warnings;
    lic
}

/// Stores a newly accepted bundle and the clock's high-water mark atomically.
pub fn persist(config: &Config, lic: &mut Licenses, system: DateTime<Utc>) -> std::io::Result<()> {
    let now = lic.now(system);
    store::ensure_dir(&config.state_dir, 0o750)?;
    if lic.changed {
        if let Some((signed, _)) = &lic.current {
            store::write_atomic(
                &state_path(config, BUNDLE_FILE),
                signed.to_json().as_bytes(),
                0o640,
            )?;
        }
        lic.changed = false;
    }
    let high = lic.high_water.map_or(now, |h| h.max(now));
    let text =
        serde_json::to_string(&ClockState { high_water: high }).expect("clock state serialises");
    store::write_atomic(&state_path(config, CLOCK_FILE), text.as_bytes(), 0o640)?;
    lic.high_water = Some(high);
    Ok(())
}

/// Reads what the lease book remembered (nothing yet: an empty record).
pub fn load_pools(config: &Config) -> Result<Remembered, PoolsFileError> {
    let path = state_path(config, POOLS_FILE);
    match store::read_optional(&path) {
        Ok(None) => Ok(Remembered::default()),
        Ok(Some(text)) => {
            serde_json::from_str(&text).map_err(|source| PoolsFileError::Parse { path, source })
        }
        Err(source) => Err(PoolsFileError::Read { path, source }),
    }
}

/// Stores what the lease book must remember, atomically, mode 0640.
pub fn persist_pools(config: &Config, saved: &Remembered) -> Result<(), PoolsFileError> {
    let path = state_path(config, POOLS_FILE);
    let text = serde_json::to_string(saved).expect("a pool record serialises");
    store::ensure_dir(&config.state_dir, 0o750)
        .and_then(|()| store::write_atomic(&path, text.as_bytes(), 0o640))
        .map_err(|source| PoolsFileError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::bundle::{sign, FORMAT};
    use crate::license::model::tests::{spc, t};
    use ed25519_dalek::SigningKey;

    fn config() -> Config {
        let key = SigningKey::from_bytes(&[1; 32]);
        let text = format!(
            "device = \"ESG-A1\"\n[license]\ntrusted_keys = [\"{}\"]\n",
            bundle::encode_public_key(&key.verifying_key())
        );
        crate::config::parse(&text, Path::new("/")).unwrap()
    }

    fn signed(generation: u64, seats: u32, key: u8) -> String {
        let b = Bundle {
            format: FORMAT,
            device: "ESG-A1".into(),
            org: "O".into(),
            generation,
            issued_at: t("2026-06-01T00:00:00Z"),
            not_after: t("2027-06-01T00:00:00Z"),
            licenses: vec![spc("L1", seats, 365, "2026-01-10T00:00:00Z")],
        };
        sign(&b, &SigningKey::from_bytes(&[key; 32])).to_json()
    }

    fn cap(lic: &Licenses) -> u32 {
        let now = lic.now(t("2026-06-02T00:00:00Z"));
        lic.entitlement.cap_at(now).total()
    }

    #[test]
    fn nothing_on_disk_gives_builtin_seats() {
        let lic = resolve(&config(), None, None, None, t("2026-06-02T00:00:00Z"));
        assert_eq!(cap(&lic), 2);
        assert!(lic.warnings.is_empty());
    }

    #[test]
    fn newer_file_replaces_stored_and_older_file_is_refused() {
        let c = config();
        let now = t("2026-06-02T00:00:00Z");
        let newer = signed(4, 30, 1);
        let lic = resolve(
            &c,
            Some(&signed(3, 20, 1)),
            Some((Path::new("f"), &newer)),
            None,
            now,
        );
        assert_eq!(cap(&lic), 32);
        assert!(lic.changed);
        let lic = resolve(
            &c,
            Some(&signed(3, 20, 1)),
            Some((Path::new("f"), &signed(2, 99, 1))),
            None,
            now,
        );
        assert_eq!(cap(&lic), 22, "replayed older file must not win");
        assert!(!lic.changed);
        assert!(
            lic.warnings[0].contains("older than the accepted generation 3"),
            "{:?}",
            lic.warnings
        );
    }

    #[test]
    fn tampered_state_file_is_refused_and_said() {
        let c = config();
        let forged = signed(9, 500, 2);
        let lic = resolve(&c, Some(&forged), None, None, t("2026-06-02T00:00:00Z"));
        assert_eq!(cap(&lic), 2);
        assert!(
            lic.warnings[0].contains("stored bundle.json refused: signature"),
            "{:?}",
            lic.warnings
        );
    }

    #[test]
    fn persisted_high_water_holds_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.state_dir = dir.path().to_path_buf();
        c.bundle_file = Some(dir.path().join("in.json"));
        std::fs::write(c.bundle_file.as_ref().unwrap(), signed(1, 20, 1)).unwrap();
        let mut lic = load(&c, t("2027-02-01T00:00:00Z"));
        persist(&c, &mut lic, t("2027-02-01T00:00:00Z")).unwrap();
        // Clock set back a year, file gone: the stored bundle and the high water remain.
        std::fs::remove_file(c.bundle_file.as_ref().unwrap()).unwrap();
        let lic = load(&c, t("2026-02-01T00:00:00Z"));
        assert_eq!(lic.bundle().map(|b| b.generation), Some(1));
        let now = lic.now(t("2026-02-01T00:00:00Z"));
        assert_eq!(now, t("2027-02-01T00:00:00Z"));
        assert_eq!(
            lic.entitlement.cap_at(now).total(),
            2,
            "expired license stays expired"
        );
    }

    #[test]
    fn pools_file_round_trips_and_a_bad_one_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.state_dir = dir.path().join("state");
        assert_eq!(
            load_pools(&c).unwrap(),
            Remembered::default(),
            "no file yet"
        );
        let saved = Remembered {
            pools: [("POOL-L1".to_string(), 7)].into(),
        };
        persist_pools(&c, &saved).unwrap();
        assert_eq!(load_pools(&c).unwrap(), saved);
        let path = c.state_dir.join(POOLS_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        std::fs::write(&path, "{not json").unwrap();
        let err = load_pools(&c).unwrap_err().to_string();
        assert!(err.contains("pools.json is not a pool record"), "{err}");
    }
}
