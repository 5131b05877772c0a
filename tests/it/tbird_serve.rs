//! `tbird serve` in production shape, as separate processes: a Snowflake daemon, a tbird
//! server on a MariaDB nameserver with two MariaDB shard hosts, tables created with gizzmo,
//! tweets posted and read with the tbird client.

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn run(package: &str, name: &str, args: &[&str]) -> Output {
    Command::new(tests::binary::path(package, name))
        .args(args)
        .output()
        .expect("run binary")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(package: &str, name: &str, args: &[&str]) -> Daemon {
    let child = Command::new(tests::binary::path(package, name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn daemon");
    Daemon(child)
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_serve_with_snowflake_and_mariadb() {
    let servers = tests::MariaDb::start_many(3).await.expect("mariadb");
    let nameserver = servers[0]
        .create_database("gizzard")
        .await
        .expect("nameserver db");
    let host_a = servers[1].create_database("tbird").await.expect("host a");
    let host_b = servers[2].create_database("tbird").await.expect("host b");

    let snowflake = format!("127.0.0.1:{}", free_port());
    let _snowflake = spawn(
        "snowflake",
        "snowflake",
        &[
            "serve",
            "--worker-id",
            "2",
            "--no-metrics",
            "--listen",
            &snowflake,
        ],
    );
    wait_until("snowflake", || {
        run("snowflake", "snowflake", &["get", "--addr", &snowflake])
            .status
            .success()
    });

    let (tweets, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let args = [
        "serve",
        "--nameserver-url",
        &nameserver,
        "--snowflake-addr",
        &snowflake,
        "--listen",
        &tweets,
        "--admin-listen",
        &admin,
        "--admin-token",
        "secret",
    ];
    let _tbird = spawn("tbird", "tbird", &args);
    let gizzmo = |extra: &[&str]| {
        let mut all = vec!["--addr", &admin, "--token", "secret"];
        all.extend_from_slice(extra);
        run("gizzard", "gizzmo", &all)
    };
    wait_until("tbird serve", || gizzmo(&["hosts"]).status.success());
    ok(gizzmo(&["add-host", "a", &host_a]));
    ok(gizzmo(&["add-host", "b", &host_b]));
    ok(gizzmo(&[
        "create-table",
        "1",
        "--shards",
        "4",
        "--replicas",
        "a,b",
        "--class",
        "TweetShard",
    ]));
    ok(gizzmo(&[
        "create-table",
        "2",
        "--shards",
        "4",
        "--replicas",
        "a,b",
        "--class",
        "TimelineShard",
    ]));

    let id = ok(run(
        "tbird",
        "tbird",
        &["post", "--addr", &tweets, "--user", "3", "from production"],
    ));
    let id = id.trim();
    let parts = ok(run("snowflake", "snowflake", &["decode", id]));
    assert!(
        parts.contains("worker 2"),
        "the id came from the daemon: {parts}"
    );
    let got = ok(run("tbird", "tbird", &["get", "--addr", &tweets, id]));
    assert!(got.contains("from production"), "{got}");
    let timeline = ok(run(
        "tbird",
        "tbird",
        &["timeline", "--addr", &tweets, "--user", "3"],
    ));
    assert!(timeline.contains(id), "{timeline}");
}
