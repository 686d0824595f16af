//! Running as a systemd service: the unit file as systemd-analyze judges it,
//! sd_notify messages from the real binary over a real datagram socket, and
//! journald priority prefixes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Setup, wait_for};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The highest exposure level `systemd-analyze security` may give the unit.
const MAX_EXPOSURE: f64 = 2.0;

/// Copies the unit into `dir` with ExecStart= and ExecStartPre= pointing at
/// the binary under test, because verify checks that the executable exists.
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/flupd.service")).unwrap();
    let path = dir.join("flupd.service");
    std::fs::write(&path, unit.replace("/usr/bin/flupd", env!("CARGO_BIN_EXE_flupd"))).unwrap();
    path
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs; install the systemd package (.ci/run does) to get it");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(!stderr.contains("flupd.service"), "systemd-analyze verify warned about the unit:\n{stderr}");
}

#[test]
fn unit_security_exposure_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs; install the systemd package (.ci/run does) to get it");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|line| line.contains("Overall exposure level")).unwrap_or_else(|| {
        panic!("no overall exposure level in:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr))
    });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("unreadable score in {line:?}"));
    println!("systemd-analyze security exposure of flupd.service: {score}");
    assert!(score <= MAX_EXPOSURE, "exposure {score} above {MAX_EXPOSURE}:\n{stdout}");
}

/// A notification socket like systemd's: every datagram is kept in order.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while let Ok(len) = socket.recv(&mut buffer) {
                sink.lock().unwrap().push(String::from_utf8_lossy(&buffer[..len]).into_owned());
            }
        });
        NotifySocket { _dir: dir, path, messages }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn position(&self, predicate: impl Fn(&str) -> bool) -> Option<usize> {
        self.messages().iter().position(|message| predicate(message))
    }

    fn count(&self, predicate: impl Fn(&str) -> bool) -> usize {
        self.messages().iter().filter(|message| predicate(message)).count()
    }
}

fn is_ready(message: &str) -> bool {
    message.lines().any(|line| line == "READY=1")
}

fn is_watchdog(message: &str) -> bool {
    message.lines().any(|line| line == "WATCHDOG=1")
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_ready_only_after_subscription() {
    let standin = common::standin().await;
    standin.stop_broker().await;
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], "[[sinks]]\ntype = \"stdout\"\n");
    let socket = NotifySocket::bind();
    let notify_socket = socket.path.to_str().unwrap().to_owned();
    let mut flupd = setup.start_with(&["run"], &[("NOTIFY_SOCKET", &notify_socket), ("WATCHDOG_USEC", "400000")]);

    wait_for(TIMEOUT, "STATUS=reconnecting after a failed connect", || {
        socket.position(|message| message.contains("STATUS=reconnecting after broker_unreachable")).is_some()
    })
    .await;
    let first = socket.messages();
    assert!(first[0].contains("STATUS=fetching MQTT credentials"), "{first:#?}");
    assert!(first.iter().any(|message| message.contains("STATUS=connecting to the broker")), "{first:#?}");
    assert_eq!(socket.count(is_ready), 0, "READY=1 before subscription: {first:#?}");

    standin.restart_broker().await.unwrap();
    wait_for(TIMEOUT, "READY=1", || socket.count(is_ready) == 1).await;
    let ready_at = socket.position(is_ready).unwrap();
    let messages = socket.messages();
    assert!(messages[ready_at].contains("STATUS=subscribed to 1 filters"), "{messages:#?}");
    let connected_at = socket.position(|message| message.contains("STATUS=connected, subscribing")).unwrap();
    assert!(connected_at < ready_at, "{messages:#?}");
    let logs = flupd.stderr();
    assert!(logs.contains("subscribed"), "{logs}");
    assert!(logs.contains("refused=0"), "{logs}");

    // Pings go on after READY=1 at half the watchdog interval.
    let pings_at_ready = socket.count(is_watchdog);
    assert!(pings_at_ready >= 1, "no WATCHDOG=1 while connecting: {messages:#?}");
    wait_for(TIMEOUT, "two more WATCHDOG=1 pings", || socket.count(is_watchdog) >= pings_at_ready + 2).await;

    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
    let messages = socket.messages();
    let stopping_at = messages.iter().position(|message| message.lines().any(|line| line == "STOPPING=1"));
    let stopping_at = stopping_at.unwrap_or_else(|| panic!("no STOPPING=1: {messages:#?}"));
    assert!(stopping_at > ready_at, "{messages:#?}");
    assert_eq!(socket.count(is_ready), 1, "READY=1 sent more than once: {messages:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_absent_socket_is_harmless() {
    let standin = common::standin().await;
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], "[[sinks]]\ntype = \"stdout\"\n");
    let mut flupd = setup.start_with(&["run"], &[("WATCHDOG_USEC", "200000")]);
    flupd.wait_subscribed();
    flupd.signal(Signal::SIGTERM);
    assert_eq!(flupd.wait_exit(TIMEOUT), 0);
    assert!(!flupd.stderr().contains("notification not sent"), "{}", flupd.stderr());
}

/// A TCP server that accepts connections and never responds, so that a
/// webhook delivery to it hangs.
fn silent_server() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn watchdog_withheld_while_sink_hangs() {
    let standin = common::standin().await;
    let (_silent, silent_port) = silent_server();
    let health_port = free_port();
    let extra = format!(
        r#"
[health]
listen = "127.0.0.1:{health_port}"
sink_stuck_after = "1s"

[[sinks]]
type = "webhook"
name = "hanging"
url = "http://127.0.0.1:{silent_port}/hook"
timeout = "1h"
"#
    );
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], &extra);
    let socket = NotifySocket::bind();
    let notify_socket = socket.path.to_str().unwrap().to_owned();
    let flupd = setup.start_with(&["run"], &[("NOTIFY_SOCKET", &notify_socket), ("WATCHDOG_USEC", "200000")]);
    wait_for(TIMEOUT, "READY=1", || socket.count(is_ready) == 1).await;

    let (topic, payload) = flupd_standin::sample_update(0, chrono::Utc::now().date_naive());
    standin.publish(&topic, &payload, 1).await.unwrap();
    flupd.wait_for_log("withholding watchdog pings", TIMEOUT);
    let logs = flupd.stderr();
    assert!(logs.contains("sink hanging: delivery attempt running for"), "{logs}");

    // No ping may follow once the sink counts as stuck. An absence can only
    // be observed over a window, here three watchdog ping intervals. One
    // ping may have been in flight when the log line was written.
    let withheld_at = socket.count(is_watchdog);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(socket.count(is_watchdog) <= withheld_at + 1, "pings went on: {:#?}", socket.messages());

    let response = reqwest::get(format!("http://127.0.0.1:{health_port}/readyz")).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body = response.text().await.unwrap();
    assert!(body.contains("sink hanging: delivery attempt running for"), "{body}");
}

/// Runs `flupd run` with standard error in `stderr_path` and the given
/// environment, for journald tests that need the file's device and inode.
fn run_with_stderr(setup: &Setup, stderr_path: &Path, env: &[(&str, String)]) -> std::process::Child {
    let stderr = std::fs::File::create(stderr_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_flupd"));
    command
        .arg("--config")
        .arg(&setup.config_path)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

fn journal_stream_of(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

fn stop(child: &mut std::process::Child) -> i32 {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    child.wait().unwrap().code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_lines_carry_syslog_priority() {
    let standin = common::standin().await;
    standin.stop_broker().await;
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], "[[sinks]]\ntype = \"stdout\"\n");

    let stderr_path = setup.path("journal.log");
    std::fs::File::create(&stderr_path).unwrap();
    // RUST_LOG=debug adds the debug lines of the HTTP and TLS libraries.
    let env = [("JOURNAL_STREAM", journal_stream_of(&stderr_path)), ("RUST_LOG", "debug".to_owned())];
    let mut child = run_with_stderr(&setup, &stderr_path, &env);
    let read = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    wait_for(TIMEOUT, "a warning about the failed connect", || read().contains("connection failed")).await;
    assert_eq!(stop(&mut child), 0);

    let logs = read();
    for line in logs.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].iter().any(|prefix| line.starts_with(prefix)),
            "line without a priority prefix: {line:?}\n{logs}"
        );
        assert!(!line.contains('\u{1b}'), "color codes in {line:?}");
        assert!(!line[3..].starts_with(|c: char| c.is_ascii_digit()), "timestamp in {line:?}");
    }
    let line_with =
        |text: &str| logs.lines().find(|line| line.contains(text)).unwrap_or_else(|| panic!("{text:?} in {logs}"));
    assert!(line_with("connection failed").starts_with("<4>"), "{logs}");
    assert!(line_with("flupd started").starts_with("<6>"), "{logs}");
    assert!(logs.lines().any(|line| line.starts_with("<7>")), "no debug line at <7>: {logs}");

    // An error: the secret file is missing, so flupd stops at once.
    std::fs::remove_file(setup.path("client_secret")).unwrap();
    std::fs::File::create(&stderr_path).unwrap();
    let mut child = run_with_stderr(&setup, &stderr_path, &[("JOURNAL_STREAM", journal_stream_of(&stderr_path))]);
    assert_eq!(child.wait().unwrap().code(), Some(64));
    let logs = read();
    assert!(logs.lines().any(|line| line.starts_with("<3>") && line.contains("client secret")), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_prefix_needs_matching_stream() {
    let standin = common::standin().await;
    let setup = Setup::new(&standin, &["prd/FlightUpdate/#"], "[[sinks]]\ntype = \"stdout\"\n");
    let stderr_path = setup.path("stderr.log");
    // Inherited from a service's shell: set, but naming another file.
    let mut child = run_with_stderr(&setup, &stderr_path, &[("JOURNAL_STREAM", "1:1".to_owned())]);
    let read = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    wait_for(TIMEOUT, "flupd started", || read().contains("flupd started")).await;
    assert_eq!(stop(&mut child), 0);
    let logs = read();
    assert!(logs.lines().all(|line| !line.starts_with('<')), "{logs}");
}
