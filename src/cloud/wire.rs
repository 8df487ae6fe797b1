//! The cloud contract as data: endpoint paths, the usage report body, what
//! each HTTP status means to the gateway, and the limits on what is read.
//! No I/O. Documented for people in docs/cloud-api.md.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::license::notices::Notice;

/// Version of the usage report body.
pub const USAGE_FORMAT: u32 = 1;
/// A bundle larger than this is refused before it is read in full: a few
/// hundred license records are a few hundred KiB at most.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest piece of a cloud error body kept for logs and status.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// Request header of a bundle request: a fresh random nonce (base64 of 16
/// bytes, `license::stamp::nonce`), new for every request.
pub const NONCE_HEADER: &str = "seatgate-nonce";
/// Answer header on 200 and 304 bundle answers: the signed time stamp for
/// that nonce, `<base64 payload>.<base64 signature>` (`license::stamp`).
/// Optional: a cloud that does not stamp still works, but then a forward
/// jump of the gateway's clock only heals through a pool lease.
pub const STAMP_HEADER: &str = "seatgate-time";

/// Path (relative to the configured base URL) of this device's bundle.
pub fn bundle_path(device: &str) -> String {
    format!("v1/devices/{device}/bundle")
}

/// Path (relative to the configured base URL) of this device's usage report.
pub fn usage_path(device: &str) -> String {
    format!("v1/devices/{device}/usage")
}

/// Path (relative to the configured base URL) of this device's pool slices.
pub fn pools_path(device: &str) -> String {
    format!("v1/devices/{device}/pools")
}

/// Seats asked for beyond a pool's current usage, so a gateway can admit a
/// few sessions between renewals.
pub const POOL_HEADROOM: u32 = 4;

/// One pool's usage and demand on this gateway (POST `pools`, a JSON array
/// of these). The answer is a JSON array of signed slice leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolReport {
    pub pool: String,
    /// Pool sessions here: sessions beyond the built-in and bound-license seats.
    pub in_use: u32,
    /// Seats this gateway would like: in use + headroom + recent denials
    /// (0 for a pool it left).
    pub wanted: u32,
    /// Epoch of the lease still valid here when the report was sent; null
    /// when none is (expired, never had one, restarted).
    #[serde(default)]
    pub held_epoch: Option<u64>,
}

/// What the gateway tells the portal about its seats (POST, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    pub format: u32,
    pub device: String,
    /// When the numbers were taken (the gateway's engine clock).
    pub at: DateTime<Utc>,
    pub cap: u32,
    pub in_use: u32,
    pub peak: u32,
    pub peak_at: Option<DateTime<Utc>>,
    /// Admissions refused since the session table began.
    pub denials: u64,
    /// Generation of the bundle in force, if any.
    pub generation: Option<u64>,
    /// The usage alert level: the highest `[alerts]` threshold reached, in
    /// percent of the cap (0: none). Absent from gateways before 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_level: Option<u8>,
    /// The license warnings in force (expiries and cap drops within 60, 30
    /// or 3 days). Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub license_warnings: Vec<Notice>,
}

/// What an HTTP status on the bundle endpoint means to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200: the body is a signed bundle.
    Bundle,
    /// 304: the bundle named by If-None-Match is still current.
    NotModified,
    /// 401, 403: the cloud does not accept this device (certificate not
    /// issued by it, device de-registered or replaced, wrong serial).
    Unauthorized,
    /// 408, 429, 5xx: the cloud is busy or broken; retry with back-off.
    Transient,
    /// Anything else: the contract is broken on one side; retry slowly.
    Unexpected,
}

pub fn answer(status: u16) -> Answer {
    match status {
        200 => Answer::Bundle,
        304 => Answer::NotModified,
        401 | 403 => Answer::Unauthorized,
        408 | 429 | 500..=599 => Answer::Transient,
        _ => Answer::Unexpected,
    }
}

/// `Retry-After` as delta-seconds (the HTTP-date form is not used by the cloud).
pub fn retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A cloud error body made safe for one log line: the `message` field of a
/// JSON error body if there is one, else the text; control characters
/// dropped, cut to MAX_MESSAGE_CHARS.
pub fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: String,
    }
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.message,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    clean.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let cases = [
            (200, Answer::Bundle),
            (304, Answer::NotModified),
            (401, Answer::Unauthorized),
            (403, Answer::Unauthorized),
            (408, Answer::Transient),
            (429, Answer::Transient),
            (500, Answer::Transient),
            (502, Answer::Transient),
            (503, Answer::Transient),
            (599, Answer::Transient),
            (204, Answer::Unexpected),
            (301, Answer::Unexpected),
            (400, Answer::Unexpected),
            (404, Answer::Unexpected),
        ];
        for (status, want) in cases {
            assert_eq!(answer(status), want, "{status}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after("-1"), None);
    }

    #[test]
    fn error_messages_are_one_short_line() {
        assert_eq!(
            error_message(br#"{"error":"unauthorized","message":"device ESG-1 was replaced"}"#),
            "device ESG-1 was replaced"
        );
        assert_eq!(error_message(b"bad\ngateway\x1b[31m"), "bad gateway [31m");
        assert_eq!(error_message(&[b'x'; 1000]).len(), MAX_MESSAGE_CHARS);
        assert_eq!(error_message(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn paths_are_relative_to_the_base() {
        let base = reqwest::Url::parse("https://cloud.example/api/").unwrap();
        assert_eq!(
            base.join(&bundle_path("ESG-A1")).unwrap().as_str(),
            "https://cloud.example/api/v1/devices/ESG-A1/bundle"
        );
        assert_eq!(
            base.join(&usage_path("ESG-A1")).unwrap().as_str(),
            "https://cloud.example/api/v1/devices/ESG-A1/usage"
        );
    }
}
