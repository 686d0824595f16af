//! The HTTP side of the stand-in: the OAuth token endpoint, the endpoint that issues MQTT
//! credentials, the Flight Status endpoint, and the state they share with the broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::time::Instant;

use crate::StandinOptions;
use crate::broker::{Broker, random_token};
use crate::flight_status::FlightStatusService;
use crate::jwt::{Claims, JwtSigner};
use crate::mqtt::{ProbeOutcome, probe_until};

/// The `authGroups` claim of every issued token.
const AUTH_GROUPS: &str = "flupSubTopic;FlightUpdate";

/// Time the broker may take to accept new credentials or reject revoked ones after a reload.
const RELOAD_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A client id and token that the credentials endpoint issued.
struct IssuedCredential {
    client_id: String,
    jwt: String,
    /// Whether the credential is in the broker's password file.
    active: bool,
}

/// State shared by the HTTP handlers, the public API and the expiry tasks.
pub(crate) struct Shared {
    pub options: StandinOptions,
    pub broker: Broker,
    pub signer: JwtSigner,
    pub token_calls: AtomicUsize,
    pub credential_calls: AtomicUsize,
    pub flight_status: Arc<FlightStatusService>,
    /// Access tokens and the instant each one expires.
    tokens: Mutex<HashMap<String, Instant>>,
    issued: Mutex<Vec<IssuedCredential>>,
    next_client_number: AtomicU64,
    /// Serializes changes to the password file together with the reload and the probe that
    /// confirms them, so that one request's probe does not race another's reload.
    broker_change_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    pub fn new(options: StandinOptions, broker: Broker, signer: JwtSigner) -> Self {
        let flight_status = Arc::new(FlightStatusService::new(options.flight_status_calls_per_second));
        Self {
            options,
            broker,
            signer,
            token_calls: AtomicUsize::new(0),
            credential_calls: AtomicUsize::new(0),
            flight_status,
            tokens: Mutex::new(HashMap::new()),
            issued: Mutex::new(Vec::new()),
            next_client_number: AtomicU64::new(1),
            broker_change_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn issued_client_ids(&self) -> Vec<String> {
        lock(&self.issued).iter().map(|credential| credential.client_id.clone()).collect()
    }

    /// Creates a client id and a signed token, adds them to the broker, and returns once the
    /// broker accepts them.
    ///
    /// When mosquitto is stopped or frozen the credentials are only written to the password
    /// file, which it reads when it starts or is thawed, and this returns without a probe. A
    /// token that is already expired when issued is never added, so the broker rejects it.
    async fn issue(self: &Arc<Self>, prefix: &str) -> Result<(String, String)> {
        let _guard = self.broker_change_lock.lock().await;
        let number = self.next_client_number.fetch_add(1, Ordering::Relaxed);
        let client_id = format!("{prefix}_{number}");

        let now = chrono::Utc::now().timestamp();
        let created = now - duration_seconds(self.options.jwt_backdate);
        let exp = created + duration_seconds(self.options.jwt_lifetime);
        let jwt = self.signer.sign(&Claims { exp, created, client_id: &client_id, auth_groups: AUTH_GROUPS })?;

        let active = exp > now;
        if active {
            self.broker.add_user(&client_id, &jwt).await?;
            self.apply_and_confirm(&client_id, &jwt, ProbeOutcome::Accepted).await?;
            self.schedule_expiry(client_id.clone(), exp - now);
        }
        lock(&self.issued).push(IssuedCredential { client_id: client_id.clone(), jwt: jwt.clone(), active });
        Ok((client_id, jwt))
    }

    /// Removes an issued client id from the broker and returns once the broker rejects it.
    /// Revoking a client id that is no longer active succeeds without a change.
    pub async fn revoke(&self, client_id: &str) -> Result<()> {
        let _guard = self.broker_change_lock.lock().await;
        let jwt = {
            let issued = lock(&self.issued);
            let Some(credential) = issued.iter().find(|credential| credential.client_id == client_id) else {
                bail!("cannot revoke client id {client_id}: the stand-in never issued it");
            };
            if !credential.active {
                return Ok(());
            }
            credential.jwt.clone()
        };

        self.broker.remove_user(client_id).await?;
        if let Some(credential) = lock(&self.issued).iter_mut().find(|credential| credential.client_id == client_id) {
            credential.active = false;
        }
        self.apply_and_confirm(client_id, &jwt, ProbeOutcome::Rejected).await
    }

    /// Reloads mosquitto if it runs, and if it also responds, probes until it reports
    /// `expected` for the credentials.
    async fn apply_and_confirm(&self, client_id: &str, jwt: &str, expected: ProbeOutcome) -> Result<()> {
        if !self.broker.is_running() {
            return Ok(());
        }
        self.broker.reload()?;
        if !self.broker.is_responsive() {
            return Ok(());
        }
        let options = self.broker.endpoint().options(client_id, client_id, jwt);
        let deadline = Instant::now() + RELOAD_CONFIRM_TIMEOUT;
        probe_until(&options, expected, deadline, &format!("client id {client_id}"))
            .await
            .with_context(|| format!("mosquitto log tail:\n{}", self.broker.log_tail()))
    }

    /// Revokes the client id when its token expires, because the real broker rejects expired
    /// tokens. The task holds only a weak reference, so it ends without effect once the
    /// stand-in is gone.
    fn schedule_expiry(self: &Arc<Self>, client_id: String, seconds_left: i64) {
        // Tokens living longer than a day cannot expire during a test run.
        if seconds_left > 86_400 {
            return;
        }
        let shared: Weak<Self> = Arc::downgrade(self);
        let delay = Duration::from_secs(u64::try_from(seconds_left).unwrap_or(0));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match shared.revoke(&client_id).await {
                Ok(()) => tracing::info!(client_id = %client_id, "token expired; client id removed from the broker"),
                Err(error) => {
                    tracing::warn!(client_id = %client_id, error = %format!("{error:#}"), "failed to remove an expired client id from the broker")
                }
            }
        });
    }

    fn token_is_valid(&self, token: &str) -> bool {
        let tokens = lock(&self.tokens);
        tokens.get(token).is_some_and(|expires| *expires > Instant::now())
    }
}

/// Builds the router for both endpoints.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/oauth/token", post(issue_token))
        .route("/v1/flightUpdate/credentials/JWT/{prefix}/flupSubTopic", post(issue_credentials))
        .route("/v1/operations/flightstatus/{flight}/{date}", get(flight_status))
        .with_state(shared)
}

async fn issue_token(
    State(shared): State<Arc<Shared>>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    shared.token_calls.fetch_add(1, Ordering::Relaxed);
    let fields = match form {
        Ok(Form(fields)) => fields,
        Err(rejection) => {
            tracing::info!(error = %rejection, "token request rejected: body is not a form");
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
    };
    let (Some(client_id), Some(client_secret), Some(grant_type)) =
        (fields.get("client_id"), fields.get("client_secret"), fields.get("grant_type"))
    else {
        tracing::info!("token request rejected: client_id, client_secret or grant_type missing");
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    if *client_id != shared.options.client_id || *client_secret != shared.options.client_secret {
        tracing::info!(client_id = %client_id, "token request rejected: invalid client credentials");
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if grant_type != "client_credentials" {
        tracing::info!(grant_type = %grant_type, "token request rejected: unsupported grant type");
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }

    let token = random_token(32);
    let lifetime = shared.options.token_lifetime;
    lock(&shared.tokens).insert(token.clone(), Instant::now() + lifetime);
    tracing::debug!(expires_in = lifetime.as_secs(), "access token issued");
    let body = json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime.as_secs()});
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn issue_credentials(
    State(shared): State<Arc<Shared>>,
    Path(prefix): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.credential_calls.fetch_add(1, Ordering::Relaxed);

    // The gateway accepts only the scheme spelled "Bearer", although the token endpoint
    // returns token_type "bearer".
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !token.is_some_and(|token| shared.token_is_valid(token)) {
        tracing::info!(prefix = %prefix, "credentials request rejected: missing, invalid or expired access token");
        return gateway_error(StatusCode::UNAUTHORIZED, "Not Authorized");
    }

    // NOTE: the real gateway may return XML when JSON is not requested. The stand-in rejects
    // such requests so that a client that omits the header fails in tests.
    let accepts_json = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("application/json"));
    if !accepts_json {
        tracing::info!(prefix = %prefix, "credentials request rejected: Accept does not include application/json");
        return gateway_error(StatusCode::NOT_ACCEPTABLE, "Accept: application/json required");
    }

    // The prefix becomes a mosquitto user name and a command line argument, so it is limited
    // to characters that are safe in both.
    let prefix_is_valid = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !prefix_is_valid {
        tracing::info!(prefix = %prefix, "credentials request rejected: invalid prefix");
        return gateway_error(StatusCode::BAD_REQUEST, "Invalid prefix");
    }

    match shared.issue(&prefix).await {
        Ok((client_id, jwt)) => {
            tracing::info!(client_id = %client_id, "MQTT credentials issued");
            let body = json!({
                "CertificateManagementResource": {
                    "CertificateManagement": {
                        "javaWebToken": jwt,
                        "clientID": client_id,
                        "endpoint": "localhost",
                    }
                }
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(error) => {
            tracing::error!(prefix = %prefix, error = %format!("{error:#}"), "failed to issue MQTT credentials");
            gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    }
}

async fn flight_status(
    State(shared): State<Arc<Shared>>,
    Path((flight, date)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !token.is_some_and(|token| shared.token_is_valid(token)) {
        tracing::info!(flight = %flight, "flight status request rejected: missing, invalid or expired access token");
        return gateway_error(StatusCode::UNAUTHORIZED, "Not Authorized");
    }
    let accepts_json = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("application/json"));
    if !accepts_json {
        return gateway_error(StatusCode::NOT_ACCEPTABLE, "Accept: application/json required");
    }

    let delay = shared.flight_status.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = shared.flight_status.respond(&flight, &date);
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], reply.body).into_response()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({"error": error}))).into_response()
}

fn gateway_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"Error": message}))).into_response()
}

fn duration_seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 4)
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical
/// section here leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
