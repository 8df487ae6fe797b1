pub mod util;

mod cli;
mod cloud;
mod daemon;
mod systemd;
mod vpn;
mod vpn_harness;
