//! A frozen replica costs a post its hedge at most, never its deadline: one replica's MariaDB
//! is SIGSTOPped while 16 writers post through one server of a 2-replica cluster and readers
//! read what was posted before. The server runs with leaf and database deadlines (30 s) far
//! beyond a caller's patience (10 s per call), so a post or read that waited for the frozen
//! replica's deadline fails here: only hedging, and reading the replica last once it stalls,
//! keeps them answering. After SIGCONT the replica catches up from the retry queue: the queue
//! drains, a diff of every replica pair is clean, and every acknowledged post reads back and
//! is on its author's timeline.
//!
//! Phases end on counts of acknowledged posts (and a least duration, so the freeze outlasts
//! two suspect cool-downs); no assertion is on wall-clock latency.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gizzard::{server::ProxySettings, shards::health::COOL_DOWN};
use proto::tbird::v1::{
    GetTweetsRequest, PostTweetRequest, UserTweetsRequest, tweets_client::TweetsClient,
};
use tests::tweets::{Ledger, TweetCluster, missing, missing_from_timelines};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Concurrent writers, all through one server.
const WRITERS: u64 = 16;
/// Distinct users the writers post as.
const USERS: u64 = 200;
/// How long a caller waits for one call: far below the server's deadlines.
const PATIENCE: Duration = Duration::from_secs(10);
/// The server's leaf and database deadlines.
const DEADLINE: Duration = Duration::from_secs(30);
/// Posts each phase waits for.
const PER_PHASE: u64 = 300;
/// The longest a phase may take, or the queue to drain.
const LIMIT: Duration = Duration::from_secs(120);

fn settings(nameserver_url: &str) -> ProxySettings {
    let mut settings = tests::tweets::settings(nameserver_url);
    settings.leaf_timeout = DEADLINE;
    settings.db_timeout = DEADLINE;
    // More workers, so the backlog of a long freeze drains in reasonable time.
    settings.workers.count = 4;
    settings
}

/// What the writers and readers saw.
#[derive(Default)]
struct Tally {
    posted: Mutex<Vec<(u64, u64)>>,
    acked: AtomicU64,
    reads: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn failed(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(what);
    }

    fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `PER_PHASE` more posts than `from` are acknowledged and `least` has
    /// passed; returns the new count.
    async fn wait_for(&self, from: u64, least: Duration, phase: &str) -> u64 {
        let started = Instant::now();
        loop {
            let acked = self.acked.load(Ordering::SeqCst);
            if acked >= from + PER_PHASE && started.elapsed() >= least {
                return acked;
            }
            assert!(
                started.elapsed() < LIMIT,
                "{phase}: {} of {PER_PHASE} posts acknowledged within {LIMIT:?}; failures: {:?}",
                acked - from,
                self.failures()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ledger(&self) -> Ledger {
        let posted = self.posted.lock().unwrap_or_else(PoisonError::into_inner);
        Ledger {
            acked: posted.iter().map(|(id, _)| *id).collect(),
            users: posted.iter().copied().collect::<HashMap<_, _>>(),
            ..Ledger::default()
        }
    }
}

fn client(addr: &str) -> TweetsClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .timeout(PATIENCE)
        .connect_lazy();
    TweetsClient::new(channel)
}

fn start_writers(addr: &str, tally: &Arc<Tally>, stop: &CancellationToken) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for writer in 0..WRITERS {
        let (mut client, tally, stop) = (client(addr), tally.clone(), stop.clone());
        tasks.spawn(async move {
            for n in 0u64.. {
                if stop.is_cancelled() {
                    return;
                }
                let user_id = 1 + (writer * 7919 + n) % USERS;
                let request = PostTweetRequest {
                    user_id,
                    text: format!("writer {writer} tweet {n}"),
                    in_reply_to: None,
                };
                match client.post_tweet(request).await {
                    Ok(tweet) => {
                        let id = tweet.into_inner().id;
                        tally
                            .posted
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((id, user_id));
                        tally.acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => tally.failed(format!("post: {status}")),
                }
            }
        });
    }
    tasks
}

/// Reads tweets posted before the freeze, and their authors' timelines, until `stop`.
fn start_readers(
    addr: &str,
    before: Vec<(u64, u64)>,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let before = Arc::new(before);
    for reader in 0..2 {
        let (mut client, tally, stop) = (client(addr), tally.clone(), stop.clone());
        let before = before.clone();
        tasks.spawn(async move {
            for n in 0usize.. {
                if stop.is_cancelled() {
                    return;
                }
                let (id, user_id) = before[(n * 2 + reader) % before.len()];
                let got = client
                    .get_tweets(GetTweetsRequest { ids: vec![id] })
                    .await
                    .map(|r| r.into_inner().missing.is_empty());
                let timeline = client
                    .user_tweets(UserTweetsRequest {
                        user_id,
                        max_id: Some(id),
                        limit: 1,
                    })
                    .await
                    .map(|r| r.into_inner().tweets.first().map(|t| t.id));
                match (got, timeline) {
                    (Ok(true), Ok(Some(first))) if first == id => {
                        tally.reads.fetch_add(1, Ordering::SeqCst);
                    }
                    other => tally.failed(format!("read tweet {id} of user {user_id}: {other:?}")),
                }
            }
        });
    }
    tasks
}

async fn stop_all(stop: &CancellationToken, mut tasks: JoinSet<()>) {
    stop.cancel();
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_frozen_replica_costs_posts_no_deadline_and_catches_up() {
    let (mut cluster, server) = TweetCluster::start_with(2, 2, 4, &[], settings).await;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let writers = start_writers(&server.tweets, &tally, &stop);

    let n = tally.wait_for(0, Duration::ZERO, "before the freeze").await;
    let before = tally
        .posted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    cluster.hosts[1].pause();
    let stop_reads = CancellationToken::new();
    let readers = start_readers(&server.tweets, before, &tally, &stop_reads);
    // Longer than two cool-downs: a suspect replica's cool-down ending must not stall posts.
    let n = tally
        .wait_for(
            n,
            COOL_DOWN * 2 + Duration::from_secs(1),
            "while h1 is frozen",
        )
        .await;
    stop_all(&stop_reads, readers).await;
    let reads = tally.reads.load(Ordering::SeqCst);
    let depth = server.proxy.queue.depth().await.expect("queue depth");
    let queued: u64 = depth.values().sum();
    cluster.hosts[1].resume();
    tally.wait_for(n, Duration::ZERO, "after h1 thawed").await;
    stop_all(&stop, writers).await;

    assert_eq!(
        tally.failures(),
        Vec::<String>::new(),
        "a call failed although one replica and the queue stayed up"
    );
    assert!(reads > 0, "no read completed while h1 was frozen");
    assert!(queued > 0, "the posts h1 missed wait in the retry queue");

    tests::cluster::drain(&server.proxy.queue, LIMIT).await;
    let differing = cluster.full_diff(&server).await;
    assert!(differing.is_empty(), "replicas differ: {differing:?}");
    let ledger = tally.ledger();
    let lost = missing(&server.tweets, &ledger.acked).await;
    assert!(lost.is_empty(), "acknowledged posts missing: {lost:?}");
    let unlisted = missing_from_timelines(&server.tweets, &ledger).await;
    assert!(
        unlisted.is_empty(),
        "acknowledged posts missing from timelines: {unlisted:?}"
    );
    eprintln!(
        "frozen replica: {} posts acknowledged, {reads} reads while frozen, {queued} jobs \
         queued at the thaw",
        ledger.acked.len()
    );
}
