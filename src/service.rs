//! Running as a service: systemd notifications, the watchdog, and the
//! daemon's health as the health endpoint and the watchdog judge it.
//!
//! systemd learns what flupd is doing through `sd_notify` messages: STATUS
//! lines as the connection changes, READY=1 once the broker has granted
//! every subscription, WATCHDOG=1 pings, and STOPPING=1 at shutdown. Every
//! message is a no-op when `NOTIFY_SOCKET` is unset, as outside systemd.
//!
//! The watchdog pings only while the daemon makes progress: the MQTT event
//! loop has returned from a poll recently and no sink has a delivery attempt
//! that hangs. A wedged daemon thus stops pinging and systemd restarts it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::ConnectionError;
use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::mqtt::LinkState;
use crate::sink::driver::SinkStats;

/// Errors starting the service parts.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("listen on {addr} for the health endpoint: {source}; set health.listen to a free address or remove it")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since [`process_start`] of the last return from the MQTT
/// event loop's poll, 0 before the first one.
static LAST_POLL_MS: AtomicU64 = AtomicU64::new(0);

/// The cause of the last connection failure, for the status line.
static LAST_CONNECTION_ERROR: Mutex<&'static str> = Mutex::new("");

/// Records that the MQTT event loop returned from a poll. The poller calls
/// it after every poll, so that the watchdog can tell the loop is turning.
pub fn poll_heartbeat() {
    let elapsed = process_start().elapsed().as_millis() as u64;
    LAST_POLL_MS.store(elapsed.max(1), Ordering::Relaxed);
}

/// Records a CONNACK.
pub fn connected(session_present: bool) {
    poll_heartbeat();
    crate::metrics::record_connack(session_present);
}

/// Records a connection failure or loss and its cause.
pub fn connection_failed(error: &ConnectionError) {
    poll_heartbeat();
    let cause = crate::metrics::reconnect_cause(error);
    crate::metrics::record_reconnect(cause);
    if let Ok(mut last) = LAST_CONNECTION_ERROR.lock() {
        *last = cause;
    }
}

fn last_connection_error() -> &'static str {
    LAST_CONNECTION_ERROR.lock().map(|last| *last).unwrap_or("")
}

/// Returns how long the MQTT event loop may go without returning from a poll.
///
/// A healthy loop returns at least once per keepalive (the PINGREQ), and
/// notices a silent broker after two. Between attempts it sleeps up to
/// `reconnect_max_delay`, and renewing refused credentials takes API calls.
/// NOTE: the API allowance of four request timeouts is an estimate of a
/// renewal with retries, not a bound the API client enforces.
pub fn poll_stall_limit(config: &Config) -> Duration {
    config.mqtt.keepalive * 2 + config.mqtt.reconnect_max_delay + config.lufthansa.request_timeout * 4
}

/// Progress of one sink task, for the stuck-sink check and the oldest
/// pending age. Each field is 0 while the sink is idle.
#[derive(Debug, Default)]
pub struct SinkProgress {
    /// When the current delivery attempt started, in ms since process start.
    attempt_started_ms: AtomicU64,
    /// When the event being delivered was received, in Unix ms.
    delivering_received_ms: AtomicI64,
}

/// Clears a [`SinkProgress`] field when dropped.
pub struct ProgressGuard<'a> {
    field: Field<'a>,
}

enum Field<'a> {
    Attempt(&'a AtomicU64),
    Delivering(&'a AtomicI64),
}

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        match self.field {
            Field::Attempt(field) => field.store(0, Ordering::Relaxed),
            Field::Delivering(field) => field.store(0, Ordering::Relaxed),
        }
    }
}

impl SinkProgress {
    /// Marks the event received at `received_ms` (Unix milliseconds) as the
    /// one being delivered, retries included, until the guard is dropped.
    /// Events leave the queue in order, so it is the oldest pending one.
    pub fn delivering(&self, received_ms: i64) -> ProgressGuard<'_> {
        self.delivering_received_ms.store(received_ms.max(1), Ordering::Relaxed);
        ProgressGuard { field: Field::Delivering(&self.delivering_received_ms) }
    }

    /// Marks one delivery attempt as running until the guard is dropped.
    /// Sleeps between retries are not attempts, so a sink that keeps
    /// retrying a down webhook is not stuck, but one whose call hangs is.
    pub fn attempt(&self) -> ProgressGuard<'_> {
        let started = process_start().elapsed().as_millis() as u64;
        self.attempt_started_ms.store(started.max(1), Ordering::Relaxed);
        ProgressGuard { field: Field::Attempt(&self.attempt_started_ms) }
    }

    /// Returns how long the current delivery attempt has been running.
    pub fn attempt_running_for(&self) -> Option<Duration> {
        let started = self.attempt_started_ms.load(Ordering::Relaxed);
        (started != 0).then(|| process_start().elapsed().saturating_sub(Duration::from_millis(started)))
    }

    /// Age of the event being delivered, `None` while the sink is idle.
    pub fn oldest_pending_age(&self, now: DateTime<Utc>) -> Option<Duration> {
        let received = self.delivering_received_ms.load(Ordering::Relaxed);
        (received != 0).then(|| Duration::from_millis((now.timestamp_millis() - received).max(0) as u64))
    }
}

/// The daemon's state as the health endpoint and the watchdog read it.
pub struct Monitor {
    link: Mutex<Option<watch::Receiver<LinkState>>>,
    /// The running sinks, replaced as a whole on a configuration reload.
    sinks: Mutex<crate::reload::SharedStats>,
    sink_stuck_after: Duration,
    poll_stall_limit: Duration,
}

impl Monitor {
    fn new(config: &Config) -> Monitor {
        Monitor {
            link: Mutex::new(None),
            sinks: Mutex::new(Arc::default()),
            sink_stuck_after: config.health.sink_stuck_after,
            poll_stall_limit: poll_stall_limit(config),
        }
    }

    /// Returns the connection state, `None` before the connection starts.
    pub fn link_state(&self) -> Option<LinkState> {
        self.link.lock().ok()?.as_ref().map(|link| *link.borrow())
    }

    /// Returns the sinks and their counters.
    pub fn sinks(&self) -> Vec<(String, Arc<SinkStats>)> {
        let shared = self.sinks.lock().map(|sinks| sinks.clone()).unwrap_or_default();
        shared.lock().map(|sinks| sinks.clone()).unwrap_or_default()
    }

    /// Lists the reasons flupd is not ready to receive updates, none when it is.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.link_state() {
            None => problems.push("MQTT connection not started: fetching credentials".to_owned()),
            Some(LinkState::Connecting) => {
                let cause = last_connection_error();
                if cause.is_empty() {
                    problems.push("not connected to the broker yet".to_owned());
                } else {
                    problems.push(format!("not connected to the broker: last error {cause}"));
                }
            }
            Some(LinkState::Connected { .. }) => {
                problems.push("connected, but not every topic filter is granted yet".to_owned())
            }
            Some(LinkState::Stopped) => problems.push("MQTT connection stopped".to_owned()),
            Some(LinkState::Subscribed) => {}
        }
        problems.extend(self.stuck_sinks());
        problems
    }

    /// Lists the reasons not to ping the watchdog, none while flupd makes progress.
    pub fn liveness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let last_poll = LAST_POLL_MS.load(Ordering::Relaxed);
        // Before the first poll flupd is fetching credentials, which
        // TimeoutStartSec= bounds, not the watchdog.
        if last_poll != 0 && self.link_state().is_some() {
            let since = process_start().elapsed().saturating_sub(Duration::from_millis(last_poll));
            if since > self.poll_stall_limit {
                problems.push(format!(
                    "MQTT event loop not polled for {}s (limit {}s)",
                    since.as_secs(),
                    self.poll_stall_limit.as_secs()
                ));
            }
        }
        problems.extend(self.stuck_sinks());
        problems
    }

    fn stuck_sinks(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, stats) in self.sinks() {
            if let Some(running) = stats.progress.attempt_running_for() {
                if running > self.sink_stuck_after {
                    problems.push(format!(
                        "sink {name}: delivery attempt running for {}s (limit {}s)",
                        running.as_secs(),
                        self.sink_stuck_after.as_secs()
                    ));
                }
            }
        }
        problems
    }
}

/// Sends a notification to systemd; does nothing without `NOTIFY_SOCKET`.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "systemd notification not sent");
    }
}

fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// The service side of one daemon run.
pub struct Service {
    monitor: Arc<Monitor>,
    filters: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Service {
    /// Starts the health endpoint when configured and the watchdog when
    /// systemd requests one, and reports that credentials are being fetched.
    pub async fn start(
        config: &Config,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Service, ServiceError> {
        process_start();
        let monitor = Arc::new(Monitor::new(config));
        if let Some(addr) = config.health.listen {
            crate::health::serve(addr, monitor.clone(), tracker, shutdown.clone()).await?;
        }
        if let Some(interval) = sd_notify::watchdog_enabled() {
            tracker.spawn(
                watchdog(monitor.clone(), interval / 2, shutdown.clone()).instrument(tracing::info_span!("watchdog")),
            );
        }
        status("fetching MQTT credentials");
        Ok(Service { monitor, filters: config.mqtt.topics.len(), tracker: tracker.clone(), shutdown })
    }

    /// Hands over the connection state and the sinks once they run, and
    /// reports each change of the connection to systemd.
    pub fn attach(&self, link: watch::Receiver<LinkState>, sinks: crate::reload::SharedStats) {
        if let Ok(mut slot) = self.monitor.link.lock() {
            *slot = Some(link.clone());
        }
        if let Ok(mut slot) = self.monitor.sinks.lock() {
            *slot = sinks;
        }
        self.tracker.spawn(report_link(link, self.filters, self.shutdown.clone()));
    }

    /// Tells systemd that flupd is stopping.
    pub fn stopping(&self) {
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping: draining sinks")]);
    }
}

/// Sends a STATUS line for each connection state, and READY=1 the first
/// time every subscription is granted.
async fn report_link(mut link: watch::Receiver<LinkState>, filters: usize, shutdown: CancellationToken) {
    let mut ready = false;
    let mut was_connected = false;
    loop {
        let state = *link.borrow_and_update();
        match state {
            LinkState::Connecting if was_connected || !last_connection_error().is_empty() => {
                status(&format!("reconnecting after {}", last_connection_error()));
            }
            LinkState::Connecting => status("connecting to the broker"),
            LinkState::Connected { .. } => {
                was_connected = true;
                status(&format!("connected, subscribing to {filters} filters"));
            }
            LinkState::Subscribed if !ready => {
                ready = true;
                notify(&[NotifyState::Ready, NotifyState::Status(&format!("subscribed to {filters} filters"))]);
            }
            LinkState::Subscribed => status(&format!("subscribed to {filters} filters")),
            LinkState::Stopped => return,
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = link.changed() => if changed.is_err() { return },
        }
    }
}

/// Pings the watchdog every `interval` while the daemon makes progress.
/// When it stops, it logs why once, and again once it recovers.
async fn watchdog(monitor: Arc<Monitor>, interval: Duration, shutdown: CancellationToken) {
    tracing::info!(interval_ms = interval.as_millis() as u64, "watchdog enabled");
    let mut withheld = false;
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let problems = monitor.liveness_problems();
        if problems.is_empty() {
            if withheld {
                tracing::info!("progress resumed, watchdog pings resumed");
                withheld = false;
            }
            notify(&[NotifyState::Watchdog]);
        } else if !withheld {
            withheld = true;
            tracing::error!(problems = %problems.join("; "), "no progress, withholding watchdog pings so that systemd restarts flupd");
        }
    }
}
