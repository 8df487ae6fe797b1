//! Log output that reads well in the journal: one line per event, no ANSI
//! colours unless stderr is a terminal. When stderr is the journal
//! (JOURNAL_STREAM names it), each line starts with its syslog priority as
//! `<N>` (the sd-daemon(3) convention, which journald reads) and carries no
//! timestamp (journald adds its own), so `journalctl -p warning` works.
//! RUST_LOG (a level: error, warn, info, debug, trace, off) overrides the
//! configured level.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

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
    let result = if stderr_is_journal() {
        let format = Format::default().with_target(false).without_time();
        builder.event_format(Journal(format)).try_init()
    } else {
        builder.try_init()
    };
    // A second init keeps the first (no error): `logging::init` is called
    // once per process by the CLI; tests that run the daemon in-process
    // (tests/it/util.rs `InProcess`) call `daemon::run` and leave logging off.
    let _ = result;
}

/// The syslog priority journald files a line of this level under.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether stderr is the journal stream systemd connected (JOURNAL_STREAM
/// is `DEV:INODE` of that stream; a child that inherited the variable but
/// not the stream must not write `<N>` into a file or a terminal).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(2) else {
        return false;
    };
    value.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// The usual line with its `<N>` priority in front of each line.
struct Journal<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // journald reads a priority per line: a message of several lines
        // (a config's problems) carries it on each.
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let n = priority(event.metadata().level());
        for l in line.lines() {
            writeln!(writer, "<{n}>{l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        let table = [
            (Level::ERROR, 3),
            (Level::WARN, 4),
            (Level::INFO, 6),
            (Level::DEBUG, 7),
            (Level::TRACE, 7),
        ];
        for (level, want) in table {
            assert_eq!(priority(&level), want, "{level}");
        }
    }
}
