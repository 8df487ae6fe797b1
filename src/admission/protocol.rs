//! The socket protocol: one JSON object per line each way, versioned.
//! Bytes in, typed requests out, typed responses back to bytes; no I/O here.
//! docs/protocol.md is the reference for every message.

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;
/// The longest request line accepted, newline included. Checked before
/// buffering more, so a peer cannot make the daemon allocate beyond it.
pub const MAX_LINE: usize = 4096;
/// Session keys are opaque to the daemon but bounded.
pub const MAX_KEY: usize = 512;

#[derive(Debug, Deserialize)]
struct Envelope {
    v: Option<u32>,
    #[serde(flatten)]
    request: Request,
}

/// A request. Unknown fields are ignored so newer hooks can talk to an
/// older daemon; the version field says what the fields mean.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// May this VPN session have a seat? Admitting a key that already holds
    /// a seat answers the same without counting it twice.
    Admit(AdmitRequest),
    /// The session ended. Releasing a key that holds no seat does nothing
    /// (OpenVPN also reports disconnects of clients it rejected).
    Release { key: String },
    /// Cap, usage, licenses and the sessions holding seats.
    Status,
    /// The usage history: peaks per hour (7 days) and per day (400 days).
    Usage,
    /// Liveness check.
    Ping,
    /// Operator: end a session (`key`) or every session of a user (`user`)
    /// through the VPN server that holds it, and free its seat.
    Evict {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Operator: free the seats of sessions lost with a damaged snapshot
    /// (after checking the VPN servers hold no more sessions than status lists).
    ForgetLost,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AdmitRequest {
    /// Stable per session; the same key is sent at connect and disconnect.
    pub key: String,
    #[serde(default)]
    pub user: String,
    /// The VPN server process the session lives in.
    pub server: ServerRef,
    #[serde(default)]
    pub remote: String,
    /// The group the VPN server reports for the user (ocserv GROUPNAME,
    /// an OpenVPN variable the hook is told to read); empty: none.
    /// Matched against `[[policy.group]] groups`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

/// Which VPN server process holds a session: when it dies, so do its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServerRef {
    pub kind: ServerKind,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Openvpn,
    Ocserv,
    Other,
}

/// Why a seat was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// Every seat of the cap is taken.
    CapReached,
    /// The cap dropped below the sessions in use; new sessions wait until
    /// usage is back under it (drain policy).
    OverCap,
    /// The cap is zero: no built-in seats configured and no active license.
    NoLicense,
    /// The VPN server process named in the request is not the calling
    /// hook's own server: the kernel shows no such process among the
    /// hook's ancestors (or, for ocserv, their children) in its namespace.
    UnknownServer,
    /// The daemon could not record the session (its runtime directory failed).
    Internal,
    /// The key is held by another VPN server process that is still running.
    KeyHeld,
    /// The user holds `max_sessions_per_user` sessions already (`[policy]`,
    /// `at_user_limit = "refuse"`).
    UserLimit,
    /// The seats still free are reserved for other users (`[[policy.group]]
    /// reserved`).
    Reserved,
    /// The user's `[[policy.group]]` holds its `max` seats already.
    GroupLimit,
}

impl DenyReason {
    /// The name on the wire (and in log lines): `cap_reached`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::CapReached => "cap_reached",
            DenyReason::OverCap => "over_cap",
            DenyReason::NoLicense => "no_license",
            DenyReason::UnknownServer => "unknown_server",
            DenyReason::Internal => "internal",
            DenyReason::KeyHeld => "key_held",
            DenyReason::UserLimit => "user_limit",
            DenyReason::Reserved => "reserved",
            DenyReason::GroupLimit => "group_limit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Admit(AdmitResponse),
    Release(ReleaseResponse),
    Status(Box<StatusResponse>),
    Usage(Box<UsageResponse>),
    Pong(PongResponse),
    Error(ErrorResponse),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitResponse {
    pub ok: bool,
    pub admitted: bool,
    /// True when the key already held a seat (a repeated admit).
    #[serde(default)]
    pub again: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DenyReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub cap: u32,
    pub in_use: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub ok: bool,
    /// False when the key held no seat.
    pub released: bool,
    pub in_use: u32,
    /// `evict` only: the sessions it matched (`[Evicted]`, empty when none
    /// did), each with what became of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<serde_json::Value>,
}

/// One session an `evict` matched, as its answer lists it (inside
/// `ReleaseResponse::sessions`, which clients read as plain JSON: only the
/// daemon writes it, so it costs no decoder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evicted {
    pub key: String,
    pub user: String,
    pub outcome: EvictOutcome,
    /// Whether its seat was freed.
    pub freed: bool,
    /// What happened, in words.
    pub message: String,
}

/// What the VPN server did with an evicted session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictOutcome {
    /// The server confirmed it ended the session.
    Disconnected,
    /// The session had ended already.
    Gone,
    /// No `[[reconcile]]` entry controls its server: the tunnel is still up.
    NoControl,
    /// The server refused or did not answer: the tunnel may still be up.
    Failed,
}

/// The status travels as JSON the codec does not interpret (its shape is
/// `status::Status`, a layer above): the daemon renders it once for every
/// reader, clients decode it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub ok: bool,
    pub status: serde_json::Value,
}

/// The usage history, as JSON the codec does not interpret (its shape is
/// `usage::Report`, a layer above).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageResponse {
    pub ok: bool,
    pub usage: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PongResponse {
    pub ok: bool,
    pub pong: bool,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub ok: bool,
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not UTF-8, or missing/mistyped fields.
    BadRequest,
    UnknownOp,
    UnsupportedVersion,
    LineTooLong,
    /// The peer's user/group may not perform this operation.
    Forbidden,
    /// No complete line arrived within the idle timeout.
    Timeout,
    Busy,
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(ErrorResponse {
            ok: false,
            error: ErrorBody {
                code,
                message: message.into(),
            },
        })
    }

    /// The response as one line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("responses always serialise");
        out.push(b'\n');
        out
    }
}

/// Decodes one request line (without its newline). Every failure maps to
/// the error response the peer gets.
pub fn decode(line: &[u8]) -> Result<Request, Response> {
    let text = std::str::from_utf8(line).map_err(|e| {
        Response::error(ErrorCode::BadRequest, format!("request is not UTF-8: {e}"))
    })?;
    // Fast path: straight into the typed request. Only a failure pays for
    // a second, generic parse that finds out what to tell the peer.
    let env: Envelope = serde_json::from_str(text).map_err(|e| diagnose(text, e))?;
    match env.v {
        Some(VERSION) => {}
        Some(v) => {
            return Err(Response::error(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {v} is not supported; this daemon speaks v{VERSION}"),
            ))
        }
        None => {
            return Err(Response::error(
                ErrorCode::BadRequest,
                format!("request has no \"v\"; send \"v\":{VERSION}"),
            ))
        }
    }
    let key = match &env.request {
        Request::Admit(a) => Some(&a.key),
        Request::Release { key } => Some(key),
        Request::Evict { key, user } => match (key, user) {
            (Some(key), None) => Some(key),
            // Not the empty name: a mistyped `--user "$UNSET"` would end
            // every session without one (evict those by key).
            (None, Some(user)) if !user.is_empty() && user.len() <= MAX_KEY => None,
            _ => {
                return Err(Response::error(
                    ErrorCode::BadRequest,
                    format!("evict takes a \"key\" or a \"user\" (1 to {MAX_KEY} bytes), not both"),
                ))
            }
        },
        _ => None,
    };
    if let Some(key) = key.filter(|k| k.is_empty() || k.len() > MAX_KEY) {
        return Err(Response::error(
            ErrorCode::BadRequest,
            format!(
                "session key must be 1 to {MAX_KEY} bytes, got {}",
                key.len()
            ),
        ));
    }
    Ok(env.request)
}

/// Why a line did not decode, as the response the peer gets.
fn diagnose(text: &str, err: serde_json::Error) -> Response {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Response::error(ErrorCode::BadRequest, format!("request is not JSON: {e}"))
        }
    };
    match value.get("op").and_then(|op| op.as_str()) {
        None => Response::error(
            ErrorCode::BadRequest,
            "request has no \"op\" string; send e.g. {\"v\":1,\"op\":\"ping\"}",
        ),
        Some(op) if !KNOWN_OPS.contains(&op) => Response::error(
            ErrorCode::UnknownOp,
            format!("unknown op {op:?}; known: {}", KNOWN_OPS.join(", ")),
        ),
        Some(op) => Response::error(ErrorCode::BadRequest, format!("bad {op} request: {err}")),
    }
}

const KNOWN_OPS: [&str; 7] = [
    "admit",
    "release",
    "status",
    "usage",
    "ping",
    "evict",
    "forget_lost",
];

/// Encodes a request as one line (for clients: the hook, status, tests).
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut value = serde_json::to_value(request).expect("requests always serialise");
    value["v"] = VERSION.into();
    let mut out = serde_json::to_vec(&value).expect("requests always serialise");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn deny_reason_names_are_the_wire_names() {
        use DenyReason::*;
        for r in [
            CapReached,
            OverCap,
            NoLicense,
            UnknownServer,
            Internal,
            KeyHeld,
        ] {
            let wire = serde_json::to_value(r).unwrap();
            assert_eq!(wire, r.as_str(), "{r:?}");
        }
    }

    proptest! {
        /// Whatever a peer sends, decoding answers; it never panics.
        #[test]
        fn decode_never_panics(line in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&line);
        }

        /// JSON-shaped noise around the real fields, too.
        #[test]
        fn decode_never_panics_on_json(op in "[a-z_]{0,8}", v in any::<i64>(), key in ".{0,40}", pid in any::<i64>()) {
            let line = format!(r#"{{"v":{v},"op":"{op}","key":{key:?},"server":{{"kind":"openvpn","pid":{pid}}}}}"#);
            let _ = decode(line.as_bytes());
        }
    }

    fn code(line: &[u8]) -> ErrorCode {
        match decode(line) {
            Err(Response::Error(e)) => e.error.code,
            other => panic!(
                "expected an error for {:?}, got {other:?}",
                String::from_utf8_lossy(line)
            ),
        }
    }

    #[test]
    fn decodes_every_op() {
        let admit = br#"{"v":1,"op":"admit","key":"k1","user":"alice","server":{"kind":"openvpn","pid":42},"remote":"10.0.0.2","extra":"ignored"}"#;
        assert_eq!(
            decode(admit).unwrap(),
            Request::Admit(AdmitRequest {
                key: "k1".into(),
                user: "alice".into(),
                server: ServerRef {
                    kind: ServerKind::Openvpn,
                    pid: 42
                },
                remote: "10.0.0.2".into(),
                group: String::new(),
            })
        );
        let grouped =
            br#"{"v":1,"op":"admit","key":"k1","server":{"kind":"ocserv","pid":4},"group":"ops"}"#;
        match decode(grouped).unwrap() {
            Request::Admit(a) => assert_eq!((a.user.as_str(), a.group.as_str()), ("", "ops")),
            other => panic!("admit expected: {other:?}"),
        }
        assert_eq!(
            decode(br#"{"v":1,"op":"release","key":"k1"}"#).unwrap(),
            Request::Release { key: "k1".into() }
        );
        assert_eq!(
            decode(br#"{"v":1,"op":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(decode(br#"{"op":"ping","v":1}"#).unwrap(), Request::Ping);
        assert_eq!(decode(br#"{"v":1,"op":"usage"}"#).unwrap(), Request::Usage);
        assert_eq!(
            decode(br#"{"v":1,"op":"evict","key":"x"}"#).unwrap(),
            Request::Evict {
                key: Some("x".into()),
                user: None
            }
        );
        assert_eq!(
            decode(br#"{"v":1,"op":"evict","user":"alice"}"#).unwrap(),
            Request::Evict {
                key: None,
                user: Some("alice".into())
            }
        );
    }

    #[test]
    fn evict_takes_one_of_key_and_user() {
        for line in [
            &br#"{"v":1,"op":"evict"}"#[..],
            br#"{"v":1,"op":"evict","key":"k","user":"u"}"#,
            br#"{"v":1,"op":"evict","key":""}"#,
            br#"{"v":1,"op":"evict","user":""}"#,
        ] {
            assert_eq!(code(line), ErrorCode::BadRequest);
        }
        let long = format!(
            r#"{{"v":1,"op":"evict","user":"{}"}}"#,
            "u".repeat(MAX_KEY + 1)
        );
        assert_eq!(code(long.as_bytes()), ErrorCode::BadRequest);
    }

    #[test]
    fn an_evict_answer_is_a_release_answer_with_its_sessions() {
        let evicted = vec![Evicted {
            key: "k".into(),
            user: "u".into(),
            outcome: EvictOutcome::NoControl,
            freed: true,
            message: "m".into(),
        }];
        let answer = Response::Release(ReleaseResponse {
            ok: true,
            released: true,
            in_use: 2,
            sessions: Some(serde_json::to_value(&evicted).unwrap()),
        });
        let line = answer.encode();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.contains(r#""sessions":[{"freed":true,"key":"k","message":"m","outcome":"no_control","user":"u"}]"#),
            "{text}"
        );
        let back: Response = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, answer);
        // A release answer has no sessions field.
        let release = Response::Release(ReleaseResponse {
            ok: true,
            released: false,
            in_use: 1,
            sessions: None,
        });
        let text = String::from_utf8(release.encode()).unwrap();
        assert_eq!(text, "{\"ok\":true,\"released\":false,\"in_use\":1}\n");
    }

    #[test]
    fn requests_round_trip_through_the_encoder() {
        let req = Request::Release { key: "a b".into() };
        let line = encode_request(&req);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(decode(&line[..line.len() - 1]).unwrap(), req);
    }

    #[test]
    fn malformed_requests_get_the_right_code() {
        let cases: [(&[u8], ErrorCode); 10] = [
            (b"hello", ErrorCode::BadRequest),
            (b"\xff\xfe{}", ErrorCode::BadRequest),
            (b"{}", ErrorCode::BadRequest),
            (b"[1,2]", ErrorCode::BadRequest),
            (br#"{"v":1,"op":"launch"}"#, ErrorCode::UnknownOp),
            (br#"{"v":1,"op":7}"#, ErrorCode::BadRequest),
            (br#"{"v":2,"op":"ping"}"#, ErrorCode::UnsupportedVersion),
            (br#"{"op":"ping"}"#, ErrorCode::BadRequest),
            (br#"{"v":1,"op":"admit","key":"k"}"#, ErrorCode::BadRequest),
            (br#"{"v":1,"op":"release","key":""}"#, ErrorCode::BadRequest),
        ];
        for (line, want) in cases {
            assert_eq!(code(line), want, "{}", String::from_utf8_lossy(line));
        }
        let long_key = format!(
            r#"{{"v":1,"op":"release","key":"{}"}}"#,
            "k".repeat(MAX_KEY + 1)
        );
        assert_eq!(code(long_key.as_bytes()), ErrorCode::BadRequest);
    }

    #[test]
    fn responses_are_single_lines() {
        let r = Response::error(ErrorCode::Forbidden, "no\nnewline leaks");
        let bytes = r.encode();
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"ok":false,"error":{"code":"forbidden""#),
            "{text}"
        );
    }
}
