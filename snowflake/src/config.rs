//! The daemon's configuration: a TOML file (kebab-case keys, human durations), overridden by
//! `SNOWFLAKE_*` environment variables and flags in the binary, then [`Config::validate`]d.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    id::{MAX_DATACENTER_ID, MAX_WORKER_ID},
    lease::LeaseSettings,
    service::DEFAULT_MAX_BATCH,
    worker::DEFAULT_CLOCK_TOLERANCE_MS,
};

/// The largest batch a daemon may be configured to hand out in one call.
pub const MAX_BATCH_LIMIT: u32 = 1_000_000;

/// Everything `snowflake serve` can be told.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Address of the gRPC service.
    pub listen: SocketAddr,
    /// Address of the HTTP endpoint serving `/metrics`; `"off"` in the file serves none.
    #[serde(deserialize_with = "daemon::metrics::deserialize_listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// Datacenter id, 0 to 31.
    pub datacenter_id: u8,
    /// Worker id, 0 to 31: static, or the one to lease when `lease-url` is set.
    pub worker_id: Option<u8>,
    /// Lease the worker id from this database (`mysql://...` or `sqlite://PATH`).
    pub lease_url: Option<String>,
    /// How long a lease lasts without renewal; ids stop within this time when the lease
    /// database is gone.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long start-up waits for a leased worker id held by another daemon (default: twice
    /// the lease time, enough for a crashed daemon's lease to run out).
    #[serde(with = "humantime_serde")]
    pub lease_acquire_timeout: Option<Duration>,
    /// A backward clock step up to this long is waited out; a longer one refuses ids.
    #[serde(with = "humantime_serde")]
    pub clock_tolerance: Duration,
    /// The largest `GetIds` batch.
    pub max_batch: u32,
    /// Async worker threads; none for one per core.
    pub threads: Option<usize>,
    /// How log lines are written: `text` or `json`.
    pub log_format: daemon::logs::LogFormat,
    // Transport of the gRPC listener (see the `edge` crate).
    /// PEM certificate chain; with `tls-key` the daemon serves TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls-cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates must chain to; set, every client needs one.
    pub tls_client_ca: Option<PathBuf>,
    /// A connection with no call in flight this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A new connection that sends no byte this long is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings to clients.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// An unanswered keepalive ping drops its connection after this long.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Open connections at most (also kept below three quarters of the descriptor limit).
    pub max_connections: usize,
    /// Calls in flight on one connection at most.
    pub max_concurrent_streams: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7609)),
            metrics_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9990))),
            datacenter_id: 0,
            worker_id: None,
            lease_url: None,
            lease_ttl: Duration::from_secs(10),
            lease_acquire_timeout: None,
            clock_tolerance: Duration::from_millis(DEFAULT_CLOCK_TOLERANCE_MS),
            max_batch: DEFAULT_MAX_BATCH,
            threads: None,
            log_format: daemon::logs::LogFormat::Text,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            idle_timeout: edge::settings::DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: edge::settings::DEFAULT_HANDSHAKE_TIMEOUT,
            keepalive_interval: edge::settings::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: edge::settings::DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections: edge::settings::DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: edge::settings::DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// A configuration that cannot run, with the setting named. It ends the daemon, whose exit
/// message prints the cause after the file's name.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parse config {path}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Checks that the settings can run together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.datacenter_id > MAX_DATACENTER_ID {
            return invalid(format!(
                "datacenter-id {} is over the maximum {MAX_DATACENTER_ID}",
                self.datacenter_id
            ));
        }
        if let Some(worker_id) = self.worker_id.filter(|&w| w > MAX_WORKER_ID) {
            return invalid(format!(
                "worker-id {worker_id} is over the maximum {MAX_WORKER_ID}"
            ));
        }
        if self.worker_id.is_none() && self.lease_url.is_none() {
            return invalid(
                "set worker-id for a static worker id, or lease-url to lease one".into(),
            );
        }
        if let Some(url) = &self.lease_url {
            db::url::check(url)
                .map_err(|reason| ConfigError::Invalid(format!("lease-url: {reason}")))?;
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return invalid(format!(
                "lease-ttl {:?} is under the minimum 300ms",
                self.lease_ttl
            ));
        }
        if self.clock_tolerance > Duration::from_secs(1) {
            return invalid(format!(
                "clock-tolerance {:?} is over the maximum 1s: longer waits stall every caller",
                self.clock_tolerance
            ));
        }
        if !(1..=MAX_BATCH_LIMIT).contains(&self.max_batch) {
            return invalid(format!(
                "max-batch {} is out of range: expected 1 to {MAX_BATCH_LIMIT}",
                self.max_batch
            ));
        }
        if self.threads == Some(0) {
            return invalid("threads must be at least 1 (leave it out for one per core)".into());
        }
        self.edge_settings()?;
        Ok(())
    }

    /// Returns the transport settings of the gRPC listener.
    pub fn edge_settings(&self) -> Result<edge::Settings, ConfigError> {
        let tls = edge::ServerTls::from_parts(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_client_ca.clone(),
        )
        .map_err(ConfigError::Invalid)?;
        let settings = edge::Settings {
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            max_connections: self.max_connections,
            tls,
        };
        settings.validate().map_err(ConfigError::Invalid)?;
        Ok(settings)
    }

    /// Returns the lease settings these options describe.
    pub fn lease_settings(&self) -> LeaseSettings {
        LeaseSettings {
            datacenter_id: self.datacenter_id,
            worker_id: self.worker_id,
            ttl: self.lease_ttl,
            acquire_timeout: self.lease_acquire_timeout.unwrap_or(self.lease_ttl * 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("snowflake.example.toml");
        let config = Config::from_file(&path).expect("example parses");
        config.validate().expect("example is valid");
        assert_eq!(config.lease_ttl, Duration::from_secs(10));
        assert!(config.lease_url.is_some());
    }

    #[test]
    fn bad_settings_are_named() {
        let config = Config {
            worker_id: Some(32),
            ..Config::default()
        };
        let err = config.validate().expect_err("worker id 32 is out of range");
        assert!(err.to_string().contains("worker-id 32"), "{err}");

        let err = Config::default()
            .validate()
            .expect_err("no worker id source");
        assert!(err.to_string().contains("lease-url"), "{err}");

        let err = toml::from_str::<Config>("worker-idd = 3").expect_err("unknown key");
        assert!(err.to_string().contains("worker-idd"), "{err}");

        let config = Config {
            worker_id: Some(1),
            threads: Some(0),
            ..Config::default()
        };
        let err = config.validate().expect_err("no threads");
        assert!(err.to_string().contains("threads"), "{err}");
    }

    #[test]
    fn metrics_can_be_turned_off_and_threads_and_logs_set_in_the_file() {
        let config: Config =
            toml::from_str("metrics-listen = \"off\"\nthreads = 1\nlog-format = \"json\"")
                .expect("parses");
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.threads, Some(1));
        assert_eq!(config.log_format, daemon::logs::LogFormat::Json);
    }
}
