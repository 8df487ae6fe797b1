//! Asking the VPN servers for their session lists (the I/O edge). Every
//! call is bounded by a timeout; any failure is an error and the caller
//! releases nothing.
//!
//! OpenVPN's management interface serves one client at a time: a second
//! client is accepted by the kernel but only served when the first quits.
//! So this connects, asks `pid` and `status 3`, says `quit` and closes,
//! typically within a few milliseconds; while another tool holds the
//! interface, the call times out and the round is skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{ocserv, openvpn, ParseError};

/// The most bytes read from one answer (a listing of many thousand clients).
const MAX_ANSWER: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to the OpenVPN management socket {path}: {source} (is the server running with `management {path} unix`?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} did not answer within {ms} ms (another management client connected? a password on the interface?); skipping this round")]
    Timeout { what: String, ms: u128 },
    #[error("talking to {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} closed the connection before answering")]
    Closed { what: String },
    #[error("cannot run {path}: {source} (set occtl in [[reconcile]] to the occtl binary)")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr} (is ocserv running with use-occtl = true and this occtl socket?)")]
    Occtl {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// The OpenVPN server's pid, its clients, and when the listing was asked for.
pub struct OpenvpnAnswer {
    pub pid: u32,
    pub clients: Vec<openvpn::Client>,
    pub requested_at: DateTime<Utc>,
}

/// Asks an OpenVPN management socket for `pid` and `status 3`.
pub async fn openvpn(management: &Path, timeout: Duration) -> Result<OpenvpnAnswer, FetchError> {
    let (answer, _) = openvpn_kill(management, timeout, &|_, _| Vec::new()).await?;
    Ok(answer)
}

/// Which clients to end, from the server's pid and its listing: their
/// `Client ID`s.
pub type Pick<'a> = dyn Fn(u32, &[openvpn::Client]) -> Vec<u64> + Sync + 'a;

/// The same conversation, then `client-kill CID HALT` for each client
/// `pick` chooses; the server's answer to each kill, in order. One
/// conversation for both (one management client at a time).
pub async fn openvpn_kill(
    management: &Path,
    timeout: Duration,
    pick: &Pick<'_>,
) -> Result<(OpenvpnAnswer, Vec<Result<(), String>>), FetchError> {
    let what = format!("OpenVPN management socket {}", management.display());
    match tokio::time::timeout(timeout, openvpn_unbounded(management, &what, pick)).await {
        Ok(answer) => answer,
        Err(_) => Err(FetchError::Timeout {
            what,
            ms: timeout.as_millis(),
        }),
    }
}

async fn openvpn_unbounded(
    management: &Path,
    what: &str,
    pick: &Pick<'_>,
) -> Result<(OpenvpnAnswer, Vec<Result<(), String>>), FetchError> {
    let stream = UnixStream::connect(management)
        .await
        .map_err(|source| FetchError::Connect {
            path: management.to_path_buf(),
            source,
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd.take(MAX_ANSWER));
    let io = |source| FetchError::Io {
        what: what.to_string(),
        source,
    };
    wr.write_all(b"pid\n").await.map_err(io)?;
    let pid = openvpn::parse_pid(&answer(&mut rd, what).await?)?;
    let requested_at = Utc::now();
    wr.write_all(b"status 3\n").await.map_err(io)?;
    let mut text = String::new();
    loop {
        let line = read_line(&mut rd, what).await?;
        text.push_str(&line);
        let bare = line.trim_end();
        if bare == "END" || bare.starts_with("ERROR:") {
            break;
        }
    }
    let clients = openvpn::parse_status3(&text)?;
    let mut kills = Vec::new();
    for cid in pick(pid, &clients) {
        wr.write_all(openvpn::kill_command(cid).as_bytes())
            .await
            .map_err(io)?;
        kills.push(openvpn::parse_kill(&answer(&mut rd, what).await?));
    }
    // Free the interface for the next client; the answers are complete.
    let _ = wr.write_all(b"quit\n").await;
    let answer = OpenvpnAnswer {
        pid,
        clients,
        requested_at,
    };
    Ok((answer, kills))
}

/// The next `SUCCESS:` or `ERROR:` line, past the banner and any
/// real-time notifications (`>...`).
async fn answer<R: tokio::io::AsyncBufRead + Unpin>(
    rd: &mut R,
    what: &str,
) -> Result<String, FetchError> {
    loop {
        let line = read_line(rd, what).await?;
        if line.starts_with("SUCCESS:") || line.starts_with("ERROR:") {
            return Ok(line);
        }
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    rd: &mut R,
    what: &str,
) -> Result<String, FetchError> {
    let mut line = String::new();
    let n = rd
        .read_line(&mut line)
        .await
        .map_err(|source| FetchError::Io {
            what: what.to_string(),
            source,
        })?;
    if n == 0 || !line.ends_with('\n') {
        return Err(FetchError::Closed {
            what: what.to_string(),
        });
    }
    Ok(line)
}

/// The ocserv main pid, its users, and when the user list was asked for.
pub struct OcservAnswer {
    pub server_pid: u32,
    pub users: Vec<ocserv::User>,
    pub requested_at: DateTime<Utc>,
}

/// Runs `occtl -j show status` (for the main pid) and `occtl -j show users`.
pub async fn ocserv(
    occtl: &Path,
    socket: Option<&Path>,
    timeout: Duration,
) -> Result<OcservAnswer, FetchError> {
    let status = run_occtl(occtl, socket, "status", timeout).await?;
    let server_pid = ocserv::parse_server_pid(&status)?;
    let requested_at = Utc::now();
    let users = run_occtl(occtl, socket, "users", timeout).await?;
    Ok(OcservAnswer {
        server_pid,
        users: ocserv::parse_users(&users)?,
        requested_at,
    })
}

async fn run_occtl(
    occtl: &Path,
    socket: Option<&Path>,
    what: &str,
    timeout: Duration,
) -> Result<String, FetchError> {
    run(occtl, socket, &["-j", "show", what], timeout).await
}

/// Runs `occtl [-s SOCKET] ARGS` within `timeout`; its output when it
/// exits 0.
pub(super) async fn run(
    occtl: &Path,
    socket: Option<&Path>,
    args: &[&str],
    timeout: Duration,
) -> Result<String, FetchError> {
    let mut cmd = tokio::process::Command::new(occtl);
    if let Some(s) = socket {
        cmd.arg("-s").arg(s);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let command = format!("{} {}", occtl.display(), args.join(" "));
    let child = cmd.spawn().map_err(|source| FetchError::Spawn {
        path: occtl.to_path_buf(),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(|source| FetchError::Io {
            what: command.clone(),
            source,
        })?,
        Err(_) => {
            return Err(FetchError::Timeout {
                what: command,
                ms: timeout.as_millis(),
            })
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(FetchError::Occtl {
            command,
            status: out.status,
            stderr: stderr.trim().chars().take(200).collect(),
        });
    }
    if out.stdout.len() as u64 > MAX_ANSWER {
        return Err(ParseError::new("occtl", "answer too long").into());
    }
    String::from_utf8(out.stdout)
        .map_err(|_| ParseError::new("occtl", "answer is not UTF-8").into())
}
