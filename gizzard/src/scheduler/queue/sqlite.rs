//! The job queue on SQLite: one connection, so the operations of several statements are
//! `BEGIN IMMEDIATE` transactions, which take the write lock first and never meet a lock
//! conflict halfway.

use std::{collections::BTreeSet, sync::Arc};

use futures::{FutureExt, future::BoxFuture};
use rusqlite::{OptionalExtension, TransactionBehavior};

use super::{
    COLUMNS, ClaimedJob, Decide, FailOutcome, NewJob, Priority, QueueBackend, QueueError, RawRow,
    Try, claimed, fail_update, outcome_params,
};
use crate::db::{Database, Param, SQLITE_NOW_MS};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS gizzard_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        priority INTEGER NOT NULL,
        job_type TEXT NOT NULL,
        payload BLOB NOT NULL,
        shard TEXT,
        state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'bad')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        run_after_ms INTEGER NOT NULL,
        lease_owner TEXT,
        lease_expires_ms INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS gizzard_jobs_claim
        ON gizzard_jobs (state, priority, run_after_ms, id);
    CREATE INDEX IF NOT EXISTS gizzard_jobs_shard ON gizzard_jobs (shard, state);
    CREATE TABLE IF NOT EXISTS gizzard_queue_control (
        priority INTEGER PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0
    );
    INSERT OR IGNORE INTO gizzard_queue_control (priority, paused) VALUES (0, 0), (1, 0), (2, 0);
";

#[derive(Debug)]
pub(super) struct Sqlite;

impl QueueBackend for Sqlite {
    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn enqueue<'a>(
        &'a self,
        db: &'a Database,
        jobs: Arc<Vec<NewJob>>,
    ) -> BoxFuture<'a, Try<Vec<u64>>> {
        db.sqlite(move |conn| enqueue(conn, &jobs)).boxed()
    }

    fn claim<'a>(
        &'a self,
        db: &'a Database,
        owner: Arc<str>,
        limit: usize,
        lease_ms: i64,
    ) -> BoxFuture<'a, Try<Vec<ClaimedJob>>> {
        db.sqlite(move |conn| claim(conn, &owner, limit, lease_ms))
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
        db.sqlite(move |conn| fail(conn, id, &owner, error, &*decide))
            .boxed()
    }

    fn select_jobs<'a>(
        &'a self,
        db: &'a Database,
        sql: String,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Try<Vec<RawRow>>> {
        db.sqlite(move |conn| {
            conn.prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(params), raw)?
                .collect::<Result<Vec<_>, _>>()
                .map(Ok)
        })
        .boxed()
    }

    fn delete_first(&self, clause: &str) -> String {
        // SQLite's DELETE has no LIMIT unless built with it.
        format!(
            "DELETE FROM gizzard_jobs WHERE id IN \
             (SELECT id FROM gizzard_jobs{clause} ORDER BY id LIMIT ?)"
        )
    }
}

/// One try of [`JobQueue::enqueue_many`].
fn enqueue(
    conn: &mut rusqlite::Connection,
    jobs: &[NewJob],
) -> rusqlite::Result<Result<Vec<u64>, QueueError>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut ids = Vec::with_capacity(jobs.len());
    {
        let mut insert = tx.prepare_cached(&format!(
            "INSERT INTO gizzard_jobs (priority, job_type, payload, shard, state, \
             attempts, run_after_ms, lease_expires_ms, created_at_ms) \
             VALUES (?, ?, ?, ?, 'ready', 0, {SQLITE_NOW_MS}, 0, {SQLITE_NOW_MS})"
        ))?;
        for job in jobs {
            let id =
                insert.insert((job.priority.code(), &job.job_type, &job.payload, &job.shard))?;
            ids.push(u64::try_from(id).unwrap_or_default());
        }
    }
    tx.commit()?;
    Ok(Ok(ids))
}

/// One try of [`JobQueue::claim`].
fn claim(
    conn: &mut rusqlite::Connection,
    owner: &str,
    limit: usize,
    lease_ms: i64,
) -> rusqlite::Result<Result<Vec<ClaimedJob>, QueueError>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now: i64 = tx.query_row(&format!("SELECT {SQLITE_NOW_MS}"), [], |r| r.get(0))?;
    let paused: BTreeSet<i64> = tx
        .prepare_cached("SELECT priority FROM gizzard_queue_control WHERE paused <> 0")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut raws = Vec::new();
    for priority in Priority::ALL {
        let wanted = limit - raws.len();
        if wanted == 0 {
            break;
        }
        if paused.contains(&priority.code()) {
            continue;
        }
        let mut select = tx.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM gizzard_jobs \
             WHERE state = 'ready' AND priority = ? AND run_after_ms <= ? \
             AND lease_expires_ms <= ? ORDER BY run_after_ms, id LIMIT ?"
        ))?;
        let found = select
            .query_map((priority.code(), now, now, wanted as i64), raw)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.extend(found);
    }
    let expires = now.saturating_add(lease_ms);
    {
        let mut update = tx.prepare_cached(
            "UPDATE gizzard_jobs SET lease_owner = ?, lease_expires_ms = ? WHERE id = ?",
        )?;
        for raw in &raws {
            update.execute((owner, expires, raw.0 as i64))?;
        }
    }
    tx.commit()?;
    Ok(raws
        .into_iter()
        .map(|raw| claimed(raw, owner, expires))
        .collect())
}

/// One try of [`JobQueue::fail`]; `None` when `owner` no longer holds job `id`.
fn fail(
    conn: &mut rusqlite::Connection,
    id: i64,
    owner: &str,
    error: String,
    decide: &Decide,
) -> rusqlite::Result<Result<Option<FailOutcome>, QueueError>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let attempts: Option<i64> = tx
        .query_row(
            "SELECT attempts FROM gizzard_jobs WHERE id = ? AND lease_owner = ?",
            (id, owner),
            |row| row.get(0),
        )
        .optional()?;
    let Some(attempts) = attempts else {
        return Ok(Ok(None));
    };
    let outcome = decide(attempts);
    let params = outcome_params(outcome, error, id);
    tx.execute(
        &fail_update(SQLITE_NOW_MS),
        rusqlite::params_from_iter(params),
    )?;
    tx.commit()?;
    Ok(Ok(Some(outcome)))
}

fn raw(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    let id: i64 = row.get(0)?;
    Ok((
        u64::try_from(id).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, id))?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
    ))
}
