//! T-Bird's tweet and timeline shards on MariaDB and SQLite: writes commute and repeat
//! safely, deletes win whenever they arrive, timelines page newest first, and the hooks
//! migrations use see every row.

use std::time::Duration;

use db::Database;
use gizzard::{
    nameserver::ShardInfo,
    shards::{PhysicalShard, WriteOp},
};
use tbird::{
    store::{Kind, Row, TbirdShard, TbirdWrite},
    tweet::Tweet,
};

fn shard(db: Database, kind: Kind, prefix: &str) -> TbirdShard {
    let info = ShardInfo {
        id: format!("h/{prefix}").parse().expect("id"),
        class_name: String::new(),
        busy: false,
    };
    TbirdShard::new(&info, kind, db)
}

fn tweet(id: u64, user_id: u64, text: &str) -> Tweet {
    Tweet {
        id,
        user_id,
        text: text.into(),
        in_reply_to: None,
        deleted: false,
    }
}

async fn tweets_and_timelines(db: Database) {
    let tweets = shard(db.clone(), Kind::Tweets, "t1_0000");
    let timeline = shard(db.clone(), Kind::Timelines, "t2_0000");
    tweets.materialize().await.expect("tweets table");
    timeline.materialize().await.expect("timeline table");

    // A tweet stored twice is stored once, with its text intact (280 four-byte characters).
    let long = "🐦".repeat(280);
    let first = Tweet {
        in_reply_to: Some(7),
        ..tweet(10, 1, &long)
    };
    for _ in 0..2 {
        TbirdWrite::PutTweet(first.clone())
            .apply(&tweets)
            .await
            .expect("put");
    }
    assert_eq!(
        tweets.get_tweets(&[10]).await.expect("get"),
        std::slice::from_ref(&first)
    );

    // A delete that arrives before its tweet wins; the tweet fills in but stays deleted.
    TbirdWrite::DeleteTweet { id: 11 }
        .apply(&tweets)
        .await
        .expect("early delete");
    TbirdWrite::PutTweet(tweet(11, 1, "late"))
        .apply(&tweets)
        .await
        .expect("late put");
    let got = tweets.get_tweets(&[11]).await.expect("get");
    assert_eq!(
        got,
        [Tweet {
            deleted: true,
            ..tweet(11, 1, "late")
        }]
    );

    // A delete after the tweet wins too, and repeating it changes nothing.
    for _ in 0..2 {
        TbirdWrite::DeleteTweet { id: 10 }
            .apply(&tweets)
            .await
            .expect("delete");
    }
    assert!(tweets.get_tweets(&[10]).await.expect("get")[0].deleted);
    TbirdWrite::PutTweet(first.clone())
        .apply(&tweets)
        .await
        .expect("put again");
    assert!(
        tweets.get_tweets(&[10]).await.expect("get")[0].deleted,
        "a put never revives"
    );

    // Timelines: newest first, paged by max_id, removals hidden.
    for id in [100, 300, 200, 400] {
        TbirdWrite::AddToTimeline {
            user_id: 5,
            tweet_id: id,
        }
        .apply(&timeline)
        .await
        .expect("add");
    }
    TbirdWrite::AddToTimeline {
        user_id: 6,
        tweet_id: 250,
    }
    .apply(&timeline)
    .await
    .expect("other user");
    assert_eq!(
        timeline.timeline(5, None, 3).await.expect("page 1"),
        [400, 300, 200]
    );
    assert_eq!(
        timeline.timeline(5, Some(199), 3).await.expect("page 2"),
        [100]
    );
    TbirdWrite::RemoveFromTimeline {
        user_id: 5,
        tweet_id: 300,
    }
    .apply(&timeline)
    .await
    .expect("remove");
    TbirdWrite::AddToTimeline {
        user_id: 5,
        tweet_id: 300,
    }
    .apply(&timeline)
    .await
    .expect("late add");
    assert_eq!(
        timeline.timeline(5, None, 10).await.expect("after removal"),
        [400, 200, 100]
    );

    // The composite cursor pages through every timeline row once.
    let (mut seen, mut after) = (Vec::new(), None);
    loop {
        let page = timeline.read_page(after, 2, None).await.expect("page");
        let Some(last) = page.last() else { break };
        after = Some(TbirdShard::cursor_of(last));
        seen.extend(page);
    }
    assert_eq!(seen.len(), 5);
    assert!(matches!(
        seen[4],
        Row::Timeline {
            user_id: 6,
            tweet_id: 250,
            deleted: false
        }
    ));

    // A copy of every row checksums the same.
    let copy = shard(db, Kind::Timelines, "t2_copy");
    copy.materialize().await.expect("copy table");
    copy.write_rows(&seen).await.expect("copy rows");
    let all = 0..=u64::MAX >> 1;
    assert_eq!(
        copy.checksum(all.clone(), None).await.expect("copy"),
        timeline.checksum(all, None).await.expect("source")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tweet_shards_on_mariadb() {
    let server = tests::MariaDb::start().await.expect("mariadb");
    let url = server.create_database("tbird").await.expect("database");
    tweets_and_timelines(
        Database::open(&url, Duration::from_secs(5))
            .await
            .expect("open"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tweet_shards_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("tbird.db").display());
    tweets_and_timelines(
        Database::open(&url, Duration::from_secs(5))
            .await
            .expect("open"),
    )
    .await;
}

/// The same rows checksum the same on MariaDB (folded in SQL) and SQLite (folded in Rust), so
/// a diff may compare replicas on either backend; a row that differs in any one column, or is
/// missing, changes the checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_agree_across_backends_and_see_each_column() {
    let server = tests::MariaDb::start().await.expect("mariadb");
    let url = server.create_database("tbird").await.expect("database");
    let mysql = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open mariadb");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("tbird.db").display());
    let sqlite = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open sqlite");
    let rows: Vec<Row> = (1..=50u64)
        .map(|i| {
            Row::Tweet(Tweet {
                in_reply_to: (i % 3 == 0).then_some(i + 1_000),
                deleted: i % 5 == 0,
                ..tweet((i << 40) + i, i % 7, &format!("tweet {i}: ünïcode ✓"))
            })
        })
        .chain((1..=20u64).map(|i| Row::Timeline {
            user_id: i % 4,
            tweet_id: i * 11,
            deleted: i % 6 == 0,
        }))
        .collect();
    let all = 0..=u64::MAX >> 1;
    let mut sums = Vec::new();
    for (db, name) in [(mysql, "mariadb"), (sqlite, "sqlite")] {
        for (kind, prefix) in [(Kind::Tweets, "t1_0000"), (Kind::Timelines, "t2_0000")] {
            let s = shard(db.clone(), kind, prefix);
            s.materialize().await.expect("table");
            let mine: Vec<Row> = rows
                .iter()
                .filter(|r| matches!(r, Row::Tweet(_)) == (kind == Kind::Tweets))
                .cloned()
                .collect();
            s.write_rows(&mine).await.expect("rows");
            let sum = s.checksum(all.clone(), None).await.expect("checksum");
            assert_eq!(sum.rows, mine.len() as u64, "{name} {prefix}");
            sums.push(sum);
        }
    }
    assert_eq!(sums[..2], sums[2..], "mariadb and sqlite checksums");

    // One changed column of one row, or one row fewer, shows.
    let changed = |f: &dyn Fn(&mut Tweet)| {
        let Row::Tweet(mut t) = rows[9].clone() else {
            unreachable!()
        };
        f(&mut t);
        Row::Tweet(t)
    };
    let variants = [
        changed(&|t| t.text.push('!')),
        changed(&|t| t.user_id += 1),
        changed(&|t| t.in_reply_to = Some(7)),
        changed(&|t| t.deleted = !t.deleted),
    ];
    for (i, variant) in variants.into_iter().enumerate() {
        let s = shard(sqlite_db(&dir, i).await, Kind::Tweets, "t1_0000");
        s.materialize().await.expect("table");
        let mut mine: Vec<Row> = rows[..50].to_vec();
        mine[9] = variant;
        s.write_rows(&mine).await.expect("rows");
        let sum = s.checksum(all.clone(), None).await.expect("checksum");
        assert_ne!(sum, sums[0], "variant {i}");
    }
    let s = shard(sqlite_db(&dir, 9).await, Kind::Tweets, "t1_0000");
    s.materialize().await.expect("table");
    s.write_rows(&rows[1..50]).await.expect("rows");
    assert_ne!(
        s.checksum(all, None).await.expect("checksum"),
        sums[0],
        "a missing row"
    );
}

async fn sqlite_db(dir: &tempfile::TempDir, i: usize) -> Database {
    let url = format!("sqlite://{}", dir.path().join(format!("v{i}.db")).display());
    Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open sqlite")
}
