//! `tbird serve` in production shape, as separate processes: a Snowflake daemon, a tbird
//! server on a MariaDB nameserver with two MariaDB shard hosts, tables created with gizzmo
//! (with the admin token), tweets posted and read with the tbird client.

use tests::stack::{TbirdStack, ok, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_serve_with_snowflake_and_mariadb() {
    let stack = TbirdStack::start(2, 4, false).await;
    let tweets = stack.tweets_addr.as_str();

    // Changes need the server's admin token (the stack's gizzmo calls carry it).
    let refused = run(
        "gizzmo",
        "gizzmo",
        &[
            "--addr",
            &stack.admin_addr,
            "add-host",
            "x",
            "mysql://root@127.0.0.1:1/tbird",
        ],
    );
    assert!(!refused.status.success(), "a change without the token");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("token"), "{stderr}");

    let id = ok(run(
        "tbird",
        "tbird",
        &["post", "--addr", tweets, "--user", "3", "from production"],
    ));
    let id = id.trim();
    let parts = ok(run("snowflake", "snowflake", &["decode", id]));
    assert!(
        parts.contains("worker 3"),
        "the id came from the daemon: {parts}"
    );
    let got = ok(run("tbird", "tbird", &["get", "--addr", tweets, id]));
    assert!(got.contains("from production"), "{got}");
    let timeline = ok(run(
        "tbird",
        "tbird",
        &["timeline", "--addr", tweets, "--user", "3"],
    ));
    assert!(timeline.contains(id), "{timeline}");
}
