//! Reconciliation: disconnect hooks are not guaranteed (a killed server
//! calls none; OpenVPN never reports a client that was admitted and then
//! failed cipher negotiation), so the daemon compares its table with each
//! VPN server's own list and frees the seats of sessions the server no
//! longer has. `openvpn` and `ocserv` parse the servers' listings (pure);
//! this module decides which sessions are stale (pure); `fetch` asks the
//! servers (I/O) and `task` runs it at start-up and on an interval;
//! `control` ends sessions through the same servers (evictions).

pub mod control;
pub mod fetch;
pub mod ocserv;
pub mod openvpn;
pub mod task;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::admission::protocol::ServerKind;
use crate::admission::table::Session;

/// A server's answer that is not a complete listing. Never acted upon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} gave an unexpected answer ({detail}); keeping every session until it answers properly"
)]
pub struct ParseError {
    pub what: &'static str,
    pub detail: String,
}

impl ParseError {
    pub fn new(what: &'static str, detail: impl Into<String>) -> ParseError {
        ParseError {
            what,
            detail: detail.into(),
        }
    }
}

/// What one server said was live, and for which sessions it speaks.
#[derive(Debug, Clone)]
pub struct Listing {
    kind: ServerKind,
    /// The server pids whose sessions this listing covers (OpenVPN: the
    /// server process as it sees itself, which its management interface
    /// reports; ocserv: the workers of this ocserv instance, as pids in the
    /// daemon's namespace).
    scope: HashSet<u32>,
    live: Live,
    /// When the listing was asked for (before the request was sent).
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
enum Live {
    Openvpn(Vec<openvpn::Client>),
    Ocserv(HashSet<(u32, String)>),
}

impl Listing {
    /// The clients of the OpenVPN server process `pid`.
    pub fn openvpn(
        pid: u32,
        clients: Vec<openvpn::Client>,
        requested_at: DateTime<Utc>,
    ) -> Listing {
        Listing {
            kind: ServerKind::Openvpn,
            scope: HashSet::from([pid]),
            live: Live::Openvpn(clients),
            requested_at,
        }
    }

    /// The users of one ocserv instance; `workers` are the session worker
    /// pids known to belong to it.
    pub fn ocserv(
        workers: HashSet<u32>,
        users: Vec<ocserv::User>,
        requested_at: DateTime<Utc>,
    ) -> Listing {
        Listing {
            kind: ServerKind::Ocserv,
            scope: workers,
            live: Live::Ocserv(users.into_iter().map(|u| (u.id, u.username)).collect()),
            requested_at,
        }
    }

    /// Whether `session` holds a seat its server no longer has: it belongs
    /// to this server, it was admitted more than `grace` before the
    /// listing was asked for (a session admitted moments ago may not be
    /// listed yet), and the listing does not show it. Keys this module
    /// cannot read are never stale.
    pub fn is_stale(&self, session: &Session, grace: Duration) -> bool {
        if !self.covers(session) {
            return false;
        }
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let old_enough = self
            .requested_at
            .checked_sub_signed(grace)
            .is_some_and(|cutoff| session.since < cutoff);
        if !old_enough {
            return false;
        }
        match &self.live {
            Live::Openvpn(clients) => match openvpn::KeyParts::parse(&session.key) {
                Some(parts) => {
                    parts.pid == session.server.own_pid()
                        && !clients.iter().any(|c| parts.matches(c))
                }
                None => false,
            },
            Live::Ocserv(users) => match ocserv::key_parts(&session.key) {
                Some((id, user)) => !users.contains(&(id, user.to_string())),
                None => false,
            },
        }
    }

    /// Whether `session` belongs to a server this listing speaks for.
    pub fn covers(&self, session: &Session) -> bool {
        let pid = match self.live {
            Live::Openvpn(_) => session.server.own_pid(),
            Live::Ocserv(_) => session.server.pid,
        };
        session.server.kind == self.kind && self.scope.contains(&pid)
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// How many entries the server listed.
    pub fn len(&self) -> usize {
        match &self.live {
            Live::Openvpn(c) => c.len(),
            Live::Ocserv(u) => u.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::table::ServerId;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn session(key: &str, kind: ServerKind, pid: u32, since: &str) -> Session {
        Session {
            key: key.into(),
            instance: 1,
            user: "u".into(),
            remote: "127.0.0.1".into(),
            server: ServerId {
                kind,
                pid,
                start_ticks: 1,
                ns_pid: pid,
            },
            since: at(since),
            group: String::new(),
        }
    }

    #[test]
    fn openvpn_sessions_absent_and_old_enough_are_stale() {
        use ServerKind::Openvpn as O;
        let listed = openvpn::Client {
            common_name: "c1".into(),
            virtual_address: "10.8.0.2".into(),
            connected_since: 1000,
            client_id: Some(3),
        };
        let listing = Listing::openvpn(7, vec![listed], at("2026-01-01T00:01:00Z"));
        let grace = Duration::from_secs(2);
        let old = "2026-01-01T00:00:00Z";
        let cases = [
            (
                "listed",
                session("openvpn:7:9:1000:c1:10.8.0.2", O, 7, old),
                false,
            ),
            (
                "absent",
                session("openvpn:7:9:1001:c2:10.8.0.3", O, 7, old),
                true,
            ),
            (
                "same cn, other instance",
                session("openvpn:7:9:999:c1:10.8.0.2", O, 7, old),
                true,
            ),
            (
                "admitted within the grace",
                session(
                    "openvpn:7:9:1001:c2:10.8.0.3",
                    O,
                    7,
                    "2026-01-01T00:00:58.5Z",
                ),
                false,
            ),
            (
                "admitted after the request",
                session("openvpn:7:9:1001:c2:10.8.0.3", O, 7, "2026-01-01T00:01:01Z"),
                false,
            ),
            (
                "another server",
                session("openvpn:8:9:1001:c2:10.8.0.3", O, 8, old),
                false,
            ),
            (
                "another kind",
                session("ocserv:7:c2", ServerKind::Ocserv, 7, old),
                false,
            ),
            (
                "unreadable key",
                session("openvpn:garbage", O, 7, old),
                false,
            ),
            (
                "key of another pid",
                session("openvpn:8:9:1001:c2:10.8.0.3", O, 7, old),
                false,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(listing.is_stale(&s, grace), want, "{name}");
        }
    }

    #[test]
    fn ocserv_sessions_of_this_instance_absent_are_stale() {
        use ServerKind::Ocserv as C;
        let users = vec![ocserv::User {
            id: 101,
            username: "alice".into(),
        }];
        let listing = Listing::ocserv(
            HashSet::from([101, 102, 103]),
            users,
            at("2026-01-01T00:01:00Z"),
        );
        let grace = Duration::from_secs(2);
        let old = "2026-01-01T00:00:00Z";
        let cases = [
            ("listed", session("ocserv:101:alice", C, 101, old), false),
            (
                "absent worker",
                session("ocserv:102:bob", C, 102, old),
                true,
            ),
            (
                "same worker, other user",
                session("ocserv:101:bob", C, 101, old),
                true,
            ),
            (
                "young",
                session("ocserv:103:carol", C, 103, "2026-01-01T00:00:59Z"),
                false,
            ),
            (
                "other instance",
                session("ocserv:104:dan", C, 104, old),
                false,
            ),
            ("unreadable key", session("ocserv:x", C, 102, old), false),
        ];
        for (name, s, want) in cases {
            assert_eq!(listing.is_stale(&s, grace), want, "{name}");
        }
        assert_eq!(listing.len(), 1);
    }

    #[test]
    fn a_huge_grace_keeps_everything() {
        let listing = Listing::openvpn(7, vec![], at("2026-01-01T00:01:00Z"));
        let s = session(
            "openvpn:7:9:1:c:",
            ServerKind::Openvpn,
            7,
            "2026-01-01T00:00:00Z",
        );
        assert!(listing.is_stale(&s, Duration::ZERO));
        assert!(!listing.is_stale(&s, Duration::from_secs(u64::MAX)));
    }
}
