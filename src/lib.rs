//! seatgate: the SecuPoint VPN client seat enforcer for EnGenius ESG gateways.
//!
//! Map of the modules (pure logic first, I/O at the edges):
//! - `license/`: the license engine. `model` (records and their rules),
//!   `lifecycle` (status at an instant), `cap` (seat cap and timeline),
//!   `bundle` (Ed25519-signed bundles and their acceptance), `lease`
//!   (signed slice leases of shared pools, the book of leases in force). Pure.
//! - `clock`: the engine's never-backwards now. Pure.
//! - `cloud/`: cloud sync. `wire` (the contract as data), `policy` (next
//!   attempt, back-off, jitter, cloud status: pure), `client` (HTTPS, mTLS),
//!   `sync` (the loop feeding bundles to the seat authority), `pools` (slice
//!   leases of shared pools: report usage, renew, docs/pools.md).
//! - `config`: TOML parsed and validated into typed values.
//! - `licensing`: the engine meets the disk (stored bundle, bundle file, clock,
//!   the pools and epochs the lease book remembers).
//! - `report`: the license report (pure) behind `seatgate licenses`.
//! - `store`: atomic file writes.
//! - `sys`: users and groups, peer credentials, process liveness, systemd.
//! - `admission/`: seat admission. `protocol` (bytes <-> requests), `table`
//!   (session table, pure), `journal` (crash-safe persistence), `seats` (table
//!   + licenses under one lock), `access` (peer rights, pure), `server` (socket).
//! - `status`: the daemon's status (pure) and its text form.
//! - `daemon`: `seatgate run`, wiring everything under one shutdown.
//! - `reconcile/`: the VPN servers' own session lists (`openvpn` management
//!   `status 3`, `ocserv` occtl JSON: pure parsing; `Listing`: which sessions
//!   are stale, pure), `fetch` (asking them, with timeouts) and `task` (the
//!   start-up and interval loop that releases stale seats).
//! - `client`: blocking socket client for hooks and operator commands.
//! - `hook/`: VPN server adapters (`openvpn`, `ocserv`): environment to request (pure).
//! - `logging`: journald-friendly tracing output.
//! - `cli`: the `seatgate` command line; `main.rs` only calls it.

pub mod admission;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod daemon;
pub mod hook;
pub mod license;
pub mod logging;
pub mod reconcile;
pub mod status;
pub mod store;
pub mod sys;
pub mod text;
