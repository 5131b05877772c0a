//! Posts while one replica is frozen: a 2-replica T-Bird cluster on private MariaDB instances
//! (one replica of every shard on each) with one in-process server at production settings
//! (2 s leaf deadline, 5 s database deadline), 16 writers posting as fast as they are
//! answered. After a warm-up and a baseline, one replica's MariaDB is SIGSTOPped for `PAUSE`,
//! then thawed, and the retry queue drains.
//!
//! Prints the posts acknowledged in each second, the lowest per-second rate during the freeze
//! as a share of the mean rate before it (goal: never below 50%), post latency percentiles
//! before and during the freeze (goal: p99 under 250 ms while frozen), failed posts, the retry
//! jobs queued before the freeze (hedges with both replicas up) and at the thaw, and how long
//! the queue took to drain after the thaw.
//!
//! `cargo bench -p tests --bench frozen_replica` (add `--profile dev` to skip the release
//! build); `WARMUP` (5s), `BEFORE` (10s), `PAUSE` (15s), `AFTER` (5s) and `WRITERS` (16)
//! change the run.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use gizzard::server::ProxySettings;
use proto::tbird::v1::{PostTweetRequest, tweets_client::TweetsClient};
use tests::tweets::TweetCluster;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// Shard ranges per table, as `tbird dev` creates.
const SHARDS: u32 = tbird::dev::DEV_SHARDS;
/// How long a post may take before the writer counts it failed.
const PATIENCE: Duration = Duration::from_secs(10);

/// Reads a duration in seconds (`15s` or `15`) from the environment.
fn env_duration(name: &str, default: &str) -> Duration {
    let value = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let secs: f64 = value
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
    Duration::from_secs_f64(secs)
}

/// Production's deadlines, workers, routing poll and lease; the test cluster's migration
/// tuning does not matter here.
fn production(nameserver_url: &str) -> ProxySettings {
    ProxySettings::new(nameserver_url)
}

/// One post: when it finished (since the run started), how long it took, and whether it was
/// acknowledged.
#[derive(Clone, Copy)]
struct Post {
    started: Duration,
    finished: Duration,
    ok: bool,
}

impl Post {
    fn latency(&self) -> Duration {
        self.finished - self.started
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[rank].as_secs_f64() * 1000.0
}

fn latencies(posts: &[Post], from: Duration, to: Duration) -> Vec<Duration> {
    let mut out: Vec<Duration> = posts
        .iter()
        .filter(|p| p.ok && p.started >= from && p.started < to)
        .map(Post::latency)
        .collect();
    out.sort_unstable();
    out
}

async fn queue_depth(server: &tests::tweets::TweetServer) -> u64 {
    let depth = server.proxy.queue.depth().await.expect("queue depth");
    depth.values().sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`) passes nothing and
    // only checks that this builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (warmup, before, pause, after) = (
        env_duration("WARMUP", "5s"),
        env_duration("BEFORE", "10s"),
        env_duration("PAUSE", "15s"),
        env_duration("AFTER", "5s"),
    );
    let writers: usize = std::env::var("WRITERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(16);
    let (mut cluster, server) =
        TweetCluster::start_with(2, 2, SHARDS, tests::mariadb::BENCH_FLAGS, production).await;
    println!(
        "frozen_replica: {SHARDS} shards x 2 replicas on 2 MariaDB instances, {writers} \
         writers through one server (leaf deadline {:?}); h1 frozen for {pause:?} after \
         {warmup:?} of warm-up and {before:?} of baseline",
        server.proxy.settings().leaf_timeout
    );

    let channel = Endpoint::from_shared(format!("http://{}", server.tweets))
        .expect("valid address")
        .timeout(PATIENCE)
        .connect_lazy();
    let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
    let stop = CancellationToken::new();
    let run = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers as u64 {
        let (mut client, posts, stop) = (
            TweetsClient::new(channel.clone()),
            posts.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            for n in 0u64.. {
                if stop.is_cancelled() {
                    return;
                }
                let request = PostTweetRequest {
                    user_id: 1 + (writer * 7919 + n) % 500,
                    text: format!("tweet {n} of writer {writer}"),
                    in_reply_to: None,
                };
                let started = run.elapsed();
                let ok = client.post_tweet(request).await.is_ok();
                let post = Post {
                    started,
                    finished: run.elapsed(),
                    ok,
                };
                posts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(post);
            }
        });
    }

    let frozen_at = warmup + before;
    tokio::time::sleep_until((run + frozen_at).into()).await;
    // With both replicas up, a job is a write given up on at its hedge (or failed).
    let spurious = queue_depth(&server).await;
    cluster.hosts[1].pause();
    // Counted from when every mariadbd thread has stopped.
    let frozen_at = run.elapsed();
    let thawed_at = frozen_at + pause;
    tokio::time::sleep_until((run + thawed_at).into()).await;
    let queued = queue_depth(&server).await;
    cluster.hosts[1].resume();
    let thawed_at = run.elapsed();
    tokio::time::sleep_until((run + thawed_at + after).into()).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let drain_started = Instant::now();
    tests::cluster::drain(&server.proxy.queue, Duration::from_secs(600)).await;
    let drained = thawed_at + after + drain_started.elapsed();

    let posts = posts.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let seconds = (thawed_at + after).as_secs() as usize;
    let mut per_second = vec![0u64; seconds + 1];
    for post in posts.iter().filter(|p| p.ok) {
        if let Some(n) = per_second.get_mut(post.finished.as_secs() as usize) {
            *n += 1;
        }
    }
    println!("\nposts acknowledged per second (F: h1 frozen for the whole second):");
    let frozen_second = |s: usize| {
        let s = Duration::from_secs(s as u64);
        s >= frozen_at && s + Duration::from_secs(1) <= thawed_at
    };
    for (s, n) in per_second.iter().enumerate().take(seconds) {
        let mark = if frozen_second(s) { "F" } else { " " };
        println!("  {s:>3} s {mark} {n:>6}");
    }
    let baseline: Vec<u64> = (warmup.as_secs() as usize..frozen_at.as_secs() as usize)
        .map(|s| per_second[s])
        .collect();
    let mean_before = baseline.iter().sum::<u64>() as f64 / baseline.len().max(1) as f64;
    let lowest = (0..seconds)
        .filter(|&s| frozen_second(s))
        .map(|s| per_second[s])
        .min()
        .unwrap_or(0);
    let before_lat = latencies(&posts, warmup, frozen_at);
    let frozen_lat = latencies(&posts, frozen_at, thawed_at);
    let failed = posts.iter().filter(|p| !p.ok).count();
    println!(
        "\nbefore the freeze: {mean_before:.0} posts/s; post latency p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms",
        percentile(&before_lat, 0.5),
        percentile(&before_lat, 0.99),
        percentile(&before_lat, 1.0)
    );
    println!(
        "while frozen: lowest second {lowest} posts = {:.0}% of the rate before (goal: never \
         below 50%)",
        100.0 * lowest as f64 / mean_before
    );
    println!(
        "while frozen: {} posts; latency p50 {:.1} ms, p99 {:.1} ms (goal: under 250 ms), max \
         {:.1} ms",
        frozen_lat.len(),
        percentile(&frozen_lat, 0.5),
        percentile(&frozen_lat, 0.99),
        percentile(&frozen_lat, 1.0)
    );
    println!(
        "failed posts: {failed}; retry jobs queued: {spurious} just before the freeze (writes \
         hedged or failed with both replicas up), {queued} at the thaw; queue empty {:.1} s \
         after it",
        (drained - thawed_at).as_secs_f64()
    );
}
