//! ocserv's `occtl -j` output, pure. Parsed as `serde_json::Value`: each
//! user object carries the key `Routes` twice, which a derived struct with
//! that field refuses. Session keys are `ocserv:{ID}:{USERNAME}`.

use serde_json::Value;

use super::ParseError;

/// One user of `occtl -j show users`: the worker pid and the user name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub id: u32,
    pub username: String,
}

const USERS: &str = "`occtl -j show users`";
const STATUS: &str = "`occtl -j show status`";

/// Parses `occtl -j show users`: a JSON array of objects, each with a
/// numeric `ID` and a string `Username`. Anything else is an error, so a
/// changed or cut-off output never releases a seat.
pub fn parse_users(text: &str) -> Result<Vec<User>, ParseError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ParseError::new(USERS, e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(ParseError::new(USERS, "not a JSON array"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let id = item
                .get("ID")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| ParseError::new(USERS, format!("user {i} has no numeric ID")))?;
            let username = item
                .get("Username")
                .and_then(Value::as_str)
                .ok_or_else(|| ParseError::new(USERS, format!("user {i} has no Username")))?;
            Ok(User {
                id,
                username: username.to_string(),
            })
        })
        .collect()
}

/// The main process id from `occtl -j show status` (`Server PID`): the
/// workers it forked are the sessions this listing speaks for.
pub fn parse_server_pid(text: &str) -> Result<u32, ParseError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ParseError::new(STATUS, e.to_string()))?;
    value
        .get("Server PID")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| ParseError::new(STATUS, "no numeric \"Server PID\""))
}

/// The worker pid and user name of an ocserv session key.
pub fn key_parts(key: &str) -> Option<(u32, &str)> {
    let rest = key.strip_prefix("ocserv:")?;
    let (id, user) = rest.split_once(':')?;
    Some((id.parse().ok()?, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USERS_SAMPLE: &str = include_str!("../../tests/vpn/samples/occtl-show-users.json");
    const STATUS_SAMPLE: &str = include_str!("../../tests/vpn/samples/occtl-show-status.json");

    #[test]
    fn real_occtl_samples_parse_despite_the_duplicate_routes_key() {
        assert_eq!(
            parse_users(USERS_SAMPLE).unwrap(),
            vec![User {
                id: 10376,
                username: "user1".into()
            }]
        );
        assert_eq!(parse_server_pid(STATUS_SAMPLE).unwrap(), 10316);
    }

    #[test]
    fn odd_outputs_are_errors() {
        let cases: &[(&str, &str, Result<usize, &str>)] = &[
            ("no users", "[\n]\n", Ok(0)),
            (
                "two users",
                r#"[{"ID":1,"Username":"a"},{"ID":2,"Username":"b"}]"#,
                Ok(2),
            ),
            ("empty output", "", Err("EOF")),
            (
                "cut off",
                &USERS_SAMPLE[..USERS_SAMPLE.len() / 2],
                Err("EOF"),
            ),
            ("an object", "{}", Err("not a JSON array")),
            (
                "string id",
                r#"[{"ID":"1","Username":"a"}]"#,
                Err("numeric ID"),
            ),
            ("no user", r#"[{"ID":1}]"#, Err("Username")),
            (
                "error text",
                "error connecting to ocserv socket",
                Err("expected"),
            ),
        ];
        for (name, text, want) in cases {
            match (parse_users(text), want) {
                (Ok(u), Ok(n)) => assert_eq!(u.len(), *n, "{name}"),
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{name}: {e}"),
                (got, _) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        assert!(parse_server_pid("{}").is_err());
        assert!(parse_server_pid(r#"{"Server PID": 0}"#).is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(key_parts("ocserv:14500:user1"), Some((14500, "user1")));
        assert_eq!(key_parts("ocserv:14500:a:b"), Some((14500, "a:b")));
        assert_eq!(key_parts("ocserv:14500:"), Some((14500, "")));
        assert_eq!(key_parts("ocserv:x:a"), None);
        assert_eq!(key_parts("openvpn:1:2:3:a:"), None);
    }
}
