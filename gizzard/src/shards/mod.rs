//! Shards: the routing trees a forwarding points at, and the physical tables at their leaves.
//!
//! - [`node`]: the runtime tree ([`Node`]): which leaves a read tries, in what order, and
//!   which leaves a write goes to, per node type (Replicating, ReadOnly, WriteOnly, Blocked,
//!   BlackHole, leaf).
//! - [`health`]: each leaf's recent latency, its hedge (how long a caller with its answer
//!   elsewhere waits for it) and suspicion, so a dead or frozen replica is read last and
//!   written through the retry queue instead of costing every caller a deadline.
//! - [`registry`]: the application's physical shard types by class name.
//! - [`router`]: builds trees from the current routing snapshot, keeping one physical shard
//!   per leaf and one connection pool per host across reloads.
//! - [`write`](mod@write): the write path: apply a write to every writable leaf in parallel
//!   (hedged once a readable leaf applied it), store a retry job for each leaf that failed or
//!   was left behind, and run those jobs.
//! - [`retire`]: the sweep that fences a deleted leaf's tables once no server can route to it,
//!   and drops them after a grace period.
//! - [`coalesce`]: group commit: concurrent writes to one leaf share multi-row statements.

pub mod coalesce;
pub mod health;
pub mod node;
pub mod registry;
pub mod retire;
pub mod router;
pub mod write;

pub use node::{Leaf, Node, WritePlan};
pub use registry::{Checksum, MAX_KEY, PhysicalShard, Registry};
pub use router::ShardRouter;
pub use write::{WriteError, WriteOp, WriteOutcome, Writer};

use std::time::Duration;

/// Why an operation on a shard failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ShardError {
    /// The shard's host did not answer or refused the connection.
    #[error("shard {shard} is unavailable: {reason}")]
    Unavailable { shard: String, reason: String },
    /// No answer within the deadline: a write may or may not have been applied.
    #[error("shard {shard} did not answer within {after:?} (a write may have been applied)")]
    Timeout { shard: String, after: Duration },
    /// A Blocked or ReadOnly node refused the operation; writes are retried later.
    #[error("shard {shard} refused the operation: {reason}")]
    Refused { shard: String, reason: String },
    /// The database answered with an error.
    #[error("shard {shard}: {message}")]
    Query { shard: String, message: String },
    /// The tree has no shard that can serve reads.
    #[error("no readable shard under {shard}")]
    NotReadable { shard: String },
}

impl ShardError {
    /// Returns the same error about `shard`: for an error of a statement that served several
    /// shards on one host, as each shard's caller sees it.
    pub fn on_shard(self, shard: &str) -> Self {
        let shard = shard.to_owned();
        match self {
            Self::Unavailable { reason, .. } => Self::Unavailable { shard, reason },
            Self::Timeout { after, .. } => Self::Timeout { shard, after },
            Self::Refused { reason, .. } => Self::Refused { shard, reason },
            Self::Query { message, .. } => Self::Query { shard, message },
            Self::NotReadable { .. } => Self::NotReadable { shard },
        }
    }

    /// Returns whether a retry should count towards a job's error limit: refusals by the
    /// topology and unreachable hosts wait for an operator or a recovery, not for the data.
    pub fn counts_as_failure(&self) -> bool {
        !matches!(
            self,
            Self::Refused { .. } | Self::Unavailable { .. } | Self::Timeout { .. }
        )
    }
}

impl ShardError {
    /// Classifies a database error on `shard`: unreachable hosts and deadlines apart from
    /// errors the server answered with.
    pub fn from_db(shard: &crate::nameserver::ShardId, err: crate::db::DbError) -> Self {
        use crate::db::DbError;
        let shard = shard.to_string();
        match err {
            DbError::Timeout(after) => Self::Timeout { shard, after },
            DbError::Mysql(mysql_async::Error::Server(e)) => Self::Query {
                shard,
                message: e.to_string(),
            },
            DbError::Mysql(e) => Self::Unavailable {
                shard,
                reason: e.to_string(),
            },
            DbError::Sqlite(_) | DbError::Value(_) => Self::Query {
                shard,
                message: err.to_string(),
            },
            DbError::Url { .. } | DbError::Task(_) => Self::Unavailable {
                shard,
                reason: err.to_string(),
            },
        }
    }
}
