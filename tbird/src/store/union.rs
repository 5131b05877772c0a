//! Tweet reads of several tables behind one MySQL pool in one `UNION ALL` statement, so a
//! host pays one round trip and one parse for many readers ([`crate::reads`] gathers them).

use std::fmt::Write;

use gizzard::shards::ShardError;
use mysql_async::prelude::Queryable;

use super::{Row, TbirdShard, rows::TweetColumns};
use crate::tweet::Tweet;

/// Returns the stored tweets of each `(shard, ids)` read, in order, from one statement. The
/// shards are tweet shards sharing the first one's MySQL pool.
pub(super) async fn read(reads: &[(&TbirdShard, &[u64])]) -> Result<Vec<Vec<Tweet>>, ShardError> {
    let Some(&(first, _)) = reads.first() else {
        return Ok(Vec::new());
    };
    // The text protocol: the statement's shape changes with every batch, and prepared
    // statements of every shape would churn the statement cache. Ids are integers, so
    // inlining them is safe.
    let sql = statement(reads);
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
        let (part, id, user_id, text, in_reply_to, deleted) =
            mysql_async::from_row_opt::<(usize, i64, i64, String, Option<i64>, bool)>(row)
                .map_err(|_| unreadable())?;
        let columns: TweetColumns = (id, user_id, text, in_reply_to, deleted);
        let tweet = Row::from_tweet_columns(columns)
            .into_tweet()
            .ok_or_else(unreadable)?;
        found.get_mut(part).ok_or_else(unreadable)?.push(tweet);
    }
    Ok(found)
}

/// Returns one statement reading every `(shard, ids)` pair, each row tagged with its pair's
/// position.
fn statement(reads: &[(&TbirdShard, &[u64])]) -> String {
    let mut sql = String::with_capacity(reads.len() * 96);
    for (part, (shard, ids)) in reads.iter().enumerate() {
        if part > 0 {
            sql.push_str(" UNION ALL ");
        }
        // Writing into a String cannot fail.
        let _ = write!(
            sql,
            "SELECT {part}, {} FROM {} WHERE id IN (",
            shard.kind.read_columns(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, tests::mysql_shard};

    #[tokio::test]
    async fn each_read_is_one_tagged_select_with_its_ids_inlined() {
        let (a, b) = (
            mysql_shard(Kind::Tweets, "t_0000").await,
            mysql_shard(Kind::Tweets, "t_0001").await,
        );
        let sql = statement(&[(&a, &[1, 1 << 62]), (&b, &[]), (&a, &[7])]);
        let select = "SELECT {part}, id, user_id, text, in_reply_to, deleted FROM";
        let expected = [
            format!(
                "{} t_0000_tweets WHERE id IN (1,{})",
                select.replace("{part}", "0"),
                1u64 << 62
            ),
            format!(
                "{} t_0001_tweets WHERE id IN (NULL)",
                select.replace("{part}", "1")
            ),
            format!(
                "{} t_0000_tweets WHERE id IN (7)",
                select.replace("{part}", "2")
            ),
        ]
        .join(" UNION ALL ");
        assert_eq!(sql, expected);
    }
}
