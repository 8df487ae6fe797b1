pub mod util;

mod cli;
mod daemon;
mod vpn;
mod vpn_harness;
