//! Gizzard: a sharding framework. A forwarding table maps hash ranges of a key to shard trees;
//! each tree replicates over tables on several hosts; a durable job queue retries failed
//! writes and runs copy, diff and repair jobs.
//!
//! - [`batch`]: micro-batching: concurrent callers' work for one target (a leaf, a host) shares
//!   a statement, with a bounded number of statements in flight per target.
//! - [`db`]: database handles (MySQL or SQLite) with a deadline on every operation, re-exported
//!   from the `db` crate.
//! - [`nameserver`]: the topology model (shards, links, forwardings, hosts), its stores, and
//!   the immutable routing snapshot every server polls for.
//! - [`scheduler`]: the durable job queue in the nameserver database, and its workers.
//! - [`shards`]: routing trees (Replicating, ReadOnly, WriteOnly, Blocked, BlackHole, leaves),
//!   failure accrual, the application's physical shard types, and the write path.
//! - [`topology`]: [`topology::TopologyService`], changing the topology (creating new leaves'
//!   tables first) and reading it, for operators and migrations alike.
//! - [`migrate`]: online copy, diff and repair, the move, split and rebalance workflows, and
//!   [`migrate::Migrations`], the service that starts and cancels them.
//! - [`manager`]: the admin gRPC service `gizzard.v1.ShardManager`, a thin edge over those
//!   services, and the gRPC status of every Gizzard error.
//! - [`metrics`]: the `# HELP` text of every series Gizzard emits.
//! - [`server`]: a proxy's parts started together ([`server::Proxy`]).

pub mod batch;
pub use db;
pub mod manager;
pub mod metrics;
pub mod migrate;
pub mod nameserver;
pub mod scheduler;
pub mod server;
pub mod shards;
pub mod topology;
