//! seatgate: the SecuPoint VPN client seat enforcer for EnGenius ESG gateways.
//!
//! The modules in layers, lowest first; a module uses only modules above it
//! in this list (`use crate::` points down, never up; checked by
//! `shared/tools/modcycles.py`):
//! 1. `text`: untrusted text made safe for logs and tables. Pure.
//! 2. `store`: atomic file writes, tolerant reads.
//! 3. `sys/`: the OS edge, one file per job: `users`, `peer` (socket peer
//!    groups), `process` (/proc: identity, ancestry, pid namespaces;
//!    `locate` finds a hook's VPN server from the kernel), `systemd`.
//! 4. `license/`: the license engine. `model` (records and their rules),
//!    `lifecycle`, `cap` (seat cap and timeline), `bundle` (Ed25519-signed
//!    bundles), `lease` (slice leases of shared pools), `time` (the trusted
//!    clock), `in_force` (the licenses in force and how a bundle replaces
//!    them), `report` (`seatgate licenses`): pure; `disk`: their files.
//! 5. `alerts`: usage alert levels from thresholds with hysteresis. Pure.
//! 6. `config`: TOML parsed and validated into typed values, host checks;
//!    `policy`: the `[policy]` section (per-user limit, reserved seats).
//! 7. `admission/`: seat admission. `protocol` (bytes <-> requests, no I/O)
//!    and its blocking `client`, `table` (sessions, pure), `snapshot` (its
//!    file format, pure), `journal` (crash-safe persistence), `lock` (one
//!    daemon per runtime directory), `policy` (the seat policy's rules,
//!    pure), `seats` (the core: decides against a cap it is given and
//!    returns what happened), `access` (peer rights,
//!    pure), `server` (the socket: slots, framing; asks a `Service`).
//! 8. `hook/`: VPN server adapters (`openvpn`, `ocserv`): environment to
//!    request (pure), the blocking hook run.
//! 9. `reconcile/`: the VPN servers' own session lists (parsing and the
//!    stale-session rule: pure), `fetch` (asking them), `task` (the loop,
//!    through its narrow `Sessions` view of the gateway).
//! 10. `cloud/`: `wire` (the contract), `policy` (schedule, status: pure),
//!     `client` (HTTPS, mTLS), `sync` and `pools` (the loops, through the
//!     narrow `Gateway` view).
//! 11. `status`: the daemon's status (pure) and its text form; `usage`: the
//!     usage history (hourly and daily peaks in bounded rings) and its
//!     chart, pure; `metrics`: status as Prometheus text, pure.
//! 12. `check`: `seatgate check`, a status judged as a monitoring plugin. Pure.
//! 13. `daemon/`: `seatgate run`, the wiring: `state` (everything behind one
//!     lock), `service` (requests to answers: the one place results meet the
//!     wire), `gateway` (the views for cloud and reconcile), `persist` (the
//!     one writer of the state directory), `alerting` (usage alerts and
//!     license warnings in the log), `denials` (the last ones, counted),
//!     `tasks` (reaper, ticker, watchdog, SIGHUP reload; config on a watch
//!     channel).
//! 14. `logging`, `cli`: the command line; `main.rs` only calls it.

pub mod admission;
pub mod alerts;
pub mod check;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod daemon;
pub mod hook;
pub mod license;
pub mod logging;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod store;
pub mod sys;
pub mod text;
pub mod usage;
