//! A T-Bird cluster for migration tests and benchmarks: a MariaDB nameserver and shard hosts
//! `h0..`, in-process proxies serving the tweet service and the ShardManager over loopback
//! gRPC (through `tbird::server::serve`, as `tbird serve` does), and a writer that posts
//! tweets and keeps a ledger of every acknowledged id.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gizzard::{
    manager::convert::change_to_pb,
    migrate::{MigrationSettings, ops::Tuning},
    nameserver::{Change, Host},
    server::{Proxy, ProxySettings},
};
use proto::{
    gizzard::v1::{self as gpb, shard_manager_client::ShardManagerClient},
    tbird::v1::{
        GetTweetsRequest, PostTweetRequest, UserTweetsRequest, tweets_client::TweetsClient,
    },
};
use snowflake::{clock::SystemClock, worker::IdWorker};
use tbird::{
    ids::IdSource,
    server::{Listeners, Parts},
    tweets::TbirdProxy,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{
    MariaDb,
    cluster::{Databases, host_name, test_settings},
};

/// One in-process tbird server: the tweet service and the ShardManager on loopback ports.
pub struct TweetServer {
    pub proxy: Arc<TbirdProxy>,
    pub tweets: String,
    pub admin: String,
    pub shutdown: CancellationToken,
    served: JoinHandle<()>,
}

impl TweetServer {
    /// Stops the server as a crash would: its workers drop what they run, leaving their jobs
    /// to their leases.
    pub async fn kill(self) {
        self.shutdown.cancel();
        self.served.abort();
        let _ = self.served.await;
    }
}

/// A nameserver server and shard hosts `h0..hN`, with tables 1 and 2 created on the first
/// `replicas` hosts by T-Bird's default topology (prefixes `t1_NNNN` and `t2_NNNN`).
pub struct TweetCluster {
    pub nameserver: MariaDb,
    pub hosts: Vec<MariaDb>,
    pub nameserver_url: String,
    /// Worker id for the next server's ids, so servers never share one.
    next_worker: Mutex<u8>,
}

/// The settings test clusters run with: short leases, so workflows finish quickly and a
/// killed server's job is taken over within seconds.
pub fn settings(nameserver_url: &str) -> ProxySettings {
    ProxySettings {
        migrations: MigrationSettings {
            // Small pages and chunks, so a test's few thousand rows take many of each.
            tuning: Tuning {
                page_rows: 64,
                max_page_rows: 256,
                chunk_rows: 100,
                // Every copy drops its new target's hash index and builds it at the end.
                defer_indexes_min_rows: 0,
                ..Tuning::default()
            },
            ..MigrationSettings::default()
        },
        ..test_settings(nameserver_url)
    }
}

impl TweetCluster {
    /// Starts `hosts` shard servers and a nameserver; the tables get `shards` forwardings,
    /// each replicated on the first `replicas` hosts. Every host is in the nameserver.
    pub async fn start(hosts: usize, replicas: usize, shards: u32) -> (Self, TweetServer) {
        Self::start_with(hosts, replicas, shards, &[], settings).await
    }

    /// [`TweetCluster::start`] with extra MariaDB flags (see [`crate::mariadb::BENCH_FLAGS`])
    /// and the first server's settings.
    pub async fn start_with(
        hosts: usize,
        replicas: usize,
        shards: u32,
        flags: &'static [&'static str],
        settings: fn(&str) -> ProxySettings,
    ) -> (Self, TweetServer) {
        let Databases {
            nameserver,
            nameserver_url,
            hosts: servers,
        } = Databases::start(hosts, "tbird", flags).await;
        let cluster = Self {
            nameserver,
            hosts: servers,
            nameserver_url,
            next_worker: Mutex::new(1),
        };
        let server = cluster.serve(settings(&cluster.nameserver_url)).await;
        let host = |i: usize| (host_name(i), cluster.hosts[i].url("tbird"));
        let replica_hosts: Vec<(String, String)> = (0..replicas).map(host).collect();
        let mut changes =
            tbird::topology::default_changes(&replica_hosts, shards).expect("valid names");
        changes.extend((replicas..hosts).map(host).map(|(name, url)| {
            Change::SetHost(Host {
                name,
                url,
                read_weight: 1,
                write_weight: 1,
            })
        }));
        let mut admin = cluster.admin(&server).await;
        admin
            .apply(gpb::ApplyRequest {
                changes: changes.iter().map(change_to_pb).collect(),
            })
            .await
            .expect("create the tables");
        (cluster, server)
    }

    /// Starts another server on the cluster's nameserver.
    pub async fn serve(&self, settings: ProxySettings) -> TweetServer {
        self.serve_with(settings, edge::Settings::default()).await
    }

    /// Starts another server on the cluster's nameserver, its ports with `edge` settings.
    pub async fn serve_with(&self, settings: ProxySettings, edge: edge::Settings) -> TweetServer {
        let shutdown = CancellationToken::new();
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let listeners = Listeners::bind(loopback, loopback).await.expect("bind");
        let (tweets, admin) = listeners.local_addrs().expect("addrs");
        let addrs = (tweets.to_string(), admin.to_string());
        let settings = ProxySettings {
            advertise_addr: addrs.1.clone(),
            ..settings
        };
        let proxy: TbirdProxy = Proxy::start(
            settings,
            tbird::store::registry(tbird::hosts::DEFAULT_STATEMENTS_PER_HOST),
            HashMap::new(),
            shutdown.clone(),
        )
        .await
        .expect("start proxy");
        let worker = {
            let mut next = self.next_worker.lock().expect("lock");
            *next += 1;
            *next
        };
        let ids = IdSource::Local(Arc::new(IdWorker::fixed(
            Arc::new(SystemClock::default()),
            5,
            1,
            worker,
        )));
        let proxy = Arc::new(proxy);
        let parts = Parts {
            proxy: proxy.clone(),
            ids,
            statements_per_host: tbird::hosts::DEFAULT_STATEMENTS_PER_HOST,
            edge,
        };
        let stop = shutdown.clone();
        let served = tokio::spawn(async move {
            if let Err(error) = tbird::server::serve(listeners, parts, stop).await {
                panic!("serve: {error}");
            }
        });
        TweetServer {
            proxy,
            tweets: addrs.0,
            admin: addrs.1,
            shutdown,
            served,
        }
    }

    /// Opens the cluster's nameserver directly, to look at its registry and retired leaves.
    pub async fn nameserver_view(&self) -> gizzard::nameserver::NameServer {
        let db = db::Database::open(&self.nameserver_url, Duration::from_secs(5))
            .await
            .expect("open the nameserver database");
        gizzard::nameserver::NameServer::open(db)
            .await
            .expect("open the nameserver")
    }

    /// A ShardManager client of `server`.
    pub async fn admin(&self, server: &TweetServer) -> ShardManagerClient<Channel> {
        ShardManagerClient::connect(format!("http://{}", server.admin))
            .await
            .expect("connect admin")
    }

    /// Diffs every pair of replicas of every tree through diff migrations and returns the
    /// keys that differ (none when the replicas agree).
    pub async fn full_diff(&self, server: &TweetServer) -> Vec<(String, String, Vec<u64>)> {
        let mut admin = self.admin(server).await;
        let topology = admin
            .dump(gpb::DumpRequest {})
            .await
            .expect("dump")
            .into_inner();
        let mut differing = Vec::new();
        for forwarding in &topology.forwardings {
            let leaves: Vec<String> = topology
                .links
                .iter()
                .filter(|l| l.up == forwarding.shard_id)
                .map(|l| l.down.clone())
                .collect();
            for pair in leaves.windows(2) {
                let kind = gpb::start_migration_request::Kind::Diff(gpb::ShardPair {
                    a: pair[0].clone(),
                    b: pair[1].clone(),
                    hashes: None,
                });
                let done = run_migration(&mut admin, kind).await;
                assert_eq!(done.status, "done", "diff {pair:?}: {done:?}");
                if done.differing > 0 {
                    differing.push((pair[0].clone(), pair[1].clone(), done.differing_keys));
                }
            }
        }
        differing
    }
}

/// Starts a migration and waits (up to three minutes) until it ends.
pub async fn run_migration(
    admin: &mut ShardManagerClient<Channel>,
    kind: gpb::start_migration_request::Kind,
) -> gpb::Migration {
    let started = admin
        .start_migration(gpb::StartMigrationRequest {
            kind: Some(kind),
            ..Default::default()
        })
        .await
        .expect("start migration")
        .into_inner();
    wait_migration(admin, started.id).await
}

/// Waits (up to three minutes) until migration `id` ends.
pub async fn wait_migration(admin: &mut ShardManagerClient<Channel>, id: u64) -> gpb::Migration {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let m = admin
            .get_migration(gpb::GetMigrationRequest { id })
            .await
            .expect("get migration")
            .into_inner();
        if m.status != "running" {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "migration {id} did not end: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a writer saw.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Ids of acknowledged posts.
    pub acked: Vec<u64>,
    /// The user of each acknowledged post, by id.
    pub users: HashMap<u64, u64>,
    /// Posts that failed, with the error.
    pub failures: Vec<String>,
    /// The slowest acknowledged post.
    pub slowest: Duration,
}

/// Posts tweets with `concurrency` tasks until stopped, keeping a ledger.
pub struct TweetWriter {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Ledger>>,
    /// Posts acknowledged so far, by every task.
    acked: Arc<AtomicU64>,
}

impl TweetWriter {
    /// Starts posting to the tweet service at `addr`, `concurrency` posts at a time, each
    /// task pausing `pause` between posts.
    pub async fn start(addr: &str, concurrency: usize, pause: Duration) -> Self {
        let stop = CancellationToken::new();
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect tweets");
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = (0..concurrency)
            .map(|task| {
                let (mut client, stop) = (TweetsClient::new(channel.clone()), stop.clone());
                let acked = acked.clone();
                tokio::spawn(async move {
                    let mut ledger = Ledger::default();
                    let mut n = 0u64;
                    while !stop.is_cancelled() {
                        n += 1;
                        let user_id = 1 + (task as u64 * 7919 + n) % 500;
                        let request = PostTweetRequest {
                            user_id,
                            text: format!("tweet {n} of writer {task}"),
                            in_reply_to: None,
                        };
                        let started = Instant::now();
                        let posted = tokio::time::timeout(
                            Duration::from_secs(10),
                            client.post_tweet(request),
                        )
                        .await;
                        match posted {
                            Ok(Ok(tweet)) => {
                                let id = tweet.into_inner().id;
                                ledger.acked.push(id);
                                ledger.users.insert(id, user_id);
                                ledger.slowest = ledger.slowest.max(started.elapsed());
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(status)) => ledger.failures.push(status.to_string()),
                            Err(_) => ledger.failures.push("no answer within 10s".into()),
                        }
                        tokio::time::sleep(pause).await;
                    }
                    ledger
                })
            })
            .collect();
        Self { stop, tasks, acked }
    }

    /// Waits until `more` posts beyond those acknowledged so far are acknowledged, so that a
    /// test's load demonstrably runs across what it does next; panics after `limit`.
    pub async fn wait_for_acks(&self, more: u64, limit: Duration) {
        let target = self.acked.load(Ordering::Relaxed) + more;
        crate::wait_until(
            &format!("{more} more acknowledged posts"),
            limit,
            async || self.acked.load(Ordering::Relaxed) >= target,
        )
        .await;
    }

    /// Stops posting and returns the merged ledger.
    pub async fn stop(self) -> Ledger {
        self.stop.cancel();
        let mut all = Ledger::default();
        for task in self.tasks {
            let ledger = task.await.expect("writer task");
            all.acked.extend(ledger.acked);
            all.users.extend(ledger.users);
            all.failures.extend(ledger.failures);
            all.slowest = all.slowest.max(ledger.slowest);
        }
        all
    }
}

/// Reads `ids` through the tweet service at `addr`, in GetTweets calls of 500 ids; returns
/// the tweets found and the ids not found.
pub async fn get_all(addr: &str, ids: &[u64]) -> (Vec<proto::tbird::v1::Tweet>, Vec<u64>) {
    let mut client = TweetsClient::connect(format!("http://{addr}"))
        .await
        .expect("connect tweets");
    let (mut tweets, mut missing) = (Vec::new(), Vec::new());
    for chunk in ids.chunks(500) {
        let got = client
            .get_tweets(GetTweetsRequest {
                ids: chunk.to_vec(),
            })
            .await
            .expect("get tweets")
            .into_inner();
        tweets.extend(got.tweets);
        missing.extend(got.missing);
    }
    (tweets, missing)
}

/// Returns the ids in `ids` that the tweet service at `addr` does not find.
pub async fn missing(addr: &str, ids: &[u64]) -> Vec<u64> {
    get_all(addr, ids).await.1
}

/// Returns the ids on `user`'s timeline through the tweet service at `addr`, newest first,
/// paging to the end.
pub async fn timeline(addr: &str, user: u64) -> Vec<u64> {
    let mut client = TweetsClient::connect(format!("http://{addr}"))
        .await
        .expect("connect tweets");
    let mut ids = Vec::new();
    let mut max_id = None;
    loop {
        let page = client
            .user_tweets(UserTweetsRequest {
                user_id: user,
                max_id,
                limit: 200,
            })
            .await
            .expect("user tweets")
            .into_inner();
        ids.extend(page.tweets.iter().map(|t| t.id));
        match page.next_max_id {
            Some(next) => max_id = Some(next),
            None => return ids,
        }
    }
}

/// Returns the acknowledged posts of `ledger` missing from their user's timeline.
pub async fn missing_from_timelines(addr: &str, ledger: &Ledger) -> Vec<u64> {
    let mut by_user: HashMap<u64, Vec<u64>> = HashMap::new();
    for (&id, &user) in &ledger.users {
        by_user.entry(user).or_default().push(id);
    }
    let mut missing = Vec::new();
    for (user, ids) in by_user {
        let shown: std::collections::HashSet<u64> =
            timeline(addr, user).await.into_iter().collect();
        missing.extend(ids.into_iter().filter(|id| !shown.contains(id)));
    }
    missing
}

/// Loads `count` tweets of about 100 bytes straight into shard `prefix` on `url`.
/// Deleted, replies and plain tweets are mixed; ids are `2^40 + 4096 i`, so the same `count`
/// loads the same rows on every host.
pub async fn load_tweets(url: &str, prefix: &str, count: u64) {
    let db = db::Database::open(url, Duration::from_secs(60))
        .await
        .expect("open host");
    let info = gizzard::nameserver::ShardInfo {
        id: format!("h0/{prefix}").parse().expect("id"),
        class_name: tbird::store::TWEET_SHARD.into(),
        busy: false,
    };
    let shard = tbird::store::TbirdShard::new(&info, tbird::store::Kind::Tweets, db);
    gizzard::shards::PhysicalShard::materialize(&shard)
        .await
        .expect("materialize");
    let base = 1u64 << 40;
    let batches: Vec<Vec<tbird::store::Row>> = (0..count)
        .collect::<Vec<_>>()
        .chunks(5_000)
        .map(|chunk| {
            chunk
                .iter()
                .map(|i| {
                    tbird::store::Row::Tweet(tbird::tweet::Tweet {
                        id: base + i * 4_096,
                        user_id: 1 + i % 10_000,
                        text: format!("benchmark tweet number {i} with some words to fill it up to a hundred bytes or so."),
                        in_reply_to: (i % 5 == 0).then_some(base + i),
                        deleted: i % 50 == 0,
                    })
                })
                .collect()
        })
        .collect();
    let shard = std::sync::Arc::new(shard);
    let mut tasks = tokio::task::JoinSet::new();
    for batch in batches {
        let shard = shard.clone();
        tasks.spawn(async move {
            use gizzard::shards::PhysicalShard;
            shard.write_rows(&batch).await.expect("load rows")
        });
        while tasks.len() >= 4 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
}
