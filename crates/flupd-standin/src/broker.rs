//! The mosquitto process: its configuration in a temporary directory, the password file, and
//! start, reload, stop, freeze and thaw.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use rumqttc::MqttOptions;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::mqtt::{BrokerEndpoint, ProbeOutcome, probe_once};
use crate::tls::{client_config, generate_pki};

/// Time mosquitto may take from spawn to accepting the admin user.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Time mosquitto may take to save its state and exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between readiness checks while mosquitto starts.
const START_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Number of log lines that errors quote.
const LOG_TAIL_LINES: usize = 20;

/// User name of the stand-in's own publisher, the only user allowed to publish.
const ADMIN_USER: &str = "standin-admin";

pub(crate) struct Broker {
    mosquitto: PathBuf,
    passwd_tool: PathBuf,
    config_path: PathBuf,
    password_file: PathBuf,
    log_path: PathBuf,
    ca_file: PathBuf,
    endpoint: BrokerEndpoint,
    admin_password: String,
    /// Counter for the admin client ids, so that concurrent admin connections do not take
    /// over each other's session.
    admin_connections: AtomicU64,
    child: tokio::sync::Mutex<Option<Child>>,
    /// Process id of the running mosquitto, or 0 while it is stopped. Signals go to this id
    /// without taking the `child` lock.
    pid: AtomicU32,
    frozen: AtomicBool,
    /// Serializes edits of the password file, since mosquitto_passwd rewrites the whole file.
    password_file_lock: tokio::sync::Mutex<()>,
    // Dropped last: it deletes the directory with the configuration, keys and log.
    _dir: TempDir,
}

impl Broker {
    /// Writes the configuration, starts mosquitto on a free loopback port and waits until it
    /// accepts the admin user.
    pub async fn start(persistence: bool) -> Result<Self> {
        let mosquitto = find_program("mosquitto", Path::new("/usr/sbin"))?;
        let passwd_tool = find_program("mosquitto_passwd", Path::new("/usr/bin"))?;
        let dir = tempfile::Builder::new()
            .prefix("flupd-standin-")
            .tempdir()
            .context("failed to create a temporary directory for mosquitto")?;
        let base = dir.path().to_path_buf();

        let pki = generate_pki()?;
        let ca_file = base.join("ca.pem");
        let cert_file = base.join("server.pem");
        let key_file = base.join("server.key");
        write_file(&ca_file, &pki.ca_pem)?;
        write_file(&cert_file, &pki.server_cert_pem)?;
        write_file(&key_file, &pki.server_key_pem)?;

        let acl_file = base.join("acl");
        // Pattern lines apply to every user. Clients only read, as on the real service, and
        // only the admin user may publish. mosquitto logs a harmless warning that the pattern
        // contains neither %c nor %u.
        write_file(&acl_file, &format!("pattern read prd/#\n\nuser {ADMIN_USER}\ntopic readwrite prd/#\n"))?;

        let password_file = base.join("passwords");
        let admin_password = random_token(32);
        run_passwd_tool(&passwd_tool, &["-c", "-b"], &password_file, ADMIN_USER, Some(&admin_password)).await?;

        let port = free_loopback_port()?;
        let persistence_dir = base.join("persistence");
        if persistence {
            std::fs::create_dir(&persistence_dir)
                .with_context(|| format!("failed to create {}", persistence_dir.display()))?;
        }
        let config_path = base.join("mosquitto.conf");
        let config = render_config(&ConfigPaths {
            port,
            password_file: &password_file,
            acl_file: &acl_file,
            persistence_dir: persistence.then_some(persistence_dir.as_path()),
            ca_file: &ca_file,
            cert_file: &cert_file,
            key_file: &key_file,
        });
        write_file(&config_path, &config)?;

        let endpoint = BrokerEndpoint { port, tls: client_config(&pki.ca_der)? };
        let broker = Broker {
            mosquitto,
            passwd_tool,
            config_path,
            password_file,
            log_path: base.join("mosquitto.log"),
            ca_file,
            endpoint,
            admin_password,
            admin_connections: AtomicU64::new(0),
            child: tokio::sync::Mutex::new(None),
            pid: AtomicU32::new(0),
            frozen: AtomicBool::new(false),
            password_file_lock: tokio::sync::Mutex::new(()),
            _dir: dir,
        };
        broker.spawn_and_wait().await?;
        Ok(broker)
    }

    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    pub fn endpoint(&self) -> &BrokerEndpoint {
        &self.endpoint
    }

    /// Returns client options for the admin user with a client id that no other connection
    /// uses.
    pub fn admin_options(&self) -> MqttOptions {
        let n = self.admin_connections.fetch_add(1, Ordering::Relaxed);
        self.endpoint.options(&format!("{ADMIN_USER}-{n}"), ADMIN_USER, &self.admin_password)
    }

    /// Returns whether the mosquitto process exists, frozen or not.
    pub fn is_running(&self) -> bool {
        self.pid.load(Ordering::SeqCst) != 0
    }

    /// Returns whether mosquitto runs and is not frozen, so that a probe gets a response.
    pub fn is_responsive(&self) -> bool {
        self.pid.load(Ordering::SeqCst) != 0 && !self.frozen.load(Ordering::SeqCst)
    }

    /// Adds or replaces a user in the password file. Takes effect on the next [`Self::reload`]
    /// or start.
    pub async fn add_user(&self, username: &str, password: &str) -> Result<()> {
        let _guard = self.password_file_lock.lock().await;
        run_passwd_tool(&self.passwd_tool, &["-b"], &self.password_file, username, Some(password)).await
    }

    /// Removes a user from the password file. Takes effect on the next [`Self::reload`] or
    /// start.
    pub async fn remove_user(&self, username: &str) -> Result<()> {
        let _guard = self.password_file_lock.lock().await;
        run_passwd_tool(&self.passwd_tool, &["-D"], &self.password_file, username, None).await
    }

    /// Sends SIGHUP so that mosquitto rereads the password and ACL files. The reload happens
    /// asynchronously after this returns. A frozen mosquitto handles the signal when thawed,
    /// and a stopped one reads the files when it starts again.
    pub fn reload(&self) -> Result<()> {
        self.signal(Signal::SIGHUP)
    }

    /// Stops mosquitto with SIGTERM, so that with persistence it saves its sessions, and kills
    /// it if it has not exited within a few seconds.
    pub async fn stop(&self) {
        let mut child_slot = self.child.lock().await;
        let Some(mut child) = child_slot.take() else {
            return;
        };
        // A stopped process does not handle SIGTERM until it is continued.
        let _ = self.signal(Signal::SIGCONT);
        self.frozen.store(false, Ordering::SeqCst);
        if let Err(error) = self.signal(Signal::SIGTERM) {
            tracing::warn!(error = %error, "failed to send SIGTERM to mosquitto");
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => tracing::debug!(status = %status, "mosquitto stopped"),
            Ok(Err(error)) => tracing::warn!(error = %error, "failed to wait for mosquitto to exit"),
            Err(_) => {
                tracing::warn!(timeout = ?STOP_TIMEOUT, "mosquitto did not exit after SIGTERM; killing it");
                if let Err(error) = child.kill().await {
                    tracing::warn!(error = %error, "failed to kill mosquitto");
                }
            }
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Starts mosquitto again on the same port, stopping it first if it runs.
    pub async fn restart(&self) -> Result<()> {
        self.stop().await;
        self.spawn_and_wait().await
    }

    /// Suspends mosquitto with SIGSTOP: connections stay open, but it processes no packets.
    pub fn freeze(&self) {
        match self.signal(Signal::SIGSTOP) {
            Ok(()) => self.frozen.store(true, Ordering::SeqCst),
            Err(error) => tracing::warn!(error = %error, "failed to freeze mosquitto"),
        }
    }

    /// Resumes a frozen mosquitto with SIGCONT.
    pub fn thaw(&self) {
        match self.signal(Signal::SIGCONT) {
            Ok(()) => self.frozen.store(false, Ordering::SeqCst),
            Err(error) => tracing::warn!(error = %error, "failed to thaw mosquitto"),
        }
    }

    /// Kills mosquitto at once without waiting. For use in `Drop`, where nothing can be
    /// awaited; `kill_on_drop` on the child reaps it later.
    pub fn kill_now(&self) {
        let _ = self.signal(Signal::SIGKILL);
    }

    /// Returns the last lines of the mosquitto log, for error messages.
    pub fn log_tail(&self) -> String {
        match std::fs::read_to_string(&self.log_path) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                let start = lines.len().saturating_sub(LOG_TAIL_LINES);
                let mut tail = String::new();
                for line in &lines[start..] {
                    let _ = writeln!(tail, "  {line}");
                }
                tail
            }
            Err(error) => format!("  (failed to read {}: {error})", self.log_path.display()),
        }
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid == 0 {
            bail!("mosquitto is not running, so {signal} was not sent");
        }
        let raw_pid = i32::try_from(pid).with_context(|| format!("process id {pid} out of range"))?;
        kill(Pid::from_raw(raw_pid), signal)
            .with_context(|| format!("failed to send {signal} to mosquitto (pid {pid})"))
    }

    async fn spawn_and_wait(&self) -> Result<()> {
        let mut child_slot = self.child.lock().await;
        if child_slot.is_some() {
            bail!("mosquitto is already running");
        }

        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("failed to open {}", self.log_path.display()))?;
        let log_for_stderr = log
            .try_clone()
            .with_context(|| format!("failed to duplicate the handle of {}", self.log_path.display()))?;
        let child = Command::new(&self.mosquitto)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {}", self.mosquitto.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("mosquitto exited before its process id was read"))?;
        self.pid.store(pid, Ordering::SeqCst);
        self.frozen.store(false, Ordering::SeqCst);
        *child_slot = Some(child);
        tracing::debug!(pid, port = self.endpoint.port, "mosquitto started");

        let deadline = Instant::now() + START_TIMEOUT;
        let options = self.admin_options();
        loop {
            let exit_status = child_slot.as_mut().and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exit_status {
                *child_slot = None;
                self.pid.store(0, Ordering::SeqCst);
                bail!(
                    "mosquitto exited with {status} during start, config {}; log tail:\n{}",
                    self.config_path.display(),
                    self.log_tail()
                );
            }
            let outcome = probe_once(options.clone()).await;
            if outcome == ProbeOutcome::Accepted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "mosquitto did not accept the admin user on port {} within {START_TIMEOUT:?}, last probe: {outcome:?}; log tail:\n{}",
                    self.endpoint.port,
                    self.log_tail()
                );
            }
            sleep(START_POLL_INTERVAL).await;
        }
    }
}

struct ConfigPaths<'a> {
    port: u16,
    password_file: &'a Path,
    acl_file: &'a Path,
    persistence_dir: Option<&'a Path>,
    ca_file: &'a Path,
    cert_file: &'a Path,
    key_file: &'a Path,
}

fn render_config(paths: &ConfigPaths<'_>) -> String {
    let mut config = String::new();
    // Started as root, mosquitto switches to the `mosquitto` user, which cannot read the
    // private temporary directory. `user root` keeps it running as root, and mosquitto
    // started as another user ignores the option.
    config.push_str("user root\n");
    config.push_str("per_listener_settings false\n");
    config.push_str("allow_anonymous false\n");
    let _ = writeln!(config, "password_file {}", paths.password_file.display());
    let _ = writeln!(config, "acl_file {}", paths.acl_file.display());
    match paths.persistence_dir {
        Some(dir) => {
            config.push_str("persistence true\n");
            // mosquitto appends the file name to this path, so it needs the trailing slash.
            let _ = writeln!(config, "persistence_location {}/", dir.display());
        }
        None => config.push_str("persistence false\n"),
    }
    // mosquitto drops QoS 1 messages for an offline persistent session
    // beyond 1000 by default; Lufthansa's queue limit is not documented, so
    // the stand-in keeps them all and tests can show that flupd loses none.
    config.push_str("max_queued_messages 0\n");
    config.push_str("log_dest stderr\n");
    config.push_str("log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\n");
    config.push_str("connection_messages true\n");
    config.push_str("log_timestamp true\n");
    config.push_str("log_timestamp_format %Y-%m-%dT%H:%M:%S\n");
    // Listener options must follow the listener line they belong to.
    let _ = writeln!(config, "listener {} 127.0.0.1", paths.port);
    let _ = writeln!(config, "cafile {}", paths.ca_file.display());
    let _ = writeln!(config, "certfile {}", paths.cert_file.display());
    let _ = writeln!(config, "keyfile {}", paths.key_file.display());
    config
}

/// Finds `name` on PATH, then in `fallback_dir`, where Debian's package installs it but which
/// is often not on a non-root PATH.
fn find_program(name: &str, fallback_dir: &Path) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path_var).chain(std::iter::once(fallback_dir.to_path_buf()));
    for dir in candidates {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found on PATH or in {}: install the Debian package mosquitto (apt-get install mosquitto)",
        fallback_dir.display()
    )
}

async fn run_passwd_tool(
    tool: &Path,
    flags: &[&str],
    password_file: &Path,
    username: &str,
    password: Option<&str>,
) -> Result<()> {
    let mut command = Command::new(tool);
    command.args(flags).arg(password_file).arg(username);
    if let Some(password) = password {
        command.arg(password);
    }
    let output =
        command.stdin(Stdio::null()).output().await.with_context(|| format!("failed to run {}", tool.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} {} {username} failed with {}: {}",
            tool.display(),
            flags.join(" "),
            password_file.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("failed to write {}", path.display()))
}

/// Picks a free TCP port on 127.0.0.1 by binding port 0 and releasing it. Another process
/// could take the port before mosquitto binds it, which then fails the start with a clear
/// log line.
fn free_loopback_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("failed to bind a free port on 127.0.0.1")?;
    let port = listener.local_addr().context("failed to read the local address of a bound socket")?.port();
    Ok(port)
}

pub(crate) fn random_token(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}
