//! Checks that the webhook signing key appears in no log line, error or
//! Debug output. This is its own test binary because tracing caches per
//! call site whether anyone listens, and concurrent tests on other threads
//! without a subscriber can make that cache drop this test's log lines.

use std::io;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use flupd::event::Event;
use flupd::sink::webhook::{WebhookConfig, WebhookSink};
use serde_json::json;

/// Log output captured in memory.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn handle(uri: Uri) -> Response {
    match uri.path() {
        "/ok" => StatusCode::NO_CONTENT.into_response(),
        _ => (StatusCode::BAD_REQUEST, "rejected").into_response(),
    }
}

fn event() -> Event {
    let received_at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 15, 0).unwrap();
    let payload = r#"{"Update":{"Code":"MVT ED","Message":"New Estimated Departure"}}"#;
    Event::from_message("prd/FlightUpdate/LH/LH400/2024-05-01", payload.as_bytes(), 1, received_at)
}

#[tokio::test]
async fn webhook_signing_key_never_shown() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).finish();
    // The test runtime has one thread, so this subscriber receives every
    // log line of the sink, the HTTP client and the server.
    let _guard = tracing::subscriber::set_default(subscriber);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(handle)).await.unwrap() });

    let key = "s3cret-signing-key";
    let config: WebhookConfig =
        serde_json::from_value(json!({ "url": format!("http://{address}/ok"), "signing_key": key })).unwrap();
    let mut sink = WebhookSink::new(&config).unwrap();
    sink.deliver(&event()).await.unwrap();

    let mut bad_config = config.clone();
    bad_config.url = format!("http://{address}/bad");
    let mut bad_sink = WebhookSink::new(&bad_config).unwrap();
    let error = bad_sink.deliver(&event()).await.unwrap_err();

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("webhook accepted event"), "log capture failed: {logs}");
    assert!(!logs.contains(key), "{logs}");
    assert!(error.message.contains("HTTP 400"), "{}", error.message);
    assert!(!error.message.contains(key), "{}", error.message);
    assert!(!format!("{error:?}").contains(key));
    assert!(!format!("{config:?}").contains(key));
}
