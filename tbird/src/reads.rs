//! Batched reads, the read side of the proxy's write coalescing: concurrent reads of one host
//! share a statement, queued per host by [`crate::hosts`], whose rows go back to each caller.
//! Tweet reads ([`TweetReads`]) share one by table (at most [`MAX_IDS`] ids,
//! [`TbirdShard::get_tweets_of`]); timeline pages ([`TimelineReads`]) share one as a union of
//! each page's own select ([`TbirdShard::timelines_of`]).
//!
//! Queues are per host rather than per leaf because a host holds many leaves: with one queue
//! per leaf, 32 concurrent reads over T-Bird's 16 tweet leaves almost never met in a queue and
//! went out one statement each.
//!
//! A statement the host fails (unreachable, too slow) fails every read in it; each caller's
//! tree then tries the next replica, as for a read sent alone. A statement the host answers
//! with an error (a table being dropped by a migration, say) is retried part by part, so one
//! broken table fails only its own readers. Errors reach each caller named after its own leaf.

use std::{future::Future, sync::Arc, time::Duration};

use gizzard::shards::{Leaf, ShardError};

use crate::{
    hosts::{HostJob, HostQueues, Queued},
    store::{Page, TbirdShard},
    tweet::Tweet,
};

/// The most ids one batched query asks for (a single larger read still goes out alone), and
/// the most timeline rows one batched statement reads.
pub const MAX_IDS: usize = 1_000;

/// The per-host tweet read queues of one server.
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
struct TablePart {
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
        queued(
            leaf,
            self.timeout,
            self.queues.submit(&leaf.id.hostname, read),
        )
        .await
    }
}

/// The per-host timeline read queues of one server.
pub struct TimelineReads {
    queues: HostQueues<PageRead>,
    timeout: Duration,
}

/// One caller's timeline page of one leaf's table.
struct PageRead {
    shard: Arc<TbirdShard>,
    page: Page,
}

impl TimelineReads {
    /// Returns queues that run at most `per_host` statements at once on each host, and whose
    /// reads each wait at most `timeout` (the leaf deadline).
    pub fn new(timeout: Duration, per_host: usize) -> Self {
        Self {
            queues: HostQueues::new(per_host, MAX_IDS),
            timeout,
        }
    }

    /// Returns the tweet ids of `page` on `leaf`, newest first, read alone or with other
    /// callers' pages.
    pub async fn get(&self, leaf: &Leaf<TbirdShard>, page: Page) -> Result<Vec<u64>, ShardError> {
        let read = PageRead {
            shard: leaf.shard.clone(),
            page,
        };
        queued(
            leaf,
            self.timeout,
            self.queues.submit(&leaf.id.hostname, read),
        )
        .await
    }
}

/// Waits up to `timeout` for a queued read of `leaf`, and names the leaf in its error.
async fn queued<T>(
    leaf: &Leaf<TbirdShard>,
    timeout: Duration,
    found: impl Future<Output = Option<Result<T, ShardError>>>,
) -> Result<T, ShardError> {
    let shard = || leaf.id.to_string();
    match tokio::time::timeout(timeout, found).await {
        Ok(Some(found)) => found.map_err(|err| err.on_shard(&shard())),
        Ok(None) => Err(ShardError::Query {
            shard: shard(),
            message: "the read panicked".into(),
        }),
        Err(_) => Err(ShardError::Timeout {
            shard: shard(),
            after: timeout,
        }),
    }
}

impl HostJob for Read {
    type Output = Result<Vec<Tweet>, ShardError>;

    fn weight(&self) -> usize {
        self.ids.len()
    }

    async fn run(batch: Vec<Queued<Self>>) {
        by_pool(parts(batch)).await;
    }
}

impl HostJob for PageRead {
    type Output = Result<Vec<u64>, ShardError>;

    fn weight(&self) -> usize {
        self.page.limit
    }

    /// Each page is its own part: two callers of one user rarely meet, and their bounds differ.
    async fn run(batch: Vec<Queued<Self>>) {
        by_pool(batch).await;
    }
}

/// A part of a batch: what one select of a statement reads, and who gets its rows.
trait Part: Send + Sized {
    type Found: Default + Send;

    /// The shard the part reads.
    fn shard(&self) -> &TbirdShard;

    /// Reads `parts`, all of one pool, in one statement; the found rows of each, in order.
    fn query(parts: &[Self]) -> impl Future<Output = Result<Vec<Self::Found>, ShardError>> + Send;

    /// Sends the part's callers what they asked for, or the error.
    fn answer(self, found: Result<Self::Found, ShardError>);
}

impl Part for TablePart {
    type Found = Vec<Tweet>;

    fn shard(&self) -> &TbirdShard {
        &self.shard
    }

    async fn query(parts: &[Self]) -> Result<Vec<Vec<Tweet>>, ShardError> {
        let reads: Vec<(&TbirdShard, &[u64])> = parts
            .iter()
            .map(|p| (&*p.shard, p.ids.as_slice()))
            .collect();
        TbirdShard::get_tweets_of(&reads).await
    }

    fn answer(self, found: Result<Vec<Tweet>, ShardError>) {
        for caller in self.callers {
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
}

impl Part for Queued<PageRead> {
    type Found = Vec<u64>;

    fn shard(&self) -> &TbirdShard {
        &self.job.shard
    }

    async fn query(parts: &[Self]) -> Result<Vec<Vec<u64>>, ShardError> {
        let reads: Vec<(&TbirdShard, &Page)> =
            parts.iter().map(|p| (&*p.job.shard, &p.job.page)).collect();
        TbirdShard::timelines_of(&reads).await
    }

    fn answer(self, found: Result<Vec<u64>, ShardError>) {
        Queued::answer(self, found);
    }
}

/// Groups a batch of tweet reads by table. Tables are told apart by their shard objects, not
/// only their names, so a read planned before a host's pool was replaced never goes through
/// the new one unasked.
fn parts(batch: Vec<Queued<Read>>) -> Vec<TablePart> {
    let mut parts: Vec<TablePart> = Vec::new();
    for queued in batch {
        let shard = &queued.job.shard;
        let part = match parts.iter_mut().position(|p| Arc::ptr_eq(&p.shard, shard)) {
            Some(i) => &mut parts[i],
            None => {
                parts.push(TablePart {
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

/// Reads every part, in one statement when their shards share a pool, and answers each.
async fn by_pool<P: Part>(parts: Vec<P>) {
    let Some(first) = parts.first() else {
        return;
    };
    let same_pool: Vec<bool> = parts
        .iter()
        .map(|p| p.shard().shares_pool_with(first.shard()))
        .collect();
    let (mut together, mut apart) = (Vec::new(), Vec::new());
    for (part, same) in parts.into_iter().zip(same_pool) {
        if same {
            together.push(part);
        } else {
            apart.push(part);
        }
    }
    let found = P::query(&together).await;
    match found {
        Ok(found) => together
            .into_iter()
            .zip(found)
            .for_each(|(part, found)| part.answer(Ok(found))),
        // The host answered: find which part it refused by reading each one alone.
        Err(ShardError::Query { .. }) if together.len() > 1 => {
            for part in together {
                let found = P::query(std::slice::from_ref(&part)).await;
                part.answer(found.map(|f| f.into_iter().next().unwrap_or_default()));
            }
        }
        Err(err) => together
            .into_iter()
            .for_each(|part| part.answer(Err(err.clone()))),
    }
    // Parts on another pool (rare: a host whose URL just changed) go in their own statement.
    if !apart.is_empty() {
        Box::pin(by_pool(apart)).await;
    }
}
