//! The id layout, compatible with Twitter's Snowflake: 1 unused bit, 41 bits of milliseconds
//! since [`EPOCH_MS`], 5 bits datacenter id, 5 bits worker id, 12 bits sequence.

use std::fmt;

/// Twitter's epoch, 2010-11-04T01:42:54.657Z, in milliseconds since the Unix epoch.
pub const EPOCH_MS: u64 = 1_288_834_974_657;
/// Bits of the per-millisecond sequence.
pub const SEQUENCE_BITS: u32 = 12;
/// Bits of the worker id.
pub const WORKER_BITS: u32 = 5;
/// Bits of the datacenter id.
pub const DATACENTER_BITS: u32 = 5;
/// Bits of the timestamp.
pub const TIMESTAMP_BITS: u32 = 41;

/// The largest sequence number within one millisecond (4,095).
pub const MAX_SEQUENCE: u16 = (1 << SEQUENCE_BITS) - 1;
/// The largest worker id (31).
pub const MAX_WORKER_ID: u8 = (1 << WORKER_BITS) - 1;
/// The largest datacenter id (31).
pub const MAX_DATACENTER_ID: u8 = (1 << DATACENTER_BITS) - 1;
/// The latest time an id can carry, in milliseconds since the Unix epoch (year 2080).
pub const MAX_TIMESTAMP_MS: u64 = EPOCH_MS + (1 << TIMESTAMP_BITS) - 1;

const WORKER_SHIFT: u32 = SEQUENCE_BITS;
const DATACENTER_SHIFT: u32 = SEQUENCE_BITS + WORKER_BITS;
const TIMESTAMP_SHIFT: u32 = SEQUENCE_BITS + WORKER_BITS + DATACENTER_BITS;

/// The fields an id is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdParts {
    /// Milliseconds since the Unix epoch (not since [`EPOCH_MS`]).
    pub timestamp_ms: u64,
    pub datacenter_id: u8,
    pub worker_id: u8,
    pub sequence: u16,
}

/// A field out of its range, named in the message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("timestamp {0} ms is outside the id range {EPOCH_MS}..={MAX_TIMESTAMP_MS}")]
    Timestamp(u64),
    #[error("datacenter id {0} is over the maximum {MAX_DATACENTER_ID}")]
    Datacenter(u8),
    #[error("worker id {0} is over the maximum {MAX_WORKER_ID}")]
    Worker(u8),
    #[error("sequence {0} is over the maximum {MAX_SEQUENCE}")]
    Sequence(u16),
    #[error("id {0} has its unused top bit set")]
    TopBit(u64),
}

impl IdParts {
    /// Returns the id made of these parts, or which part is out of range.
    pub fn compose(&self) -> Result<u64, LayoutError> {
        if !(EPOCH_MS..=MAX_TIMESTAMP_MS).contains(&self.timestamp_ms) {
            return Err(LayoutError::Timestamp(self.timestamp_ms));
        }
        if self.datacenter_id > MAX_DATACENTER_ID {
            return Err(LayoutError::Datacenter(self.datacenter_id));
        }
        if self.worker_id > MAX_WORKER_ID {
            return Err(LayoutError::Worker(self.worker_id));
        }
        if self.sequence > MAX_SEQUENCE {
            return Err(LayoutError::Sequence(self.sequence));
        }
        Ok(compose_unchecked(
            self.timestamp_ms,
            self.datacenter_id,
            self.worker_id,
            self.sequence,
        ))
    }

    /// Splits an id into its parts; fails only when the unused top bit is set.
    pub fn decompose(id: u64) -> Result<Self, LayoutError> {
        if id >> 63 != 0 {
            return Err(LayoutError::TopBit(id));
        }
        Ok(Self {
            timestamp_ms: (id >> TIMESTAMP_SHIFT) + EPOCH_MS,
            datacenter_id: ((id >> DATACENTER_SHIFT) & u64::from(MAX_DATACENTER_ID)) as u8,
            worker_id: ((id >> WORKER_SHIFT) & u64::from(MAX_WORKER_ID)) as u8,
            sequence: (id & u64::from(MAX_SEQUENCE)) as u16,
        })
    }
}

/// Composes an id from parts the caller has already range-checked (the worker's hot path).
#[inline]
pub(crate) fn compose_unchecked(timestamp_ms: u64, datacenter: u8, worker: u8, seq: u16) -> u64 {
    ((timestamp_ms - EPOCH_MS) << TIMESTAMP_SHIFT)
        | (u64::from(datacenter) << DATACENTER_SHIFT)
        | (u64::from(worker) << WORKER_SHIFT)
        | u64::from(seq)
}

impl fmt::Display for IdParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = i64::try_from(self.timestamp_ms)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| format!("{} ms", self.timestamp_ms));
        write!(
            f,
            "time {time} ({} ms since the Unix epoch), datacenter {}, worker {}, sequence {}",
            self.timestamp_ms, self.datacenter_id, self.worker_id, self.sequence
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn compose_then_decompose_round_trips(
            timestamp_ms in EPOCH_MS..=MAX_TIMESTAMP_MS,
            datacenter_id in 0..=MAX_DATACENTER_ID,
            worker_id in 0..=MAX_WORKER_ID,
            sequence in 0..=MAX_SEQUENCE,
        ) {
            let parts = IdParts { timestamp_ms, datacenter_id, worker_id, sequence };
            let id = parts.compose().expect("in range");
            prop_assert!(id >> 63 == 0, "top bit must stay clear");
            prop_assert_eq!(IdParts::decompose(id).expect("top bit clear"), parts);
        }

        #[test]
        fn later_time_means_larger_id(
            a in EPOCH_MS..MAX_TIMESTAMP_MS,
            dc in 0..=MAX_DATACENTER_ID, w in 0..=MAX_WORKER_ID, seq in 0..=MAX_SEQUENCE,
            dc2 in 0..=MAX_DATACENTER_ID, w2 in 0..=MAX_WORKER_ID, seq2 in 0..=MAX_SEQUENCE,
        ) {
            let early = IdParts { timestamp_ms: a, datacenter_id: dc, worker_id: w, sequence: seq };
            let late = IdParts { timestamp_ms: a + 1, datacenter_id: dc2, worker_id: w2, sequence: seq2 };
            prop_assert!(early.compose().expect("valid") < late.compose().expect("valid"));
        }

        #[test]
        fn decompose_then_compose_round_trips(id in 0u64..(1 << 63)) {
            let parts = IdParts::decompose(id).expect("top bit clear");
            prop_assert_eq!(parts.compose().expect("decomposed parts are in range"), id);
        }
    }

    #[test]
    fn fields_sit_where_twitter_put_them() {
        // Time at bit 22, datacenter at 17, worker at 12, sequence at 0.
        let parts = IdParts {
            timestamp_ms: EPOCH_MS + 1,
            datacenter_id: 1,
            worker_id: 1,
            sequence: 1,
        };
        assert_eq!(parts.compose(), Ok((1 << 22) | (1 << 17) | (1 << 12) | 1));
        let last = IdParts {
            timestamp_ms: MAX_TIMESTAMP_MS,
            datacenter_id: MAX_DATACENTER_ID,
            worker_id: MAX_WORKER_ID,
            sequence: MAX_SEQUENCE,
        };
        assert_eq!(last.compose(), Ok(i64::MAX as u64));
    }

    #[test]
    fn out_of_range_parts_are_named() {
        let ok = IdParts {
            timestamp_ms: EPOCH_MS,
            datacenter_id: 0,
            worker_id: 0,
            sequence: 0,
        };
        let bad_worker = IdParts {
            worker_id: 32,
            ..ok
        };
        assert_eq!(bad_worker.compose(), Err(LayoutError::Worker(32)));
        let early = IdParts {
            timestamp_ms: EPOCH_MS - 1,
            ..ok
        };
        assert_eq!(early.compose(), Err(LayoutError::Timestamp(EPOCH_MS - 1)));
        assert_eq!(
            IdParts::decompose(1 << 63),
            Err(LayoutError::TopBit(1 << 63))
        );
    }
}
