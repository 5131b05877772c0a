//! Gizzard nameserver tests against MariaDB and SQLite: one suite run on both backends, one
//! test per case, and routing snapshots propagating between servers that share a nameserver
//! database.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use gizzard::{
    db::Database,
    nameserver::{
        Change, Forwarding, Host, Link, NameServer, NameServerError, Routing, ShardId, ShardInfo,
        ShardTypes, Topology, TopologyError, hash,
    },
};
use tests::MariaDb;
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> ShardId {
    s.parse().expect("valid shard id")
}

fn types() -> ShardTypes {
    ShardTypes::new(["TweetShard"])
}

fn host(name: &str, url: &str) -> Change {
    Change::SetHost(Host {
        name: name.into(),
        url: url.into(),
        read_weight: 1,
        write_weight: 2,
    })
}

fn shard(s: &str, class: &str) -> Change {
    Change::CreateShard(ShardInfo {
        id: id(s),
        class_name: class.into(),
        busy: false,
    })
}

fn link(up: &str, down: &str, weight: u32) -> Change {
    Change::AddLink(Link {
        up: id(up),
        down: id(down),
        weight,
    })
}

fn forward(table_id: i32, base_id: i64, root: &str) -> Change {
    Change::SetForwarding(Forwarding {
        table_id,
        base_id,
        shard_id: id(root),
    })
}

/// The first batch: two hosts, two replicated trees over four tables, two forwarding tables.
fn first_batch() -> Vec<Change> {
    vec![
        host("db1", "mysql://tbird@db1:3306/tweets"),
        host("db2", "sqlite:///var/lib/tbird/db2.db"),
        shard("db1/tweets_0000", "TweetShard"),
        shard("db2/tweets_0000", "TweetShard"),
        shard("db1/tweets_0001", "TweetShard"),
        shard("db2/tweets_0001", "TweetShard"),
        shard("localhost/tweets_0000", "ReplicatingShard"),
        shard("localhost/tweets_0001", "ReplicatingShard"),
        shard("localhost/new_0001", "WriteOnlyShard"),
        link("localhost/tweets_0000", "db1/tweets_0000", 1),
        link("localhost/tweets_0000", "db2/tweets_0000", 3),
        link("localhost/tweets_0001", "db1/tweets_0001", 1),
        link("localhost/tweets_0001", "localhost/new_0001", 0),
        link("localhost/new_0001", "db2/tweets_0001", 1),
        forward(1, 0, "localhost/tweets_0000"),
        forward(1, 1 << 59, "localhost/tweets_0001"),
        forward(2, 0, "localhost/tweets_0001"),
    ]
}

/// Returns `topology` with `changes` applied in memory, at `version`.
fn expected(mut topology: Topology, changes: &[Change], version: u64) -> Topology {
    for change in changes {
        topology.apply(change).expect("valid change");
    }
    topology.version = version;
    topology
}

/// Opens the nameserver at `url`, creating its tables.
async fn open(url: &str) -> NameServer {
    let db = Database::open(url, Duration::from_secs(10))
        .await
        .expect("open database");
    NameServer::open(db).await.expect("create tables")
}

/// Opens the nameserver at `url` and applies [`first_batch`] (version 1).
async fn with_first_batch(url: &str) -> NameServer {
    let ns = open(url).await;
    assert_eq!(
        ns.apply(&first_batch(), &types())
            .await
            .expect("first batch"),
        1
    );
    ns
}

/// Applies `changes` to the nameserver with [`first_batch`] at `url`, expects the refusal
/// `check` accepts, and that nothing was stored: the valid changes before the bad one
/// neither.
async fn refused(url: &str, changes: &[Change], check: impl Fn(&TopologyError) -> bool) {
    let ns = with_first_batch(url).await;
    let before = ns.load().await.expect("load before");
    let err = ns.apply(changes, &types()).await.expect_err("refused");
    let rule = err.topology_error();
    assert!(rule.is_some_and(&check), "unexpected error: {err}");
    assert!(matches!(
        err,
        NameServerError::Rejected { .. } | NameServerError::Invalid(_)
    ));
    assert_eq!(
        ns.load().await.expect("load after"),
        before,
        "topology changed"
    );
    assert_eq!(ns.version().await.expect("version"), 1, "version moved");
}

// The nameserver's behaviour, whatever database it lives in: one test per case on SQLite and
// on MariaDB.
tests::backend_suite!(
    an_empty_nameserver_is_at_version_0,
    a_batch_is_one_version_and_every_handle_reads_it,
    a_cycle_is_refused,
    a_dangling_link_is_refused,
    an_unknown_shard_type_is_refused,
    a_bad_table_prefix_is_refused,
    a_table_not_starting_at_0_is_refused,
    a_negative_base_id_is_refused,
    deleting_a_linked_shard_is_refused,
    a_missing_shard_refuses_the_valid_changes_before_it,
    a_new_url_for_a_host_holding_shards_is_refused_unless_repointed,
    a_second_batch_edits_replaces_and_removes_rows,
    an_empty_batch_changes_nothing,
    concurrent_batches_each_get_their_own_version,
);

async fn an_empty_nameserver_is_at_version_0(url: &str) {
    let ns = open(url).await;
    assert_eq!(ns.load().await.expect("load empty"), Topology::default());
    assert_eq!(ns.version().await.expect("version"), 0);
}

async fn a_batch_is_one_version_and_every_handle_reads_it(url: &str) {
    let ns = with_first_batch(url).await;
    assert_eq!(ns.version().await.expect("version"), 1);
    let want = expected(Topology::default(), &first_batch(), 1);
    let loaded = ns.load().await.expect("load");
    assert_eq!(loaded, want);
    assert_eq!(
        loaded.links[&(id("localhost/tweets_0000"), id("db2/tweets_0000"))],
        3
    );
    assert_eq!(loaded.hosts["db1"].write_weight, 2);
    // A second handle on the same database, and a server of its own, read the same topology.
    assert_eq!(
        NameServer::open(ns.database().clone())
            .await
            .expect("reopen")
            .load()
            .await
            .ok(),
        Some(want.clone())
    );
    assert_eq!(open(url).await.load().await.ok(), Some(want));
}

async fn a_cycle_is_refused(url: &str) {
    let changes = [
        shard("localhost/a", "ReplicatingShard"),
        shard("localhost/b", "ReadOnlyShard"),
        link("localhost/a", "localhost/b", 1),
        link("localhost/b", "localhost/a", 1),
    ];
    refused(
        url,
        &changes,
        |e| matches!(e, TopologyError::Cycle(c) if *c == [id("localhost/a"), id("localhost/b")]),
    )
    .await;
}

async fn a_dangling_link_is_refused(url: &str) {
    let changes = [
        host("db3", "mysql://x@db3/t"),
        link("localhost/tweets_0000", "db3/tweets_0000", 1),
    ];
    refused(url, &changes, |e| {
        let missing = id("db3/tweets_0000");
        matches!(e, TopologyError::DanglingLink { missing: m, .. } if *m == missing)
    })
    .await;
}

async fn an_unknown_shard_type_is_refused(url: &str) {
    refused(url, &[shard("db1/users_0000", "UserShard")], |e| {
        matches!(e, TopologyError::UnknownShardType { class_name, .. } if class_name == "UserShard")
    })
    .await;
}

async fn a_bad_table_prefix_is_refused(url: &str) {
    assert!(
        "db1/t0;x".parse::<ShardId>().is_err(),
        "bad prefixes do not even parse"
    );
    let bad_prefix = ShardId {
        hostname: "db1".into(),
        table_prefix: "t0; DROP TABLE x".into(),
    };
    let changes = [Change::CreateShard(ShardInfo {
        id: bad_prefix,
        class_name: "TweetShard".into(),
        busy: false,
    })];
    refused(url, &changes, |e| {
        matches!(e, TopologyError::InvalidShardId { .. })
    })
    .await;
}

async fn a_table_not_starting_at_0_is_refused(url: &str) {
    refused(url, &[forward(3, 1 << 40, "localhost/tweets_0000")], |e| {
        *e == TopologyError::TableNotStartingAtZero {
            table_id: 3,
            first_base_id: 1 << 40,
        }
    })
    .await;
}

async fn a_negative_base_id_is_refused(url: &str) {
    let ns = with_first_batch(url).await;
    let err = ns
        .apply(&[forward(1, -5, "localhost/tweets_0000")], &types())
        .await
        .expect_err("negative base id");
    assert!(err.to_string().contains("base id -5"), "{err}");
    assert!(matches!(err, NameServerError::Invalid(_)), "{err}");
    assert_eq!(ns.version().await.expect("version"), 1, "version moved");
}

async fn deleting_a_linked_shard_is_refused(url: &str) {
    refused(url, &[Change::DeleteShard(id("db1/tweets_0000"))], |e| {
        matches!(e, TopologyError::ShardStillLinked { id: i, .. } if *i == id("db1/tweets_0000"))
    })
    .await;
}

async fn a_missing_shard_refuses_the_valid_changes_before_it(url: &str) {
    let changes = [
        host("db3", "mysql://x@db3/t"),
        Change::DeleteShard(id("db3/none")),
    ];
    refused(url, &changes, |e| {
        *e == TopologyError::ShardNotFound(id("db3/none"))
    })
    .await;
}

/// The second batch: finishes the migration of range 1 of table 1, reweights, marks a shard
/// busy, moves and removes forwardings, and repoints db2, which holds shards.
fn second_batch() -> Vec<Change> {
    vec![
        // Unwrap the new replica, drop the old.
        Change::RemoveLink {
            up: id("localhost/tweets_0001"),
            down: id("localhost/new_0001"),
        },
        Change::RemoveLink {
            up: id("localhost/new_0001"),
            down: id("db2/tweets_0001"),
        },
        Change::DeleteShard(id("localhost/new_0001")),
        link("localhost/tweets_0001", "db2/tweets_0001", 2),
        link("localhost/tweets_0000", "db2/tweets_0000", 5),
        Change::SetBusy {
            id: id("db1/tweets_0001"),
            busy: true,
        },
        forward(2, 0, "localhost/tweets_0000"),
        Change::RemoveForwarding {
            table_id: 1,
            base_id: 1 << 59,
        },
        // db2 holds shards: giving it a new url says so (`add-host --force`).
        Change::RepointHost(Host {
            name: "db2".into(),
            url: "mysql://tbird@db2:3306/tweets".into(),
            read_weight: 1,
            write_weight: 1,
        }),
    ]
}

async fn a_new_url_for_a_host_holding_shards_is_refused_unless_repointed(url: &str) {
    refused(
        url,
        &[host("db2", "mysql://tbird@db2:3306/tweets")],
        |e| matches!(e, TopologyError::HostHoldsShards { name, .. } if name == "db2"),
    )
    .await;
    // The same url as a repoint goes through.
    let ns = open(url).await;
    let repoint = second_batch().pop().expect("the repoint");
    assert_eq!(ns.apply(&[repoint], &types()).await.expect("repoint"), 2);
    let loaded = ns.load().await.expect("load");
    assert_eq!(loaded.hosts["db2"].url, "mysql://tbird@db2:3306/tweets");
}

async fn a_second_batch_edits_replaces_and_removes_rows(url: &str) {
    let ns = with_first_batch(url).await;
    let batch = second_batch();
    assert_eq!(ns.apply(&batch, &types()).await.expect("second batch"), 2);
    let want = expected(expected(Topology::default(), &first_batch(), 1), &batch, 2);
    let loaded = ns.load().await.expect("load");
    assert_eq!(loaded, want);
    assert!(!loaded.shards.contains_key(&id("localhost/new_0001")));
    assert!(loaded.shards[&id("db1/tweets_0001")].busy);
    assert_eq!(
        loaded.forwardings.get(&(2, 0)),
        Some(&id("localhost/tweets_0000"))
    );
    assert_eq!(loaded.hosts["db2"].url, "mysql://tbird@db2:3306/tweets");
}

async fn an_empty_batch_changes_nothing(url: &str) {
    let ns = with_first_batch(url).await;
    let before = ns.load().await.expect("load");
    assert_eq!(ns.apply(&[], &types()).await.expect("empty batch"), 1);
    assert_eq!(ns.version().await.expect("version"), 1);
    assert_eq!(ns.load().await.expect("load"), before);
}

/// Concurrent batches serialize on the version row: every one gets its own version and none
/// is lost.
async fn concurrent_batches_each_get_their_own_version(url: &str) {
    let ns = open(url).await;
    let batches = (0..8).map(|i| {
        let ns = ns.clone();
        async move {
            ns.apply(&[host(&format!("h{i}"), "mysql://x@h/db")], &types())
                .await
        }
    });
    let mut versions: Vec<u64> = futures::future::try_join_all(batches)
        .await
        .expect("batches");
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    assert_eq!(ns.load().await.expect("load").hosts.len(), 8);
}

/// 100,000 forwardings go in as one batch of multi-row inserts; a later small batch writes
/// only its own rows, so it costs a load of the topology, not a rewrite of it.
#[tokio::test]
async fn large_topologies_stay_fast_on_mariadb() {
    let server = MariaDb::start().await.expect("start mariadb");
    let url = server
        .create_database("nameserver")
        .await
        .expect("create database");
    let db = Database::open(&url, Duration::from_secs(30))
        .await
        .expect("open mysql");
    let ns = NameServer::open(db).await.expect("create tables");
    let mut batch = first_batch();
    batch.extend((1..100_000i64).map(|i| forward(1, i << 40, "localhost/tweets_0001")));
    let started = Instant::now();
    assert_eq!(ns.apply(&batch, &types()).await.expect("big batch"), 1);
    let big = started.elapsed();

    let started = Instant::now();
    let small = [
        Change::RemoveForwarding {
            table_id: 1,
            base_id: 7 << 40,
        },
        forward(1, 9 << 40, "localhost/tweets_0000"),
    ];
    assert_eq!(ns.apply(&small, &types()).await.expect("small batch"), 2);
    let small_took = started.elapsed();
    let started = Instant::now();
    let loaded = ns.load().await.expect("load");
    let load_took = started.elapsed();
    eprintln!(
        "100,000 forwardings on mariadb: batch {big:?}, 2-change batch {small_took:?}, \
               load {load_took:?}"
    );
    assert_eq!(loaded.table_forwardings(1).count(), 100_000);
    assert!(!loaded.forwardings.contains_key(&(1, 7 << 40)));
    assert_eq!(
        loaded.forwardings[&(1, 9 << 40)],
        id("localhost/tweets_0000")
    );
    assert!(
        small_took < Duration::from_secs(5),
        "small batch took {small_took:?}"
    );
}

async fn wait_for_version(routing: &Routing, version: u64, within: Duration) -> Duration {
    let started = Instant::now();
    while routing.current().version < version {
        assert!(
            started.elapsed() < within,
            "routing still at version {} after {within:?}, want {version}",
            routing.current().version
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Two servers route with their own snapshots of one nameserver: a change applied elsewhere
/// reaches both through their pollers alone, and a database outage keeps the old snapshot.
#[tokio::test]
async fn routing_changes_propagate_to_every_server() {
    let mut server = MariaDb::start().await.expect("start mariadb");
    let url = server
        .create_database("nameserver")
        .await
        .expect("create database");
    let open = || async {
        let db = Database::open(&url, Duration::from_millis(500))
            .await
            .expect("open mysql");
        NameServer::open(db).await.expect("create tables")
    };
    let admin = open().await;
    admin
        .apply(&first_batch(), &types())
        .await
        .expect("first batch");

    let shutdown = CancellationToken::new();
    let mut routings = Vec::new();
    let mut pollers = Vec::new();
    for _ in 0..2 {
        let identity = gizzard::nameserver::ServerIdentity::new("poller", "");
        let lease = gizzard::nameserver::routing::DEFAULT_LEASE;
        let routing = Arc::new(
            Routing::start(open().await, identity, lease)
                .await
                .expect("initial load"),
        );
        assert_eq!(routing.current().version, 1);
        let interval = gizzard::nameserver::DEFAULT_POLL_INTERVAL;
        pollers.push(routing.clone().spawn_poller(interval, shutdown.clone()));
        routings.push(routing);
    }
    let key = 42u64;
    let (table, h) = (1, hash(key));
    let root_before = routings[0]
        .current()
        .lookup(table, h)
        .cloned()
        .expect("routed");

    // Split table 1 at the key's hash onto a new tree.
    let split = [
        shard("db1/tweets_0002", "TweetShard"),
        shard("localhost/tweets_0002", "ReplicatingShard"),
        link("localhost/tweets_0002", "db1/tweets_0002", 1),
        forward(table, h, "localhost/tweets_0002"),
    ];
    assert_eq!(admin.apply(&split, &types()).await.expect("split"), 2);
    for routing in &routings {
        let took = wait_for_version(routing, 2, Duration::from_secs(2)).await;
        let snapshot = routing.current();
        assert_eq!(
            snapshot.lookup(table, h),
            Some(&id("localhost/tweets_0002")),
            "took {took:?}"
        );
        assert_eq!(snapshot.lookup(table, h - 1), Some(&root_before));
        let tree = snapshot.tree(&id("localhost/tweets_0002")).expect("tree");
        assert_eq!(tree.children.len(), 1);
    }

    // The database stops answering: polls fail and time out, routing keeps its snapshot.
    server.pause();
    for routing in &routings {
        // Unconfirmed for over two poll intervals: at least two polls failed meanwhile.
        let polls_failed = gizzard::nameserver::DEFAULT_POLL_INTERVAL * 2;
        tests::wait_until(
            "polls fail while the nameserver is paused",
            Duration::from_secs(20),
            async || {
                routing
                    .confirmed_age()
                    .is_some_and(|age| age > polls_failed)
            },
        )
        .await;
        let snapshot = routing.current();
        assert_eq!(snapshot.version, 2);
        assert_eq!(
            snapshot.lookup(table, h),
            Some(&id("localhost/tweets_0002"))
        );
    }
    server.resume();

    // Back up: the next change arrives by polling again.
    let busy = [Change::SetBusy {
        id: id("db1/tweets_0002"),
        busy: true,
    }];
    let version = admin.apply(&busy, &types()).await.expect("after resume");
    assert_eq!(version, 3);
    for routing in &routings {
        wait_for_version(routing, 3, Duration::from_secs(3)).await;
        assert!(routing.current().topology.shards[&id("db1/tweets_0002")].busy);
        assert_eq!(routing.reload().await.expect("forced reload"), 3);
    }

    shutdown.cancel();
    for poller in pollers {
        tokio::time::timeout(Duration::from_secs(2), poller)
            .await
            .expect("poller stops on shutdown")
            .expect("poller did not panic");
    }
}
