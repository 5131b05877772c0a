//! How every client of the workspace reaches a port, plaintext or TLS, by one rule:
//!
//! - `https://HOST:PORT` uses TLS; `http://HOST:PORT` is plaintext (and refuses TLS files);
//! - a bare `HOST:PORT` uses TLS when any TLS file is given (`--tls-ca`, `--tls-cert`), and
//!   is plaintext otherwise.
//!
//! Under TLS the server's certificate must chain to `--tls-ca` when given, else to the
//! system's roots, and name the host of the address. `--tls-cert` and `--tls-key` (both or
//! neither) present a client certificate, for servers that require one.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The TLS files of a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM bundle of the CAs to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, presented to servers that ask for one.
    pub cert: Option<PathBuf>,
    /// PEM key of `cert`.
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Returns whether any TLS file is given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Why a client could not be set up. Each variant states what was wrong or being done, and
/// holds a cause from elsewhere as its source.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("read TLS file {}", path.display())]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--tls-cert and --tls-key go together")]
    CertWithoutKey,
    #[error("load the TLS files")]
    Tls(#[source] tonic::transport::Error),
}

/// Returns the endpoint of `addr` (`HOST:PORT`, `http://...` or `https://...`), with TLS by the
/// rule of this module.
pub fn endpoint(addr: &str, tls: &ClientTls) -> Result<Endpoint, ClientError> {
    let address_err = |reason: String| ClientError::Address {
        addr: addr.to_owned(),
        reason,
    };
    let (uri, secure) = if let Some(rest) = addr.strip_prefix("https://") {
        (format!("https://{rest}"), true)
    } else if addr.starts_with("http://") {
        if tls.is_set() {
            return Err(address_err(
                "http:// is plaintext; use https:// (or HOST:PORT) with TLS files".into(),
            ));
        }
        (addr.to_owned(), false)
    } else if addr.contains("://") {
        return Err(address_err(
            "expected HOST:PORT, http:// or https://".into(),
        ));
    } else if tls.is_set() {
        (format!("https://{addr}"), true)
    } else {
        (format!("http://{addr}"), false)
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| address_err(e.to_string()))?;
    if !secure {
        return Ok(endpoint);
    }
    endpoint
        .tls_config(tls_config(tls)?)
        .map_err(ClientError::Tls)
}

fn tls_config(tls: &ClientTls) -> Result<ClientTlsConfig, ClientError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| ClientError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_native_roots(),
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(ClientError::CertWithoutKey);
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_and_the_files_decide() {
        let plain = ClientTls::default();
        let files = ClientTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..ClientTls::default()
        };
        let uri = |e: Endpoint| e.uri().to_string();
        assert_eq!(
            uri(endpoint("127.0.0.1:7915", &plain).expect("plain")),
            "http://127.0.0.1:7915/"
        );
        let err = endpoint("http://h:1", &files).expect_err("http with TLS files");
        assert!(err.to_string().contains("https://"), "{err}");
        // TLS is chosen (the CA file is read, and is missing) for a bare address with files.
        let err = endpoint("h:1", &files).expect_err("missing CA");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = endpoint(
            "h:1",
            &ClientTls {
                cert: Some("c".into()),
                ..ClientTls::default()
            },
        )
        .expect_err("cert without key");
        assert!(err.to_string().contains("--tls-key"), "{err}");
        assert!(endpoint("ftp://h:1", &plain).is_err());
    }
}
