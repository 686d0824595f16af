//! Integration tests of the stdout sink, writing through real async writers.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{TimeZone, Utc};
use flupd::event::Event;
use flupd::sink::Retry;
use flupd::sink::stdout::{StdoutConfig, StdoutSink};
use tokio::io::AsyncWrite;

/// A writer whose bytes the test can read while the sink owns the writer.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl AsyncWrite for SharedBuffer {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn config(format: &str) -> StdoutConfig {
    serde_json::from_value(serde_json::json!({ "format": format })).unwrap()
}

fn event(topic: &str, payload: &str) -> Event {
    let received_at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 15, 42).unwrap();
    Event::from_message(topic, payload.as_bytes(), 1, received_at)
}

const DEPARTURE: &str =
    r#"{"Update":{"Code":"MVT ED","Message":"New Estimated Departure","Timestamp":"2024-05-01T12:30:00"}}"#;

#[tokio::test]
async fn stdout_text_line_shows_known_fields() {
    let buffer = SharedBuffer::default();
    let mut sink = StdoutSink::with_writer(&config("text"), Box::new(buffer.clone()));

    sink.deliver(&event("prd/FlightUpdate/LH/LH400/2024-05-01", DEPARTURE)).await.unwrap();
    sink.flush().await.unwrap();

    assert_eq!(
        buffer.text(),
        "2024-05-01T10:15:42Z  LH400    2024-05-01  estimated_departure  \"New Estimated Departure\"  \
         code=\"MVT ED\" time=2024-05-01T12:30:00\n"
    );
}

#[tokio::test]
async fn stdout_text_flags_payload_error_and_topic() {
    let buffer = SharedBuffer::default();
    let mut sink = StdoutSink::with_writer(&config("text"), Box::new(buffer.clone()));

    sink.deliver(&event("prd/Other/thing", "not json")).await.unwrap();
    sink.flush().await.unwrap();

    assert_eq!(
        buffer.text(),
        "2024-05-01T10:15:42Z  -        -           other                -  \
         topic=\"prd/Other/thing\" [payload: not_json]\n"
    );
}

#[tokio::test]
async fn stdout_text_columns_align() {
    let buffer = SharedBuffer::default();
    let mut sink = StdoutSink::with_writer(&config("text"), Box::new(buffer.clone()));

    sink.deliver(&event("prd/FlightUpdate/LH/LH4/2024-05-01", DEPARTURE)).await.unwrap();
    sink.deliver(&event("prd/FlightUpdate/LH/LH1234/2024-05-01", r#"{"Update":{"Code":"Y"}}"#)).await.unwrap();
    sink.flush().await.unwrap();

    let text = buffer.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].find("2024-05-01 "), lines[1].find("2024-05-01 "), "{text}");
    assert_eq!(lines[0].find("estimated_departure"), lines[1].find("gate_change"), "{text}");
}

#[tokio::test]
async fn stdout_json_line_is_the_event() {
    let buffer = SharedBuffer::default();
    let mut sink = StdoutSink::with_writer(&config("json"), Box::new(buffer.clone()));
    let first = event("prd/FlightUpdate/LH/LH400/2024-05-01", DEPARTURE);
    let second = event("prd/Other/thing", "not json");

    sink.deliver(&first).await.unwrap();
    sink.deliver(&second).await.unwrap();
    sink.flush().await.unwrap();

    let text = buffer.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(serde_json::from_str::<Event>(lines[0]).unwrap(), first);
    assert_eq!(serde_json::from_str::<Event>(lines[1]).unwrap(), second);
}

#[tokio::test]
async fn stdout_buffers_until_flush() {
    let buffer = SharedBuffer::default();
    let mut sink = StdoutSink::with_writer(&config("json"), Box::new(buffer.clone()));

    sink.deliver(&event("prd/FlightUpdate/LH/LH400/2024-05-01", DEPARTURE)).await.unwrap();
    assert_eq!(buffer.text(), "");

    sink.flush().await.unwrap();
    assert_eq!(buffer.text().lines().count(), 1);
}

#[tokio::test]
async fn stdout_broken_pipe_is_permanent() {
    let (writer, reader) = tokio::io::duplex(1024);
    drop(reader);
    let mut sink = StdoutSink::with_writer(&config("text"), Box::new(writer));

    sink.deliver(&event("prd/FlightUpdate/LH/LH400/2024-05-01", DEPARTURE)).await.unwrap();
    let error = sink.flush().await.unwrap_err();

    assert_eq!(error.retry, Retry::Never);
    assert!(error.message.contains("broken pipe"), "{}", error.message);
}
