//! Integration tests of the webhook sink against a real HTTP server on
//! 127.0.0.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use flupd::event::Event;
use flupd::sink::Retry;
use flupd::sink::webhook::{WebhookConfig, WebhookSink};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// One request as the server received it.
struct Recorded {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct ServerState {
    requests: Mutex<Vec<Recorded>>,
    flaky_calls: AtomicUsize,
}

struct Server {
    base: String,
    state: Arc<ServerState>,
}

impl Server {
    fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }
}

/// Starts a server on a free port of 127.0.0.1 that responds according to
/// the request path.
async fn start_server() -> Server {
    let state = Arc::new(ServerState::default());
    let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { base: format!("http://{address}"), state }
}

async fn handle(State(state): State<Arc<ServerState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    state.requests.lock().unwrap().push(Recorded {
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        headers,
        body,
    });

    match path.as_str() {
        "/ok" => StatusCode::NO_CONTENT.into_response(),
        "/flaky" => {
            if state.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
        "/busy" => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "7")], "slow down").into_response(),
        "/busy-long" => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "3600")]).into_response(),
        "/busy-date" => {
            let date = (Utc::now() + chrono::Duration::seconds(20)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", date)]).into_response()
        }
        "/request-timeout" => StatusCode::REQUEST_TIMEOUT.into_response(),
        "/bad" => {
            let body = format!("missing field\n  flight {}", "x".repeat(300));
            (StatusCode::BAD_REQUEST, body).into_response()
        }
        "/redirect" => (StatusCode::FOUND, [("location", "/ok")]).into_response(),
        "/hang" => std::future::pending().await,
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn config(value: serde_json::Value) -> WebhookConfig {
    serde_json::from_value(value).unwrap()
}

fn event() -> Event {
    let received_at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 15, 0).unwrap();
    let payload = r#"{"Update":{"Code":"MVT ED","Message":"New Estimated Departure"}}"#;
    Event::from_message("prd/FlightUpdate/LH/LH400/2024-05-01", payload.as_bytes(), 1, received_at)
}

fn sink(server: &Server, path: &str) -> WebhookSink {
    WebhookSink::new(&config(json!({ "url": format!("{}{path}", server.base) }))).unwrap()
}

#[tokio::test]
async fn webhook_posts_event_as_json() {
    let server = start_server().await;
    let mut sink = WebhookSink::new(&config(json!({
        "url": format!("{}/ok", server.base),
        "headers": {"Authorization": "Bearer t0ken"},
    })))
    .unwrap();

    sink.deliver(&event()).await.unwrap();

    let requests = server.state.requests.lock().unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/ok");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["authorization"], "Bearer t0ken");
    assert_eq!(request.headers["x-flupd-event-id"], event().id.as_str());
    assert!(request.headers.get("x-flupd-signature").is_none());
    assert_eq!(serde_json::from_slice::<Event>(&request.body).unwrap(), event());
}

#[tokio::test]
async fn webhook_retries_on_503() {
    let server = start_server().await;
    let mut sink = sink(&server, "/flaky");

    let error = sink.deliver(&event()).await.unwrap_err();
    assert_eq!(error.retry, Retry::After(None));
    assert_eq!(error.message, format!("POST {}/flaky: HTTP 503 Service Unavailable: try later", server.base));

    sink.deliver(&event()).await.unwrap();
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn webhook_429_honours_retry_after_seconds() {
    let server = start_server().await;
    let mut sink = sink(&server, "/busy");

    let error = sink.deliver(&event()).await.unwrap_err();

    assert_eq!(error.retry, Retry::After(Some(Duration::from_secs(7))));
    assert!(error.message.contains("HTTP 429 Too Many Requests"), "{}", error.message);
}

#[tokio::test]
async fn webhook_retry_after_capped_at_retry_max() {
    let server = start_server().await;
    let url = format!("{}/busy-long", server.base);
    let mut sink = WebhookSink::new(&config(json!({ "url": url, "retry_max": "30s" }))).unwrap();

    let error = sink.deliver(&event()).await.unwrap_err();

    assert_eq!(error.retry, Retry::After(Some(Duration::from_secs(30))));
}

#[tokio::test]
async fn webhook_retry_after_http_date() {
    let server = start_server().await;
    let mut sink = sink(&server, "/busy-date");

    let error = sink.deliver(&event()).await.unwrap_err();

    let Retry::After(Some(delay)) = error.retry else {
        panic!("expected a Retry-After delay, got {:?}", error.retry);
    };
    // The date has whole seconds and the request takes some time.
    assert!(delay <= Duration::from_secs(20), "delay {delay:?}");
    assert!(delay >= Duration::from_secs(15), "delay {delay:?}");
}

#[tokio::test]
async fn webhook_408_is_retryable() {
    let server = start_server().await;
    let mut sink = sink(&server, "/request-timeout");

    let error = sink.deliver(&event()).await.unwrap_err();

    assert_eq!(error.retry, Retry::After(None));
    assert_eq!(error.message, format!("POST {}/request-timeout: HTTP 408 Request Timeout", server.base));
}

#[tokio::test]
async fn webhook_400_is_permanent_with_body_excerpt() {
    let server = start_server().await;
    let mut sink = sink(&server, "/bad");

    let error = sink.deliver(&event()).await.unwrap_err();

    assert_eq!(error.retry, Retry::Never);
    let prefix = format!("POST {}/bad: HTTP 400 Bad Request: ", server.base);
    let excerpt = error.message.strip_prefix(&prefix).unwrap_or_else(|| panic!("{}", error.message));
    assert!(excerpt.starts_with("missing field flight xxx"), "{excerpt}");
    assert_eq!(excerpt.chars().count(), 201, "{excerpt}");
    assert!(excerpt.ends_with('…'), "{excerpt}");
}

#[tokio::test]
async fn webhook_redirect_is_permanent_and_not_followed() {
    let server = start_server().await;
    let mut sink = sink(&server, "/redirect");

    let error = sink.deliver(&event()).await.unwrap_err();

    assert_eq!(error.retry, Retry::Never);
    assert!(error.message.contains("HTTP 302 Found"), "{}", error.message);
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn webhook_timeout_is_retryable() {
    let server = start_server().await;
    let url = format!("{}/hang", server.base);
    let mut sink = WebhookSink::new(&config(json!({ "url": url, "timeout": "300ms" }))).unwrap();

    let started = Instant::now();
    let error = sink.deliver(&event()).await.unwrap_err();

    assert_eq!(error.retry, Retry::After(None));
    assert_eq!(error.message, format!("POST {}/hang: timed out after 300ms", server.base));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn webhook_connection_refused_is_retryable() {
    // A port that was free a moment ago and has no listener now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let mut sink = WebhookSink::new(&config(json!({ "url": format!("http://{address}/") }))).unwrap();

    let error = sink.deliver(&event()).await.unwrap_err();

    assert_eq!(error.retry, Retry::After(None));
    assert!(error.message.starts_with(&format!("POST http://{address}/: connection failed: ")), "{}", error.message);
}

#[tokio::test]
async fn webhook_signature_verifies() {
    let server = start_server().await;
    let key = "s3cret-signing-key";
    let url = format!("{}/ok", server.base);
    let mut sink = WebhookSink::new(&config(json!({ "url": url, "signing_key": key }))).unwrap();

    sink.deliver(&event()).await.unwrap();

    let requests = server.state.requests.lock().unwrap();
    let request = &requests[0];
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(&request.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(request.headers["x-flupd-signature"], expected.as_str());
    assert_eq!(request.headers["x-flupd-event-id"], event().id.as_str());
}

#[tokio::test]
async fn webhook_error_hides_url_credentials() {
    let server = start_server().await;
    let address = server.base.trim_start_matches("http://");
    let url = format!("http://alice:url-password@{address}/bad?token=query-secret");
    let mut sink = WebhookSink::new(&config(json!({ "url": url }))).unwrap();

    let error = sink.deliver(&event()).await.unwrap_err();

    assert!(error.message.starts_with(&format!("POST http://{address}/bad: ")), "{}", error.message);
    for secret in ["alice", "url-password", "query-secret"] {
        assert!(!error.message.contains(secret), "{secret} in {}", error.message);
    }
    assert_eq!(sink.display_url(), format!("http://{address}/bad"));
    // The receiver still gets the query string.
    assert_eq!(server.state.requests.lock().unwrap()[0].query.as_deref(), Some("token=query-secret"));
}
