//! The one-line summary systemd shows as the unit's STATUS (`systemctl
//! status seatgate`): cap, seats in use, how far over the cap, the cloud
//! sync and a refused reload. Pure: the task in `tasks` sends it when it
//! changes.

use crate::cloud::policy::SyncRecord;

/// What the summary is made of.
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a> {
    pub cap: u32,
    pub in_use: u32,
    /// None without `[cloud]`.
    pub cloud: Option<&'a SyncRecord>,
    /// Why the last reload was refused, while the running config is the
    /// one from before it.
    pub reload_refused: Option<&'a str>,
}

impl Summary<'_> {
    pub fn line(&self) -> String {
        let mut out = format!("cap {}, in use {}", self.cap, self.in_use);
        if self.in_use > self.cap {
            out.push_str(&format!(
                ", OVER CAP by {} (new sessions wait)",
                self.in_use - self.cap
            ));
        }
        if let Some(c) = self.cloud {
            out.push_str(&match (&c.last_error, c.last_success) {
                (None, Some(_)) => "; cloud synced".to_string(),
                (None, None) => "; cloud not synced yet".to_string(),
                (Some(e), _) => format!(
                    "; cloud sync FAILING ({}, {} in a row)",
                    e.kind.label(),
                    c.failures
                ),
            });
        }
        if let Some(why) = self.reload_refused {
            out.push_str(&format!("; RELOAD REFUSED, previous config kept: {why}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::policy::{FailureKind, LastError};

    #[test]
    fn summary_lines() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .unwrap()
            .into();
        let synced = SyncRecord {
            last_success: Some(t),
            ..SyncRecord::new("https://c/")
        };
        let failing = SyncRecord {
            last_error: Some(LastError {
                kind: FailureKind::Transient,
                message: "timeout".into(),
                at: t,
            }),
            failures: 3,
            ..synced.clone()
        };
        let fresh = SyncRecord::new("https://c/");
        let s = |cap, in_use, cloud, reload| {
            Summary {
                cap,
                in_use,
                cloud,
                reload_refused: reload,
            }
            .line()
        };
        let cases = [
            (s(32, 0, None, None), "cap 32, in use 0"),
            (
                s(12, 15, None, None),
                "cap 12, in use 15, OVER CAP by 3 (new sessions wait)",
            ),
            (
                s(5, 1, Some(&synced), None),
                "cap 5, in use 1; cloud synced",
            ),
            (
                s(5, 1, Some(&fresh), None),
                "cap 5, in use 1; cloud not synced yet",
            ),
            (
                s(5, 1, Some(&failing), None),
                "cap 5, in use 1; cloud sync FAILING (transient, 3 in a row)",
            ),
            (
                s(5, 1, None, Some("config x has 1 problem(s)")),
                "cap 5, in use 1; RELOAD REFUSED, previous config kept: config x has 1 problem(s)",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
