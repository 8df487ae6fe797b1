//! The licenses' files in the state directory: the last accepted bundle,
//! the clock's high-water mark and what the book of pool leases must
//! remember across a restart (`pools.json`, docs/pools.md), plus an
//! operator-supplied bundle file. The one part of `license/` that does I/O;
//! what the texts mean is decided by `in_force::resolve`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::bundle::Signed;
use super::in_force::{self, ClockState, Licenses, Rules};
use super::lease::Remembered;
use crate::store;

pub const BUNDLE_FILE: &str = "bundle.json";
pub const CLOCK_FILE: &str = "clock.json";
pub const POOLS_FILE: &str = "pools.json";
/// The license warnings already said (`notices`), so a restart does not
/// say them again.
pub const NOTICES_FILE: &str = "notices.json";
/// The state directory is the daemon's own (and its group's).
const DIR_MODE: u32 = 0o750;
const FILE_MODE: u32 = 0o640;

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

/// Reads the state directory and the bundle file and resolves them; the
/// clock restarts from the mark at the monotonic instant of the reading.
/// Reads only: the `write_*` functions write.
pub fn load(
    state_dir: &Path,
    bundle_file: Option<&Path>,
    rules: &Rules,
    system: DateTime<Utc>,
) -> Licenses {
    let mut warnings = Vec::new();
    let mut read = |path: &Path| match store::read_optional(path) {
        Ok(text) => text,
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}", path.display()));
            None
        }
    };
    let stored = read(&state_dir.join(BUNDLE_FILE));
    let clock = read(&state_dir.join(CLOCK_FILE));
    let file = bundle_file.and_then(|p| read(p).map(|t| (p.to_path_buf(), t)));
    let mut lic = in_force::resolve(
        rules,
        stored.as_deref(),
        file.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
        clock.as_deref(),
        system,
        Instant::now(),
    );
    warnings.append(&mut lic.warnings);
    lic.warnings = warnings;
    lic
}

/// Stores an accepted bundle atomically.
pub fn write_bundle(state_dir: &Path, signed: &Signed) -> std::io::Result<()> {
    store::ensure_dir(state_dir, DIR_MODE)?;
    store::write_atomic(
        &state_dir.join(BUNDLE_FILE),
        signed.to_json().as_bytes(),
        FILE_MODE,
    )
}

/// Stores the clock (its mark: the trusted now) atomically.
pub fn write_clock(state_dir: &Path, clock: &ClockState) -> std::io::Result<()> {
    store::ensure_dir(state_dir, DIR_MODE)?;
    let text = serde_json::to_string(clock).expect("clock state serialises");
    store::write_atomic(&state_dir.join(CLOCK_FILE), text.as_bytes(), FILE_MODE)
}

/// Reads what the lease book remembered (nothing yet: an empty record).
pub fn load_pools(state_dir: &Path) -> Result<Remembered, PoolsFileError> {
    let path = state_dir.join(POOLS_FILE);
    match store::read_optional(&path) {
        Ok(None) => Ok(Remembered::default()),
        Ok(Some(text)) => {
            serde_json::from_str(&text).map_err(|source| PoolsFileError::Parse { path, source })
        }
        Err(source) => Err(PoolsFileError::Read { path, source }),
    }
}

/// Stores what the lease book must remember, atomically.
pub fn write_pools(state_dir: &Path, saved: &Remembered) -> Result<(), PoolsFileError> {
    let path = state_dir.join(POOLS_FILE);
    let text = serde_json::to_string(saved).expect("a pool record serialises");
    store::ensure_dir(state_dir, DIR_MODE)
        .and_then(|()| store::write_atomic(&path, text.as_bytes(), FILE_MODE))
        .map_err(|source| PoolsFileError::Write { path, source })
}

/// What `notices.json` holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SaidFile {
    said: std::collections::BTreeSet<String>,
}

/// Reads the keys of the license warnings already said (none yet: empty).
/// An unreadable file is an error: the warnings are said again.
pub fn load_said(state_dir: &Path) -> Result<std::collections::BTreeSet<String>, String> {
    let path = state_dir.join(NOTICES_FILE);
    match store::read_optional(&path) {
        Ok(None) => Ok(Default::default()),
        Ok(Some(text)) => serde_json::from_str::<SaidFile>(&text)
            .map(|f| f.said)
            .map_err(|e| format!("{} is not a notices record ({e}); license warnings already logged may be logged again", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}; license warnings already logged may be logged again", path.display())),
    }
}

/// Stores the keys of the license warnings said, atomically.
pub fn write_said(
    state_dir: &Path,
    said: &std::collections::BTreeSet<String>,
) -> std::io::Result<()> {
    let text = serde_json::to_string(&SaidFile { said: said.clone() }).expect("keys serialise");
    store::ensure_dir(state_dir, DIR_MODE)?;
    store::write_atomic(&state_dir.join(NOTICES_FILE), text.as_bytes(), FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::in_force::tests::{rules, signed};
    use crate::license::model::tests::t;

    #[test]
    fn persisted_high_water_holds_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (state, file) = (dir.path(), dir.path().join("in.json"));
        std::fs::write(&file, signed(1, 20, 1)).unwrap();
        let mut lic = load(state, Some(&file), &rules(), t("2027-02-01T00:00:00Z"));
        write_bundle(state, lic.signed().unwrap()).unwrap();
        let mark = lic.observe(t("2027-02-01T00:00:00Z"), Instant::now());
        write_clock(state, &mark).unwrap();
        // Clock set back a year, file gone: the stored bundle and the high water remain.
        std::fs::remove_file(&file).unwrap();
        let lic = load(state, None, &rules(), t("2026-02-01T00:00:00Z"));
        assert_eq!(lic.bundle().map(|b| b.generation), Some(1));
        let now = lic.now(t("2026-02-01T00:00:00Z"), Instant::now());
        // The mark, run on by the (tiny) monotonic time since the load.
        assert!(now >= t("2027-02-01T00:00:00Z"), "{now}");
        assert!(now < t("2027-02-01T00:01:00Z"), "{now}");
        assert_eq!(
            lic.entitlement.cap_at(now).total(),
            2,
            "expired license stays expired"
        );
    }

    #[test]
    fn said_notices_round_trip_and_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(load_said(&state).unwrap().is_empty());
        let said = ["expiry:L1:2027-01-10T00:00:00+00:00:30".to_string()].into();
        write_said(&state, &said).unwrap();
        assert_eq!(load_said(&state).unwrap(), said);
        std::fs::write(state.join(NOTICES_FILE), "[").unwrap();
        assert!(load_said(&state)
            .unwrap_err()
            .contains("not a notices record"));
    }

    #[test]
    fn pools_file_round_trips_and_a_bad_one_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(
            load_pools(&state).unwrap(),
            Remembered::default(),
            "no file yet"
        );
        let saved = Remembered {
            pools: [("POOL-L1".to_string(), 7)].into(),
        };
        write_pools(&state, &saved).unwrap();
        assert_eq!(load_pools(&state).unwrap(), saved);
        let path = state.join(POOLS_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        std::fs::write(&path, "{not json").unwrap();
        let err = load_pools(&state).unwrap_err().to_string();
        assert!(err.contains("pools.json is not a pool record"), "{err}");
    }
}
