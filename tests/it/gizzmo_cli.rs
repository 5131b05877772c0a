//! `gizzmo` run as a real process against real proxies: each test starts proxies of the KV
//! application in-process on a SQLite nameserver, serves their admin service on loopback, and
//! checks what the CLI prints and how it exits.

use std::{collections::HashMap, process::Output, time::Duration};

use gizzard::server::{Proxy, ProxySettings};
use tempfile::TempDir;
use tests::kv::{KvShard, KvWrite, registry};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cret-admin-token";
const READ_TOKEN: &str = "s3cret-read-only-token";

/// A proxy serving its admin service on a loopback port.
struct Server {
    addr: String,
    _proxy: Proxy<KvShard, KvWrite>,
}

/// Proxies sharing one SQLite nameserver in a temporary directory; stopped on drop.
struct Cluster {
    dir: TempDir,
    shutdown: CancellationToken,
    servers: Vec<Server>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            dir,
            shutdown: CancellationToken::new(),
            servers: Vec::new(),
        };
        cluster
            .add_server("proxy-a", Duration::from_millis(200))
            .await;
        cluster
    }

    /// Starts one more proxy on the same nameserver, polling it every `poll_interval`.
    async fn add_server(&mut self, name: &str, poll_interval: Duration) -> String {
        let nameserver = format!("sqlite://{}", self.dir.path().join("ns.db").display());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let settings = ProxySettings {
            admin_token: Some(TOKEN.into()),
            read_only_token: Some(READ_TOKEN.into()),
            server_name: name.into(),
            advertise_addr: addr.clone(),
            poll_interval,
            // A proxy that polls rarely keeps its lease between polls.
            routing_lease: (poll_interval * 3).max(Duration::from_secs(5)),
            ..ProxySettings::new(nameserver)
        };
        let proxy = Proxy::<KvShard, KvWrite>::start(
            settings,
            registry(),
            HashMap::new(),
            self.shutdown.clone(),
        )
        .await
        .expect("start proxy");
        let service = proxy.manager().into_server();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            edge::Port::new(proto::FILE_DESCRIPTOR_SET)
                .add_service(service, 64 << 20)
                .serve(
                    listener,
                    &edge::Settings::default(),
                    edge::ConnectionLimit::new(1_000),
                    shutdown.cancelled(),
                )
                .await
                .expect("serve the admin service");
        });
        self.servers.push(Server {
            addr: addr.clone(),
            _proxy: proxy,
        });
        addr
    }

    fn addr(&self) -> &str {
        &self.servers[0].addr
    }

    fn host_url(&self, name: &str) -> String {
        format!(
            "sqlite://{}",
            self.dir.path().join(format!("host{name}.db")).display()
        )
    }

    /// Runs gizzmo against the first server with the admin token.
    async fn gizzmo(&self, args: &[&str]) -> Output {
        let addr = self.addr().to_owned();
        gizzmo(&[&["--addr", &addr, "--token", TOKEN], args].concat()).await
    }

    /// Runs gizzmo and returns its standard output, failing the test when it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.gizzmo(args).await;
        assert!(
            output.status.success(),
            "gizzmo {args:?} failed:\n{}",
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    /// Runs gizzmo, expects it to fail with status 1, and returns its standard error.
    async fn fails(&self, args: &[&str]) -> String {
        failure(args, self.gizzmo(args).await)
    }
}

async fn gizzmo(args: &[&str]) -> Output {
    let mut command = std::process::Command::new(tests::binary::path("gizzmo", "gizzmo"));
    command
        .args(args)
        .env_remove("GIZZMO_ADDR")
        .env_remove("GIZZMO_TOKEN");
    tokio::process::Command::from(command)
        .output()
        .await
        .expect("run gizzmo")
}

fn failure(args: &[&str], output: Output) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "gizzmo {args:?} should fail: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Returns the values of `"key": ...` in pretty-printed JSON, in order, without quotes.
fn json_values(json: &str, key: &str) -> Vec<String> {
    let pattern = format!("\"{key}\": ");
    json.lines()
        .filter_map(|line| line.trim().strip_prefix(&pattern))
        .map(|value| value.trim_end_matches(',').trim_matches('"').to_owned())
        .collect()
}

async fn add_hosts(cluster: &Cluster) {
    for name in ["a", "b"] {
        let out = cluster
            .ok(&["add-host", name, &cluster.host_url(name)])
            .await;
        assert!(
            out.starts_with(&format!("added host {name}: version ")),
            "{out}"
        );
    }
    let hosts = cluster.ok(&["hosts"]).await;
    assert!(
        hosts.contains("NAME") && hosts.contains(&cluster.host_url("b")),
        "{hosts}"
    );
}

async fn create_table(cluster: &Cluster) {
    let out = cluster
        .ok(&[
            "create-table",
            "1",
            "--shards",
            "4",
            "--replicas",
            "a,b",
            "--class",
            "KvShard",
        ])
        .await;
    assert!(
        out.starts_with("created table 1 with 4 forwarding(s)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gizzmo_creates_a_table_and_draws_its_trees() {
    let cluster = Cluster::start().await;
    add_hosts(&cluster).await;
    create_table(&cluster).await;

    let json = cluster.ok(&["--json", "forwardings"]).await;
    let bases = json_values(&json, "base_id");
    let quarter = 1i64 << 58;
    let want: Vec<String> = (0..4).map(|i| (i * quarter).to_string()).collect();
    assert_eq!(bases, want, "{json}");
    assert_eq!(json_values(&json, "table_id"), vec!["1"; 4], "{json}");
    assert_eq!(
        json_values(&json, "shard_id")[0],
        "localhost/t1_0000",
        "{json}"
    );
    let tables = cluster.ok(&["tables"]).await;
    let row: Vec<&str> = tables
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row, vec!["1", "4"], "{tables}");

    let tree = cluster.ok(&["tree", "1"]).await;
    for i in 0..4 {
        let expected = format!(
            "ReplicatingShard localhost/t1_{i:04}\n\
             ├── KvShard a/t1_{i:04} (weight 1)\n\
             └── KvShard b/t1_{i:04} (weight 1)\n"
        );
        assert!(tree.contains(&expected), "range {i} in:\n{tree}");
    }
    assert_eq!(tree.matches("ReplicatingShard").count(), 4, "{tree}");
    // Every leaf's table was created on its host.
    for host in ["a", "b"] {
        assert!(cluster.dir.path().join(format!("host{host}.db")).exists());
    }

    let lookup = cluster.ok(&["lookup", "1", "42"]).await;
    let hash = gizzard::nameserver::hash(42);
    let range = hash >> 58;
    assert!(lookup.contains(&format!("hash {hash} ")), "{lookup}");
    assert!(
        lookup.contains(&format!("base id {} ", range << 58)),
        "{lookup}"
    );
    assert!(
        lookup.contains(&format!("-> localhost/t1_{range:04}")),
        "{lookup}"
    );
    assert!(
        lookup.contains(&format!("└── KvShard b/t1_{range:04} (weight 1)")),
        "{lookup}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gizzmo_wraps_and_unwraps_atomically() {
    let cluster = Cluster::start().await;
    add_hosts(&cluster).await;
    create_table(&cluster).await;
    let before = cluster.ok(&["tree", "1"]).await;

    // A leaf: the wrapper takes its place under the replicating node.
    let out = cluster.ok(&["wrap", "write-only", "b/t1_0002"]).await;
    assert!(out.starts_with("wrapped b/t1_0002 in WriteOnlyShard localhost/t1_0002_write_only"));
    let wrapped = cluster.ok(&["tree", "--shard", "localhost/t1_0002"]).await;
    assert_eq!(
        wrapped,
        "ReplicatingShard localhost/t1_0002\n\
         ├── KvShard a/t1_0002 (weight 1)\n\
         └── WriteOnlyShard localhost/t1_0002_write_only (weight 1)\n    \
         └── KvShard b/t1_0002 (weight 1)\n"
    );
    // A root: the wrapper takes over the forwarding.
    cluster
        .ok(&["wrap", "ReadOnlyShard", "localhost/t1_0003"])
        .await;
    let json = cluster.ok(&["--json", "forwardings", "--table", "1"]).await;
    assert_eq!(
        json_values(&json, "shard_id")[3],
        "localhost/t1_0003_read_only",
        "{json}"
    );
    cluster
        .ok(&["mark-busy", "localhost/t1_0003_read_only"])
        .await;
    assert!(
        cluster
            .ok(&["tree", "1"])
            .await
            .contains("localhost/t1_0003_read_only [busy]")
    );

    let err = cluster.fails(&["unwrap", "localhost/t1_0001"]).await;
    assert!(
        err.contains("is a ReplicatingShard, not a wrapper"),
        "{err}"
    );
    cluster
        .ok(&["unwrap", "localhost/t1_0002_write_only"])
        .await;
    cluster.ok(&["unwrap", "localhost/t1_0003_read_only"]).await;
    assert_eq!(cluster.ok(&["tree", "1"]).await, before);
    let shards = cluster.ok(&["shards", "--host", "localhost"]).await;
    assert_eq!(
        shards.lines().count(),
        5,
        "the wrappers are gone:\n{shards}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gizzmo_refuses_bad_input_and_names_the_problem() {
    let cluster = Cluster::start().await;
    add_hosts(&cluster).await;
    create_table(&cluster).await;
    let before = cluster.ok(&["--json", "shards"]).await;

    // A malformed shard id is refused before anything is sent (clap's usage error, status 2).
    let output = cluster
        .gizzmo(&["create-shard", "no-slash", "KvShard"])
        .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("shard id \"no-slash\" has no '/'"),
        "{stderr}"
    );
    let err = cluster.fails(&["delete-shard", "a/t1_9999"]).await;
    assert!(err.contains("shard a/t1_9999 does not exist"), "{err}");

    // A parent linked under its own child: the server refuses the cycle and names it.
    let err = cluster
        .fails(&["link", "a/t1_0000", "localhost/t1_0000"])
        .await;
    assert!(err.contains("shard tree has a cycle"), "{err}");
    assert!(
        err.contains("localhost/t1_0000") && err.contains("FAILED_PRECONDITION"),
        "{err}"
    );

    // create-table with bad shard counts, replicas or class: each refusal names the problem.
    for (shards, replicas, class, expected) in [
        (
            "0",
            "a",
            "KvShard",
            "--shards must be between 1 and 65536, not 0",
        ),
        ("65537", "a", "KvShard", "not 65537"),
        ("2", "a,b,a", "KvShard", "names host \"a\" more than once"),
        ("2", "a", "NoSuch", "unknown type \"NoSuch\""),
    ] {
        let args = [
            "create-table",
            "2",
            "--shards",
            shards,
            "--replicas",
            replicas,
            "--class",
            class,
        ];
        let err = cluster.fails(&args).await;
        assert!(err.contains(expected), "{args:?}: {err}");
    }

    // Nothing was changed by the refusals.
    assert_eq!(cluster.ok(&["--json", "shards"]).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gizzmo_needs_the_token_for_every_call() {
    let cluster = Cluster::start().await;
    let url = cluster.host_url("a");
    let addr = cluster.addr();
    for command in [
        &["add-host", "a", url.as_str()][..],
        &["hosts"],
        &["jobs", "list"],
        &["migrations"],
    ] {
        let args = [&["--addr", addr][..], command].concat();
        let err = failure(&args, gizzmo(&args).await);
        assert!(
            err.contains("pass --token") && err.contains("UNAUTHENTICATED"),
            "{command:?}: {err}"
        );
    }
    let args = [
        "--addr",
        addr,
        "--token",
        "wrong",
        "add-host",
        "a",
        url.as_str(),
    ];
    let err = failure(&args, gizzmo(&args).await);
    assert!(
        err.contains("the bearer token is wrong (code: PERMISSION_DENIED)"),
        "{err}"
    );

    // Tokens from files: the admin token allows changes, the read-only one reads only.
    let write_file = |name: &str, token: &str| {
        let path = cluster.dir.path().join(name);
        std::fs::write(&path, format!("{token}\n")).expect("write token file");
        path.display().to_string()
    };
    let (admin_file, read_file) = (
        write_file("admin-token", TOKEN),
        write_file("read-token", READ_TOKEN),
    );
    fn with_file<'a>(addr: &'a str, file: &'a str, command: &[&'a str]) -> Vec<&'a str> {
        [&["--addr", addr, "--token-file", file][..], command].concat()
    }
    let args = with_file(addr, &admin_file, &["add-host", "a", url.as_str()]);
    assert!(gizzmo(&args).await.status.success(), "admin token file");
    let args = with_file(addr, &read_file, &["--json", "hosts"]);
    let hosts = gizzmo(&args).await;
    assert!(hosts.status.success(), "{}", text(&hosts.stderr));
    assert!(text(&hosts.stdout).contains("\"name\": \"a\""));
    for command in [
        &["jobs", "list"][..],
        &["migrations"],
        &["servers"],
        &["jobs", "status"],
    ] {
        let output = gizzmo(&with_file(addr, &read_file, command)).await;
        assert!(
            output.status.success(),
            "{command:?}: {}",
            text(&output.stderr)
        );
    }
    for command in [
        &["add-host", "b", url.as_str()][..],
        &["jobs", "pause"],
        &["reload"],
    ] {
        let args = with_file(addr, &read_file, command);
        let err = failure(&args, gizzmo(&args).await);
        assert!(
            err.contains("the read-only token cannot call") && err.contains("PERMISSION_DENIED"),
            "{command:?}: {err}"
        );
    }
    let empty = write_file("empty-token", "");
    let args = with_file(addr, &empty, &["hosts"]);
    let err = failure(&args, gizzmo(&args).await);
    assert!(err.contains("is empty") && err.contains(&empty), "{err}");

    let status = cluster.ok(&["jobs", "status"]).await;
    let lines: Vec<Vec<&str>> = status
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        vec!["PRIORITY", "READY", "BAD", "WORKERS"],
        "{status}"
    );
    assert_eq!(lines[1], vec!["high", "0", "0", "running"], "{status}");
    let paused = cluster.ok(&["--json", "jobs", "pause", "copy"]).await;
    assert_eq!(
        json_values(&paused, "priority"),
        vec!["high", "low", "copy"],
        "{paused}"
    );
    assert_eq!(
        json_values(&paused, "paused"),
        vec!["false", "false", "true"],
        "{paused}"
    );
    let status = cluster.ok(&["jobs", "resume"]).await;
    assert!(!status.contains("paused"), "{status}");
    let jobs = cluster
        .ok(&["--json", "jobs", "list", "--state", "bad"])
        .await;
    assert_eq!(jobs.trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gizzmo_ping_checks_that_servers_route_the_same_version() {
    let mut cluster = Cluster::start().await;
    // The second proxy polls rarely, so it falls behind until told to reload.
    let b = cluster
        .add_server("proxy-b", Duration::from_secs(3_600))
        .await;
    let a = cluster.addr().to_owned();

    let out = cluster.ok(&["ping", &a, &b]).await;
    assert!(out.contains("proxy-a") && out.contains("proxy-b"), "{out}");
    assert_eq!(out.matches(" ok").count(), 2, "{out}");

    add_hosts(&cluster).await;
    let args = ["--token", TOKEN, "--json", "ping", a.as_str(), b.as_str()];
    let output = gizzmo(&args).await;
    let stdout = text(&output.stdout);
    let err = failure(&args, output);
    assert!(err.contains("servers route different versions"), "{err}");
    assert!(err.contains(&format!("{b} routes version")), "{err}");
    assert_eq!(json_values(&stdout, "agree"), vec!["false"], "{stdout}");
    assert_eq!(
        json_values(&stdout, "server"),
        vec!["proxy-a", "proxy-b"],
        "{stdout}"
    );

    let reload = gizzmo(&["--addr", &b, "--token", TOKEN, "reload"]).await;
    assert!(reload.status.success(), "{}", text(&reload.stderr));
    assert!(text(&reload.stdout).starts_with("server proxy-b routes version"));
    let out = cluster.ok(&["ping", &a, &b]).await;
    assert_eq!(out.matches(" ok").count(), 2, "{out}");

    let err = cluster
        .fails(&["--timeout", "2s", "ping", &a, "127.0.0.1:1"])
        .await;
    assert!(err.contains("127.0.0.1:1 did not answer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gizzmo_lists_registered_servers_pings_them_all_and_shows_retired_shards() {
    let mut cluster = Cluster::start().await;
    let b = cluster
        .add_server("proxy-b", Duration::from_millis(200))
        .await;
    let a = cluster.addr().to_owned();

    let out = cluster.ok(&["servers"]).await;
    assert!(
        out.contains("proxy-a-") && out.contains("proxy-b-"),
        "{out}"
    );
    assert!(out.contains(&a) && out.contains(&b), "{out}");
    assert_eq!(out.matches(" ok").count(), 2, "{out}");
    let json = cluster.ok(&["--json", "servers"]).await;
    assert_eq!(
        json_values(&json, "stale"),
        vec!["false", "false"],
        "{json}"
    );

    // No addresses: every registered server is asked.
    let out = cluster.ok(&["ping"]).await;
    assert!(out.contains(&a) && out.contains(&b), "{out}");
    assert_eq!(out.matches(" ok").count(), 2, "{out}");

    assert_eq!(
        cluster.ok(&["retired"]).await,
        "no retired shards wait to be fenced or dropped\n"
    );
    add_hosts(&cluster).await;
    create_table(&cluster).await;
    // The planners register a new table's pairs within a poll interval.
    let mut sweeps = String::new();
    for _ in 0..100 {
        sweeps = cluster.ok(&["sweeps"]).await;
        if sweeps.matches(" / ").count() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sweeps.matches(" / ").count(),
        4,
        "a pair per range: {sweeps}"
    );
    assert!(sweeps.contains("a/t1_0000 / b/t1_0000"), "{sweeps}");
    cluster.ok(&["remove-replica", "b/t1_0001"]).await;
    let mut fenced = String::new();
    for _ in 0..100 {
        fenced = cluster.ok(&["retired"]).await;
        if fenced.contains("fenced as t1_0001_r") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fenced.contains("b/t1_0001"), "{fenced}");
    assert!(fenced.contains("fenced as t1_0001_r"), "{fenced}");
    assert!(fenced.contains("dropped in 86"), "a day's grace: {fenced}");
    let host = db::Database::open(&cluster.host_url("b"), Duration::from_secs(5))
        .await
        .expect("open host b");
    assert!(!host.table_exists("t1_0001_kv").await.expect("look"));
    assert!(host.table_exists("t1_0000_kv").await.expect("look"));
}
