//! The daemon: takes a worker id (static or leased), then serves the id service on an
//! already-bound listener through the `edge` crate (TLS when configured, connection limits,
//! health and reflection of `snowflake.v1.Snowflake` alone) until shutdown, and releases the
//! lease on the way out. Health is NOT_SERVING while no worker-id lease is held.

use std::{sync::Arc, time::Duration};

use proto::snowflake::v1::snowflake_server::SnowflakeServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::Clock,
    config::{Config, ConfigError},
    lease::{LeaseError, LeaseKeeper, LeaseStore},
    service::SnowflakeService,
    worker::{Grant, IdWorker},
};

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("lease worker id")]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Edge(#[from] edge::EdgeError),
}

/// Runs the daemon on `listener` with `clock` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    config.validate()?;
    let edge = config.edge_settings()?;
    let tolerance_ms = config.clock_tolerance.as_millis() as u64;
    let worker = Arc::new(IdWorker::new(clock, tolerance_ms));
    let service = SnowflakeService::new(worker.clone(), config.max_batch).into_server();
    let mut port = edge::Port::new(proto::FILE_DESCRIPTOR_SET)
        .add_service(service, edge::guard::DEFAULT_MAX_REQUEST_BYTES);
    let health = port.health().await;
    let keeper_stop = CancellationToken::new();
    let keeper = match &config.lease_url {
        None => {
            let worker_id = config
                .worker_id
                .expect("validate() requires a worker id or a lease url");
            worker.grant(Grant::fixed(config.datacenter_id, worker_id), 0);
            None
        }
        Some(url) => {
            let settings = config.lease_settings();
            // Each database call must finish well before the next renewal is due.
            let op_timeout = (settings.renew_interval() / 2).min(Duration::from_secs(5));
            let store = LeaseStore::open(url, op_timeout).await?;
            let mut keeper = LeaseKeeper::new(store, settings, worker.clone());
            keeper.acquire().await?;
            tokio::spawn(report_health(keeper.subscribe(), health.clone()));
            Some(tokio::spawn(keeper.run(keeper_stop.clone())))
        }
    };
    if let Some(grant) = worker.current_grant() {
        tracing::info!(
            addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            datacenter_id = grant.datacenter_id,
            worker_id = grant.worker_id,
            "snowflake serving"
        );
    }
    let limit = edge::ConnectionLimit::new(edge.max_connections);
    let served = port
        .serve(listener, &edge, limit, shutdown.cancelled())
        .await;
    // In-flight requests are done: now the lease can be given up.
    keeper_stop.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    served.map_err(ServerError::from)
}

/// Marks the service not serving while no lease is held, so load balancers move away.
async fn report_health(
    mut holding: tokio::sync::watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
) {
    while holding.changed().await.is_ok() {
        if *holding.borrow_and_update() {
            health
                .set_serving::<SnowflakeServer<SnowflakeService>>()
                .await;
        } else {
            health
                .set_not_serving::<SnowflakeServer<SnowflakeService>>()
                .await;
        }
    }
}
