pub mod util;

mod cli;
mod clock;
mod cloud;
mod daemon;
mod examples;
mod hardening;
mod metrics;
mod operator;
mod policy;
mod pools;
mod systemd;
mod timing;
mod vpn;
mod vpn_harness;
mod vpn_ns;
mod vpn_plugin;
mod vpn_policy;
