//! License records as the cloud sends them, and the rules a record must obey
//! to count on this gateway.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A shared license must be larger than this to be shared at all.
pub const MIN_SHARED_SEATS: u32 = 100;
/// The longest term a license may state (100 years): anything longer is a
/// data error, not a license.
pub const MAX_TERM_DAYS: u32 = 36_500;
/// At most this many gateways draw from one pool.
pub const MAX_POOL_MEMBERS: usize = 3;
/// The most seats one record may state (a license, and so a pool): the
/// vendor sells licenses of tens to hundreds of users; anything near this is
/// a data error, not a license. With it no sum of seats comes near `u32`
/// overflow for any realistic bundle, and the cap's sums saturate anyway.
pub const MAX_SEATS: u32 = 100_000;

/// What a record's `product` is to this gateway. Products are matched
/// ASCII-case-insensitively (`spc`, `SPC`, `Spc` are one product).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// `spc`: a SecuPoint VPN Client license, the only product that adds
    /// VPN seats; the vendor's rules apply to it.
    Vpn,
    /// `pro`: a known product that never adds VPN seats (the Pro license).
    /// Listed for information; the VPN rules do not apply to it.
    NotVpn,
    /// Anything else: refused, it counts nothing.
    Unknown,
}

/// The product that adds VPN seats.
pub const VPN_PRODUCT: &str = "spc";
/// Known products that never add VPN seats.
pub const NOT_VPN_PRODUCTS: [&str; 1] = ["pro"];

impl Product {
    pub fn of(name: &str) -> Product {
        if name.eq_ignore_ascii_case(VPN_PRODUCT) {
            Product::Vpn
        } else if NOT_VPN_PRODUCTS
            .iter()
            .any(|p| name.eq_ignore_ascii_case(p))
        {
            Product::NotVpn
        } else {
            Product::Unknown
        }
    }
}

/// One license record, exactly as the cloud sends it (field names are the
/// contract with the cloud).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct License {
    pub id: String,
    /// `spc` adds VPN seats; `pro` never does; any other product is
    /// refused (see `Product`).
    pub product: String,
    pub sku: String,
    pub seats: u32,
    pub term_days: u32,
    pub issued_at: DateTime<Utc>,
    #[serde(default)]
    pub associated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub activated_at: Option<DateTime<Utc>>,
    /// Serial of the gateway this record is for.
    pub device: String,
    pub binding: Binding,
    #[serde(default)]
    pub pool: Option<Pool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// The license itself, bound to this gateway.
    Bound,
    /// A replica of a shared license bound to another gateway of the pool.
    Replica,
}

/// A shared license's pool: all members draw from `seats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub id: String,
    pub seats: u32,
    pub members: Vec<String>,
    /// This gateway's fixed share of the pool, when the cloud states one: a
    /// static pool, never leased. Absent: the pool is leased in live slices
    /// (docs/pools.md) and gives nothing without a valid lease.
    #[serde(default)]
    pub share: Option<u32>,
}

impl License {
    /// Whether this is a VPN (`spc`) record, the only kind that adds seats.
    pub fn is_spc(&self) -> bool {
        Product::of(&self.product) == Product::Vpn
    }
}

impl Pool {
    /// The fixed seats of a static pool; None for a leased pool.
    pub fn static_share(&self) -> Option<u32> {
        self.share
    }
}

/// Why a record was refused. Each reason says what is wrong with the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("bound to device {other}, not this gateway ({this})")]
    OtherDevice { other: String, this: String },
    #[error("has product {0:?}, which seatgate does not know (known: \"spc\" adds VPN seats, \"pro\" never does); it counts nothing: correct the record's product in the cloud, or upgrade seatgate if this is a new VPN product")]
    UnknownProduct(String),
    #[error("is a {product} record (not a VPN license) but names pool {pool}; only spc licenses are shared")]
    NotVpnPool { product: String, pool: String },
    #[error("has 0 seats")]
    NoSeats,
    #[error("has {0} seats, more than the {MAX_SEATS} any license may have")]
    TooManySeats(u32),
    #[error("has a term of 0 days")]
    NoTerm,
    #[error("has a term of {0} days, more than the {MAX_TERM_DAYS} days any license may have")]
    TermTooLong(u32),
    #[error("{field} ({at}) is before issued_at ({issued})")]
    BeforeIssue {
        field: &'static str,
        at: DateTime<Utc>,
        issued: DateTime<Utc>,
    },
    #[error(
        "is shared, but a pool needs more than {MIN_SHARED_SEATS} seats (pool {pool} has {seats})"
    )]
    PoolTooSmall { pool: String, seats: u32 },
    #[error(
        "pool {pool} has {count} members; at most {MAX_POOL_MEMBERS} gateways may share a license"
    )]
    TooManyMembers { pool: String, count: usize },
    #[error("pool {pool} lists member {member} twice")]
    DuplicateMember { pool: String, member: String },
    #[error("pool {pool} does not list this gateway ({this}) as a member")]
    NotAMember { pool: String, this: String },
    #[error("pool {pool} has {pool_seats} seats but the license has {seats}")]
    PoolSeatsMismatch {
        pool: String,
        pool_seats: u32,
        seats: u32,
    },
    #[error("pool {pool} states a share of {share} seats, more than the pool's {seats}")]
    ShareTooLarge {
        pool: String,
        share: u32,
        seats: u32,
    },
    #[error("is a replica but names no pool")]
    ReplicaWithoutPool,
    #[error("repeats license id {0}, already listed earlier in the bundle")]
    DuplicateId(String),
    #[error("draws from pool {0}, which an earlier record already draws from")]
    DuplicatePool(String),
}

/// A record that was refused, with its id and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub id: String,
    pub reason: String,
}

impl License {
    /// Checks the record against the vendor's rules for the gateway `this`.
    /// Every record must be for this gateway and of a known product; the
    /// VPN rules (seats, term, dates, pool) apply to `spc` records only: a
    /// `pro` record never adds seats, so it is listed whatever it states.
    pub fn validate(&self, this: &str) -> Result<(), Rejection> {
        if self.device != this {
            return Err(Rejection::OtherDevice {
                other: self.device.clone(),
                this: this.to_string(),
            });
        }
        match Product::of(&self.product) {
            Product::Vpn => {}
            Product::Unknown => return Err(Rejection::UnknownProduct(self.product.clone())),
            Product::NotVpn => {
                return match &self.pool {
                    Some(pool) => Err(Rejection::NotVpnPool {
                        product: self.product.clone(),
                        pool: pool.id.clone(),
                    }),
                    None => Ok(()),
                }
            }
        }
        if self.seats == 0 {
            return Err(Rejection::NoSeats);
        }
        if self.seats > MAX_SEATS {
            return Err(Rejection::TooManySeats(self.seats));
        }
        if self.term_days == 0 {
            return Err(Rejection::NoTerm);
        }
        if self.term_days > MAX_TERM_DAYS {
            return Err(Rejection::TermTooLong(self.term_days));
        }
        for (field, at) in [
            ("associated_at", self.associated_at),
            ("activated_at", self.activated_at),
        ] {
            if let Some(at) = at.filter(|at| *at < self.issued_at) {
                return Err(Rejection::BeforeIssue {
                    field,
                    at,
                    issued: self.issued_at,
                });
            }
        }
        match (&self.pool, self.binding) {
            (None, Binding::Replica) => Err(Rejection::ReplicaWithoutPool),
            (None, Binding::Bound) => Ok(()),
            (Some(pool), _) => self.validate_pool(pool, this),
        }
    }

    fn validate_pool(&self, pool: &Pool, this: &str) -> Result<(), Rejection> {
        let id = || pool.id.clone();
        if pool.seats <= MIN_SHARED_SEATS {
            return Err(Rejection::PoolTooSmall {
                pool: id(),
                seats: pool.seats,
            });
        }
        if pool.seats != self.seats {
            return Err(Rejection::PoolSeatsMismatch {
                pool: id(),
                pool_seats: pool.seats,
                seats: self.seats,
            });
        }
        if pool.members.len() > MAX_POOL_MEMBERS {
            return Err(Rejection::TooManyMembers {
                pool: id(),
                count: pool.members.len(),
            });
        }
        for (i, member) in pool.members.iter().enumerate() {
            if pool.members[..i].contains(member) {
                return Err(Rejection::DuplicateMember {
                    pool: id(),
                    member: member.clone(),
                });
            }
        }
        if !pool.members.iter().any(|m| m == this) {
            return Err(Rejection::NotAMember {
                pool: id(),
                this: this.to_string(),
            });
        }
        if let Some(share) = pool.share.filter(|s| *s > pool.seats) {
            return Err(Rejection::ShareTooLarge {
                pool: id(),
                share,
                seats: pool.seats,
            });
        }
        Ok(())
    }
}

/// Splits records into the ones that count on gateway `this` and the ones
/// refused, each with its reason. Later duplicates of an id or a pool are
/// refused so no seat is ever counted twice.
pub fn partition(licenses: &[License], this: &str) -> (Vec<License>, Vec<Rejected>) {
    let mut valid: Vec<License> = Vec::new();
    let mut rejected = Vec::new();
    for lic in licenses {
        let dup_id = valid.iter().any(|v| v.id == lic.id);
        let dup_pool = lic.pool.as_ref().and_then(|p| {
            valid
                .iter()
                .filter_map(|v| v.pool.as_ref())
                .any(|q| q.id == p.id)
                .then(|| p.id.clone())
        });
        let verdict = if dup_id {
            Err(Rejection::DuplicateId(lic.id.clone()))
        } else if let Some(pool) = dup_pool {
            Err(Rejection::DuplicatePool(pool))
        } else {
            lic.validate(this)
        };
        match verdict {
            Ok(()) => valid.push(lic.clone()),
            Err(why) => rejected.push(Rejected {
                id: lic.id.clone(),
                reason: why.to_string(),
            }),
        }
    }
    (valid, rejected)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    pub fn spc(id: &str, seats: u32, term_days: u32, activated: &str) -> License {
        License {
            id: id.into(),
            product: "spc".into(),
            sku: format!("SPC-{term_days}D-LIC"),
            seats,
            term_days,
            issued_at: t("2026-01-01T00:00:00Z"),
            associated_at: Some(t(activated)),
            activated_at: Some(t(activated)),
            device: "ESG-A1".into(),
            binding: Binding::Bound,
            pool: None,
        }
    }

    fn pool(seats: u32, members: &[&str]) -> Pool {
        Pool {
            id: "POOL-1".into(),
            seats,
            members: members.iter().map(|m| m.to_string()).collect(),
            share: None,
        }
    }

    #[test]
    fn parses_the_cloud_contract_example() {
        let json = r#"{"id":"LIC-0001","product":"spc","sku":"SPC-1YR-LIC","seats":20,
            "term_days":365,"issued_at":"2026-01-01T00:00:00Z",
            "associated_at":"2026-01-10T00:00:00Z","activated_at":"2026-01-10T00:00:00Z",
            "device":"ESG-A1","binding":"bound","pool":null}"#;
        let lic: License = serde_json::from_str(json).unwrap();
        assert_eq!(lic.seats, 20);
        assert_eq!(lic.binding, Binding::Bound);
        assert_eq!(lic.validate("ESG-A1"), Ok(()));
    }

    #[test]
    fn rejects_unknown_fields() {
        let json = r#"{"id":"L","product":"spc","sku":"S","seats":1,"term_days":1,
            "issued_at":"2026-01-01T00:00:00Z","device":"ESG-A1","binding":"bound","extra":1}"#;
        let err = serde_json::from_str::<License>(json).unwrap_err();
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn validation_table() {
        let base = spc("L1", 150, 365, "2026-01-10T00:00:00Z");
        let cases: Vec<(&str, License, Option<&str>)> = vec![
            ("plain bound license", base.clone(), None),
            (
                "other device",
                License {
                    device: "ESG-B2".into(),
                    ..base.clone()
                },
                Some("bound to device ESG-B2, not this gateway (ESG-A1)"),
            ),
            (
                "no seats",
                License {
                    seats: 0,
                    ..base.clone()
                },
                Some("has 0 seats"),
            ),
            (
                "no term",
                License {
                    term_days: 0,
                    ..base.clone()
                },
                Some("term of 0 days"),
            ),
            (
                "activated before issue",
                License {
                    activated_at: Some(t("2025-12-01T00:00:00Z")),
                    ..base.clone()
                },
                Some("activated_at (2025-12-01 00:00:00 UTC) is before issued_at"),
            ),
            (
                "small pool",
                License {
                    seats: 100,
                    pool: Some(pool(100, &["ESG-A1"])),
                    ..base.clone()
                },
                Some("a pool needs more than 100 seats (pool POOL-1 has 100)"),
            ),
            (
                "shared 101 seats is fine",
                License {
                    seats: 101,
                    pool: Some(pool(101, &["ESG-A1", "ESG-B2"])),
                    ..base.clone()
                },
                None,
            ),
            (
                "four members",
                License {
                    pool: Some(pool(150, &["ESG-A1", "B", "C", "D"])),
                    ..base.clone()
                },
                Some("has 4 members; at most 3"),
            ),
            (
                "member twice",
                License {
                    pool: Some(pool(150, &["ESG-A1", "B", "B"])),
                    ..base.clone()
                },
                Some("lists member B twice"),
            ),
            (
                "replica not listing this device",
                License {
                    binding: Binding::Replica,
                    pool: Some(pool(150, &["B", "C"])),
                    ..base.clone()
                },
                Some("does not list this gateway (ESG-A1)"),
            ),
            (
                "replica without pool",
                License {
                    binding: Binding::Replica,
                    ..base.clone()
                },
                Some("is a replica but names no pool"),
            ),
            (
                "pool seats differ",
                License {
                    pool: Some(pool(200, &["ESG-A1"])),
                    ..base.clone()
                },
                Some("pool POOL-1 has 200 seats but the license has 150"),
            ),
            (
                "upper case SPC is spc",
                License {
                    product: "SPC".into(),
                    ..base.clone()
                },
                None,
            ),
            (
                "unknown product spcc",
                License {
                    product: "spcc".into(),
                    ..base.clone()
                },
                Some("has product \"spcc\", which seatgate does not know (known: \"spc\" adds VPN seats, \"pro\" never does); it counts nothing: correct the record's product"),
            ),
            (
                "empty product",
                License {
                    product: "".into(),
                    ..base.clone()
                },
                Some("has product \"\", which seatgate does not know"),
            ),
            (
                "pro with 0 seats and 0 days is listed, not refused by spc rules",
                License {
                    product: "pro".into(),
                    seats: 0,
                    term_days: 0,
                    ..base.clone()
                },
                None,
            ),
            (
                "PRO is pro",
                License {
                    product: "PRO".into(),
                    seats: 0,
                    ..base.clone()
                },
                None,
            ),
            (
                "pro for another device is still refused",
                License {
                    product: "pro".into(),
                    device: "ESG-B2".into(),
                    ..base.clone()
                },
                Some("bound to device ESG-B2"),
            ),
            (
                "pro naming a pool",
                License {
                    product: "pro".into(),
                    pool: Some(pool(150, &["ESG-A1"])),
                    ..base.clone()
                },
                Some("is a pro record (not a VPN license) but names pool POOL-1"),
            ),
            (
                "seats at the bound",
                License {
                    seats: MAX_SEATS,
                    ..base.clone()
                },
                None,
            ),
            (
                "seats above the bound",
                License {
                    seats: MAX_SEATS + 1,
                    ..base.clone()
                },
                Some("has 100001 seats, more than the 100000 any license may have"),
            ),
            (
                "seats u32::MAX",
                License {
                    seats: u32::MAX,
                    ..base.clone()
                },
                Some("has 4294967295 seats, more than the 100000"),
            ),
            (
                "share above pool",
                License {
                    pool: Some(Pool {
                        share: Some(151),
                        ..pool(150, &["ESG-A1"])
                    }),
                    ..base.clone()
                },
                Some("share of 151 seats, more than the pool's 150"),
            ),
        ];
        for (name, lic, want) in cases {
            let got = lic.validate("ESG-A1").map_err(|e| e.to_string());
            match want {
                None => assert_eq!(got, Ok(()), "{name}"),
                Some(text) => {
                    let err = got.expect_err(name);
                    assert!(err.contains(text), "{name}: {err:?} lacks {text:?}");
                }
            }
        }
    }

    #[test]
    fn an_absurd_term_is_refused_and_never_panics() {
        let lic = License {
            term_days: u32::MAX,
            ..spc("L1", 20, 365, "2026-01-10T00:00:00Z")
        };
        let err = lic.validate("ESG-A1").unwrap_err().to_string();
        assert!(
            err.contains("term of 4294967295 days, more than the 36500"),
            "{err}"
        );
        // Even unvalidated, the arithmetic saturates instead of panicking.
        assert_eq!(lic.expiry(), DateTime::<Utc>::MAX_UTC);
        assert_eq!(lic.seats_at(t("2030-01-01T00:00:00Z")), 20);
    }

    #[test]
    fn partition_keeps_valid_records_and_names_the_bad_ones() {
        let good = spc("L1", 20, 365, "2026-01-10T00:00:00Z");
        let foreign = License {
            id: "L2".into(),
            device: "ESG-Z9".into(),
            ..good.clone()
        };
        let dup = good.clone();
        let (valid, rejected) = partition(&[good.clone(), foreign, dup], "ESG-A1");
        assert_eq!(valid, vec![good]);
        assert_eq!(rejected.len(), 2);
        assert_eq!(rejected[0].id, "L2");
        assert!(rejected[0].reason.contains("ESG-Z9"));
        assert!(rejected[1].reason.contains("repeats license id L1"));
    }

    #[test]
    fn products_table() {
        let cases = [
            ("spc", Product::Vpn),
            ("SPC", Product::Vpn),
            ("Spc", Product::Vpn),
            ("pro", Product::NotVpn),
            ("Pro", Product::NotVpn),
            ("spcc", Product::Unknown),
            ("spc ", Product::Unknown),
            ("", Product::Unknown),
            ("vpn", Product::Unknown),
        ];
        for (name, want) in cases {
            assert_eq!(Product::of(name), want, "{name:?}");
        }
    }

    #[test]
    fn partition_lists_pro_refuses_unknown_products() {
        let good = spc("L1", 20, 365, "2026-01-10T00:00:00Z");
        let pro = License {
            id: "P1".into(),
            product: "pro".into(),
            seats: 0,
            ..good.clone()
        };
        let odd = License {
            id: "X1".into(),
            product: "spcc".into(),
            ..good.clone()
        };
        let (valid, rejected) = partition(&[good.clone(), pro.clone(), odd], "ESG-A1");
        assert_eq!(valid, vec![good, pro]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].id, "X1");
        assert!(rejected[0].reason.contains("\"spcc\""), "{:?}", rejected);
    }

    #[test]
    fn partition_refuses_a_second_record_on_the_same_pool() {
        let shared = License {
            pool: Some(pool(150, &["ESG-A1", "ESG-B2"])),
            ..spc("L1", 150, 365, "2026-01-10T00:00:00Z")
        };
        let replica = License {
            id: "L1-R".into(),
            binding: Binding::Replica,
            ..shared.clone()
        };
        let (valid, rejected) = partition(&[shared, replica], "ESG-A1");
        assert_eq!(valid.len(), 1);
        assert!(rejected[0].reason.contains("pool POOL-1"));
    }
}
