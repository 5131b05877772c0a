//! The routing table a server uses: the current [`RoutingSnapshot`], swapped atomically when
//! the nameserver's version moves, and the routing lease that decides whether the server may
//! acknowledge writes.
//!
//! Readers take the snapshot with [`Routing::current`] (lock-free) and keep it for the whole
//! request, so one request never mixes two versions. Writers take a [`WritePermit`] instead:
//! it is refused once the lease has lapsed, counts the write as in flight on its snapshot, and
//! [`WritePermit::acknowledge`] checks the lease again before the caller is told the write
//! landed.
//!
//! About once a poll interval the server confirms its version with the nameserver (see
//! [`super::servers`]). When the version moved, it loads the new topology, swaps it in, waits
//! until no write routed with an older snapshot is in flight, and confirms the new version. A
//! confirmation extends the lease to `lease` after the moment it was sent. When confirmations
//! fail (the nameserver is unreachable), reads go on with the old snapshot, and writes are
//! refused from the end of the lease until a confirmation succeeds again.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    sync::Notify,
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

use super::{
    servers::{Confirmation, ServerIdentity},
    snapshot::RoutingSnapshot,
    store::{NameServer, NameServerError},
};

/// How often servers confirm their routing with the nameserver by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a confirmation lets a server acknowledge writes by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// Reloads one refresh may need when the topology keeps changing under it.
const MAX_RELOADS: usize = 20;

/// Why a write may not be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingLeaseError {
    /// The routing lease lapsed: the server cannot tell whether its topology is current.
    #[error(
        "routing unconfirmed for {:.1}s (lease {}s): {reason}; writes resume once the \
         nameserver confirms the topology",
        .since.as_secs_f64(), .lease.as_secs_f64()
    )]
    Unconfirmed {
        since: Duration,
        lease: Duration,
        reason: String,
    },
    /// The server is shutting down.
    #[error("server is shutting down")]
    Closed,
}

/// The snapshot of one version and the writes in flight on it.
struct Epoch {
    snapshot: Arc<RoutingSnapshot>,
    writes: AtomicUsize,
    /// Set once a newer epoch replaced it: it takes no new writes.
    sealed: AtomicBool,
    idle: Notify,
}

impl Epoch {
    fn new(snapshot: Arc<RoutingSnapshot>) -> Self {
        Self {
            snapshot,
            writes: AtomicUsize::new(0),
            sealed: AtomicBool::new(false),
            idle: Notify::new(),
        }
    }

    fn release(&self) {
        if self.writes.fetch_sub(1, Ordering::SeqCst) == 1 && self.sealed.load(Ordering::SeqCst) {
            self.idle.notify_waiters();
        }
    }

    /// Returns once the epoch is sealed and its last write finished.
    async fn drained(&self) {
        self.sealed.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.writes.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The lease, in nanoseconds since the routing's `base` (0: never confirmed), lock-free since
/// every write reads it twice.
#[derive(Default)]
struct Lease {
    valid_until: AtomicU64,
    confirmed_at: AtomicU64,
    closed: AtomicBool,
    /// Why the last confirmation failed, for the refusal's message.
    last_error: Mutex<Option<String>>,
}

/// The current routing snapshot of one server, its lease, and the nameserver it comes from.
pub struct Routing {
    nameserver: NameServer,
    identity: ServerIdentity,
    lease_length: Duration,
    base: Instant,
    lease: Lease,
    current: ArcSwap<Epoch>,
    /// Replaced epochs that may still have writes in flight.
    retiring: Mutex<Vec<Arc<Epoch>>>,
    /// Serializes refreshes, so a slow one cannot replace a newer snapshot with an older one.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("server", &self.identity.id)
            .field("version", &self.current.load().snapshot.version)
            .finish()
    }
}

/// A write's right to route with a snapshot; released when dropped.
pub struct WritePermit<'a> {
    routing: &'a Routing,
    epoch: Arc<Epoch>,
}

impl std::fmt::Debug for WritePermit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritePermit")
            .field("version", &self.epoch.snapshot.version)
            .finish()
    }
}

impl WritePermit<'_> {
    /// Returns the snapshot the write routes with.
    pub fn snapshot(&self) -> &Arc<RoutingSnapshot> {
        &self.epoch.snapshot
    }

    /// Checks, once the write has landed, that the lease still holds: a write acknowledged
    /// now cannot be one that a step which waited out this server's lease missed.
    pub fn acknowledge(&self) -> Result<(), RoutingLeaseError> {
        self.routing.check_lease()
    }
}

impl Drop for WritePermit<'_> {
    fn drop(&mut self) {
        self.epoch.release();
    }
}

impl Routing {
    /// Loads the topology from `nameserver`, registers `identity` as serving it and returns
    /// routing on its snapshot, with a lease of `lease` per confirmation.
    pub async fn start(
        nameserver: NameServer,
        identity: ServerIdentity,
        lease: Duration,
    ) -> Result<Self, NameServerError> {
        // Before the load, so that no confirmation is taken at instant 0 ("never").
        let base = Instant::now();
        let snapshot = Arc::new(RoutingSnapshot::new(nameserver.load().await?));
        let routing = Self {
            nameserver,
            identity,
            lease_length: lease,
            base,
            lease: Lease::default(),
            current: ArcSwap::from_pointee(Epoch::new(snapshot)),
            retiring: Mutex::new(Vec::new()),
            refreshing: tokio::sync::Mutex::new(()),
        };
        routing.refresh(false).await?;
        routing.nameserver.forget_lapsed_servers().await?;
        Ok(routing)
    }

    /// Returns the snapshot to route reads with.
    pub fn current(&self) -> Arc<RoutingSnapshot> {
        self.current.load().snapshot.clone()
    }

    /// Returns the nameserver the snapshots come from.
    pub fn nameserver(&self) -> &NameServer {
        &self.nameserver
    }

    /// Returns who this server is in the registry.
    pub fn identity(&self) -> &ServerIdentity {
        &self.identity
    }

    /// Returns the length of a confirmation's lease.
    pub fn lease_length(&self) -> Duration {
        self.lease_length
    }

    /// Returns how long ago the routing was last confirmed, if it ever was.
    pub fn confirmed_age(&self) -> Option<Duration> {
        match self.lease.confirmed_at.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_nanos(self.now_ns().saturating_sub(at))),
        }
    }

    /// Returns whether writes may be acknowledged now.
    pub fn lease_holds(&self) -> bool {
        self.check_lease().is_ok()
    }

    /// Returns a permit to route a write with the current snapshot, or why none is given.
    pub fn write_permit(&self) -> Result<WritePermit<'_>, RoutingLeaseError> {
        self.check_lease()?;
        loop {
            let epoch = self.current.load_full();
            epoch.writes.fetch_add(1, Ordering::SeqCst);
            // A refresh seals an epoch before it waits for its writes; one that sees no write
            // here has sealed it first, and this write takes the newer epoch instead.
            if !epoch.sealed.load(Ordering::SeqCst) {
                return Ok(WritePermit {
                    routing: self,
                    epoch,
                });
            }
            epoch.release();
            // Only a closing server seals the current epoch.
            self.check_lease()?;
        }
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn check_lease(&self) -> Result<(), RoutingLeaseError> {
        if self.lease.closed.load(Ordering::Acquire) {
            return Err(RoutingLeaseError::Closed);
        }
        if self.now_ns() < self.lease.valid_until.load(Ordering::Acquire) {
            return Ok(());
        }
        let reason = self
            .lease
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "no confirmation from the nameserver within the lease".into());
        Err(RoutingLeaseError::Unconfirmed {
            since: self.confirmed_age().unwrap_or_default(),
            lease: self.lease_length,
            reason,
        })
    }

    /// Loads the topology now, whatever the version, and confirms it. Returns the version.
    pub async fn reload(&self) -> Result<u64, NameServerError> {
        self.refresh(true).await
    }

    /// Confirms the current version with the nameserver, first reloading (and waiting out
    /// the writes of older snapshots) when it moved, or always when `force`. Returns the
    /// confirmed version.
    pub async fn refresh(&self, force: bool) -> Result<u64, NameServerError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let result = self.confirm(force).await;
        let mut last_error = self
            .lease
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *last_error = result
            .as_ref()
            .err()
            .map(|e| format!("cannot confirm the topology with the nameserver ({e})"));
        result
    }

    async fn confirm(&self, mut reload: bool) -> Result<u64, NameServerError> {
        for _ in 0..MAX_RELOADS {
            if reload {
                self.load().await?;
            }
            let retiring: Vec<Arc<Epoch>> = self
                .retiring
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for epoch in &retiring {
                epoch.drained().await;
            }
            self.retiring
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|e| !retiring.iter().any(|r| Arc::ptr_eq(e, r)));
            let version = self.current.load().snapshot.version;
            let sent = self.now_ns();
            match self
                .nameserver
                .confirm(&self.identity, version, self.lease_length)
                .await?
            {
                Confirmation::Confirmed => {
                    let until = sent + self.lease_length.as_nanos() as u64;
                    self.lease.valid_until.fetch_max(until, Ordering::AcqRel);
                    self.lease.confirmed_at.fetch_max(sent, Ordering::AcqRel);
                    return Ok(version);
                }
                Confirmation::Moved(_) => reload = true,
            }
        }
        Err(NameServerError::Unsettled(MAX_RELOADS))
    }

    /// Loads the topology and swaps in its snapshot, unless it is not newer.
    async fn load(&self) -> Result<(), NameServerError> {
        let topology = self.nameserver.load().await?;
        if topology.version <= self.current.load().snapshot.version {
            return Ok(());
        }
        let epoch = Arc::new(Epoch::new(Arc::new(RoutingSnapshot::new(topology))));
        let version = epoch.snapshot.version;
        let old = self.current.swap(epoch);
        old.sealed.store(true, Ordering::SeqCst);
        self.retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(old);
        tracing::info!(version, "routing snapshot reloaded");
        Ok(())
    }

    /// Stops acknowledging writes, waits for those in flight and leaves the registry, so no
    /// migration waits out this server's lease.
    pub async fn close(&self) {
        self.lease.closed.store(true, Ordering::Release);
        let mut epochs: Vec<Arc<Epoch>> = self
            .retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        epochs.push(self.current.load_full());
        for epoch in epochs {
            epoch.drained().await;
        }
        if let Err(error) = self.nameserver.deregister(&self.identity.id).await {
            tracing::warn!(%error, "could not leave the server registry; its lease will lapse");
        }
    }

    /// Spawns a task that confirms the routing every `interval` (see
    /// [`DEFAULT_POLL_INTERVAL`]) until `shutdown` is cancelled, then closes it. A failed
    /// confirmation logs a warning and keeps the old snapshot for reads.
    pub fn spawn_poller(
        self: Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let refreshed = tokio::select! {
                    () = shutdown.cancelled() => break,
                    refreshed = self.refresh(false) => refreshed,
                };
                self.record_metrics();
                match refreshed {
                    Ok(version) if failing => {
                        failing = false;
                        tracing::info!(version, "routing confirmed again; writes resume");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        failing = true;
                        let version = self.current.load().snapshot.version;
                        let lease = if self.lease_holds() {
                            "holds"
                        } else {
                            "lapsed"
                        };
                        tracing::warn!(
                            %error, version, lease,
                            "routing confirmation failed; reads keep the snapshot"
                        );
                    }
                }
            }
            self.close().await;
        })
    }

    fn record_metrics(&self) {
        metrics::gauge!("gizzard_routing_lease_valid").set(f64::from(u8::from(self.lease_holds())));
        if let Some(age) = self.confirmed_age() {
            metrics::gauge!("gizzard_routing_confirmed_age_seconds").set(age.as_secs_f64());
        }
        metrics::gauge!("gizzard_routing_version").set(self.current.load().snapshot.version as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        db::Database,
        nameserver::{Change, Host, ShardTypes, servers::waiting_for},
    };

    async fn nameserver(dir: &tempfile::TempDir) -> NameServer {
        let url = format!("sqlite://{}", dir.path().join("ns.db").display());
        let db = Database::open(&url, Duration::from_secs(30))
            .await
            .expect("open sqlite");
        NameServer::open(db).await.expect("create tables")
    }

    /// Returns a nameserver in `dir` and routing started on it, with a lease long enough not
    /// to lapse during a test.
    async fn started(dir: &tempfile::TempDir) -> (NameServer, Arc<Routing>) {
        let ns = nameserver(dir).await;
        let routing = Routing::start(ns.clone(), identity(), Duration::from_secs(30))
            .await
            .expect("start");
        (ns, Arc::new(routing))
    }

    async fn change(ns: &NameServer, name: &str) -> u64 {
        let host = Host {
            name: name.into(),
            url: "sqlite:///tmp/x".into(),
            read_weight: 1,
            write_weight: 1,
        };
        ns.apply(&[Change::SetHost(host)], &ShardTypes::default())
            .await
            .expect("apply")
    }

    fn identity() -> ServerIdentity {
        ServerIdentity::new("test", "127.0.0.1:1")
    }

    /// A newer version is confirmed only once the writes routed with the older one are done:
    /// that is what lets a migration trust a confirmation.
    #[tokio::test]
    async fn a_new_version_is_confirmed_only_after_the_old_versions_writes_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ns, routing) = started(&dir).await;
        let permit = routing.write_permit().expect("the lease holds");
        assert_eq!(permit.snapshot().version, 0);
        let version = change(&ns, "h1").await;
        assert_eq!(version, 1);

        let refresh = tokio::spawn({
            let routing = routing.clone();
            async move { routing.refresh(false).await }
        });
        // The new snapshot serves new writes at once...
        tokio::time::timeout(Duration::from_secs(10), async {
            while routing.current().version != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the new snapshot is swapped in");
        let newer = routing.write_permit().expect("new writes go on");
        assert_eq!(newer.snapshot().version, 1);
        // ...but the registry keeps the old version while an old write is in flight.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !refresh.is_finished(),
            "confirmed with a write of version 0 in flight"
        );
        let servers = ns.servers().await.expect("servers");
        assert_eq!(waiting_for(&servers, 1).len(), 1, "{servers:?}");

        permit.acknowledge().expect("the lease still holds");
        drop(permit);
        let confirmed = tokio::time::timeout(Duration::from_secs(10), refresh)
            .await
            .expect("confirmed once the old write is done")
            .expect("no panic")
            .expect("confirm");
        assert_eq!(confirmed, 1);
        let servers = ns.servers().await.expect("servers");
        assert!(waiting_for(&servers, 1).is_empty(), "{servers:?}");
    }

    /// Without confirmations the lease lapses: writes are refused with the reason, and a
    /// write that was in flight is not acknowledged. A confirmation brings writes back.
    #[tokio::test]
    async fn writes_stop_when_the_lease_lapses_and_resume_after_a_confirmation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = nameserver(&dir).await;
        let lease = Duration::from_millis(300);
        let routing = Routing::start(ns.clone(), identity(), lease)
            .await
            .expect("start");
        let in_flight = routing.write_permit().expect("fresh lease");
        tokio::time::sleep(lease + Duration::from_millis(50)).await;

        let refused = routing.write_permit().expect_err("lease lapsed");
        assert!(
            refused
                .to_string()
                .starts_with("routing unconfirmed for 0."),
            "{refused}"
        );
        assert!(matches!(
            in_flight.acknowledge(),
            Err(RoutingLeaseError::Unconfirmed { .. })
        ));
        drop(in_flight);

        routing.refresh(false).await.expect("confirm");
        routing.write_permit().expect("writes resume");
    }

    /// A server that loaded a topology cannot register it once a newer version is stored:
    /// it reloads first, so no step can miss a server that was starting up.
    #[tokio::test]
    async fn a_confirmation_of_a_replaced_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = nameserver(&dir).await;
        let server = identity();
        assert_eq!(
            ns.confirm(&server, 0, Duration::from_secs(1))
                .await
                .expect("confirm"),
            Confirmation::Confirmed
        );
        change(&ns, "h1").await;
        assert_eq!(
            ns.confirm(&server, 0, Duration::from_secs(1))
                .await
                .expect("confirm"),
            Confirmation::Moved(1)
        );
        let servers = ns.servers().await.expect("servers");
        assert_eq!(servers[0].version, 0);

        ns.deregister(&server.id).await.expect("deregister");
        assert!(ns.servers().await.expect("servers").is_empty());
    }

    /// A closed server refuses writes, waits for those in flight, and leaves the registry.
    #[tokio::test]
    async fn closing_drains_writes_and_leaves_the_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ns, routing) = started(&dir).await;
        let permit = routing.write_permit().expect("lease");
        let close = tokio::spawn({
            let routing = routing.clone();
            async move { routing.close().await }
        });
        tokio::time::timeout(Duration::from_secs(10), async {
            while routing.write_permit().is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("writes are refused");
        assert_eq!(
            routing.write_permit().expect_err("closed"),
            RoutingLeaseError::Closed
        );
        assert_eq!(ns.servers().await.expect("servers").len(), 1);
        drop(permit);
        tokio::time::timeout(Duration::from_secs(10), close)
            .await
            .expect("closes once the write is done")
            .expect("no panic");
        assert!(ns.servers().await.expect("servers").is_empty());
    }
}
