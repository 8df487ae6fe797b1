//! VPN-server adapters: turn a server's hook environment into a request
//! (pure: `openvpn`, `ocserv`), ask the daemon, and map the answer onto the
//! exit code the server expects. Blocking, no async runtime: OpenVPN waits
//! for this process, so it is bounded by a deadline and fails closed by
//! default.

pub mod ocserv;
pub mod openvpn;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::admission::client;
use crate::admission::protocol::{AdmitRequest, Request, Response};
use crate::config::DEFAULT_SOCKET;

pub const DEFAULT_TIMEOUT_MS: u64 = 500;

/// What a hook call asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Connect(AdmitRequest),
    Disconnect { key: String },
}

/// Why a hook environment does not make a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{0} is not set; is this running as the VPN server's hook?")]
    Missing(String),
    #[error("{name}={value:?} is not a {what}")]
    NotAPid {
        name: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{var}={value:?}: set this hook as {hooks} only")]
    WrongPhase {
        var: &'static str,
        value: String,
        hooks: &'static str,
    },
}

/// A pid variable of a hook environment.
fn pid(
    env: &HashMap<String, String>,
    name: &'static str,
    what: &'static str,
) -> Result<u32, EnvError> {
    let value = need(env, name)?;
    value.parse().map_err(|_| EnvError::NotAPid {
        name,
        value: value.to_string(),
        what,
    })
}

/// What to do when the daemon cannot be asked in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Refuse the connection (never lets more than the cap in).
    Reject,
    /// Let the connection in without a seat (keeps the VPN usable while
    /// seatgate is down, at the price of the cap).
    Admit,
}

/// Hook settings. OpenVPN passes hooks no environment but what `--setenv`
/// gives, so every setting has a variable, a flag and a default.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Settings {
    /// Flags win over variables (SEATGATE_SOCKET, SEATGATE_HOOK_TIMEOUT_MS,
    /// SEATGATE_HOOK_ON_ERROR), variables over defaults. Bad variable values
    /// fall back to the defaults with a warning: a hook must still answer.
    pub fn resolve(
        env: &HashMap<String, String>,
        socket: Option<PathBuf>,
        timeout_ms: Option<u64>,
        on_error: Option<OnError>,
    ) -> (Settings, Vec<String>) {
        let mut warnings = Vec::new();
        let timeout_ms = timeout_ms.or_else(|| {
            let v = env.get("SEATGATE_HOOK_TIMEOUT_MS")?;
            match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Some(ms),
                _ => {
                    warnings.push(format!("SEATGATE_HOOK_TIMEOUT_MS={v:?} is not a positive number of milliseconds; using {DEFAULT_TIMEOUT_MS}"));
                    None
                }
            }
        });
        let on_error =
            on_error.or_else(
                || match env.get("SEATGATE_HOOK_ON_ERROR").map(String::as_str) {
                    None => None,
                    Some("reject") => Some(OnError::Reject),
                    Some("admit") => Some(OnError::Admit),
                    Some(v) => {
                        warnings.push(format!(
                        "SEATGATE_HOOK_ON_ERROR={v:?} is not reject or admit; rejecting on errors"
                    ));
                        None
                    }
                },
            );
        let settings = Settings {
            socket: socket
                .or_else(|| env.get("SEATGATE_SOCKET").map(PathBuf::from))
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            timeout: Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
            on_error: on_error.unwrap_or(OnError::Reject),
        };
        (settings, warnings)
    }
}

/// Runs one hook call: exit 0 admits (or acknowledges a disconnect), 1 rejects.
/// Each call prints one line on stderr, which the VPN server puts in its log.
pub fn run(
    name: &str,
    action: Result<Action, EnvError>,
    settings: &Settings,
    warnings: &[String],
) -> ExitCode {
    for w in warnings {
        eprintln!("seatgate hook {name}: warning: {w}");
    }
    let action = match action {
        Ok(a) => a,
        Err(why) => {
            eprintln!("seatgate hook {name}: {why}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let (request, key) = match &action {
        Action::Connect(a) => (Request::Admit(a.clone()), a.key.clone()),
        Action::Disconnect { key } => (Request::Release { key: key.clone() }, key.clone()),
    };
    let answer = client::call(&settings.socket, &request, settings.timeout);
    let us = started.elapsed().as_micros();
    match (action, answer) {
        (Action::Connect(a), Ok(Response::Admit(r))) if r.admitted => {
            eprintln!(
                "seatgate hook {name}: admitted {} ({} of {} seats in use, {us} us)",
                a.user, r.in_use, r.cap
            );
            ExitCode::SUCCESS
        }
        (Action::Connect(a), Ok(Response::Admit(r))) => {
            let why = r.message.unwrap_or_else(|| "denied".into());
            eprintln!(
                "seatgate hook {name}: REJECTED {}: {why} ({} of {} seats in use)",
                a.user, r.in_use, r.cap
            );
            ExitCode::FAILURE
        }
        (Action::Disconnect { .. }, Ok(Response::Release(r))) => {
            if r.released {
                eprintln!(
                    "seatgate hook {name}: released {key} ({} seats in use)",
                    r.in_use
                );
            } else {
                // OpenVPN also reports the end of clients it refused.
                eprintln!("seatgate hook {name}: {key} held no seat; nothing to release");
            }
            ExitCode::SUCCESS
        }
        (action, answer) => {
            let why = match answer {
                Ok(Response::Error(e)) => {
                    format!("daemon refused the request: {}", e.error.message)
                }
                Ok(other) => format!("unexpected answer {other:?}"),
                Err(e) => e.to_string(),
            };
            match action {
                // A disconnect that cannot be told is reconciled by the daemon later.
                Action::Disconnect { .. } => {
                    eprintln!("seatgate hook {name}: could not release {key}: {why}; the daemon frees it when it reconciles");
                    ExitCode::SUCCESS
                }
                Action::Connect(_) if settings.on_error == OnError::Admit => {
                    eprintln!(
                        "seatgate hook {name}: ADMITTED WITHOUT A SEAT (on_error=admit): {why}"
                    );
                    ExitCode::SUCCESS
                }
                Action::Connect(_) => {
                    eprintln!("seatgate hook {name}: REJECTED (fail-closed): {why}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Whether a hook call is a connect or a disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Disconnect,
}

impl Phase {
    /// The action for this phase of the session `req` describes.
    fn action(self, req: AdmitRequest) -> Action {
        match self {
            Phase::Connect => Action::Connect(req),
            Phase::Disconnect => Action::Disconnect { key: req.key },
        }
    }
}

/// Reads the phase from the variable the server names it in; `names` are
/// its connect and disconnect values, `hooks` the settings to use.
fn phase(
    env: &HashMap<String, String>,
    var: &'static str,
    names: [&str; 2],
    hooks: &'static str,
) -> Result<Phase, EnvError> {
    match need(env, var)? {
        v if v == names[0] => Ok(Phase::Connect),
        v if v == names[1] => Ok(Phase::Disconnect),
        other => Err(EnvError::WrongPhase {
            var,
            value: other.to_string(),
            hooks,
        }),
    }
}

/// Reads a required variable from a hook environment.
fn need<'a>(env: &'a HashMap<String, String>, name: &str) -> Result<&'a str, EnvError> {
    env.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| EnvError::Missing(name.to_string()))
}

fn get<'a>(env: &'a HashMap<String, String>, name: &str) -> &'a str {
    env.get(name).map_or("", String::as_str)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hook environment as saved from a real server (`env > file`).
    pub(crate) fn sample(text: &str) -> HashMap<String, String> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_resolution() {
        let env: HashMap<String, String> = [
            ("SEATGATE_SOCKET", "/tmp/s"),
            ("SEATGATE_HOOK_TIMEOUT_MS", "250"),
            ("SEATGATE_HOOK_ON_ERROR", "admit"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let (s, w) = Settings::resolve(&env, None, None, None);
        assert!(w.is_empty());
        assert_eq!(s.socket, PathBuf::from("/tmp/s"));
        assert_eq!(s.timeout, Duration::from_millis(250));
        assert_eq!(s.on_error, OnError::Admit);
        let (s, _) = Settings::resolve(&env, Some("/x".into()), Some(9), Some(OnError::Reject));
        assert_eq!(
            (s.socket, s.timeout, s.on_error),
            (
                PathBuf::from("/x"),
                Duration::from_millis(9),
                OnError::Reject
            )
        );
        let (s, _) = Settings::resolve(&HashMap::new(), None, None, None);
        assert_eq!(
            (s.socket, s.timeout, s.on_error),
            (
                PathBuf::from(DEFAULT_SOCKET),
                Duration::from_millis(DEFAULT_TIMEOUT_MS),
                OnError::Reject
            )
        );
        let bad: HashMap<String, String> = [
            ("SEATGATE_HOOK_TIMEOUT_MS", "soon"),
            ("SEATGATE_HOOK_ON_ERROR", "maybe"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let (s, w) = Settings::resolve(&bad, None, None, None);
        assert_eq!(w.len(), 2);
        assert_eq!(s.on_error, OnError::Reject);
    }
}
