//! The migrations table in the nameserver database, for MySQL and SQLite.
//!
//! `gizzard_migrations` holds one row per migration: its plan and progress as JSON, its
//! status, the rebalance it belongs to, a cancel flag operators set, and the owner of the run
//! in progress. A run takes ownership when it starts and every save checks it, so a run that
//! lost its job lease (and was replaced by another server's) can no longer write.
//!
//! What differs between the databases (the schema, reading a new row's id, decoding rows) is
//! behind [`MigrationBackend`], in [`mysql`] and [`sqlite`], chosen once when the store opens.

mod mysql;
mod sqlite;

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;

use super::model::{Migration, MigrationId, Plan, Progress, Status};
use crate::db::{Database, DbError, Param};

const COLUMNS: &str =
    "id, parent_id, status, cancel_requested, plan, progress, error, created_ms, updated_ms";

/// Why a migrations table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action}: {cause}")]
    Db { action: String, cause: DbError },
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
    backend: &'static dyn MigrationBackend,
}

/// What the migrations table does its own way on one database.
trait MigrationBackend: fmt::Debug + Send + Sync {
    /// Returns the statements creating the table when missing.
    fn schema(&self) -> &'static str;

    /// Runs `sql`, an `INSERT` of one row, and returns the row's new id.
    fn insert<'a>(
        &'a self,
        db: &'a Database,
        sql: &'static str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Result<u64, DbError>>;

    /// Runs `sql`, a select of [`COLUMNS`], and returns its rows.
    fn select<'a>(
        &'a self,
        db: &'a Database,
        sql: String,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Result<Vec<RawRow>, DbError>>;
}

/// Returns the backend of `db`.
fn backend_of(db: &Database) -> &'static dyn MigrationBackend {
    match db {
        Database::Mysql { .. } => &mysql::Mysql,
        Database::Sqlite { .. } => &sqlite::Sqlite,
    }
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
        let backend = backend_of(&db);
        db.execute_batch(backend.schema().to_owned())
            .await
            .map_err(db_err("create the migrations table"))?;
        Ok(Self { db, backend })
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
        self.backend
            .insert(&self.db, sql, params)
            .await
            .map_err(db_err("store a migration"))
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
        let rows = self
            .backend
            .select(&self.db, sql, params)
            .await
            .map_err(db_err("read migrations"))?;
        rows.into_iter().map(decode).collect()
    }
}

fn db_err(action: &str) -> impl Fn(DbError) -> StoreError + '_ {
    move |cause| StoreError::Db {
        action: action.to_owned(),
        cause,
    }
}
