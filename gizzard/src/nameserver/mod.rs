//! The nameserver: the sharding topology, its stores and the routing snapshot.
//!
//! - [`model`]: shard ids, shards, links, forwardings, hosts, the [`Topology`] they form, the
//!   [`Change`]s that edit it, and the node kinds of shard classes ([`ShardTypes`]).
//! - [`validate()`]: the rules a whole topology obeys (no cycles, known types, child counts,
//!   tables starting at base id 0, ...).
//! - [`store`]: the [`NameServer`] tables in the nameserver database (MySQL or SQLite); a
//!   batch of changes is one validated transaction that bumps a change counter.
//! - [`hash()`]: the 60-bit key hash that forwardings are keyed on.
//! - [`snapshot`]: the immutable [`RoutingSnapshot`] with a constant-time forwarding lookup
//!   and the shard tree under each root.
//! - [`servers`]: the server registry: each server confirms the version it routes with under
//!   a lease judged by the database's clock, and steps that move writes wait for agreement.
//! - [`routing`]: [`Routing`] holds the current snapshot, confirms it every poll (swapping in
//!   a new one when the topology changed) and hands out [`WritePermit`]s only while its lease
//!   holds.
//! - [`retired`]: leaves deleted by a batch, whose tables are fenced once every server agrees
//!   and dropped after a grace period.

pub mod hash;
pub mod model;
pub mod retired;
pub mod routing;
pub mod servers;
pub mod snapshot;
pub mod store;
pub mod validate;

pub use hash::hash;
pub use model::{
    Change, Forwarding, HASH_BITS, Host, Link, MAX_HASH, NodeKind, ShardId, ShardIdError,
    ShardInfo, ShardTypes, Topology, TopologyError, VIRTUAL_HOST, base_ids, replicated_table,
};
pub use retired::RetiredShard;
pub use routing::{DEFAULT_POLL_INTERVAL, Routing, RoutingLeaseError, WritePermit};
pub use servers::{ServerIdentity, ServerRecord};
pub use snapshot::{NodeSpec, RoutingSnapshot};
pub use store::{NameServer, NameServerError};
pub use validate::validate;
