//! SQLite's way with T-Bird's tables: `ON CONFLICT` merges, and index names global to the
//! database file. It is in the process, so there are no round trips to save: every other
//! operation takes [`Backend`]'s plain way.

use db::{Database, DbError};
use futures::{FutureExt, future::BoxFuture};

use super::{Kind, Row, backend::Backend, content_wins_sql};

#[derive(Debug)]
pub(super) struct Sqlite;

impl Backend for Sqlite {
    fn schema(&self, kind: Kind, table: &str) -> String {
        match kind {
            Kind::Tweets => format!(
                "CREATE TABLE IF NOT EXISTS {table} (id INTEGER NOT NULL PRIMARY KEY, \
                 hash INTEGER NOT NULL, user_id INTEGER NOT NULL, text TEXT NOT NULL, \
                 in_reply_to INTEGER, deleted INTEGER NOT NULL); \
                 CREATE INDEX IF NOT EXISTS {table}_hash ON {table} (hash)"
            ),
            Kind::Timelines => format!(
                "CREATE TABLE IF NOT EXISTS {table} (user_id INTEGER NOT NULL, \
                 tweet_id INTEGER NOT NULL, hash INTEGER NOT NULL, deleted INTEGER NOT NULL, \
                 PRIMARY KEY (user_id, tweet_id)); \
                 CREATE INDEX IF NOT EXISTS {table}_hash ON {table} (hash)"
            ),
        }
    }

    fn merge_clause(&self, kind: Kind, table: &str) -> String {
        match kind {
            Kind::Tweets => {
                // Every assignment is evaluated against the row as it was, so the comparison
                // is repeated. SQLite has no BINARY type; a BLOB compares with memcmp, as its
                // text does.
                let wins = content_wins_sql(
                    "BLOB",
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
            }
            Kind::Timelines => format!(
                "ON CONFLICT(user_id, tweet_id) DO UPDATE SET \
                 deleted = MAX({table}.deleted, excluded.deleted)"
            ),
        }
    }

    fn index_count_sql(&self) -> &'static str {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name = ?"
    }

    fn drop_hash_index(&self, table: &str) -> String {
        format!("DROP INDEX IF EXISTS {table}_hash")
    }

    fn add_hash_index(&self, table: &str) -> String {
        format!("CREATE INDEX IF NOT EXISTS {table}_hash ON {table} (hash)")
    }

    fn after_rename(&self, table: &str) -> Option<String> {
        // Index names are global and follow the table: a new table of the old name would
        // otherwise find its index name taken and go without.
        Some(self.drop_hash_index(table))
    }

    fn select<'a>(
        &'a self,
        db: &'a Database,
        kind: Kind,
        sql: String,
        params: Vec<i64>,
    ) -> BoxFuture<'a, Result<Vec<Row>, DbError>> {
        db.sqlite(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                Ok(match kind {
                    Kind::Tweets => Row::from_tweet_columns((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    )),
                    Kind::Timelines => {
                        Row::from_timeline_columns((r.get(0)?, r.get(1)?, r.get(2)?))
                    }
                })
            })?;
            rows.collect()
        })
        .boxed()
    }
}
