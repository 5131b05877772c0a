//! The durable job queue and its workers.
