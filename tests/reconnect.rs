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
