//! What differs between the databases a shard's tables live in, behind one trait: SQL the
//! two dialects spell differently, reading rows, and the work MySQL saves over the network.
//! A shard picks its backend once, when it is made ([`of`]); nothing else asks which database
//! it has.
//!
//! The provided methods are the plain way, one statement at a time, which SQLite (in the
//! process, no round trips to save) keeps; MySQL overrides them.

use std::fmt;

use db::{Database, DbError};
use futures::{FutureExt, future::BoxFuture};
use gizzard::shards::{Checksum, ShardError};

use super::{Kind, Page, Row, TbirdShard, mysql::Mysql, sqlite::Sqlite};
use crate::tweet::Tweet;

/// One database's way with T-Bird's tables.
pub(super) trait Backend: fmt::Debug + Send + Sync {
    /// Returns the statements creating a table of `kind` named `table` with its hash index,
    /// when missing.
    fn schema(&self, kind: Kind, table: &str) -> String;

    /// Returns the clause that ends a merge `INSERT` into `table`: on a key that exists, the
    /// stored row and the new one merge as [`Tweet::merge`] says.
    fn merge_clause(&self, kind: Kind, table: &str) -> String;

    /// Returns the query counting the indexes of table `?` named `?`.
    fn index_count_sql(&self) -> &'static str;

    /// Returns the statement dropping the hash index of `table`.
    fn drop_hash_index(&self, table: &str) -> String;

    /// Returns the statement building the hash index of `table` without blocking writes.
    fn add_hash_index(&self, table: &str) -> String;

    /// Returns the statement that must follow renaming `table` away, if any.
    fn after_rename(&self, table: &str) -> Option<String>;

    /// Runs `sql`, a select of [`Kind::read_columns`] with `?` placeholders for `params`, and
    /// returns its rows.
    fn select<'a>(
        &'a self,
        db: &'a Database,
        kind: Kind,
        sql: String,
        params: Vec<i64>,
    ) -> BoxFuture<'a, Result<Vec<Row>, DbError>>;

    /// Returns the stored tweets of each `(shard, ids)` read, in order (see
    /// [`TbirdShard::get_tweets_of`]); the shards all have this backend.
    fn read_tweets<'a>(
        &'a self,
        reads: &'a [(&'a TbirdShard, &'a [u64])],
    ) -> BoxFuture<'a, Result<Vec<Vec<Tweet>>, ShardError>> {
        TbirdShard::get_tweets_alone(reads).boxed()
    }

    /// Returns the timeline page of each `(shard, page)` read, in order (see
    /// [`TbirdShard::timelines_of`]); the shards all have this backend.
    fn read_timelines<'a>(
        &'a self,
        reads: &'a [(&'a TbirdShard, &'a Page)],
    ) -> BoxFuture<'a, Result<Vec<Vec<u64>>, ShardError>> {
        TbirdShard::timelines_alone(reads).boxed()
    }

    /// Merges a coalesced write batch of `shard`, sorted by key.
    fn merge_batch<'a>(
        &'a self,
        shard: &'a TbirdShard,
        rows: Vec<Row>,
    ) -> BoxFuture<'a, Result<(), ShardError>> {
        async move { shard.merge(&rows).await }.boxed()
    }

    /// Writes rows a copy read from another replica, merging them with what is there.
    fn write_copy<'a>(
        &'a self,
        shard: &'a TbirdShard,
        rows: &'a [Row],
    ) -> BoxFuture<'a, Result<(), ShardError>> {
        shard.merge_all(rows).boxed()
    }

    /// Returns the checksum of `shard`'s rows matching `filter` (`?` placeholders for
    /// `params`): the count, and the XOR of [`Row::digest`] over them.
    fn checksum<'a>(
        &'a self,
        shard: &'a TbirdShard,
        filter: String,
        params: Vec<i64>,
    ) -> BoxFuture<'a, Result<Checksum, ShardError>> {
        shard.checksum_of_rows(filter, params).boxed()
    }
}

/// Returns the backend of `db`.
pub(super) fn of(db: &Database) -> &'static dyn Backend {
    match db {
        Database::Mysql { .. } => &Mysql,
        Database::Sqlite { .. } => &Sqlite,
    }
}
