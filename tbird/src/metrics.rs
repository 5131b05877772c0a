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
    str::FromStr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::{Deserialize, Deserializer};
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

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("serve metrics on {addr}: {reason}")]
    Install { addr: SocketAddr, reason: String },
}

/// Installs the process-wide recorder and serves `/metrics` on `addr`. Call it before the
/// proxy and the service are built: they cache their handles when they start.
pub fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    let err = |reason: String| MetricsError::Install { addr, reason };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), BUCKETS)
        .map_err(|e| err(e.to_string()))?
        .install()
        .map_err(|e| err(e.to_string()))
}

/// A metrics address, or `off`: the value of `metrics-listen` and `--metrics-listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "none" | "" => Ok(Self(None)),
            addr => addr
                .parse()
                .map(|addr| Self(Some(addr)))
                .map_err(|_| format!("{s:?} is neither HOST:PORT nor \"off\"")),
        }
    }
}

/// Deserializes an optional metrics address: `"HOST:PORT"`, or `"off"` for none.
pub fn deserialize_listen<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<Listen>()
        .map(|listen| listen.0)
        .map_err(serde::de::Error::custom)
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
    fn listen_is_an_address_or_off() {
        assert_eq!("off".parse::<Listen>(), Ok(Listen(None)));
        assert_eq!(
            "127.0.0.1:9990".parse::<Listen>(),
            Ok(Listen(Some(SocketAddr::from(([127, 0, 0, 1], 9990)))))
        );
        let err = "9990".parse::<Listen>().expect_err("no host");
        assert!(err.contains("HOST:PORT"), "{err}");
    }

    #[test]
    fn code_labels_follow_grpc_names() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(code_name(Code::Unauthenticated), "Unauthenticated");
    }
}
