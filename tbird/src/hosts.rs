//! Per-host statement queues, shared by batched reads ([`crate::reads`]) and combined writes
//! ([`crate::store::Merges`]). A host holds many shard tables, and under load the proxy sends
//! it many small statements at once, each costing the host a wakeup, a parse and a network
//! round trip, and the proxy a pooled connection's turn. Here a job that finds its host with a
//! free statement slot goes out at once (no timer, so an idle proxy adds no latency); jobs that
//! arrive while every slot is busy wait, and the next statement to finish takes all of them
//! (up to a weight limit) into one batch, whatever their tables.
//!
//! The queues are Gizzard's ([`gizzard::batch`]), one per host name. Batches run in spawned
//! tasks, so a caller that gives up never strands the jobs batched with its own. A batch that
//! panics drops its jobs' answers: their callers see `None`.

use std::future::Future;

use gizzard::batch::{self, Batch, Batcher, Limits};

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
pub type Queued<J> = batch::Queued<J, <J as HostJob>::Output>;

/// The queues of one kind of job, one per host.
pub struct HostQueues<J: HostJob> {
    hosts: Batcher<String, OnHost, J, J::Output>,
}

/// What a host's queue runs its batches with: the job type's own `run`.
#[derive(Default)]
struct OnHost;

impl<J: HostJob> Batch<J, J::Output> for OnHost {
    fn weight(job: &J) -> usize {
        job.weight()
    }

    fn run(&self, batch: Vec<Queued<J>>) -> impl Future<Output = ()> + Send {
        J::run(batch)
    }
}

impl<J: HostJob> HostQueues<J> {
    /// Returns queues that run at most `slots` batches at once on each host (at least one),
    /// each batch of jobs weighing at most `max_weight` together (a heavier job goes alone).
    pub fn new(slots: usize, max_weight: usize) -> Self {
        Self {
            hosts: Batcher::new(Limits { slots, max_weight }),
        }
    }

    /// Runs `job` on `host`, alone or with other jobs, and returns its answer; `None` when
    /// the batch carrying it panicked.
    pub async fn submit(&self, host: &str, job: J) -> Option<J::Output> {
        self.hosts.submit(host, job).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers ten times its key; a batch holding key 0 panics.
    struct Echo(u64);

    impl HostJob for Echo {
        type Output = u64;

        fn weight(&self) -> usize {
            1
        }

        async fn run(batch: Vec<Queued<Self>>) {
            assert!(batch.iter().all(|q| q.job.0 != 0), "key 0 panics its batch");
            for queued in batch {
                let key = queued.job.0;
                queued.answer(key * 10);
            }
        }
    }

    #[tokio::test]
    async fn each_caller_gets_its_answer_and_a_panicking_batch_answers_none() {
        let queues = HostQueues::new(1, 10);
        assert_eq!(queues.submit("h", Echo(3)).await, Some(30));
        assert_eq!(queues.submit("h", Echo(0)).await, None);
        assert_eq!(
            queues.submit("h", Echo(4)).await,
            Some(40),
            "the host's slot is free"
        );
    }
}
