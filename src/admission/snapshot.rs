//! The session snapshot's file format: a header line with the counters and
//! the number of sessions, then one session per line. A file cut short or
//! damaged loses only the lines it lost, and the header says how many
//! sessions that was: those seats stay counted as `lost` instead of being
//! handed out again. Pure: bytes in, table and damage report out.

use serde::{Deserialize, Serialize};

use super::table::{Session, Table, LOST_UNKNOWN};

const FORMAT: u32 = 2;

/// Everything of the table but its sessions, and how many there were.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    /// The number of session lines that follow.
    count: u32,
    #[serde(flatten)]
    counters: Table,
}

/// A snapshot read back.
#[derive(Debug)]
pub struct Decoded {
    pub table: Table,
    /// What was wrong with the file, if anything.
    pub damage: Option<String>,
}

pub fn encode(table: &Table) -> Vec<u8> {
    let header = Header {
        format: FORMAT,
        count: table.known(),
        counters: table.clone().with_sessions(Vec::new()),
    };
    let mut out = serde_json::to_vec(&header).expect("a header always serialises");
    out.push(b'\n');
    for s in table.sessions() {
        serde_json::to_writer(&mut out, s).expect("a session always serialises");
        out.push(b'\n');
    }
    out
}

pub fn decode(bytes: &[u8]) -> Decoded {
    // seatgate 0.1 wrote the whole table as one JSON object.
    if let Ok(table) = serde_json::from_slice::<Table>(bytes) {
        if !bytes.starts_with(br#"{"format""#) {
            return Decoded {
                table,
                damage: None,
            };
        }
    }
    let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let header = lines
        .next()
        .and_then(|l| serde_json::from_slice::<Header>(l).ok())
        .filter(|h| h.format == FORMAT);
    let Some(header) = header else {
        let mut table = Table::default();
        table.lost = LOST_UNKNOWN;
        return Decoded {
            table,
            damage: Some(
                "its header is unreadable, so how many sessions held seats is unknown".into(),
            ),
        };
    };
    let mut sessions = Vec::new();
    let mut bad = 0usize;
    for line in lines {
        match serde_json::from_slice::<Session>(line) {
            Ok(s) => sessions.push(s),
            Err(_) => bad += 1,
        }
    }
    let read = u32::try_from(sessions.len()).unwrap_or(u32::MAX);
    let missing = header.count.saturating_sub(read);
    let mut table = header.counters.with_sessions(sessions);
    let damage = (missing > 0 || bad > 0).then(|| {
        format!(
            "{read} of {} sessions read back ({bad} damaged lines)",
            header.count
        )
    });
    table.lost = table.lost.saturating_add(missing);
    Decoded { table, damage }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::protocol::ServerKind;
    use crate::admission::table::ServerId;

    fn table(n: usize) -> Table {
        let sessions = (0..n)
            .map(|i| Session {
                key: format!("k{i}"),
                instance: i as u64 + 1,
                user: "u".into(),
                remote: "192.0.2.1".into(),
                server: ServerId {
                    kind: ServerKind::Openvpn,
                    pid: 7,
                    start_ticks: 1,
                    ns_pid: 7,
                },
                since: chrono::DateTime::UNIX_EPOCH,
                group: if i % 2 == 0 {
                    "ops".into()
                } else {
                    String::new()
                },
            })
            .collect();
        let mut t = Table::default().with_sessions(sessions);
        t.peak = 9;
        t.denials = 3;
        t
    }

    #[test]
    fn round_trips() {
        let t = table(5);
        let d = decode(&encode(&t));
        assert_eq!(d.damage, None);
        assert_eq!(d.table, t);
    }

    #[test]
    fn a_cut_short_file_keeps_the_seats_it_lost() {
        let bytes = encode(&table(5));
        // Cut in the middle of the fourth session line.
        let cut = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(3)
            .unwrap()
            .0
            + 10;
        let d = decode(&bytes[..cut]);
        assert_eq!(d.table.known(), 3);
        assert_eq!(d.table.lost, 2);
        assert_eq!(d.table.in_use(), 5, "never fewer seats than were held");
        assert_eq!((d.table.peak, d.table.denials), (9, 3));
        assert!(d.damage.unwrap().contains("3 of 5 sessions"));
    }

    #[test]
    fn an_unreadable_header_admits_nothing_until_accounted_for() {
        for bytes in [&b""[..], b"{\"format\":2,\"sess", b"\x00\x00garbage"] {
            let d = decode(bytes);
            assert_eq!(d.table.lost, LOST_UNKNOWN, "{bytes:?}");
            assert!(d.damage.is_some());
        }
    }

    #[test]
    fn sessions_without_a_group_are_written_and_read_as_before() {
        let t = table(2);
        let text = String::from_utf8(encode(&t)).unwrap();
        assert_eq!(text.matches("\"group\"").count(), 1, "{text}");
        let old = text.replace(",\"group\":\"ops\"", "");
        let d = decode(old.as_bytes());
        assert_eq!(d.damage, None);
        assert!(d.table.sessions().all(|s| s.group.is_empty()));
    }

    #[test]
    fn reads_the_0_1_format() {
        let t = table(2);
        let d = decode(&serde_json::to_vec(&t).unwrap());
        assert_eq!((d.table, d.damage), (t, None));
    }
}
