//! The command line: check, credentials, exit codes and help.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Setup;

fn flupd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flupd"));
    command.env_remove("RUST_LOG").env("NO_COLOR", "1");
    for (name, _) in std::env::vars() {
        if name.starts_with("FLUPD_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn check_accepts_example_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/flupd.toml");
    let output = flupd().args(["--config", path, "check"]).env("FLUPD_CLIENT_SECRET", "x").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn check_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[lufthansa]\nclient_id = \"k\"\n[mqtt]\ntopics = [\"prd/#/x\"]\nqos = 7\n[[sinks]]\ntype = \"fax\"\n",
    )
    .unwrap();
    let output = flupd().args(["--config", path.to_str().unwrap(), "check"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in
        ["lufthansa.client_prefix", "lufthansa.client_secret", "mqtt.topics[0]", "mqtt.qos", "sinks[0].type"]
    {
        assert!(stderr.contains(expected), "{expected} missing in:\n{stderr}");
    }
    assert!(stderr.contains(path.to_str().unwrap()), "the file is named: {stderr}");
}

#[test]
fn check_reports_missing_explicit_file() {
    let output = flupd().args(["--config", "/nonexistent/flupd.toml", "check"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/flupd.toml"), "{stderr}");
}

#[test]
fn check_warns_about_world_readable_inline_secret() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flupd.toml");
    std::fs::write(
        &path,
        "[lufthansa]\nclient_id = \"k\"\nclient_secret = \"inline-secret\"\nclient_prefix = \"p\"\n[mqtt]\ntopics = [\"prd/FlightUpdate/#\"]\n[[sinks]]\ntype = \"stdout\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = flupd().args(["--config", path.to_str().unwrap(), "check"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("warning") && stdout.contains(path.to_str().unwrap()), "{stdout}");
    assert!(!stdout.contains("inline-secret"));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = flupd().args(["--config", path.to_str().unwrap(), "check"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("warning"));
}

#[test]
fn help_names_defaults_and_units() {
    let output = flupd().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("/etc/flupd/flupd.toml"), "{help}");
    let demo = flupd().args(["demo", "--help"]).output().unwrap();
    let demo_help = String::from_utf8_lossy(&demo.stdout);
    assert!(demo_help.contains("300ms"), "{demo_help}");
    let version = flupd().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("flupd "));
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_command_shows_cache_without_jwt() {
    let standin = common::standin().await;
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], "[[sinks]]\ntype = \"stdout\"\n");

    let config = setup.config_path.to_str().unwrap().to_owned();
    let missing = flupd().args(["--config", &config, "credentials"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--renew"));

    let renewed = flupd().args(["--config", &config, "credentials", "--renew"]).output().unwrap();
    assert_eq!(renewed.status.code(), Some(0), "{}", String::from_utf8_lossy(&renewed.stderr));
    let shown = flupd().args(["--config", &config, "credentials"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&shown.stdout);
    let client_id = &standin.issued_client_ids()[0];
    assert!(stdout.contains(client_id.as_str()), "{stdout}");
    assert!(stdout.contains("expires:"), "{stdout}");
    assert!(stdout.contains("localhost"), "{stdout}");

    let cache: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("state").join("credentials.json")).unwrap()).unwrap();
    let jwt = cache["jwt"].as_str().unwrap();
    for output in [&renewed, &shown] {
        assert!(!String::from_utf8_lossy(&output.stdout).contains(jwt));
        assert!(!String::from_utf8_lossy(&output.stderr).contains(jwt));
    }
    assert_eq!(standin.credential_calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secret_exits_64_with_gateway_text() {
    let standin = common::standin().await;
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], "[[sinks]]\ntype = \"stdout\"\n");
    std::fs::write(setup.path("client_secret"), "wrong-secret-7f3a").unwrap();
    let mut flupd = setup.start();
    let code = flupd.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 64, "{}", flupd.stderr());
    let logs = flupd.stderr();
    assert!(logs.contains("not authorized"), "{logs}");
    assert!(!logs.contains("wrong-secret-7f3a"), "the secret must not be logged: {logs}");
    assert_eq!(standin.credential_calls(), 0);
}

#[cfg(feature = "demo")]
#[test]
fn demo_prints_events_and_exits() {
    let output = flupd().args(["demo", "--max-events", "5", "--interval", "50ms"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|line| {
            line.contains("prd/FlightUpdate")
                || line.contains("LH")
                || line.contains("LX")
                || line.contains("OS")
                || line.contains("EW")
                || line.contains("AZ")
        })
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
}

#[test]
fn demo_rejects_config_option() {
    let output = flupd().args(["demo", "--config", "/etc/flupd/demo.toml", "--max-events", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("/etc/flupd/demo.toml"), "{stderr}");
    assert!(stderr.contains("without --config"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_and_replay_read_the_archive() {
    use nix::sys::signal::Signal;

    let standin = common::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let sinks = format!(
        "[outbox]\nretain = \"1h\"\n\n[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
        file.display()
    );
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &sinks);
    let mut daemon = setup.start();
    daemon.wait_subscribed();
    for (topic, message) in [
        ("prd/FlightUpdate/LH/LH400/2026-07-22", "New Gate Information"),
        ("prd/FlightUpdate/LX/LX18/2026-07-22", "Departed"),
        ("prd/FlightUpdate/LH/LH400/2026-07-22", "Departed"),
    ] {
        let payload = format!(r#"{{"Update":{{"Message":"{message}"}}}}"#);
        standin.publish(topic, payload.as_bytes(), 1).await.unwrap();
    }
    common::wait_for(Duration::from_secs(30), "3 events", || common::read_json_lines(&file).len() == 3).await;
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), 0);

    let config = setup.config_path.to_str().unwrap().to_owned();
    let listed = flupd().args(["--config", &config, "events", "--flight", "LH400"]).output().unwrap();
    assert_eq!(listed.status.code(), Some(0), "{}", String::from_utf8_lossy(&listed.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&listed.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], "gate_change");
    assert_eq!(lines[1]["kind"], "departed");

    let gates =
        flupd().args(["--config", &config, "events", "--kind", "gate_change", "--since", "1h"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&gates.stdout).lines().count(), 1);
    let future = flupd().args(["--config", &config, "events", "--since", "2999-01-01T00:00:00Z"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&future.stdout).lines().count(), 0);
    let bad = flupd().args(["--config", &config, "events", "--since", "yesterday-ish"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "clap rejects an invalid time");

    let replayed =
        flupd().args(["--config", &config, "replay", "--sink", "archive", "--since", "1h"]).output().unwrap();
    assert_eq!(replayed.status.code(), Some(0), "{}", String::from_utf8_lossy(&replayed.stderr));
    let events = common::read_json_lines(&file);
    assert_eq!(events.len(), 6);
    assert!(events[3..].iter().all(|event| event["redelivered"] == true));
    assert!(events[..3].iter().all(|event| event.get("redelivered").is_none()));

    let unknown = flupd().args(["--config", &config, "replay", "--sink", "nope"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("archive"));
}
