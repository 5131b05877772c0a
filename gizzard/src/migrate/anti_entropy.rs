//! Anti-entropy: replicas heal by themselves. Every server runs a planner that, about every
//! quarter of the sweep interval, lists the replica pairs of the topology (each Replicating
//! node's first readable leaf against each of its other leaves, skipping leaves busy with a
//! migration) and enqueues a sweep job for each pair whose last full sweep is one interval
//! old. A sweep compares the pair by chunk checksums ([`Differ`]) and repairs the keys that
//! differ twice in a row ([`ops::repair`], the writes' own merge), throttled to a row rate.
//!
//! Sweeps are low-priority jobs of the durable queue: one worker owns a job at a time, and a
//! sweep saves its cursor after every chunk in `gizzard_sweeps`, so one whose server died
//! resumes where it stopped. The planner claims a pair with a conditional update before it
//! enqueues, so servers planning at once enqueue one job; a claim lapses if its sweep stops
//! renewing it, and the pair is planned again.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{task::JoinHandle, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::ops::{self, Differ, Tuning};
use crate::{
    db::{Database, DbError, Param},
    nameserver::{NodeKind, ShardId, Topology},
    scheduler::{ClaimedJob, JobFailure, JobFuture, JobQueue, JobRunner, NewJob, Priority},
    shards::{PhysicalShard, ShardError, ShardRouter},
};

/// The job type of sweeps.
pub const JOB_TYPE: &str = "gizzard.anti_entropy";

/// How long a claim holds a pair without its sweep renewing it.
const CLAIM_TTL: Duration = Duration::from_secs(60);

const MYSQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gizzard_sweeps (
    a VARCHAR(320) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    b VARCHAR(320) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    claimed_until_ms BIGINT NULL,
    cursor_key BIGINT NULL,
    rows_compared BIGINT NOT NULL DEFAULT 0,
    keys_repaired BIGINT NOT NULL DEFAULT 0,
    last_full_ms BIGINT NOT NULL,
    last_repaired BIGINT NOT NULL DEFAULT 0,
    total_repaired BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (a, b)
) ENGINE=InnoDB";

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gizzard_sweeps (
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    claimed_until_ms INTEGER NULL,
    cursor_key INTEGER NULL,
    rows_compared INTEGER NOT NULL DEFAULT 0,
    keys_repaired INTEGER NOT NULL DEFAULT 0,
    last_full_ms INTEGER NOT NULL,
    last_repaired INTEGER NOT NULL DEFAULT 0,
    total_repaired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (a, b)
)";

const SELECT_SWEEPS: &str = "SELECT a, b, claimed_until_ms, cursor_key, rows_compared, \
    keys_repaired, last_full_ms, last_repaired, total_repaired FROM gizzard_sweeps ORDER BY a, b";

/// How anti-entropy runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AntiEntropySettings {
    /// How often every replica pair is swept in full; `None` turns anti-entropy off.
    pub interval: Option<Duration>,
    /// Rows a sweep compares per second at most; `None` for as fast as the shards go.
    pub rows_per_second: Option<u64>,
}

impl Default for AntiEntropySettings {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(600)),
            rows_per_second: Some(10_000),
        }
    }
}

/// Why a sweep store operation failed. It reaches gRPC statuses and log lines, which print one
/// message, so the database's error is in the message rather than a `source`.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("sweep table: {0}")]
    Db(DbError),
    #[error("sweep table holds a bad row: {0}")]
    Corrupt(String),
}

impl From<DbError> for SweepError {
    fn from(e: DbError) -> Self {
        Self::Db(e)
    }
}

impl From<mysql_async::Error> for SweepError {
    fn from(e: mysql_async::Error) -> Self {
        Self::Db(DbError::Mysql(e))
    }
}

/// One replica pair's sweeps, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepRecord {
    pub a: ShardId,
    pub b: ShardId,
    /// A sweep holds the pair (enqueued or running) until then, by the database's clock.
    pub claimed_until_ms: Option<i64>,
    /// The last key the running sweep compared.
    pub cursor: Option<u64>,
    /// Rows the running sweep compared so far.
    pub rows_compared: u64,
    /// Keys the running sweep repaired so far.
    pub keys_repaired: u64,
    /// When the last full sweep ended (or the pair was first seen).
    pub last_full_ms: i64,
    /// Keys the last full sweep repaired.
    pub last_repaired: u64,
    /// Keys every full sweep of the pair repaired, together.
    pub total_repaired: u64,
    /// The database's clock at the read.
    pub now_ms: i64,
}

impl SweepRecord {
    /// How long ago the last full sweep ended.
    pub fn age(&self) -> Duration {
        Duration::from_millis(self.now_ms.saturating_sub(self.last_full_ms).max(0) as u64)
    }

    /// Whether a sweep holds the pair now.
    pub fn running(&self) -> bool {
        self.claimed_until_ms
            .is_some_and(|until| until > self.now_ms)
    }
}

/// The sweep table in the nameserver database.
#[derive(Clone, Debug)]
pub struct SweepStore {
    db: Database,
}

impl SweepStore {
    /// Opens the table in `db`, creating it when missing.
    pub async fn open(db: Database) -> Result<Self, SweepError> {
        let schema = match db {
            Database::Mysql { .. } => MYSQL_SCHEMA,
            Database::Sqlite { .. } => SQLITE_SCHEMA,
        };
        db.execute_batch(schema.into()).await?;
        Ok(Self { db })
    }

    fn now(&self) -> &'static str {
        self.db.now_ms_sql()
    }

    /// Returns every pair's record.
    pub async fn list(&self) -> Result<Vec<SweepRecord>, SweepError> {
        type Row = (
            String,
            String,
            Option<i64>,
            Option<i64>,
            i64,
            i64,
            i64,
            i64,
            i64,
        );
        let now_ms = self.db.now_ms().await?;
        let rows: Vec<Row> = self.db.query(SELECT_SWEEPS, Vec::new()).await?;
        let id = |s: String| {
            s.parse::<ShardId>()
                .map_err(|e| SweepError::Corrupt(e.to_string()))
        };
        rows.into_iter()
            .map(
                |(a, b, claimed, cursor, rows, repaired, last_full, last, total)| {
                    Ok(SweepRecord {
                        a: id(a)?,
                        b: id(b)?,
                        claimed_until_ms: claimed,
                        cursor: cursor.map(|c| c as u64),
                        rows_compared: rows.max(0) as u64,
                        keys_repaired: repaired.max(0) as u64,
                        last_full_ms: last_full,
                        last_repaired: last.max(0) as u64,
                        total_repaired: total.max(0) as u64,
                        now_ms,
                    })
                },
            )
            .collect()
    }

    /// Records `pairs` not seen before as swept now: a new pair was just made equal by the
    /// migration that created it.
    pub async fn register(&self, pairs: &[(ShardId, ShardId)]) -> Result<(), SweepError> {
        let ignore = match self.db {
            Database::Mysql { .. } => "INSERT IGNORE",
            Database::Sqlite { .. } => "INSERT OR IGNORE",
        };
        for chunk in pairs.chunks(200) {
            let values = vec![format!("(?, ?, {})", self.now()); chunk.len()].join(", ");
            let sql = format!("{ignore} INTO gizzard_sweeps (a, b, last_full_ms) VALUES {values}");
            let params = chunk
                .iter()
                .flat_map(|(a, b)| [Param::Text(a.to_string()), Param::Text(b.to_string())])
                .collect();
            self.db.execute(sql, params).await?;
        }
        Ok(())
    }

    /// Forgets a pair the topology no longer has.
    pub async fn forget(&self, a: &ShardId, b: &ShardId) -> Result<(), SweepError> {
        let sql = "DELETE FROM gizzard_sweeps WHERE a = ? AND b = ?";
        self.db.execute(sql.into(), pair_params(a, b)).await?;
        Ok(())
    }

    /// Claims the pair for a sweep if no sweep holds it and its last full sweep is at least
    /// `interval` old; returns whether this caller got it.
    pub async fn claim(
        &self,
        a: &ShardId,
        b: &ShardId,
        interval: Duration,
    ) -> Result<bool, SweepError> {
        let now = self.now();
        let sql = format!(
            "UPDATE gizzard_sweeps SET claimed_until_ms = {now} + ? WHERE a = ? AND b = ? \
             AND (claimed_until_ms IS NULL OR claimed_until_ms < {now}) \
             AND last_full_ms <= {now} - ?"
        );
        let mut params = vec![Param::Int(CLAIM_TTL.as_millis() as i64)];
        params.extend(pair_params(a, b));
        params.push(Param::Int(interval.as_millis() as i64));
        // Both backends count the rows the condition matched.
        Ok(self.db.execute(sql, params).await? == 1)
    }

    /// Saves a running sweep's cursor and counts, and renews its claim.
    async fn save(&self, sweep: &Sweep) -> Result<(), SweepError> {
        let sql = format!(
            "UPDATE gizzard_sweeps SET cursor_key = ?, rows_compared = ?, keys_repaired = ?, \
             claimed_until_ms = {} + ? WHERE a = ? AND b = ?",
            self.now()
        );
        let mut params = vec![
            sweep.cursor.map_or(Param::Null, |c| Param::Int(c as i64)),
            Param::Int(sweep.rows_compared as i64),
            Param::Int(sweep.keys_repaired as i64),
            Param::Int(CLAIM_TTL.as_millis() as i64),
        ];
        params.extend(pair_params(&sweep.a, &sweep.b));
        self.db.execute(sql, params).await?;
        Ok(())
    }

    /// Records a full sweep that repaired `repaired` keys, and frees the pair.
    async fn finish(&self, a: &ShardId, b: &ShardId, repaired: u64) -> Result<(), SweepError> {
        let sql = format!(
            "UPDATE gizzard_sweeps SET cursor_key = NULL, rows_compared = 0, keys_repaired = 0, \
             last_repaired = ?, total_repaired = total_repaired + ?, last_full_ms = {}, \
             claimed_until_ms = NULL WHERE a = ? AND b = ?",
            self.now()
        );
        let mut params = vec![Param::Int(repaired as i64), Param::Int(repaired as i64)];
        params.extend(pair_params(a, b));
        self.db.execute(sql, params).await?;
        Ok(())
    }
}

fn pair_params(a: &ShardId, b: &ShardId) -> Vec<Param> {
    vec![Param::Text(a.to_string()), Param::Text(b.to_string())]
}

/// Returns the replica pairs anti-entropy sweeps: each Replicating node's first readable
/// leaf child against each of its other leaf children, none of them busy with a migration.
pub fn replica_pairs(topology: &Topology) -> Vec<(ShardId, ShardId)> {
    let mut pairs = Vec::new();
    for (id, info) in &topology.shards {
        if NodeKind::from_class_name(&info.class_name) != NodeKind::Replicating {
            continue;
        }
        let leaves: Vec<(&ShardId, u32)> = topology
            .children(id)
            .filter(|(child, _)| {
                topology.shards.get(*child).is_some_and(|c| {
                    !c.busy && matches!(NodeKind::from_class_name(&c.class_name), NodeKind::Leaf(_))
                })
            })
            .collect();
        let Some(&(first, _)) = leaves.iter().find(|(_, weight)| *weight > 0) else {
            continue;
        };
        pairs.extend(
            leaves
                .iter()
                .filter(|(leaf, _)| *leaf != first)
                .map(|(leaf, _)| (first.clone(), (*leaf).clone())),
        );
    }
    pairs
}

/// The payload of a sweep job.
#[derive(Debug, Serialize, Deserialize)]
struct JobPayload {
    a: String,
    b: String,
}

/// A sweep in progress.
struct Sweep {
    a: ShardId,
    b: ShardId,
    cursor: Option<u64>,
    rows_compared: u64,
    keys_repaired: u64,
}

/// Plans and runs sweeps for shards of type `S`.
pub struct AntiEntropy<S> {
    router: Arc<ShardRouter<S>>,
    queue: JobQueue,
    store: SweepStore,
    settings: AntiEntropySettings,
    tuning: Tuning,
}

impl<S: PhysicalShard> AntiEntropy<S> {
    pub fn new(
        router: Arc<ShardRouter<S>>,
        queue: JobQueue,
        store: SweepStore,
        settings: AntiEntropySettings,
        tuning: Tuning,
    ) -> Self {
        Self {
            router,
            queue,
            store,
            settings,
            tuning,
        }
    }

    /// Registers the topology's pairs, forgets gone ones, reports each pair's age, and
    /// enqueues a sweep of every due pair this server could claim. Returns how many.
    pub async fn plan(&self) -> Result<usize, String> {
        let Some(interval) = self.settings.interval else {
            return Ok(0);
        };
        let topology = self.router.routing().current().topology.clone();
        let pairs = replica_pairs(&topology);
        self.store
            .register(&pairs)
            .await
            .map_err(|e| e.to_string())?;
        let current: BTreeSet<&(ShardId, ShardId)> = pairs.iter().collect();
        let mut enqueued = 0;
        for record in self.store.list().await.map_err(|e| e.to_string())? {
            let pair = (record.a.clone(), record.b.clone());
            if !current.contains(&pair) {
                self.store
                    .forget(&record.a, &record.b)
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            }
            metrics::gauge!(
                "gizzard_anti_entropy_sweep_age_seconds",
                "a" => record.a.to_string(),
                "b" => record.b.to_string()
            )
            .set(record.age().as_secs_f64());
            if record.running() || record.age() < interval {
                continue;
            }
            if self
                .store
                .claim(&record.a, &record.b, interval)
                .await
                .map_err(|e| e.to_string())?
            {
                let payload = JobPayload {
                    a: record.a.to_string(),
                    b: record.b.to_string(),
                };
                let job =
                    NewJob::json(Priority::Low, JOB_TYPE, &payload).map_err(|e| e.to_string())?;
                // Unstored, the claim lapses and the pair is planned again.
                self.queue.enqueue(&job).await.map_err(|e| e.to_string())?;
                enqueued += 1;
            }
        }
        Ok(enqueued)
    }

    /// Spawns the planner until `shutdown`: it plans every quarter interval (at least every
    /// 30 s), and within `poll` of a topology change, so new pairs are registered at once.
    /// Does nothing when anti-entropy is off.
    pub fn spawn_planner(
        self: Arc<Self>,
        poll: Duration,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let interval = self.settings.interval?;
        let every = (interval / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(poll.min(every));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut planned_at: Option<(Instant, u64)> = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let version = self.router.routing().current().version;
                if planned_at.is_some_and(|(at, v)| v == version && at.elapsed() < every) {
                    continue;
                }
                let planned = tokio::select! {
                    () = shutdown.cancelled() => break,
                    planned = self.plan() => planned,
                };
                match planned {
                    Ok(n) => {
                        planned_at = Some((Instant::now(), version));
                        if n > 0 {
                            tracing::debug!(sweeps = n, "anti-entropy sweeps enqueued");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "anti-entropy planning failed"),
                }
            }
        }))
    }

    /// Sweeps the pair of `payload` from its saved cursor to the end.
    async fn sweep(&self, payload: JobPayload) -> Result<(), JobFailure> {
        let parse = |s: &str| {
            s.parse::<ShardId>()
                .map_err(|e| JobFailure::counted(format!("bad sweep payload: {e}")))
        };
        let (a, b) = (parse(&payload.a)?, parse(&payload.b)?);
        let records = self
            .store
            .list()
            .await
            .map_err(|e| JobFailure::refused(e.to_string()))?;
        let Some(record) = records.into_iter().find(|r| r.a == a && r.b == b) else {
            return Ok(()); // The pair left the topology.
        };
        let (Ok(leaf_a), Ok(leaf_b)) = (self.router.leaf(&a).await, self.router.leaf(&b).await)
        else {
            self.store
                .forget(&a, &b)
                .await
                .map_err(|e| JobFailure::refused(e.to_string()))?;
            return Ok(());
        };
        let mut sweep = Sweep {
            a,
            b,
            cursor: record.cursor,
            rows_compared: record.rows_compared,
            keys_repaired: record.keys_repaired,
        };
        let shard_failure = |e: ShardError| JobFailure {
            counts: e.counts_as_failure(),
            message: e.to_string(),
        };
        let store_failure = |e: SweepError| JobFailure::refused(e.to_string());
        let mut differ =
            Differ::new(&*leaf_a.shard, &*leaf_b.shard, None, &self.tuning).resume(sweep.cursor);
        let started = Instant::now();
        let mut compared_here = 0u64;
        while let Some(chunk) = differ.next_chunk().await.map_err(shard_failure)? {
            compared_here += chunk.compared;
            sweep.rows_compared += chunk.compared;
            metrics::counter!("gizzard_anti_entropy_rows_compared_total").increment(chunk.compared);
            if !chunk.differences.is_empty() {
                let repaired = ops::repair(&*leaf_a.shard, &*leaf_b.shard, &chunk.differences)
                    .await
                    .map_err(shard_failure)?;
                sweep.keys_repaired += repaired;
                metrics::counter!("gizzard_anti_entropy_keys_repaired_total").increment(repaired);
                tracing::info!(a = %sweep.a, b = %sweep.b, repaired, "anti-entropy repaired keys");
            }
            sweep.cursor = differ.position();
            self.store.save(&sweep).await.map_err(store_failure)?;
            if let Some(rate) = self.settings.rows_per_second {
                let due = Duration::from_secs_f64(compared_here as f64 / rate.max(1) as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
        self.store
            .finish(&sweep.a, &sweep.b, sweep.keys_repaired)
            .await
            .map_err(store_failure)?;
        tracing::debug!(
            a = %sweep.a, b = %sweep.b, rows = sweep.rows_compared,
            repaired = sweep.keys_repaired, "anti-entropy sweep done"
        );
        Ok(())
    }
}

impl<S: PhysicalShard> JobRunner for AntiEntropy<S> {
    fn run<'a>(&'a self, job: &'a ClaimedJob) -> JobFuture<'a> {
        Box::pin(async move {
            let payload: JobPayload = job
                .decode()
                .map_err(|e| JobFailure::counted(e.to_string()))?;
            self.sweep(payload).await
        })
    }

    fn timeout(&self, _job: &ClaimedJob) -> Option<Duration> {
        // A throttled sweep of a large pair takes hours; it saves its cursor as it goes.
        Some(Duration::from_secs(24 * 3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nameserver::{Link, ShardInfo};

    fn id(s: &str) -> ShardId {
        s.parse().expect("shard id")
    }

    fn shard(topology: &mut Topology, s: &str, class_name: &str, busy: bool) {
        topology.shards.insert(
            id(s),
            ShardInfo {
                id: id(s),
                class_name: class_name.into(),
                busy,
            },
        );
    }

    #[test]
    fn pairs_join_the_first_readable_leaf_to_the_others_and_skip_busy_or_wrapped_ones() {
        let mut t = Topology::default();
        shard(&mut t, "localhost/r", "ReplicatingShard", false);
        for leaf in ["h1/t", "h2/t", "h3/t"] {
            shard(&mut t, leaf, "TweetShard", false);
        }
        shard(&mut t, "h4/t", "TweetShard", true);
        shard(&mut t, "localhost/w", "WriteOnlyShard", false);
        shard(&mut t, "h5/t", "TweetShard", false);
        let links = [
            ("localhost/r", "h1/t", 0),
            ("localhost/r", "h2/t", 1),
            ("localhost/r", "h3/t", 1),
            ("localhost/r", "h4/t", 1),
            ("localhost/r", "localhost/w", 0),
            ("localhost/w", "h5/t", 1),
        ];
        for (up, down, weight) in links {
            t.apply(&crate::nameserver::Change::AddLink(Link {
                up: id(up),
                down: id(down),
                weight,
            }))
            .expect("link");
        }
        assert_eq!(
            replica_pairs(&t),
            vec![(id("h2/t"), id("h1/t")), (id("h2/t"), id("h3/t"))]
        );
    }

    #[tokio::test]
    async fn a_pair_is_claimed_once_per_interval_and_finishing_frees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("ns.db").display());
        let db = Database::open(&url, Duration::from_secs(30))
            .await
            .expect("open sqlite");
        let store = SweepStore::open(db).await.expect("open");
        let (a, b) = (id("h1/t"), id("h2/t"));
        store
            .register(&[(a.clone(), b.clone())])
            .await
            .expect("register");
        // Just seen: not due for an interval.
        assert!(
            !store
                .claim(&a, &b, Duration::from_secs(60))
                .await
                .expect("claim")
        );
        assert!(store.claim(&a, &b, Duration::ZERO).await.expect("claim"));
        assert!(
            !store
                .claim(&a, &b, Duration::ZERO)
                .await
                .expect("claimed already")
        );
        let record = &store.list().await.expect("list")[0];
        assert!(record.running());
        store.finish(&a, &b, 3).await.expect("finish");
        let record = &store.list().await.expect("list")[0];
        assert!(!record.running());
        assert_eq!((record.last_repaired, record.total_repaired), (3, 3));
        assert!(
            store
                .claim(&a, &b, Duration::ZERO)
                .await
                .expect("claim again")
        );
        store.forget(&a, &b).await.expect("forget");
        assert!(store.list().await.expect("list").is_empty());
    }
}
