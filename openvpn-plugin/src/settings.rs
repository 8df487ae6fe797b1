//! The `plugin` line's arguments (pure): `socket=PATH timeout_ms=N
//! on_error=reject|admit group_var=NAME`, the same settings and defaults
//! as `seatgate hook openvpn`'s SEATGATE_* variables.

use std::path::PathBuf;
use std::time::Duration;

use seatgate::config::DEFAULT_SOCKET;
use seatgate::hook::{OnError, DEFAULT_TIMEOUT_MS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub socket: PathBuf,
    /// How long a client-connect waits for the daemon's answer.
    pub timeout: Duration,
    pub on_error: OnError,
    /// How long OpenVPN's thread may wait for a quick answer before it
    /// defers the verdict (0: always defer). See docs/openvpn.md.
    pub wait: Duration,
    /// The variable holding the user's group for `[policy]` (the script
    /// hook's `setenv SEATGATE_GROUP_VAR`).
    pub group_var: Option<String>,
}

/// OpenVPN 2.6 (without async-push, as Debian builds it) looks at a
/// deferred verdict only at the client's next timer tick, about a second
/// later; an answer within this wait skips that second.
pub const DEFAULT_WAIT_MS: u64 = 20;

/// Parses the arguments after the library path. Unlike the script hook,
/// a bad value is an error: OpenVPN then refuses to start and says why,
/// which is better than running with a setting nobody asked for.
pub fn parse(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings {
        socket: DEFAULT_SOCKET.into(),
        timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        on_error: OnError::Reject,
        wait: Duration::from_millis(DEFAULT_WAIT_MS),
        group_var: None,
    };
    for arg in args {
        let (k, v) = arg.split_once('=').ok_or_else(|| {
            format!("argument {arg:?} is not NAME=VALUE (socket=, timeout_ms=, on_error=)")
        })?;
        match k {
            "socket" if !v.is_empty() => s.socket = v.into(),
            "group_var" if !v.is_empty() => s.group_var = Some(v.into()),
            "timeout_ms" => match v.parse::<u64>() {
                Ok(ms) if (1..=60_000).contains(&ms) => s.timeout = Duration::from_millis(ms),
                _ => return Err(format!("timeout_ms={v:?} is not a number of milliseconds from 1 to 60000")),
            },
            "wait_ms" => match v.parse::<u64>() {
                Ok(ms) if ms <= 100 => s.wait = Duration::from_millis(ms),
                _ => return Err(format!("wait_ms={v:?} is not a number of milliseconds from 0 to 100")),
            },
            "on_error" => {
                s.on_error = match v {
                    "reject" => OnError::Reject,
                    "admit" => OnError::Admit,
                    _ => return Err(format!("on_error={v:?} is not reject or admit")),
                }
            }
            _ => return Err(format!("unknown or empty argument {arg:?}; known: socket=PATH, timeout_ms=N, wait_ms=N, on_error=reject|admit, group_var=NAME")),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let d = parse(&[]).unwrap();
        assert_eq!(d.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(d.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert_eq!(d.on_error, OnError::Reject);
        let s = parse(&args(&[
            "socket=/tmp/s",
            "timeout_ms=250",
            "on_error=admit",
            "group_var=X509_0_OU",
        ]))
        .unwrap();
        assert_eq!(s.group_var.as_deref(), Some("X509_0_OU"));
        assert_eq!(d.group_var, None);
        assert_eq!(
            (s.socket, s.timeout, s.on_error),
            ("/tmp/s".into(), Duration::from_millis(250), OnError::Admit)
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        for (a, why) in [
            ("timeout_ms=0", "from 1 to 60000"),
            ("timeout_ms=soon", "from 1 to 60000"),
            ("on_error=maybe", "reject or admit"),
            ("wait_ms=500", "from 0 to 100"),
            ("sock=/x", "unknown"),
            ("socket=", "unknown or empty"),
            ("group_var=", "unknown or empty"),
            ("verbose", "NAME=VALUE"),
        ] {
            let e = parse(&args(&[a])).unwrap_err();
            assert!(e.contains(why), "{a}: {e}");
        }
    }
}
