//! Micro-batching: concurrent callers' work for one target shares a statement. Under load a
//! server sends a target (a leaf, or a host holding many leaves) many small statements at
//! once, each costing the database a wakeup, a parse and a round trip, and the server a pooled
//! connection's turn.
//!
//! A [`Queue`] runs at most [`Limits::slots`] batches at once. A job that finds a free slot
//! goes out at once (no timer, so an idle server adds no latency); jobs arriving while every
//! slot is busy wait, and the next batch to finish takes the oldest of them, up to
//! [`Limits::max_weight`], into one batch. A [`Batcher`] keeps one queue per key, made on first
//! use, so each target gets its own slots.
//!
//! Batches run in spawned tasks, so a caller that stops waiting (a cancelled RPC, a deadline)
//! never strands the jobs batched with its own, and its job is dropped unanswered if its batch
//! has not started yet (unless [`Batch::RUN_ABANDONED`]). A batch that panics frees its slot,
//! and each of its callers not yet answered gets [`Unanswered`] instead of waiting forever.
//!
//! Users: the per-leaf write coalescer and the retry jobs' group commit
//! ([`crate::shards::coalesce`]), and T-Bird's per-host reads and combined writes.

use std::{
    borrow::Borrow,
    collections::HashMap,
    future::Future,
    hash::Hash,
    mem,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use futures::FutureExt;
use tokio::sync::oneshot;

/// What a queue runs its batches of jobs `J` with, answering each with an `O`. The job and
/// answer types are parameters, not associated types, so a struct can hold a [`Batcher`] of a
/// generic batch without repeating the batch's trait bounds.
pub trait Batch<J, O>: Send + Sync + 'static {
    /// Whether a job whose caller stopped waiting before its batch started still runs: work
    /// that must happen even when nobody waits for it (storing retry jobs) sets it.
    const RUN_ABANDONED: bool = false;

    /// Returns the job's share of a batch's weight limit; by default 1, so the limit counts
    /// jobs.
    fn weight(_job: &J) -> usize {
        1
    }

    /// Runs `batch` (at least one job, oldest first) and answers every job in it.
    fn run(&self, batch: Vec<Queued<J, O>>) -> impl Future<Output = ()> + Send;
}

/// A job in its batch, and where its answer (`O`) goes.
pub struct Queued<J, O> {
    /// The caller's job.
    pub job: J,
    done: oneshot::Sender<O>,
}

impl<J, O> Queued<J, O> {
    /// Sends the job's caller its answer (a caller that stopped waiting is not sent anything).
    pub fn answer(self, output: O) {
        let _ = self.done.send(output);
    }
}

/// Why a caller got no answer: the batch carrying its job panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch carrying the job panicked before answering it")]
pub struct Unanswered;

/// How much a queue runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Batches running at once (at least one).
    pub slots: usize,
    /// The most weight one batch carries; a heavier job goes alone.
    pub max_weight: usize,
}

/// One target's waiting jobs (`J`, answered with `O`) and running batches (run with `B`).
pub struct Queue<B, J, O> {
    batch: B,
    limits: Limits,
    state: Mutex<State<J, O>>,
}

struct State<J, O> {
    running: usize,
    waiting: Vec<Queued<J, O>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections only move values in and out; a panic cannot leave them torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Batch<J, O>, J: Send + 'static, O: Send + 'static> Queue<B, J, O> {
    /// Returns an idle queue whose batches run with `batch`.
    pub fn new(batch: B, limits: Limits) -> Self {
        Self {
            batch,
            limits: Limits {
                slots: limits.slots.max(1),
                ..limits
            },
            state: Mutex::new(State {
                running: 0,
                waiting: Vec::new(),
            }),
        }
    }

    /// Runs `job`, alone or with other callers' jobs, and returns its answer.
    pub async fn submit(self: &Arc<Self>, job: J) -> Result<O, Unanswered> {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut state = lock(&self.state);
            state.waiting.push(Queued { job, done });
            let free = state.running < self.limits.slots;
            state.running += usize::from(free);
            free
        };
        if start {
            tokio::spawn(self.clone().drain());
        }
        answer.await.map_err(|_| Unanswered)
    }

    /// Runs batches while jobs are waiting, then gives its slot back.
    async fn drain(self: Arc<Self>) {
        loop {
            let mut batch = {
                let mut state = lock(&self.state);
                if state.waiting.is_empty() {
                    // Under the lock: a job queued after this sees the free slot.
                    state.running -= 1;
                    return;
                }
                take_batch(&mut state.waiting, self.limits.max_weight, B::weight)
            };
            if !B::RUN_ABANDONED {
                // A caller that stopped waiting has its error already.
                batch.retain(|queued| !queued.done.is_closed());
                if batch.is_empty() {
                    continue;
                }
            }
            // A panicking batch must not take the slot with it. Its jobs' senders drop as it
            // unwinds, so each caller not yet answered gets `Unanswered`.
            let _ = AssertUnwindSafe(self.batch.run(batch)).catch_unwind().await;
        }
    }
}

/// Takes the oldest waiting jobs, at least one, while they weigh at most `max_weight`.
fn take_batch<J, O>(
    waiting: &mut Vec<Queued<J, O>>,
    max_weight: usize,
    weight: fn(&J) -> usize,
) -> Vec<Queued<J, O>> {
    let mut total = 0;
    let n = waiting
        .iter()
        .take_while(|queued| {
            let w = weight(&queued.job);
            let take = total == 0 || total + w <= max_weight;
            total += w;
            take
        })
        .count()
        .max(1);
    if n == waiting.len() {
        return mem::take(waiting);
    }
    waiting.drain(..n).collect()
}

/// Queues of one kind of job, one per key `K` (a leaf, a host), each with its own slots.
pub struct Batcher<K, B, J, O> {
    queues: Mutex<HashMap<K, SharedQueue<B, J, O>>>,
    limits: Limits,
}

/// A queue as its batcher and its running batches hold it.
type SharedQueue<B, J, O> = Arc<Queue<B, J, O>>;

impl<K: Hash + Eq, B: Batch<J, O>, J: Send + 'static, O: Send + 'static> Batcher<K, B, J, O> {
    /// Returns a batcher whose queues each run within `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// Runs `job` in the queue of `key`, alone or with other callers' jobs, and returns its
    /// answer. The queue's batches run with `B::default()`.
    pub async fn submit<Q>(&self, key: &Q, job: J) -> Result<O, Unanswered>
    where
        B: Default,
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.submit_to(key, job, |_| true, B::default).await
    }

    /// Runs `job` in the queue of `key`, as [`Batcher::submit`] does. A new queue runs its
    /// batches with `open()`; an existing one whose batch value `keeps` refuses (a leaf whose
    /// shard object was replaced, say) is replaced by a new one, while its own jobs finish.
    pub async fn submit_to<Q>(
        &self,
        key: &Q,
        job: J,
        keeps: impl FnOnce(&B) -> bool,
        open: impl FnOnce() -> B,
    ) -> Result<O, Unanswered>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.queue(key, keeps, open).submit(job).await
    }

    fn queue<Q>(
        &self,
        key: &Q,
        keeps: impl FnOnce(&B) -> bool,
        open: impl FnOnce() -> B,
    ) -> SharedQueue<B, J, O>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut queues = lock(&self.queues);
        // Looked up by the borrowed key: a job allocates no key of its own.
        if let Some(queue) = queues.get_mut(key) {
            if !keeps(&queue.batch) {
                *queue = Arc::new(Queue::new(open(), self.limits));
            }
            return queue.clone();
        }
        let queue = Arc::new(Queue::new(open(), self.limits));
        queues.insert(key.to_owned(), queue.clone());
        queue
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use tokio::{sync::Semaphore, task::JoinHandle};

    use super::*;

    /// A job whose batch panics when it comes to answer it.
    const POISON: u64 = u64::MAX;

    /// What the test sees of every queue's batches.
    struct Log {
        batches: Mutex<Vec<Vec<u64>>>,
        /// Each batch takes a permit before it answers: the test decides when batches finish.
        gate: Semaphore,
        /// The most batches one queue ran at once.
        most_running: AtomicUsize,
    }

    struct Job {
        key: u64,
        weight: usize,
    }

    /// A queue's batch value: records each batch and answers each job with ten times its key.
    struct Gated<const RUN_ABANDONED: bool> {
        log: Arc<Log>,
        generation: u32,
        running: AtomicUsize,
    }

    impl<const R: bool> Batch<Job, u64> for Gated<R> {
        const RUN_ABANDONED: bool = R;

        fn weight(job: &Job) -> usize {
            job.weight
        }

        async fn run(&self, batch: Vec<Queued<Job, u64>>) {
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.log.most_running.fetch_max(running, Ordering::SeqCst);
            lock(&self.log.batches).push(batch.iter().map(|q| q.job.key).collect());
            self.log.gate.acquire().await.expect("open gate").forget();
            self.running.fetch_sub(1, Ordering::SeqCst);
            for queued in batch {
                assert_ne!(queued.job.key, POISON, "a poisoned job panics its batch");
                let key = queued.job.key;
                queued.answer(key * 10);
            }
        }
    }

    struct Setup<const R: bool> {
        batcher: Arc<Batcher<String, Gated<R>, Job, u64>>,
        log: Arc<Log>,
    }

    impl<const R: bool> Setup<R> {
        fn new(slots: usize, max_weight: usize) -> Self {
            Self {
                batcher: Arc::new(Batcher::new(Limits { slots, max_weight })),
                log: Arc::new(Log {
                    batches: Mutex::default(),
                    gate: Semaphore::new(0),
                    most_running: AtomicUsize::new(0),
                }),
            }
        }

        /// Submits a job of generation 0 from a task of its own.
        fn submit(
            &self,
            key: &str,
            job: u64,
            weight: usize,
        ) -> JoinHandle<Result<u64, Unanswered>> {
            self.submit_in(0, key, job, weight)
        }

        /// Submits a job to the queue of `key` made for `generation`, replacing one made for
        /// another.
        fn submit_in(
            &self,
            generation: u32,
            key: &str,
            job: u64,
            weight: usize,
        ) -> JoinHandle<Result<u64, Unanswered>> {
            let (batcher, gated, key) =
                (self.batcher.clone(), self.gated(generation), key.to_owned());
            let job = Job { key: job, weight };
            tokio::spawn(async move {
                let keeps = |kept: &Gated<R>| kept.generation == generation;
                batcher.submit_to(key.as_str(), job, keeps, || gated).await
            })
        }

        /// Returns the batch value of a new queue made for `generation`.
        fn gated(&self, generation: u32) -> Gated<R> {
            Gated {
                log: self.log.clone(),
                generation,
                running: AtomicUsize::new(0),
            }
        }

        fn batches(&self) -> Vec<Vec<u64>> {
            lock(&self.log.batches).clone()
        }

        fn open(&self, batches: usize) {
            self.log.gate.add_permits(batches);
        }
    }

    /// Lets every task run until all of them wait: under paused time the clock moves only
    /// once nothing else can run, so this returns when the queues have done all they can.
    async fn settle() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    async fn answer(caller: JoinHandle<Result<u64, Unanswered>>) -> Result<u64, Unanswered> {
        caller.await.expect("the caller's task")
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_arriving_while_the_queue_is_busy_share_the_next_batch() {
        let s = Setup::<false>::new(1, 100);
        let first = s.submit("h1", 1, 1);
        settle().await;
        let queued: Vec<_> = (2..=6).map(|k| s.submit("h1", k, 1)).collect();
        // Another key has its own slot: its job goes out at once.
        let other = s.submit("h2", 7, 1);
        settle().await;
        assert_eq!(s.batches(), [vec![1], vec![7]], "h1's slot is busy");
        s.open(3);
        assert_eq!(answer(first).await, Ok(10));
        assert_eq!(answer(other).await, Ok(70));
        for (key, job) in (2..=6).zip(queued) {
            assert_eq!(answer(job).await, Ok(key * 10), "each gets its own answer");
        }
        assert_eq!(s.batches()[2], [2, 3, 4, 5, 6]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_weighs_at_most_the_limit_and_a_heavier_job_goes_alone() {
        let s = Setup::<false>::new(1, 10);
        let mut jobs = vec![s.submit("h", 0, 1)];
        settle().await;
        jobs.extend([(1, 4), (2, 4), (3, 4), (4, 25), (5, 1)].map(|(k, w)| s.submit("h", k, w)));
        settle().await;
        s.open(10);
        for job in jobs {
            answer(job).await.expect("answered");
        }
        assert_eq!(
            s.batches(),
            [vec![0], vec![1, 2], vec![3], vec![4], vec![5]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_batches_run_at_once_than_the_queue_has_slots() {
        let s = Setup::<false>::new(2, 100);
        let mut jobs = Vec::new();
        for key in 0..2 {
            jobs.push(s.submit("h", key, 1));
            settle().await;
        }
        jobs.extend((2..10).map(|k| s.submit("h", k, 1)));
        settle().await;
        assert_eq!(
            s.batches(),
            [vec![0], vec![1]],
            "both slots busy, the rest wait"
        );
        s.open(1);
        settle().await;
        assert_eq!(
            s.batches()[2],
            (2..10).collect::<Vec<_>>(),
            "the freed slot takes everyone waiting"
        );
        s.open(2);
        for job in jobs {
            answer(job).await.expect("answered");
        }
        assert_eq!(s.log.most_running.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_each_get_their_own_answer_and_every_job_runs_once() {
        const JOBS: u64 = 2_000;
        let s = Setup::<false>::new(2, 16);
        s.open(Semaphore::MAX_PERMITS);
        let callers: Vec<_> = (0..JOBS)
            .map(|k| s.submit(["a", "b"][k as usize % 2], k, 1))
            .collect();
        for (key, caller) in (0..JOBS).zip(callers) {
            assert_eq!(answer(caller).await, Ok(key * 10));
        }
        let batches = s.batches();
        assert!(batches.iter().all(|b| b.len() <= 16), "{batches:?}");
        let mut ran = batches.concat();
        ran.sort_unstable();
        assert_eq!(ran, (0..JOBS).collect::<Vec<_>>());
        assert!(s.log.most_running.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_batch_answers_each_caller_it_owed_with_an_error_and_frees_its_slot() {
        let s = Setup::<false>::new(1, 100);
        let first = s.submit("h", 1, 1);
        settle().await;
        let answered = s.submit("h", 2, 1);
        let poisoned = s.submit("h", POISON, 1);
        let after = s.submit("h", 3, 1);
        settle().await;
        s.open(2);
        assert_eq!(answer(first).await, Ok(10));
        assert_eq!(answer(answered).await, Ok(20), "answered before the panic");
        assert_eq!(answer(poisoned).await, Err(Unanswered));
        assert_eq!(answer(after).await, Err(Unanswered));
        s.open(1);
        assert_eq!(
            answer(s.submit("h", 4, 1)).await,
            Ok(40),
            "the slot is free"
        );
    }

    /// Runs a queue where one caller gives up at its deadline while its job waits and another
    /// is cancelled while its batch runs, and returns the batches that ran.
    async fn batches_after_callers_stop_waiting<const R: bool>() -> Vec<Vec<u64>> {
        let s = Setup::<R>::new(1, 100);
        let running = s.submit("h", 1, 1);
        settle().await;
        let job = Job { key: 2, weight: 1 };
        let waiting = s.batcher.submit_to("h", job, |_| true, || s.gated(0));
        let gave_up = tokio::time::timeout(Duration::from_millis(100), waiting).await;
        assert!(gave_up.is_err(), "the slot is busy until the gate opens");
        running.abort();
        let later = s.submit("h", 3, 1);
        settle().await;
        s.open(2);
        assert_eq!(answer(later).await, Ok(30), "the queue goes on");
        s.batches()
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_stops_waiting_does_not_wedge_the_queue_and_its_job_is_dropped() {
        assert_eq!(
            batches_after_callers_stop_waiting::<false>().await,
            [vec![1], vec![3]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_must_run_runs_after_its_caller_stopped_waiting() {
        assert_eq!(
            batches_after_callers_stop_waiting::<true>().await,
            [vec![1], vec![2, 3]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_queue_is_replaced_while_its_own_batches_finish() {
        let s = Setup::<false>::new(1, 100);
        let old = s.submit_in(0, "h", 1, 1);
        settle().await;
        let waiting = s.submit_in(0, "h", 2, 1);
        settle().await;
        // The new queue has its own slot: its job does not wait for the old queue's batch.
        let new = s.submit_in(1, "h", 3, 1);
        settle().await;
        assert_eq!(s.batches(), [vec![1], vec![3]]);
        s.open(3);
        assert_eq!(answer(old).await, Ok(10));
        assert_eq!(
            answer(waiting).await,
            Ok(20),
            "the old queue's waiting job still runs"
        );
        assert_eq!(answer(new).await, Ok(30));
    }
}
