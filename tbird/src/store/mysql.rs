//! MySQL's (and MariaDB's) way with T-Bird's tables: InnoDB tables, `ON DUPLICATE KEY UPDATE`
//! merges, online index builds, and the savings a server over the network is worth: reads of
//! several tables in one statement ([`super::union`]), write batches of several tables in one
//! round trip ([`super::merges`]), copies through `LOAD DATA` ([`super::load`]), and
//! checksums folded in the server.

use db::{Database, DbError};
use futures::{FutureExt, future::BoxFuture};
use gizzard::shards::{Checksum, ShardError};
use mysql_async::prelude::Queryable;

use super::{
    Kind, Page, Row, TbirdShard,
    backend::Backend,
    content_wins_sql, int_params,
    load::{LOAD_MIN_ROWS, LOAD_ROWS},
    rows::{TimelineColumns, TweetColumns},
    union,
};
use crate::tweet::Tweet;

#[derive(Debug)]
pub(super) struct Mysql;

/// Returns whether `reads` (of several shards) can share one `UNION ALL` statement: all of
/// `kind`, all through the first one's pool.
fn one_statement<T>(reads: &[(&TbirdShard, T)], kind: Kind) -> bool {
    reads.len() > 1
        && reads
            .iter()
            .all(|(s, _)| s.kind == kind && s.shares_pool_with(reads[0].0))
}

impl Backend for Mysql {
    fn schema(&self, kind: Kind, table: &str) -> String {
        match kind {
            Kind::Tweets => format!(
                "CREATE TABLE IF NOT EXISTS {table} (id BIGINT NOT NULL PRIMARY KEY, \
                 hash BIGINT NOT NULL, user_id BIGINT NOT NULL, \
                 text VARCHAR(280) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 in_reply_to BIGINT NULL, deleted BOOLEAN NOT NULL, KEY {table}_hash (hash)) \
                 ENGINE=InnoDB"
            ),
            Kind::Timelines => format!(
                "CREATE TABLE IF NOT EXISTS {table} (user_id BIGINT NOT NULL, \
                 tweet_id BIGINT NOT NULL, hash BIGINT NOT NULL, deleted BOOLEAN NOT NULL, \
                 PRIMARY KEY (user_id, tweet_id), KEY {table}_hash (hash)) ENGINE=InnoDB"
            ),
        }
    }

    fn merge_clause(&self, kind: Kind, _table: &str) -> String {
        match kind {
            Kind::Tweets => {
                // The comparison is written once: the first assignment keeps its outcome, on
                // the row as stored, in a session variable the other two read. Writes go as
                // text and MariaDB parses every statement, so its length counts. Text
                // compares through a cast to binary: the column's `utf8mb4_bin` collation
                // ignores trailing spaces (PAD SPACE) and would call "a" and "a " equal.
                let wins = content_wins_sql(
                    "BINARY",
                    ("VALUES(user_id)", "VALUES(text)", "VALUES(in_reply_to)"),
                    ("user_id", "text", "in_reply_to"),
                );
                format!(
                    "ON DUPLICATE KEY UPDATE \
                     in_reply_to = IF(@tbird_wins := {wins}, VALUES(in_reply_to), in_reply_to), \
                     text = IF(@tbird_wins, VALUES(text), text), \
                     user_id = IF(@tbird_wins, VALUES(user_id), user_id), \
                     deleted = GREATEST(deleted, VALUES(deleted))"
                )
            }
            Kind::Timelines => {
                "ON DUPLICATE KEY UPDATE deleted = GREATEST(deleted, VALUES(deleted))".to_owned()
            }
        }
    }

    fn index_count_sql(&self) -> &'static str {
        "SELECT COUNT(*) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ?"
    }

    fn drop_hash_index(&self, table: &str) -> String {
        // Dropping a secondary index only changes metadata: it does not wait on the rows.
        format!("ALTER TABLE {table} DROP INDEX {table}_hash")
    }

    fn add_hash_index(&self, table: &str) -> String {
        // Built online: writes go on while it sorts (the statement fails rather than lock
        // them out if the server cannot).
        format!("ALTER TABLE {table} ADD INDEX {table}_hash (hash), ALGORITHM=INPLACE, LOCK=NONE")
    }

    fn after_rename(&self, _table: &str) -> Option<String> {
        // Index names are per table: they went with it.
        None
    }

    fn select<'a>(
        &'a self,
        db: &'a Database,
        kind: Kind,
        sql: String,
        params: Vec<i64>,
    ) -> BoxFuture<'a, Result<Vec<Row>, DbError>> {
        async move {
            let params: Vec<mysql_async::Value> = params.into_iter().map(Into::into).collect();
            let rows: Vec<mysql_async::Row> = db
                .mysql(|mut c| async move { c.exec(sql, params).await })
                .await?;
            rows.into_iter().map(|row| decode(kind, row)).collect()
        }
        .boxed()
    }

    fn read_tweets<'a>(
        &'a self,
        reads: &'a [(&'a TbirdShard, &'a [u64])],
    ) -> BoxFuture<'a, Result<Vec<Vec<Tweet>>, ShardError>> {
        if one_statement(reads, Kind::Tweets) {
            union::read(reads).boxed()
        } else {
            TbirdShard::get_tweets_alone(reads).boxed()
        }
    }

    fn read_timelines<'a>(
        &'a self,
        reads: &'a [(&'a TbirdShard, &'a Page)],
    ) -> BoxFuture<'a, Result<Vec<Vec<u64>>, ShardError>> {
        if one_statement(reads, Kind::Timelines) {
            union::timelines(reads).boxed()
        } else {
            TbirdShard::timelines_alone(reads).boxed()
        }
    }

    fn merge_batch<'a>(
        &'a self,
        shard: &'a TbirdShard,
        rows: Vec<Row>,
    ) -> BoxFuture<'a, Result<(), ShardError>> {
        async move {
            match &shard.merges {
                Some(merges) => merges.merge(shard, rows).await,
                None => shard.merge(&rows).await,
            }
        }
        .boxed()
    }

    fn write_copy<'a>(
        &'a self,
        shard: &'a TbirdShard,
        rows: &'a [Row],
    ) -> BoxFuture<'a, Result<(), ShardError>> {
        async move {
            if rows.len() < LOAD_MIN_ROWS {
                return shard.merge_all(rows).await;
            }
            for chunk in rows.chunks(LOAD_ROWS) {
                shard.load(chunk).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn checksum<'a>(
        &'a self,
        shard: &'a TbirdShard,
        filter: String,
        params: Vec<i64>,
    ) -> BoxFuture<'a, Result<Checksum, ShardError>> {
        async move {
            // Folded in the database, so a diff ships two integers per chunk, not its rows.
            // Rows have distinct keys, so XOR folds no row with itself; the count catches a
            // missing row whose digest is 0. CAST keeps all 64 bits in a signed column.
            let sql = format!(
                "SELECT COUNT(*), CAST(BIT_XOR({}) AS SIGNED) FROM {} WHERE {filter}",
                digest_sql(shard.kind),
                shard.table
            );
            let found = shard
                .db
                .query_ints(sql, int_params(params))
                .await
                .map_err(|e| shard.err(e))?;
            let row = found.first().map(Vec::as_slice).unwrap_or_default();
            let int = |i: usize| row.get(i).copied().flatten().unwrap_or(0) as u64;
            Ok(Checksum {
                rows: int(0),
                digest: int(1),
            })
        }
        .boxed()
    }
}

/// The expression of a row's 64-bit digest; [`Row::digest`] computes the same.
///
/// Columns are folded in as they are, without building a string (a third of the cost of
/// `CRC32(CONCAT_WS(...))` over a chunk). The user is shifted, so equal changes of user and
/// in_reply_to do not cancel (user 3 to 2 with in_reply_to 1 to none), and a tombstone adds
/// the complement of its own key rather than one fixed bit, so two rows deleted on one
/// replica only do not cancel either. Chunks fold rows with XOR, which is linear: differences
/// still cancel when their deltas happen to be equal, no longer for such common patterns.
fn digest_sql(kind: Kind) -> &'static str {
    match kind {
        Kind::Tweets => {
            "CRC32(text) ^ id ^ (user_id << 17) ^ IFNULL(in_reply_to, 0) ^ IF(deleted, ~id, 0)"
        }
        // Both key columns go through the CRC, so (1, 2) and (2, 1) differ.
        Kind::Timelines => {
            "CRC32(CONCAT_WS('|', user_id, tweet_id)) \
             ^ IF(deleted, ~tweet_id ^ (user_id << 17), 0)"
        }
    }
}

/// Decodes a row of [`Kind::read_columns`].
fn decode(kind: Kind, row: mysql_async::Row) -> Result<Row, DbError> {
    let unexpected = |e: mysql_async::FromRowError| {
        DbError::Value(format!("a {kind:?} row with unexpected columns: {:?}", e.0))
    };
    Ok(match kind {
        Kind::Tweets => Row::from_tweet_columns(
            mysql_async::from_row_opt::<TweetColumns>(row).map_err(unexpected)?,
        ),
        Kind::Timelines => Row::from_timeline_columns(
            mysql_async::from_row_opt::<TimelineColumns>(row).map_err(unexpected)?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use db::Param;

    use super::*;
    use crate::store::{inline::inline, tests::mysql_shard};

    fn tweet(id: u64, text: &str) -> Row {
        Row::Tweet(Tweet {
            id,
            user_id: 3,
            text: text.into(),
            in_reply_to: None,
            deleted: false,
        })
    }

    /// The statements combined writes send: every placeholder of a merge gets its value, and
    /// a text holding a `?` or a quote stays one literal.
    #[tokio::test]
    async fn merges_inline_into_complete_statements() {
        let shard = mysql_shard(Kind::Tweets, "t_0000").await;
        let (sql, params) = shard
            .merge_statement(&[tweet(1, "why? 'because'"), tweet(2, "")])
            .expect("statement");
        assert_eq!(params.len(), 12);
        assert_eq!(params[4], Param::Null);
        let inlined = inline(&sql, params).expect("one value per placeholder");
        assert!(!inlined.contains('?'), "{inlined}");
        assert!(
            inlined.starts_with(
                "INSERT INTO t_0000_tweets (id, hash, user_id, text, in_reply_to, deleted) \
                 VALUES (1, "
            ),
            "{inlined}"
        );
        let why = "_utf8mb4 X'7768793f20276265636175736527'";
        assert!(
            inlined.contains(&format!(", 3, {why}, NULL, 0), (2, ")),
            "{inlined}"
        );
        assert!(inlined.ends_with("deleted = GREATEST(deleted, VALUES(deleted))"));
    }

    #[tokio::test]
    async fn rows_of_the_other_table_are_refused() {
        let shard = mysql_shard(Kind::Timelines, "t_0000").await;
        let err = shard
            .merge_statement(&[tweet(1, "x")])
            .expect_err("a tweet row on a timeline shard");
        assert!(
            err.to_string()
                .contains("a tweet row sent to a Timelines shard"),
            "{err}"
        );
    }
}
