//! The gRPC service `snowflake.v1.Snowflake`: validates requests, issues ids from the
//! [`IdWorker`], and records the metrics operators watch (ids per agent, refusals by reason,
//! latency per method).

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use proto::snowflake::v1::{
    GetDatacenterIdRequest, GetDatacenterIdResponse, GetIdRequest, GetIdResponse, GetIdsRequest,
    GetIdsResponse, GetTimestampRequest, GetTimestampResponse, GetWorkerIdRequest,
    GetWorkerIdResponse, snowflake_server,
};
use tonic::{Request, Response, Status};

use crate::{id::MAX_SEQUENCE, worker::IdError, worker::IdWorker};

/// The default largest batch one `GetIds` call may ask for.
pub const DEFAULT_MAX_BATCH: u32 = 100_000;
/// The longest user agent accepted; agents label metrics, so they must stay few and short.
pub const MAX_USER_AGENT_LEN: usize = 64;

/// A request refused before it reached the worker.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("user_agent {0:?} is invalid: expected [a-zA-Z][a-zA-Z0-9-]*, at most 64 characters")]
    UserAgent(String),
    #[error("count {count} is out of range: expected 1 to {max}")]
    Count { count: u32, max: u32 },
}

/// Returns `agent` if it matches `[a-zA-Z][a-zA-Z0-9-]*` and is at most 64 characters.
pub fn validate_user_agent(agent: &str) -> Result<&str, RequestError> {
    let mut chars = agent.chars();
    let valid = agent.len() <= MAX_USER_AGENT_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(agent)
    } else {
        // Bounded: a long agent echoed whole would overflow the client's metadata limit.
        Err(RequestError::UserAgent(
            db::text::bounded(agent, MAX_USER_AGENT_LEN).into_owned(),
        ))
    }
}

impl From<RequestError> for Status {
    fn from(err: RequestError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

impl From<IdError> for Status {
    fn from(err: IdError) -> Self {
        match err {
            // The daemon cannot issue now but will again: clients should retry, perhaps
            // against another daemon.
            IdError::NoLease
            | IdError::LeaseExpired
            | IdError::ClockBackwards { .. }
            | IdError::PastReservation { .. }
            | IdError::ClockOutOfRange(_) => Status::unavailable(err.to_string()),
        }
    }
}

fn refusal_reason(err: &IdError) -> &'static str {
    match err {
        IdError::NoLease => "no_lease",
        IdError::LeaseExpired => "lease_expired",
        IdError::ClockBackwards { .. } => "clock_backwards",
        IdError::PastReservation { .. } => "past_reservation",
        IdError::ClockOutOfRange(_) => "clock_out_of_range",
    }
}

/// Distinct user agents counted by name; later ones are counted as `other`, so a client
/// inventing agents cannot grow the metrics without bound.
pub const MAX_COUNTED_AGENTS: usize = 1_000;

/// The per-agent id counters, looked up once per agent rather than once per call.
#[derive(Debug, Default)]
struct AgentCounters {
    counters: RwLock<HashMap<String, metrics::Counter>>,
}

impl AgentCounters {
    fn get(&self, agent: &str) -> metrics::Counter {
        if let Some(counter) = self
            .counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(agent)
        {
            return counter.clone();
        }
        let mut counters = self
            .counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if counters.len() >= MAX_COUNTED_AGENTS {
            return metrics::counter!("snowflake_ids_issued_total", "agent" => "other");
        }
        let counter = metrics::counter!("snowflake_ids_issued_total", "agent" => agent.to_owned());
        counters.entry(agent.to_owned()).or_insert(counter).clone()
    }
}

/// Implements `snowflake.v1.Snowflake` over one worker.
#[derive(Debug, Clone)]
pub struct SnowflakeService {
    worker: Arc<IdWorker>,
    max_batch: u32,
    agents: Arc<AgentCounters>,
    latencies: Arc<Latencies>,
}

impl SnowflakeService {
    /// Returns the service; `GetIds` accepts counts from 1 to `max_batch`.
    pub fn new(worker: Arc<IdWorker>, max_batch: u32) -> Self {
        Self {
            worker,
            max_batch,
            agents: Arc::default(),
            latencies: Arc::default(),
        }
    }

    /// Returns the tonic server for this service, with message limits that fit `max_batch`.
    pub fn into_server(self) -> snowflake_server::SnowflakeServer<Self> {
        let max_message = self.max_batch as usize * 9 + 1024;
        snowflake_server::SnowflakeServer::new(self).max_encoding_message_size(max_message)
    }

    async fn issue(&self, agent: &str, count: u32) -> Result<Vec<u64>, Status> {
        let count_err = RequestError::Count {
            count,
            max: self.max_batch,
        };
        if count == 0 || count > self.max_batch {
            refused("invalid_count");
            return Err(count_err.into());
        }
        let worker = self.worker.clone();
        let count = count as usize;
        let issue = move || {
            let mut ids = Vec::with_capacity(count);
            worker.next_ids(count, &mut ids).map(|()| ids)
        };
        // A batch over one millisecond's worth waits on the clock: keep it off the async
        // workers so it does not stall other requests.
        let result = if count > usize::from(MAX_SEQUENCE) {
            tokio::task::spawn_blocking(issue)
                .await
                .map_err(|e| Status::internal(e.to_string()))?
        } else {
            issue()
        };
        match result {
            Ok(ids) => {
                self.agents.get(agent).increment(ids.len() as u64);
                Ok(ids)
            }
            Err(err) => {
                refused(refusal_reason(&err));
                tracing::debug!(error = %err, agent, "ids refused");
                Err(err.into())
            }
        }
    }
}

/// Describes every series the id service emits, for `# HELP`; call it once after installing
/// the recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "snowflake_ids_issued_total",
        "Ids issued, by user agent (agents past the first 1,000 count as other)"
    );
    metrics::describe_counter!("snowflake_refusals_total", "Requests refused, by reason");
    metrics::describe_histogram!(
        "snowflake_request_duration_seconds",
        metrics::Unit::Seconds,
        "Latency of GetId and GetIds calls, by method"
    );
}

fn refused(reason: &'static str) {
    metrics::counter!("snowflake_refusals_total", "reason" => reason).increment(1);
}

fn checked_agent(agent: &str) -> Result<&str, Status> {
    validate_user_agent(agent)
        .inspect_err(|_| refused("invalid_user_agent"))
        .map_err(Status::from)
}

/// Records a request's latency into `histogram` when dropped, so refused requests count too.
struct Timer<'a> {
    histogram: &'a metrics::Histogram,
    started: Instant,
}

impl<'a> Timer<'a> {
    fn start(histogram: &'a metrics::Histogram) -> Self {
        Self {
            histogram,
            started: Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.record(self.started.elapsed().as_secs_f64());
    }
}

/// The latency histograms of the id calls, looked up once.
#[derive(Debug)]
struct Latencies {
    get_id: metrics::Histogram,
    get_ids: metrics::Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        let name = "snowflake_request_duration_seconds";
        Self {
            get_id: metrics::histogram!(name, "method" => "GetId"),
            get_ids: metrics::histogram!(name, "method" => "GetIds"),
        }
    }
}

fn grant_field(worker: &IdWorker, field: fn(&crate::worker::Grant) -> u8) -> Result<u32, Status> {
    worker
        .current_grant()
        .map(|grant| u32::from(field(&grant)))
        .ok_or_else(|| Status::from(IdError::NoLease))
}

#[tonic::async_trait]
impl snowflake_server::Snowflake for SnowflakeService {
    async fn get_id(
        &self,
        request: Request<GetIdRequest>,
    ) -> Result<Response<GetIdResponse>, Status> {
        let _timer = Timer::start(&self.latencies.get_id);
        let agent = checked_agent(&request.get_ref().user_agent)?;
        let ids = self.issue(agent, 1).await?;
        Ok(Response::new(GetIdResponse { id: ids[0] }))
    }

    async fn get_ids(
        &self,
        request: Request<GetIdsRequest>,
    ) -> Result<Response<GetIdsResponse>, Status> {
        let _timer = Timer::start(&self.latencies.get_ids);
        let request = request.get_ref();
        let agent = checked_agent(&request.user_agent)?;
        let ids = self.issue(agent, request.count).await?;
        Ok(Response::new(GetIdsResponse { ids }))
    }

    async fn get_worker_id(
        &self,
        _: Request<GetWorkerIdRequest>,
    ) -> Result<Response<GetWorkerIdResponse>, Status> {
        let worker_id = grant_field(&self.worker, |g| g.worker_id)?;
        Ok(Response::new(GetWorkerIdResponse { worker_id }))
    }

    async fn get_datacenter_id(
        &self,
        _: Request<GetDatacenterIdRequest>,
    ) -> Result<Response<GetDatacenterIdResponse>, Status> {
        let datacenter_id = grant_field(&self.worker, |g| g.datacenter_id)?;
        Ok(Response::new(GetDatacenterIdResponse { datacenter_id }))
    }

    async fn get_timestamp(
        &self,
        _: Request<GetTimestampRequest>,
    ) -> Result<Response<GetTimestampResponse>, Status> {
        Ok(Response::new(GetTimestampResponse {
            timestamp_ms: self.worker.clock().now_ms(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_follow_twitters_rule() {
        for good in ["a", "tbird", "Tweet-Service-2", "x-"] {
            assert_eq!(validate_user_agent(good), Ok(good));
        }
        let too_long = "a".repeat(MAX_USER_AGENT_LEN + 1);
        for bad in [
            "",
            "1abc",
            "-abc",
            "has space",
            "under_score",
            "dot.ted",
            "é",
            &too_long,
        ] {
            assert!(validate_user_agent(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_long_agent_is_echoed_within_bounds() {
        let agent = "a".repeat(10_000);
        let err = validate_user_agent(&agent).expect_err("too long");
        let message = Status::from(err).message().to_owned();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("(10000 characters)"), "{message}");
    }
}
