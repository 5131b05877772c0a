//! The job table and every operation on it, for MySQL and SQLite.
//!
//! `gizzard_jobs` holds one row per job: its priority, kind (`job_type`), an opaque payload,
//! the shard it targets, its state (`ready` or `bad`), its attempts and last error, when it may
//! run next (`run_after_ms`) and who holds it (`lease_owner` until `lease_expires_ms`).
//! `gizzard_queue_control` holds one row per priority with a paused flag, so pausing is seen by
//! every server.
//!
//! A job is claimed by taking a lease on it; the holder completes it (the row is deleted) or
//! fails it (the lease is cleared and the job backs off, or is parked as `bad` past the error
//! limit). A worker that dies leaves its lease to expire, and another worker takes the job:
//! nothing acknowledged is lost, and jobs must therefore be idempotent. Every time that decides
//! a lease or a backoff is read from the database's clock, so servers whose clocks disagree
//! still agree on who holds a job. Every operation runs under the database's deadline.
//!
//! Claiming is cheap: the index `(state, priority, run_after_ms, id)` gives, per priority, the
//! runnable jobs in the order they became runnable, so a claim reads only the rows it returns
//! (plus the few held by running workers), however many jobs wait out a backoff.
//!
//! Most operations are one statement both databases accept. What differs (the schema, and
//! the operations that are transactions of several statements, each locked the database's
//! way) is behind [`QueueBackend`], in [`mysql`] and [`sqlite`], chosen once when the queue
//! opens.

mod mysql;
mod sqlite;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    future::Future,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use rand::Rng;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::db::{Database, DbError, Param};

/// Every column of `gizzard_jobs`, in the order [`RawRow`] reads them.
const COLUMNS: &str = "id, priority, job_type, payload, shard, state, attempts, last_error, \
                       run_after_ms, lease_owner, lease_expires_ms, created_at_ms";

/// The gauge of jobs in the queue, by priority and state.
pub const DEPTH_METRIC: &str = "gizzard_queue_jobs";
/// The gauge of when [`DEPTH_METRIC`] was last counted (Unix seconds): it keeps its last value
/// while the queue cannot be counted, and this says how old that value is.
pub const DEPTH_COUNTED_METRIC: &str = "gizzard_queue_jobs_counted_timestamp_seconds";

/// The longest `job_type`, shard id and lease owner the tables hold.
const MAX_JOB_TYPE: usize = 64;
const MAX_NAME: usize = 255;
/// The longest error message kept on a job; longer ones are cut at a character boundary.
const MAX_ERROR: usize = 4000;
/// One multi-row INSERT carries at most this many rows or payload bytes, well inside
/// MySQL's placeholder limit and default `max_allowed_packet`.
const INSERT_ROWS: usize = 500;
const INSERT_BYTES: usize = 4 << 20;

/// How urgent a job is. Claims take every runnable job of a higher priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Write retries: an acknowledged write that has not reached every replica yet.
    High,
    /// Maintenance work that is neither a write nor a bulk copy.
    Low,
    /// Copy, diff and repair jobs of migrations.
    Copy,
}

impl Priority {
    /// Every priority, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Low, Priority::Copy];

    /// Returns the lowercase name used in the CLI and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Low => "low",
            Self::Copy => "copy",
        }
    }

    /// The value stored in the `priority` columns; lower sorts first.
    fn code(self) -> i64 {
        match self {
            Self::High => 0,
            Self::Low => 1,
            Self::Copy => 2,
        }
    }

    fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.code() == code)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| QueueError::Parse(format!("unknown priority {s:?} (high, low, copy)")))
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting to run, backing off, or held by a worker.
    Ready,
    /// Failed as often as the error limit allows; parked until an operator retries or purges.
    Bad,
}

impl JobState {
    /// Returns the value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Bad => "bad",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ready" => Ok(Self::Ready),
            "bad" => Ok(Self::Bad),
            _ => Err(QueueError::Parse(format!(
                "unknown job state {s:?} (ready, bad)"
            ))),
        }
    }
}

/// A job to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    pub priority: Priority,
    /// Names the kind of job, so a runner knows how to decode the payload (at most 64 bytes).
    pub job_type: String,
    /// The serde-encoded job; the queue never looks inside.
    pub payload: Vec<u8>,
    /// The shard the job writes to (`host/prefix`), if any, so migrations can wait for it.
    pub shard: Option<String>,
}

impl NewJob {
    /// Returns a job of kind `job_type` with an already encoded payload and no target shard.
    pub fn new(
        priority: Priority,
        job_type: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            priority,
            job_type: job_type.into(),
            payload: payload.into(),
            shard: None,
        }
    }

    /// Returns a job whose payload is `value` encoded as JSON.
    pub fn json<T: Serialize>(
        priority: Priority,
        job_type: impl Into<String>,
        value: &T,
    ) -> Result<Self, QueueError> {
        let job_type = job_type.into();
        let payload = serde_json::to_vec(value).map_err(|cause| QueueError::Encode {
            job_type: job_type.clone(),
            cause,
        })?;
        Ok(Self {
            priority,
            job_type,
            payload,
            shard: None,
        })
    }

    /// Returns the job targeting `shard`.
    pub fn with_shard(mut self, shard: impl Into<String>) -> Self {
        self.shard = Some(shard.into());
        self
    }

    fn validate(&self) -> Result<(), QueueError> {
        let invalid = |reason: String| Err(QueueError::InvalidJob(reason));
        if self.job_type.is_empty() || self.job_type.len() > MAX_JOB_TYPE {
            return invalid(format!(
                "job type {:?} must be 1 to {MAX_JOB_TYPE} bytes long",
                self.job_type
            ));
        }
        if let Some(shard) = &self.shard
            && (shard.is_empty() || shard.len() > MAX_NAME)
        {
            return invalid(format!(
                "shard id {shard:?} must be 1 to {MAX_NAME} bytes long"
            ));
        }
        Ok(())
    }
}

/// A job a worker holds a lease on. Pass it back to [`JobQueue::complete`],
/// [`JobQueue::extend`] or [`JobQueue::fail`]; they act only while `owner` still holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedJob {
    pub id: u64,
    pub priority: Priority,
    pub job_type: String,
    pub payload: Vec<u8>,
    pub shard: Option<String>,
    /// Counted failures before this run.
    pub attempts: u32,
    /// The error of the previous failed run, if any.
    pub last_error: Option<String>,
    /// When the job was stored, by the database's clock (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// The worker holding the lease.
    pub owner: String,
    /// When the lease taken by the claim ends, by the database's clock.
    pub lease_expires_ms: i64,
}

impl ClaimedJob {
    /// Decodes a JSON payload (see [`NewJob::json`]).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, QueueError> {
        serde_json::from_slice(&self.payload).map_err(|cause| QueueError::Decode {
            id: self.id,
            job_type: self.job_type.clone(),
            cause,
        })
    }
}

/// A row of the job table, as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub id: u64,
    pub priority: Priority,
    pub job_type: String,
    pub payload: Vec<u8>,
    pub shard: Option<String>,
    pub state: JobState,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The job is not claimed before this time (database clock, ms since the Unix epoch).
    pub run_after_ms: i64,
    /// The worker that holds or last held the job; its lease ends at `lease_expires_ms`.
    pub lease_owner: Option<String>,
    pub lease_expires_ms: i64,
    pub created_at_ms: i64,
}

/// Which jobs [`JobQueue::list`] and [`JobQueue::purge`] act on; `None` fields match any job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub priority: Option<Priority>,
    pub shard: Option<String>,
    /// At most this many jobs, the lowest ids first.
    pub limit: Option<u64>,
}

/// Which jobs [`JobQueue::retry_now`] makes runnable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryTarget {
    /// These jobs, when bad or waiting out a backoff (jobs a worker holds are left alone).
    Ids(Vec<u64>),
    /// Every bad job.
    AllBad,
}

/// What [`JobQueue::fail`] did with a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// The job runs again once `delay` has passed.
    Retrying { attempts: u32, delay: Duration },
    /// The job reached the error limit and waits as `bad` for an operator.
    Parked { attempts: u32 },
}

/// How failed jobs back off, and when they give up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first counted failure; it doubles with each further one.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// Counted failures after which a job is parked as `bad`.
    pub error_limit: u32,
    /// The delay after a failure that does not count (a Blocked or ReadOnly node, an offline
    /// host): such jobs wait for the topology to change, never give up, and must not spin.
    pub refused_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(60),
            error_limit: 10,
            refused_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// Returns the delay after the `attempts`-th counted failure (1 for the first): `base`
    /// doubled per earlier failure and capped at `cap`, then jittered to between half of it
    /// and all of it, so jobs that failed together do not retry together.
    pub fn backoff(&self, attempts: u32, rng: &mut impl Rng) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        jitter(self.base.saturating_mul(1 << doublings).min(self.cap), rng)
    }

    /// Returns the delay after a failure that does not count: `refused_delay`, jittered as in
    /// [`RetryPolicy::backoff`].
    pub fn refused_backoff(&self, rng: &mut impl Rng) -> Duration {
        jitter(self.refused_delay, rng)
    }
}

/// Returns a delay between half of `full` and `full`.
fn jitter(full: Duration, rng: &mut impl Rng) -> Duration {
    let full_ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
    let half = full_ms / 2;
    Duration::from_millis(half + rng.random_range(0..=full_ms - half))
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{action}: {cause}")]
    Db { action: String, cause: DbError },
    #[error(
        "{action}: database did not answer within {timeout:?}; the change may have been \
         applied, and retrying is safe"
    )]
    MaybeApplied { action: String, timeout: Duration },
    #[error(
        "job {id} is no longer leased to {owner:?}: the lease expired and another worker \
         took the job, or the job is gone"
    )]
    LeaseLost { id: u64, owner: String },
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("invalid lease owner {0:?}: must be 1 to 255 bytes long")]
    InvalidOwner(String),
    #[error("unreadable row in gizzard_jobs: {0}")]
    BadRow(String),
    #[error("{0}")]
    Parse(String),
    #[error("encode the payload of a {job_type:?} job: {cause}")]
    Encode {
        job_type: String,
        cause: serde_json::Error,
    },
    #[error("decode the payload of job {id} ({job_type:?}): {cause}")]
    Decode {
        id: u64,
        job_type: String,
        cause: serde_json::Error,
    },
}

/// The most tries of an operation that keeps hitting transient lock conflicts.
const TRANSIENT_ATTEMPTS: u32 = 5;
/// The pause after the first transient lock conflict; it doubles after each further one.
const TRANSIENT_PAUSE: Duration = Duration::from_millis(10);

/// MySQL's "Deadlock found when trying to get lock" (SQLSTATE 40001): InnoDB rolled back the
/// whole transaction.
const ER_LOCK_DEADLOCK: u16 = 1213;
/// MySQL's "Lock wait timeout exceeded": the statement waited `innodb_lock_wait_timeout` for a
/// row lock and was rolled back.
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

/// Returns whether `err` is a transient lock conflict: the server refused the statement only
/// because of what other transactions held at that moment, so running the operation again
/// from its start is safe and likely to succeed. Queue transactions meet them under load:
/// claims, completions and enqueues touch the same index ranges in different orders.
fn is_transient(err: &DbError) -> bool {
    matches!(
        err,
        DbError::Mysql(mysql_async::Error::Server(e))
            if e.code == ER_LOCK_DEADLOCK || e.code == ER_LOCK_WAIT_TIMEOUT
    )
}

/// Maps the error of a read.
fn read_err(action: impl Into<String>) -> impl FnOnce(DbError) -> QueueError {
    let action = action.into();
    move |cause| QueueError::Db { action, cause }
}

/// Maps the error of a change: a timeout leaves it unknown whether the change was applied.
fn write_err(action: impl Into<String>) -> impl FnOnce(DbError) -> QueueError {
    let action = action.into();
    move |cause| match cause {
        DbError::Timeout(timeout) => QueueError::MaybeApplied { action, timeout },
        cause => QueueError::Db { action, cause },
    }
}

/// Returns ` WHERE …` (or nothing) and its parameters for the filter's state, priority and
/// shard.
fn filter_clause(filter: &JobFilter) -> (String, Vec<Param>) {
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    if let Some(state) = filter.state {
        clauses.push("state = ?");
        params.push(Param::Text(state.as_str().to_owned()));
    }
    if let Some(priority) = filter.priority {
        clauses.push("priority = ?");
        params.push(Param::Int(priority.code()));
    }
    if let Some(shard) = &filter.shard {
        clauses.push("shard = ?");
        params.push(Param::Text(shard.clone()));
    }
    if clauses.is_empty() {
        (String::new(), params)
    } else {
        (format!(" WHERE {}", clauses.join(" AND ")), params)
    }
}

/// Columns as read from either backend, before validation.
type RawRow = (
    u64,
    i64,
    String,
    Vec<u8>,
    Option<String>,
    String,
    i64,
    Option<String>,
    i64,
    Option<String>,
    i64,
    i64,
);

fn record(raw: RawRow) -> Result<JobRecord, QueueError> {
    let (
        id,
        priority,
        job_type,
        payload,
        shard,
        state,
        attempts,
        last_error,
        run_after_ms,
        lease_owner,
        lease_expires_ms,
        created_at_ms,
    ) = raw;
    let bad = |what: String| QueueError::BadRow(format!("job {id}: {what}"));
    Ok(JobRecord {
        id,
        priority: Priority::from_code(priority)
            .ok_or_else(|| bad(format!("unknown priority {priority}")))?,
        job_type,
        payload,
        shard,
        state: state
            .parse()
            .map_err(|_| bad(format!("unknown state {state:?}")))?,
        attempts: u32::try_from(attempts).map_err(|_| bad(format!("attempts {attempts}")))?,
        last_error,
        run_after_ms,
        lease_owner,
        lease_expires_ms,
        created_at_ms,
    })
}

fn claimed(raw: RawRow, owner: &str, lease_expires_ms: i64) -> Result<ClaimedJob, QueueError> {
    let r = record(raw)?;
    Ok(ClaimedJob {
        id: r.id,
        priority: r.priority,
        job_type: r.job_type,
        payload: r.payload,
        shard: r.shard,
        attempts: r.attempts,
        last_error: r.last_error,
        created_at_ms: r.created_at_ms,
        owner: owner.to_owned(),
        lease_expires_ms,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn check_owner(owner: &str) -> Result<(), QueueError> {
    if owner.is_empty() || owner.len() > MAX_NAME {
        return Err(QueueError::InvalidOwner(owner.to_owned()));
    }
    Ok(())
}

/// Returns `error` cut to at most [`MAX_ERROR`] bytes at a character boundary.
fn truncate_error(error: &str) -> String {
    if error.len() <= MAX_ERROR {
        return error.to_owned();
    }
    let mut end = MAX_ERROR;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

/// `?, ?, …` with `n` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// One try of an operation: the database's error (retried when transient), or the queue's
/// own outcome, which may be an error about what the table holds.
type Try<T> = Result<Result<T, QueueError>, DbError>;

/// What the queue does its own way on one database. Each operation is one try, run on `db`,
/// which holds what is left of the operation's deadline.
trait QueueBackend: fmt::Debug + Send + Sync {
    /// Returns the statements creating the tables when missing.
    fn schema(&self) -> &'static str;

    /// Inserts `jobs` in one transaction and returns their ids, in order.
    fn enqueue<'a>(
        &'a self,
        db: &'a Database,
        jobs: Arc<Vec<NewJob>>,
    ) -> BoxFuture<'a, Try<Vec<u64>>>;

    /// Leases up to `limit` runnable jobs to `owner` for `lease_ms`, as [`JobQueue::claim`]
    /// says, in one transaction.
    fn claim<'a>(
        &'a self,
        db: &'a Database,
        owner: Arc<str>,
        limit: usize,
        lease_ms: i64,
    ) -> BoxFuture<'a, Try<Vec<ClaimedJob>>>;

    /// Records a failed run of job `id` as `decide` says from its stored attempts, in one
    /// transaction; `None` when `owner` no longer holds the job.
    fn fail<'a>(
        &'a self,
        db: &'a Database,
        id: i64,
        owner: String,
        error: String,
        decide: Arc<Decide>,
    ) -> BoxFuture<'a, Try<Option<FailOutcome>>>;

    /// Runs `sql`, a select of [`COLUMNS`], and returns its rows.
    fn select_jobs<'a>(
        &'a self,
        db: &'a Database,
        sql: String,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Try<Vec<RawRow>>>;

    /// Returns the statement deleting the first `?` jobs (by id) that `clause` (a ` WHERE …`
    /// or nothing) selects.
    fn delete_first(&self, clause: &str) -> String;
}

/// Returns the backend of `db`.
fn backend_of(db: &Database) -> &'static dyn QueueBackend {
    match db {
        Database::Mysql { .. } => &mysql::Mysql,
        Database::Sqlite { .. } => &sqlite::Sqlite,
    }
}

/// The durable job queue in the nameserver database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JobQueue {
    db: Database,
    backend: &'static dyn QueueBackend,
    policy: RetryPolicy,
}

impl JobQueue {
    /// Opens the queue in `db`, creating its tables when missing, with the default
    /// [`RetryPolicy`].
    pub async fn open(db: Database) -> Result<Self, QueueError> {
        let backend = backend_of(&db);
        db.execute_batch(backend.schema().to_owned())
            .await
            .map_err(read_err("create the job queue tables"))?;
        Ok(Self {
            db,
            backend,
            policy: RetryPolicy::default(),
        })
    }

    /// Returns the queue with `policy` deciding backoff and the error limit.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Returns the retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Returns the database deadline every operation runs under.
    pub fn timeout(&self) -> Duration {
        self.db.timeout()
    }

    /// Stores one job and returns its id. The job is durable once this returns `Ok`.
    pub async fn enqueue(&self, job: &NewJob) -> Result<u64, QueueError> {
        let ids = self.enqueue_many(std::slice::from_ref(job)).await?;
        ids.first()
            .copied()
            .ok_or_else(|| QueueError::BadRow("the insert reported no id".into()))
    }

    /// Stores `jobs` in one transaction and returns their ids, in order. They are durable once
    /// this returns `Ok`; on an error none of them is stored, except after a timeout, when all
    /// may be (see [`QueueError::MaybeApplied`]).
    pub async fn enqueue_many(&self, jobs: &[NewJob]) -> Result<Vec<u64>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        for job in jobs {
            job.validate()?;
        }
        let action = match jobs.len() {
            1 => format!("enqueue a {:?} job", jobs[0].job_type),
            n => format!("enqueue {n} jobs"),
        };
        let jobs = Arc::new(jobs.to_vec());
        let backend = self.backend;
        self.retrying(&action, |db| {
            let jobs = jobs.clone();
            async move { backend.enqueue(&db, jobs).await }
        })
        .await
        .map_err(write_err(action))?
    }

    /// Leases up to `limit` runnable jobs to `owner` for `lease` and returns them: ready jobs
    /// whose backoff has passed and whose lease is free or expired, from priorities that are
    /// not paused, highest priority first, then the longest runnable. Concurrent claimers
    /// never get the same job. `owner` must be unique to one worker.
    pub async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        check_owner(owner)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lease_ms = millis(lease).max(1);
        let action = format!("claim jobs for {owner:?}");
        let owner: Arc<str> = owner.into();
        let backend = self.backend;
        self.retrying(&action, |db| {
            let owner = owner.clone();
            async move { backend.claim(&db, owner, limit, lease_ms).await }
        })
        .await
        .map_err(write_err(action))?
    }

    /// Deletes a finished job, provided its lease is still the caller's.
    pub async fn complete(&self, job: &ClaimedJob) -> Result<(), QueueError> {
        let changed = self
            .execute(
                format!("complete job {}", job.id),
                "DELETE FROM gizzard_jobs WHERE id = ? AND lease_owner = ?".to_owned(),
                vec![Param::Int(job.id as i64), Param::Text(job.owner.clone())],
            )
            .await?;
        self.owned(job, changed)
    }

    /// Extends the lease on a running job to `lease` from now (database clock), so no other
    /// worker takes it over; fails with [`QueueError::LeaseLost`] once another worker has.
    pub async fn extend(&self, job: &ClaimedJob, lease: Duration) -> Result<(), QueueError> {
        let sql = format!(
            "UPDATE gizzard_jobs SET lease_expires_ms = {} + ? \
             WHERE id = ? AND lease_owner = ? AND state = 'ready'",
            self.now_ms()
        );
        let params = vec![
            Param::Int(millis(lease).max(1)),
            Param::Int(job.id as i64),
            Param::Text(job.owner.clone()),
        ];
        let changed = self
            .execute(format!("extend the lease on job {}", job.id), sql, params)
            .await?;
        self.owned(job, changed)
    }

    /// Records a failed run and gives the job up. A failure that `counts` adds an attempt:
    /// at the error limit the job is parked as `bad`, otherwise it backs off exponentially.
    /// One that does not count (the target refused the write for now) retries after the
    /// policy's `refused_delay` and never makes the job bad.
    pub async fn fail(
        &self,
        job: &ClaimedJob,
        error: &str,
        counts: bool,
    ) -> Result<FailOutcome, QueueError> {
        let action = format!("record the failure of job {}", job.id);
        let (id, owner, error) = (job.id as i64, job.owner.clone(), truncate_error(error));
        let policy = self.policy.clone();
        // The rng is made here: it is not Send, and the decision needs the stored attempts.
        let decide: Arc<Decide> = Arc::new(move |attempts: i64| {
            let attempts = u32::try_from(attempts.max(0)).unwrap_or(u32::MAX);
            let mut rng = rand::rng();
            if !counts {
                FailOutcome::Retrying {
                    attempts,
                    delay: policy.refused_backoff(&mut rng),
                }
            } else {
                let attempts = attempts.saturating_add(1);
                if attempts >= policy.error_limit {
                    FailOutcome::Parked { attempts }
                } else {
                    FailOutcome::Retrying {
                        attempts,
                        delay: policy.backoff(attempts, &mut rng),
                    }
                }
            }
        });
        let backend = self.backend;
        let outcome = self
            .retrying(&action, |db| {
                let (owner, error, decide) = (owner.clone(), error.clone(), decide.clone());
                async move { backend.fail(&db, id, owner, error, decide).await }
            })
            .await
            .map_err(write_err(action))??;
        outcome.ok_or_else(|| QueueError::LeaseLost {
            id: job.id,
            owner: job.owner.clone(),
        })
    }

    /// Returns the jobs matching `filter`, lowest id first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, QueueError> {
        let (clause, mut params) = filter_clause(filter);
        let mut sql = format!("SELECT {COLUMNS} FROM gizzard_jobs{clause} ORDER BY id");
        if let Some(limit) = filter.limit {
            sql.push_str(" LIMIT ?");
            params.push(Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        }
        let raws = self
            .backend
            .select_jobs(&self.db, sql, params)
            .await
            .map_err(read_err("list jobs"))??;
        raws.into_iter().map(record).collect()
    }

    /// Makes jobs runnable now with their attempts reset: bad jobs return to ready, and ready
    /// ones skip the rest of their backoff. Jobs a worker holds are left alone. Returns how
    /// many jobs changed.
    pub async fn retry_now(&self, target: &RetryTarget) -> Result<u64, QueueError> {
        let now = self.now_ms();
        let set = format!(
            "UPDATE gizzard_jobs SET state = 'ready', attempts = 0, run_after_ms = {now}, \
             lease_owner = NULL, lease_expires_ms = 0"
        );
        let (action, sql, params) = match target {
            RetryTarget::AllBad => (
                "retry every bad job".to_owned(),
                format!("{set} WHERE state = 'bad'"),
                vec![],
            ),
            RetryTarget::Ids(ids) if ids.is_empty() => return Ok(0),
            RetryTarget::Ids(ids) => (
                format!("retry {} jobs", ids.len()),
                format!(
                    "{set} WHERE id IN ({}) AND (state = 'bad' OR lease_expires_ms <= {now})",
                    placeholders(ids.len())
                ),
                ids.iter().map(|&id| Param::Int(id as i64)).collect(),
            ),
        };
        self.execute(action, sql, params).await
    }

    /// Deletes the jobs matching `filter` (at most `limit`, lowest ids first) and returns how
    /// many. A purged job is never run again: purging ready write retries loses writes.
    pub async fn purge(&self, filter: &JobFilter) -> Result<u64, QueueError> {
        let (clause, mut params) = filter_clause(filter);
        let sql = match filter.limit {
            None => format!("DELETE FROM gizzard_jobs{clause}"),
            Some(limit) => {
                params.push(Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
                self.backend.delete_first(&clause)
            }
        };
        self.execute("purge jobs".to_owned(), sql, params).await
    }

    /// Deletes the jobs with these ids and returns how many existed. A purged job is never
    /// run again.
    pub async fn purge_ids(&self, ids: &[u64]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "DELETE FROM gizzard_jobs WHERE id IN ({})",
            placeholders(ids.len())
        );
        let params = ids.iter().map(|&id| Param::Int(id as i64)).collect();
        self.execute(format!("purge {} jobs", ids.len()), sql, params)
            .await
    }

    /// Stops claims of `priority` on every server; running jobs finish.
    pub async fn pause(&self, priority: Priority) -> Result<(), QueueError> {
        self.set_paused(priority, true).await
    }

    /// Lets `priority` be claimed again.
    pub async fn resume(&self, priority: Priority) -> Result<(), QueueError> {
        self.set_paused(priority, false).await
    }

    async fn set_paused(&self, priority: Priority, paused: bool) -> Result<(), QueueError> {
        let verb = if paused { "pause" } else { "resume" };
        self.execute(
            format!("{verb} {priority} priority jobs"),
            "UPDATE gizzard_queue_control SET paused = ? WHERE priority = ?".to_owned(),
            vec![Param::Int(i64::from(paused)), Param::Int(priority.code())],
        )
        .await
        .map(drop)
    }

    /// Returns the paused priorities.
    pub async fn paused(&self) -> Result<BTreeSet<Priority>, QueueError> {
        let rows = self
            .query_ints(
                "read paused priorities",
                "SELECT priority FROM gizzard_queue_control WHERE paused <> 0",
                vec![],
            )
            .await?;
        rows.into_iter()
            .map(|row| {
                let code = row.first().copied().flatten();
                code.and_then(Priority::from_code).ok_or_else(|| {
                    QueueError::BadRow(format!("gizzard_queue_control: unknown priority {code:?}"))
                })
            })
            .collect()
    }

    /// Returns how many jobs there are per priority and state (pairs without jobs are left
    /// out).
    pub async fn depth(&self) -> Result<BTreeMap<(Priority, JobState), u64>, QueueError> {
        // The state as a number, so that the rows are all integers; NULL for a state the queue
        // does not know.
        let sql = "SELECT priority, CASE state WHEN 'ready' THEN 0 WHEN 'bad' THEN 1 END, \
                   COUNT(*) FROM gizzard_jobs GROUP BY priority, state";
        let rows = self.query_ints("count jobs", sql, vec![]).await?;
        let mut depth = BTreeMap::new();
        for row in rows {
            let &[code, state, count] = row.as_slice() else {
                return Err(QueueError::BadRow(format!(
                    "a count of {} columns",
                    row.len()
                )));
            };
            let priority = code
                .and_then(Priority::from_code)
                .ok_or_else(|| QueueError::BadRow(format!("unknown priority {code:?}")))?;
            let state = match state {
                Some(0) => JobState::Ready,
                Some(1) => JobState::Bad,
                _ => return Err(QueueError::BadRow("a state other than ready or bad".into())),
            };
            let count = count.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            *depth.entry((priority, state)).or_default() += count;
        }
        Ok(depth)
    }

    /// Publishes [`depth`](Self::depth) as the gauge `gizzard_queue_jobs{priority, state}`,
    /// every pair included so an emptied queue reads 0 rather than its last count, and the
    /// time of the count as `gizzard_queue_jobs_counted_timestamp_seconds`. A count that
    /// fails changes neither, so the timestamp shows how stale the gauge is.
    pub async fn record_depth(&self) -> Result<(), QueueError> {
        let depth = self.depth().await?;
        for priority in Priority::ALL {
            for state in [JobState::Ready, JobState::Bad] {
                let jobs = depth.get(&(priority, state)).copied().unwrap_or(0);
                let labels = [("priority", priority.as_str()), ("state", state.as_str())];
                metrics::gauge!(DEPTH_METRIC, &labels).set(jobs as f64);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!(DEPTH_COUNTED_METRIC).set(now.as_secs_f64());
        Ok(())
    }

    /// Spawns a task that calls [`record_depth`](Self::record_depth) now and then every
    /// `interval` until `shutdown`. The count is the whole queue's, so every server reports the
    /// same value: aggregate it with `max`, not `sum`.
    pub fn spawn_depth_gauge(
        self,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(error) = self.record_depth().await {
                    tracing::warn!(%error, "count jobs for the depth gauge failed");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        })
    }

    /// Returns how many jobs, ready or bad, target `shard`. A migration waits for this to
    /// reach zero: until then some write has not reached the shard.
    pub async fn pending_for_shard(&self, shard: &str) -> Result<u64, QueueError> {
        let rows = self
            .query_ints(
                &format!("count jobs for shard {shard:?}"),
                "SELECT COUNT(*) FROM gizzard_jobs WHERE shard = ?",
                vec![Param::Text(shard.to_owned())],
            )
            .await?;
        let count = rows.first().and_then(|row| row.first().copied().flatten());
        Ok(count.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    /// Returns the database clock expression of this backend.
    fn now_ms(&self) -> &'static str {
        self.db.now_ms_sql()
    }

    /// Maps the rows a lease-guarded change matched to `LeaseLost` when there were none.
    fn owned(&self, job: &ClaimedJob, changed: u64) -> Result<(), QueueError> {
        match changed {
            0 => Err(QueueError::LeaseLost {
                id: job.id,
                owner: job.owner.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Runs one change and returns how many rows it matched.
    async fn execute(
        &self,
        action: String,
        sql: String,
        params: Vec<Param>,
    ) -> Result<u64, QueueError> {
        self.retrying(&action, |db| {
            let (sql, params) = (sql.clone(), params.clone());
            async move { db.execute(sql, params).await }
        })
        .await
        .map_err(write_err(action))
    }

    /// Runs `attempt`, one try of an operation on the queue's database, and runs it again
    /// after a transient lock conflict ([`is_transient`]), pausing a jittered 10 ms, 20 ms,
    /// 40 ms ... in between, at most [`TRANSIENT_ATTEMPTS`] tries in all. Every try gets what
    /// is left of the one deadline the whole operation has ([`JobQueue::timeout`]), so a
    /// retried operation ends no later than one that was not.
    ///
    /// Safe for every change here: the server rolled back the statement (lock wait timeout)
    /// or the transaction (deadlock) that failed, a transaction a try leaves open is rolled
    /// back before its connection is used again, and each try starts over from the first
    /// statement. A timeout is never retried: the change may have been applied.
    async fn retrying<T, F, Fut>(&self, action: &str, mut attempt: F) -> Result<T, DbError>
    where
        F: FnMut(Database) -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let deadline = self.db.timeout();
        let started = tokio::time::Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let left = deadline.saturating_sub(started.elapsed());
            let err = match attempt(self.db.with_timeout(left)).await {
                Err(err) if is_transient(&err) => err,
                // Reported against the operation's deadline, not what was left of it.
                Err(DbError::Timeout(_)) => return Err(DbError::Timeout(deadline)),
                result => return result,
            };
            let pause = jitter(
                TRANSIENT_PAUSE.saturating_mul(1 << (tries - 1)),
                &mut rand::rng(),
            );
            if tries >= TRANSIENT_ATTEMPTS || started.elapsed() + pause >= deadline {
                return Err(err);
            }
            tracing::debug!(action, error = %err, tries, "transient lock conflict; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Runs a query whose columns are all integers (or NULL).
    async fn query_ints(
        &self,
        action: &str,
        sql: &str,
        params: Vec<Param>,
    ) -> Result<Vec<Vec<Option<i64>>>, QueueError> {
        self.db
            .query_ints(sql.to_owned(), params)
            .await
            .map_err(read_err(action))
    }
}

/// Decides what a failed run does next, from the job's stored attempts.
type Decide = dyn Fn(i64) -> FailOutcome + Send + Sync;

/// The UPDATE that records a failed run, with the database clock `now`.
fn fail_update(now: &str) -> String {
    format!(
        "UPDATE gizzard_jobs SET state = ?, attempts = ?, last_error = ?, \
         run_after_ms = {now} + ?, lease_owner = NULL, lease_expires_ms = 0 WHERE id = ?"
    )
}

/// Parameters of the failure UPDATE: state, attempts, last_error, delay, id.
fn outcome_params(outcome: FailOutcome, error: String, id: i64) -> Vec<Param> {
    let (state, attempts, delay) = match outcome {
        FailOutcome::Retrying { attempts, delay } => (JobState::Ready, attempts, delay),
        FailOutcome::Parked { attempts } => (JobState::Bad, attempts, Duration::ZERO),
    };
    vec![
        Param::Text(state.as_str().to_owned()),
        Param::Int(i64::from(attempts)),
        Param::Text(error),
        Param::Int(millis(delay)),
        Param::Int(id),
    ]
}

/// Splits `jobs` into runs of at most [`INSERT_ROWS`] rows and about [`INSERT_BYTES`] bytes.
fn insert_chunks(jobs: &[NewJob]) -> Vec<&[NewJob]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, job) in jobs.iter().enumerate() {
        if i > start && (i - start == INSERT_ROWS || bytes + job.payload.len() > INSERT_BYTES) {
            chunks.push(&jobs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += job.payload.len();
    }
    chunks.push(&jobs[start..]);
    chunks
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn backoff_doubles_from_base_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempts in 1..=40u32 {
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempts - 1).min(31))
                .min(Duration::from_secs(60));
            for _ in 0..200 {
                let delay = policy.backoff(attempts, &mut rng);
                assert!(
                    delay <= full,
                    "attempt {attempts}: {delay:?} above {full:?}"
                );
                assert!(
                    delay >= full / 2,
                    "attempt {attempts}: {delay:?} below half of {full:?}"
                );
            }
        }
        // Past the cap the delay never exceeds it, even for absurd attempt counts.
        assert!(policy.backoff(u32::MAX, &mut rng) <= Duration::from_secs(60));
        assert!(policy.backoff(0, &mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_grows_on_average() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(11);
        let mean = |attempts: u32, rng: &mut StdRng| {
            (0..500)
                .map(|_| policy.backoff(attempts, rng).as_millis())
                .sum::<u128>()
                / 500
        };
        let means: Vec<u128> = (1..=10).map(|a| mean(a, &mut rng)).collect();
        for pair in means.windows(2) {
            assert!(pair[1] > pair[0], "mean delays do not grow: {means:?}");
        }
        assert_eq!(
            mean(30, &mut rng) / 1000,
            45,
            "capped at 60 s, jittered to 30..=60 s"
        );
    }

    #[test]
    fn jitter_spreads_delays() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(3);
        let delays: BTreeSet<Duration> = (0..100).map(|_| policy.backoff(5, &mut rng)).collect();
        assert!(delays.len() > 50, "only {} distinct delays", delays.len());
        let refused: BTreeSet<Duration> =
            (0..100).map(|_| policy.refused_backoff(&mut rng)).collect();
        assert!(
            refused
                .iter()
                .all(|d| *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1))
        );
    }

    #[test]
    fn priorities_order_high_first_and_parse() {
        assert!(Priority::High < Priority::Low && Priority::Low < Priority::Copy);
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().ok(), Some(p));
            assert_eq!(Priority::from_code(p.code()), Some(p));
        }
        let err = "urgent".parse::<Priority>().expect_err("unknown");
        assert!(err.to_string().contains("\"urgent\""), "{err}");
    }

    #[test]
    fn inserts_are_chunked_by_rows_and_bytes() {
        let small = NewJob::new(Priority::High, "write", vec![0; 10]);
        let jobs = vec![small; 1201];
        let sizes: Vec<usize> = insert_chunks(&jobs).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [500, 500, 201]);
        let big = NewJob::new(Priority::Copy, "copy", vec![0; 3 << 20]);
        let sizes: Vec<usize> = insert_chunks(&[big.clone(), big.clone(), big])
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [1, 1, 1]);
    }

    #[test]
    fn long_errors_are_cut_at_a_char_boundary() {
        let error = "é".repeat(3000);
        let cut = truncate_error(&error);
        assert!(cut.len() <= MAX_ERROR + "…".len());
        assert!(cut.ends_with('…'));
    }

    fn server_error(code: u16) -> DbError {
        DbError::Mysql(mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: format!("error {code}"),
            state: "HY000".into(),
        }))
    }

    #[test]
    fn deadlocks_and_lock_wait_timeouts_are_transient_and_nothing_else_is() {
        assert!(is_transient(&server_error(1213)), "deadlock");
        assert!(is_transient(&server_error(1205)), "lock wait timeout");
        // A duplicate key, a missing table, a refused login: the data or the setup is wrong,
        // and running the statement again changes nothing.
        for code in [1062, 1146, 1045] {
            assert!(!is_transient(&server_error(code)), "{code}");
        }
        // A deadline that passed may have let the change through: never run again blindly.
        assert!(!is_transient(&DbError::Timeout(Duration::from_secs(5))));
        let broken = mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::other(
            "connection reset",
        )));
        assert!(!is_transient(&DbError::Mysql(broken)));
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(!is_transient(&DbError::Sqlite(busy)));
    }

    /// A queue whose statements the tests script themselves, with a deadline of `timeout`.
    async fn scripted_queue(dir: &tempfile::TempDir, timeout: Duration) -> JobQueue {
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        JobQueue {
            db: Database::open_lazy(&url, timeout).await.expect("open"),
            backend: &sqlite::Sqlite,
            policy: RetryPolicy::default(),
        }
    }

    #[tokio::test]
    async fn transient_conflicts_are_retried_until_the_operation_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = scripted_queue(&dir, Duration::from_secs(5)).await;
        let mut tries = 0;
        let result = queue
            .retrying("test", |_db| {
                tries += 1;
                let code = [1213, 1205, 0][tries - 1];
                async move {
                    match code {
                        0 => Ok(tries),
                        code => Err(server_error(code)),
                    }
                }
            })
            .await;
        assert_eq!(result.expect("third try succeeds"), 3);
    }

    #[tokio::test]
    async fn other_errors_and_endless_conflicts_are_not_retried_forever() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = scripted_queue(&dir, Duration::from_secs(5)).await;
        let mut tries = 0;
        let result: Result<(), _> = queue
            .retrying("test", |_db| {
                tries += 1;
                async { Err(server_error(1062)) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(tries, 1, "a duplicate key is not retried");

        let mut tries = 0;
        let result: Result<(), _> = queue
            .retrying("test", |_db| {
                tries += 1;
                async { Err(server_error(1213)) }
            })
            .await;
        assert!(is_transient(&result.expect_err("keeps failing")));
        assert_eq!(tries, TRANSIENT_ATTEMPTS as usize);
    }

    #[tokio::test]
    async fn retries_stay_within_the_operation_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deadline = Duration::from_millis(100);
        let queue = scripted_queue(&dir, deadline).await;
        let started = std::time::Instant::now();
        let mut budgets = Vec::new();
        let result: Result<(), _> = queue
            .retrying("test", |db| {
                budgets.push(db.timeout());
                // Each try waits 40 ms for a lock, then gives up, as a lock wait would.
                async {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    Err(server_error(1205))
                }
            })
            .await;
        assert!(result.is_err());
        assert!(
            started.elapsed() < deadline + Duration::from_millis(50),
            "took {:?}",
            started.elapsed()
        );
        assert!(budgets.len() >= 2, "retried at least once: {budgets:?}");
        assert!(
            budgets.windows(2).all(|w| w[1] < w[0]),
            "each try gets what is left of the deadline: {budgets:?}"
        );
    }

    #[test]
    fn invalid_jobs_are_named() {
        let err = NewJob::new(Priority::Low, "", vec![])
            .validate()
            .expect_err("empty type");
        assert!(err.to_string().contains("job type"), "{err}");
        let err = NewJob::new(Priority::Low, "x", vec![])
            .with_shard("")
            .validate()
            .expect_err("shard");
        assert!(err.to_string().contains("shard id"), "{err}");
    }
}
