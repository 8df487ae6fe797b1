//! Usage alerts: thresholds in percent of the seat cap, with hysteresis.
//! The level is the highest threshold reached; it goes up as soon as usage
//! reaches a threshold and comes down only once usage is `hysteresis`
//! points below it, so a gateway hovering at a threshold logs once, not at
//! every connect and disconnect. Pure: usage and cap are arguments.

use serde::{Deserialize, Serialize};

pub const DEFAULT_THRESHOLDS: [u8; 3] = [80, 90, 100];
pub const DEFAULT_HYSTERESIS: u8 = 5;

/// The `[alerts]` settings, validated (`validate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Percent of the cap, strictly increasing, each 1..=100.
    pub thresholds: Vec<u8>,
    /// Points below a threshold usage must fall before its alert ends.
    pub hysteresis: u8,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            hysteresis: DEFAULT_HYSTERESIS,
        }
    }
}

/// Why `[alerts]` values are refused (key, message).
pub fn validate(thresholds: &[i64], hysteresis: i64) -> Result<Thresholds, (&'static str, String)> {
    if thresholds.is_empty() {
        return Err((
            "alerts.thresholds",
            "empty; give at least one percentage, e.g. [80, 90, 100], or leave the key out".into(),
        ));
    }
    if let Some(t) = thresholds.iter().find(|t| !(1..=100).contains(*t)) {
        return Err((
            "alerts.thresholds",
            format!("{t} is not a percentage of the cap from 1 to 100"),
        ));
    }
    if thresholds.windows(2).any(|w| w[0] >= w[1]) {
        return Err((
            "alerts.thresholds",
            "must be in increasing order without repeats, e.g. [80, 90, 100]".into(),
        ));
    }
    if !(0..=50).contains(&hysteresis) {
        return Err((
            "alerts.hysteresis",
            format!("{hysteresis} is not a number of percentage points from 0 to 50"),
        ));
    }
    Ok(Thresholds {
        thresholds: thresholds.iter().map(|t| *t as u8).collect(),
        hysteresis: hysteresis as u8,
    })
}

/// `in_use` is at least `pct` % of `cap` (exact, no rounding). A cap of 0
/// counts as full: every session is denied.
fn at_least(in_use: u32, cap: u32, pct: i64) -> bool {
    if cap == 0 {
        return pct <= 100;
    }
    i64::from(in_use) * 100 >= pct * i64::from(cap)
}

/// Usage in whole percent of the cap, rounded down (100 for a cap of 0).
pub fn percent(in_use: u32, cap: u32) -> u32 {
    if cap == 0 {
        return 100;
    }
    let p = u64::from(in_use) * 100 / u64::from(cap);
    u32::try_from(p).unwrap_or(u32::MAX)
}

impl Thresholds {
    /// The level after `current` for this usage: the highest threshold
    /// reached, or a higher one held until usage falls `hysteresis` points
    /// below it. 0: no alert.
    pub fn level(&self, current: u8, in_use: u32, cap: u32) -> u8 {
        let h = i64::from(self.hysteresis);
        self.thresholds
            .iter()
            .copied()
            .filter(|t| {
                let t64 = i64::from(*t);
                at_least(in_use, cap, t64) || (*t <= current && at_least(in_use, cap, t64 - h))
            })
            .max()
            .unwrap_or(0)
    }

    /// The highest threshold: the alert at which the first denial is an error.
    pub fn top(&self) -> u8 {
        self.thresholds.last().copied().unwrap_or(100)
    }
}

/// A change of the alert level, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Usage reached `to` (from the lower level `from`).
    Up { from: u8, to: u8 },
    /// Usage fell `hysteresis` points below `from`; the level is now `to`.
    Down { from: u8, to: u8 },
}

/// The alert level over time: the daemon keeps one and feeds it usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracker {
    pub level: u8,
    /// A denial for want of seats was logged as an error since the level
    /// last reached the top threshold.
    denial_logged: bool,
}

impl Tracker {
    /// Feeds the usage now; returns the change of level, if any.
    pub fn update(&mut self, t: &Thresholds, in_use: u32, cap: u32) -> Option<Change> {
        let from = self.level;
        let to = t.level(from, in_use, cap);
        self.level = to;
        if to < t.top() {
            self.denial_logged = false;
        }
        match to.cmp(&from) {
            std::cmp::Ordering::Greater => Some(Change::Up { from, to }),
            std::cmp::Ordering::Less => Some(Change::Down { from, to }),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// A session was denied for want of seats: true for the first such
    /// denial since the level last came down from the top threshold (it
    /// is logged as an error; the ones after it are not).
    pub fn denied_at_cap(&mut self) -> bool {
        !std::mem::replace(&mut self.denial_logged, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_empty_unsorted_and_out_of_range() {
        assert_eq!(validate(&[80, 90, 100], 5), Ok(Thresholds::default()));
        assert!(validate(&[], 5).unwrap_err().1.contains("empty"));
        assert!(validate(&[90, 80], 5).unwrap_err().1.contains("increasing"));
        assert!(validate(&[80, 80], 5).unwrap_err().1.contains("increasing"));
        assert!(validate(&[80, 101], 5).unwrap_err().1.contains("101"));
        assert!(validate(&[0, 50], 5).unwrap_err().1.contains("0 is not"));
        assert_eq!(validate(&[80], 51).unwrap_err().0, "alerts.hysteresis");
        assert_eq!(validate(&[80], -1).unwrap_err().0, "alerts.hysteresis");
        assert!(validate(&[100], 0).is_ok());
    }

    /// Usage against a cap of 20 (5 % a seat), default thresholds.
    #[test]
    fn levels_go_up_at_once_and_down_past_the_hysteresis() {
        let t = Thresholds::default();
        let mut tr = Tracker::default();
        let steps: [(u32, Option<Change>, u8); 12] = [
            (15, None, 0),                                  // 75 %
            (16, Some(Change::Up { from: 0, to: 80 }), 80), // 80 %
            (15, None, 80),                                 // 75 %: not below 75
            (16, None, 80),
            (14, Some(Change::Down { from: 80, to: 0 }), 0), // 70 %
            (19, Some(Change::Up { from: 0, to: 90 }), 90),  // 95 %: skips 80
            (20, Some(Change::Up { from: 90, to: 100 }), 100),
            (19, None, 100),                                    // 95 %: held
            (18, Some(Change::Down { from: 100, to: 90 }), 90), // 90 %
            (17, None, 90),                                     // 85 %: held
            (16, Some(Change::Down { from: 90, to: 80 }), 80),  // 80 %
            (0, Some(Change::Down { from: 80, to: 0 }), 0),
        ];
        for (i, (in_use, change, level)) in steps.into_iter().enumerate() {
            assert_eq!(tr.update(&t, in_use, 20), change, "step {i}: {in_use}");
            assert_eq!(tr.level, level, "step {i}");
        }
    }

    #[test]
    fn a_cap_drop_raises_the_level_and_a_zero_cap_is_full() {
        let t = Thresholds::default();
        assert_eq!(t.level(0, 12, 32), 0);
        assert_eq!(t.level(0, 12, 12), 100);
        assert_eq!(t.level(0, 30, 12), 100, "over the cap");
        assert_eq!(t.level(0, 0, 0), 100);
        assert_eq!(t.level(0, 0, 2), 0);
        // Rounding: 26 of 32 is 81.25 %, 25 of 32 is 78.1 %.
        assert_eq!(t.level(0, 26, 32), 80);
        assert_eq!(t.level(0, 25, 32), 0);
        assert_eq!(percent(26, 32), 81);
        assert_eq!(percent(0, 0), 100);
    }

    #[test]
    fn the_first_denial_at_the_top_is_flagged_once_per_episode() {
        let t = Thresholds::default();
        let mut tr = Tracker::default();
        tr.update(&t, 20, 20);
        assert!(tr.denied_at_cap());
        assert!(!tr.denied_at_cap());
        tr.update(&t, 19, 20); // 95 %: still the top level
        assert!(!tr.denied_at_cap());
        tr.update(&t, 18, 20); // down to 90
        tr.update(&t, 20, 20);
        assert!(tr.denied_at_cap());
    }
}
