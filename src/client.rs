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
    #[error("{path} answered something that is not a response: {detail}")]
    Garbled { path: PathBuf, detail: String },
}

/// Sends one request and reads its response, all within `timeout`.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let p = || path.to_path_buf();
    let stream =
        UnixStream::connect(path).map_err(|source| ClientError::Connect { path: p(), source })?;
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
    serde_json::from_slice(&line).map_err(|e| ClientError::Garbled {
        path: p(),
        detail: e.to_string(),
    })
}
