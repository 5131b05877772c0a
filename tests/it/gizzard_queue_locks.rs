//! Job queue statements that meet a lock another transaction holds: on a private MariaDB whose
//! `innodb_lock_wait_timeout` is 1 s, a second connection holds a job's row (or the gap new
//! jobs go into) for 2.5 s, so each try of a queue operation fails with "Lock wait timeout
//! exceeded" (1205) until the lock is released. The queue retries those and the operation
//! succeeds once the lock is gone, within its deadline, where a plain statement fails.

use std::time::{Duration, Instant};

use db::Database;
use gizzard::scheduler::{JobFilter, JobQueue, NewJob, Priority};
use mysql_async::prelude::Queryable;
use tests::MariaDb;

/// How long the other transaction holds its lock: more than two lock waits.
const HOLD: Duration = Duration::from_millis(2_500);

/// Holds the locks `lock` takes, in a transaction on a connection of its own, for [`HOLD`]
/// while `op` runs; returns what `op` returned and how long `op` took.
async fn under_lock<T>(server: &MariaDb, lock: &str, op: impl Future<Output = T>) -> (T, Duration) {
    let mut holder = server.connect("gizzard").await.expect("connect");
    holder.query_drop("BEGIN").await.expect("begin");
    holder.query_drop(lock).await.expect("take the lock");
    let release = async {
        tokio::time::sleep(HOLD).await;
        holder.query_drop("COMMIT").await.expect("release the lock");
    };
    let started = Instant::now();
    let timed = async {
        let result = op.await;
        (result, started.elapsed())
    };
    tokio::join!(timed, release).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_operations_outlast_lock_wait_timeouts() {
    let server = MariaDb::start_with(&["--innodb-lock-wait-timeout=1"])
        .await
        .expect("mariadb");
    let url = server.create_database("gizzard").await.expect("database");
    let db = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open");
    let queue = JobQueue::open(db).await.expect("open queue");
    let job = |name: &str| NewJob::new(Priority::High, name, b"payload".to_vec());
    let ids = queue
        .enqueue_many(&[job("a"), job("b"), job("c")])
        .await
        .expect("enqueue");
    let mut claimed = queue
        .claim("worker", 3, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let row_lock = |id: u64| format!("SELECT id FROM gizzard_jobs WHERE id = {id} FOR UPDATE");

    // The control: a plain statement on that row gives up after the 1 s lock wait.
    let (plain, took) = under_lock(&server, &row_lock(ids[0]), async {
        let mut conn = server.connect("gizzard").await.expect("connect");
        conn.query_drop(format!(
            "UPDATE gizzard_jobs SET attempts = 1 WHERE id = {}",
            ids[0]
        ))
        .await
    })
    .await;
    let err = plain.expect_err("a plain statement times out on the lock");
    assert!(
        matches!(&err, mysql_async::Error::Server(e) if e.code == 1205),
        "{err}"
    );
    assert!(took < HOLD, "{took:?}");

    // Renewing a lease, completing and failing a job wait out the lock.
    let c = claimed.pop().expect("job c");
    let (extended, took) = under_lock(
        &server,
        &row_lock(c.id),
        queue.extend(&c, Duration::from_secs(60)),
    )
    .await;
    extended.expect("the lease is renewed once the lock is released");
    assert!(took >= HOLD, "it waited for the lock: {took:?}");

    let (completed, took) = under_lock(&server, &row_lock(c.id), queue.complete(&c)).await;
    completed.expect("the job completes once the lock is released");
    assert!(took >= HOLD, "{took:?}");

    let b = claimed.pop().expect("job b");
    let (failed, took) = under_lock(&server, &row_lock(b.id), queue.fail(&b, "boom", true)).await;
    failed.expect("the failure is recorded once the lock is released");
    assert!(took >= HOLD, "{took:?}");

    // Enqueueing waits out a lock on the gap after the last job, where new ids go.
    let last = ids.iter().max().copied().unwrap_or_default();
    let gap_lock = format!("SELECT id FROM gizzard_jobs WHERE id > {last} FOR UPDATE");
    let (enqueued, took) = under_lock(&server, &gap_lock, queue.enqueue(&job("d"))).await;
    let d = enqueued.expect("the job is stored once the lock is released");
    assert!(took >= HOLD, "{took:?}");

    let stored: Vec<u64> = queue
        .list(&JobFilter::default())
        .await
        .expect("list")
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(stored, [ids[0], b.id, d], "c completed, d stored once");
}
