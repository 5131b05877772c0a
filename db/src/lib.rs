//! Database handles for every crate that keeps state in MySQL (`mysql://USER@HOST:PORT/DB`,
//! production) or SQLite (`sqlite://PATH`, embedded): Snowflake's lease table, Gizzard's
//! nameserver and job queue, and the shards' own tables.
//!
//! Every operation runs under the database's deadline: mysql_async has no connect timeout of
//! its own, and a paused server would otherwise hang a caller forever. SQLite work runs on a
//! blocking thread, one connection at a time.
//!
//! - [`url`]: the shape of a URL per backend, and MySQL's TLS options (`ssl-mode`, `ssl-ca`).
//! - [`text`]: what leaves a process: URLs with their passwords redacted ([`text::redact`]),
//!   client input echoed within a bound ([`text::bounded`]).

pub mod text;
pub mod url;

use std::{
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use mysql_async::{OptsBuilder, PoolConstraints, PoolOpts, prelude::Queryable};

/// The database's clock in ms since the Unix epoch, as SQL: leases and registrations judge
/// expiry by it, so the clocks of the machines using the database may disagree. Sessions run
/// in UTC.
pub const MYSQL_NOW_MS: &str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";
/// [`MYSQL_NOW_MS`] for SQLite.
pub const SQLITE_NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// The default deadline of one database operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per MySQL connection. Multi-row writes and `IN` lists prepare one
/// statement per row count, so the cache holds more than the driver's 32; the server caps all
/// sessions together at `max_prepared_stmt_count` (16,382 by default).
const STMT_CACHE_SIZE: usize = 64;

/// How long a pooled MySQL connection may sit idle before the pool closes it.
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// Why a database operation failed.
///
/// The message names the driver's error with its causes ([`text::causes`]) and there is no
/// `source`: database errors reach gRPC statuses and log lines, which print one error's
/// message, so the cause must be in it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `url` is redacted ([`text::redact`]).
    #[error("invalid database url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("mysql: {}", text::causes(.0))]
    Mysql(mysql_async::Error),
    #[error("sqlite: {}", text::causes(.0))]
    Sqlite(rusqlite::Error),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    /// The blocking thread of a SQLite operation panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("unreadable value: {0}")]
    Value(String),
}

impl From<mysql_async::Error> for DbError {
    fn from(err: mysql_async::Error) -> Self {
        Self::Mysql(err)
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Sqlite(err)
    }
}

/// A connection pool (MySQL) or a connection (SQLite), with a deadline per operation.
#[derive(Clone)]
pub enum Database {
    Mysql {
        // Behind an Arc of ours so `same_as` can tell pools apart.
        pool: Arc<mysql_async::Pool>,
        timeout: Duration,
    },
    Sqlite {
        conn: Arc<Mutex<rusqlite::Connection>>,
        timeout: Duration,
    },
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mysql { .. } => f.write_str("Database::Mysql"),
            Self::Sqlite { .. } => f.write_str("Database::Sqlite"),
        }
    }
}

impl Database {
    /// Opens the database at `url` and checks that it answers; each later operation is
    /// bounded by `timeout`.
    pub async fn open(url: &str, timeout: Duration) -> Result<Self, DbError> {
        let db = Self::open_lazy(url, timeout).await?;
        if let Self::Mysql { .. } = &db {
            // Fail now, with a clear error, when the server is unreachable.
            db.mysql(|mut conn| async move { conn.ping().await })
                .await?;
        }
        Ok(db)
    }

    /// Opens the database at `url` without waiting for a MySQL server to answer: a shard host
    /// that is down must not keep the proxy from starting.
    pub async fn open_lazy(url: &str, timeout: Duration) -> Result<Self, DbError> {
        let bad_url = |reason: String| DbError::Url {
            url: text::redact(url).into_owned(),
            reason: text::redact(&reason).into_owned(),
        };
        if url.starts_with("mysql://") {
            let opts = url::MysqlUrl::parse(url)
                .and_then(|parsed| parsed.opts())
                .map_err(bad_url)?;
            let constraints = PoolConstraints::new(0, 32).expect("0 <= 32");
            let opts = OptsBuilder::from_opts(opts)
                // Count matched rows, so an update that changes nothing still reports a match.
                .client_found_rows(true)
                .prefer_socket(false)
                // The server closes a connection silent for two minutes, rolling back its
                // transaction: a client cut off mid-transaction (a network partition, a
                // paused process) cannot hold its row locks for the default eight hours. The
                // pool closes idle connections sooner (the TTL below, checked every 30 s).
                .init(vec!["SET time_zone = '+00:00', wait_timeout = 120"])
                // Keep prepared statements across uses. The default resets a connection each
                // time it returns to the pool, which drops the statement cache and reruns the
                // init: three extra round trips per query. Nothing here changes session state.
                .stmt_cache_size(STMT_CACHE_SIZE)
                .pool_opts(
                    PoolOpts::default()
                        .with_constraints(constraints)
                        // With the default of 0, the pool keeps no more idle connections than
                        // its minimum (0 here): every query would connect, authenticate and
                        // prepare anew. Idle connections now live this long.
                        .with_inactive_connection_ttl(IDLE_CONNECTION_TTL)
                        .with_reset_connection(false),
                );
            Ok(Self::Mysql {
                pool: Arc::new(mysql_async::Pool::new(opts)),
                timeout,
            })
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad_url("no file path after sqlite://".into()));
            }
            let path = PathBuf::from(path);
            let conn = tokio::task::spawn_blocking(move || open_sqlite(&path, timeout))
                .await
                .map_err(DbError::Task)??;
            Ok(Self::Sqlite {
                conn: Arc::new(Mutex::new(conn)),
                timeout,
            })
        } else {
            Err(bad_url(
                "expected mysql://USER@HOST:PORT/DB or sqlite://PATH".into(),
            ))
        }
    }

    /// Returns the deadline of one operation.
    pub fn timeout(&self) -> Duration {
        match self {
            Self::Mysql { timeout, .. } | Self::Sqlite { timeout, .. } => *timeout,
        }
    }

    /// Returns whether `other` shares this database's pool (MySQL) or connection (SQLite), so
    /// one statement may serve both.
    pub fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Mysql { pool: a, .. }, Self::Mysql { pool: b, .. }) => Arc::ptr_eq(a, b),
            (Self::Sqlite { conn: a, .. }, Self::Sqlite { conn: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Returns the same database whose operations each get `timeout` instead: for the rare
    /// statement, such as building an index, that may rightly take longer than a query.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        match self {
            Self::Mysql { pool, .. } => Self::Mysql {
                pool: pool.clone(),
                timeout,
            },
            Self::Sqlite { conn, .. } => Self::Sqlite {
                conn: conn.clone(),
                timeout,
            },
        }
    }

    /// Runs `op` on a pooled MySQL connection under the deadline. Panics on SQLite: callers
    /// match on the variant first.
    pub async fn mysql<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(mysql_async::Conn) -> Fut,
        Fut: Future<Output = Result<T, mysql_async::Error>>,
    {
        let Self::Mysql { pool, timeout } = self else {
            panic!("mysql() on a SQLite database")
        };
        let work = async {
            let conn = pool.get_conn().await?;
            op(conn).await
        };
        match tokio::time::timeout(*timeout, work).await {
            Ok(result) => result.map_err(DbError::from),
            Err(_) => Err(DbError::Timeout(*timeout)),
        }
    }

    /// Runs `op` on the SQLite connection on a blocking thread under the deadline. Panics on
    /// MySQL: callers match on the variant first.
    pub async fn sqlite<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let Self::Sqlite { conn, timeout } = self else {
            panic!("sqlite() on a MySQL database")
        };
        let conn = conn.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            op(&mut conn)
        });
        match tokio::time::timeout(*timeout, task).await {
            Ok(Ok(result)) => result.map_err(DbError::from),
            Ok(Err(join)) => Err(DbError::Task(join)),
            Err(_) => Err(DbError::Timeout(*timeout)),
        }
    }
}

fn open_sqlite(path: &std::path::Path, timeout: Duration) -> Result<rusqlite::Connection, DbError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(timeout)?;
    // Switching to WAL takes an exclusive lock and does not wait on the busy handler, so a
    // process opening the file while another one does is retried here until the deadline.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => break result?,
        }
    }
    // WAL with synchronous=FULL: an acknowledged change survives a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// A statement parameter for either backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Null,
    Int(i64),
    Text(String),
}

impl Param {
    /// Returns the parameter as MySQL sends it.
    pub fn into_mysql(self) -> mysql_async::Value {
        match self {
            Self::Null => mysql_async::Value::NULL,
            Self::Int(v) => mysql_async::Value::Int(v),
            Self::Text(v) => mysql_async::Value::Bytes(v.into_bytes()),
        }
    }

    /// Returns the parameter as SQLite binds it.
    pub fn into_sqlite(self) -> rusqlite::types::Value {
        match self {
            Self::Null => rusqlite::types::Value::Null,
            Self::Int(v) => rusqlite::types::Value::Integer(v),
            Self::Text(v) => rusqlite::types::Value::Text(v),
        }
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<&String> for Param {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Self::Null, Self::Int)
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Null => Ok(rusqlite::types::ToSqlOutput::from(rusqlite::types::Null)),
            Self::Int(v) => v.to_sql(),
            Self::Text(v) => v.to_sql(),
        }
    }
}

impl Database {
    /// Runs statements without parameters, separated by `;` (schema creation).
    pub async fn execute_batch(&self, sql: String) -> Result<(), DbError> {
        match self {
            Self::Mysql { .. } => {
                self.mysql(|mut conn| async move { conn.query_drop(sql).await })
                    .await
            }
            Self::Sqlite { .. } => self.sqlite(move |conn| conn.execute_batch(&sql)).await,
        }
    }

    /// Returns the SQL of the database's clock in ms ([`MYSQL_NOW_MS`], [`SQLITE_NOW_MS`]).
    pub fn now_ms_sql(&self) -> &'static str {
        match self {
            Self::Mysql { .. } => MYSQL_NOW_MS,
            Self::Sqlite { .. } => SQLITE_NOW_MS,
        }
    }

    /// Returns the database's clock in ms since the Unix epoch.
    pub async fn now_ms(&self) -> Result<i64, DbError> {
        let found = self
            .query_ints(format!("SELECT {}", self.now_ms_sql()), Vec::new())
            .await?;
        found
            .first()
            .and_then(|row| row[0])
            .ok_or_else(|| DbError::Value("the database returned no clock".into()))
    }

    /// Returns whether table `name` exists in the database.
    pub async fn table_exists(&self, name: &str) -> Result<bool, DbError> {
        let sql = match self {
            Self::Mysql { .. } => {
                "SELECT COUNT(*) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
            }
            Self::Sqlite { .. } => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
            }
        };
        let found = self
            .query_ints(sql.into(), vec![Param::Text(name.to_owned())])
            .await?;
        Ok(found.first().and_then(|row| row[0]).unwrap_or(0) > 0)
    }

    /// Renames table `from` to `to` (both trusted SQL identifiers). Idempotent: succeeds
    /// without doing anything when `from` is gone, whether another caller renamed it first or
    /// it never existed.
    pub async fn rename_table(&self, from: &str, to: &str) -> Result<(), DbError> {
        if !self.table_exists(from).await? {
            return Ok(());
        }
        let sql = match self {
            Self::Mysql { .. } => format!("RENAME TABLE {from} TO {to}"),
            Self::Sqlite { .. } => format!("ALTER TABLE {from} RENAME TO {to}"),
        };
        match self.execute_batch(sql).await {
            // Another caller renamed it between the check and the statement.
            Err(_) if !self.table_exists(from).await? && self.table_exists(to).await? => Ok(()),
            other => other,
        }
    }

    /// Runs one statement with `?` placeholders (both backends accept them) and returns the
    /// rows it matched.
    pub async fn execute(&self, sql: String, params: Vec<Param>) -> Result<u64, DbError> {
        match self {
            Self::Mysql { .. } => {
                let params: Vec<mysql_async::Value> =
                    params.into_iter().map(Param::into_mysql).collect();
                self.mysql(|mut conn| async move {
                    conn.exec_drop(sql, params).await?;
                    Ok(conn.affected_rows())
                })
                .await
            }
            Self::Sqlite { .. } => {
                self.sqlite(move |conn| {
                    let changed = conn
                        .prepare_cached(&sql)?
                        .execute(rusqlite::params_from_iter(params))?;
                    Ok(changed as u64)
                })
                .await
            }
        }
    }

    /// Runs a query with `?` placeholders and returns its rows as tuples, one element a column.
    pub async fn query<T>(&self, sql: &'static str, params: Vec<Param>) -> Result<Vec<T>, DbError>
    where
        T: mysql_async::prelude::FromRow + SqliteRow + Send + 'static,
    {
        match self {
            Self::Mysql { .. } => {
                let params: Vec<mysql_async::Value> =
                    params.into_iter().map(Param::into_mysql).collect();
                self.mysql(|mut conn| async move { conn.exec(sql, params).await })
                    .await
            }
            Self::Sqlite { .. } => {
                self.sqlite(move |conn| {
                    conn.prepare_cached(sql)?
                        .query_map(rusqlite::params_from_iter(params), T::from_sqlite)?
                        .collect()
                })
                .await
            }
        }
    }

    /// Runs a query whose columns are all integers (or NULL) and returns its rows.
    pub async fn query_ints(
        &self,
        sql: String,
        params: Vec<Param>,
    ) -> Result<Vec<Vec<Option<i64>>>, DbError> {
        match self {
            Self::Mysql { .. } => {
                let params: Vec<mysql_async::Value> =
                    params.into_iter().map(Param::into_mysql).collect();
                let rows: Vec<mysql_async::Row> = self
                    .mysql(|mut conn| async move { conn.exec(sql, params).await })
                    .await?;
                rows.into_iter()
                    .map(|row| {
                        row.unwrap()
                            .into_iter()
                            .map(|value| match value {
                                mysql_async::Value::NULL => Ok(None),
                                value => mysql_async::from_value_opt::<i64>(value)
                                    .map(Some)
                                    .map_err(|e| DbError::Value(e.to_string())),
                            })
                            .collect()
                    })
                    .collect()
            }
            Self::Sqlite { .. } => {
                self.sqlite(move |conn| {
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let columns = stmt.column_count();
                    let rows = stmt.query_map(rusqlite::params_from_iter(params), |row| {
                        (0..columns).map(|i| row.get::<_, Option<i64>>(i)).collect()
                    })?;
                    rows.collect()
                })
                .await
            }
        }
    }
}

/// A row [`Database::query`] can return from SQLite; mysql_async's `FromRow` is the MySQL side.
pub trait SqliteRow: Sized {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

macro_rules! sqlite_row_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: rusqlite::types::FromSql),+> SqliteRow for ($($t,)+) {
            fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok(($(row.get($i)?,)+))
            }
        }
    };
}

sqlite_row_tuple!(A 0);
sqlite_row_tuple!(A 0, B 1);
sqlite_row_tuple!(A 0, B 1, C 2);
sqlite_row_tuple!(A 0, B 1, C 2, D 3);
sqlite_row_tuple!(A 0, B 1, C 2, D 3, E 4);
sqlite_row_tuple!(A 0, B 1, C 2, D 3, E 4, F 5);
sqlite_row_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
sqlite_row_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
sqlite_row_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
sqlite_row_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);

/// How a bulk load ([`Database::load_data`]) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Committed: `inserted` rows went in, and the rest were skipped because their key was
    /// already there.
    Committed { inserted: u64 },
    /// Rolled back: the server warned about something other than a skipped duplicate (a
    /// value it had to convert), so nothing was kept.
    RolledBack { warnings: u64 },
    /// Refused: the server does not take `LOAD DATA LOCAL` (its `local_infile` is off).
    Refused,
}

/// The server errors that say `LOAD DATA LOCAL` is disabled: MySQL's 1148 and 3948, and
/// MariaDB's 4166.
const LOCAL_INFILE_DISABLED: [u16; 3] = [1148, 3948, 4166];

impl Database {
    /// Runs `sql`, a `LOAD DATA LOCAL INFILE ... IGNORE` statement, with `data` (`rows` rows)
    /// as the file, in a transaction of its own. MySQL only: callers match on the variant.
    ///
    /// `IGNORE` skips a row whose key exists, with one warning each, but it also keeps a
    /// value it had to truncate or convert, with a warning; so the load commits only when
    /// every warning is a skipped row.
    pub async fn load_data(
        &self,
        sql: String,
        data: Vec<u8>,
        rows: u64,
    ) -> Result<Loaded, DbError> {
        self.mysql(|mut conn| async move {
            let file = bytes::Bytes::from(data);
            // A one-time handler: the statement's file name is ignored, the server gets `data`.
            conn.set_infile_handler(async move {
                Ok(futures::stream::once(async move { Ok(file) }).boxed())
            });
            let mut tx = conn
                .start_transaction(mysql_async::TxOpts::default())
                .await?;
            match tx.query_drop(sql).await {
                Err(mysql_async::Error::Server(e)) if LOCAL_INFILE_DISABLED.contains(&e.code) => {
                    return Ok(Loaded::Refused);
                }
                result => result?,
            }
            let inserted = tx.affected_rows();
            let warnings = u64::from(tx.get_warnings());
            if warnings > rows.saturating_sub(inserted) {
                tx.rollback().await?;
                return Ok(Loaded::RolledBack { warnings });
            }
            tx.commit().await?;
            Ok(Loaded::Committed { inserted })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_opening_a_new_sqlite_file_at_once_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join(format!("race-{round}.db"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let opens: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        open_sqlite(&path, Duration::from_secs(5)).map(drop)
                    })
                })
                .collect();
            for open in opens {
                open.join().expect("thread").expect("open succeeds");
            }
        }
    }
}
