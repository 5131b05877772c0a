//! Group commit per leaf. Under load many writes go to the same leaf at once, and sending each
//! as its own statement spends a round trip, a parse and a commit per write. Writes queue per
//! leaf ([`crate::batch`]): a write that finds its leaf with a free statement slot goes out at
//! once (no timer, so an idle proxy adds no latency); writes that arrive while every slot of
//! the leaf is busy wait in the leaf's queue, and the next statement to finish takes all of
//! them (up to [`MAX_BATCH`]) into one multi-row statement ([`WriteOp::apply_batch`]).
//!
//! Statements run in spawned tasks, so a caller that gives up (a cancelled RPC, or a writer
//! that stopped waiting at the leaf's hedge) never strands the writes batched with its own,
//! and a write whose caller gave up before its statement went out is not sent. Each caller
//! still waits at most the leaf deadline, and every write of a failed statement gets the
//! statement's error: the writer queues a retry for each, exactly as for a write sent alone.
//!
//! The leaf's health ([`super::health`]) sees each statement in flight, so a leaf that stops
//! answering is suspect as soon as it owes an answer for longer than its hedge, and each
//! caller's wait for an applied write, which is the latency the hedge is derived from.
//!
//! Retry jobs get the same treatment (`JobBatches`): while a replica is down or frozen,
//! every write stores a job for it before it is acknowledged, and one queue transaction per
//! write would cost the nameserver more than the lost replica saved. Jobs arriving while
//! [`ENQUEUES_IN_FLIGHT`] transactions run share the next one (up to [`MAX_JOBS`] jobs).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Leaf, PhysicalShard, ShardError, WriteOp, health::Op};
use crate::{
    batch::{Batch, Batcher, Limits, Queue, Queued},
    nameserver::ShardId,
    scheduler::{JobQueue, NewJob, QueueError},
};

/// The most writes one statement carries: bounds the statement's size and its time in the
/// database, so one batch cannot hold row locks for long or outgrow a packet.
pub const MAX_BATCH: usize = 256;

/// The most statements in flight on one leaf. A host holds many leaves, so it still gets
/// many statements at once; while one runs, the leaf's next writes queue and go out together.
/// Measured with `tbird_load` (32 concurrent posts over T-Bird's 32 leaves on 2 MariaDB
/// instances): 4 in flight almost never queued, and posts ran at 0.69x direct SQL; 1 gave
/// 0.88x.
pub const MAX_IN_FLIGHT: usize = 1;

/// Queue transactions storing retry jobs at once, per writer: few enough that concurrent
/// writes' jobs meet in a batch, two so one commit's round trip overlaps the next batch.
pub const ENQUEUES_IN_FLIGHT: usize = 2;

/// The most retry jobs one queue transaction stores.
pub const MAX_JOBS: usize = 512;

/// The per-leaf queues of one writer.
pub(super) struct Coalescer<S, W> {
    queues: Batcher<ShardId, LeafWrites<S>, Write<W>, Written>,
    leaf_timeout: Duration,
}

/// What the queue of one leaf runs its statements with.
struct LeafWrites<S> {
    leaf: Leaf<S>,
    leaf_timeout: Duration,
}

/// A queued write.
struct Write<W> {
    op: W,
    /// Sent even to a suspect leaf: a probe, or a write with no healthy leaf to go to.
    probe: bool,
}

/// What a queued write's caller gets back.
type Written = Result<(), ShardError>;

fn suspect<S>(leaf: &Leaf<S>) -> ShardError {
    ShardError::Unavailable {
        shard: leaf.id.to_string(),
        reason: "suspect (failing or not answering); retried from the queue".into(),
    }
}

impl<S: PhysicalShard, W: WriteOp<S>> Coalescer<S, W> {
    /// Returns queues whose writes each get `leaf_timeout`.
    pub(super) fn new(leaf_timeout: Duration) -> Self {
        Self {
            queues: Batcher::new(Limits {
                slots: MAX_IN_FLIGHT,
                max_weight: MAX_BATCH,
            }),
            leaf_timeout,
        }
    }

    /// Applies `op` to `leaf`, alone or with other writes to the same leaf, within the leaf
    /// deadline. A suspect leaf is not tried unless `probe` is set: its write goes straight to
    /// the retry queue, so a dead replica does not slow every write down.
    pub(super) async fn apply(&self, leaf: &Leaf<S>, op: &W, probe: bool) -> Written {
        if !probe && leaf.health.is_suspect() {
            return Err(suspect(leaf));
        }
        let started = Instant::now();
        let write = Write {
            op: op.clone(),
            probe,
        };
        // A leaf whose shard object was replaced (a host whose URL changed) keeps its id: it
        // gets a new queue, so a statement never mixes writes meant for different pools.
        let written = self.queues.submit_to(
            &leaf.id,
            write,
            |kept| Arc::ptr_eq(&kept.leaf.shard, &leaf.shard),
            || LeafWrites {
                leaf: leaf.clone(),
                leaf_timeout: self.leaf_timeout,
            },
        );
        // The deadline counts from here, so time spent queued counts as time on the leaf.
        match tokio::time::timeout(self.leaf_timeout, written).await {
            Ok(Ok(result)) => {
                if result.is_ok() {
                    leaf.health.record(Op::Write, started.elapsed());
                }
                result
            }
            Ok(Err(_)) => Err(ShardError::Query {
                shard: leaf.id.to_string(),
                message: "the write panicked".into(),
            }),
            Err(_) => Err(ShardError::Timeout {
                shard: leaf.id.to_string(),
                after: self.leaf_timeout,
            }),
        }
    }
}

impl<S: PhysicalShard, W: WriteOp<S>> Batch<Write<W>, Written> for LeafWrites<S> {
    async fn run(&self, batch: Vec<Queued<Write<W>, Written>>) {
        let result = self.apply(&batch).await;
        for queued in batch {
            queued.answer(result.clone());
        }
    }
}

impl<S: PhysicalShard> LeafWrites<S> {
    /// Applies one batch under the deadline and records the leaf's health as separate writes
    /// would have: one success clears it, and each write of a failed batch counts a failure.
    async fn apply<W: WriteOp<S>>(&self, batch: &[Queued<Write<W>, Written>]) -> Written {
        let leaf = &self.leaf;
        // The leaf may have turned suspect while these writes waited; a probe goes anyway.
        if leaf.health.is_suspect() && !batch.iter().any(|q| q.job.probe) {
            return Err(suspect(leaf));
        }
        let ops: Vec<&W> = batch.iter().map(|q| &q.job.op).collect();
        let statement = W::apply_batch(&ops, &leaf.shard);
        let in_flight = leaf.health.start();
        let result = match tokio::time::timeout(self.leaf_timeout, statement).await {
            Ok(result) => result,
            Err(_) => Err(ShardError::Timeout {
                shard: leaf.id.to_string(),
                after: self.leaf_timeout,
            }),
        };
        match &result {
            Ok(()) => {
                in_flight.answered();
                leaf.health.succeeded();
            }
            Err(ShardError::Unavailable { .. } | ShardError::Timeout { .. }) => {
                drop(in_flight);
                batch.iter().for_each(|_| leaf.health.failed());
            }
            // The host answered, with an error of its own: alive, just not willing.
            Err(_) => in_flight.answered(),
        }
        result
    }
}

/// Group commit of retry jobs: callers' jobs waiting while every transaction slot is busy
/// share the next [`JobQueue::enqueue_many`].
pub(super) struct JobBatches {
    queue: Arc<Queue<StoreJobs, Vec<NewJob>, Stored>>,
}

/// What the retry jobs' queue stores its batches with.
struct StoreJobs(JobQueue);

/// Whether a caller's jobs are durable, or why they may not be.
type Stored = Result<(), String>;

impl JobBatches {
    /// Returns batches stored in `queue`.
    pub(super) fn new(queue: JobQueue) -> Self {
        let limits = Limits {
            slots: ENQUEUES_IN_FLIGHT,
            max_weight: MAX_JOBS,
        };
        Self {
            queue: Arc::new(Queue::new(StoreJobs(queue), limits)),
        }
    }

    /// Stores `jobs`, alone or in one transaction with other callers' jobs; returns once they
    /// are durable, or why they may not be.
    pub(super) async fn store(&self, jobs: Vec<NewJob>) -> Stored {
        self.queue
            .submit(jobs)
            .await
            .unwrap_or_else(|_| Err("storing the jobs panicked".into()))
    }
}

/// Each job of the batch is one caller's retry jobs, stored together or not at all.
impl Batch<Vec<NewJob>, Stored> for StoreJobs {
    /// A write whose caller went away may still be applied on other leaves: its retries keep
    /// the replicas converging.
    const RUN_ABANDONED: bool = true;

    fn weight(jobs: &Vec<NewJob>) -> usize {
        jobs.len()
    }

    async fn run(&self, batch: Vec<Queued<Vec<NewJob>, Stored>>) {
        let jobs: Vec<NewJob> = batch.iter().flat_map(|q| q.job.iter().cloned()).collect();
        match self.0.enqueue_many(&jobs).await {
            // Refused as invalid, the batch is split, so a bad job fails only its caller.
            Err(QueueError::InvalidJob(_)) if batch.len() > 1 => {
                for queued in batch {
                    let stored = self.0.enqueue_many(&queued.job).await;
                    queued.answer(stored.map(drop).map_err(|e| e.to_string()));
                }
            }
            stored => {
                let stored = stored.map(drop).map_err(|e| e.to_string());
                for queued in batch {
                    queued.answer(stored.clone());
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::{
        ops::{Range, RangeInclusive},
        sync::{
            Mutex,
            atomic::{AtomicBool, Ordering},
        },
    };

    use tokio::sync::Semaphore;

    use super::*;
    use crate::shards::{Checksum, health::LeafHealth};

    /// A shard that records each statement's writes and finishes a statement only when the
    /// test hands out a permit.
    pub(in crate::shards) struct Gated {
        statements: Mutex<Vec<Vec<u64>>>,
        pub(in crate::shards) gate: Semaphore,
        fail: AtomicBool,
    }

    impl Gated {
        /// Returns a shard whose gate is closed.
        pub(in crate::shards) fn new() -> Self {
            Self {
                statements: Mutex::new(Vec::new()),
                gate: Semaphore::new(0),
                fail: AtomicBool::new(false),
            }
        }

        /// Returns how many statements have started on the shard.
        pub(in crate::shards) fn started(&self) -> usize {
            self.statements.lock().expect("statements").len()
        }
    }

    impl PhysicalShard for Gated {
        type Row = u64;
        type Cursor = u64;

        async fn materialize(&self) -> Result<(), ShardError> {
            Ok(())
        }
        fn key_of(row: &u64) -> u64 {
            *row
        }
        fn cursor_of(row: &u64) -> u64 {
            *row
        }
        fn cursor_past(key: u64) -> u64 {
            key
        }
        async fn chunk_end(
            &self,
            _: Option<u64>,
            _: usize,
            _: Option<Range<i64>>,
        ) -> Result<Option<u64>, ShardError> {
            Ok(None)
        }
        async fn read_page(
            &self,
            _: Option<u64>,
            _: usize,
            _: Option<Range<i64>>,
        ) -> Result<Vec<u64>, ShardError> {
            Ok(Vec::new())
        }
        async fn write_rows(&self, _: &[u64]) -> Result<(), ShardError> {
            Ok(())
        }
        async fn checksum(
            &self,
            _: RangeInclusive<u64>,
            _: Option<Range<i64>>,
        ) -> Result<Checksum, ShardError> {
            Ok(Checksum { rows: 0, digest: 0 })
        }
        async fn fence(&self, _: &str) -> Result<(), ShardError> {
            Ok(())
        }
        async fn drop_tables(&self) -> Result<(), ShardError> {
            Ok(())
        }
        async fn delete_hash_range(&self, _: Range<i64>) -> Result<u64, ShardError> {
            Ok(0)
        }
    }

    /// A write whose statement panics.
    const POISON: u64 = u64::MAX;

    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    pub(in crate::shards) struct Put(pub(in crate::shards) u64);

    impl WriteOp<Gated> for Put {
        const JOB_TYPE: &'static str = "test.put";

        async fn apply(&self, shard: &Gated) -> Result<(), ShardError> {
            Self::apply_batch(&[self], shard).await
        }

        async fn apply_batch(ops: &[&Self], shard: &Gated) -> Result<(), ShardError> {
            let keys = ops.iter().map(|op| op.0).collect();
            shard.statements.lock().expect("statements").push(keys);
            shard.gate.acquire().await.expect("open gate").forget();
            assert!(
                ops.iter().all(|op| op.0 != POISON),
                "a poisoned write panics"
            );
            if shard.fail.load(Ordering::Relaxed) {
                return Err(ShardError::Unavailable {
                    shard: "h/t".into(),
                    reason: "down".into(),
                });
            }
            Ok(())
        }
    }

    struct Setup {
        writes: Arc<Coalescer<Gated, Put>>,
        leaf: Leaf<Gated>,
    }

    impl Setup {
        fn new() -> Self {
            let leaf = Leaf {
                id: "h/t_0".parse().expect("shard id"),
                shard: Arc::new(Gated::new()),
                health: Arc::new(LeafHealth::default()),
            };
            // Generous: these tests are about batching, never about the deadline.
            let writes = Arc::new(Coalescer::new(Duration::from_secs(60)));
            Self { writes, leaf }
        }

        fn write(&self, key: u64) -> tokio::task::JoinHandle<Result<(), ShardError>> {
            let (writes, leaf) = (self.writes.clone(), self.leaf.clone());
            tokio::spawn(async move { writes.apply(&leaf, &Put(key), false).await })
        }

        fn statements(&self) -> Vec<Vec<u64>> {
            self.leaf
                .shard
                .statements
                .lock()
                .expect("statements")
                .clone()
        }

        /// Starts a statement in every slot of the leaf, one write each, and returns them.
        async fn fill_slots(&self) -> Vec<tokio::task::JoinHandle<Result<(), ShardError>>> {
            let mut writes = Vec::new();
            for key in 0..MAX_IN_FLIGHT {
                writes.push(self.write(key as u64));
                self.started(key + 1).await;
            }
            writes
        }

        /// Lets the spawned tasks run until `n` statements have started.
        async fn started(&self, n: usize) {
            for _ in 0..10_000 {
                if self.statements().len() >= n {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("{n} statements never started: {:?}", self.statements());
        }
    }

    #[tokio::test]
    async fn a_write_to_an_idle_leaf_goes_out_alone_at_once() {
        let s = Setup::new();
        s.leaf.shard.gate.add_permits(1);
        s.write(7).await.expect("join").expect("applied");
        assert_eq!(s.statements(), [vec![7]]);
    }

    #[tokio::test]
    async fn writes_arriving_while_the_leaf_is_busy_share_the_next_statement() {
        let s = Setup::new();
        let first = s.fill_slots().await;
        assert!(
            s.statements().iter().all(|st| st.len() == 1),
            "each went out alone"
        );
        let queued: Vec<_> = (100..110).map(|k| s.write(k)).collect();
        // Every slot is busy: nothing more may start until a statement finishes.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.statements().len(), MAX_IN_FLIGHT);

        s.leaf.shard.gate.add_permits(MAX_IN_FLIGHT + 1);
        for write in first.into_iter().chain(queued) {
            write.await.expect("join").expect("applied");
        }
        let statements = s.statements();
        assert_eq!(statements.len(), MAX_IN_FLIGHT + 1, "{statements:?}");
        let mut batch = statements[MAX_IN_FLIGHT].clone();
        batch.sort_unstable();
        assert_eq!(batch, (100..110).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_statement_carries_at_most_max_batch_writes() {
        let s = Setup::new();
        let mut writes = s.fill_slots().await;
        let queued = MAX_BATCH as u64 + 10;
        writes.extend((1000..1000 + queued).map(|k| s.write(k)));
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        s.leaf.shard.gate.add_permits(MAX_IN_FLIGHT + 2);
        for write in writes {
            write.await.expect("join").expect("applied");
        }
        let sizes: Vec<usize> = s.statements().iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), MAX_IN_FLIGHT + queued as usize);
        assert_eq!(sizes.iter().max(), Some(&MAX_BATCH), "{sizes:?}");
    }

    #[tokio::test]
    async fn every_write_of_a_failed_statement_fails_and_counts_towards_suspicion() {
        let s = Setup::new();
        s.leaf.shard.fail.store(true, Ordering::Relaxed);
        let writes = s.fill_slots().await;
        let queued: Vec<_> = (100..103).map(|k| s.write(k)).collect();
        s.leaf.shard.gate.add_permits(MAX_IN_FLIGHT + 1);
        for write in writes.into_iter().chain(queued) {
            let err = write.await.expect("join").expect_err("failed");
            assert!(matches!(err, ShardError::Unavailable { .. }), "{err}");
        }
        assert!(s.leaf.health.is_suspect());
        // A suspect leaf is not tried: the write fails without a statement.
        let before = s.statements().len();
        let err = s.write(200).await.expect("join").expect_err("suspect");
        assert!(err.to_string().contains("retried from the queue"), "{err}");
        assert_eq!(s.statements().len(), before);
    }

    #[tokio::test]
    async fn a_panicking_statement_fails_each_of_its_writes_and_frees_the_leaf() {
        let s = Setup::new();
        let first = s.fill_slots().await;
        let queued: Vec<_> = [100, POISON, 101].map(|k| s.write(k)).into();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        s.leaf.shard.gate.add_permits(MAX_IN_FLIGHT + 1);
        for write in first {
            write.await.expect("join").expect("applied");
        }
        for write in queued {
            let err = write.await.expect("join").expect_err("panicked");
            assert!(
                matches!(&err, ShardError::Query { message, .. } if message.contains("panicked")),
                "{err}"
            );
        }
        assert!(
            !s.leaf.health.is_suspect(),
            "a panic says nothing about the host"
        );
        s.leaf.shard.gate.add_permits(1);
        s.write(7)
            .await
            .expect("join")
            .expect("applied after the panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaf_whose_shard_object_was_replaced_gets_a_queue_of_its_own() {
        let s = Setup::new();
        let old = s.fill_slots().await;
        // The same id through a new shard object, as after its host's URL changed.
        let replaced = Leaf {
            id: s.leaf.id.clone(),
            shard: Arc::new(Gated::new()),
            health: s.leaf.health.clone(),
        };
        replaced.shard.gate.add_permits(1);
        // Stuck behind the old object's statement, it would wait out the leaf deadline.
        s.writes
            .apply(&replaced, &Put(9), false)
            .await
            .expect("applied while the old object's statement runs");
        let statements = replaced
            .shard
            .statements
            .lock()
            .expect("statements")
            .clone();
        assert_eq!(statements, [vec![9]]);
        assert_eq!(
            s.statements().len(),
            MAX_IN_FLIGHT,
            "nothing went to the old object"
        );
        s.leaf.shard.gate.add_permits(MAX_IN_FLIGHT);
        for write in old {
            write.await.expect("join").expect("applied");
        }
    }

    fn job(n: u64) -> NewJob {
        NewJob::new(crate::scheduler::Priority::High, "test.put", n.to_string()).with_shard("h/t_0")
    }

    #[tokio::test]
    async fn concurrent_callers_retry_jobs_are_all_stored_and_a_bad_one_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        let db = crate::db::Database::open(&url, Duration::from_secs(10))
            .await
            .expect("open");
        let queue = JobQueue::open(db).await.expect("queue");
        let batches = Arc::new(JobBatches::new(queue.clone()));
        let callers = (0..60u64).map(|n| {
            let batches = batches.clone();
            tokio::spawn(async move {
                let jobs = if n == 30 {
                    // Refused by the queue: an empty job type.
                    vec![NewJob::new(crate::scheduler::Priority::High, "", "x")]
                } else {
                    vec![job(n), job(n + 1_000)]
                };
                (n, batches.store(jobs).await)
            })
        });
        for caller in futures::future::join_all(callers).await {
            let (n, stored) = caller.expect("caller");
            assert_eq!(stored.is_err(), n == 30, "caller {n}: {stored:?}");
        }
        let stored = queue
            .list(&crate::scheduler::JobFilter::default())
            .await
            .expect("list");
        assert_eq!(stored.len(), 2 * 59, "every other caller's two jobs");
    }
}
