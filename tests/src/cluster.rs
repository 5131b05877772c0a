//! What every test cluster stands on ([`Databases`]: a nameserver on its own MariaDB server,
//! so killing a shard host never takes the job queue with it, and shard hosts on others; one
//! [`drain`] of the job queue), and the Gizzard cluster that runs the key-value application in
//! this process ([`KvCluster`]). T-Bird's clusters build on the same: in-process servers in
//! [`crate::tweets`], production processes in [`crate::stack`].

use std::{collections::HashMap, time::Duration};

use gizzard::{
    nameserver::{Change, Host, ShardId, replicated_table},
    scheduler::{JobQueue, JobState, WorkerSettings},
    server::{Proxy, ProxySettings},
    shards::ShardError,
};
use tokio_util::sync::CancellationToken;

use crate::{
    MariaDb,
    kv::{self, KV_SHARD, KvRow, KvShard, KvWrite},
};

/// The MariaDB servers of a test cluster: the nameserver's, which also holds the job queue,
/// and the shard hosts', each with an empty database for the shards' tables.
pub struct Databases {
    pub nameserver: MariaDb,
    pub nameserver_url: String,
    pub hosts: Vec<MariaDb>,
}

impl Databases {
    /// Starts the nameserver's server (database `gizzard`) and `hosts` shard servers (database
    /// `shard_db`), every one with `flags` (see [`crate::mariadb::BENCH_FLAGS`]).
    pub async fn start(hosts: usize, shard_db: &str, flags: &'static [&'static str]) -> Self {
        let mut servers = MariaDb::start_many_with(hosts + 1, flags)
            .await
            .expect("start mariadb servers");
        let nameserver = servers.remove(0);
        let nameserver_url = nameserver
            .create_database("gizzard")
            .await
            .expect("create the nameserver database");
        for server in &servers {
            server
                .create_database(shard_db)
                .await
                .expect("create a shard database");
        }
        Self {
            nameserver,
            nameserver_url,
            hosts: servers,
        }
    }

    /// Returns each shard host's name (`h0`, `h1`, ...) and the URL of its database `db`.
    pub fn host_urls(&self, db: &str) -> Vec<(String, String)> {
        let named = |(i, server): (usize, &MariaDb)| (host_name(i), server.url(db));
        self.hosts.iter().enumerate().map(named).collect()
    }
}

/// Returns the topology name of shard host `i` of an in-process cluster.
pub fn host_name(i: usize) -> String {
    format!("h{i}")
}

/// A running cluster; dropping it stops the proxy and every server.
pub struct KvCluster {
    pub nameserver: MariaDb,
    pub hosts: Vec<MariaDb>,
    pub proxy: Proxy<KvShard, KvWrite>,
    pub nameserver_url: String,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for KvCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCluster")
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

/// Returns proxy settings for tests: short deadlines, fast polling and job workers.
pub fn test_settings(nameserver_url: &str) -> ProxySettings {
    ProxySettings {
        db_timeout: Duration::from_secs(2),
        leaf_timeout: Duration::from_millis(700),
        poll_interval: Duration::from_millis(200),
        routing_lease: Duration::from_millis(1_500),
        workers: WorkerSettings {
            count: 2,
            lease: Duration::from_secs(5),
            poll_interval: Duration::from_millis(50),
            error_pause: Duration::from_millis(200),
            name: "it".into(),
            ..WorkerSettings::default()
        },
        ..ProxySettings::new(nameserver_url)
    }
}

impl KvCluster {
    /// Starts a nameserver server and `hosts` shard servers (named `h0`, `h1`, ...) and a proxy.
    pub async fn start(hosts: usize) -> Self {
        let Databases {
            nameserver,
            nameserver_url,
            hosts,
        } = Databases::start(hosts, "shards", &[]).await;
        let shutdown = CancellationToken::new();
        let proxy = Proxy::start(
            test_settings(&nameserver_url),
            kv::registry(),
            HashMap::new(),
            shutdown.clone(),
        )
        .await
        .expect("start proxy");
        Self {
            nameserver,
            hosts,
            proxy,
            nameserver_url,
            shutdown,
        }
    }

    /// Returns the changes that create table `table_id` with `shards` forwardings, each a
    /// Replicating node over one KV leaf on every host.
    pub fn table_changes(&self, table_id: i32, shards: usize) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, server)| {
                Change::SetHost(Host {
                    name: host_name(i),
                    url: server.url("shards"),
                    read_weight: 1,
                    write_weight: 1,
                })
            })
            .collect();
        let hosts: Vec<String> = (0..self.hosts.len()).map(host_name).collect();
        let table = replicated_table(
            table_id,
            KV_SHARD,
            &format!("t{table_id}"),
            &hosts,
            shards as u32,
        );
        changes.extend(table.expect("valid shard names"));
        changes
    }

    /// Creates table `table_id` through the proxy's admin service (which creates the tables on
    /// the hosts) and waits until the proxy routes with it.
    pub async fn create_table(&self, table_id: i32, shards: usize) {
        let changes = self.table_changes(table_id, shards);
        self.apply(&changes).await;
    }

    /// Applies changes through the admin service, as gizzmo would.
    pub async fn apply(&self, changes: &[Change]) -> u64 {
        use proto::gizzard::v1::shard_manager_server::ShardManager;
        let request = proto::gizzard::v1::ApplyRequest {
            changes: changes
                .iter()
                .map(gizzard::manager::convert::change_to_pb)
                .collect(),
        };
        let manager = self.proxy.manager();
        manager
            .apply(tonic::Request::new(request))
            .await
            .expect("apply changes")
            .into_inner()
            .version
    }

    /// Writes `value` (or a delete) for `key` at `version` to table 1.
    pub async fn put(
        &self,
        key: u64,
        version: u64,
        value: Option<&str>,
    ) -> Result<gizzard::shards::WriteOutcome, gizzard::shards::WriteError> {
        let op = KvWrite {
            key,
            version,
            value: value.map(str::to_owned),
        };
        self.proxy.writer.write(1, key, &op).await
    }

    /// Reads `key` of table 1 through its tree (with failover).
    pub async fn get(&self, key: u64) -> Result<Option<KvRow>, ShardError> {
        let tree = self
            .proxy
            .router
            .tree(1, key)
            .await
            .map_err(|e| ShardError::NotReadable {
                shard: e.to_string(),
            })?;
        tree.read(|leaf| leaf.shard.get(key)).await
    }

    /// Returns every row of every leaf on host `i`, by leaf.
    pub async fn rows_on_host(&self, i: usize) -> Vec<(ShardId, Vec<KvRow>)> {
        let topology = self.proxy.nameserver.load().await.expect("load topology");
        let mut out = Vec::new();
        for id in topology
            .shards
            .keys()
            .filter(|id| id.hostname == host_name(i))
        {
            let leaf = self.proxy.router.leaf(id).await.expect("leaf");
            out.push((id.clone(), leaf.shard.rows().await.expect("read rows")));
        }
        out
    }

    /// Waits until the job queue holds no job, or panics after `limit`.
    pub async fn drain(&self, limit: Duration) {
        drain(&self.proxy.queue, limit).await;
    }
}

impl Drop for KvCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until `queue` holds no job at all; panics after `limit`, or at once when a job was
/// parked as bad (nothing would ever run it).
pub async fn drain(queue: &JobQueue, limit: Duration) {
    let started = std::time::Instant::now();
    loop {
        let depth = queue.depth().await.expect("queue depth");
        let bad: Vec<_> = depth
            .iter()
            .filter(|&((_, state), &n)| *state == JobState::Bad && n > 0)
            .collect();
        assert!(bad.is_empty(), "jobs parked as bad: {bad:?}");
        if depth.values().all(|&n| n == 0) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "queue did not drain within {limit:?}: {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
