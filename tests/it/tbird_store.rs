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

    // A copy of every row checksums the same, also one loaded with its hash index dropped
    // (twice, as a resumed copy may) and built afterwards (twice).
    let copy = shard(db, Kind::Timelines, "t2_copy");
    copy.materialize().await.expect("copy table");
    for _ in 0..2 {
        copy.defer_indexes().await.expect("drop the hash index");
    }
    copy.write_rows(&seen).await.expect("copy rows");
    for _ in 0..2 {
        copy.build_indexes(5).await.expect("build the hash index");
    }
    let all = 0..=u64::MAX >> 1;
    assert_eq!(
        copy.checksum(all.clone(), None).await.expect("copy"),
        timeline.checksum(all.clone(), None).await.expect("source")
    );
    assert_eq!(copy.count_rows(None).await.expect("count"), 5);
    let low = 0..1 << 59;
    assert_eq!(
        copy.count_rows(Some(low.clone())).await.expect("count"),
        timeline.checksum(all, Some(low)).await.expect("sum").rows
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
    let (_server, _, mysql, dir, sqlite) = mariadb_and_sqlite().await;
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
        let s = shard(sqlite_db(&dir, i + 1).await, Kind::Tweets, "t1_0000");
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

/// Starts a MariaDB with a `tbird` database and opens it, and opens SQLite file 0 of a new
/// directory; returns the server, the database's URL, both handles and the directory.
async fn mariadb_and_sqlite() -> (
    tests::MariaDb,
    String,
    Database,
    tempfile::TempDir,
    Database,
) {
    let server = tests::MariaDb::start().await.expect("mariadb");
    let url = server.create_database("tbird").await.expect("database");
    let mysql = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open mariadb");
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = sqlite_db(&dir, 0).await;
    (server, url, mysql, dir, sqlite)
}

async fn sqlite_db(dir: &tempfile::TempDir, i: usize) -> Database {
    let url = format!("sqlite://{}", dir.path().join(format!("v{i}.db")).display());
    Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open sqlite")
}

/// Copies of many rows go to MariaDB through `LOAD DATA`: every byte of every text survives
/// (tabs, newlines, backslashes, NUL, a literal `\N`), rows already written live are merged as
/// a write would merge them, and the result is row for row what SQLite's merge path gives.
/// A row MariaDB could only store converted loads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_copies_keep_every_byte_and_merge_with_live_writes() {
    let (_server, url, mysql, _dir, sqlite) = mariadb_and_sqlite().await;

    let odd = [
        "tab\there",
        "line\nbreak\r\n",
        "back\\slash \\N \\t",
        "\\N",
        "nul \0 byte",
        "'quoted' \"both\" `ways`",
        "🐦 ünïcode ✓",
    ];
    let mut tweets: Vec<Row> = (1..=600u64)
        .map(|i| {
            let text = match i {
                599 => "🐦".repeat(280),
                _ => format!("{} #{i}", odd[i as usize % odd.len()]),
            };
            Row::Tweet(Tweet {
                in_reply_to: (i % 4 == 0).then_some(i * 3),
                deleted: i % 9 == 0,
                ..tweet(i << 22, 1 + i % 13, &text)
            })
        })
        .collect();
    let mut timelines: Vec<Row> = (1..=300u64)
        .map(|i| Row::Timeline {
            user_id: 1 + i % 17,
            tweet_id: i << 22,
            deleted: i % 7 == 0,
        })
        .collect();
    // In cursor order, as pages come back.
    timelines.sort_by_key(<TbirdShard as PhysicalShard>::cursor_of);
    // Written live before the copy: a delete that beat the tweet's insert, and an insert of a
    // tweet the source already holds deleted.
    let (live_delete, live_insert) = (10u64 << 22, 18u64 << 22);
    let all = 0..=u64::MAX >> 1;
    let mut stored = Vec::new();
    for db in [mysql, sqlite] {
        let (t, l) = (
            shard(db.clone(), Kind::Tweets, "t1_0000"),
            shard(db.clone(), Kind::Timelines, "t2_0000"),
        );
        t.materialize().await.expect("tweets table");
        l.materialize().await.expect("timeline table");
        TbirdWrite::DeleteTweet { id: live_delete }
            .apply(&t)
            .await
            .expect("live delete");
        TbirdWrite::PutTweet(tweet(live_insert, 5, "live"))
            .apply(&t)
            .await
            .expect("live insert");
        t.write_rows(&tweets).await.expect("copy tweets");
        let before = statements(&db).await;
        l.write_rows(&timelines).await.expect("copy timelines");
        if let Database::Mysql { .. } = db {
            // New rows only: one LOAD DATA, committed, and no merge after it.
            let after = statements(&db).await;
            assert_eq!(
                [after[0] - before[0], after[1] - before[1]],
                [1, 0],
                "LOAD DATA and INSERT statements for the timelines"
            );
        }
        let rows = t.read_page(None, 10_000, None).await.expect("read tweets");
        let lines = l.read_page(None, 10_000, None).await.expect("read lines");
        same_rows(&lines, &timelines, "timelines");
        stored.push((rows, t.checksum(all.clone(), None).await.expect("sum")));
    }
    for row in &mut tweets {
        match row {
            // The delete wins; the copy fills in the content behind it.
            Row::Tweet(t) if t.id == live_delete => t.deleted = true,
            // The live insert's content stays (user 5 sorts before the copy's user 6, so the
            // merge keeps it); the copy's delete wins.
            Row::Tweet(t) if t.id == live_insert => {
                assert!(t.deleted, "the source holds it deleted");
                *t = Tweet {
                    deleted: true,
                    ..tweet(live_insert, 5, "live")
                };
            }
            _ => {}
        }
    }
    same_rows(&stored[0].0, &tweets, "mariadb's tweets");
    same_rows(&stored[1].0, &tweets, "sqlite's tweets");
    assert_eq!(stored[0].1, stored[1].1, "checksums");

    // A text over 280 characters: LOAD DATA IGNORE would keep it cut short, so the load rolls
    // back, the merge refuses it, and none of the 200 rows is stored.
    let fresh = shard(
        Database::open(&url, Duration::from_secs(5))
            .await
            .expect("open"),
        Kind::Tweets,
        "t1_0001",
    );
    fresh.materialize().await.expect("table");
    let mut rows: Vec<Row> = (1..=200u64)
        .map(|i| Row::Tweet(tweet(i << 22, 1, "fits")))
        .collect();
    rows[150] = Row::Tweet(tweet(151 << 22, 1, &"x".repeat(281)));
    let err = fresh.write_rows(&rows).await.expect_err("too long a text");
    assert!(err.to_string().contains("t1_0001"), "{err}");
    assert_eq!(
        fresh.checksum(all, None).await.expect("sum").rows,
        0,
        "nothing of the refused batch is stored"
    );
}

/// Asserts two row lists are equal, naming the first row that differs (not all of them).
fn same_rows(found: &[Row], expected: &[Row], what: &str) {
    if let Some(i) = (0..found.len().max(expected.len())).find(|&i| found.get(i) != expected.get(i))
    {
        panic!(
            "{what}: {} rows, {} expected; row {i} is {:?}, expected {:?}",
            found.len(),
            expected.len(),
            found.get(i),
            expected.get(i)
        );
    }
}

/// Returns how many `LOAD DATA` and `INSERT` statements a MariaDB server has run (zeros on
/// SQLite).
async fn statements(db: &Database) -> [i64; 2] {
    if let Database::Sqlite { .. } = db {
        return [0, 0];
    }
    let rows = db
        .query_ints(
            "SELECT CAST(VARIABLE_VALUE AS SIGNED) FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME IN ('COM_LOAD', 'COM_INSERT') ORDER BY VARIABLE_NAME DESC"
                .into(),
            vec![],
        )
        .await
        .expect("status");
    [
        rows[0][0].expect("Com_load"),
        rows[1][0].expect("Com_insert"),
    ]
}

/// A MariaDB with `local_infile` off refuses `LOAD DATA LOCAL`; copies still write every row,
/// as multi-row INSERTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_fall_back_to_inserts_when_the_server_refuses_load_data() {
    let server = tests::MariaDb::start_with(&["--local-infile=0"])
        .await
        .expect("mariadb");
    let url = server.create_database("tbird").await.expect("database");
    let db = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open");
    let tweets = shard(db.clone(), Kind::Tweets, "t1_0000");
    tweets.materialize().await.expect("table");
    let rows: Vec<Row> = (1..=500u64)
        .map(|i| Row::Tweet(tweet(i << 22, 1 + i % 7, &format!("tweet {i}"))))
        .collect();
    let before = statements(&db).await;
    tweets.write_rows(&rows).await.expect("copy");
    let after = statements(&db).await;
    same_rows(
        &tweets.read_page(None, 1_000, None).await.expect("read"),
        &rows,
        "copied rows",
    );
    assert_eq!(
        [after[0] - before[0], after[1] - before[1]],
        [1, 1],
        "one refused LOAD DATA, then one INSERT of the 500 rows"
    );
}
