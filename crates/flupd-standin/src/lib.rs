//! A local stand-in for the Lufthansa flight update service: the OAuth and credentials HTTP
//! API on loopback, a real mosquitto broker with TLS, and a publisher of sample updates.
//!
//! flupd's demo and integration tests use it to run the real pipeline without network access.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use flupd_standin::{Standin, StandinOptions};
//! use std::time::Duration;
//!
//! let standin = Standin::start(StandinOptions::default()).await?;
//! // Point flupd at standin.api_base(), standin.broker_host(), standin.broker_port() and
//! // standin.ca_file(), with the client id and secret from the options.
//! let publisher = standin.start_publisher(Duration::from_millis(300));
//! // ... run and check flupd ...
//! publisher.stop();
//! standin.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod api;
mod broker;
mod flight_status;
mod jwt;
mod mqtt;
mod samples;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use tokio::task::JoinHandle;

pub use flight_status::FlightStateHandle;
pub use mqtt::PublisherHandle;
pub use rumqttc::MqttOptions;
pub use samples::{SAMPLE_CYCLE, sample_codes, sample_update};

use api::Shared;
use broker::Broker;
use jwt::JwtSigner;

/// Settings of a stand-in.
#[derive(Debug, Clone)]
pub struct StandinOptions {
    /// The OAuth client id the token endpoint accepts.
    pub client_id: String,
    /// The OAuth client secret the token endpoint accepts.
    pub client_secret: String,
    /// Lifetime of access tokens, returned as `expires_in` and enforced by the credentials
    /// endpoint.
    pub token_lifetime: Duration,
    /// Time between the `created` and `exp` claims of issued JWTs. The broker rejects a JWT
    /// from its `exp` on.
    pub jwt_lifetime: Duration,
    /// How far in the past the `created` claim lies. With a backdate of at least
    /// `jwt_lifetime` the credentials endpoint issues JWTs that are already expired, which
    /// the broker rejects.
    pub jwt_backdate: Duration,
    /// Whether mosquitto saves sessions and queued messages across [`Standin::restart_broker`].
    pub persistence: bool,
    /// Flight Status requests allowed in any one second; more get 403 "Developer Over Rate",
    /// as Lufthansa responds. `None` allows any rate.
    pub flight_status_calls_per_second: Option<u32>,
}

impl Default for StandinOptions {
    fn default() -> Self {
        Self {
            client_id: "demo-key".to_owned(),
            client_secret: "demo-secret".to_owned(),
            token_lifetime: Duration::from_secs(21_600),
            jwt_lifetime: Duration::from_secs(731 * 86_400),
            jwt_backdate: Duration::ZERO,
            persistence: false,
            flight_status_calls_per_second: Some(5),
        }
    }
}

/// A running stand-in. Dropping it kills mosquitto and stops the HTTP server, and
/// [`Standin::shutdown`] stops mosquitto gracefully instead.
pub struct Standin {
    shared: Arc<Shared>,
    api_addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Standin {
    /// Starts mosquitto and the HTTP API and returns once both accept connections.
    pub async fn start(options: StandinOptions) -> Result<Standin> {
        let signer = JwtSigner::generate()?;
        let broker = Broker::start(options.persistence).await?;
        let shared = Arc::new(Shared::new(options, broker, signer));

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("failed to bind the stand-in HTTP API to 127.0.0.1")?;
        let api_addr = listener.local_addr().context("failed to read the HTTP API's local address")?;
        let app = api::router(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(error = %error, "stand-in HTTP API stopped");
            }
        });
        tracing::info!(api = %api_addr, broker_port = shared.broker.port(), "stand-in started");

        Ok(Standin { shared, api_addr, server })
    }

    /// Returns the base URL of the HTTP API, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Returns the broker host name, `localhost`, which is also the `endpoint` field of issued
    /// credentials and a subject alternative name of the broker's certificate.
    pub fn broker_host(&self) -> &str {
        "localhost"
    }

    /// Returns the broker's TLS port on 127.0.0.1.
    pub fn broker_port(&self) -> u16 {
        self.shared.broker.port()
    }

    /// Returns the path of the PEM file with the CA certificate that signed the broker's
    /// certificate.
    pub fn ca_file(&self) -> &Path {
        self.shared.broker.ca_file()
    }

    /// Returns the public key that verifies issued JWTs, as a DER `RSAPublicKey` (PKCS#1), for
    /// `aws_lc_rs::signature::UnparsedPublicKey` with `RSA_PKCS1_2048_8192_SHA256`.
    pub fn jwt_public_key(&self) -> &[u8] {
        self.shared.signer.public_key_der()
    }

    /// Returns the number of requests to the token endpoint, including rejected ones.
    pub fn token_calls(&self) -> usize {
        self.shared.token_calls.load(Ordering::Relaxed)
    }

    /// Returns the number of requests to the credentials endpoint, including rejected ones.
    pub fn credential_calls(&self) -> usize {
        self.shared.credential_calls.load(Ordering::Relaxed)
    }

    /// Returns every client id the credentials endpoint issued, oldest first, including
    /// revoked and expired ones.
    pub fn issued_client_ids(&self) -> Vec<String> {
        self.shared.issued_client_ids()
    }

    /// Builds MQTT client options for this broker: TLS with the generated CA, clean session,
    /// host 127.0.0.1. Tests use them to subscribe or to probe credentials.
    pub fn mqtt_options(&self, client_id: &str, username: &str, password: &str) -> MqttOptions {
        self.shared.broker.endpoint().options(client_id, username, password)
    }

    /// Publishes one message as the admin user on a new connection, and returns once the
    /// broker acknowledged it (QoS 1 and 2) or received it (QoS 0).
    pub async fn publish(&self, topic: &str, payload: &[u8], qos: u8) -> Result<()> {
        mqtt::publish_once(self.shared.broker.admin_options(), topic, payload, qos).await
    }

    /// Starts publishing [`sample_update`]`(0, today)`, `(1, today)`, ... at QoS 1, one every
    /// `interval`, until the handle is stopped or dropped.
    pub fn start_publisher(&self, interval: Duration) -> PublisherHandle {
        PublisherHandle::start(self.shared.broker.admin_options(), interval, self.shared.flight_status.clone())
    }

    /// Returns the number of Flight Status requests with a valid token, including those
    /// rejected with an error or a rate limit.
    pub fn flight_status_calls(&self) -> usize {
        self.shared.flight_status.calls()
    }

    /// Returns the number of Flight Status requests for one flight and date.
    pub fn flight_status_calls_for(&self, flight: &str, date: NaiveDate) -> usize {
        self.shared.flight_status.calls_for(flight, date)
    }

    /// Sets the departure gate of a flight's first leg that has not arrived. Returns false for
    /// a flight the stand-in does not know, which gets 404.
    pub fn set_gate(&self, flight: &str, date: NaiveDate, gate: &str) -> bool {
        self.shared.flight_status.modify(flight, date, |state| state.set_gate(gate))
    }

    /// Sets a flight's estimated departure to its scheduled time plus `minutes`.
    pub fn set_departure_delay(&self, flight: &str, date: NaiveDate, minutes: i64) -> bool {
        self.shared.flight_status.modify(flight, date, |state| state.set_departure_delay(minutes))
    }

    /// Changes a flight's status in any other way, such as applying an action code.
    pub fn modify_flight(
        &self,
        flight: &str,
        date: NaiveDate,
        change: impl FnOnce(&mut FlightStateHandle<'_>),
    ) -> bool {
        self.shared.flight_status.modify(flight, date, change)
    }

    /// Answers every Flight Status request for one flight and date with `status` and `body`
    /// instead of the flight's status, such as a malformed body.
    pub fn set_flight_status_response(&self, flight: &str, date: NaiveDate, status: u16, body: &str) {
        self.shared.flight_status.set_override(flight, date, status, body.to_owned());
    }

    /// Responds to the next `responses` Flight Status requests with 403 "Developer Over Rate".
    pub fn force_rate_limit(&self, responses: usize) {
        self.shared.flight_status.force_rate_limit(responses);
    }

    /// Delays every Flight Status response by `delay`, to simulate a slow API.
    pub fn set_flight_status_delay(&self, delay: Duration) {
        self.shared.flight_status.set_delay(delay);
    }

    /// Removes an issued client id from the broker and returns once the broker rejects its
    /// credentials. mosquitto also disconnects a client that is connected with them.
    pub async fn revoke(&self, client_id: &str) -> Result<()> {
        self.shared.revoke(client_id).await
    }

    /// Stops mosquitto with SIGTERM, so that with persistence it saves its state.
    pub async fn stop_broker(&self) {
        self.shared.broker.stop().await;
    }

    /// Starts mosquitto again on the same port and waits until it accepts connections,
    /// stopping it first if it runs.
    pub async fn restart_broker(&self) -> Result<()> {
        self.shared.broker.restart().await
    }

    /// Suspends mosquitto with SIGSTOP: TCP connections stay open, but it processes no packets.
    pub fn freeze_broker(&self) {
        self.shared.broker.freeze();
    }

    /// Resumes mosquitto after [`Standin::freeze_broker`].
    pub fn thaw_broker(&self) {
        self.shared.broker.thaw();
    }

    /// Returns the last lines of the mosquitto log, for test failure messages.
    pub fn broker_log_tail(&self) -> String {
        self.shared.broker.log_tail()
    }

    /// Stops the HTTP API and stops mosquitto gracefully.
    pub async fn shutdown(self) {
        self.server.abort();
        self.shared.broker.stop().await;
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.server.abort();
        // Nothing can be awaited here, so mosquitto gets SIGKILL. After shutdown() it has
        // already exited and this does nothing.
        self.shared.broker.kill_now();
    }
}
