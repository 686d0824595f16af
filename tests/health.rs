//! The health endpoint of the real binary against the stand-in: liveness,
//! readiness before and after subscription, Prometheus metrics after real
//! messages, and `flupd health` exit codes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Setup, wait_for};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn get(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client.get(url).send().await.unwrap_or_else(|error| panic!("GET {url}: {error}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Runs `flupd health` with the setup's configuration, returning the exit
/// code and the output.
fn health_command(setup: &Setup) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_flupd"))
        .arg("--config")
        .arg(&setup.config_path)
        .arg("health")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// Returns the value of one series, named exactly as the exporter writes it,
/// such as `flupd_events_total{kind="gate"}`.
fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn value(metrics: &str, name: &str) -> f64 {
    series(metrics, name).unwrap_or_else(|| panic!("series {name} missing in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn health_endpoints_follow_subscription() {
    let standin = common::standin().await;
    standin.stop_broker().await;
    let port = free_port();
    let extra = format!("[health]\nlisten = \"127.0.0.1:{port}\"\n\n[[sinks]]\ntype = \"stdout\"\nformat = \"json\"\n");
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &extra);
    let mut flupd = setup.start();
    let base = format!("http://127.0.0.1:{port}");

    flupd.wait_for_log("health endpoint listening", TIMEOUT);
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    flupd.wait_for_log("connection failed", TIMEOUT);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not connected to the broker"), "{body}");
    let (code, output) = health_command(&setup);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("503"), "{output}");
    assert!(output.contains("not connected"), "{output}");

    standin.restart_broker().await.unwrap();
    flupd.wait_subscribed();
    wait_for(TIMEOUT, "/readyz to answer 200", || {
        let (code, _) = health_command(&setup);
        code == 0
    })
    .await;
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let today = chrono::Utc::now().date_naive();
    for n in 0..5 {
        let (topic, payload) = flupd_standin::sample_update(n, today);
        standin.publish(&topic, &payload, 1).await.unwrap();
    }
    standin.publish("prd/FlightUpdate/LH/LH400/2026-12-24", b"not json", 1).await.unwrap();
    wait_for(TIMEOUT, "6 events on stdout", || flupd.stdout().lines().count() >= 6).await;

    let (status, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(value(&metrics, "flupd_messages_received_total{qos=\"1\"}"), 6.0);
    let events: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("flupd_events_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(events, 6.0, "{metrics}");
    assert_eq!(value(&metrics, "flupd_malformed_payloads_total"), 1.0);
    assert_eq!(value(&metrics, "flupd_sink_delivered_total{sink=\"stdout\"}"), 6.0);
    assert_eq!(value(&metrics, "flupd_sink_failed_total{sink=\"stdout\"}"), 0.0);
    assert_eq!(value(&metrics, "flupd_sink_redelivered_total{sink=\"stdout\"}"), 0.0);
    assert_eq!(value(&metrics, "flupd_sink_retried_total{sink=\"stdout\"}"), 0.0);
    assert_eq!(value(&metrics, "flupd_sink_pending_events{sink=\"stdout\"}"), 0.0);
    assert_eq!(value(&metrics, "flupd_sink_oldest_pending_age_seconds{sink=\"stdout\"}"), 0.0);
    assert!(value(&metrics, "flupd_mqtt_reconnects_total{cause=\"broker_unreachable\"}") >= 1.0, "{metrics}");
    assert_eq!(value(&metrics, "flupd_mqtt_connected"), 1.0);
    assert!(series(&metrics, "flupd_outbox_events").is_some(), "{metrics}");
    assert!(series(&metrics, "flupd_outbox_bytes").is_some(), "{metrics}");
    assert_eq!(value(&metrics, "flupd_mqtt_subscribed"), 1.0);
    assert_eq!(value(&metrics, "flupd_mqtt_session_present"), 0.0);
    // The stand-in issues JWTs valid for about two years.
    let expiry = value(&metrics, "flupd_credentials_expiry_seconds");
    assert!(expiry > 365.0 * 86400.0, "{expiry}");
    assert!(expiry < 3.0 * 365.0 * 86400.0, "{expiry}");
    assert_eq!(value(&metrics, "flupd_api_requests_total{endpoint=\"token\",status=\"200\"}"), 1.0);
    assert_eq!(value(&metrics, "flupd_api_requests_total{endpoint=\"credentials\",status=\"200\"}"), 1.0);
    assert!(metrics.contains("# TYPE flupd_messages_received_total counter"), "{metrics}");

    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
    let (code, output) = health_command(&setup);
    assert_eq!(code, 1, "a stopped daemon is not healthy: {output}");
    assert!(output.contains("not reachable"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_port_taken_fails_start() {
    let standin = common::standin().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let extra = format!("[health]\nlisten = \"127.0.0.1:{port}\"\n\n[[sinks]]\ntype = \"stdout\"\n");
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &extra);
    let mut flupd = setup.start();
    assert_eq!(flupd.wait_exit(TIMEOUT), 1);
    let logs = flupd.stderr();
    assert!(logs.contains(&format!("127.0.0.1:{port}")), "{logs}");
    assert!(logs.contains("health.listen"), "{logs}");
}

#[test]
fn health_command_without_endpoint_exits_64() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/flupd.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_flupd"))
        .args(["--config", path, "health"])
        .env("FLUPD_CLIENT_SECRET", "x")
        .env_remove("FLUPD_HEALTH__LISTEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("health.listen"), "{stderr}");
}
