//! Online migrations of T-Bird's tables on real MariaDB hosts while a writer posts tweets:
//! move, add a replica, split, rebalance from two hosts to three (with gizzmo), a server killed
//! mid-copy and the rebalance resumed, and a cancel mid-way. Afterwards every acknowledged
//! tweet is readable, a diff of every replica pair is clean, and no post failed.

use std::time::{Duration, Instant};

use gizzard::migrate::{MigrationSettings, ops::Tuning};
use proto::gizzard::v1::{self as gpb, start_migration_request::Kind};
use tests::tweets::{
    Ledger, TweetCluster, TweetServer, TweetWriter, missing, run_migration, settings,
    wait_migration,
};

/// Returns a count that gizzmo's JSON writes as a decimal string (0 when absent).
fn count(value: &serde_json::Value) -> u64 {
    value.as_str().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// How long a writer may take to show its load is flowing.
const LOAD_LIMIT: Duration = Duration::from_secs(30);

/// Posts from four tasks, a few hundred a second in all.
async fn writer(server: &TweetServer) -> TweetWriter {
    writer_at(&server.tweets).await
}

async fn writer_at(addr: &str) -> TweetWriter {
    TweetWriter::start(addr, 4, Duration::from_millis(5)).await
}

/// Checks what every migration test promises: nothing acknowledged is lost, the replicas
/// agree, and no post failed.
async fn check(cluster: &TweetCluster, server: &TweetServer, ledger: &Ledger) {
    assert!(
        ledger.acked.len() > 20,
        "the writer posted: {}",
        ledger.acked.len()
    );
    assert!(
        ledger.failures.is_empty(),
        "posts failed: {:?}",
        &ledger.failures[..ledger.failures.len().min(5)]
    );
    let lost = missing(&server.tweets, &ledger.acked).await;
    assert!(lost.is_empty(), "acknowledged tweets lost: {lost:?}");
    let differing = cluster.full_diff(server).await;
    assert!(differing.is_empty(), "replicas differ: {differing:?}");
    eprintln!(
        "{} posts acknowledged, slowest {:?}",
        ledger.acked.len(),
        ledger.slowest
    );
}

async fn dump(cluster: &TweetCluster, server: &TweetServer) -> gpb::Topology {
    cluster
        .admin(server)
        .await
        .dump(gpb::DumpRequest {})
        .await
        .expect("dump")
        .into_inner()
}

/// Returns the names of the indexes on a routing hash in a host's shard tables.
async fn hash_indexes(host: &tests::MariaDb) -> Vec<String> {
    names(
        host,
        "SELECT INDEX_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME = 'hash' ORDER BY INDEX_NAME",
    )
    .await
}

/// Returns the names of a host's shard tables.
async fn tables(host: &tests::MariaDb) -> Vec<String> {
    names(
        host,
        "SELECT TABLE_NAME FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME",
    )
    .await
}

async fn names(host: &tests::MariaDb, sql: &'static str) -> Vec<String> {
    let db = db::Database::open(&host.url("tbird"), Duration::from_secs(5))
        .await
        .expect("open host");
    db.mysql(|mut conn| async move {
        use mysql_async::prelude::Queryable;
        conn.query::<String, _>(sql).await
    })
    .await
    .expect("list names")
}

fn leaves_on(topology: &gpb::Topology, host: &str) -> Vec<String> {
    topology
        .shards
        .iter()
        .filter(|s| s.id.starts_with(&format!("{host}/")))
        .map(|s| s.id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_and_a_new_replica_under_load_lose_nothing() {
    let (cluster, server) = TweetCluster::start(3, 2, 2).await;
    // Enough rows that the moved table is copied without its hash index, which is built
    // after the last page.
    load(&cluster.hosts[..2], "t1_0000", 1 << 40, 3_000).await;
    let writes = writer(&server).await;
    writes.wait_for_acks(20, LOAD_LIMIT).await;
    let mut admin = cluster.admin(&server).await;

    let moved = run_migration(
        &mut admin,
        Kind::Move(gpb::MoveRequest {
            shard: "h0/t1_0000".into(),
            to_host: "h2".into(),
        }),
    )
    .await;
    assert_eq!(moved.status, "done", "{moved:?}");
    assert!(moved.rows_copied > 3_000, "{moved:?}");
    let added = run_migration(
        &mut admin,
        Kind::AddReplica(gpb::AddReplicaRequest {
            shard: "h1/t2_0001".into(),
            host: "h2".into(),
        }),
    )
    .await;
    assert_eq!(added.status, "done", "{added:?}");
    writes.wait_for_acks(20, LOAD_LIMIT).await;
    let ledger = writes.stop().await;

    let topology = dump(&cluster, &server).await;
    let on_h2 = leaves_on(&topology, "h2");
    assert_eq!(on_h2, vec!["h2/t1_0000", "h2/t2_0001"]);
    assert!(!leaves_on(&topology, "h0").contains(&"h0/t1_0000".to_owned()));
    assert!(
        leaves_on(&topology, "h1").contains(&"h1/t2_0001".to_owned()),
        "a new replica keeps its source"
    );
    assert!(topology.shards.iter().all(|s| !s.busy), "nothing left busy");
    // The copies dropped the new tables' hash indexes while they loaded; they are back.
    assert_eq!(
        hash_indexes(&cluster.hosts[2]).await,
        ["t1_0000_tweets_hash", "t2_0001_timeline_hash"]
    );
    check(&cluster, &server, &ledger).await;

    // A move that makes no sense is refused with the reason.
    let refused = admin
        .start_migration(gpb::StartMigrationRequest {
            kind: Some(Kind::Move(gpb::MoveRequest {
                shard: "h2/t1_0000".into(),
                to_host: "h1".into(),
            })),
            ..Default::default()
        })
        .await
        .expect_err("h1 already holds a replica");
    assert!(
        refused.message().contains("already has a replica on h1"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_under_load_moves_the_upper_range_and_cleans_up() {
    let (cluster, server) = TweetCluster::start(2, 2, 2).await;
    let writes = writer(&server).await;
    writes.wait_for_acks(20, LOAD_LIMIT).await;
    let mut admin = cluster.admin(&server).await;
    let split = run_migration(
        &mut admin,
        Kind::Split(gpb::SplitRequest {
            table_id: 1,
            base_id: 0,
            at: None,
        }),
    )
    .await;
    assert_eq!(split.status, "done", "{split:?}");
    assert!(split.rows_copied > 0, "{split:?}");
    writes.wait_for_acks(20, LOAD_LIMIT).await;
    let ledger = writes.stop().await;

    let topology = dump(&cluster, &server).await;
    let middle = gizzard::nameserver::base_ids(2)[1] / 2;
    let new_root = topology
        .forwardings
        .iter()
        .find(|f| f.table_id == 1 && f.base_id == middle)
        .map(|f| f.shard_id.clone())
        .expect("a forwarding at the split point");
    assert!(new_root.starts_with("localhost/t1_0000_s"), "{new_root}");
    // The old tree no longer holds the moved rows.
    for host in &cluster.hosts {
        let mut conn = host.connect("tbird").await.expect("connect");
        let left: Option<i64> = mysql_async::prelude::Queryable::exec_first(
            &mut conn,
            "SELECT COUNT(*) FROM t1_0000_tweets WHERE hash >= ?",
            (middle,),
        )
        .await
        .expect("count");
        assert_eq!(left, Some(0), "moved rows cleaned up");
    }
    check(&cluster, &server, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gizzmo_rebalances_two_hosts_onto_three_under_load() {
    let (cluster, server) = TweetCluster::start(3, 2, 3).await;
    let writes = writer(&server).await;
    writes.wait_for_acks(20, LOAD_LIMIT).await;
    let admin = server.admin.clone();
    let gizzmo = move |args: &[&str]| {
        let mut all = vec!["--addr", admin.as_str()];
        all.extend_from_slice(args);
        std::process::Command::new(tests::binary::path("gizzmo", "gizzmo"))
            .args(&all)
            .output()
            .expect("run gizzmo")
    };
    let plan = gizzmo(&["rebalance", "--dry-run"]);
    let plan_text = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(plan.status.success(), "{plan:?}");
    // 12 leaves on 2 hosts become 4 per host: 4 moves, all to h2.
    assert_eq!(plan_text.matches("move h").count(), 4, "{plan_text}");
    assert!(dump(&cluster, &server).await.shards.iter().all(|s| !s.busy));

    let run = tokio::task::spawn_blocking(move || {
        let output = gizzmo(&["rebalance", "--max-copies", "2"]);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    })
    .await
    .expect("gizzmo");
    assert!(run.0, "rebalance failed: {}\n{}", run.1, run.2);
    assert!(run.1.contains("[done]"), "{}", run.1);
    let ledger = writes.stop().await;

    let topology = dump(&cluster, &server).await;
    for host in ["h0", "h1", "h2"] {
        assert_eq!(leaves_on(&topology, host).len(), 4, "{host}: {topology:?}");
    }
    check(&cluster, &server, &ledger).await;
}

/// Copies slowly, a page of 100 rows at a time, so a test can act mid-copy.
fn throttled(nameserver_url: &str) -> gizzard::server::ProxySettings {
    let mut s = settings(nameserver_url);
    s.migrations = MigrationSettings {
        rows_per_second: Some(400),
        tuning: Tuning {
            page_rows: 100,
            max_page_rows: 100,
            ..s.migrations.tuning.clone()
        },
        ..s.migrations
    };
    s
}

/// Waits until some move of migration `id` (or the migration itself) is copying.
async fn until_copying(
    admin: &mut proto::gizzard::v1::shard_manager_client::ShardManagerClient<
        tonic::transport::Channel,
    >,
    id: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = admin
            .get_migration(gpb::GetMigrationRequest { id })
            .await
            .expect("get")
            .into_inner();
        let copying = |m: &gpb::Migration| m.step == "copy" && m.rows_copied > 0;
        if copying(&m) || m.children.iter().any(copying) {
            return;
        }
        assert_eq!(m.status, "running", "{m:?}");
        assert!(Instant::now() < deadline, "never copied: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads `rows` tweets straight into every replica of `prefix`'s tweet table, so a copy has
/// many pages to go.
async fn load(hosts: &[tests::MariaDb], prefix: &str, first_id: u64, rows: u64) {
    use gizzard::shards::PhysicalShard;
    for host in hosts {
        let db = gizzard::db::Database::open(&host.url("tbird"), Duration::from_secs(30))
            .await
            .expect("open host");
        let info = gizzard::nameserver::ShardInfo {
            id: format!("x/{prefix}").parse().expect("id"),
            class_name: tbird::store::TWEET_SHARD.into(),
            busy: false,
        };
        let shard = tbird::store::TbirdShard::new(&info, tbird::store::Kind::Tweets, db);
        let tweets: Vec<tbird::store::Row> = (0..rows)
            .map(|i| {
                tbird::store::Row::Tweet(tbird::tweet::Tweet {
                    id: first_id + i,
                    user_id: 1 + i % 100,
                    text: format!("loaded tweet {i}"),
                    in_reply_to: None,
                    deleted: false,
                })
            })
            .collect();
        shard.write_rows(&tweets).await.expect("load");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_resumes_after_its_server_process_is_killed_mid_copy() {
    use tests::{
        stack::{TbirdStack, ok},
        wait_until,
    };
    let mut stack = TbirdStack::start(2, 2, false).await;
    let third = tests::MariaDb::start().await.expect("mariadb");
    let url = third.create_database("tbird").await.expect("db");
    ok(stack.gizzmo(&["add-host", "c", &url]));
    load(&stack.hosts, "t1_0000", 1 << 40, 20_000).await;
    load(&stack.hosts, "t1_0001", 1 << 41, 20_000).await;
    let writes = writer_at(&stack.tweets_addr).await;

    // Slow copies, so the server can be killed while one runs.
    let started = ok(stack.gizzmo(&[
        "rebalance",
        "--max-copies",
        "1",
        "--rows-per-second",
        "4000",
        "--detach",
        "--json",
    ]));
    // Integers are strings in gizzmo's JSON, as in the protobuf JSON mapping.
    let id: u64 = serde_json::from_str::<serde_json::Value>(&started).expect("json")["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a migration id");
    let show = |stack: &TbirdStack| {
        let text = ok(stack.gizzmo(&["migration", &id.to_string(), "--json"]));
        serde_json::from_str::<serde_json::Value>(&text).expect("json")
    };
    wait_until("a move copies", Duration::from_secs(60), || async {
        show(&stack)["children"]
            .as_array()
            .expect("children")
            .iter()
            .any(|c| c["step"] == "copy" && count(&c["rows_copied"]) > 0)
    })
    .await;
    stack.tbird.kill();
    let mut ledger = writes.stop().await;
    ledger.failures.clear(); // posts cut off by the kill were not acknowledged

    stack.tbird.restart();
    stack.wait_serving().await;
    let writes = writer_at(&stack.tweets_addr).await;
    // Rerunning attaches to the stored plan and watches it finish once the dead server's
    // job lease has ended and a worker of the new process took the job over.
    let rerun = stack.gizzmo(&["rebalance"]);
    let (out, err) = (
        String::from_utf8_lossy(&rerun.stdout).to_string(),
        String::from_utf8_lossy(&rerun.stderr).to_string(),
    );
    assert!(rerun.status.success(), "{out}\n{err}");
    assert!(err.contains("already running"), "{err}");
    let done = show(&stack);
    assert_eq!(done["status"], "done", "{done:#}");
    let children = done["children"].as_array().expect("children");
    assert!(children.iter().all(|c| c["status"] == "done"), "{done:#}");
    assert!(
        children.iter().any(|c| count(&c["resumes"]) > 0),
        "the interrupted copy went on from its saved cursor: {done:#}"
    );
    let after = writes.stop().await;
    ledger.acked.extend(after.acked);
    ledger.failures.extend(after.failures);
    assert!(ledger.failures.is_empty(), "{:?}", ledger.failures);
    let lost = missing(&stack.tweets_addr, &ledger.acked).await;
    assert!(lost.is_empty(), "acknowledged tweets lost: {lost:?}");
    let on_c = ok(stack.gizzmo(&["shards", "--host", "c"]));
    assert_eq!(on_c.matches("c/").count(), 2, "{on_c}");
    // A copy that was killed with its target's hash index dropped built it when it resumed.
    let tables = tables(&third).await;
    assert_eq!(tables.len(), 2, "{tables:?}");
    let expected: Vec<String> = tables.iter().map(|t| format!("{t}_hash")).collect();
    assert_eq!(hash_indexes(&third).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_move_leaves_the_old_tree_whole() {
    let (cluster, first) = TweetCluster::start(3, 2, 1).await;
    // Rows enough that the throttled copy (400 rows/s) is still running when it is cancelled.
    let writes = TweetWriter::start(&first.tweets, 8, Duration::ZERO).await;
    writes.wait_for_acks(1_000, LOAD_LIMIT).await;
    let mut ledger = writes.stop().await;
    first.kill().await;

    let server = cluster.serve(throttled(&cluster.nameserver_url)).await;
    let mut admin = cluster.admin(&server).await;
    let before = dump(&cluster, &server).await;
    let writes = writer(&server).await;
    let started = admin
        .start_migration(gpb::StartMigrationRequest {
            kind: Some(Kind::Move(gpb::MoveRequest {
                shard: "h0/t1_0000".into(),
                to_host: "h2".into(),
            })),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    until_copying(&mut admin, started.id).await;
    admin
        .cancel_migration(gpb::GetMigrationRequest { id: started.id })
        .await
        .expect("cancel");
    let ended = wait_migration(&mut admin, started.id).await;
    assert_eq!(ended.status, "cancelled", "{ended:?}");
    let during = writes.stop().await;
    ledger.acked.extend(during.acked);
    ledger.failures.extend(during.failures);

    let after = dump(&cluster, &server).await;
    let ids = |t: &gpb::Topology| -> Vec<(String, bool)> {
        t.shards.iter().map(|s| (s.id.clone(), s.busy)).collect()
    };
    assert_eq!(
        ids(&after),
        ids(&before),
        "the topology is as before the move"
    );
    assert_eq!(after.links, before.links);
    check(&cluster, &server, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diff_under_load_reports_exactly_the_damaged_rows_and_repair_fixes_them() {
    use mysql_async::prelude::Queryable;
    let (cluster, server) = TweetCluster::start(2, 2, 1).await;
    let writes = writer(&server).await;
    let mut conn = cluster.hosts[1].connect("tbird").await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Option<i64> = conn
            .query_first("SELECT COUNT(*) FROM t1_0000_tweets")
            .await
            .expect("count");
        if rows >= Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "the writer posted too little");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Damage h1's replica behind the proxy's back: drop three tweets, tombstone one, and
    // add one the other replica lacks.
    let ids: Vec<i64> = conn
        .query("SELECT id FROM t1_0000_tweets ORDER BY id LIMIT 5")
        .await
        .expect("ids");
    assert_eq!(ids.len(), 5);
    conn.exec_drop(
        "DELETE FROM t1_0000_tweets WHERE id IN (?, ?, ?)",
        (ids[0], ids[1], ids[2]),
    )
    .await
    .expect("delete");
    conn.exec_drop(
        "UPDATE t1_0000_tweets SET deleted = 1 WHERE id = ?",
        (ids[3],),
    )
    .await
    .expect("tombstone");
    // A tweet that reached h1 only.
    let only_on_h1: i64 = 1 << 40;
    conn.exec_drop(
        "INSERT INTO t1_0000_tweets (id, hash, user_id, text, in_reply_to, deleted) \
         VALUES (?, ?, 9, 'only here', NULL, 0)",
        (only_on_h1, gizzard::nameserver::hash(only_on_h1 as u64)),
    )
    .await
    .expect("insert");
    let mut damaged: Vec<u64> = ids[..4].iter().map(|&id| id as u64).collect();
    damaged.push(only_on_h1 as u64);
    damaged.sort_unstable();

    let mut admin = cluster.admin(&server).await;
    let pair = || gpb::ShardPair {
        a: "h0/t1_0000".into(),
        b: "h1/t1_0000".into(),
        hashes: None,
    };
    let diff = run_migration(&mut admin, Kind::Diff(pair())).await;
    assert_eq!(diff.status, "done", "{diff:?}");
    assert_eq!(
        diff.differing_keys, damaged,
        "exactly the damaged keys, while writes flow"
    );
    assert!(diff.rows_compared >= 200, "{diff:?}");

    let repair = run_migration(&mut admin, Kind::Repair(pair())).await;
    assert_eq!(repair.status, "done", "{repair:?}");
    assert_eq!(repair.repaired, 5, "{repair:?}");
    let mut ledger = writes.stop().await;
    // Merging keeps the tombstone: the tweet tombstoned on h1 is deleted on h0 too, so it is
    // no longer served.
    ledger.acked.retain(|&id| id != ids[3] as u64);
    let mut h0 = cluster.hosts[0].connect("tbird").await.expect("connect");
    let deleted: Option<bool> = h0
        .exec_first("SELECT deleted FROM t1_0000_tweets WHERE id = ?", (ids[3],))
        .await
        .expect("read");
    assert_eq!(deleted, Some(true));
    check(&cluster, &server, &ledger).await;
}
