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
    /// The bundle's age: seconds from `issued_at` to the report's instant
    /// (how stale what is in force is, whatever the last sync did).
    #[serde(default)]
    pub age_secs: i64,
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
            age_secs: (at - b.issued_at).num_seconds().max(0),
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
                // Ids are shown as the cloud spells them; only the binding
                // is a word of ours.
                let pool = l.record.pool.as_ref().map_or("-".to_string(), |p| {
                    format!(
                        "{} ({} seats, {} members, {})",
                        p.id,
                        p.seats,
                        p.members.len(),
                        format!("{:?}", l.record.binding).to_lowercase()
                    )
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
        let not_vpn: Vec<String> = self
            .licenses
            .iter()
            .filter(|l| !l.record.is_spc())
            .map(|l| format!("{} ({})", l.record.id, l.record.product))
            .collect();
        if !not_vpn.is_empty() {
            out.push_str(&format!(
                "not VPN licenses (listed, never add seats): {}\n",
                not_vpn.join(", ")
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::in_force::tests::{rules, signed_with};
    use crate::license::model::tests::{spc, t};
    use crate::license::model::{Binding, Pool};

    fn report(licenses: Vec<License>) -> LicenseReport {
        let text = signed_with(1, licenses, 1);
        let mut lic = Licenses::builtin_only(2);
        lic.offer(
            &rules(),
            &text,
            t("2026-06-02T00:00:00Z"),
            std::time::Instant::now(),
        )
        .unwrap();
        LicenseReport::build("ESG-A1", &lic, t("2026-06-02T00:00:00Z"))
    }

    #[test]
    fn table_keeps_pool_ids_as_spelled_and_names_not_vpn_and_refused_records() {
        let shared = License {
            binding: Binding::Replica,
            pool: Some(Pool {
                id: "POOL-Lic-0002".into(),
                seats: 150,
                members: vec!["ESG-A1".into(), "ESG-B2".into()],
                share: Some(40),
            }),
            ..spc("LIC-0002", 150, 365, "2026-01-10T00:00:00Z")
        };
        let pro = License {
            product: "pro".into(),
            seats: 0,
            ..spc("PRO-1", 1, 365, "2026-01-10T00:00:00Z")
        };
        let odd = License {
            product: "spcc".into(),
            ..spc("ODD-1", 5, 365, "2026-01-10T00:00:00Z")
        };
        let text = report(vec![shared, pro, odd]).render_text();
        assert!(
            text.contains("POOL-Lic-0002 (150 seats, 2 members, replica)"),
            "{text}"
        );
        assert!(
            text.contains("not VPN licenses (listed, never add seats): PRO-1 (pro)"),
            "{text}"
        );
        assert!(
            text.contains("rejected: ODD-1 has product \"spcc\""),
            "{text}"
        );
        assert!(text.contains("cap now: 42 seats (2 built-in + 0 licensed + 40 pooled)"));
    }
}
