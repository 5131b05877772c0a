//! The metrics a tbird server publishes in Prometheus text at `http://ADDR/metrics`.
//!
//! - `tbird_requests_total{method, code}`: calls of `tbird.v1.Tweets` by method and gRPC status
//!   code (`OK`, `InvalidArgument`, `Unavailable`, ...; `Canceled` when the caller went away).
//! - `tbird_request_duration_seconds{method}`: their latency, a histogram.
//! - From Gizzard: `gizzard_leaf_failures_total{shard}` (reads and writes a replica failed:
//!   unreachable or too slow), `gizzard_queue_jobs{priority, state}` (the job queue, counted
//!   every [`QUEUE_DEPTH_INTERVAL`]), and `gizzard_jobs_run_total`,
//!   `gizzard_jobs_succeeded_total`, `gizzard_jobs_failed_total`, `gizzard_jobs_parked_total`
//!   (job runs and their outcomes, by `job_type`; write retries are `tbird.write`).
//! - From Gizzard's fault handling: `gizzard_leaf_hedges_total{shard}` and
//!   `gizzard_leaf_suspect{shard}` (replicas written past or read last), the routing lease
//!   (`gizzard_routing_lease_valid`, `gizzard_routing_confirmed_age_seconds`,
//!   `gizzard_unconfirmed_routes_total`) and anti-entropy
//!   (`gizzard_anti_entropy_rows_compared_total`, `gizzard_anti_entropy_keys_repaired_total`,
//!   `gizzard_anti_entropy_sweep_age_seconds{a, b}`). README lists them all.
//!
//! Every label is bounded: six methods, seventeen codes, the topology's shards, the job types
//! the server runs. Handles are looked up once and cached, never per call.

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// Where `tbird serve` serves metrics unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9990);
/// How often the job queue is counted for `gizzard_queue_jobs`.
pub const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// Latency buckets in seconds: a call is a few MySQL round trips, or a leaf timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub use daemon::metrics::{Listen, MetricsError, deserialize_listen};

/// Installs the process-wide recorder, describes every series a tbird server emits (its own
/// and Gizzard's) and serves `/metrics` on `addr` until `shutdown`. Call it before the proxy
/// and the service are built: they cache their handles when they start.
pub async fn install(addr: SocketAddr, shutdown: CancellationToken) -> Result<(), MetricsError> {
    daemon::metrics::install(addr, BUCKETS, shutdown).await?;
    describe();
    gizzard::metrics::describe();
    Ok(())
}

/// Gives every series of the tweet service its `# HELP` text.
pub fn describe() {
    metrics::describe_counter!(
        "tbird_requests_total",
        "Calls of tbird.v1.Tweets by method and gRPC status code"
    );
    metrics::describe_histogram!(
        "tbird_request_duration_seconds",
        metrics::Unit::Seconds,
        "Latency of tbird.v1.Tweets calls by method"
    );
}

/// The methods of `tbird.v1.Tweets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    PostTweet,
    PutTweet,
    GetTweet,
    GetTweets,
    DeleteTweet,
    UserTweets,
}

impl Method {
    /// Every method, in the order [`RequestMetrics`] holds them.
    pub const ALL: [Method; 6] = [
        Self::PostTweet,
        Self::PutTweet,
        Self::GetTweet,
        Self::GetTweets,
        Self::DeleteTweet,
        Self::UserTweets,
    ];

    /// Returns the gRPC method name, the `method` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PostTweet => "PostTweet",
            Self::PutTweet => "PutTweet",
            Self::GetTweet => "GetTweet",
            Self::GetTweets => "GetTweets",
            Self::DeleteTweet => "DeleteTweet",
            Self::UserTweets => "UserTweets",
        }
    }
}

/// The status codes by number, named as gRPC's own libraries and dashboards name them.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Returns the `code` label of `code`.
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

/// The handles of one method: its latency histogram, and a request counter per status code,
/// registered on first use so that only codes that happened show up.
#[derive(Debug)]
struct MethodMetrics {
    method: Method,
    latency: metrics::Histogram,
    by_code: [OnceLock<metrics::Counter>; 17],
}

impl MethodMetrics {
    fn new(method: Method) -> Self {
        Self {
            method,
            latency: metrics::histogram!(
                "tbird_request_duration_seconds",
                "method" => method.as_str()
            ),
            by_code: Default::default(),
        }
    }

    fn count(&self, code: Code) {
        let index = (code as usize).min(CODE_NAMES.len() - 1);
        self.by_code[index]
            .get_or_init(|| {
                metrics::counter!(
                    "tbird_requests_total",
                    "method" => self.method.as_str(),
                    "code" => code_name(code)
                )
            })
            .increment(1);
    }
}

/// The request metrics of the tweet service.
#[derive(Debug)]
pub struct RequestMetrics {
    methods: Vec<MethodMetrics>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            methods: Method::ALL.into_iter().map(MethodMetrics::new).collect(),
        }
    }
}

impl RequestMetrics {
    /// Starts timing a call of `method`; the call is counted when the returned guard finishes
    /// or, if the caller goes away first, when it is dropped (as `Canceled`).
    pub fn start(&self, method: Method) -> Call<'_> {
        let index = Method::ALL
            .iter()
            .position(|m| *m == method)
            .unwrap_or_default();
        Call {
            metrics: &self.methods[index],
            started: Instant::now(),
            code: Code::Cancelled,
        }
    }
}

/// One call being timed.
#[derive(Debug)]
pub struct Call<'a> {
    metrics: &'a MethodMetrics,
    started: Instant,
    code: Code,
}

impl Call<'_> {
    /// Records the call's outcome and returns it.
    pub fn finish<T>(mut self, result: Result<T, Status>) -> Result<T, Status> {
        self.code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        result
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.metrics
            .latency
            .record(self.started.elapsed().as_secs_f64());
        self.metrics.count(self.code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_follow_grpc_names() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(code_name(Code::Unauthenticated), "Unauthenticated");
    }
}
