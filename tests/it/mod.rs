pub mod util;

mod cli;
mod cloud;
mod daemon;
mod pools;
mod systemd;
mod vpn;
mod vpn_harness;
