//! SIGHUP: topic filters and sinks change in place, nothing queued is
//! lost, and an invalid configuration leaves the running one in place.

mod common;

use std::time::Duration;

use common::{Mode, Receiver, Setup, publish_numbered, read_json_lines, sequence_numbers, wait_for};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(30);

fn file_sink(name: &str, path: &std::path::Path) -> String {
    format!("[[sinks]]\ntype = \"file\"\nname = \"{name}\"\npath = \"{}\"\n", path.display())
}

/// Replaces the topics and sinks of the setup's configuration file.
fn rewrite(setup: &Setup, topics: &str, sinks: &str) {
    let config = std::fs::read_to_string(&setup.config_path).unwrap();
    let start = config.find("topics = [").unwrap();
    let end = start + config[start..].find('\n').unwrap();
    let mut config = format!("{}topics = [{topics}]{}", &config[..start], &config[end..]);
    let sinks_at = config.find("[[sinks]]").unwrap();
    config.truncate(sinks_at);
    config.push_str(sinks);
    std::fs::write(&setup.config_path, config).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_changes_topics_and_sinks() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.jsonl");
    let second = dir.path().join("second.jsonl");
    let setup = Setup::new(&standin, &["prd/FlightUpdate/LH/#"], &file_sink("first", &first));
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    let departed = br#"{"Update":{"Message":"Departed"}}"#;
    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", departed, 1).await.unwrap();
    wait_for(TIMEOUT, "the LH event", || read_json_lines(&first).len() == 1).await;

    let sinks = format!("{}{}", file_sink("first", &first), file_sink("second", &second));
    rewrite(&setup, "\"prd/FlightUpdate/LX/#\"", &sinks);
    flupd.signal(Signal::SIGHUP);
    flupd.wait_for_log("configuration reloaded", TIMEOUT);
    flupd.wait_for_log("unsubscribed topic=prd/FlightUpdate/LH/#", TIMEOUT);
    wait_for(TIMEOUT, "the new subscription", || flupd.stderr().matches("refused=0").count() >= 2).await;

    // LH is no longer subscribed, even though the session is persistent.
    standin.publish("prd/FlightUpdate/LH/LH401/2026-07-22", departed, 1).await.unwrap();
    standin.publish("prd/FlightUpdate/LX/LX18/2026-07-22", departed, 1).await.unwrap();
    wait_for(TIMEOUT, "the LX event in both files", || {
        read_json_lines(&first).len() == 2 && read_json_lines(&second).len() == 1
    })
    .await;
    let flights: Vec<String> =
        read_json_lines(&first).iter().map(|event| event["flight"].as_str().unwrap().to_owned()).collect();
    assert_eq!(flights, ["LH400", "LX18"]);
    assert_eq!(read_json_lines(&second)[0]["flight"], "LX18");

    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_rejects_invalid_configuration() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &file_sink("file", &events));
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    let good = std::fs::read_to_string(&setup.config_path).unwrap();
    std::fs::write(&setup.config_path, good.replace("keepalive = \"10s\"", "keepalive = \"often\"")).unwrap();
    flupd.signal(Signal::SIGHUP);
    flupd.wait_for_log("configuration reload rejected", TIMEOUT);
    let rejection = flupd.stderr().lines().find(|line| line.contains("reload rejected")).unwrap().to_owned();
    assert!(rejection.contains("ERROR") && rejection.contains("mqtt.keepalive"), "{rejection}");

    // A sink that cannot start rejects the reload too, before anything stops.
    let missing = format!("{}{}", file_sink("file", &events), file_sink("other", &dir.path().join("missing/x.jsonl")));
    std::fs::write(&setup.config_path, &good).unwrap();
    rewrite(&setup, "\"prd/FlightUpdate/#\"", &missing);
    flupd.signal(Signal::SIGHUP);
    wait_for(TIMEOUT, "the second rejection", || flupd.stderr().matches("configuration reload rejected").count() == 2)
        .await;

    publish_numbered(&standin, 0, 3).await;
    wait_for(TIMEOUT, "events with the running configuration", || read_json_lines(&events).len() == 3).await;
    assert!(!flupd.stderr().contains("configuration reloaded"));
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_rebuilds_sinks_without_losing_events() {
    let standin = common::standin().await;
    let receiver = Receiver::start(Mode::Unavailable).await;
    let hook = format!(
        "[[sinks]]\ntype = \"webhook\"\nname = \"hook\"\nurl = \"{}\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\n",
        receiver.url
    );
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &hook);
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    publish_numbered(&standin, 0, 20).await;
    wait_for(TIMEOUT, "failing deliveries", || receiver.requests() >= 3).await;
    // The reload changes the webhook's timeout, so the sink is rebuilt while
    // twenty events wait for it.
    rewrite(&setup, "\"prd/FlightUpdate/#\"", &hook.replace("name = \"hook\"", "name = \"hook\"\ntimeout = \"3s\""));
    flupd.signal(Signal::SIGHUP);
    flupd.wait_for_log("configuration reloaded", TIMEOUT);

    receiver.set_mode(Mode::Accept(Duration::ZERO));
    publish_numbered(&standin, 20, 5).await;
    wait_for(TIMEOUT, "25 events at the webhook", || receiver.accepted_count() >= 25).await;
    assert_eq!(sequence_numbers(&receiver.accepted()), (0..25).collect::<Vec<u64>>());
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}
