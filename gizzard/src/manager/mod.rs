//! The admin service `gizzard.v1.ShardManager`, served by every proxy: topology reads and
//! atomic changes, key lookups, routing versions and reloads, migrations, and job queue
//! controls. It only converts: requests become calls of [`crate::topology::TopologyService`],
//! [`crate::migrate::Migrations`] and the job queue, and their answers and errors become
//! messages and statuses.
//!
//! - [`auth`]: the bearer tokens (admin, and read-only) every call needs once an admin token
//!   is set, checked on the headers before a request's body is decoded.
//! - [`convert`]: protobuf messages to and from the domain's types, validated at the edge.
//! - [`status`]: the gRPC status of every error, one code for one condition.
//! - [`service`]: the handlers.

pub mod auth;
pub mod convert;
pub mod service;
pub mod status;

pub use auth::{AdminTokens, Guarded};
pub use service::{Manager, ManagerParts};
pub use status::GrpcCode;
