//! The flight update event built from each MQTT message.
//!
//! Lufthansa's payloads differ from its documentation: fields are missing,
//! `Meta.Link` is an object or an array, timestamps come in several forms and
//! message texts vary. The parser therefore treats every field as optional,
//! keeps fields it does not know, and takes carrier, flight and date from the
//! topic, which is the authority for them.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::topic::FlightTopic;

mod status;

pub use status::{CarrierFlight, Change, EnrichmentError, EnrichmentReason, FlightStatus, StatusCode, StatusEndpoint};

/// One flight update notification, as delivered to every sink.
///
/// The JSON form of this type is a public interface, documented in
/// `docs/events.md`: fields are added, never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable id: the same topic and payload always give the same id.
    pub id: String,
    /// When flupd received the message.
    pub received_at: DateTime<Utc>,
    /// The MQTT topic the message arrived on.
    pub topic: String,
    /// The QoS the message was delivered with (0 or 1).
    pub qos: u8,
    /// Operating carrier from the topic, such as `LH`.
    pub carrier: Option<String>,
    /// Carrier and flight number from the topic, such as `LH400`.
    pub flight: Option<String>,
    /// Local departure date at the origin, from the topic.
    pub flight_date: Option<NaiveDate>,
    /// What happened, classified from `Update.Code` or else the message text.
    pub kind: EventKind,
    /// `Update.Code` as sent, such as `MVT ED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `Update.Message` as sent, such as `New Estimated Departure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Update.Timestamp` as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// `Update.Timestamp` parsed. Without a zone in the payload it is shown
    /// without one, because the feed does not say which zone it means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<UpdateTime>,
    /// `Update.FlightNumber` as sent, which may differ in form from `flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_flight_number: Option<String>,
    /// `Update.ScheduledFlightDate` as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_flight_date: Option<String>,
    /// `Update.ScheduledFlightTime` as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_flight_time: Option<String>,
    /// `Meta.Link`, always as a list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// `Meta.@Version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Fields of the payload that flupd does not know, under their JSON path
    /// (`Update.Gate`, `Meta.Source`, `Extra`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub unknown_fields: Map<String, Value>,
    /// Why the payload could not be parsed as a flight update, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_error: Option<PayloadError>,
    /// The payload verbatim when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload in standard base64 when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Set when a sink may have received this event before: the broker
    /// redelivered the message (MQTT DUP flag), or flupd restarted before it
    /// recorded the delivery.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redelivered: bool,
    /// The flight's status from the Flight Status API, when enrichment is
    /// on and succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FlightStatus>,
    /// Fields of `status` that differ from the previous status of the same
    /// flight and date.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Why `status` is missing, when enrichment is on and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrichment_error: Option<EnrichmentError>,
}

/// The kind of change a notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    EstimatedDeparture,
    EstimatedArrival,
    Departed,
    Arrived,
    GateChange,
    Cancelled,
    Reinstated,
    Diverted,
    Rerouted,
    ScheduleChange,
    Other,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::EstimatedDeparture => "estimated_departure",
            EventKind::EstimatedArrival => "estimated_arrival",
            EventKind::Departed => "departed",
            EventKind::Arrived => "arrived",
            EventKind::GateChange => "gate_change",
            EventKind::Cancelled => "cancelled",
            EventKind::Reinstated => "reinstated",
            EventKind::Diverted => "diverted",
            EventKind::Rerouted => "rerouted",
            EventKind::ScheduleChange => "schedule_change",
            EventKind::Other => "other",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `Update.Timestamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UpdateTime {
    /// The payload gave a zone or offset.
    Utc(DateTime<Utc>),
    /// The payload gave no zone.
    Local(NaiveDateTime),
}

impl fmt::Display for UpdateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateTime::Utc(time) => write!(f, "{}", time.format("%Y-%m-%dT%H:%M:%SZ")),
            UpdateTime::Local(time) => write!(f, "{}", time.format("%Y-%m-%dT%H:%M:%S")),
        }
    }
}

/// One entry of `Meta.Link`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub href: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rel: Option<String>,
}

/// Why a payload is not a well-formed flight update. The event is delivered
/// all the same, with the raw payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadError {
    /// The payload is not valid UTF-8.
    NotUtf8,
    /// The payload is UTF-8 but not JSON.
    NotJson,
    /// The payload is JSON but not an object with an `Update` object.
    UnexpectedShape,
}

impl PayloadError {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadError::NotUtf8 => "not_utf8",
            PayloadError::NotJson => "not_json",
            PayloadError::UnexpectedShape => "unexpected_shape",
        }
    }
}

impl Event {
    /// Builds the event for one message. Never fails: a payload that cannot
    /// be parsed gives an event with `payload_error` set.
    pub fn from_message(topic: &str, payload: &[u8], qos: u8, received_at: DateTime<Utc>) -> Event {
        let flight_topic = FlightTopic::parse(topic);
        let mut event = Event {
            id: event_id(topic, payload),
            received_at,
            topic: topic.to_owned(),
            qos,
            carrier: flight_topic.as_ref().map(|t| t.carrier.clone()),
            flight: flight_topic.as_ref().map(|t| t.flight.clone()),
            flight_date: flight_topic.as_ref().map(|t| t.date),
            kind: EventKind::Other,
            code: None,
            message: None,
            timestamp: None,
            update_time: None,
            payload_flight_number: None,
            scheduled_flight_date: None,
            scheduled_flight_time: None,
            links: Vec::new(),
            version: None,
            unknown_fields: Map::new(),
            payload_error: None,
            payload: None,
            payload_base64: None,
            redelivered: false,
            status: None,
            changes: Vec::new(),
            enrichment_error: None,
        };

        let text = match std::str::from_utf8(payload) {
            Ok(text) => text,
            Err(_) => {
                use base64::Engine as _;
                event.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(payload));
                event.payload_error = Some(PayloadError::NotUtf8);
                return event;
            }
        };
        event.payload = Some(text.to_owned());

        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(root)) => event.fill_from_json(root),
            Ok(_) => event.payload_error = Some(PayloadError::UnexpectedShape),
            Err(_) => event.payload_error = Some(PayloadError::NotJson),
        }
        event
    }

    fn fill_from_json(&mut self, mut root: Map<String, Value>) {
        let update = match root.remove("Update") {
            Some(Value::Object(update)) => Some(update),
            Some(other) => {
                self.unknown_fields.insert("Update".to_owned(), other);
                None
            }
            None => None,
        };
        if update.is_none() {
            self.payload_error = Some(PayloadError::UnexpectedShape);
        }

        if let Some(mut update) = update {
            self.code = take_string(&mut update, "Code");
            self.message = take_string(&mut update, "Message");
            self.timestamp = take_string(&mut update, "Timestamp");
            self.payload_flight_number = take_string(&mut update, "FlightNumber");
            self.scheduled_flight_date = take_string(&mut update, "ScheduledFlightDate");
            self.scheduled_flight_time = take_string(&mut update, "ScheduledFlightTime");
            for (key, value) in update {
                self.unknown_fields.insert(format!("Update.{key}"), value);
            }
        }

        if let Some(meta) = root.remove("Meta") {
            match meta {
                Value::Object(mut meta) => {
                    self.version = take_string(&mut meta, "@Version");
                    if let Some(link) = meta.remove("Link") {
                        self.links = parse_links(link, &mut self.unknown_fields);
                    }
                    for (key, value) in meta {
                        self.unknown_fields.insert(format!("Meta.{key}"), value);
                    }
                }
                other => {
                    self.unknown_fields.insert("Meta".to_owned(), other);
                }
            }
        }

        for (key, value) in root {
            self.unknown_fields.insert(key, value);
        }

        self.update_time = self.timestamp.as_deref().and_then(parse_timestamp);
        self.kind = classify(self.code.as_deref(), self.message.as_deref());
    }
}

/// Computes the event id: the first 128 bits of SHA-256 over the topic, a
/// zero byte and the payload, in hex.
pub fn event_id(topic: &str, payload: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(topic.as_bytes());
    hasher.update([0u8]);
    hasher.update(payload);
    hex::encode(&hasher.finalize()[..16])
}

/// Takes a string field out of a JSON object. Numbers are accepted and
/// rendered as text, because Lufthansa's JSON sometimes sends numbers where
/// strings are documented; other types stay behind as unknown fields.
fn take_string(object: &mut Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key)? {
        Value::String(_) | Value::Number(_) => {}
        _ => return None,
    }
    match object.remove(key)? {
        Value::String(text) => Some(text),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn parse_links(value: Value, unknown: &mut Map<String, Value>) -> Vec<Link> {
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => {
            unknown.insert("Meta.Link".to_owned(), other);
            return Vec::new();
        }
    };
    let mut links = Vec::new();
    for item in items {
        let Value::Object(mut object) = item else {
            continue;
        };
        if let Some(href) = take_string(&mut object, "@Href") {
            let rel = take_string(&mut object, "@Rel");
            links.push(Link { href, rel });
        }
    }
    links
}

/// Parses the timestamp forms seen in the feed: RFC 3339 with `Z` or an
/// offset, ISO 8601 without a zone, with or without fractional seconds, and
/// the documented `yyyy-mm-dd:hh:mm:ss`.
fn parse_timestamp(text: &str) -> Option<UpdateTime> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(UpdateTime::Utc(time.with_timezone(&Utc)));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d:%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Some(UpdateTime::Local(time));
        }
    }
    None
}

/// Classifies a notification. The action code decides when present; the
/// message text decides otherwise, compared without case and punctuation
/// because its wording varies ("Cancelled", "Flight Cancelled").
pub fn classify(code: Option<&str>, message: Option<&str>) -> EventKind {
    if let Some(kind) = code.and_then(classify_code) {
        return kind;
    }
    message.map(classify_message).unwrap_or(EventKind::Other)
}

fn classify_code(code: &str) -> Option<EventKind> {
    let normalized: Vec<String> = code.split_whitespace().map(str::to_ascii_uppercase).collect();
    let words: Vec<&str> = normalized.iter().map(String::as_str).collect();
    let kind = match words.as_slice() {
        ["MVT", "ED", ..] => EventKind::EstimatedDeparture,
        ["MVT", "EA", ..] => EventKind::EstimatedArrival,
        ["MVT", "AD", ..] => EventKind::Departed,
        ["MVT", "AA", ..] => EventKind::Arrived,
        ["Y"] | ["GATE"] => EventKind::GateChange,
        ["ASM", "CNL", ..] => EventKind::Cancelled,
        ["ASM", "NEW", "RIN", ..] | ["ASM", "RIN", ..] => EventKind::Reinstated,
        ["ASM", "RPL", "DIV", ..] => EventKind::Diverted,
        ["ASM", "RPL", "RRT", ..] => EventKind::Rerouted,
        ["ASM", "TIM", ..] => EventKind::ScheduleChange,
        _ => return None,
    };
    Some(kind)
}

fn classify_message(message: &str) -> EventKind {
    let text: String =
        message.chars().map(|c| if c.is_alphanumeric() { c.to_ascii_lowercase() } else { ' ' }).collect();
    let has = |word: &str| text.split_whitespace().any(|w| w == word);

    if has("estimated") && has("departure") {
        EventKind::EstimatedDeparture
    } else if has("estimated") && has("arrival") {
        EventKind::EstimatedArrival
    } else if has("gate") {
        EventKind::GateChange
    } else if has("reinstated") {
        EventKind::Reinstated
    } else if has("cancelled") || has("canceled") {
        EventKind::Cancelled
    } else if has("diverted") {
        EventKind::Diverted
    } else if has("rerouted") {
        EventKind::Rerouted
    } else if has("schedule") || has("rescheduled") {
        EventKind::ScheduleChange
    } else if has("departed") {
        EventKind::Departed
    } else if has("arrived") || has("landed") {
        EventKind::Arrived
    } else {
        EventKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "prd/FlightUpdate/LH/LH400/2026-07-22";

    fn event(payload: &[u8]) -> Event {
        Event::from_message(TOPIC, payload, 1, Utc::now())
    }

    #[test]
    fn event_parses_documented_shape() {
        let payload = br#"{"Update":{"Timestamp":"2026-07-22T12:48:58Z","Message":"New Estimated Departure","Code":"MVT ED"},
            "Meta":{"@Version":"1.0.0","Link":[{"@Href":"https://api.lufthansa.com/v1/operations/flightstatus/LH400/2026-07-22","@Rel":"related"}]}}"#;
        let event = event(payload);
        assert_eq!(event.kind, EventKind::EstimatedDeparture);
        assert_eq!(event.code.as_deref(), Some("MVT ED"));
        assert_eq!(event.carrier.as_deref(), Some("LH"));
        assert_eq!(event.flight.as_deref(), Some("LH400"));
        assert_eq!(event.flight_date, NaiveDate::from_ymd_opt(2026, 7, 22));
        assert_eq!(event.version.as_deref(), Some("1.0.0"));
        assert_eq!(event.links.len(), 1);
        assert_eq!(event.links[0].rel.as_deref(), Some("related"));
        assert_eq!(event.update_time.as_ref().map(ToString::to_string).as_deref(), Some("2026-07-22T12:48:58Z"));
        assert_eq!(event.payload_error, None);
        assert_eq!(event.payload.as_deref().map(str::as_bytes), Some(&payload[..]));
        assert!(event.unknown_fields.is_empty(), "{:?}", event.unknown_fields);
    }

    #[test]
    fn event_parses_observed_shape() {
        let payload =
            br#"{"Update":{"FlightNumber":"LH400","ScheduledFlightDate":"2026-07-22","ScheduledFlightTime":"13:55",
            "Timestamp":"2026-07-22T12:48:58","Message":"Flight Cancelled","Gate":"B44"},
            "Meta":{"@Version":"1.0.0","Link":{"@Href":"https://x.test/LH400","@Rel":"related"}}}"#;
        let event = event(payload);
        assert_eq!(event.kind, EventKind::Cancelled);
        assert_eq!(event.code, None);
        assert_eq!(event.payload_flight_number.as_deref(), Some("LH400"));
        assert_eq!(event.scheduled_flight_time.as_deref(), Some("13:55"));
        assert_eq!(event.links, vec![Link { href: "https://x.test/LH400".into(), rel: Some("related".into()) }]);
        assert_eq!(event.update_time.as_ref().map(ToString::to_string).as_deref(), Some("2026-07-22T12:48:58"));
        assert_eq!(event.unknown_fields.get("Update.Gate"), Some(&Value::String("B44".into())));
    }

    #[test]
    fn event_accepts_timestamp_forms() {
        for (text, shown) in [
            ("2026-07-22T12:48:58Z", "2026-07-22T12:48:58Z"),
            ("2026-07-22T14:48:58+02:00", "2026-07-22T12:48:58Z"),
            ("2026-07-22T12:48:58", "2026-07-22T12:48:58"),
            ("2026-07-22T12:48:58.250", "2026-07-22T12:48:58"),
            ("2026-07-22:12:48:58", "2026-07-22T12:48:58"),
            ("2026-07-22T12:48", "2026-07-22T12:48:00"),
        ] {
            let parsed = parse_timestamp(text).unwrap_or_else(|| panic!("{text} not parsed"));
            assert_eq!(parsed.to_string(), shown, "{text}");
        }
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn event_kind_from_code_and_text() {
        let cases = [
            (Some("MVT ED"), None, EventKind::EstimatedDeparture),
            (Some("MVT EA"), None, EventKind::EstimatedArrival),
            (Some("MVT AD"), None, EventKind::Departed),
            (Some("MVT AA"), None, EventKind::Arrived),
            (Some("Y"), None, EventKind::GateChange),
            (Some("ASM CNL"), None, EventKind::Cancelled),
            (Some("ASM NEW RIN"), None, EventKind::Reinstated),
            (Some("ASM RPL DIV"), None, EventKind::Diverted),
            (Some("ASM RPL RRT"), None, EventKind::Rerouted),
            (Some("ASM TIM"), None, EventKind::ScheduleChange),
            (Some("XYZ"), Some("Departed"), EventKind::Departed),
            (None, Some("New Estimated Arrival"), EventKind::EstimatedArrival),
            (None, Some("New Gate Information"), EventKind::GateChange),
            (None, Some("Flight Cancelled"), EventKind::Cancelled),
            (None, Some("Cancelled"), EventKind::Cancelled),
            (None, Some("Reinstated"), EventKind::Reinstated),
            (None, Some("Diverted"), EventKind::Diverted),
            (None, Some("Rerouted"), EventKind::Rerouted),
            (None, Some("Schedule Change"), EventKind::ScheduleChange),
            (None, Some("Arrived"), EventKind::Arrived),
            (None, Some("Something new"), EventKind::Other),
            (None, None, EventKind::Other),
        ];
        for (code, message, expected) in cases {
            assert_eq!(classify(code, message), expected, "{code:?} {message:?}");
        }
    }

    #[test]
    fn event_flags_non_json_and_non_utf8() {
        let text = event(b"gate changed");
        assert_eq!(text.payload_error, Some(PayloadError::NotJson));
        assert_eq!(text.payload.as_deref(), Some("gate changed"));
        assert_eq!(text.kind, EventKind::Other);

        let binary = event(&[0xff, 0xfe, 0x00]);
        assert_eq!(binary.payload_error, Some(PayloadError::NotUtf8));
        assert_eq!(binary.payload, None);
        assert_eq!(binary.payload_base64.as_deref(), Some("//4A"));

        let array = event(b"[1,2]");
        assert_eq!(array.payload_error, Some(PayloadError::UnexpectedShape));

        let no_update = event(br#"{"Meta":{}}"#);
        assert_eq!(no_update.payload_error, Some(PayloadError::UnexpectedShape));
    }

    #[test]
    fn event_id_is_stable_and_distinct() {
        let first = Event::from_message(TOPIC, b"{}", 1, Utc::now());
        let second = Event::from_message(TOPIC, b"{}", 0, Utc::now());
        assert_eq!(first.id, second.id);
        assert_eq!(first.id.len(), 32);
        assert_ne!(first.id, Event::from_message(TOPIC, b"{ }", 1, Utc::now()).id);
        assert_ne!(first.id, Event::from_message("prd/FlightUpdate/LH/LH401/2026-07-22", b"{}", 1, Utc::now()).id);
    }

    #[test]
    fn event_topic_is_authority_when_payload_disagrees() {
        let event = event(br#"{"Update":{"FlightNumber":"LH0400","Message":"Departed"}}"#);
        assert_eq!(event.flight.as_deref(), Some("LH400"));
        assert_eq!(event.payload_flight_number.as_deref(), Some("LH0400"));
    }

    #[test]
    fn event_json_round_trips() {
        let original =
            event(br#"{"Update":{"Message":"Arrived","Timestamp":"2026-07-22T12:48:58","Extra":[1]},"Other":true}"#);
        let json = serde_json::to_string(&original).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, original);
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["kind"], "arrived");
        assert_eq!(value["flight_date"], "2026-07-22");
        assert_eq!(value["unknown_fields"]["Other"], true);
    }

    #[test]
    fn event_numbers_where_strings_documented() {
        let event = event(br#"{"Update":{"FlightNumber":400,"Message":"Departed"}}"#);
        assert_eq!(event.payload_flight_number.as_deref(), Some("400"));
    }
}
