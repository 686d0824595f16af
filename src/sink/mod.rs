//! Sinks: where events are delivered.
//!
//! Each sink type lives in its own file with its configuration type, its
//! runtime type and its unit tests. This file contains the tagged set of sink
//! configurations, the one place that builds them, and the task that feeds a
//! sink from the outbox and retries failed deliveries.

pub mod driver;
pub mod file;
pub mod stdout;
pub mod webhook;

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::Problems;
use crate::event::Event;
use crate::outbox::Entry;
use crate::topic::TopicFilter;

/// One `[[sinks]]` table after validation.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Unique name, used in logs; defaults to `<type>` or `<type>-<n>`.
    pub name: String,
    /// Topic filters choosing which events this sink gets; empty means all.
    pub topics: Vec<TopicFilter>,
    pub config: SinkConfig,
}

impl SinkSpec {
    /// Returns whether this sink wants events from `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        self.topics.is_empty() || self.topics.iter().any(|filter| filter.matches(topic))
    }

    /// Returns whether the sink's table contains a secret written inline.
    pub fn has_inline_secret(&self) -> bool {
        match &self.config {
            SinkConfig::Webhook(config) => config.has_inline_secret(),
            _ => false,
        }
    }
}

/// The configuration of one sink, by type.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Stdout(stdout::StdoutConfig),
    File(file::FileConfig),
    Webhook(webhook::WebhookConfig),
}

impl SinkConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::File(_) => "file",
            SinkConfig::Webhook(_) => "webhook",
        }
    }
}

const SINK_TYPES: &str = "stdout, file, webhook";

/// Parses and validates one `[[sinks]]` table. `key` is its position, such as
/// `sinks[0]`, used in every problem reported.
pub fn parse_sink(key: &str, table: Value, problems: &mut Problems) -> Option<SinkSpec> {
    let Value::Object(mut table) = table else {
        problems.push(key, "must be a table with a `type` key");
        return None;
    };

    let type_name = match table.remove("type") {
        Some(Value::String(type_name)) => type_name,
        Some(other) => {
            problems.push(format!("{key}.type"), format!("invalid value {other}: expected one of {SINK_TYPES}"));
            return None;
        }
        None => {
            problems.push(format!("{key}.type"), format!("missing: set it to one of {SINK_TYPES}"));
            return None;
        }
    };

    let name = match table.remove("name") {
        None => None,
        Some(Value::String(name)) if !name.trim().is_empty() => Some(name),
        Some(other) => {
            problems.push(format!("{key}.name"), format!("invalid value {other}: expected a non-empty string"));
            None
        }
    };

    let mut topics = Vec::new();
    match table.remove("topics") {
        None => {}
        Some(Value::Array(items)) => {
            for (index, item) in items.into_iter().enumerate() {
                let item_key = format!("{key}.topics[{index}]");
                match item {
                    Value::String(text) => match TopicFilter::parse(&text) {
                        Ok(filter) => topics.push(filter),
                        Err(error) => problems.push(item_key, error.to_string()),
                    },
                    other => problems.push(item_key, format!("invalid value {other}: expected a string")),
                }
            }
        }
        Some(other) => {
            problems.push(format!("{key}.topics"), format!("invalid value {other}: expected a list of topic filters"))
        }
    }

    let rest = Value::Object(table);
    let config = match type_name.as_str() {
        "stdout" => parse_typed(key, rest, problems).map(SinkConfig::Stdout),
        "file" => parse_typed(key, rest, problems).map(SinkConfig::File),
        "webhook" => parse_typed(key, rest, problems).map(SinkConfig::Webhook),
        other => {
            problems.push(format!("{key}.type"), format!("unknown sink type {other:?}: expected one of {SINK_TYPES}"));
            None
        }
    }?;

    // Keys that failed to parse are at their defaults, so the value checks
    // still run. A check of such a key would only repeat its problem.
    let mut checks = Problems::default();
    match &config {
        SinkConfig::Stdout(config) => config.validate(key, &mut checks),
        SinkConfig::File(config) => config.validate(key, &mut checks),
        SinkConfig::Webhook(config) => config.validate(key, &mut checks),
    }
    for problem in checks.iter() {
        if !problems.iter().any(|reported| reported.key == problem.key) {
            problems.push(problem.key.clone(), problem.message.clone());
        }
    }

    let name = name.unwrap_or_else(|| config.type_name().to_owned());
    Some(SinkSpec { name, topics, config })
}

/// Deserializes a sink's own keys, reporting every bad key rather than the
/// first: each failing key is recorded and left out, and the rest is tried
/// again, so that one mistake does not hide the next. Returns the sink's
/// configuration with the failed keys at their defaults.
fn parse_typed<T: DeserializeOwned>(key: &str, rest: Value, problems: &mut Problems) -> Option<T> {
    let Value::Object(mut table) = rest else { return None };
    // Each round removes one key, so the loop ends.
    for _ in 0..=table.len() {
        let error = match serde_path_to_error::deserialize::<_, T>(Value::Object(table.clone())) {
            Ok(config) => return Some(config),
            Err(error) => error,
        };
        let field = error.path().iter().next().map(|segment| segment.to_string()).filter(|field| field != "?");
        let message = error.inner().to_string();
        let unknown =
            message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()).map(str::to_owned);
        match unknown.or(field) {
            Some(field) if table.remove(&field).is_some() => {
                let message = if message.starts_with("unknown field") {
                    message.replacen(&format!("unknown field `{field}`, "), "unknown key; ", 1)
                } else if webhook::SECRET_KEYS.contains(&field.as_str()) {
                    let expected = message.find("expected").map_or("", |index| &message[index..]);
                    format!("invalid value (not shown, because it may be a secret): {expected}")
                } else {
                    message
                };
                problems.push(format!("{key}.{field}"), message);
            }
            _ => {
                problems.push(key, message);
                return None;
            }
        }
    }
    None
}

/// A failed delivery, as reported by a sink.
#[derive(Debug)]
pub struct DeliveryError {
    pub retry: Retry,
    /// Description of the failure, naming the path or URL concerned.
    pub message: String,
}

/// Whether a failed delivery may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after a backoff delay, or after the given time if the
    /// receiver asked for one (`Retry-After`).
    After(Option<Duration>),
    /// Trying again cannot help: the event is dropped for this sink.
    Never,
}

impl DeliveryError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { retry: Retry::After(None), message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { retry: Retry::Never, message: message.into() }
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeliveryError {}

/// A built sink, ready to deliver.
pub enum Sink {
    Stdout(stdout::StdoutSink),
    File(file::FileSink),
    Webhook(Box<webhook::WebhookSink>),
}

impl Sink {
    /// Builds the runtime sink for a validated configuration. This is where
    /// files are opened and clients created.
    pub async fn build(config: &SinkConfig) -> Result<Sink, DeliveryError> {
        Ok(match config {
            SinkConfig::Stdout(config) => Sink::Stdout(stdout::StdoutSink::new(config)),
            SinkConfig::File(config) => Sink::File(file::FileSink::open(config).await?),
            SinkConfig::Webhook(config) => Sink::Webhook(Box::new(webhook::WebhookSink::new(config)?)),
        })
    }

    /// Delivers one event. Returns once the sink has taken it: written to
    /// the output or file buffer, or accepted by the webhook receiver.
    pub async fn deliver(&mut self, event: &Event) -> Result<(), DeliveryError> {
        match self {
            Sink::Stdout(sink) => sink.deliver(event).await,
            Sink::File(sink) => sink.deliver(event).await,
            Sink::Webhook(sink) => sink.deliver(event).await,
        }
    }

    /// Delivers a run of stored events in one call where the sink can, without
    /// retries. Returns how many of them, from the first, the sink took,
    /// and the error that stopped it; the caller delivers the rest one by
    /// one. Sinks that take one event per call take none here.
    pub async fn deliver_many(&mut self, entries: &[&Entry]) -> (usize, Option<DeliveryError>) {
        match self {
            Sink::File(sink) => sink.deliver_many(entries).await,
            Sink::Stdout(_) | Sink::Webhook(_) => (0, None),
        }
    }

    /// Flushes buffered output. Called when the queue is empty and before
    /// the sink stops.
    pub async fn flush(&mut self) -> Result<(), DeliveryError> {
        match self {
            Sink::Stdout(sink) => sink.flush().await,
            Sink::File(sink) => sink.flush().await,
            Sink::Webhook(_) => Ok(()),
        }
    }

    /// Returns the backoff between attempts to deliver one event.
    pub fn retry_backoff(&self) -> crate::backoff::Backoff {
        match self {
            Sink::Webhook(sink) => sink.retry_backoff(),
            _ => crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
        }
    }
}
