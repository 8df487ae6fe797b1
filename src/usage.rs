//! Usage history: the most seats in use per hour (7 days) and per UTC day
//! (400 days), with the cap at that peak and the denials, in two bounded
//! rings; and its terminal chart. Pure: the instant, the count and the cap
//! are arguments. The daemon feeds it at every admission and denial and on
//! its minute tick, and keeps it in `usage.json` in the state directory.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};

/// Hourly buckets kept: 7 days.
pub const HOURS: usize = 7 * 24;
/// Daily buckets kept.
pub const DAYS: usize = 400;
/// The file format's version (`format` in `usage.json`).
pub const FORMAT: u32 = 1;

/// One hour or one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Where the hour or the day starts (UTC).
    pub start: DateTime<Utc>,
    /// The most seats in use at once (seen at each admission, denial and
    /// the daemon's minute tick).
    pub peak: u32,
    /// The seat cap when that peak was first reached.
    pub cap: u32,
    /// Admissions refused in it (any reason).
    pub denials: u64,
}

/// The two rings, oldest bucket first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub format: u32,
    pub hours: VecDeque<Bucket>,
    pub days: VecDeque<Bucket>,
}

/// Which ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Hour,
    Day,
}

impl Span {
    fn length(self) -> Duration {
        match self {
            Span::Hour => Duration::hours(1),
            Span::Day => Duration::days(1),
        }
    }

    fn keep(self) -> usize {
        match self {
            Span::Hour => HOURS,
            Span::Day => DAYS,
        }
    }

    /// The start of the bucket holding `t`.
    pub fn start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        t.duration_trunc(self.length()).unwrap_or(t)
    }
}

impl History {
    pub fn new() -> History {
        History {
            format: FORMAT,
            ..History::default()
        }
    }

    pub fn ring(&self, span: Span) -> &VecDeque<Bucket> {
        match span {
            Span::Hour => &self.hours,
            Span::Day => &self.days,
        }
    }

    /// Records `in_use` seats against `cap` at `now` (and one denial when
    /// `denied`). Returns whether anything changed (what is worth writing).
    pub fn record(&mut self, now: DateTime<Utc>, in_use: u32, cap: u32, denied: bool) -> bool {
        let hour = bump(&mut self.hours, Span::Hour, now, in_use, cap, denied);
        let day = bump(&mut self.days, Span::Day, now, in_use, cap, denied);
        hour || day
    }

    /// Reads `usage.json`. What cannot be trusted in a file that parses
    /// (buckets out of order, misaligned, too many) is dropped, so a file
    /// from elsewhere cannot grow the rings past their bounds.
    pub fn parse(text: &str) -> Result<History, serde_json::Error> {
        let mut h: History = serde_json::from_str(text)?;
        h.format = FORMAT;
        for (ring, span) in [(&mut h.hours, Span::Hour), (&mut h.days, Span::Day)] {
            let mut kept: VecDeque<Bucket> = VecDeque::with_capacity(span.keep());
            for b in ring.drain(..) {
                let aligned = span.start(b.start) == b.start;
                if aligned && kept.back().is_none_or(|last| last.start < b.start) {
                    kept.push_back(b);
                }
            }
            while kept.len() > span.keep() {
                kept.pop_front();
            }
            *ring = kept;
        }
        Ok(h)
    }

    /// The buckets of the last `count` hours or days up to `now`, oldest
    /// first, with None where there is no bucket (the daemon was not
    /// running).
    pub fn rows(&self, span: Span, now: DateTime<Utc>, count: usize) -> Vec<Row> {
        let last = span.start(now);
        let ring = self.ring(span);
        (0..count)
            .rev()
            .filter_map(|back| {
                let start = last - span.length() * i32::try_from(back).ok()?;
                let bucket = ring.iter().rev().find(|b| b.start == start).copied();
                Some(Row { start, bucket })
            })
            .collect()
    }

    /// The history trimmed to the last `hours` hours and `days` days.
    pub fn recent(&self, now: DateTime<Utc>, hours: usize, days: usize) -> History {
        let since = |span: Span, n: usize| {
            let n = i32::try_from(n.min(span.keep())).unwrap_or(0);
            span.start(now) - span.length() * (n - 1).max(0)
        };
        let keep = |ring: &VecDeque<Bucket>, span: Span, n: usize| -> VecDeque<Bucket> {
            if n == 0 {
                return VecDeque::new();
            }
            let from = since(span, n);
            ring.iter().filter(|b| b.start >= from).copied().collect()
        };
        History {
            format: FORMAT,
            hours: keep(&self.hours, Span::Hour, hours),
            days: keep(&self.days, Span::Day, days),
        }
    }
}

/// What the `usage` request answers: the history and the seats now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub now: DateTime<Utc>,
    pub cap: u32,
    pub in_use: u32,
    #[serde(flatten)]
    pub history: History,
}

impl Report {
    /// The chart's rows: the history's, where the current hour or day,
    /// before its first bucket (the daemon records one within a minute),
    /// shows the seats in use now.
    pub fn rows(&self, span: Span, count: usize) -> Vec<Row> {
        let mut rows = self.history.rows(span, self.now, count);
        if let Some(last) = rows.last_mut().filter(|r| r.bucket.is_none()) {
            last.bucket = Some(Bucket {
                start: last.start,
                peak: self.in_use,
                cap: self.cap,
                denials: 0,
            });
        }
        rows
    }
}

/// One row of the chart: an hour or a day, and its bucket if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub start: DateTime<Utc>,
    pub bucket: Option<Bucket>,
}

fn bump(
    ring: &mut VecDeque<Bucket>,
    span: Span,
    now: DateTime<Utc>,
    in_use: u32,
    cap: u32,
    denied: bool,
) -> bool {
    let start = span.start(now);
    // A clock behind the newest bucket (a file from a clock set ahead):
    // count into the newest one rather than reorder the ring.
    let open = match ring.back_mut() {
        Some(last) if last.start >= start => last,
        _ => {
            ring.push_back(Bucket {
                start,
                peak: in_use,
                cap,
                denials: u64::from(denied),
            });
            let oldest = start - span.length() * i32::try_from(span.keep()).unwrap_or(i32::MAX);
            while ring.len() > span.keep() || ring.front().is_some_and(|b| b.start <= oldest) {
                ring.pop_front();
            }
            return true;
        }
    };
    let mut changed = false;
    if in_use > open.peak {
        open.peak = in_use;
        open.cap = cap;
        changed = true;
    }
    if denied {
        open.denials += 1;
        changed = true;
    }
    changed
}

/// How the chart is drawn.
#[derive(Debug, Clone, Copy)]
pub struct ChartStyle {
    /// Columns of the bar (the cap's length).
    pub width: usize,
    /// ANSI colours (a terminal only).
    pub colour: bool,
}

/// The chart of `rows`: one line per hour or day, a bar of the peak
/// against the cap, the numbers and the denials.
pub fn chart(title: &str, span: Span, rows: &[Row], style: ChartStyle) -> String {
    let mut out = format!("{title}\n");
    for row in rows {
        let label = match span {
            Span::Hour => row.start.format("%m-%d %H:00").to_string(),
            Span::Day => row.start.format("%Y-%m-%d").to_string(),
        };
        let Some(b) = row.bucket else {
            out.push_str(&format!(
                "{label:<11}  {:>9}  (no data: the daemon was not running)\n",
                "-"
            ));
            continue;
        };
        let bar = bar(b.peak, b.cap, style);
        let denied = if b.denials > 0 {
            format!("  {} denied", b.denials)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{label:<11}  {:>9}  {bar}{denied}\n",
            format!("{}/{}", b.peak, b.cap)
        ));
    }
    out
}

/// `[#####.....]`: the peak's share of the cap, full (and marked) at or
/// above it; green, yellow from 80 %, red at the cap when in colour.
fn bar(peak: u32, cap: u32, style: ChartStyle) -> String {
    let w = style.width.max(1);
    let filled = if cap == 0 {
        if peak > 0 {
            w
        } else {
            0
        }
    } else {
        let f = (u64::from(peak) * w as u64).div_ceil(u64::from(cap));
        usize::try_from(f).unwrap_or(w).min(w)
    };
    let mut body = "#".repeat(filled);
    body.push_str(&".".repeat(w - filled));
    let full = peak >= cap;
    let mark = if peak > cap { "!" } else { "" };
    if !style.colour {
        return format!("[{body}]{mark}");
    }
    let colour = if full {
        "31"
    } else if u64::from(peak) * 5 >= u64::from(cap) * 4 {
        "33"
    } else {
        "32"
    };
    format!("[\x1b[{colour}m{body}\x1b[0m]{mark}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn record_keeps_the_peak_its_cap_and_denials_per_hour_and_day() {
        let mut h = History::new();
        assert!(h.record(t("2026-06-01T10:05:00Z"), 3, 10, false));
        assert!(h.record(t("2026-06-01T10:20:00Z"), 5, 12, false));
        assert!(
            !h.record(t("2026-06-01T10:30:00Z"), 4, 8, false),
            "below the peak: no change"
        );
        assert!(h.record(t("2026-06-01T10:40:00Z"), 5, 5, true));
        assert!(h.record(t("2026-06-01T11:00:00Z"), 2, 5, false));
        let hours: Vec<(String, u32, u32, u64)> = h
            .hours
            .iter()
            .map(|b| (b.start.to_rfc3339(), b.peak, b.cap, b.denials))
            .collect();
        assert_eq!(
            hours,
            [
                ("2026-06-01T10:00:00+00:00".into(), 5, 12, 1),
                ("2026-06-01T11:00:00+00:00".into(), 2, 5, 0),
            ]
        );
        assert_eq!(h.days.len(), 1);
        assert_eq!(
            (h.days[0].peak, h.days[0].cap, h.days[0].denials),
            (5, 12, 1)
        );
    }

    #[test]
    fn rings_stay_bounded_by_count_and_age() {
        let mut h = History::new();
        let start = t("2025-01-01T00:00:00Z");
        for i in 0..(DAYS as i64 + 30) * 24 {
            h.record(start + Duration::hours(i), (i % 7) as u32, 10, i % 5 == 0);
        }
        assert_eq!(h.hours.len(), HOURS);
        assert_eq!(h.days.len(), DAYS);
        // A long stop: buckets older than the ring's span go at the next record.
        let later = start + Duration::days(DAYS as i64 + 30 + 3);
        h.record(later, 1, 10, false);
        // Now is 00:00 three days after the last record at 23:00: of the
        // hours before, those after now - 168 h stay (23 + 3 * 24).
        assert_eq!(
            h.hours.len(),
            1 + 23 + 3 * 24,
            "only the last 7 days of hours"
        );
        let text = serde_json::to_string(&h).unwrap();
        assert!(text.len() < 64 * 1024, "bounded file: {} bytes", text.len());
        assert_eq!(History::parse(&text).unwrap(), h);
    }

    #[test]
    fn a_clock_behind_the_newest_bucket_counts_into_it() {
        let mut h = History::new();
        h.record(t("2026-06-02T10:00:00Z"), 1, 5, false);
        h.record(t("2026-06-01T09:00:00Z"), 3, 5, true);
        assert_eq!(h.hours.len(), 1);
        assert_eq!((h.hours[0].peak, h.hours[0].denials), (3, 1));
    }

    #[test]
    fn parse_drops_what_a_file_cannot_mean_and_rejects_garbage() {
        let b = |start: &str, peak| Bucket {
            start: t(start),
            peak,
            cap: 5,
            denials: 0,
        };
        let h = History {
            format: 1,
            hours: [
                b("2026-06-01T10:00:00Z", 1),
                b("2026-06-01T09:00:00Z", 2), // out of order
                b("2026-06-01T11:30:00Z", 3), // not an hour's start
                b("2026-06-01T12:00:00Z", 4),
            ]
            .into(),
            days: VecDeque::new(),
        };
        let parsed = History::parse(&serde_json::to_string(&h).unwrap()).unwrap();
        let peaks: Vec<u32> = parsed.hours.iter().map(|b| b.peak).collect();
        assert_eq!(peaks, [1, 4]);
        assert!(History::parse("{\"hours\":[").is_err());
        assert!(History::parse("[]").is_err());
    }

    #[test]
    fn rows_fill_gaps_and_recent_trims() {
        let mut h = History::new();
        h.record(t("2026-06-01T10:00:00Z"), 1, 5, false);
        h.record(t("2026-06-03T10:00:00Z"), 2, 5, false);
        let now = t("2026-06-03T12:00:00Z");
        let rows = h.rows(Span::Day, now, 4);
        let shown: Vec<(String, Option<u32>)> = rows
            .iter()
            .map(|r| {
                (
                    r.start.format("%m-%d").to_string(),
                    r.bucket.map(|b| b.peak),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("05-31".into(), None),
                ("06-01".into(), Some(1)),
                ("06-02".into(), None),
                ("06-03".into(), Some(2)),
            ]
        );
        let report = Report {
            now: t("2026-06-04T12:00:00Z"),
            cap: 7,
            in_use: 4,
            history: h.clone(),
        };
        let last = report.rows(Span::Day, 2);
        assert_eq!(last[0].bucket.map(|b| b.peak), Some(2));
        assert_eq!(
            last[1].bucket.map(|b| (b.peak, b.cap)),
            Some((4, 7)),
            "today: now"
        );
        let r = h.recent(now, 0, 2);
        assert!(r.hours.is_empty());
        assert_eq!(r.days.len(), 1);
        assert_eq!(r.days[0].peak, 2);
    }

    #[test]
    fn chart_rows_show_the_peak_against_the_cap() {
        let style = ChartStyle {
            width: 10,
            colour: false,
        };
        let row = |peak, cap, denials| Row {
            start: t("2026-06-01T00:00:00Z"),
            bucket: Some(Bucket {
                start: t("2026-06-01T00:00:00Z"),
                peak,
                cap,
                denials,
            }),
        };
        let cases = [
            (row(0, 10, 0), "2026-06-01        0/10  [..........]\n"),
            (row(3, 10, 0), "2026-06-01        3/10  [###.......]\n"),
            (row(1, 32, 0), "2026-06-01        1/32  [#.........]\n"),
            (
                row(10, 10, 4),
                "2026-06-01       10/10  [##########]  4 denied\n",
            ),
            (row(12, 10, 0), "2026-06-01       12/10  [##########]!\n"),
            (
                row(0, 0, 1),
                "2026-06-01         0/0  [..........]  1 denied\n",
            ),
            (
                Row {
                    start: t("2026-06-01T00:00:00Z"),
                    bucket: None,
                },
                "2026-06-01           -  (no data: the daemon was not running)\n",
            ),
        ];
        for (r, want) in cases {
            let text = chart("t", Span::Day, &[r], style);
            assert_eq!(text, format!("t\n{want}"), "{r:?}");
        }
        let colour = chart(
            "t",
            Span::Hour,
            &[row(10, 10, 0)],
            ChartStyle {
                width: 4,
                colour: true,
            },
        );
        assert_eq!(colour, "t\n06-01 00:00      10/10  [\x1b[31m####\x1b[0m]\n");
    }
}
