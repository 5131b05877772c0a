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
//!
//! Layout: this module holds the shard and what every backend shares; [`backend`] is what
//! differs between databases, chosen once per shard, with [`mysql`] and [`sqlite`] (schema,
//! merge clause, index statements, row reading; MySQL adds the round-trip savings below).
//! [`rows`] encodes rows as statement values and decodes them from columns. MySQL's savings
//! each have a file: [`load`] (bulk copies through `LOAD DATA`), [`union`] (reads of several
//! tables in one `UNION ALL`), [`merges`] (write batches of several tables in one round trip,
//! with parameters inlined by [`inline`]).

mod backend;
mod inline;
mod load;
mod merges;
mod mysql;
mod rows;
mod sqlite;
mod union;

use std::{
    ops::{Range, RangeInclusive},
    sync::Arc,
    time::Duration,
};

use db::{Database, DbError, Param};
use gizzard::{
    nameserver::{ShardId, ShardInfo},
    shards::{Checksum, PhysicalShard, Registry, ShardError, WriteOp},
};
use serde::{Deserialize, Serialize};

use self::backend::Backend;
pub use self::merges::Merges;
use crate::tweet::Tweet;

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
    /// What this shard's database does its own way.
    backend: &'static dyn Backend,
    /// Where write batches to this shard's host meet; `None` sends each alone.
    merges: Option<Arc<Merges>>,
}

/// A page of one user's timeline to read: up to `limit` tweet ids, newest first, at most
/// `max_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub user_id: u64,
    pub max_id: Option<u64>,
    pub limit: usize,
}

impl Page {
    pub fn new(user_id: u64, max_id: Option<u64>, limit: usize) -> Self {
        Self {
            user_id,
            max_id,
            limit,
        }
    }
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

/// Rows per multi-row `INSERT`: 6,000 placeholders for tweets, well inside MySQL's 65,535
/// and its default packet size.
const MERGE_ROWS: usize = 1_000;

impl TbirdShard {
    /// Returns the shard for `info`; its table is `<prefix>_tweets` or `<prefix>_timeline`.
    pub fn new(info: &ShardInfo, kind: Kind, db: Database) -> Self {
        // The prefix is a validated SQL identifier, so it can be spliced into statements.
        let table = table_name(&info.id.table_prefix, kind);
        Self {
            id: info.id.clone(),
            kind,
            table,
            backend: backend::of(&db),
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
            backend: self.backend,
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

    /// Refuses rows of the other table.
    fn check_kind(&self, rows: &[Row]) -> Result<(), ShardError> {
        match rows.iter().find(|row| row.kind() != self.kind) {
            Some(row) => Err(self.wrong_kind(row.what())),
            None => Ok(()),
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
        match reads.first() {
            Some((first, _)) => first.backend.read_tweets(reads).await,
            None => Ok(Vec::new()),
        }
    }

    /// Returns the stored tweets of each read, one statement per read.
    async fn get_tweets_alone(
        reads: &[(&TbirdShard, &[u64])],
    ) -> Result<Vec<Vec<Tweet>>, ShardError> {
        let mut found = Vec::with_capacity(reads.len());
        for (shard, ids) in reads {
            found.push(shard.get_tweets(ids).await?);
        }
        Ok(found)
    }

    /// Returns up to `page.limit` live tweet ids of `page.user_id`, newest first, at most
    /// `page.max_id`.
    pub async fn timeline(&self, page: &Page) -> Result<Vec<u64>, ShardError> {
        if self.kind != Kind::Timelines {
            return Err(self.wrong_kind("a timeline read"));
        }
        let sql = format!(
            "SELECT tweet_id FROM {} WHERE user_id = ? AND tweet_id <= ? AND deleted = 0 \
             ORDER BY tweet_id DESC LIMIT {}",
            self.table, page.limit
        );
        let max_id = self.max_id_bound(page)?;
        let found = self
            .db
            .query_ints(sql, int_params(vec![page.user_id as i64, max_id]))
            .await
            .map_err(|e| self.err(e))?;
        Ok(found
            .into_iter()
            .filter_map(|row| row.first().copied().flatten())
            .map(|id| id as u64)
            .collect())
    }

    /// Returns the largest tweet id `page` reads, as stored (a signed BIGINT).
    fn max_id_bound(&self, page: &Page) -> Result<i64, ShardError> {
        match page.max_id {
            None => Ok(i64::MAX),
            // Cast, an id past 2^63 would turn negative and silently match nothing.
            Some(id) => i64::try_from(id).map_err(|_| ShardError::Query {
                shard: self.id.to_string(),
                message: format!("max_id {id} is out of range: tweet ids are below 2^63"),
            }),
        }
    }

    /// Returns the timeline page of each `(shard, page)` read, in order. Reads of timeline
    /// tables behind one MySQL pool go out as one `UNION ALL` statement, as tweet reads do
    /// ([`TbirdShard::get_tweets_of`]); others run one by one.
    pub async fn timelines_of(reads: &[(&TbirdShard, &Page)]) -> Result<Vec<Vec<u64>>, ShardError> {
        match reads.first() {
            Some((first, _)) => first.backend.read_timelines(reads).await,
            None => Ok(Vec::new()),
        }
    }

    /// Returns the timeline page of each read, one statement per read.
    async fn timelines_alone(reads: &[(&TbirdShard, &Page)]) -> Result<Vec<Vec<u64>>, ShardError> {
        let mut found = Vec::with_capacity(reads.len());
        for (shard, page) in reads {
            found.push(shard.timeline(page).await?);
        }
        Ok(found)
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
            self.kind.read_columns(),
            self.table,
            self.kind.order()
        );
        self.backend
            .select(&self.db, self.kind, sql, params)
            .await
            .map_err(|e| self.err(e))
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
        self.check_kind(rows)?;
        let columns = self.kind.written_columns();
        let row = format!("({})", vec!["?"; columns.len()].join(", "));
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {} {}",
            self.table,
            columns.join(", "),
            vec![row; rows.len()].join(", "),
            self.backend.merge_clause(self.kind, &self.table)
        );
        let mut params = Vec::with_capacity(rows.len() * columns.len());
        for row in rows {
            row.push_values(&mut params);
        }
        Ok((sql, params))
    }

    /// Merges rows in statements of up to [`MERGE_ROWS`] rows.
    async fn merge_all(&self, rows: &[Row]) -> Result<(), ShardError> {
        for chunk in rows.chunks(MERGE_ROWS) {
            self.merge(chunk).await?;
        }
        Ok(())
    }

    /// Returns whether the table has its index on the routing hash.
    async fn has_hash_index(&self) -> Result<bool, ShardError> {
        let params = vec![
            Param::Text(self.table.clone()),
            Param::Text(format!("{}_hash", self.table)),
        ];
        let found = self
            .db
            .query_ints(self.backend.index_count_sql().into(), params)
            .await
            .map_err(|e| self.err(e))?;
        Ok(found.first().and_then(|row| row[0]).unwrap_or(0) > 0)
    }

    /// Returns the checksum of the rows matching `filter`, each row's digest folded here.
    async fn checksum_of_rows(
        &self,
        filter: String,
        params: Vec<i64>,
    ) -> Result<Checksum, ShardError> {
        let rows = self.select(&filter, params, None).await?;
        let digest = rows.iter().map(Row::digest).fold(0, |a, d| a ^ d);
        Ok(Checksum {
            rows: rows.len() as u64,
            digest,
        })
    }

    async fn execute(&self, sql: String, params: Vec<Param>) -> Result<u64, ShardError> {
        self.db.execute(sql, params).await.map_err(|e| self.err(e))
    }

    async fn execute_batch(&self, sql: String) -> Result<(), ShardError> {
        self.db.execute_batch(sql).await.map_err(|e| self.err(e))
    }
}

/// Returns the SQL condition under which the incoming content (`new`: user, text and reply
/// columns) replaces the stored one (`old`), as [`Tweet::merge`] decides: the stored row has
/// no content (a tombstone that came first), or both have some and the incoming
/// `(user_id, text, in_reply_to)` is smaller. Text compares as bytes, cast to the backend's
/// `bytes` type. No reply is -1, below every id.
fn content_wins_sql(bytes: &str, new: (&str, &str, &str), old: (&str, &str, &str)) -> String {
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

impl TbirdWrite {
    /// Returns the row this write merges in.
    pub fn row(&self) -> Row {
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
        shard.backend.merge_batch(shard, rows).await
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

impl PhysicalShard for TbirdShard {
    type Row = Row;
    type Cursor = (u64, u64);

    async fn materialize(&self) -> Result<(), ShardError> {
        self.execute_batch(self.backend.schema(self.kind, &self.table))
            .await
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
        self.backend.write_copy(self, rows).await
    }

    async fn chunk_end(
        &self,
        after: Option<u64>,
        rows: usize,
        hashes: Option<Range<i64>>,
    ) -> Result<Option<u64>, ShardError> {
        let key = self.kind.key_column();
        let mut filter = format!("{key} > ?");
        let mut params = vec![after.map_or(-1, |k| k as i64)];
        push_hash_filter(&mut filter, &mut params, hashes);
        let sql = format!(
            "SELECT {key} FROM {} WHERE {filter} ORDER BY {} LIMIT 1 OFFSET {}",
            self.table,
            self.kind.order(),
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
        let key = self.kind.key_column();
        let mut filter = format!("{key} >= ? AND {key} <= ?");
        let mut params = vec![*keys.start() as i64, *keys.end() as i64];
        push_hash_filter(&mut filter, &mut params, hashes);
        self.backend.checksum(self, filter, params).await
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
        self.execute_batch(self.backend.drop_hash_index(&self.table))
            .await
    }

    async fn build_indexes(&self, rows: u64) -> Result<(), ShardError> {
        if self.has_hash_index().await? {
            return Ok(());
        }
        let sql = self.backend.add_hash_index(&self.table);
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
        if let Some(sql) = self.backend.after_rename(&self.table) {
            self.execute_batch(sql).await?;
        }
        Ok(())
    }

    async fn drop_tables(&self) -> Result<(), ShardError> {
        self.execute_batch(format!("DROP TABLE IF EXISTS {}", self.table))
            .await
    }

    async fn delete_hash_range(&self, hashes: Range<i64>) -> Result<u64, ShardError> {
        let sql = format!("DELETE FROM {} WHERE hash >= ? AND hash < ?", self.table);
        self.execute(sql, vec![Param::Int(hashes.start), Param::Int(hashes.end)])
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a shard on a MySQL pool that never connects: for what a shard decides before
    /// it sends anything.
    pub(super) async fn mysql_shard(kind: Kind, prefix: &str) -> TbirdShard {
        let db = Database::open_lazy("mysql://nobody@127.0.0.1:9/none", Duration::from_secs(1))
            .await
            .expect("a lazy pool");
        let info = ShardInfo {
            id: format!("h/{prefix}").parse().expect("id"),
            class_name: String::new(),
            busy: false,
        };
        TbirdShard::new(&info, kind, db)
    }

    #[tokio::test]
    async fn a_max_id_past_2_63_is_refused_by_name() {
        let shard = mysql_shard(Kind::Timelines, "t_0000").await;
        let err = shard
            .timeline(&Page::new(1, Some(1 << 63), 10))
            .await
            .expect_err("out of range");
        assert_eq!(
            err.to_string(),
            format!(
                "shard h/t_0000: max_id {} is out of range: tweet ids are below 2^63",
                1u64 << 63
            )
        );
    }
}
