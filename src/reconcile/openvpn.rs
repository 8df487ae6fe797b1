//! OpenVPN's management interface, pure: the `pid` and `status 3` answers
//! parsed, and a seatgate session key read back into the parts a listing
//! shows (`Connected Since (time_t)` = the hook's `time_unix`, common name,
//! virtual address = `ifconfig_pool_remote_ip`).

use super::ParseError;

/// One `CLIENT_LIST` row of `status 3`, the columns seatgate matches on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Client {
    pub common_name: String,
    pub virtual_address: String,
    pub connected_since: i64,
    /// The `Client ID` (CID) that `client-kill` takes; None from a server
    /// too old to list it.
    pub client_id: Option<u64>,
}

const WHAT: &str = "OpenVPN management `status 3`";

/// Parses the answer to `pid`: `SUCCESS: pid=1234`.
pub fn parse_pid(line: &str) -> Result<u32, ParseError> {
    let line = line.trim_end();
    line.strip_prefix("SUCCESS: pid=")
        .and_then(|p| p.parse().ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| ParseError::new("OpenVPN management `pid`", line))
}

/// Parses `status 3` (tab-separated, CRLF, closed by `END`). Columns are
/// found by their `HEADER CLIENT_LIST` names, so added columns do not
/// matter. Real-time notifications (lines starting with `>`) are skipped.
/// Anything short of a complete, well-formed listing is an error: a partial
/// list must never release a seat.
pub fn parse_status3(text: &str) -> Result<Vec<Client>, ParseError> {
    let mut columns: Option<(usize, usize, usize, Option<usize>)> = None;
    let mut clients = Vec::new();
    let mut ended = false;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() || line.starts_with('>') {
            continue;
        }
        if ended {
            return Err(ParseError::new(WHAT, "text after END"));
        }
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["END"] => ended = true,
            ["HEADER", "CLIENT_LIST", names @ ..] => {
                let find = |name: &str| {
                    names
                        .iter()
                        .position(|n| *n == name)
                        .ok_or_else(|| ParseError::new(WHAT, format!("no column {name:?}")))
                };
                columns = Some((
                    find("Common Name")?,
                    find("Virtual Address")?,
                    find("Connected Since (time_t)")?,
                    find("Client ID").ok(),
                ));
            }
            ["CLIENT_LIST", values @ ..] => {
                let Some((cn, addr, since, cid)) = columns else {
                    return Err(ParseError::new(WHAT, "CLIENT_LIST row before its HEADER"));
                };
                let get = |i: usize| {
                    values.get(i).copied().ok_or_else(|| {
                        ParseError::new(
                            WHAT,
                            format!("CLIENT_LIST row with {} fields", values.len()),
                        )
                    })
                };
                let since_text = get(since)?;
                let connected_since = since_text.parse().map_err(|_| {
                    ParseError::new(WHAT, format!("Connected Since (time_t) {since_text:?}"))
                })?;
                // Not a number: no kill for it (the listing still counts).
                let client_id = cid.and_then(|i| values.get(i)?.parse().ok());
                clients.push(Client {
                    common_name: get(cn)?.to_string(),
                    virtual_address: get(addr)?.to_string(),
                    connected_since,
                    client_id,
                });
            }
            [tag, ..] if tag.starts_with("ERROR") => {
                return Err(ParseError::new(
                    WHAT,
                    format!("the server answered {line:?}"),
                ))
            }
            _ => {}
        }
    }
    if columns.is_none() {
        return Err(ParseError::new(WHAT, "no HEADER CLIENT_LIST line"));
    }
    if !ended {
        return Err(ParseError::new(WHAT, "cut short (no END line)"));
    }
    Ok(clients)
}

/// The management command that ends client `cid`. `HALT` (not the
/// default `RESTART`) tells the client to exit instead of reconnecting and
/// taking a seat again.
pub fn kill_command(cid: u64) -> String {
    format!("client-kill {cid} HALT\n")
}

/// Reads the answer to `client-kill`: `SUCCESS: ...` or `ERROR: ...`.
pub fn parse_kill(line: &str) -> Result<(), String> {
    let line = line.trim_end();
    if line.starts_with("SUCCESS:") {
        Ok(())
    } else {
        Err(format!(
            "the server answered {:?}",
            crate::text::shown(line)
        ))
    }
}

/// The parts of an OpenVPN session key
/// (`openvpn:{daemon_pid}:{daemon_start_time}:{time_unix}:{common_name}:{pool_ip}`,
/// built by `hook::openvpn`). The common name may hold ':'; the pool address
/// (IPv4 or empty) never does, so it is split off from the right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts<'a> {
    pub pid: u32,
    pub time_unix: i64,
    pub common_name: &'a str,
    pub pool_ip: &'a str,
}

impl<'a> KeyParts<'a> {
    pub fn parse(key: &'a str) -> Option<KeyParts<'a>> {
        let mut head = key.splitn(5, ':');
        if head.next()? != "openvpn" {
            return None;
        }
        let pid = head.next()?.parse().ok()?;
        let _start_time = head.next()?;
        let time_unix = head.next()?.parse().ok()?;
        let (common_name, pool_ip) = head.next()?.rsplit_once(':')?;
        Some(KeyParts {
            pid,
            time_unix,
            common_name,
            pool_ip,
        })
    }

    /// Whether a listed client is this session. A key without a pool
    /// address (no `ifconfig-pool`) matches on time and common name alone.
    pub fn matches(&self, c: &Client) -> bool {
        c.connected_since == self.time_unix
            && c.common_name == self.common_name
            && (self.pool_ip.is_empty() || c.virtual_address == self.pool_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::{openvpn::action, Action};

    const STATUS: &str = include_str!("../../tests/vpn/samples/openvpn-status3.txt");
    const CIPHER_FAIL: &str =
        include_str!("../../tests/vpn/samples/openvpn-status3-cipher-fail-window.txt");

    fn client(cn: &str, addr: &str, since: i64) -> Client {
        Client {
            common_name: cn.into(),
            virtual_address: addr.into(),
            connected_since: since,
            client_id: Some(0),
        }
    }

    #[test]
    fn real_status3_samples_parse() {
        assert_eq!(
            parse_status3(STATUS).unwrap(),
            vec![client("client1", "10.8.0.2", 1795808687)]
        );
        // The sample is only the CLIENT_LIST part: no END, so not a listing.
        assert!(parse_status3(CIPHER_FAIL).is_err());
        let complete = format!("{CIPHER_FAIL}END\r\n");
        assert_eq!(
            parse_status3(&complete).unwrap(),
            vec![Client {
                client_id: Some(3),
                ..client("client1", "10.8.0.2", 1795808742)
            }]
        );
    }

    #[test]
    fn client_ids_are_read_when_listed() {
        let header = "HEADER\tCLIENT_LIST\tCommon Name\tVirtual Address\tConnected Since (time_t)\tClient ID\r\n";
        let text = format!(
            "{header}CLIENT_LIST\ta\t10.8.0.2\t5\t17\r\nCLIENT_LIST\tb\t10.8.0.3\t6\t4\r\nEND\r\n"
        );
        let ids: Vec<_> = parse_status3(&text)
            .unwrap()
            .iter()
            .map(|c| c.client_id)
            .collect();
        assert_eq!(ids, [Some(17), Some(4)]);
        // A server that lists no Client ID column: still a listing, no CIDs.
        let old = format!("{}END\r\n", header.replace("\tClient ID", ""));
        assert_eq!(parse_status3(&old).unwrap(), vec![]);
        let row = "CLIENT_LIST\ta\t10.8.0.2\t5\r\n";
        let old = format!("{}{row}END\r\n", header.replace("\tClient ID", ""));
        assert_eq!(parse_status3(&old).unwrap()[0].client_id, None);
        // An odd Client ID: the listing stands, that client cannot be killed.
        let odd = format!("{header}CLIENT_LIST\ta\t10.8.0.2\t5\tx\r\nEND\r\n");
        assert_eq!(parse_status3(&odd).unwrap()[0].client_id, None);
    }

    #[test]
    fn kill_commands_and_answers() {
        assert_eq!(kill_command(17), "client-kill 17 HALT\n");
        assert_eq!(
            parse_kill("SUCCESS: client-kill command succeeded\r\n"),
            Ok(())
        );
        for bad in [
            "ERROR: client-kill command failed\r\n",
            "",
            ">INFO:x",
            "SUCCESS",
        ] {
            assert!(parse_kill(bad).is_err(), "{bad:?}");
        }
        assert!(parse_kill("ERROR: client-kill command failed")
            .unwrap_err()
            .contains("command failed"));
    }

    #[test]
    fn incomplete_or_odd_listings_are_errors() {
        let header = "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\tBytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\r\n";
        let row = "CLIENT_LIST\tc1\t127.0.0.1:1\t10.8.0.2\t\t1\t2\tx\t1795808687\r\n";
        let cases: &[(&str, String, Result<usize, &str>)] = &[
            ("empty server", format!("{header}END\r\n"), Ok(0)),
            ("one client", format!("{header}{row}END\r\n"), Ok(1)),
            (
                "notifications skipped",
                format!(">INFO:banner\r\n{header}>LOG:x\r\n{row}END\r\n"),
                Ok(1),
            ),
            ("nothing", String::new(), Err("no HEADER")),
            (
                "banner only",
                ">INFO:OpenVPN Management\r\n".into(),
                Err("no HEADER"),
            ),
            ("cut short", format!("{header}{row}"), Err("no END")),
            (
                "row first",
                format!("{row}{header}END\r\n"),
                Err("before its HEADER"),
            ),
            (
                "short row",
                format!("{header}CLIENT_LIST\tc1\t127.0.0.1:1\r\nEND\r\n"),
                Err("fields"),
            ),
            (
                "bad time",
                format!("{header}{}END\r\n", row.replace("1795808687", "soon")),
                Err("time_t"),
            ),
            (
                "missing column",
                format!("{}END\r\n", header.replace("Virtual Address\t", "")),
                Err("Virtual Address"),
            ),
            (
                "error answer",
                "ERROR: unknown command\r\n".into(),
                Err("answered"),
            ),
            (
                "after END",
                format!("{header}END\r\n{row}"),
                Err("after END"),
            ),
        ];
        for (name, text, want) in cases {
            match (parse_status3(text), want) {
                (Ok(c), Ok(n)) => assert_eq!(c.len(), *n, "{name}"),
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{name}: {e}"),
                (got, _) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn pid_answers() {
        assert_eq!(parse_pid("SUCCESS: pid=6151\r\n").unwrap(), 6151);
        for bad in [
            "SUCCESS: pid=",
            "SUCCESS: pid=0",
            "ERROR: unknown command",
            "",
        ] {
            assert!(parse_pid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_from_the_real_hook_match_the_real_listing() {
        let env: std::collections::HashMap<String, String> =
            include_str!("../../tests/vpn/env-samples/openvpn-client-connect-admitted.env")
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let Ok(Action::Connect(req)) = action(&env) else {
            panic!("connect expected")
        };
        let parts = KeyParts::parse(&req.key).unwrap();
        assert_eq!(parts.pid, 6151);
        let listed = parse_status3(STATUS).unwrap();
        assert!(parts.matches(&listed[0]));
    }

    #[test]
    fn key_parsing_and_matching() {
        let listed = client("a:b", "10.8.0.9", 100);
        let cases: &[(&str, Option<bool>)] = &[
            ("openvpn:7:50:100:a:b:10.8.0.9", Some(true)),
            ("openvpn:7:50:100:a:b:", Some(true)),
            ("openvpn:7:50:100:a:b:10.8.0.8", Some(false)),
            ("openvpn:7:50:101:a:b:10.8.0.9", Some(false)),
            ("openvpn:7:50:100:a:10.8.0.9", Some(false)),
            ("ocserv:7:alice", None),
            ("openvpn:x:50:100:a:10.8.0.9", None),
            ("openvpn:7:50:later:a:10.8.0.9", None),
            ("openvpn:7:50:100", None),
        ];
        for (key, want) in cases {
            let got = KeyParts::parse(key).map(|p| p.matches(&listed));
            assert_eq!(got, *want, "{key}");
        }
    }
}
