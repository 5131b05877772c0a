//! T-Bird's tweet and timeline shards on MariaDB and SQLite: writes commute and repeat
//! safely, deletes win whenever they arrive, timelines page newest first, and the hooks
//! migrations use see every row (one test per case and backend), and what the backends must
//! agree on.

use std::time::Duration;

use db::Database;
use gizzard::{
    nameserver::ShardInfo,
    shards::{PhysicalShard, WriteOp},
};
use tbird::{
    store::{Kind, Page, Row, TbirdShard, TbirdWrite},
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

/// Opens the database at `url` and returns its tweet and timeline shards, tables made.
async fn shards(url: &str) -> (TbirdShard, TbirdShard) {
    let db = Database::open(url, Duration::from_secs(5))
        .await
        .expect("open");
    let tweets = shard(db.clone(), Kind::Tweets, "t1_0000");
    let timeline = shard(db, Kind::Timelines, "t2_0000");
    tweets.materialize().await.expect("tweets table");
    timeline.materialize().await.expect("timeline table");
    (tweets, timeline)
}

async fn apply(write: TbirdWrite, shard: &TbirdShard) {
    write.apply(shard).await.expect("write");
}

/// Opens the timeline shard at `url` with user 5's tweets 100 to 400 (300 removed, then added
/// again) and user 6's tweet 250.
async fn filled_timeline(url: &str) -> TbirdShard {
    let (_, timeline) = shards(url).await;
    for tweet_id in [100, 300, 200, 400] {
        apply(
            TbirdWrite::AddToTimeline {
                user_id: 5,
                tweet_id,
            },
            &timeline,
        )
        .await;
    }
    apply(
        TbirdWrite::AddToTimeline {
            user_id: 6,
            tweet_id: 250,
        },
        &timeline,
    )
    .await;
    apply(
        TbirdWrite::RemoveFromTimeline {
            user_id: 5,
            tweet_id: 300,
        },
        &timeline,
    )
    .await;
    apply(
        TbirdWrite::AddToTimeline {
            user_id: 5,
            tweet_id: 300,
        },
        &timeline,
    )
    .await;
    timeline
}

/// Returns every row of `shard`, read two at a time through the cursor.
async fn all_rows_by_pages(shard: &TbirdShard) -> Vec<Row> {
    let (mut seen, mut after) = (Vec::new(), None);
    loop {
        let page = shard.read_page(after, 2, None).await.expect("page");
        let Some(last) = page.last() else {
            return seen;
        };
        after = Some(TbirdShard::cursor_of(last));
        seen.extend(page);
    }
}

// Every shard behaviour a user relies on, one test per case on SQLite and on MariaDB.
tests::backend_suite!(
    a_tweet_stored_twice_is_stored_once_and_intact,
    a_delete_before_its_tweet_wins,
    a_delete_after_its_tweet_wins_and_repeats_safely,
    timelines_page_newest_first_without_removed_tweets,
    timeline_pages_read_together_match_each_read_alone,
    the_cursor_pages_through_every_timeline_row_once,
    a_copy_checksums_the_same_with_its_index_deferred,
);

async fn a_tweet_stored_twice_is_stored_once_and_intact(url: &str) {
    let (tweets, _) = shards(url).await;
    // 280 four-byte characters.
    let long = "🐦".repeat(280);
    let first = Tweet {
        in_reply_to: Some(7),
        ..tweet(10, 1, &long)
    };
    for _ in 0..2 {
        apply(TbirdWrite::PutTweet(first.clone()), &tweets).await;
    }
    assert_eq!(
        tweets.get_tweets(&[10]).await.expect("get"),
        std::slice::from_ref(&first)
    );
}

async fn a_delete_before_its_tweet_wins(url: &str) {
    let (tweets, _) = shards(url).await;
    apply(TbirdWrite::DeleteTweet { id: 11 }, &tweets).await;
    apply(TbirdWrite::PutTweet(tweet(11, 1, "late")), &tweets).await;
    // The tweet fills in the content but stays deleted.
    assert_eq!(
        tweets.get_tweets(&[11]).await.expect("get"),
        [Tweet {
            deleted: true,
            ..tweet(11, 1, "late")
        }]
    );
}

async fn a_delete_after_its_tweet_wins_and_repeats_safely(url: &str) {
    let (tweets, _) = shards(url).await;
    let first = tweet(10, 1, "first");
    apply(TbirdWrite::PutTweet(first.clone()), &tweets).await;
    for _ in 0..2 {
        apply(TbirdWrite::DeleteTweet { id: 10 }, &tweets).await;
    }
    let deleted = Tweet {
        deleted: true,
        ..first.clone()
    };
    assert_eq!(
        tweets.get_tweets(&[10]).await.expect("get"),
        std::slice::from_ref(&deleted)
    );
    apply(TbirdWrite::PutTweet(first), &tweets).await;
    assert_eq!(
        tweets.get_tweets(&[10]).await.expect("get"),
        [deleted],
        "a put never revives"
    );
}

async fn timelines_page_newest_first_without_removed_tweets(url: &str) {
    let timeline = filled_timeline(url).await;
    assert_eq!(
        timeline
            .timeline(&Page::new(5, None, 2))
            .await
            .expect("page 1"),
        [400, 200]
    );
    assert_eq!(
        timeline
            .timeline(&Page::new(5, Some(199), 3))
            .await
            .expect("page 2"),
        [100]
    );
    assert_eq!(
        timeline
            .timeline(&Page::new(5, None, 10))
            .await
            .expect("all"),
        [400, 200, 100],
        "a removal wins over a later add"
    );
    assert_eq!(
        timeline
            .timeline(&Page::new(6, None, 10))
            .await
            .expect("user 6"),
        [250]
    );
    assert!(
        timeline
            .timeline(&Page::new(7, None, 10))
            .await
            .expect("user 7")
            .is_empty()
    );
}

/// On MariaDB the pages go out as one union of limited selects; its rows must split back into
/// the same pages, newest first, as reading each alone gives.
async fn timeline_pages_read_together_match_each_read_alone(url: &str) {
    let timeline = filled_timeline(url).await;
    let pages = [
        Page::new(5, None, 2),
        Page::new(6, None, 10),
        Page::new(5, Some(199), 3),
        Page::new(7, None, 10),
        Page::new(5, None, 10),
    ];
    let reads: Vec<(&TbirdShard, &Page)> = pages.iter().map(|page| (&timeline, page)).collect();
    let together = TbirdShard::timelines_of(&reads)
        .await
        .expect("pages read together");
    let mut alone = Vec::new();
    for page in &pages {
        alone.push(timeline.timeline(page).await.expect("a page alone"));
    }
    assert_eq!(together, alone);
    assert_eq!(
        together,
        [
            vec![400, 200],
            vec![250],
            vec![100],
            vec![],
            vec![400, 200, 100]
        ]
    );
}

async fn the_cursor_pages_through_every_timeline_row_once(url: &str) {
    let timeline = filled_timeline(url).await;
    let line = |user_id, tweet_id, deleted| Row::Timeline {
        user_id,
        tweet_id,
        deleted,
    };
    assert_eq!(
        all_rows_by_pages(&timeline).await,
        [
            line(5, 100, false),
            line(5, 200, false),
            line(5, 300, true),
            line(5, 400, false),
            line(6, 250, false),
        ]
    );
}

/// A copy of every row checksums the same, also one loaded with its hash index dropped
/// (twice, as a resumed copy may) and built afterwards (twice).
async fn a_copy_checksums_the_same_with_its_index_deferred(url: &str) {
    let timeline = filled_timeline(url).await;
    let rows = all_rows_by_pages(&timeline).await;
    let db = Database::open(url, Duration::from_secs(5))
        .await
        .expect("open");
    let copy = shard(db, Kind::Timelines, "t2_copy");
    copy.materialize().await.expect("copy table");
    for _ in 0..2 {
        copy.defer_indexes().await.expect("drop the hash index");
    }
    copy.write_rows(&rows).await.expect("copy rows");
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
