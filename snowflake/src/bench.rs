//! The load generator behind `snowflake bench`: callers in parallel for a fixed time, each
//! asking for one id or a batch per call, and a report of ids/s and call latency percentiles.

use std::{
    fmt,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use crate::client::{Client, ClientError};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchSettings {
    pub addr: String,
    pub concurrency: usize,
    pub duration: Duration,
    /// Ids per call: 1 calls `GetId`, more call `GetIds`.
    pub batch: u32,
    /// How many HTTP/2 connections the callers share, round robin.
    pub connections: usize,
    /// TLS files, by the rule of `edge::client`.
    pub tls: edge::client::ClientTls,
}

/// What a run measured.
#[derive(Debug)]
pub struct BenchReport {
    pub settings: BenchSettings,
    pub elapsed: Duration,
    pub calls: u64,
    pub ids: u64,
    pub errors: u64,
    /// Call latency in microseconds.
    pub latency_us: Histogram<u64>,
}

impl BenchReport {
    /// Returns ids issued per second.
    pub fn ids_per_sec(&self) -> f64 {
        self.ids as f64 / self.elapsed.as_secs_f64()
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let method = if s.batch == 1 { "GetId" } else { "GetIds" };
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        writeln!(
            f,
            "{method} batch={} concurrency={} connections={} duration={:.1}s",
            s.batch,
            s.concurrency,
            s.connections,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "ids/s      {:.0}", self.ids_per_sec())?;
        writeln!(
            f,
            "calls/s    {:.0}",
            self.calls as f64 / self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "errors     {}", self.errors)?;
        write!(
            f,
            "latency ms p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.latency_us.max() as f64 / 1000.0
        )
    }
}

/// Runs the benchmark against a daemon.
pub async fn run(settings: BenchSettings) -> Result<BenchReport, ClientError> {
    let mut clients = Vec::with_capacity(settings.connections.max(1));
    for _ in 0..settings.connections.max(1) {
        clients.push(
            Client::connect_with(
                &settings.addr,
                &settings.tls,
                "bench",
                Duration::from_secs(5),
            )
            .await?,
        );
    }
    // Warm up each connection so the first calls do not count connection set-up.
    for client in &clients {
        client.get_id().await?;
    }
    let started = Instant::now();
    let until = started + settings.duration;
    let tasks: Vec<_> = (0..settings.concurrency)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let batch = settings.batch;
            tokio::spawn(async move { caller(client, batch, until).await })
        })
        .collect();
    let mut report = BenchReport {
        settings,
        elapsed: Duration::ZERO,
        calls: 0,
        ids: 0,
        errors: 0,
        latency_us: new_histogram(),
    };
    for task in tasks {
        let (calls, ids, errors, latency) = task.await.expect("bench caller panicked");
        report.calls += calls;
        report.ids += ids;
        report.errors += errors;
        report
            .latency_us
            .add(&latency)
            .expect("same histogram bounds");
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn caller(client: Client, batch: u32, until: Instant) -> (u64, u64, u64, Histogram<u64>) {
    let (mut calls, mut ids, mut errors) = (0, 0, 0);
    let mut latency = new_histogram();
    while Instant::now() < until {
        let started = Instant::now();
        let issued = if batch == 1 {
            client.get_id().await.map(|_| 1)
        } else {
            client.get_ids(batch).await.map(|ids| ids.len() as u64)
        };
        latency.saturating_record(started.elapsed().as_micros() as u64);
        calls += 1;
        match issued {
            Ok(n) => ids += n,
            Err(_) => errors += 1,
        }
    }
    (calls, ids, errors, latency)
}
