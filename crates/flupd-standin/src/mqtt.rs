//! MQTT client side of the stand-in: probe connections that confirm which credentials the
//! broker accepts, one-shot publishing, and the background sample publisher.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use rustls::ClientConfig;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::flight_status::FlightStatusService;
use crate::samples::sample_update;

/// Time one probe connection may take from TCP connect to CONNACK.
const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between probe attempts. rumqttc reconnects at once on the next `poll()` after an
/// error, so every retry loop needs its own delay.
const PROBE_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Time a one-shot publish may take from connect to acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause of the background publisher before it reconnects after a connection error.
const PUBLISHER_RETRY_DELAY: Duration = Duration::from_millis(250);

/// Connection settings shared by every client the stand-in opens to its broker.
#[derive(Clone)]
pub(crate) struct BrokerEndpoint {
    pub port: u16,
    pub tls: Arc<ClientConfig>,
}

impl BrokerEndpoint {
    /// Builds client options for this broker over TLS with the generated CA.
    ///
    /// The host is 127.0.0.1, which the server certificate lists, because the broker listens on
    /// IPv4 loopback only.
    pub fn options(&self, client_id: &str, username: &str, password: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port);
        options.set_credentials(username, password);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(self.tls.clone())));
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        // rumqttc's default limit is 10 KiB; tests publish larger messages.
        options.set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        options
    }
}

/// Largest packet the stand-in's own clients send or accept, in bytes.
const MAX_PACKET_SIZE: usize = 16 * 1024 * 1024;

/// Result of one probe connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeOutcome {
    Accepted,
    /// The broker rejected the CONNECT with return code "not authorized" or "bad user name or
    /// password".
    Rejected,
    /// The connection failed before any CONNACK, for example because the broker is not
    /// listening yet.
    Failed(String),
}

/// Connects once with `options`, reports whether the broker accepted the credentials, and
/// disconnects right after an accepted CONNACK.
pub(crate) async fn probe_once(options: MqttOptions) -> ProbeOutcome {
    let (client, mut eventloop) = AsyncClient::new(options, 4);

    let outcome = match timeout(PROBE_ATTEMPT_TIMEOUT, wait_for_connack(&mut eventloop)).await {
        Ok(outcome) => outcome,
        Err(_) => ProbeOutcome::Failed("timed out waiting for CONNACK".to_owned()),
    };

    if outcome == ProbeOutcome::Accepted {
        // Send DISCONNECT so that the broker ends the session at once rather than treating the
        // closed socket as an unexpected loss of the client.
        if client.try_disconnect().is_ok() {
            let _ = timeout(PROBE_ATTEMPT_TIMEOUT, drive_until_disconnect_sent(&mut eventloop)).await;
        }
    }
    outcome
}

async fn wait_for_connack(eventloop: &mut EventLoop) -> ProbeOutcome {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return ProbeOutcome::Accepted,
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
            )) => return ProbeOutcome::Rejected,
            Err(error) => return ProbeOutcome::Failed(error.to_string()),
        }
    }
}

async fn drive_until_disconnect_sent(eventloop: &mut EventLoop) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Probes with `options` until the outcome is `expected` or `deadline` passes.
///
/// Each attempt gives up on its first error and the next one starts after a short pause.
/// The error message names `what` and the last outcome.
pub(crate) async fn probe_until(
    options: &MqttOptions,
    expected: ProbeOutcome,
    deadline: Instant,
    what: &str,
) -> Result<()> {
    loop {
        let outcome = probe_once(options.clone()).await;
        if outcome == expected {
            return Ok(());
        }
        if Instant::now() + PROBE_RETRY_DELAY >= deadline {
            bail!("timed out waiting for the broker to report {expected:?} for {what}; last probe: {outcome:?}");
        }
        sleep(PROBE_RETRY_DELAY).await;
    }
}

/// Converts the MQTT QoS number 0, 1 or 2.
pub(crate) fn qos_from_number(qos: u8) -> Result<QoS> {
    match qos {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => bail!("invalid MQTT QoS {other}: expected 0, 1 or 2"),
    }
}

/// Publishes one message on a fresh connection and returns once the broker acknowledged it
/// (PUBACK for QoS 1, PUBCOMP for QoS 2) or, for QoS 0, once it was written to the socket.
pub(crate) async fn publish_once(options: MqttOptions, topic: &str, payload: &[u8], qos: u8) -> Result<()> {
    let qos = qos_from_number(qos)?;
    // The request is queued before the event loop runs, so the channel has room for it and
    // for the DISCONNECT that follows.
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    client
        .try_publish(topic, qos, false, payload.to_vec())
        .with_context(|| format!("failed to queue a publish on topic {topic}"))?;

    let delivered = async {
        loop {
            let event = eventloop.poll().await.with_context(|| format!("publish on topic {topic} failed"))?;
            let done = matches!(
                (qos, event),
                (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_)))
                    | (QoS::AtLeastOnce, Event::Incoming(Packet::PubAck(_)))
                    | (QoS::ExactlyOnce, Event::Incoming(Packet::PubComp(_)))
            );
            if done {
                return anyhow::Ok(());
            }
        }
    };
    timeout(PUBLISH_TIMEOUT, delivered)
        .await
        .map_err(|_| anyhow!("timed out after {PUBLISH_TIMEOUT:?} publishing on topic {topic}"))??;

    // The DISCONNECT follows the PUBLISH on the same stream, so the broker has read the
    // message before it closes the connection, also for QoS 0.
    if client.try_disconnect().is_ok() {
        let _ = timeout(PROBE_ATTEMPT_TIMEOUT, drive_until_disconnect_sent(&mut eventloop)).await;
    }
    Ok(())
}

/// Publishes sample updates at a fixed interval until stopped or dropped.
///
/// The publisher keeps one connection as the admin user and reconnects after errors, so it
/// outlives broker restarts and freezes. Samples are numbered from 0 and use the current UTC
/// date, so the `n`-th message equals [`crate::sample_update`]`(n, today)`. A sample that
/// cannot be queued, for example while the broker is down, is retried on the next tick
/// rather than skipped, but a message queued just before a connection loss may be lost.
pub struct PublisherHandle {
    ticker: JoinHandle<()>,
    connection: JoinHandle<()>,
    queued: Arc<AtomicU64>,
}

impl PublisherHandle {
    pub(crate) fn start(options: MqttOptions, interval: Duration, flight_status: Arc<FlightStatusService>) -> Self {
        let (client, eventloop) = AsyncClient::new(options, 64);
        let queued = Arc::new(AtomicU64::new(0));
        let connection = tokio::spawn(drive_publisher_connection(eventloop));
        let ticker = tokio::spawn(publish_samples(client, interval, queued.clone(), flight_status));
        Self { ticker, connection, queued }
    }

    /// Returns how many samples were handed to the MQTT client so far. Sample numbers
    /// `0..queued()` have been queued for sending.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Stops publishing and closes the connection without waiting for acknowledgements.
    pub fn stop(self) {
        // Drop aborts both tasks.
    }
}

impl Drop for PublisherHandle {
    fn drop(&mut self) {
        self.ticker.abort();
        self.connection.abort();
    }
}

async fn publish_samples(
    client: AsyncClient,
    interval: Duration,
    queued: Arc<AtomicU64>,
    flight_status: Arc<FlightStatusService>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0u64;
    loop {
        ticker.tick().await;
        let today = chrono::Utc::now().date_naive();
        let (topic, payload) = sample_update(next, today);
        // try_publish keeps the ticker from blocking on a full request channel while the
        // connection is down.
        match client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload) {
            Ok(()) => {
                // The flight status changes as the update reports, so that a client fetching it
                // after the update gets the change.
                flight_status.apply_sample(next, today);
                next += 1;
                queued.store(next, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::debug!(sample = next, topic = %topic, error = %error, "sample not queued; retrying on the next tick");
            }
        }
    }
}

async fn drive_publisher_connection(mut eventloop: EventLoop) {
    let mut failures = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if failures > 0 {
                    tracing::info!(failures, "sample publisher reconnected");
                }
                failures = 0;
            }
            Ok(_) => {}
            Err(error) => {
                failures += 1;
                // Only the first failure of a run is a warning, so a stopped broker does not
                // flood the log.
                if failures == 1 {
                    tracing::warn!(error = %error, "sample publisher connection failed; retrying");
                } else {
                    tracing::debug!(error = %error, failures, "sample publisher connection failed again; retrying");
                }
                sleep(PUBLISHER_RETRY_DELAY).await;
            }
        }
    }
}
