//! The migrations table in the nameserver database, for MySQL and SQLite.
//!
//! `gizzard_migrations` holds one row per migration: its plan and progress as JSON, its
//! status, the rebalance it belongs to, a cancel flag operators set, and the owner of the run
//! in progress. A run takes ownership when it starts and every save checks it, so a run that
//! lost its job lease (and was replaced by another server's) can no longer write.

use std::time::{SystemTime, UNIX_EPOCH};

use mysql_async::prelude::Queryable;

use super::model::{Migration, MigrationId, Plan, Progress, Status};
use crate::db::{Database, DbError, Param};

const MYSQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gizzard_migrations (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    parent_id BIGINT UNSIGNED NULL,
    status VARCHAR(16) NOT NULL,
    owner VARCHAR(255) NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    plan LONGTEXT NOT NULL,
    progress LONGTEXT NOT NULL,
    error TEXT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    KEY gizzard_migrations_status (status),
    KEY gizzard_migrations_parent (parent_id)
) ENGINE=InnoDB";

const SQLITE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS gizzard_migrations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        parent_id INTEGER,
        status TEXT NOT NULL,
        owner TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        plan TEXT NOT NULL,
        progress TEXT NOT NULL,
        error TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS gizzard_migrations_status ON gizzard_migrations (status);
    CREATE INDEX IF NOT EXISTS gizzard_migrations_parent ON gizzard_migrations (parent_id);
";

const COLUMNS: &str =
    "id, parent_id, status, cancel_requested, plan, progress, error, created_ms, updated_ms";

/// Why a migrations table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action}: {source}")]
    Db { action: String, source: DbError },
    #[error("migration {0} not found")]
    NotFound(MigrationId),
    #[error("migration {id} is {status}, not running")]
    NotRunning { id: MigrationId, status: Status },
    /// Another run took the migration over; this one must stop.
    #[error("migration {0} was taken over by another run")]
    Lost(MigrationId),
    #[error("migration {id} is unreadable: {reason}")]
    Corrupt { id: MigrationId, reason: String },
}

/// Which migrations [`MigrationStore::list`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub running_only: bool,
    /// Only the moves of this rebalance; `None` lists top-level migrations.
    pub parent: Option<MigrationId>,
    pub limit: u32,
}

/// The migrations table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MigrationStore {
    db: Database,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Plans and progress are plain data: encoding them cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// A stored row before its JSON is decoded.
type RawRow = (
    i64,
    Option<i64>,
    String,
    bool,
    String,
    String,
    Option<String>,
    i64,
    i64,
);

fn decode(row: RawRow) -> Result<Migration, StoreError> {
    let (id, parent, status, cancel_requested, plan, progress, error, created_ms, updated_ms) = row;
    let id = id as MigrationId;
    let corrupt = |reason: String| StoreError::Corrupt { id, reason };
    Ok(Migration {
        id,
        parent: parent.map(|p| p as MigrationId),
        plan: serde_json::from_str::<Plan>(&plan).map_err(|e| corrupt(format!("plan: {e}")))?,
        progress: serde_json::from_str::<Progress>(&progress)
            .map_err(|e| corrupt(format!("progress: {e}")))?,
        status: status.parse().map_err(corrupt)?,
        error,
        cancel_requested,
        created_ms,
        updated_ms,
    })
}

impl MigrationStore {
    /// Opens the table in `db`, creating it when missing.
    pub async fn open(db: Database) -> Result<Self, StoreError> {
        let sql = match &db {
            Database::Mysql { .. } => MYSQL_SCHEMA,
            Database::Sqlite { .. } => SQLITE_SCHEMA,
        };
        db.execute_batch(sql.to_owned())
            .await
            .map_err(db_err("create the migrations table"))?;
        Ok(Self { db })
    }

    /// Stores a new running migration starting at `progress` and returns its id.
    pub async fn create(
        &self,
        plan: &Plan,
        progress: &Progress,
        parent: Option<MigrationId>,
    ) -> Result<MigrationId, StoreError> {
        let sql = "INSERT INTO gizzard_migrations \
                   (parent_id, status, plan, progress, created_ms, updated_ms) \
                   VALUES (?, 'running', ?, ?, ?, ?)";
        let now = now_ms();
        let params = vec![
            Param::from(parent.map(|p| p as i64)),
            Param::Text(json(plan)),
            Param::Text(json(progress)),
            Param::Int(now),
            Param::Int(now),
        ];
        let id = match &self.db {
            Database::Mysql { .. } => {
                let params: Vec<_> = params.into_iter().map(Param::into_mysql).collect();
                self.db
                    .mysql(|mut conn| async move {
                        conn.exec_drop(sql, params).await?;
                        Ok(conn.last_insert_id().unwrap_or(0))
                    })
                    .await
            }
            Database::Sqlite { .. } => {
                self.db
                    .sqlite(move |conn| {
                        conn.execute(sql, rusqlite::params_from_iter(params))?;
                        Ok(conn.last_insert_rowid() as u64)
                    })
                    .await
            }
        };
        id.map_err(db_err("store a migration"))
    }

    /// Returns migration `id`.
    pub async fn get(&self, id: MigrationId) -> Result<Migration, StoreError> {
        let rows = self
            .select("WHERE id = ?", vec![Param::Int(id as i64)])
            .await?;
        rows.into_iter().next().ok_or(StoreError::NotFound(id))
    }

    /// Returns the migrations `filter` selects, newest first.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<Migration>, StoreError> {
        let mut clause = match filter.parent {
            Some(parent) => format!("WHERE parent_id = {parent}"),
            None => "WHERE parent_id IS NULL".to_owned(),
        };
        if filter.running_only {
            clause.push_str(" AND status = 'running'");
        }
        clause.push_str(" ORDER BY id DESC");
        if filter.limit > 0 {
            clause.push_str(&format!(" LIMIT {}", filter.limit));
        }
        self.select(&clause, Vec::new()).await
    }

    /// Makes `owner` the only run that may save migration `id`, and returns it.
    pub async fn take(&self, id: MigrationId, owner: &str) -> Result<Migration, StoreError> {
        let changed = self
            .execute(
                "take over a migration",
                "UPDATE gizzard_migrations SET owner = ? WHERE id = ? AND status = 'running'",
                vec![Param::from(owner), Param::Int(id as i64)],
            )
            .await?;
        let migration = self.get(id).await?;
        if changed == 0 {
            return Err(StoreError::NotRunning {
                id,
                status: migration.status,
            });
        }
        Ok(migration)
    }

    /// Saves the progress of `owner`'s run and returns whether an operator asked to cancel.
    pub async fn save(
        &self,
        id: MigrationId,
        owner: &str,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "save migration progress",
                "UPDATE gizzard_migrations SET progress = ?, updated_ms = ? \
                 WHERE id = ? AND owner = ? AND status = 'running'",
                vec![
                    Param::Text(json(progress)),
                    Param::Int(now_ms()),
                    Param::Int(id as i64),
                    Param::from(owner),
                ],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::Lost(id));
        }
        let flags = self
            .db
            .query_ints(
                "SELECT cancel_requested FROM gizzard_migrations WHERE id = ?".to_owned(),
                vec![Param::Int(id as i64)],
            )
            .await
            .map_err(db_err("read the cancel flag"))?;
        Ok(flags.first().and_then(|row| row[0]).unwrap_or(0) != 0)
    }

    /// Records the end of `owner`'s run.
    pub async fn finish(
        &self,
        id: MigrationId,
        owner: &str,
        status: Status,
        progress: &Progress,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let changed = self
            .execute(
                "finish a migration",
                "UPDATE gizzard_migrations SET status = ?, progress = ?, error = ?, \
                 updated_ms = ?, owner = NULL WHERE id = ? AND owner = ? AND status = 'running'",
                vec![
                    Param::from(status.as_str()),
                    Param::Text(json(progress)),
                    error.map_or(Param::Null, Param::from),
                    Param::Int(now_ms()),
                    Param::Int(id as i64),
                    Param::from(owner),
                ],
            )
            .await?;
        match changed {
            0 => Err(StoreError::Lost(id)),
            _ => Ok(()),
        }
    }

    /// Asks migration `id` and its running moves to stop; returns how many were asked.
    pub async fn request_cancel(&self, id: MigrationId) -> Result<u64, StoreError> {
        self.execute(
            "cancel a migration",
            "UPDATE gizzard_migrations SET cancel_requested = 1 \
             WHERE (id = ? OR parent_id = ?) AND status = 'running'",
            vec![Param::Int(id as i64), Param::Int(id as i64)],
        )
        .await
    }

    async fn execute(
        &self,
        action: &str,
        sql: &str,
        params: Vec<Param>,
    ) -> Result<u64, StoreError> {
        self.db
            .execute(sql.to_owned(), params)
            .await
            .map_err(db_err(action))
    }

    async fn select(&self, clause: &str, params: Vec<Param>) -> Result<Vec<Migration>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM gizzard_migrations {clause}");
        let rows: Vec<RawRow> = match &self.db {
            Database::Mysql { .. } => {
                let params: Vec<_> = params.into_iter().map(Param::into_mysql).collect();
                self.db
                    .mysql(|mut conn| async move { conn.exec(sql, params).await })
                    .await
            }
            Database::Sqlite { .. } => {
                self.db
                    .sqlite(move |conn| {
                        let mut stmt = conn.prepare_cached(&sql)?;
                        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                                r.get(6)?,
                                r.get(7)?,
                                r.get(8)?,
                            ))
                        })?;
                        rows.collect()
                    })
                    .await
            }
        }
        .map_err(db_err("read migrations"))?;
        rows.into_iter().map(decode).collect()
    }
}

fn db_err(action: &str) -> impl Fn(DbError) -> StoreError + '_ {
    move |source| StoreError::Db {
        action: action.to_owned(),
        source,
    }
}
