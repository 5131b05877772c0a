//! Topology changes are fenced, not timed: a server cut off from the nameserver (its
//! connection goes through a relay the test cuts) stops acknowledging writes once its routing
//! lease lapses, migrations wait for every server's agreement or provably lapsed lease, and a
//! leaf retired by a cutover takes no late write. Real MariaDB servers and loopback gRPC.

use std::time::{Duration, Instant};

use gizzard::{
    nameserver::{ShardId, ShardInfo},
    server::ProxySettings,
    shards::{PhysicalShard, WriteOp},
};
use mysql_async::prelude::Queryable;
use proto::{
    gizzard::v1::{self as gpb, start_migration_request::Kind},
    tbird::v1::{GetTweetRequest, PostTweetRequest, tweets_client::TweetsClient},
};
use tbird::{store::TbirdWrite, tweet::Tweet};
use tests::{
    relay::Relay,
    tweets::{
        TweetCluster, TweetServer, TweetWriter, missing, missing_from_timelines, run_migration,
        settings, wait_migration,
    },
    wait_until,
};

/// Starts a server whose nameserver connection (routing, queue, registry) goes through a
/// relay; its shard connections are direct.
async fn behind_relay(cluster: &TweetCluster, lease: Duration) -> (Relay, TweetServer) {
    let target = cluster.nameserver.addr();
    let relay = Relay::start(target).await;
    let url = relay.mysql_url(&cluster.nameserver_url, target);
    assert_ne!(
        url, cluster.nameserver_url,
        "the relay replaces the address"
    );
    let server = cluster
        .serve(ProxySettings {
            routing_lease: lease,
            server_name: "behind-relay".into(),
            ..settings(&url)
        })
        .await;
    (relay, server)
}

/// Returns the rows of `user` in the tweet tables and in the timeline tables of the first
/// replica host (every range of a `TweetCluster` has a replica there).
async fn rows_of_user(cluster: &TweetCluster, user: u64) -> (usize, usize) {
    let mut conn = cluster.hosts[0].connect("tbird").await.expect("connect");
    let tables: Vec<String> = conn.query("SHOW TABLES").await.expect("tables");
    let (mut tweets, mut timeline) = (0, 0);
    for table in tables {
        let rows: Option<usize> = conn
            .query_first(format!(
                "SELECT COUNT(*) FROM {table} WHERE user_id = {user}"
            ))
            .await
            .expect("count");
        let rows = rows.unwrap_or(0);
        if table.ends_with("_tweets") {
            tweets += rows;
        } else {
            timeline += rows;
        }
    }
    (tweets, timeline)
}

fn move_kind(shard: &str, to_host: &str) -> Kind {
    Kind::Move(gpb::MoveRequest {
        shard: shard.into(),
        to_host: to_host.into(),
    })
}

async fn post(addr: &str, user_id: u64, text: &str) -> Result<u64, tonic::Status> {
    let mut client = TweetsClient::connect(format!("http://{addr}"))
        .await
        .expect("connect tweets");
    client
        .post_tweet(PostTweetRequest {
            user_id,
            text: text.to_owned(),
            in_reply_to: None,
        })
        .await
        .map(|r| r.into_inner().id)
}

/// The scenario: a server keeps posting while cut off from the nameserver, and both
/// replicas of range 0 of tables 1 and 2 move (then a range splits) through another server.
/// Before fencing, the cut-off server acknowledged posts into the retired tables. Now every
/// acknowledged post is readable through the other server, on its timeline too, and every
/// replica pair agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cut_off_from_the_nameserver_loses_no_acknowledged_post_across_moves_and_a_split()
{
    let (cluster, p1) = TweetCluster::start(4, 2, 3).await;
    let (relay, p2) = behind_relay(&cluster, Duration::from_millis(1_500)).await;
    let writes = TweetWriter::start(&p2.tweets, 4, Duration::from_millis(5)).await;
    writes.wait_for_acks(20, Duration::from_secs(30)).await;

    relay.cut();
    let mut admin = cluster.admin(&p1).await;
    let started = Instant::now();
    for table in [1, 2] {
        for (from, to) in [("h0", "h2"), ("h1", "h3")] {
            let shard = format!("{from}/t{table}_0000");
            let moved = run_migration(&mut admin, move_kind(&shard, to)).await;
            assert_eq!(moved.status, "done", "{moved:?}");
        }
    }
    let split = run_migration(
        &mut admin,
        Kind::Split(gpb::SplitRequest {
            table_id: 1,
            base_id: gizzard::nameserver::base_ids(3)[1],
            at: None,
        }),
    )
    .await;
    assert_eq!(split.status, "done", "{split:?}");
    eprintln!(
        "four moves and a split with a server cut off took {:?}",
        started.elapsed()
    );

    relay.heal();
    wait_until(
        "the cut-off server confirms its routing again",
        Duration::from_secs(20),
        || {
            let holds = p2.proxy.routing.lease_holds();
            async move { holds }
        },
    )
    .await;
    let healed_at = Instant::now();
    wait_until(
        "posts through it succeed again",
        Duration::from_secs(20),
        || async { post(&p2.tweets, 7, "after the heal").await.is_ok() },
    )
    .await;
    eprintln!("writes resumed {:?} after the heal", healed_at.elapsed());
    writes.wait_for_acks(20, Duration::from_secs(30)).await;
    let ledger = writes.stop().await;

    assert!(
        ledger.acked.len() > 20,
        "posts acknowledged: {}",
        ledger.acked.len()
    );
    assert!(
        ledger
            .failures
            .iter()
            .any(|f| f.contains("routing unconfirmed for")),
        "the cut-off server refused writes once its lease lapsed: {:?}",
        &ledger.failures[..ledger.failures.len().min(3)]
    );
    tests::cluster::drain(&p1.proxy.queue, Duration::from_secs(60)).await;
    let lost = missing(&p1.tweets, &ledger.acked).await;
    assert!(lost.is_empty(), "acknowledged posts lost: {lost:?}");
    let off_timeline = missing_from_timelines(&p1.tweets, &ledger).await;
    assert!(
        off_timeline.is_empty(),
        "acknowledged posts missing from their timelines: {off_timeline:?}"
    );
    let differing = cluster.full_diff(&p1).await;
    assert!(differing.is_empty(), "replicas differ: {differing:?}");
    eprintln!(
        "{} posts acknowledged, {} refused while cut off",
        ledger.acked.len(),
        ledger.failures.len()
    );
}

/// The nameserver's MariaDB stops answering for 10 s (SIGSTOP). Reads go on; writes are
/// acknowledged until the lease lapses, then refused naming the reason; they resume on their
/// own once it answers. A post refused before any write says so, names no id to finish, and
/// stores nothing. Prints the write unavailability window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stop_within_the_lease_of_a_nameserver_outage_and_resume_after_it() {
    let (mut cluster, server) = TweetCluster::start(2, 2, 2).await;
    let lease = server.proxy.routing.lease_length();
    let before = post(&server.tweets, 1, "before the outage")
        .await
        .expect("post before the outage");
    let mut client = TweetsClient::connect(format!("http://{}", server.tweets))
        .await
        .expect("connect tweets");

    cluster.nameserver.pause();
    let paused_at = Instant::now();
    let mut first_refusal = None;
    let mut last_ack_in_outage = None;
    let (mut acked, mut in_doubt, mut refused_cleanly) = (0, 0, 0);
    while paused_at.elapsed() < Duration::from_secs(10) {
        match post(&server.tweets, 2, "during the outage").await {
            Ok(_) => {
                last_ack_in_outage = Some(paused_at.elapsed());
                acked += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                assert!(
                    status.message().contains("routing unconfirmed for"),
                    "{status}"
                );
                if status.message().contains("may be partly stored") {
                    // The lease lapsed while this post ran: it may have landed, and names
                    // its id so the caller can finish it.
                    assert!(status.metadata().get("tweet-id").is_some(), "{status:?}");
                    in_doubt += 1;
                } else {
                    // Refused before any write: nothing to finish, no id to finish it with.
                    assert!(status.message().starts_with("write refused"), "{status}");
                    assert!(status.metadata().get("tweet-id").is_none(), "{status:?}");
                    refused_cleanly += 1;
                }
                first_refusal.get_or_insert(paused_at.elapsed());
            }
        }
        let read = client
            .get_tweet(GetTweetRequest { id: before })
            .await
            .expect("reads go on during the outage");
        assert_eq!(read.into_inner().id, before);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_refusal = first_refusal.expect("writes were refused during the outage");
    assert!(
        refused_cleanly > 0,
        "posts after the lease lapsed are refused before any write, not left in doubt"
    );
    if let Some(last) = last_ack_in_outage {
        assert!(
            last < first_refusal,
            "no write acknowledged after the first refusal"
        );
    }
    cluster.nameserver.resume();
    let resumed_at = Instant::now();
    wait_until("writes resume", Duration::from_secs(30), || async {
        post(&server.tweets, 3, "after the outage").await.is_ok()
    })
    .await;
    let back = resumed_at.elapsed();
    let (tweets, timeline) = rows_of_user(&cluster, 2).await;
    for rows in [tweets, timeline] {
        assert!(
            (acked..=acked + in_doubt).contains(&rows),
            "{acked} posts acknowledged and {in_doubt} in doubt, {tweets} tweets and \
             {timeline} timeline rows stored: a refused post stores nothing"
        );
    }
    eprintln!(
        "10 s nameserver outage, lease {lease:?}: writes acknowledged for {:?}, refused from \
         {first_refusal:?} until {back:?} after it ended: unavailable for {:?}",
        last_ack_in_outage.unwrap_or_default(),
        Duration::from_secs(10) - first_refusal + back
    );
}

/// A write that reaches a leaf after a cutover retired it (a paused server's, say) fails:
/// its table was renamed once every server agreed on the cutover. After the grace period the
/// renamed table is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_to_a_retired_leaf_fails_and_its_table_is_dropped_after_the_grace() {
    fn short_grace(nameserver_url: &str) -> ProxySettings {
        ProxySettings {
            retired_grace: Duration::from_secs(3),
            ..settings(nameserver_url)
        }
    }
    let (cluster, p1) = TweetCluster::start_with(3, 2, 1, &[], short_grace).await;
    let retired: ShardId = "h0/t1_0000".parse().expect("shard id");
    // The leaf as a server that routed to it before the move holds it.
    let stale = p1.proxy.router.leaf(&retired).await.expect("leaf").shard;
    let id = post(&p1.tweets, 5, "before the move").await.expect("post");

    let mut admin = cluster.admin(&p1).await;
    let moved = run_migration(&mut admin, move_kind("h0/t1_0000", "h2")).await;
    assert_eq!(moved.status, "done", "{moved:?}");
    let nameserver = cluster.nameserver_view().await;
    let fenced = || async {
        nameserver
            .retired()
            .await
            .expect("retired")
            .into_iter()
            .find(|r| r.id == retired)
            .and_then(|r| r.fenced_prefix)
    };
    wait_until(
        "the retired leaf is fenced",
        Duration::from_secs(30),
        || async { fenced().await.is_some() },
    )
    .await;
    let fenced_table = format!("{}_tweets", fenced().await.expect("fenced"));
    let h0 = db::Database::open(&cluster.hosts[0].url("tbird"), Duration::from_secs(5))
        .await
        .expect("open h0");
    assert!(h0.table_exists(&fenced_table).await.expect("look"));
    assert!(!h0.table_exists("t1_0000_tweets").await.expect("look"));

    let late = Tweet::new(id + 1, 5, "late".into(), None).expect("valid tweet");
    let refused = TbirdWrite::PutTweet(late).apply(&stale).await;
    let err = refused.expect_err("a late write to the retired leaf fails");
    assert!(err.to_string().contains("t1_0000_tweets"), "{err}");
    let moved_away = missing(&p1.tweets, &[id]).await;
    assert!(
        moved_away.is_empty(),
        "the moved tweet reads back: {moved_away:?}"
    );

    // After the grace period the renamed table is dropped.
    wait_until(
        "the fenced table is dropped",
        Duration::from_secs(30),
        || async { nameserver.retired().await.expect("retired").is_empty() },
    )
    .await;
    assert!(!h0.table_exists(&fenced_table).await.expect("look"));
    assert!(h0.table_exists("t2_0000_timeline").await.expect("look"));
    // A fresh leaf of the same id gets a new, empty table.
    let info = ShardInfo {
        id: retired.clone(),
        class_name: tbird::store::TWEET_SHARD.into(),
        busy: false,
    };
    let fresh = p1.proxy.router.physical(&info).await.expect("physical");
    fresh.materialize().await.expect("materialize");
    assert!(h0.table_exists("t1_0000_tweets").await.expect("look"));
}

/// A migration cannot pass a step while a server that stopped answering may still route
/// writes by the old topology: it waits, naming the server, until that server's lease is
/// provably over by the database's clock, and then finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_waits_for_an_unreachable_server_until_its_lease_is_over_and_not_longer() {
    let (cluster, p1) = TweetCluster::start(3, 2, 1).await;
    let lease = Duration::from_secs(6);
    let (relay, p2) = behind_relay(&cluster, lease).await;
    let p2_id = p2.proxy.routing.identity().id.clone();
    relay.cut();
    // Dead for good: its tasks stop, and it cannot leave the registry through the cut.
    p2.kill().await;

    let mut admin = cluster.admin(&p1).await;
    let started = admin
        .start_migration(gpb::StartMigrationRequest {
            kind: Some(move_kind("h0/t1_0000", "h2")),
            ..Default::default()
        })
        .await
        .expect("start the move")
        .into_inner();
    let nameserver = cluster.nameserver_view().await;
    let mut seen_waiting = false;
    loop {
        let m = admin
            .get_migration(gpb::GetMigrationRequest { id: started.id })
            .await
            .expect("get migration")
            .into_inner();
        let servers = nameserver.servers().await.expect("servers");
        let record = servers
            .iter()
            .find(|s| s.id == p2_id)
            .expect("the dead server stays registered")
            .clone();
        if m.step == "prepare" || m.step == "settle" {
            seen_waiting |= m.note.contains(&p2_id);
        } else {
            // Past the wait: only because the lease is over, lease and margin included.
            assert!(
                record.is_stale(),
                "moved on before the lease was over: {record:?} {m:?}"
            );
            break;
        }
        assert!(m.status == "running", "{m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_waiting, "the move named the server it waited for");
    let done = wait_migration(&mut admin, started.id).await;
    assert_eq!(done.status, "done", "{done:?}");
}
