//! The `# HELP` text of every series Gizzard emits. A server calls [`describe`] once, after
//! installing its recorder; the series themselves are emitted where they are measured.

use crate::{scheduler::queue, shards::health};

/// Describes every Gizzard series to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        health::FAILURES_METRIC,
        "Reads and writes a replica failed (unreachable or past its deadline), by shard"
    );
    describe_counter!(
        health::HEDGES_METRIC,
        "Reads and writes that stopped waiting for a replica at its hedge, by shard"
    );
    describe_gauge!(
        health::SUSPECT_METRIC,
        "1 while a replica is marked suspect (read last, written through the retry queue)"
    );
    describe_gauge!(
        "gizzard_routing_lease_valid",
        "1 while the routing lease holds (writes are acknowledged), 0 once it lapsed"
    );
    describe_gauge!(
        "gizzard_routing_confirmed_age_seconds",
        Unit::Seconds,
        "Time since the routing was last confirmed with the nameserver"
    );
    describe_gauge!(
        "gizzard_routing_version",
        "Topology version this server routes with"
    );
    describe_counter!(
        "gizzard_unconfirmed_routes_total",
        "Reads and writes routed while the routing lease had lapsed"
    );
    describe_counter!(
        "gizzard_anti_entropy_rows_compared_total",
        "Rows anti-entropy sweeps compared"
    );
    describe_counter!(
        "gizzard_anti_entropy_keys_repaired_total",
        "Keys anti-entropy sweeps repaired"
    );
    describe_gauge!(
        "gizzard_anti_entropy_sweep_age_seconds",
        Unit::Seconds,
        "Time since the last full anti-entropy sweep of each replica pair"
    );
    describe_gauge!(
        queue::DEPTH_METRIC,
        "Jobs in the queue by priority and state, the whole queue's (aggregate with max)"
    );
    describe_gauge!(
        queue::DEPTH_COUNTED_METRIC,
        Unit::Seconds,
        "When gizzard_queue_jobs was last counted, Unix time; it is stale when this is old"
    );
    describe_counter!("gizzard_jobs_run_total", "Job runs by job type");
    describe_counter!(
        "gizzard_jobs_succeeded_total",
        "Job runs that succeeded, by job type"
    );
    describe_counter!(
        "gizzard_jobs_failed_total",
        "Job runs that failed (retried later or parked), by job type"
    );
    describe_counter!(
        "gizzard_jobs_parked_total",
        "Jobs parked as bad after too many failures, by job type"
    );
}
