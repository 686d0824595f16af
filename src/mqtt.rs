//! The TLS connection to the broker: connecting, subscribing, reconnecting
//! with backoff, and handing received messages on.
//!
//! rumqttc does nothing unless its event loop is polled, and reconnects at
//! once after any error. So one task only polls, and sleeps with capped,
//! jittered backoff after every error. It hands messages to the dispatcher
//! over a bounded queue and waits when the queue is full. The socket is not
//! read meanwhile, so TCP flow control slows the broker down instead of
//! flupd's memory growing. A second task sends the SUBSCRIBE packets and a third the acks,
//! because awaiting client requests from the polling task, or from a task
//! that the polling task waits for, can deadlock on the request channel.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::MqttConfig;
use crate::credentials::{CredentialStore, MqttCredentials};
use crate::topic::TopicFilter;

/// Maximum number of topic filters sent in one SUBSCRIBE packet. Lufthansa publishes
/// no limit; 40 is what a known working client of the feed sends.
pub const FILTERS_PER_SUBSCRIBE: usize = 40;

/// Capacity of rumqttc's request channel, which carries acks and subscribes.
const REQUEST_CHANNEL_CAPACITY: usize = 256;

/// How long shutdown waits for the DISCONNECT packet to go out.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A message as received from the broker.
#[derive(Debug)]
pub struct Received {
    pub publish: Publish,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read CA file {path}: {source}")]
    CaFile { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("CA file {path}: no certificate could be added: {detail}")]
    CaCertificate { path: PathBuf, detail: String },
    #[error("no trusted CA certificates: install the system's ca-certificates package or set mqtt.ca_file")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the TLS client configuration: the system's trusted roots, plus
/// the certificates of `ca_file` when set. Unreadable system certificates
/// are skipped.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping unreadable system CA certificate");
    }
    roots.add_parsable_certificates(native.certs);

    if let Some(path) = ca_file {
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect())
            .map_err(|source| TlsError::CaFile { path: path.to_owned(), source })?;
        if certificates.is_empty() {
            return Err(TlsError::CaCertificate {
                path: path.to_owned(),
                detail: "the file holds no PEM certificate".to_owned(),
            });
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| TlsError::CaCertificate { path: path.to_owned(), detail: error.to_string() })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds the rumqttc options for one set of credentials.
pub fn options(config: &MqttConfig, credentials: &MqttCredentials, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let host = config.host.clone().unwrap_or_else(|| credentials.endpoint.clone());
    let mut options = MqttOptions::new(credentials.client_id.clone(), host, config.port);
    options
        .set_credentials(credentials.client_id.clone(), credentials.jwt.expose())
        .set_keep_alive(config.keepalive)
        .set_clean_session(config.clean_session)
        .set_manual_acks(true)
        .set_max_packet_size(config.max_packet_size, config.max_packet_size)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    options
}

/// State of the connection, for the rest of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected {
        session_present: bool,
    },
    /// Connected and every topic filter granted by the broker.
    Subscribed,
    Stopped,
}

/// Messages received and not yet taken by the dispatcher. Four dispatch
/// batches: enough to keep the dispatcher busy, and small enough that a
/// burst waits in the broker rather than in flupd's memory.
pub const QUEUE_CAPACITY: usize = 2048;

/// Queues acknowledgements for the ack task, in the order given.
#[derive(Clone)]
pub struct Acker {
    queue: mpsc::UnboundedSender<Publish>,
}

impl Acker {
    /// Acknowledges a QoS 1 message; does nothing for QoS 0. Never waits:
    /// the ack task sends it when the request channel has room.
    ///
    /// NOTE: an ack carries only the packet id. An ack sent after a reconnect
    /// may name a packet id the broker has since reused; with a persistent
    /// session the broker redelivers the original message under its old id,
    /// so the risk is a lost redelivery only if the ids collide.
    pub fn ack(&self, publish: &Publish) {
        if publish.qos == QoS::AtMostOnce {
            return;
        }
        // rumqttc builds the PUBACK from the QoS and the packet id alone.
        let mut ack = Publish::new("", publish.qos, Vec::new());
        ack.pkid = publish.pkid;
        let _ = self.queue.send(ack);
    }
}

/// Sends the queued acks in order until the queue closes or `cancel` fires.
async fn send_acks(client: AsyncClient, mut queue: mpsc::UnboundedReceiver<Publish>, cancel: CancellationToken) {
    loop {
        let ack = tokio::select! {
            _ = cancel.cancelled() => return,
            ack = queue.recv() => match ack {
                Some(ack) => ack,
                None => return,
            },
        };
        let sent = tokio::select! {
            _ = cancel.cancelled() => return,
            sent = client.ack(&ack) => sent,
        };
        if let Err(error) = sent {
            tracing::debug!(%error, pkid = ack.pkid, "ack not sent: connection stopped");
        }
    }
}

/// Everything the connection tasks need.
pub struct Link {
    pub config: MqttConfig,
    pub store: Arc<CredentialStore>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// A running connection: its two tasks and the handles the daemon uses.
pub struct Running {
    pub acker: Acker,
    pub state: watch::Receiver<LinkState>,
    /// Replaces the topic filters: new ones are subscribed, removed ones
    /// unsubscribed.
    pub topics: mpsc::UnboundedSender<Vec<TopicFilter>>,
    pub event_loop: tokio::task::JoinHandle<()>,
    pub subscriber: tokio::task::JoinHandle<()>,
}

type PendingSubAck = Arc<Mutex<Option<oneshot::Sender<Vec<SubscribeReasonCode>>>>>;

/// Connects with `credentials` and runs until `cancel` fires. Messages go
/// to `messages`; the connection stops when that channel closes.
pub fn start(
    link: Link,
    credentials: MqttCredentials,
    messages: mpsc::Sender<Received>,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Running {
    let options = options(&link.config, &credentials, link.tls.clone());
    let (client, event_loop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
    let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
    let (connack_tx, connack_rx) = watch::channel(None::<bool>);
    let pending: PendingSubAck = Arc::new(Mutex::new(None));

    let subscriber = Subscriber {
        client: client.clone(),
        topics: link.config.topics.clone(),
        qos: if link.config.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
        suback_timeout: link.config.keepalive * 2,
        pending: pending.clone(),
        state: state_tx.clone(),
    };
    let (topics_tx, topics_rx) = mpsc::unbounded_channel();
    let subscriber = tracker
        .spawn(subscriber.run(connack_rx, topics_rx, cancel.clone()).instrument(tracing::info_span!("subscriber")));

    let renew_at = renewal_time(&credentials, link.store.renew_before());
    let poller = Poller {
        event_loop,
        client: client.clone(),
        renew_at,
        link,
        messages,
        pending,
        connack: connack_tx,
        state: state_tx,
    };
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    tracker.spawn(send_acks(client, acks_rx, cancel.clone()).instrument(tracing::info_span!("acks")));
    let event_loop = tracker.spawn(poller.run(cancel).instrument(tracing::info_span!("mqtt")));

    Running { acker: Acker { queue: acks_tx }, state: state_rx, topics: topics_tx, event_loop, subscriber }
}

struct Poller {
    event_loop: EventLoop,
    client: AsyncClient,
    /// When the credentials in use are due for renewal.
    renew_at: Option<tokio::time::Instant>,
    link: Link,
    messages: mpsc::Sender<Received>,
    pending: PendingSubAck,
    connack: watch::Sender<Option<bool>>,
    state: watch::Sender<LinkState>,
}

impl Poller {
    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.link.config.reconnect_max_delay);
        // The backoff as it was before the last CONNACK reset it, and when
        // that CONNACK came: a connection that dies soon after it, as when
        // the broker resends a message above max_packet_size after every
        // connect, continues the earlier backoff instead of starting over.
        let mut backoff_before_connack = backoff.clone();
        let mut connected_at = std::time::Instant::now();
        let mut connected = false;
        // Refused credentials are replaced once; after that, only backoff,
        // so that a broker refusing everyone does not drain the API budget.
        let mut renewed_since_connect = false;
        let (host, port) = self.event_loop.mqtt_options.broker_address();
        tracing::info!(host = %host, port, client_id = %self.event_loop.mqtt_options.client_id(), "connecting");

        // After a planned disconnect the next error is expected.
        let mut planned_reconnect = false;
        loop {
            let renew_at = self.renew_at;
            let polled = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = sleep_until_some(renew_at), if connected => {
                    self.renew_at = None;
                    if self.renew_before_expiry().await {
                        planned_reconnect = true;
                    }
                    continue;
                }
                polled = self.event_loop.poll() => polled,
            };
            crate::service::poll_heartbeat();
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    connected = true;
                    connected_at = std::time::Instant::now();
                    renewed_since_connect = false;
                    backoff_before_connack = backoff.clone();
                    backoff.reset();
                    tracing::info!(session_present = connack.session_present, "connected");
                    crate::service::connected(connack.session_present);
                    self.state.send_replace(LinkState::Connected { session_present: connack.session_present });
                    self.connack.send_replace(Some(connack.session_present));
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    tracing::trace!(topic = %publish.topic, pkid = publish.pkid, bytes = publish.payload.len(), "message received");
                    // The payload is a slice of rumqttc's read buffer, which
                    // stays allocated as long as any slice of it lives; an
                    // owned copy lets the buffer be reused while messages
                    // wait for the dispatcher.
                    let mut publish = publish;
                    publish.payload = bytes::Bytes::copy_from_slice(&publish.payload);
                    let received = Received { publish, received_at: Utc::now() };
                    let sent = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        sent = self.messages.send(received) => sent,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let waiter = self.pending.lock().ok().and_then(|mut pending| pending.take());
                    match waiter {
                        Some(waiter) => {
                            let _ = waiter.send(suback.return_codes);
                        }
                        None => tracing::debug!(pkid = suback.pkid, "SUBACK for an abandoned SUBSCRIBE"),
                    }
                }
                Ok(_) => {}
                Err(error) if planned_reconnect => {
                    planned_reconnect = false;
                    connected = false;
                    tracing::info!(error = %describe(&error), "reconnecting with renewed credentials");
                    self.state.send_replace(LinkState::Connecting);
                    if let Ok(mut pending) = self.pending.lock() {
                        pending.take();
                    }
                }
                Err(error) => {
                    crate::service::connection_failed(&error);
                    if connected && connected_at.elapsed() < STABLE_CONNECTION {
                        backoff = backoff_before_connack.clone();
                    }
                    if is_packet_too_large(&error) {
                        tracing::error!(error = %describe(&error), max_packet_size = self.link.config.max_packet_size, "message larger than mqtt.max_packet_size, raise it to receive the message; until then the broker resends it after every connect");
                    } else if connected {
                        tracing::warn!(error = %describe(&error), "connection lost");
                    } else {
                        tracing::warn!(error = %describe(&error), "connection failed");
                    }
                    connected = false;
                    self.state.send_replace(LinkState::Connecting);
                    // The SUBSCRIBE in flight, if any, died with the connection.
                    if let Ok(mut pending) = self.pending.lock() {
                        pending.take();
                    }

                    if is_refused_credentials(&error) && !renewed_since_connect {
                        renewed_since_connect = true;
                        self.renew_credentials().await;
                    }

                    let delay = backoff.next_delay();
                    tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting after delay");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }

        if connected {
            self.disconnect().await;
        }
        self.state.send_replace(LinkState::Stopped);
        tracing::info!("mqtt connection stopped");
    }

    /// Replaces refused credentials with new ones from the API. The next
    /// connect reads them from the event loop's options.
    async fn renew_credentials(&mut self) {
        tracing::warn!(client_id = %self.event_loop.mqtt_options.client_id(), "broker refused the credentials, fetching new ones");
        match self.link.store.renew().await {
            Ok(credentials) => self.use_credentials(&credentials),
            Err(error) => tracing::error!(%error, "credentials renewal failed"),
        }
    }

    fn use_credentials(&mut self, credentials: &MqttCredentials) {
        self.event_loop.mqtt_options = options(&self.link.config, credentials, self.link.tls.clone());
        self.renew_at = renewal_time(credentials, self.link.store.renew_before());
    }

    /// Fetches new credentials before the current ones expire, then
    /// disconnects cleanly so that the next connect uses them. Returns
    /// whether a disconnect was sent.
    ///
    /// NOTE: every set of credentials has its own client id, so the broker
    /// session of the old one, with any message queued for it in the
    /// moment of the switch, is left behind.
    async fn renew_before_expiry(&mut self) -> bool {
        tracing::info!(client_id = %self.event_loop.mqtt_options.client_id(), "credentials due for renewal, fetching new ones");
        let credentials = match self.link.store.renew().await {
            Ok(credentials) => credentials,
            Err(error) => {
                // Keep the current ones and try again in an hour; they are
                // valid until they expire.
                tracing::error!(%error, "credentials renewal failed, retrying in 1h");
                self.renew_at = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
                return false;
            }
        };
        self.use_credentials(&credentials);
        self.client.try_disconnect().is_ok()
    }

    /// Sends DISCONNECT and polls until it is out. Subscriptions are kept:
    /// unsubscribing would discard the broker's queue for this session.
    async fn disconnect(&mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let flushed = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match self.event_loop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if flushed.is_err() {
            tracing::warn!(
                timeout_ms = DISCONNECT_TIMEOUT.as_millis() as u64,
                "DISCONNECT not sent before the timeout"
            );
        }
    }
}

struct Subscriber {
    client: AsyncClient,
    topics: Vec<TopicFilter>,
    qos: QoS,
    suback_timeout: Duration,
    pending: PendingSubAck,
    state: watch::Sender<LinkState>,
}

impl Subscriber {
    /// Subscribes after every CONNACK without a session, and after any
    /// CONNACK that follows an interrupted round.
    async fn run(
        mut self,
        mut connack: watch::Receiver<Option<bool>>,
        mut updates: mpsc::UnboundedReceiver<Vec<TopicFilter>>,
        cancel: CancellationToken,
    ) {
        let mut complete = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = connack.changed() => if changed.is_err() { return },
                update = updates.recv() => {
                    let Some(topics) = update else { return };
                    complete = tokio::select! {
                        _ = cancel.cancelled() => return,
                        applied = self.replace_topics(topics, complete) => applied,
                    };
                    continue;
                }
            }
            let Some(session_present) = *connack.borrow_and_update() else { continue };
            if session_present && complete {
                tracing::info!(filters = self.topics.len(), "session resumed, subscriptions kept by the broker");
                self.state.send_replace(LinkState::Subscribed);
                continue;
            }
            complete = tokio::select! {
                _ = cancel.cancelled() => return,
                complete = self.subscribe(&self.topics) => complete,
            };
        }
    }

    /// Switches to a new set of filters. While subscribed, removed filters
    /// are unsubscribed, even with a persistent session, and added ones
    /// subscribed. Returns whether the broker's subscriptions now match.
    async fn replace_topics(&mut self, topics: Vec<TopicFilter>, complete: bool) -> bool {
        let removed: Vec<TopicFilter> = self.topics.iter().filter(|filter| !topics.contains(filter)).cloned().collect();
        let added: Vec<TopicFilter> = topics.iter().filter(|filter| !self.topics.contains(filter)).cloned().collect();
        self.topics = topics;
        tracing::info!(
            added = added.len(),
            removed = removed.len(),
            filters = self.topics.len(),
            "topic filters changed"
        );
        if !complete || !matches!(*self.state.borrow(), LinkState::Subscribed | LinkState::Connected { .. }) {
            // NOTE: filters removed while disconnected stay subscribed in a
            // persistent session until the next change; the next connect
            // subscribes the full new set.
            return false;
        }

        for filter in &removed {
            if self.client.unsubscribe(filter.to_string()).await.is_err() {
                return false;
            }
            tracing::info!(topic = %filter, "unsubscribed");
        }
        if added.is_empty() {
            return true;
        }
        self.subscribe(&added).await
    }

    /// Sends the filters, at most [`FILTERS_PER_SUBSCRIBE`] per packet, one
    /// packet at a time so that each SUBACK matches its filters. Returns
    /// whether every packet got its SUBACK.
    async fn subscribe(&self, topics: &[TopicFilter]) -> bool {
        let mut granted = 0;
        let mut refused = 0;
        for chunk in topics.chunks(FILTERS_PER_SUBSCRIBE) {
            let (waiter, answer) = oneshot::channel();
            if let Ok(mut pending) = self.pending.lock() {
                *pending = Some(waiter);
            }
            let filters: Vec<SubscribeFilter> =
                chunk.iter().map(|filter| SubscribeFilter::new(filter.to_string(), self.qos)).collect();
            if self.client.subscribe_many(filters).await.is_err() {
                return false;
            }

            let codes = match tokio::time::timeout(self.suback_timeout, answer).await {
                Ok(Ok(codes)) => codes,
                Ok(Err(_)) => {
                    tracing::warn!("connection lost before SUBACK, subscribing again after reconnect");
                    return false;
                }
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = self.suback_timeout.as_millis() as u64,
                        "no SUBACK before the timeout, subscribing again after reconnect"
                    );
                    return false;
                }
            };
            let (chunk_granted, chunk_refused) = check_suback(chunk, codes);
            granted += chunk_granted;
            refused += chunk_refused;
        }

        tracing::info!(granted, refused, "subscribed");
        if refused == 0 {
            self.state.send_replace(LinkState::Subscribed);
        }
        true
    }
}

/// Matches SUBACK return codes to the filters of their SUBSCRIBE, logging
/// each refused filter at ERROR. Returns the numbers granted and refused; a
/// filter without a return code counts as refused.
fn check_suback(filters: &[TopicFilter], codes: Vec<SubscribeReasonCode>) -> (usize, usize) {
    if codes.len() != filters.len() {
        tracing::error!(sent = filters.len(), answered = codes.len(), "SUBACK does not match the SUBSCRIBE");
    }
    let mut granted = 0;
    let mut refused = 0;
    for (index, filter) in filters.iter().enumerate() {
        match codes.get(index) {
            Some(SubscribeReasonCode::Success(qos)) => {
                granted += 1;
                tracing::debug!(topic = %filter, granted_qos = *qos as u8, "subscription granted");
            }
            Some(SubscribeReasonCode::Failure) | None => {
                refused += 1;
                tracing::error!(topic = %filter, "subscription refused by the broker");
            }
        }
    }
    (granted, refused)
}

/// When credentials are due for renewal: `renew_before` ahead of expiry.
fn renewal_time(credentials: &MqttCredentials, renew_before: Duration) -> Option<tokio::time::Instant> {
    let expires_at = credentials.expires_at?;
    let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
    Some(tokio::time::Instant::now() + left.saturating_sub(renew_before))
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A connection that lasts less than this after its CONNACK does not reset
/// the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

fn is_packet_too_large(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

fn is_refused_credentials(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword)
    )
}

/// Describes a connection error in words an operator can act on.
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
            "broker refused the connection: not authorized (client id or JWT rejected)".to_owned()
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            "broker refused the connection: bad user name or password".to_owned()
        }
        ConnectionError::ConnectionRefused(code) => format!("broker refused the connection: {code:?}"),
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
        )) => {
            format!("incoming packet of {size} bytes exceeds mqtt.max_packet_size")
        }
        ConnectionError::NetworkTimeout => "network timeout".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects formatted log lines in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn filters(texts: &[&str]) -> Vec<TopicFilter> {
        texts.iter().map(|text| TopicFilter::parse(text).unwrap()).collect()
    }

    // mosquitto 2.0 grants every MQTT 3.1.1 subscription, even one its ACL
    // denies, so refusals are tested here rather than against the broker.
    #[test]
    fn suback_refusals_logged_at_error() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let sent = filters(&["prd/FlightUpdate/LH/#", "prd/FlightUpdate/LX/#", "prd/FlightUpdate/OS/#"]);
        let codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce), SubscribeReasonCode::Failure];

        let counts = tracing::subscriber::with_default(subscriber, || check_suback(&sent, codes));

        assert_eq!(counts, (1, 2));
        let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let refusals: Vec<&str> = logs.lines().filter(|line| line.contains("subscription refused")).collect();
        assert_eq!(refusals.len(), 2, "{logs}");
        assert!(refusals.iter().all(|line| line.contains("ERROR")), "{logs}");
        assert!(refusals[0].contains("prd/FlightUpdate/LX/#"), "{logs}");
        assert!(refusals[1].contains("prd/FlightUpdate/OS/#"), "{logs}");
        assert!(logs.contains("SUBACK does not match"), "{logs}");
    }

    #[test]
    fn suback_all_granted() {
        let sent = filters(&["prd/FlightUpdate/LH/#", "prd/FlightUpdate/LX/#"]);
        let codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce), SubscribeReasonCode::Success(QoS::AtMostOnce)];
        assert_eq!(check_suback(&sent, codes), (2, 0));
    }

    #[test]
    fn tls_config_names_bad_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = tls_config(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains(missing.to_str().unwrap()), "{error}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let error = tls_config(Some(&empty)).unwrap_err().to_string();
        assert!(error.contains("empty.pem") && error.contains("no PEM certificate"), "{error}");
    }
}
