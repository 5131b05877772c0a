//! [`ShardRouter`]: turns the current routing snapshot into runtime trees.
//!
//! Trees are rebuilt once per snapshot version, on the first lookup that sees the new
//! version. Physical shards and host connection pools outlive rebuilds: a leaf whose class and
//! host URL did not change keeps its shard object, its pool and its health record.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;

use super::{
    Leaf, Node, ShardError,
    health::LeafHealth,
    registry::{PhysicalShard, Registry},
};
use crate::{
    db::{Database, DbError},
    nameserver::{
        Host, NodeKind, NodeSpec, Routing, RoutingSnapshot, ShardId, ShardInfo, TopologyError,
        hash::hash,
    },
};

/// Why no tree could be found for a key.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("table {table_id} has no forwarding for hash {hash}")]
    NoForwarding { table_id: i32, hash: i64 },
    #[error("shard {0} is not in the topology")]
    UnknownShard(String),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("host {host} of shard {shard} is not in the topology")]
    UnknownHost { host: String, shard: String },
    #[error("open host {host}: {cause}")]
    Host { host: String, cause: DbError },
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// The trees of one snapshot version, by root.
struct Forest<S> {
    snapshot: Arc<RoutingSnapshot>,
    trees: HashMap<ShardId, Arc<Node<S>>>,
}

/// What survives rebuilds.
struct Cache<S> {
    hosts: HashMap<String, (String, Database)>,
    leaves: HashMap<ShardId, (String, String, Leaf<S>)>,
}

/// Routes keys to runtime trees.
pub struct ShardRouter<S> {
    routing: Arc<Routing>,
    registry: Registry<S>,
    db_timeout: Duration,
    cache: tokio::sync::Mutex<Cache<S>>,
    forest: ArcSwap<Option<Forest<S>>>,
}

impl<S> std::fmt::Debug for ShardRouter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRouter")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<S: PhysicalShard> ShardRouter<S> {
    /// Returns a router over `routing`, building leaves with `registry`; each shard host's
    /// database operations are bounded by `db_timeout`.
    pub fn new(routing: Arc<Routing>, registry: Registry<S>, db_timeout: Duration) -> Self {
        let cache = Cache {
            hosts: HashMap::new(),
            leaves: HashMap::new(),
        };
        Self {
            routing,
            registry,
            db_timeout,
            cache: tokio::sync::Mutex::new(cache),
            forest: ArcSwap::from_pointee(None),
        }
    }

    /// Returns the routing this router follows.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    /// Returns the registry of physical shard types.
    pub fn registry(&self) -> &Registry<S> {
        &self.registry
    }

    /// Returns the tree holding `key` of `table_id`.
    pub async fn tree(&self, table_id: i32, key: u64) -> Result<Arc<Node<S>>, RouteError> {
        if !self.routing.lease_holds() {
            // Reads go on with the last snapshot; operators see how many in this counter.
            metrics::counter!("gizzard_unconfirmed_routes_total").increment(1);
        }
        let forest = self.forest().await?;
        let forest = forest.as_ref().as_ref().expect("forest() builds one");
        let hash = hash(key);
        let root = forest
            .snapshot
            .lookup(table_id, hash)
            .ok_or(RouteError::NoForwarding { table_id, hash })?;
        forest
            .trees
            .get(root)
            .cloned()
            .ok_or_else(|| RouteError::UnknownShard(root.to_string()))
    }

    /// Returns the tree under any shard of the current topology (for jobs aimed at a node).
    pub async fn subtree(&self, id: &ShardId) -> Result<Node<S>, RouteError> {
        let snapshot = self.routing.current();
        let spec = snapshot.tree(id)?;
        let mut cache = self.cache.lock().await;
        self.build(&snapshot, &spec, &mut cache).await
    }

    /// Returns the leaf `id` of the current topology.
    pub async fn leaf(&self, id: &ShardId) -> Result<Leaf<S>, RouteError> {
        match self.subtree(id).await? {
            Node::Leaf(leaf) => Ok(leaf),
            _ => Err(RouteError::UnknownShard(format!("{id} (not a leaf)"))),
        }
    }

    /// Returns the physical shard of `info` on its host of the current topology, whether or
    /// not the topology still has the shard (a retired leaf's tables).
    pub async fn physical(&self, info: &ShardInfo) -> Result<S, RouteError> {
        let snapshot = self.routing.current();
        let host = snapshot
            .topology
            .hosts
            .get(&info.id.hostname)
            .ok_or_else(|| RouteError::UnknownHost {
                host: info.id.hostname.clone(),
                shard: info.id.to_string(),
            })?;
        let db = {
            let mut cache = self.cache.lock().await;
            self.host_db(host, &mut cache).await?
        };
        Ok(self.registry.build(info, db)?)
    }

    /// Creates the tables of leaf `info` on `host` when missing.
    pub async fn materialize(&self, info: &ShardInfo, host: &Host) -> Result<(), RouteError> {
        let db = {
            let mut cache = self.cache.lock().await;
            self.host_db(host, &mut cache).await?
        };
        self.registry.build(info, db)?.materialize().await?;
        Ok(())
    }

    async fn host_db(&self, host: &Host, cache: &mut Cache<S>) -> Result<Database, RouteError> {
        if let Some((url, db)) = cache.hosts.get(&host.name)
            && *url == host.url
        {
            return Ok(db.clone());
        }
        let db = Database::open_lazy(&host.url, self.db_timeout)
            .await
            .map_err(|cause| RouteError::Host {
                host: host.name.clone(),
                cause,
            })?;
        cache
            .hosts
            .insert(host.name.clone(), (host.url.clone(), db.clone()));
        Ok(db)
    }

    /// Returns the forest of the current snapshot, building it if the version moved.
    async fn forest(&self) -> Result<Arc<Option<Forest<S>>>, RouteError> {
        let snapshot = self.routing.current();
        let built = || {
            let forest = self.forest.load_full();
            let fresh = forest
                .as_ref()
                .as_ref()
                .is_some_and(|f| f.snapshot.version == snapshot.version);
            fresh.then_some(forest)
        };
        if let Some(forest) = built() {
            return Ok(forest);
        }
        let mut cache = self.cache.lock().await;
        // Another caller may have built it while this one waited for the lock.
        if let Some(forest) = built() {
            return Ok(forest);
        }
        let roots: HashSet<&ShardId> = snapshot.topology.forwardings.values().collect();
        let mut trees = HashMap::with_capacity(roots.len());
        for root in roots {
            let spec = snapshot.tree(root)?;
            trees.insert(
                root.clone(),
                Arc::new(self.build(&snapshot, &spec, &mut cache).await?),
            );
        }
        // Drop shards and pools the topology no longer has.
        cache
            .leaves
            .retain(|id, _| snapshot.topology.shards.contains_key(id));
        cache
            .hosts
            .retain(|name, _| snapshot.topology.hosts.contains_key(name));
        let forest = Arc::new(Some(Forest {
            snapshot: snapshot.clone(),
            trees,
        }));
        self.forest.store(forest.clone());
        tracing::debug!(version = snapshot.version, "routing trees rebuilt");
        Ok(forest)
    }

    async fn build(
        &self,
        snapshot: &RoutingSnapshot,
        spec: &NodeSpec,
        cache: &mut Cache<S>,
    ) -> Result<Node<S>, RouteError> {
        let id = spec.id.clone();
        if spec.kind == NodeKind::BlackHole {
            // Whatever a black hole wraps receives nothing through it.
            return Ok(Node::BlackHole { id });
        }
        let only_child =
            |children: Vec<Node<S>>| Box::new(children.into_iter().next().expect("validated"));
        let mut children = Vec::with_capacity(spec.children.len());
        let mut weights = Vec::with_capacity(spec.children.len());
        for (weight, child) in &spec.children {
            weights.push(*weight);
            children.push(Box::pin(self.build(snapshot, child, cache)).await?);
        }
        Ok(match &spec.kind {
            NodeKind::Replicating => Node::Replicating {
                id,
                children: weights.into_iter().zip(children).collect(),
            },
            NodeKind::ReadOnly => Node::ReadOnly {
                id,
                child: only_child(children),
            },
            NodeKind::WriteOnly => Node::WriteOnly {
                id,
                child: only_child(children),
            },
            NodeKind::Blocked => Node::Blocked {
                id,
                child: only_child(children),
            },
            NodeKind::BlackHole => Node::BlackHole { id },
            NodeKind::Leaf(class) => Node::Leaf(self.leaf_for(snapshot, &id, class, cache).await?),
        })
    }

    async fn leaf_for(
        &self,
        snapshot: &RoutingSnapshot,
        id: &ShardId,
        class: &str,
        cache: &mut Cache<S>,
    ) -> Result<Leaf<S>, RouteError> {
        let topology = &snapshot.topology;
        let host = topology
            .hosts
            .get(&id.hostname)
            .ok_or_else(|| RouteError::UnknownHost {
                host: id.hostname.clone(),
                shard: id.to_string(),
            })?;
        if let Some((cached_class, url, leaf)) = cache.leaves.get(id)
            && cached_class == class
            && *url == host.url
        {
            return Ok(leaf.clone());
        }
        let db = self.host_db(host, cache).await?;
        let info = topology
            .shards
            .get(id)
            .ok_or_else(|| RouteError::UnknownShard(id.to_string()))?;
        let shard = Arc::new(self.registry.build(info, db)?);
        let leaf = Leaf {
            id: id.clone(),
            shard,
            health: Arc::new(LeafHealth::new(id)),
        };
        cache.leaves.insert(
            id.clone(),
            (class.to_owned(), host.url.clone(), leaf.clone()),
        );
        Ok(leaf)
    }
}
