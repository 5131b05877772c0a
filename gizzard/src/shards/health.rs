//! The recent health of each leaf: how fast it answers, from which its hedge delay is derived,
//! and whether it is suspect, so a dead or hung replica is read last and written through the
//! retry queue instead of costing every caller a deadline.
//!
//! - **Latency.** The last [`WINDOW`] answers of each kind ([`Op`]) are kept: writes as their
//!   callers waited for them (queueing behind the leaf's statement included), reads as a read
//!   of the leaf took. Their 99th percentile is estimated again every few answers.
//! - **Hedge.** A caller that already has its answer elsewhere (a write applied on another
//!   replica, a read started on the next one) waits for this leaf only [`HEDGE_FACTOR`] times
//!   that p99, at least [`MIN_HEDGE`] (a fast leaf's p99 is noise) and at most [`MAX_HEDGE`],
//!   and never past the caller's own deadline. A leaf with too few answers to estimate from
//!   gets [`MAX_HEDGE`].
//! - **Stalled.** A leaf with operations in flight that has answered nothing for longer than
//!   its hedge is stalled, and suspect at once: a frozen host never answers, and waiting for
//!   its deadlines to fail three times would stall every caller for that long.
//! - **Suspect.** Stalled, or marked: by [`FAILURE_THRESHOLD`] failures in a row, or by a caller
//!   that gave up on the leaf at its hedge while it owed answers and had given none since the
//!   caller started. A mark lasts until the leaf next answers with a success, not for a fixed
//!   time, so its end does not send every caller back to a leaf that may still hang. Writes
//!   skip a suspect leaf (it gets a retry job) and reads try it last. It is probed instead:
//!   retries from the queue try it one at a time ([`LeafHealth::try_probe`]; the others wait
//!   for that probe, [`LeafHealth::recovered`]), and once per [`COOL_DOWN`] one live read or
//!   write may try it ([`LeafHealth::admit`]).
//!
//! Every failure counts in `gizzard_leaf_failures_total{shard}` and every caller that stopped
//! waiting at the hedge in `gizzard_leaf_hedges_total{shard}`; `gizzard_leaf_suspect{shard}` is
//! 1 while a leaf is marked. The label is the leaf's shard id, bounded by the topology.
//!
//! Times are milliseconds since the record was made, in atomics: every read and write consults
//! the record, so the only locks are the latency window's, briefly, once per answer, and the
//! notifier's on a success.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::nameserver::ShardId;

/// Consecutive failures after which a leaf becomes suspect.
pub const FAILURE_THRESHOLD: u32 = 3;
/// How often one live read or write may probe a suspect leaf.
pub const COOL_DOWN: Duration = Duration::from_secs(5);
/// How often a retry from the queue may probe a suspect leaf (one at a time in any case).
pub const QUEUE_PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Answers of each kind kept to estimate a leaf's latency from.
pub const WINDOW: usize = 512;
/// Answers needed before the p99 is trusted.
pub const MIN_SAMPLES: usize = 32;
/// The hedge is this many times the leaf's recent p99 ...
pub const HEDGE_FACTOR: u32 = 3;
/// ... but at least this: below it, a busy machine's scheduling noise would trigger hedges.
pub const MIN_HEDGE: Duration = Duration::from_millis(50);
/// ... and at most this, whatever the leaf's history: a replica that slow costs a caller
/// that much once, and it is suspect from then on.
pub const MAX_HEDGE: Duration = Duration::from_millis(500);
/// The p99 is estimated again after this many new answers.
const REESTIMATE_EVERY: usize = 16;

/// The counter of failed operations on leaves, by shard id.
pub const FAILURES_METRIC: &str = "gizzard_leaf_failures_total";
/// The counter of callers that stopped waiting for a leaf at its hedge, by shard id.
pub const HEDGES_METRIC: &str = "gizzard_leaf_hedges_total";
/// The gauge that is 1 while a leaf is marked suspect, by shard id.
pub const SUSPECT_METRIC: &str = "gizzard_leaf_suspect";

/// Whether a live read or write goes to a leaf ([`LeafHealth::admit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// The leaf is healthy.
    Healthy,
    /// The leaf is suspect, and this caller is the one that probes it.
    Probe,
    /// The leaf is suspect: a write goes to the retry queue, a read tries it last.
    Skip,
}

/// The kinds of operation whose latencies are kept apart: reads do not commit, so their
/// latency says little about a write's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// The recent health of one leaf, shared by every tree that contains it.
#[derive(Debug)]
pub struct LeafHealth {
    /// The leaf's shard id, for logs; empty when unnamed.
    shard: String,
    base: Instant,
    failures: AtomicU32,
    /// Marked suspect (until the next success).
    marked: AtomicBool,
    /// Not before this may a live read or write probe the marked leaf.
    next_probe_ms: AtomicU64,
    /// A retry from the queue is probing the leaf.
    queue_probing: AtomicBool,
    /// Not before this may the next retry probe the leaf.
    next_queue_probe_ms: AtomicU64,
    /// Operations sent to the leaf and not yet answered or abandoned.
    in_flight: AtomicU32,
    /// When `in_flight` last rose from zero.
    busy_since_ms: AtomicU64,
    /// When the leaf last answered anything (success or an error of its own); 0: never.
    last_answer_ms: AtomicU64,
    recovered: Notify,
    reads: Latencies,
    writes: Latencies,
    failed_total: metrics::Counter,
    hedged_total: metrics::Counter,
    suspect_gauge: metrics::Gauge,
}

impl Default for LeafHealth {
    fn default() -> Self {
        Self {
            shard: String::new(),
            base: Instant::now(),
            failures: AtomicU32::new(0),
            marked: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
            queue_probing: AtomicBool::new(false),
            next_queue_probe_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            busy_since_ms: AtomicU64::new(0),
            last_answer_ms: AtomicU64::new(0),
            recovered: Notify::new(),
            reads: Latencies::default(),
            writes: Latencies::default(),
            failed_total: metrics::Counter::noop(),
            hedged_total: metrics::Counter::noop(),
            suspect_gauge: metrics::Gauge::noop(),
        }
    }
}

impl LeafHealth {
    /// Returns a healthy record for leaf `shard`, which counts in the metrics.
    pub fn new(shard: &ShardId) -> Self {
        let shard = shard.to_string();
        Self {
            failed_total: metrics::counter!(FAILURES_METRIC, "shard" => shard.clone()),
            hedged_total: metrics::counter!(HEDGES_METRIC, "shard" => shard.clone()),
            suspect_gauge: metrics::gauge!(SUSPECT_METRIC, "shard" => shard.clone()),
            shard,
            ..Self::default()
        }
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Returns `at` in milliseconds since the record was made, plus one: 0 stands for never.
    fn ms_at(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.base).as_millis();
        u64::try_from(ms).map_or(u64::MAX, |ms| ms.saturating_add(1))
    }

    /// Records the latency of an answered operation of kind `op`.
    pub fn record(&self, op: Op, latency: Duration) {
        match op {
            Op::Read => self.reads.record(latency),
            Op::Write => self.writes.record(latency),
        }
    }

    /// Returns how long a caller that has its answer elsewhere waits for this leaf's answer to
    /// an operation of kind `op`, counted from when the caller started: [`HEDGE_FACTOR`] times
    /// the recent p99 within [`MIN_HEDGE`]..=[`MAX_HEDGE`], and at most `deadline`.
    pub fn hedge(&self, op: Op, deadline: Duration) -> Duration {
        let p99 = match op {
            Op::Read => self.reads.p99(),
            Op::Write => self.writes.p99(),
        };
        hedge_for(p99, deadline)
    }

    /// Returns how long the leaf may owe answers before it counts as stalled: the longer
    /// hedge of the kinds it has a history of (a leaf that only takes writes is judged by its
    /// writes), [`MAX_HEDGE`] without any.
    fn stall_after(&self) -> Duration {
        [self.reads.p99(), self.writes.p99()]
            .into_iter()
            .flatten()
            .map(|p99| hedge_for(Some(p99), MAX_HEDGE))
            .max()
            .unwrap_or(MAX_HEDGE)
    }

    /// Counts an operation in flight on the leaf until the returned guard is answered or
    /// dropped (abandoned).
    pub fn start(&self) -> InFlight<'_> {
        self.start_at(self.now_ms())
    }

    fn start_at(&self, now_ms: u64) -> InFlight<'_> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.busy_since_ms.store(now_ms, Ordering::Release);
        }
        InFlight { health: self }
    }

    fn answered_at(&self, now_ms: u64) {
        self.last_answer_ms.fetch_max(now_ms, Ordering::AcqRel);
    }

    /// Records a success: the leaf is healthy again, and retries waiting for it go ahead.
    pub fn succeeded(&self) {
        self.answered_at(self.now_ms());
        self.failures.store(0, Ordering::Relaxed);
        if self.marked.swap(false, Ordering::AcqRel) {
            self.suspect_gauge.set(0.0);
            tracing::info!(shard = %self.shard, "replica answers again; no longer suspect");
        }
        self.recovered.notify_waiters();
    }

    /// Records a failure (unreachable, or past a deadline); the [`FAILURE_THRESHOLD`]-th in a
    /// row marks the leaf suspect.
    pub fn failed(&self) {
        self.failed_at(self.now_ms());
    }

    fn failed_at(&self, now_ms: u64) {
        self.failed_total.increment(1);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURE_THRESHOLD {
            self.mark_at(now_ms, "failed repeatedly");
        }
    }

    fn mark_at(&self, now_ms: u64, why: &str) {
        // The next live probe waits a cool-down from the latest reason to suspect the leaf.
        self.next_probe_ms
            .store(now_ms + millis(COOL_DOWN), Ordering::Release);
        if !self.marked.swap(true, Ordering::AcqRel) {
            self.suspect_gauge.set(1.0);
            tracing::warn!(shard = %self.shard, why,
                "replica suspect: read last and written through the retry queue");
        }
    }

    /// Records that a caller who started at `since` stopped waiting for the leaf at its hedge,
    /// and marks the leaf suspect if it is stalled: operations are in flight and it has
    /// answered nothing since then, a whole hedge. Returns whether the leaf is marked now.
    pub fn overdue(&self, since: Instant) -> bool {
        self.overdue_at(self.ms_at(since), self.now_ms())
    }

    fn overdue_at(&self, since_ms: u64, now_ms: u64) -> bool {
        self.hedged_total.increment(1);
        if self.in_flight.load(Ordering::Acquire) > 0
            && self.last_answer_ms.load(Ordering::Acquire) < since_ms
        {
            self.mark_at(now_ms, "no answer within its hedge");
        }
        self.marked.load(Ordering::Acquire)
    }

    /// Returns whether operations are in flight and none was answered for longer than the
    /// leaf's hedge (counted from the last answer, or from when the oldest of them was sent
    /// if that is later).
    fn stalled_at(&self, now_ms: u64) -> bool {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return false;
        }
        let owed_since = self
            .busy_since_ms
            .load(Ordering::Acquire)
            .max(self.last_answer_ms.load(Ordering::Acquire));
        now_ms.saturating_sub(owed_since) > millis(self.stall_after())
    }

    /// Returns whether the leaf is suspect: marked, or stalled right now.
    pub fn is_suspect(&self) -> bool {
        self.is_suspect_at(self.now_ms())
    }

    fn is_suspect_at(&self, now_ms: u64) -> bool {
        self.marked.load(Ordering::Acquire) || self.stalled_at(now_ms)
    }

    /// Returns whether a live read or write tries the leaf now: yes when it is not suspect;
    /// as the probe when it is marked, no retry is probing it, a cool-down has passed since
    /// the last probe or mark, and this caller got there first; otherwise not.
    pub fn admit(&self) -> Admit {
        self.admit_at(self.now_ms())
    }

    fn admit_at(&self, now_ms: u64) -> Admit {
        if !self.is_suspect_at(now_ms) {
            return Admit::Healthy;
        }
        // A stalled leaf still owes answers: they will tell, a probe would only wait too.
        if self.stalled_at(now_ms) || self.queue_probing.load(Ordering::Acquire) {
            return Admit::Skip;
        }
        let due = self.next_probe_ms.load(Ordering::Acquire);
        let won = now_ms >= due
            && self
                .next_probe_ms
                .compare_exchange(
                    due,
                    now_ms + millis(COOL_DOWN),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if won { Admit::Probe } else { Admit::Skip }
    }

    /// Returns the probe slot of the retry queue: a retry holding it tries the suspect leaf,
    /// while other retries wait for its outcome ([`LeafHealth::recovered`]) instead of piling
    /// statements on a host that may hang. `None` while another retry holds it, or when one
    /// did within [`QUEUE_PROBE_INTERVAL`].
    pub fn try_probe(&self) -> Option<Probe<'_>> {
        self.try_probe_at(self.now_ms())
    }

    fn try_probe_at(&self, now_ms: u64) -> Option<Probe<'_>> {
        if now_ms < self.next_queue_probe_ms.load(Ordering::Acquire)
            || self.queue_probing.swap(true, Ordering::AcqRel)
        {
            return None;
        }
        self.next_queue_probe_ms
            .store(now_ms + millis(QUEUE_PROBE_INTERVAL), Ordering::Release);
        Some(Probe { health: self })
    }

    /// Returns once the leaf is not suspect: at once if it is not, else at its next success.
    pub async fn recovered(&self) {
        let notified = self.recovered.notified();
        tokio::pin!(notified);
        // Registered before the check, so a success between the two is not missed.
        notified.as_mut().enable();
        if !self.is_suspect() {
            return;
        }
        notified.await;
    }
}

/// An operation in flight on a leaf (see [`LeafHealth::start`]).
#[derive(Debug)]
pub struct InFlight<'a> {
    health: &'a LeafHealth,
}

impl InFlight<'_> {
    /// Records that the leaf answered (with a success or an error of its own, not a deadline
    /// or a lost connection).
    pub fn answered(self) {
        self.health.answered_at(self.health.now_ms());
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The queue's probe slot of a leaf (see [`LeafHealth::try_probe`]), given back on drop.
#[derive(Debug)]
pub struct Probe<'a> {
    health: &'a LeafHealth,
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.health.queue_probing.store(false, Ordering::Release);
    }
}

/// Returns the hedge for a p99 (`None`: no history) and a caller's deadline.
fn hedge_for(p99: Option<Duration>, deadline: Duration) -> Duration {
    let hedge = p99.map_or(MAX_HEDGE, |p99| {
        p99.saturating_mul(HEDGE_FACTOR).clamp(MIN_HEDGE, MAX_HEDGE)
    });
    hedge.min(deadline)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The latest answers of one kind, in microseconds, and their p99 as last estimated.
#[derive(Debug, Default)]
struct Latencies {
    window: Mutex<Window>,
    /// The last estimate in microseconds plus one; 0 while there is none.
    p99_us: AtomicU64,
}

#[derive(Debug)]
struct Window {
    samples: Box<[u32; WINDOW]>,
    next: usize,
    len: usize,
    since_estimate: usize,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            samples: Box::new([0; WINDOW]),
            next: 0,
            len: 0,
            since_estimate: 0,
        }
    }
}

impl Latencies {
    fn record(&self, latency: Duration) {
        // Longer than any hedge is all the estimate needs to know: a statement that hung
        // through a freeze must not hold the hedge at its ceiling for a whole window.
        let us = u32::try_from(latency.min(MAX_HEDGE).as_micros()).unwrap_or(u32::MAX);
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let next = window.next;
        window.samples[next] = us;
        window.next = (next + 1) % WINDOW;
        window.len = (window.len + 1).min(WINDOW);
        window.since_estimate += 1;
        if window.len >= MIN_SAMPLES
            && (window.since_estimate >= REESTIMATE_EVERY || self.p99().is_none())
        {
            window.since_estimate = 0;
            let mut sorted = window.samples[..window.len].to_vec();
            let rank = (sorted.len() * 99).div_ceil(100) - 1;
            let (_, p99, _) = sorted.select_nth_unstable(rank);
            self.p99_us.store(u64::from(*p99) + 1, Ordering::Release);
        }
    }

    fn p99(&self) -> Option<Duration> {
        match self.p99_us.load(Ordering::Acquire) {
            0 => None,
            us => Some(Duration::from_micros(us - 1)),
        }
    }
}

#[cfg(test)]
impl LeafHealth {
    /// Returns a record marked suspect more than a cool-down ago: a probe is due now.
    pub(crate) fn suspect_for_a_cool_down() -> Self {
        let mut health = Self::default();
        if let Some(base) = health.base.checked_sub(COOL_DOWN * 2) {
            health.base = base;
        }
        (0..FAILURE_THRESHOLD).for_each(|_| health.failed_at(1));
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(2);

    fn with_writes(latency: Duration, n: usize) -> LeafHealth {
        let health = LeafHealth::default();
        (0..n).for_each(|_| health.record(Op::Write, latency));
        health
    }

    #[test]
    fn the_hedge_is_a_few_times_the_recent_p99_within_its_bounds() {
        let health = LeafHealth::default();
        assert_eq!(
            health.hedge(Op::Write, DEADLINE),
            MAX_HEDGE,
            "no history: the ceiling"
        );
        // 99 answers of 20 ms and one of 90 ms in every hundred: the p99 is 20 ms.
        for i in 0..WINDOW {
            let ms = if i % 100 == 99 { 90 } else { 20 };
            health.record(Op::Write, Duration::from_millis(ms));
        }
        assert_eq!(
            health.hedge(Op::Write, DEADLINE),
            Duration::from_millis(20) * HEDGE_FACTOR
        );
        assert_eq!(
            health.hedge(Op::Read, DEADLINE),
            MAX_HEDGE,
            "reads keep their own history"
        );
        // A slower tail moves it: 2 in every hundred at 90 ms put the p99 there.
        for i in 0..WINDOW {
            let ms = if i % 50 == 49 { 90 } else { 20 };
            health.record(Op::Write, Duration::from_millis(ms));
        }
        assert_eq!(
            health.hedge(Op::Write, DEADLINE),
            Duration::from_millis(90) * HEDGE_FACTOR
        );

        let fast = with_writes(Duration::from_micros(300), WINDOW);
        assert_eq!(fast.hedge(Op::Write, DEADLINE), MIN_HEDGE, "the floor");
        let slow = with_writes(Duration::from_secs(1), WINDOW);
        assert_eq!(slow.hedge(Op::Write, DEADLINE), MAX_HEDGE, "the ceiling");
        let short = Duration::from_millis(40);
        assert_eq!(
            slow.hedge(Op::Write, short),
            short,
            "never past the deadline"
        );
        assert_eq!(fast.hedge(Op::Write, short), short);
    }

    #[test]
    fn the_hedge_follows_the_recent_window_only() {
        let health = with_writes(Duration::from_millis(200), WINDOW);
        assert_eq!(health.hedge(Op::Write, DEADLINE), MAX_HEDGE);
        // A full window of fast answers later, the slow past is forgotten.
        (0..WINDOW).for_each(|_| health.record(Op::Write, Duration::from_millis(5)));
        assert_eq!(health.hedge(Op::Write, DEADLINE), MIN_HEDGE);
        // Too few answers are not an estimate.
        let young = with_writes(Duration::from_millis(5), MIN_SAMPLES - 1);
        assert_eq!(young.hedge(Op::Write, DEADLINE), MAX_HEDGE);
    }

    #[test]
    fn repeated_failures_mark_a_leaf_suspect_until_it_next_succeeds() {
        let health = LeafHealth::default();
        for _ in 1..FAILURE_THRESHOLD {
            health.failed_at(10);
            assert!(!health.is_suspect_at(10), "below the threshold");
        }
        health.failed_at(10);
        assert!(health.is_suspect_at(10));
        // No fixed cool-down ends it: long after, the leaf is still suspect.
        assert!(health.is_suspect_at(10 + 10 * millis(COOL_DOWN)));
        health.succeeded();
        assert!(!health.is_suspect());
        // The count starts again after a success.
        health.failed_at(20);
        assert!(!health.is_suspect_at(20));
    }

    #[test]
    fn a_leaf_owing_answers_past_its_hedge_is_suspect_at_once() {
        let health = with_writes(Duration::from_millis(20), WINDOW);
        let hedge = millis(health.hedge(Op::Write, DEADLINE));
        health.answered_at(1_000);
        let op = health.start_at(1_000);
        assert!(!health.is_suspect_at(1_000 + hedge), "within its hedge");
        assert!(
            health.is_suspect_at(1_001 + hedge),
            "no answer past the hedge: stalled, without a single failure"
        );
        // Another answer in the meantime says the host is alive: one slow statement is not
        // a stall.
        health.answered_at(1_000 + hedge);
        assert!(!health.is_suspect_at(1_001 + hedge));
        // Abandoned (dropped unanswered), nothing is owed any more.
        drop(op);
        assert!(!health.is_suspect_at(10_000));
    }

    #[test]
    fn a_caller_giving_up_marks_a_stalled_leaf_and_not_a_slow_one() {
        let health = with_writes(Duration::from_millis(20), WINDOW);
        let hedge = millis(health.hedge(Op::Write, DEADLINE));
        health.answered_at(999);
        // Nothing in flight (the write failed fast, say): nothing owed, not marked.
        assert!(!health.overdue_at(1_000, 1_000 + hedge));
        let op = health.start_at(1_000);
        // Gave up on a write to a leaf that answered others meanwhile: slow, not stalled.
        health.answered_at(1_010);
        assert!(!health.overdue_at(1_000, 1_000 + hedge));
        // A caller that started later heard nothing for its whole hedge: marked, and it stays
        // so after the operations in flight are abandoned.
        assert!(health.overdue_at(1_011, 1_011 + hedge));
        drop(op);
        assert!(health.is_suspect_at(100_000));
        health.succeeded();
        assert!(!health.is_suspect());
    }

    #[test]
    fn one_live_write_per_cool_down_probes_a_marked_leaf() {
        let health = LeafHealth::default();
        assert_eq!(health.admit_at(1), Admit::Healthy);
        (0..FAILURE_THRESHOLD).for_each(|_| health.failed_at(100));
        assert_eq!(health.admit_at(100), Admit::Skip, "marked");
        let due = 100 + millis(COOL_DOWN);
        assert_eq!(health.admit_at(due - 1), Admit::Skip);
        assert_eq!(
            health.admit_at(due),
            Admit::Probe,
            "the first caller after the cool-down probes"
        );
        assert_eq!(health.admit_at(due), Admit::Skip, "and only that one");
        assert_eq!(health.admit_at(due + millis(COOL_DOWN) - 1), Admit::Skip);
        assert_eq!(health.admit_at(due + millis(COOL_DOWN)), Admit::Probe);
        // While a retry probes the leaf, live writes leave it to that retry.
        let later = due + 3 * millis(COOL_DOWN);
        let probe = health.try_probe_at(later);
        assert!(probe.is_some());
        assert_eq!(health.admit_at(later), Admit::Skip);
        drop(probe);
        assert_eq!(health.admit_at(later), Admit::Probe);
        // A stalled leaf is not probed: what it owes will tell.
        let stalled = LeafHealth::default();
        (0..FAILURE_THRESHOLD).for_each(|_| stalled.failed_at(100));
        let _op = stalled.start_at(100);
        assert_eq!(stalled.admit_at(due), Admit::Skip);
    }

    #[test]
    fn retries_probe_a_suspect_leaf_one_at_a_time() {
        let health = LeafHealth::default();
        let interval = millis(QUEUE_PROBE_INTERVAL);
        let probe = health.try_probe_at(1_000).expect("the first retry probes");
        assert!(
            health.try_probe_at(1_000 + 10 * interval).is_none(),
            "one at a time"
        );
        drop(probe);
        assert!(health.try_probe_at(1_001).is_none(), "not again so soon");
        assert!(health.try_probe_at(1_000 + interval).is_some());
    }

    #[tokio::test]
    async fn retries_waiting_on_a_suspect_leaf_go_on_at_its_next_success() {
        let health = std::sync::Arc::new(LeafHealth::default());
        health.recovered().await;
        (0..FAILURE_THRESHOLD).for_each(|_| health.failed());
        let waiting = tokio::spawn({
            let health = health.clone();
            async move { health.recovered().await }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "still suspect");
        health.succeeded();
        waiting.await.expect("woken by the success");
    }
}
