//! Assembles the pipeline and runs it until shutdown.
//!
//! credentials → MQTT connection → dispatcher → one queue and task per sink.
//! The dispatcher builds each event, queues it for every sink that wants it,
//! then acknowledges the message. Shutdown stops the connection first, lets
//! the queues drain for `shutdown_timeout`, then names what did not drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::api::LufthansaApi;
use crate::config::{Config, SecretSource};
use crate::credentials::{CredentialStore, CredentialsError, Origin};
use crate::event::Event;
use crate::mqtt::{self, Acker, Link, Received};
use crate::secret::Secret;
use crate::sink::driver::{self, SinkStats};
use crate::sink::{Sink, SinkSpec};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("read client secret {path}: {source}; check lufthansa.client_secret_file or the systemd credential")]
    SecretFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("client secret file {0} is empty")]
    EmptySecret(std::path::PathBuf),
    #[error(transparent)]
    Tls(#[from] mqtt::TlsError),
    #[error("sink {name:?}: {message}")]
    Sink { name: String, message: String },
    #[error("get MQTT credentials: {0}")]
    Credentials(#[from] CredentialsError),
    #[error("create HTTP client: {0}")]
    Api(#[from] crate::api::ApiError),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

impl DaemonError {
    /// Whether the error is the operator's to fix in the configuration or
    /// the secret, so that restarting cannot help.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            DaemonError::SecretFile { .. }
                | DaemonError::EmptySecret(_)
                | DaemonError::Tls(_)
                | DaemonError::Sink { .. }
                | DaemonError::Credentials(CredentialsError::Api(crate::api::ApiError::NotAuthorized { .. }))
        )
    }
}

/// Settings for one run beside the configuration.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Stop after this many events, as `flupd demo --max-events` does.
    pub max_events: Option<u64>,
    /// Cancelling this token starts shutdown, as a signal does.
    pub shutdown: CancellationToken,
}

/// Reads the client secret from where the configuration says.
pub fn read_secret(source: &SecretSource) -> Result<Secret, DaemonError> {
    let path = match source {
        SecretSource::Environment(secret) | SecretSource::Inline(secret) => return Ok(secret.clone()),
        SecretSource::File(path) | SecretSource::SystemdCredential(path) => path,
    };
    let text =
        std::fs::read_to_string(path).map_err(|source| DaemonError::SecretFile { path: path.clone(), source })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(DaemonError::EmptySecret(path.clone()));
    }
    Ok(Secret::new(secret))
}

/// Builds the credential store for a configuration.
pub fn credential_store(config: &Config) -> Result<CredentialStore, DaemonError> {
    let lufthansa = &config.lufthansa;
    let secret = read_secret(&lufthansa.client_secret)?;
    let api =
        LufthansaApi::new(lufthansa.api_base.clone(), lufthansa.client_id.clone(), secret, lufthansa.request_timeout)?;
    Ok(CredentialStore::new(
        &config.state.dir,
        Arc::new(api),
        lufthansa.api_base.to_string(),
        lufthansa.client_id.clone(),
        lufthansa.client_prefix.clone(),
        lufthansa.renew_before,
    ))
}

/// Runs flupd until a signal, `options.shutdown`, or `max_events`.
pub async fn run(config: Config, options: RunOptions) -> Result<(), DaemonError> {
    let started = Instant::now();
    let store = Arc::new(credential_store(&config)?);
    let tls = Arc::new(mqtt::tls_config(config.mqtt.ca_file.as_deref())?);
    let shutdown = options.shutdown.clone();
    let tracker = TaskTracker::new();
    tracker.spawn(watch_signals(shutdown.clone()));

    let mut sinks = Vec::new();
    for spec in &config.sinks {
        let sink = Sink::build(&spec.config)
            .await
            .map_err(|error| DaemonError::Sink { name: spec.name.clone(), message: error.message })?;
        sinks.push((spec.clone(), sink));
    }

    let service = crate::service::Service::start(&config, &tracker, shutdown.clone()).await?;
    let credentials = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        credentials = obtain_credentials(&store) => credentials?,
    };

    let hard_stop = CancellationToken::new();
    let mut routes = Vec::new();
    for (spec, sink) in sinks {
        let (queue_tx, queue_rx) = mpsc::channel(spec.queue_capacity);
        let stats = Arc::new(SinkStats::default());
        let span = tracing::info_span!("sink", sink = %spec.name);
        span.in_scope(|| tracing::info!(kind = spec.config.type_name(), "sink started"));
        tracker.spawn(driver::drive(sink, queue_rx, stats.clone(), hard_stop.clone()).instrument(span));
        routes.push(Route { spec, queue: queue_tx, stats, last_drop_log: None, drops_since_log: 0 });
    }

    let (messages_tx, messages_rx) = mpsc::unbounded_channel();
    let link = Link { config: config.mqtt.clone(), store: store.clone(), tls };
    let running = mqtt::start(link, credentials, messages_tx, shutdown.clone(), &tracker);
    service.attach(
        running.state.clone(),
        routes.iter().map(|route| (route.spec.name.clone(), route.stats.clone())).collect(),
    );
    tracing::info!(
        sinks = routes.len(),
        topics = config.mqtt.topics.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "flupd started"
    );

    let mut dispatcher = Dispatcher {
        routes,
        acker: running.acker,
        stats: DispatchStats::default(),
        max_events: options.max_events,
        shutdown: shutdown.clone(),
    };
    dispatcher.run(messages_rx).await;

    service.stopping();
    shutdown.cancel();
    tracker.close();
    let routes = std::mem::take(&mut dispatcher.routes);
    let stats: Vec<(String, Arc<SinkStats>)> =
        routes.iter().map(|route| (route.spec.name.clone(), route.stats.clone())).collect();
    drop(routes);
    drop(dispatcher.acker);

    tracing::info!(timeout_ms = config.shutdown_timeout.as_millis() as u64, "stopping, draining sinks");
    if tokio::time::timeout(config.shutdown_timeout, tracker.wait()).await.is_err() {
        for (name, stats) in &stats {
            let pending = stats.pending.load(Ordering::Relaxed);
            if pending > 0 {
                tracing::error!(sink = %name, pending, "sink did not drain before the shutdown timeout, events lost");
            }
        }
        hard_stop.cancel();
        tracker.wait().await;
    }

    let received = dispatcher.stats.received.load(Ordering::Relaxed);
    let malformed = dispatcher.stats.malformed.load(Ordering::Relaxed);
    for (name, stats) in &stats {
        tracing::info!(
            sink = %name,
            delivered = stats.delivered.load(Ordering::Relaxed),
            retried = stats.retried.load(Ordering::Relaxed),
            failed = stats.failed.load(Ordering::Relaxed),
            dropped = stats.dropped.load(Ordering::Relaxed),
            "sink stopped"
        );
    }
    tracing::info!(received, malformed, "flupd stopped");
    Ok(())
}

/// Gets credentials, waiting out network failures with backoff. Answers
/// that no retry can fix, such as a wrong secret, end the wait.
async fn obtain_credentials(store: &CredentialStore) -> Result<crate::credentials::MqttCredentials, DaemonError> {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
    loop {
        match store.current().await {
            Ok((credentials, origin)) => {
                let origin = match origin {
                    Origin::Cache => "cache",
                    Origin::Fetched => "api",
                };
                tracing::info!(client_id = %credentials.client_id, origin, expires_at = %credentials.expires_display(), "mqtt credentials ready");
                crate::metrics::set_credentials_expiry(credentials.expires_at);
                return Ok(credentials);
            }
            Err(CredentialsError::Api(error)) if error.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "credentials not available, retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers, SIGTERM will not drain the sinks");
        return;
    };
    let name = tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
    shutdown.cancel();
}

/// One sink as the dispatcher sees it.
struct Route {
    spec: SinkSpec,
    queue: mpsc::Sender<Arc<Event>>,
    stats: Arc<SinkStats>,
    last_drop_log: Option<Instant>,
    drops_since_log: u64,
}

/// How often a full queue is reported at most.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
struct DispatchStats {
    received: AtomicU64,
    malformed: AtomicU64,
}

struct Dispatcher {
    routes: Vec<Route>,
    acker: Acker,
    stats: DispatchStats,
    max_events: Option<u64>,
    shutdown: CancellationToken,
}

impl Dispatcher {
    async fn run(&mut self, mut messages: mpsc::UnboundedReceiver<Received>) {
        while let Some(received) = messages.recv().await {
            self.dispatch(received).await;
            let count = self.stats.received.load(Ordering::Relaxed);
            if self.max_events.is_some_and(|max| count >= max) {
                tracing::info!(events = count, "event limit reached");
                self.shutdown.cancel();
                break;
            }
        }
    }

    async fn dispatch(&mut self, received: Received) {
        let publish = &received.publish;
        let event = Event::from_message(&publish.topic, &publish.payload, publish.qos as u8, received.received_at);
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        crate::metrics::record_event(publish.qos as u8, event.kind.as_str(), event.payload_error.is_some());
        if let Some(error) = event.payload_error {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %event.topic, event_id = %event.id, problem = error.as_str(), bytes = publish.payload.len(), "malformed payload, delivering it raw");
        }
        tracing::debug!(topic = %event.topic, event_id = %event.id, kind = %event.kind, "event received");

        let event = Arc::new(event);
        for route in &mut self.routes {
            if !route.spec.wants(&event.topic) {
                continue;
            }
            route.stats.pending.fetch_add(1, Ordering::Relaxed);
            if route.queue.try_send(event.clone()).is_err() {
                route.stats.pending.fetch_sub(1, Ordering::Relaxed);
                route.stats.dropped.fetch_add(1, Ordering::Relaxed);
                route.drops_since_log += 1;
                let due = route.last_drop_log.is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL);
                if due {
                    tracing::error!(
                        sink = %route.spec.name,
                        dropped = route.drops_since_log,
                        capacity = route.spec.queue_capacity,
                        "sink queue full, events dropped for this sink"
                    );
                    route.last_drop_log = Some(Instant::now());
                    route.drops_since_log = 0;
                }
            }
        }

        // NOTE: the ack goes out once the event is queued in memory, so a
        // crash before the sinks deliver it loses it; only a durable queue
        // on disk would close that gap.
        self.acker.ack(publish).await;
    }
}
