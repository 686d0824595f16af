//! Losing nothing: crashes, broker restarts, sink outages and shutdown
//! against a real mosquitto, with counts printed by every test.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Mode, Receiver, Setup, publish_numbered, read_json_lines, sequence_numbers, wait_for};
use flupd_standin::{Standin, StandinOptions};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(60);

fn file_and_webhook(dir: &std::path::Path, url: &str, extra: &str) -> String {
    format!(
        r#"
[[sinks]]
type = "file"
name = "file"
path = "{file}"

[[sinks]]
type = "webhook"
name = "hook"
url = "{url}"
timeout = "1s"
retry_initial = "50ms"
retry_max = "500ms"
{extra}
"#,
        file = dir.join("events.jsonl").display()
    )
}

fn distinct(numbers: &[u64]) -> BTreeSet<u64> {
    numbers.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_load_loses_nothing() {
    let standin = common::standin().await;
    let receiver = Receiver::start(Mode::Accept(Duration::from_millis(2))).await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &file_and_webhook(dir.path(), &receiver.url, ""));
    let flupd = setup.start();
    flupd.wait_subscribed();

    const TOTAL: u64 = 5000;
    let publisher = {
        let standin_ptr: &Standin = &standin;
        publish_numbered(standin_ptr, 0, TOTAL)
    };
    let killer = async {
        wait_for(TIMEOUT, "the webhook to be busy", || receiver.accepted_count() >= 200).await;
        flupd.signal(Signal::SIGKILL);
    };
    tokio::join!(publisher, killer);
    drop(flupd);

    // The broker kept the persistent session's queue while flupd was dead.
    let mut restarted = setup.start();
    let file = dir.path().join("events.jsonl");
    wait_for(Duration::from_secs(120), "every event in the file", || {
        distinct(&sequence_numbers(&read_json_lines(&file))).len() as u64 == TOTAL
    })
    .await;
    wait_for(Duration::from_secs(120), "every event at the webhook", || {
        distinct(&sequence_numbers(&receiver.accepted())).len() as u64 == TOTAL
    })
    .await;

    let file_events = read_json_lines(&file);
    let hook_events = receiver.accepted();
    let file_repeats = file_events.len() as u64 - TOTAL;
    let hook_repeats = hook_events.len() as u64 - TOTAL;
    println!(
        "file: {} lines for {TOTAL} messages ({file_repeats} repeats); webhook: {} requests accepted ({hook_repeats} repeats)",
        file_events.len(),
        hook_events.len()
    );

    // Every event delivered twice carries the mark at least on its later copy.
    for events in [&file_events, &hook_events] {
        let mut seen = BTreeSet::new();
        for event in events.iter() {
            let n = event["unknown_fields"]["Update.Seq"].as_u64().unwrap();
            if !seen.insert(n) {
                assert_eq!(event["redelivered"], true, "repeat of {n} not marked: {event}");
            }
        }
    }
    restarted.signal(Signal::SIGTERM);
    assert_eq!(restarted.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_broker_restart_loses_nothing() {
    let standin = Standin::start(StandinOptions { persistence: true, ..StandinOptions::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!("[[sinks]]\ntype = \"file\"\npath = \"{}\"\n", dir.path().join("events.jsonl").display());
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks);
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    publish_numbered(&standin, 0, 200).await;
    standin.restart_broker().await.unwrap();
    publish_numbered(&standin, 200, 200).await;

    let file = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "400 events", || distinct(&sequence_numbers(&read_json_lines(&file))).len() == 400).await;
    let logs = flupd.stderr();
    assert!(logs.contains("connected session_present=true"), "the broker resumed the session: {logs}");
    println!("{} lines for 400 messages across a broker restart", read_json_lines(&file).len());
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_outage_holds_back_only_the_webhook() {
    let standin = common::standin().await;
    let receiver = Receiver::start(Mode::Unavailable).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "\n[[sinks]]\ntype = \"stdout\"\nformat = \"json\"\n";
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &file_and_webhook(dir.path(), &receiver.url, extra));
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    publish_numbered(&standin, 0, 500).await;
    // Past twice the keepalive (10 s in these tests), with the webhook hanging.
    receiver.set_mode(Mode::Hang);
    let hang_started = Instant::now();
    publish_numbered(&standin, 500, 500).await;

    let file = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "1000 events in the file", || read_json_lines(&file).len() == 1000).await;
    wait_for(TIMEOUT, "1000 lines on stdout", || flupd.stdout().lines().count() == 1000).await;
    wait_for(TIMEOUT, "twice the keepalive", || hang_started.elapsed() >= Duration::from_secs(21)).await;
    assert!(!flupd.stderr().contains("connection lost"), "the MQTT connection must stay up: {}", flupd.stderr());
    assert_eq!(receiver.accepted_count(), 0);

    receiver.set_mode(Mode::Accept(Duration::ZERO));
    wait_for(TIMEOUT, "1000 events at the webhook", || receiver.accepted_count() >= 1000).await;
    let numbers = sequence_numbers(&receiver.accepted());
    assert_eq!(numbers, (0..1000).collect::<Vec<u64>>(), "in order, each once");
    println!("webhook: {} requests, {} accepted after recovery", receiver.requests(), receiver.accepted_count());
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_leaves_undelivered_events_for_next_start() {
    let standin = common::standin().await;
    let receiver = Receiver::start(Mode::Accept(Duration::from_millis(100))).await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &file_and_webhook(dir.path(), &receiver.url, ""));
    // shutdown_timeout is 5 s in the test configuration: 100 events at
    // 100 ms each cannot all drain, 30 can.
    let mut flupd = setup.start();
    flupd.wait_subscribed();
    publish_numbered(&standin, 0, 100).await;
    let file = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "100 events in the file", || read_json_lines(&file).len() == 100).await;

    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
    let logs = flupd.stderr();
    let first_run = receiver.accepted_count();
    assert!(first_run < 100, "the slow webhook cannot have drained: {first_run}");
    let undrained = logs.lines().find(|line| line.contains("did not drain")).unwrap_or_else(|| panic!("{logs}"));
    assert!(undrained.contains("sink=hook"), "{undrained}");

    receiver.set_mode(Mode::Accept(Duration::ZERO));
    let mut restarted = setup.start();
    wait_for(TIMEOUT, "the rest at the webhook", || distinct(&sequence_numbers(&receiver.accepted())).len() == 100)
        .await;
    println!("webhook: {first_run} before SIGTERM, {} after restart", receiver.accepted_count() - first_run);
    assert_eq!(read_json_lines(&file).len(), 100, "the file sink had drained and gets nothing twice");
    restarted.signal(Signal::SIGTERM);
    assert_eq!(restarted.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_broker_is_noticed_within_two_keepalives() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!("[[sinks]]\ntype = \"file\"\npath = \"{}\"\n", dir.path().join("events.jsonl").display());
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks);
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    standin.freeze_broker();
    let frozen = Instant::now();
    wait_for(TIMEOUT, "the lost connection", || flupd.stderr().contains("connection lost")).await;
    let noticed = frozen.elapsed();
    println!("frozen broker noticed after {noticed:?} (keepalive 10 s)");
    assert!(noticed <= Duration::from_secs(21), "{noticed:?}");

    // While frozen, attempts are spaced by the backoff, not a hot loop.
    let failures_before = flupd.stderr().matches("connection failed").count();
    let window = Instant::now();
    wait_for(TIMEOUT, "three more failed attempts", || {
        flupd.stderr().matches("connection failed").count() >= failures_before + 3
    })
    .await;
    println!("three attempts in {:?}", window.elapsed());

    standin.thaw_broker();
    wait_for(TIMEOUT, "a new session", || flupd.stderr().matches("connected session_present").count() >= 2).await;
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_message_goes_to_dead_letter() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[outbox]\nmax_event_bytes = 4096\n\n[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
        dir.path().join("events.jsonl").display()
    );
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks);
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    let big = format!(r#"{{"Update":{{"Message":"Departed","Note":"{}"}}}}"#, "x".repeat(8000));
    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", big.as_bytes(), 1).await.unwrap();
    publish_numbered(&standin, 0, 3).await;

    let file = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "the 3 small events", || read_json_lines(&file).len() == 3).await;
    let dead = read_json_lines(&setup.path("state").join("dead-letter.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["topic"], "prd/FlightUpdate/LH/LH400/2026-07-22");
    assert_eq!(dead[0]["bytes"], big.len());
    let logs = flupd.stderr();
    assert!(logs.contains("message too large"), "{logs}");
    assert!(!logs.contains("connection lost"), "{logs}");
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
    assert!(flupd.stderr().contains("dead_lettered=1"), "{}", flupd.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_outbox_stops_acks_until_it_recovers() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!("[[sinks]]\ntype = \"file\"\npath = \"{}\"\n", dir.path().join("events.jsonl").display());
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks);
    let mut flupd = setup.start();
    flupd.wait_subscribed();
    publish_numbered(&standin, 0, 5).await;
    let file = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "5 events", || read_json_lines(&file).len() == 5).await;

    // Running as root, permission bits do not stop flupd, so a file size
    // limit of one byte makes every write to the outbox fail with EFBIG,
    // like a full disk.
    let pid = flupd.child.id().to_string();
    let limit = std::process::Command::new("prlimit").args(["--pid", &pid, "--fsize=1:unlimited"]).status().unwrap();
    assert!(limit.success());
    publish_numbered(&standin, 5, 20).await;
    flupd.wait_for_log("outbox write failed", Duration::from_secs(20));
    let failure = flupd.stderr().lines().find(|line| line.contains("outbox write failed")).unwrap().to_owned();
    assert!(failure.contains("ERROR"), "{failure}");
    assert!(failure.contains("outbox.sqlite"), "the error names the file: {failure}");
    assert_eq!(read_json_lines(&file).len(), 5, "nothing unstored is delivered");

    let unlimited =
        std::process::Command::new("prlimit").args(["--pid", &pid, "--fsize=unlimited:unlimited"]).status().unwrap();
    assert!(unlimited.success());
    wait_for(TIMEOUT, "25 events after recovery", || distinct(&sequence_numbers(&read_json_lines(&file))).len() == 25)
        .await;
    assert!(flupd.stderr().contains("outbox writable again"), "{}", flupd.stderr());
    println!("{} lines in the file for 25 messages", read_json_lines(&file).len());
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn qos0_burst_survives_stuck_outbox() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let sinks = format!("[[sinks]]\ntype = \"file\"\npath = \"{}\"\n", file.display());
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks);
    let mut flupd = setup.start_with(&["run"], &[("FLUPD_MQTT__QOS", "0")]);
    flupd.wait_subscribed();

    // With the outbox failing, the dispatcher takes nothing, so the
    // messages beyond flupd's queue of 2,048 must wait in the broker.
    let pid = flupd.child.id().to_string();
    let limit = std::process::Command::new("prlimit").args(["--pid", &pid, "--fsize=1:unlimited"]).status().unwrap();
    assert!(limit.success());
    publish_numbered(&standin, 0, 5000).await;
    flupd.wait_for_log("outbox write failed", Duration::from_secs(20));

    let unlimited =
        std::process::Command::new("prlimit").args(["--pid", &pid, "--fsize=unlimited:unlimited"]).status().unwrap();
    assert!(unlimited.success());
    wait_for(TIMEOUT, "5000 events after recovery", || read_json_lines(&file).len() >= 5000).await;
    let numbers = sequence_numbers(&read_json_lines(&file));
    assert_eq!(numbers, (0..5000).collect::<Vec<u64>>(), "every message once, in order");
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
}
