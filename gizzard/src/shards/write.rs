//! The write path. A write is an idempotent, commutative operation ([`WriteOp`]) applied to
//! every writable leaf of its key's tree in parallel, each under a deadline; concurrent writes
//! to one leaf share multi-row statements (see [`super::coalesce`]). A leaf that
//! fails, times out, is suspect, or sits behind a ReadOnly or Blocked node gets a retry job in
//! the durable queue. The caller is acknowledged once every leaf has applied the write or has
//! a stored retry job; when storing fails the caller gets [`WriteError::NotDurable`], and since
//! writes are idempotent, retrying is safe.
//!
//! **Hedging.** Once a leaf that serves reads has applied the write, the others get only
//! their hedge ([`super::health`]: a few times their recent p99, counted from the start of the
//! write) instead of the whole deadline; a leaf still silent then is left to the retry queue
//! like a failed one (its statement may land later, which is harmless: writes are idempotent
//! and commutative, and the retry job covers it), and is marked suspect if it owes answers for
//! that long. Until a readable leaf has applied the write, every leaf gets its full deadline,
//! so hedging never acknowledges a write that no read could find. Likewise a suspect leaf is
//! skipped (queued at once) only while some readable leaf is not.
//!
//! Every write holds a [`WritePermit`] of the routing while it runs: it is refused when the
//! server's routing lease has lapsed ([`WriteError::Unconfirmed`]), and its acknowledgement is
//! refused when the lease lapsed while it ran ([`WriteError::LeaseLapsed`]), so a server cut
//! off from the nameserver never acknowledges a write that a migration may have missed.
//!
//! A retry job names its target leaf and carries the key, so [`Writer::retry`] can check the
//! leaf against the topology of the moment: still writable, it is written; refused by a node,
//! the job waits without counting; gone from the key's tree (moved by a migration), the write
//! goes to the key's current tree instead, so nothing acknowledged is lost. Retries are how a
//! suspect leaf is probed: one at a time tries it, the others wait (up to the leaf deadline)
//! for that probe's success rather than piling statements on a host that may hang.

use std::{future::Future, sync::Arc, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

use super::{
    Leaf, PhysicalShard, ShardError, ShardRouter,
    coalesce::{Coalescer, JobBatches},
    health::{Admit, Op},
    router::RouteError,
};
use crate::{
    nameserver::{RoutingLeaseError, ShardId, WritePermit},
    scheduler::{ClaimedJob, JobQueue, NewJob, Priority},
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

/// Why a write was not acknowledged. The text becomes a gRPC status, which prints one
/// message, so each variant names its cause in its message and has no `source`.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("route write: {0}")]
    Route(RouteError),
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

impl WriteError {
    /// Whether the write was refused before any leaf was sent it, so nothing of it is stored.
    pub fn wrote_nothing(&self) -> bool {
        matches!(self, Self::Route(_) | Self::Unconfirmed(_))
    }
}

impl From<RouteError> for WriteError {
    fn from(err: RouteError) -> Self {
        Self::Route(err)
    }
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
    jobs: Arc<JobBatches>,
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
            jobs: Arc::new(JobBatches::new(queue)),
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
        let results = apply_hedged(
            &self.batches,
            self.leaf_timeout,
            &plan.leaves,
            &plan.serves_reads,
            op,
        )
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
        // Concurrent writes' jobs share a transaction (see `JobBatches`).
        self.jobs.store(jobs).await.map_err(|e| {
            let leaves: Vec<String> = retries.iter().map(|(leaf, _)| leaf.to_string()).collect();
            not_durable(format!("store retries for {}: {e}", leaves.join(", ")))
        })
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
            return self.retry_leaf(leaf, &retry.op, target).await;
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

    /// Applies a retry to `leaf`, its target. Retries are how a suspect leaf comes back: one
    /// at a time probes it, and the others wait up to the leaf deadline for that probe to
    /// succeed (they fail without counting if it does not), so a hung host gets one statement
    /// from the queue rather than one per worker.
    async fn retry_leaf(&self, leaf: &Leaf<S>, op: &W, target: &str) -> Result<(), ShardError> {
        let health = &leaf.health;
        let _probe = if health.is_suspect() {
            match health.try_probe() {
                Some(probe) => Some(probe),
                None => {
                    if tokio::time::timeout(self.leaf_timeout, health.recovered())
                        .await
                        .is_err()
                    {
                        return Err(ShardError::Unavailable {
                            shard: target.to_owned(),
                            reason: "suspect, and another retry's probe did not succeed".into(),
                        });
                    }
                    None
                }
            }
        } else {
            None
        };
        let in_flight = health.start();
        let result = match tokio::time::timeout(self.leaf_timeout, op.apply(&leaf.shard)).await {
            Ok(result) => result,
            Err(_) => Err(ShardError::Timeout {
                shard: target.to_owned(),
                after: self.leaf_timeout,
            }),
        };
        match &result {
            Ok(()) => {
                in_flight.answered();
                health.succeeded();
            }
            Err(ShardError::Unavailable { .. } | ShardError::Timeout { .. }) => {
                drop(in_flight);
                health.failed();
            }
            Err(_) => in_flight.answered(),
        }
        result
    }
}

/// Applies `op` to `leaves` in parallel and returns each one's result. A leaf that is
/// suspect and not due for a probe is not tried (it fails at once), unless no leaf that
/// counts would be tried otherwise. Once a leaf that counts has applied the write, each
/// other leaf fails when its hedge has passed. Leaves count when they serve reads, or all
/// of them when none does.
async fn apply_hedged<S: PhysicalShard, W: WriteOp<S>>(
    batches: &Coalescer<S, W>,
    leaf_timeout: Duration,
    leaves: &[&Leaf<S>],
    serves_reads: &[bool],
    op: &W,
) -> Vec<Result<(), ShardError>> {
    let started = tokio::time::Instant::now();
    let counts: Vec<bool> = if serves_reads.contains(&true) {
        serves_reads.to_vec()
    } else {
        vec![true; leaves.len()]
    };
    // `admit` hands out a suspect leaf's probe, so it is asked once per leaf.
    let admitted: Vec<Admit> = leaves.iter().map(|leaf| leaf.health.admit()).collect();
    let forced = !admitted
        .iter()
        .zip(&counts)
        .any(|(admit, counts)| *counts && *admit != Admit::Skip);
    let (applied, _) = tokio::sync::watch::channel(false);
    let (applied, counts) = (&applied, &counts);
    let attempts = leaves.iter().enumerate().map(|(i, leaf)| {
        let mut seen = applied.subscribe();
        let probe = forced || admitted[i] == Admit::Probe;
        async move {
            let write = batches.apply(leaf, op, probe);
            let hedge = leaf.health.hedge(Op::Write, leaf_timeout);
            let give_up = async {
                if seen.wait_for(|applied| *applied).await.is_err() {
                    // The sender outlives every attempt; should it not, wait it out.
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep_until(started + hedge).await;
            };
            tokio::select! {
                biased;
                result = write => {
                    if result.is_ok() && counts[i] {
                        applied.send_replace(true);
                    }
                    result
                }
                () = give_up => {
                    let marked = leaf.health.overdue(started.into_std());
                    tracing::debug!(shard = %leaf.id, ?hedge, suspect = marked,
                        "write applied elsewhere; not waiting longer for this replica");
                    Err(ShardError::Timeout { shard: leaf.id.to_string(), after: hedge })
                }
            }
        }
    });
    futures::future::join_all(attempts).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::{
        coalesce::tests::{Gated, Put},
        health::{FAILURE_THRESHOLD, LeafHealth, MAX_HEDGE},
    };

    /// Longer than any test runs: a write that waits for it has not been hedged.
    const DEADLINE: Duration = Duration::from_secs(600);

    fn leaf(host: &str) -> Leaf<Gated> {
        Leaf {
            id: ShardId::new(host, "t_0001").expect("valid id"),
            shard: Arc::new(Gated::new()),
            health: Arc::new(LeafHealth::default()),
        }
    }

    fn is_timeout(result: &Result<(), ShardError>) -> Option<Duration> {
        match result {
            Err(ShardError::Timeout { after, .. }) => Some(*after),
            _ => None,
        }
    }

    #[tokio::test]
    async fn once_a_replica_applied_a_write_a_hung_one_costs_it_only_its_hedge() {
        let batches = Coalescer::new(DEADLINE);
        let (live, hung) = (leaf("live"), leaf("hung"));
        live.shard.gate.add_permits(1_000);
        let results =
            apply_hedged(&batches, DEADLINE, &[&live, &hung], &[true, true], &Put(1)).await;
        assert!(results[0].is_ok(), "{:?}", results[0]);
        // No history yet: the hung leaf gets the ceiling, not the deadline.
        assert_eq!(is_timeout(&results[1]), Some(MAX_HEDGE), "{:?}", results[1]);
        assert!(
            hung.health.is_suspect(),
            "it owed an answer for a whole hedge: suspect without a single failure"
        );

        // The next write leaves it to the retry queue at once, without a statement.
        let sent = hung.shard.started();
        let results =
            apply_hedged(&batches, DEADLINE, &[&live, &hung], &[true, true], &Put(2)).await;
        assert!(results[0].is_ok());
        let err = results[1].as_ref().expect_err("skipped");
        assert!(err.to_string().contains("retried from the queue"), "{err}");
        assert_eq!(hung.shard.started(), sent);

        // It answers again: the hung statement lands, and the leaf is written as before.
        hung.shard.gate.add_permits(1_000);
        hung.health.recovered().await;
        let results =
            apply_hedged(&batches, DEADLINE, &[&live, &hung], &[true, true], &Put(3)).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    #[tokio::test]
    async fn a_write_is_not_hedged_before_a_replica_that_serves_reads_applied_it() {
        let batches = Coalescer::new(DEADLINE);
        // A new replica behind a WriteOnly node applies at once; the read replica is slow.
        let (unread, read) = (leaf("new"), leaf("old"));
        unread.shard.gate.add_permits(1_000);
        let leaves = [&unread, &read];
        let open_later = async {
            tokio::time::sleep(MAX_HEDGE * 2).await;
            read.shard.gate.add_permits(1);
        };
        let (results, ()) = tokio::join!(
            apply_hedged(&batches, DEADLINE, &leaves, &[false, true], &Put(1)),
            open_later
        );
        assert!(
            results.iter().all(Result::is_ok),
            "the read replica was waited for past any hedge: {results:?}"
        );
    }

    #[tokio::test]
    async fn suspect_replicas_are_skipped_only_while_a_readable_one_is_not() {
        let batches = Coalescer::new(DEADLINE);
        let (a, b) = (leaf("a"), leaf("b"));
        a.shard.gate.add_permits(1_000);
        b.shard.gate.add_permits(1_000);
        (0..FAILURE_THRESHOLD).for_each(|_| b.health.failed());
        let results = apply_hedged(&batches, DEADLINE, &[&a, &b], &[true, true], &Put(1)).await;
        assert!(results[0].is_ok());
        assert!(results[1].is_err(), "b is suspect and a took the write");
        assert_eq!(b.shard.started(), 0);

        // Both suspect: both are tried rather than the write reaching no replica.
        (0..FAILURE_THRESHOLD).for_each(|_| a.health.failed());
        let results = apply_hedged(&batches, DEADLINE, &[&a, &b], &[true, true], &Put(2)).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(
            !a.health.is_suspect() && !b.health.is_suspect(),
            "they answered"
        );

        // A suspect read replica is tried when the only other one is never read.
        (0..FAILURE_THRESHOLD).for_each(|_| a.health.failed());
        let results = apply_hedged(&batches, DEADLINE, &[&a, &b], &[true, false], &Put(3)).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
}
