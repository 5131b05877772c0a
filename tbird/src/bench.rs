//! The load generator behind `tbird bench`: callers in parallel for a fixed time, each picking
//! an operation from a weighted mix (post, get, multi-get, timeline), and a report of ops/s and
//! latency percentiles per operation.
//!
//! With a direct baseline, the same workload also runs with the same SQL sent straight to the
//! shards: routes come from the nameserver's topology and keys hash as the proxy hashes them;
//! writes go to every replica in parallel and reads to one, as the proxy does. The ratio of the
//! two is what the proxy costs (or, for coalesced writes, saves). Runs alternate between the
//! proxy and the baseline, so load from elsewhere on the machine hits both alike.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use comfy_table::{CellAlignment, Table, presets};
use db::Database;
use futures::future::try_join_all;
use gizzard::{
    nameserver::{NameServer, NodeKind, NodeSpec, RoutingSnapshot, ShardId, hash},
    shards::WriteOp,
};
use hdrhistogram::Histogram;
use proto::tbird::v1::{
    GetTweetRequest, GetTweetsRequest, PostTweetRequest, UserTweetsRequest,
    tweets_client::TweetsClient,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::json;
use snowflake::{clock::SystemClock, worker::IdWorker};
use tonic::transport::Channel;

use crate::{
    store::{self, TIMELINES_TABLE, TWEETS_TABLE, TbirdShard, TbirdWrite},
    tweet::Tweet,
};

/// One kind of call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Post,
    Get,
    MultiGet,
    Timeline,
}

impl Op {
    const ALL: [Op; 4] = [Op::Post, Op::Get, Op::MultiGet, Op::Timeline];

    /// Returns the operation's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Post => "post",
            Op::Get => "get",
            Op::MultiGet => "multi-get",
            Op::Timeline => "timeline",
        }
    }
}

impl FromStr for Op {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Op::ALL
            .into_iter()
            .find(|op| op.name() == s)
            .ok_or_else(|| {
                format!("unknown operation {s:?}: expected post, get, multi-get or timeline")
            })
    }
}

/// Operations with their weights, as in `post=20,get=60,multi-get=10,timeline=10`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix(pub Vec<(Op, u32)>);

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut mix = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (op, weight) = part.split_once('=').unwrap_or((part, "1"));
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("weight of {op} is not a number: {weight:?}"))?;
            if weight > 0 {
                mix.push((op.parse()?, weight));
            }
        }
        if mix.is_empty() {
            return Err("the mix has no operation with a weight above 0".into());
        }
        Ok(Mix(mix))
    }
}

impl Mix {
    fn pick(&self, rng: &mut impl Rng) -> Op {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let mut at = rng.random_range(0..total);
        for &(op, weight) in &self.0 {
            if at < weight {
                return op;
            }
            at -= weight;
        }
        self.0[0].0
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(op, w)| format!("{}={w}", op.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchSettings {
    /// The tbird server, HOST:PORT.
    pub addr: String,
    pub concurrency: usize,
    /// Measured time per target and round.
    pub duration: Duration,
    /// Unmeasured time before each measured run (pools fill, caches warm).
    pub warmup: Duration,
    /// Measured runs per target, alternating between the proxy and the baseline.
    pub rounds: usize,
    pub mix: Mix,
    /// Authors of posted tweets are users 1 to `users`.
    pub users: u64,
    /// Tweets posted before measuring, for reads to find.
    pub preload: usize,
    /// Ids per multi-get.
    pub multi_get: usize,
    /// Tweets per timeline page.
    pub page: u32,
    /// HTTP/2 connections the callers share.
    pub connections: usize,
    /// Also run the workload straight on the shards of this nameserver.
    pub direct_nameserver_url: Option<String>,
    /// The server's /metrics address, HOST:PORT, to read its CPU seconds from.
    pub server_metrics: Option<String>,
    /// TLS files, by the rule of `edge::client`.
    pub tls: edge::client::ClientTls,
}

/// Latency and counts of one operation on one target.
#[derive(Debug)]
pub struct OpStats {
    pub calls: u64,
    pub errors: u64,
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
    /// The first error seen, to tell what went wrong.
    pub first_error: Option<String>,
}

impl OpStats {
    fn new() -> Self {
        Self {
            calls: 0,
            errors: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds"),
            first_error: None,
        }
    }

    fn merge(&mut self, other: &OpStats) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.latency_us
            .add(&other.latency_us)
            .expect("same histogram bounds");
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// What one target measured.
#[derive(Debug)]
pub struct TargetReport {
    pub name: &'static str,
    pub elapsed: Duration,
    pub ops: HashMap<Op, OpStats>,
    /// CPU seconds this load generator spent in the measured runs.
    pub bench_cpu_seconds: f64,
    /// CPU seconds the server spent in the measured runs, when its /metrics was read.
    pub server_cpu_seconds: Option<f64>,
}

impl TargetReport {
    fn calls(&self) -> u64 {
        self.ops.values().map(|stats| stats.calls).sum()
    }

    /// Returns CPU microseconds per call, over every operation of the mix.
    fn cpu_us_per_call(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.calls().max(1) as f64
    }

    fn ops_per_sec(&self, op: Op) -> f64 {
        self.ops
            .get(&op)
            .map_or(0.0, |s| s.calls as f64 / self.elapsed.as_secs_f64())
    }
}

/// What a run measured: the proxy, and the baseline when asked for.
#[derive(Debug)]
pub struct BenchReport {
    pub settings: BenchSettings,
    pub proxy: TargetReport,
    pub direct: Option<TargetReport>,
    /// Why the server's CPU was not measured, when it was asked for and could not be.
    pub server_cpu_error: Option<String>,
}

/// Where calls go.
enum Target {
    Proxy(Vec<TweetsClient<Channel>>),
    Direct(Direct),
}

/// The shards of the topology, reached without the proxy.
struct Direct {
    snapshot: RoutingSnapshot,
    /// The leaves under each forwarding's root.
    leaves: HashMap<ShardId, Vec<Arc<TbirdShard>>>,
    ids: IdWorker,
}

/// The ids reads pick from.
struct Corpus {
    ids: Vec<u64>,
}

/// Runs the benchmark.
pub async fn run(settings: BenchSettings) -> anyhow::Result<BenchReport> {
    if settings.concurrency == 0 || settings.rounds == 0 || settings.users == 0 {
        bail!("concurrency, rounds and users must be at least 1");
    }
    let proxy = Arc::new(Target::Proxy(connect(&settings).await?));
    let direct = match &settings.direct_nameserver_url {
        Some(url) => Some(Arc::new(Target::Direct(Direct::open(url).await?))),
        None => None,
    };
    let corpus = Arc::new(preload(&proxy, &settings).await?);
    let settings = Arc::new(settings);
    let mut proxy_report = empty_report("proxy");
    let mut direct_report = direct.as_ref().map(|_| empty_report("direct"));
    let mut server_cpu_error = None;
    for round in 0..settings.rounds {
        // Alternate which goes first, so a slow spell on the machine hits both alike.
        let mut targets = vec![(&proxy, &mut proxy_report)];
        if let (Some(target), Some(report)) = (&direct, direct_report.as_mut()) {
            targets.push((target, report));
        }
        if round % 2 == 1 {
            targets.reverse();
        }
        for (target, report) in targets {
            measure(target, &settings, &corpus, settings.warmup).await?;
            let server = match (&**target, &settings.server_metrics) {
                (Target::Proxy(_), Some(addr)) if server_cpu_error.is_none() => Some(addr),
                _ => None,
            };
            let cpu_before = cpu_now(server).await;
            let (elapsed, ops) = measure(target, &settings, &corpus, settings.duration).await?;
            let cpu_after = cpu_now(server).await;
            report.bench_cpu_seconds += cpu_after.bench - cpu_before.bench;
            match (cpu_before.server, cpu_after.server) {
                (Ok(Some(before)), Ok(Some(after))) => {
                    *report.server_cpu_seconds.get_or_insert(0.0) += after - before;
                }
                (Err(err), _) | (_, Err(err)) => server_cpu_error = Some(err),
                _ => {}
            }
            report.elapsed += elapsed;
            for (op, stats) in ops {
                report
                    .ops
                    .entry(op)
                    .or_insert_with(OpStats::new)
                    .merge(&stats);
            }
        }
    }
    if server_cpu_error.is_some() {
        // A figure from some runs only would read as the whole.
        proxy_report.server_cpu_seconds = None;
    }
    Ok(BenchReport {
        settings: Arc::unwrap_or_clone(settings),
        proxy: proxy_report,
        direct: direct_report,
        server_cpu_error,
    })
}

fn empty_report(name: &'static str) -> TargetReport {
    TargetReport {
        name,
        elapsed: Duration::ZERO,
        ops: HashMap::new(),
        bench_cpu_seconds: 0.0,
        server_cpu_seconds: None,
    }
}

/// CPU seconds spent so far by this process and, when asked, by the server.
struct CpuReading {
    bench: f64,
    server: Result<Option<f64>, String>,
}

async fn cpu_now(server_metrics: Option<&String>) -> CpuReading {
    let server = match server_metrics {
        None => Ok(None),
        Some(addr) => daemon::metrics::scrape_text(addr)
            .await
            .map_err(|err| format!("read {addr}/metrics: {err}"))
            .and_then(|text| {
                daemon::metrics::value(&text, "process_cpu_seconds_total")
                    .map(Some)
                    .ok_or_else(|| format!("{addr}/metrics has no process_cpu_seconds_total"))
            }),
    };
    CpuReading {
        // Without /proc the figure is left at zero rather than failing the benchmark.
        bench: daemon::process::cpu_seconds().unwrap_or(0.0),
        server,
    }
}

async fn connect(settings: &BenchSettings) -> anyhow::Result<Vec<TweetsClient<Channel>>> {
    let endpoint = edge::client::endpoint(&settings.addr, &settings.tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let mut clients = Vec::new();
    for _ in 0..settings.connections.max(1) {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connect to {}", settings.addr))?;
        clients.push(TweetsClient::new(channel));
    }
    Ok(clients)
}

/// Posts `preload` tweets through the proxy, spread over the users round robin.
async fn preload(proxy: &Target, settings: &BenchSettings) -> anyhow::Result<Corpus> {
    let n = settings.preload.max(settings.multi_get).max(1);
    let callers = settings.concurrency.min(n);
    let posts = (0..callers).map(|caller| async move {
        let mut ids = Vec::new();
        for i in (caller..n).step_by(callers) {
            let user = 1 + i as u64 % settings.users;
            ids.push(
                proxy
                    .post(caller, user, i as u64)
                    .await
                    .context("preload")?,
            );
        }
        anyhow::Ok(ids)
    });
    let ids = try_join_all(posts).await?.concat();
    Ok(Corpus { ids })
}

/// Runs the mix on `target` for `duration`; returns the time it took and the stats per op.
async fn measure(
    target: &Arc<Target>,
    settings: &Arc<BenchSettings>,
    corpus: &Arc<Corpus>,
    duration: Duration,
) -> anyhow::Result<(Duration, HashMap<Op, OpStats>)> {
    let started = Instant::now();
    let until = started + duration;
    let callers: Vec<_> = (0..settings.concurrency)
        .map(|caller| {
            let (target, settings, corpus) = (target.clone(), settings.clone(), corpus.clone());
            let seed = caller as u64 ^ started.elapsed().as_nanos() as u64;
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut stats: HashMap<Op, OpStats> = HashMap::new();
                let mut n = 0u64;
                while Instant::now() < until {
                    let op = settings.mix.pick(&mut rng);
                    let began = Instant::now();
                    let result = target
                        .call(op, caller, n, &settings, &corpus, &mut rng)
                        .await;
                    let took = began.elapsed().as_micros() as u64;
                    let entry = stats.entry(op).or_insert_with(OpStats::new);
                    entry.calls += 1;
                    entry.latency_us.saturating_record(took);
                    if let Err(err) = result {
                        entry.errors += 1;
                        entry.first_error.get_or_insert_with(|| format!("{err:#}"));
                    }
                    n += 1;
                }
                stats
            })
        })
        .collect();
    let mut merged: HashMap<Op, OpStats> = HashMap::new();
    for caller in callers {
        for (op, s) in caller.await.context("bench caller")? {
            merged.entry(op).or_insert_with(OpStats::new).merge(&s);
        }
    }
    Ok((started.elapsed(), merged))
}

fn text(caller: usize, n: u64) -> String {
    format!("bench tweet {n} from caller {caller}: the quick brown fox jumps over the lazy dog")
}

impl Target {
    async fn call(
        &self,
        op: Op,
        caller: usize,
        n: u64,
        settings: &BenchSettings,
        corpus: &Corpus,
        rng: &mut StdRng,
    ) -> anyhow::Result<()> {
        let random_id = |rng: &mut StdRng| *corpus.ids.choose(rng).expect("preloaded");
        match op {
            Op::Post => {
                let user = rng.random_range(1..=settings.users);
                self.post(caller, user, n).await.map(drop)
            }
            Op::Get => self.get(random_id(rng)).await,
            Op::MultiGet => {
                let ids: Vec<u64> = (0..settings.multi_get).map(|_| random_id(rng)).collect();
                self.multi_get(&ids).await
            }
            Op::Timeline => {
                let user = rng.random_range(1..=settings.users);
                self.timeline(user, settings.page).await
            }
        }
    }

    async fn post(&self, caller: usize, user: u64, n: u64) -> anyhow::Result<u64> {
        match self {
            Target::Proxy(clients) => {
                let request = PostTweetRequest {
                    user_id: user,
                    text: text(caller, n),
                    in_reply_to: None,
                };
                let mut client = clients[caller % clients.len()].clone();
                Ok(client.post_tweet(request).await?.into_inner().id)
            }
            Target::Direct(direct) => {
                let tweet = Tweet {
                    id: direct.ids.next_id()?,
                    user_id: user,
                    text: text(caller, n),
                    in_reply_to: None,
                    deleted: false,
                };
                let id = tweet.id;
                let add = TbirdWrite::AddToTimeline {
                    user_id: user,
                    tweet_id: id,
                };
                let put = TbirdWrite::PutTweet(tweet);
                let tweets = direct.leaves(TWEETS_TABLE, id)?;
                let timelines = direct.leaves(TIMELINES_TABLE, user)?;
                let writes = tweets
                    .iter()
                    .map(|leaf| put.apply(leaf))
                    .chain(timelines.iter().map(|leaf| add.apply(leaf)));
                try_join_all(writes).await?;
                Ok(id)
            }
        }
    }

    async fn get(&self, id: u64) -> anyhow::Result<()> {
        match self {
            Target::Proxy(clients) => {
                let mut client = clients[id as usize % clients.len()].clone();
                client.get_tweet(GetTweetRequest { id }).await?;
            }
            Target::Direct(direct) => {
                let found = direct.fetch(&[id]).await?;
                if found.iter().all(|t| t.deleted) {
                    bail!("tweet {id} not found");
                }
            }
        }
        Ok(())
    }

    async fn multi_get(&self, ids: &[u64]) -> anyhow::Result<()> {
        match self {
            Target::Proxy(clients) => {
                let mut client = clients[ids[0] as usize % clients.len()].clone();
                let request = GetTweetsRequest { ids: ids.to_vec() };
                client.get_tweets(request).await?;
            }
            Target::Direct(direct) => {
                direct.fetch(ids).await?;
            }
        }
        Ok(())
    }

    async fn timeline(&self, user: u64, page: u32) -> anyhow::Result<()> {
        match self {
            Target::Proxy(clients) => {
                let mut client = clients[user as usize % clients.len()].clone();
                let request = UserTweetsRequest {
                    user_id: user,
                    max_id: None,
                    limit: page,
                };
                client.user_tweets(request).await?;
            }
            Target::Direct(direct) => {
                let leaf = direct.reader(TIMELINES_TABLE, user)?;
                let ids = leaf
                    .timeline(&store::Page::new(user, None, page as usize))
                    .await?;
                direct.fetch(&ids).await?;
            }
        }
        Ok(())
    }
}

impl Direct {
    /// Reads the topology and opens one pool per host, as the proxy does.
    async fn open(nameserver_url: &str) -> anyhow::Result<Self> {
        let timeout = db::DEFAULT_TIMEOUT;
        let nameserver = NameServer::open(
            Database::open(nameserver_url, timeout)
                .await
                .context("open the nameserver")?,
        )
        .await
        .context("open the nameserver")?;
        let topology = nameserver.load().await.context("load the topology")?;
        let mut pools: HashMap<String, Database> = HashMap::new();
        for (name, host) in &topology.hosts {
            let db = Database::open_lazy(&host.url, timeout)
                .await
                .with_context(|| format!("open host {name}"))?;
            pools.insert(name.clone(), db);
        }
        let snapshot = RoutingSnapshot::new(topology);
        let registry = store::plain_registry();
        let mut leaves = HashMap::new();
        for table_id in [TWEETS_TABLE, TIMELINES_TABLE] {
            for forwarding in snapshot.forwardings(table_id) {
                let tree = snapshot.tree(&forwarding.shard_id)?;
                let mut shards = Vec::new();
                for id in leaf_ids(&tree) {
                    let info = &snapshot.topology.shards[&id];
                    let db = pools
                        .get(&id.hostname)
                        .with_context(|| format!("shard {id} is on unknown host"))?;
                    shards.push(Arc::new(registry.build(info, db.clone())?));
                }
                leaves.insert(forwarding.shard_id, shards);
            }
        }
        let ids = IdWorker::fixed(Arc::new(SystemClock::default()), 5, 31, 31);
        Ok(Self {
            snapshot,
            leaves,
            ids,
        })
    }

    /// Returns every leaf of the tree holding `key`.
    fn leaves(&self, table_id: i32, key: u64) -> anyhow::Result<&[Arc<TbirdShard>]> {
        let root = self
            .snapshot
            .lookup(table_id, hash(key))
            .with_context(|| format!("no forwarding for key {key} of table {table_id}"))?;
        Ok(&self.leaves[root])
    }

    /// Returns one leaf, at random, of the tree holding `key`.
    fn reader(&self, table_id: i32, key: u64) -> anyhow::Result<&TbirdShard> {
        pick(self.leaves(table_id, key)?)
    }

    /// Reads tweets as the proxy does: one query per tree on one of its replicas, the trees in
    /// parallel.
    async fn fetch(&self, ids: &[u64]) -> anyhow::Result<Vec<Tweet>> {
        // Trees are told apart by where their leaves live in `self.leaves`.
        let mut groups: HashMap<usize, (&[Arc<TbirdShard>], Vec<u64>)> = HashMap::new();
        for &id in ids {
            let tree = self.leaves(TWEETS_TABLE, id)?;
            groups
                .entry(tree.as_ptr() as usize)
                .or_insert_with(|| (tree, Vec::new()))
                .1
                .push(id);
        }
        let reads = groups.values().map(|(tree, ids)| async move {
            Ok::<_, anyhow::Error>(pick(tree)?.get_tweets(ids).await?)
        });
        Ok(try_join_all(reads).await?.concat())
    }
}

fn pick(leaves: &[Arc<TbirdShard>]) -> anyhow::Result<&TbirdShard> {
    let leaf = leaves
        .choose(&mut rand::rng())
        .context("a tree without leaves")?;
    Ok(leaf)
}

/// Returns the leaves under a tree that writes reach (every leaf: the default topology has no
/// refusing nodes).
fn leaf_ids(tree: &NodeSpec) -> Vec<ShardId> {
    if let NodeKind::Leaf(_) = tree.kind {
        return vec![tree.id.clone()];
    }
    tree.children
        .iter()
        .flat_map(|(_, child)| leaf_ids(child))
        .collect()
}

impl BenchReport {
    /// Returns the report as an aligned table.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = format!(
            "tbird bench: mix {} concurrency {} connections {} duration {:.1}s x {} rounds\n",
            s.mix,
            s.concurrency,
            s.connections,
            s.duration.as_secs_f64(),
            s.rounds
        );
        let mut table = Table::new();
        table.load_style(presets::NOTHING).set_header(vec![
            "op", "target", "ops/s", "p50 ms", "p99 ms", "p999 ms", "errors", "x direct",
        ]);
        for (op, _) in &s.mix.0 {
            for target in std::iter::once(&self.proxy).chain(&self.direct) {
                let Some(stats) = target.ops.get(op) else {
                    continue;
                };
                let ratio = match (target.name, self.ratio(*op)) {
                    ("proxy", Some(r)) => format!("{r:.2}"),
                    _ => String::new(),
                };
                table.add_row(vec![
                    op.name().to_owned(),
                    target.name.to_owned(),
                    format!("{:.0}", target.ops_per_sec(*op)),
                    format!("{:.2}", stats.ms(0.5)),
                    format!("{:.2}", stats.ms(0.99)),
                    format!("{:.2}", stats.ms(0.999)),
                    stats.errors.to_string(),
                    ratio,
                ]);
            }
        }
        for column in 2..8 {
            if let Some(column) = table.column_mut(column) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        // The preset pads every cell by one space: drop the margin and the trailing blanks.
        for line in table.lines() {
            out.push_str(line.strip_prefix(' ').unwrap_or(&line).trim_end());
            out.push('\n');
        }
        out.push_str(&self.cpu_lines());
        for target in std::iter::once(&self.proxy).chain(&self.direct) {
            for (op, stats) in &target.ops {
                if let Some(err) = &stats.first_error {
                    out.push_str(&format!(
                        "first {} error on {}: {err}\n",
                        op.name(),
                        target.name
                    ));
                }
            }
        }
        out
    }

    /// Returns where the CPU went, per call of the whole mix: in the server and in this load
    /// generator, for each target.
    fn cpu_lines(&self) -> String {
        let mut out = String::from("cpu per call:");
        for target in std::iter::once(&self.proxy).chain(&self.direct) {
            out.push_str(&format!(" {}:", target.name));
            if let Some(server) = target.server_cpu_seconds {
                out.push_str(&format!(
                    " server {:.1} µs,",
                    target.cpu_us_per_call(server)
                ));
            }
            out.push_str(&format!(
                " tbird bench {:.1} µs;",
                target.cpu_us_per_call(target.bench_cpu_seconds)
            ));
        }
        out.pop();
        out.push('\n');
        if let Some(err) = &self.server_cpu_error {
            out.push_str(&format!("server cpu not measured: {err}\n"));
        }
        out
    }

    /// Returns proxy ops/s over direct ops/s for `op`.
    pub fn ratio(&self, op: Op) -> Option<f64> {
        let direct = self.direct.as_ref()?.ops_per_sec(op);
        (direct > 0.0).then(|| self.proxy.ops_per_sec(op) / direct)
    }

    /// Returns the report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let s = &self.settings;
        let target = |t: &TargetReport| {
            let ops: serde_json::Map<String, serde_json::Value> = t
                .ops
                .iter()
                .map(|(op, stats)| {
                    let value = json!({
                        "calls": stats.calls,
                        "errors": stats.errors,
                        "ops_per_sec": t.ops_per_sec(*op),
                        "p50_ms": stats.ms(0.5),
                        "p99_ms": stats.ms(0.99),
                        "p999_ms": stats.ms(0.999),
                        "max_ms": stats.latency_us.max() as f64 / 1000.0,
                    });
                    (op.name().to_owned(), value)
                })
                .collect();
            json!({
                "elapsed_s": t.elapsed.as_secs_f64(),
                "ops": ops,
                "bench_cpu_us_per_call": t.cpu_us_per_call(t.bench_cpu_seconds),
                "server_cpu_us_per_call": t.server_cpu_seconds.map(|s| t.cpu_us_per_call(s)),
            })
        };
        let ratios: serde_json::Map<String, serde_json::Value> = s
            .mix
            .0
            .iter()
            .filter_map(|(op, _)| Some((op.name().to_owned(), json!(self.ratio(*op)?))))
            .collect();
        json!({
            "settings": {
                "mix": s.mix.to_string(),
                "concurrency": s.concurrency,
                "connections": s.connections,
                "duration_s": s.duration.as_secs_f64(),
                "rounds": s.rounds,
                "users": s.users,
                "preload": s.preload,
            },
            "proxy": target(&self.proxy),
            "direct": self.direct.as_ref().map(target),
            "proxy_over_direct": ratios,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_with_weights_and_name_bad_parts() {
        let mix: Mix = "post=20,get=60,multi-get=10,timeline=10"
            .parse()
            .expect("mix");
        assert_eq!(
            mix.0,
            [
                (Op::Post, 20),
                (Op::Get, 60),
                (Op::MultiGet, 10),
                (Op::Timeline, 10)
            ]
        );
        assert_eq!(mix.to_string(), "post=20,get=60,multi-get=10,timeline=10");
        assert_eq!("get".parse::<Mix>().expect("one op").0, [(Op::Get, 1)]);
        let err = "get=x".parse::<Mix>().expect_err("bad weight");
        assert!(err.contains("weight of get"), "{err}");
        let err = "put=1".parse::<Mix>().expect_err("bad op");
        assert!(err.contains("unknown operation \"put\""), "{err}");
        assert!("get=0".parse::<Mix>().is_err());
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: Mix = "post=1,get=3".parse().expect("mix");
        let mut rng = StdRng::seed_from_u64(1);
        let gets = (0..4000).filter(|_| mix.pick(&mut rng) == Op::Get).count();
        assert!((2800..3200).contains(&gets), "{gets} gets of 4000");
    }
}
