//! The lease table on MySQL (`mysql://`) or SQLite (`sqlite://PATH`). Every operation is one
//! transaction under a deadline, and expiry is always judged by the database's clock, so the
//! daemons' clocks may disagree without two of them holding one pair.

use std::time::Duration;

use db::{Database, DbError, MYSQL_NOW_MS, SQLITE_NOW_MS};
use mysql_async::{TxOpts, prelude::*};
use rusqlite::TransactionBehavior;

use super::LeaseError;

const MYSQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS snowflake_leases (
    datacenter_id TINYINT UNSIGNED NOT NULL,
    worker_id TINYINT UNSIGNED NOT NULL,
    owner VARCHAR(255) NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    PRIMARY KEY (datacenter_id, worker_id)
) ENGINE=InnoDB";

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS snowflake_leases (
    datacenter_id INTEGER NOT NULL,
    worker_id INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (datacenter_id, worker_id)
)";

/// One (datacenter, worker) pair, the key of the lease table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub datacenter_id: u8,
    pub worker_id: u8,
}

/// The lease table on one of the supported databases.
#[derive(Clone, Debug)]
pub struct LeaseStore {
    db: Database,
}

impl LeaseStore {
    /// Opens the table at `url`, creating it when missing; every later call is bounded by
    /// `timeout`.
    pub async fn open(url: &str, timeout: Duration) -> Result<Self, LeaseError> {
        let db = Database::open_lazy(url, timeout)
            .await
            .map_err(|err| match err {
                DbError::Url { url, reason } => LeaseError::Url { url, reason },
                other => LeaseError::from(other),
            })?;
        let schema = match &db {
            Database::Mysql { .. } => MYSQL_SCHEMA,
            Database::Sqlite { .. } => SQLITE_SCHEMA,
        };
        db.execute_batch(schema.to_owned()).await?;
        Ok(Self { db })
    }

    /// Takes `pair` for `owner` when it is free, expired or already `owner`'s, and records
    /// `reserve_ms` as the latest time ids may be issued at. Returns the latest time any
    /// earlier holder may have issued at.
    pub async fn acquire(
        &self,
        pair: Pair,
        owner: &str,
        ttl: Duration,
        reserve_ms: u64,
    ) -> Result<u64, LeaseError> {
        let ttl_ms = ttl.as_millis() as i64;
        let (dc, worker) = (pair.datacenter_id, pair.worker_id);
        match &self.db {
            Database::Mysql { .. } => {
                let owner = owner.to_owned();
                self.db
                    .mysql(|mut conn| async move {
                        conn.exec_drop(
                            "INSERT IGNORE INTO snowflake_leases VALUES (?, ?, '', 0, 0)",
                            (dc, worker),
                        )
                        .await?;
                        let mut tx = conn.start_transaction(TxOpts::default()).await?;
                        let row: Option<(String, i64, i64)> = tx
                            .exec_first(
                                format!(
                                    "SELECT owner, expires_at_ms - {MYSQL_NOW_MS}, last_ms \
                                 FROM snowflake_leases WHERE datacenter_id = ? AND worker_id = ? \
                                 FOR UPDATE"
                                ),
                                (dc, worker),
                            )
                            .await?;
                        let (holder, remaining_ms, last_ms) = row.unwrap_or_default();
                        if holder != owner && remaining_ms > 0 {
                            tx.rollback().await?;
                            return Ok(Err(conflict(pair, holder, remaining_ms)));
                        }
                        tx.exec_drop(
                            format!(
                                "UPDATE snowflake_leases SET owner = ?, \
                             expires_at_ms = {MYSQL_NOW_MS} + ?, last_ms = GREATEST(last_ms, ?) \
                             WHERE datacenter_id = ? AND worker_id = ?"
                            ),
                            (&owner, ttl_ms, reserve_ms, dc, worker),
                        )
                        .await?;
                        tx.commit().await?;
                        Ok(Ok(last_ms.max(0) as u64))
                    })
                    .await?
            }
            Database::Sqlite { .. } => {
                let owner = owner.to_owned();
                self.db
                    .sqlite(move |conn| {
                        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                        tx.execute(
                            "INSERT OR IGNORE INTO snowflake_leases VALUES (?1, ?2, '', 0, 0)",
                            (dc, worker),
                        )?;
                        let (holder, remaining_ms, last_ms): (String, i64, i64) = tx.query_row(
                            &format!(
                                "SELECT owner, expires_at_ms - {SQLITE_NOW_MS}, last_ms \
                             FROM snowflake_leases WHERE datacenter_id = ?1 AND worker_id = ?2"
                            ),
                            (dc, worker),
                            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                        )?;
                        if holder != owner && remaining_ms > 0 {
                            return Ok(Err(conflict(pair, holder, remaining_ms)));
                        }
                        tx.execute(
                            &format!(
                                "UPDATE snowflake_leases SET owner = ?1, \
                             expires_at_ms = {SQLITE_NOW_MS} + ?2, last_ms = MAX(last_ms, ?3) \
                             WHERE datacenter_id = ?4 AND worker_id = ?5"
                            ),
                            (&owner, ttl_ms, reserve_ms as i64, dc, worker),
                        )?;
                        tx.commit()?;
                        Ok(Ok(last_ms.max(0) as u64))
                    })
                    .await?
            }
        }
    }

    /// Extends `owner`'s lease on `pair` by `ttl` and records `reserve_ms`; fails with
    /// [`LeaseError::Lost`] when another daemon holds it now.
    pub async fn renew(
        &self,
        pair: Pair,
        owner: &str,
        ttl: Duration,
        reserve_ms: u64,
    ) -> Result<(), LeaseError> {
        let ttl_ms = ttl.as_millis() as i64;
        let sql = match &self.db {
            Database::Mysql { .. } => format!(
                "UPDATE snowflake_leases SET expires_at_ms = {MYSQL_NOW_MS} + ?, \
                 last_ms = GREATEST(last_ms, ?) WHERE datacenter_id = ? AND worker_id = ? AND owner = ?"
            ),
            Database::Sqlite { .. } => format!(
                "UPDATE snowflake_leases SET expires_at_ms = {SQLITE_NOW_MS} + ?1, \
                 last_ms = MAX(last_ms, ?2) WHERE datacenter_id = ?3 AND worker_id = ?4 AND owner = ?5"
            ),
        };
        let params = (
            ttl_ms,
            reserve_ms as i64,
            pair.datacenter_id,
            pair.worker_id,
            owner.to_owned(),
        );
        match self.execute(sql, params).await? {
            0 => Err(LeaseError::Lost {
                datacenter_id: pair.datacenter_id,
                worker_id: pair.worker_id,
            }),
            _ => Ok(()),
        }
    }

    /// Gives `pair` up at once, recording `last_ms`, the time of the last id actually issued,
    /// so the next holder need not wait out the reservation.
    pub async fn release(&self, pair: Pair, owner: &str, last_ms: u64) -> Result<(), LeaseError> {
        let sql = match &self.db {
            Database::Mysql { .. } => {
                "UPDATE snowflake_leases SET owner = '', expires_at_ms = 0, \
                 last_ms = ? WHERE datacenter_id = ? AND worker_id = ? AND owner = ?"
            }
            Database::Sqlite { .. } => {
                "UPDATE snowflake_leases SET owner = '', expires_at_ms = 0, \
                 last_ms = ?1 WHERE datacenter_id = ?2 AND worker_id = ?3 AND owner = ?4"
            }
        };
        let params = (
            last_ms as i64,
            pair.datacenter_id,
            pair.worker_id,
            owner.to_owned(),
        );
        self.execute(sql.to_owned(), params).await.map(drop)
    }

    /// Runs one statement with four or five parameters; returns the rows it matched.
    async fn execute<P>(&self, sql: String, params: P) -> Result<u64, LeaseError>
    where
        P: Into<mysql_async::Params> + rusqlite::Params + Send + 'static,
    {
        let matched = match &self.db {
            Database::Mysql { .. } => {
                self.db
                    .mysql(|mut conn| async move {
                        conn.exec_drop(sql, params).await?;
                        Ok(conn.affected_rows())
                    })
                    .await?
            }
            Database::Sqlite { .. } => {
                self.db
                    .sqlite(move |conn| Ok(conn.execute(&sql, params)? as u64))
                    .await?
            }
        };
        Ok(matched)
    }
}

fn conflict(pair: Pair, owner: String, remaining_ms: i64) -> LeaseError {
    let Pair {
        datacenter_id,
        worker_id,
    } = pair;
    LeaseError::Conflict {
        datacenter_id,
        worker_id,
        owner,
        remaining_ms,
    }
}
