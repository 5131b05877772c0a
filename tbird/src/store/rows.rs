//! Row codecs: a row as the values a write stores (merges, and `LOAD DATA` files), and back
//! from the columns a read returns, the same on both backends. Ids are unsigned and columns
//! signed: they go in as their bit pattern (`as i64`) and come back the same way, so every
//! `u64` survives the trip; tweet ids, the only ones compared by order, are below 2^63.

use db::Param;
use gizzard::nameserver::hash;

use super::{Kind, Row};
use crate::tweet::Tweet;

/// The columns a tweet read returns ([`Kind::read_columns`]), as both backends decode them.
pub(super) type TweetColumns = (i64, i64, String, Option<i64>, bool);
/// The columns a timeline read returns.
pub(super) type TimelineColumns = (i64, i64, bool);

impl Kind {
    /// Returns the columns a write stores, in the order of [`Row::push_values`].
    pub(super) fn written_columns(self) -> &'static [&'static str] {
        match self {
            Kind::Tweets => &["id", "hash", "user_id", "text", "in_reply_to", "deleted"],
            Kind::Timelines => &["user_id", "tweet_id", "hash", "deleted"],
        }
    }

    /// Returns the columns a read selects, in the order of [`TweetColumns`] and
    /// [`TimelineColumns`].
    pub(super) fn read_columns(self) -> &'static str {
        match self {
            Kind::Tweets => "id, user_id, text, in_reply_to, deleted",
            Kind::Timelines => "user_id, tweet_id, deleted",
        }
    }

    /// Returns the routing key's column.
    pub(super) fn key_column(self) -> &'static str {
        match self {
            Kind::Tweets => "id",
            Kind::Timelines => "user_id",
        }
    }

    /// Returns the columns of cursor order.
    pub(super) fn order(self) -> &'static str {
        match self {
            Kind::Tweets => "id",
            Kind::Timelines => "user_id, tweet_id",
        }
    }
}

impl Row {
    /// Returns the table the row belongs in.
    pub(super) fn kind(&self) -> Kind {
        match self {
            Row::Tweet(_) => Kind::Tweets,
            Row::Timeline { .. } => Kind::Timelines,
        }
    }

    /// Names the row's kind, for an error about a row sent to the other table.
    pub(super) fn what(&self) -> &'static str {
        match self {
            Row::Tweet(_) => "a tweet row",
            Row::Timeline { .. } => "a timeline row",
        }
    }

    /// Appends the values a write stores, in the order of [`Kind::written_columns`], the
    /// routing key's hash included.
    pub(super) fn push_values(&self, out: &mut Vec<Param>) {
        match self {
            Row::Tweet(t) => out.extend([
                Param::Int(t.id as i64),
                Param::Int(hash(t.id)),
                Param::Int(t.user_id as i64),
                Param::Text(t.text.clone()),
                t.in_reply_to
                    .map_or(Param::Null, |id| Param::Int(id as i64)),
                Param::Int(i64::from(t.deleted)),
            ]),
            Row::Timeline {
                user_id,
                tweet_id,
                deleted,
            } => out.extend([
                Param::Int(*user_id as i64),
                Param::Int(*tweet_id as i64),
                Param::Int(hash(*user_id)),
                Param::Int(i64::from(*deleted)),
            ]),
        }
    }

    /// Returns the tweet row of the columns a read returned.
    pub(super) fn from_tweet_columns(columns: TweetColumns) -> Row {
        let (id, user_id, text, in_reply_to, deleted) = columns;
        Row::Tweet(Tweet {
            id: id as u64,
            user_id: user_id as u64,
            text,
            in_reply_to: in_reply_to.map(|id| id as u64),
            deleted,
        })
    }

    /// Returns the timeline row of the columns a read returned.
    pub(super) fn from_timeline_columns(columns: TimelineColumns) -> Row {
        let (user_id, tweet_id, deleted) = columns;
        Row::Timeline {
            user_id: user_id as u64,
            tweet_id: tweet_id as u64,
            deleted,
        }
    }

    pub(super) fn into_tweet(self) -> Option<Tweet> {
        match self {
            Row::Tweet(tweet) => Some(tweet),
            Row::Timeline { .. } => None,
        }
    }

    /// Returns the row's digest as MySQL's checksum query computes it (see
    /// `mysql::digest_sql`), so both backends give the same chunk digest.
    pub(super) fn digest(&self) -> u64 {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use db::Database;
    use gizzard::{nameserver::ShardInfo, shards::PhysicalShard};

    use super::*;
    use crate::store::TbirdShard;

    fn tweet(id: u64, user_id: u64, text: &str, in_reply_to: Option<u64>, deleted: bool) -> Row {
        Row::Tweet(Tweet {
            id,
            user_id,
            text: text.into(),
            in_reply_to,
            deleted,
        })
    }

    async fn sqlite_shard(dir: &tempfile::TempDir, kind: Kind) -> TbirdShard {
        let url = format!("sqlite://{}", dir.path().join("rows.db").display());
        let db = Database::open(&url, Duration::from_secs(5))
            .await
            .expect("open sqlite");
        let info = ShardInfo {
            id: "h/t_0000".parse().expect("id"),
            class_name: String::new(),
            busy: false,
        };
        let shard = TbirdShard::new(&info, kind, db);
        shard.materialize().await.expect("table");
        shard
    }

    /// Every column's extremes come back as they went in: ids up to 2^63 - 1, user ids past
    /// 2^63 (stored negative), no reply and a reply, both deleted flags, and texts that are
    /// empty, long, or full of bytes other layers treat as syntax.
    #[tokio::test]
    async fn rows_survive_a_write_and_a_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let top = i64::MAX as u64;
        let tweets = vec![
            tweet(1, 1, "", None, false),
            tweet(2, u64::MAX, "🐦".repeat(280).as_str(), Some(top), false),
            tweet(
                3,
                1 << 63,
                "tab\t nl\n cr\r nul\0 \\N 'q' \"q\" ? %",
                Some(0),
                true,
            ),
            tweet(top, 7, "last", Some(1), true),
        ];
        let shard = sqlite_shard(&dir, Kind::Tweets).await;
        shard.write_rows(&tweets).await.expect("write tweets");
        let read = shard.read_page(None, 100, None).await.expect("read tweets");
        assert_eq!(read, tweets);

        let timelines = vec![
            Row::Timeline {
                user_id: 1,
                tweet_id: 1,
                deleted: false,
            },
            Row::Timeline {
                user_id: 1,
                tweet_id: top,
                deleted: true,
            },
            Row::Timeline {
                user_id: i64::MAX as u64,
                tweet_id: 5,
                deleted: false,
            },
        ];
        let shard = sqlite_shard(&dir, Kind::Timelines).await;
        shard.write_rows(&timelines).await.expect("write lines");
        let read = shard.read_page(None, 100, None).await.expect("read lines");
        assert_eq!(read, timelines);
    }

    #[test]
    fn values_follow_the_written_columns() {
        let mut values = Vec::new();
        tweet(5, u64::MAX, "x", None, true).push_values(&mut values);
        assert_eq!(
            values,
            [
                Param::Int(5),
                Param::Int(hash(5)),
                Param::Int(-1),
                Param::Text("x".into()),
                Param::Null,
                Param::Int(1),
            ]
        );
        assert_eq!(values.len(), Kind::Tweets.written_columns().len());

        values.clear();
        let line = Row::Timeline {
            user_id: 6,
            tweet_id: 5,
            deleted: false,
        };
        line.push_values(&mut values);
        assert_eq!(
            values,
            [
                Param::Int(6),
                Param::Int(5),
                Param::Int(hash(6)),
                Param::Int(0)
            ]
        );
        assert_eq!(values.len(), Kind::Timelines.written_columns().len());
    }
}
