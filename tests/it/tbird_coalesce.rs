//! Coalesced writes on two MariaDB replicas: concurrent posts share multi-row statements and
//! still land on both replicas; a tweet and its tombstone in one statement end deleted; a
//! replica frozen under concurrent posts gets a retry job per write and catches up once it
//! thaws; concurrent reads of one replica share queries and each gets its own tweets.

use std::{collections::HashMap, sync::Arc, time::Duration};

use db::Database;
use gizzard::{
    nameserver::{ShardId, ShardInfo},
    scheduler::JobFilter,
    shards::{PhysicalShard, WriteOp},
};
use mysql_async::prelude::Queryable;
use proto::tbird::v1::{GetTweetsRequest, PostTweetRequest, UserTweetsRequest};
use tbird::{
    store::{Kind, Page, Row, TWEETS_TABLE, TbirdShard, TbirdWrite},
    tweet::Tweet,
    tweets::TbirdProxy,
};
use tests::{
    MariaDb,
    tweets::{TweetCluster, TweetServer},
};
use tonic::transport::Channel;

type Client = proto::tbird::v1::tweets_client::TweetsClient<Channel>;

/// How long the retry queue may take to empty.
const LIMIT: Duration = Duration::from_secs(60);

/// A tweet service on a proxy over two MariaDB replicas (`h0`, `h1`), with the nameserver and
/// job queue on a third server.
struct Stack {
    cluster: TweetCluster,
    server: TweetServer,
    proxy: Arc<TbirdProxy>,
    client: Client,
}

impl Stack {
    async fn start() -> Self {
        let (cluster, server) = TweetCluster::start(2, 2, 4).await;
        let client = Client::connect(format!("http://{}", server.tweets))
            .await
            .expect("connect");
        Self {
            proxy: server.proxy.clone(),
            cluster,
            server,
            client,
        }
    }

    /// Posts `n` tweets at once (users 1 to 5); returns them, each acknowledged.
    async fn post_concurrently(&self, n: u64) -> Vec<proto::tbird::v1::Tweet> {
        let posts = (0..n).map(|i| {
            let mut client = self.client.clone();
            async move {
                let request = PostTweetRequest {
                    user_id: 1 + i % 5,
                    text: format!("tweet {i}"),
                    in_reply_to: None,
                };
                client.post_tweet(request).await.map(|r| r.into_inner())
            }
        });
        futures::future::join_all(posts)
            .await
            .into_iter()
            .map(|r| r.expect("post acknowledged"))
            .collect()
    }

    /// Returns every row of every leaf on host `host`, by table prefix.
    async fn rows_on(&self, host: &str) -> HashMap<String, Vec<Row>> {
        let topology = self.proxy.nameserver.load().await.expect("topology");
        let mut out = HashMap::new();
        for id in topology.shards.keys().filter(|id| id.hostname == host) {
            let leaf = self.proxy.router.leaf(id).await.expect("leaf");
            let rows = leaf
                .shard
                .read_page(None, 100_000, None)
                .await
                .expect("rows");
            out.insert(id.table_prefix.clone(), rows);
        }
        out
    }

    /// Asserts that both replicas hold the same rows, `tweets` tweets in all, every one live.
    async fn assert_replicas_hold(&self, tweets: &[proto::tbird::v1::Tweet]) {
        let (h0, h1) = (self.rows_on("h0").await, self.rows_on("h1").await);
        assert_eq!(h0, h1, "the replicas differ");
        let stored: HashMap<u64, &Tweet> = h0
            .values()
            .flatten()
            .filter_map(|row| match row {
                Row::Tweet(t) => Some((t.id, t)),
                Row::Timeline { .. } => None,
            })
            .collect();
        let entries = h0
            .values()
            .flatten()
            .filter(|row| matches!(row, Row::Timeline { deleted: false, .. }))
            .count();
        assert_eq!(stored.len(), tweets.len());
        assert_eq!(entries, tweets.len(), "one timeline entry per tweet");
        for t in tweets {
            let got = stored.get(&t.id).expect("stored");
            assert_eq!(
                (got.user_id, got.text.as_str(), got.deleted),
                (t.user_id, t.text.as_str(), false)
            );
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.server.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_land_on_both_replicas_and_read_back() {
    let mut stack = Stack::start().await;
    let posted = stack.post_concurrently(300).await;
    // Nothing failed on a healthy cluster, but a busy machine may push a write past the leaf
    // deadline into the queue: let it drain before comparing replicas.
    tests::cluster::drain(&stack.proxy.queue, LIMIT).await;
    stack.assert_replicas_hold(&posted).await;

    let ids: Vec<u64> = posted.iter().map(|t| t.id).collect();
    let got = stack
        .client
        .get_tweets(GetTweetsRequest { ids: ids.clone() })
        .await
        .expect("multi-get")
        .into_inner();
    assert!(got.missing.is_empty(), "missing {:?}", got.missing);
    assert_eq!(got.tweets.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    let page = UserTweetsRequest {
        user_id: 1,
        max_id: None,
        limit: 200,
    };
    let timeline = stack
        .client
        .user_tweets(page)
        .await
        .expect("timeline")
        .into_inner();
    let mut expected: Vec<u64> = posted
        .iter()
        .filter(|t| t.user_id == 1)
        .map(|t| t.id)
        .collect();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        timeline.tweets.iter().map(|t| t.id).collect::<Vec<_>>(),
        expected
    );
}

fn tweet(id: u64) -> Tweet {
    Tweet {
        id,
        user_id: 4,
        text: format!("tweet {id}"),
        in_reply_to: None,
        deleted: false,
    }
}

/// One statement holding a tweet and its tombstone, in either order, stores it deleted with
/// its content; the same holds for a timeline entry and its removal.
async fn put_and_delete_in_one_statement(db: Database) {
    let shard = |kind, prefix: &str| {
        let info = ShardInfo {
            id: ShardId::new("h", prefix).expect("id"),
            class_name: String::new(),
            busy: false,
        };
        TbirdShard::new(&info, kind, db.clone())
    };
    let (tweets, timeline) = (
        shard(Kind::Tweets, "t1_0000"),
        shard(Kind::Timelines, "t2_0000"),
    );
    tweets.materialize().await.expect("tweets table");
    timeline.materialize().await.expect("timeline table");

    let (put_a, del_a) = (
        TbirdWrite::PutTweet(tweet(1)),
        TbirdWrite::DeleteTweet { id: 1 },
    );
    let (put_b, del_b) = (
        TbirdWrite::PutTweet(tweet(2)),
        TbirdWrite::DeleteTweet { id: 2 },
    );
    let live = TbirdWrite::PutTweet(tweet(3));
    TbirdWrite::apply_batch(&[&put_a, &live, &del_a, &del_b, &put_b], &tweets)
        .await
        .expect("one statement");
    let got = tweets.get_tweets(&[1, 2, 3]).await.expect("read");
    let deleted = |id| Tweet {
        deleted: true,
        ..tweet(id)
    };
    assert_eq!(got, [deleted(1), deleted(2), tweet(3)]);

    let add = TbirdWrite::AddToTimeline {
        user_id: 4,
        tweet_id: 1,
    };
    let remove = TbirdWrite::RemoveFromTimeline {
        user_id: 4,
        tweet_id: 1,
    };
    let other = TbirdWrite::AddToTimeline {
        user_id: 4,
        tweet_id: 3,
    };
    TbirdWrite::apply_batch(&[&remove, &other, &add], &timeline)
        .await
        .expect("one statement");
    assert_eq!(
        timeline
            .timeline(&Page::new(4, None, 10))
            .await
            .expect("timeline"),
        [3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tweet_and_its_tombstone_in_one_statement_end_deleted_on_mariadb() {
    let server = MariaDb::start().await.expect("mariadb");
    let url = server.create_database("tbird").await.expect("db");
    let db = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open");
    put_and_delete_in_one_statement(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tweet_and_its_tombstone_in_one_statement_end_deleted_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("shard.db").display());
    let db = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open");
    put_and_delete_in_one_statement(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_and_deletes_of_the_same_tweets_end_deleted_on_both_replicas() {
    let stack = Stack::start().await;
    let writer = &stack.proxy.writer;
    let writes = (1..=100u64).flat_map(|id| {
        let put = TbirdWrite::PutTweet(tweet(id));
        let delete = TbirdWrite::DeleteTweet { id };
        [(id, put), (id, delete)]
    });
    let results = futures::future::join_all(
        writes.map(|(id, op)| async move { writer.write(TWEETS_TABLE, id, &op).await }),
    )
    .await;
    for result in results {
        result.expect("write acknowledged");
    }
    tests::cluster::drain(&stack.proxy.queue, LIMIT).await;
    let (h0, h1) = (stack.rows_on("h0").await, stack.rows_on("h1").await);
    assert_eq!(h0, h1, "the replicas differ");
    let rows: Vec<&Row> = h0.values().flatten().collect();
    assert_eq!(rows.len(), 100);
    for row in rows {
        let Row::Tweet(t) = row else {
            panic!("a timeline row from tweet writes: {row:?}");
        };
        assert_eq!(
            *t,
            Tweet {
                deleted: true,
                ..tweet(t.id)
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_gets_a_retry_per_write_and_catches_up() {
    let mut stack = Stack::start().await;
    let before = stack.post_concurrently(20).await;
    tests::cluster::drain(&stack.proxy.queue, LIMIT).await;

    // Frozen, the replica accepts connections and answers nothing: every write to it waits
    // out the leaf deadline (alone or batched) and is queued.
    stack.cluster.hosts[1].pause();
    let during = stack.post_concurrently(60).await;
    let jobs = stack
        .proxy
        .queue
        .list(&JobFilter::default())
        .await
        .expect("list jobs");
    let on_h1 = jobs
        .iter()
        .filter(|job| job.shard.as_deref().is_some_and(|s| s.starts_with("h1/")))
        .count();
    // Each post writes a tweet and a timeline entry; not one of them reached h1.
    assert_eq!(on_h1, 2 * during.len(), "one retry job per write to h1");

    stack.cluster.hosts[1].resume();
    tests::cluster::drain(&stack.proxy.queue, LIMIT).await;
    let all: Vec<_> = before.into_iter().chain(during).collect();
    stack.assert_replicas_hold(&all).await;
}

/// Many concurrent reads of two tables on one MariaDB host share queries, and each caller still
/// gets exactly the tweets it asked for (tombstones included, missing ids left out); when one
/// table is gone, its readers fail with the query's error naming it and the other table's
/// readers, batched with them, still get their tweets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_reads_return_each_caller_its_own_tweets() {
    let server = MariaDb::start().await.expect("mariadb");
    let url = server.create_database("tbird").await.expect("db");
    let db = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open");
    // Leaf `parity` holds the tweets whose id has that parity.
    let mut leaves = Vec::new();
    for parity in 0..2u64 {
        let id = ShardId::new("h", format!("t1_000{parity}")).expect("id");
        let info = ShardInfo {
            id: id.clone(),
            class_name: String::new(),
            busy: false,
        };
        let shard = Arc::new(TbirdShard::new(&info, Kind::Tweets, db.clone()));
        shard.materialize().await.expect("tweets table");
        let puts: Vec<TbirdWrite> = (1..=300)
            .filter(|id| id % 2 == parity)
            .map(|id| TbirdWrite::PutTweet(tweet(id)))
            .collect();
        let deletes: Vec<TbirdWrite> = (1..=300)
            .step_by(7)
            .filter(|id| id % 2 == parity)
            .map(|id| TbirdWrite::DeleteTweet { id })
            .collect();
        let writes: Vec<&TbirdWrite> = puts.iter().chain(&deletes).collect();
        TbirdWrite::apply_batch(&writes, &*shard)
            .await
            .expect("store tweets");
        leaves.push(gizzard::shards::Leaf {
            health: Arc::new(gizzard::shards::health::LeafHealth::new(&id)),
            id,
            shard,
        });
    }

    // One query in flight on the host: callers queue and share the next one.
    let reads = Arc::new(tbird::reads::TweetReads::new(Duration::from_secs(5), 1));
    let read = |i: u64| {
        let (reads, leaf) = (reads.clone(), leaves[(i % 2) as usize].clone());
        // Caller i asks its leaf for i, i + 2 and an id that does not exist.
        tokio::spawn(async move { (i, reads.get(&leaf, &[i + 2, i, 10_000 + i]).await) })
    };
    for caller in futures::future::join_all((1..=298u64).map(read)).await {
        let (i, got) = caller.expect("caller");
        let mut got = got.expect("read");
        got.sort_by_key(|t| t.id);
        let expected: Vec<Tweet> = [i, i + 2]
            .into_iter()
            .map(|id| Tweet {
                deleted: id % 7 == 1,
                ..tweet(id)
            })
            .collect();
        assert_eq!(got, expected, "caller {i}");
    }

    db.execute_batch("DROP TABLE t1_0000_tweets".into())
        .await
        .expect("drop the table");
    for caller in futures::future::join_all((1..=40u64).map(read)).await {
        let (i, got) = caller.expect("caller");
        if i % 2 == 0 {
            let err = got.expect_err("the table is gone");
            assert!(err.to_string().contains("t1_0000"), "{err}");
        } else {
            assert_eq!(
                got.expect("the other table still reads").len(),
                2,
                "caller {i}"
            );
        }
    }
}

/// Texts a statement must carry intact whatever it quotes or escapes.
const ODD_TEXTS: [&str; 6] = [
    "it's a 'quoted' tweet",
    "back\\slash \\' and \"double\"",
    "semi; DROP TABLE t1_0001_tweets; --",
    "placeholders ? ?? %s",
    "emoji 🐦 and ünïcødé",
    "tab\tnew\nline",
];

/// Tweet `id` with one of [`ODD_TEXTS`].
fn odd_tweet(id: u64) -> Tweet {
    Tweet {
        text: ODD_TEXTS[id as usize % ODD_TEXTS.len()].to_owned(),
        ..tweet(id)
    }
}

/// Write batches for several tables of one MariaDB host, arriving while the host's statement
/// slot is busy, share round trips (one multi-statement query), and every row lands exactly as
/// written, whatever its text holds; when one table is gone, only its writes fail, with an
/// error naming it, and the writes combined with them still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_batches_to_one_host_share_round_trips_and_fail_apart() {
    let server = MariaDb::start().await.expect("mariadb");
    let url = server.create_database("tbird").await.expect("db");
    let db = Database::open(&url, Duration::from_secs(5))
        .await
        .expect("open");
    // One round trip in flight on the host: batches queue and go out together.
    let merges = Arc::new(tbird::store::Merges::new(1));
    let mut shards = Vec::new();
    for k in 0..4 {
        let info = ShardInfo {
            id: ShardId::new("h", format!("t1_000{k}")).expect("id"),
            class_name: String::new(),
            busy: false,
        };
        let shard = TbirdShard::new(&info, Kind::Tweets, db.clone()).with_merges(merges.clone());
        shard.materialize().await.expect("tweets table");
        shards.push(Arc::new(shard));
    }
    // Tweet `id` lives on shard `id % 4`; each caller writes one batch to one shard.
    let write = |ids: Vec<u64>| {
        let shard = shards[(ids[0] % 4) as usize].clone();
        tokio::spawn(async move {
            let writes: Vec<TbirdWrite> = ids
                .iter()
                .map(|&id| TbirdWrite::PutTweet(odd_tweet(id)))
                .collect();
            let writes: Vec<&TbirdWrite> = writes.iter().collect();
            TbirdWrite::apply_batch(&writes, &*shard).await
        })
    };
    let mut conn = server.connect("tbird").await.expect("connect");
    conn.query_drop("SET GLOBAL log_output = 'TABLE', GLOBAL general_log = 1")
        .await
        .expect("log queries");
    // Ids `id` and `id + 1600` share a shard.
    let callers: Vec<_> = (1..=400u64).map(|id| write(vec![id, id + 1600])).collect();
    for caller in futures::future::join_all(callers).await {
        caller.expect("caller").expect("write");
    }
    conn.query_drop("SET GLOBAL general_log = 0")
        .await
        .expect("log off");
    let combined: u64 = conn
        .query_first(
            "SELECT COUNT(*) FROM mysql.general_log WHERE command_type = 'Query' \
             AND argument LIKE 'INSERT INTO t1_000%;%INSERT INTO t1_000%'",
        )
        .await
        .expect("read the log")
        .expect("a count");
    assert!(combined > 0, "no write batches shared a round trip");
    for (k, shard) in shards.iter().enumerate() {
        let ids: Vec<u64> = (1..=400u64)
            .flat_map(|id| [id, id + 1600])
            .filter(|id| id % 4 == k as u64)
            .collect();
        let mut got = shard.get_tweets(&ids).await.expect("read back");
        got.sort_by_key(|t| t.id);
        let mut expected: Vec<Tweet> = ids.into_iter().map(odd_tweet).collect();
        expected.sort_by_key(|t| t.id);
        assert_eq!(got, expected, "shard {k}");
    }

    db.execute_batch("DROP TABLE t1_0000_tweets".into())
        .await
        .expect("drop the table");
    let callers: Vec<_> = (5_000..5_040u64).map(|id| (id, write(vec![id]))).collect();
    for (id, caller) in callers {
        let result = caller.await.expect("caller");
        if id % 4 == 0 {
            let err = result.expect_err("the table is gone");
            assert!(err.to_string().contains("t1_0000"), "{err}");
        } else {
            result.expect("the other tables still take writes");
            let got = shards[(id % 4) as usize]
                .get_tweets(&[id])
                .await
                .expect("read back");
            assert_eq!(got, [odd_tweet(id)]);
        }
    }
}
