//! `tbird serve`: a production server. It routes with the nameserver at `nameserver-url`
//! (MySQL), takes ids from a Snowflake daemon, serves the tweet service and the ShardManager,
//! and runs job workers. Run as many as you like on one nameserver. Metrics are served in
//! Prometheus text at `http://metrics-listen/metrics` (see [`crate::metrics`]).
//!
//! [`serve`] is the one way a T-Bird server serves: `tbird serve` ([`run`]), `tbird dev` and the
//! test harness all start a proxy and hand it to [`serve`] with their bound listeners. Both
//! ports go through the `edge` crate: TLS when configured, connection limits, health and
//! reflection; the tweet service reports NOT_SERVING while the routing lease has lapsed (its
//! writes are refused then), SERVING again once the nameserver confirms the routing.

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
use tonic::server::NamedService;

use crate::{
    ids::{IdSource, PrefetchSettings},
    metrics,
    service::TweetService,
    store,
    tweets::{TbirdProxy, Tweets},
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
    /// Async threads serving calls (read by the binary before it starts): 1, the default,
    /// runs the server on one current-thread runtime, the cheapest per call; more run a
    /// multi-threaded runtime, for a host whose cores the server has to itself.
    pub threads: usize,
    /// How log lines are written: `text` or `json` (read by the binary before it starts).
    pub log_format: daemon::logs::LogFormat,
    // Transport of both gRPC listeners and of the Snowflake client (see the `edge` crate).
    /// PEM certificate chain of both gRPC listeners; with `tls-key` they serve TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls-cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates must chain to; set, every client needs one.
    pub tls_client_ca: Option<PathBuf>,
    /// PEM bundle of the CAs to trust for the Snowflake daemon (then TLS is used to it, as
    /// with an `https://` snowflake-addr).
    pub snowflake_tls_ca: Option<PathBuf>,
    /// PEM client certificate for the Snowflake daemon, when it requires one.
    pub snowflake_tls_cert: Option<PathBuf>,
    /// PEM private key of `snowflake-tls-cert`.
    pub snowflake_tls_key: Option<PathBuf>,
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
    /// Open gRPC connections at most (both ports together; also kept below three quarters
    /// of the descriptor limit).
    pub max_connections: usize,
    /// Calls in flight on one connection at most.
    pub max_concurrent_streams: u32,
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
            threads: 1,
            log_format: daemon::logs::LogFormat::Text,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            snowflake_tls_ca: None,
            snowflake_tls_cert: None,
            snowflake_tls_key: None,
            idle_timeout: edge::settings::DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: edge::settings::DEFAULT_HANDSHAKE_TIMEOUT,
            keepalive_interval: edge::settings::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: edge::settings::DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections: edge::settings::DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: edge::settings::DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// Why the server could not start or stopped. It ends the process, whose exit message prints
/// the chain of causes, so each variant states what was being done and holds the cause as its
/// source.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("read config {path}")]
    ReadConfig {
        path: String,
        source: std::io::Error,
    },
    #[error("parse config {path}")]
    ParseConfig {
        path: String,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("read the address a listener is bound to")]
    LocalAddr(#[source] std::io::Error),
    #[error("snowflake")]
    Snowflake(#[source] snowflake::client::ClientError),
    #[error("start the proxy")]
    Proxy(#[from] gizzard::server::StartError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Edge(#[from] edge::EdgeError),
}

impl ServerConfig {
    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::ReadConfig {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ServerError::ParseConfig {
            path: path.display().to_string(),
            source,
        })
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
        if self.threads == 0 {
            return Err(ServerError::Invalid("threads must be at least 1".into()));
        }
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(ServerError::Invalid(
                "admin-token is empty: leave it out to allow every caller".into(),
            ));
        }
        self.edge_settings()?;
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

    /// Returns the transport settings of both gRPC listeners.
    pub fn edge_settings(&self) -> Result<edge::Settings, ServerError> {
        let tls = edge::ServerTls::from_parts(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_client_ca.clone(),
        )
        .map_err(ServerError::Invalid)?;
        let settings = edge::Settings {
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            max_connections: self.max_connections,
            tls,
        };
        settings.validate().map_err(ServerError::Invalid)?;
        Ok(settings)
    }

    /// Returns the TLS files of the Snowflake client.
    pub fn snowflake_tls(&self) -> edge::client::ClientTls {
        edge::client::ClientTls {
            ca: self.snowflake_tls_ca.clone(),
            cert: self.snowflake_tls_cert.clone(),
            key: self.snowflake_tls_key.clone(),
        }
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

/// The bound sockets of a T-Bird server.
#[derive(Debug)]
pub struct Listeners {
    /// The tweet service's.
    pub tweets: TcpListener,
    /// The ShardManager's.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses.
    pub async fn bind(tweets: SocketAddr, admin: SocketAddr) -> Result<Self, ServerError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { addr, source })
        };
        Ok(Self {
            tweets: bind(tweets).await?,
            admin: bind(admin).await?,
        })
    }

    /// Returns the bound addresses of the tweet service and the ShardManager.
    pub fn local_addrs(&self) -> Result<(SocketAddr, SocketAddr), ServerError> {
        let local = |listener: &TcpListener| listener.local_addr().map_err(ServerError::LocalAddr);
        Ok((local(&self.tweets)?, local(&self.admin)?))
    }
}

/// What a T-Bird server serves: a started proxy, where its tweet ids come from, and how both
/// ports treat their connections.
pub struct Parts {
    pub proxy: Arc<TbirdProxy>,
    pub ids: IdSource,
    /// Reads in flight on one shard host; see [`ServerConfig::statements_per_host`].
    pub statements_per_host: usize,
    pub edge: edge::Settings,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("edge", &self.edge)
            .finish_non_exhaustive()
    }
}

/// The largest ShardManager request: batches of tens of thousands of forwardings.
pub const MAX_ADMIN_REQUEST_BYTES: usize = 64 << 20;

/// Serves the tweet service and the ShardManager of `parts` on `listeners` until `shutdown`,
/// then lets the calls in flight finish.
pub async fn serve(
    listeners: Listeners,
    parts: Parts,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let Parts {
        proxy,
        ids,
        statements_per_host,
        edge: settings,
    } = parts;
    let manager = proxy.manager().into_server();
    let tweets =
        TweetService::new(Tweets::new(proxy.clone(), ids, statements_per_host)).into_server();
    let mut tweets_port = edge::Port::new(proto::FILE_DESCRIPTOR_SET)
        .add_service(tweets, edge::guard::DEFAULT_MAX_REQUEST_BYTES);
    let admin_port =
        edge::Port::new(proto::FILE_DESCRIPTOR_SET).add_service(manager, MAX_ADMIN_REQUEST_BYTES);
    let watch = tokio::spawn(report_lease(
        proxy.clone(),
        tweets_port.health().await,
        shutdown.clone(),
    ));
    let limit = edge::ConnectionLimit::new(settings.max_connections);
    let (a, b) = tokio::join!(
        tweets_port.serve(
            listeners.tweets,
            &settings,
            limit.clone(),
            shutdown.cancelled()
        ),
        admin_port.serve(listeners.admin, &settings, limit, shutdown.cancelled()),
    );
    watch.abort();
    a?;
    b?;
    Ok(())
}

/// Reports the tweet service NOT_SERVING while the routing lease has lapsed (writes are
/// refused then), SERVING while it holds. The lease lapses with time alone, so it is looked
/// at a tenth of a lease apart (within 50 ms to 1 s).
async fn report_lease(
    proxy: Arc<TbirdProxy>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    type Tweets = proto::tbird::v1::tweets_server::TweetsServer<TweetService>;
    let every = (proxy.routing.lease_length() / 10)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut reported = true;
    loop {
        let holds = proxy.routing.lease_holds();
        if holds != reported {
            let status = if holds {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            tracing::info!(serving = holds, "tweet service health");
            for name in [Tweets::NAME, ""] {
                health.set_service_status(name, status).await;
            }
            reported = holds;
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Runs a server until `shutdown`.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    config.validate()?;
    let edge = config.edge_settings()?;
    let tokens = config.admin_tokens()?;
    // First: the proxy and the service take their metric handles from the recorder.
    if let Some(addr) = config.metrics_listen {
        metrics::install(addr, shutdown.clone()).await?;
    }
    let snowflake = snowflake::client::Client::connect_with(
        &config.snowflake_addr,
        &config.snowflake_tls(),
        "tbird",
        Duration::from_secs(2),
    )
    .await
    .map_err(ServerError::Snowflake)?;
    let ids = IdSource::remote(snowflake, PrefetchSettings::default(), shutdown.clone());
    // Bound before the proxy starts, so that it registers the address it really serves.
    let listeners = Listeners::bind(config.listen, config.admin_listen).await?;
    let advertise_addr = match &config.advertise_addr {
        Some(addr) => addr.clone(),
        None => advertised(listeners.admin.local_addr().unwrap_or(config.admin_listen)),
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
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        metrics = ?config.metrics_listen,
        tls = edge.tls.is_some(),
        "tbird serving"
    );
    let parts = Parts {
        proxy: Arc::new(proxy),
        ids,
        statements_per_host: config.statements_per_host,
        edge,
    };
    serve(listeners, parts, shutdown).await
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
    fn transport_settings_reach_the_edge_and_half_a_tls_pair_is_refused() {
        let config: ServerConfig = toml::from_str(
            "nameserver-url = \"sqlite://x\"\nidle-timeout = \"90s\"\nmax-connections = 7",
        )
        .expect("parses");
        let edge = config.edge_settings().expect("valid");
        assert_eq!(edge.idle_timeout, Duration::from_secs(90));
        assert_eq!(edge.max_connections, 7);
        assert_eq!(edge.tls, None, "plaintext by default");
        let half: ServerConfig =
            toml::from_str("nameserver-url = \"sqlite://x\"\ntls-cert = \"/etc/c.pem\"")
                .expect("parses");
        let err = half.validate().expect_err("a certificate without its key");
        assert!(err.to_string().contains("tls-key"), "{err}");
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
