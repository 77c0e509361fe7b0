//! How every PostgreSQL connection of the engine is made (the source, the seeder, the metadata
//! store): the URL's `sslmode` is honoured, and nothing goes in clear text to another machine
//! unless the URL says `sslmode=disable`. It knows nothing of what is read or written over the
//! connection.
//!
//! libpq's modes map onto tokio-postgres's, which knows `disable`, `prefer` and `require` only:
//! `verify-ca` and `verify-full` connect as `require`. TLS always verifies the server's certificate
//! and host name, against the system's roots and the file `sslrootcert` names (stricter than
//! libpq's `require`, which encrypts without checking whom to).

use std::net::IpAddr;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{SourceError, redact};

/// A URL's connection settings and the TLS connector to make its connections with.
pub fn connect_config(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), SourceError> {
    let (config, root_cert) = settings(url)?;
    let tls = connector(root_cert.as_deref()).map_err(|reason| SourceError::BadUrl { url: redact(url), reason })?;
    Ok((config, tls))
}

/// A URL's connection settings under the rules above, and the root certificate file it names:
/// what checking a configuration needs, without reading any certificate.
pub fn settings(url: &str) -> Result<(tokio_postgres::Config, Option<String>), SourceError> {
    let bad = |reason: String| SourceError::BadUrl { url: redact(url), reason };
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let mut mode: Option<String> = None;
    let mut root_cert: Option<String> = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" => mode = Some(value.into_owned()),
            "sslrootcert" => root_cert = Some(value.into_owned()),
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut config: tokio_postgres::Config =
        parsed.as_str().parse().map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
    let local = config.get_hosts().iter().all(is_loopback);
    let ssl_mode = match mode.as_deref() {
        Some("disable") => SslMode::Disable,
        Some("require" | "verify-ca" | "verify-full") => SslMode::Require,
        Some("prefer" | "allow") | None if local => SslMode::Prefer,
        Some("prefer" | "allow") | None => {
            return Err(bad("the server is not on this machine: connect with TLS (sslmode=require or verify-full), \
                 or say sslmode=disable to send the password and data in clear text"
                .into()));
        }
        Some(other) => {
            return Err(bad(format!(
                "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    config.ssl_mode(ssl_mode);
    Ok((config, root_cert))
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Tcp(name) => name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        Host::Unix(_) => true,
    }
}

/// A connector that trusts the system's roots and the certificates in `root_cert` (PEM).
fn connector(root_cert: Option<&str>) -> Result<MakeRustlsConnect, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped; the ones that load still count.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = root_cert {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
            roots.add(cert).map_err(|e| format!("sslrootcert {path}: {e}"))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> Result<SslMode, String> {
        connect_config(url).map(|(config, _)| config.get_ssl_mode()).map_err(|e| e.to_string())
    }

    #[test]
    fn clear_text_goes_to_this_machine_only_unless_the_url_says_so() {
        assert_eq!(mode("postgres://u@127.0.0.1/db"), Ok(SslMode::Prefer));
        assert_eq!(mode("postgres://u@localhost/db"), Ok(SslMode::Prefer));
        assert_eq!(mode("postgres://u@[::1]:5433/db"), Ok(SslMode::Prefer));
        let refused = mode("postgres://u:secret@db.example.org/db").unwrap_err();
        assert!(refused.contains("sslmode") && !refused.contains("secret"), "{refused}");
        assert!(mode("postgres://u@db.example.org/db?sslmode=prefer").is_err());
        assert_eq!(mode("postgres://u@db.example.org/db?sslmode=disable"), Ok(SslMode::Disable));
        assert_eq!(mode("postgres://u@db.example.org/db?sslmode=require"), Ok(SslMode::Require));
        assert_eq!(mode("postgres://u@db.example.org/db?sslmode=verify-full&application_name=x"), Ok(SslMode::Require));
        assert!(mode("postgres://u@db.example.org/db?sslmode=sometimes").is_err());
        assert!(mode("postgres://u@db.example.org/db?sslmode=require&sslrootcert=/no/such.pem").is_err());
    }
}
