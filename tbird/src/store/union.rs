//! Reads of several tables behind one MySQL pool in one `UNION ALL` statement, so a host pays
//! one round trip and one parse for many readers ([`crate::reads`] gathers them): tweets by id
//! ([`read`]) and timeline pages ([`timelines`]).

use std::fmt::Write;

use gizzard::shards::ShardError;
use mysql_async::prelude::Queryable;

use super::{Page, Row, TbirdShard, rows::TweetColumns};
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

/// Returns the timeline page of each `(shard, page)` read, in order, from one statement. The
/// shards are timeline shards sharing the first one's MySQL pool.
pub(super) async fn timelines(reads: &[(&TbirdShard, &Page)]) -> Result<Vec<Vec<u64>>, ShardError> {
    let Some(&(first, _)) = reads.first() else {
        return Ok(Vec::new());
    };
    let sql = timelines_statement(reads)?;
    let rows: Vec<(usize, i64)> = first
        .db
        .mysql(|mut c| async move { c.query(sql).await })
        .await
        .map_err(|e| first.err(e))?;
    let mut found = vec![Vec::new(); reads.len()];
    for (part, id) in rows {
        let unreadable = || ShardError::Query {
            shard: first.id.to_string(),
            message: format!("unreadable row of part {part}"),
        };
        found.get_mut(part).ok_or_else(unreadable)?.push(id as u64);
    }
    // A union's rows come in no promised order: each page is put newest first again.
    for ids in &mut found {
        ids.sort_unstable_by(|a, b| b.cmp(a));
    }
    Ok(found)
}

/// Returns one statement reading every `(shard, page)` pair, each a parenthesized select with
/// its own order and limit, each row tagged with its pair's position. Values are integers,
/// inlined as in [`statement`].
fn timelines_statement(reads: &[(&TbirdShard, &Page)]) -> Result<String, ShardError> {
    let mut sql = String::with_capacity(reads.len() * 160);
    for (part, (shard, page)) in reads.iter().enumerate() {
        if part > 0 {
            sql.push_str(" UNION ALL ");
        }
        let _ = write!(
            sql,
            "(SELECT {part}, tweet_id FROM {} WHERE user_id = {} AND tweet_id <= {} \
             AND deleted = 0 ORDER BY tweet_id DESC LIMIT {})",
            shard.table,
            page.user_id as i64,
            shard.max_id_bound(page)?,
            page.limit
        );
    }
    Ok(sql)
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

    #[tokio::test]
    async fn each_timeline_page_is_one_parenthesized_select_with_its_own_limit() {
        let (a, b) = (
            mysql_shard(Kind::Timelines, "t_0000").await,
            mysql_shard(Kind::Timelines, "t_0001").await,
        );
        let first = Page {
            user_id: 5,
            max_id: None,
            limit: 20,
        };
        let second = Page {
            user_id: 6,
            max_id: Some(99),
            limit: 3,
        };
        let sql = timelines_statement(&[(&a, &first), (&b, &second)]).expect("valid pages");
        assert_eq!(
            sql,
            format!(
                "(SELECT 0, tweet_id FROM t_0000_timeline WHERE user_id = 5 AND tweet_id <= {} \
                 AND deleted = 0 ORDER BY tweet_id DESC LIMIT 20) UNION ALL (SELECT 1, \
                 tweet_id FROM t_0001_timeline WHERE user_id = 6 AND tweet_id <= 99 AND \
                 deleted = 0 ORDER BY tweet_id DESC LIMIT 3)",
                i64::MAX
            )
        );
        let past = Page {
            max_id: Some(1 << 63),
            ..first
        };
        let err = timelines_statement(&[(&a, &past)]).expect_err("max_id past 2^63");
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}
