//! The contract the container image relies on, checked without a container
//! engine: flupd runs as an unprivileged user with the image's default
//! configuration file and environment variables only, writes its cache to
//! the state directory, passes `flupd health`, and exits 0 on SIGTERM.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{API_KEY, API_SECRET, wait_for};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The unprivileged user and group the test runs flupd as.
const USER: &str = "nobody";
const GROUP: &str = "nogroup";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn user_id(name: &str) -> u32 {
    let output = Command::new("id").args(["-u", name]).output().unwrap();
    assert!(output.status.success(), "user {name} missing: the test needs it to drop privileges");
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap()
}

/// Returns whether every directory above `path` lets other users through, so that
/// an unprivileged user can run the binary.
fn reachable_by_others(path: &Path) -> bool {
    path.ancestors().skip(1).all(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

/// Builds a command that runs `args` as [`USER`] with no environment but `env`.
fn unprivileged(args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid", USER, "--regid", GROUP, "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_flupd"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn container_contract_unprivileged_env_only() {
    let binary = Path::new(env!("CARGO_BIN_EXE_flupd"));
    assert!(
        reachable_by_others(binary),
        "{} is not reachable for other users; make its parent directories world-executable (chmod o+x)",
        binary.display()
    );
    let standin = common::standin().await;

    // Readable by anyone, as files in an image are; the state directory
    // belongs to the user, as the image's volume does.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config_path = dir.path().join("flupd.toml");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/flupd.toml"), &config_path).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::copy(standin.ca_file(), &ca_path).unwrap();
    for path in [&config_path, &ca_path] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let uid = user_id(USER);
    std::os::unix::fs::chown(&state, Some(uid), None).unwrap();

    let health_port = free_port();
    let env: Vec<(String, String)> = [
        ("FLUPD_CONFIG", config_path.to_str().unwrap().to_owned()),
        ("FLUPD_LUFTHANSA__CLIENT_ID", API_KEY.to_owned()),
        ("FLUPD_LUFTHANSA__CLIENT_PREFIX", "flupd".to_owned()),
        ("FLUPD_LUFTHANSA__API_BASE", standin.api_base()),
        ("FLUPD_CLIENT_SECRET", API_SECRET.to_owned()),
        ("FLUPD_MQTT__TOPICS", "prd/FlightUpdate/#".to_owned()),
        ("FLUPD_MQTT__HOST", standin.broker_host().to_owned()),
        ("FLUPD_MQTT__PORT", standin.broker_port().to_string()),
        ("FLUPD_MQTT__CA_FILE", ca_path.to_str().unwrap().to_owned()),
        ("FLUPD_STATE__DIR", state.to_str().unwrap().to_owned()),
        ("FLUPD_HEALTH__LISTEN", format!("127.0.0.1:{health_port}")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();

    let stdout_path = dir.path().join("stdout.log");
    let stderr_path = dir.path().join("stderr.log");
    let mut child = unprivileged(&["run"], &env)
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let health = unprivileged(&["health"], &env).output().unwrap();
        if health.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flupd health did not exit 0 within {TIMEOUT:?}: {}{}\nflupd logs:\n{}",
            String::from_utf8_lossy(&health.stdout),
            String::from_utf8_lossy(&health.stderr),
            stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uid_line = status.lines().find(|line| line.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|id| id == uid.to_string()), "{uid_line}");

    let today = chrono::Utc::now().date_naive();
    for n in 0..3 {
        let (topic, payload) = flupd_standin::sample_update(n, today);
        standin.publish(&topic, &payload, 1).await.unwrap();
    }
    let stdout = || std::fs::read_to_string(&stdout_path).unwrap_or_default();
    wait_for(TIMEOUT, "3 events on stdout", || stdout().lines().count() >= 3).await;
    for line in stdout().lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?}: {error}"));
        assert!(event["topic"].as_str().is_some_and(|topic| topic.starts_with("prd/FlightUpdate/")), "{event}");
    }

    let cache = state.join("credentials.json");
    let meta = std::fs::metadata(&cache).unwrap_or_else(|error| panic!("{}: {error}\n{}", cache.display(), stderr()));
    assert_eq!(meta.uid(), uid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for line in stderr().lines() {
        assert!(line.starts_with('{'), "the image's configuration logs JSON: {line:?}");
    }
    assert!(!stderr().contains(API_SECRET), "the secret reached the logs");

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{}", stderr());
    assert!(stderr().contains("flupd stopped"), "{}", stderr());
}
