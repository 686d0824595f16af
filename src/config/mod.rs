//! Loading, validating and typing the configuration.
//!
//! Loading has two stages. [`load`] reads the TOML file and the `FLUPD_*`
//! environment overrides and validates every key without further I/O,
//! collecting every problem before it reports them. Secrets and state files
//! are read later, when the daemon builds its parts.

pub mod env;
pub mod problems;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use url::Url;

pub use env::Env;
pub use problems::{Problem, Problems};

use crate::api::CallLimits;
use crate::outbox::{Durability, FullPolicy, OutboxConfig};
use crate::secret::Secret;
use crate::sink::{SinkConfig, SinkSpec, parse_sink};
use crate::topic::TopicFilter;

/// Default configuration path, used unless `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/flupd/flupd.toml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub log: LogConfig,
    /// How long sinks may take to drain at shutdown.
    pub shutdown_timeout: Duration,
    pub lufthansa: LufthansaConfig,
    pub mqtt: MqttConfig,
    pub state: StateConfig,
    pub outbox: OutboxConfig,
    pub health: HealthConfig,
    pub enrich: EnrichConfig,
    pub sinks: Vec<SinkSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, colored on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive such as `info` or `flupd=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct LufthansaConfig {
    /// The API key, sent as OAuth `client_id`. Not a secret.
    pub client_id: String,
    pub client_secret: SecretSource,
    /// Base URL of Lufthansa's API, without a trailing slash.
    pub api_base: Url,
    /// Prefix of the MQTT client ids Lufthansa issues (`<prefix>_<number>`).
    pub client_prefix: String,
    /// Timeout of one HTTP request to the API.
    pub request_timeout: Duration,
    /// Cached MQTT credentials are renewed this long before they expire.
    pub renew_before: Duration,
    /// The call budget shared by every call with this API key.
    pub limits: CallLimits,
}

/// Source of the client secret, in order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `FLUPD_CLIENT_SECRET`.
    Environment(Secret),
    /// `lufthansa.client_secret_file`.
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/client_secret`, from systemd's `LoadCredential=`.
    SystemdCredential(PathBuf),
    /// `lufthansa.client_secret`, written in the configuration file.
    Inline(Secret),
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub topics: Vec<TopicFilter>,
    /// Broker host; `None` means the endpoint returned with the credentials.
    pub host: Option<String>,
    pub port: u16,
    /// Extra CA certificates (PEM) trusted beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// QoS requested for every subscription: 0 or 1.
    pub qos: u8,
    pub keepalive: Duration,
    /// Largest incoming MQTT packet accepted, in bytes.
    pub max_packet_size: usize,
    /// Maximum wait between two connection attempts.
    pub reconnect_max_delay: Duration,
    /// Whether to start a fresh session at every connect. With `false` the
    /// broker keeps the subscriptions and queues messages while flupd is away.
    pub clean_session: bool,
}

/// The `[enrich]` section: fetching each event's flight status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichConfig {
    pub enabled: bool,
    /// Maximum time enrichment may hold an event.
    pub max_wait: Duration,
    /// Shortest time between two calls for the same flight and date.
    pub min_interval: Duration,
    /// Cached status lifetime within `near_window` of departure or arrival.
    pub ttl_near: Duration,
    /// Cached status lifetime farther from departure and arrival.
    pub ttl_far: Duration,
    /// Cached status lifetime after arrival or cancellation.
    pub ttl_final: Duration,
    /// Time around departure and arrival that counts as near.
    pub near_window: Duration,
    /// Flights and dates whose last status is kept, in memory and on disk.
    pub max_flights: usize,
    /// Days before today whose statuses are kept; older ones are pruned.
    pub keep_days: u32,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_wait: Duration::from_secs(2),
            min_interval: Duration::from_secs(60),
            ttl_near: Duration::from_secs(60),
            ttl_far: Duration::from_secs(15 * 60),
            ttl_final: Duration::from_secs(6 * 3600),
            near_window: Duration::from_secs(2 * 3600),
            max_flights: 2000,
            keep_days: 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Directory for the credentials cache.
    pub dir: PathBuf,
}

/// Port of the health endpoint when `health.listen` gives only a port.
pub const DEFAULT_HEALTH_PORT: u16 = 9188;

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Address of the HTTP health endpoint; `None` turns it off.
    pub listen: Option<SocketAddr>,
    /// How long one delivery attempt may run before the sink counts as
    /// stuck, which makes `/readyz` fail and stops the watchdog pings.
    pub sink_stuck_after: Duration,
}

/// Failure to load a configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration in {path}:\n{problems}")]
    Invalid { path: PathBuf, problems: Problems },
}

/// Something worth a warning in a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub message: String,
}

/// A loaded configuration and the warnings found while loading it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Warning>,
}

const TOP_KEYS: &[&str] = &[
    "log_format",
    "log_level",
    "shutdown_timeout",
    "lufthansa",
    "mqtt",
    "state",
    "outbox",
    "health",
    "enrich",
    "sinks",
];
const LUFTHANSA_KEYS: &[&str] = &[
    "client_id",
    "client_secret",
    "client_secret_file",
    "api_base",
    "client_prefix",
    "request_timeout",
    "renew_before",
    "max_calls_per_second",
    "max_calls_per_hour",
    "rate_limit_pause",
];
const MQTT_KEYS: &[&str] = &[
    "topics",
    "host",
    "port",
    "ca_file",
    "qos",
    "keepalive",
    "max_packet_size",
    "reconnect_max_delay",
    "clean_session",
];
const STATE_KEYS: &[&str] = &["dir"];
const OUTBOX_KEYS: &[&str] = &["durability", "retain", "max_bytes", "full_policy", "max_event_bytes", "dedup_window"];
const HEALTH_KEYS: &[&str] = &["listen", "sink_stuck_after"];
const ENRICH_KEYS: &[&str] = &[
    "enabled",
    "max_wait",
    "min_interval",
    "ttl_near",
    "ttl_far",
    "ttl_final",
    "near_window",
    "max_flights",
    "keep_days",
];

/// Loads the configuration file at `path` with the environment's overrides.
///
/// When `required` is false a missing file is not an error: the
/// configuration then comes from the environment alone, as in a container.
pub fn load(path: &Path, required: bool, env: &Env) -> Result<Loaded, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => None,
        Err(source) => return Err(LoadError::Read { path: path.to_owned(), source }),
    };
    let mut loaded = load_str(text.as_deref().unwrap_or(""), env).map_err(|error| match error {
        StrError::Parse(message) => LoadError::Parse { path: path.to_owned(), message },
        StrError::Invalid(problems) => LoadError::Invalid { path: path.to_owned(), problems },
    })?;

    if is_readable_by_others(path) {
        for (key, advice) in inline_secrets(&loaded.config) {
            loaded.warnings.push(Warning {
                key,
                message: format!(
                    "{} holds this secret and is readable by other users; run `chmod 600 {}`, or {advice}",
                    path.display(),
                    path.display()
                ),
            });
        }
    }
    Ok(loaded)
}

/// The keys of secrets written in the file, each with where it could live
/// instead.
fn inline_secrets(config: &Config) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    if matches!(config.lufthansa.client_secret, SecretSource::Inline(_)) {
        found.push((
            "lufthansa.client_secret".to_owned(),
            "move it to lufthansa.client_secret_file or FLUPD_CLIENT_SECRET",
        ));
    }
    for (index, sink) in config.sinks.iter().enumerate() {
        if sink.has_inline_secret() {
            found.push((
                format!("sinks[{index}]"),
                "move the signing key to signing_key_file and keep header values out of a shared file",
            ));
        }
    }
    found
}

fn is_readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|meta| meta.permissions().mode() & 0o044 != 0).unwrap_or(false)
}

#[derive(Debug)]
pub enum StrError {
    Parse(String),
    Invalid(Problems),
}

/// Loads a configuration from TOML text and the environment's overrides.
pub fn load_str(toml: &str, env: &Env) -> Result<Loaded, StrError> {
    let environment =
        config::Environment::with_prefix("FLUPD").prefix_separator("_").separator("__").source(Some(env.overrides()));
    let raw = config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .add_source(environment)
        .build()
        .map_err(|error| StrError::Parse(error.to_string()))?;

    let mut reader = Reader { raw: &raw, problems: Problems::default() };
    let mut warnings = Vec::new();
    let config = reader.config(env, &mut warnings);
    match config {
        Some(config) if reader.problems.is_empty() => Ok(Loaded { config, warnings }),
        _ => Err(StrError::Invalid(name_variables(env, &reader.problems))),
    }
}

/// Adds the environment variable to each problem whose value came from one,
/// because the operator would look for it in the file in vain.
fn name_variables(env: &Env, problems: &Problems) -> Problems {
    let overrides = env.overrides();
    let mut named = Problems::default();
    for problem in problems.iter() {
        let base = problem.key.split('[').next().unwrap_or(&problem.key);
        // A variable, when set, wins over the file. A table that only
        // variables create, such as an unknown section, is named by them.
        let exact = variable_name(base);
        let nested = format!("{exact}__");
        let mut variables: Vec<&str> = if overrides.contains_key(&exact) {
            vec![exact.as_str()]
        } else {
            overrides.keys().map(String::as_str).filter(|name| name.starts_with(&nested)).collect()
        };
        variables.sort_unstable();
        let message = if variables.is_empty() {
            problem.message.clone()
        } else {
            format!("{} (set by {})", problem.message, variables.join(", "))
        };
        named.push(problem.key.clone(), message);
    }
    named
}

/// The variable that overrides `key`: `mqtt.port` is `FLUPD_MQTT__PORT`.
fn variable_name(key: &str) -> String {
    format!("{}{}", env::OVERRIDE_PREFIX, key.replace('.', "__").to_ascii_uppercase())
}

/// Reads typed values out of the merged configuration, recording a problem
/// for each bad one instead of stopping at the first.
struct Reader<'a> {
    raw: &'a config::Config,
    problems: Problems,
}

impl Reader<'_> {
    fn config(&mut self, env: &Env, warnings: &mut Vec<Warning>) -> Option<Config> {
        self.check_keys(None, TOP_KEYS);
        self.check_keys(Some("lufthansa"), LUFTHANSA_KEYS);
        self.check_keys(Some("mqtt"), MQTT_KEYS);
        self.check_keys(Some("state"), STATE_KEYS);
        self.check_keys(Some("outbox"), OUTBOX_KEYS);
        self.check_keys(Some("health"), HEALTH_KEYS);
        self.check_keys(Some("enrich"), ENRICH_KEYS);

        let log = self.log();
        let shutdown_timeout = self.duration("shutdown_timeout", Duration::from_secs(10));
        let lufthansa = self.lufthansa(env, warnings);
        let mqtt = self.mqtt(warnings);
        let state = self.state(env);
        let outbox = self.outbox(mqtt.as_ref().map(|mqtt| mqtt.max_packet_size));
        let health = self.health(warnings);
        let enrich = self.enrich();
        let sinks = self.sinks();
        Some(Config { log, shutdown_timeout, lufthansa: lufthansa?, mqtt: mqtt?, state, outbox, health, enrich, sinks })
    }

    /// Reports keys of a section that flupd does not know.
    fn check_keys(&mut self, section: Option<&str>, known: &[&str]) {
        let table = match section {
            None => self.raw.clone().try_deserialize::<config::Map<String, config::Value>>().ok(),
            Some(name) => match self.raw.get::<config::Value>(name) {
                Err(config::ConfigError::NotFound(_)) => return,
                Ok(value) => match value.into_table() {
                    Ok(table) => Some(table),
                    Err(_) => {
                        self.problems.push(name, "must be a table");
                        return;
                    }
                },
                Err(error) => {
                    self.problems.push(name, error.to_string());
                    return;
                }
            },
        };
        let Some(table) = table else { return };
        let mut unknown: Vec<&String> = table.keys().filter(|key| !known.contains(&key.as_str())).collect();
        unknown.sort();
        for key in unknown {
            let full = match section {
                Some(section) => format!("{section}.{key}"),
                None => key.clone(),
            };
            self.problems.push(full, format!("unknown key; known keys here are: {}", known.join(", ")));
        }
    }

    fn optional<T: DeserializeOwned>(&mut self, key: &str, expected: &str) -> Option<T> {
        match self.raw.get::<T>(key) {
            Ok(value) => Some(value),
            Err(config::ConfigError::NotFound(_)) => None,
            Err(_) => {
                let shown = self.shown(key);
                self.problems.push(key, format!("invalid value {shown}: expected {expected}"));
                None
            }
        }
    }

    /// The raw value of a key as written, for error messages.
    fn shown(&self, key: &str) -> String {
        match self.raw.get::<config::Value>(key) {
            Ok(value) => match value.kind {
                config::ValueKind::String(text) => format!("{text:?}"),
                _ => value.to_string(),
            },
            Err(_) => "(unreadable)".to_owned(),
        }
    }

    /// Reads a secret string. A value of another type is reported without
    /// showing it, because it may still be the secret.
    fn secret(&mut self, key: &str) -> Option<Secret> {
        match self.raw.get::<String>(key) {
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(Secret::new(text)),
            Err(config::ConfigError::NotFound(_)) => None,
            Err(_) => {
                self.problems.push(key, "invalid value (not shown, because it may be the secret): expected a string");
                None
            }
        }
    }

    fn string(&mut self, key: &str) -> Option<String> {
        self.optional::<String>(key, "a string").filter(|text| !text.trim().is_empty())
    }

    fn required_string(&mut self, key: &str, hint: &str) -> Option<String> {
        let value = self.string(key);
        if value.is_none() && !self.problems.iter().any(|problem| problem.key == key) {
            self.problems.push(key, format!("missing: {hint}"));
        }
        value
    }

    fn duration(&mut self, key: &str, default: Duration) -> Duration {
        let Some(text) = self.optional::<String>(key, "a duration such as \"30s\" or \"5m\"") else {
            return default;
        };
        match humantime::parse_duration(&text) {
            Ok(duration) => duration,
            Err(error) => {
                self.problems.push(key, format!("invalid duration {text:?}: {error}; write a number with a unit, such as \"30s\", \"5m\" or \"30days\""));
                default
            }
        }
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        let text = self.string(key)?;
        let path = PathBuf::from(&text);
        if !path.is_absolute() {
            self.problems.push(
                key,
                format!("invalid path {text:?}: must be absolute, because flupd may run from any directory"),
            );
            return None;
        }
        Some(path)
    }

    fn log(&mut self) -> LogConfig {
        let format = match self.string("log_format").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.problems.push("log_format", format!("invalid value {other:?}: expected \"text\" or \"json\""));
                LogFormat::Text
            }
        };
        let level = self.string("log_level").unwrap_or_else(|| "info".to_owned());
        // A bare word is a target name to the filter, so "verbose" would
        // silently select nothing; require a level there.
        let bare_words_are_levels = level.split(',').filter(|directive| !directive.contains('=')).all(|word| {
            matches!(word.trim().to_ascii_lowercase().as_str(), "error" | "warn" | "info" | "debug" | "trace" | "off")
        });
        if !bare_words_are_levels {
            self.problems.push(
                "log_level",
                format!("invalid filter {level:?}: a directive without `=` must be a level: error, warn, info, debug, trace or off"),
            );
        } else if let Err(error) = tracing_subscriber::EnvFilter::try_new(&level) {
            self.problems.push("log_level", format!("invalid filter {level:?}: {error}; use a level such as \"info\" or directives such as \"flupd=debug,info\""));
        }
        LogConfig { format, level }
    }

    fn lufthansa(&mut self, env: &Env, warnings: &mut Vec<Warning>) -> Option<LufthansaConfig> {
        let client_id = self.required_string("lufthansa.client_id", "set it to your Lufthansa API key");
        let client_prefix = self.required_string(
            "lufthansa.client_prefix",
            "set it to the MQTT client id prefix Lufthansa assigned to your account",
        );
        if let Some(prefix) = &client_prefix {
            if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                self.problems.push(
                    "lufthansa.client_prefix",
                    format!("invalid value {prefix:?}: use letters, digits, `_` and `-` only, because it becomes part of a URL path"),
                );
            }
        }

        let inline = self.secret("lufthansa.client_secret");
        let file = self.path("lufthansa.client_secret_file");
        if inline.is_some() && file.is_some() {
            self.problems.push("lufthansa.client_secret", "set either client_secret or client_secret_file, not both");
        }
        let client_secret = if let Some(secret) = env.client_secret() {
            Some(SecretSource::Environment(secret))
        } else if let Some(file) = file {
            Some(SecretSource::File(file))
        } else if let Some(dir) = env.credentials_directory() {
            Some(SecretSource::SystemdCredential(dir.join("client_secret")))
        } else {
            inline.map(SecretSource::Inline)
        };
        if client_secret.is_none() && !self.problems.iter().any(|problem| problem.key == "lufthansa.client_secret") {
            self.problems.push(
                "lufthansa.client_secret",
                "missing: set FLUPD_CLIENT_SECRET, lufthansa.client_secret_file, or systemd's LoadCredential=client_secret:PATH",
            );
        }

        let api_base_text = self.string("lufthansa.api_base").unwrap_or_else(|| "https://api.lufthansa.com".to_owned());
        let api_base = match Url::parse(api_base_text.trim_end_matches('/')) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
            Ok(_) => {
                self.problems.push(
                    "lufthansa.api_base",
                    format!(
                        "invalid URL {api_base_text:?}: expected an http or https URL such as https://api.lufthansa.com"
                    ),
                );
                None
            }
            Err(error) => {
                self.problems.push("lufthansa.api_base", format!("invalid URL {api_base_text:?}: {error}"));
                None
            }
        };

        let request_timeout = self.duration("lufthansa.request_timeout", Duration::from_secs(30));
        let renew_before = self.duration("lufthansa.renew_before", Duration::from_secs(30 * 24 * 3600));
        if renew_before > Duration::from_secs(365 * 24 * 3600) {
            self.problems.push(
                "lufthansa.renew_before",
                format!(
                    "invalid value {}: Lufthansa's JWT is valid for about two years, so more than 365days would fetch new credentials at every start",
                    humantime::format_duration(renew_before)
                ),
            );
        }
        if request_timeout.is_zero() {
            self.problems.push("lufthansa.request_timeout", "must be greater than zero");
        }
        let limits = self.call_limits(warnings);

        Some(LufthansaConfig {
            client_id: client_id?,
            client_secret: client_secret?,
            api_base: api_base?,
            client_prefix: client_prefix?,
            request_timeout,
            renew_before,
            limits,
        })
    }

    fn call_limits(&mut self, warnings: &mut Vec<Warning>) -> CallLimits {
        let defaults = CallLimits::default();
        let per_second = self.count("lufthansa.max_calls_per_second", u64::from(defaults.max_calls_per_second));
        let per_hour = self.count("lufthansa.max_calls_per_hour", u64::from(defaults.max_calls_per_hour));
        let rate_limit_pause = self.duration("lufthansa.rate_limit_pause", defaults.rate_limit_pause);
        // Lufthansa publishes no limits; these are what users report per key.
        for (key, value, reported) in
            [("lufthansa.max_calls_per_second", per_second, 5), ("lufthansa.max_calls_per_hour", per_hour, 1000)]
        {
            if value > reported {
                warnings.push(Warning {
                    key: key.to_owned(),
                    message: format!("{value} is above the {reported} that users report Lufthansa allows per key; a rate-limit response pauses all calls, credential renewal included"),
                });
            }
        }
        if rate_limit_pause < Duration::from_secs(1) {
            self.problems.push(
                "lufthansa.rate_limit_pause",
                "invalid value: expected at least 1s, because calling again at once extends Lufthansa's block",
            );
        }
        CallLimits {
            max_calls_per_second: u32::try_from(per_second).unwrap_or(u32::MAX),
            max_calls_per_hour: u32::try_from(per_hour).unwrap_or(u32::MAX),
            rate_limit_pause,
        }
    }

    /// Reads a whole number of at least 1.
    fn count(&mut self, key: &str, default: u64) -> u64 {
        let value = self.optional::<u64>(key, "a whole number of at least 1").unwrap_or(default);
        if value == 0 {
            self.problems.push(key, "invalid value 0: expected a whole number of at least 1");
            return default;
        }
        value
    }

    fn enrich(&mut self) -> EnrichConfig {
        let defaults = EnrichConfig::default();
        let enabled = self.optional::<bool>("enrich.enabled", "true or false").unwrap_or(defaults.enabled);
        let max_wait = self.duration("enrich.max_wait", defaults.max_wait);
        if max_wait.is_zero() || max_wait > Duration::from_secs(60) {
            self.problems.push(
                "enrich.max_wait",
                format!(
                    "invalid value {}: expected between 1ms and 60s, because every event waits up to this long",
                    humantime::format_duration(max_wait)
                ),
            );
        }

        let min_interval = self.duration("enrich.min_interval", defaults.min_interval);
        let ttl_near = self.duration("enrich.ttl_near", defaults.ttl_near);
        let ttl_far = self.duration("enrich.ttl_far", defaults.ttl_far);
        let ttl_final = self.duration("enrich.ttl_final", defaults.ttl_final);
        let near_window = self.duration("enrich.near_window", defaults.near_window);
        let max_flights = self.count("enrich.max_flights", defaults.max_flights as u64);
        let keep_days = self.optional::<u32>("enrich.keep_days", "a number of days").unwrap_or(defaults.keep_days);

        EnrichConfig {
            enabled,
            max_wait,
            min_interval,
            ttl_near,
            ttl_far,
            ttl_final,
            near_window,
            max_flights: usize::try_from(max_flights).unwrap_or(usize::MAX),
            keep_days,
        }
    }

    fn mqtt(&mut self, warnings: &mut Vec<Warning>) -> Option<MqttConfig> {
        let mut topics = Vec::new();
        // An environment variable can only hold text, so FLUPD_MQTT__TOPICS
        // lists its filters separated by commas; a comma is never part of a
        // Lufthansa topic.
        let list = match self.raw.get::<String>("mqtt.topics") {
            Ok(text) => Some(text.split(',').map(str::to_owned).collect()),
            Err(_) => self.optional::<Vec<String>>("mqtt.topics", "a list of topic filters"),
        };
        match list {
            None if !self.problems.iter().any(|problem| problem.key == "mqtt.topics") => self.problems.push(
                "mqtt.topics",
                "missing: list the topic filters to subscribe to, such as [\"prd/FlightUpdate/LH/+/2026-07-22\"]",
            ),
            None => {}
            Some(list) if list.is_empty() => self.problems.push("mqtt.topics", "empty: list at least one topic filter"),
            Some(list) => {
                for (index, text) in list.iter().enumerate() {
                    let key = format!("mqtt.topics[{index}]");
                    match TopicFilter::parse(text.trim()) {
                        Ok(filter) if topics.contains(&filter) => {
                            self.problems.push(key, format!("duplicate topic filter {text:?}"));
                        }
                        Ok(filter) => {
                            if !filter.is_flight_update() {
                                warnings.push(Warning {
                                    key,
                                    message: format!("topic filter {text:?} is outside prd/FlightUpdate/ and will receive no flight updates"),
                                });
                            }
                            topics.push(filter);
                        }
                        Err(error) => self.problems.push(key, error.to_string()),
                    }
                }
            }
        }

        let host = self.string("mqtt.host");
        if let Some(host) = &host {
            if host.contains(['/', ':', ' ']) && !host.starts_with('[') {
                self.problems.push(
                    "mqtt.host",
                    format!("invalid host {host:?}: give a host name or address only, and the port in mqtt.port"),
                );
            }
        }
        let port = self.optional::<u16>("mqtt.port", "a port number from 1 to 65535").unwrap_or(8883);
        if port == 0 {
            self.problems.push("mqtt.port", "invalid value 0: expected a port number from 1 to 65535");
        }
        let ca_file = self.path("mqtt.ca_file");
        let qos = self.optional::<u8>("mqtt.qos", "0 or 1").unwrap_or(1);
        if qos > 1 {
            self.problems.push(
                "mqtt.qos",
                format!("invalid value {qos}: expected 0 or 1, because the broker grants at most QoS 1"),
            );
        }
        let keepalive = self.duration("mqtt.keepalive", Duration::from_secs(60));
        if keepalive < Duration::from_secs(5) || keepalive > Duration::from_secs(65535) {
            self.problems.push(
                "mqtt.keepalive",
                format!("invalid value {}: expected between 5s and 65535s", humantime::format_duration(keepalive)),
            );
        }
        let max_packet_size = self.optional::<u64>("mqtt.max_packet_size", "a size in bytes").unwrap_or(1024 * 1024);
        if !(1024..=256 * 1024 * 1024).contains(&max_packet_size) {
            self.problems.push(
                "mqtt.max_packet_size",
                format!("invalid value {max_packet_size}: expected between 1024 and 268435456 bytes"),
            );
        }
        let reconnect_max_delay = self.duration("mqtt.reconnect_max_delay", Duration::from_secs(60));
        if reconnect_max_delay < Duration::from_secs(1) {
            self.problems.push(
                "mqtt.reconnect_max_delay",
                "invalid value: expected at least 1s, so that a refused connection is never retried in a tight loop",
            );
        }
        let clean_session = self.optional::<bool>("mqtt.clean_session", "true or false").unwrap_or(false);

        Some(MqttConfig {
            topics,
            host,
            port,
            ca_file,
            qos,
            keepalive,
            max_packet_size: max_packet_size as usize,
            reconnect_max_delay,
            clean_session,
        })
    }

    fn state(&mut self, env: &Env) -> StateConfig {
        let dir =
            self.path("state.dir").or_else(|| env.state_directory()).unwrap_or_else(|| PathBuf::from("/var/lib/flupd"));
        StateConfig { dir }
    }

    fn outbox(&mut self, max_packet_size: Option<usize>) -> OutboxConfig {
        let defaults = OutboxConfig::default();
        let durability = match self.string("outbox.durability").as_deref() {
            None | Some("process") => Durability::Process,
            Some("power_loss") => Durability::PowerLoss,
            Some(other) => {
                self.problems.push(
                    "outbox.durability",
                    format!("invalid value {other:?}: expected \"process\" (survives a crash) or \"power_loss\" (synced to disk)"),
                );
                Durability::Process
            }
        };
        let full_policy = match self.string("outbox.full_policy").as_deref() {
            None | Some("stop_acking") => FullPolicy::StopAcking,
            Some("drop_oldest") => FullPolicy::DropOldest,
            Some(other) => {
                self.problems.push(
                    "outbox.full_policy",
                    format!("invalid value {other:?}: expected \"stop_acking\" or \"drop_oldest\""),
                );
                FullPolicy::StopAcking
            }
        };
        let retain = self.duration("outbox.retain", defaults.retain);
        let dedup_window = self.duration("outbox.dedup_window", defaults.dedup_window);
        let max_bytes = self.optional::<u64>("outbox.max_bytes", "a size in bytes").unwrap_or(defaults.max_bytes);
        if max_bytes < 1024 * 1024 {
            self.problems
                .push("outbox.max_bytes", format!("invalid value {max_bytes}: expected at least 1048576 bytes"));
        }
        let max_event_bytes = self
            .optional::<u64>("outbox.max_event_bytes", "a size in bytes")
            .unwrap_or(defaults.max_event_bytes as u64);
        if max_event_bytes == 0 || max_event_bytes > max_bytes {
            self.problems.push(
                "outbox.max_event_bytes",
                format!("invalid value {max_event_bytes}: expected between 1 and outbox.max_bytes ({max_bytes})"),
            );
        }
        if let Some(max_packet_size) = max_packet_size {
            if max_event_bytes as usize > max_packet_size {
                self.problems.push(
                    "outbox.max_event_bytes",
                    format!(
                        "invalid value {max_event_bytes}: larger than mqtt.max_packet_size ({max_packet_size}), so no message could reach it; raise mqtt.max_packet_size"
                    ),
                );
            }
        }
        OutboxConfig {
            durability,
            retain,
            max_bytes,
            full_policy,
            max_event_bytes: max_event_bytes as usize,
            dedup_window,
        }
    }

    fn health(&mut self, warnings: &mut Vec<Warning>) -> HealthConfig {
        let listen = self.string("health.listen").and_then(|text| match parse_listen(&text) {
            Some(addr) => Some(addr),
            None => {
                self.problems.push(
                    "health.listen",
                    format!("invalid address {text:?}: expected an IP address and a port from 1 to 65535, such as \"127.0.0.1:{DEFAULT_HEALTH_PORT}\", or a port alone for 127.0.0.1"),
                );
                None
            }
        });
        if let Some(addr) = listen {
            if !addr.ip().is_loopback() {
                warnings.push(Warning {
                    key: "health.listen".to_owned(),
                    message: format!("{addr} is reachable from other hosts, and /metrics has no authentication; use 127.0.0.1 unless a firewall or container network limits access"),
                });
            }
        }
        let sink_stuck_after = self.duration("health.sink_stuck_after", Duration::from_secs(300));
        if sink_stuck_after < Duration::from_secs(1) {
            self.problems.push(
                "health.sink_stuck_after",
                "invalid value: expected at least 1s, longer than any one delivery should take",
            );
        }
        HealthConfig { listen, sink_stuck_after }
    }

    fn sinks(&mut self) -> Vec<SinkSpec> {
        let tables = match self.raw.get::<Vec<serde_json::Value>>("sinks") {
            Ok(tables) => tables,
            Err(config::ConfigError::NotFound(_)) => {
                self.problems.push("sinks", "missing: add at least one [[sinks]] table, such as type = \"stdout\"");
                return Vec::new();
            }
            Err(error) => {
                self.problems.push("sinks", format!("invalid value: {error}; expected [[sinks]] tables"));
                return Vec::new();
            }
        };
        if tables.is_empty() {
            self.problems.push("sinks", "empty: add at least one [[sinks]] table");
        }

        let mut sinks: Vec<SinkSpec> = Vec::new();
        for (index, table) in tables.into_iter().enumerate() {
            let key = format!("sinks[{index}]");
            let Some(mut sink) = parse_sink(&key, table, &mut self.problems) else { continue };
            let explicit = self.raw.get::<String>(&format!("sinks[{index}].name")).is_ok();
            if !explicit && sinks.iter().any(|other| other.name == sink.name) {
                sink.name = format!("{}-{}", sink.name, index);
            }
            if let SinkConfig::File(file) = &sink.config {
                let shared =
                    sinks.iter().any(|other| matches!(&other.config, SinkConfig::File(o) if o.path == file.path));
                if shared {
                    self.problems.push(
                        format!("{key}.path"),
                        format!("{} is the path of another file sink; two writers would interleave and rotate each other's lines", file.path.display()),
                    );
                }
            }
            if sinks.iter().any(|other| other.name == sink.name) {
                self.problems.push(
                    format!("{key}.name"),
                    format!("duplicate sink name {:?}: give each sink its own name", sink.name),
                );
            }
            sinks.push(sink);
        }
        sinks
    }
}

/// Parses `health.listen`: an IP address with a port, or a port alone,
/// which binds 127.0.0.1 so that the endpoint stays local by default.
fn parse_listen(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(port) = text.trim_start_matches(':').parse::<u16>() {
        return (port != 0).then_some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>().ok().filter(|addr| addr.port() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [lufthansa]
        client_id = "key"
        client_secret = "s3cret"
        client_prefix = "acme"

        [mqtt]
        topics = ["prd/FlightUpdate/LH/#"]

        [[sinks]]
        type = "stdout"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn problems(toml: &str, env: &Env) -> Vec<String> {
        match load_str(toml, env) {
            Ok(_) => panic!("configuration unexpectedly valid"),
            Err(StrError::Invalid(problems)) => problems.iter().map(|problem| problem.to_string()).collect(),
            Err(StrError::Parse(message)) => panic!("parse error: {message}"),
        }
    }

    #[test]
    fn config_minimal_gets_defaults() {
        let config = load_str(MINIMAL, &Env::default()).unwrap().config;
        assert_eq!(config.lufthansa.api_base.as_str(), "https://api.lufthansa.com/");
        assert_eq!(config.mqtt.port, 8883);
        assert_eq!(config.mqtt.qos, 1);
        assert_eq!(config.mqtt.keepalive, Duration::from_secs(60));
        assert_eq!(config.mqtt.max_packet_size, 1024 * 1024);
        assert_eq!(config.mqtt.reconnect_max_delay, Duration::from_secs(60));
        assert!(!config.mqtt.clean_session);
        assert_eq!(config.state.dir, PathBuf::from("/var/lib/flupd"));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(config.lufthansa.renew_before, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(config.sinks.len(), 1);
        assert_eq!(config.sinks[0].name, "stdout");
        assert_eq!(config.lufthansa.limits, CallLimits::default());
        assert_eq!(config.enrich, EnrichConfig::default());
        assert!(!config.enrich.enabled);
    }

    #[test]
    fn config_reads_enrich_and_limits() {
        let toml = format!(
            "{MINIMAL}\n[enrich]\nenabled = true\nmax_wait = \"500ms\"\nmin_interval = \"2m\"\nttl_final = \"1day\"\nmax_flights = 10\nkeep_days = 0\n"
        )
        .replace("client_prefix = \"acme\"", "client_prefix = \"acme\"\nmax_calls_per_hour = 900\nrate_limit_pause = \"30m\"");
        let config = load_str(&toml, &Env::default()).unwrap().config;
        assert!(config.enrich.enabled);
        assert_eq!(config.enrich.max_wait, Duration::from_millis(500));
        assert_eq!(config.enrich.min_interval, Duration::from_secs(120));
        assert_eq!(config.enrich.ttl_final, Duration::from_secs(86_400));
        assert_eq!(config.enrich.ttl_near, EnrichConfig::default().ttl_near);
        assert_eq!(config.enrich.max_flights, 10);
        assert_eq!(config.enrich.keep_days, 0);
        assert_eq!(config.lufthansa.limits.max_calls_per_hour, 900);
        assert_eq!(config.lufthansa.limits.max_calls_per_second, 1);
        assert_eq!(config.lufthansa.limits.rate_limit_pause, Duration::from_secs(1800));
    }

    #[test]
    fn config_reports_enrich_problems_at_once() {
        let toml = format!(
            "{MINIMAL}\n[enrich]\nenabled = \"yes please\"\nmax_wait = \"0s\"\nttl_far = \"soon\"\nmax_flights = 0\ncache = true\n"
        )
        .replace("client_prefix = \"acme\"", "client_prefix = \"acme\"\nmax_calls_per_second = 0\nrate_limit_pause = \"0s\"");
        let found = problems(&toml, &Env::default());
        let expect = [
            "enrich.cache: unknown key",
            "enrich.enabled: invalid value \"yes please\"",
            "enrich.max_wait: invalid value 0s",
            "enrich.ttl_far: invalid duration \"soon\"",
            "enrich.max_flights: invalid value 0",
            "lufthansa.max_calls_per_second: invalid value 0",
            "lufthansa.rate_limit_pause: invalid value",
        ];
        for expected in expect {
            assert!(found.iter().any(|problem| problem.starts_with(expected)), "missing {expected:?} in {found:#?}");
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }

    #[test]
    fn config_warns_about_limits_above_reported() {
        let toml = MINIMAL.replace("client_prefix = \"acme\"", "client_prefix = \"acme\"\nmax_calls_per_second = 10");
        let loaded = load_str(&toml, &Env::default()).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(loaded.warnings[0].key, "lufthansa.max_calls_per_second");
    }

    #[test]
    fn config_reports_every_problem_at_once() {
        let toml = r#"
            log_format = "xml"
            color = true
            [lufthansa]
            client_id = "key"
            client_prefix = "acme"
            api_base = "ftp://example"
            [mqtt]
            topics = ["prd/#/LH", "prd/FlightUpdate/LH+"]
            qos = 2
            keepalive = "60 parsecs"
            [state]
            dir = "relative/dir"
            [[sinks]]
            type = "carrier-pigeon"
        "#;
        let found = problems(toml, &Env::default());
        let expect = [
            "log_format: invalid value \"xml\"",
            "color: unknown key",
            "lufthansa.client_secret: missing",
            "lufthansa.api_base: invalid URL \"ftp://example\"",
            "mqtt.topics[0]: invalid topic filter \"prd/#/LH\"",
            "mqtt.topics[1]: invalid topic filter \"prd/FlightUpdate/LH+\"",
            "mqtt.qos: invalid value 2",
            "mqtt.keepalive: invalid duration \"60 parsecs\"",
            "state.dir: invalid path \"relative/dir\"",
            "sinks[0].type: unknown sink type \"carrier-pigeon\"",
        ];
        for expected in expect {
            assert!(found.iter().any(|problem| problem.starts_with(expected)), "missing {expected:?} in {found:#?}");
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }

    #[test]
    fn config_rejects_unknown_keys_in_sections() {
        let toml = MINIMAL.replace("[mqtt]", "[mqtt]\nkeep_alive = \"30s\"");
        let found = problems(&toml, &Env::default());
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("mqtt.keep_alive: unknown key"), "{found:?}");
    }

    #[test]
    fn config_environment_overrides_file() {
        let env = env(&[
            ("FLUPD_MQTT__KEEPALIVE", "30s"),
            ("FLUPD_MQTT__QOS", "0"),
            ("FLUPD_MQTT__TOPICS", "prd/FlightUpdate/LH/+/2026-07-22,prd/FlightUpdate/LX/#"),
            ("FLUPD_LUFTHANSA__CLIENT_ID", "007"),
            ("FLUPD_LOG_FORMAT", "json"),
        ]);
        let config = load_str(MINIMAL, &env).unwrap().config;
        assert_eq!(config.mqtt.keepalive, Duration::from_secs(30));
        assert_eq!(config.mqtt.qos, 0);
        assert_eq!(config.mqtt.topics.len(), 2);
        assert_eq!(config.mqtt.topics[1].as_str(), "prd/FlightUpdate/LX/#");
        assert_eq!(config.lufthansa.client_id, "007", "ids must not be parsed as numbers");
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn config_path_variable_is_no_override() {
        let loaded = load_str(MINIMAL, &env(&[("FLUPD_CONFIG", "/etc/flupd/other.toml")]));
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }

    #[test]
    fn config_secret_precedence() {
        let toml = MINIMAL.replace("client_secret = \"s3cret\"", "");
        let from_env = load_str(&toml, &env(&[("FLUPD_CLIENT_SECRET", "e")])).unwrap().config;
        assert_eq!(from_env.lufthansa.client_secret, SecretSource::Environment(Secret::new("e")));

        let systemd =
            load_str(&toml, &env(&[("CREDENTIALS_DIRECTORY", "/run/credentials/flupd.service")])).unwrap().config;
        assert_eq!(
            systemd.lufthansa.client_secret,
            SecretSource::SystemdCredential(PathBuf::from("/run/credentials/flupd.service/client_secret"))
        );

        let with_file = toml.replace("[lufthansa]", "[lufthansa]\nclient_secret_file = \"/etc/flupd/secret\"");
        let from_file = load_str(&with_file, &env(&[("CREDENTIALS_DIRECTORY", "/run/x")])).unwrap().config;
        assert_eq!(from_file.lufthansa.client_secret, SecretSource::File(PathBuf::from("/etc/flupd/secret")));
    }

    #[test]
    fn config_secret_never_in_debug_output() {
        let config = load_str(MINIMAL, &Env::default()).unwrap().config;
        assert!(!format!("{config:?}").contains("s3cret"));
        let env = env(&[("FLUPD_CLIENT_SECRET", "envsecret")]);
        assert!(!format!("{env:?}").contains("envsecret"));
    }

    #[test]
    fn config_secret_of_wrong_type_not_shown() {
        let toml = MINIMAL.replace("client_secret = \"s3cret\"", "client_secret = [\"s3cret\"]");
        let problems = problems(&toml, &Env::default());
        assert_eq!(
            problems,
            ["lufthansa.client_secret: invalid value (not shown, because it may be the secret): expected a string"]
        );
    }

    #[test]
    fn config_state_dir_from_systemd() {
        let config = load_str(MINIMAL, &env(&[("STATE_DIRECTORY", "/var/lib/flupd-a:/var/lib/other")])).unwrap().config;
        assert_eq!(config.state.dir, PathBuf::from("/var/lib/flupd-a"));
    }

    #[test]
    fn config_warns_about_non_flight_topics() {
        let toml = MINIMAL.replace("prd/FlightUpdate/LH/#", "tst/FlightUpdate/LH/#");
        let loaded = load_str(&toml, &Env::default()).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(loaded.warnings[0].key, "mqtt.topics[0]");
    }

    #[test]
    fn config_health_off_by_default() {
        let config = load_str(MINIMAL, &Env::default()).unwrap().config;
        assert_eq!(config.health.listen, None);
        assert_eq!(config.health.sink_stuck_after, Duration::from_secs(300));
    }

    #[test]
    fn config_health_listen_forms() {
        let cases = [
            ("9188", "127.0.0.1:9188"),
            (":9200", "127.0.0.1:9200"),
            ("0.0.0.0:9188", "0.0.0.0:9188"),
            ("[::1]:9188", "[::1]:9188"),
        ];
        for (written, expected) in cases {
            let toml = format!("{MINIMAL}\n[health]\nlisten = \"{written}\"\n");
            let loaded = load_str(&toml, &Env::default()).unwrap();
            assert_eq!(loaded.config.health.listen.unwrap().to_string(), expected, "{written}");
        }
        let toml = format!("{MINIMAL}\n[health]\nlisten = \"0.0.0.0:9188\"\n");
        let loaded = load_str(&toml, &Env::default()).unwrap();
        assert!(loaded.warnings.iter().any(|warning| warning.key == "health.listen"), "{:?}", loaded.warnings);

        let from_env = load_str(MINIMAL, &env(&[("FLUPD_HEALTH__LISTEN", "127.0.0.1:9300")])).unwrap().config;
        assert_eq!(from_env.health.listen.unwrap().to_string(), "127.0.0.1:9300");
    }

    #[test]
    fn config_health_reports_every_problem() {
        let toml = format!("{MINIMAL}\n[health]\nlisten = \"localhost:http\"\nsink_stuck_after = \"0s\"\nport = 1\n");
        let found = problems(&toml, &Env::default());
        let expect = [
            "health.port: unknown key",
            "health.listen: invalid address \"localhost:http\"",
            "health.sink_stuck_after: invalid value",
        ];
        for expected in expect {
            assert!(found.iter().any(|problem| problem.starts_with(expected)), "missing {expected:?} in {found:#?}");
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }

    #[test]
    fn config_requires_sinks() {
        let toml = MINIMAL.replace("[[sinks]]\n        type = \"stdout\"", "");
        let found = problems(&toml, &Env::default());
        assert!(found.iter().any(|problem| problem.starts_with("sinks: missing")), "{found:?}");
    }

    #[test]
    fn config_names_duplicate_sinks() {
        let toml = format!("{MINIMAL}\n[[sinks]]\ntype = \"stdout\"\nformat = \"json\"\n");
        let config = load_str(&toml, &Env::default()).unwrap().config;
        assert_eq!(config.sinks[0].name, "stdout");
        assert_eq!(config.sinks[1].name, "stdout-1");
    }

    #[test]
    fn config_rejects_unknown_log_level_words() {
        let found = problems(&format!("log_level = \"verbose\"\n{MINIMAL}"), &Env::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("log_level: invalid filter \"verbose\""), "{found:?}");
        for valid in ["debug", "info,flupd=trace", "WARN", "rumqttc=off,info"] {
            let toml = format!("log_level = \"{valid}\"\n{MINIMAL}");
            assert!(load_str(&toml, &Env::default()).is_ok(), "{valid} rejected");
        }
    }

    #[test]
    fn config_rejects_renew_before_near_jwt_lifetime() {
        let toml = MINIMAL.replace("client_prefix = \"acme\"", "client_prefix = \"acme\"\nrenew_before = \"800days\"");
        let found = problems(&toml, &Env::default());
        assert!(found.iter().any(|problem| problem.starts_with("lufthansa.renew_before: invalid value")), "{found:?}");
    }

    #[test]
    fn config_rejects_relative_and_shared_file_paths() {
        let toml = format!(
            "{MINIMAL}\n[[sinks]]\ntype = \"file\"\npath = \"events.jsonl\"\n[[sinks]]\ntype = \"file\"\npath = \"/tmp/a.jsonl\"\n[[sinks]]\ntype = \"file\"\npath = \"/tmp/a.jsonl\"\n"
        );
        let found = problems(&toml, &Env::default());
        assert!(
            found.iter().any(|problem| problem.starts_with("sinks[1].path: invalid path \"events.jsonl\"")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|problem| problem.starts_with("sinks[3].path: /tmp/a.jsonl is the path of another file sink")),
            "{found:?}"
        );
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn config_reports_every_bad_sink_key() {
        let toml = format!(
            "{MINIMAL}\n[[sinks]]\ntype = \"file\"\npath = \"/tmp/x.jsonl\"\nkeep = \"many\"\nmax_size = \"100MB\"\nbogus = 1\n"
        );
        let found = problems(&toml, &Env::default());
        for key in ["sinks[1].keep:", "sinks[1].max_size:", "sinks[1].bogus: unknown key"] {
            assert!(found.iter().any(|problem| problem.starts_with(key)), "{key} missing in {found:#?}");
        }
        assert_eq!(found.len(), 3, "{found:#?}");
    }

    #[test]
    fn config_checks_sink_values_despite_type_errors() {
        let toml = format!(
            "{MINIMAL}\n[[sinks]]\ntype = \"file\"\npath = \"/tmp/x.jsonl\"\nmax_size = 0\nkeep = -1\nflush = \"sometimes\"\n"
        );
        let found = problems(&toml, &Env::default());
        for key in ["sinks[1].max_size: invalid value 0", "sinks[1].keep:", "sinks[1].flush:"] {
            assert!(found.iter().any(|problem| problem.starts_with(key)), "{key} missing in {found:#?}");
        }
        assert_eq!(found.len(), 3, "{found:#?}");
    }

    #[test]
    fn config_hides_webhook_secrets_of_wrong_type() {
        let toml = format!(
            "{MINIMAL}\n[[sinks]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nsigning_key = 424242\n\
             headers = {{ Authorization = [\"Bearer hidden-token\"] }}\n"
        );
        let found = problems(&toml, &Env::default());
        assert_eq!(found.len(), 2, "{found:#?}");
        for problem in &found {
            assert!(problem.contains("not shown"), "{problem}");
            assert!(!problem.contains("424242"), "{problem}");
            assert!(!problem.contains("hidden-token"), "{problem}");
        }
    }

    #[test]
    fn config_names_the_variable_behind_a_bad_value() {
        let found = problems(MINIMAL, &env(&[("FLUPD_MQTT__PORT", "x"), ("FLUPD_FOO", "1")]));
        assert!(
            found.iter().any(|problem| problem.starts_with("mqtt.port: invalid value \"x\"")
                && problem.ends_with("(set by FLUPD_MQTT__PORT)")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|problem| problem.starts_with("foo: unknown key") && problem.ends_with("(set by FLUPD_FOO)")),
            "{found:#?}"
        );
    }

    #[test]
    fn config_names_the_variables_of_an_unknown_section() {
        let found = problems(MINIMAL, &env(&[("FLUPD_BOGUS__X", "1")]));
        assert!(
            found.iter().any(
                |problem| problem.starts_with("bogus: unknown key") && problem.ends_with("(set by FLUPD_BOGUS__X)")
            ),
            "{found:#?}"
        );
    }
}
