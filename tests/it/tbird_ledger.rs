//! The write ledger: writers post tweets through a real `tbird serve` while a fault hits the
//! stack, recording every acknowledged tweet. Afterwards every acknowledged tweet is readable,
//! and once the job queue has drained the replicas agree.
//!
//! - A replica's MariaDB is killed mid-load and restarted: writes stay available (the dead
//!   replica's share goes to the retry queue), and once the queue drains both replicas hold
//!   exactly the same rows.
//! - The tbird server is killed (SIGKILL) mid-load and restarted: writers reconnect, and no
//!   acknowledged tweet is lost. A write in flight when the server died was never
//!   acknowledged; it may have reached one replica only, so only such tweets may differ.
//!
//! Phases end on counts of acknowledged writes, never on the clock alone, so a slow machine
//! only makes the test slower.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use proto::tbird::v1::{PostTweetRequest, tweets_client::TweetsClient};
use tests::{
    stack::{SHARD_DB, TbirdStack, all_rows},
    wait_until,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Concurrent writers.
const WRITERS: u64 = 6;
/// Acknowledged writes each phase waits for, and the least time it lasts.
const PER_PHASE: u64 = 30;
const PHASE: Duration = Duration::from_millis(1500);
/// The longest a phase may wait for its writes, or the queue for draining.
const LIMIT: Duration = Duration::from_secs(40);

/// Every acknowledged tweet: id to (user, text).
#[derive(Debug, Default)]
struct Ledger {
    acked: Mutex<BTreeMap<u64, (u64, String)>>,
    count: AtomicU64,
    failed: AtomicU64,
}

impl Ledger {
    fn record(&self, id: u64, user: u64, text: String) {
        let previous = self
            .acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (user, text));
        assert!(previous.is_none(), "id {id} acknowledged twice");
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> BTreeMap<u64, (u64, String)> {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `more` writes beyond `from` are acknowledged, and at least [`PHASE`] has
    /// passed; returns the new count.
    async fn wait_for(&self, from: u64, more: u64, phase: &str) -> u64 {
        let started = Instant::now();
        while self.count() < from + more || started.elapsed() < PHASE {
            assert!(
                started.elapsed() < LIMIT,
                "{phase}: {} of {more} writes acknowledged within {LIMIT:?} ({} failed)",
                self.count() - from,
                self.failed.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count()
    }
}

fn client(addr: &str) -> TweetsClient<Channel> {
    // Lazy: the channel connects on first use and reconnects after the server restarts.
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    TweetsClient::new(channel)
}

/// Starts the writers; each posts as its own user until `stop`, recording acknowledgements.
fn start_writers(addr: &str, ledger: &Arc<Ledger>, stop: &CancellationToken) -> JoinSet<()> {
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let (mut client, ledger, stop) = (client(addr), ledger.clone(), stop.clone());
        writers.spawn(async move {
            let user = 1_000 + writer;
            for n in 0u64.. {
                if stop.is_cancelled() {
                    return;
                }
                let text = format!("writer {writer} tweet {n}");
                let request = PostTweetRequest {
                    user_id: user,
                    text: text.clone(),
                    in_reply_to: None,
                };
                match client.post_tweet(request).await {
                    Ok(tweet) => ledger.record(tweet.into_inner().id, user, text),
                    Err(_) => {
                        // Not acknowledged: not in the ledger. Back off a little while the
                        // server is away.
                        ledger.failed.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    writers
}

async fn stop_writers(stop: &CancellationToken, mut writers: JoinSet<()>) {
    stop.cancel();
    while let Some(done) = writers.join_next().await {
        done.expect("writer task");
    }
}

/// Asserts that every acknowledged tweet reads back through the service, with its text.
async fn assert_all_readable(addr: &str, acked: &BTreeMap<u64, (u64, String)>) {
    let ids: Vec<u64> = acked.keys().copied().collect();
    let (tweets, missing) = tests::tweets::get_all(addr, &ids).await;
    assert!(
        missing.is_empty(),
        "acknowledged tweets missing: {missing:?}"
    );
    for tweet in tweets {
        let (user, text) = &acked[&tweet.id];
        assert_eq!((tweet.user_id, tweet.text.as_str()), (*user, text.as_str()));
    }
}

/// Returns the tweet ids of every shard table (tweets: column `id`; timelines: `tweet_id`).
fn tweet_id_of(table: &str, row: &[String]) -> u64 {
    let column = if table.ends_with("_tweets") { 0 } else { 1 };
    row[column]
        .trim_matches('\'')
        .parse()
        .expect("numeric tweet id")
}

/// Returns the ids in each host's tweet tables.
fn stored_ids(rows: &BTreeMap<String, BTreeSet<Vec<String>>>) -> BTreeSet<u64> {
    rows.iter()
        .filter(|(table, _)| table.ends_with("_tweets"))
        .flat_map(|(table, rows)| rows.iter().map(|row| tweet_id_of(table, row)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_ledger_survives_a_replica_killed_mid_load() {
    let mut stack = TbirdStack::start(2, 4, false).await;
    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    let writers = start_writers(&stack.tweets_addr, &ledger, &stop);

    let n = ledger.wait_for(0, PER_PHASE, "before the fault").await;
    stack.hosts[1].kill();
    let n = ledger.wait_for(n, PER_PHASE, "with replica b down").await;
    let depth = stack.queue().await.depth().await.expect("count jobs");
    let waiting: u64 = depth.values().sum();
    assert!(waiting > 0, "writes b missed wait in the retry queue");
    stack.hosts[1].restart().await.expect("restart replica b");
    ledger
        .wait_for(n, PER_PHASE, "after replica b came back")
        .await;
    stop_writers(&stop, writers).await;
    assert_eq!(
        ledger.failed.load(Ordering::SeqCst),
        0,
        "a write failed although one replica and the queue stayed up"
    );

    let acked = ledger.snapshot();
    stack.drain(LIMIT).await;
    assert_all_readable(&stack.tweets_addr, &acked).await;
    let a = all_rows(&stack.hosts[0], SHARD_DB).await;
    let b = all_rows(&stack.hosts[1], SHARD_DB).await;
    assert_eq!(a.len(), 8, "4 tweet and 4 timeline tables: {:?}", a.keys());
    assert!(a == b, "replicas differ after the queue drained");
    let ids = stored_ids(&a);
    assert!(
        acked.keys().all(|id| ids.contains(id)),
        "an acknowledged tweet is not on the replicas"
    );
    assert_eq!(
        ids.len(),
        acked.len(),
        "every post was acknowledged, so no other tweets"
    );
    eprintln!(
        "ledger: {} tweets acknowledged, {waiting} retry jobs queued while b was down",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_ledger_survives_the_server_killed_mid_load() {
    let mut stack = TbirdStack::start(2, 4, false).await;
    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    let writers = start_writers(&stack.tweets_addr, &ledger, &stop);

    let n = ledger.wait_for(0, PER_PHASE, "before the kill").await;
    stack.tbird.kill();
    stack.tbird.restart();
    stack.wait_serving().await;
    ledger.wait_for(n, PER_PHASE, "after the restart").await;
    stop_writers(&stop, writers).await;
    assert!(
        ledger.failed.load(Ordering::SeqCst) > 0,
        "no write failed: the kill cut nothing off"
    );

    let acked = ledger.snapshot();
    stack.drain(LIMIT).await;
    assert_all_readable(&stack.tweets_addr, &acked).await;
    let a = all_rows(&stack.hosts[0], SHARD_DB).await;
    let b = all_rows(&stack.hosts[1], SHARD_DB).await;
    for (name, rows) in [("a", &a), ("b", &b)] {
        let ids = stored_ids(rows);
        let lost: Vec<_> = acked.keys().filter(|id| !ids.contains(id)).collect();
        assert!(
            lost.is_empty(),
            "replica {name} lost acknowledged tweets {lost:?}"
        );
    }
    // Rows may differ only for tweets whose post was cut off by the kill.
    let mut differing = 0;
    for (table, rows_a) in &a {
        let rows_b = &b[table];
        for row in rows_a.symmetric_difference(rows_b) {
            let id = tweet_id_of(table, row);
            assert!(
                !acked.contains_key(&id),
                "replicas differ on acknowledged tweet {id} in {table}"
            );
            differing += 1;
        }
    }
    eprintln!(
        "ledger: {} tweets acknowledged, {} posts failed around the kill, {differing} rows \
         of unacknowledged posts on one replica only",
        acked.len(),
        ledger.failed.load(Ordering::SeqCst)
    );
}

/// The four faults of a production incident, one after another under load, and then no
/// operator action: a replica's MariaDB killed and restarted, the other paused (SIGSTOP),
/// `tbird serve` killed and restarted, the nameserver's MariaDB killed for 10 s. Afterwards,
/// within a few anti-entropy intervals, the replicas hold exactly the same rows (the halves
/// of posts cut off mid-write included), `gizzmo diff` of every replica pair is clean, and
/// every acknowledged tweet reads back the same on each of 10 reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_ledger_heals_by_itself_after_four_faults() {
    const SWEEP: Duration = Duration::from_secs(2);
    let serve_args = [
        "--anti-entropy-interval",
        "2s",
        "--anti-entropy-rows-per-second",
        "1000000",
    ];
    let mut stack = TbirdStack::start_serving(2, 2, false, &[], &serve_args).await;
    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    let writers = start_writers(&stack.tweets_addr, &ledger, &stop);

    let n = ledger.wait_for(0, PER_PHASE, "before the faults").await;
    stack.hosts[0].kill();
    let n = ledger.wait_for(n, PER_PHASE, "with replica a killed").await;
    stack.hosts[0].restart().await.expect("restart replica a");
    let n = ledger
        .wait_for(n, PER_PHASE, "after replica a came back")
        .await;

    stack.hosts[1].pause();
    let paused = Instant::now();
    let n = ledger.wait_for(n, PER_PHASE, "with replica b paused").await;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(paused.elapsed())).await;
    stack.hosts[1].resume();
    let n = ledger
        .wait_for(n, PER_PHASE, "after replica b resumed")
        .await;

    stack.tbird.kill();
    stack.tbird.restart();
    stack.wait_serving().await;
    let n = ledger
        .wait_for(n, PER_PHASE, "after tbird serve restarted")
        .await;

    stack.nameserver.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack
        .nameserver
        .restart()
        .await
        .expect("restart the nameserver");
    ledger
        .wait_for(n, PER_PHASE, "after the nameserver came back")
        .await;
    stop_writers(&stop, writers).await;
    let faults_over = Instant::now();
    let acked = ledger.snapshot();

    // No drain, no repair: the retry queue and anti-entropy alone.
    wait_until("the replicas hold the same rows", SWEEP * 20, || async {
        all_rows(&stack.hosts[0], SHARD_DB).await == all_rows(&stack.hosts[1], SHARD_DB).await
    })
    .await;
    let converged = faults_over.elapsed();
    for table in ["t1", "t2"] {
        for range in ["0000", "0001"] {
            let (a, b) = (format!("a/{table}_{range}"), format!("b/{table}_{range}"));
            let diff = stack.gizzmo(&["diff", &a, &b]);
            assert!(
                diff.status.success(),
                "diff {a} {b}: {}{}",
                String::from_utf8_lossy(&diff.stdout),
                String::from_utf8_lossy(&diff.stderr)
            );
        }
    }
    for _ in 0..10 {
        assert_all_readable(&stack.tweets_addr, &acked).await;
    }
    let a = all_rows(&stack.hosts[0], SHARD_DB).await;
    let ids = stored_ids(&a);
    eprintln!(
        "ledger: {} tweets acknowledged, {} posts failed through four faults, {} tweets \
         stored; replicas identical {converged:?} after the last fault, with no operator action",
        acked.len(),
        ledger.failed.load(Ordering::SeqCst),
        ids.len()
    );
}
