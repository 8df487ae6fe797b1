//! The denials since the daemon started: the last `RECENT_DENIALS` of them
//! and counts by reason, in all and per UTC day, for status. In memory
//! only (the journal keeps the total; the log keeps each one).

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, NaiveDate, Utc};

use crate::status::{DayDenials, Denial, Status, DENIAL_DAYS, RECENT_DENIALS};

#[derive(Debug, Default)]
pub struct Denials {
    recent: VecDeque<Denial>,
    by_reason: BTreeMap<String, u64>,
    by_day: BTreeMap<NaiveDate, BTreeMap<String, u64>>,
}

impl Denials {
    pub fn record(&mut self, at: DateTime<Utc>, user: &str, remote: &str, reason: &str) {
        if self.recent.len() == RECENT_DENIALS {
            self.recent.pop_front();
        }
        self.recent.push_back(Denial {
            at,
            user: user.into(),
            remote: remote.into(),
            reason: reason.into(),
        });
        *self.by_reason.entry(reason.into()).or_default() += 1;
        *self
            .by_day
            .entry(at.date_naive())
            .or_default()
            .entry(reason.into())
            .or_default() += 1;
        while self.by_day.len() > DENIAL_DAYS {
            self.by_day.pop_first();
        }
    }

    /// Puts the denials into a status.
    pub fn fill(&self, status: &mut Status) {
        status.recent_denials = self.recent.iter().cloned().collect();
        status.denials_by_reason = self.by_reason.clone();
        status.daily_denials = self
            .by_day
            .iter()
            .map(|(day, by_reason)| DayDenials {
                day: *day,
                by_reason: by_reason.clone(),
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::tests::t;

    #[test]
    fn keeps_the_last_denials_and_counts_by_reason_and_day() {
        let mut d = Denials::default();
        for i in 0..60 {
            let at = t("2026-03-01T23:59:00Z") + chrono::Duration::minutes(i);
            let reason = if i % 3 == 0 {
                "unknown_server"
            } else {
                "cap_reached"
            };
            d.record(at, &format!("u{i}"), "192.0.2.1", reason);
        }
        assert_eq!(d.recent.len(), RECENT_DENIALS);
        assert_eq!(d.recent.front().unwrap().user, "u10");
        assert_eq!(d.recent.back().unwrap().user, "u59");
        assert_eq!(d.by_reason["cap_reached"], 40);
        assert_eq!(d.by_reason["unknown_server"], 20);
        let days: Vec<_> = d.by_day.keys().map(|k| k.to_string()).collect();
        assert_eq!(days, ["2026-03-01", "2026-03-02"]);
        assert_eq!(d.by_day.values().next().unwrap()["unknown_server"], 1);
        for i in 0..40 {
            d.record(
                t("2026-04-01T00:00:00Z") + chrono::Duration::days(i),
                "x",
                "y",
                "over_cap",
            );
        }
        assert_eq!(d.by_day.len(), DENIAL_DAYS);
    }
}
