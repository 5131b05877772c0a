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
//! - [`routing`]: [`Routing`] holds the current snapshot and polls the counter to swap in a
//!   new one when the topology changes.

pub mod hash;
pub mod model;
pub mod routing;
pub mod snapshot;
pub mod store;
pub mod validate;

pub use hash::hash;
pub use model::{
    Change, Forwarding, HASH_BITS, Host, Link, MAX_HASH, NodeKind, ShardId, ShardIdError,
    ShardInfo, ShardTypes, Topology, TopologyError, VIRTUAL_HOST, base_ids, replicated_table,
};
pub use routing::{DEFAULT_POLL_INTERVAL, Routing};
pub use snapshot::{NodeSpec, RoutingSnapshot};
pub use store::{NameServer, NameServerError};
pub use validate::validate;
