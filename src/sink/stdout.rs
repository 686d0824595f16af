//! The stdout sink: one line per event, as readable text or as JSON.

use std::io;

use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::DeliveryError;
use crate::config::Problems;
use crate::event::{Change, Event, FlightStatus};

/// Settings of a `type = "stdout"` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Line format: `"text"` for people reading a terminal or log, `"json"`
    /// for one JSON event object per line. Default `"text"`.
    #[serde(default)]
    pub format: StdoutFormat,
}

/// The line format of the stdout sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    /// Aligned columns: receive time, flight, date, kind, message, then the
    /// other known fields as `key=value`.
    #[default]
    Text,
    /// The event's JSON form, one object per line.
    Json,
}

impl StdoutConfig {
    /// Checks the settings. Every value that deserializes is valid, so this
    /// reports nothing. It exists so that all sink types validate alike.
    pub fn validate(&self, _key: &str, _problems: &mut Problems) {}
}

/// A stdout sink, or a sink writing the same lines to another writer.
pub struct StdoutSink {
    format: StdoutFormat,
    writer: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Name of the writer in error messages: `stdout`, or `output` for a
    /// writer given to [`StdoutSink::with_writer`].
    target: &'static str,
}

impl StdoutSink {
    /// Builds a sink that writes to the process's standard output.
    pub fn new(config: &StdoutConfig) -> Self {
        let mut sink = Self::with_writer(config, Box::new(tokio::io::stdout()));
        sink.target = "stdout";
        sink
    }

    /// Builds a sink that writes its lines to `writer`, buffered. Used by
    /// tests and by callers that capture the output.
    pub fn with_writer(config: &StdoutConfig, writer: Box<dyn AsyncWrite + Send + Unpin>) -> Self {
        Self { format: config.format, writer: BufWriter::new(writer), target: "output" }
    }

    /// Writes one event line into the buffer. The line reaches the writer
    /// when the buffer fills or on [`StdoutSink::flush`].
    pub async fn deliver(&mut self, event: &Event) -> Result<(), DeliveryError> {
        let line = match self.format {
            StdoutFormat::Text => format_text(event).into_bytes(),
            StdoutFormat::Json => format_json(event)?,
        };
        let result = self.writer.write_all(&line).await;
        result.map_err(|error| self.write_error(&error))
    }

    /// Writes out the buffered lines.
    pub async fn flush(&mut self) -> Result<(), DeliveryError> {
        let result = self.writer.flush().await;
        result.map_err(|error| self.write_error(&error))
    }

    fn write_error(&self, error: &io::Error) -> DeliveryError {
        let target = self.target;
        if error.kind() == io::ErrorKind::BrokenPipe {
            // Nothing reads the output any more, and nothing will again.
            DeliveryError::permanent(format!("write to {target}: broken pipe: the reading process has exited"))
        } else {
            DeliveryError::retryable(format!("write to {target}: {}", super::file::describe_io_error(error)))
        }
    }
}

fn format_json(event: &Event) -> Result<Vec<u8>, DeliveryError> {
    let mut line = serde_json::to_vec(event)
        .map_err(|error| DeliveryError::permanent(format!("serialize event {} as JSON: {error}", event.id)))?;
    line.push(b'\n');
    Ok(line)
}

/// Width of the kind column: the longest kind, `estimated_departure`.
const KIND_WIDTH: usize = 19;

/// Formats one event as a text line ending in a newline, such as
///
/// ```text
/// 2024-05-01T10:15:00Z  LH400    2024-05-01  gate_change  "New Gate Information"  gate B20 → B44  code="Y" time=2024-05-01T12:30:00 FRA→JFK terminal=1 gate=B44
/// ```
///
/// After the message come the changes since the previous status, then the
/// other fields, then route, terminal and gate from the status when known.
///
/// Unknown values are `-`. Text from the payload is quoted with control
/// characters escaped, so that every event stays on one line.
pub fn format_text(event: &Event) -> String {
    let received = event.received_at.format("%Y-%m-%dT%H:%M:%SZ");
    let flight = event.flight.as_deref().unwrap_or("-");
    let date = event.flight_date.map(|date| date.to_string()).unwrap_or_else(|| "-".to_owned());
    let kind = event.kind.as_str();
    let message = event.message.as_deref().map(quote).unwrap_or_else(|| "-".to_owned());

    let mut line = format!("{received}  {flight:<8} {date:<10}  {kind:<KIND_WIDTH$}  {message}");
    let changes: Vec<String> =
        event.changes.iter().map(|change| describe_change(change, event.status.as_ref())).collect();
    if !changes.is_empty() {
        line.push_str("  ");
        line.push_str(&changes.join("; "));
    }

    let mut extras = Vec::new();
    if let Some(code) = &event.code {
        extras.push(format!("code={}", quote(code)));
    }
    match (&event.update_time, &event.timestamp) {
        (Some(time), _) => extras.push(format!("time={time}")),
        (None, Some(raw)) => extras.push(format!("time={}", quote(raw))),
        (None, None) => {}
    }
    if event.flight.is_none() {
        extras.push(format!("topic={}", quote(&event.topic)));
    }
    if let Some(error) = event.payload_error {
        extras.push(format!("[payload: {}]", error.as_str()));
    }
    if let Some(status) = &event.status {
        extras.push(format!("{}→{}", status.departure.airport, status.arrival.airport));
        if let Some(terminal) = &status.departure.terminal {
            extras.push(format!("terminal={}", quote_if_needed(terminal)));
        }
        if let Some(gate) = &status.departure.gate {
            extras.push(format!("gate={}", quote_if_needed(gate)));
        }
    }
    if let Some(error) = &event.enrichment_error {
        extras.push(format!("[status: {}]", error.reason));
    }
    if !extras.is_empty() {
        line.push_str("  ");
        line.push_str(&extras.join(" "));
    }
    line.push('\n');
    line
}

/// Describes one change for people: `gate B20 → B44`, `ETD 14:05 (+25 min)`.
/// Estimated times show the new time and its difference to the scheduled
/// one; other fields show both values.
fn describe_change(change: &Change, status: Option<&FlightStatus>) -> String {
    let shown = |value: &Option<String>| value.as_deref().map(quote_if_needed).unwrap_or_else(|| "-".to_owned());
    let (label, endpoint) = match change.field.as_str() {
        "departure.gate" => ("gate", None),
        "departure.terminal" => ("terminal", None),
        "arrival.gate" => ("arrival gate", None),
        "arrival.terminal" => ("arrival terminal", None),
        "departure.estimated_local" => ("ETD", status.map(|status| &status.departure)),
        "arrival.estimated_local" => ("ETA", status.map(|status| &status.arrival)),
        other => (other, None),
    };
    if let Some(endpoint) = endpoint {
        if let Some(estimated) = endpoint.estimated_local {
            let mut text = format!("{label} {}", estimated.format("%H:%M"));
            if let Some(scheduled) = endpoint.scheduled_local {
                let minutes = (estimated - scheduled).num_minutes();
                text.push_str(&format!(" ({minutes:+} min)"));
            }
            return text;
        }
    }
    format!("{label} {} → {}", shown(&change.old), shown(&change.new))
}

/// Quotes a value from the API only when it contains spaces, quotes or
/// control characters, so that gates and codes stay readable.
fn quote_if_needed(text: &str) -> String {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\') {
        text.to_owned()
    } else {
        quote(text)
    }
}

/// Quotes text from the payload, escaping quotes, backslashes and control
/// characters but keeping other Unicode as it is.
fn quote(text: &str) -> String {
    format!("{text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn event(topic: &str, payload: &str) -> Event {
        let received_at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 15, 0).unwrap();
        Event::from_message(topic, payload.as_bytes(), 1, received_at)
    }

    #[test]
    fn stdout_config_defaults_to_text() {
        let config: StdoutConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(config.format, StdoutFormat::Text);
    }

    #[test]
    fn stdout_config_rejects_unknown_format() {
        let error = serde_json::from_value::<StdoutConfig>(serde_json::json!({"format": "xml"})).unwrap_err();
        assert!(error.to_string().contains("xml"), "{error}");
    }

    #[test]
    fn stdout_config_rejects_unknown_key() {
        let error = serde_json::from_value::<StdoutConfig>(serde_json::json!({"colour": true})).unwrap_err();
        assert!(error.to_string().contains("colour"), "{error}");
    }

    #[test]
    fn stdout_text_escapes_newlines_in_message() {
        let payload = r#"{"Update":{"Message":"Gate\nChange","Code":"Y"}}"#;
        let line = format_text(&event("prd/FlightUpdate/LH/LH400/2024-05-01", payload));
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(line.contains(r#""Gate\nChange""#), "{line:?}");
    }

    #[test]
    fn stdout_text_shows_changes_and_status() {
        use crate::event::{EnrichmentError, EnrichmentReason};
        let mut event =
            event("prd/FlightUpdate/LH/LH400/2024-05-01", r#"{"Update":{"Message":"New Gate Information"}}"#);
        let mut status = FlightStatus::default();
        status.departure.airport = "FRA".into();
        status.arrival.airport = "JFK".into();
        status.departure.terminal = Some("1".into());
        status.departure.gate = Some("B44".into());
        let time = |text: &str| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").ok();
        status.departure.scheduled_local = time("2024-05-01T13:40");
        status.departure.estimated_local = time("2024-05-01T14:05");
        event.status = Some(status);
        event.changes = vec![
            Change { field: "departure.gate".into(), old: Some("B20".into()), new: Some("B44".into()) },
            Change {
                field: "departure.estimated_local".into(),
                old: Some("2024-05-01T13:50".into()),
                new: Some("2024-05-01T14:05".into()),
            },
            Change { field: "aircraft_registration".into(), old: None, new: Some("D ABYA".into()) },
        ];
        let line = format_text(&event);
        assert!(
            line.contains(
                r#""New Gate Information"  gate B20 → B44; ETD 14:05 (+25 min); aircraft_registration - → "D ABYA""#
            ),
            "{line:?}"
        );
        assert!(line.contains("FRA→JFK terminal=1 gate=B44"), "{line:?}");

        event.status = None;
        event.changes.clear();
        event.enrichment_error =
            Some(EnrichmentError { reason: EnrichmentReason::NotFound, detail: "HTTP 404".into() });
        let line = format_text(&event);
        assert!(line.contains("[status: not_found]"), "{line:?}");
    }

    #[test]
    fn stdout_text_shows_raw_timestamp_when_unparsed() {
        let payload = r#"{"Update":{"Message":"Departed","Timestamp":"soon"}}"#;
        let line = format_text(&event("prd/FlightUpdate/LH/LH400/2024-05-01", payload));
        assert!(line.contains(r#"time="soon""#), "{line:?}");
    }
}
