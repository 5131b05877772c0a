//! Migration benchmark on private MariaDB instances: a tweet shard of `ROWS` rows is copied to
//! another host and diffed against the copy by real migration jobs, and a replica is moved
//! while a writer posts tweets, to measure the longest write pause around the cutover.
//!
//! `cargo bench -p tests --bench migrations` (`BENCH_ROWS` sets the row count).

use std::time::{Duration, Instant};

use gizzard::{
    manager::convert::change_to_pb,
    nameserver::{Change, ShardInfo},
};
use proto::gizzard::v1::{self as gpb, start_migration_request::Kind};
use tbird::store::TWEET_SHARD;
use tests::tweets::{TweetCluster, TweetWriter, load_tweets, run_migration};

/// The test settings with production-sized pages and chunks, and production's routing poll
/// interval and lease, which set how long a move waits for every server's agreement.
fn production(nameserver_url: &str) -> gizzard::server::ProxySettings {
    let defaults = gizzard::server::ProxySettings::new(nameserver_url);
    let mut settings = tests::tweets::settings(nameserver_url);
    settings.migrations.tuning = gizzard::migrate::ops::Tuning::default();
    settings.poll_interval = defaults.poll_interval;
    settings.routing_lease = defaults.routing_lease;
    settings
}

/// How long a migration ran, from being stored to its end, by its own record: the wait for
/// a worker to claim it counts, the watcher's polling does not.
fn took(m: &gpb::Migration) -> f64 {
    (m.updated_ms - m.created_ms) as f64 / 1000.0
}

fn rows() -> u64 {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count = rows();
    // One range, replicated on h0 only; h1 receives the copy.
    let (cluster, server) =
        TweetCluster::start_with(2, 1, 1, tests::mariadb::BENCH_FLAGS, production).await;
    let mut admin = cluster.admin(&server).await;
    let started = Instant::now();
    load_tweets(&cluster.hosts[0].url("tbird"), "t1_0000", count).await;
    println!(
        "loaded {count} tweet rows into h0/t1_0000 in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let target = ShardInfo {
        id: "h1/bench_copy".parse().expect("id"),
        class_name: TWEET_SHARD.into(),
        busy: false,
    };
    admin
        .apply(gpb::ApplyRequest {
            changes: vec![change_to_pb(&Change::CreateShard(target))],
        })
        .await
        .expect("create the copy's shard");

    let copy = run_migration(
        &mut admin,
        Kind::Copy(gpb::ShardPair {
            a: "h0/t1_0000".into(),
            b: "h1/bench_copy".into(),
            hashes: None,
        }),
    )
    .await;
    let secs = took(&copy);
    assert_eq!(copy.status, "done", "{copy:?}");
    println!(
        "copy:  {} rows in {secs:.2} s = {:.0} rows/s (goal 200,000; Vitess about 100,000)",
        copy.rows_copied,
        copy.rows_copied as f64 / secs
    );

    let diff = run_migration(
        &mut admin,
        Kind::Diff(gpb::ShardPair {
            a: "h0/t1_0000".into(),
            b: "h1/bench_copy".into(),
            hashes: None,
        }),
    )
    .await;
    let secs = took(&diff);
    assert_eq!(diff.status, "done", "{diff:?}");
    assert_eq!(diff.differing, 0, "the copy is exact: {diff:?}");
    println!(
        "diff:  {} rows in {secs:.2} s = {:.0} rows/s per replica pair (goal 1,000,000)",
        diff.rows_compared,
        diff.rows_compared as f64 / secs
    );

    // The longest write pause around a cutover: move the loaded replica while posting.
    let writes = TweetWriter::start(&server.tweets, 8, Duration::from_millis(2)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let moved = run_migration(
        &mut admin,
        Kind::Move(gpb::MoveRequest {
            shard: "h0/t1_0000".into(),
            to_host: "h1".into(),
        }),
    )
    .await;
    let secs = took(&moved);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ledger = writes.stop().await;
    assert_eq!(moved.status, "done", "{moved:?}");
    println!(
        "move:  {} rows moved in {secs:.1} s with {} posts during it, {} failed; \
         slowest post {:.1} ms (goal: a pause under 1 s)",
        moved.rows_copied,
        ledger.acked.len(),
        ledger.failures.len(),
        ledger.slowest.as_secs_f64() * 1000.0
    );
}
