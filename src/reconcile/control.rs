//! Ending sessions through the VPN server that holds them (the I/O edge
//! beside `fetch`): OpenVPN's management interface (`status 3` for the
//! session's `Client ID`, then `client-kill CID HALT`) and ocserv's
//! `occtl disconnect id ID`, through the `[[reconcile]]` entries. Each
//! entry's conversation is bounded by its timeout. Decides nothing about
//! seats: it says what the server did, and the caller frees seats.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::fetch::{self, FetchError};
use super::{ocserv, openvpn};
use crate::admission::protocol::ServerKind;
use crate::admission::table::Session;
use crate::config::{Reconcile, Source};
use crate::sys::process;

/// What became of one session asked to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server confirmed it ended the session (`via`: which entry).
    Disconnected { via: String },
    /// The session had ended already: its server process is gone, or the
    /// server that holds it no longer lists it.
    Gone { via: String },
    /// No `[[reconcile]]` entry controls the session's server.
    NoControl,
    /// The server refused, or could not be asked (an entry that might
    /// hold the session did not answer).
    Failed { via: String, error: String },
}

/// Asks the servers to end `sessions`; one outcome per session, in order.
/// Entries are tried in config order; the first whose server holds a
/// session decides its outcome.
pub async fn disconnect(entries: &[Reconcile], sessions: &[Session]) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = sessions
        .iter()
        .map(|s| {
            let alive = process::process_start_ticks(s.server.pid) == Some(s.server.start_ticks);
            if alive {
                Outcome::NoControl
            } else {
                Outcome::Gone {
                    via: "its VPN server process has exited".into(),
                }
            }
        })
        .collect();
    // Why an entry that might hold a session could not be asked.
    let mut unreachable: Vec<Option<(String, String)>> = vec![None; sessions.len()];
    for entry in entries {
        let (kind, via) = match &entry.source {
            Source::Openvpn { .. } => (ServerKind::Openvpn, entry.source.describe()),
            Source::Ocserv { .. } => (ServerKind::Ocserv, entry.source.describe()),
        };
        let open: Vec<usize> = (0..sessions.len())
            .filter(|&i| out[i] == Outcome::NoControl && sessions[i].server.kind == kind)
            .collect();
        if open.is_empty() {
            continue;
        }
        let asked: Vec<&Session> = open.iter().map(|&i| &sessions[i]).collect();
        let answer = match &entry.source {
            Source::Openvpn { management } => openvpn(management, entry.timeout, &asked).await,
            Source::Ocserv { occtl, socket } => {
                ocserv(occtl, socket.as_deref(), entry.timeout, &asked).await
            }
        };
        match answer {
            Ok(found) => {
                for (&i, o) in open.iter().zip(found) {
                    out[i] = match o {
                        Some(Ok(true)) => Outcome::Disconnected { via: via.clone() },
                        Some(Ok(false)) => Outcome::Gone {
                            via: format!("{via} no longer lists it"),
                        },
                        Some(Err(error)) => Outcome::Failed {
                            via: via.clone(),
                            error,
                        },
                        None => continue,
                    };
                }
            }
            Err(e) => {
                for &i in &open {
                    unreachable[i] = Some((via.clone(), e.to_string()));
                }
            }
        }
    }
    for (o, why) in out.iter_mut().zip(unreachable) {
        if let (Outcome::NoControl, Some((via, error))) = (&o, why) {
            *o = Outcome::Failed { via, error };
        }
    }
    out
}

/// Per asked session: None when this server does not hold it, else
/// Ok(true) ended, Ok(false) not listed, Err(why) refused.
type Found = Vec<Option<Result<bool, String>>>;

async fn openvpn(
    management: &Path,
    timeout: Duration,
    sessions: &[&Session],
) -> Result<Found, FetchError> {
    let what = format!("OpenVPN management socket {}", management.display());
    match tokio::time::timeout(timeout, openvpn_unbounded(management, &what, sessions)).await {
        Ok(found) => found,
        Err(_) => Err(FetchError::Timeout {
            what,
            ms: timeout.as_millis(),
        }),
    }
}

async fn openvpn_unbounded(
    management: &Path,
    what: &str,
    sessions: &[&Session],
) -> Result<Found, FetchError> {
    let stream = UnixStream::connect(management)
        .await
        .map_err(|source| FetchError::Connect {
            path: management.to_path_buf(),
            source,
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd.take(1 << 20));
    let io = |source| FetchError::Io {
        what: what.to_string(),
        source,
    };
    wr.write_all(b"pid\n").await.map_err(io)?;
    let pid = openvpn::parse_pid(&answer(&mut rd, what).await?)?;
    let mine: Vec<bool> = sessions.iter().map(|s| s.server.own_pid() == pid).collect();
    let mut found: Found = vec![None; sessions.len()];
    if mine.contains(&true) {
        wr.write_all(b"status 3\n").await.map_err(io)?;
        let mut text = String::new();
        loop {
            let line = fetch::read_line(&mut rd, what).await?;
            text.push_str(&line);
            let bare = line.trim_end();
            if bare == "END" || bare.starts_with("ERROR:") {
                break;
            }
        }
        let clients = openvpn::parse_status3(&text)?;
        for (i, s) in sessions.iter().enumerate().filter(|(i, _)| mine[*i]) {
            let listed = openvpn::KeyParts::parse(&s.key)
                .and_then(|k| clients.iter().find(|c| k.matches(c)));
            found[i] = Some(match listed.map(|c| c.client_id) {
                None => Ok(false),
                Some(None) => Err("the server lists no Client ID (OpenVPN older than 2.3?)".into()),
                Some(Some(cid)) => {
                    wr.write_all(openvpn::kill_command(cid).as_bytes())
                        .await
                        .map_err(io)?;
                    openvpn::parse_kill(&answer(&mut rd, what).await?).map(|()| true)
                }
            });
        }
    }
    let _ = wr.write_all(b"quit\n").await;
    Ok(found)
}

/// The next `SUCCESS:` or `ERROR:` line, past the banner and any
/// real-time notifications (`>...`).
async fn answer<R: AsyncBufRead + Unpin>(rd: &mut R, what: &str) -> Result<String, FetchError> {
    loop {
        let line = fetch::read_line(rd, what).await?;
        if line.starts_with("SUCCESS:") || line.starts_with("ERROR:") {
            return Ok(line);
        }
    }
}

async fn ocserv(
    occtl: &Path,
    socket: Option<&Path>,
    timeout: Duration,
    sessions: &[&Session],
) -> Result<Found, FetchError> {
    let a = fetch::ocserv(occtl, socket, timeout).await?;
    let mut found: Found = vec![None; sessions.len()];
    for (i, s) in sessions.iter().enumerate() {
        // Only a worker this ocserv forked (occtl names its main process
        // as ocserv sees itself); another instance may reuse the ID.
        let parent = process::parent_pid(s.server.pid).and_then(process::read);
        if parent.is_none_or(|p| p.own_pid() != a.server_pid) {
            continue;
        }
        let Some((id, user)) = ocserv::key_parts(&s.key) else {
            continue;
        };
        if !a.users.iter().any(|u| u.id == id && u.username == user) {
            found[i] = Some(Ok(false));
            continue;
        }
        let id = id.to_string();
        let done = fetch::run(occtl, socket, &["disconnect", "id", &id], timeout).await;
        found[i] = Some(done.map(|_| true).map_err(|e| e.to_string()));
    }
    Ok(found)
}
