//! Anti-entropy's cost: two replicas of one tweet shard hold the same `BENCH_ROWS` rows
//! (200,000 by default) on private MariaDB instances, and the background sweep compares them
//! at the default rate cap. Prints the sweep's rows/s and the CPU each process spent during it
//! (the two MariaDB servers and this process, which runs the proxy), against the same
//! processes idle, and what that costs at steady state with the default interval.
//!
//! `cargo bench -p tests --bench anti_entropy`

use std::time::{Duration, Instant};

use gizzard::{migrate::anti_entropy::AntiEntropySettings, server::ProxySettings};
use tests::tweets::{TweetCluster, load_tweets, settings};

/// Long enough that loading the rows ends before the first sweep is due.
const INTERVAL: Duration = Duration::from_secs(30);

fn sweeping(nameserver_url: &str) -> ProxySettings {
    ProxySettings {
        anti_entropy: AntiEntropySettings {
            interval: Some(INTERVAL),
            ..AntiEntropySettings::default()
        },
        ..settings(nameserver_url)
    }
}

fn rows() -> u64 {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// CPU seconds process `pid` has used (user and system).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split(' ')
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second
}

/// CPU seconds of each of `pids` over `run`, with the wall time it took.
async fn measure<F: Future<Output = ()>>(pids: &[String], run: F) -> (Vec<f64>, f64) {
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(p)).collect();
    let started = Instant::now();
    run.await;
    let wall = started.elapsed().as_secs_f64();
    let used = pids
        .iter()
        .zip(before)
        .map(|(p, b)| cpu_seconds(p) - b)
        .collect();
    (used, wall)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count = rows();
    let (cluster, server) =
        TweetCluster::start_with(2, 2, 1, tests::mariadb::BENCH_FLAGS, sweeping).await;
    for host in &cluster.hosts {
        load_tweets(&host.url("tbird"), "t1_0000", count).await;
    }
    let pids: Vec<String> = cluster
        .hosts
        .iter()
        .map(|h| h.pid().expect("mariadb pid").to_string())
        .chain(["self".to_owned()])
        .collect();
    let sweeps = &server.proxy.sweeps;
    let swept_ms = |name: &str| {
        let name = name.to_owned();
        async move {
            sweeps
                .list()
                .await
                .expect("sweeps")
                .into_iter()
                .find(|s| s.a.table_prefix == name)
                .map(|s| (s.running(), s.last_full_ms))
        }
    };
    let (running, first) = swept_ms("t1_0000").await.expect("the pair is registered");
    assert!(!running, "no sweep before the rows are loaded");

    let (idle, idle_wall) = measure(&pids, tokio::time::sleep(Duration::from_secs(3))).await;
    // Waits for the sweep to start, then for it to end.
    while swept_ms("t1_0000")
        .await
        .is_some_and(|(running, _)| !running)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (busy, wall) = measure(&pids, async {
        while swept_ms("t1_0000")
            .await
            .is_some_and(|(_, last)| last == first)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let names = ["mariadb h0", "mariadb h1", "proxy (this process)"];
    println!(
        "anti-entropy: swept {count} rows in {wall:.1} s = {:.0} rows/s (cap {} rows/s)",
        count as f64 / wall,
        AntiEntropySettings::default().rows_per_second.unwrap_or(0)
    );
    for ((name, busy), idle) in names.iter().zip(&busy).zip(&idle) {
        println!(
            "  {name:<22} {:5.1}% of a core while sweeping, {:5.1}% idle",
            busy / wall * 100.0,
            idle / idle_wall * 100.0
        );
    }
    let extra: f64 = busy
        .iter()
        .zip(&idle)
        .map(|(b, i)| b / wall - i / idle_wall)
        .sum();
    let default_interval = AntiEntropySettings::default().interval.unwrap_or(INTERVAL);
    println!(
        "  at the default interval ({default_interval:?}) a pair of {count} rows costs about \
         {:.2}% of a core on average",
        extra * wall / default_interval.as_secs_f64() * 100.0
    );
}
