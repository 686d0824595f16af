//! The tracing subscriber: readable text on a terminal, JSON for machines,
//! and syslog priority prefixes for the systemd journal.
//!
//! Logs go to standard error, so that standard output carries only what the
//! stdout sink prints.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
///
/// With `journal` set, every line starts with its syslog priority in the
/// `<N>` form of sd-daemon(3), which journald strips and stores as the
/// entry's priority, and carries no timestamp (the journal adds its own)
/// and no color codes.
pub fn init(format: LogFormat, level: &str, color: bool, journal: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match (format, journal) {
        (LogFormat::Json, false) => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
        }
        (LogFormat::Json, true) => {
            let json = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false);
            builder
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(JournalPrefix(json.without_time()))
                .try_init()
        }
        (LogFormat::Text, false) => builder.with_ansi(color && std::io::stderr().is_terminal()).try_init(),
        (LogFormat::Text, true) => {
            let text = tracing_subscriber::fmt::format().with_ansi(false).without_time().with_level(false);
            builder.with_ansi(false).event_format(JournalPrefix(text)).try_init()
        }
    };
    // A second init, as in tests that run several daemons, keeps the first.
    let _ = result;
}

/// Returns whether standard error is still the journal stream that `JOURNAL_STREAM`
/// (`DEVICE:INODE`) names. A process started from a service's shell
/// inherits the variable with another standard error, as sd-daemon(3) warns.
pub fn stderr_is_journal(journal_stream: &str) -> bool {
    use std::os::unix::fs::MetadataExt;

    let Some((device, inode)) = journal_stream.split_once(':') else { return false };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else { return false };
    // stat() on a /proc/self/fd link describes the open file itself, sockets
    // included.
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|meta| meta.dev() == device && meta.ino() == inode)
}

/// Maps a tracing level to its syslog priority: err, warning, info and debug.
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Writes the `<N>` priority prefix, then the line the inner format writes.
struct JournalPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_match_stderr() {
        assert!(!stderr_is_journal("not-a-pair"));
        assert!(!stderr_is_journal("0:0"));
    }
}
