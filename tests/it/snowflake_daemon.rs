//! The Snowflake daemon over real gRPC: leased worker ids on MariaDB and SQLite, lease loss,
//! a SIGKILL and restart with the clock set back, request validation, metrics and shutdown.

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use proto::snowflake::v1::{GetIdRequest, GetIdsRequest, GetWorkerIdRequest};
use snowflake::{
    client::Client,
    clock::SystemClock,
    config::Config,
    id::IdParts,
    server::{self, ServerError},
};
use tests::MariaDb;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// A daemon running in this process on a loopback port.
struct Daemon {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Daemon {
    fn spawn(config: Config) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let shutdown = CancellationToken::new();
        let clock = Arc::new(SystemClock::default());
        let task = tokio::spawn(server::run(listener, config, clock, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.addr.to_string(), "it", Duration::from_secs(5))
            .await
            .expect("connect")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("daemon task")
            .expect("daemon ran cleanly");
    }
}

fn leased(url: &str, ttl: Duration) -> Config {
    Config {
        lease_url: Some(url.to_owned()),
        lease_ttl: ttl,
        metrics_listen: None,
        ..Config::default()
    }
}

/// Two daemons on one lease table take different worker ids, and their ids never collide.
async fn two_leased_daemons_never_collide(url: &str) {
    let a = Daemon::spawn(leased(url, Duration::from_secs(3)));
    let b = Daemon::spawn(leased(url, Duration::from_secs(3)));
    let (ca, cb) = (a.client().await, b.client().await);
    let wa = ca
        .raw()
        .get_worker_id(GetWorkerIdRequest {})
        .await
        .expect("worker id")
        .into_inner();
    let wb = cb
        .raw()
        .get_worker_id(GetWorkerIdRequest {})
        .await
        .expect("worker id")
        .into_inner();
    assert_ne!(
        wa.worker_id, wb.worker_id,
        "two daemons must not share a worker id"
    );

    let fetch = |client: Client| async move {
        let mut ids = Vec::new();
        for round in 0..40 {
            if round % 4 == 0 {
                ids.push(client.get_id().await.expect("id"));
            } else {
                ids.extend(client.get_ids(5_000).await.expect("ids"));
            }
        }
        ids
    };
    let (ids_a, ids_b) = tokio::join!(fetch(ca), fetch(cb));
    let mut seen = HashSet::new();
    for id in ids_a.iter().chain(&ids_b) {
        assert!(seen.insert(*id), "id {id} issued twice");
    }
    assert_eq!(seen.len(), 2 * (10 + 30 * 5_000));
    for (ids, worker) in [(&ids_a, wa.worker_id), (&ids_b, wb.worker_id)] {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "each daemon's ids increase"
        );
        let parts = IdParts::decompose(ids[0]).expect("valid id");
        assert_eq!(u32::from(parts.worker_id), worker);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_daemons_never_collide_on_mariadb() {
    let db = MariaDb::start().await.expect("start mariadb");
    let url = db
        .create_database("snowflake")
        .await
        .expect("create database");
    two_leased_daemons_never_collide(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_daemons_never_collide_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("leases.db").display());
    two_leased_daemons_never_collide(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_worker_id_is_refused_to_a_second_daemon() {
    let db = MariaDb::start().await.expect("start mariadb");
    let url = db
        .create_database("snowflake")
        .await
        .expect("create database");
    let first = Daemon::spawn(Config {
        worker_id: Some(5),
        ..leased(&url, Duration::from_secs(2))
    });
    first
        .client()
        .await
        .get_id()
        .await
        .expect("first daemon holds worker 5");

    let second = Config {
        worker_id: Some(5),
        lease_acquire_timeout: Some(Duration::from_secs(1)),
        ..leased(&url, Duration::from_secs(2))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let clock = Arc::new(SystemClock::default());
    let err = server::run(listener, second, clock, CancellationToken::new())
        .await
        .expect_err("worker 5 is held");
    assert!(matches!(err, ServerError::Lease(_)), "{err}");
    // What the daemon prints as it exits: the step, then who holds the worker id.
    let text = daemon::error_chain(&err);
    assert!(
        text.starts_with("lease worker id: worker 5 in datacenter 0 is leased by"),
        "{text}"
    );
    first.stop().await;
}

/// Ids stop within the lease time once the lease database is gone, and resume when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stop_within_the_lease_time_when_the_database_goes_away() {
    let mut db = MariaDb::start().await.expect("start mariadb");
    let url = db
        .create_database("snowflake")
        .await
        .expect("create database");
    let ttl = Duration::from_millis(1_500);
    let daemon = Daemon::spawn(leased(&url, ttl));
    let client = daemon.client().await;
    let before = client.get_id().await.expect("lease held");

    db.kill();
    let killed = Instant::now();
    let refusal = loop {
        match client.get_id().await {
            Ok(_) => assert!(
                killed.elapsed() < ttl,
                "ids still issued {:?} after the kill",
                killed.elapsed()
            ),
            Err(err) => break err,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        killed.elapsed() <= ttl,
        "stopped only after {:?}",
        killed.elapsed()
    );
    let snowflake::client::ClientError::Status(status) = refusal else {
        panic!("{refusal}")
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("lease"), "{}", status.message());

    db.restart().await.expect("restart mariadb");
    let resumed = Instant::now();
    let after = loop {
        if let Ok(id) = client.get_id().await {
            break id;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(15),
            "ids did not resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(after > before);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_agents_and_counts_are_rejected() {
    let daemon = Daemon::spawn(Config {
        worker_id: Some(1),
        metrics_listen: None,
        ..Config::default()
    });
    let mut raw = daemon.client().await.raw();
    for agent in ["", "1abc", "has space", "tab\t", "under_score"] {
        let status = raw
            .get_id(GetIdRequest {
                user_agent: agent.into(),
            })
            .await
            .expect_err("invalid agent");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("user_agent"),
            "{}",
            status.message()
        );
    }
    for count in [0, 100_001] {
        let request = GetIdsRequest {
            user_agent: "it".into(),
            count,
        };
        let status = raw.get_ids(request).await.expect_err("count out of range");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(&format!("count {count}")),
            "{}",
            status.message()
        );
    }
    let ids = raw
        .get_ids(GetIdsRequest {
            user_agent: "it".into(),
            count: 100_000,
        })
        .await
        .expect("the largest batch")
        .into_inner()
        .ids;
    assert_eq!(ids.len(), 100_000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    daemon.stop().await;
}

/// A `snowflake serve` process.
struct Process {
    child: Child,
    addr: String,
}

impl Process {
    fn spawn(args: &[String]) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(tests::binary::path("snowflake", "snowflake"))
            .arg("serve")
            .args(["--listen", &addr])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn snowflake");
        Self { child, addr }
    }

    /// Waits until the daemon answers (or refuses) calls.
    async fn client(&mut self) -> Client {
        let started = Instant::now();
        loop {
            if let Ok(client) = Client::connect(&self.addr, "it", Duration::from_secs(2)).await {
                return client;
            }
            assert!(
                self.child.try_wait().expect("poll child").is_none(),
                "snowflake exited"
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "snowflake did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.child.wait().expect("reap snowflake")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A daemon killed with SIGKILL, restarted on the same worker id with its clock three seconds
/// behind, refuses ids until its clock passes what the lease table reserved, and never
/// repeats or undercuts an id from before the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_restarted_with_its_clock_set_back_repeats_no_id() {
    let db = MariaDb::start().await.expect("start mariadb");
    let url = db
        .create_database("snowflake")
        .await
        .expect("create database");
    let args = |offset: i64| -> Vec<String> {
        let lease = [
            "--lease-url",
            &url,
            "--worker-id",
            "7",
            "--lease-ttl",
            "1s",
            "--no-metrics",
        ];
        let mut args: Vec<String> = lease.iter().map(|s| s.to_string()).collect();
        args.push(format!("--clock-offset-ms={offset}"));
        args
    };

    let mut first = Process::spawn(&args(0));
    let client = first.client().await;
    let mut before = Vec::new();
    let until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < until {
        before.extend(client.get_ids(2_000).await.expect("ids before the crash"));
    }
    let max_before = *before.iter().max().expect("ids");
    first.signal(libc::SIGKILL);

    let mut second = Process::spawn(&args(-3_000));
    let client = second.client().await;
    let started = Instant::now();
    let (mut refusals, mut after) = (0, Vec::new());
    while after.len() < 10_000 {
        match client.get_ids(1_000).await {
            Ok(ids) => after.extend(ids),
            Err(snowflake::client::ClientError::Status(status)) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                if status.message().contains("backwards") {
                    refusals += 1;
                }
            }
            Err(err) => panic!("{err}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no ids after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refusals > 0,
        "the set-back clock must have been refused for a while"
    );
    assert!(
        after.iter().all(|&id| id > max_before),
        "an id after the restart undercut one before"
    );
    let parts = IdParts::decompose(after[0]).expect("valid id");
    assert_eq!(parts.worker_id, 7);
    let all: HashSet<u64> = before.iter().chain(&after).copied().collect();
    assert_eq!(all.len(), before.len() + after.len(), "an id was repeated");
    assert!(
        second.signal(libc::SIGTERM).success(),
        "SIGTERM shuts down cleanly"
    );
}

/// The binary serves Prometheus metrics and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_metrics_and_shuts_down_on_sigterm() {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut daemon = Process::spawn(&[
        "--worker-id".into(),
        "3".into(),
        "--metrics-listen".into(),
        metrics.clone(),
    ]);
    let client = daemon.client().await;
    client.get_ids(10).await.expect("ids");
    let mut raw = client.raw();
    let _ = raw
        .get_id(GetIdRequest {
            user_agent: "bad agent".into(),
        })
        .await;

    let mut stream = TcpStream::connect(&metrics).expect("connect to metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    assert!(
        body.contains("snowflake_ids_issued_total{agent=\"it\"} 10"),
        "{body}"
    );
    assert!(
        body.contains("snowflake_refusals_total{reason=\"invalid_user_agent\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("snowflake_request_duration_seconds_bucket{method=\"GetIds\""),
        "{body}"
    );
    assert!(
        daemon.signal(libc::SIGTERM).success(),
        "SIGTERM shuts down cleanly"
    );
}
