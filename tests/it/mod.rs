pub mod util;

mod cli;
mod cloud;
mod daemon;
mod examples;
mod pools;
mod systemd;
mod timing;
mod vpn;
mod vpn_harness;
