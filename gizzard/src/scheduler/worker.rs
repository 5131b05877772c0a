//! The worker pool every server runs over the job queue.
//!
//! Each worker loops: claim a batch under a lease, then for each job renew the lease (the job
//! may have waited behind others of its batch), run it through the [`JobRunner`] under a
//! timeout while a heartbeat extends the lease every third of it, and complete or fail it.
//! Idle workers of a pool take turns ([`IdleTurns`]): one sleeps out `poll_interval` and
//! claims while the others wait behind it, so an idle server claims once per interval, not
//! once per worker per interval; a claim that fills its batch wakes the next in line at once.
//! A database error is logged and retried after `error_pause`. Nothing here panics on a
//! failure of the database or of a job: a panicking job counts as a failed run.
//!
//! Every run counts in `gizzard_jobs_run_total{job_type}` and its outcome in
//! `gizzard_jobs_succeeded_total`, `gizzard_jobs_failed_total` (retried later or parked) and
//! `gizzard_jobs_parked_total` (parked as bad), each by job type.
//!
//! On shutdown a worker stops at once. The job it is running, and the rest of its batch, stay
//! leased until the lease ends; then another worker takes them over. Jobs are idempotent, so
//! a job that ran but was not completed runs again safely.

use std::{
    any::Any,
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use futures::FutureExt;
use tokio::{
    sync::Notify,
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

use super::queue::{ClaimedJob, FailOutcome, JobQueue, QueueError};

/// The future a [`JobRunner`] returns for one run.
pub type JobFuture<'a> = Pin<Box<dyn Future<Output = Result<(), JobFailure>> + Send + 'a>>;

/// Runs jobs of the kinds a server knows (write retries, copies, …), dispatching on
/// [`ClaimedJob::job_type`].
pub trait JobRunner: Send + Sync + 'static {
    /// Runs `job` once. It must be idempotent: a job may run again after a crash.
    fn run<'a>(&'a self, job: &'a ClaimedJob) -> JobFuture<'a>;

    /// The longest `job` may run, when it differs from the pool's `job_timeout`.
    fn timeout(&self, _job: &ClaimedJob) -> Option<Duration> {
        None
    }
}

/// Why a run failed, and whether it counts towards the error limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobFailure {
    pub message: String,
    /// False when the target refused the job for now (a Blocked or ReadOnly node, an offline
    /// host): the job retries without ever becoming bad.
    pub counts: bool,
}

impl JobFailure {
    /// Returns a failure that counts towards the error limit.
    pub fn counted(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            counts: true,
        }
    }

    /// Returns a refusal that does not count towards the error limit.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            counts: false,
        }
    }
}

/// How a [`Workers`] pool runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Workers in the pool (at least one).
    pub count: usize,
    /// How long a claim holds a job; a running job's lease is renewed every third of it.
    pub lease: Duration,
    /// How often an idle pool claims: its idle workers take turns sleeping this long.
    pub poll_interval: Duration,
    /// Jobs one claim takes (at least one).
    pub batch: usize,
    /// The longest one run may take; a run that takes longer is a counted failure.
    pub job_timeout: Duration,
    /// How long a worker waits after a database error before it tries again.
    pub error_pause: Duration,
    /// The start of each worker's lease owner name, which adds the process id, a random part
    /// and the worker's number, so no two workers anywhere share one.
    pub name: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            count: 4,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            batch: 10,
            job_timeout: Duration::from_secs(300),
            error_pause: Duration::from_secs(1),
            name: "gizzard".to_owned(),
        }
    }
}

/// A pool of workers running jobs from a [`JobQueue`].
#[derive(Debug)]
pub struct Workers;

impl Workers {
    /// Starts `settings.count` workers and returns a handle that finishes once `shutdown` is
    /// cancelled and every worker has stopped.
    pub fn spawn(
        queue: JobQueue,
        runner: Arc<dyn JobRunner>,
        settings: WorkerSettings,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let settings = Arc::new(settings);
        let instance = format!(
            "{}-{}-{:08x}",
            settings.name,
            std::process::id(),
            rand::random::<u32>()
        );
        let mut workers = JoinSet::new();
        let metrics = Arc::new(JobMetrics::default());
        let idle = Arc::new(IdleTurns::default());
        for n in 0..settings.count.max(1) {
            let worker = Worker {
                queue: queue.clone(),
                runner: runner.clone(),
                metrics: metrics.clone(),
                idle: idle.clone(),
                settings: settings.clone(),
                owner: format!("{instance}-{n}"),
                shutdown: shutdown.clone(),
            };
            workers.spawn(worker.run());
        }
        tokio::spawn(async move {
            while let Some(done) = workers.join_next().await {
                if let Err(error) = done {
                    tracing::error!(%error, "job worker stopped unexpectedly");
                }
            }
        })
    }
}

/// Job types counted by name; later ones count as `other`, so a queue holding jobs of
/// unexpected types cannot grow the metrics without bound.
const MAX_COUNTED_JOB_TYPES: usize = 64;

/// The run and outcome counters of one job type.
#[derive(Clone, Debug)]
struct JobCounters {
    run: metrics::Counter,
    succeeded: metrics::Counter,
    failed: metrics::Counter,
    parked: metrics::Counter,
}

impl JobCounters {
    fn new(job_type: &str) -> Self {
        let counter =
            |name: &'static str| metrics::counter!(name, "job_type" => job_type.to_owned());
        Self {
            run: counter("gizzard_jobs_run_total"),
            succeeded: counter("gizzard_jobs_succeeded_total"),
            failed: counter("gizzard_jobs_failed_total"),
            parked: counter("gizzard_jobs_parked_total"),
        }
    }
}

/// The counters of every job type a pool ran, looked up once per type.
#[derive(Debug, Default)]
struct JobMetrics {
    by_type: RwLock<HashMap<String, JobCounters>>,
}

impl JobMetrics {
    fn get(&self, job_type: &str) -> JobCounters {
        if let Some(counters) = self
            .by_type
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(job_type)
        {
            return counters.clone();
        }
        let mut by_type = self.by_type.write().unwrap_or_else(PoisonError::into_inner);
        if by_type.len() >= MAX_COUNTED_JOB_TYPES && !by_type.contains_key(job_type) {
            return JobCounters::new("other");
        }
        by_type
            .entry(job_type.to_owned())
            .or_insert_with(|| JobCounters::new(job_type))
            .clone()
    }
}

struct Worker {
    queue: JobQueue,
    runner: Arc<dyn JobRunner>,
    metrics: Arc<JobMetrics>,
    settings: Arc<WorkerSettings>,
    owner: String,
    shutdown: CancellationToken,
    idle: Arc<IdleTurns>,
}

/// How the idle workers of one pool share polling. Were each to poll on its own, an idle
/// server's 4 workers would make 40 claim transactions a second against the nameserver.
#[derive(Default)]
struct IdleTurns {
    /// Held by the idle worker whose turn it is to sleep and then claim; the others queue
    /// for it (the lock is fair).
    turn: tokio::sync::Mutex<()>,
    /// Signalled by a claim that filled its batch: the worker sleeping out its turn claims
    /// at once (or the next one to sleep does), since more jobs may be waiting.
    more: Notify,
}

impl Worker {
    async fn run(self) {
        let (batch, lease) = (self.settings.batch.max(1), self.settings.lease);
        loop {
            let claimed = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                claimed = self.queue.claim(&self.owner, batch, lease) => claimed,
            };
            let pause = match claimed {
                Ok(jobs) if jobs.is_empty() => {
                    if !self.wait_idle_turn().await {
                        return;
                    }
                    continue;
                }
                Ok(jobs) => {
                    if jobs.len() >= batch {
                        self.idle.more.notify_one();
                    }
                    for job in jobs {
                        if self.shutdown.is_cancelled() {
                            return;
                        }
                        self.run_job(job).await;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(owner = %self.owner, %error, "claim jobs failed; retrying");
                    self.settings.error_pause
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Waits for this worker's turn among the idle ones, then sleeps out the poll interval (or
    /// until a full claim says more jobs wait). Returns false on shutdown.
    async fn wait_idle_turn(&self) -> bool {
        let _turn = tokio::select! {
            () = self.shutdown.cancelled() => return false,
            turn = self.idle.turn.lock() => turn,
        };
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(self.settings.poll_interval) => true,
            () = self.idle.more.notified() => true,
        }
    }

    async fn run_job(&self, job: ClaimedJob) {
        let lease = self.settings.lease;
        // The job may have waited behind others of its batch: renew its lease, which also
        // confirms that no other worker took it over meanwhile.
        match self.queue.extend(&job, lease).await {
            Ok(()) => {}
            Err(error @ QueueError::LeaseLost { .. }) => {
                tracing::debug!(job_id = job.id, %error, "job taken over before it started");
                return;
            }
            Err(error) => {
                tracing::warn!(job_id = job.id, %error, "renew lease failed; left to its lease");
                return;
            }
        }
        let counters = self.metrics.get(&job.job_type);
        counters.run.increment(1);
        let timeout = self
            .runner
            .timeout(&job)
            .unwrap_or(self.settings.job_timeout);
        // The runner is called inside the block, so a panic while making the future is
        // caught too.
        let run = AssertUnwindSafe(async { self.runner.run(&job).await }).catch_unwind();
        let outcome = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {
                tracing::info!(job_id = job.id, "shutting down; running job left to its lease");
                return;
            }
            error = self.heartbeat(&job) => {
                tracing::warn!(job_id = job.id, job_type = %job.job_type, %error,
                    "lease lost while running; job abandoned to its new holder");
                return;
            }
            outcome = tokio::time::timeout(timeout, run) => outcome,
        };
        let (message, counts) = match outcome {
            Ok(Ok(Ok(()))) => {
                counters.succeeded.increment(1);
                if let Err(error) = self.queue.complete(&job).await {
                    tracing::warn!(job_id = job.id, job_type = %job.job_type, %error,
                        "job ran but could not be completed; it may run again");
                }
                return;
            }
            Ok(Ok(Err(failure))) => (failure.message, failure.counts),
            Ok(Err(panic)) => (format!("job panicked: {}", panic_message(&*panic)), true),
            Err(_) => (format!("job did not finish within {timeout:?}"), true),
        };
        counters.failed.increment(1);
        match self.queue.fail(&job, &message, counts).await {
            Ok(FailOutcome::Retrying { attempts, delay }) => tracing::info!(
                job_id = job.id, job_type = %job.job_type, attempts, ?delay, error = %message,
                "job failed; retrying later"
            ),
            Ok(FailOutcome::Parked { attempts }) => {
                counters.parked.increment(1);
                tracing::warn!(
                    job_id = job.id, job_type = %job.job_type, attempts, error = %message,
                    "job failed too often; parked as bad"
                );
            }
            Err(error) => tracing::warn!(
                job_id = job.id, job_type = %job.job_type, %error, job_error = %message,
                "record job failure failed; job left to its lease"
            ),
        }
    }

    /// Extends `job`'s lease every third of it; returns only once the lease is lost.
    async fn heartbeat(&self, job: &ClaimedJob) -> QueueError {
        let lease = self.settings.lease;
        let every = (lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            match self.queue.extend(job, lease).await {
                Ok(()) => {}
                Err(error @ QueueError::LeaseLost { .. }) => return error,
                Err(error) => {
                    tracing::warn!(job_id = job.id, %error, "lease heartbeat failed; retrying");
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "(no message)"
    }
}
