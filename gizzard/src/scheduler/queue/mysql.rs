//! The job queue on MySQL (and MariaDB): InnoDB tables, and the operations of several
//! statements as transactions of their own. A claim reads under READ COMMITTED and locks the
//! rows it takes with `FOR UPDATE SKIP LOCKED`, so concurrent claimers pass each other's rows
//! instead of waiting on them; a failure locks its job's row while it decides.

use std::{collections::BTreeSet, sync::Arc};

use futures::{FutureExt, future::BoxFuture};
use mysql_async::{IsolationLevel, TxOpts, Value, prelude::Queryable};

use super::{
    COLUMNS, ClaimedJob, Decide, FailOutcome, NewJob, Priority, QueueBackend, QueueError, RawRow,
    Try, claimed, fail_update, insert_chunks, outcome_params,
};
use crate::db::{Database, MYSQL_NOW_MS, Param};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS gizzard_jobs (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        priority TINYINT UNSIGNED NOT NULL,
        job_type VARCHAR(64) NOT NULL,
        payload LONGBLOB NOT NULL,
        shard VARCHAR(255) NULL,
        state VARCHAR(8) NOT NULL DEFAULT 'ready',
        attempts INT UNSIGNED NOT NULL DEFAULT 0,
        last_error TEXT NULL,
        run_after_ms BIGINT NOT NULL,
        lease_owner VARCHAR(255) NULL,
        lease_expires_ms BIGINT NOT NULL DEFAULT 0,
        created_at_ms BIGINT NOT NULL,
        CHECK (state IN ('ready', 'bad')),
        KEY gizzard_jobs_claim (state, priority, run_after_ms, id),
        KEY gizzard_jobs_shard (shard, state)
    ) ENGINE=InnoDB;
    CREATE TABLE IF NOT EXISTS gizzard_queue_control (
        priority TINYINT UNSIGNED NOT NULL PRIMARY KEY,
        paused BOOLEAN NOT NULL DEFAULT FALSE
    ) ENGINE=InnoDB;
    INSERT IGNORE INTO gizzard_queue_control (priority, paused) VALUES (0, 0), (1, 0), (2, 0)
";

#[derive(Debug)]
pub(super) struct Mysql;

impl QueueBackend for Mysql {
    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn enqueue<'a>(
        &'a self,
        db: &'a Database,
        jobs: Arc<Vec<NewJob>>,
    ) -> BoxFuture<'a, Try<Vec<u64>>> {
        db.mysql(|conn| async move { enqueue(conn, &jobs).await })
            .boxed()
    }

    fn claim<'a>(
        &'a self,
        db: &'a Database,
        owner: Arc<str>,
        limit: usize,
        lease_ms: i64,
    ) -> BoxFuture<'a, Try<Vec<ClaimedJob>>> {
        db.mysql(move |conn| async move { claim(conn, &owner, limit, lease_ms).await })
            .boxed()
    }

    fn fail<'a>(
        &'a self,
        db: &'a Database,
        id: i64,
        owner: String,
        error: String,
        decide: Arc<Decide>,
    ) -> BoxFuture<'a, Try<Option<FailOutcome>>> {
        db.mysql(move |conn| async move { fail(conn, id, &owner, error, &*decide).await })
            .boxed()
    }

    fn select_jobs<'a>(
        &'a self,
        db: &'a Database,
        sql: String,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Try<Vec<RawRow>>> {
        async move {
            let rows: Vec<mysql_async::Row> = db
                .mysql(move |mut conn| async move { conn.exec(sql, to_mysql(params)).await })
                .await?;
            Ok(rows.into_iter().map(raw).collect())
        }
        .boxed()
    }

    fn delete_first(&self, clause: &str) -> String {
        format!("DELETE FROM gizzard_jobs{clause} ORDER BY id LIMIT ?")
    }
}

/// One try of [`JobQueue::enqueue_many`]: inserts `jobs` in one transaction.
async fn enqueue(
    mut conn: mysql_async::Conn,
    jobs: &[NewJob],
) -> Result<Result<Vec<u64>, QueueError>, mysql_async::Error> {
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    // A multi-row INSERT takes consecutive auto-increment values, `step` apart.
    let step = match jobs.len() {
        1 => Ok(1),
        _ => {
            let step: Option<Value> = tx.query_first("SELECT @@auto_increment_increment").await?;
            step.map_or(Ok(1), int)
        }
    };
    let step = match step {
        Ok(step) => u64::try_from(step.max(1)).unwrap_or(1),
        Err(e) => return Ok(Err(e)),
    };
    let mut ids = Vec::with_capacity(jobs.len());
    for chunk in insert_chunks(jobs) {
        let row = format!("(?, ?, ?, ?, 'ready', 0, {MYSQL_NOW_MS}, 0, {MYSQL_NOW_MS})");
        let sql = format!(
            "INSERT INTO gizzard_jobs (priority, job_type, payload, shard, state, \
             attempts, run_after_ms, lease_expires_ms, created_at_ms) VALUES {}",
            vec![row; chunk.len()].join(", ")
        );
        let mut params = Vec::with_capacity(chunk.len() * 4);
        for job in chunk {
            params.push(Value::Int(job.priority.code()));
            params.push(Value::from(job.job_type.as_str()));
            params.push(Value::Bytes(job.payload.clone()));
            params.push(job.shard.as_deref().map_or(Value::NULL, Value::from));
        }
        tx.exec_drop(sql, params).await?;
        let Some(first) = tx.last_insert_id() else {
            return Ok(Err(QueueError::BadRow("the insert reported no id".into())));
        };
        ids.extend((0..chunk.len() as u64).map(|i| first + i * step));
    }
    tx.commit().await?;
    Ok(Ok(ids))
}

/// One try of [`JobQueue::claim`].
async fn claim(
    mut conn: mysql_async::Conn,
    owner: &str,
    limit: usize,
    lease_ms: i64,
) -> Result<Result<Vec<ClaimedJob>, QueueError>, mysql_async::Error> {
    // READ COMMITTED: rows that do not match are not left locked, and no gap locks block
    // enqueues.
    let mut opts = TxOpts::default();
    opts.with_isolation_level(IsolationLevel::ReadCommitted);
    let mut tx = conn.start_transaction(opts).await?;
    let now: Option<Value> = tx.query_first(format!("SELECT {MYSQL_NOW_MS}")).await?;
    let paused: Vec<Value> = tx
        .query("SELECT priority FROM gizzard_queue_control WHERE paused <> 0")
        .await?;
    let (now, paused) = match read_now_and_paused(now, paused) {
        Ok(read) => read,
        Err(e) => {
            tx.rollback().await?;
            return Ok(Err(e));
        }
    };
    let mut rows = Vec::new();
    for priority in Priority::ALL {
        let wanted = limit - rows.len();
        if wanted == 0 {
            break;
        }
        if paused.contains(&priority.code()) {
            continue;
        }
        let found: Vec<mysql_async::Row> = tx
            .exec(
                format!(
                    "SELECT {COLUMNS} FROM gizzard_jobs \
                     WHERE state = 'ready' AND priority = ? AND run_after_ms <= ? \
                     AND lease_expires_ms <= ? \
                     ORDER BY run_after_ms, id LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                (priority.code(), now, now, wanted as u64),
            )
            .await?;
        rows.extend(found);
    }
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Ok(Vec::new()));
    }
    let raws = match rows.into_iter().map(raw).collect::<Result<Vec<_>, _>>() {
        Ok(raws) => raws,
        Err(e) => {
            tx.rollback().await?;
            return Ok(Err(e));
        }
    };
    let expires = now.saturating_add(lease_ms);
    // The ids are integers read back from the table, safe to inline.
    let ids: Vec<String> = raws.iter().map(|r| r.0.to_string()).collect();
    tx.exec_drop(
        format!(
            "UPDATE gizzard_jobs SET lease_owner = ?, lease_expires_ms = ? WHERE id IN ({})",
            ids.join(", ")
        ),
        (owner, expires),
    )
    .await?;
    tx.commit().await?;
    Ok(raws
        .into_iter()
        .map(|raw| claimed(raw, owner, expires))
        .collect())
}

/// One try of [`JobQueue::fail`]; `None` when `owner` no longer holds job `id`.
async fn fail(
    mut conn: mysql_async::Conn,
    id: i64,
    owner: &str,
    error: String,
    decide: &Decide,
) -> Result<Result<Option<FailOutcome>, QueueError>, mysql_async::Error> {
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let attempts: Option<Value> = tx
        .exec_first(
            "SELECT attempts FROM gizzard_jobs WHERE id = ? AND lease_owner = ? FOR UPDATE",
            (id, owner),
        )
        .await?;
    let attempts = match attempts.map(int) {
        None => {
            tx.rollback().await?;
            return Ok(Ok(None));
        }
        Some(Err(e)) => {
            tx.rollback().await?;
            return Ok(Err(e));
        }
        Some(Ok(attempts)) => attempts,
    };
    let outcome = decide(attempts);
    tx.exec_drop(
        fail_update(MYSQL_NOW_MS),
        to_mysql(outcome_params(outcome, error, id)),
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(Some(outcome)))
}

fn raw(row: mysql_async::Row) -> Result<RawRow, QueueError> {
    mysql_async::from_row_opt::<RawRow>(row)
        .map_err(|_| QueueError::BadRow("a column does not have the type the queue expects".into()))
}

/// Reads the database clock and the paused priority codes of a MySQL claim.
fn read_now_and_paused(
    now: Option<Value>,
    paused: Vec<Value>,
) -> Result<(i64, BTreeSet<i64>), QueueError> {
    let now = now.map(int).transpose()?;
    let now = now.ok_or_else(|| QueueError::BadRow("the database clock read nothing".into()))?;
    Ok((now, paused.into_iter().map(int).collect::<Result<_, _>>()?))
}

/// Converts a MySQL integer value.
fn int(value: Value) -> Result<i64, QueueError> {
    mysql_async::from_value_opt::<i64>(value)
        .map_err(|e| QueueError::BadRow(format!("expected an integer, got {:?}", e.0)))
}

fn to_mysql(params: Vec<Param>) -> Vec<Value> {
    params.into_iter().map(Param::into_mysql).collect()
}
