//! The MQTT credentials and their cache on disk.
//!
//! Every call to the credentials endpoint creates a new client id and costs
//! part of a small rate budget, so credentials are cached in the state
//! directory and reused across restarts until they come close to expiry.
//! The cache is the only file that contains the JWT; it is written atomically
//! with mode 0600.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, LufthansaApi};
use crate::secret::Secret;

/// Name of the cache file inside the state directory.
pub const CACHE_FILE: &str = "credentials.json";

/// MQTT credentials in use.
#[derive(Debug, Clone)]
pub struct MqttCredentials {
    pub client_id: String,
    pub jwt: Secret,
    pub endpoint: String,
    pub fetched_at: DateTime<Utc>,
    /// The JWT's `exp` claim; `None` when the token carries none.
    pub expires_at: Option<DateTime<Utc>>,
}

impl MqttCredentials {
    /// The expiry for logs: RFC 3339, or `unknown` without an `exp` claim.
    pub fn expires_display(&self) -> String {
        self.expires_at.map_or_else(|| "unknown".to_owned(), |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    /// Whether these credentials are past `expires_at - renew_before` at `now`.
    pub fn needs_renewal(&self, now: DateTime<Utc>, renew_before: Duration) -> bool {
        match self.expires_at {
            Some(expires_at) => {
                let renew_before = chrono::Duration::from_std(renew_before).unwrap_or(chrono::Duration::MAX);
                now >= expires_at.checked_sub_signed(renew_before).unwrap_or(DateTime::<Utc>::MIN_UTC)
            }
            None => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid credentials cache: {detail}; delete it to fetch new credentials")]
    InvalidCache { path: PathBuf, detail: String },
    #[error("invalid JWT from the credentials endpoint: {0}")]
    InvalidJwt(String),
}

/// The file format of the cache. Fields are only added.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    /// API base and key the credentials belong to: a cache written for
    /// another account is not reused.
    api_base: String,
    api_key: String,
    client_prefix: String,
    client_id: String,
    jwt: String,
    endpoint: String,
    fetched_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// Source of the credentials in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Fetched,
}

/// Reads, renews and caches MQTT credentials for one API key.
#[derive(Debug)]
pub struct CredentialStore {
    path: PathBuf,
    api: Arc<LufthansaApi>,
    api_base: String,
    api_key: String,
    client_prefix: String,
    renew_before: Duration,
}

impl CredentialStore {
    pub fn new(
        state_dir: &Path,
        api: Arc<LufthansaApi>,
        api_base: String,
        api_key: String,
        client_prefix: String,
        renew_before: Duration,
    ) -> Self {
        Self { path: state_dir.join(CACHE_FILE), api, api_base, api_key, client_prefix, renew_before }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the API client, whose call budget enrichment must share.
    pub fn api(&self) -> &Arc<LufthansaApi> {
        &self.api
    }

    pub fn renew_before(&self) -> Duration {
        self.renew_before
    }

    /// Returns credentials to connect with: the cached ones while they are
    /// valid for this account and not due for renewal, or new ones.
    pub async fn current(&self) -> Result<(MqttCredentials, Origin), CredentialsError> {
        let cached = match self.read_cache() {
            Ok(cached) => cached,
            Err(error @ CredentialsError::InvalidCache { .. }) => {
                tracing::warn!(%error, "ignoring credentials cache");
                None
            }
            Err(error) => return Err(error),
        };

        match cached {
            Some(credentials) if !credentials.needs_renewal(Utc::now(), self.renew_before) => {
                Ok((credentials, Origin::Cache))
            }
            Some(credentials) => match self.renew().await {
                Ok(renewed) => Ok((renewed, Origin::Fetched)),
                // Credentials close to expiry still work until they expire.
                Err(error) if credentials.expires_at.is_some_and(|at| at > Utc::now()) => {
                    tracing::warn!(%error, client_id = %credentials.client_id, expires_at = %credentials.expires_display(), "credentials renewal failed, using cached credentials until they expire");
                    Ok((credentials, Origin::Cache))
                }
                Err(error) => Err(error),
            },
            None => Ok((self.renew().await?, Origin::Fetched)),
        }
    }

    /// Fetches new credentials and caches them.
    pub async fn renew(&self) -> Result<MqttCredentials, CredentialsError> {
        // Every fetch creates a client id and spends rate budget, so make
        // sure the result can be cached before asking for it.
        self.check_writable()?;
        let issued = self.api.issue_mqtt_credentials(&self.client_prefix).await?;
        let expires_at = jwt_expiry(issued.jwt.expose()).map_err(CredentialsError::InvalidJwt)?;
        let credentials = MqttCredentials {
            client_id: issued.client_id,
            jwt: issued.jwt,
            endpoint: issued.endpoint,
            fetched_at: Utc::now(),
            expires_at,
        };
        self.write_cache(&credentials)?;
        crate::metrics::set_credentials_expiry(credentials.expires_at);
        tracing::info!(client_id = %credentials.client_id, expires_at = %credentials.expires_display(), path = %self.path.display(), "credentials cached");
        Ok(credentials)
    }

    /// Reads the cache. Returns `None` when there is none, or when it was
    /// written for another API base, key or client prefix.
    pub fn read_cache(&self) -> Result<Option<MqttCredentials>, CredentialsError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CredentialsError::Io { op: "read", path: self.path.clone(), source }),
        };
        let file: CacheFile = serde_json::from_str(&text)
            .map_err(|error| CredentialsError::InvalidCache { path: self.path.clone(), detail: error.to_string() })?;
        if file.api_base != self.api_base || file.api_key != self.api_key || file.client_prefix != self.client_prefix {
            tracing::info!(path = %self.path.display(), "credentials cache belongs to another account or prefix, fetching new credentials");
            return Ok(None);
        }
        Ok(Some(MqttCredentials {
            client_id: file.client_id,
            jwt: Secret::new(file.jwt),
            endpoint: file.endpoint,
            fetched_at: file.fetched_at,
            expires_at: file.expires_at,
        }))
    }

    /// Checks that the cache's directory exists, or can be created, and
    /// takes new files.
    fn check_writable(&self) -> Result<(), CredentialsError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CredentialsError::Io { op: "create directory", path: dir.to_owned(), source })?;
        }
        let probe = dir.join(format!(".{CACHE_FILE}.{}.probe", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&probe)
            .map_err(|source| CredentialsError::Io { op: "write to state directory", path: dir.to_owned(), source })?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }

    /// Writes the cache atomically: a temporary file with mode 0600 in the
    /// same directory, synced, then renamed over the old one.
    fn write_cache(&self, credentials: &MqttCredentials) -> Result<(), CredentialsError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| CredentialsError::Io { op, path, source }
        };
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("create directory", dir))?;
        }

        let file = CacheFile {
            api_base: self.api_base.clone(),
            api_key: self.api_key.clone(),
            client_prefix: self.client_prefix.clone(),
            client_id: credentials.client_id.clone(),
            jwt: credentials.jwt.expose().to_owned(),
            endpoint: credentials.endpoint.clone(),
            fetched_at: credentials.fetched_at,
            expires_at: credentials.expires_at,
        };
        // Serializing a struct of strings and dates cannot fail.
        let body = serde_json::to_vec_pretty(&file).expect("cache file serializes");

        let temporary = dir.join(format!(".{CACHE_FILE}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io("create", &temporary))?;
        let written = out.write_all(&body).and_then(|()| out.sync_all());
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(CredentialsError::Io { op: "write", path: temporary, source });
        }
        // The mode given at creation is reduced by the umask, never widened,
        // so it is at most 0600; set it again in case the file pre-existed.
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod", &temporary))?;
        std::fs::rename(&temporary, &self.path).map_err(io("rename", &self.path))?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// Reads the `exp` claim of a JWT without verifying its signature: the
/// broker verifies it, and flupd only needs to know when to renew.
pub fn jwt_expiry(jwt: &str) -> Result<Option<DateTime<Utc>>, String> {
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected three dot-separated parts".to_owned());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|error| format!("payload is not base64url: {error}"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|error| format!("payload is not JSON: {error}"))?;
    match claims.get("exp") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(exp) => {
            let seconds = exp
                .as_i64()
                .or_else(|| exp.as_f64().map(|value| value as i64))
                .ok_or_else(|| format!("exp claim is not a number: {exp}"))?;
            DateTime::from_timestamp(seconds, 0).map(Some).ok_or_else(|| format!("exp claim out of range: {seconds}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_with(payload: &str) -> String {
        let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        format!("{}.{}.c2ln", encode(r#"{"alg":"RS256","typ":"JWT"}"#), encode(payload))
    }

    #[test]
    fn jwt_expiry_reads_exp_claim() {
        let jwt = jwt_with(r#"{"exp":1798761600,"created":1735603200,"clientID":"acme_1","authGroups":"a;b"}"#);
        assert_eq!(jwt_expiry(&jwt).unwrap(), DateTime::from_timestamp(1798761600, 0));
        assert_eq!(jwt_expiry(&jwt_with(r#"{"clientID":"x"}"#)).unwrap(), None);
    }

    #[test]
    fn jwt_expiry_rejects_malformed_tokens() {
        assert!(jwt_expiry("not-a-jwt").is_err());
        assert!(jwt_expiry("a.!!!.c").is_err());
        assert!(jwt_expiry(&jwt_with(r#"{"exp":"soon"}"#)).is_err());
    }

    #[test]
    fn credentials_renewal_due_within_margin() {
        let now = Utc::now();
        let credentials = MqttCredentials {
            client_id: "acme_1".into(),
            jwt: Secret::new("x"),
            endpoint: "localhost".into(),
            fetched_at: now,
            expires_at: Some(now + chrono::Duration::days(40)),
        };
        assert!(!credentials.needs_renewal(now, Duration::from_secs(30 * 86400)));
        assert!(credentials.needs_renewal(now, Duration::from_secs(41 * 86400)));
    }
}
