//! Group commit per leaf. Under load many writes go to the same leaf at once, and sending each
//! as its own statement spends a round trip, a parse and a commit per write. Here a write that
//! finds its leaf with a free statement slot goes out at once (no timer, so an idle proxy adds
//! no latency); writes that arrive while every slot of the leaf is busy wait in the leaf's
//! queue, and the next statement to finish takes all of them (up to [`MAX_BATCH`]) into one
//! multi-row statement ([`WriteOp::apply_batch`]).
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
    collections::{HashMap, VecDeque},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use futures::FutureExt;
use tokio::sync::oneshot;

use super::{Leaf, PhysicalShard, ShardError, WriteOp, health::Op};
use crate::{
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
    queues: Mutex<HashMap<ShardId, Arc<LeafQueue<S, W>>>>,
    leaf_timeout: Duration,
}

/// The writes waiting for one leaf and the statements running on it.
struct LeafQueue<S, W> {
    leaf: Leaf<S>,
    state: Mutex<QueueState<W>>,
}

struct QueueState<W> {
    running: usize,
    pending: VecDeque<Pending<W>>,
}

/// A queued write and where its result goes.
struct Pending<W> {
    op: W,
    /// Sent even to a suspect leaf: a probe, or a write with no healthy leaf to go to.
    probe: bool,
    done: oneshot::Sender<Result<(), ShardError>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections only move values in and out; a panic cannot leave them torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

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
            queues: Mutex::new(HashMap::new()),
            leaf_timeout,
        }
    }

    /// Applies `op` to `leaf`, alone or with other writes to the same leaf, within the leaf
    /// deadline. A suspect leaf is not tried unless `probe` is set: its write goes straight to
    /// the retry queue, so a dead replica does not slow every write down.
    pub(super) async fn apply(
        &self,
        leaf: &Leaf<S>,
        op: &W,
        probe: bool,
    ) -> Result<(), ShardError> {
        if !probe && leaf.health.is_suspect() {
            return Err(suspect(leaf));
        }
        let started = Instant::now();
        let queue = self.queue(leaf);
        let (done, result) = oneshot::channel();
        let start = {
            let mut state = lock(&queue.state);
            state.pending.push_back(Pending {
                op: op.clone(),
                probe,
                done,
            });
            let free = state.running < MAX_IN_FLIGHT;
            state.running += usize::from(free);
            free
        };
        if start {
            tokio::spawn(queue.run(self.leaf_timeout));
        }
        // The deadline counts from here, so time spent queued counts as time on the leaf.
        match tokio::time::timeout(self.leaf_timeout, result).await {
            Ok(Ok(result)) => {
                if result.is_ok() {
                    leaf.health.record(Op::Write, started.elapsed());
                }
                result
            }
            Ok(Err(_)) => Err(ShardError::Unavailable {
                shard: leaf.id.to_string(),
                reason: "the write's statement was dropped".into(),
            }),
            Err(_) => Err(ShardError::Timeout {
                shard: leaf.id.to_string(),
                after: self.leaf_timeout,
            }),
        }
    }

    /// Returns the queue of `leaf`, replacing one kept for an older shard object of the same id
    /// (a host whose URL changed), so a batch never mixes writes meant for different pools.
    fn queue(&self, leaf: &Leaf<S>) -> Arc<LeafQueue<S, W>> {
        let mut queues = lock(&self.queues);
        match queues.get(&leaf.id) {
            Some(queue) if Arc::ptr_eq(&queue.leaf.shard, &leaf.shard) => queue.clone(),
            _ => {
                let queue = Arc::new(LeafQueue {
                    leaf: leaf.clone(),
                    state: Mutex::new(QueueState {
                        running: 0,
                        pending: VecDeque::new(),
                    }),
                });
                queues.insert(leaf.id.clone(), queue.clone());
                queue
            }
        }
    }
}

impl<S: PhysicalShard, W: WriteOp<S>> LeafQueue<S, W> {
    /// Runs statements on the leaf while writes are waiting, then gives its slot back.
    async fn run(self: Arc<Self>, leaf_timeout: Duration) {
        loop {
            let batch: Vec<Pending<W>> = {
                let mut state = lock(&self.state);
                if state.pending.is_empty() {
                    // Under the lock: a write queued after this sees the free slot.
                    state.running -= 1;
                    return;
                }
                let n = state.pending.len().min(MAX_BATCH);
                state.pending.drain(..n).collect()
            };
            // A caller that gave up already has its error (and its retry job).
            let batch: Vec<Pending<W>> =
                batch.into_iter().filter(|p| !p.done.is_closed()).collect();
            if batch.is_empty() {
                continue;
            }
            let result = self.apply(&batch, leaf_timeout).await;
            for pending in batch {
                let _ = pending.done.send(result.clone());
            }
        }
    }

    /// Applies one batch under the deadline and records the leaf's health as separate writes
    /// would have: one success clears it, and each write of a failed batch counts a failure.
    async fn apply(&self, batch: &[Pending<W>], leaf_timeout: Duration) -> Result<(), ShardError> {
        let leaf = &self.leaf;
        // The leaf may have turned suspect while these writes waited; a probe goes anyway.
        if leaf.health.is_suspect() && !batch.iter().any(|p| p.probe) {
            return Err(suspect(leaf));
        }
        let ops: Vec<&W> = batch.iter().map(|p| &p.op).collect();
        // A panicking write must not take the slot with it: it fails its batch instead.
        let statement = AssertUnwindSafe(W::apply_batch(&ops, &leaf.shard)).catch_unwind();
        let in_flight = leaf.health.start();
        let result = match tokio::time::timeout(leaf_timeout, statement).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ShardError::Query {
                shard: leaf.id.to_string(),
                message: "the write panicked".into(),
            }),
            Err(_) => Err(ShardError::Timeout {
                shard: leaf.id.to_string(),
                after: leaf_timeout,
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
    queue: JobQueue,
    state: Mutex<JobsState>,
}

struct JobsState {
    running: usize,
    waiting: VecDeque<WaitingJobs>,
}

/// One caller's jobs, stored together or not at all, and where the outcome goes.
struct WaitingJobs {
    jobs: Vec<NewJob>,
    done: oneshot::Sender<Result<(), String>>,
}

impl JobBatches {
    /// Returns batches stored in `queue`.
    pub(super) fn new(queue: JobQueue) -> Self {
        Self {
            queue,
            state: Mutex::new(JobsState {
                running: 0,
                waiting: VecDeque::new(),
            }),
        }
    }

    /// Stores `jobs`, alone or in one transaction with other callers' jobs; returns once they
    /// are durable, or why they may not be.
    pub(super) async fn store(self: &Arc<Self>, jobs: Vec<NewJob>) -> Result<(), String> {
        let (done, stored) = oneshot::channel();
        let start = {
            let mut state = lock(&self.state);
            state.waiting.push_back(WaitingJobs { jobs, done });
            let free = state.running < ENQUEUES_IN_FLIGHT;
            state.running += usize::from(free);
            free
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        stored
            .await
            .unwrap_or_else(|_| Err("the transaction storing the jobs was dropped".into()))
    }

    /// Stores batches while callers wait, then gives its slot back.
    async fn run(self: Arc<Self>) {
        loop {
            let batch: Vec<WaitingJobs> = {
                let mut state = lock(&self.state);
                let Some(first) = state.waiting.pop_front() else {
                    // Under the lock: a caller arriving after this sees the free slot.
                    state.running -= 1;
                    return;
                };
                // At least one caller's jobs, however many; more while they fit.
                let mut jobs = first.jobs.len();
                let mut batch = vec![first];
                while let Some(next) = state.waiting.front()
                    && jobs + next.jobs.len() <= MAX_JOBS
                {
                    jobs += next.jobs.len();
                    batch.extend(state.waiting.pop_front());
                }
                batch
            };
            let jobs: Vec<NewJob> = batch.iter().flat_map(|w| w.jobs.iter().cloned()).collect();
            match self.enqueue(&jobs).await {
                // Refused as invalid, the batch is split, so a bad job fails only its caller.
                Err(QueueError::InvalidJob(_)) if batch.len() > 1 => {
                    for waiting in batch {
                        let stored = self.enqueue(&waiting.jobs).await;
                        let _ = waiting.done.send(stored.map_err(|e| e.to_string()));
                    }
                }
                stored => {
                    let stored = stored.map_err(|e| e.to_string());
                    for waiting in batch {
                        let _ = waiting.done.send(stored.clone());
                    }
                }
            }
        }
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<(), QueueError> {
        // A panic must not take the slot with it: it fails the batch instead.
        match AssertUnwindSafe(self.queue.enqueue_many(jobs))
            .catch_unwind()
            .await
        {
            Ok(stored) => stored.map(drop),
            Err(_) => Err(QueueError::BadRow("storing the jobs panicked".into())),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::{
        ops::{Range, RangeInclusive},
        sync::atomic::{AtomicBool, Ordering},
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
            lock(&self.statements).len()
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

    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    pub(in crate::shards) struct Put(pub(in crate::shards) u64);

    impl WriteOp<Gated> for Put {
        const JOB_TYPE: &'static str = "test.put";

        async fn apply(&self, shard: &Gated) -> Result<(), ShardError> {
            Self::apply_batch(&[self], shard).await
        }

        async fn apply_batch(ops: &[&Self], shard: &Gated) -> Result<(), ShardError> {
            lock(&shard.statements).push(ops.iter().map(|op| op.0).collect());
            shard.gate.acquire().await.expect("open gate").forget();
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
            lock(&self.leaf.shard.statements).clone()
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
