//! Assembles the pipeline and runs it until shutdown.
//!
//! credentials → MQTT connection → dispatcher → outbox → one task per sink.
//! The dispatcher builds each event, stores it in the outbox, then
//! acknowledges the message. Each sink task reads the outbox from its own
//! cursor. Shutdown stops the connection first, lets the sinks catch up for
//! `shutdown_timeout`, then names those that did not; their events stay in
//! the outbox for the next start.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::LufthansaApi;
use crate::config::{Config, SecretSource};
use crate::credentials::{CredentialStore, CredentialsError, Origin};
use crate::enrich::Enricher;
use crate::event::Event;
use crate::mqtt::{self, Acker, Link, Received};
use crate::outbox::{Outbox, OutboxError, Stored};
use crate::reload::{Loader, Reloader, SinkSet};
use crate::secret::Secret;
use crate::sink::Sink;
use crate::sink::driver::Stop;

/// Failure to start the daemon, or an error it stopped with.
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
    Outbox(#[from] OutboxError),
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
                | DaemonError::Credentials(CredentialsError::Io { .. })
                | DaemonError::Outbox(OutboxError::Directory { .. } | OutboxError::Sqlite { .. })
        )
    }
}

/// Settings for one run beside the configuration.
#[derive(Default, Clone)]
pub struct RunOptions {
    /// Stop after this many events, as `flupd demo --max-events` does.
    pub max_events: Option<u64>,
    /// Cancelling this token starts shutdown, as a signal does.
    pub shutdown: CancellationToken,
    /// Reads the configuration again on SIGHUP; without it SIGHUP is only
    /// logged.
    pub reload: Option<Loader>,
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the client secret from the source the configuration names.
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
        LufthansaApi::new(lufthansa.api_base.clone(), lufthansa.client_id.clone(), secret, lufthansa.request_timeout)?
            .with_limits(lufthansa.limits);
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
    let outbox = Outbox::open(&config.state.dir, config.outbox.clone())?;
    let shutdown = options.shutdown.clone();
    let tracker = TaskTracker::new();
    let stop = Stop { draining: CancellationToken::new(), hard: CancellationToken::new() };
    // Outside the tracker, because it must see a second signal while
    // shutdown waits for the tracker's tasks; it is aborted at the end.
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let signals = tokio::spawn(watch_signals(shutdown.clone(), stop.hard.clone(), reload_tx));
    let _abort_signals = AbortOnDrop(signals);

    let names: Vec<String> = config.sinks.iter().map(|spec| spec.name.clone()).collect();
    for removed in outbox.forget_other_sinks(&names)? {
        tracing::info!(sink = %removed, "sink no longer configured, its outbox cursor removed");
    }
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

    let mut sink_set = SinkSet::new(outbox.clone(), tracker.clone(), stop.clone());
    for (spec, sink) in sinks {
        sink_set.start(spec, sink)?;
    }
    let shared_stats = sink_set.stats();
    tracker.spawn(prune_periodically(outbox.clone(), stop.clone()));
    tracker.spawn(checkpoint_periodically(outbox.clone(), stop.clone()));

    let (messages_tx, messages_rx) = mpsc::channel(mqtt::QUEUE_CAPACITY);
    let link = Link { config: config.mqtt.clone(), store: store.clone(), tls };
    let running = mqtt::start(link, credentials, messages_tx, shutdown.clone(), &tracker);
    service.attach(running.state.clone(), shared_stats.clone());
    let reloader = Reloader {
        loader: options.reload.clone(),
        current: config.clone(),
        sinks: sink_set,
        topics: running.topics.clone(),
    };
    tracker.spawn(reloader.run(reload_rx, shutdown.clone()));
    tracing::info!(
        sinks = config.sinks.len(),
        topics = config.mqtt.topics.len(),
        outbox = %outbox.path().display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "flupd started"
    );

    let enricher = Enricher::new(config.enrich.clone(), store.api().clone(), &config.state.dir);
    let mut dispatcher = Dispatcher {
        enricher: enricher.is_enabled().then(|| enricher.clone()),
        outbox: outbox.clone(),
        dead_letter: config.state.dir.join(DEAD_LETTER_FILE),
        acker: running.acker,
        stats: DispatchStats::default(),
        max_events: options.max_events,
        shutdown: shutdown.clone(),
    };
    dispatcher.run(messages_rx).await;
    service.stopping();

    // The connection stops first, so nothing new arrives while the sinks drain.
    shutdown.cancel();
    stop.draining.cancel();
    tracker.close();
    tracing::info!(timeout_ms = config.shutdown_timeout.as_millis() as u64, "stopping, draining sinks");
    let drained = tokio::select! {
        drained = tokio::time::timeout(config.shutdown_timeout, tracker.wait()) => drained.is_ok(),
        _ = stop.hard.cancelled() => false,
    };
    let stats = lock(&shared_stats).clone();
    if !drained {
        let cause = if stop.hard.is_cancelled() { "the second signal" } else { "the shutdown timeout" };
        for (name, stats) in &stats {
            let pending = stats.pending.load(Ordering::Relaxed);
            if pending > 0 {
                tracing::warn!(sink = %name, pending, "sink did not drain before {cause}, its events stay in the outbox for the next start");
            }
        }
        stop.hard.cancel();
        tracker.wait().await;
    }
    if let Err(error) = outbox.prune().await {
        tracing::warn!(%error, "outbox cleanup failed");
    }
    if enricher.is_enabled() {
        if let Err(error) = enricher.save().await {
            tracing::warn!(%error, "flight status not saved, changes after the next start may be incomplete");
        }
    }

    for (name, stats) in &stats {
        tracing::info!(
            sink = %name,
            delivered = stats.delivered.load(Ordering::Relaxed),
            redelivered = stats.redelivered.load(Ordering::Relaxed),
            retried = stats.retried.load(Ordering::Relaxed),
            failed = stats.failed.load(Ordering::Relaxed),
            "sink stopped"
        );
    }
    let counts = &dispatcher.stats;
    tracing::info!(
        received = counts.received,
        stored = counts.stored,
        duplicates = counts.duplicates,
        redelivered = counts.redelivered,
        malformed = counts.malformed,
        dead_lettered = counts.dead_lettered,
        "flupd stopped"
    );
    Ok(())
}

/// Deletes delivered events from the outbox every few seconds.
async fn prune_periodically(outbox: Outbox, stop: Stop) {
    let mut interval = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.draining.cancelled() => return,
            _ = interval.tick() => {}
        }
        match outbox.prune().await {
            Ok(deleted) => tracing::trace!(deleted, bytes = outbox.bytes(), "outbox pruned"),
            Err(error) => tracing::warn!(%error, "outbox cleanup failed"),
        }
        match outbox.count() {
            Ok(events) => crate::metrics::set_outbox_size(events, outbox.bytes()),
            Err(error) => tracing::warn!(%error, "outbox size not read"),
        }
    }
}

/// Moves the outbox's write-ahead log into its database file every second,
/// so that a commit seldom has to.
async fn checkpoint_periodically(outbox: Outbox, stop: Stop) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.draining.cancelled() => return,
            _ = interval.tick() => {}
        }
        match outbox.checkpoint().await {
            Ok(()) if failing => {
                tracing::info!("outbox checkpoint succeeded again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                tracing::warn!(%error, "outbox checkpoint failed, its write-ahead log grows until one succeeds");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Gets credentials, waiting out network failures with backoff. Responses
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

/// Starts shutdown on the first SIGTERM or SIGINT and stops without
/// draining on the second. SIGHUP asks for a configuration reload.
async fn watch_signals(shutdown: CancellationToken, hard: CancellationToken, reload: mpsc::UnboundedSender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers, SIGTERM will not drain the sinks");
        return;
    };
    loop {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            _ = hangup.recv() => {
                tracing::info!(signal = "SIGHUP", "configuration reload requested");
                let _ = reload.send(());
                continue;
            }
        };
        if shutdown.is_cancelled() {
            tracing::warn!(
                signal = name,
                "second signal, stopping without waiting for the sinks; their events stay in the outbox"
            );
            hard.cancel();
            return;
        }
        tracing::info!(signal = name, "shutdown requested");
        shutdown.cancel();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Enriches a batch concurrently, so that the batch waits at most one
/// `enrich.max_wait`, and returns the events in their order.
async fn enrich_all(enricher: &Enricher, events: Vec<Event>) -> Vec<Event> {
    let mut tasks = tokio::task::JoinSet::new();
    let count = events.len();
    for (index, mut event) in events.into_iter().enumerate() {
        let enricher = enricher.clone();
        tasks.spawn(async move {
            enricher.enrich(&mut event).await;
            (index, event)
        });
    }
    let mut slots: Vec<Option<Event>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, event)) => slots[index] = Some(event),
            // enrich() never fails; a panic inside it is a bug, and the
            // event it held is lost from this batch, so it is logged at ERROR.
            Err(error) => tracing::error!(%error, "enrichment task failed, its event is dropped"),
        }
    }
    slots.into_iter().flatten().collect()
}

/// Name of the dead-letter file inside the state directory.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

/// Messages taken from the connection into one outbox transaction at most.
const DISPATCH_BATCH: usize = 512;

/// How often an outbox that refuses writes is reported at most.
const WRITE_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
struct DispatchStats {
    received: u64,
    stored: u64,
    duplicates: u64,
    redelivered: u64,
    malformed: u64,
    dead_lettered: u64,
}

/// Turns messages into events, stores them in the outbox and acknowledges
/// them, in receive order.
struct Dispatcher {
    /// Present when `[enrich]` is enabled.
    enricher: Option<Enricher>,
    outbox: Outbox,
    dead_letter: PathBuf,
    acker: Acker,
    stats: DispatchStats,
    max_events: Option<u64>,
    shutdown: CancellationToken,
}

impl Dispatcher {
    async fn run(&mut self, mut messages: mpsc::Receiver<Received>) {
        let mut batch = Vec::with_capacity(DISPATCH_BATCH);
        loop {
            batch.clear();
            if messages.recv_many(&mut batch, DISPATCH_BATCH).await == 0 {
                return;
            }
            if let Some(max) = self.max_events {
                let room = max.saturating_sub(self.stats.stored) as usize;
                batch.truncate(room.max(1));
            }
            if !self.dispatch(&batch).await {
                return;
            }
            if self.max_events.is_some_and(|max| self.stats.stored >= max) {
                tracing::info!(events = self.stats.stored, "event limit reached");
                self.shutdown.cancel();
                return;
            }
        }
    }

    /// Stores a batch and acknowledges it. Returns false when shutdown came
    /// while the outbox refused writes; those messages stay unacknowledged,
    /// so the broker sends them again.
    async fn dispatch(&mut self, batch: &[Received]) -> bool {
        let mut events = Vec::with_capacity(batch.len());
        for received in batch {
            let publish = &received.publish;
            self.stats.received += 1;
            if publish.payload.len() > self.outbox.config().max_event_bytes {
                self.dead_letter(received);
                continue;
            }
            let mut event =
                Event::from_message(&publish.topic, &publish.payload, publish.qos as u8, received.received_at);
            event.redelivered = publish.dup;
            crate::metrics::record_event(publish.qos as u8, event.kind.as_str(), event.payload_error.is_some());
            if let Some(error) = event.payload_error {
                self.stats.malformed += 1;
                tracing::warn!(topic = %event.topic, event_id = %event.id, problem = error.as_str(), bytes = publish.payload.len(), "malformed payload, delivering it raw");
            }
            tracing::debug!(topic = %event.topic, event_id = %event.id, kind = %event.kind, dup = publish.dup, "event received");
            events.push(event);
        }

        if let Some(enricher) = &self.enricher {
            events = enrich_all(enricher, events).await;
        }
        if !events.is_empty() && !self.store(events).await {
            return false;
        }
        for received in batch {
            self.acker.ack(&received.publish);
        }
        true
    }

    /// Appends to the outbox, waiting out write failures and a full outbox
    /// with backoff. Returns false on shutdown before the write succeeded.
    async fn store(&mut self, events: Vec<Event>) -> bool {
        let events = Arc::new(events);
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_log: Option<Instant> = None;
        let mut failures = 0u64;
        loop {
            match self.outbox.append(events.clone()).await {
                Ok(stored) => {
                    if failures > 0 {
                        tracing::info!(failures, "outbox writable again, acknowledging");
                    }
                    for (result, event) in stored.iter().zip(events.iter()) {
                        match result {
                            Stored::New(_) => {
                                self.stats.stored += 1;
                                if event.redelivered {
                                    self.stats.redelivered += 1;
                                }
                            }
                            Stored::Duplicate => {
                                self.stats.duplicates += 1;
                                tracing::debug!(event_id = %event.id, "duplicate of a stored event, not delivered again");
                            }
                        }
                    }
                    return true;
                }
                Err(error) => {
                    failures += 1;
                    if last_log.is_none_or(|at| at.elapsed() >= WRITE_ERROR_LOG_INTERVAL) {
                        tracing::error!(%error, failures, waiting = events.len(), "outbox write failed, messages not acknowledged");
                        last_log = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    /// Records a message above `outbox.max_event_bytes` in the dead-letter
    /// file, with its topic and size, instead of delivering it.
    fn dead_letter(&mut self, received: &Received) {
        use base64::Engine as _;
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;

        let publish = &received.publish;
        self.stats.dead_lettered += 1;
        let record = serde_json::json!({
            "received_at": received.received_at,
            "topic": publish.topic,
            "bytes": publish.payload.len(),
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&publish.payload),
        });
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.dead_letter)
            .and_then(|mut file| writeln!(file, "{record}"));
        match written {
            Ok(()) => tracing::error!(
                topic = %publish.topic,
                bytes = publish.payload.len(),
                max_event_bytes = self.outbox.config().max_event_bytes,
                path = %self.dead_letter.display(),
                dead_lettered = self.stats.dead_lettered,
                "message too large, written to the dead-letter file"
            ),
            Err(error) => tracing::error!(
                topic = %publish.topic,
                bytes = publish.payload.len(),
                path = %self.dead_letter.display(),
                %error,
                "message too large and the dead-letter file is not writable, message lost"
            ),
        }
    }
}
