//! TLS for the HTTP server and the PostgreSQL wire endpoint, when `server.tls_cert` and
//! `server.tls_key` name a PEM certificate chain and its private key. rustls with the aws-lc-rs
//! provider; TLS 1.2 and 1.3 with rustls' safe defaults. Knows nothing of routes or queries.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path} (server.{key}): {reason}")]
    File { path: String, key: &'static str, reason: String },
    #[error("server.tls_cert and server.tls_key do not make a usable TLS setup: {0}")]
    Setup(String),
}

/// The two endpoints' TLS settings, or `None` when TLS is not configured. HTTP offers HTTP/2 and
/// HTTP/1.1 by ALPN; the wire endpoint offers `postgresql`, as PostgreSQL 17's clients expect.
pub struct Tls {
    pub http: Arc<ServerConfig>,
    pub pgwire: Arc<ServerConfig>,
}

impl Tls {
    pub fn from_config(config: &Config) -> Result<Option<Tls>, TlsError> {
        let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) else { return Ok(None) };
        let (cert, key) = (config.resolve(cert), config.resolve(key));
        let file_error = |path: &Path, key: &'static str, reason: String| TlsError::File {
            path: path.display().to_string(),
            key,
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .and_then(|certs| certs.collect())
            .map_err(|e| file_error(&cert, "tls_cert", e.to_string()))?;
        if chain.is_empty() {
            return Err(file_error(&cert, "tls_cert", "no PEM certificate in the file".into()));
        }
        let private = PrivateKeyDer::from_pem_file(&key).map_err(|e| file_error(&key, "tls_key", e.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let base = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let mut http = base.clone();
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut pgwire = base;
        pgwire.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(Tls { http: Arc::new(http), pgwire: Arc::new(pgwire) }))
    }
}
