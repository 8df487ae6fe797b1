//! Signed license bundles: the payload the cloud (or an operator's file)
//! delivers, Ed25519-signed, and the rules for accepting one. Pure: keys,
//! the last accepted generation and `now` are arguments.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::cap::Entitlement;
use super::model::{partition, License, Rejected};
use crate::license::time::later;

pub const FORMAT: u32 = 1;
/// A bundle issued further ahead than this means the gateway clock (or the
/// issuer's) is wrong; refuse it rather than guess.
pub const MAX_FUTURE_SKEW_MINUTES: i64 = 5;

/// The signed payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: u32,
    /// Serial of the gateway the bundle is for.
    pub device: String,
    pub org: String,
    /// Grows with every change in the cloud; an older one is a replay.
    pub generation: u64,
    pub issued_at: DateTime<Utc>,
    /// After this instant the bundle grants nothing but the built-in seats.
    pub not_after: DateTime<Utc>,
    pub licenses: Vec<License>,
}

/// What travels and what is stored: the payload's exact bytes (base64) and the
/// signature over them, so no re-serialisation can change what was signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub payload: String,
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "not a signed bundle ({0}); expected JSON {{\"payload\": base64, \"signature\": base64}}"
    )]
    Envelope(String),
    #[error("signature does not verify against any trusted key; the bundle was altered or signed by another key (check [license] trusted_keys)")]
    BadSignature,
    #[error("payload is not a valid bundle: {0}")]
    Payload(String),
    #[error("bundle format {0} is not supported (this seatgate reads format {FORMAT}); upgrade seatgate")]
    Format(u32),
    #[error("bundle is for device {bundle}, not this gateway ({this})")]
    WrongDevice { bundle: String, this: String },
    #[error("bundle generation {got} is older than the accepted generation {last}; refusing a replayed bundle")]
    OlderGeneration { got: u64, last: u64 },
    #[error("bundle issued at {issued_at}, more than {MAX_FUTURE_SKEW_MINUTES} minutes after now ({now}); check the gateway clock (NTP)")]
    FromTheFuture {
        issued_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("bad key: {0}")]
    Key(String),
}

/// What `bundle keygen` writes in front of each key, so one kind can never
/// be taken for the other (both are 32 bytes of base64).
pub const SECRET_PREFIX: &str = "seatgate-ed25519-secret-v1:";
pub const PUBLIC_PREFIX: &str = "seatgate-ed25519-public-v1:";

/// Parses an Ed25519 public key (32 bytes of base64), as written in the
/// config or a `.pub` file: bare, or after `PUBLIC_PREFIX`. A secret key
/// (its prefix) is refused: it must never be pasted where keys are shared.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, BundleError> {
    let text = text.trim();
    if text.starts_with(SECRET_PREFIX) {
        return Err(BundleError::Key(
            "this is a SECRET key (seatgate-ed25519-secret-v1:); give the public key (the .pub file keygen wrote), and keep the secret one off the gateway".into(),
        ));
    }
    let bytes = decode_32(text.strip_prefix(PUBLIC_PREFIX).unwrap_or(text))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| BundleError::Key(e.to_string()))
}

/// Parses an Ed25519 secret key (the 32-byte seed as base64), bare or after
/// `SECRET_PREFIX`. A public key (its prefix) is refused.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, BundleError> {
    let text = text.trim();
    if text.starts_with(PUBLIC_PREFIX) {
        return Err(BundleError::Key(
            "this is a PUBLIC key (seatgate-ed25519-public-v1:), which cannot sign; give the secret key (the .key file keygen wrote beside it)".into(),
        ));
    }
    let bytes = decode_32(text.strip_prefix(SECRET_PREFIX).unwrap_or(text))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Whether key text carries a kind prefix (files from before it have none).
pub fn is_typed_key(text: &str) -> bool {
    let text = text.trim();
    text.starts_with(SECRET_PREFIX) || text.starts_with(PUBLIC_PREFIX)
}

fn decode_32(text: &str) -> Result<[u8; 32], BundleError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| BundleError::Key(format!("not base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| BundleError::Key(format!("{} bytes, expected 32", b.len())))
}

/// Bare base64, as `trusted_keys` in the config holds it.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Bare base64 (the dev cloud's own key file).
pub fn encode_secret_key(key: &SigningKey) -> String {
    B64.encode(key.to_bytes())
}

/// A `.pub` file's text: the key after its kind.
pub fn public_key_file(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", encode_public_key(key))
}

/// A `.key` file's text: the seed after its kind.
pub fn secret_key_file(key: &SigningKey) -> String {
    format!("{SECRET_PREFIX}{}", encode_secret_key(key))
}

pub fn sign(bundle: &Bundle, key: &SigningKey) -> Signed {
    sign_bytes(
        serde_json::to_vec(bundle).expect("a bundle always serialises"),
        key,
    )
}

/// Signs any payload into the envelope (bundles and slice leases share it).
pub fn sign_bytes(bytes: Vec<u8>, key: &SigningKey) -> Signed {
    Signed {
        signature: B64.encode(key.sign(&bytes).to_bytes()),
        payload: B64.encode(bytes),
    }
}

impl Signed {
    pub fn parse(text: &str) -> Result<Self, BundleError> {
        serde_json::from_str(text).map_err(|e| BundleError::Envelope(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an envelope always serialises")
    }

    /// Checks the signature against the trusted keys, then decodes the payload.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<Bundle, BundleError> {
        let payload = self.verified_payload(trusted)?;
        let bundle: Bundle =
            serde_json::from_slice(&payload).map_err(|e| BundleError::Payload(e.to_string()))?;
        if bundle.format != FORMAT {
            return Err(BundleError::Format(bundle.format));
        }
        Ok(bundle)
    }

    /// The payload's bytes, once the signature verifies against a trusted key.
    pub fn verified_payload(&self, trusted: &[VerifyingKey]) -> Result<Vec<u8>, BundleError> {
        let payload = B64
            .decode(&self.payload)
            .map_err(|e| BundleError::Envelope(format!("payload is not base64: {e}")))?;
        let sig = B64
            .decode(&self.signature)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
            .ok_or(BundleError::BadSignature)?;
        if !trusted.iter().any(|k| k.verify(&payload, &sig).is_ok()) {
            return Err(BundleError::BadSignature);
        }
        Ok(payload)
    }
}

/// What a gateway needs to judge a verified bundle.
#[derive(Debug, Clone, Copy)]
pub struct Acceptance<'a> {
    pub device: &'a str,
    /// Generation of the last accepted bundle, if any.
    pub last_generation: Option<u64>,
    pub now: DateTime<Utc>,
}

impl Bundle {
    /// The rules for replacing the current bundle with this one.
    pub fn check(&self, rules: Acceptance<'_>) -> Result<(), BundleError> {
        if self.device != rules.device {
            return Err(BundleError::WrongDevice {
                bundle: self.device.clone(),
                this: rules.device.to_string(),
            });
        }
        if let Some(last) = rules.last_generation.filter(|last| self.generation < *last) {
            return Err(BundleError::OlderGeneration {
                got: self.generation,
                last,
            });
        }
        if self.issued_at > later(rules.now, Duration::minutes(MAX_FUTURE_SKEW_MINUTES)) {
            return Err(BundleError::FromTheFuture {
                issued_at: self.issued_at,
                now: rules.now,
            });
        }
        Ok(())
    }

    /// The licenses that count on this gateway, and the refused ones.
    pub fn entitlement(&self, builtin: u32) -> (Entitlement, Vec<Rejected>) {
        let (licenses, rejected) = partition(&self.licenses, &self.device);
        let ent = Entitlement {
            builtin,
            licenses,
            not_after: Some(self.not_after),
        };
        (ent, rejected)
    }
}

/// Verify and check in one step: the whole acceptance of a bundle's text.
pub fn accept(
    text: &str,
    trusted: &[VerifyingKey],
    rules: Acceptance<'_>,
) -> Result<(Signed, Bundle), BundleError> {
    let signed = Signed::parse(text)?;
    let bundle = signed.verify(trusted)?;
    bundle.check(rules)?;
    Ok((signed, bundle))
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{spc, t};
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn bundle(generation: u64) -> Bundle {
        Bundle {
            format: FORMAT,
            device: "ESG-A1".into(),
            org: "ORG-1".into(),
            generation,
            issued_at: t("2026-06-01T00:00:00Z"),
            not_after: t("2026-07-01T00:00:00Z"),
            licenses: vec![spc("L1", 20, 365, "2026-01-10T00:00:00Z")],
        }
    }

    fn rules(last: Option<u64>, now: &str) -> Acceptance<'static> {
        Acceptance {
            device: "ESG-A1",
            last_generation: last,
            now: t(now),
        }
    }

    #[test]
    fn signed_bundle_round_trips() {
        let signed = sign(&bundle(3), &key(1));
        let text = signed.to_json();
        let (_, got) = accept(
            &text,
            &[key(1).verifying_key()],
            rules(Some(3), "2026-06-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(got, bundle(3));
        let (ent, rejected) = got.entitlement(2);
        assert!(rejected.is_empty());
        assert_eq!(ent.cap_at(t("2026-06-02T00:00:00Z")).total(), 22);
    }

    #[test]
    fn keys_round_trip_through_text() {
        let k = key(7);
        let public = parse_public_key(&encode_public_key(&k.verifying_key())).unwrap();
        assert_eq!(public, k.verifying_key());
        let secret = parse_secret_key(&encode_secret_key(&k)).unwrap();
        assert_eq!(secret.to_bytes(), k.to_bytes());
        let err = parse_public_key("AAAA").unwrap_err().to_string();
        assert!(err.contains("3 bytes, expected 32"), "{err}");
        // Typed files: each kind reads as itself, never as the other.
        let (pubf, keyf) = (public_key_file(&k.verifying_key()), secret_key_file(&k));
        assert_eq!(parse_public_key(&pubf).unwrap(), k.verifying_key());
        assert_eq!(parse_secret_key(&keyf).unwrap().to_bytes(), k.to_bytes());
        let err = parse_secret_key(&pubf).unwrap_err().to_string();
        assert!(err.contains("PUBLIC key"), "{err}");
        let err = parse_public_key(&keyf).unwrap_err().to_string();
        assert!(err.contains("SECRET key"), "{err}");
        assert!(is_typed_key(&pubf) && is_typed_key(&keyf));
        assert!(!is_typed_key(&encode_public_key(&k.verifying_key())));
    }

    #[test]
    fn rejection_table() {
        let trusted = [key(1).verifying_key()];
        let good = sign(&bundle(5), &key(1));
        let tampered = {
            let mut b = bundle(5);
            b.licenses[0].seats = 2000;
            Signed {
                payload: sign(&b, &key(1)).payload,
                signature: good.signature.clone(),
            }
        };
        let other_device = sign(
            &Bundle {
                device: "ESG-Z9".into(),
                ..bundle(5)
            },
            &key(1),
        );
        let future = sign(
            &Bundle {
                issued_at: t("2026-06-01T00:05:01Z"),
                ..bundle(5)
            },
            &key(1),
        );
        let near_future = sign(
            &Bundle {
                issued_at: t("2026-06-01T00:05:00Z"),
                ..bundle(5)
            },
            &key(1),
        );
        let format2 = sign(
            &Bundle {
                format: 2,
                ..bundle(5)
            },
            &key(1),
        );
        let cases: Vec<(&str, String, Option<u64>, Option<&str>)> = vec![
            ("good", good.to_json(), Some(5), None),
            ("same generation again", good.to_json(), Some(5), None),
            (
                "tampered payload",
                tampered.to_json(),
                None,
                Some("signature does not verify"),
            ),
            (
                "wrong key",
                sign(&bundle(5), &key(2)).to_json(),
                None,
                Some("signature does not verify"),
            ),
            (
                "other device",
                other_device.to_json(),
                None,
                Some("for device ESG-Z9, not this gateway (ESG-A1)"),
            ),
            (
                "older generation",
                good.to_json(),
                Some(6),
                Some("generation 5 is older than the accepted generation 6"),
            ),
            (
                "issued in the future",
                future.to_json(),
                None,
                Some("more than 5 minutes after now"),
            ),
            ("issued just within skew", near_future.to_json(), None, None),
            (
                "unsupported format",
                format2.to_json(),
                None,
                Some("format 2 is not supported"),
            ),
            (
                "not json",
                "hello".into(),
                None,
                Some("not a signed bundle"),
            ),
            (
                "bad signature encoding",
                Signed {
                    signature: "!!".into(),
                    ..good.clone()
                }
                .to_json(),
                None,
                Some("signature does not verify"),
            ),
        ];
        for (name, text, last, want) in cases {
            let got = accept(&text, &trusted, rules(last, "2026-06-01T00:00:00Z"));
            match want {
                None => assert!(got.is_ok(), "{name}: {:?}", got.err()),
                Some(msg) => {
                    let err = got.expect_err(name).to_string();
                    assert!(err.contains(msg), "{name}: {err:?} lacks {msg:?}");
                }
            }
        }
    }
}
