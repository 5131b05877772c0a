//! [`TopologyService`]: what operators and migrations do to the topology, as one service for
//! both. A batch of changes creates the tables of its new leaves on their hosts first, so a
//! shard never routes writes to a table that does not exist, then lands as one validated
//! transaction in the nameserver, and this server reloads its routing at once (the others
//! within their poll interval). Reads answer from this server's routing snapshot or the
//! nameserver.
//!
//! The ShardManager's handlers ([`crate::manager`]) and the migration runner
//! ([`crate::migrate::runner`]) call it; neither repeats its steps. Its errors name what
//! failed; [`crate::manager`] maps them to gRPC codes.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{
    nameserver::{
        Change, Host, NameServer, NameServerError, NodeSpec, RetiredShard, Routing, ServerRecord,
        ShardId, ShardInfo, ShardTypes, Topology, TopologyError, hash,
    },
    shards::{PhysicalShard, ShardRouter, router::RouteError},
};

/// Creates the tables of new leaf shards on their hosts; the proxy's shard router is one.
pub trait Materializer: Send + Sync + 'static {
    /// Creates the tables of leaf `info` on `host` when missing.
    fn materialize<'a>(
        &'a self,
        info: &'a ShardInfo,
        host: &'a Host,
    ) -> Pin<Box<dyn Future<Output = Result<(), RouteError>> + Send + 'a>>;
}

impl<S: PhysicalShard> Materializer for ShardRouter<S> {
    fn materialize<'a>(
        &'a self,
        info: &'a ShardInfo,
        host: &'a Host,
    ) -> Pin<Box<dyn Future<Output = Result<(), RouteError>> + Send + 'a>> {
        Box::pin(ShardRouter::materialize(self, info, host))
    }
}

/// Why a topology call failed.
#[derive(Debug, thiserror::Error)]
pub enum TopologyServiceError {
    /// A batch without a change would bump the version for nothing.
    #[error("the batch has no changes")]
    NoChanges,
    /// A new leaf's tables could not be created; nothing of the batch was applied.
    #[error("create the tables of shard {shard}: {cause}")]
    Materialize {
        // Boxed: every topology result carries this error, so its largest variant sets their
        // size.
        shard: Box<ShardId>,
        cause: RouteError,
    },
    #[error(transparent)]
    NameServer(#[from] NameServerError),
    /// A lookup found no forwarding or no such shard.
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl TopologyServiceError {
    /// Returns the topology rule a batch broke, if that is why it was refused.
    pub fn topology_error(&self) -> Option<&TopologyError> {
        match self {
            Self::NameServer(err) => err.topology_error(),
            _ => None,
        }
    }
}

/// Where a key routes: its hash, the forwarding that holds it and the tree under that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub hash: i64,
    pub base_id: i64,
    pub root: ShardId,
    pub tree: NodeSpec,
}

/// The versions this server routes with and has stored, and its routing lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingStatus {
    /// The nameserver's version.
    pub stored_version: u64,
    /// The version of this server's routing snapshot.
    pub routing_version: u64,
    /// Whether this server may acknowledge writes now.
    pub lease_holds: bool,
    /// How long ago the routing was last confirmed; `None` when never.
    pub confirmed_age: Option<Duration>,
    /// This server's id in the server registry.
    pub server_id: String,
}

/// The topology of one server's nameserver, changed and read. Cheap to clone.
#[derive(Clone)]
pub struct TopologyService {
    nameserver: NameServer,
    routing: Arc<Routing>,
    types: ShardTypes,
    materializer: Arc<dyn Materializer>,
}

impl std::fmt::Debug for TopologyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopologyService")
            .field("types", &self.types)
            .finish_non_exhaustive()
    }
}

impl TopologyService {
    /// Returns the service over `routing`'s nameserver; batches may create leaves of `types`,
    /// whose tables `materializer` creates.
    pub fn new(
        routing: Arc<Routing>,
        types: ShardTypes,
        materializer: Arc<dyn Materializer>,
    ) -> Self {
        Self {
            nameserver: routing.nameserver().clone(),
            routing,
            types,
            materializer,
        }
    }

    /// Returns the service of `router`'s routing, creating tables with it.
    pub fn for_router<S: PhysicalShard>(router: Arc<ShardRouter<S>>) -> Self {
        let types = router.registry().shard_types();
        Self::new(router.routing().clone(), types, router)
    }

    /// Creates the tables of the new leaves of `changes`, applies the batch as one
    /// transaction and reloads this server's routing. Returns the new version.
    pub async fn apply(&self, changes: &[Change]) -> Result<u64, TopologyServiceError> {
        if changes.is_empty() {
            return Err(TopologyServiceError::NoChanges);
        }
        self.materialize_new_leaves(changes).await?;
        let version = self.nameserver.apply(changes, &self.types).await?;
        tracing::info!(version, changes = changes.len(), "topology changed");
        // The change has landed, so the call succeeds: the poller reloads soon enough.
        if let Err(err) = self.routing.reload().await {
            tracing::warn!(error = %err, "reload after a change failed; the poller will retry");
        }
        Ok(version)
    }

    /// Creates the tables of the leaves `changes` create, before the batch is applied. A leaf
    /// on a host that neither the batch nor the topology has is left to validation, which
    /// names the host.
    async fn materialize_new_leaves(&self, changes: &[Change]) -> Result<(), TopologyServiceError> {
        let leaves: Vec<&ShardInfo> = changes
            .iter()
            .filter_map(|change| match change {
                Change::CreateShard(info) if self.types.is_leaf(&info.class_name) => Some(info),
                _ => None,
            })
            .collect();
        if leaves.is_empty() {
            return Ok(());
        }
        let topology = self.current().await?;
        for info in leaves {
            let host = changes
                .iter()
                .find_map(|change| match change {
                    Change::SetHost(host) if host.name == info.id.hostname => Some(host),
                    _ => None,
                })
                .or_else(|| topology.hosts.get(&info.id.hostname));
            if let Some(host) = host {
                self.materializer
                    .materialize(info, host)
                    .await
                    .map_err(|cause| TopologyServiceError::Materialize {
                        shard: Box::new(info.id.clone()),
                        cause,
                    })?;
            }
        }
        Ok(())
    }

    /// Returns the stored topology: this server's snapshot when it has the stored version,
    /// else reloaded first.
    pub async fn current(&self) -> Result<Arc<Topology>, TopologyServiceError> {
        let snapshot = self.routing.current();
        if snapshot.version == self.nameserver.version().await? {
            return Ok(snapshot.topology.clone());
        }
        self.routing.reload().await?;
        Ok(self.routing.current().topology.clone())
    }

    /// Returns the topology as stored in the nameserver.
    pub async fn dump(&self) -> Result<Topology, TopologyServiceError> {
        Ok(self.nameserver.load().await?)
    }

    /// Returns where `key` of `table_id` routes in this server's snapshot.
    pub fn lookup(&self, table_id: i32, key: u64) -> Result<Lookup, TopologyServiceError> {
        let snapshot = self.routing.current();
        let hash = hash(key);
        let root = snapshot
            .lookup(table_id, hash)
            .ok_or(RouteError::NoForwarding { table_id, hash })?;
        let base_id = snapshot
            .topology
            .forwardings
            .range((table_id, i64::MIN)..=(table_id, hash))
            .next_back()
            .map_or(0, |(&(_, base), _)| base);
        let tree = snapshot.tree(root).map_err(RouteError::from)?;
        Ok(Lookup {
            hash,
            base_id,
            root: root.clone(),
            tree,
        })
    }

    /// Returns the tree under shard `id` in this server's snapshot.
    pub fn tree(&self, id: &ShardId) -> Result<NodeSpec, TopologyServiceError> {
        let tree = self.routing.current().tree(id).map_err(RouteError::from)?;
        Ok(tree)
    }

    /// Returns the stored version and this server's routing.
    pub async fn status(&self) -> Result<RoutingStatus, TopologyServiceError> {
        let routing_version = self.routing.current().version;
        self.status_with(routing_version).await
    }

    /// Reloads this server's routing from the nameserver and returns the result.
    pub async fn reload(&self) -> Result<RoutingStatus, TopologyServiceError> {
        let routing_version = self.routing.reload().await?;
        self.status_with(routing_version).await
    }

    async fn status_with(
        &self,
        routing_version: u64,
    ) -> Result<RoutingStatus, TopologyServiceError> {
        Ok(RoutingStatus {
            stored_version: self.nameserver.version().await?,
            routing_version,
            lease_holds: self.routing.lease_holds(),
            confirmed_age: self.routing.confirmed_age(),
            server_id: self.routing.identity().id.clone(),
        })
    }

    /// Returns the registered servers and the stored version they are measured against.
    pub async fn servers(&self) -> Result<(Vec<ServerRecord>, u64), TopologyServiceError> {
        let servers = self.nameserver.servers().await?;
        let stored_version = self.nameserver.version().await?;
        Ok((servers, stored_version))
    }

    /// Returns the leaves removed from the topology whose tables are not dropped yet.
    pub async fn retired(&self) -> Result<Vec<RetiredShard>, TopologyServiceError> {
        Ok(self.nameserver.retired().await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{
        db::{Database, DbError},
        nameserver::{ServerIdentity, replicated_table},
    };

    /// Records the leaves whose tables it creates, with the URL it was given; a host named
    /// `down` fails.
    #[derive(Default)]
    struct Recorder {
        made: Mutex<Vec<(String, String)>>,
    }

    impl Materializer for Recorder {
        fn materialize<'a>(
            &'a self,
            info: &'a ShardInfo,
            host: &'a Host,
        ) -> Pin<Box<dyn Future<Output = Result<(), RouteError>> + Send + 'a>> {
            Box::pin(async move {
                if host.name == "down" {
                    return Err(RouteError::Host {
                        host: host.name.clone(),
                        cause: DbError::Timeout(Duration::from_secs(1)),
                    });
                }
                let made = (info.id.to_string(), host.url.clone());
                self.made.lock().expect("lock").push(made);
                Ok(())
            })
        }
    }

    async fn service(dir: &tempfile::TempDir) -> (TopologyService, Arc<Recorder>) {
        let url = format!("sqlite://{}", dir.path().join("ns.db").display());
        let db = Database::open(&url, Duration::from_secs(30))
            .await
            .expect("open sqlite");
        let nameserver = NameServer::open(db).await.expect("create tables");
        let identity = ServerIdentity::new("test", "127.0.0.1:1");
        let routing = Routing::start(nameserver, identity, Duration::from_secs(30))
            .await
            .expect("start routing");
        let recorder = Arc::new(Recorder::default());
        let types = ShardTypes::new(["KvShard"]);
        let service = TopologyService::new(Arc::new(routing), types, recorder.clone());
        (service, recorder)
    }

    /// Table 1 over two ranges on `host`, the host set in the same batch.
    fn table_on(host: &str) -> Vec<Change> {
        let mut changes = vec![Change::SetHost(Host {
            name: host.into(),
            url: format!("sqlite:///tmp/{host}.db"),
            read_weight: 1,
            write_weight: 1,
        })];
        changes.extend(replicated_table(1, "KvShard", "t1", &[host.to_owned()], 2).expect("ids"));
        changes
    }

    /// The tables of a batch's leaves exist before the batch lands (the host's URL coming from
    /// the same batch), and this server routes with the batch as soon as the call returns.
    #[tokio::test]
    async fn a_batch_creates_its_leaves_tables_first_and_routes_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (service, recorder) = service(&dir).await;
        let version = service.apply(&table_on("h1")).await.expect("apply");
        let made = recorder.made.lock().expect("lock").clone();
        let url = "sqlite:///tmp/h1.db".to_owned();
        assert_eq!(
            made,
            [
                ("h1/t1_0000".into(), url.clone()),
                ("h1/t1_0001".into(), url)
            ]
        );
        let status = service.status().await.expect("status");
        assert_eq!(
            (status.stored_version, status.routing_version),
            (version, version)
        );
        let lookup = service.lookup(1, 42).expect("key 42 routes");
        assert_eq!(lookup.tree.children.len(), 1, "{lookup:?}");
        assert_eq!(lookup.tree.children[0].1.id.hostname, "h1");
    }

    /// A leaf whose tables cannot be created stops the whole batch, named in the error.
    #[tokio::test]
    async fn a_leaf_without_tables_stops_its_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (service, _) = service(&dir).await;
        let before = service.status().await.expect("status").stored_version;
        let err = service
            .apply(&table_on("down"))
            .await
            .expect_err("no tables");
        assert!(
            matches!(&err, TopologyServiceError::Materialize { shard, .. } if shard.hostname == "down"),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("create the tables of shard down/t1_0000: "),
            "{err}"
        );
        assert_eq!(
            service.status().await.expect("status").stored_version,
            before
        );
        assert!(service.dump().await.expect("dump").shards.is_empty());
    }

    #[tokio::test]
    async fn an_empty_batch_and_a_table_without_forwardings_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (service, _) = service(&dir).await;
        let err = service.apply(&[]).await.expect_err("empty");
        assert!(matches!(err, TopologyServiceError::NoChanges), "{err}");
        let err = service.lookup(9, 1).expect_err("no table 9");
        assert!(
            matches!(
                err,
                TopologyServiceError::Route(RouteError::NoForwarding { table_id: 9, .. })
            ),
            "{err}"
        );
    }
}
