//! T-Bird under load in production shape ([`TbirdStack`]): two private MariaDB instances,
//! each holding one replica of every shard, the nameserver on a third, a Snowflake daemon and
//! a `tbird serve`, all as separate processes. Runs `tbird bench --baseline direct` at
//! concurrency 32 for GetTweet alone, PostTweet alone and the default mix, and prints the
//! proxy's figures beside the same SQL sent straight to the shards.
//!
//! `cargo bench -p tests --bench tbird_load`; `DURATION` (10s), `ROUNDS` (2), `CONCURRENCY`
//! (32) and `WORKLOADS` (`get,post,mix`) change the run, `TBIRD_BENCH_ARGS` adds flags to
//! every `tbird bench`.

use std::process::Command;

use tests::{mariadb::BENCH_FLAGS, stack::TbirdStack};

/// Shard ranges per table, as `tbird dev` creates.
const SHARDS: u32 = tbird::dev::DEV_SHARDS;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`) passes nothing and
    // only checks that this builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // Production-sized buffer pool and redo log (see BENCH_FLAGS), as on the shard hosts.
    // With metrics, so each run prints the server's CPU per call.
    let stack = TbirdStack::start_with(2, SHARDS, true, BENCH_FLAGS).await;
    let (tweets, nameserver) = (&stack.tweets_addr, &stack.nameserver_url);
    let metrics = stack.metrics_addr.as_deref().expect("metrics are served");

    let (duration, rounds, concurrency) = (
        env_or("DURATION", "10s"),
        env_or("ROUNDS", "2"),
        env_or("CONCURRENCY", "32"),
    );
    let extra = env_or("TBIRD_BENCH_ARGS", "");
    let tbird = tests::binary::path("tbird", "tbird");
    println!(
        "tbird_load: {SHARDS} shards x 2 replicas on 2 MariaDB instances, concurrency {concurrency}, \
         {duration} x {rounds} rounds per target"
    );
    let only = env_or("WORKLOADS", "get,post,mix");
    let workloads = [
        ("get", vec!["--op", "get"]),
        ("post", vec!["--op", "post"]),
        (
            "mix",
            vec!["--mix", "post=20,get=60,multi-get=10,timeline=10"],
        ),
    ];
    for (_, workload) in workloads
        .into_iter()
        .filter(|(name, _)| only.split(',').any(|o| o == *name))
    {
        println!("\n== tbird bench {}", workload.join(" "));
        let status = Command::new(&tbird)
            .args(["bench", "--addr", tweets, "--baseline", "direct"])
            .args(["--nameserver-url", nameserver])
            .args(["--server-metrics", metrics])
            .args(["--concurrency", &concurrency, "--duration", &duration])
            .args(["--rounds", &rounds])
            .args(&workload)
            .args(extra.split_whitespace())
            .env("RUST_LOG", "warn")
            .status()
            .expect("run tbird bench");
        assert!(status.success(), "tbird bench failed: {status}");
    }
}
