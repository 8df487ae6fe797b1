pub mod util;

mod cli;
mod daemon;
mod systemd;
