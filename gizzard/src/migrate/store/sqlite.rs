//! The migrations table on SQLite.

use futures::{FutureExt, future::BoxFuture};

use super::{MigrationBackend, RawRow};
use crate::db::{Database, DbError, Param};

const SCHEMA: &str = "
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

#[derive(Debug)]
pub(super) struct Sqlite;

impl MigrationBackend for Sqlite {
    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn insert<'a>(
        &'a self,
        db: &'a Database,
        sql: &'static str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        db.sqlite(move |conn| {
            conn.execute(sql, rusqlite::params_from_iter(params))?;
            Ok(conn.last_insert_rowid() as u64)
        })
        .boxed()
    }

    fn select<'a>(
        &'a self,
        db: &'a Database,
        sql: String,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Result<Vec<RawRow>, DbError>> {
        db.sqlite(move |conn| {
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
        .boxed()
    }
}
