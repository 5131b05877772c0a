//! The write path. A write is an idempotent, commutative operation ([`WriteOp`]) applied to
//! every writable leaf of its key's tree in parallel, each under a deadline; concurrent writes
//! to one leaf share multi-row statements (see [`super::coalesce`]). A leaf that
//! fails, times out, is suspect, or sits behind a ReadOnly or Blocked node gets a retry job in
//! the durable queue. The caller is acknowledged once every leaf has applied the write or has
//! a stored retry job; when storing fails the caller gets [`WriteError::NotDurable`], and since
//! writes are idempotent, retrying is safe.
//!
//! Every write holds a [`WritePermit`] of the routing while it runs: it is refused when the
//! server's routing lease has lapsed ([`WriteError::Unconfirmed`]), and its acknowledgement is
//! refused when the lease lapsed while it ran ([`WriteError::LeaseLapsed`]), so a server cut
//! off from the nameserver never acknowledges a write that a migration may have missed.
//!
//! A retry job names its target leaf and carries the key, so [`Writer::retry`] can check the
//! leaf against the topology of the moment: still writable, it is written; refused by a node,
//! the job waits without counting; gone from the key's tree (moved by a migration), the write
//! goes to the key's current tree instead, so nothing acknowledged is lost.

use std::{future::Future, sync::Arc, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

use super::{PhysicalShard, ShardError, ShardRouter, coalesce::Coalescer, router::RouteError};
use crate::{
    nameserver::{RoutingLeaseError, ShardId, WritePermit},
    scheduler::{ClaimedJob, JobQueue, NewJob, Priority, QueueError},
};

/// The default deadline of a write on one leaf.
pub const DEFAULT_LEAF_TIMEOUT: Duration = Duration::from_secs(2);

/// A write of the application: idempotent (applying it twice changes nothing) and commutative
/// (writes to one key in any order converge), so replicas may apply it late and repeatedly.
/// It is `Clone` so that a write can wait in a leaf's queue after its caller has given up.
pub trait WriteOp<S>: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The job type of this write's retries.
    const JOB_TYPE: &'static str;

    /// Applies the write to one physical shard.
    fn apply<'a>(
        &'a self,
        shard: &'a S,
    ) -> impl Future<Output = Result<(), ShardError>> + Send + 'a;

    /// Applies several writes to one physical shard, all or (on error) any part of them.
    /// Override it to send them in one statement; by default they go one by one.
    fn apply_batch<'a>(
        ops: &'a [&'a Self],
        shard: &'a S,
    ) -> impl Future<Output = Result<(), ShardError>> + Send + 'a
    where
        S: Sync,
    {
        async move {
            for op in ops {
                op.apply(shard).await?;
            }
            Ok(())
        }
    }
}

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("route write: {0}")]
    Route(#[from] RouteError),
    /// Some leaf neither applied the write nor got a retry job; others may have applied it.
    #[error("write not stored durably ({reason}); it may be partly applied and retrying is safe")]
    NotDurable { reason: String },
    /// The server may not route writes now; nothing was written.
    #[error("write refused: {0}")]
    Unconfirmed(RoutingLeaseError),
    /// The routing lease lapsed while the write ran: it may have been applied, but the server
    /// cannot vouch that the leaves it chose are still the key's.
    #[error("write not acknowledged, it may have been applied and retrying is safe: {0}")]
    LeaseLapsed(RoutingLeaseError),
}

/// What happened to an acknowledged write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Leaves that applied it now.
    pub applied: usize,
    /// Leaves that will apply it from the retry queue.
    pub queued: usize,
}

/// The payload of a retry job.
#[derive(serde::Serialize, serde::Deserialize)]
struct Retry<W> {
    table_id: i32,
    key: u64,
    op: W,
}

/// Writes through the router, with retries in the queue.
pub struct Writer<S, W> {
    router: Arc<ShardRouter<S>>,
    queue: JobQueue,
    leaf_timeout: Duration,
    batches: Coalescer<S, W>,
}

impl<S, W> std::fmt::Debug for Writer<S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("leaf_timeout", &self.leaf_timeout)
            .finish_non_exhaustive()
    }
}

impl<S: PhysicalShard, W: WriteOp<S>> Writer<S, W> {
    /// Returns a writer; each leaf gets `leaf_timeout` to apply a write.
    pub fn new(router: Arc<ShardRouter<S>>, queue: JobQueue, leaf_timeout: Duration) -> Self {
        Self {
            router,
            queue,
            leaf_timeout,
            batches: Coalescer::new(leaf_timeout),
        }
    }

    /// Returns the router writes go through.
    pub fn router(&self) -> &Arc<ShardRouter<S>> {
        &self.router
    }

    /// Applies `op` for `key` of `table_id` to its tree; returns once it is applied or queued
    /// on every writable leaf.
    pub async fn write(&self, table_id: i32, key: u64, op: &W) -> Result<WriteOutcome, WriteError> {
        let permit = self
            .router
            .routing()
            .write_permit()
            .map_err(WriteError::Unconfirmed)?;
        let outcome = self.write_with(&permit, table_id, key, op).await?;
        permit.acknowledge().map_err(WriteError::LeaseLapsed)?;
        Ok(outcome)
    }

    /// Writes under `permit`, which the caller acknowledges.
    async fn write_with(
        &self,
        _permit: &WritePermit<'_>,
        table_id: i32,
        key: u64,
        op: &W,
    ) -> Result<WriteOutcome, WriteError> {
        // Routes with the current snapshot, at least as new as the permit's: a write routed
        // with a newer version than the server confirmed is one a migration waits for anyway.
        let tree = self.router.tree(table_id, key).await?;
        let plan = tree.write_plan();
        let results =
            futures::future::join_all(plan.leaves.iter().map(|leaf| self.batches.apply(leaf, op)))
                .await;
        let mut retries: Vec<(&ShardId, ShardError)> = Vec::new();
        let mut applied = 0;
        for (leaf, result) in plan.leaves.iter().zip(results) {
            match result {
                Ok(()) => applied += 1,
                Err(err) => retries.push((&leaf.id, err)),
            }
        }
        retries.extend(
            plan.refused
                .iter()
                .map(|(leaf, err)| (&leaf.id, err.clone())),
        );
        let outcome = WriteOutcome {
            applied,
            queued: retries.len(),
        };
        if !retries.is_empty() {
            self.enqueue(table_id, key, op, &retries).await?;
        }
        Ok(outcome)
    }

    async fn enqueue(
        &self,
        table_id: i32,
        key: u64,
        op: &W,
        retries: &[(&ShardId, ShardError)],
    ) -> Result<(), WriteError> {
        let payload = Retry { table_id, key, op };
        let not_durable = |reason: String| WriteError::NotDurable { reason };
        let mut jobs = Vec::with_capacity(retries.len());
        for (leaf, err) in retries {
            tracing::debug!(shard = %leaf, error = %err, "write queued for retry");
            let job = NewJob::json(Priority::High, W::JOB_TYPE, &payload)
                .map_err(|e| not_durable(e.to_string()))?;
            jobs.push(job.with_shard(leaf.to_string()));
        }
        self.queue
            .enqueue_many(&jobs)
            .await
            .map_err(|e: QueueError| {
                let leaves: Vec<String> =
                    retries.iter().map(|(leaf, _)| leaf.to_string()).collect();
                not_durable(format!("store retries for {}: {e}", leaves.join(", ")))
            })?;
        Ok(())
    }

    /// Runs one retry job: writes its target leaf if the current topology still routes the key
    /// there, waits (without counting) while a node refuses, and otherwise writes the key's
    /// current tree.
    pub async fn retry(&self, job: &ClaimedJob) -> Result<(), ShardError> {
        let retry: Retry<W> = job.decode().map_err(|e| ShardError::Query {
            shard: job.shard.clone().unwrap_or_default(),
            message: format!("decode retry job {}: {e}", job.id),
        })?;
        let target = job.shard.as_deref().unwrap_or_default();
        let unconfirmed = |e: RoutingLeaseError| ShardError::Unavailable {
            shard: target.to_owned(),
            reason: e.to_string(),
        };
        // The job picks its leaf by the routing: like a write, it needs the lease, from
        // before it chooses until the leaf applied it.
        let permit = self.router.routing().write_permit().map_err(unconfirmed)?;
        self.retry_with(&permit, &retry, target).await?;
        permit.acknowledge().map_err(unconfirmed)
    }

    async fn retry_with(
        &self,
        permit: &WritePermit<'_>,
        retry: &Retry<W>,
        target: &str,
    ) -> Result<(), ShardError> {
        let route_err = |e: RouteError| ShardError::Unavailable {
            shard: target.to_owned(),
            reason: e.to_string(),
        };
        let tree = self
            .router
            .tree(retry.table_id, retry.key)
            .await
            .map_err(route_err)?;
        let plan = tree.write_plan();
        if let Some(leaf) = plan
            .leaves
            .iter()
            .find(|leaf| leaf.id.to_string() == target)
        {
            // Retries always try the leaf: they are how a suspect leaf comes back.
            let result =
                match tokio::time::timeout(self.leaf_timeout, retry.op.apply(&leaf.shard)).await {
                    Ok(result) => result,
                    Err(_) => Err(ShardError::Timeout {
                        shard: target.to_owned(),
                        after: self.leaf_timeout,
                    }),
                };
            if result.is_ok() {
                leaf.health.succeeded();
            }
            return result;
        }
        if let Some((_, refusal)) = plan
            .refused
            .iter()
            .find(|(leaf, _)| leaf.id.to_string() == target)
        {
            return Err(refusal.clone());
        }
        tracing::info!(
            shard = target,
            table_id = retry.table_id,
            "retry target left the key's tree; writing the current tree"
        );
        drop(plan);
        self.write_with(permit, retry.table_id, retry.key, &retry.op)
            .await
            .map(drop)
            .map_err(|e| ShardError::Unavailable {
                shard: target.to_owned(),
                reason: e.to_string(),
            })
    }
}
