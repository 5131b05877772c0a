//! Batched tweet reads, the read side of the proxy's write coalescing: concurrent reads of one
//! host share a query ([`TbirdShard::get_tweets_of`], at most [`MAX_IDS`] ids), queued per host
//! by [`crate::hosts`], whose rows go back to each caller.
//!
//! Queues are per host rather than per leaf because a host holds many leaves: with one queue
//! per leaf, 32 concurrent reads over T-Bird's 16 tweet leaves almost never met in a queue and
//! went out one statement each.
//!
//! A query the host fails (unreachable, too slow) fails every read in it; each caller's tree
//! then tries the next replica, as for a read sent alone. A query the host answers with an
//! error (a table being dropped by a migration, say) is retried table by table, so one broken
//! table fails only its own readers.

use std::{sync::Arc, time::Duration};

use gizzard::shards::{Leaf, ShardError};

use crate::{
    hosts::{HostJob, HostQueues, Queued},
    store::TbirdShard,
    tweet::Tweet,
};

/// The most ids one batched query asks for (a single larger read still goes out alone).
pub const MAX_IDS: usize = 1_000;

/// The per-host read queues of one server.
pub struct TweetReads {
    queues: HostQueues<Read>,
    timeout: Duration,
}

/// One caller's read: ids (sorted) of one leaf's table. The caller names the leaf in errors,
/// so nothing of the leaf but its shard is copied per read.
struct Read {
    shard: Arc<TbirdShard>,
    ids: Vec<u64>,
}

/// The reads of one batch that go to one table.
struct Part {
    shard: Arc<TbirdShard>,
    ids: Vec<u64>,
    callers: Vec<Queued<Read>>,
}

impl TweetReads {
    /// Returns queues that run at most `per_host` queries at once on each host, and whose
    /// reads each wait at most `timeout` (the leaf deadline).
    pub fn new(timeout: Duration, per_host: usize) -> Self {
        Self {
            queues: HostQueues::new(per_host, MAX_IDS),
            timeout,
        }
    }

    /// Returns the stored tweets of `ids` on `leaf` (tombstones included), read alone or with
    /// other callers' ids.
    pub async fn get(
        &self,
        leaf: &Leaf<TbirdShard>,
        ids: &[u64],
    ) -> Result<Vec<Tweet>, ShardError> {
        let mut ids = ids.to_vec();
        // Sorted, so the caller's rows are picked out of a batch by binary search.
        ids.sort_unstable();
        let read = Read {
            shard: leaf.shard.clone(),
            ids,
        };
        let shard = || leaf.id.to_string();
        let found = self.queues.submit(&leaf.id.hostname, read);
        match tokio::time::timeout(self.timeout, found).await {
            Ok(Some(found)) => found.map_err(|err| err.on_shard(&shard())),
            Ok(None) => Err(ShardError::Query {
                shard: shard(),
                message: "the read panicked".into(),
            }),
            Err(_) => Err(ShardError::Timeout {
                shard: shard(),
                after: self.timeout,
            }),
        }
    }
}

impl HostJob for Read {
    type Output = Result<Vec<Tweet>, ShardError>;

    fn weight(&self) -> usize {
        self.ids.len()
    }

    async fn run(batch: Vec<Queued<Self>>) {
        read(parts(batch)).await;
    }
}

/// Groups a batch by table. Tables are told apart by their shard objects, not only their
/// names, so a read planned before a host's pool was replaced never goes through the new one
/// unasked.
fn parts(batch: Vec<Queued<Read>>) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    for queued in batch {
        let shard = &queued.job.shard;
        let part = match parts.iter_mut().position(|p| Arc::ptr_eq(&p.shard, shard)) {
            Some(i) => &mut parts[i],
            None => {
                parts.push(Part {
                    shard: shard.clone(),
                    ids: Vec::new(),
                    callers: Vec::new(),
                });
                parts.last_mut().expect("just pushed")
            }
        };
        part.ids.extend_from_slice(&queued.job.ids);
        part.callers.push(queued);
    }
    for part in &mut parts {
        part.ids.sort_unstable();
        part.ids.dedup();
    }
    parts
}

/// Reads every part, in one query when their shards share a pool, and answers each caller.
async fn read(parts: Vec<Part>) {
    let (together, apart): (Vec<Part>, Vec<Part>) = match parts.first() {
        Some(first) => {
            let first = first.shard.clone();
            parts
                .into_iter()
                .partition(|p| p.shard.shares_pool_with(&first))
        }
        None => return,
    };
    let found = query(&together).await;
    match found {
        Ok(found) => together
            .into_iter()
            .zip(found)
            .for_each(|(part, found)| answer(part, Ok(found))),
        // The host answered: find which table it refused by reading each one alone.
        Err(ShardError::Query { .. }) if together.len() > 1 => {
            for part in together {
                let found = query(std::slice::from_ref(&part)).await;
                answer(
                    part,
                    found.map(|f| f.into_iter().next().unwrap_or_default()),
                );
            }
        }
        Err(err) => together
            .into_iter()
            .for_each(|part| answer(part, Err(err.clone()))),
    }
    // Parts on another pool (rare: a host whose URL just changed) go in their own query.
    if !apart.is_empty() {
        Box::pin(read(apart)).await;
    }
}

/// Runs one query over `parts` (all on one pool).
async fn query(parts: &[Part]) -> Result<Vec<Vec<Tweet>>, ShardError> {
    let reads: Vec<(&TbirdShard, &[u64])> = parts
        .iter()
        .map(|p| (&*p.shard, p.ids.as_slice()))
        .collect();
    TbirdShard::get_tweets_of(&reads).await
}

/// Sends each caller of `part` the tweets it asked for, or the error (which the caller puts
/// on its own leaf).
fn answer(part: Part, found: Result<Vec<Tweet>, ShardError>) {
    for caller in part.callers {
        let mine = match &found {
            Ok(found) => Ok(found
                .iter()
                .filter(|t| caller.job.ids.binary_search(&t.id).is_ok())
                .cloned()
                .collect()),
            Err(err) => Err(err.clone()),
        };
        caller.answer(mine);
    }
}
