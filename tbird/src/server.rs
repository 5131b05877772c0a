//! `tbird serve`: a production server. It routes with the nameserver at `nameserver-url`
//! (MySQL), takes ids from a Snowflake daemon, serves the tweet service and the ShardManager,
//! and runs job workers. Run as many as you like on one nameserver. Metrics are served in
//! Prometheus text at `http://metrics-listen/metrics` (see [`crate::metrics`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gizzard::{
    manager::{AdminTokens, auth::read_token_file},
    migrate::anti_entropy::AntiEntropySettings,
    scheduler::WorkerSettings,
    server::{Proxy, ProxySettings},
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::{
    ids::{IdSource, PrefetchSettings},
    metrics,
    service::TweetService,
    store,
};

/// Everything `tbird serve` can be told; keys are kebab-case in the TOML file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// The nameserver and job queue database (`mysql://...`; `sqlite://PATH` for one machine).
    pub nameserver_url: String,
    /// The Snowflake daemon, HOST:PORT.
    pub snowflake_addr: String,
    /// Address of the tweet service.
    pub listen: SocketAddr,
    /// Address of the ShardManager admin service; loopback by default, and anything else
    /// needs an admin token.
    pub admin_listen: SocketAddr,
    /// Address of the HTTP endpoint serving `/metrics`; `"off"` in the file serves none.
    #[serde(deserialize_with = "crate::metrics::deserialize_listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token every admin call must carry; none allows every caller (loopback only).
    pub admin_token: Option<String>,
    /// File holding the admin token (one line), instead of `admin-token`.
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token that allows the admin calls that change nothing (dumps, listings).
    pub read_only_token: Option<String>,
    /// File holding the read-only token, instead of `read-only-token`.
    pub read_only_token_file: Option<PathBuf>,
    /// Job workers in this server.
    pub job_workers: usize,
    /// Deadline of a write on one replica before it is queued for retry.
    #[serde(with = "humantime_serde")]
    pub leaf_timeout: Duration,
    /// Deadline of each database operation.
    #[serde(with = "humantime_serde")]
    pub db_timeout: Duration,
    /// Name reported to `gizzmo ping` and `gizzmo servers`.
    pub server_name: String,
    /// Where gizzmo reaches this server's ShardManager, as registered in the nameserver
    /// [default: admin-listen, with this machine's hostname for an unspecified address].
    pub advertise_addr: Option<String>,
    /// How long a confirmation of the routing with the nameserver lets this server
    /// acknowledge writes; migrations wait at most this (plus a second) for a server that
    /// stopped answering.
    #[serde(with = "humantime_serde")]
    pub routing_lease: Duration,
    /// How long the tables of a shard removed from the topology are kept (renamed, so no
    /// write reaches them) before they are dropped.
    #[serde(with = "humantime_serde")]
    pub retired_grace: Duration,
    /// How often anti-entropy sweeps every replica pair in full, repairing what differs;
    /// `"off"` turns it off.
    #[serde(deserialize_with = "deserialize_interval")]
    pub anti_entropy_interval: Option<Duration>,
    /// Rows one anti-entropy sweep compares per second at most.
    pub anti_entropy_rows_per_second: u64,
    /// Read statements, and separately write statements, in flight on one shard host; those
    /// arriving meanwhile share the next one.
    pub statements_per_host: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            nameserver_url: String::new(),
            snowflake_addr: "127.0.0.1:7609".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7915)),
            // Loopback: the admin service is for operators on this machine unless a token
            // guards it (validate refuses anything else without one).
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7920)),
            metrics_listen: Some(metrics::DEFAULT_LISTEN),
            admin_token: None,
            admin_token_file: None,
            read_only_token: None,
            read_only_token_file: None,
            job_workers: 4,
            leaf_timeout: gizzard::shards::write::DEFAULT_LEAF_TIMEOUT,
            db_timeout: db::DEFAULT_TIMEOUT,
            server_name: "tbird".into(),
            advertise_addr: None,
            routing_lease: gizzard::nameserver::routing::DEFAULT_LEASE,
            retired_grace: gizzard::shards::retire::DEFAULT_GRACE,
            anti_entropy_interval: AntiEntropySettings::default().interval,
            anti_entropy_rows_per_second: AntiEntropySettings::default()
                .rows_per_second
                .unwrap_or(10_000),
            statements_per_host: crate::hosts::DEFAULT_STATEMENTS_PER_HOST,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("read config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("connect to snowflake at {addr}: {reason}")]
    Snowflake { addr: String, reason: String },
    #[error("start the proxy: {0}")]
    Proxy(#[from] gizzard::server::StartError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("serve gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl ServerConfig {
    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let config_err = |reason: String| ServerError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| config_err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| config_err(e.to_string()))
    }

    /// Checks that the settings can run together.
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.nameserver_url.is_empty() {
            return Err(ServerError::Invalid("nameserver-url is not set".into()));
        }
        db::url::check(&self.nameserver_url)
            .map_err(|reason| ServerError::Invalid(format!("nameserver-url: {reason}")))?;
        if self.job_workers == 0 {
            return Err(ServerError::Invalid(
                "job-workers must be at least 1".into(),
            ));
        }
        if self.anti_entropy_rows_per_second == 0 {
            return Err(ServerError::Invalid(
                "anti-entropy-rows-per-second must be at least 1; set anti-entropy-interval \
                 to \"off\" to turn sweeps off"
                    .into(),
            ));
        }
        if self.statements_per_host == 0 {
            return Err(ServerError::Invalid(
                "statements-per-host must be at least 1".into(),
            ));
        }
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(ServerError::Invalid(
                "admin-token is empty: leave it out to allow every caller".into(),
            ));
        }
        let tokens = self.admin_tokens()?;
        tokens
            .check_listener(self.admin_listen)
            .map_err(ServerError::Invalid)?;
        Ok(())
    }

    /// Returns the admin service's tokens, read from their files where given.
    pub fn admin_tokens(&self) -> Result<AdminTokens, ServerError> {
        let token = |name: &str, value: &Option<String>, file: &Option<PathBuf>| match (value, file)
        {
            (Some(_), Some(_)) => Err(ServerError::Invalid(format!(
                "{name} and {name}-file are both set: keep one"
            ))),
            (_, Some(path)) => read_token_file(path)
                .map(Some)
                .map_err(|e| ServerError::Invalid(format!("{name}-file: {e}"))),
            (value, None) => Ok(value.clone()),
        };
        let admin = token("admin-token", &self.admin_token, &self.admin_token_file)?;
        let read_only = token(
            "read-only-token",
            &self.read_only_token,
            &self.read_only_token_file,
        )?;
        AdminTokens::new(admin, read_only).map_err(ServerError::Invalid)
    }
}

/// A duration, or `off`: the value of `anti-entropy-interval` and its flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval(pub Option<Duration>);

impl std::str::FromStr for Interval {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "off" => Ok(Self(None)),
            text => humantime::parse_duration(text)
                .map(|d| Self(Some(d)))
                .map_err(|e| format!("{text:?} is neither a duration (like 10m) nor \"off\": {e}")),
        }
    }
}

/// Reads a human duration, or `"off"` for none.
fn deserialize_interval<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<Interval>()
        .map(|i| i.0)
        .map_err(serde::de::Error::custom)
}

/// Returns the address other machines reach `addr` at: an unspecified IP (`0.0.0.0`) is
/// replaced by this machine's hostname.
fn advertised(addr: SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", addr.port())
}

/// Runs a server until `shutdown`.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    config.validate()?;
    let tokens = config.admin_tokens()?;
    // First: the proxy and the service take their metric handles from the recorder.
    if let Some(addr) = config.metrics_listen {
        metrics::install(addr)?;
    }
    let snowflake =
        snowflake::client::Client::connect(&config.snowflake_addr, "tbird", Duration::from_secs(2))
            .await
            .map_err(|e| ServerError::Snowflake {
                addr: config.snowflake_addr.clone(),
                reason: e.to_string(),
            })?;
    let ids = IdSource::remote(snowflake, PrefetchSettings::default(), shutdown.clone());
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Listen {
                addr,
                reason: e.to_string(),
            })
    };
    // Bound before the proxy starts, so that it registers the address it really serves.
    let (tweets_listener, admin_listener) =
        (bind(config.listen).await?, bind(config.admin_listen).await?);
    let advertise_addr = match &config.advertise_addr {
        Some(addr) => addr.clone(),
        None => advertised(admin_listener.local_addr().unwrap_or(config.admin_listen)),
    };
    let settings = ProxySettings {
        db_timeout: config.db_timeout,
        leaf_timeout: config.leaf_timeout,
        workers: WorkerSettings {
            count: config.job_workers,
            name: config.server_name.clone(),
            ..WorkerSettings::default()
        },
        admin_token: tokens.admin().map(str::to_owned),
        read_only_token: tokens.read_only().map(str::to_owned),
        server_name: config.server_name.clone(),
        advertise_addr,
        routing_lease: config.routing_lease,
        retired_grace: config.retired_grace,
        anti_entropy: AntiEntropySettings {
            interval: config.anti_entropy_interval,
            rows_per_second: Some(config.anti_entropy_rows_per_second),
        },
        ..ProxySettings::new(&config.nameserver_url)
    };
    let proxy = Proxy::start(
        settings,
        store::registry(config.statements_per_host),
        HashMap::new(),
        shutdown.clone(),
    )
    .await?;
    if config.metrics_listen.is_some() {
        proxy
            .queue
            .clone()
            .spawn_depth_gauge(metrics::QUEUE_DEPTH_INTERVAL, shutdown.clone());
    }
    let manager = proxy.manager().into_server();
    let tweets = TweetService::new(Arc::new(proxy), ids)
        .with_reads_per_host(config.statements_per_host)
        .into_server();
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        metrics = ?config.metrics_listen,
        "tbird serving"
    );
    let (a, b) = tokio::join!(
        Server::builder()
            .add_service(tweets)
            .serve_with_incoming_shutdown(
                gizzard::server::incoming(tweets_listener),
                shutdown.cancelled()
            ),
        Server::builder()
            .add_service(manager)
            .serve_with_incoming_shutdown(
                gizzard::server::incoming(admin_listener),
                shutdown.cancelled()
            ),
    );
    a?;
    b?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tbird.example.toml");
        let config = ServerConfig::from_file(&path).expect("example parses");
        config.validate().expect("example is valid");
        assert_eq!(config.leaf_timeout, Duration::from_secs(2));
        assert_eq!(config.metrics_listen, Some(metrics::DEFAULT_LISTEN));
    }

    #[test]
    fn metrics_can_be_turned_off_or_moved() {
        let off: ServerConfig = toml::from_str("metrics-listen = \"off\"").expect("off parses");
        assert_eq!(off.metrics_listen, None);
        let moved: ServerConfig =
            toml::from_str("metrics-listen = \"127.0.0.1:9991\"").expect("address parses");
        assert_eq!(
            moved.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9991)))
        );
        let err = toml::from_str::<ServerConfig>("metrics-listen = \"9991\"").expect_err("bad");
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }

    #[test]
    fn anti_entropy_can_be_turned_off_or_paced() {
        let off: ServerConfig =
            toml::from_str("anti-entropy-interval = \"off\"").expect("off parses");
        assert_eq!(off.anti_entropy_interval, None);
        let hourly: ServerConfig =
            toml::from_str("anti-entropy-interval = \"1h\"").expect("an hour parses");
        assert_eq!(
            hourly.anti_entropy_interval,
            Some(Duration::from_secs(3600))
        );
        let err =
            toml::from_str::<ServerConfig>("anti-entropy-interval = \"often\"").expect_err("bad");
        assert!(err.to_string().contains("\"off\""), "{err}");
    }

    #[test]
    fn an_open_admin_service_listens_on_loopback_only() {
        let config = |text: &str| {
            let mut config: ServerConfig = toml::from_str(text).expect("parses");
            config.nameserver_url = "mysql://u@db/gizzard".into();
            config
        };
        assert!(
            config("").admin_listen.ip().is_loopback(),
            "the default is loopback"
        );
        config("").validate().expect("loopback without a token");
        let err = config("admin-listen = \"0.0.0.0:7920\"")
            .validate()
            .expect_err("open on every address");
        assert!(err.to_string().contains("admin-token-file"), "{err}");
        config("admin-listen = \"0.0.0.0:7920\"\nadmin-token = \"t\"")
            .validate()
            .expect("with a token");

        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "from-a-file\n").expect("write");
        let text = format!(
            "admin-listen = \"0.0.0.0:7920\"\nadmin-token-file = {:?}",
            file.display().to_string()
        );
        let tokens = config(&text).admin_tokens().expect("read");
        assert_eq!(tokens.admin(), Some("from-a-file"));
        std::fs::write(&file, "").expect("write");
        let err = config(&text).validate().expect_err("empty file");
        assert!(err.to_string().contains("is empty"), "{err}");
        let both = format!("{text}\nadmin-token = \"t\"");
        let err = config(&both).validate().expect_err("both");
        assert!(err.to_string().contains("keep one"), "{err}");
    }

    #[test]
    fn bad_settings_are_named() {
        let err = ServerConfig::default()
            .validate()
            .expect_err("no nameserver");
        assert!(err.to_string().contains("nameserver-url"), "{err}");
        let err = toml::from_str::<ServerConfig>("listen-adr = \"x\"").expect_err("unknown key");
        assert!(err.to_string().contains("listen-adr"), "{err}");
    }
}
