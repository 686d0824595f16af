//! `flupd demo`: the real pipeline against a local stand-in of Lufthansa's
//! API and broker, printing events with the stdout text sink.

use std::process::ExitCode;
use std::time::Duration;

use flupd_standin::{Standin, StandinOptions};

use crate::config::{self, Env};
use crate::daemon::{self, RunOptions};

/// Starts the stand-in and a publisher, then runs the daemon against them
/// until Ctrl-C or `max_events` events.
pub async fn run(max_events: Option<u64>, interval: Duration) -> ExitCode {
    let options = StandinOptions::default();
    let standin = match Standin::start(options.clone()).await {
        Ok(standin) => standin,
        Err(error) => {
            eprintln!("flupd: start the demo stand-in: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let state = match tempfile::tempdir() {
        Ok(state) => state,
        Err(error) => {
            eprintln!("flupd: create a temporary state directory: {error}");
            return ExitCode::FAILURE;
        }
    };

    let toml = format!(
        r#"
shutdown_timeout = "5s"

[lufthansa]
client_id = "{client_id}"
api_base = "{api_base}"
client_prefix = "demo"

[mqtt]
topics = ["prd/FlightUpdate/#"]
host = "{host}"
port = {port}
ca_file = "{ca_file}"

[state]
dir = "{state}"

[[sinks]]
type = "stdout"
format = "text"
"#,
        client_id = options.client_id,
        api_base = standin.api_base(),
        host = standin.broker_host(),
        port = standin.broker_port(),
        ca_file = standin.ca_file().display(),
        state = state.path().display(),
    );
    let env = Env::from_map([(config::env::CLIENT_SECRET_VAR.to_owned(), options.client_secret.clone())]);
    let loaded = match config::load_str(&toml, &env) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("flupd: the demo configuration is invalid: {error:?}");
            return ExitCode::FAILURE;
        }
    };

    eprintln!(
        "flupd demo: stand-in API at {}, TLS broker at {}:{}; one update every {}. Press Ctrl-C to stop.",
        standin.api_base(),
        standin.broker_host(),
        standin.broker_port(),
        humantime::format_duration(interval)
    );
    let publisher = standin.start_publisher(interval);
    let result = daemon::run(loaded.config, RunOptions { max_events, ..RunOptions::default() }).await;
    publisher.stop();
    standin.shutdown().await;

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flupd: {error}");
            ExitCode::FAILURE
        }
    }
}
