//! What each pool slice did, from one look at the gateway to the next:
//! granted, grown, shrunk, expired, or withdrawn (share undone). Pure; the
//! pool loop logs each change and hands it to status.

use super::demand::PoolSeen;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A lease where this run had none (first, or after an expiry).
    Granted,
    Grown,
    Shrunk,
    /// The lease ran out without a new one.
    Expired,
    /// The share was undone: this gateway is no longer a member.
    Withdrawn,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Granted => "granted",
            Kind::Grown => "grown",
            Kind::Shrunk => "shrunk",
            Kind::Expired => "expired",
            Kind::Withdrawn => "withdrawn",
        }
    }
}

/// One change of a pool's slice: seats `from` -> `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub pool: String,
    pub kind: Kind,
    pub from: u32,
    pub to: u32,
}

impl Change {
    /// How status shows it: `grown 40 -> 60`.
    pub fn describe(&self) -> String {
        format!("{} {} -> {}", self.kind.as_str(), self.from, self.to)
    }
}

/// The slices seen at the last look (None: no lease yet in this run).
#[derive(Debug, Default)]
pub struct Watch {
    last: Vec<(String, Option<u32>)>,
}

impl Watch {
    /// The changes since the last look. A pool gone from the view
    /// (forgotten once drained) is dropped quietly.
    pub fn observe(&mut self, pools: &[PoolSeen]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut next = Vec::with_capacity(pools.len());
        for p in pools {
            let pool = &p.report.pool;
            let before = self.last.iter().find(|l| l.0 == *pool).and_then(|l| l.1);
            let kind = match (before, p.slice) {
                (None, Some(_)) => Some(Kind::Granted),
                (Some(0), Some(b)) if b > 0 => Some(Kind::Granted),
                (Some(a), Some(b)) if b > a => Some(Kind::Grown),
                (Some(a), Some(b)) if b < a => Some(Kind::Shrunk),
                (Some(a), None) if a > 0 && p.member => Some(Kind::Expired),
                (Some(a), None) if a > 0 => Some(Kind::Withdrawn),
                _ => None,
            };
            if let Some(kind) = kind {
                changes.push(Change {
                    pool: pool.clone(),
                    kind,
                    from: before.unwrap_or(0),
                    to: p.slice.unwrap_or(0),
                });
            }
            // An expired or withdrawn slice is 0 until a lease comes again.
            let now = p.slice.or(before.map(|_| 0));
            next.push((pool.clone(), now));
        }
        self.last = next;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::wire::PoolReport;

    fn seen(slice: Option<u32>, member: bool) -> PoolSeen {
        PoolSeen {
            report: PoolReport {
                pool: "P".into(),
                in_use: 0,
                wanted: 4,
                held_epoch: None,
            },
            member,
            slice,
            expires: None,
            asked: None,
            limited: None,
        }
    }

    #[test]
    fn every_slice_change_is_seen_once() {
        let mut w = Watch::default();
        type Step = (Option<u32>, bool, Option<(Kind, u32, u32)>);
        let steps: Vec<Step> = vec![
            (None, true, None),
            (Some(40), true, Some((Kind::Granted, 0, 40))),
            (Some(40), true, None),
            (Some(60), true, Some((Kind::Grown, 40, 60))),
            (Some(2), true, Some((Kind::Shrunk, 60, 2))),
            (None, true, Some((Kind::Expired, 2, 0))),
            (None, true, None),
            (Some(0), true, None),
            (Some(114), true, Some((Kind::Granted, 0, 114))),
            (None, false, Some((Kind::Withdrawn, 114, 0))),
            (None, false, None),
        ];
        for (i, (slice, member, want)) in steps.into_iter().enumerate() {
            let got = w.observe(&[seen(slice, member)]);
            let got: Vec<_> = got.iter().map(|c| (c.kind, c.from, c.to)).collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "step {i}");
        }
        // A first lease of 0 seats is a grant too (the cloud gave nothing).
        let mut w = Watch::default();
        let got = w.observe(&[seen(Some(0), true)]);
        assert_eq!(got[0].kind, Kind::Granted);
        // Forgotten pools leave quietly.
        assert!(w.observe(&[]).is_empty());
    }
}
