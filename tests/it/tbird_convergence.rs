//! Replicas of T-Bird's tables converge: random puts (colliding ids, different users and
//! texts), deletes and timeline writes, applied to replicas in different orders, repeated, in
//! concurrent batches or as a bulk copy, leave every replica byte for byte the same rows, and
//! those rows are what the merge rule (`Tweet::merge`, tombstones OR'ed) computes. After
//! writes only one replica got, `repair` makes both replicas agree, on that rule, on every
//! key `diff` reported, and a diff after it finds nothing. On SQLite always, and on MariaDB
//! through the harness (one server for all cases).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use db::Database;
use gizzard::{
    migrate::ops::{Differ, Tuning, repair},
    nameserver::ShardInfo,
    shards::{PhysicalShard, WriteOp},
};
use proptest::{prelude::*, test_runner::TestCaseError};
use tbird::{
    store::{Kind, Merges, Row, TbirdShard, TbirdWrite},
    tweet::Tweet,
};
use tests::property;

/// Texts that collide under loose comparisons: trailing space (PAD SPACE collations), case
/// (`_ci` collations), a precomposed and a combining accent (Unicode collations), a NUL.
const TEXTS: [&str; 8] = ["a", "a ", "A", "ab", "é", "e\u{301}", "b", "a\0"];

fn write() -> impl Strategy<Value = TbirdWrite> {
    // Few ids and users, so writes collide often.
    let id = 1u64..=3;
    let user = 1u64..=3;
    prop_oneof![
        5 => (id.clone(), user.clone(), prop::sample::select(&TEXTS[..]), prop::option::of(1u64..=2))
            .prop_map(|(id, user_id, text, in_reply_to)| {
                TbirdWrite::PutTweet(Tweet {
                    id,
                    user_id,
                    text: text.to_owned(),
                    in_reply_to,
                    deleted: false,
                })
            }),
        2 => id.clone().prop_map(|id| TbirdWrite::DeleteTweet { id }),
        3 => (user.clone(), id.clone())
            .prop_map(|(user_id, tweet_id)| TbirdWrite::AddToTimeline { user_id, tweet_id }),
        1 => (user, id)
            .prop_map(|(user_id, tweet_id)| TbirdWrite::RemoveFromTimeline { user_id, tweet_id }),
    ]
}

/// One case: the writes, and how each replica receives them.
#[derive(Clone, Debug)]
struct Case {
    /// Replica a applies these one by one, in this order.
    writes: Vec<TbirdWrite>,
    /// Replica b gets the same writes in this order, cut into batches of these sizes, the
    /// batches applied concurrently.
    b_order: Vec<TbirdWrite>,
    b_batches: Vec<usize>,
    /// Writes each replica receives a second time (indexes into `writes`).
    a_repeats: Vec<usize>,
    b_repeats: Vec<usize>,
    /// Writes only replica a receives afterwards: the difference repair has to heal.
    a_only: Vec<TbirdWrite>,
}

fn case() -> impl Strategy<Value = Case> {
    prop::collection::vec(write(), 1..14).prop_flat_map(|writes| {
        let n = writes.len();
        (
            Just(writes.clone()),
            Just(writes).prop_shuffle(),
            prop::collection::vec(1usize..5, 1..6),
            prop::collection::vec(0..n, 0..5),
            prop::collection::vec(0..n, 0..5),
            prop::collection::vec(write(), 0..5),
        )
            .prop_map(
                |(writes, b_order, b_batches, a_repeats, b_repeats, a_only)| Case {
                    writes,
                    b_order,
                    b_batches,
                    a_repeats,
                    b_repeats,
                    a_only,
                },
            )
    })
}

fn is_tweet_write(write: &TbirdWrite) -> bool {
    matches!(
        write,
        TbirdWrite::PutTweet(_) | TbirdWrite::DeleteTweet { .. }
    )
}

/// The rows the merge rule gives for `writes`, in cursor order: tweets, then timelines.
fn model<'a>(writes: impl IntoIterator<Item = &'a TbirdWrite>) -> (Vec<Row>, Vec<Row>) {
    let mut tweets: BTreeMap<u64, Tweet> = BTreeMap::new();
    let mut lines: BTreeMap<(u64, u64), bool> = BTreeMap::new();
    for write in writes {
        match write.row() {
            Row::Tweet(t) => {
                let merged = match tweets.get(&t.id) {
                    Some(stored) => stored.merge(&t),
                    None => t,
                };
                tweets.insert(merged.id, merged);
            }
            Row::Timeline {
                user_id,
                tweet_id,
                deleted,
            } => *lines.entry((user_id, tweet_id)).or_default() |= deleted,
        }
    }
    (
        tweets.into_values().map(Row::Tweet).collect(),
        lines
            .into_iter()
            .map(|((user_id, tweet_id), deleted)| Row::Timeline {
                user_id,
                tweet_id,
                deleted,
            })
            .collect(),
    )
}

/// A replica: a tweet table and a timeline table.
struct Replica {
    tweets: TbirdShard,
    timelines: TbirdShard,
}

impl Replica {
    /// Creates case `n`'s tables on `db`; `merges` sends batches through the per-host
    /// combiner, as a proxy does.
    async fn create(db: &Database, n: usize, merges: bool) -> Self {
        let shard = |kind, prefix: String| {
            let info = ShardInfo {
                id: format!("h/{prefix}").parse().expect("shard id"),
                class_name: String::new(),
                busy: false,
            };
            let shard = TbirdShard::new(&info, kind, db.clone());
            if merges {
                shard.with_merges(Arc::new(Merges::new(2)))
            } else {
                shard
            }
        };
        let replica = Self {
            tweets: shard(Kind::Tweets, format!("t1_c{n}")),
            timelines: shard(Kind::Timelines, format!("t2_c{n}")),
        };
        replica.tweets.materialize().await.expect("tweets table");
        replica
            .timelines
            .materialize()
            .await
            .expect("timeline table");
        replica
    }

    fn shard_for(&self, write: &TbirdWrite) -> &TbirdShard {
        if is_tweet_write(write) {
            &self.tweets
        } else {
            &self.timelines
        }
    }

    async fn apply_one_by_one<'a>(&self, writes: impl IntoIterator<Item = &'a TbirdWrite>) {
        for write in writes {
            write
                .apply(self.shard_for(write))
                .await
                .expect("apply a write");
        }
    }

    /// Applies `writes` in batches of the given sizes (cycled), all batches at once; a batch
    /// holds the writes of one table, as a leaf's coalescer groups them.
    async fn apply_in_batches(&self, writes: &[TbirdWrite], sizes: &[usize]) {
        let mut batches: Vec<Vec<&TbirdWrite>> = Vec::new();
        for table in [true, false] {
            let mine: Vec<&TbirdWrite> = writes
                .iter()
                .filter(|w| is_tweet_write(w) == table)
                .collect();
            let mut rest = &mine[..];
            for &size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (batch, after) = rest.split_at(size.min(rest.len()));
                batches.push(batch.to_vec());
                rest = after;
            }
        }
        let applied = batches.iter().map(|batch| async move {
            TbirdWrite::apply_batch(batch, self.shard_for(batch[0])).await
        });
        for result in futures::future::join_all(applied).await {
            result.expect("apply a batch");
        }
    }

    /// Writes the writes' rows as a copy or a repair does; on MariaDB, 100 rows or more go
    /// through `LOAD DATA` and are merged after it.
    async fn copy(&self, writes: &[TbirdWrite]) {
        let rows: Vec<Row> = writes.iter().rev().map(TbirdWrite::row).collect();
        let many: Vec<Row> = rows
            .iter()
            .cycle()
            .take(rows.len().max(120))
            .cloned()
            .collect();
        let (tweets, lines): (Vec<Row>, Vec<Row>) =
            many.into_iter().partition(|r| matches!(r, Row::Tweet(_)));
        self.tweets.write_rows(&tweets).await.expect("copy tweets");
        self.timelines
            .write_rows(&lines)
            .await
            .expect("copy timelines");
    }

    async fn rows(&self) -> (Vec<Row>, Vec<Row>) {
        let tweets = self.tweets.read_page(None, 100_000, None).await;
        let lines = self.timelines.read_page(None, 100_000, None).await;
        (tweets.expect("read tweets"), lines.expect("read timelines"))
    }
}

/// Diffs `a` and `b` (each table) and, with `heal`, repairs every difference found. Returns
/// the keys that differed: tweet ids, and user ids of timelines.
async fn diff(a: &Replica, b: &Replica, heal: bool) -> [BTreeSet<u64>; 2] {
    let tuning = Tuning {
        chunk_rows: 2,
        confirm_after: Duration::ZERO,
        ..Tuning::default()
    };
    let mut differing = [BTreeSet::new(), BTreeSet::new()];
    let tables = [(&a.tweets, &b.tweets), (&a.timelines, &b.timelines)];
    for ((x, y), keys) in tables.into_iter().zip(&mut differing) {
        let mut differ = Differ::new(x, y, None, &tuning);
        while let Some(chunk) = differ.next_chunk().await.expect("diff a chunk") {
            keys.extend(chunk.differences.iter().map(|d| d.key));
            if heal && !chunk.differences.is_empty() {
                let repaired = repair(x, y, &chunk.differences).await.expect("repair");
                assert_eq!(repaired, chunk.differences.len() as u64);
            }
        }
    }
    differing
}

/// Runs one case on three replicas, in databases `dbs`.
async fn converge(case: &Case, dbs: &[Database; 3], n: usize) -> Result<(), TestCaseError> {
    let mysql = matches!(dbs[0], Database::Mysql { .. });
    let a = Replica::create(&dbs[0], n, false).await;
    let b = Replica::create(&dbs[1], n, mysql).await;
    let c = Replica::create(&dbs[2], n, false).await;

    a.apply_one_by_one(&case.writes).await;
    a.apply_one_by_one(case.a_repeats.iter().map(|&i| &case.writes[i]))
        .await;
    let mut b_writes = case.b_order.clone();
    b_writes.extend(case.b_repeats.iter().map(|&i| case.writes[i].clone()));
    b.apply_in_batches(&b_writes, &case.b_batches).await;
    c.copy(&case.writes).await;

    let expected = model(&case.writes);
    let (rows_a, rows_b, rows_c) = (a.rows().await, b.rows().await, c.rows().await);
    prop_assert_eq!(&rows_a, &expected, "replica a against the merge rule");
    prop_assert_eq!(
        &rows_b,
        &rows_a,
        "replica b (other order, batches) against a"
    );
    prop_assert_eq!(&rows_c, &rows_a, "replica c (a bulk copy) against a");
    prop_assert!(diff(&a, &b, false).await.iter().all(BTreeSet::is_empty));

    // A difference only a received: repair makes both sides the merge of the two, and a
    // second diff is clean.
    a.apply_one_by_one(&case.a_only).await;
    let expected = model(case.writes.iter().chain(&case.a_only));
    diff(&a, &b, true).await;
    prop_assert!(
        diff(&a, &b, false).await.iter().all(BTreeSet::is_empty),
        "a diff after repair is clean"
    );
    let (rows_a, rows_b) = (a.rows().await, b.rows().await);
    prop_assert_eq!(&rows_a, &expected, "a against the merge rule");
    prop_assert_eq!(&rows_b, &expected, "b after repair");
    Ok(())
}

#[test]
fn tweet_replicas_converge_on_sqlite() {
    let runtime = property::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let dbs = runtime.block_on(property::sqlite_databases::<3>(dir.path()));
    property::run_cases(case(), 96, &runtime, async |case, n| {
        converge(case, &dbs, n).await
    });
}

#[test]
fn tweet_replicas_converge_on_mariadb() {
    let runtime = property::runtime();
    let (_server, dbs) = runtime.block_on(property::mariadb_databases::<3>());
    property::run_cases(case(), 32, &runtime, async |case, n| {
        converge(case, &dbs, n).await
    });
}

/// The case the issue measured: two racing puts of one id with different users and texts
/// reached the two replicas in opposite orders. Both end with the smaller content, and a
/// replica that took only one of them is found by diff and healed by repair.
async fn racing_puts_converge_and_repair_heals(dbs: [Database; 3]) {
    let put = |user_id, text: &str| {
        TbirdWrite::PutTweet(Tweet {
            id: 42,
            user_id,
            text: text.into(),
            in_reply_to: None,
            deleted: false,
        })
    };
    let (first, second) = (put(7, "from seven"), put(3, "from three"));
    let a = Replica::create(&dbs[0], 0, false).await;
    let b = Replica::create(&dbs[1], 0, false).await;
    let c = Replica::create(&dbs[2], 0, false).await;
    a.apply_one_by_one([&first, &second]).await;
    b.apply_one_by_one([&second, &first]).await;
    let (rows_a, rows_b) = (a.rows().await, b.rows().await);
    assert_eq!(rows_a, rows_b, "both orders end the same");
    assert_eq!(
        rows_a.0,
        [TbirdWrite::row(&second)],
        "user 3 sorts before user 7"
    );

    // c took only the losing put: diff finds the key, and after repair nothing.
    c.apply_one_by_one([&first]).await;
    let found = diff(&c, &a, true).await;
    assert_eq!(found[0], BTreeSet::from([42]), "diff finds the difference");
    assert!(diff(&c, &a, false).await.iter().all(BTreeSet::is_empty));
    assert_eq!(c.rows().await, rows_a, "repair healed it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_puts_converge_and_repair_heals_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dbs = Vec::new();
    for name in ["a", "b", "c"] {
        let url = format!("sqlite://{}", dir.path().join(name).display());
        dbs.push(
            Database::open(&url, Duration::from_secs(5))
                .await
                .expect("open sqlite"),
        );
    }
    racing_puts_converge_and_repair_heals(dbs.try_into().expect("three")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_puts_converge_and_repair_heals_on_mariadb() {
    let server = tests::MariaDb::start().await.expect("mariadb");
    let mut dbs = Vec::new();
    for name in ["a", "b", "c"] {
        let url = server.create_database(name).await.expect("database");
        dbs.push(
            Database::open(&url, Duration::from_secs(5))
                .await
                .expect("open mariadb"),
        );
    }
    racing_puts_converge_and_repair_heals(dbs.try_into().expect("three")).await;
}
