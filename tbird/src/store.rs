//! Tweet storage on Gizzard's physical shards: table 1 holds tweets by id, table 2 each
//! user's tweet ids by user id (for timelines). Both live in MySQL or SQLite tables named after
//! the shard's table prefix, and every row keeps its routing key's hash, so a hash range is a
//! range scan for splits.
//!
//! Writes commute and repeat safely: every write is a merge, and replicas that receive the
//! same writes in any order, any number of times, end byte for byte identical. A delete is a
//! tombstone that wins whenever it arrives: before the tweet (the tweet then fills in the
//! content but stays deleted), after it, or twice. Two different contents for one id (two
//! racing `PutTweet`s) meet a fixed rule rather than arrival order: the smaller
//! `(user_id, text bytes, in_reply_to)` is kept ([`Tweet::merge`] is the rule; the SQL merges
//! of both backends implement it). Timeline rows only ever gain a tombstone. Repair and
//! copies write rows through the same merge, so repairing a difference makes both sides the
//! merge of the two.

use std::{
    ops::{Range, RangeInclusive},
    sync::Arc,
    time::Duration,
};

use db::{Database, DbError, Param};
use gizzard::{
    nameserver::{ShardId, ShardInfo, hash},
    shards::{Checksum, PhysicalShard, Registry, ShardError, WriteOp},
};
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::{
    hosts::{HostJob, HostQueues, Queued},
    tweet::Tweet,
};

/// The forwarding table of tweets by id.
pub const TWEETS_TABLE: i32 = 1;
/// The forwarding table of each user's tweet ids.
pub const TIMELINES_TABLE: i32 = 2;
/// The class name of tweet shards.
pub const TWEET_SHARD: &str = "TweetShard";
/// The class name of timeline shards.
pub const TIMELINE_SHARD: &str = "TimelineShard";

/// What a shard holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tweets,
    Timelines,
}

/// One tweet or timeline table on one host.
#[derive(Debug)]
pub struct TbirdShard {
    id: ShardId,
    kind: Kind,
    table: String,
    db: Database,
    /// Where write batches to this shard's host meet; `None` sends each alone.
    merges: Option<Arc<Merges>>,
}

/// A stored row of either table, tombstones included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Row {
    Tweet(Tweet),
    Timeline {
        user_id: u64,
        tweet_id: u64,
        deleted: bool,
    },
}

/// A write to T-Bird's tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TbirdWrite {
    /// Stores a tweet (table 1, by tweet id).
    PutTweet(Tweet),
    /// Tombstones a tweet (table 1, by tweet id).
    DeleteTweet { id: u64 },
    /// Adds a tweet to its author's timeline (table 2, by user id).
    AddToTimeline { user_id: u64, tweet_id: u64 },
    /// Tombstones a tweet in its author's timeline (table 2, by user id).
    RemoveFromTimeline { user_id: u64, tweet_id: u64 },
}

/// Returns the registry of T-Bird's shard types, as a proxy builds them: write batches to one
/// MySQL host share round trips, at most `statements_per_host` in flight ([`Merges`]).
pub fn registry(statements_per_host: usize) -> Registry<TbirdShard> {
    let merges = Arc::new(Merges::new(statements_per_host));
    let timeline_merges = merges.clone();
    Registry::default()
        .register(TWEET_SHARD, move |info: &ShardInfo, db| {
            Ok(TbirdShard::new(info, Kind::Tweets, db).with_merges(merges.clone()))
        })
        .register(TIMELINE_SHARD, move |info: &ShardInfo, db| {
            Ok(TbirdShard::new(info, Kind::Timelines, db).with_merges(timeline_merges.clone()))
        })
}

/// The shard types with every write batch sent alone, as a plain connection pool would: the
/// direct baseline of `tbird bench`.
pub fn plain_registry() -> Registry<TbirdShard> {
    Registry::default()
        .register(TWEET_SHARD, |info: &ShardInfo, db| {
            Ok(TbirdShard::new(info, Kind::Tweets, db))
        })
        .register(TIMELINE_SHARD, |info: &ShardInfo, db| {
            Ok(TbirdShard::new(info, Kind::Timelines, db))
        })
}

/// Returns the table of a shard of `kind` with table prefix `prefix`.
fn table_name(prefix: &str, kind: Kind) -> String {
    let suffix = match kind {
        Kind::Tweets => "tweets",
        Kind::Timelines => "timeline",
    };
    format!("{prefix}_{suffix}")
}

impl TbirdShard {
    /// Returns the shard for `info`; its table is `<prefix>_tweets` or `<prefix>_timeline`.
    pub fn new(info: &ShardInfo, kind: Kind, db: Database) -> Self {
        // The prefix is a validated SQL identifier, so it can be spliced into statements.
        let table = table_name(&info.id.table_prefix, kind);
        Self {
            id: info.id.clone(),
            kind,
            table,
            db,
            merges: None,
        }
    }

    /// Returns the shard with its write batches combined with other shards' on its host.
    pub fn with_merges(mut self, merges: Arc<Merges>) -> Self {
        self.merges = Some(merges);
        self
    }

    /// Returns a copy of the shard that sends its writes alone.
    fn without_merges(&self) -> Self {
        Self {
            id: self.id.clone(),
            kind: self.kind,
            table: self.table.clone(),
            db: self.db.clone(),
            merges: None,
        }
    }

    fn err(&self, err: DbError) -> ShardError {
        ShardError::from_db(&self.id, err)
    }

    fn wrong_kind(&self, what: &str) -> ShardError {
        ShardError::Query {
            shard: self.id.to_string(),
            message: format!("{what} sent to a {:?} shard", self.kind),
        }
    }

    /// Returns the tweets with these ids that exist, tombstones included, in id order.
    pub async fn get_tweets(&self, ids: &[u64]) -> Result<Vec<Tweet>, ShardError> {
        if self.kind != Kind::Tweets {
            return Err(self.wrong_kind("a tweet read"));
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; ids.len()].join(", ");
        let filter = format!("id IN ({marks})");
        let params = ids.iter().map(|&id| id as i64).collect();
        Ok(self
            .select(&filter, params, None)
            .await?
            .into_iter()
            .filter_map(Row::into_tweet)
            .collect())
    }

    /// Returns whether `other` reaches its table through this shard's pool, so one statement
    /// can read both.
    pub fn shares_pool_with(&self, other: &TbirdShard) -> bool {
        self.db.same_as(&other.db)
    }

    /// Returns the stored tweets of each `(shard, ids)` read, in order, tombstones included.
    /// Reads of tweet tables behind one MySQL pool go out as one `UNION ALL` statement, so a
    /// host pays one round trip and one parse for many readers; others run one by one.
    pub async fn get_tweets_of(
        reads: &[(&TbirdShard, &[u64])],
    ) -> Result<Vec<Vec<Tweet>>, ShardError> {
        let Some(&(first, _)) = reads.first() else {
            return Ok(Vec::new());
        };
        let together = reads.len() > 1
            && matches!(first.db, Database::Mysql { .. })
            && reads
                .iter()
                .all(|(s, _)| s.kind == Kind::Tweets && s.shares_pool_with(first));
        if !together {
            let mut found = Vec::with_capacity(reads.len());
            for (shard, ids) in reads {
                found.push(shard.get_tweets(ids).await?);
            }
            return Ok(found);
        }
        // The text protocol: the statement's shape changes with every batch, and prepared
        // statements of every shape would churn the statement cache. Ids are integers, so
        // inlining them is safe.
        let sql = union_of_reads(reads);
        let rows: Vec<mysql_async::Row> = first
            .db
            .mysql(|mut c| async move { c.query(sql).await })
            .await
            .map_err(|e| first.err(e))?;
        let unreadable = || ShardError::Query {
            shard: first.id.to_string(),
            message: "unreadable row".into(),
        };
        let mut found = vec![Vec::new(); reads.len()];
        for row in rows {
            let (part, id, user_id, text, in_reply_to, deleted): (
                usize,
                i64,
                i64,
                String,
                Option<i64>,
                bool,
            ) = mysql_async::from_row_opt(row).map_err(|_| unreadable())?;
            found.get_mut(part).ok_or_else(unreadable)?.push(Tweet {
                id: id as u64,
                user_id: user_id as u64,
                text,
                in_reply_to: in_reply_to.map(|id| id as u64),
                deleted,
            });
        }
        Ok(found)
    }

    /// Returns up to `limit` live tweet ids of `user_id`, newest first, at most `max_id`.
    pub async fn timeline(
        &self,
        user_id: u64,
        max_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, ShardError> {
        if self.kind != Kind::Timelines {
            return Err(self.wrong_kind("a timeline read"));
        }
        let max_id = max_id.map_or(i64::MAX, |id| id as i64);
        let sql = format!(
            "SELECT tweet_id FROM {} WHERE user_id = ? AND tweet_id <= ? AND deleted = 0 \
             ORDER BY tweet_id DESC LIMIT {limit}",
            self.table
        );
        let params = vec![user_id as i64, max_id];
        let ids: Vec<i64> = match &self.db {
            Database::Mysql { .. } => {
                let params: Vec<mysql_async::Value> = params.into_iter().map(Into::into).collect();
                self.db
                    .mysql(|mut c| async move { c.exec(sql, params).await })
                    .await
            }
            Database::Sqlite { .. } => {
                self.db
                    .sqlite(move |c| {
                        let mut stmt = c.prepare_cached(&sql)?;
                        let rows = stmt
                            .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?;
                        rows.collect()
                    })
                    .await
            }
        }
        .map_err(|e| self.err(e))?;
        Ok(ids.into_iter().map(|id| id as u64).collect())
    }

    fn key_column(&self) -> &'static str {
        match self.kind {
            Kind::Tweets => "id",
            Kind::Timelines => "user_id",
        }
    }

    /// The MySQL expression of a row's 64-bit digest; [`Row::digest`] computes the same.
    ///
    /// Columns are folded in as they are, without building a string (a third of the cost of
    /// `CRC32(CONCAT_WS(...))` over a chunk). The user is shifted, so equal changes of user
    /// and in_reply_to do not cancel (user 3 to 2 with in_reply_to 1 to none), and a
    /// tombstone adds the complement of its own key rather than one fixed bit, so two rows
    /// deleted on one replica only do not cancel either. Chunks fold rows with XOR, which is
    /// linear: differences still cancel when their deltas happen to be equal, no longer for
    /// such common patterns.
    fn digest_sql(&self) -> &'static str {
        match self.kind {
            Kind::Tweets => {
                "CRC32(text) ^ id ^ (user_id << 17) ^ IFNULL(in_reply_to, 0) \
                 ^ IF(deleted, ~id, 0)"
            }
            // Both key columns go through the CRC, so (1, 2) and (2, 1) differ.
            Kind::Timelines => {
                "CRC32(CONCAT_WS('|', user_id, tweet_id)) \
                 ^ IF(deleted, ~tweet_id ^ (user_id << 17), 0)"
            }
        }
    }

    fn columns(&self) -> &'static str {
        match self.kind {
            Kind::Tweets => "id, user_id, text, in_reply_to, deleted",
            Kind::Timelines => "user_id, tweet_id, deleted",
        }
    }

    fn order(&self) -> &'static str {
        match self.kind {
            Kind::Tweets => "id",
            Kind::Timelines => "user_id, tweet_id",
        }
    }

    /// Selects rows matching `filter` (with `?` placeholders for `params`) in cursor order.
    async fn select(
        &self,
        filter: &str,
        params: Vec<i64>,
        limit: Option<usize>,
    ) -> Result<Vec<Row>, ShardError> {
        let limit = limit.map_or(String::new(), |n| format!(" LIMIT {n}"));
        let sql = format!(
            "SELECT {} FROM {} WHERE {filter} ORDER BY {}{limit}",
            self.columns(),
            self.table,
            self.order()
        );
        let kind = self.kind;
        let rows = match &self.db {
            Database::Mysql { .. } => {
                let params: Vec<mysql_async::Value> = params.into_iter().map(Into::into).collect();
                let rows: Vec<mysql_async::Row> = self
                    .db
                    .mysql(|mut c| async move { c.exec(sql, params).await })
                    .await
                    .map_err(|e| self.err(e))?;
                rows.into_iter()
                    .map(|row| mysql_row(kind, row))
                    .collect::<Option<Vec<_>>>()
            }
            Database::Sqlite { .. } => Some(
                self.db
                    .sqlite(move |c| {
                        let mut stmt = c.prepare_cached(&sql)?;
                        let rows = stmt
                            .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                                sqlite_row(kind, r)
                            })?;
                        rows.collect()
                    })
                    .await
                    .map_err(|e| self.err(e))?,
            ),
        };
        rows.ok_or_else(|| ShardError::Query {
            shard: self.id.to_string(),
            message: "unreadable row".into(),
        })
    }

    /// Merges rows in one statement, as writes do.
    async fn merge(&self, rows: &[Row]) -> Result<(), ShardError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (sql, params) = self.merge_statement(rows)?;
        self.execute(sql, params).await.map(drop)
    }

    /// Returns the statement merging `rows` (at least one), with `?` placeholders.
    fn merge_statement(&self, rows: &[Row]) -> Result<(String, Vec<Param>), ShardError> {
        let mysql = matches!(self.db, Database::Mysql { .. });
        let table = &self.table;
        let (sql, params) = match self.kind {
            Kind::Tweets => {
                let values = vec!["(?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
                let update = if mysql {
                    // The comparison is written once: the first assignment keeps its outcome,
                    // on the row as stored, in a session variable the other two read. Writes
                    // go as text and MariaDB parses every statement, so its length counts.
                    let wins = Self::content_wins_sql(
                        true,
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
                } else {
                    // SQLite evaluates every assignment against the row as it was.
                    let wins = Self::content_wins_sql(
                        false,
                        ("excluded.user_id", "excluded.text", "excluded.in_reply_to"),
                        (
                            &format!("{table}.user_id"),
                            &format!("{table}.text"),
                            &format!("{table}.in_reply_to"),
                        ),
                    );
                    format!(
                        "ON CONFLICT(id) DO UPDATE SET \
                         in_reply_to = CASE WHEN {wins} THEN excluded.in_reply_to \
                         ELSE {table}.in_reply_to END, \
                         text = CASE WHEN {wins} THEN excluded.text ELSE {table}.text END, \
                         user_id = CASE WHEN {wins} THEN excluded.user_id \
                         ELSE {table}.user_id END, \
                         deleted = MAX({table}.deleted, excluded.deleted)"
                    )
                };
                let sql = format!(
                    "INSERT INTO {table} (id, hash, user_id, text, in_reply_to, deleted) VALUES {values} {update}"
                );
                let mut params = Vec::with_capacity(rows.len() * 6);
                for row in rows {
                    let t = row.tweet().map_err(|what| self.wrong_kind(what))?;
                    params.extend([
                        Param::Int(t.id as i64),
                        Param::Int(hash(t.id)),
                        Param::Int(t.user_id as i64),
                        Param::Text(t.text.clone()),
                        t.in_reply_to
                            .map_or(Param::Null, |id| Param::Int(id as i64)),
                        Param::Int(i64::from(t.deleted)),
                    ]);
                }
                (sql, params)
            }
            Kind::Timelines => {
                let values = vec!["(?, ?, ?, ?)"; rows.len()].join(", ");
                let update = if mysql {
                    "ON DUPLICATE KEY UPDATE deleted = GREATEST(deleted, VALUES(deleted))"
                        .to_owned()
                } else {
                    format!(
                        "ON CONFLICT(user_id, tweet_id) DO UPDATE SET deleted = MAX({table}.deleted, excluded.deleted)"
                    )
                };
                let sql = format!(
                    "INSERT INTO {table} (user_id, tweet_id, hash, deleted) VALUES {values} {update}"
                );
                let mut params = Vec::with_capacity(rows.len() * 4);
                for row in rows {
                    let (user_id, tweet_id, deleted) =
                        row.timeline().map_err(|what| self.wrong_kind(what))?;
                    params.extend([
                        Param::Int(user_id as i64),
                        Param::Int(tweet_id as i64),
                        Param::Int(hash(user_id)),
                        Param::Int(i64::from(deleted)),
                    ]);
                }
                (sql, params)
            }
        };
        Ok((sql, params))
    }

    /// Returns the SQL condition under which the incoming content (`new`: user, text and
    /// reply columns) replaces the stored one (`old`), as [`Tweet::merge`] decides: the stored
    /// row has no content (a tombstone that came first), or both have some and the incoming
    /// `(user_id, text, in_reply_to)` is smaller. Text compares as bytes on both backends: on
    /// MySQL through a cast to binary, since the column's `utf8mb4_bin` collation ignores
    /// trailing spaces (PAD SPACE) and would call `"a"` and `"a "` equal; SQLite compares
    /// text with memcmp. No reply is -1, below every id.
    fn content_wins_sql(mysql: bool, new: (&str, &str, &str), old: (&str, &str, &str)) -> String {
        // SQLite has no BINARY type; a BLOB compares with memcmp, as its text does.
        let bytes = if mysql { "BINARY" } else { "BLOB" };
        let text = |column: &str| format!("CAST({column} AS {bytes})");
        format!(
            "({old_user} = 0 OR ({new_user} <> 0 AND \
             ({new_user}, {new_text}, IFNULL({new_reply}, -1)) < \
             ({old_user}, {old_text}, IFNULL({old_reply}, -1))))",
            new_user = new.0,
            new_text = text(new.1),
            new_reply = new.2,
            old_user = old.0,
            old_text = text(old.1),
            old_reply = old.2,
        )
    }

    /// Returns whether the table has its index on the routing hash.
    async fn has_hash_index(&self) -> Result<bool, ShardError> {
        let sql = match self.db {
            Database::Mysql { .. } => {
                "SELECT COUNT(*) FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ?"
            }
            Database::Sqlite { .. } => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name = ?"
            }
        };
        let params = vec![
            Param::Text(self.table.clone()),
            Param::Text(format!("{}_hash", self.table)),
        ];
        let found = self
            .db
            .query_ints(sql.into(), params)
            .await
            .map_err(|e| self.err(e))?;
        Ok(found.first().and_then(|row| row[0]).unwrap_or(0) > 0)
    }

    /// Merges rows in statements of up to [`MERGE_ROWS`] rows.
    async fn merge_all(&self, rows: &[Row]) -> Result<(), ShardError> {
        for chunk in rows.chunks(MERGE_ROWS) {
            self.merge(chunk).await?;
        }
        Ok(())
    }

    /// Writes rows as a copy does, on MySQL: `LOAD DATA` puts in the rows whose key is new,
    /// at about half the server's cost of a multi-row `INSERT ... ON DUPLICATE KEY UPDATE`
    /// (measured on MariaDB 10.11); if any key was already there (a live write landed first),
    /// the rows are merged after it, so the result is the merge's.
    async fn load(&self, rows: &[Row]) -> Result<(), ShardError> {
        let (columns, data) = match self.kind {
            Kind::Tweets => (
                "id, hash, user_id, text, in_reply_to, deleted",
                tweets_tsv(rows),
            ),
            Kind::Timelines => ("user_id, tweet_id, hash, deleted", timelines_tsv(rows)),
        };
        let data = data.map_err(|what| self.wrong_kind(what))?;
        // The file's format spelled out, as the encoders write it.
        let sql = format!(
            "LOAD DATA LOCAL INFILE 'rows' IGNORE INTO TABLE {} CHARACTER SET utf8mb4 \
             FIELDS TERMINATED BY '\\t' ENCLOSED BY '' ESCAPED BY '\\\\' \
             LINES TERMINATED BY '\\n' ({columns})",
            self.table
        );
        let loaded = self
            .db
            .load_data(sql, data, rows.len() as u64)
            .await
            .map_err(|e| self.err(e))?;
        if loaded
            == (db::Loaded::Committed {
                inserted: rows.len() as u64,
            })
        {
            return Ok(());
        }
        if loaded == db::Loaded::Refused {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    shard = %self.id,
                    "the MySQL server refuses LOAD DATA LOCAL (local_infile is off): \
                     copies fall back to multi-row INSERTs, about half as fast"
                );
            });
        }
        self.merge_all(rows).await
    }

    async fn execute(&self, sql: String, params: Vec<Param>) -> Result<u64, ShardError> {
        self.db.execute(sql, params).await.map_err(|e| self.err(e))
    }
}

/// Rows per multi-row `INSERT`: 6,000 placeholders for tweets, well inside MySQL's 65,535
/// and its default packet size.
const MERGE_ROWS: usize = 1_000;

/// Rows per `LOAD DATA` statement, and the fewest that go that way rather than as a merge.
const LOAD_ROWS: usize = 10_000;
const LOAD_MIN_ROWS: usize = 100;

/// Encodes tweet rows for `LOAD DATA` in its default format: tab-separated fields, one line
/// per row, `\N` for NULL, and backslash escapes in the text.
fn tweets_tsv(rows: &[Row]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(rows.len() * 160);
    for row in rows {
        let t = row.tweet()?;
        push_int(&mut out, t.id as i64, b'\t');
        push_int(&mut out, hash(t.id), b'\t');
        push_int(&mut out, t.user_id as i64, b'\t');
        push_escaped(&mut out, &t.text);
        out.push(b'\t');
        match t.in_reply_to {
            Some(id) => push_int(&mut out, id as i64, b'\t'),
            None => out.extend_from_slice(b"\\N\t"),
        }
        push_int(&mut out, i64::from(t.deleted), b'\n');
    }
    Ok(out)
}

/// Encodes timeline rows for `LOAD DATA` (see [`tweets_tsv`]).
fn timelines_tsv(rows: &[Row]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(rows.len() * 48);
    for row in rows {
        let (user_id, tweet_id, deleted) = row.timeline()?;
        push_int(&mut out, user_id as i64, b'\t');
        push_int(&mut out, tweet_id as i64, b'\t');
        push_int(&mut out, hash(user_id), b'\t');
        push_int(&mut out, i64::from(deleted), b'\n');
    }
    Ok(out)
}

/// Returns one statement reading every `(shard, ids)` pair, each row tagged with its pair's
/// position.
fn union_of_reads(reads: &[(&TbirdShard, &[u64])]) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(reads.len() * 96);
    for (part, (shard, ids)) in reads.iter().enumerate() {
        if part > 0 {
            sql.push_str(" UNION ALL ");
        }
        // Writing into a String cannot fail.
        let _ = write!(
            sql,
            "SELECT {part}, {} FROM {} WHERE id IN (",
            shard.columns(),
            shard.table
        );
        for (i, id) in ids.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(sql, "{sep}{}", *id as i64);
        }
        if ids.is_empty() {
            // `IN ()` is a syntax error; `IN (NULL)` matches nothing.
            sql.push_str("NULL");
        }
        sql.push(')');
    }
    sql
}

fn push_int(out: &mut Vec<u8>, value: i64, then: u8) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
    out.push(then);
}

/// Appends `text` with the characters `LOAD DATA` would read as syntax escaped.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            _ => out.push(byte),
        }
    }
}

impl Row {
    /// Returns the tweet of a tweet row, or what the row is instead.
    fn tweet(&self) -> Result<&Tweet, &'static str> {
        match self {
            Row::Tweet(tweet) => Ok(tweet),
            Row::Timeline { .. } => Err("a timeline row"),
        }
    }

    /// Returns a timeline row's user, tweet and deleted flag, or what the row is instead.
    fn timeline(&self) -> Result<(u64, u64, bool), &'static str> {
        match *self {
            Row::Timeline {
                user_id,
                tweet_id,
                deleted,
            } => Ok((user_id, tweet_id, deleted)),
            Row::Tweet(_) => Err("a tweet row"),
        }
    }

    fn into_tweet(self) -> Option<Tweet> {
        match self {
            Row::Tweet(tweet) => Some(tweet),
            Row::Timeline { .. } => None,
        }
    }

    /// Returns the row's digest as MySQL's `checksum` query computes it (see
    /// [`TbirdShard::digest_sql`]), so both backends give the same chunk digest.
    fn digest(&self) -> u64 {
        let crc = |text: &str| u64::from(crc32fast::hash(text.as_bytes()));
        match self {
            Row::Tweet(t) => {
                let deleted = if t.deleted { !t.id } else { 0 };
                crc(&t.text) ^ t.id ^ (t.user_id << 17) ^ t.in_reply_to.unwrap_or(0) ^ deleted
            }
            Row::Timeline {
                user_id,
                tweet_id,
                deleted,
            } => {
                let deleted = if *deleted {
                    !tweet_id ^ (user_id << 17)
                } else {
                    0
                };
                crc(&format!("{user_id}|{tweet_id}")) ^ deleted
            }
        }
    }
}

/// Narrows the filter to rows whose hash is in `hashes`, when given.
fn push_hash_filter(filter: &mut String, params: &mut Vec<i64>, hashes: Option<Range<i64>>) {
    if let Some(range) = hashes {
        filter.push_str(" AND hash >= ? AND hash < ?");
        params.extend([range.start, range.end]);
    }
}

fn int_params(params: Vec<i64>) -> Vec<Param> {
    params.into_iter().map(Param::Int).collect()
}

fn mysql_row(kind: Kind, row: mysql_async::Row) -> Option<Row> {
    match kind {
        Kind::Tweets => {
            let (id, user_id, text, in_reply_to, deleted): (i64, i64, String, Option<i64>, bool) =
                mysql_async::from_row_opt(row).ok()?;
            Some(Row::Tweet(Tweet {
                id: id as u64,
                user_id: user_id as u64,
                text,
                in_reply_to: in_reply_to.map(|id| id as u64),
                deleted,
            }))
        }
        Kind::Timelines => {
            let (user_id, tweet_id, deleted): (i64, i64, bool) =
                mysql_async::from_row_opt(row).ok()?;
            Some(Row::Timeline {
                user_id: user_id as u64,
                tweet_id: tweet_id as u64,
                deleted,
            })
        }
    }
}

fn sqlite_row(kind: Kind, r: &rusqlite::Row<'_>) -> Result<Row, rusqlite::Error> {
    Ok(match kind {
        Kind::Tweets => Row::Tweet(Tweet {
            id: r.get::<_, i64>(0)? as u64,
            user_id: r.get::<_, i64>(1)? as u64,
            text: r.get(2)?,
            in_reply_to: r.get::<_, Option<i64>>(3)?.map(|id| id as u64),
            deleted: r.get(4)?,
        }),
        Kind::Timelines => Row::Timeline {
            user_id: r.get::<_, i64>(0)? as u64,
            tweet_id: r.get::<_, i64>(1)? as u64,
            deleted: r.get(2)?,
        },
    })
}

impl PhysicalShard for TbirdShard {
    type Row = Row;
    type Cursor = (u64, u64);

    async fn materialize(&self) -> Result<(), ShardError> {
        let table = &self.table;
        let mysql = matches!(self.db, Database::Mysql { .. });
        let sql = match (self.kind, mysql) {
            (Kind::Tweets, true) => format!(
                "CREATE TABLE IF NOT EXISTS {table} (id BIGINT NOT NULL PRIMARY KEY, \
                 hash BIGINT NOT NULL, user_id BIGINT NOT NULL, \
                 text VARCHAR(280) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 in_reply_to BIGINT NULL, deleted BOOLEAN NOT NULL, KEY {table}_hash (hash)) \
                 ENGINE=InnoDB"
            ),
            (Kind::Timelines, true) => format!(
                "CREATE TABLE IF NOT EXISTS {table} (user_id BIGINT NOT NULL, \
                 tweet_id BIGINT NOT NULL, hash BIGINT NOT NULL, deleted BOOLEAN NOT NULL, \
                 PRIMARY KEY (user_id, tweet_id), KEY {table}_hash (hash)) ENGINE=InnoDB"
            ),
            (Kind::Tweets, false) => format!(
                "CREATE TABLE IF NOT EXISTS {table} (id INTEGER NOT NULL PRIMARY KEY, \
                 hash INTEGER NOT NULL, user_id INTEGER NOT NULL, text TEXT NOT NULL, \
                 in_reply_to INTEGER, deleted INTEGER NOT NULL); \
                 CREATE INDEX IF NOT EXISTS {table}_hash ON {table} (hash)"
            ),
            (Kind::Timelines, false) => format!(
                "CREATE TABLE IF NOT EXISTS {table} (user_id INTEGER NOT NULL, \
                 tweet_id INTEGER NOT NULL, hash INTEGER NOT NULL, deleted INTEGER NOT NULL, \
                 PRIMARY KEY (user_id, tweet_id)); \
                 CREATE INDEX IF NOT EXISTS {table}_hash ON {table} (hash)"
            ),
        };
        self.db.execute_batch(sql).await.map_err(|e| self.err(e))
    }

    fn key_of(row: &Row) -> u64 {
        match row {
            Row::Tweet(tweet) => tweet.id,
            Row::Timeline { user_id, .. } => *user_id,
        }
    }

    fn cursor_of(row: &Row) -> (u64, u64) {
        match row {
            Row::Tweet(tweet) => (tweet.id, 0),
            Row::Timeline {
                user_id, tweet_id, ..
            } => (*user_id, *tweet_id),
        }
    }

    fn cursor_past(key: u64) -> (u64, u64) {
        // Tweets page by id alone; timelines by (user, tweet), and tweet ids are below 2^63.
        (key, i64::MAX as u64)
    }

    async fn read_page(
        &self,
        after: Option<(u64, u64)>,
        limit: usize,
        hashes: Option<Range<i64>>,
    ) -> Result<Vec<Row>, ShardError> {
        let (key, sub) = after.map_or((-1, -1), |(k, s)| (k as i64, s as i64));
        let (mut filter, mut params) = match self.kind {
            Kind::Tweets => ("id > ?".to_owned(), vec![key]),
            Kind::Timelines => (
                "(user_id > ? OR (user_id = ? AND tweet_id > ?))".to_owned(),
                vec![key, key, sub],
            ),
        };
        push_hash_filter(&mut filter, &mut params, hashes);
        self.select(&filter, params, Some(limit)).await
    }

    async fn write_rows(&self, rows: &[Row]) -> Result<(), ShardError> {
        if matches!(self.db, Database::Mysql { .. }) && rows.len() >= LOAD_MIN_ROWS {
            for chunk in rows.chunks(LOAD_ROWS) {
                self.load(chunk).await?;
            }
            return Ok(());
        }
        self.merge_all(rows).await
    }

    async fn chunk_end(
        &self,
        after: Option<u64>,
        rows: usize,
        hashes: Option<Range<i64>>,
    ) -> Result<Option<u64>, ShardError> {
        let key = self.key_column();
        let mut filter = format!("{key} > ?");
        let mut params = vec![after.map_or(-1, |k| k as i64)];
        push_hash_filter(&mut filter, &mut params, hashes);
        let sql = format!(
            "SELECT {key} FROM {} WHERE {filter} ORDER BY {} LIMIT 1 OFFSET {}",
            self.table,
            self.order(),
            rows.max(1) - 1
        );
        let found = self
            .db
            .query_ints(sql, int_params(params))
            .await
            .map_err(|e| self.err(e))?;
        Ok(found.first().and_then(|row| row[0]).map(|k| k as u64))
    }

    async fn checksum(
        &self,
        keys: RangeInclusive<u64>,
        hashes: Option<Range<i64>>,
    ) -> Result<Checksum, ShardError> {
        let key = self.key_column();
        let mut filter = format!("{key} >= ? AND {key} <= ?");
        let mut params = vec![*keys.start() as i64, *keys.end() as i64];
        push_hash_filter(&mut filter, &mut params, hashes);
        if let Database::Sqlite { .. } = self.db {
            // SQLite has no CRC32: fold the same per-row digests here instead.
            let rows = self.select(&filter, params, None).await?;
            let digest = rows.iter().map(Row::digest).fold(0, |a, d| a ^ d);
            return Ok(Checksum {
                rows: rows.len() as u64,
                digest,
            });
        }
        // Folded in the database, so a diff ships two integers per chunk, not its rows. Rows
        // have distinct keys, so XOR folds no row with itself; the count catches a missing
        // row whose digest is 0. CAST keeps all 64 bits in a signed column.
        let sql = format!(
            "SELECT COUNT(*), CAST(BIT_XOR({}) AS SIGNED) FROM {} WHERE {filter}",
            self.digest_sql(),
            self.table
        );
        let found = self
            .db
            .query_ints(sql, int_params(params))
            .await
            .map_err(|e| self.err(e))?;
        let row = found.first().map(Vec::as_slice).unwrap_or_default();
        let int = |i: usize| row.get(i).copied().flatten().unwrap_or(0) as u64;
        Ok(Checksum {
            rows: int(0),
            digest: int(1),
        })
    }

    async fn count_rows(&self, hashes: Option<Range<i64>>) -> Result<u64, ShardError> {
        let (mut filter, mut params) = ("1 = 1".to_owned(), Vec::new());
        push_hash_filter(&mut filter, &mut params, hashes);
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {filter}", self.table);
        let found = self
            .db
            .query_ints(sql, int_params(params))
            .await
            .map_err(|e| self.err(e))?;
        Ok(found.first().and_then(|row| row[0]).unwrap_or(0) as u64)
    }

    async fn defer_indexes(&self) -> Result<(), ShardError> {
        if !self.has_hash_index().await? {
            return Ok(());
        }
        let table = &self.table;
        let sql = match self.db {
            // Dropping a secondary index only changes metadata: it does not wait on the rows.
            Database::Mysql { .. } => format!("ALTER TABLE {table} DROP INDEX {table}_hash"),
            Database::Sqlite { .. } => format!("DROP INDEX IF EXISTS {table}_hash"),
        };
        self.db.execute_batch(sql).await.map_err(|e| self.err(e))
    }

    async fn build_indexes(&self, rows: u64) -> Result<(), ShardError> {
        if self.has_hash_index().await? {
            return Ok(());
        }
        let table = &self.table;
        let sql = match self.db {
            // Built online: writes go on while it sorts (the statement fails rather than
            // lock them out if the server cannot).
            Database::Mysql { .. } => format!(
                "ALTER TABLE {table} ADD INDEX {table}_hash (hash), ALGORITHM=INPLACE, LOCK=NONE"
            ),
            Database::Sqlite { .. } => {
                format!("CREATE INDEX IF NOT EXISTS {table}_hash ON {table} (hash)")
            }
        };
        // MariaDB built it at about 1M rows/s on the 2-core bench machine; the deadline
        // allows 20k rows/s and a minute more.
        let timeout = self.db.timeout() + Duration::from_secs(60 + rows / 20_000);
        self.db
            .with_timeout(timeout)
            .execute_batch(sql)
            .await
            .map_err(|e| self.err(e))
    }

    async fn fence(&self, prefix: &str) -> Result<(), ShardError> {
        let to = table_name(prefix, self.kind);
        self.db
            .rename_table(&self.table, &to)
            .await
            .map_err(|e| self.err(e))?;
        if let Database::Sqlite { .. } = self.db {
            // SQLite's index names are global and follow the table: a new table of the old
            // name would otherwise find its index name taken and go without.
            let sql = format!("DROP INDEX IF EXISTS {}_hash", self.table);
            self.db.execute_batch(sql).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    async fn drop_tables(&self) -> Result<(), ShardError> {
        let sql = format!("DROP TABLE IF EXISTS {}", self.table);
        self.db.execute_batch(sql).await.map_err(|e| self.err(e))
    }

    async fn delete_hash_range(&self, hashes: Range<i64>) -> Result<u64, ShardError> {
        let sql = format!("DELETE FROM {} WHERE hash >= ? AND hash < ?", self.table);
        self.execute(sql, vec![Param::Int(hashes.start), Param::Int(hashes.end)])
            .await
    }
}

impl TbirdWrite {
    /// Returns the row this write merges in.
    fn row(&self) -> Row {
        match self {
            TbirdWrite::PutTweet(tweet) => Row::Tweet(tweet.clone()),
            TbirdWrite::DeleteTweet { id } => Row::Tweet(Tweet {
                id: *id,
                user_id: 0,
                text: String::new(),
                in_reply_to: None,
                deleted: true,
            }),
            TbirdWrite::AddToTimeline { user_id, tweet_id } => Row::Timeline {
                user_id: *user_id,
                tweet_id: *tweet_id,
                deleted: false,
            },
            TbirdWrite::RemoveFromTimeline { user_id, tweet_id } => Row::Timeline {
                user_id: *user_id,
                tweet_id: *tweet_id,
                deleted: true,
            },
        }
    }
}

impl WriteOp<TbirdShard> for TbirdWrite {
    const JOB_TYPE: &'static str = "tbird.write";

    async fn apply(&self, shard: &TbirdShard) -> Result<(), ShardError> {
        shard.merge(&[self.row()]).await
    }

    /// Merges the whole batch in one statement: a leaf holds one kind of row, and rows of one
    /// key merge in any order (a tombstone and its tweet in one batch still end deleted).
    async fn apply_batch(ops: &[&Self], shard: &TbirdShard) -> Result<(), ShardError> {
        let mut rows: Vec<Row> = ops.iter().map(|op| op.row()).collect();
        // Concurrent batches lock their rows in key order, so they cannot deadlock each other.
        rows.sort_by_key(TbirdShard::cursor_of);
        match (&shard.merges, &shard.db) {
            (Some(merges), Database::Mysql { .. }) => merges.merge(shard, rows).await,
            _ => shard.merge(&rows).await,
        }
    }
}

/// Write batches combined per host: the coalescer's batches for different tables of one MySQL
/// host, arriving while the host's statement slots are busy, go out as one multi-statement
/// round trip ([`crate::hosts`]). Each `INSERT` still commits on its own, so a batch that fails
/// part-way leaves no transaction open; writes repeat safely, so the parts of a batch the host
/// refused are retried one by one, and one broken table fails only its own writes.
pub struct Merges {
    queues: HostQueues<Merge>,
}

impl std::fmt::Debug for Merges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merges").finish_non_exhaustive()
    }
}

/// The most rows one combined round trip carries (a few MB of statement at most).
const MAX_COMBINED_ROWS: usize = 1_000;

/// One coalesced write batch waiting to be combined with others on its host.
struct Merge {
    shard: TbirdShard,
    rows: Vec<Row>,
}

impl Merges {
    /// Returns queues running at most `statements_per_host` round trips at once on a host.
    pub fn new(statements_per_host: usize) -> Self {
        Self {
            queues: HostQueues::new(statements_per_host, MAX_COMBINED_ROWS),
        }
    }

    async fn merge(&self, shard: &TbirdShard, rows: Vec<Row>) -> Result<(), ShardError> {
        let merge = Merge {
            shard: shard.without_merges(),
            rows,
        };
        // The caller (the leaf's coalescer) holds the deadline.
        match self.queues.submit(&shard.id.hostname, merge).await {
            Some(result) => result,
            None => Err(ShardError::Query {
                shard: shard.id.to_string(),
                message: "the write panicked".into(),
            }),
        }
    }
}

impl HostJob for Merge {
    type Output = Result<(), ShardError>;

    fn weight(&self) -> usize {
        self.rows.len()
    }

    async fn run(batch: Vec<Queued<Self>>) {
        // Batches through another pool (a host whose URL just changed) go on their own.
        let first = batch[0].job.shard.db.clone();
        let (together, apart): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|q| q.job.shard.db.same_as(&first));
        combine(together).await;
        for queued in apart {
            merge_alone(queued).await;
        }
    }
}

/// Merges one coalesced batch in its own statement and answers its caller.
async fn merge_alone(queued: Queued<Merge>) {
    let result = queued.job.shard.merge(&queued.job.rows).await;
    queued.answer(result);
}

/// Sends the merges of `batch` (all through one pool) in one round trip and answers each.
async fn combine(batch: Vec<Queued<Merge>>) {
    if batch.len() == 1 {
        for queued in batch {
            merge_alone(queued).await;
        }
        return;
    }
    let statements: Result<Vec<String>, ShardError> = batch
        .iter()
        .map(|q| {
            let (sql, params) = q.job.shard.merge_statement(&q.job.rows)?;
            Ok(inline(&sql, params))
        })
        .collect();
    let first = &batch[0].job.shard;
    let result = match statements {
        Ok(statements) => first
            .db
            .execute_batch(statements.join(";\n"))
            .await
            .map_err(|e| first.err(e)),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => batch.into_iter().for_each(|q| q.answer(Ok(()))),
        // The host answered: find which table refused by merging each batch alone.
        Err(ShardError::Query { .. }) => {
            for queued in batch {
                merge_alone(queued).await;
            }
        }
        Err(err) => {
            for queued in batch {
                let shard = queued.job.shard.id.to_string();
                queued.answer(Err(err.clone().on_shard(&shard)));
            }
        }
    }
}

/// Returns `sql` with each `?` replaced by its parameter as a literal. Text goes as a hex
/// literal in utf8mb4, which needs no escaping whatever the server's SQL mode.
fn inline(sql: &str, params: Vec<Param>) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(sql.len() + params.len() * 24);
    let mut params = params.into_iter();
    for (i, piece) in sql.split('?').enumerate() {
        if i > 0 {
            // Writing into a String cannot fail.
            let _ = match params.next() {
                Some(Param::Int(n)) => write!(out, "{n}"),
                Some(Param::Text(text)) => {
                    out.push_str("_utf8mb4 X'");
                    for byte in text.as_bytes() {
                        let _ = write!(out, "{byte:02x}");
                    }
                    out.push('\'');
                    Ok(())
                }
                Some(Param::Null) | None => {
                    out.push_str("NULL");
                    Ok(())
                }
            };
        }
        out.push_str(piece);
    }
    out
}
