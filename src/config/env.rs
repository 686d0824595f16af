//! The process environment, read in this one place.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::secret::Secret;

/// Prefix of the variables that override configuration keys, as in
/// `FLUPD_MQTT__KEEPALIVE=30s` for `mqtt.keepalive`.
pub const OVERRIDE_PREFIX: &str = "FLUPD_";

/// Variable holding the Lufthansa client secret.
pub const CLIENT_SECRET_VAR: &str = "FLUPD_CLIENT_SECRET";

/// Variable naming the configuration file, read by the command line.
pub const CONFIG_PATH_VAR: &str = "FLUPD_CONFIG";

/// A snapshot of the variables flupd reads. Tests build one from a map
/// instead of changing the process environment.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env::from_map(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
    }

    pub fn from_map(vars: impl IntoIterator<Item = (String, String)>) -> Env {
        Env { vars: vars.into_iter().collect() }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|value| !value.is_empty())
    }

    /// `FLUPD_<SECTION>__<KEY>` variables with the prefix removed, for the
    /// config crate. `FLUPD_CLIENT_SECRET` and `FLUPD_CONFIG` are not
    /// configuration keys and are left out.
    pub fn overrides(&self) -> config::Map<String, String> {
        self.vars
            .iter()
            .filter(|(name, _)| {
                name.starts_with(OVERRIDE_PREFIX)
                    && name.as_str() != CLIENT_SECRET_VAR
                    && name.as_str() != CONFIG_PATH_VAR
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    pub fn client_secret(&self) -> Option<Secret> {
        self.get(CLIENT_SECRET_VAR).map(Secret::new)
    }

    /// systemd's `$CREDENTIALS_DIRECTORY`, set when the unit uses `LoadCredential=`.
    pub fn credentials_directory(&self) -> Option<PathBuf> {
        self.get("CREDENTIALS_DIRECTORY").map(PathBuf::from)
    }

    /// systemd's `$STATE_DIRECTORY`, set when the unit uses `StateDirectory=`.
    /// It may list several directories separated by `:`; the first is used.
    pub fn state_directory(&self) -> Option<PathBuf> {
        self.get("STATE_DIRECTORY").and_then(|dirs| dirs.split(':').next()).map(PathBuf::from)
    }

    /// Whether standard error is connected to the systemd journal.
    pub fn journal_stream(&self) -> bool {
        self.get("JOURNAL_STREAM").is_some()
    }

    /// systemd's `$JOURNAL_STREAM`: `DEVICE:INODE` of the journal stream the
    /// service's standard error was connected to at start.
    pub fn journal_stream_id(&self) -> Option<&str> {
        self.get("JOURNAL_STREAM")
    }

    pub fn no_color(&self) -> bool {
        self.get("NO_COLOR").is_some()
    }
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be secrets; show names only.
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Env").field("names", &names).finish()
    }
}
