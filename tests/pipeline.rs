//! The whole pipeline against the stand-in: real HTTP, real TLS, a real
//! mosquitto, and flupd as a real process receiving real signals.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{API_SECRET, Setup, read_json_lines, wait_for};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(30);

fn file_sink(setup_dir: &std::path::Path) -> String {
    format!(
        r#"
[[sinks]]
type = "file"
path = "{}"

[[sinks]]
type = "stdout"
format = "json"
"#,
        setup_dir.join("events.jsonl").display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_delivers_updates_to_file_and_stdout() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &file_sink(dir.path()));
    let mut flupd = setup.start();
    flupd.wait_subscribed();

    let today = chrono::Utc::now().date_naive();
    let mut sent = Vec::new();
    for n in 0..20 {
        let (topic, payload) = flupd_standin::sample_update(n, today);
        standin.publish(&topic, &payload, 1).await.unwrap();
        sent.push((topic, payload));
    }

    let events_path = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "20 events in the file", || read_json_lines(&events_path).len() >= 20).await;
    let events = read_json_lines(&events_path);
    assert_eq!(events.len(), 20);
    for ((topic, payload), event) in sent.iter().zip(&events) {
        assert_eq!(event["topic"], topic.as_str());
        assert_eq!(event["payload"], String::from_utf8_lossy(payload).as_ref());
        assert_eq!(event["qos"], 1);
        assert!(event["flight"].as_str().is_some_and(|flight| topic.contains(flight)), "{event}");
        assert_ne!(event["kind"], serde_json::Value::Null);
    }
    let kinds: std::collections::BTreeSet<&str> = events.iter().filter_map(|event| event["kind"].as_str()).collect();
    assert!(kinds.len() >= 5, "expected varied kinds, got {kinds:?}");

    wait_for(TIMEOUT, "20 lines on stdout", || flupd.stdout().lines().count() >= 20).await;
    let first: serde_json::Value = serde_json::from_str(flupd.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], events[0]["id"]);

    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
    let logs = flupd.stderr();
    assert!(logs.contains("flupd stopped"), "{logs}");
    assert_eq!(standin.credential_calls(), 1);

    let cache = setup.path("state").join("credentials.json");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials cache mode");
    let cached: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    let jwt = cached["jwt"].as_str().unwrap();
    assert!(jwt.len() > 100);
    for output in [flupd.stderr(), flupd.stdout()] {
        assert!(!output.contains(jwt), "JWT leaked into output");
        assert!(!output.contains(API_SECRET), "client secret leaked into output");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_reuses_cached_credentials() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &file_sink(dir.path()));

    for run in 0..3 {
        let mut flupd = setup.start();
        flupd.wait_subscribed();
        if run > 0 {
            assert!(
                flupd.stderr().contains("origin=\"cache\"") || flupd.stderr().contains("origin=cache"),
                "{}",
                flupd.stderr()
            );
        }
        flupd.signal(Signal::SIGINT);
        assert_eq!(flupd.wait_exit(TIMEOUT), 0);
    }
    assert_eq!(standin.credential_calls(), 1, "a restart must not fetch new credentials");
    assert_eq!(standin.issued_client_ids().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_payloads_are_delivered_flagged() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &file_sink(dir.path()));
    let flupd = setup.start();
    flupd.wait_subscribed();

    let topic = "prd/FlightUpdate/LH/LH400/2026-07-22";
    standin.publish(topic, b"gate changed to B44", 1).await.unwrap();
    standin.publish(topic, &[0xc3, 0x28, 0xff], 1).await.unwrap();
    standin.publish(topic, b"[]", 1).await.unwrap();

    let events_path = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "3 events", || read_json_lines(&events_path).len() >= 3).await;
    let events = read_json_lines(&events_path);
    assert_eq!(events[0]["payload_error"], "not_json");
    assert_eq!(events[0]["payload"], "gate changed to B44");
    assert_eq!(events[1]["payload_error"], "not_utf8");
    assert_eq!(events[1]["payload_base64"], "wyj/");
    assert_eq!(events[2]["payload_error"], "unexpected_shape");
    for event in &events {
        assert_eq!(event["flight"], "LH400");
    }
    let logs = flupd.stderr();
    assert_eq!(logs.matches("malformed payload").count(), 3, "{logs}");
    assert!(logs.contains("WARN"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_above_ten_kib_are_delivered() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &file_sink(dir.path()));
    let flupd = setup.start();
    flupd.wait_subscribed();

    let filler = "x".repeat(200 * 1024);
    let payload = format!(r#"{{"Update":{{"Message":"Departed","Note":"{filler}"}}}}"#);
    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", payload.as_bytes(), 1).await.unwrap();

    let events_path = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "the large event", || !read_json_lines(&events_path).is_empty()).await;
    let events = read_json_lines(&events_path);
    assert_eq!(events[0]["kind"], "departed");
    assert_eq!(events[0]["unknown_fields"]["Update.Note"].as_str().map(str::len), Some(200 * 1024));
    assert!(!flupd.stderr().contains("connection lost"), "{}", flupd.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribes_many_filters_in_batches() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let topics: Vec<String> = (1..=95).map(|n| format!("prd/FlightUpdate/LH/LH{n}/+")).collect();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let setup = Setup::new(&standin, &topic_refs, &file_sink(dir.path()));
    let flupd = setup.start();
    flupd.wait_subscribed();
    assert!(flupd.stderr().contains("granted=95"), "{}", flupd.stderr());

    // The first and the last filter both receive.
    standin.publish("prd/FlightUpdate/LH/LH1/2026-07-22", br#"{"Update":{"Message":"Departed"}}"#, 1).await.unwrap();
    standin.publish("prd/FlightUpdate/LH/LH95/2026-07-22", br#"{"Update":{"Message":"Arrived"}}"#, 1).await.unwrap();
    standin.publish("prd/FlightUpdate/LH/LH96/2026-07-22", br#"{"Update":{"Message":"Arrived"}}"#, 1).await.unwrap();
    standin.publish("prd/FlightUpdate/LH/LH2/2026-07-22", br#"{"Update":{"Message":"Arrived"}}"#, 1).await.unwrap();

    let events_path = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "3 events", || read_json_lines(&events_path).len() >= 3).await;
    let flights: Vec<String> =
        read_json_lines(&events_path).iter().map(|event| event["flight"].as_str().unwrap().to_owned()).collect();
    assert_eq!(flights, ["LH1", "LH95", "LH2"], "LH96 is outside every filter");
}

#[tokio::test(flavor = "multi_thread")]
async fn sink_topic_filters_choose_events() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"
[[sinks]]
type = "file"
name = "lufthansa-only"
path = "{lh}"
topics = ["prd/FlightUpdate/LH/#"]

[[sinks]]
type = "file"
name = "everything"
path = "{all}"
"#,
        lh = dir.path().join("lh.jsonl").display(),
        all = dir.path().join("all.jsonl").display()
    );
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks);
    let flupd = setup.start();
    flupd.wait_subscribed();

    for topic in [
        "prd/FlightUpdate/LX/LX18/2026-07-22",
        "prd/FlightUpdate/LH/LH400/2026-07-22",
        "prd/FlightUpdate/OS/OS87/2026-07-22",
    ] {
        standin.publish(topic, br#"{"Update":{"Message":"Departed"}}"#, 1).await.unwrap();
    }
    let all = dir.path().join("all.jsonl");
    wait_for(TIMEOUT, "3 events in all.jsonl", || read_json_lines(&all).len() >= 3).await;
    let lh = read_json_lines(&dir.path().join("lh.jsonl"));
    assert_eq!(lh.len(), 1);
    assert_eq!(lh[0]["carrier"], "LH");
    drop(flupd);
}

#[tokio::test(flavor = "multi_thread")]
async fn enrichment_adds_status_and_changes() {
    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let today = chrono::Utc::now().date_naive();
    let extra = format!(
        "[enrich]\nenabled = true\nmax_wait = \"5s\"\nmin_interval = \"0s\"\nttl_near = \"0s\"\nttl_far = \"0s\"\nttl_final = \"0s\"\n{}",
        file_sink(dir.path())
    );
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &extra);
    let config = std::fs::read_to_string(&setup.config_path).unwrap();
    std::fs::write(
        &setup.config_path,
        config.replace("client_prefix = \"flupd\"", "client_prefix = \"flupd\"\nmax_calls_per_second = 5"),
    )
    .unwrap();
    let flupd = setup.start();
    flupd.wait_subscribed();

    let topic = format!("prd/FlightUpdate/LH/LH400/{today}");
    let payload = br#"{"Update":{"Message":"New Gate Information","Code":"Y"}}"#;
    assert!(standin.set_gate("LH400", today, "B20"));
    standin.publish(&topic, payload, 1).await.unwrap();
    let events_path = dir.path().join("events.jsonl");
    wait_for(TIMEOUT, "the first event", || read_json_lines(&events_path).len() == 1).await;

    assert!(standin.set_gate("LH400", today, "B44"));
    standin.publish(&topic, br#"{"Update":{"Message":"New Gate Information","Code":"Y","N":2}}"#, 1).await.unwrap();
    wait_for(TIMEOUT, "the second event", || read_json_lines(&events_path).len() == 2).await;

    let events = read_json_lines(&events_path);
    assert_eq!(events[0]["status"]["departure"]["gate"], "B20", "{}", events[0]);
    let change =
        events[1]["changes"].as_array().unwrap().iter().find(|change| change["field"] == "departure.gate").cloned();
    let change = change.unwrap_or_else(|| panic!("no gate change in {}", events[1]));
    assert_eq!(change["old"], "B20");
    assert_eq!(change["new"], "B44");

    // Unknown flights are delivered with the reason recorded.
    standin.publish(&format!("prd/FlightUpdate/XX/XX1/{today}"), payload, 1).await.unwrap();
    wait_for(TIMEOUT, "the third event", || read_json_lines(&events_path).len() == 3).await;
    let unknown = &read_json_lines(&events_path)[2];
    assert!(unknown.get("status").is_none());
    assert_eq!(unknown["enrichment_error"]["reason"], "not_found", "{unknown}");
    drop(flupd);
}
