//! Write batches combined per host: the coalescer's batches for different tables of one MySQL
//! host, arriving while the host's statement slots are busy, go out as one multi-statement
//! round trip ([`crate::hosts`]), their parameters inlined ([`super::inline`]).

use gizzard::shards::ShardError;

use super::{Row, TbirdShard, inline::inline};
use crate::hosts::{HostJob, HostQueues, Queued};

/// Write batches combined per host. Each `INSERT` still commits on its own, so a batch that
/// fails part-way leaves no transaction open; writes repeat safely, so the parts of a batch
/// the host refused are retried one by one, and one broken table fails only its own writes.
pub struct Merges {
    queues: HostQueues<Merge>,
}

impl std::fmt::Debug for Merges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merges").finish_non_exhaustive()
    }
}

/// The most rows one combined round trip carries (a few MB of statement at most).
const MAX_COMBINED_ROWS: usize = 1_000;

/// One coalesced write batch waiting to be combined with others on its host.
struct Merge {
    shard: TbirdShard,
    rows: Vec<Row>,
}

impl Merges {
    /// Returns queues running at most `statements_per_host` round trips at once on a host.
    pub fn new(statements_per_host: usize) -> Self {
        Self {
            queues: HostQueues::new(statements_per_host, MAX_COMBINED_ROWS),
        }
    }

    /// Merges `rows` into `shard`, in a round trip shared with other batches for its host.
    pub(super) async fn merge(&self, shard: &TbirdShard, rows: Vec<Row>) -> Result<(), ShardError> {
        let merge = Merge {
            shard: shard.without_merges(),
            rows,
        };
        // The caller (the leaf's coalescer) holds the deadline.
        match self.queues.submit(&shard.id.hostname, merge).await {
            Some(result) => result,
            None => Err(ShardError::Query {
                shard: shard.id.to_string(),
                message: "the write panicked".into(),
            }),
        }
    }
}

impl HostJob for Merge {
    type Output = Result<(), ShardError>;

    fn weight(&self) -> usize {
        self.rows.len()
    }

    async fn run(batch: Vec<Queued<Self>>) {
        // Batches through another pool (a host whose URL just changed) go on their own.
        let first = batch[0].job.shard.db.clone();
        let (together, apart): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|q| q.job.shard.db.same_as(&first));
        combine(together).await;
        for queued in apart {
            merge_alone(queued).await;
        }
    }
}

/// Merges one coalesced batch in its own statement and answers its caller.
async fn merge_alone(queued: Queued<Merge>) {
    let result = queued.job.shard.merge(&queued.job.rows).await;
    queued.answer(result);
}

/// Sends the merges of `batch` (all through one pool) in one round trip and answers each.
async fn combine(batch: Vec<Queued<Merge>>) {
    if batch.len() == 1 {
        for queued in batch {
            merge_alone(queued).await;
        }
        return;
    }
    let statements: Result<Vec<String>, ShardError> = batch
        .iter()
        .map(|q| {
            let shard = &q.job.shard;
            let (sql, params) = shard.merge_statement(&q.job.rows)?;
            inline(&sql, params).map_err(|e| ShardError::Query {
                shard: shard.id.to_string(),
                message: e.to_string(),
            })
        })
        .collect();
    let first = &batch[0].job.shard;
    let result = match statements {
        Ok(statements) => first.execute_batch(statements.join(";\n")).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => batch.into_iter().for_each(|q| q.answer(Ok(()))),
        // The host answered: find which table refused by merging each batch alone.
        Err(ShardError::Query { .. }) => {
            for queued in batch {
                merge_alone(queued).await;
            }
        }
        Err(err) => {
            for queued in batch {
                let shard = queued.job.shard.id.to_string();
                queued.answer(Err(err.clone().on_shard(&shard)));
            }
        }
    }
}
