//! The HTTP client for Lufthansa's OAuth, MQTT credentials and Flight Status
//! endpoints. Every call goes through one [`RateLimiter`] per API key.

mod limiter;

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use crate::backoff::Backoff;
use crate::secret::Secret;

pub use limiter::{CallLimits, CallPriority, LimitError, RateLimiter};

/// Attempts made for one call when the API answers 5xx or times out.
const ATTEMPTS: u32 = 4;

/// A token is renewed this long before the expiry the API announced, so
/// that it never expires in flight.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// MQTT credentials as issued by the credentials endpoint.
#[derive(Debug, Clone)]
pub struct IssuedCredentials {
    pub client_id: String,
    pub jwt: Secret,
    /// Broker host name, such as `lhgopenapi.lufthansa.com`.
    pub endpoint: String,
}

/// A failed call to Lufthansa's API. URLs are shown without query strings
/// or user information; secrets never appear.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{url}: not authorized (HTTP {status}): {detail}; check lufthansa.client_id and the client secret")]
    NotAuthorized { url: String, status: u16, detail: String },
    #[error(
        "{url}: rate limit exceeded (HTTP {status}): {detail}; Lufthansa blocks the key for a while, so wait before calling again"
    )]
    RateLimited { url: String, status: u16, detail: String },
    #[error("{url}: HTTP {status}: {detail}")]
    Status { url: String, status: u16, detail: String },
    #[error("{url}: request failed: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: invalid response: {detail}")]
    InvalidResponse { url: String, detail: String },
    #[error(
        "{url}: not sent: calls to Lufthansa's API are paused for another {remaining_secs}s after a rate-limit response; lufthansa.rate_limit_pause sets the pause"
    )]
    CallsPaused { url: String, remaining_secs: u64 },
    #[error(
        "{url}: not sent: the call budget allows the next call in {wait_secs}s; raise lufthansa.max_calls_per_second or max_calls_per_hour if Lufthansa allows your key more"
    )]
    BudgetExhausted { url: String, wait_secs: u64 },
}

impl ApiError {
    /// Whether trying again soon may succeed: server errors, Lufthansa's
    /// undocumented 596, timeouts and connection failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => *status >= 500,
            ApiError::Transport { .. } => true,
            _ => false,
        }
    }
}

impl ApiError {
    fn from_limit(error: LimitError, url: &Url) -> ApiError {
        let url = display_url(url);
        let seconds = |at: Instant| at.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as u64;
        match error {
            LimitError::Paused { until } => ApiError::CallsPaused { url, remaining_secs: seconds(until) },
            LimitError::BudgetExhausted { available_at } => {
                ApiError::BudgetExhausted { url, wait_secs: seconds(available_at) }
            }
        }
    }
}

struct AccessToken {
    value: Secret,
    renew_at: Instant,
}

/// One client per API key. It caches the access token and shares it and
/// the call budget with every caller, so build one per key and share it.
pub struct LufthansaApi {
    http: reqwest::Client,
    base: Url,
    client_id: String,
    client_secret: Secret,
    token: Mutex<Option<AccessToken>>,
    limiter: RateLimiter,
}

impl std::fmt::Debug for LufthansaApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LufthansaApi")
            .field("base", &display_url(&self.base))
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl LufthansaApi {
    pub fn new(base: Url, client_id: String, client_secret: Secret, timeout: Duration) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("flupd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ApiError::Transport { url: display_url(&base), message: error.to_string() })?;
        let limiter = RateLimiter::new(CallLimits::default());
        Ok(Self { http, base, client_id, client_secret, token: Mutex::new(None), limiter })
    }

    /// Replaces the default call budget.
    pub fn with_limits(mut self, limits: CallLimits) -> Self {
        self.limiter = RateLimiter::new(limits);
        self
    }

    /// Returns the budget every call to this key's API goes through.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Returns the API base URL, such as `https://api.lufthansa.com`.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Returns the Flight Status URL of one flight on its local departure
    /// date: `{base}/v1/operations/flightstatus/{flight}/{yyyy-mm-dd}`.
    pub fn flight_status_url(&self, flight: &str, date: chrono::NaiveDate) -> Url {
        self.url(&format!("/v1/operations/flightstatus/{flight}/{}", date.format("%Y-%m-%d")))
    }

    /// Fetches a Flight Status response and returns its body.
    ///
    /// The call waits for the budget at most until `deadline`, and fails
    /// with [`ApiError::BudgetExhausted`] or [`ApiError::CallsPaused`] if it
    /// cannot start by then. `url` must be on this API's host, because the
    /// access token is sent with it.
    pub async fn flight_status(&self, url: &Url, deadline: Instant) -> Result<Vec<u8>, ApiError> {
        if !same_origin(url, &self.base) {
            return Err(ApiError::InvalidResponse {
                url: display_url(url),
                detail: format!("refusing to send the access token to a host other than {}", display_url(&self.base)),
            });
        }
        let mut token = self.access_token().await?;
        let mut refreshed = false;
        loop {
            let result = self.with_retries(|| self.get_flight_status(url, &token, deadline)).await;
            match result {
                // A token the API no longer accepts is renewed once.
                Err(ApiError::NotAuthorized { status: 401, .. }) if !refreshed => {
                    refreshed = true;
                    *self.token.lock().await = None;
                    token = self.access_token().await?;
                }
                other => return other,
            }
        }
    }

    async fn get_flight_status(&self, url: &Url, token: &Secret, deadline: Instant) -> Result<Vec<u8>, ApiError> {
        let request = self
            .http
            .get(url.clone())
            .header("Accept", "application/json")
            .header("Authorization", format!("Bearer {}", token.expose()));
        self.send(CallPriority::Enrichment, Some(deadline), request, url).await
    }

    /// Takes a call from the budget, sends the request, and pauses all calls
    /// when the response is a rate limit.
    async fn send(
        &self,
        priority: CallPriority,
        deadline: Option<Instant>,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<Vec<u8>, ApiError> {
        self.limiter.acquire(priority, deadline).await.map_err(|error| ApiError::from_limit(error, url))?;
        let result = send(request, url).await;
        if let Err(ApiError::RateLimited { status, detail, .. }) = &result {
            let pause = self.limiter.limits().rate_limit_pause;
            self.limiter.pause();
            tracing::error!(
                url = %display_url(url),
                status,
                detail = %detail,
                pause_secs = pause.as_secs(),
                "lufthansa api rate limit reached, pausing all calls with this key"
            );
        }
        result
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{}", self.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    /// Returns a valid access token, fetching a new one when the cached one
    /// is about to expire.
    pub async fn access_token(&self) -> Result<Secret, ApiError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.renew_at {
                return Ok(token.value.clone());
            }
        }
        let token = self.with_retries(|| self.fetch_token()).await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    async fn fetch_token(&self) -> Result<AccessToken, ApiError> {
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }

        let url = self.url("/v1/oauth/token");
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("grant_type", "client_credentials"),
        ];
        let request = self.http.post(url.clone()).header("Accept", "application/json").form(&form);
        let body = self.send(CallPriority::Credentials, None, request, &url).await?;
        let response: TokenResponse = serde_json::from_slice(&body).map_err(|error| ApiError::InvalidResponse {
            url: display_url(&url),
            detail: format!("expected a JSON object with access_token: {error}"),
        })?;

        // Lufthansa documents 21600 s; without a value assume the least
        // that was ever documented rather than a day.
        let lifetime = Duration::from_secs(response.expires_in.unwrap_or(21600));
        let renew_at = Instant::now() + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN);
        tracing::info!(url = %display_url(&url), expires_in = lifetime.as_secs(), "access token obtained");
        Ok(AccessToken { value: Secret::new(response.access_token), renew_at })
    }

    /// Asks the credentials endpoint for a new MQTT client id and JWT. Every
    /// call creates a new client id on Lufthansa's side.
    pub async fn issue_mqtt_credentials(&self, prefix: &str) -> Result<IssuedCredentials, ApiError> {
        let url = self.url(&format!("/v1/flightUpdate/credentials/JWT/{prefix}/flupSubTopic"));
        let mut token = self.access_token().await?;
        let mut refreshed = false;
        loop {
            let result = self.with_retries(|| self.post_credentials(&url, &token)).await;
            match result {
                // A token the API no longer accepts is renewed once.
                Err(ApiError::NotAuthorized { .. }) if !refreshed => {
                    refreshed = true;
                    *self.token.lock().await = None;
                    token = self.access_token().await?;
                }
                other => return other,
            }
        }
    }

    async fn post_credentials(&self, url: &Url, token: &Secret) -> Result<IssuedCredentials, ApiError> {
        let request = self
            .http
            .post(url.clone())
            .header("Accept", "application/json")
            .header("Authorization", format!("Bearer {}", token.expose()))
            .header("Content-Length", "0");
        let body = self.send(CallPriority::Credentials, None, request, url).await?;
        let invalid = |detail: String| ApiError::InvalidResponse { url: display_url(url), detail };
        let value: Value = serde_json::from_slice(&body).map_err(|error| invalid(format!("not JSON: {error}")))?;
        let management = &value["CertificateManagementResource"]["CertificateManagement"];
        let field = |name: &str| {
            management[name].as_str().filter(|text| !text.is_empty()).map(str::to_owned).ok_or_else(|| {
                invalid(format!("CertificateManagementResource.CertificateManagement.{name} is missing"))
            })
        };
        let credentials = IssuedCredentials {
            jwt: Secret::new(field("javaWebToken")?),
            client_id: field("clientID")?,
            endpoint: field("endpoint")?,
        };
        tracing::info!(url = %display_url(url), client_id = %credentials.client_id, endpoint = %credentials.endpoint, "mqtt credentials issued");
        Ok(credentials)
    }

    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        let mut attempt = 1;
        loop {
            match call().await {
                Err(error) if error.is_retryable() && attempt < ATTEMPTS => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, attempt, retry_in_ms = delay.as_millis() as u64, "lufthansa api call failed, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Sends a request and returns the body of a 2xx answer, or the error the
/// answer means.
async fn send(request: reqwest::RequestBuilder, url: &Url) -> Result<Vec<u8>, ApiError> {
    let shown = display_url(url);
    let response = request.send().await.map_err(|error| {
        crate::metrics::record_api_call(url.path(), None);
        ApiError::Transport { url: shown.clone(), message: transport_message(&error) }
    })?;
    let status = response.status().as_u16();
    crate::metrics::record_api_call(url.path(), Some(status));
    let body = response
        .bytes()
        .await
        .map_err(|error| ApiError::Transport { url: shown.clone(), message: transport_message(&error) })?;
    if (200..300).contains(&status) {
        return Ok(body.to_vec());
    }

    let detail = error_detail(&body);
    Err(if is_rate_limit(status, &detail) {
        crate::metrics::record_rate_limited(url.path());
        ApiError::RateLimited { url: shown, status, detail }
    } else if status == 401 || status == 403 {
        ApiError::NotAuthorized { url: shown, status, detail }
    } else {
        ApiError::Status { url: shown, status, detail }
    })
}

/// Describes a reqwest error without its URL, which the caller shows in
/// its own, cleaned form.
fn transport_message(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Lufthansa answers a rate limit with 429, or with 403 and a text such as
/// "Developer Over Rate" or "Account Over Queries Per Second Limit".
fn is_rate_limit(status: u16, detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    status == 429
        || (status == 403
            && (lower.contains("over rate") || lower.contains("over queries") || lower.contains("rate limit")))
}

/// Extracts the readable part of an error body: the gateway's `Error`, the
/// API's `ProcessingErrors`, OAuth's `error_description`, or else the start
/// of the text.
fn error_detail(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(text) = value.get("Error").and_then(Value::as_str) {
            return text.to_owned();
        }
        let processing = &value["ProcessingErrors"]["ProcessingError"];
        let first = if processing.is_array() { &processing[0] } else { processing };
        if let Some(description) = first.get("Description").and_then(Value::as_str) {
            let code = first.get("Code").and_then(Value::as_str).unwrap_or("");
            return format!("{code} {description}").trim().to_owned();
        }
        for key in ["error_description", "error", "message"] {
            if let Some(text) = value.get(key).and_then(Value::as_str) {
                return text.to_owned();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty body".to_owned();
    }
    text.chars().take(200).collect()
}

/// Whether two URLs have the same scheme, host and port.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// Shows a URL without user information or query string.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_reads_gateway_and_api_errors() {
        assert_eq!(error_detail(br#"{"Error": "Not Authorized"}"#), "Not Authorized");
        let api = br#"{"ProcessingErrors":{"ProcessingError":{"@RetryIndicator":"false","Type":"BR","Code":"404","Description":"Flight not found"}}}"#;
        assert_eq!(error_detail(api), "404 Flight not found");
        let list = br#"{"ProcessingErrors":{"ProcessingError":[{"Code":"1","Description":"first"},{"Description":"second"}]}}"#;
        assert_eq!(error_detail(list), "1 first");
        assert_eq!(error_detail(b""), "empty body");
        assert_eq!(error_detail(&[b'x'; 500]).len(), 200);
    }

    #[test]
    fn rate_limit_recognised_by_status_and_text() {
        assert!(is_rate_limit(429, ""));
        assert!(is_rate_limit(403, "Developer Over Rate"));
        assert!(is_rate_limit(403, "Account Over Queries Per Second Limit"));
        assert!(!is_rate_limit(403, "Not Authorized"));
    }

    #[test]
    fn display_url_hides_userinfo_and_query() {
        let url = Url::parse("https://user:pw@api.example.test/v1/x?key=abc").unwrap();
        assert_eq!(display_url(&url), "https://api.example.test/v1/x");
    }

    #[test]
    fn url_joins_base_path() {
        let api = LufthansaApi::new(
            Url::parse("http://127.0.0.1:9/base").unwrap(),
            "id".into(),
            Secret::new("topsecretvalue"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(api.url("/v1/oauth/token").as_str(), "http://127.0.0.1:9/base/v1/oauth/token");
        assert!(!format!("{api:?}").contains("topsecretvalue"));
    }
}
