//! What callers of the tweet service see when ids collide or a post fails part-way: a
//! `PutTweet` of a taken id is refused with ALREADY_EXISTS and touches no timeline, the same
//! content again is fine, racing puts of one id leave exactly one winner whose user alone
//! lists the tweet, and a post that fails after its id was assigned names that id so that
//! `PutTweet` can finish it without making a second tweet. A tweet only one replica holds yet
//! reads back whichever replica a read tries first, while the other's write waits in the retry
//! queue.

use std::{sync::Arc, time::Duration};

use gizzard::{scheduler::queue::Priority, shards::PhysicalShard};
use mysql_async::prelude::Queryable;
use proto::tbird::v1::{
    GetTweetRequest, GetTweetsRequest, PostTweetRequest, PutTweetRequest, Tweet, UserTweetsRequest,
    tweets_client::TweetsClient,
};
use tbird::{
    service::partly_posted_id,
    store::{TIMELINES_TABLE, TWEETS_TABLE, TbirdWrite},
    tweets::TbirdProxy,
};
use tests::{cluster::Databases, tweets::TweetCluster};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};

use crate::tbird_service::serve_proxy;

type Client = TweetsClient<Channel>;

fn tweet(id: u64, user_id: u64, text: &str, in_reply_to: Option<u64>) -> Tweet {
    Tweet {
        id,
        user_id,
        text: text.to_owned(),
        in_reply_to,
        ..Tweet::default()
    }
}

async fn put(client: &mut Client, tweet: &Tweet) -> Result<Tweet, Status> {
    let request = PutTweetRequest {
        tweet: Some(tweet.clone()),
    };
    client.put_tweet(request).await.map(|r| r.into_inner())
}

/// Returns the ids `user_id`'s timeline lists, newest first.
async fn timeline(client: &mut Client, user_id: u64) -> Vec<u64> {
    let request = UserTweetsRequest {
        user_id,
        max_id: None,
        limit: 200,
    };
    let page = client.user_tweets(request).await.expect("timeline");
    page.into_inner().tweets.iter().map(|t| t.id).collect()
}

async fn stored(client: &mut Client, id: u64) -> Tweet {
    client
        .get_tweet(GetTweetRequest { id })
        .await
        .expect("get")
        .into_inner()
}

async fn taken_ids(mut client: Client, proxy: Arc<TbirdProxy>) {
    let id = (1 << 40) | 1;
    let mine = tweet(id, 1, "mine", None);
    put(&mut client, &mine).await.expect("first put");
    put(&mut client, &mine)
        .await
        .expect("the same content again is a retry, and fine");

    // Any other content for the id is refused, the id named, whichever way it sorts.
    let others = [
        tweet(id, 2, "theirs", None),
        tweet(id, 1, "mine, edited", None),
        tweet(id, 1, "mine", Some(3)),
        tweet(id, 1, "mine ", None),
        tweet(id, 1, "Mine", None),
    ];
    for other in &others {
        let status = put(&mut client, other).await.expect_err("taken id");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(
            status.message().contains(&id.to_string()),
            "names the id: {}",
            status.message()
        );
    }
    let got = stored(&mut client, id).await;
    assert_eq!((got.user_id, &got.text[..]), (1, "mine"));
    assert_eq!(timeline(&mut client, 1).await, [id]);
    assert!(
        timeline(&mut client, 2).await.is_empty(),
        "the refused user's timeline gained nothing"
    );

    // A timeline entry pointing at another user's tweet (left by a put that lost a race
    // before it could see so) is not listed.
    proxy
        .writer
        .write(
            TIMELINES_TABLE,
            3,
            &TbirdWrite::AddToTimeline {
                user_id: 3,
                tweet_id: id,
            },
        )
        .await
        .expect("stray entry");
    assert!(timeline(&mut client, 3).await.is_empty());

    // Racing puts of one id by two users. The stored tweet is the content of a call that
    // succeeded (the merge rule's pick when both wrote), a refused call's content is never
    // the stored one, and only the stored tweet's user lists the id. Both calls may succeed
    // when they overlap completely (neither can see the other's write yet); the rule still
    // picks one content on every replica.
    let mut both_ok = 0;
    for n in 0..8u64 {
        let id = (2 << 40) | n;
        let (a, b) = (
            tweet(id, 10 + n, "zz racing", None),
            tweet(id, 20 + n, "aa racing", None),
        );
        let (mut ca, mut cb) = (client.clone(), client.clone());
        let (ra, rb) = tokio::join!(put(&mut ca, &a), put(&mut cb, &b));
        for result in [&ra, &rb] {
            if let Err(status) = result {
                assert_eq!(status.code(), Code::AlreadyExists, "race {n}: {status:?}");
            }
        }
        assert!(
            ra.is_ok() || rb.is_ok(),
            "race {n}: one call wins: {ra:?} {rb:?}"
        );
        both_ok += usize::from(ra.is_ok() && rb.is_ok());
        let got = stored(&mut client, id).await;
        let (winner, loser) = if got.user_id == a.user_id {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert_eq!(
            (got.user_id, &got.text),
            (winner.user_id, &winner.text),
            "race {n}"
        );
        let winner_ok = if winner.user_id == a.user_id {
            &ra
        } else {
            &rb
        };
        assert!(
            winner_ok.is_ok(),
            "race {n}: the stored content's call succeeded"
        );
        assert!(timeline(&mut client, winner.user_id).await.contains(&id));
        assert!(
            !timeline(&mut client, loser.user_id).await.contains(&id),
            "race {n}: the loser's timeline does not list the winner's tweet"
        );
    }
    eprintln!("{both_ok} of 8 races answered OK to both calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_tweet_of_a_taken_id_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let hosts = vec![("a".to_owned(), url("a.db")), ("b".to_owned(), url("b.db"))];
    let shutdown = CancellationToken::new();
    let (client, proxy, _) = serve_proxy(&url("ns.db"), hosts, &shutdown).await;
    taken_ids(client, proxy).await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_tweet_of_a_taken_id_on_mariadb() {
    let dbs = Databases::start(2, "tbird", &[]).await;
    let (nameserver, hosts) = (&dbs.nameserver_url, dbs.host_urls("tbird"));
    let shutdown = CancellationToken::new();
    let (client, proxy, _) = serve_proxy(nameserver, hosts, &shutdown).await;
    taken_ids(client, proxy).await;
    shutdown.cancel();
}

/// A post whose second replica and job queue are both down is stored on the first replica
/// only, and fails: its status names the tweet's id (message and `tweet-id` metadata). Once
/// they are back, `PutTweet` with that id finishes the tweet on both replicas, and the user
/// has one tweet, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_fails_part_way_names_its_id_for_put_tweet() {
    let (mut cluster, server) = TweetCluster::start(2, 2, 4).await;
    let mut client = Client::connect(format!("http://{}", server.tweets))
        .await
        .expect("connect");
    let user_id = 77;
    let post = PostTweetRequest {
        user_id,
        text: "half a tweet".into(),
        in_reply_to: None,
    };

    cluster.hosts[1].kill();
    cluster.nameserver.kill();
    let status = client
        .post_tweet(post.clone())
        .await
        .expect_err("no replica of h1 and no queue: the post cannot be made durable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let id = partly_posted_id(&status).expect("the status names the id in tweet-id");
    assert!(
        status
            .message()
            .contains(&format!("tweet {id} may be partly stored"))
            && status.message().contains("PutTweet"),
        "{}",
        status.message()
    );

    cluster
        .nameserver
        .restart()
        .await
        .expect("restart nameserver");
    cluster.hosts[1].restart().await.expect("restart h1");
    // h0 took the tweet, h1 never did: partly stored, with no retry job to finish it.
    let tree = server
        .proxy
        .router
        .tree(TWEETS_TABLE, id)
        .await
        .expect("route");
    let plan = tree.write_plan();
    let mut held = Vec::new();
    for leaf in &plan.leaves {
        let rows = leaf.shard.get_tweets(&[id]).await.expect("read a replica");
        held.push((leaf.id.hostname.clone(), rows.len()));
    }
    held.sort();
    assert_eq!(held, [("h0".to_owned(), 1), ("h1".to_owned(), 0)]);

    // The retry the status asks for. The proxy may need a moment to reach the restarted
    // servers again; until then PutTweet fails, and repeating it is safe.
    let finished = tweet(id, user_id, "half a tweet", None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match put(&mut client, &finished).await {
            Ok(_) => break,
            Err(status) if tokio::time::Instant::now() < deadline => {
                tracing::info!(%status, "put not through yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("PutTweet never went through: {status:?}"),
        }
    }
    for leaf in &plan.leaves {
        let rows = leaf.shard.get_tweets(&[id]).await.expect("read a replica");
        assert_eq!(rows.len(), 1, "{} holds the tweet", leaf.id);
        assert_eq!(rows[0].text, "half a tweet");
    }
    drop(plan);
    let got = stored(&mut client, id).await;
    assert_eq!((got.user_id, &got.text[..]), (user_id, "half a tweet"));
    assert_eq!(
        timeline(&mut client, user_id).await,
        [id],
        "one tweet, not two"
    );
    // Every timeline row of the user, on every replica, is that one tweet's.
    let lines = server
        .proxy
        .router
        .tree(TIMELINES_TABLE, user_id)
        .await
        .expect("route");
    for leaf in &lines.write_plan().leaves {
        let rows = leaf.shard.read_page(None, 1_000, None).await.expect("rows");
        assert_eq!(rows.len(), 1, "{}: {rows:?}", leaf.id);
    }
    server.shutdown.cancel();
}

/// A replica that refuses a post's write (a trigger on h1 raises an error) leaves the tweet
/// on h0 and a retry job for h1, held back by pausing retries: the post is acknowledged, and
/// the tweet then reads back wherever a read lands first, alone and in a multi-get, though h1
/// answers reads without it. An id that no replica holds is still NOT_FOUND. Once retries
/// resume, h1 gets the tweet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tweet_whose_write_waits_in_a_replicas_retry_queue_reads_back_from_either() {
    let (cluster, server) = TweetCluster::start(2, 2, 1).await;
    let queue = &server.proxy.queue;
    queue.pause(Priority::High).await.expect("pause retries");
    let mut h1 = cluster.hosts[1].connect("tbird").await.expect("connect h1");
    h1.query_drop(
        "CREATE TRIGGER refuse BEFORE INSERT ON t1_0000_tweets FOR EACH ROW \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'h1 refuses writes'",
    )
    .await
    .expect("create the trigger");
    let mut client = Client::connect(format!("http://{}", server.tweets))
        .await
        .expect("connect");
    let id = client
        .post_tweet(PostTweetRequest {
            user_id: 7,
            text: "h1 missed this".into(),
            in_reply_to: None,
        })
        .await
        .expect("acknowledged: h0 applied it, h1 has a retry job")
        .into_inner()
        .id;
    h1.query_drop("DROP TRIGGER refuse")
        .await
        .expect("drop the trigger");
    let on_h1 = |mut h1: mysql_async::Conn| async move {
        let rows: Option<u64> = h1
            .query_first(format!(
                "SELECT COUNT(*) FROM t1_0000_tweets WHERE id = {id}"
            ))
            .await
            .expect("count");
        (h1, rows.unwrap_or(0))
    };
    let (h1, missed) = on_h1(h1).await;
    assert_eq!(missed, 0, "h1 refused the write");

    // Reads try a replica at random: twenty reads all try h0 first once in a million.
    for _ in 0..20 {
        let read = client
            .get_tweet(GetTweetRequest { id })
            .await
            .expect("the acknowledged tweet reads back");
        assert_eq!(read.into_inner().text, "h1 missed this");
    }
    let many = client
        .get_tweets(GetTweetsRequest {
            ids: vec![id, id + 1],
        })
        .await
        .expect("multi-get")
        .into_inner();
    let ids: Vec<u64> = many.tweets.iter().map(|t| t.id).collect();
    assert_eq!((ids, many.missing), (vec![id], vec![id + 1]));
    let absent = client
        .get_tweet(GetTweetRequest { id: id + 1 })
        .await
        .expect_err("no replica holds it");
    assert_eq!(absent.code(), Code::NotFound, "{absent}");

    queue.resume(Priority::High).await.expect("resume retries");
    tests::cluster::drain(queue, Duration::from_secs(30)).await;
    let (_, healed) = on_h1(h1).await;
    assert_eq!(healed, 1, "the retry job brought the tweet to h1");
}
