//! Slice leases of shared pools (docs/pools.md): the signed payload, the
//! rules for accepting one, and the book of leases in force (with what of it
//! a restart must remember, `Remembered`: docs/pools.md). Pure: keys,
//! the device, the pools this gateway may lease and the monotonic instants
//! are arguments. A lease's expiry is measured from when the gateway SENT
//! its request, so it always runs out here before the cloud counts it gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::bundle::{sign_bytes, BundleError, Signed};

pub const LEASE_FORMAT: u32 = 1;
/// A lease longer than this is refused: a cloud that hands out day-long
/// slices could not rebalance, and a typo must not pin seats for weeks.
pub const MAX_VALID_FOR_MS: u64 = 24 * 3600 * 1000;

/// The signed payload: `device` may use `seats` of `pool` for `valid_for_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub format: u32,
    pub device: String,
    pub pool: String,
    pub seats: u32,
    /// Grows with every grant for this device and pool; an older one is stale.
    pub epoch: u64,
    /// When the cloud granted it: not the expiry (measured locally) but a
    /// fresh signed time that corrects the license clock (`time`).
    pub issued_at: DateTime<Utc>,
    pub valid_for_ms: u64,
    /// Why the slice is smaller than the gateway asked for, when it is
    /// (optional: absent means the cloud granted what was wanted, or does
    /// not say). Only shown in status; never changes what the lease allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited: Option<Limit>,
}

/// Why the cloud granted less than a member wanted (docs/cloud-api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Limit {
    /// The cloud restarted: nothing beyond reported usage until `until`.
    Quiet { until: DateTime<Utc> },
    /// Demand exceeds the pool: shared in proportion, never below usage.
    Contended,
    /// Seats other members may still hold (take before give).
    Held,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Quiet { until } => write!(
                f,
                "cloud restarted: no new grants until {}",
                until.format("%H:%M:%S UTC")
            ),
            Limit::Contended => f.write_str("pool contended: shared by demand"),
            Limit::Held => f.write_str("waiting for seats other members still hold"),
        }
    }
}

impl Lease {
    pub fn valid_for(&self) -> Duration {
        Duration::from_millis(self.valid_for_ms)
    }
}

pub fn sign_lease(lease: &Lease, key: &SigningKey) -> Signed {
    sign_bytes(
        serde_json::to_vec(lease).expect("a lease always serialises"),
        key,
    )
}

/// Why a lease was refused; the lease in force (if any) stays.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("slice lease refused: {0}")]
    Envelope(#[source] BundleError),
    #[error("slice lease payload is not a lease ({0}); the cloud and this seatgate disagree on the contract, upgrade one of them")]
    Payload(String),
    #[error("slice lease format {0} is not supported (this seatgate reads format {LEASE_FORMAT}); upgrade seatgate")]
    Format(u32),
    #[error("slice lease is for device {lease}, not this gateway ({this})")]
    WrongDevice { lease: String, this: String },
    #[error("slice lease for pool {0}, which no accepted license of this gateway leases; check the bundle (`seatgate licenses`)")]
    UnknownPool(String),
    #[error("slice lease for pool {pool} has epoch {got}, older than the accepted {last}; refusing a stale lease")]
    OlderEpoch { pool: String, got: u64, last: u64 },
    #[error("slice lease for pool {pool} repeats epoch {epoch}, accepted before this gateway restarted; waiting for a fresh lease")]
    Replayed { pool: String, epoch: u64 },
    #[error("slice lease for pool {pool} is valid for {valid_for_ms} ms, more than the {MAX_VALID_FOR_MS} ms allowed; the cloud is misconfigured")]
    TooLong { pool: String, valid_for_ms: u64 },
}

/// A lease in force: the lease, when its request was sent, when it runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub lease: Lease,
    pub sent: Instant,
    pub expires: Instant,
}

/// One pool this gateway has a lease record for: the last epoch accepted
/// and, once one arrived in this run, the lease itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    epoch: u64,
    held: Option<Held>,
}

/// What the state directory keeps of the book (`pools.json`): the pools this
/// gateway has lease records for and the last epoch accepted for each. Not
/// the leases: their expiry is on a monotonic clock that a restart loses, so
/// a restarted gateway uses no slice until a fresh lease arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remembered {
    /// Pool id -> last accepted epoch.
    pub pools: BTreeMap<String, u64>,
}

/// The leases this gateway holds, one per pool, and the last epoch accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseBook {
    records: BTreeMap<String, Record>,
}

impl LeaseBook {
    /// A book from what was remembered: the pools and their last epochs,
    /// no lease in force.
    pub fn restore(saved: &Remembered) -> Self {
        let records = saved
            .pools
            .iter()
            .map(|(pool, epoch)| {
                let record = Record {
                    epoch: *epoch,
                    held: None,
                };
                (pool.clone(), record)
            })
            .collect();
        LeaseBook { records }
    }

    /// What to remember of the book (see `Remembered`).
    pub fn remembered(&self) -> Remembered {
        let pools = self
            .records
            .iter()
            .map(|(pool, r)| (pool.clone(), r.epoch))
            .collect();
        Remembered { pools }
    }

    /// Verifies `signed` and takes it into the book if the rules allow.
    /// `pools` are the pools this gateway may lease (from its accepted
    /// bundle); `sent` is when the request that brought it was sent.
    pub fn accept(
        &mut self,
        signed: &Signed,
        trusted: &[VerifyingKey],
        device: &str,
        pools: &[&str],
        sent: Instant,
    ) -> Result<&Held, LeaseError> {
        let lease = verify(signed, trusted, device, pools)?;
        let pool = lease.pool.clone();
        match self.records.get(&pool) {
            Some(old) if lease.epoch < old.epoch => Err(LeaseError::OlderEpoch {
                pool,
                got: lease.epoch,
                last: old.epoch,
            }),
            Some(old) if lease.epoch == old.epoch => match old.held {
                // The same grant again (a replay or a retry): never extends it.
                Some(_) => Ok(self.records[&pool].held_ref()),
                // The epoch accepted before a restart: its lease went with
                // the monotonic clock it was measured on; only a fresh one counts.
                None => Err(LeaseError::Replayed {
                    pool,
                    epoch: lease.epoch,
                }),
            },
            _ => {
                let expires = sent + lease.valid_for();
                let epoch = lease.epoch;
                let held = Held {
                    lease,
                    sent,
                    expires,
                };
                let record = Record {
                    epoch,
                    held: Some(held),
                };
                self.records.insert(pool.clone(), record);
                Ok(self.records[&pool].held_ref())
            }
        }
    }

    /// The lease of `pool` accepted in this run, valid or not.
    pub fn get(&self, pool: &str) -> Option<&Held> {
        self.records.get(pool).and_then(|r| r.held.as_ref())
    }

    /// Leases accepted in this run, valid at `now`.
    fn valid(&self, now: Instant) -> impl Iterator<Item = (&String, &Held)> {
        self.records
            .iter()
            .filter_map(|(p, r)| r.held.as_ref().map(|h| (p, h)))
            .filter(move |(_, h)| now < h.expires)
    }

    /// The slice of `pool` usable at `now`: None once the lease ran out.
    pub fn slice(&self, pool: &str, now: Instant) -> Option<u32> {
        self.get(pool)
            .filter(|h| now < h.expires)
            .map(|h| h.lease.seats)
    }

    /// Every valid slice at `now`, by pool id (what the cap adds).
    pub fn slices(&self, now: Instant) -> BTreeMap<String, u32> {
        self.valid(now)
            .map(|(p, h)| (p.clone(), h.lease.seats))
            .collect()
    }

    /// The epoch of the lease of `pool` still valid at `now` (what a report
    /// tells the cloud this gateway holds).
    pub fn held_epoch(&self, pool: &str, now: Instant) -> Option<u64> {
        self.get(pool)
            .filter(|h| now < h.expires)
            .map(|h| h.lease.epoch)
    }

    /// Pools with a lease record (valid, expired or remembered from before
    /// a restart), in id order.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        self.records.keys().map(String::as_str)
    }

    /// Forgets a pool this gateway left and reported drained.
    pub fn forget(&mut self, pool: &str) {
        self.records.remove(pool);
    }

    /// When the leases should be renewed: a third into the earliest one
    /// still valid at `now`. None when no lease is valid.
    pub fn renew_at(&self, now: Instant) -> Option<Instant> {
        self.valid(now)
            .map(|(_, h)| h.sent + h.lease.valid_for() / 3)
            .min()
    }
}

impl Record {
    fn held_ref(&self) -> &Held {
        self.held.as_ref().expect("a record just given a lease")
    }
}

/// The lease in `signed`, if its signature, format, device, pool and length
/// pass (the epoch is the book's to judge).
fn verify(
    signed: &Signed,
    trusted: &[VerifyingKey],
    device: &str,
    pools: &[&str],
) -> Result<Lease, LeaseError> {
    let bytes = signed
        .verified_payload(trusted)
        .map_err(LeaseError::Envelope)?;
    let lease: Lease =
        serde_json::from_slice(&bytes).map_err(|e| LeaseError::Payload(e.to_string()))?;
    if lease.format != LEASE_FORMAT {
        return Err(LeaseError::Format(lease.format));
    }
    if lease.device != device {
        return Err(LeaseError::WrongDevice {
            lease: lease.device,
            this: device.to_string(),
        });
    }
    if !pools.contains(&lease.pool.as_str()) {
        return Err(LeaseError::UnknownPool(lease.pool));
    }
    if lease.valid_for_ms > MAX_VALID_FOR_MS {
        return Err(LeaseError::TooLong {
            pool: lease.pool,
            valid_for_ms: lease.valid_for_ms,
        });
    }
    Ok(lease)
}

/// Attributes the sessions beyond the non-pool cap (`beyond`) to pools in
/// id order, each up to its slice, the rest to the last pool.
pub fn pool_usage(beyond: u32, slices: &[(&str, u32)]) -> Vec<u32> {
    let mut left = beyond;
    let n = slices.len();
    slices
        .iter()
        .enumerate()
        .map(|(i, (_, slice))| {
            let take = if i + 1 == n { left } else { left.min(*slice) };
            left -= take;
            take
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::t;
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn lease(pool: &str, seats: u32, epoch: u64) -> Lease {
        Lease {
            format: LEASE_FORMAT,
            device: "ESG-A1".into(),
            pool: pool.into(),
            seats,
            epoch,
            issued_at: t("2026-06-01T00:00:00Z"),
            valid_for_ms: 1500,
            limited: None,
        }
    }

    fn accept(book: &mut LeaseBook, l: &Lease, k: u8, sent: Instant) -> Result<u32, String> {
        book.accept(
            &sign_lease(l, &key(k)),
            &[key(1).verifying_key()],
            "ESG-A1",
            &["P1", "P2"],
            sent,
        )
        .map(|h| h.lease.seats)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn expiry_is_measured_from_the_send_instant() {
        let t0 = Instant::now();
        let mut book = LeaseBook::default();
        accept(&mut book, &lease("P1", 60, 5), 1, t0).unwrap();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(book.slice("P1", ms(0)), Some(60));
        assert_eq!(book.slice("P1", ms(1499)), Some(60));
        assert_eq!(book.slice("P1", ms(1500)), None, "expired: nothing");
        assert_eq!(book.renew_at(ms(0)), Some(ms(500)));
        assert_eq!(book.renew_at(ms(1500)), None);
        assert_eq!(book.held_epoch("P1", ms(10)), Some(5));
        assert_eq!(book.held_epoch("P1", ms(1500)), None);
        assert!(book.slices(ms(1500)).is_empty());
    }

    #[test]
    fn acceptance_table() {
        let t0 = Instant::now();
        let cases: Vec<(&str, Lease, u8, Option<&str>)> = vec![
            ("good", lease("P1", 60, 5), 1, None),
            ("wrong key", lease("P1", 60, 6), 2, Some("does not verify")),
            (
                "other device",
                Lease {
                    device: "ESG-Z9".into(),
                    ..lease("P1", 60, 6)
                },
                1,
                Some("for device ESG-Z9, not this gateway (ESG-A1)"),
            ),
            (
                "unknown pool",
                lease("P9", 60, 6),
                1,
                Some("pool P9, which no accepted license"),
            ),
            (
                "format 2",
                Lease {
                    format: 2,
                    ..lease("P1", 60, 6)
                },
                1,
                Some("format 2 is not supported"),
            ),
            (
                "too long",
                Lease {
                    valid_for_ms: MAX_VALID_FOR_MS + 1,
                    ..lease("P1", 60, 6)
                },
                1,
                Some("more than the 86400000 ms allowed"),
            ),
            (
                "older epoch",
                lease("P1", 99, 4),
                1,
                Some("epoch 4, older than the accepted 5"),
            ),
        ];
        let mut book = LeaseBook::default();
        for (name, l, k, want) in cases {
            let got = accept(&mut book, &l, k, t0);
            match want {
                None => assert!(got.is_ok(), "{name}: {got:?}"),
                Some(text) => {
                    let err = got.expect_err(name);
                    assert!(err.contains(text), "{name}: {err:?} lacks {text:?}");
                    assert_eq!(
                        book.slice("P1", t0),
                        Some(60),
                        "{name}: lease in force stays"
                    );
                }
            }
        }
    }

    #[test]
    fn the_same_epoch_again_never_extends_a_lease() {
        let t0 = Instant::now();
        let mut book = LeaseBook::default();
        accept(&mut book, &lease("P1", 60, 5), 1, t0).unwrap();
        let later = t0 + Duration::from_millis(1000);
        accept(&mut book, &lease("P1", 60, 5), 1, later).unwrap();
        assert_eq!(
            book.get("P1").unwrap().expires,
            t0 + Duration::from_millis(1500)
        );
        // A newer grant replaces it, smaller or not.
        accept(&mut book, &lease("P1", 20, 6), 1, later).unwrap();
        assert_eq!(book.slice("P1", later), Some(20));
        assert_eq!(
            book.get("P1").unwrap().expires,
            later + Duration::from_millis(1500)
        );
    }

    #[test]
    fn why_a_slice_is_small_is_optional_and_strict() {
        let t0 = Instant::now();
        let plain = serde_json::to_value(lease("P1", 0, 5)).unwrap();
        assert!(plain.get("limited").is_none(), "absent when none: {plain}");
        let until = t("2026-06-01T00:05:00Z");
        let quiet = Lease {
            limited: Some(Limit::Quiet { until }),
            ..lease("P1", 0, 5)
        };
        let v = serde_json::to_value(&quiet).unwrap();
        assert_eq!(
            v["limited"],
            serde_json::json!({"kind": "quiet", "until": "2026-06-01T00:05:00Z"})
        );
        let mut book = LeaseBook::default();
        accept(&mut book, &quiet, 1, t0).unwrap();
        assert_eq!(
            book.get("P1").unwrap().lease.limited,
            Some(Limit::Quiet { until })
        );
        assert_eq!(
            Limit::Quiet { until }.to_string(),
            "cloud restarted: no new grants until 00:05:00 UTC"
        );
        for (json, kind) in [
            (r#"{"kind":"contended"}"#, Limit::Contended),
            (r#"{"kind":"held"}"#, Limit::Held),
        ] {
            assert_eq!(serde_json::from_str::<Limit>(json).unwrap(), kind);
        }
        // An unknown reason is a contract mismatch: the lease is refused,
        // the one in force stays.
        let mut bad = serde_json::to_value(lease("P1", 9, 6)).unwrap();
        bad["limited"] = serde_json::json!({"kind": "bogus"});
        let signed = sign_bytes(serde_json::to_vec(&bad).unwrap(), &key(1));
        let err = book
            .accept(&signed, &[key(1).verifying_key()], "ESG-A1", &["P1"], t0)
            .unwrap_err();
        assert!(matches!(err, LeaseError::Payload(_)), "{err}");
        assert_eq!(book.slice("P1", t0), Some(0));
    }

    fn remembered(pools: &[(&str, u64)]) -> Remembered {
        Remembered {
            pools: pools.iter().map(|(p, e)| (p.to_string(), *e)).collect(),
        }
    }

    #[test]
    fn remembered_epochs_refuse_older_and_replayed_leases() {
        let t0 = Instant::now();
        let mut book = LeaseBook::restore(&remembered(&[("P1", 5)]));
        let cases = [
            (4, Some("epoch 4, older than the accepted 5")),
            (
                5,
                Some("repeats epoch 5, accepted before this gateway restarted"),
            ),
            (6, None),
        ];
        for (epoch, want) in cases {
            let got = accept(&mut book, &lease("P1", 60, epoch), 1, t0);
            match want {
                None => assert_eq!(got, Ok(60), "epoch {epoch}"),
                Some(text) => {
                    let err = got.expect_err("refused");
                    assert!(err.contains(text), "epoch {epoch}: {err:?} lacks {text:?}");
                    assert_eq!(book.slice("P1", t0), None, "no slice before a fresh lease");
                }
            }
        }
        assert_eq!(book.remembered(), remembered(&[("P1", 6)]));
    }

    #[test]
    fn remembered_pools_are_reported_without_a_slice() {
        let t0 = Instant::now();
        let book = LeaseBook::restore(&remembered(&[("P1", 5), ("P9", 3)]));
        assert_eq!(book.pools().collect::<Vec<_>>(), ["P1", "P9"]);
        assert!(book.slices(t0).is_empty(), "pooled part 0 after a restart");
        assert_eq!(book.held_epoch("P1", t0), None);
        assert_eq!(book.renew_at(t0), None);
        assert_eq!(book.get("P1"), None);
        assert_eq!(book.remembered(), remembered(&[("P1", 5), ("P9", 3)]));
    }

    #[test]
    fn forget_removes_a_pool_from_what_is_remembered() {
        let t0 = Instant::now();
        let mut book = LeaseBook::restore(&remembered(&[("P9", 3)]));
        accept(&mut book, &lease("P1", 60, 5), 1, t0).unwrap();
        accept(&mut book, &lease("P2", 10, 7), 1, t0).unwrap();
        assert_eq!(
            book.remembered(),
            remembered(&[("P1", 5), ("P2", 7), ("P9", 3)])
        );
        book.forget("P1");
        book.forget("P9");
        assert_eq!(book.remembered(), remembered(&[("P2", 7)]));
        assert_eq!(book.pools().collect::<Vec<_>>(), ["P2"]);
    }

    #[test]
    fn remembered_is_strict_json() {
        let r: Remembered = serde_json::from_str(r#"{"pools":{"P1":5}}"#).unwrap();
        assert_eq!(r, remembered(&[("P1", 5)]));
        assert!(serde_json::from_str::<Remembered>(r#"{"pools":{},"x":1}"#).is_err());
        assert!(serde_json::from_str::<Remembered>(r#"{"pools":{"P1":-1}}"#).is_err());
    }

    #[test]
    fn usage_fills_pools_in_order_and_the_last_takes_the_rest() {
        assert_eq!(pool_usage(0, &[]), Vec::<u32>::new());
        assert_eq!(pool_usage(7, &[("P1", 60)]), vec![7]);
        assert_eq!(pool_usage(70, &[("P1", 60)]), vec![70]);
        assert_eq!(pool_usage(70, &[("P1", 60), ("P2", 5)]), vec![60, 10]);
        assert_eq!(pool_usage(30, &[("P1", 60), ("P2", 5)]), vec![30, 0]);
    }
}
