//! Log output that reads well in the journal: one line per event, no ANSI
//! colours unless stderr is a terminal, no timestamps under journald (it
//! adds its own). RUST_LOG (a level: error, warn, info, debug, trace, off) overrides the configured level.

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;

pub fn init(level: &str) {
    // A plain level, not per-module directives: the directive parser
    // would bring a regex engine onto the gateway's flash.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .or_else(|| level.parse().ok())
        .unwrap_or(LevelFilter::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let result = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    // A second init keeps the first (no error): `logging::init` is called
    // once per process by the CLI; tests that run the daemon in-process
    // (tests/it/util.rs `InProcess`) call `daemon::run` and leave logging off.
    let _ = result;
}
