//! The admin service `gizzard.v1.ShardManager`, served by every proxy: topology reads and
//! atomic changes, key lookups, routing versions and reloads, and job queue controls.
//!
//! - [`convert`]: protobuf messages to and from the nameserver's model, validated at the edge.
//! - [`service`]: the service, with bearer-token checks on every call that changes anything.

pub mod convert;
mod migrations;
pub mod service;

pub use service::{Manager, ManagerParts, Materializer};
