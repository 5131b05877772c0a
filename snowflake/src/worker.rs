//! [`IdWorker`]: issues strictly increasing ids as one (datacenter, worker) pair.
//!
//! The worker holds a [`Grant`] to issue ids: static for a configured worker id, or renewed by
//! the lease keeper when worker ids are leased. The grant bounds how long ids may be issued
//! (`valid_until`, the lease's local deadline) and how late their timestamps may be
//! (`ceiling_ms`, the time the lease table has recorded as reserved), so a successor that reads
//! the lease table can never issue an id this worker already issued.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use crate::{
    clock::Clock,
    id::{EPOCH_MS, MAX_SEQUENCE, MAX_TIMESTAMP_MS, compose_unchecked},
};

/// The default backward clock step that is waited out rather than refused.
pub const DEFAULT_CLOCK_TOLERANCE_MS: u64 = 5;

/// Permission to issue ids as one (datacenter, worker) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub datacenter_id: u8,
    pub worker_id: u8,
    /// When the lease behind the grant runs out; `None` for static worker ids.
    pub valid_until: Option<Instant>,
    /// The latest timestamp ids may carry, in ms since the Unix epoch.
    pub ceiling_ms: u64,
}

impl Grant {
    /// Returns a grant that never expires, for a statically configured worker id.
    pub fn fixed(datacenter_id: u8, worker_id: u8) -> Self {
        Self {
            datacenter_id,
            worker_id,
            valid_until: None,
            ceiling_ms: u64::MAX,
        }
    }

    fn same_pair(&self, other: &Grant) -> bool {
        (self.datacenter_id, self.worker_id) == (other.datacenter_id, other.worker_id)
    }
}

/// Why the worker refused to issue ids.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdError {
    #[error("no worker id is held: the worker-id lease has not been acquired")]
    NoLease,
    #[error("the worker-id lease expired without renewal; ids resume once it is renewed")]
    LeaseExpired,
    #[error(
        "clock moved backwards by {behind_ms} ms (tolerance {tolerance_ms} ms): \
         refusing ids until the clock passes {last_ms} ms"
    )]
    ClockBackwards {
        behind_ms: u64,
        tolerance_ms: u64,
        last_ms: u64,
    },
    #[error(
        "clock is {ahead_ms} ms past the time reserved in the lease table; \
         ids resume at the next lease renewal"
    )]
    PastReservation { ahead_ms: u64 },
    #[error("clock reads {0} ms since the Unix epoch, outside the range ids can carry")]
    ClockOutOfRange(u64),
}

/// What the worker last issued.
#[derive(Debug)]
struct State {
    grant: Option<Grant>,
    last_ms: u64,
    sequence: u16,
}

/// Issues ids; safe to share between threads. Each call takes one lock, so a batch is
/// contiguous and ids from one worker strictly increase in the order calls take the lock.
pub struct IdWorker {
    clock: Arc<dyn Clock>,
    tolerance_ms: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for IdWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdWorker")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl IdWorker {
    /// Returns a worker that issues nothing until it is granted a worker id.
    pub fn new(clock: Arc<dyn Clock>, tolerance_ms: u64) -> Self {
        let state = State {
            grant: None,
            last_ms: 0,
            sequence: 0,
        };
        Self {
            clock,
            tolerance_ms,
            state: Mutex::new(state),
        }
    }

    /// Returns a worker with a static worker id.
    pub fn fixed(
        clock: Arc<dyn Clock>,
        tolerance_ms: u64,
        datacenter_id: u8,
        worker_id: u8,
    ) -> Self {
        let worker = Self::new(clock, tolerance_ms);
        worker.grant(Grant::fixed(datacenter_id, worker_id), 0);
        worker
    }

    /// Returns the clock the worker reads.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written (plain stores).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs or renews a grant. `floor_ms` is the latest time any earlier holder of the
    /// pair may have issued at: every later id carries a later time.
    pub fn grant(&self, grant: Grant, floor_ms: u64) {
        let mut state = self.lock();
        let same_pair = state.grant.is_some_and(|g| g.same_pair(&grant));
        if floor_ms >= state.last_ms || !same_pair {
            // Exhausting the sequence makes the next id move to a later millisecond, so it
            // is above the floor and above this worker's own earlier ids under another pair.
            state.last_ms = state.last_ms.max(floor_ms);
            state.sequence = MAX_SEQUENCE;
        }
        state.grant = Some(grant);
    }

    /// Takes the grant away; returns it and the time of the last id issued under it.
    pub fn revoke(&self) -> Option<(Grant, u64)> {
        let mut state = self.lock();
        let last_ms = state.last_ms;
        state.grant.take().map(|grant| (grant, last_ms))
    }

    /// Returns the grant in force, if any.
    pub fn current_grant(&self) -> Option<Grant> {
        self.lock().grant
    }

    /// Returns one id.
    pub fn next_id(&self) -> Result<u64, IdError> {
        let mut ids = Vec::with_capacity(1);
        self.next_ids(1, &mut ids)?;
        Ok(ids[0])
    }

    /// Appends `count` strictly increasing ids to `out`. On error, `out` may hold part of the
    /// batch; those ids are spent and will not be issued again.
    pub fn next_ids(&self, count: usize, out: &mut Vec<u64>) -> Result<(), IdError> {
        out.reserve(count);
        let mut state = self.lock();
        let grant = state.grant.ok_or(IdError::NoLease)?;
        if grant
            .valid_until
            .is_some_and(|until| Instant::now() >= until)
        {
            return Err(IdError::LeaseExpired);
        }
        let mut remaining = count;
        while remaining > 0 {
            let now = self.clock.now_ms();
            if now < state.last_ms {
                let behind_ms = state.last_ms - now;
                if behind_ms > self.tolerance_ms {
                    let tolerance_ms = self.tolerance_ms;
                    return Err(IdError::ClockBackwards {
                        behind_ms,
                        tolerance_ms,
                        last_ms: state.last_ms,
                    });
                }
                self.clock.wait_until(state.last_ms);
                continue;
            }
            if now > grant.ceiling_ms {
                return Err(IdError::PastReservation {
                    ahead_ms: now - grant.ceiling_ms,
                });
            }
            if !(EPOCH_MS..=MAX_TIMESTAMP_MS).contains(&now) {
                return Err(IdError::ClockOutOfRange(now));
            }
            let first = if now > state.last_ms {
                0
            } else if state.sequence < MAX_SEQUENCE {
                state.sequence + 1
            } else {
                self.clock.wait_until(now + 1);
                continue;
            };
            // Issue as much of the batch as this millisecond still holds in one tight loop.
            let take = remaining.min(usize::from(MAX_SEQUENCE - first) + 1);
            let last = first + (take - 1) as u16;
            let base = compose_unchecked(now, grant.datacenter_id, grant.worker_id, 0);
            out.extend((first..=last).map(|seq| base | u64::from(seq)));
            state.last_ms = now;
            state.sequence = last;
            remaining -= take;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, time::Duration};

    use super::*;
    use crate::{
        clock::{ManualClock, SystemClock},
        id::IdParts,
    };

    const T: u64 = 1_700_000_000_000;

    fn manual(now_ms: u64) -> (Arc<ManualClock>, IdWorker) {
        let clock = Arc::new(ManualClock::new(now_ms));
        let worker = IdWorker::fixed(clock.clone(), DEFAULT_CLOCK_TOLERANCE_MS, 3, 7);
        (clock, worker)
    }

    fn time_of(id: u64) -> u64 {
        IdParts::decompose(id).expect("valid id").timestamp_ms
    }

    #[test]
    fn ids_carry_the_workers_identity_and_time() {
        let (_, worker) = manual(T);
        let parts = IdParts::decompose(worker.next_id().expect("id")).expect("valid id");
        assert_eq!(
            parts,
            IdParts {
                timestamp_ms: T,
                datacenter_id: 3,
                worker_id: 7,
                sequence: 0
            }
        );
    }

    #[test]
    fn ids_strictly_increase_across_threads() {
        let worker = Arc::new(IdWorker::fixed(Arc::new(SystemClock::default()), 5, 1, 1));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let worker = worker.clone();
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..20_000 {
                        // Mix single ids and batches, as gRPC callers do.
                        if (i + t) % 10 == 0 {
                            worker.next_ids(37, &mut mine).expect("batch");
                        } else {
                            mine.push(worker.next_id().expect("id"));
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            let ids = thread.join().expect("thread ran");
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "one caller's ids must increase"
            );
            for id in ids {
                assert!(all.insert(id), "id {id} issued twice");
            }
        }
        assert_eq!(all.len(), 8 * (18_000 + 2_000 * 37));
    }

    #[test]
    fn sequence_exhaustion_waits_for_the_next_millisecond() {
        let (clock, worker) = manual(T);
        let mut ids = Vec::new();
        worker.next_ids(4096, &mut ids).expect("a full millisecond");
        assert!(ids.iter().all(|&id| time_of(id) == T));
        assert_eq!(clock.waited_ms(), 0);
        let next = worker.next_id().expect("id after the wait");
        assert_eq!(time_of(next), T + 1);
        assert_eq!(clock.waited_ms(), 1);
        assert!(next > ids[4095]);
    }

    #[test]
    fn a_batch_spans_milliseconds_without_gaps_or_repeats() {
        let (clock, worker) = manual(T);
        let mut ids = Vec::new();
        worker.next_ids(10_000, &mut ids).expect("batch");
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(time_of(ids[9_999]), T + 2);
        assert_eq!(clock.waited_ms(), 2);
    }

    #[test]
    fn a_small_backward_step_is_waited_out() {
        let (clock, worker) = manual(T);
        let before = worker.next_id().expect("id");
        clock.set(T - 3);
        let after = worker
            .next_id()
            .expect("a 3 ms step is within the 5 ms tolerance");
        assert!(after > before);
        assert_eq!(clock.waited_ms(), 3);
    }

    #[test]
    fn a_large_backward_step_is_refused_until_the_clock_passes() {
        let (clock, worker) = manual(T);
        let before = worker.next_id().expect("id");
        clock.set(T - 10);
        let err = worker
            .next_id()
            .expect_err("a 10 ms step is over the tolerance");
        assert_eq!(
            err,
            IdError::ClockBackwards {
                behind_ms: 10,
                tolerance_ms: 5,
                last_ms: T
            }
        );
        assert!(err.to_string().contains("backwards by 10 ms"), "{err}");
        clock.set(T - 6);
        assert!(worker.next_id().is_err(), "still 6 ms behind");
        clock.set(T + 1);
        let after = worker.next_id().expect("clock passed the last id's time");
        assert!(after > before);
        assert_eq!(clock.waited_ms(), 0, "refusals never wait");
    }

    #[test]
    fn nothing_is_issued_without_a_valid_grant() {
        let clock = Arc::new(ManualClock::new(T));
        let worker = IdWorker::new(clock.clone(), 5);
        assert_eq!(worker.next_id(), Err(IdError::NoLease));

        let expired = Instant::now() - Duration::from_millis(1);
        let grant = Grant {
            datacenter_id: 0,
            worker_id: 1,
            valid_until: Some(expired),
            ceiling_ms: T,
        };
        worker.grant(grant, 0);
        assert_eq!(worker.next_id(), Err(IdError::LeaseExpired));

        let valid = Instant::now() + Duration::from_secs(60);
        worker.grant(
            Grant {
                valid_until: Some(valid),
                ..grant
            },
            0,
        );
        let id = worker.next_id().expect("valid grant");
        clock.set(T + 50);
        assert_eq!(
            worker.next_id(),
            Err(IdError::PastReservation { ahead_ms: 50 })
        );

        let (revoked, last_ms) = worker.revoke().expect("a grant was held");
        assert_eq!((revoked.worker_id, last_ms), (1, T));
        assert_eq!(worker.next_id(), Err(IdError::NoLease));
        assert!(id > 0);
    }

    #[test]
    fn a_floor_from_the_lease_table_is_never_undercut() {
        let clock = Arc::new(ManualClock::new(T));
        let worker = IdWorker::new(clock.clone(), 5);
        // An earlier holder of the pair reserved up to T + 1000 before it crashed.
        worker.grant(Grant::fixed(0, 1), T + 1_000);
        assert!(matches!(
            worker.next_id(),
            Err(IdError::ClockBackwards {
                behind_ms: 1_000,
                ..
            })
        ));
        clock.set(T + 1_000);
        let id = worker.next_id().expect("clock reached the floor");
        assert_eq!(
            time_of(id),
            T + 1_001,
            "the floor's millisecond itself may be spent"
        );
    }

    #[test]
    fn changing_pairs_keeps_ids_increasing() {
        let (_, worker) = manual(T);
        let first = worker.next_id().expect("id");
        worker.grant(Grant::fixed(0, 0), 0);
        let second = worker.next_id().expect("id under the new pair");
        assert!(
            second > first,
            "a lower worker id in the same millisecond would go backwards"
        );
    }
}
