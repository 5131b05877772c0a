//! T-Bird under load in production shape: two private MariaDB instances, each holding one
//! replica of every shard (the first also holds the nameserver), a Snowflake daemon and a
//! `tbird serve`, all as separate processes. Runs `tbird bench --baseline direct` at
//! concurrency 32 for GetTweet alone, PostTweet alone and the default mix, and prints the
//! proxy's figures beside the same SQL sent straight to the shards.
//!
//! `cargo bench -p tests --bench tbird_load`; `DURATION` (10s), `ROUNDS` (2) and `CONCURRENCY`
//! (32) change the run, `TBIRD_BENCH_ARGS` adds flags to every `tbird bench`.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use proto::gizzard::v1::{ApplyRequest, shard_manager_client::ShardManagerClient};
use tests::MariaDb;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").to_string()
}

fn spawn(package: &str, name: &str, args: &[&str]) -> Daemon {
    let child = Command::new(tests::binary::path(package, name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Daemon(child)
}

async fn wait_until<F: Future<Output = bool>>(what: &str, mut ready: impl FnMut() -> F) {
    let started = Instant::now();
    while !ready().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    let servers = MariaDb::start_many(2).await.expect("start mariadb");
    let nameserver = servers[0]
        .create_database("gizzard")
        .await
        .expect("nameserver db");
    let mut hosts = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let url = server.create_database("tbird").await.expect("shard db");
        hosts.push((format!("h{i}"), url));
    }

    let snowflake = free_addr();
    let _snowflake = spawn(
        "snowflake",
        "snowflake",
        &[
            "serve",
            "--worker-id",
            "1",
            "--no-metrics",
            "--listen",
            &snowflake,
        ],
    );
    let (tweets, admin) = (free_addr(), free_addr());
    let _tbird = spawn(
        "tbird",
        "tbird",
        &[
            "serve",
            "--nameserver-url",
            &nameserver,
            "--snowflake-addr",
            &snowflake,
            "--listen",
            &tweets,
            "--admin-listen",
            &admin,
        ],
    );
    let admin_url = format!("http://{admin}");
    wait_until("tbird serve", || async {
        ShardManagerClient::connect(admin_url.clone()).await.is_ok()
    })
    .await;
    let changes =
        tbird::topology::default_changes(&hosts, tbird::dev::DEV_SHARDS).expect("valid host names");
    let request = ApplyRequest {
        changes: changes
            .iter()
            .map(gizzard::manager::convert::change_to_pb)
            .collect(),
    };
    ShardManagerClient::connect(admin_url)
        .await
        .expect("connect to the ShardManager")
        .apply(request)
        .await
        .expect("create the default topology on both hosts");

    let (duration, rounds, concurrency) = (
        env_or("DURATION", "10s"),
        env_or("ROUNDS", "2"),
        env_or("CONCURRENCY", "32"),
    );
    let extra = env_or("TBIRD_BENCH_ARGS", "");
    let tbird = tests::binary::path("tbird", "tbird");
    println!(
        "tbird_load: {} shards x 2 replicas on 2 MariaDB instances, concurrency {concurrency}, \
         {duration} x {rounds} rounds per target",
        tbird::dev::DEV_SHARDS
    );
    for workload in [
        vec!["--op", "get"],
        vec!["--op", "post"],
        vec!["--mix", "post=20,get=60,multi-get=10,timeline=10"],
    ] {
        println!("\n== tbird bench {}", workload.join(" "));
        let status = Command::new(&tbird)
            .args(["bench", "--addr", &tweets, "--baseline", "direct"])
            .args(["--nameserver-url", &nameserver])
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
