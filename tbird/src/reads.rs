//! Batched tweet reads per leaf, the read side of the proxy's write coalescing. Under load many
//! `GetTweet` calls hit the same replica at once, and each sent alone costs the database a
//! statement and the proxy a round trip. A read that finds its leaf with a free statement slot
//! goes out at once (no timer, so an idle proxy adds no latency); reads that arrive while
//! every slot is busy wait, and the next statement to finish takes all of them (up to
//! [`MAX_IDS`] ids) into one `id IN (...)` query, whose rows go back to each caller.
//!
//! Statements run in spawned tasks, so a caller that gives up never strands the reads batched
//! with its own. A failed statement fails every read in it; each caller's tree then tries the
//! next replica, as for a read sent alone.

use std::{
    collections::{HashMap, HashSet},
    mem,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::FutureExt;
use gizzard::{
    nameserver::ShardId,
    shards::{Leaf, ShardError},
};
use tokio::sync::oneshot;

use crate::{store::TbirdShard, tweet::Tweet};

/// The most ids one batched query asks for (a single larger read still goes out alone).
pub const MAX_IDS: usize = 1_000;

/// The most queries in flight on one leaf; reads that arrive while it runs queue and go out
/// together in the next one. A host holds many leaves, so it still gets many queries at once.
pub const MAX_IN_FLIGHT: usize = 1;

/// What one batched query returns to each of its callers.
type Found = Result<Arc<Vec<Tweet>>, ShardError>;

/// The per-leaf read queues of one server.
pub struct TweetReads {
    queues: Mutex<HashMap<ShardId, Arc<LeafReads>>>,
    timeout: Duration,
}

/// The reads waiting for one leaf and the queries running on it.
struct LeafReads {
    leaf: Leaf<TbirdShard>,
    state: Mutex<ReadState>,
}

#[derive(Default)]
struct ReadState {
    running: usize,
    pending: Vec<Waiting>,
}

struct Waiting {
    ids: Vec<u64>,
    done: oneshot::Sender<Found>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections only move values in and out; a panic cannot leave them torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TweetReads {
    /// Returns queues whose reads each wait at most `timeout` (the leaf deadline).
    pub fn new(timeout: Duration) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
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
        let queue = self.queue(leaf);
        let (done, found) = oneshot::channel();
        let start = {
            let mut state = lock(&queue.state);
            state.pending.push(Waiting {
                ids: ids.to_vec(),
                done,
            });
            let free = state.running < MAX_IN_FLIGHT;
            state.running += usize::from(free);
            free
        };
        if start {
            tokio::spawn(queue.run());
        }
        let shard = || leaf.id.to_string();
        let found = match tokio::time::timeout(self.timeout, found).await {
            Ok(Ok(found)) => found?,
            Ok(Err(_)) => {
                return Err(ShardError::Unavailable {
                    shard: shard(),
                    reason: "the read's query was dropped".into(),
                });
            }
            Err(_) => {
                return Err(ShardError::Timeout {
                    shard: shard(),
                    after: self.timeout,
                });
            }
        };
        let wanted: HashSet<u64> = ids.iter().copied().collect();
        Ok(found
            .iter()
            .filter(|t| wanted.contains(&t.id))
            .cloned()
            .collect())
    }

    /// Returns the queue of `leaf`, replacing one kept for an older shard object of the same id
    /// (a host whose URL changed), so a batch never reads through a stale pool.
    fn queue(&self, leaf: &Leaf<TbirdShard>) -> Arc<LeafReads> {
        let mut queues = lock(&self.queues);
        match queues.get(&leaf.id) {
            Some(queue) if Arc::ptr_eq(&queue.leaf.shard, &leaf.shard) => queue.clone(),
            _ => {
                let queue = Arc::new(LeafReads {
                    leaf: leaf.clone(),
                    state: Mutex::default(),
                });
                queues.insert(leaf.id.clone(), queue.clone());
                queue
            }
        }
    }
}

impl LeafReads {
    /// Runs queries on the leaf while reads are waiting, then gives its slot back.
    async fn run(self: Arc<Self>) {
        loop {
            let batch = {
                let mut state = lock(&self.state);
                if state.pending.is_empty() {
                    // Under the lock: a read queued after this sees the free slot.
                    state.running -= 1;
                    return;
                }
                take_batch(&mut state.pending)
            };
            // A caller that gave up has its error already.
            let batch: Vec<Waiting> = batch.into_iter().filter(|w| !w.done.is_closed()).collect();
            if batch.is_empty() {
                continue;
            }
            let mut ids: Vec<u64> = batch.iter().flat_map(|w| w.ids.iter().copied()).collect();
            ids.sort_unstable();
            ids.dedup();
            // A panicking read must not take the slot with it: it fails its batch instead.
            let query = AssertUnwindSafe(self.leaf.shard.get_tweets(&ids)).catch_unwind();
            let found = match query.await {
                Ok(found) => found.map(Arc::new),
                Err(_) => Err(ShardError::Query {
                    shard: self.leaf.id.to_string(),
                    message: "the read panicked".into(),
                }),
            };
            for waiting in batch {
                let _ = waiting.done.send(found.clone());
            }
        }
    }
}

/// Takes the oldest waiting reads, at least one, until they ask for [`MAX_IDS`] ids.
fn take_batch(pending: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut ids = 0;
    let n = pending
        .iter()
        .take_while(|w| {
            let take = ids == 0 || ids + w.ids.len() <= MAX_IDS;
            ids += w.ids.len();
            take
        })
        .count()
        .max(1);
    if n == pending.len() {
        return mem::take(pending);
    }
    pending.drain(..n).collect()
}
