//! The nameserver on SQLite: loads in a read transaction, and batches serialized by
//! `BEGIN IMMEDIATE`, which takes the database's write lock before the first read.

use futures::{FutureExt, future::BoxFuture};
use rusqlite::{OptionalExtension, TransactionBehavior};

use super::{
    NameServerBackend, NameServerError, Planner, Rows, SELECT_FORWARDINGS, SELECT_HOSTS,
    SELECT_LINKS, SELECT_SHARDS, SELECT_VERSION, Statement, Table,
};
use crate::{
    db::{Database, DbError, Param},
    nameserver::{retired, servers},
};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS gizzard_shards (
        hostname TEXT NOT NULL,
        table_prefix TEXT NOT NULL,
        class_name TEXT NOT NULL,
        busy INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (hostname, table_prefix)
    );
    CREATE TABLE IF NOT EXISTS gizzard_links (
        up_hostname TEXT NOT NULL,
        up_table_prefix TEXT NOT NULL,
        down_hostname TEXT NOT NULL,
        down_table_prefix TEXT NOT NULL,
        weight INTEGER NOT NULL,
        PRIMARY KEY (up_hostname, up_table_prefix, down_hostname, down_table_prefix)
    );
    CREATE TABLE IF NOT EXISTS gizzard_forwardings (
        table_id INTEGER NOT NULL,
        base_id INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        table_prefix TEXT NOT NULL,
        PRIMARY KEY (table_id, base_id)
    );
    CREATE TABLE IF NOT EXISTS gizzard_hosts (
        name TEXT NOT NULL PRIMARY KEY,
        url TEXT NOT NULL,
        read_weight INTEGER NOT NULL,
        write_weight INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS gizzard_version (
        id INTEGER NOT NULL PRIMARY KEY,
        version INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO gizzard_version (id, version) VALUES (1, 0);";

#[derive(Debug)]
pub(super) struct Sqlite;

impl NameServerBackend for Sqlite {
    fn schema(&self) -> [&'static str; 3] {
        [SCHEMA, servers::SQLITE_SCHEMA, retired::SQLITE_SCHEMA]
    }

    fn load<'a>(&'a self, db: &'a Database) -> BoxFuture<'a, Result<Rows, DbError>> {
        db.sqlite(|conn| {
            let tx = conn.transaction()?;
            let rows = load(&tx)?;
            tx.commit()?;
            Ok(rows)
        })
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        db: &'a Database,
        plan: Planner,
    ) -> BoxFuture<'a, Result<Result<u64, NameServerError>, DbError>> {
        db.sqlite(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let rows = load(&tx)?;
            let (version, statements) = match plan(rows) {
                // Dropping the transaction rolls it back.
                Ok(planned) => planned,
                Err(e) => return Ok(Err(e)),
            };
            for Statement { sql, params } in statements {
                let params = params.into_iter().map(Param::into_sqlite);
                tx.prepare_cached(&sql)?
                    .execute(rusqlite::params_from_iter(params))?;
            }
            tx.commit()?;
            Ok(Ok(version))
        })
        .boxed()
    }

    fn upsert_clause(&self, table: &Table) -> String {
        let set: Vec<_> = table.columns[table.keys..]
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let keys = table.columns[..table.keys].join(", ");
        format!("ON CONFLICT ({keys}) DO UPDATE SET {}", set.join(", "))
    }
}

/// Reads every table in `conn`'s transaction.
fn load(conn: &rusqlite::Connection) -> Result<Rows, rusqlite::Error> {
    fn all<T>(
        conn: &rusqlite::Connection,
        sql: &str,
        row: impl FnMut(&rusqlite::Row<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<Vec<T>, rusqlite::Error> {
        conn.prepare_cached(sql)?.query_map([], row)?.collect()
    }
    Ok(Rows {
        version: conn
            .query_row(SELECT_VERSION, [], |row| row.get(0))
            .optional()?,
        shards: all(conn, SELECT_SHARDS, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?,
        links: all(conn, SELECT_LINKS, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?,
        forwardings: all(conn, SELECT_FORWARDINGS, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?,
        hosts: all(conn, SELECT_HOSTS, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?,
        unfenced: all(conn, retired::SELECT_UNFENCED, |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?,
    })
}
