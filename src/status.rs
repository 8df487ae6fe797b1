//! The daemon's status: built from the session table, the licenses and an
//! instant (pure), sent as JSON over the socket, rendered as text for people.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::admission::over_cap::Plan;
use crate::admission::policy::entry_usage;
use crate::admission::protocol::ServerKind;
use crate::admission::table::Table;
use crate::alerts::Thresholds;
use crate::cloud::policy::{human, CloudStatus, Severity, StampSeen, SyncRecord};
use crate::config::policy::SeatPolicy;
use crate::license::cap::describe_timeline;
use crate::license::in_force::{Dropped, Licenses};
use crate::license::lease::Limit;
use crate::license::notices::{notices, Notice};
use crate::license::report::BundleInfo;
use crate::license::{Cap, Rejected, Step};
use crate::text::shown;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub device: String,
    pub now: DateTime<Utc>,
    pub cap: Cap,
    pub cap_total: u32,
    pub in_use: u32,
    pub free: u32,
    /// Sessions above the cap (after a license expired or moved away);
    /// they drain, no new session gets in until this is 0.
    pub over_cap_by: u32,
    /// What `over_cap` will do about it: which sessions go and when (None:
    /// within the cap, or the policy drains).
    #[serde(default)]
    pub over_cap: Option<Plan>,
    pub peak: u32,
    pub peak_at: Option<DateTime<Utc>>,
    /// Peak usage per UTC day, oldest first (up to 31 days).
    #[serde(default)]
    pub daily_peaks: Vec<DayPeak>,
    pub denials: u64,
    /// Seats held by sessions that could not be read back after a damaged
    /// snapshot (included in `in_use`): held until the VPN servers' own
    /// lists account for them or an operator clears them.
    #[serde(default)]
    pub lost: u32,
    pub next_change: Option<Step>,
    pub timeline: Vec<Step>,
    pub bundle: Option<BundleInfo>,
    /// Records of the bundle that were refused, each with its reason (they
    /// add no seats; `seatgate licenses` shows the same).
    #[serde(default)]
    pub refused: Vec<Rejected>,
    /// Licenses a newer bundle no longer carries (moved to another device,
    /// the device replaced, a share undone), seen since the daemon started.
    #[serde(default)]
    pub dropped: Option<Dropped>,
    pub warnings: Vec<String>,
    /// Cloud sync; absent when the config has no `[cloud]` section.
    #[serde(default)]
    pub cloud: Option<CloudStatus>,
    /// Shared pools this gateway draws from (docs/pools.md).
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
    pub sessions: Vec<SessionInfo>,
    /// Background rounds finished since the daemon started.
    #[serde(default)]
    pub rounds: Rounds,
    /// Admission answers that could not be delivered since the daemon
    /// started (their hooks had given up); such an admission is undone
    /// unless another answer for it was delivered.
    #[serde(default)]
    pub unanswered: u64,
    /// The usage alert level: the highest `[alerts]` threshold reached, in
    /// percent of the cap (0: none). Held until usage is `hysteresis`
    /// points below it.
    #[serde(default)]
    pub alert_level: u8,
    /// The `[alerts]` settings the daemon runs with.
    #[serde(default)]
    pub alerts: Thresholds,
    /// License warnings now: VPN licenses expiring and cap drops coming
    /// within 60, 30 or 3 days.
    #[serde(default)]
    pub license_warnings: Vec<Notice>,
    /// The last denials (up to `RECENT_DENIALS`), oldest first.
    #[serde(default)]
    pub recent_denials: Vec<Denial>,
    /// Denials since the daemon started, by reason (the protocol's names).
    #[serde(default)]
    pub denials_by_reason: BTreeMap<String, u64>,
    /// Denials per UTC day since the daemon started, by reason, oldest
    /// first (up to 31 days).
    #[serde(default)]
    pub daily_denials: Vec<DayDenials>,
    /// Admission decisions since the daemon started: counts and latency.
    #[serde(default)]
    pub admissions: AdmissionStats,
    /// Every license in force with its expiry (for monitoring; `seatgate
    /// licenses` shows the full records).
    #[serde(default)]
    pub licenses: Vec<LicenseExpiry>,
    /// The `[policy]` in force (all empty when it sets no rule). Read back
    /// by hand (`Status::from_json`): a derived reader costs the gateway's
    /// flash several KiB more.
    #[serde(default, skip_deserializing)]
    pub policy: PolicyStatus,
}

/// The seat policy in force and how its reservations are used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    pub max_sessions_per_user: Option<u32>,
    /// `refuse` or `replace_oldest`.
    pub at_user_limit: String,
    /// Seats reserved by every entry together.
    pub reserved: u32,
    /// Reserved seats no member holds yet: free seats nobody else may take.
    pub unfilled: u32,
    pub groups: Vec<GroupStatus>,
    /// Set when the cap in force is below the seats reserved.
    #[serde(default)]
    pub warning: Option<String>,
}

/// One `[[policy.group]]` entry and the seats its members hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    pub name: String,
    pub reserved: u32,
    pub max: Option<u32>,
    pub in_use: u32,
}

impl PolicyStatus {
    /// Reads what `Serialize` wrote; a missing or odd field reads as empty.
    pub fn from_json(v: &serde_json::Value) -> PolicyStatus {
        let n = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let groups = v["groups"].as_array().map_or(&[][..], Vec::as_slice);
        PolicyStatus {
            max_sessions_per_user: n(&v["max_sessions_per_user"]),
            at_user_limit: text(&v["at_user_limit"]).unwrap_or_default(),
            reserved: n(&v["reserved"]).unwrap_or(0),
            unfilled: n(&v["unfilled"]).unwrap_or(0),
            groups: groups
                .iter()
                .map(|g| GroupStatus {
                    name: text(&g["name"]).unwrap_or_default(),
                    reserved: n(&g["reserved"]).unwrap_or(0),
                    max: n(&g["max"]),
                    in_use: n(&g["in_use"]).unwrap_or(0),
                })
                .collect(),
            warning: text(&v["warning"]),
        }
    }

    /// The policy against the sessions held and the cap (empty: no rule).
    pub fn build(policy: &SeatPolicy, table: &Table, cap: u32) -> PolicyStatus {
        if policy.is_empty() {
            return PolicyStatus::default();
        }
        let used = entry_usage(table, policy, None);
        let groups: Vec<GroupStatus> = policy
            .groups
            .iter()
            .zip(used)
            .map(|(g, in_use)| GroupStatus {
                name: g.name.clone(),
                reserved: g.reserved,
                max: g.max,
                in_use,
            })
            .collect();
        let reserved = policy.reserved();
        let warning = (reserved > cap).then(|| {
            format!("the cap in force ({cap}) is below the {reserved} seats reserved by [policy]: reserved members get in first come, first served, and nobody else until usage drops")
        });
        PolicyStatus {
            max_sessions_per_user: policy.max_sessions_per_user,
            at_user_limit: policy.at_user_limit.as_str().into(),
            reserved,
            unfilled: groups
                .iter()
                .map(|g| g.reserved.saturating_sub(g.in_use))
                .fold(0, u32::saturating_add),
            groups,
            warning,
        }
    }

    fn render(&self) -> String {
        let mut out = String::from("policy:");
        if let Some(n) = self.max_sessions_per_user {
            let then = match self.at_user_limit.as_str() {
                "replace_oldest" => "admitted in place of the user's oldest",
                _ => "refused",
            };
            out.push_str(&format!(
                " at most {n} sessions per user (a new one beyond is {then});"
            ));
        }
        out.push_str(&format!(
            " {} seats reserved, {} of them not taken\n",
            self.reserved, self.unfilled
        ));
        for g in &self.groups {
            let max = g.max.map_or("-".to_string(), |m| m.to_string());
            out.push_str(&format!(
                "  group {}: reserved {}, max {max}, in use {}\n",
                g.name, g.reserved, g.in_use
            ));
        }
        if let Some(w) = &self.warning {
            out.push_str(&format!("** WARNING: {w} **\n"));
        }
        out
    }
}

/// How many denials status keeps.
pub const RECENT_DENIALS: usize = 50;
/// How many days of denial counts status keeps.
pub const DENIAL_DAYS: usize = 31;

/// One denied admission, as the hook asked for it (untrusted text:
/// rendered through `text::shown`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub at: DateTime<Utc>,
    pub user: String,
    pub remote: String,
    /// The protocol's name of the reason (`cap_reached`, ...).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayDenials {
    pub day: chrono::NaiveDate,
    pub by_reason: BTreeMap<String, u64>,
}

/// A license in force and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseExpiry {
    pub id: String,
    pub product: String,
    pub seats: u32,
    pub expiry: DateTime<Utc>,
}

/// Upper bounds (microseconds) of the admission latency buckets; one more
/// bucket counts what is above the last.
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
];

/// Admission decisions since the daemon started: a few counters, cheap
/// enough to bump under the state's lock on every admit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionStats {
    /// New sessions admitted (repeated admits of a held key not counted).
    pub admitted: u64,
    /// Denials by reason (`cap_reached`, ...; the protocol's names).
    pub denied: BTreeMap<String, u64>,
    /// How long decisions took, from the request read to the decision
    /// recorded (finding the VPN server, the lock, the journal write).
    pub latency: Latency,
}

/// A latency histogram in fixed buckets (not cumulative: `counts[i]` are
/// the decisions in `(bounds_us[i-1], bounds_us[i]]`, the last one above
/// every bound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub bounds_us: Vec<u64>,
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl Default for AdmissionStats {
    fn default() -> Self {
        AdmissionStats {
            admitted: 0,
            denied: BTreeMap::new(),
            latency: Latency {
                bounds_us: LATENCY_BOUNDS_US.to_vec(),
                counts: vec![0; LATENCY_BOUNDS_US.len() + 1],
                sum_us: 0,
            },
        }
    }
}

impl AdmissionStats {
    /// Counts one decision: admitted (a new session), denied for `reason`,
    /// or neither (a repeated admit); and how long it took.
    pub fn record(&mut self, admitted: bool, denied: Option<&str>, took: std::time::Duration) {
        if admitted {
            self.admitted += 1;
        }
        if let Some(reason) = denied {
            match self.denied.get_mut(reason) {
                Some(n) => *n += 1,
                None => {
                    self.denied.insert(reason.to_string(), 1);
                }
            }
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let l = &mut self.latency;
        let i = l.bounds_us.partition_point(|b| *b < us);
        if let Some(c) = l.counts.get_mut(i) {
            *c += 1;
        }
        l.sum_us = l.sum_us.saturating_add(us);
    }
}

impl Latency {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// How many rounds each background duty has finished: proof that the
/// daemon looked (a test, or an operator, can wait for the next one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rounds {
    /// Checks of the VPN server processes sessions live in.
    pub reap: u64,
    /// Reconciliations with the VPN servers' own lists (any outcome).
    pub reconcile: u64,
}

/// One shared pool as this gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub id: String,
    /// The license (bound or replica) that makes this gateway a member.
    pub license: String,
    /// The pool's seats, for all members together.
    pub seats: u32,
    /// Leased slices (false: a static `share`).
    pub leased: bool,
    /// The seats of the pool this gateway may use now.
    pub slice: u32,
    /// Pool sessions here (sessions beyond built-in + bound-license seats).
    pub in_use: u32,
    /// When the slice lease runs out (or ran out), on this gateway's clock.
    pub lease_expires: Option<DateTime<Utc>>,
    pub lease_valid: bool,
    /// The other gateways drawing from the pool.
    pub others: Vec<String>,
    /// When the slice last changed in this run (license clock) and how:
    /// `granted|grown|shrunk|expired|withdrawn FROM -> TO`.
    #[serde(default)]
    pub changed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub change: Option<String>,
    /// Why the cloud granted less than this gateway wanted (its lease says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited: Option<Limit>,
}

fn render_pool(p: &PoolStatus, now: DateTime<Utc>) -> String {
    let lease = if !p.leased {
        "static share".to_string()
    } else {
        match (p.lease_expires, p.lease_valid) {
            (Some(t), true) => format!("lease until {}", when(t, now)),
            (Some(t), false) => format!("LEASE EXPIRED at {}: no new pool sessions", when(t, now)),
            (None, _) => "no lease yet: no pool sessions".to_string(),
        }
    };
    let lease = match p.limited.filter(|_| p.lease_valid) {
        Some(Limit::Quiet { until }) if until <= now => lease,
        Some(why) => format!("{lease}; {why}"),
        None => lease,
    };
    let others = if p.others.is_empty() {
        "-".to_string()
    } else {
        p.others.join(", ")
    };
    let mut out = format!(
        "pool {} ({} seats, license {}): slice {}, in use here {}; {lease}; other members: {others}\n",
        p.id, p.seats, p.license, p.slice, p.in_use
    );
    if let (Some(at), Some(change)) = (p.changed_at, &p.change) {
        out.push_str(&format!(
            "  slice last changed {}: {change}\n",
            when(at, now)
        ));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayPeak {
    pub day: chrono::NaiveDate,
    pub peak: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub key: String,
    pub user: String,
    pub remote: String,
    pub server: ServerKind,
    pub server_pid: u32,
    pub since: DateTime<Utc>,
    /// The group the VPN server reported (`[policy]`); empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let at = t.format("%Y-%m-%d %H:%M:%S");
    if t <= now {
        format!("{at} ({} ago)", human(now - t))
    } else {
        format!("{at} (in {})", human(t - now))
    }
}

/// The cloud lines of `seatgate status`.
fn render_cloud(c: &CloudStatus, now: DateTime<Utc>) -> String {
    let mut out = format!("cloud: {}\n", c.sync.url);
    let synced = match (c.sync.last_success, c.bundle_issued_at) {
        (Some(t), _) => when(t, now),
        (None, Some(issued)) => format!(
            "none since start; bundle in force issued {}",
            when(issued, now)
        ),
        (None, None) => "none since start; no bundle in force".into(),
    };
    out.push_str(&format!("  last sync: {synced}\n"));
    if let Some(e) = &c.sync.last_error {
        out.push_str(&format!(
            "  LAST ATTEMPT FAILED ({}; {} in a row) at {}: {}\n",
            e.kind.label(),
            c.sync.failures,
            when(e.at, now),
            e.message
        ));
    }
    if let Some(t) = c.sync.next_attempt {
        out.push_str(&format!("  next attempt: {}\n", when(t, now)));
    }
    if let Some(t) = c.bundle_not_after {
        out.push_str(&format!("  bundle runs out: {}\n", when(t, now)));
    }
    if let Some(t) = c.sync.last_report {
        out.push_str(&format!("  usage reported: {}\n", when(t, now)));
    }
    match &c.sync.stamp {
        Some(StampSeen::Refused { reason }) => {
            out.push_str(&format!("  signed time REFUSED (ignored): {reason}\n"));
        }
        Some(StampSeen::Missing) => {
            out.push_str("  signed time: none (the cloud does not stamp its answers)\n");
        }
        _ => {}
    }
    if let Some(a) = &c.alarm {
        let tag = match a.severity {
            Severity::Error => "** ERROR",
            Severity::Warning => "** WARNING",
        };
        out.push_str(&format!("{tag}: {} **\n", a.message));
    }
    out
}

/// "OVER CAP BY 2: disconnecting the 2 newest sessions at 12:01:30 (in
/// 25 s): k1, k2"; new sessions are denied meanwhile.
pub fn render_plan(p: &Plan, now: DateTime<Utc>) -> String {
    let order = format!("{:?}", p.order).to_lowercase();
    let mut line = format!("OVER CAP BY {}: ", p.over_by);
    if !p.keys.is_empty() {
        let when = if p.due() {
            "now".to_string()
        } else {
            let left = human(p.at - now);
            format!("at {} (in {left})", p.at.format("%H:%M:%S"))
        };
        let keys: Vec<String> = p.keys.iter().map(|k| shown(k)).collect();
        line.push_str(&format!(
            "disconnecting the {} {order} sessions {when}: {}; ",
            p.keys.len(),
            keys.join(", ")
        ));
    }
    if p.lost > 0 {
        line.push_str(&format!(
            "{} seats held by lost sessions cannot be disconnected; ",
            p.lost
        ));
    }
    line.push_str("new sessions are denied");
    line
}

impl Status {
    /// The status as the daemon sent it (the `status` of its answer).
    pub fn from_json(json: serde_json::Value) -> serde_json::Result<Status> {
        let policy = PolicyStatus::from_json(&json["policy"]);
        let mut status: Status = serde_json::from_value(json)?;
        status.policy = policy;
        Ok(status)
    }

    pub fn build(
        device: &str,
        table: &Table,
        lic: &Licenses,
        cloud: Option<&SyncRecord>,
        now: DateTime<Utc>,
        slices: &BTreeMap<String, u32>,
        pools: Vec<PoolStatus>,
    ) -> Status {
        let cap = lic.entitlement.cap_with(now, slices);
        let total = cap.total();
        let in_use = table.in_use();
        let timeline = lic.entitlement.timeline(now);
        let mut sessions: Vec<SessionInfo> = table
            .sessions()
            .map(|s| SessionInfo {
                key: s.key.clone(),
                user: s.user.clone(),
                remote: s.remote.clone(),
                server: s.server.kind,
                server_pid: s.server.pid,
                since: s.since,
                group: s.group.clone(),
            })
            .collect();
        sessions.sort_by(|a, b| (a.since, &a.key).cmp(&(b.since, &b.key)));
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            device: device.into(),
            now,
            cap,
            cap_total: total,
            in_use,
            free: total.saturating_sub(in_use),
            over_cap_by: in_use.saturating_sub(total),
            over_cap: None,
            peak: table.peak,
            peak_at: table.peak_at,
            daily_peaks: table
                .daily_peaks
                .iter()
                .map(|(day, peak)| DayPeak {
                    day: *day,
                    peak: *peak,
                })
                .collect(),
            denials: table.denials,
            lost: table.lost,
            next_change: timeline.first().copied(),
            timeline,
            bundle: BundleInfo::of(lic, now),
            refused: lic.rejected.clone(),
            dropped: lic.dropped.clone(),
            warnings: lic.warnings.clone(),
            cloud: cloud.map(|r| CloudStatus {
                bundle_issued_at: lic.bundle().map(|b| b.issued_at),
                ..CloudStatus::build(r, lic.bundle().map(|b| b.not_after), now)
            }),
            pools,
            sessions,
            rounds: Rounds::default(),
            unanswered: 0,
            alert_level: 0,
            alerts: Thresholds::default(),
            license_warnings: notices(&lic.entitlement, now),
            recent_denials: Vec::new(),
            denials_by_reason: BTreeMap::new(),
            daily_denials: Vec::new(),
            admissions: AdmissionStats::default(),
            licenses: lic
                .entitlement
                .licenses
                .iter()
                .map(|l| LicenseExpiry {
                    id: l.id.clone(),
                    product: l.product.clone(),
                    seats: l.seats,
                    expiry: l.expiry(),
                })
                .collect(),
            policy: PolicyStatus::default(),
        }
    }

    /// The denial lines: counts by reason (since start, today) and the
    /// last few denials, newest first.
    fn render_denials(&self) -> String {
        let counts = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        if self.denials_by_reason.is_empty() {
            return out;
        }
        out.push_str(&format!(
            "denials since start: {}\n",
            counts(&self.denials_by_reason)
        ));
        let today = self.now.date_naive();
        if let Some(d) = self.daily_denials.iter().find(|d| d.day == today) {
            out.push_str(&format!("denials today: {}\n", counts(&d.by_reason)));
        }
        const SHOWN: usize = 10;
        let more = self.recent_denials.len().saturating_sub(SHOWN);
        let note = if more > 0 {
            format!(", {more} more in --json")
        } else {
            String::new()
        };
        out.push_str(&format!("last denials (newest first{note}):\n"));
        for d in self.recent_denials.iter().rev().take(SHOWN) {
            out.push_str(&format!(
                "  {}  {:<20} {:<18} {}\n",
                d.at.format("%Y-%m-%d %H:%M:%S"),
                shown(&d.user),
                shown(&d.remote),
                shown(&d.reason)
            ));
        }
        out
    }

    pub fn render_text(&self) -> String {
        let mut out = format!(
            "seatgate {} on {}: {} of {} seats in use, {} free\n",
            self.version, self.device, self.in_use, self.cap_total, self.free
        );
        out.push_str(&format!(
            "cap: {} built-in + {} licensed + {} pooled\n",
            self.cap.builtin, self.cap.licensed, self.cap.pooled
        ));
        if self.lost > 0 {
            let lost = if self.lost >= crate::admission::table::LOST_UNKNOWN {
                "an unknown number of".to_string()
            } else {
                self.lost.to_string()
            };
            out.push_str(&format!(
                "** DEGRADED: {lost} seats held by sessions lost with a damaged session snapshot; held until [[reconcile]] accounts for them or `seatgate evict --lost` **\n"
            ));
        }
        if self.alert_level > 0 {
            out.push_str(&format!(
                "** USAGE ALERT: at or above {} % of the cap ({} % now; ends {} points below) **\n",
                self.alert_level,
                crate::alerts::percent(self.in_use, self.cap_total),
                self.alerts.hysteresis
            ));
        }
        match &self.over_cap {
            Some(p) => out.push_str(&format!("** {} **\n", render_plan(p, self.now))),
            None if self.over_cap_by > 0 => out.push_str(&format!(
                "** OVER CAP BY {}: existing sessions drain, new ones are denied **\n",
                self.over_cap_by
            )),
            None => {}
        }
        out.push_str(&format!(
            "timeline: {}\n",
            describe_timeline(self.cap_total, &self.timeline)
        ));
        match &self.bundle {
            Some(b) if b.ran_out => out.push_str(&format!(
                "bundle: generation {} RAN OUT at {}: built-in seats only until a fresh bundle arrives\n",
                b.generation, b.not_after
            )),
            Some(b) => out.push_str(&format!(
                "bundle: generation {} issued {} ({} ago), valid until {}\n",
                b.generation,
                b.issued_at.format("%Y-%m-%d %H:%M"),
                human(chrono::Duration::seconds(b.age_secs)),
                b.not_after.format("%Y-%m-%d %H:%M UTC")
            )),
            None => out.push_str("bundle: none (built-in seats only)\n"),
        }
        if let Some(d) = &self.dropped {
            out.push_str(&format!("{}\n", shown(&d.message())));
        }
        if !self.refused.is_empty() {
            out.push_str("refused license records:\n");
            for r in &self.refused {
                out.push_str(&format!("  {}: {}\n", shown(&r.id), r.reason));
            }
        }
        let peak_at = self.peak_at.map_or(String::new(), |t| {
            format!(" at {}", t.format("%Y-%m-%d %H:%M:%S"))
        });
        out.push_str(&format!(
            "peak: {}{peak_at}; denials: {}\n",
            self.peak, self.denials
        ));
        if !self.daily_peaks.is_empty() {
            let days: Vec<String> = self
                .daily_peaks
                .iter()
                .rev()
                .take(7)
                .map(|d| format!("{} {}", d.day.format("%m-%d"), d.peak))
                .collect();
            out.push_str(&format!(
                "daily peaks (newest first): {}\n",
                days.join(", ")
            ));
        }
        out.push_str(&self.render_denials());
        if self.policy.max_sessions_per_user.is_some() || !self.policy.groups.is_empty() {
            out.push_str(&self.policy.render());
        }
        for p in &self.pools {
            out.push_str(&render_pool(p, self.now));
        }
        if let Some(c) = &self.cloud {
            out.push_str(&render_cloud(c, self.now));
        }
        for n in &self.license_warnings {
            out.push_str(&format!("license warning: {}\n", n.message));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        if !self.sessions.is_empty() {
            out.push_str(&format!(
                "\n{:<20} {:<18} {:<8} {:>8}  {:<20} {}\n",
                "USER", "REMOTE", "SERVER", "PID", "SINCE", "KEY"
            ));
            for s in &self.sessions {
                out.push_str(&format!(
                    "{:<20} {:<18} {:<8} {:>8}  {:<20} {}\n",
                    shown(&s.user),
                    shown(&s.remote),
                    format!("{:?}", s.server).to_lowercase(),
                    s.server_pid,
                    s.since.format("%Y-%m-%d %H:%M:%S"),
                    shown(&s.key)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::policy::{FailureKind, Outcome, Timing};
    use crate::license::model::tests::t;

    #[test]
    fn pool_lines_show_slice_usage_lease_and_members() {
        let now = t("2026-06-01T00:00:00Z");
        let pool = PoolStatus {
            id: "POOL-LIC-1".into(),
            license: "LIC-1".into(),
            seats: 150,
            leased: true,
            slice: 60,
            in_use: 37,
            lease_expires: Some(t("2026-06-01T00:05:00Z")),
            lease_valid: true,
            others: vec!["ESG-B2".into(), "ESG-C3".into()],
            changed_at: None,
            change: None,
            limited: None,
        };
        assert_eq!(
            render_pool(&pool, now),
            "pool POOL-LIC-1 (150 seats, license LIC-1): slice 60, in use here 37; lease until 2026-06-01 00:05:00 (in 5m 0s); other members: ESG-B2, ESG-C3\n"
        );
        let grown = PoolStatus {
            changed_at: Some(t("2026-05-31T23:59:30Z")),
            change: Some("grown 40 -> 60".into()),
            ..pool.clone()
        };
        assert!(render_pool(&grown, now).ends_with(
            "ESG-C3\n  slice last changed 2026-05-31 23:59:30 (30s ago): grown 40 -> 60\n"
        ));
        // Why the slice is small, while the lease says so and it holds.
        let quiet = |until| PoolStatus {
            slice: 0,
            limited: Some(Limit::Quiet { until }),
            ..pool.clone()
        };
        assert!(render_pool(&quiet(t("2026-06-01T00:04:00Z")), now).contains(
            "slice 0, in use here 37; lease until 2026-06-01 00:05:00 (in 5m 0s); cloud restarted: no new grants until 00:04:00 UTC; other"
        ));
        assert!(!render_pool(&quiet(now), now).contains("restarted"), "over");
        let held = PoolStatus {
            limited: Some(Limit::Held),
            ..pool.clone()
        };
        assert!(render_pool(&held, now)
            .contains("(in 5m 0s); waiting for seats other members still hold;"));
        let expired = PoolStatus {
            slice: 0,
            lease_valid: false,
            lease_expires: Some(t("2026-05-31T23:59:00Z")),
            ..pool.clone()
        };
        assert!(render_pool(&expired, now)
            .contains("LEASE EXPIRED at 2026-05-31 23:59:00 (1m 0s ago): no new pool sessions"));
        let none = PoolStatus {
            lease_expires: None,
            lease_valid: false,
            others: vec![],
            ..pool
        };
        assert!(
            render_pool(&none, now).ends_with("no lease yet: no pool sessions; other members: -\n")
        );
    }

    #[test]
    fn the_over_cap_plan_line_says_what_goes_and_when() {
        use crate::admission::over_cap::{Order, Plan};
        let now = t("2026-06-02T12:01:05Z");
        let mut p = Plan {
            order: Order::Newest,
            over_by: 2,
            at: t("2026-06-02T12:01:30Z"),
            in_ms: 25_000,
            keys: vec!["k2".into(), "k\u{1b}1".into()],
            lost: 0,
            counting: true,
        };
        assert_eq!(
            render_plan(&p, now),
            "OVER CAP BY 2: disconnecting the 2 newest sessions at 12:01:30 (in 25s): k2, k\\u{1b}1; new sessions are denied"
        );
        p.in_ms = 0;
        p.lost = 1;
        p.keys.pop();
        p.order = Order::Oldest;
        assert_eq!(
            render_plan(&p, now),
            "OVER CAP BY 2: disconnecting the 1 oldest sessions now: k2; 1 seats held by lost sessions cannot be disconnected; new sessions are denied"
        );
    }

    #[test]
    fn refused_records_are_in_status_and_its_text() {
        use crate::license::in_force::tests::{rules, signed_with};
        use crate::license::model::tests::spc;
        use crate::license::License;
        let now = t("2026-06-02T00:00:00Z");
        let licenses = vec![
            spc("L1", 20, 365, "2026-01-10T00:00:00Z"),
            License {
                product: "spcc".into(),
                ..spc("X1", 20, 365, "2026-01-10T00:00:00Z")
            },
            spc("L3", 0, 365, "2026-01-10T00:00:00Z"),
        ];
        let text = signed_with(1, licenses, 1);
        let mut lic = Licenses::builtin_only(2);
        lic.offer(&rules(), &text, now, std::time::Instant::now())
            .unwrap();
        let status = Status::build(
            "ESG-A1",
            &Table::default(),
            &lic,
            None,
            now,
            &BTreeMap::new(),
            vec![],
        );
        assert_eq!(status.cap_total, 22);
        let ids: Vec<&str> = status.refused.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["X1", "L3"]);
        let text = status.render_text();
        assert!(
            text.contains("refused license records:\n  X1: has product \"spcc\""),
            "{text}"
        );
        assert!(text.contains("\n  L3: has 0 seats\n"), "{text}");
        // Old clients' JSON (no `refused`) still parses, and it round-trips.
        let mut json = serde_json::to_value(&status).unwrap();
        let back = Status::from_json(json.clone()).unwrap();
        assert_eq!(back, status);
        json.as_object_mut().unwrap().remove("refused");
        let old: Status = serde_json::from_value(json).unwrap();
        assert!(old.refused.is_empty());
    }

    #[test]
    fn cloud_lines_say_what_failed_and_what_it_means() {
        let timing = Timing {
            poll: std::time::Duration::from_secs(900),
            max_backoff: std::time::Duration::from_secs(3600),
        };
        let mut rec = SyncRecord::new("https://cloud.example/");
        rec.record(&Outcome::Synced, timing, t("2026-06-01T00:00:00Z"), 0);
        let now = t("2026-06-01T01:00:00Z");
        let failed = Outcome::Failed {
            kind: FailureKind::Unauthorized,
            message: "the cloud refused this gateway (HTTP 403)".into(),
            retry_after: None,
        };
        rec.record(&failed, timing, now, 0);
        let c = CloudStatus::build(&rec, Some(t("2026-06-08T00:00:00Z")), now);
        let text = render_cloud(&c, now);
        let want = [
            "cloud: https://cloud.example/",
            "  last sync: 2026-06-01 00:00:00 (1h 0m ago)",
            "  LAST ATTEMPT FAILED (unauthorized; 1 in a row) at 2026-06-01 01:00:00 (0s ago): the cloud refused this gateway (HTTP 403)",
            "  next attempt: 2026-06-01 01:54:00 (in 54m 0s)",
            "  bundle runs out: 2026-06-08 00:00:00 (in 6d 23h)",
            "** WARNING: no sync since 2026-06-01 00:00:00 UTC; licensed seats hold until the bundle runs out at 2026-06-08 00:00:00 UTC (in 6d 23h) **",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want, "{text}");
        let mut c = c;
        c.sync.stamp = Some(StampSeen::Refused {
            reason: "time stamp signature does not verify against any trusted key".into(),
        });
        let text = render_cloud(&c, now);
        assert!(
            text.contains(
                "\n  signed time REFUSED (ignored): time stamp signature does not verify"
            ),
            "{text}"
        );
        c.sync.stamp = Some(StampSeen::Verified { at: now });
        assert!(!render_cloud(&c, now).contains("signed time"));
    }

    #[test]
    fn the_policy_shows_each_group_its_use_and_a_cap_below_the_reservations() {
        use crate::admission::protocol::{AdmitRequest, ServerRef};
        use crate::admission::table::ServerId;
        use crate::config::policy::Group;
        let policy = SeatPolicy::new(
            Some(2),
            crate::config::policy::AtUserLimit::Refuse,
            vec![
                Group {
                    name: "oncall".into(),
                    users: vec!["alice".into(), "bob".into()],
                    groups: vec![],
                    reserved: 2,
                    max: None,
                },
                Group {
                    name: "contractors".into(),
                    users: vec![],
                    groups: vec!["ext".into()],
                    reserved: 0,
                    max: Some(5),
                },
            ],
        );
        assert_eq!(
            PolicyStatus::build(&SeatPolicy::default(), &Table::default(), 2),
            PolicyStatus::default()
        );
        let mut table = Table::default();
        let server = ServerId {
            kind: ServerKind::Ocserv,
            pid: 1,
            start_ticks: 1,
            ns_pid: 1,
        };
        for (key, user, group) in [("1", "alice", ""), ("2", "x", "ext"), ("3", "y", "ext")] {
            let req = AdmitRequest {
                key: key.into(),
                user: user.into(),
                server: ServerRef {
                    kind: ServerKind::Ocserv,
                    pid: 1,
                },
                remote: String::new(),
                group: group.into(),
            };
            table.admit(&req, server, 32, &policy, t("2026-11-27T12:00:00Z"));
        }
        let p = PolicyStatus::build(&policy, &table, 32);
        assert_eq!((p.reserved, p.unfilled, p.warning.clone()), (2, 1, None));
        let text = p.render();
        assert!(text.contains("at most 2 sessions per user (a new one beyond is refused); 2 seats reserved, 1 of them not taken"), "{text}");
        assert!(
            text.contains("  group oncall: reserved 2, max -, in use 1\n"),
            "{text}"
        );
        assert!(
            text.contains("  group contractors: reserved 0, max 5, in use 2\n"),
            "{text}"
        );
        // The cap fell to 1, below the 2 reserved.
        let p = PolicyStatus::build(&policy, &table, 1);
        let w = p.warning.clone().unwrap();
        assert!(
            w.starts_with("the cap in force (1) is below the 2 seats reserved"),
            "{w}"
        );
        assert!(p.render().contains("** WARNING: the cap in force (1)"));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["groups"][1]["in_use"], 2);
        assert_eq!(json["at_user_limit"], "refuse");
        assert_eq!(PolicyStatus::from_json(&json), p, "read back as written");
        assert_eq!(
            PolicyStatus::from_json(&serde_json::Value::Null),
            PolicyStatus::default()
        );
    }
}
