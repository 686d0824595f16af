//! Broker faults: restarts, a closed port, refused credentials.

mod common;

use std::time::{Duration, Instant};

use common::{Setup, read_json_lines, wait_for};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(30);

fn sinks(dir: &std::path::Path) -> String {
    format!("[[sinks]]\ntype = \"file\"\npath = \"{}\"\n", dir.join("events.jsonl").display())
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_reconnects_and_resubscribes() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks(dir.path()));
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    standin.restart_broker().await.unwrap();
    // Without persistence the broker forgot the session, so flupd must
    // subscribe again before anything arrives.
    wait_for(TIMEOUT, "a second subscription", || {
        flupd.stderr().matches("subscribed granted").count() >= 2 || flupd.stderr().matches(" subscribed").count() >= 2
    })
    .await;
    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", br#"{"Update":{"Message":"Departed"}}"#, 1).await.unwrap();
    let events = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "the event after the restart", || read_json_lines(&events).len() == 1).await;

    let logs = flupd.stderr();
    assert!(logs.contains("connection lost"), "{logs}");
    assert!(logs.matches("connected session_present=false").count() >= 2, "{logs}");
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_port_is_retried_with_backoff() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks(dir.path()));
    standin.stop_broker().await;

    let mut flupd = setup.start();
    let started = Instant::now();
    wait_for(TIMEOUT, "five failed connection attempts", || flupd.stderr().matches("connection failed").count() >= 5)
        .await;
    let elapsed = started.elapsed();
    // Delays double from 500 ms with jitter down to half: at least
    // 0.25 + 0.5 + 1 + 1 s (cap 2 s in this configuration) pass before the
    // fifth attempt. A hot loop would make thousands of attempts instead.
    assert!(elapsed >= Duration::from_millis(2750), "five attempts within {elapsed:?}");
    let attempts = flupd.stderr().matches("connection failed").count();
    assert!(attempts <= 8, "{attempts} attempts within {elapsed:?}");
    println!("{attempts} connection attempts in {elapsed:?}");

    standin.restart_broker().await.unwrap();
    flupd.wait_subscribed();
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_are_renewed_once() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks(dir.path()));
    let mut flupd = setup.start();
    flupd.wait_subscribed();
    let first = standin.issued_client_ids();
    assert_eq!(first.len(), 1);

    standin.revoke(&first[0]).await.unwrap();
    standin.restart_broker().await.unwrap();
    wait_for(TIMEOUT, "new credentials", || standin.credential_calls() == 2).await;
    wait_for(TIMEOUT, "a second subscription", || flupd.stderr().matches("subscribed").count() >= 2).await;

    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", br#"{"Update":{"Message":"Departed"}}"#, 1).await.unwrap();
    let events = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "the event after renewal", || read_json_lines(&events).len() == 1).await;
    assert_eq!(standin.credential_calls(), 2, "one renewal, not a storm");
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_renewed_before_expiry() {
    use flupd_standin::{Standin, StandinOptions};

    // A JWT valid for 40 s with renew_before = 30s is due 10 s after issue.
    let options = StandinOptions { jwt_lifetime: Duration::from_secs(40), ..StandinOptions::default() };
    let standin = Standin::start(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks(dir.path()));
    let config = std::fs::read_to_string(&setup.config_path).unwrap();
    std::fs::write(
        &setup.config_path,
        config.replace("client_prefix = \"flupd\"", "client_prefix = \"flupd\"\nrenew_before = \"30s\""),
    )
    .unwrap();

    let mut flupd = setup.start();
    flupd.wait_subscribed();
    wait_for(TIMEOUT, "renewed credentials", || standin.credential_calls() == 2).await;
    wait_for(TIMEOUT, "a second connection", || flupd.stderr().matches("connected session_present").count() >= 2).await;
    let logs = flupd.stderr();
    assert!(logs.contains("reconnecting with renewed credentials"), "{logs}");
    assert!(!logs.contains("connection lost"), "a planned reconnect is not a fault: {logs}");

    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", br#"{"Update":{"Message":"Departed"}}"#, 1).await.unwrap();
    let events = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "an event with the new credentials", || read_json_lines(&events).len() == 1).await;
    assert_eq!(standin.credential_calls(), 2, "one renewal");
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn packet_above_limit_does_not_reset_backoff() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[outbox]\nmax_event_bytes = 4096\n\n{}", sinks(dir.path()));
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &extra);
    let config = std::fs::read_to_string(&setup.config_path).unwrap();
    std::fs::write(&setup.config_path, config.replace("[mqtt]", "[mqtt]\nmax_packet_size = 8192")).unwrap();
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    // The broker resends this message after every connect, and each
    // connect fails as soon as it arrives.
    let big = format!(r#"{{"Update":{{"Message":"Departed","Note":"{}"}}}}"#, "x".repeat(20_000));
    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", big.as_bytes(), 1).await.unwrap();
    let started = Instant::now();
    wait_for(TIMEOUT, "five oversize errors", || {
        flupd.stderr().matches("message larger than mqtt.max_packet_size").count() >= 5
    })
    .await;
    let elapsed = started.elapsed();
    println!("five oversize reconnects in {elapsed:?}");
    // As with a closed port: at least 0.25 + 0.5 + 1 + 1 s of backoff.
    assert!(elapsed >= Duration::from_millis(2750), "five reconnects within {elapsed:?}");
    let line = flupd.stderr().lines().find(|line| line.contains("message larger than")).unwrap().to_owned();
    assert!(line.contains("ERROR"), "{line}");
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_keeps_running_and_second_sigterm_stops() {
    let standin = common::standin().await;
    let receiver = common::Receiver::start(common::Mode::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}\n[[sinks]]\ntype = \"webhook\"\nname = \"hook\"\nurl = \"{}\"\ntimeout = \"60s\"\n",
        sinks(dir.path()),
        receiver.url
    );
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &extra);
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    flupd.signal(Signal::SIGHUP);
    flupd.wait_for_log("configuration reloaded", TIMEOUT);
    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", br#"{"Update":{"Message":"Departed"}}"#, 1).await.unwrap();
    let events = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "an event after SIGHUP", || read_json_lines(&events).len() == 1).await;
    wait_for(TIMEOUT, "the webhook request", || receiver.requests() == 1).await;

    flupd.signal(Signal::SIGTERM);
    flupd.wait_for_log("stopping, draining sinks", TIMEOUT);
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
    let logs = flupd.stderr();
    assert!(logs.contains("second signal"), "{logs}");
    assert!(logs.contains("sink=hook"), "the undrained sink is named: {logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_state_dir_exits_64_before_any_api_call() {
    use std::os::unix::fs::PermissionsExt;

    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], "[[sinks]]\ntype = \"stdout\"\n");
    // The test runs as root, so flupd runs as nobody to meet the permissions.
    for path in [setup.dir.path().to_owned(), setup.config_path.clone(), setup.path("client_secret")] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::create_dir(setup.path("state")).unwrap();
    std::fs::set_permissions(setup.path("state"), std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(dir);

    let output = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_flupd"))
        .arg("--config")
        .arg(&setup.config_path)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(setup.path("state").to_str().unwrap()), "the error names the directory: {stderr}");
    assert_eq!(standin.token_calls(), 0);
    assert_eq!(standin.credential_calls(), 0);
}
