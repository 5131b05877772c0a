//! The admin service `gizzard.v1.ShardManager`, served by every proxy: topology reads and
//! atomic changes, key lookups, routing versions and reloads, and job queue controls.
//!
//! - [`auth`]: the bearer tokens (admin, and read-only) every call needs once an admin token
//!   is set, checked on the headers before a request's body is decoded.
//! - [`convert`]: protobuf messages to and from the nameserver's model, validated at the edge.
//! - [`service`]: the service.

pub mod auth;
pub mod convert;
mod migrations;
pub mod service;

pub use auth::{AdminTokens, Guarded};
pub use service::{Manager, ManagerParts, Materializer};
