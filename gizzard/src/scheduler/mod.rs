//! The durable job queue and its workers.
//!
//! - [`queue`]: [`JobQueue`], the job table in the nameserver database (MySQL or SQLite):
//!   enqueue, claim under a lease, complete, fail with backoff or park as bad, and the
//!   operator calls (list, retry, purge, pause, resume, depth).
//! - [`worker`]: [`Workers`], the pool every server runs: claims jobs, runs them through a
//!   [`JobRunner`] while heartbeating their leases, and records the outcome.
//!
//! Write retries (high priority) and copy, diff and repair jobs (low and copy priority) share
//! the table. A job may run more than once (a worker can die after running it and before
//! completing it), so every job must be idempotent.

pub mod queue;
pub mod worker;

pub use queue::{
    ClaimedJob, FailOutcome, JobFilter, JobQueue, JobRecord, JobState, NewJob, Priority,
    QueueError, RetryPolicy, RetryTarget,
};
pub use worker::{JobFailure, JobFuture, JobRunner, WorkerSettings, Workers};
