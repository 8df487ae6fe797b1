//! One daemon per runtime directory: an exclusive lock (flock) on a file in
//! it, taken before the session table is read or the socket is bound, and
//! held until the last file of the process is written. A second daemon
//! waits for it (a restart that overlaps the old daemon's shutdown) and
//! then refuses with a message naming the holder.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

pub const LOCK_FILE: &str = "seatgate.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another seatgate (pid {holder}) runs on the runtime directory {} and did not stop within {} ms; stop it first (one daemon per runtime directory)", dir.display(), waited.as_millis())]
    Held {
        dir: PathBuf,
        holder: String,
        waited: Duration,
    },
}

/// Held while the daemon runs; released when dropped (or the process ends).
pub struct RuntimeLock {
    _lock: Flock<File>,
}

/// Takes the lock on `dir`, waiting up to `wait` for another daemon to let go.
pub fn acquire(dir: &Path, wait: Duration) -> Result<RuntimeLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let deadline = Instant::now() + wait;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // Who holds it, for the next one's message.
                let _ = lock.set_len(0);
                let _ = lock.rewind();
                let _ = writeln!(lock, "{}", std::process::id());
                return Ok(RuntimeLock { _lock: lock });
            }
            Err(_) if Instant::now() < deadline => {
                // The holder is shutting down (or stuck): look again soon.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: holder.trim().to_string(),
                    waited: wait,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_then_refuses_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), Duration::ZERO).unwrap();
        let err = acquire(dir.path(), Duration::from_millis(50))
            .err()
            .expect("held");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        acquire(dir.path(), Duration::ZERO).expect("free again");
    }
}
