//! Ending sessions through the VPN server that holds them (the I/O edge
//! beside `fetch`): OpenVPN's management interface (`status 3` for the
//! session's `Client ID`, then `client-kill CID HALT`) and ocserv's
//! `occtl disconnect id ID`, through the `[[reconcile]]` entries. Each
//! entry's conversation is bounded by its timeout. Decides nothing about
//! seats: it says what the server did, and the caller frees seats.

use std::path::Path;
use std::time::Duration;

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

/// What to do about each asked session, given the server's pid and list.
fn targets(sessions: &[&Session], pid: u32, clients: &[openvpn::Client]) -> Vec<Target> {
    sessions
        .iter()
        .map(|s| {
            if s.server.own_pid() != pid {
                return Target::NotMine;
            }
            let Some(k) = openvpn::KeyParts::parse(&s.key) else {
                return Target::NotListed;
            };
            // Without a pool address two clients of one common name (with
            // `duplicate-cn`) connected in one second both match: killing
            // the first could end another device and leave this one up.
            let mut listed = clients.iter().filter(|c| k.matches(c));
            match (listed.next().map(|c| c.client_id), listed.next()) {
                (None, _) => Target::NotListed,
                (Some(_), Some(_)) => Target::Ambiguous,
                (Some(None), None) => Target::NoClientId,
                (Some(Some(cid)), None) => Target::Kill(cid),
            }
        })
        .collect()
}

enum Target {
    NotMine,
    NotListed,
    NoClientId,
    Ambiguous,
    Kill(u64),
}

async fn openvpn(
    management: &Path,
    timeout: Duration,
    sessions: &[&Session],
) -> Result<Found, FetchError> {
    let pick = |pid: u32, clients: &[openvpn::Client]| -> Vec<u64> {
        let all = targets(sessions, pid, clients);
        all.into_iter()
            .filter_map(|t| match t {
                Target::Kill(cid) => Some(cid),
                _ => None,
            })
            .collect()
    };
    let (answer, kills) = fetch::openvpn_kill(management, timeout, &pick).await?;
    let mut kills = kills.into_iter();
    let found = targets(sessions, answer.pid, &answer.clients)
        .into_iter()
        .map(|t| match t {
            Target::NotMine => None,
            Target::NotListed => Some(Ok(false)),
            Target::NoClientId => Some(Err(
                "the server lists no Client ID (OpenVPN older than 2.3?)".into(),
            )),
            Target::Ambiguous => Some(Err(
                "the server lists several clients of this common name connected in the same second and no pool address tells them apart; none was ended".into(),
            )),
            Target::Kill(_) => Some(
                kills
                    .next()
                    .unwrap_or(Err("no answer".into()))
                    .map(|()| true),
            ),
        })
        .collect();
    Ok(found)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::table::ServerId;
    use chrono::Utc;

    fn session(key: &str) -> Session {
        Session {
            key: key.into(),
            instance: 1,
            user: "alice".into(),
            remote: String::new(),
            server: ServerId {
                kind: ServerKind::Openvpn,
                pid: 77,
                start_ticks: 1,
                ns_pid: 77,
            },
            since: Utc::now(),
            group: String::new(),
        }
    }

    fn client(addr: &str, cid: u64) -> openvpn::Client {
        openvpn::Client {
            common_name: "alice".into(),
            virtual_address: addr.into(),
            connected_since: 1_795_808_687,
            client_id: Some(cid),
        }
    }

    /// Attack: one certificate on two devices (`duplicate-cn`) without an
    /// address pool, both connected in the same second. The key of one
    /// matches both rows: the first row's device must not be killed for it.
    #[test]
    fn a_key_matching_two_listed_clients_kills_neither() {
        let s = session("openvpn:77:1795808600:1795808687:alice:");
        let two = [client("", 5), client("", 6)];
        assert!(matches!(targets(&[&s], 77, &two)[0], Target::Ambiguous));
        // With pool addresses each key names its own row.
        let s = session("openvpn:77:1795808600:1795808687:alice:10.8.0.3");
        let pooled = [client("10.8.0.2", 5), client("10.8.0.3", 6)];
        assert!(matches!(targets(&[&s], 77, &pooled)[0], Target::Kill(6)));
        assert!(matches!(targets(&[&s], 78, &pooled)[0], Target::NotMine));
    }
}
