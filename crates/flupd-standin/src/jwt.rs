//! RS256 signing of the JSON Web Tokens that the credentials endpoint issues.

use anyhow::{Context, Result, anyhow};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

/// The claims of an issued token. The service sets `created` where other issuers set `iat`,
/// and sets neither `iat` nor `nbf`.
#[derive(Serialize)]
pub(crate) struct Claims<'a> {
    pub exp: i64,
    pub created: i64,
    #[serde(rename = "clientID")]
    pub client_id: &'a str,
    #[serde(rename = "authGroups")]
    pub auth_groups: &'a str,
}

/// An RSA key generated at start that signs tokens with RS256 (RSASSA-PKCS1-v1_5 with SHA-256).
pub(crate) struct JwtSigner {
    key: KeyPair,
}

impl JwtSigner {
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| anyhow!("failed to generate the RSA key for signing tokens"))?;
        Ok(Self { key })
    }

    /// Returns the public key as a DER `RSAPublicKey` (PKCS#1), the form that
    /// `aws_lc_rs::signature::UnparsedPublicKey` expects for RSA.
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Encodes and signs `claims` as a compact JWT.
    pub fn sign(&self, claims: &Claims<'_>) -> Result<String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload_json = serde_json::to_vec(claims).context("failed to serialize token claims")?;
        let payload = URL_SAFE_NO_PAD.encode(payload_json);
        let signing_input = format!("{header}.{payload}");

        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|_| anyhow!("failed to sign a token for client id {}", claims.client_id))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}
