//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Receives Lufthansa flight update notifications over MQTT and delivers
/// them to stdout, files and webhooks.
#[derive(Debug, Parser)]
#[command(name = "flupd", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML) [default: /etc/flupd/flupd.toml]. Keys can
    /// be overridden with environment variables named FLUPD_<SECTION>__<KEY>,
    /// such as FLUPD_MQTT__QOS=0. Without this option a missing default file
    /// is allowed, and the configuration comes from the environment alone.
    #[arg(long, short = 'c', global = true, env = "FLUPD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default when no command is given).
    Run,
    /// Load and validate the configuration, print every problem, and exit
    /// with 0 when it is valid or 64 when it is not.
    Check,
    /// Show the cached MQTT credentials: client id, endpoint, expiry and
    /// age. The JWT itself is never shown.
    Credentials {
        /// Fetch new credentials from Lufthansa's API and cache them. Each
        /// fetch creates a new MQTT client id and counts against the rate limit.
        #[arg(long)]
        renew: bool,
    },
    /// Print events stored in the outbox as JSON Lines, oldest first. Events
    /// stay there until every sink has them, or for `outbox.retain`.
    Events {
        #[command(flatten)]
        filter: EventFilter,
    },
    /// Deliver stored events to one sink again, marked as redelivered.
    Replay {
        /// Name of the sink, as in `flupd check`'s output.
        #[arg(long, value_name = "NAME")]
        sink: String,
        #[command(flatten)]
        filter: EventFilter,
    },
    /// Ask the running daemon's health endpoint (health.listen) whether it is
    /// ready, and exit with 0 when /readyz answers 200 or 1 when it does not
    /// or cannot be reached. Meant for container health checks.
    Health {
        /// How long to wait for the answer, such as 5s.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        timeout: std::time::Duration,
    },
    /// Run the whole pipeline against a local stand-in of Lufthansa's API and
    /// broker, printing events to stdout. Needs mosquitto installed and a
    /// build with `--features demo`. It uses a configuration of its own, so
    /// it rejects --config.
    Demo {
        /// Stop after this many events; without it, run until Ctrl-C.
        #[arg(long, value_name = "N")]
        max_events: Option<u64>,
        /// Time between two published updates, such as 300ms or 2s.
        #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
        interval: std::time::Duration,
    },
}

impl Cli {
    /// The configuration file, and whether it was named explicitly, in
    /// which case it must exist.
    pub fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        }
    }
}

/// Which stored events `events` and `replay` take.
#[derive(Debug, Clone, clap::Args)]
pub struct EventFilter {
    /// Only this flight, such as LH400.
    #[arg(long, value_name = "FLIGHT")]
    pub flight: Option<String>,
    /// Only this kind, such as gate_change or estimated_arrival.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only events received at or after this time: RFC 3339
    /// (2026-07-22T10:00:00Z) or a duration ago (90m, 2h, 3days).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events received before this time, in the same forms as --since.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Parses an RFC 3339 time, or a duration meaning that long ago.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("invalid time {text:?}: expected RFC 3339 such as 2026-07-22T10:00:00Z, or a duration such as 2h")
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| format!("duration {text:?} is too long"))?;
    Ok(chrono::Utc::now() - ago)
}
