//! Signed time stamps: the cloud's per-request answer to "what time is
//! it?", the fresh signed time that lets the engine's clock (`time`) heal a
//! mistaken forward jump on a gateway without leased pools. The gateway
//! sends a random nonce with each bundle request; the cloud signs, with a
//! bundle key, `{"format":1,"device":..,"nonce":..,"at":..}` and returns it
//! in a header as `<base64 payload>.<base64 signature>` (docs/cloud-api.md).
//! A stamp counts only for the request that carried its nonce, so an old
//! one cannot be replayed. Pure: keys, device, nonce are arguments; the
//! nonce's random bytes too.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::bundle::{sign_bytes, Signed};

pub const STAMP_FORMAT: u32 = 1;
/// Random bytes in a nonce.
pub const NONCE_BYTES: usize = 16;
/// A header value longer than this is refused unread: a stamp is ~250 bytes.
pub const MAX_STAMP_CHARS: usize = 1024;

/// The signed payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub format: u32,
    /// Serial of the gateway that asked.
    pub device: String,
    /// The nonce the gateway sent with the request, as it sent it.
    pub nonce: String,
    /// The cloud's time when it answered.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("not a time stamp ({0}); expected <base64 payload>.<base64 signature>")]
    Malformed(String),
    #[error("time stamp signature does not verify against any trusted key")]
    BadSignature,
    #[error("time stamp format {0} is not supported (this seatgate reads format {STAMP_FORMAT})")]
    Format(u32),
    #[error("time stamp is for device {stamp}, not this gateway ({this})")]
    WrongDevice { stamp: String, this: String },
    #[error(
        "time stamp answers another request (its nonce is not the one sent): replayed or mixed up"
    )]
    WrongNonce,
}

/// A nonce from `NONCE_BYTES` random bytes, as the gateway sends it.
pub fn nonce(random: [u8; NONCE_BYTES]) -> String {
    B64.encode(random)
}

/// The header value for `stamp`, signed with `key` (the cloud side).
pub fn sign_stamp(stamp: &Stamp, key: &SigningKey) -> String {
    let s = sign_bytes(
        serde_json::to_vec(stamp).expect("a stamp always serialises"),
        key,
    );
    format!("{}.{}", s.payload, s.signature)
}

/// Verifies a header value: signed by a trusted key, for `device`, answering
/// the request that carried `nonce`. Only then is its `at` a fresh signed
/// time.
pub fn verify(
    header: &str,
    trusted: &[VerifyingKey],
    device: &str,
    nonce: &str,
) -> Result<Stamp, StampError> {
    if header.len() > MAX_STAMP_CHARS {
        return Err(StampError::Malformed(format!(
            "{} characters, at most {MAX_STAMP_CHARS}",
            header.len()
        )));
    }
    let (payload, signature) = header
        .trim()
        .split_once('.')
        .ok_or_else(|| StampError::Malformed("no '.'".into()))?;
    let signed = Signed {
        payload: payload.to_string(),
        signature: signature.to_string(),
    };
    let bytes = signed.verified_payload(trusted).map_err(|e| match e {
        super::bundle::BundleError::BadSignature => StampError::BadSignature,
        other => StampError::Malformed(other.to_string()),
    })?;
    let stamp: Stamp =
        serde_json::from_slice(&bytes).map_err(|e| StampError::Malformed(e.to_string()))?;
    if stamp.format != STAMP_FORMAT {
        return Err(StampError::Format(stamp.format));
    }
    if stamp.device != device {
        return Err(StampError::WrongDevice {
            stamp: stamp.device,
            this: device.to_string(),
        });
    }
    if nonce.is_empty() || stamp.nonce != nonce {
        return Err(StampError::WrongNonce);
    }
    Ok(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::tests::t;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn stamp(device: &str, nonce: &str) -> Stamp {
        Stamp {
            format: STAMP_FORMAT,
            device: device.into(),
            nonce: nonce.into(),
            at: t("2026-06-01T12:00:00Z"),
        }
    }

    #[test]
    fn nonces_are_base64_of_16_bytes() {
        let n = nonce([7; NONCE_BYTES]);
        assert_eq!(B64.decode(&n).unwrap(), vec![7; NONCE_BYTES]);
        assert_ne!(n, nonce([8; NONCE_BYTES]));
    }

    #[test]
    fn verification_table() {
        let trusted = [key(9).verifying_key(), key(1).verifying_key()];
        let sent = nonce([3; NONCE_BYTES]);
        let earlier = nonce([2; NONCE_BYTES]);
        let good = sign_stamp(&stamp("ESG-A1", &sent), &key(1));
        let (payload, signature) = good.split_once('.').unwrap();
        let other = sign_stamp(
            &Stamp {
                at: t("2030-01-01T00:00:00Z"),
                ..stamp("ESG-A1", &sent)
            },
            &key(1),
        );
        let altered = format!("{}.{signature}", other.split_once('.').unwrap().0);
        let format2 = sign_stamp(
            &Stamp {
                format: 2,
                ..stamp("ESG-A1", &sent)
            },
            &key(1),
        );
        let not_json = {
            let s = sign_bytes(b"hello".to_vec(), &key(1));
            format!("{}.{}", s.payload, s.signature)
        };
        let cases: Vec<(&str, String, &str, Result<(), StampError>)> = vec![
            ("good", good.clone(), &sent, Ok(())),
            (
                "good, whitespace around",
                format!(" {good} "),
                &sent,
                Ok(()),
            ),
            (
                "signed by an untrusted key",
                sign_stamp(&stamp("ESG-A1", &sent), &key(2)),
                &sent,
                Err(StampError::BadSignature),
            ),
            (
                "payload altered after signing",
                altered,
                &sent,
                Err(StampError::BadSignature),
            ),
            (
                "signature not base64",
                format!("{payload}.!!"),
                &sent,
                Err(StampError::BadSignature),
            ),
            (
                "another device's stamp",
                sign_stamp(&stamp("ESG-Z9", &sent), &key(1)),
                &sent,
                Err(StampError::WrongDevice {
                    stamp: "ESG-Z9".into(),
                    this: "ESG-A1".into(),
                }),
            ),
            (
                "an earlier request's stamp replayed",
                sign_stamp(&stamp("ESG-A1", &earlier), &key(1)),
                &sent,
                Err(StampError::WrongNonce),
            ),
            (
                "the good stamp offered for the next request",
                good.clone(),
                &earlier,
                Err(StampError::WrongNonce),
            ),
            (
                "no nonce sent",
                sign_stamp(&stamp("ESG-A1", ""), &key(1)),
                "",
                Err(StampError::WrongNonce),
            ),
            (
                "unsupported format",
                format2,
                &sent,
                Err(StampError::Format(2)),
            ),
        ];
        for (name, header, nonce, want) in cases {
            let got = verify(&header, &trusted, "ESG-A1", nonce);
            match want {
                Ok(()) => assert_eq!(got, Ok(stamp("ESG-A1", &sent)), "{name}"),
                Err(e) => assert_eq!(got, Err(e), "{name}"),
            }
        }
        let garbage = [
            String::new(),
            "garbage".into(),
            "a.b".into(),
            payload.to_string(),
            not_json,
            format!("{good}{}", "x".repeat(MAX_STAMP_CHARS)),
        ];
        for g in garbage {
            let got = verify(&g, &trusted, "ESG-A1", &sent);
            assert!(
                matches!(
                    got,
                    Err(StampError::Malformed(_) | StampError::BadSignature)
                ),
                "{g:?}: {got:?}"
            );
        }
    }
}
