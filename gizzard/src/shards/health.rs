//! Failure accrual per leaf: after a few consecutive failures a leaf is "suspect" for a
//! cool-down and reads try it last, so a dead replica costs one timeout per cool-down instead
//! of one per read. Any success clears it.
//!
//! Every failure also counts in `gizzard_leaf_failures_total{shard}`, so an operator sees
//! which replica is failing; the label is the leaf's shard id, bounded by the topology.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::nameserver::ShardId;

/// Consecutive failures after which a leaf becomes suspect.
pub const FAILURE_THRESHOLD: u32 = 3;
/// How long a suspect leaf stays at the back of the read order.
pub const COOL_DOWN: Duration = Duration::from_secs(5);

/// The counter of failed operations on leaves, by shard id.
pub const FAILURES_METRIC: &str = "gizzard_leaf_failures_total";

/// The recent health of one leaf, shared by every tree that contains it.
#[derive(Debug)]
pub struct LeafHealth {
    base: Instant,
    failures: AtomicU32,
    /// Milliseconds after `base` until which the leaf is suspect.
    suspect_until_ms: AtomicU64,
    /// Counts every failure, labelled with the leaf's shard id; a no-op when unnamed.
    failed_total: metrics::Counter,
}

impl Default for LeafHealth {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            failures: AtomicU32::new(0),
            suspect_until_ms: AtomicU64::new(0),
            failed_total: metrics::Counter::noop(),
        }
    }
}

impl LeafHealth {
    /// Returns a healthy record for leaf `shard`, whose failures count in the metrics.
    pub fn new(shard: &ShardId) -> Self {
        Self {
            failed_total: metrics::counter!(FAILURES_METRIC, "shard" => shard.to_string()),
            ..Self::default()
        }
    }

    /// Records a success: the leaf is healthy again.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.suspect_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure; the threshold-th in a row makes the leaf suspect for the cool-down.
    pub fn failed(&self) {
        self.failed_total.increment(1);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURE_THRESHOLD {
            let until = self.base.elapsed() + COOL_DOWN;
            self.suspect_until_ms
                .store(until.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Returns whether the leaf failed repeatedly within the cool-down.
    pub fn is_suspect(&self) -> bool {
        let until = self.suspect_until_ms.load(Ordering::Relaxed);
        until != 0 && (self.base.elapsed().as_millis() as u64) < until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_make_a_leaf_suspect_and_a_success_clears_it() {
        let health = LeafHealth::default();
        for _ in 1..FAILURE_THRESHOLD {
            health.failed();
            assert!(!health.is_suspect(), "below the threshold");
        }
        health.failed();
        assert!(health.is_suspect());
        health.succeeded();
        assert!(!health.is_suspect());
    }
}
