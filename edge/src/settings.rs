//! How a port treats its connections, and the server's TLS files.
//!
//! The defaults are what a production operator would expect of a gRPC server behind no proxy:
//!
//! | setting | default | why |
//! |---|---|---|
//! | `keepalive_interval` | 60 s | a ping on a quiet connection finds a dead peer (and keeps NAT entries alive) |
//! | `keepalive_timeout` | 20 s | an unanswered ping drops the connection (gRPC's usual value) |
//! | `handshake_timeout` | 10 s | a socket must start its TLS handshake or HTTP/2 preface by then |
//! | `idle_timeout` | 5 min | a connection with no call in flight that long is closed; clients reconnect on their next call |
//! | `max_concurrent_streams` | 1,024 | calls in flight on one connection; more wait for a slot (HTTP/2 advertises it) |
//! | `max_connections` | 10,000 | per process, and never above three quarters of the descriptor limit |

use std::{path::PathBuf, time::Duration};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::port::EdgeError;

/// Default interval of HTTP/2 keepalive pings.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// Default time a keepalive ping may go unanswered before the connection is dropped.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time a new socket has to send its first byte.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may stay open with no call in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default cap on calls in flight on one connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1_024;
/// Default cap on open connections of one process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// How a port serves its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Interval of HTTP/2 keepalive pings the server sends.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// How long a new socket may stay silent before it is closed (covers the TLS handshake).
    pub handshake_timeout: Duration,
    /// How long a connection may stay open with no call in flight.
    pub idle_timeout: Duration,
    /// Calls in flight on one connection at most.
    pub max_concurrent_streams: u32,
    /// Open connections of the process at most (see [`crate::ConnectionLimit`]).
    pub max_connections: usize,
    /// TLS, or plaintext when none.
    pub tls: Option<ServerTls>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tls: None,
        }
    }
}

impl Settings {
    /// Checks that the settings can run together, naming the setting that cannot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("keepalive-interval", self.keepalive_interval),
            ("keepalive-timeout", self.keepalive_timeout),
            ("handshake-timeout", self.handshake_timeout),
            ("idle-timeout", self.idle_timeout),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be longer than zero"));
        }
        if self.max_concurrent_streams == 0 {
            return Err("max-concurrent-streams must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("max-connections must be at least 1".into());
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

/// The files of a TLS server: PEM certificate chain and key, and optionally the PEM bundle of
/// CAs that client certificates must chain to (then every client must present one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// Returns the TLS files given as optional settings (`tls-cert`, `tls-key`,
    /// `tls-client-ca`): none when no certificate is set, an error when only half is.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, String> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_none() => Ok(None),
            (None, None) => Err("tls-client-ca needs tls-cert and tls-key".into()),
            (Some(_), None) => Err("tls-cert needs tls-key".into()),
            (None, Some(_)) => Err("tls-key needs tls-cert".into()),
        }
    }

    fn validate(&self) -> Result<(), String> {
        for path in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                return Err(format!("TLS file {} does not exist", path.display()));
            }
        }
        Ok(())
    }

    /// Reads the files into tonic's server TLS configuration.
    pub fn load(&self, handshake_timeout: Duration) -> Result<ServerTlsConfig, EdgeError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| EdgeError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        let identity = Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(handshake_timeout);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_validate_and_bad_values_are_named() {
        Settings::default().validate().expect("defaults are valid");
        let err = Settings {
            idle_timeout: Duration::ZERO,
            ..Settings::default()
        }
        .validate()
        .expect_err("zero idle timeout");
        assert!(err.contains("idle-timeout"), "{err}");
        let err = Settings {
            tls: Some(ServerTls {
                cert: "/nonexistent/cert.pem".into(),
                key: "/nonexistent/key.pem".into(),
                client_ca: None,
            }),
            ..Settings::default()
        }
        .validate()
        .expect_err("missing files");
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn tls_needs_both_halves() {
        assert_eq!(ServerTls::from_parts(None, None, None), Ok(None));
        let err = ServerTls::from_parts(Some("c".into()), None, None).expect_err("no key");
        assert!(err.contains("tls-key"), "{err}");
        let err = ServerTls::from_parts(None, None, Some("ca".into())).expect_err("ca alone");
        assert!(err.contains("tls-client-ca"), "{err}");
        let tls = ServerTls::from_parts(Some("c".into()), Some("k".into()), Some("ca".into()))
            .expect("complete")
            .expect("some");
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca")));
    }
}
