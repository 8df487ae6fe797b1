pub mod util;

mod cli;
mod clock;
mod cloud;
mod daemon;
mod examples;
mod hardening;
mod pools;
mod systemd;
mod vpn;
mod vpn_harness;
mod vpn_ns;
mod vpn_plugin;

/// The development cloud's pool allocator, compiled here so its unit and
/// property tests run with the suite (see the [[example]] note in Cargo.toml).
#[path = "../../examples/devcloud/alloc.rs"]
#[allow(dead_code)]
mod devcloud_alloc;
