//! The license report behind `seatgate licenses` and the license part of
//! status: built from data and an instant (pure), rendered as JSON or text.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::license::cap::describe_timeline;
use crate::license::in_force::Licenses;
use crate::license::{Cap, License, Rejected, Status, Step};

#[derive(Debug, Clone, Serialize)]
pub struct LicenseReport {
    pub device: String,
    pub at: DateTime<Utc>,
    pub bundle: Option<BundleInfo>,
    pub cap: CapReport,
    pub licenses: Vec<LicenseLine>,
    pub timeline: Vec<Step>,
    pub rejected: Vec<Rejected>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub org: String,
    pub generation: u64,
    pub issued_at: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// True once `not_after` has passed: only built-in seats count.
    pub ran_out: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CapReport {
    #[serde(flatten)]
    pub parts: Cap,
    pub total: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct LicenseLine {
    #[serde(flatten)]
    pub record: License,
    #[serde(flatten)]
    pub status: Status,
    pub activation: DateTime<Utc>,
    pub expiry: DateTime<Utc>,
    /// VPN seats it adds at `at` (a pool share for shared licenses).
    pub seats_now: u32,
}

impl BundleInfo {
    pub fn of(lic: &Licenses, at: DateTime<Utc>) -> Option<Self> {
        lic.bundle().map(|b| BundleInfo {
            org: b.org.clone(),
            generation: b.generation,
            issued_at: b.issued_at,
            not_after: b.not_after,
            ran_out: at >= b.not_after,
        })
    }
}

impl LicenseReport {
    pub fn build(device: &str, lic: &Licenses, at: DateTime<Utc>) -> Self {
        let parts = lic.entitlement.cap_at(at);
        let bundle = BundleInfo::of(lic, at);
        LicenseReport {
            device: device.to_string(),
            at,
            bundle,
            cap: CapReport {
                parts,
                total: parts.total(),
            },
            licenses: lic
                .entitlement
                .licenses
                .iter()
                .map(|l| LicenseLine {
                    record: l.clone(),
                    status: l.status(at),
                    activation: l.activation(),
                    expiry: l.expiry(),
                    seats_now: l.seats_at(at),
                })
                .collect(),
            timeline: lic.entitlement.timeline(at),
            rejected: lic.rejected.clone(),
            warnings: lic.warnings.clone(),
        }
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let day = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
        out.push_str(&format!(
            "device {}  at {}\n",
            self.device,
            self.at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        match &self.bundle {
            Some(b) => out.push_str(&format!(
                "bundle: org {} generation {}, issued {}, valid until {}{}\n",
                b.org,
                b.generation,
                day(b.issued_at),
                day(b.not_after),
                if b.ran_out {
                    "  ** RAN OUT: built-in seats only until a fresh bundle arrives **"
                } else {
                    ""
                }
            )),
            None => out.push_str("bundle: none (built-in seats only)\n"),
        }
        if !self.licenses.is_empty() {
            out.push_str(&format!(
                "\n{:<12} {:<14} {:<7} {:>6} {:>6}  {:<16} {:<10} {:<10} {}\n",
                "ID", "SKU", "PRODUCT", "SEATS", "NOW", "STATUS", "ACTIVATES", "EXPIRES", "POOL"
            ));
            for l in &self.licenses {
                let pool = l.record.pool.as_ref().map_or("-".to_string(), |p| {
                    format!(
                        "{} ({} seats, {} members, {:?})",
                        p.id,
                        p.seats,
                        p.members.len(),
                        l.record.binding
                    )
                    .to_lowercase()
                });
                out.push_str(&format!(
                    "{:<12} {:<14} {:<7} {:>6} {:>6}  {:<16} {:<10} {:<10} {}\n",
                    l.record.id,
                    l.record.sku,
                    l.record.product,
                    l.record.seats,
                    l.seats_now,
                    l.status.label(),
                    day(l.activation),
                    day(l.expiry),
                    pool
                ));
            }
        }
        let c = &self.cap;
        out.push_str(&format!(
            "\ncap now: {} seats ({} built-in + {} licensed + {} pooled)\n",
            c.total, c.parts.builtin, c.parts.licensed, c.parts.pooled
        ));
        out.push_str(&format!(
            "timeline: {}\n",
            describe_timeline(c.total, &self.timeline)
        ));
        for r in &self.rejected {
            out.push_str(&format!("rejected: {} {}\n", r.id, r.reason));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}
