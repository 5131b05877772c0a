//! Statement queues: concurrent work for one target (a leaf, or a host holding many leaves)
//! shares statements. Under load the proxy sends a target many small statements at once, each
//! costing the database a wakeup, a parse and a network round trip, and the proxy a pooled
//! connection's turn. Here a job that finds its target with a free statement slot goes out at
//! once (no timer, so an idle proxy adds no latency); jobs that arrive while every slot is busy
//! wait, and the next statement to finish takes all of them (up to a weight limit) into one
//! batch.
//!
//! Batches run in spawned tasks, so a caller that gives up (a cancelled RPC) never strands the
//! jobs batched with its own. A batch that panics frees its slot and drops its jobs' answers:
//! their callers see `None`.
//!
//! Users: the write coalescer ([`super::coalesce`], per leaf) and T-Bird's batched reads and
//! combined writes (per host).

use std::{
    collections::HashMap,
    future::Future,
    mem,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use futures::FutureExt;
use tokio::sync::oneshot;

/// Work that can share a statement with other work for the same target.
pub trait Job: Send + Sized + 'static {
    type Output: Send + 'static;

    /// The job's share of a batch's limit (the ids of a read, the rows of a write).
    fn weight(&self) -> usize;

    /// Runs `batch`, all for one target, and answers every job in it.
    fn run(batch: Vec<Queued<Self, Self::Output>>) -> impl Future<Output = ()> + Send;
}

/// A job waiting for its batch, and where its answer (`O`, the job's output) goes.
pub struct Queued<J, O> {
    pub job: J,
    done: oneshot::Sender<O>,
}

impl<J, O> Queued<J, O> {
    /// Sends the job's caller its answer (a caller that gave up is not waiting for it).
    pub fn answer(self, output: O) {
        let _ = self.done.send(output);
    }
}

/// The queues of one kind of job (answered with `O`, its output), one per target.
pub struct Queues<J, O> {
    targets: Mutex<HashMap<String, Arc<Target<J, O>>>>,
    slots: usize,
    max_weight: usize,
}

struct Target<J, O> {
    state: Mutex<State<J, O>>,
}

struct State<J, O> {
    running: usize,
    pending: Vec<Queued<J, O>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections only move values in and out; a panic cannot leave them torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<J: Job> Queues<J, J::Output> {
    /// Returns queues that run at most `slots` batches at once on each target (at least one),
    /// each batch of jobs weighing at most `max_weight` together (a heavier job goes alone).
    pub fn new(slots: usize, max_weight: usize) -> Self {
        Self {
            targets: Mutex::new(HashMap::new()),
            slots: slots.max(1),
            max_weight,
        }
    }

    /// Runs `job` on `target`, alone or with other jobs, and returns its answer; `None` when
    /// the batch carrying it panicked.
    pub async fn submit(&self, target: &str, job: J) -> Option<J::Output> {
        let target = self.target(target);
        let (done, answer) = oneshot::channel();
        let start = {
            let mut state = lock(&target.state);
            state.pending.push(Queued { job, done });
            let free = state.running < self.slots;
            state.running += usize::from(free);
            free
        };
        if start {
            tokio::spawn(target.run(self.max_weight));
        }
        answer.await.ok()
    }

    fn target(&self, name: &str) -> Arc<Target<J, J::Output>> {
        let mut targets = lock(&self.targets);
        if let Some(target) = targets.get(name) {
            return target.clone();
        }
        let target = Arc::new(Target {
            state: Mutex::new(State {
                running: 0,
                pending: Vec::new(),
            }),
        });
        targets.insert(name.to_owned(), target.clone());
        target
    }
}

impl<J: Job> Target<J, J::Output> {
    /// Runs batches on the target while jobs are waiting, then gives its slot back.
    async fn run(self: Arc<Self>, max_weight: usize) {
        loop {
            let batch = {
                let mut state = lock(&self.state);
                if state.pending.is_empty() {
                    // Under the lock: a job queued after this sees the free slot.
                    state.running -= 1;
                    return;
                }
                take_batch(&mut state.pending, max_weight)
            };
            // A caller that gave up has its error already.
            let batch: Vec<Queued<J, J::Output>> =
                batch.into_iter().filter(|q| !q.done.is_closed()).collect();
            if !batch.is_empty() {
                // A panicking batch must not take the slot with it; its callers see `None`.
                let _ = AssertUnwindSafe(J::run(batch)).catch_unwind().await;
            }
        }
    }
}

/// Takes the oldest waiting jobs, at least one, until they weigh `max_weight`.
fn take_batch<J: Job>(
    pending: &mut Vec<Queued<J, J::Output>>,
    max_weight: usize,
) -> Vec<Queued<J, J::Output>> {
    let mut weight = 0;
    let n = pending
        .iter()
        .take_while(|q| {
            let take = weight == 0 || weight + q.job.weight() <= max_weight;
            weight += q.job.weight();
            take
        })
        .count()
        .max(1);
    if n == pending.len() {
        return mem::take(pending);
    }
    pending.drain(..n).collect()
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;

    /// Records each batch's jobs and finishes a batch only when the test hands out a permit.
    struct Gated {
        key: u64,
        weight: usize,
        log: Arc<Mutex<Vec<Vec<u64>>>>,
        gate: Arc<Semaphore>,
    }

    impl Job for Gated {
        type Output = u64;

        fn weight(&self) -> usize {
            self.weight
        }

        async fn run(batch: Vec<Queued<Self, u64>>) {
            let (log, gate) = (batch[0].job.log.clone(), batch[0].job.gate.clone());
            lock(&log).push(batch.iter().map(|q| q.job.key).collect());
            gate.acquire().await.expect("open gate").forget();
            for queued in batch {
                let key = queued.job.key;
                queued.answer(key * 10);
            }
        }
    }

    struct Setup {
        queues: Arc<Queues<Gated, u64>>,
        log: Arc<Mutex<Vec<Vec<u64>>>>,
        gate: Arc<Semaphore>,
    }

    impl Setup {
        fn new(slots: usize, max_weight: usize) -> Self {
            Self {
                queues: Arc::new(Queues::new(slots, max_weight)),
                log: Arc::default(),
                gate: Arc::new(Semaphore::new(0)),
            }
        }

        fn submit(&self, host: &str, key: u64, weight: usize) -> tokio::task::JoinHandle<u64> {
            let job = Gated {
                key,
                weight,
                log: self.log.clone(),
                gate: self.gate.clone(),
            };
            let (queues, host) = (self.queues.clone(), host.to_owned());
            tokio::spawn(async move { queues.submit(&host, job).await.expect("answered") })
        }

        fn batches(&self) -> Vec<Vec<u64>> {
            lock(&self.log).clone()
        }

        /// Lets the spawned tasks run until `n` batches have started.
        async fn started(&self, n: usize) {
            for _ in 0..10_000 {
                if self.batches().len() >= n {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("{n} batches never started: {:?}", self.batches());
        }
    }

    #[tokio::test]
    async fn jobs_arriving_while_the_target_is_busy_share_the_next_batch() {
        let s = Setup::new(1, 100);
        let first = s.submit("h1", 1, 1);
        s.started(1).await;
        let queued: Vec<_> = (2..=6).map(|k| s.submit("h1", k, 1)).collect();
        // Another target has its own slot: its job goes out at once.
        let other = s.submit("h2", 7, 1);
        s.started(2).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.batches(), [vec![1], vec![7]], "h1's slot is busy");
        s.gate.add_permits(3);
        assert_eq!(first.await.expect("join"), 10);
        assert_eq!(other.await.expect("join"), 70);
        for (key, job) in (2..=6).zip(queued) {
            assert_eq!(
                job.await.expect("join"),
                key * 10,
                "each gets its own answer"
            );
        }
        assert_eq!(s.batches()[2], [2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_batch_weighs_at_most_the_limit_and_a_heavier_job_goes_alone() {
        let s = Setup::new(1, 10);
        let mut jobs = vec![s.submit("h", 0, 1)];
        s.started(1).await;
        jobs.extend([(1, 4), (2, 4), (3, 4), (4, 25), (5, 1)].map(|(k, w)| s.submit("h", k, w)));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        s.gate.add_permits(10);
        for job in jobs {
            job.await.expect("join");
        }
        assert_eq!(
            s.batches(),
            [vec![0], vec![1, 2], vec![3], vec![4], vec![5]]
        );
    }
}
