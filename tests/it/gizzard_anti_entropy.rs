//! Anti-entropy on real MariaDB replicas: differences injected behind the proxy's back (a
//! tweet on one replica only, a delete that reached one replica, a timeline entry on one
//! side) are found and repaired by the background sweep within its interval, with no
//! operator action, and the sweep's record and metrics say so.

use std::time::{Duration, Instant};

use gizzard::{
    migrate::anti_entropy::AntiEntropySettings, server::ProxySettings, shards::PhysicalShard,
};
use tbird::{store::Row, tweet::Tweet};
use tests::{
    stack::all_rows,
    tweets::{TweetCluster, TweetWriter, missing, settings},
    wait_until,
};

const INTERVAL: Duration = Duration::from_secs(2);

fn sweeping(nameserver_url: &str) -> ProxySettings {
    ProxySettings {
        anti_entropy: AntiEntropySettings {
            interval: Some(INTERVAL),
            rows_per_second: None,
        },
        ..settings(nameserver_url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_diverged_behind_the_proxy_heal_within_a_sweep_interval() {
    let (cluster, server) = TweetCluster::start_with(2, 2, 1, &[], sweeping).await;
    let writes = TweetWriter::start(&server.tweets, 2, Duration::from_millis(10)).await;
    writes.wait_for_acks(20, Duration::from_secs(30)).await;
    let ledger = writes.stop().await;
    assert!(!ledger.acked.is_empty());

    let router = &server.proxy.router;
    let leaf = |id: &str| {
        let id = id.parse().expect("shard id");
        async move { router.leaf(&id).await.expect("leaf").shard }
    };
    let (tweets_h0, tweets_h1) = (leaf("h0/t1_0000").await, leaf("h1/t1_0000").await);
    let timeline_h1 = leaf("h1/t2_0000").await;
    let only_h0 = Tweet::new(1 << 41, 9, "only on h0".into(), None).expect("tweet");
    tweets_h0
        .write_rows(&[Row::Tweet(only_h0.clone())])
        .await
        .expect("write h0");
    // A delete as it is stored, that reached h1 only.
    let deleted = Tweet {
        id: ledger.acked[0],
        user_id: 0,
        text: String::new(),
        in_reply_to: None,
        deleted: true,
    };
    tweets_h1
        .write_rows(&[Row::Tweet(deleted)])
        .await
        .expect("tombstone on h1");
    timeline_h1
        .write_rows(&[Row::Timeline {
            user_id: 9,
            tweet_id: 1 << 41,
            deleted: false,
        }])
        .await
        .expect("timeline on h1");
    let injected = Instant::now();
    assert_ne!(
        all_rows(&cluster.hosts[0], "tbird").await,
        all_rows(&cluster.hosts[1], "tbird").await
    );

    wait_until("the replicas agree row for row", INTERVAL * 10, || async {
        all_rows(&cluster.hosts[0], "tbird").await == all_rows(&cluster.hosts[1], "tbird").await
    })
    .await;
    eprintln!(
        "replicas agreed {:?} after the injected differences (interval {INTERVAL:?})",
        injected.elapsed()
    );
    // The repair merged both ways: the tweet is on both replicas, and the delete won.
    assert!(missing(&server.tweets, &[only_h0.id]).await.is_empty());
    assert_eq!(
        missing(&server.tweets, &[ledger.acked[0]]).await,
        vec![ledger.acked[0]]
    );
    let sweeps = server.proxy.sweeps.list().await.expect("sweeps");
    assert_eq!(sweeps.len(), 2, "one pair per table: {sweeps:?}");
    // Two tweet keys and one timeline key differed; a sweep may have repaired a key that
    // another sweep saw first, never fewer.
    wait_until(
        "the sweeps record what they repaired",
        INTERVAL * 10,
        || async {
            let sweeps = server.proxy.sweeps.list().await.expect("sweeps");
            sweeps.iter().map(|s| s.total_repaired).sum::<u64>() >= 3
        },
    )
    .await;
}
