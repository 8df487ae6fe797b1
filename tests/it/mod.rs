pub mod util;

mod cli;
mod cloud;
mod daemon;
