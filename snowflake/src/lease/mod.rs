//! Worker-id leases: a table of (datacenter, worker) pairs, each with an owner, an expiry judged
//! by the database's clock, and the latest timestamp its holders may have issued ids at.
//!
//! - [`store`]: the table on MySQL or SQLite behind one type.
//! - [`keeper`]: acquires a pair, renews it on a heartbeat, and grants the id worker the right
//!   to issue ids only while the lease holds.
//!
//! The recorded time is a reservation: each renewal records `now + ttl` before ids up to that
//! time may be issued, so whoever holds the pair next, after a crash and a clock set back,
//! starts above every id this holder issued.

pub mod keeper;
pub mod store;

pub use keeper::{LeaseKeeper, LeaseSettings};
pub use store::LeaseStore;

use std::time::Duration;

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid lease url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error(
        "worker {worker_id} in datacenter {datacenter_id} is leased by {owner:?} \
         for another {remaining_ms} ms"
    )]
    Conflict {
        datacenter_id: u8,
        worker_id: u8,
        owner: String,
        remaining_ms: i64,
    },
    #[error("every worker id in datacenter {0} is leased by a live daemon")]
    AllTaken(u8),
    #[error("the lease on worker {worker_id} in datacenter {datacenter_id} was taken over")]
    Lost { datacenter_id: u8, worker_id: u8 },
    /// Not a `source`: lease errors reach log lines, which print one error's message.
    #[error("lease database: {0}")]
    Database(db::DbError),
    #[error("lease database did not answer within {0:?}")]
    Timeout(Duration),
}

impl From<db::DbError> for LeaseError {
    fn from(err: db::DbError) -> Self {
        match err {
            db::DbError::Timeout(after) => Self::Timeout(after),
            other => Self::Database(other),
        }
    }
}
