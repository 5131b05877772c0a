//! Per-host statement queues, shared by batched reads ([`crate::reads`]) and combined writes
//! ([`crate::store::Merges`]). A host holds many shard tables, and under load the proxy sends
//! it many small statements at once, each costing the host a wakeup, a parse and a network
//! round trip, and the proxy a pooled connection's turn. Here a job that finds its host with a
//! free statement slot goes out at once (no timer, so an idle proxy adds no latency); jobs that
//! arrive while every slot is busy wait, and the next statement to finish takes all of them
//! (up to a weight limit) into one batch, whatever their tables.
//!
//! Batches run in spawned tasks, so a caller that gives up never strands the jobs batched with
//! its own. A batch that panics drops its jobs' answers: their callers see `None`.

use std::{
    collections::HashMap,
    future::Future,
    mem,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use futures::FutureExt;
use tokio::sync::oneshot;

/// The default number of statements in flight on one host, for reads and for writes each.
/// Measured with `tbird_load` (32 concurrent `GetTweet` over 2 hosts of 8 tweet tables each,
/// on 2 cores): 1 and 2 gave the same throughput, 4 about a fifth less, as batches shrank.
pub const DEFAULT_STATEMENTS_PER_HOST: usize = 2;

/// Work that can share a statement with other work for the same host.
pub trait HostJob: Send + Sized + 'static {
    type Output: Send + 'static;

    /// The job's share of a batch's limit (the ids of a read, the rows of a write).
    fn weight(&self) -> usize;

    /// Runs `batch`, all for one host, and answers every job in it.
    fn run(batch: Vec<Queued<Self>>) -> impl Future<Output = ()> + Send;
}

/// A job waiting for its batch, and where its answer goes.
pub struct Queued<J: HostJob> {
    pub job: J,
    done: oneshot::Sender<J::Output>,
}

impl<J: HostJob> Queued<J> {
    /// Sends the job's caller its answer (a caller that gave up is not waiting for it).
    pub fn answer(self, output: J::Output) {
        let _ = self.done.send(output);
    }
}

/// The queues of one kind of job, one per host.
pub struct HostQueues<J: HostJob> {
    hosts: Mutex<HashMap<String, Arc<Host<J>>>>,
    slots: usize,
    max_weight: usize,
}

struct Host<J: HostJob> {
    state: Mutex<State<J>>,
}

struct State<J: HostJob> {
    running: usize,
    pending: Vec<Queued<J>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections only move values in and out; a panic cannot leave them torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<J: HostJob> HostQueues<J> {
    /// Returns queues that run at most `slots` batches at once on each host (at least one),
    /// each batch of jobs weighing at most `max_weight` together (a heavier job goes alone).
    pub fn new(slots: usize, max_weight: usize) -> Self {
        Self {
            hosts: Mutex::new(HashMap::new()),
            slots: slots.max(1),
            max_weight,
        }
    }

    /// Runs `job` on `host`, alone or with other jobs, and returns its answer; `None` when
    /// the batch carrying it panicked.
    pub async fn submit(&self, host: &str, job: J) -> Option<J::Output> {
        let host = self.host(host);
        let (done, answer) = oneshot::channel();
        let start = {
            let mut state = lock(&host.state);
            state.pending.push(Queued { job, done });
            let free = state.running < self.slots;
            state.running += usize::from(free);
            free
        };
        if start {
            tokio::spawn(host.run(self.max_weight));
        }
        answer.await.ok()
    }

    fn host(&self, name: &str) -> Arc<Host<J>> {
        let mut hosts = lock(&self.hosts);
        if let Some(host) = hosts.get(name) {
            return host.clone();
        }
        let host = Arc::new(Host {
            state: Mutex::new(State {
                running: 0,
                pending: Vec::new(),
            }),
        });
        hosts.insert(name.to_owned(), host.clone());
        host
    }
}

impl<J: HostJob> Host<J> {
    /// Runs batches on the host while jobs are waiting, then gives its slot back.
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
            let batch: Vec<Queued<J>> = batch.into_iter().filter(|q| !q.done.is_closed()).collect();
            if !batch.is_empty() {
                // A panicking batch must not take the slot with it; its callers see `None`.
                let _ = AssertUnwindSafe(J::run(batch)).catch_unwind().await;
            }
        }
    }
}

/// Takes the oldest waiting jobs, at least one, until they weigh `max_weight`.
fn take_batch<J: HostJob>(pending: &mut Vec<Queued<J>>, max_weight: usize) -> Vec<Queued<J>> {
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

    impl HostJob for Gated {
        type Output = u64;

        fn weight(&self) -> usize {
            self.weight
        }

        async fn run(batch: Vec<Queued<Self>>) {
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
        queues: Arc<HostQueues<Gated>>,
        log: Arc<Mutex<Vec<Vec<u64>>>>,
        gate: Arc<Semaphore>,
    }

    impl Setup {
        fn new(slots: usize, max_weight: usize) -> Self {
            Self {
                queues: Arc::new(HostQueues::new(slots, max_weight)),
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
    async fn jobs_arriving_while_the_host_is_busy_share_the_next_batch() {
        let s = Setup::new(1, 100);
        let first = s.submit("h1", 1, 1);
        s.started(1).await;
        let queued: Vec<_> = (2..=6).map(|k| s.submit("h1", k, 1)).collect();
        // Another host has its own slot: its job goes out at once.
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
