//! Cloud sync: the gateway pulls its signed bundle (bound and replica
//! licenses) from the cloud and reports its seat usage. `wire` (endpoints,
//! bodies, status codes: no I/O), `policy` (next attempt, backoff, jitter,
//! the status to show: pure), `client` (HTTPS with mTLS, reqwest + rustls),
//! `sync` (the loop that ties them to the seat authority), `pools` (the
//! slice-lease loop of shared pools, docs/pools.md).
//! The contract is written down in docs/cloud-api.md.

pub mod client;
pub mod policy;
pub mod pools;
pub mod sync;
pub mod wire;
