//! seatgate: the SecuPoint VPN client seat enforcer for EnGenius ESG gateways.
//!
//! Map of the modules (pure logic first, I/O at the edges):
//! - `license/`: the license engine. `model` (records and their rules),
//!   `lifecycle` (status at an instant), `cap` (seat cap and timeline),
//!   `bundle` (Ed25519-signed bundles and their acceptance). Pure.
//! - `clock`: the engine's never-backwards now. Pure.
//! - `config`: TOML parsed and validated into typed values.
//! - `licensing`: the engine meets the disk (stored bundle, bundle file, clock).
//! - `report`: the license report (pure) behind `seatgate licenses`.
//! - `store`: atomic file writes.
//! - `sys`: users and groups, peer credentials, process liveness, systemd.
//! - `cli`: the `seatgate` command line; `main.rs` only calls it.

pub mod cli;
pub mod clock;
pub mod config;
pub mod license;
pub mod licensing;
pub mod report;
pub mod store;
pub mod sys;
