//! The routing table a server uses: the current [`RoutingSnapshot`], swapped atomically when
//! the nameserver's version moves.
//!
//! Readers take the snapshot with [`Routing::current`] (lock-free) and keep it for the whole
//! request, so one request never mixes two versions. A poller asks the nameserver for its
//! version about once a second and reloads only when it moved; `gizzmo reload` forces a
//! reload. A failed poll or reload is logged and the old snapshot stays in use.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::{sync::Mutex, task::JoinHandle, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{
    snapshot::RoutingSnapshot,
    store::{NameServer, NameServerError},
};

/// How often servers poll the nameserver's version by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The current routing snapshot of one server, and the nameserver it comes from.
pub struct Routing {
    nameserver: NameServer,
    current: ArcSwap<RoutingSnapshot>,
    /// Serializes reloads, so a slow reload cannot replace a newer snapshot with an older one.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("version", &self.current.load().version)
            .finish()
    }
}

impl Routing {
    /// Loads the topology from `nameserver` and returns routing on its snapshot.
    pub async fn new(nameserver: NameServer) -> Result<Self, NameServerError> {
        let snapshot = RoutingSnapshot::new(nameserver.load().await?);
        Ok(Self {
            nameserver,
            current: ArcSwap::from_pointee(snapshot),
            reloading: Mutex::new(()),
        })
    }

    /// Returns the snapshot to route with.
    pub fn current(&self) -> Arc<RoutingSnapshot> {
        self.current.load_full()
    }

    /// Returns the nameserver the snapshots come from.
    pub fn nameserver(&self) -> &NameServer {
        &self.nameserver
    }

    /// Loads the topology now, whatever the version, swaps in its snapshot and returns its
    /// version. A snapshot older than the current one is never swapped in.
    pub async fn reload(&self) -> Result<u64, NameServerError> {
        let _one_at_a_time = self.reloading.lock().await;
        let topology = self.nameserver.load().await?;
        let current = self.current.load();
        if topology.version < current.version {
            return Ok(current.version);
        }
        let snapshot = Arc::new(RoutingSnapshot::new(topology));
        let version = snapshot.version;
        self.current.store(snapshot);
        tracing::info!(version, "routing snapshot reloaded");
        Ok(version)
    }

    /// Reloads when the nameserver's version differs from the current snapshot's. Returns
    /// whether it reloaded.
    pub async fn poll(&self) -> Result<bool, NameServerError> {
        let version = self.nameserver.version().await?;
        if version == self.current.load().version {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    /// Spawns a task that polls every `interval` (see [`DEFAULT_POLL_INTERVAL`]) until
    /// `shutdown` is cancelled. A failed poll logs a warning and keeps the old snapshot.
    pub fn spawn_poller(
        self: Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let poll = tokio::select! {
                    () = shutdown.cancelled() => break,
                    poll = self.poll() => poll,
                };
                if let Err(error) = poll {
                    let version = self.current.load().version;
                    tracing::warn!(%error, version, "nameserver poll failed; keeping the snapshot");
                }
            }
        })
    }
}
