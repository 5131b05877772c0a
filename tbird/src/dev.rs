//! `tbird dev`: the whole stack in one process, nothing to install. Snowflake runs in-process,
//! and SQLite files in the data dir hold the nameserver, the job queue and two shard "hosts".
//! A new data dir gets the default topology (8 forwardings per table, each replicated on both
//! hosts); an existing one keeps its data and topology across restarts.
//!
//! It serves through [`crate::server::serve`], as `tbird serve` does, in plaintext with the
//! default connection limits.
//!
//! Metrics are off unless `metrics_listen` is set: a newcomer's first `tbird dev` should not
//! fail because port 9990 is taken (by a Snowflake daemon or a second `tbird dev`), and a
//! local stack is rarely scraped. When set, they are the same as `tbird serve`'s.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use gizzard::{
    nameserver::ShardIdError,
    scheduler::WorkerSettings,
    server::{Proxy, ProxySettings},
    topology::TopologyServiceError,
};
use snowflake::{clock::SystemClock, worker::IdWorker};
use tokio_util::sync::CancellationToken;

use crate::{
    ids::IdSource,
    server::{Listeners, Parts, ServerError},
    store, topology,
    tweets::TbirdProxy,
};

/// Forwardings per table in a new data dir.
pub const DEV_SHARDS: u32 = 8;

/// Where `tbird dev` keeps its data and listens.
#[derive(Clone, Debug)]
pub struct DevSettings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Where to serve `/metrics`; none serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
}

/// Why the dev stack could not run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("create data dir {path}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("start the proxy")]
    Proxy(#[from] gizzard::server::StartError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("name the default topology's shards: {0}")]
    ShardNames(ShardIdError),
    #[error("create the default topology: {0}")]
    Topology(TopologyServiceError),
    #[error(transparent)]
    Serve(#[from] ServerError),
}

fn sqlite_url(dir: &std::path::Path, file: &str) -> String {
    format!("sqlite://{}", dir.join(file).display())
}

/// Runs the dev stack until `shutdown`; `ready` receives the bound addresses once it serves.
pub async fn run(
    settings: DevSettings,
    ready: tokio::sync::oneshot::Sender<(SocketAddr, SocketAddr)>,
    shutdown: CancellationToken,
) -> Result<(), DevError> {
    let dir = &settings.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| DevError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    // First: the proxy and the service take their metric handles from the recorder.
    if let Some(addr) = settings.metrics_listen {
        crate::metrics::install(addr, shutdown.clone()).await?;
    }
    let listeners = Listeners::bind(settings.listen, settings.admin_listen).await?;
    let addrs = listeners.local_addrs()?;
    let proxy_settings = ProxySettings {
        server_name: "tbird-dev".into(),
        advertise_addr: addrs.1.to_string(),
        workers: WorkerSettings {
            count: 2,
            poll_interval: Duration::from_millis(200),
            name: "tbird-dev".into(),
            ..WorkerSettings::default()
        },
        ..ProxySettings::new(sqlite_url(dir, "nameserver.db"))
    };
    let proxy = Proxy::start(
        proxy_settings,
        store::registry(crate::hosts::DEFAULT_STATEMENTS_PER_HOST),
        HashMap::new(),
        shutdown.clone(),
    )
    .await?;
    if proxy.routing.current().topology.forwardings.is_empty() {
        create_default_topology(&proxy, dir).await?;
    }
    if settings.metrics_listen.is_some() {
        proxy
            .queue
            .clone()
            .spawn_depth_gauge(crate::metrics::QUEUE_DEPTH_INTERVAL, shutdown.clone());
    }
    let ids = IdSource::Local(Arc::new(IdWorker::fixed(
        Arc::new(SystemClock::default()),
        5,
        0,
        0,
    )));
    let parts = Parts {
        proxy: Arc::new(proxy),
        ids,
        statements_per_host: crate::hosts::DEFAULT_STATEMENTS_PER_HOST,
        edge: edge::Settings::default(),
    };
    let _ = ready.send(addrs);
    crate::server::serve(listeners, parts, shutdown).await?;
    Ok(())
}

async fn create_default_topology(
    proxy: &TbirdProxy,
    dir: &std::path::Path,
) -> Result<(), DevError> {
    let hosts = vec![
        ("a".to_owned(), sqlite_url(dir, "host-a.db")),
        ("b".to_owned(), sqlite_url(dir, "host-b.db")),
    ];
    let changes = topology::default_changes(&hosts, DEV_SHARDS).map_err(DevError::ShardNames)?;
    proxy
        .topology()
        .apply(&changes)
        .await
        .map_err(DevError::Topology)?;
    tracing::info!(shards = DEV_SHARDS, "created the default topology");
    Ok(())
}
