//! [`Migrations`]: what operators ask of migrations. A start checks the request against the
//! current topology, plans it, stores the migration and queues its job, which some server's
//! worker runs ([`super::runner`]); a cancel flags the migration and queues a fresh job that
//! rolls it back. Listings read the migrations table and the anti-entropy sweeps.

use super::{
    anti_entropy::{SweepError, SweepRecord, SweepStore},
    model::{HashRange, Migration, MigrationId, MovePlan, Plan, Progress, RebalancePlan, Status},
    plan::{self, PlanError},
    runner,
    store::{ListFilter, MigrationStore, StoreError},
};
use crate::{
    nameserver::{NodeKind, ShardId, Topology},
    scheduler::{JobQueue, QueueError},
    topology::{TopologyService, TopologyServiceError},
};

/// Moves a rebalance runs at once by default, in all and per host.
pub const DEFAULT_MAX_COPIES: usize = 2;
pub const DEFAULT_COPIES_PER_HOST: usize = 1;
/// The most migrations one listing returns.
pub const MAX_LIST: u32 = 1_000;

/// Two leaves, and the hashes to work on (every row when `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafPair {
    pub a: ShardId,
    pub b: ShardId,
    pub hashes: Option<HashRange>,
}

/// The kind of migration an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Moves leaf `shard` to `to_host`.
    Move {
        shard: ShardId,
        to_host: String,
    },
    /// Adds a replica of leaf `shard` on `host`.
    AddReplica {
        shard: ShardId,
        host: String,
    },
    /// Splits the range of forwarding `(table_id, base_id)` at `at` (the middle when `None`).
    Split {
        table_id: i32,
        base_id: i64,
        at: Option<i64>,
    },
    /// Copies the rows of `a` into `b`.
    Copy(LeafPair),
    Diff(LeafPair),
    Repair(LeafPair),
    /// Evens out leaves over `hosts` (every host when empty); `None` limits take the defaults.
    Rebalance {
        hosts: Vec<String>,
        max_copies: Option<usize>,
        copies_per_host: Option<usize>,
        dry_run: bool,
    },
}

/// A migration an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationRequest {
    pub kind: RequestKind,
    /// Rows a copy moves per second at most; `None` for the server's setting.
    pub rows_per_second: Option<u64>,
}

/// A move of a rebalance: started, or only planned so far. Boxed, as both are large.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Child {
    Started(Box<Migration>),
    Planned(Box<MovePlan>),
}

/// A migration, with a rebalance's moves in plan order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationTree {
    pub migration: Migration,
    pub children: Vec<Child>,
}

/// What a start did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// The migration is stored and its job queued.
    Stored(MigrationTree),
    /// A rebalance was running already: this is it, and nothing new was started.
    Resumed(MigrationTree),
    /// A dry run's plan, or a balanced cluster's empty one, stored nowhere.
    Planned(RebalancePlan),
}

/// Why a migration call failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{field}: shard {id} does not exist")]
    ShardNotFound { field: &'static str, id: ShardId },
    #[error("{field}: {id} is a {class_name}, not a leaf")]
    NotALeaf {
        field: &'static str,
        id: ShardId,
        class_name: String,
    },
    #[error("a and b are the same shard")]
    SameShard,
    /// Rows of one class mean nothing to a table of another: the copy job would fail on every
    /// page and be parked, leaving the migration running.
    #[error(
        "{a} is a {a_class} and {b} a {b_class}: copy, diff and repair need two leaves of one \
         class"
    )]
    ClassMismatch {
        a: Box<ShardId>,
        a_class: String,
        b: Box<ShardId>,
        b_class: String,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("migration {id} is already {status}")]
    Finished { id: MigrationId, status: Status },
    /// The migration is stored and will not run until a job is queued for it.
    #[error(
        "migration {id} is stored but its job could not be queued ({cause}); `gizzmo cancel \
         {id}` removes it"
    )]
    NotQueued { id: MigrationId, cause: QueueError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Topology(#[from] TopologyServiceError),
    #[error(transparent)]
    Sweeps(#[from] SweepError),
}

/// Starts, shows and cancels migrations. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Migrations {
    topology: TopologyService,
    store: MigrationStore,
    queue: JobQueue,
    sweeps: SweepStore,
}

impl Migrations {
    /// Returns the service planning against `topology`, storing migrations in `store` and
    /// their jobs in `queue`.
    pub fn new(
        topology: TopologyService,
        store: MigrationStore,
        queue: JobQueue,
        sweeps: SweepStore,
    ) -> Self {
        Self {
            topology,
            store,
            queue,
            sweeps,
        }
    }

    /// Plans `request` against the current topology, stores it and queues its job. A
    /// rebalance while another runs returns the running one; a dry run only plans.
    pub async fn start(&self, request: MigrationRequest) -> Result<Started, MigrationError> {
        let topology = self.topology.current().await?;
        let tag = format!("{:04x}", rand::random::<u16>());
        let plan = match request.kind {
            RequestKind::Move { shard, to_host } => {
                let shard = leaf(&topology, "shard", shard)?;
                Plan::Move(plan::plan_move(&topology, &shard, &to_host, true, &tag)?)
            }
            RequestKind::AddReplica { shard, host } => {
                let shard = leaf(&topology, "shard", shard)?;
                Plan::Move(plan::plan_move(&topology, &shard, &host, false, &tag)?)
            }
            RequestKind::Split {
                table_id,
                base_id,
                at,
            } => Plan::Split(plan::plan_split(&topology, table_id, base_id, at, &tag)?),
            RequestKind::Copy(pair) => {
                let LeafPair { a, b, hashes } = leaf_pair(&topology, pair)?;
                Plan::Copy {
                    from: a,
                    to: b,
                    hashes,
                }
            }
            RequestKind::Diff(pair) => {
                let LeafPair { a, b, hashes } = leaf_pair(&topology, pair)?;
                Plan::Diff { a, b, hashes }
            }
            RequestKind::Repair(pair) => {
                let LeafPair { a, b, hashes } = leaf_pair(&topology, pair)?;
                Plan::Repair { a, b, hashes }
            }
            RequestKind::Rebalance {
                hosts,
                max_copies,
                copies_per_host,
                dry_run,
            } => {
                if let Some(running) = self.running_rebalance().await? {
                    return Ok(Started::Resumed(self.get(running).await?));
                }
                let plan = plan::plan_rebalance(
                    &topology,
                    &hosts,
                    max_copies.unwrap_or(DEFAULT_MAX_COPIES),
                    copies_per_host.unwrap_or(DEFAULT_COPIES_PER_HOST),
                    &tag,
                )?;
                if dry_run || plan.moves.is_empty() {
                    return Ok(Started::Planned(plan));
                }
                Plan::Rebalance(plan)
            }
        };
        let progress = Progress {
            rows_per_second: request.rows_per_second,
            ..Progress::default()
        };
        let id = self.store.create(&plan, &progress, None).await?;
        self.queue
            .enqueue(&runner::job(id))
            .await
            .map_err(|cause| MigrationError::NotQueued { id, cause })?;
        tracing::info!(migration = id, what = %plan.describe(), "migration started");
        Ok(Started::Stored(self.get(id).await?))
    }

    async fn running_rebalance(&self) -> Result<Option<MigrationId>, MigrationError> {
        let running = self
            .store
            .list(ListFilter {
                running_only: true,
                ..Default::default()
            })
            .await?;
        Ok(running
            .into_iter()
            .find(|m| matches!(m.plan, Plan::Rebalance(_)))
            .map(|m| m.id))
    }

    /// Returns migration `id` with a rebalance's moves.
    pub async fn get(&self, id: MigrationId) -> Result<MigrationTree, MigrationError> {
        let migration = self.store.get(id).await?;
        let children = match &migration.plan {
            Plan::Rebalance(plan) => {
                let started = self
                    .store
                    .list(ListFilter {
                        parent: Some(id),
                        ..Default::default()
                    })
                    .await?;
                plan.moves
                    .iter()
                    .enumerate()
                    .map(|(i, planned)| {
                        let child = migration.progress.children.get(i).copied().flatten();
                        match started.iter().find(|c| Some(c.id) == child) {
                            Some(child) => Child::Started(Box::new(child.clone())),
                            None => Child::Planned(Box::new(planned.clone())),
                        }
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Ok(MigrationTree {
            migration,
            children,
        })
    }

    /// Returns the newest top-level migrations, at most `limit` (1 to [`MAX_LIST`]).
    pub async fn list(
        &self,
        running_only: bool,
        limit: u32,
    ) -> Result<Vec<Migration>, MigrationError> {
        let filter = ListFilter {
            running_only,
            parent: None,
            limit: limit.clamp(1, MAX_LIST),
        };
        Ok(self.store.list(filter).await?)
    }

    /// Asks migration `id` to stop and roll back what it added before its cutover.
    pub async fn cancel(&self, id: MigrationId) -> Result<MigrationTree, MigrationError> {
        let migration = self.store.get(id).await?;
        if migration.status.is_final() {
            return Err(MigrationError::Finished {
                id,
                status: migration.status,
            });
        }
        self.store.request_cancel(id).await?;
        // A fresh job, so a migration whose job was parked as bad (or never stored) still
        // rolls back; a run in progress loses ownership to it and stops.
        if migration.parent.is_none() {
            self.queue.enqueue(&runner::job(id)).await?;
        }
        tracing::info!(migration = id, "migration cancel requested");
        self.get(id).await
    }

    /// Returns the anti-entropy record of every replica pair: the migrations that servers
    /// start by themselves.
    pub async fn sweeps(&self) -> Result<Vec<SweepRecord>, MigrationError> {
        Ok(self.sweeps.list().await?)
    }
}

/// Returns `id` if the topology has it as a leaf; `field` names it in errors.
fn leaf(topology: &Topology, field: &'static str, id: ShardId) -> Result<ShardId, MigrationError> {
    match topology.shards.get(&id) {
        None => Err(MigrationError::ShardNotFound { field, id }),
        Some(info)
            if !matches!(
                NodeKind::from_class_name(&info.class_name),
                NodeKind::Leaf(_)
            ) =>
        {
            Err(MigrationError::NotALeaf {
                field,
                class_name: info.class_name.clone(),
                id,
            })
        }
        Some(_) => Ok(id),
    }
}

/// Returns `pair` if it is two different leaves of one class.
fn leaf_pair(topology: &Topology, pair: LeafPair) -> Result<LeafPair, MigrationError> {
    let (a, b) = (leaf(topology, "a", pair.a)?, leaf(topology, "b", pair.b)?);
    if a == b {
        return Err(MigrationError::SameShard);
    }
    let class = |id: &ShardId| {
        topology
            .shards
            .get(id)
            .map_or_else(String::new, |info| info.class_name.clone())
    };
    let (a_class, b_class) = (class(&a), class(&b));
    if a_class != b_class {
        return Err(MigrationError::ClassMismatch {
            a: Box::new(a),
            a_class,
            b: Box::new(b),
            b_class,
        });
    }
    Ok(LeafPair {
        a,
        b,
        hashes: pair.hashes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nameserver::{Change, Host, replicated_table};

    /// Table 1 on `h1` and `h2` (TweetShard leaves), and one OtherShard leaf on `h1`.
    fn topology() -> Topology {
        let mut topology = Topology::default();
        let hosts = ["h1".to_owned(), "h2".to_owned()];
        let mut changes: Vec<Change> = hosts
            .iter()
            .map(|name| {
                Change::SetHost(Host {
                    name: name.clone(),
                    url: format!("sqlite:///tmp/{name}.db"),
                    read_weight: 1,
                    write_weight: 1,
                })
            })
            .collect();
        changes.extend(replicated_table(1, "TweetShard", "t1", &hosts, 1).expect("ids"));
        changes.extend(replicated_table(2, "OtherShard", "t2", &hosts[..1], 1).expect("ids"));
        for change in &changes {
            topology.apply(change).expect("apply");
        }
        topology
    }

    fn pair(a: &str, b: &str) -> LeafPair {
        LeafPair {
            a: a.parse().expect("id"),
            b: b.parse().expect("id"),
            hashes: None,
        }
    }

    #[test]
    fn copy_diff_and_repair_need_two_existing_leaves_of_one_class() {
        let topology = topology();
        let ok = leaf_pair(&topology, pair("h1/t1_0000", "h2/t1_0000")).expect("two leaves");
        assert_eq!(ok, pair("h1/t1_0000", "h2/t1_0000"));
        let refused = [
            (
                pair("h1/nope", "h2/t1_0000"),
                "a: shard h1/nope does not exist",
            ),
            (
                pair("h1/t1_0000", "h3/t1_0000"),
                "b: shard h3/t1_0000 does not exist",
            ),
            (
                pair("localhost/t1_0000", "h2/t1_0000"),
                "a: localhost/t1_0000 is a ReplicatingShard, not a leaf",
            ),
            (
                pair("h1/t1_0000", "h1/t1_0000"),
                "a and b are the same shard",
            ),
            (
                pair("h1/t1_0000", "h1/t2_0000"),
                "h1/t1_0000 is a TweetShard and h1/t2_0000 a OtherShard",
            ),
        ];
        for (pair, message) in refused {
            let err = leaf_pair(&topology, pair).expect_err(message);
            assert!(err.to_string().starts_with(message), "{err}");
        }
    }
}
