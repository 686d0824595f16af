//! The webhook sink: each event POSTed as JSON to an HTTP endpoint, with an
//! optional HMAC-SHA256 signature.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use sha2::Sha256;
use url::Url;

use super::{DeliveryError, Retry};
use crate::backoff::Backoff;
use crate::config::Problems;
use crate::event::Event;
use crate::secret::Secret;

/// Header with the body's HMAC-SHA256 signature, when a signing key is set.
pub const SIGNATURE_HEADER: &str = "x-flupd-signature";
/// Header with the event id, on every request.
pub const EVENT_ID_HEADER: &str = "x-flupd-event-id";

/// Headers that flupd sets itself, so a configured value would conflict.
const RESERVED_HEADERS: [&str; 6] =
    ["content-type", "content-length", "host", "transfer-encoding", SIGNATURE_HEADER, EVENT_ID_HEADER];

/// Maximum number of characters of a response body quoted in an error.
const BODY_EXCERPT_CHARS: usize = 200;

/// Bytes of a response body read for the excerpt: enough for
/// [`BODY_EXCERPT_CHARS`] characters of up to 4 bytes each, plus one more.
const BODY_EXCERPT_BYTES: usize = 4 * BODY_EXCERPT_CHARS + 4;

/// Settings of a `type = "webhook"` sink.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// URL that each event is POSTed to, with `http` or `https` scheme.
    /// Required. Redirects are not followed: a 3xx response is a permanent
    /// failure. Logs and errors show it without user info and query string.
    #[serde(default)]
    pub url: String,
    /// Extra request headers, as a table of name to value, such as
    /// `{ Authorization = "Bearer ..." }`. Values are treated as secrets and
    /// never logged. `Content-Type`, `Content-Length`, `Host`,
    /// `Transfer-Encoding`, `X-Flupd-Signature` and `X-Flupd-Event-Id` are set
    /// by flupd and rejected here. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Maximum time for one request, from connecting to reading the response,
    /// as a duration such as `"10s"`. Default `"10s"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Delay before the first retry of a failed delivery, doubled on each
    /// further retry, as a duration. Default `"500ms"`.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Maximum delay between retries, as a duration. Also caps the delay that
    /// a receiver requests with `Retry-After`. Default `"60s"`.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Secret key for signing request bodies. When set, each request carries
    /// `X-Flupd-Signature: sha256=<hex>`, where `<hex>` is the lowercase hex
    /// HMAC-SHA256 of the exact body bytes under the UTF-8 bytes of this key.
    /// Receivers verify by computing the same over the raw body. Default:
    /// unset, no signature. Conflicts with `signing_key_file`.
    #[serde(default)]
    pub signing_key: Option<Secret>,
    /// File containing the signing key, read when the sink starts. Trailing
    /// line breaks are removed. Default: unset. Conflicts with `signing_key`.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}

fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}

impl fmt::Debug for WebhookConfig {
    /// Shows the URL without user info and query string, and header values
    /// and the signing key as `[redacted]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match Url::parse(&self.url) {
            Ok(url) => redact_url(&url),
            Err(_) => "[invalid URL]".to_owned(),
        };
        f.debug_struct("WebhookConfig")
            .field("url", &url)
            .field("headers", &self.headers)
            .field("timeout", &self.timeout)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("signing_key", &self.signing_key)
            .field("signing_key_file", &self.signing_key_file)
            .finish()
    }
}

/// Keys whose values may be secrets, so that no error message shows them.
pub const SECRET_KEYS: [&str; 2] = ["signing_key", "headers"];

impl WebhookConfig {
    /// Returns whether the table holds a secret written inline: the
    /// signing key, or header values, which often carry tokens.
    pub fn has_inline_secret(&self) -> bool {
        self.signing_key.is_some() || !self.headers.is_empty()
    }

    /// Checks the settings without network or file access.
    pub fn validate(&self, key: &str, problems: &mut Problems) {
        if let Err(message) = parse_url(&self.url) {
            problems.push(format!("{key}.url"), message);
        }

        for (name, value) in &self.headers {
            let header_key = format!("{key}.headers.{name}");
            match HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => problems.push(
                    header_key,
                    format!("invalid header name {name:?}: expected letters, digits and any of !#$%&'*+-.^_`|~"),
                ),
                Ok(header) if RESERVED_HEADERS.contains(&header.as_str()) => {
                    problems.push(header_key, format!("header {name:?} is set by flupd: remove it"))
                }
                Ok(_) => {}
            }
            // The value may be a credential, so the message does not quote it.
            if HeaderValue::from_str(value.expose()).is_err() {
                problems.push(
                    format!("{key}.headers.{name}"),
                    "invalid header value: expected visible ASCII characters, spaces and tabs, without line breaks",
                );
            }
        }

        if self.timeout.is_zero() {
            problems
                .push(format!("{key}.timeout"), "invalid value 0s: expected a duration above zero, such as \"10s\"");
        }
        if self.retry_initial.is_zero() {
            problems.push(
                format!("{key}.retry_initial"),
                "invalid value 0s: expected a duration above zero, such as \"500ms\"",
            );
        }
        if self.retry_max < self.retry_initial {
            problems.push(
                format!("{key}.retry_max"),
                format!(
                    "invalid value {}: expected at least retry_initial ({})",
                    humantime::format_duration(self.retry_max),
                    humantime::format_duration(self.retry_initial)
                ),
            );
        }

        match (&self.signing_key, &self.signing_key_file) {
            (Some(_), Some(_)) => problems.push(
                format!("{key}.signing_key_file"),
                "conflicts with signing_key: set only one of signing_key and signing_key_file",
            ),
            (Some(secret), None) if secret.is_empty() => {
                problems.push(format!("{key}.signing_key"), "empty: set a secret key or remove signing_key")
            }
            (None, Some(path)) if path.as_os_str().is_empty() => problems.push(
                format!("{key}.signing_key_file"),
                "empty: set the path of the key file or remove signing_key_file",
            ),
            _ => {}
        }
    }
}

/// Parses and checks the webhook URL. Returns the problem as a message.
fn parse_url(text: &str) -> Result<Url, String> {
    if text.is_empty() {
        return Err("missing: set it to the http or https URL that events are POSTed to".to_owned());
    }
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(error) => {
            return Err(format!("invalid URL {:?}: {error}; expected an http or https URL", redact_unparsed_url(text)));
        }
    };
    match url.scheme() {
        "http" | "https" => Ok(url),
        scheme => Err(format!(
            "invalid URL {:?}: scheme {scheme:?} is not supported; expected an http or https URL",
            redact_url(&url)
        )),
    }
}

/// Returns the URL without user info, query string and fragment, which may
/// contain credentials, for logs and errors.
/// Hides what may be secret in a URL that does not parse: user info before
/// an `@` in the authority, and everything from a `?` or `#` on.
fn redact_unparsed_url(text: &str) -> String {
    let (base, rest) = match text.find(['?', '#']) {
        Some(index) => (&text[..index], Some(&text[index..index + 1])),
        None => (text, None),
    };
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |index| authority_start + index);
    let mut shown = match base[authority_start..authority_end].rfind('@') {
        Some(at) => format!("{}[redacted]{}", &base[..authority_start], &base[authority_start + at..]),
        None => base.to_owned(),
    };
    if let Some(separator) = rest {
        shown.push_str(separator);
        shown.push_str("[redacted]");
    }
    shown
}

pub fn redact_url(url: &Url) -> String {
    let mut url = url.clone();
    // Both fail only for URLs without a host, which keep no user info.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// A webhook endpoint with its HTTP client.
pub struct WebhookSink {
    client: reqwest::Client,
    url: Url,
    /// `url` as shown in logs and errors.
    display_url: String,
    headers: HeaderMap,
    /// HMAC state keyed with the signing key, cloned for each request.
    signer: Option<Hmac<Sha256>>,
    timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
}

impl WebhookSink {
    /// Builds the HTTP client and reads the signing key file, if any.
    pub fn new(config: &WebhookConfig) -> Result<Self, DeliveryError> {
        let url =
            parse_url(&config.url).map_err(|message| DeliveryError::permanent(format!("webhook url: {message}")))?;
        let display_url = redact_url(&url);

        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                DeliveryError::permanent(format!("webhook {display_url}: invalid header name {name:?}"))
            })?;
            let mut header_value = HeaderValue::from_str(value.expose()).map_err(|_| {
                DeliveryError::permanent(format!("webhook {display_url}: invalid value for header {name:?}"))
            })?;
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }

        let key = match (&config.signing_key, &config.signing_key_file) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(path)) => Some(read_signing_key(path)?),
            (None, None) => None,
        };
        let signer = match key {
            Some(key) => Some(Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).map_err(|_| {
                DeliveryError::permanent(format!("webhook {display_url}: signing key rejected by HMAC"))
            })?),
            None => None,
        };

        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flupd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| {
                DeliveryError::permanent(format!(
                    "webhook {display_url}: build HTTP client: {}",
                    error_chain(&error.without_url())
                ))
            })?;

        Ok(Self {
            client,
            url,
            display_url,
            headers,
            signer,
            timeout: config.timeout,
            retry_initial: config.retry_initial,
            retry_max: config.retry_max,
        })
    }

    /// POSTs one event and classifies the outcome. A 2xx response is a
    /// success. Connection failures, timeouts, 408, 429 and 5xx are
    /// retryable, after the `Retry-After` delay when the response has one.
    /// Every other response is permanent.
    pub async fn deliver(&mut self, event: &Event) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(event)
            .map_err(|error| DeliveryError::permanent(format!("serialize event {} as JSON: {error}", event.id)))?;

        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event.id.as_str());
        if let Some(signer) = &self.signer {
            request = request.header(SIGNATURE_HEADER, sign(signer, &body));
        }

        let mut response = match request.body(body).send().await {
            Ok(response) => response,
            Err(error) => return Err(self.send_error(error)),
        };

        let status = response.status();
        if status.is_success() {
            // Reading the body lets the client reuse the connection. Its
            // content does not matter, and neither does a failure to read it.
            let _ = response.bytes().await;
            tracing::debug!(url = %self.display_url, event = %event.id, status = status.as_u16(), "webhook accepted event");
            return Ok(());
        }

        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, Utc::now()))
            .map(|delay| delay.min(self.retry_max));
        let excerpt = read_excerpt(&mut response).await;
        let message = if excerpt.is_empty() {
            format!("POST {}: HTTP {status}", self.display_url)
        } else {
            format!("POST {}: HTTP {status}: {excerpt}", self.display_url)
        };

        let retryable = status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error();
        if retryable {
            Err(DeliveryError { retry: Retry::After(retry_after), message })
        } else {
            Err(DeliveryError::permanent(message))
        }
    }

    /// Returns the backoff between attempts to deliver one event, starting
    /// at `retry_initial` and doubling up to `retry_max`.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff::new(self.retry_initial, self.retry_max)
    }

    /// Returns the URL as shown in logs and errors, without user info and
    /// query string.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    fn send_error(&self, error: reqwest::Error) -> DeliveryError {
        let url = &self.display_url;
        if error.is_timeout() {
            let timeout = humantime::format_duration(self.timeout);
            return DeliveryError::retryable(format!("POST {url}: timed out after {timeout}"));
        }
        let failure = if error.is_connect() { "connection failed" } else { "request failed" };
        DeliveryError::retryable(format!("POST {url}: {failure}: {}", error_chain(&error.without_url())))
    }
}

/// Returns `sha256=<hex>`, the value of [`SIGNATURE_HEADER`] for `body`.
fn sign(signer: &Hmac<Sha256>, body: &[u8]) -> String {
    let mut mac = signer.clone();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn read_signing_key(path: &PathBuf) -> Result<Secret, DeliveryError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        DeliveryError::permanent(format!(
            "read signing key file {}: {}",
            path.display(),
            super::file::describe_io_error(&error)
        ))
    })?;
    let key = text.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        return Err(DeliveryError::permanent(format!(
            "read signing key file {}: file is empty: write the key into it",
            path.display()
        )));
    }
    Ok(Secret::new(key))
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date in any of
/// its three forms (IMF-fixdate, RFC 850 and asctime). A date in the past
/// gives zero.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }

    let date = DateTime::parse_from_rfc2822(value)
        .map(|date| date.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(value, "%A, %d-%b-%y %H:%M:%S GMT").ok().map(|date| date.and_utc()))
        .or_else(|| NaiveDateTime::parse_from_str(value, "%a %b %e %H:%M:%S %Y").ok().map(|date| date.and_utc()))?;
    Some((date - now).to_std().unwrap_or(Duration::ZERO))
}

/// Reads the start of the response body as one line of at most
/// [`BODY_EXCERPT_CHARS`] characters, with runs of whitespace collapsed.
/// A body that cannot be read gives what was read until then.
async fn read_excerpt(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < BODY_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(BODY_EXCERPT_BYTES);

    let text = String::from_utf8_lossy(&bytes);
    let words: Vec<&str> = text.split_whitespace().collect();
    let line = words.join(" ");
    if line.chars().count() > BODY_EXCERPT_CHARS {
        let mut excerpt: String = line.chars().take(BODY_EXCERPT_CHARS).collect();
        excerpt.push('…');
        excerpt
    } else {
        line
    }
}

/// Formats an error with its sources, skipping a source whose text repeats
/// the previous one.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != previous && !previous.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        previous = cause_text;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn config(value: serde_json::Value) -> WebhookConfig {
        serde_json::from_value(value).unwrap()
    }

    fn problems_for(value: serde_json::Value) -> Vec<String> {
        let mut problems = Problems::default();
        config(value).validate("sinks[1]", &mut problems);
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn webhook_config_defaults() {
        let config = config(json!({"url": "https://example.invalid/hook"}));
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.retry_initial, Duration::from_millis(500));
        assert_eq!(config.retry_max, Duration::from_secs(60));
        assert!(config.headers.is_empty());
        assert!(config.signing_key.is_none());
        assert!(config.signing_key_file.is_none());
    }

    #[test]
    fn webhook_config_valid_has_no_problems() {
        let problems = problems_for(json!({
            "url": "https://hooks.example.invalid/flupd",
            "headers": {"Authorization": "Bearer abc"},
            "timeout": "5s",
            "signing_key": "k",
        }));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn webhook_config_reports_missing_url() {
        let problems = problems_for(json!({}));
        assert_eq!(problems, ["sinks[1].url: missing: set it to the http or https URL that events are POSTed to"]);
    }

    #[test]
    fn webhook_config_reports_unparsable_url() {
        let problems = problems_for(json!({"url": "htp//x"}));
        assert_eq!(
            problems,
            ["sinks[1].url: invalid URL \"htp//x\": relative URL without a base; expected an http or https URL"]
        );
    }

    #[test]
    fn webhook_config_reports_unparsable_url_redacted() {
        let problems = problems_for(json!({"url": "http://user:url-password@ bad host/x?token=query-secret"}));
        assert_eq!(
            problems,
            ["sinks[1].url: invalid URL \"http://[redacted]@ bad host/x?[redacted]\": invalid international domain \
                 name; expected an http or https URL"]
        );
    }

    #[test]
    fn webhook_config_reports_other_scheme_redacted() {
        let problems = problems_for(json!({"url": "ftp://user:pw@host.invalid/x?token=t"}));
        assert_eq!(
            problems,
            ["sinks[1].url: invalid URL \"ftp://host.invalid/x\": scheme \"ftp\" is not supported; \
                 expected an http or https URL"]
        );
    }

    #[test]
    fn webhook_config_reports_bad_headers() {
        let problems = problems_for(json!({
            "url": "https://example.invalid/",
            "headers": {"Bad Name": "x", "X-Ok": "hunter2\nvalue", "Content-Type": "text/plain"},
        }));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("sinks[1].headers.Bad Name: invalid header name \"Bad Name\""), "{problems:?}");
        assert!(problems[1].starts_with("sinks[1].headers.Content-Type: header \"Content-Type\" is set by flupd"));
        assert!(problems[2].starts_with("sinks[1].headers.X-Ok: invalid header value"), "{problems:?}");
        assert!(!problems[2].contains("hunter2"), "{problems:?}");
    }

    #[test]
    fn webhook_config_reports_bad_durations() {
        let problems = problems_for(json!({
            "url": "https://example.invalid/",
            "timeout": "0s",
            "retry_initial": "10s",
            "retry_max": "1s",
        }));
        assert_eq!(
            problems,
            [
                "sinks[1].timeout: invalid value 0s: expected a duration above zero, such as \"10s\"",
                "sinks[1].retry_max: invalid value 1s: expected at least retry_initial (10s)",
            ]
        );
    }

    #[test]
    fn webhook_config_reports_zero_retry_initial() {
        let problems = problems_for(json!({"url": "https://example.invalid/", "retry_initial": "0s"}));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("sinks[1].retry_initial: invalid value 0s"), "{problems:?}");
    }

    #[test]
    fn webhook_config_reports_both_signing_keys() {
        let problems = problems_for(json!({
            "url": "https://example.invalid/",
            "signing_key": "k",
            "signing_key_file": "/etc/flupd/key",
        }));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("sinks[1].signing_key_file: conflicts with signing_key"), "{problems:?}");
    }

    #[test]
    fn webhook_config_reports_empty_signing_key() {
        let problems = problems_for(json!({"url": "https://example.invalid/", "signing_key": ""}));
        assert_eq!(problems, ["sinks[1].signing_key: empty: set a secret key or remove signing_key"]);
    }

    #[test]
    fn webhook_config_debug_hides_secrets() {
        let config = config(json!({
            "url": "https://user:url-password@example.invalid/hook?token=query-secret",
            "headers": {"Authorization": "Bearer header-secret"},
            "signing_key": "signing-secret",
        }));
        let debug = format!("{config:?}");
        for secret in ["url-password", "query-secret", "header-secret", "signing-secret", "user"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("https://example.invalid/hook"), "{debug}");
    }

    #[test]
    fn redact_url_drops_userinfo_query_and_fragment() {
        let url = Url::parse("https://user:pw@example.invalid:8443/a/b?token=t#frag").unwrap();
        assert_eq!(redact_url(&url), "https://example.invalid:8443/a/b");
    }

    #[test]
    fn retry_after_parses_seconds() {
        let now = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_parses_http_dates() {
        let now = Utc.with_ymd_and_hms(1994, 11, 6, 8, 49, 0).unwrap();
        let expected = Some(Duration::from_secs(37));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), expected);
        assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now), expected);
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), expected);
    }

    #[test]
    fn retry_after_past_date_is_zero() {
        let now = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap();
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_rejects_garbage() {
        let now = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap();
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn sign_matches_known_vector() {
        // RFC 4231, test case 2.
        let signer = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        assert_eq!(
            sign(&signer, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn webhook_new_reads_signing_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "Jefe\n").unwrap();
        let config = config(json!({"url": "http://127.0.0.1:1/", "signing_key_file": path}));

        let sink = WebhookSink::new(&config).unwrap();

        let signer = sink.signer.as_ref().unwrap();
        assert_eq!(
            sign(signer, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn webhook_new_reports_missing_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let config = config(json!({"url": "http://127.0.0.1:1/", "signing_key_file": path}));

        let error = WebhookSink::new(&config).err().unwrap();

        assert_eq!(error.retry, Retry::Never);
        assert_eq!(error.message, format!("read signing key file {}: no such file or directory", path.display()));
    }

    #[test]
    fn webhook_new_rejects_empty_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "\n").unwrap();
        let config = config(json!({"url": "http://127.0.0.1:1/", "signing_key_file": path}));

        let error = WebhookSink::new(&config).err().unwrap();

        assert_eq!(error.retry, Retry::Never);
        assert!(error.message.contains("file is empty"), "{}", error.message);
    }
}
