//! The throwaway certificate authority and server certificate for the broker, and the rustls
//! client configuration that trusts them.

use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;

/// PEM files for mosquitto and the DER of the CA certificate for rustls.
pub(crate) struct GeneratedPki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// Generates a CA and a server certificate signed by it for `localhost` and 127.0.0.1.
///
/// rustls rejects server certificates without a subject alternative name, so the names go into
/// the SAN extension and not only into the common name.
pub(crate) fn generate_pki() -> Result<GeneratedPki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("failed to create CA parameters")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "flupd-standin test CA");
    ca_params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    ca_params.key_usages.push(KeyUsagePurpose::CrlSign);
    ca_params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    let ca_key = KeyPair::generate().context("failed to generate the CA key")?;
    let ca_cert = ca_params.self_signed(&ca_key).context("failed to self-sign the CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .context("failed to create server certificate parameters")?;
    server_params.distinguished_name.push(DnType::CommonName, "localhost");
    server_params.use_authority_key_identifier_extension = true;
    server_params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    server_params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
    let server_key = KeyPair::generate().context("failed to generate the server key")?;
    let server_cert = server_params.signed_by(&server_key, &issuer).context("failed to sign the server certificate")?;

    Ok(GeneratedPki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// Builds a rustls client configuration that trusts only `ca`.
///
/// The aws-lc-rs provider is passed explicitly so that the configuration does not depend on a
/// process-wide default provider.
pub(crate) fn client_config(ca: &CertificateDer<'static>) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).context("failed to add the generated CA to the root store")?;
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .context("failed to select TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
