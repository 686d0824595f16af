//! Metric names and the small helpers that record them.
//!
//! Recording goes through the `metrics` facade, which does nothing until
//! [`install`] sets the Prometheus recorder, so the helpers cost next to
//! nothing when the health endpoint is off. Sink counters and gauges are not
//! recorded as they happen: [`render`] copies them from each sink's
//! [`SinkStats`] at scrape time, so the sink tasks need no extra calls.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rumqttc::{ConnectReturnCode, ConnectionError, StateError};

use crate::sink::driver::SinkStats;

pub const MESSAGES_RECEIVED: &str = "flupd_messages_received_total";
pub const EVENTS: &str = "flupd_events_total";
pub const MALFORMED_PAYLOADS: &str = "flupd_malformed_payloads_total";
pub const SINK_DELIVERED: &str = "flupd_sink_delivered_total";
pub const SINK_FAILED: &str = "flupd_sink_failed_total";
pub const SINK_RETRIED: &str = "flupd_sink_retried_total";
pub const SINK_REDELIVERED: &str = "flupd_sink_redelivered_total";
pub const OUTBOX_BYTES: &str = "flupd_outbox_bytes";
pub const OUTBOX_EVENTS: &str = "flupd_outbox_events";
pub const SINK_PENDING: &str = "flupd_sink_pending_events";
pub const SINK_OLDEST_PENDING_AGE: &str = "flupd_sink_oldest_pending_age_seconds";
pub const MQTT_RECONNECTS: &str = "flupd_mqtt_reconnects_total";
pub const MQTT_CONNECTED: &str = "flupd_mqtt_connected";
pub const MQTT_SUBSCRIBED: &str = "flupd_mqtt_subscribed";
pub const MQTT_SESSION_PRESENT: &str = "flupd_mqtt_session_present";
pub const CREDENTIALS_EXPIRY: &str = "flupd_credentials_expiry_seconds";
pub const API_REQUESTS: &str = "flupd_api_requests_total";
pub const API_RATE_LIMITED: &str = "flupd_api_rate_limited_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Expiry of the current MQTT credentials in Unix seconds, `i64::MIN` when
/// unknown. Kept here because the gauge must count down between scrapes.
static CREDENTIALS_EXPIRES_AT: AtomicI64 = AtomicI64::new(i64::MIN);

/// Installs the Prometheus recorder for the whole process and returns its
/// handle. Only the first call installs it; later calls return the same
/// handle, or `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                describe();
                Some(handle)
            }
            Err(error) => {
                tracing::warn!(%error, "metrics recorder not installed, /metrics will be empty");
                None
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(MESSAGES_RECEIVED, "MQTT messages received, by QoS");
    describe_counter!(EVENTS, "Flight update events built, by kind");
    describe_counter!(MALFORMED_PAYLOADS, "Messages whose payload was not the expected JSON");
    describe_counter!(SINK_DELIVERED, "Events delivered, by sink");
    describe_counter!(SINK_FAILED, "Events the sink rejected permanently, by sink");
    describe_counter!(SINK_RETRIED, "Delivery attempts that failed and were retried, by sink");
    describe_counter!(
        SINK_REDELIVERED,
        "Events delivered again after a restart, which the sink may have had before, by sink"
    );
    describe_gauge!(OUTBOX_BYTES, "Bytes of event data stored in the outbox");
    describe_gauge!(OUTBOX_EVENTS, "Events stored in the outbox, delivered or not");
    describe_gauge!(SINK_PENDING, "Events queued or being delivered, by sink");
    describe_gauge!(SINK_OLDEST_PENDING_AGE, "Age of the event the sink is delivering, 0 when idle");
    describe_counter!(MQTT_RECONNECTS, "Connection failures and losses, each followed by a reconnect, by cause");
    describe_gauge!(MQTT_CONNECTED, "1 while connected to the broker");
    describe_gauge!(MQTT_SUBSCRIBED, "1 while connected and every topic filter is granted");
    describe_gauge!(MQTT_SESSION_PRESENT, "Session present flag of the last CONNACK");
    describe_gauge!(CREDENTIALS_EXPIRY, "Seconds until the MQTT credentials (JWT) expire");
    describe_counter!(API_REQUESTS, "Requests to Lufthansa's API, by endpoint and HTTP status");
    describe_counter!(API_RATE_LIMITED, "Answers of Lufthansa's API saying the rate limit is exceeded");
}

/// Counts one received message and the event built from it.
pub fn record_event(qos: u8, kind: &'static str, malformed: bool) {
    // Static labels spare an allocation per message.
    let qos = match qos {
        0 => "0",
        1 => "1",
        _ => "2",
    };
    counter!(MESSAGES_RECEIVED, "qos" => qos).increment(1);
    counter!(EVENTS, "kind" => kind).increment(1);
    if malformed {
        counter!(MALFORMED_PAYLOADS).increment(1);
    }
}

/// Records a CONNACK.
pub fn record_connack(session_present: bool) {
    gauge!(MQTT_SESSION_PRESENT).set(if session_present { 1.0 } else { 0.0 });
}

/// Counts a connection failure or loss by its cause.
pub fn record_reconnect(cause: &'static str) {
    counter!(MQTT_RECONNECTS, "cause" => cause).increment(1);
}

/// Records when the credentials in use expire; `None` means the JWT has no
/// `exp` claim.
pub fn set_credentials_expiry(expires_at: Option<DateTime<Utc>>) {
    let seconds = expires_at.map_or(i64::MIN, |at| at.timestamp());
    CREDENTIALS_EXPIRES_AT.store(seconds, Ordering::Relaxed);
}

/// Records the outbox's size, as measured after each cleanup.
pub fn set_outbox_size(events: u64, bytes: u64) {
    gauge!(OUTBOX_EVENTS).set(events as f64);
    gauge!(OUTBOX_BYTES).set(bytes as f64);
}

/// Counts one request to Lufthansa's API by its HTTP status, `None` when no
/// response came (connection error or timeout).
pub fn record_api_call(path: &str, status: Option<u16>) {
    let endpoint = api_endpoint(path);
    let status = status.map_or_else(|| "error".to_owned(), |status| status.to_string());
    counter!(API_REQUESTS, "endpoint" => endpoint, "status" => status).increment(1);
}

/// Counts a response saying that the rate limit is exceeded. Lufthansa then
/// blocks the key for a while.
pub fn record_rate_limited(path: &str) {
    counter!(API_RATE_LIMITED, "endpoint" => api_endpoint(path)).increment(1);
}

/// Names the API endpoint of a URL path with a fixed label, because the
/// credentials path contains the client prefix.
fn api_endpoint(path: &str) -> &'static str {
    if path.contains("/oauth/token") {
        "token"
    } else if path.contains("/credentials/") {
        "credentials"
    } else {
        "other"
    }
}

/// Names the cause of a connection error with a fixed label, for the
/// reconnect counter and the status line.
pub fn reconnect_cause(error: &ConnectionError) -> &'static str {
    match error {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
        ) => "credentials_refused",
        ConnectionError::ConnectionRefused(_) => "connection_refused_by_broker",
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => "timeout",
        ConnectionError::Tls(_) => "tls",
        ConnectionError::Io(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => "broker_unreachable",
        ConnectionError::Io(_) => "io",
        ConnectionError::MqttState(StateError::AwaitPingResp) => "ping_timeout",
        ConnectionError::MqttState(StateError::Io(_)) => "connection_lost",
        ConnectionError::MqttState(_) => "protocol",
        _ => "other",
    }
}

/// One sink's counters, as [`render`] reads them.
pub struct SinkView<'a> {
    pub name: &'a str,
    pub stats: &'a SinkStats,
}

/// Renders every metric in the Prometheus text format, after copying the
/// sink counters and the values that change with time into the recorder.
pub fn render(handle: &PrometheusHandle, sinks: &[SinkView<'_>], connected: bool, subscribed: bool) -> String {
    let now = Utc::now();
    for sink in sinks {
        let name = sink.name.to_owned();
        let stats = sink.stats;
        counter!(SINK_DELIVERED, "sink" => name.clone()).absolute(stats.delivered.load(Ordering::Relaxed));
        counter!(SINK_FAILED, "sink" => name.clone()).absolute(stats.failed.load(Ordering::Relaxed));
        counter!(SINK_RETRIED, "sink" => name.clone()).absolute(stats.retried.load(Ordering::Relaxed));
        counter!(SINK_REDELIVERED, "sink" => name.clone()).absolute(stats.redelivered.load(Ordering::Relaxed));
        gauge!(SINK_PENDING, "sink" => name.clone()).set(stats.pending.load(Ordering::Relaxed) as f64);
        let age = stats.progress.oldest_pending_age(now).map_or(0.0, |age| age.as_secs_f64());
        gauge!(SINK_OLDEST_PENDING_AGE, "sink" => name).set(age);
    }
    gauge!(MQTT_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    gauge!(MQTT_SUBSCRIBED).set(if subscribed { 1.0 } else { 0.0 });
    let expires_at = CREDENTIALS_EXPIRES_AT.load(Ordering::Relaxed);
    if expires_at != i64::MIN {
        gauge!(CREDENTIALS_EXPIRY).set((expires_at - now.timestamp()) as f64);
    }
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_endpoint_labels_are_fixed() {
        assert_eq!(api_endpoint("/v1/oauth/token"), "token");
        assert_eq!(api_endpoint("/v1/flightUpdate/credentials/JWT/acme/flupSubTopic"), "credentials");
        assert_eq!(api_endpoint("/v1/other"), "other");
    }

    #[test]
    fn reconnect_cause_names_refused_credentials() {
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert_eq!(reconnect_cause(&refused), "credentials_refused");
        let unreachable = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(reconnect_cause(&unreachable), "broker_unreachable");
        assert_eq!(reconnect_cause(&ConnectionError::MqttState(StateError::AwaitPingResp)), "ping_timeout");
    }
}
