//! flupd receives Lufthansa flight update notifications over MQTT and
//! delivers them to configured sinks.
//!
//! Modules, in the order a message meets them:
//!
//! - [`cli`]: the command line.
//! - [`app`]: the commands behind it, each returning the exit code.
//! - [`config`]: loading, validating and typing the configuration.
//! - [`secret`]: a string type that never prints its content.
//! - [`api`]: the HTTP client for Lufthansa's API and its shared call budget.
//! - [`credentials`]: the MQTT credentials and their cache on disk.
//! - [`topic`]: MQTT topic filter rules and flight topic parsing.
//! - [`mqtt`]: the TLS connection to the broker, subscriptions and reconnects.
//! - [`event`]: the flight update event built from each message.
//! - [`outbox`]: the durable store every event passes before its ack.
//! - [`enrich`]: the flight's status from the Flight Status API, per event.
//! - [`sink`]: delivery of events to stdout, files and webhooks.
//! - [`reload`]: applies a new configuration on SIGHUP.
//! - [`daemon`]: assembles the pipeline and runs it until shutdown.
//! - [`service`]: systemd notifications, the watchdog and the health checks.
//! - [`health`]: the HTTP health and metrics endpoint.
//! - [`metrics`]: metric names and recording helpers.
//! - [`backoff`]: capped exponential backoff with jitter.
//! - [`logging`]: the tracing subscriber, with journald priorities.
//! - `demo` (feature `demo`): the pipeline against a local stand-in.

pub mod api;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod enrich;
pub mod event;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod reload;
pub mod secret;
pub mod service;
pub mod sink;
pub mod topic;
