//! Shared helpers for the integration tests: a stand-in of Lufthansa's side,
//! a flupd process with its own configuration, and waiting on conditions.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flupd_standin::{Standin, StandinOptions};

/// The API key and secret the stand-in accepts by default.
pub const API_KEY: &str = "demo-key";
pub const API_SECRET: &str = "demo-secret";

/// Waits until `condition` holds, checking every 20 ms, and panics with
/// `what` when `timeout` passes first.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async form of [`wait_until`].
pub async fn wait_for(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn standin() -> Standin {
    Standin::start(StandinOptions::default()).await.expect("stand-in starts")
}

/// A temporary directory with a flupd configuration pointing at a stand-in.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Setup {
    /// Writes a configuration for `standin` with the given topic filters and
    /// extra TOML (usually `[[sinks]]` tables). The secret goes in a file.
    pub fn new(standin: &Standin, topics: &[&str], extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret_path = dir.path().join("client_secret");
        std::fs::write(&secret_path, format!("{API_SECRET}\n")).unwrap();
        let topics: Vec<String> = topics.iter().map(|topic| format!("{topic:?}")).collect();
        let toml = format!(
            r#"
log_level = "info,flupd=debug"
shutdown_timeout = "5s"

[lufthansa]
client_id = "{API_KEY}"
client_secret_file = "{secret}"
api_base = "{api_base}"
client_prefix = "flupd"

[mqtt]
topics = [{topics}]
host = "{host}"
port = {port}
ca_file = "{ca}"
keepalive = "10s"
reconnect_max_delay = "2s"

[state]
dir = "{state}"

{extra}
"#,
            secret = secret_path.display(),
            api_base = standin.api_base(),
            topics = topics.join(", "),
            host = standin.broker_host(),
            port = standin.broker_port(),
            ca = standin.ca_file().display(),
            state = dir.path().join("state").display(),
        );
        let config_path = dir.path().join("flupd.toml");
        std::fs::write(&config_path, toml).unwrap();
        Setup { dir, config_path }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `flupd run` with this configuration. Its standard output and
    /// error go to files in the temporary directory.
    pub fn start(&self) -> Flupd {
        self.start_with(&["run"], &[])
    }

    pub fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Flupd {
        let run = std::fs::read_dir(self.dir.path()).map(|entries| entries.count()).unwrap_or(0);
        let stdout_path = self.path(&format!("stdout-{run}.log"));
        let stderr_path = self.path(&format!("stderr-{run}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_flupd"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("flupd starts");
        // Pipes, copied to files by this process, keep flupd's own output
        // free of file limits that a test may set on flupd.
        copy_to_file(child.stdout.take().unwrap(), &stdout_path);
        copy_to_file(child.stderr.take().unwrap(), &stderr_path);
        Flupd { child, stdout_path, stderr_path }
    }
}

fn copy_to_file(mut from: impl std::io::Read + Send + 'static, path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut buffer = [0u8; 8192];
        while let Ok(read) = from.read(&mut buffer) {
            if read == 0 || file.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
    });
}

/// A running flupd process. It is killed when dropped.
pub struct Flupd {
    pub child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Flupd {
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the logs contain `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(text) {
            assert!(Instant::now() < deadline, "no log line {text:?} within {timeout:?}; logs:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every filter is subscribed.
    pub fn wait_subscribed(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.stderr();
            if logs.contains("subscribed") && logs.contains("refused=0") {
                return;
            }
            assert!(Instant::now() < deadline, "flupd did not subscribe within 30s; logs:\n{logs}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal delivered");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "flupd did not exit within {timeout:?}; logs:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Flupd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the complete lines of a JSON Lines file; a missing file reads as
/// empty. A line still being written, without its newline, is left out.
pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("invalid JSON line {line:?}: {error}")))
        .collect()
}

/// How a [`Receiver`] answers webhook requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 after the given delay.
    Accept(Duration),
    /// 503 at once.
    Unavailable,
    /// Never answers.
    Hang,
}

/// A webhook receiver on a loopback port that records the events it
/// accepted, in order.
pub struct Receiver {
    pub url: String,
    state: std::sync::Arc<ReceiverState>,
}

struct ReceiverState {
    mode: std::sync::Mutex<Mode>,
    accepted: std::sync::Mutex<Vec<serde_json::Value>>,
    requests: std::sync::atomic::AtomicUsize,
}

impl Receiver {
    pub async fn start(mode: Mode) -> Receiver {
        use axum::routing::post;

        let state = std::sync::Arc::new(ReceiverState {
            mode: std::sync::Mutex::new(mode),
            accepted: std::sync::Mutex::new(Vec::new()),
            requests: std::sync::atomic::AtomicUsize::new(0),
        });
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |body: axum::body::Bytes| {
                let state = shared.clone();
                async move {
                    state.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mode = *state.mode.lock().unwrap();
                    match mode {
                        Mode::Accept(delay) => {
                            tokio::time::sleep(delay).await;
                            let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            state.accepted.lock().unwrap().push(event);
                            axum::http::StatusCode::OK
                        }
                        Mode::Unavailable => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        Mode::Hang => {
                            std::future::pending::<()>().await;
                            axum::http::StatusCode::OK
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, state }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.state.accepted.lock().unwrap().clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.state.accepted.lock().unwrap().len()
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Publishes `count` distinct flight updates at QoS 1, numbered from `start`.
pub async fn publish_numbered(standin: &Standin, start: u64, count: u64) {
    for n in start..start + count {
        let payload = format!(r#"{{"Update":{{"Message":"New Estimated Arrival","Code":"MVT EA","Seq":{n}}}}}"#);
        standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", payload.as_bytes(), 1).await.expect("publish");
    }
}

/// The `Seq` numbers of the events a sink received, in order.
pub fn sequence_numbers(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().filter_map(|event| event["unknown_fields"]["Update.Seq"].as_u64()).collect()
}
