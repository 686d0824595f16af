//! The commands behind the command line, each returning the exit code.

use std::process::ExitCode;

use chrono::Utc;

use crate::api::ApiError;
use crate::cli::{Cli, Command, EventFilter};
use crate::config::{self, Env, LoadError, Loaded};
use crate::credentials::CredentialsError;
use crate::daemon::{self, RunOptions};
use crate::logging;
use crate::outbox::{OUTBOX_FILE, Outbox, Query};
use crate::reload::Loader;
use crate::sink::Sink;
use crate::sink::driver::{self, SinkStats};
use std::sync::Arc;

/// Exit code for an invalid configuration or command line (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Runs the command the command line names.
pub fn main(cli: Cli) -> ExitCode {
    let env = Env::from_process();
    let command = cli.command.as_ref().unwrap_or(&Command::Run);
    match command {
        Command::Check => check(&cli, &env),
        Command::Run => {
            let (path, required) = cli.config_path();
            let loader: Loader = Arc::new(move || {
                config::load(&path, required, &Env::from_process()).map(|loaded| loaded.config).map_err(one_line)
            });
            with_config(&cli, &env, |loaded| block_on(run(loaded, loader)))
        }
        Command::Credentials { renew } => {
            let renew = *renew;
            with_config(&cli, &env, |loaded| block_on(credentials(loaded, renew)))
        }
        Command::Events { filter } => with_config(&cli, &env, |loaded| events(&loaded, filter)),
        Command::Replay { sink, filter } => with_config(&cli, &env, |loaded| block_on(replay(loaded, sink, filter))),
        Command::Health { timeout } => health(&cli, &env, *timeout),
        Command::Demo { max_events, interval } => {
            if let Some(path) = &cli.config {
                eprintln!(
                    "flupd: demo uses a configuration of its own and would ignore {}; run it without --config and FLUPD_CONFIG",
                    path.display()
                );
                return ExitCode::from(EXIT_USAGE);
            }
            demo(*max_events, *interval)
        }
    }
}

fn block_on(future: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => {
            eprintln!("flupd: start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli, env: &Env) -> Result<Loaded, LoadError> {
    let (path, required) = cli.config_path();
    config::load(&path, required, env)
}

fn print_load_error(error: &LoadError) {
    match error {
        LoadError::Invalid { path, problems } => {
            let count = match problems.len() {
                1 => "1 problem".to_owned(),
                n => format!("{n} problems"),
            };
            if path.exists() {
                eprintln!("flupd: invalid configuration in {} ({count}):", path.display());
            } else {
                eprintln!(
                    "flupd: invalid configuration ({count}); no file at {}, so only FLUPD_* environment variables were read:",
                    path.display()
                );
            }
            for problem in problems.iter() {
                eprintln!("  {problem}");
            }
        }
        other => eprintln!("flupd: {other}"),
    }
}

/// Describes a load error on one line, for a log field.
fn one_line(error: LoadError) -> String {
    match error {
        LoadError::Invalid { path, problems } => {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            format!("invalid configuration in {}: {}", path.display(), problems.join("; "))
        }
        other => other.to_string(),
    }
}

/// Loads the configuration, starts logging and logs the warnings, then
/// runs `body`; exits with 64 when the configuration is invalid.
fn with_config(cli: &Cli, env: &Env, body: impl FnOnce(Loaded) -> ExitCode) -> ExitCode {
    let loaded = match load(cli, env) {
        Ok(loaded) => loaded,
        Err(error) => {
            print_load_error(&error);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let journal = env.journal_stream_id().is_some_and(logging::stderr_is_journal);
    logging::init(loaded.config.log.format, &loaded.config.log.level, !env.no_color(), journal);
    for warning in &loaded.warnings {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    body(loaded)
}

fn check(cli: &Cli, env: &Env) -> ExitCode {
    let (path, _) = cli.config_path();
    match load(cli, env) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                println!("warning: {}: {}", warning.key, warning.message);
            }
            let config = &loaded.config;
            let plural =
                |count: usize, one: &str, many: &str| format!("{count} {}", if count == 1 { one } else { many });
            println!(
                "{}: valid ({}, {}: {})",
                path.display(),
                plural(config.mqtt.topics.len(), "topic filter", "topic filters"),
                plural(config.sinks.len(), "sink", "sinks"),
                config
                    .sinks
                    .iter()
                    .map(|sink| format!("{} ({})", sink.name, sink.config.type_name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            print_load_error(&error);
            ExitCode::from(EXIT_USAGE)
        }
    }
}

async fn run(loaded: Loaded, loader: Loader) -> ExitCode {
    let options = RunOptions { reload: Some(loader), ..RunOptions::default() };
    match daemon::run(loaded.config, options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "flupd stopped");
            if error.is_configuration() { ExitCode::from(EXIT_USAGE) } else { ExitCode::FAILURE }
        }
    }
}

async fn credentials(loaded: Loaded, renew: bool) -> ExitCode {
    let store = match daemon::credential_store(&loaded.config) {
        Ok(store) => store,
        Err(error) => {
            eprintln!("flupd: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = if renew { store.renew().await.map(Some) } else { store.read_cache() };
    let credentials = match result {
        Ok(Some(credentials)) => credentials,
        Ok(None) => {
            eprintln!(
                "flupd: no cached credentials for this account at {}; run `flupd credentials --renew` or start flupd to fetch them",
                store.path().display()
            );
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("flupd: {error}");
            let configuration =
                matches!(error, CredentialsError::Api(ApiError::NotAuthorized { .. }) | CredentialsError::Io { .. });
            return if configuration { ExitCode::from(EXIT_USAGE) } else { ExitCode::FAILURE };
        }
    };

    let now = Utc::now();
    let age = (now - credentials.fetched_at).to_std().unwrap_or_default();
    println!("path:      {}", store.path().display());
    println!("client id: {}", credentials.client_id);
    println!("endpoint:  {}", credentials.endpoint);
    println!("fetched:   {} ({} ago)", credentials.fetched_at.format("%Y-%m-%dT%H:%M:%SZ"), whole_units(age));
    match credentials.expires_at {
        Some(expires_at) => {
            let left = (expires_at - now).to_std().unwrap_or_default();
            let state = if expires_at <= now {
                "expired".to_owned()
            } else if credentials.needs_renewal(now, store.renew_before()) {
                format!("in {}, renewal due", whole_units(left))
            } else {
                format!("in {}", whole_units(left))
            };
            println!("expires:   {} ({state})", expires_at.format("%Y-%m-%dT%H:%M:%SZ"));
        }
        None => println!("expires:   unknown (the JWT carries no exp claim)"),
    }
    ExitCode::SUCCESS
}

/// Opens the outbox of an earlier or running daemon; never creates one.
fn open_outbox(loaded: &Loaded) -> Result<Outbox, String> {
    let path = loaded.config.state.dir.join(OUTBOX_FILE);
    if !path.exists() {
        return Err(format!(
            "no outbox at {}: flupd has not run with state.dir {}",
            path.display(),
            loaded.config.state.dir.display()
        ));
    }
    Outbox::open(&loaded.config.state.dir, loaded.config.outbox.clone()).map_err(|error| error.to_string())
}

fn query(filter: &EventFilter) -> Query {
    Query { flight: filter.flight.clone(), kind: filter.kind.clone(), since: filter.since, until: filter.until }
}

fn events(loaded: &Loaded, filter: &EventFilter) -> ExitCode {
    use std::io::Write as _;

    let result = open_outbox(loaded).and_then(|outbox| outbox.query(&query(filter)).map_err(|error| error.to_string()));
    let events = match result {
        Ok(events) => events,
        Err(error) => {
            eprintln!("flupd: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for event in &events {
        // An event of strings, numbers and JSON values always serializes.
        let line = serde_json::to_string(event).expect("event serializes");
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    eprintln!("flupd: {} events", events.len());
    ExitCode::SUCCESS
}

async fn replay(loaded: Loaded, name: &str, filter: &EventFilter) -> ExitCode {
    let Some(spec) = loaded.config.sinks.iter().find(|spec| spec.name == name) else {
        let names: Vec<&str> = loaded.config.sinks.iter().map(|spec| spec.name.as_str()).collect();
        eprintln!("flupd: no sink named {name:?}; configured sinks: {}", names.join(", "));
        return ExitCode::from(EXIT_USAGE);
    };
    let result =
        open_outbox(&loaded).and_then(|outbox| outbox.query(&query(filter)).map_err(|error| error.to_string()));
    let events = match result {
        Ok(events) => events,
        Err(error) => {
            eprintln!("flupd: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut sink = match Sink::build(&spec.config).await {
        Ok(sink) => sink,
        Err(error) => {
            eprintln!("flupd: sink {name:?}: {error}");
            return ExitCode::FAILURE;
        }
    };

    let stats = SinkStats::default();
    let mut replayed = 0u64;
    let mut failed = 0u64;
    for mut event in events.into_iter().filter(|event| spec.wants(&event.topic)) {
        event.redelivered = true;
        if driver::deliver(&mut sink, &event, &stats).await {
            replayed += 1;
        } else {
            failed += 1;
        }
    }
    if let Err(error) = sink.flush().await {
        eprintln!("flupd: sink {name:?}: flush: {error}");
        return ExitCode::FAILURE;
    }
    eprintln!("flupd: replayed {replayed} events to sink {name:?}, {failed} rejected");
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Asks `/readyz` of the configured health endpoint and prints its response.
fn health(cli: &Cli, env: &Env, timeout: std::time::Duration) -> ExitCode {
    let loaded = match load(cli, env) {
        Ok(loaded) => loaded,
        Err(error) => {
            print_load_error(&error);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Some(listen) = loaded.config.health.listen else {
        eprintln!(
            "flupd: the health endpoint is off; set health.listen, such as listen = \"127.0.0.1:9188\" in [health]"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let url = format!("http://{}/readyz", connect_address(listen));
    block_on(async move {
        let client = match reqwest::Client::builder().no_proxy().timeout(timeout).build() {
            Ok(client) => client,
            Err(error) => {
                eprintln!("flupd: create HTTP client: {error}");
                return ExitCode::FAILURE;
            }
        };
        let response = match client.get(&url).send().await {
            Ok(response) => response,
            Err(error) => {
                eprintln!("flupd: {url}: not reachable: {error}; is flupd running with this configuration?");
                return ExitCode::FAILURE;
            }
        };
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            print!("{body}");
            ExitCode::SUCCESS
        } else {
            eprint!("flupd: {url}: HTTP {}: {body}", status.as_u16());
            ExitCode::FAILURE
        }
    })
}

/// Returns the address to reach a listener at, using loopback for a
/// wildcard address.
fn connect_address(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port())
}

/// Rounds a duration to the largest whole unit, as "3days" or "5h".
fn whole_units(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}days", seconds / 86400),
    }
}

#[cfg(feature = "demo")]
fn demo(max_events: Option<u64>, interval: std::time::Duration) -> ExitCode {
    logging::init(config::LogFormat::Text, "warn,flupd=info", true, false);
    block_on(crate::demo::run(max_events, interval))
}

#[cfg(not(feature = "demo"))]
fn demo(_max_events: Option<u64>, _interval: std::time::Duration) -> ExitCode {
    eprintln!("flupd: this build has no demo; run it with `cargo run --features demo -- demo`");
    ExitCode::from(EXIT_USAGE)
}
