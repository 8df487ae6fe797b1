//! A small blocking client for the admission socket, used by the hooks and
//! the operator commands: no async runtime, a deadline on every call.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::admission::protocol::{encode_request, Request, Response};

/// The longest response read (a status with many thousand sessions).
const MAX_RESPONSE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {source} (is `seatgate run` running? is the socket path right?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no answer from {path} within {ms} ms")]
    Timeout { path: PathBuf, ms: u128 },
    #[error("talking to {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("{path} answered something that is not a response: {source}")]
    Garbled {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// No call waits longer than this, whatever it is asked.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects within `timeout` (also for the OpenVPN plugin's persistent
/// connection). A plain connect() blocks for as long as the
/// listen queue is full (a stalled daemon, or one restarting behind
/// systemd's socket), and a hook must never hang its VPN server: Linux
/// bounds a Unix-socket connect by the socket's send timeout.
pub fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{
        self, sockopt::SendTimeout, AddressFamily, SockFlag, SockType, UnixAddr,
    };
    use nix::sys::time::{TimeVal, TimeValLike};
    use std::os::fd::AsRawFd;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let ms = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    socket::setsockopt(&fd, SendTimeout, &TimeVal::milliseconds(ms))?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

/// Sends one request and reads its response, all within `timeout`.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let timeout = timeout.min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let p = || path.to_path_buf();
    let stream = connect(path, timeout).map_err(|source| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
            path: p(),
            ms: timeout.as_millis(),
        },
        _ => ClientError::Connect { path: p(), source },
    })?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let io = |source: std::io::Error| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout {
                path: p(),
                ms: timeout.as_millis(),
            }
        } else {
            ClientError::Io { path: p(), source }
        }
    };
    stream.set_write_timeout(Some(left())).map_err(io)?;
    (&stream).write_all(&encode_request(request)).map_err(io)?;
    stream.set_read_timeout(Some(left())).map_err(io)?;
    let mut line = Vec::with_capacity(512);
    BufReader::new((&stream).take(MAX_RESPONSE))
        .read_until(b'\n', &mut line)
        .map_err(io)?;
    if line.last() != Some(&b'\n') {
        return Err(ClientError::Closed { path: p() });
    }
    serde_json::from_slice(&line).map_err(|source| ClientError::Garbled { path: p(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;

    #[test]
    fn a_full_listen_queue_times_out_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        // Nobody accepts: fill the queue until a connect would block.
        let mut held = Vec::new();
        while held.len() < 8 {
            match connect(&path, Duration::from_millis(50)) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        assert!(held.len() < 8, "the queue never filled");
        let started = Instant::now();
        let err = call(&path, &Request::Ping, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_silent_daemon_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = call(&path, &Request::Ping, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    }
}
