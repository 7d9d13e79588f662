//! TLS settings (feature `tls`): rustls with the ring provider.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::{Error, Result};

/// TLS for connections to memcached servers started with `-Z` (`-o
/// ssl_chain_cert=...,ssl_key=...`). The server's certificate is verified against the
/// configured roots and the node's server name (its host, or
/// `NodeConfig::tls_server_name`), which is also sent as SNI. With a client certificate
/// the client authenticates itself too (mutual TLS, memcached's `ssl_verify_mode` with
/// `ssl_ca_cert`).
///
/// ```no_run
/// # async fn demo() -> memkeep::Result<()> {
/// use memkeep::{Client, TlsConfig};
///
/// let ca = std::fs::read("/etc/memcached/ca.pem").unwrap();
/// let client = Client::builder()
///     .node("cache1.internal:11211")
///     .tls(TlsConfig::new(&ca)?)
///     .build()?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field(
                "client_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl TlsConfig {
    /// Verifies servers against the CA certificates in `roots_pem` (PEM, one or more);
    /// no client certificate.
    pub fn new(roots_pem: &[u8]) -> Result<TlsConfig> {
        let config = builder(roots_pem)?.with_no_client_auth();
        Ok(TlsConfig {
            config: Arc::new(config),
        })
    }

    /// As [`TlsConfig::new`], and presents the client certificate chain `chain_pem` with
    /// its private key `key_pem` (PEM; PKCS#8, PKCS#1 or SEC1) for servers that verify
    /// clients.
    pub fn with_client_certificate(
        roots_pem: &[u8],
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig> {
        let chain = certificates(chain_pem, "client certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| Error::config("tls", format!("client private key: {e}")))?;
        let config = builder(roots_pem)?
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::config("tls", format!("client certificate: {e}")))?;
        Ok(TlsConfig {
            config: Arc::new(config),
        })
    }

    /// Uses a rustls configuration as given (custom verification, session resumption,
    /// protocol versions, ...).
    pub fn from_rustls(config: Arc<ClientConfig>) -> TlsConfig {
        TlsConfig { config }
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }
}

/// A client configuration builder trusting the roots in `roots_pem`.
fn builder(
    roots_pem: &[u8],
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(roots_pem, "root certificates")? {
        roots
            .add(cert)
            .map_err(|e| Error::config("tls", format!("root certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("tls", e.to_string()))?
        .with_root_certificates(roots))
}

/// Every certificate in `pem`; at least one.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::config("tls", format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config(
            "tls",
            format!("{what}: no PEM certificate found"),
        ));
    }
    Ok(certs)
}

/// The name a node's certificate is checked against: `name`, else its host.
pub(crate) fn server_name(name: Option<&str>, host: &str) -> Result<ServerName<'static>> {
    let name = name.unwrap_or(host);
    if name.starts_with('/') {
        return Err(Error::config(
            "tls_server_name",
            format!(
                "node {host}: a UNIX socket node with TLS needs NodeConfig::tls_server_name, \
                 the name its certificate carries"
            ),
        ));
    }
    ServerName::try_from(name.to_string())
        .map_err(|e| Error::config("tls_server_name", format!("{name:?}: {e}")))
}
