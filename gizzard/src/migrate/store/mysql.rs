//! The migrations table on MySQL (and MariaDB).

use futures::{FutureExt, future::BoxFuture};
use mysql_async::prelude::Queryable;

use super::{MigrationBackend, RawRow};
use crate::db::{Database, DbError, Param};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gizzard_migrations (
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

#[derive(Debug)]
pub(super) struct Mysql;

impl MigrationBackend for Mysql {
    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn insert<'a>(
        &'a self,
        db: &'a Database,
        sql: &'static str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        let params: Vec<_> = params.into_iter().map(Param::into_mysql).collect();
        db.mysql(move |mut conn| async move {
            conn.exec_drop(sql, params).await?;
            Ok(conn.last_insert_id().unwrap_or(0))
        })
        .boxed()
    }

    fn select<'a>(
        &'a self,
        db: &'a Database,
        sql: String,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Result<Vec<RawRow>, DbError>> {
        let params: Vec<_> = params.into_iter().map(Param::into_mysql).collect();
        db.mysql(|mut conn| async move { conn.exec(sql, params).await })
            .boxed()
    }
}
