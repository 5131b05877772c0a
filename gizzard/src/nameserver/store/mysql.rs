//! The nameserver on MySQL (and MariaDB): InnoDB tables in binary collations, loads in a
//! consistent snapshot, and batches serialized by `SELECT ... FOR UPDATE` on the version row.

use futures::{FutureExt, future::BoxFuture};
use mysql_async::{TxOpts, prelude::Queryable};

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
        hostname VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        table_prefix VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        class_name VARCHAR(255) NOT NULL,
        busy TINYINT NOT NULL DEFAULT 0,
        PRIMARY KEY (hostname, table_prefix)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
    CREATE TABLE IF NOT EXISTS gizzard_links (
        up_hostname VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        up_table_prefix VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        down_hostname VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        down_table_prefix VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        weight INT UNSIGNED NOT NULL,
        PRIMARY KEY (up_hostname, up_table_prefix, down_hostname, down_table_prefix)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
    CREATE TABLE IF NOT EXISTS gizzard_forwardings (
        table_id INT NOT NULL,
        base_id BIGINT NOT NULL,
        hostname VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        table_prefix VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        PRIMARY KEY (table_id, base_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
    CREATE TABLE IF NOT EXISTS gizzard_hosts (
        name VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        url VARCHAR(2048) NOT NULL,
        read_weight INT UNSIGNED NOT NULL,
        write_weight INT UNSIGNED NOT NULL,
        PRIMARY KEY (name)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
    CREATE TABLE IF NOT EXISTS gizzard_version (
        id TINYINT NOT NULL PRIMARY KEY,
        version BIGINT NOT NULL
    ) ENGINE=InnoDB;
    INSERT IGNORE INTO gizzard_version (id, version) VALUES (1, 0)
";

#[derive(Debug)]
pub(super) struct Mysql;

impl NameServerBackend for Mysql {
    fn schema(&self) -> [&'static str; 3] {
        [SCHEMA, servers::MYSQL_SCHEMA, retired::MYSQL_SCHEMA]
    }

    fn load<'a>(&'a self, db: &'a Database) -> BoxFuture<'a, Result<Rows, DbError>> {
        db.mysql(|mut conn| async move {
            let mut opts = TxOpts::default();
            opts.with_consistent_snapshot(true).with_readonly(true);
            let mut tx = conn.start_transaction(opts).await?;
            let rows = load(&mut tx, SELECT_VERSION).await?;
            tx.commit().await?;
            Ok(rows)
        })
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        db: &'a Database,
        plan: Planner,
    ) -> BoxFuture<'a, Result<Result<u64, NameServerError>, DbError>> {
        db.mysql(|mut conn| async move {
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            // The lock serializes batches; the plain reads that follow start their snapshot
            // after it, so they see every earlier batch.
            let lock = format!("{SELECT_VERSION} FOR UPDATE");
            let rows = load(&mut tx, &lock).await?;
            let (version, statements) = match plan(rows) {
                Ok(planned) => planned,
                Err(e) => {
                    tx.rollback().await?;
                    return Ok(Err(e));
                }
            };
            for Statement { sql, params } in statements {
                let params: Vec<mysql_async::Value> =
                    params.into_iter().map(Param::into_mysql).collect();
                tx.exec_drop(sql, params).await?;
            }
            tx.commit().await?;
            Ok(Ok(version))
        })
        .boxed()
    }

    fn upsert_clause(&self, table: &Table) -> String {
        let set: Vec<_> = table.columns[table.keys..]
            .iter()
            .map(|c| format!("{c} = VALUES({c})"))
            .collect();
        format!("ON DUPLICATE KEY UPDATE {}", set.join(", "))
    }
}

/// Reads every table in `tx`, the version row with `select_version`.
async fn load(
    q: &mut mysql_async::Transaction<'_>,
    select_version: &str,
) -> Result<Rows, mysql_async::Error> {
    let version = q.query_first(select_version).await?;
    Ok(Rows {
        version,
        shards: q.query(SELECT_SHARDS).await?,
        links: q.query(SELECT_LINKS).await?,
        forwardings: q.query(SELECT_FORWARDINGS).await?,
        hosts: q.query(SELECT_HOSTS).await?,
        unfenced: q.query(retired::SELECT_UNFENCED).await?,
    })
}
