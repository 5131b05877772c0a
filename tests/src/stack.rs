//! A T-Bird stack in production shape, as real processes a test can kill: a nameserver on its
//! own MariaDB server (so a dead shard host never takes the job queue with it), shard hosts on
//! others, a Snowflake daemon and a `tbird serve`, with both tables created by `gizzmo` and
//! replicated on every host. Also the helpers tests use to look at it from outside: the job
//! queue's depth, every row of a host, and a `/metrics` scrape.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use mysql_async::prelude::Queryable;

use crate::{MariaDb, binary, cluster::Databases, wait_until};

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// Runs a workspace binary to completion.
pub fn run(package: &str, name: &str, args: &[&str]) -> Output {
    Command::new(binary::path(package, name))
        .args(args)
        .output()
        .expect("run binary")
}

/// Returns the standard output of a run that must succeed.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// A daemon process of the workspace, killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    package: String,
    name: String,
    args: Vec<String>,
    rust_log: String,
    /// Where stderr goes (appended to); inherited when `None`.
    log: Option<PathBuf>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts binary `name` of `package` with `args` (logging warnings only).
    pub fn spawn(package: &str, name: &str, args: &[impl AsRef<str>]) -> Self {
        Self::spawn_logged(package, name, args, "warn", None)
    }

    /// Starts binary `name` of `package` with `args`, `RUST_LOG` set to `rust_log` and stderr
    /// written to `log` when given.
    pub fn spawn_logged(
        package: &str,
        name: &str,
        args: &[impl AsRef<str>],
        rust_log: &str,
        log: Option<&Path>,
    ) -> Self {
        let mut daemon = Self {
            package: package.to_owned(),
            name: name.to_owned(),
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
            rust_log: rust_log.to_owned(),
            log: log.map(Path::to_path_buf),
            child: None,
        };
        daemon.start();
        daemon
    }

    fn start(&mut self) {
        let mut command = Command::new(binary::path(&self.package, &self.name));
        command
            .args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .stdout(Stdio::null());
        if let Some(log) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("open the daemon's log file");
            command.stderr(file);
        }
        self.child = Some(command.spawn().expect("spawn daemon"));
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Returns the process id while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process again with the same arguments (after [`Daemon::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running stack; dropping it kills every process.
#[derive(Debug)]
pub struct TbirdStack {
    pub nameserver: MariaDb,
    /// The shard hosts, named `a`, `b`, ... in the topology.
    pub hosts: Vec<MariaDb>,
    pub snowflake: Daemon,
    pub tbird: Daemon,
    pub nameserver_url: String,
    /// The tweet service, HOST:PORT.
    pub tweets_addr: String,
    /// The ShardManager, HOST:PORT.
    pub admin_addr: String,
    /// The metrics endpoint, HOST:PORT, when the server serves one.
    pub metrics_addr: Option<String>,
}

/// The database every shard host keeps its tables in.
pub const SHARD_DB: &str = "tbird";

/// The bearer token the stack's admin calls carry, as in production.
pub const ADMIN_TOKEN: &str = "stack-secret";

impl TbirdStack {
    /// Returns the topology name of host `i`.
    pub fn host_name(i: usize) -> String {
        char::from(b'a' + i as u8).to_string()
    }

    /// Starts `hosts` shard servers and a nameserver server, Snowflake and `tbird serve`
    /// (serving metrics when `metrics` is set), and creates both tables with `shards` ranges
    /// replicated on every host.
    pub async fn start(hosts: usize, shards: u32, metrics: bool) -> Self {
        Self::start_with(hosts, shards, metrics, &[]).await
    }

    /// Starts the stack as [`TbirdStack::start`] does, every MariaDB server with
    /// `extra_flags` (such as [`crate::mariadb::BENCH_FLAGS`]).
    pub async fn start_with(
        hosts: usize,
        shards: u32,
        metrics: bool,
        extra_flags: &'static [&'static str],
    ) -> Self {
        Self::start_serving(hosts, shards, metrics, extra_flags, &[]).await
    }

    /// Starts the stack as [`TbirdStack::start_with`] does, passing `serve_args` (such as
    /// `--anti-entropy-interval 2s`) to `tbird serve`.
    pub async fn start_serving(
        hosts: usize,
        shards: u32,
        metrics: bool,
        extra_flags: &'static [&'static str],
        serve_args: &[&str],
    ) -> Self {
        let Databases {
            nameserver,
            nameserver_url,
            hosts: servers,
        } = Databases::start(hosts, SHARD_DB, extra_flags).await;

        let snowflake_addr = format!("127.0.0.1:{}", free_port());
        let snowflake = Daemon::spawn(
            "snowflake",
            "snowflake",
            &[
                "serve",
                "--worker-id",
                "3",
                "--no-metrics",
                "--listen",
                &snowflake_addr,
            ],
        );
        wait_until("snowflake answers", Duration::from_secs(30), || async {
            run(
                "snowflake",
                "snowflake",
                &["get", "--addr", &snowflake_addr],
            )
            .status
            .success()
        })
        .await;

        let tweets_addr = format!("127.0.0.1:{}", free_port());
        let admin_addr = format!("127.0.0.1:{}", free_port());
        let metrics_addr = metrics.then(|| format!("127.0.0.1:{}", free_port()));
        let tbird = Daemon::spawn(
            "tbird",
            "tbird",
            &[
                &[
                    "serve",
                    "--nameserver-url",
                    &nameserver_url,
                    "--snowflake-addr",
                    &snowflake_addr,
                    "--listen",
                    &tweets_addr,
                    "--admin-listen",
                    &admin_addr,
                    "--admin-token",
                    ADMIN_TOKEN,
                    "--metrics-listen",
                    metrics_addr.as_deref().unwrap_or("off"),
                ],
                serve_args,
            ]
            .concat(),
        );
        let stack = Self {
            nameserver,
            hosts: servers,
            snowflake,
            tbird,
            nameserver_url,
            tweets_addr,
            admin_addr,
            metrics_addr,
        };
        stack.wait_serving().await;
        for (i, host) in stack.hosts.iter().enumerate() {
            ok(stack.gizzmo(&["add-host", &Self::host_name(i), &host.url(SHARD_DB)]));
        }
        let replicas: Vec<String> = (0..hosts).map(Self::host_name).collect();
        let replicas = replicas.join(",");
        let shards = shards.to_string();
        for (table, class) in [("1", "TweetShard"), ("2", "TimelineShard")] {
            ok(stack.gizzmo(&[
                "create-table",
                table,
                "--shards",
                &shards,
                "--replicas",
                &replicas,
                "--class",
                class,
            ]));
        }
        stack
    }

    /// Runs gizzmo against the server's ShardManager, with the admin token.
    pub fn gizzmo(&self, args: &[&str]) -> Output {
        let mut all = vec!["--addr", self.admin_addr.as_str(), "--token", ADMIN_TOKEN];
        all.extend_from_slice(args);
        run("gizzmo", "gizzmo", &all)
    }

    /// Waits until the tbird server answers admin calls (after a start or a restart).
    pub async fn wait_serving(&self) {
        wait_until("tbird serve answers", Duration::from_secs(30), || async {
            self.gizzmo(&["hosts"]).status.success()
        })
        .await;
    }

    /// Opens the job queue in the nameserver's database, as the server does.
    pub async fn queue(&self) -> gizzard::scheduler::JobQueue {
        let db = gizzard::db::Database::open(&self.nameserver_url, Duration::from_secs(10))
            .await
            .expect("open nameserver db");
        gizzard::scheduler::JobQueue::open(db)
            .await
            .expect("open job queue")
    }

    /// Waits until the job queue holds no job at all, as [`crate::cluster::drain`] does.
    pub async fn drain(&self, limit: Duration) {
        crate::cluster::drain(&self.queue().await, limit).await;
    }

    /// Returns the metrics the server serves now.
    pub async fn scrape(&self) -> Metrics {
        let addr = self.metrics_addr.as_deref().expect("metrics are served");
        scrape(addr).await.expect("scrape /metrics")
    }
}

impl Drop for TbirdStack {
    fn drop(&mut self) {
        // The server first, so it does not log the databases going away.
        self.tbird.kill();
        self.snowflake.kill();
    }
}

/// Every row of every table in database `db` of `server`, by table, each row as SQL literals
/// in a sorted set.
pub async fn all_rows(server: &MariaDb, db: &str) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let mut conn = server.connect(db).await.expect("connect to shard host");
    let tables: Vec<String> = conn.query("SHOW TABLES").await.expect("list tables");
    let mut out = BTreeMap::new();
    for table in tables {
        let rows: Vec<mysql_async::Row> = conn
            .query(format!("SELECT * FROM `{table}`"))
            .await
            .expect("read table");
        let rows = rows
            .into_iter()
            .map(|row| row.unwrap().iter().map(|v| v.as_sql(false)).collect())
            .collect();
        out.insert(table, rows);
    }
    conn.disconnect().await.expect("disconnect");
    out
}

/// Series of a Prometheus text scrape: `name{label="value",...}` with labels sorted by name,
/// to its value.
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// Parses Prometheus text format, skipping comments.
    pub fn parse(text: &str) -> Self {
        let mut series = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            series.insert(normalize(key), value);
        }
        Self(series)
    }

    /// Returns the value of series `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(&series_key(name, labels)).copied()
    }

    /// Returns the sum of every series `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// Returns the series `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a String, f64)> + 'a {
        self.0.iter().filter_map(move |(key, value)| {
            let (series_name, rest) = key.split_once('{').unwrap_or((key.as_str(), ""));
            let wanted = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (series_name == name && wanted).then_some((key, *value))
        })
    }
}

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// Sorts the labels of `name{...}` so keys compare whatever order the exporter used. Label
/// values here never hold commas or braces.
fn normalize(key: &str) -> String {
    let Some((name, rest)) = key.split_once('{') else {
        return key.to_owned();
    };
    let mut labels: Vec<&str> = rest
        .trim_end_matches('}')
        .split(',')
        .filter(|l| !l.is_empty())
        .collect();
    labels.sort_unstable();
    format!("{name}{{{}}}", labels.join(","))
}

/// Fetches `http://addr/metrics` with a plain HTTP/1.1 request and parses the body.
pub async fn scrape(addr: &str) -> io::Result<Metrics> {
    Ok(Metrics::parse(&scrape_text(addr).await?))
}

/// Returns the text of `/metrics` at `addr`, failing unless it answers 200.
pub use daemon::metrics::scrape_text;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_parse_whatever_the_label_order() {
        let text = "# TYPE x counter\nx{b=\"2\",a=\"1\"} 3\ny 4.5\nz_bucket{le=\"+Inf\"} 1\n";
        let m = Metrics::parse(text);
        assert_eq!(m.get("x", &[("a", "1"), ("b", "2")]), Some(3.0));
        assert_eq!(m.get("y", &[]), Some(4.5));
        assert_eq!(m.sum("x", &[("a", "1")]), 3.0);
        assert_eq!(m.get("z_bucket", &[("le", "+Inf")]), Some(1.0));
    }
}
