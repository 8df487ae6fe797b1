pub mod util;

mod cli;
mod daemon;
mod systemd;
mod vpn;
mod vpn_harness;
