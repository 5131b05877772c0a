//! Gizzard end to end on real MariaDB servers: writes with a replica killed or frozen are
//! acknowledged, queued and drained; reads fail over; ReadOnly/Blocked/BlackHole nodes route
//! as designed; a change made through one proxy's manager reaches another proxy's routing.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use gizzard::{
    nameserver::{Change, Link, ShardId, ShardInfo},
    scheduler::{JobFilter, JobState},
    server::Proxy,
};
use proto::gizzard::v1::{ApplyRequest, shard_manager_server::ShardManager};
use tests::{
    cluster::{KvCluster, test_settings},
    kv::{self, KvShard, KvWrite},
};
use tokio_util::sync::CancellationToken;

/// Asserts that both hosts hold exactly the same rows, leaf by leaf.
async fn assert_replicas_equal(cluster: &KvCluster, expected_rows: usize) {
    let (a, b) = (cluster.rows_on_host(0).await, cluster.rows_on_host(1).await);
    assert_eq!(a.len(), b.len(), "same leaves on both hosts");
    let mut total = 0;
    for ((id_a, rows_a), (id_b, rows_b)) in a.iter().zip(&b) {
        assert_eq!(id_a.table_prefix, id_b.table_prefix);
        assert_eq!(
            rows_a, rows_b,
            "leaf {} differs between hosts",
            id_a.table_prefix
        );
        total += rows_a.len();
    }
    assert_eq!(total, expected_rows);
}

async fn write_keys(cluster: &KvCluster, keys: std::ops::Range<u64>) -> Vec<Duration> {
    let mut took = Vec::new();
    for key in keys {
        let started = Instant::now();
        cluster
            .put(key, 1, Some(&format!("value {key}")))
            .await
            .expect("write acknowledged");
        took.push(started.elapsed());
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_a_killed_replica_is_acknowledged_queued_and_drained() {
    let mut cluster = KvCluster::start(2).await;
    cluster.create_table(1, 4).await;
    write_keys(&cluster, 0..20).await;

    cluster.hosts[1].kill();
    write_keys(&cluster, 20..60).await;
    let queued = cluster
        .proxy
        .queue
        .list(&JobFilter::default())
        .await
        .expect("list jobs");
    assert!(
        queued.len() >= 40,
        "every write to the dead replica is queued: {}",
        queued.len()
    );
    assert!(
        queued
            .iter()
            .all(|job| job.shard.as_deref().is_some_and(|s| s.starts_with("h1/")))
    );
    for key in [0, 25, 59] {
        let row = cluster
            .get(key)
            .await
            .expect("reads fail over to the live replica");
        assert_eq!(row.map(|r| r.value), Some(format!("value {key}")));
    }

    cluster.hosts[1].restart().await.expect("restart replica");
    cluster.drain(Duration::from_secs(60)).await;
    assert_replicas_equal(&cluster, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_a_frozen_replica_is_acknowledged_within_the_timeout() {
    let mut cluster = KvCluster::start(2).await;
    cluster.create_table(1, 2).await;
    write_keys(&cluster, 0..10).await;

    cluster.hosts[1].pause();
    let took = write_keys(&cluster, 10..30).await;
    let slowest = took.iter().max().expect("writes");
    // The leaf deadline is 700 ms; queueing the retry adds one nameserver round trip.
    assert!(
        *slowest < Duration::from_secs(2),
        "a write took {slowest:?} with a frozen replica"
    );
    cluster.hosts[1].resume();
    cluster.drain(Duration::from_secs(60)).await;
    assert_replicas_equal(&cluster, 30).await;
}

/// Replaces the link from `root` to `leaf` with `root -> wrapper -> leaf`.
fn wrap(root: &ShardId, leaf: &ShardId, class: &str) -> (ShardId, Vec<Change>) {
    let wrapper = ShardId::new(
        "localhost",
        format!("{}_{}", leaf.table_prefix, class.to_lowercase()),
    )
    .expect("id");
    let changes = vec![
        Change::CreateShard(ShardInfo {
            id: wrapper.clone(),
            class_name: class.into(),
            busy: false,
        }),
        Change::RemoveLink {
            up: root.clone(),
            down: leaf.clone(),
        },
        Change::AddLink(Link {
            up: root.clone(),
            down: wrapper.clone(),
            weight: 1,
        }),
        Change::AddLink(Link {
            up: wrapper.clone(),
            down: leaf.clone(),
            weight: 1,
        }),
    ];
    (wrapper, changes)
}

fn unwrap(root: &ShardId, wrapper: &ShardId, leaf: &ShardId) -> Vec<Change> {
    vec![
        Change::RemoveLink {
            up: wrapper.clone(),
            down: leaf.clone(),
        },
        Change::RemoveLink {
            up: root.clone(),
            down: wrapper.clone(),
        },
        Change::DeleteShard(wrapper.clone()),
        Change::AddLink(Link {
            up: root.clone(),
            down: leaf.clone(),
            weight: 1,
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_blocked_and_black_hole_nodes_route_as_designed() {
    let cluster = KvCluster::start(2).await;
    cluster.create_table(1, 1).await;
    let root = ShardId::new("localhost", "t1_0000").expect("id");
    let leaf_b = ShardId::new("h1", "t1_0000").expect("id");

    for (key, class) in [(1, "ReadOnlyShard"), (2, "BlockedShard")] {
        let (wrapper, changes) = wrap(&root, &leaf_b, class);
        cluster.apply(&changes).await;
        let outcome = cluster
            .put(key, 1, Some("one"))
            .await
            .expect("acknowledged");
        assert_eq!(
            (outcome.applied, outcome.queued),
            (1, 1),
            "{class}: h1 gets a retry job"
        );
        // The refusal retries without counting: after two refusals (each reschedules the job)
        // it is still ready with no attempt counted, so it is never parked while wrapped.
        let mut schedules = std::collections::BTreeSet::new();
        let mut job = None;
        tests::wait_until(
            &format!("{class}: h1's retry job is refused twice"),
            Duration::from_secs(20),
            async || {
                let jobs = cluster
                    .proxy
                    .queue
                    .list(&JobFilter::default())
                    .await
                    .expect("list");
                assert_eq!(jobs.len(), 1, "{class}: one retry job: {jobs:?}");
                schedules.insert(jobs[0].run_after_ms);
                job = jobs.into_iter().next();
                schedules.len() >= 3
            },
        )
        .await;
        let job = job.expect("the retry job");
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Ready, 0),
            "{class}: {job:?}"
        );
        let on_h1 =
            |rows: Vec<(ShardId, Vec<tests::kv::KvRow>)>| rows[0].1.iter().any(|r| r.key == key);
        assert!(
            !on_h1(cluster.rows_on_host(1).await),
            "{class}: nothing reached h1 while wrapped"
        );
        // Reads never touch a Blocked leaf; a ReadOnly one still serves reads, here the stale
        // answer of a replica that has not caught up (one in 2^20 runs could miss it).
        let mut answers = std::collections::BTreeSet::new();
        for _ in 0..20 {
            answers.insert(cluster.get(key).await.expect("read").map(|r| r.value));
        }
        let expected: Vec<Option<String>> = match class {
            "ReadOnlyShard" => vec![None, Some("one".into())],
            _ => vec![Some("one".into())],
        };
        assert_eq!(answers.into_iter().collect::<Vec<_>>(), expected, "{class}");

        cluster.apply(&unwrap(&root, &wrapper, &leaf_b)).await;
        cluster.drain(Duration::from_secs(30)).await;
        assert!(
            on_h1(cluster.rows_on_host(1).await),
            "{class}: drained once unwrapped"
        );
    }

    // A BlackHole in place of h1's leaf drops its writes; reads come from h0.
    let hole = ShardId::new("localhost", "t1_0000_hole").expect("id");
    cluster
        .apply(&[
            Change::CreateShard(ShardInfo {
                id: hole.clone(),
                class_name: "BlackHoleShard".into(),
                busy: false,
            }),
            Change::RemoveLink {
                up: root.clone(),
                down: leaf_b.clone(),
            },
            Change::AddLink(Link {
                up: root.clone(),
                down: hole.clone(),
                weight: 1,
            }),
        ])
        .await;
    let outcome = cluster
        .put(3, 1, Some("three"))
        .await
        .expect("acknowledged");
    assert_eq!(
        (outcome.applied, outcome.queued),
        (1, 0),
        "a black hole neither writes nor queues"
    );
    assert_eq!(
        cluster.get(3).await.expect("read").map(|r| r.value),
        Some("three".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_manager_reaches_another_proxy_within_two_seconds() {
    let cluster = KvCluster::start(2).await;
    cluster.create_table(1, 2).await;
    let shutdown = CancellationToken::new();
    let other: Proxy<KvShard, KvWrite> = Proxy::start(
        test_settings(&cluster.nameserver_url),
        kv::registry(),
        HashMap::new(),
        shutdown.clone(),
    )
    .await
    .expect("second proxy");
    let before = other.routing.current().version;

    let changes = cluster.table_changes(2, 3);
    let version = cluster.apply(&changes).await;
    assert!(version > before);
    let applied = Instant::now();
    while other.routing.current().version < version {
        assert!(
            applied.elapsed() < Duration::from_secs(2),
            "the second proxy did not see version {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(other.routing.current().forwardings(2).len(), 3);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batches_are_refused_whole() {
    let cluster = KvCluster::start(1).await;
    cluster.create_table(1, 1).await;
    let manager = cluster.proxy.manager();
    let version = cluster.proxy.nameserver.version().await.expect("version");
    let root = "localhost/t1_0000";
    let leaf = "h0/t1_0000";
    let cycle = [
        // A valid change first: it must not land when the batch is refused.
        Change::CreateShard(ShardInfo {
            id: "localhost/extra".parse().expect("id"),
            class_name: "BlackHoleShard".into(),
            busy: false,
        }),
        Change::CreateShard(ShardInfo {
            id: "localhost/loop".parse().expect("id"),
            class_name: "ReplicatingShard".into(),
            busy: false,
        }),
        Change::AddLink(Link {
            up: "localhost/loop".parse().expect("id"),
            down: root.parse().expect("id"),
            weight: 1,
        }),
        Change::AddLink(Link {
            up: leaf.parse().expect("id"),
            down: "localhost/loop".parse().expect("id"),
            weight: 1,
        }),
    ];
    let request = ApplyRequest {
        changes: cycle
            .iter()
            .map(gizzard::manager::convert::change_to_pb)
            .collect(),
    };
    let status = manager
        .apply(tonic::Request::new(request))
        .await
        .expect_err("a cycle");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().to_lowercase().contains("cycle"),
        "{}",
        status.message()
    );

    let bad_name = proto::gizzard::v1::Change {
        change: Some(proto::gizzard::v1::change::Change::DeleteShard(
            "no-slash".into(),
        )),
        force: false,
    };
    let status = manager
        .apply(tonic::Request::new(ApplyRequest {
            changes: vec![bad_name],
        }))
        .await
        .expect_err("bad name");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("changes[0]"),
        "{}",
        status.message()
    );

    assert_eq!(
        cluster.proxy.nameserver.version().await.expect("version"),
        version,
        "nothing applied"
    );
    let topology = cluster.proxy.nameserver.load().await.expect("load");
    assert!(
        !topology
            .shards
            .contains_key(&"localhost/extra".parse::<ShardId>().expect("id"))
    );
}

/// The hooks copy, diff and repair use, on one backend.
async fn physical_shard_hooks(db_a: gizzard::db::Database, db_b: gizzard::db::Database) {
    use gizzard::shards::PhysicalShard;
    use tests::kv::KvRow;
    let info = |host: &str| ShardInfo {
        id: ShardId::new(host, "hooks").expect("id"),
        class_name: "KvShard".into(),
        busy: false,
    };
    let (a, b) = (
        KvShard::new(&info("a"), db_a),
        KvShard::new(&info("b"), db_b),
    );
    a.materialize().await.expect("materialize a");
    b.materialize().await.expect("materialize b");
    let rows: Vec<KvRow> = (1..=250u64)
        .map(|key| KvRow {
            key,
            version: 1,
            value: format!("v{key}"),
            deleted: key % 10 == 0,
        })
        .collect();
    a.write_rows(&rows).await.expect("write rows");

    // Paging by key cursor returns every row once, in order.
    let (mut copied, mut after) = (Vec::new(), None);
    loop {
        let page = a.read_page(after, 64, None).await.expect("page");
        let Some(last) = page.last() else { break };
        after = Some(KvShard::cursor_of(last));
        copied.extend(page);
    }
    assert_eq!(copied, rows);
    b.write_rows(&copied).await.expect("copy");
    assert_eq!(
        a.checksum(0..=u64::MAX >> 1, None).await.expect("a"),
        b.checksum(0..=u64::MAX >> 1, None).await.expect("b")
    );
    assert_eq!(
        a.checksum(0..=u64::MAX >> 1, None).await.expect("a").rows,
        250
    );

    // An older row never overwrites a newer one; a differing row changes the checksum.
    b.write_rows(&[KvRow {
        key: 7,
        version: 0,
        value: "old".into(),
        deleted: false,
    }])
    .await
    .expect("stale");
    assert_eq!(
        b.get(7).await.expect("get").map(|r| r.value),
        Some("v7".into())
    );
    b.write_rows(&[KvRow {
        key: 7,
        version: 2,
        value: "new".into(),
        deleted: false,
    }])
    .await
    .expect("newer");
    assert_ne!(
        a.checksum(1..=10, None).await.expect("a"),
        b.checksum(1..=10, None).await.expect("b")
    );
    assert_eq!(
        a.checksum(11..=250, None).await.expect("a"),
        b.checksum(11..=250, None).await.expect("b")
    );

    // Hash ranges select and delete by the stored hash.
    let half = gizzard::nameserver::MAX_HASH / 2;
    let low = a
        .read_page(None, 1_000, Some(0..half))
        .await
        .expect("low half");
    let high = a
        .read_page(None, 1_000, Some(half..gizzard::nameserver::MAX_HASH + 1))
        .await
        .expect("high half");
    assert_eq!(low.len() + high.len(), 250);
    assert!(low.iter().all(|r| gizzard::nameserver::hash(r.key) < half));
    assert_eq!(
        a.delete_hash_range(0..half).await.expect("delete"),
        low.len() as u64
    );
    assert_eq!(a.rows().await.expect("rows"), high);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_shard_hooks_on_mariadb() {
    let server = tests::MariaDb::start().await.expect("mariadb");
    let (url_a, url_b) = (
        server.create_database("a").await.expect("db"),
        server.create_database("b").await.expect("db"),
    );
    let open = |url: String| async move {
        gizzard::db::Database::open(&url, Duration::from_secs(5))
            .await
            .expect("open")
    };
    physical_shard_hooks(open(url_a).await, open(url_b).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_shard_hooks_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| {
        let url = format!("sqlite://{}", dir.path().join(name).display());
        async move {
            gizzard::db::Database::open(&url, Duration::from_secs(5))
                .await
                .expect("open")
        }
    };
    physical_shard_hooks(open("a.db").await, open("b.db").await).await;
}
