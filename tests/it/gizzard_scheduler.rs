//! Gizzard job queue tests against MariaDB and SQLite: one suite run on both backends, the
//! worker pool taking over the job of a worker that died mid-job, an idle pool polling once per
//! interval, and a bounded enqueue while the MariaDB server is frozen.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use gizzard::{
    db::Database,
    scheduler::{
        ClaimedJob, FailOutcome, JobFailure, JobFilter, JobFuture, JobQueue, JobRunner, JobState,
        NewJob, Priority, QueueError, RetryPolicy, RetryTarget, WorkerSettings, Workers,
    },
};
use mysql_async::prelude::Queryable;
use tests::{MariaDb, wait_until};
use tokio_util::sync::CancellationToken;

const LONG_LEASE: Duration = Duration::from_secs(30);

/// Short delays so backoff is observable within a test.
fn policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(200),
        cap: Duration::from_millis(400),
        error_limit: 3,
        refused_delay: Duration::from_millis(100),
    }
}

/// Opens a queue as one server would: its own connection pool (or SQLite connection).
async fn open(url: &str) -> JobQueue {
    let db = Database::open(url, Duration::from_secs(5))
        .await
        .expect("open database");
    JobQueue::open(db)
        .await
        .expect("open queue")
        .with_retry_policy(policy())
}

fn job(priority: Priority, name: &str) -> NewJob {
    NewJob::new(priority, "test", name.as_bytes().to_vec())
}

fn names(jobs: &[ClaimedJob]) -> Vec<String> {
    jobs.iter()
        .map(|j| String::from_utf8_lossy(&j.payload).into_owned())
        .collect()
}

/// Claims until something is claimable or `within` passes.
async fn claim_within(queue: &JobQueue, owner: &str, within: Duration) -> Vec<ClaimedJob> {
    let started = Instant::now();
    loop {
        let jobs = queue.claim(owner, 10, LONG_LEASE).await.expect("claim");
        if !jobs.is_empty() || started.elapsed() > within {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn purge_all(queue: &JobQueue) {
    for state in [JobState::Ready, JobState::Bad] {
        let filter = JobFilter {
            state: Some(state),
            ..JobFilter::default()
        };
        queue.purge(&filter).await.expect("purge");
    }
    assert!(queue.depth().await.expect("depth").is_empty());
}

// Every queue behaviour a user relies on, one test per case on SQLite and on MariaDB.
tests::backend_suite!(
    priority_order,
    pause_and_resume,
    backoff_then_bad,
    refusals_never_make_a_job_bad,
    retry_now_and_purge,
    leases_guard_completion,
    concurrent_claimers,
    worker_takes_over_a_dead_workers_job,
);

async fn priority_order(url: &str) {
    let queue = &open(url).await;
    let ids = queue
        .enqueue_many(&[
            job(Priority::Copy, "c1"),
            job(Priority::Low, "l1"),
            job(Priority::High, "h1"),
            job(Priority::Low, "l2"),
            job(Priority::High, "h2"),
        ])
        .await
        .expect("enqueue");
    assert_eq!(ids.len(), 5);
    // A claim takes the highest priority first, oldest first within a priority.
    let first = queue.claim("a", 3, LONG_LEASE).await.expect("claim");
    assert_eq!(names(&first), ["h1", "h2", "l1"]);
    assert_eq!(
        first[0].id, ids[2],
        "ids returned in the order the jobs were given"
    );
    assert_eq!(first[0].owner, "a");
    let rest = queue.claim("b", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(names(&rest), ["l2", "c1"]);
    // Leased jobs are not claimed again.
    assert!(
        queue
            .claim("c", 10, LONG_LEASE)
            .await
            .expect("claim")
            .is_empty()
    );
    for job in first.iter().chain(&rest) {
        queue.complete(job).await.expect("complete");
    }
    assert!(queue.depth().await.expect("depth").is_empty());
}

async fn pause_and_resume(url: &str) {
    let (queue, other_server) = (&open(url).await, &open(url).await);
    queue.pause(Priority::High).await.expect("pause");
    assert_eq!(
        other_server.paused().await.expect("paused"),
        BTreeSet::from([Priority::High]),
        "every server sees the pause"
    );
    queue
        .enqueue(&job(Priority::High, "write"))
        .await
        .expect("enqueue while paused");
    queue
        .enqueue(&job(Priority::Low, "low"))
        .await
        .expect("enqueue");
    // Another server claims only the priority that is not paused.
    let claimed = other_server
        .claim("b", 10, LONG_LEASE)
        .await
        .expect("claim");
    assert_eq!(names(&claimed), ["low"]);
    other_server.complete(&claimed[0]).await.expect("complete");
    assert!(
        other_server
            .claim("b", 10, LONG_LEASE)
            .await
            .expect("claim")
            .is_empty()
    );
    queue.resume(Priority::High).await.expect("resume");
    assert!(other_server.paused().await.expect("paused").is_empty());
    let claimed = other_server
        .claim("b", 10, LONG_LEASE)
        .await
        .expect("claim");
    assert_eq!(names(&claimed), ["write"]);
    other_server.complete(&claimed[0]).await.expect("complete");
}

async fn backoff_then_bad(url: &str) {
    let queue = &open(url).await;
    let id = queue
        .enqueue(&job(Priority::High, "flaky").with_shard("db1/t_0001"))
        .await
        .expect("enqueue");
    let mut claimed = queue.claim("a", 1, LONG_LEASE).await.expect("claim");
    for attempt in 1..=2u32 {
        let job = claimed.pop().expect("the job is claimable again");
        assert_eq!((job.id, job.attempts), (id, attempt - 1));
        let failed_at = Instant::now();
        let outcome = queue
            .fail(&job, "replica timed out", true)
            .await
            .expect("fail");
        let FailOutcome::Retrying { attempts, delay } = outcome else {
            panic!("attempt {attempt} should back off: {outcome:?}");
        };
        assert_eq!(attempts, attempt);
        let full = Duration::from_millis(200 * u64::from(attempt)).min(Duration::from_millis(400));
        assert!(
            delay >= full / 2 && delay <= full,
            "attempt {attempt}: {delay:?}"
        );
        // Not claimable before run_after, by anyone.
        assert!(
            queue
                .claim("b", 10, LONG_LEASE)
                .await
                .expect("claim")
                .is_empty()
        );
        let record = &queue.list(&JobFilter::default()).await.expect("list")[0];
        assert_eq!(record.attempts, attempt);
        assert_eq!(record.last_error.as_deref(), Some("replica timed out"));
        assert_eq!(record.lease_owner, None, "the lease is cleared");
        assert!(record.run_after_ms >= record.created_at_ms + (full / 2).as_millis() as i64);
        claimed = claim_within(queue, "a", Duration::from_secs(3)).await;
        assert!(
            failed_at.elapsed() >= delay - Duration::from_millis(20),
            "claimed after {:?}, before its backoff of {delay:?}",
            failed_at.elapsed()
        );
        assert_eq!(claimed[0].last_error.as_deref(), Some("replica timed out"));
    }
    // The third counted failure reaches the error limit: the job is parked.
    let job = claimed.pop().expect("third run");
    let outcome = queue.fail(&job, "still failing", true).await.expect("fail");
    assert_eq!(outcome, FailOutcome::Parked { attempts: 3 });
    assert!(
        claim_within(queue, "a", Duration::from_millis(700))
            .await
            .is_empty(),
        "a bad job is never claimed"
    );
    let bad = queue
        .list(&JobFilter {
            state: Some(JobState::Bad),
            ..JobFilter::default()
        })
        .await
        .expect("list bad");
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].id, bad[0].attempts), (id, 3));
    assert_eq!(bad[0].last_error.as_deref(), Some("still failing"));
    assert_eq!(bad[0].shard.as_deref(), Some("db1/t_0001"));
    assert_eq!(
        queue.depth().await.expect("depth"),
        BTreeMap::from([((Priority::High, JobState::Bad), 1)])
    );
    // A migration of the shard still waits: the write has not landed.
    assert_eq!(
        queue
            .pending_for_shard("db1/t_0001")
            .await
            .expect("pending"),
        1
    );
}

async fn refusals_never_make_a_job_bad(url: &str) {
    let queue = &open(url).await;
    let id = queue
        .enqueue(&job(Priority::High, "blocked"))
        .await
        .expect("enqueue");
    for _ in 0..6 {
        let mut claimed = claim_within(queue, "a", Duration::from_secs(2)).await;
        let job = claimed.pop().expect("a refused job keeps retrying");
        assert_eq!((job.id, job.attempts), (id, 0));
        let outcome = queue
            .fail(&job, "shard is read-only", false)
            .await
            .expect("fail");
        let FailOutcome::Retrying { attempts: 0, delay } = outcome else {
            panic!("a refusal must not count: {outcome:?}");
        };
        assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_millis(100));
    }
    let record = queue
        .list(&JobFilter {
            state: Some(JobState::Ready),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        record.len(),
        1,
        "still ready after more refusals than the limit"
    );
    assert_eq!(record[0].attempts, 0);
    assert_eq!(record[0].last_error.as_deref(), Some("shard is read-only"));
    let job = claim_within(queue, "a", Duration::from_secs(2)).await;
    queue.complete(&job[0]).await.expect("complete");
}

/// Enqueues a job for shard `db1/t_0001` and fails it up to the error limit: parked as bad.
async fn park_as_bad(queue: &JobQueue, name: &str) {
    queue
        .enqueue(&job(Priority::High, name).with_shard("db1/t_0001"))
        .await
        .expect("enqueue");
    loop {
        let claimed = claim_within(queue, "a", Duration::from_secs(3)).await;
        let job = claimed.first().expect("claimable until parked");
        if let FailOutcome::Parked { .. } = queue.fail(job, "failing", true).await.expect("fail") {
            return;
        }
    }
}

async fn retry_now_and_purge(url: &str) {
    let queue = &open(url).await;
    park_as_bad(queue, "flaky").await;
    // A bad job returns with its attempts reset, runnable at once.
    assert_eq!(
        queue.retry_now(&RetryTarget::AllBad).await.expect("retry"),
        1
    );
    let claimed = queue.claim("a", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(names(&claimed), ["flaky"]);
    assert_eq!(claimed[0].attempts, 0);
    // A job backing off skips the rest of its backoff when retried by id…
    queue.fail(&claimed[0], "again", true).await.expect("fail");
    assert!(
        queue
            .claim("a", 10, LONG_LEASE)
            .await
            .expect("claim")
            .is_empty()
    );
    let ids = RetryTarget::Ids(vec![claimed[0].id]);
    assert_eq!(queue.retry_now(&ids).await.expect("retry by id"), 1);
    let again = queue.claim("a", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 0);
    // …but a job a worker holds is left alone.
    assert_eq!(queue.retry_now(&ids).await.expect("retry held"), 0);
    queue.complete(&again[0]).await.expect("complete");
    assert_eq!(
        queue
            .pending_for_shard("db1/t_0001")
            .await
            .expect("pending"),
        0
    );

    // Purge by shard, by priority and by id.
    let shard_a = "db1/t_0002";
    let mut jobs = vec![job(Priority::High, "a").with_shard(shard_a); 3];
    jobs.push(job(Priority::Copy, "b").with_shard("db2/t_0002"));
    jobs.push(job(Priority::Low, "c"));
    let ids = queue.enqueue_many(&jobs).await.expect("enqueue");
    assert_eq!(queue.pending_for_shard(shard_a).await.expect("pending"), 3);
    let by_shard = JobFilter {
        shard: Some(shard_a.into()),
        limit: Some(2),
        ..JobFilter::default()
    };
    assert_eq!(queue.list(&by_shard).await.expect("list").len(), 2, "limit");
    assert_eq!(queue.purge(&by_shard).await.expect("purge"), 2);
    assert_eq!(queue.pending_for_shard(shard_a).await.expect("pending"), 1);
    let copies = JobFilter {
        priority: Some(Priority::Copy),
        ..JobFilter::default()
    };
    assert_eq!(queue.purge(&copies).await.expect("purge"), 1);
    assert_eq!(queue.purge_ids(&[ids[2], ids[4]]).await.expect("purge"), 2);
    assert!(queue.depth().await.expect("depth").is_empty());
}

async fn leases_guard_completion(url: &str) {
    let queue = &open(url).await;
    queue
        .enqueue(&job(Priority::Low, "leased"))
        .await
        .expect("enqueue");
    let a = queue
        .claim("a", 1, Duration::from_millis(300))
        .await
        .expect("claim")
        .pop()
        .expect("job");
    queue
        .extend(&a, Duration::from_millis(300))
        .await
        .expect("heartbeat");
    // Once the lease ends (by the database's clock) another worker takes the job over.
    let b = claim_within(queue, "b", Duration::from_secs(3))
        .await
        .pop()
        .expect("taken over after the lease");
    assert_eq!(a.id, b.id);
    for err in [
        queue.complete(&a).await.expect_err("a lost the lease"),
        queue
            .extend(&a, LONG_LEASE)
            .await
            .expect_err("a lost the lease"),
        queue
            .fail(&a, "late", true)
            .await
            .expect_err("a lost the lease"),
    ] {
        assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");
        assert!(
            err.to_string().contains("no longer leased to \"a\""),
            "{err}"
        );
    }
    queue.complete(&b).await.expect("b holds it");
    assert!(queue.depth().await.expect("depth").is_empty());
}

async fn concurrent_claimers(url: &str) {
    let queue = open(url).await;
    let jobs: Vec<NewJob> = (0..200)
        .map(|n| job(Priority::ALL[n % 3], &format!("job{n}")))
        .collect();
    let ids = queue.enqueue_many(&jobs).await.expect("enqueue 200");
    let listed: Vec<u64> = queue
        .list(&JobFilter::default())
        .await
        .expect("list")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        BTreeSet::from_iter(ids.iter().copied()),
        BTreeSet::from_iter(listed),
        "enqueue_many returns the stored ids"
    );
    let mut claimers = Vec::new();
    for n in 0..4 {
        let queue = open(url).await;
        claimers.push(tokio::spawn(async move {
            let owner = format!("claimer-{n}");
            let mut got = Vec::new();
            loop {
                let jobs = queue.claim(&owner, 7, LONG_LEASE).await.expect("claim");
                if jobs.is_empty() {
                    return got;
                }
                got.extend(jobs);
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut seen = BTreeSet::new();
    let mut per_claimer = Vec::new();
    for claimer in claimers {
        let got = claimer.await.expect("claimer task");
        per_claimer.push(got.len());
        for job in &got {
            assert!(seen.insert(job.id), "job {} claimed twice", job.id);
            queue.complete(job).await.expect("complete");
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from_iter(ids),
        "together they claim every job"
    );
    assert!(queue.depth().await.expect("depth").is_empty());
    purge_all(&queue).await;
}

/// Records every run, and behaves by job type.
#[derive(Default)]
struct Runner {
    runs: Mutex<Vec<(u64, String)>>,
}

impl Runner {
    fn runs_of(&self, id: u64) -> usize {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.iter().filter(|(run, _)| *run == id).count()
    }
}

impl JobRunner for Runner {
    fn run<'a>(&'a self, job: &'a ClaimedJob) -> JobFuture<'a> {
        Box::pin(async move {
            self.runs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((job.id, job.job_type.clone()));
            match job.job_type.as_str() {
                "flaky" if job.attempts == 0 => Err(JobFailure::counted("first run fails")),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok(())
                }
                "hang" => std::future::pending().await,
                "panic" => panic!("runner bug"),
                _ => Ok(()),
            }
        })
    }
}

/// A worker that dies mid-job (claims, never completes) loses the job to a live pool once
/// its lease ends; the pool also retries failures, heartbeats slow jobs, survives a
/// panicking runner, and stops at once on shutdown.
async fn worker_takes_over_a_dead_workers_job(url: &str) {
    let queue = open(url).await;
    let orphan = queue
        .enqueue(&NewJob::new(Priority::High, "orphan", b"x".to_vec()))
        .await
        .expect("enqueue");
    let dead = queue
        .claim("dead-worker", 1, Duration::from_secs(1))
        .await
        .expect("claim")
        .pop()
        .expect("the orphan");
    let claimed_at = Instant::now();
    let mut ids = BTreeMap::new();
    for kind in ["ok", "flaky", "slow", "panic"] {
        let id = queue
            .enqueue(&NewJob::new(Priority::High, kind, b"x".to_vec()))
            .await
            .expect("enqueue");
        ids.insert(kind, id);
    }

    let runner = Arc::new(Runner::default());
    let shutdown = CancellationToken::new();
    let settings = WorkerSettings {
        count: 2,
        lease: Duration::from_millis(600),
        poll_interval: Duration::from_millis(50),
        batch: 2,
        job_timeout: Duration::from_secs(10),
        error_pause: Duration::from_millis(200),
        name: "pool-b".into(),
    };
    let pool = Workers::spawn(queue.clone(), runner.clone(), settings, shutdown.clone());

    wait_until("the orphan runs", Duration::from_secs(10), async || {
        runner.runs_of(orphan) > 0
    })
    .await;
    assert!(
        claimed_at.elapsed() >= Duration::from_millis(900),
        "taken over after {:?}, before the dead worker's lease of 1s ended",
        claimed_at.elapsed()
    );
    wait_until(
        "every good job completes",
        Duration::from_secs(10),
        async || {
            let depth = queue.depth().await.expect("depth");
            !depth.contains_key(&(Priority::High, JobState::Ready))
        },
    )
    .await;
    assert_eq!(runner.runs_of(orphan), 1);
    assert_eq!(runner.runs_of(ids["ok"]), 1);
    assert_eq!(runner.runs_of(ids["flaky"]), 2, "failed once, then retried");
    assert_eq!(
        runner.runs_of(ids["slow"]),
        1,
        "the heartbeat kept the 1.5s job leased past its 0.6s lease"
    );
    // The panicking job counted as failed runs until it was parked.
    assert_eq!(runner.runs_of(ids["panic"]), 3);
    let left = queue.list(&JobFilter::default()).await.expect("list");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].id, left[0].state), (ids["panic"], JobState::Bad));
    let error = left[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("job panicked: runner bug"), "{error}");
    let err = queue
        .complete(&dead)
        .await
        .expect_err("the dead worker lost it");
    assert!(matches!(err, QueueError::LeaseLost { .. }), "{err}");

    // Shutdown is prompt even while a job runs; the job stays queued for another worker.
    let hang = queue
        .enqueue(&NewJob::new(Priority::High, "hang", b"x".to_vec()))
        .await
        .expect("enqueue");
    wait_until(
        "the hanging job starts",
        Duration::from_secs(5),
        async || runner.runs_of(hang) > 0,
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), pool)
        .await
        .expect("workers stop within 1s")
        .expect("worker pool task");
    let left = queue
        .list(&JobFilter {
            state: Some(JobState::Ready),
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), [hang]);
    purge_all(&queue).await;
}

#[tokio::test]
async fn enqueue_on_a_frozen_mariadb_fails_within_the_deadline() {
    let mut server = MariaDb::start().await.expect("start mariadb");
    let url = server
        .create_database("frozen")
        .await
        .expect("create database");
    let deadline = Duration::from_secs(1);
    let db = Database::open(&url, deadline).await.expect("open");
    let queue = JobQueue::open(db).await.expect("open queue");
    queue
        .enqueue(&job(Priority::High, "before"))
        .await
        .expect("enqueue");

    server.pause();
    let started = Instant::now();
    let err = queue
        .enqueue(&job(Priority::High, "frozen"))
        .await
        .expect_err("the server does not answer");
    let elapsed = started.elapsed();
    server.resume();
    assert!(
        elapsed >= deadline && elapsed < deadline * 3,
        "failed after {elapsed:?}"
    );
    assert!(matches!(err, QueueError::MaybeApplied { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("enqueue") && message.contains("did not answer within 1s"),
        "{message}"
    );
    assert!(message.contains("may have been applied"), "{message}");

    // Once the server answers again, so does the queue.
    tests::wait_until(
        "an enqueue after resume",
        Duration::from_secs(10),
        async || queue.enqueue(&job(Priority::High, "after")).await.is_ok(),
    )
    .await;
}

/// An idle pool claims about once per poll interval, whatever its size: its idle workers take
/// turns, so an idle server does not poll the nameserver once per worker. Counted by the
/// claims' transactions on a private MariaDB: every empty claim ends in a ROLLBACK. A pool
/// claiming per worker would make 4 x 20 = 80 in the second; taking turns, at most the 4
/// first claims and 20 more.
#[tokio::test]
async fn an_idle_pool_claims_once_per_poll_interval_not_once_per_worker() {
    let server = MariaDb::start().await.expect("start mariadb");
    let url = server
        .create_database("idle")
        .await
        .expect("create database");
    let queue = open(&url).await;
    let mut conn = server.connect("idle").await.expect("connect");
    let rollbacks = async |conn: &mut mysql_async::Conn| -> u64 {
        let row: Option<(String, u64)> = conn
            .query_first("SHOW GLOBAL STATUS LIKE 'Com_rollback'")
            .await
            .expect("status");
        row.expect("Com_rollback").1
    };
    let shutdown = CancellationToken::new();
    let settings = WorkerSettings {
        count: 4,
        poll_interval: Duration::from_millis(50),
        name: "idle-pool".into(),
        ..WorkerSettings::default()
    };
    let before = rollbacks(&mut conn).await;
    let pool = Workers::spawn(
        queue,
        Arc::new(Runner::default()),
        settings,
        shutdown.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let claims = rollbacks(&mut conn).await - before;
    shutdown.cancel();
    pool.await.expect("worker pool task");
    assert!(
        (2..=40).contains(&claims),
        "{claims} empty claims in a second from 4 idle workers polling every 50 ms"
    );
    eprintln!("4 idle workers, poll interval 50 ms: {claims} claims in 1 s");
}
