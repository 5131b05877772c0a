//! Snowflake issues unique, roughly time-ordered 64-bit ids over gRPC, as Twitter's daemon of
//! the same name did, with worker ids that can be leased from a database so two daemons never
//! issue as the same worker.
//!
//! - [`id`]: the id layout (41 bits of time, 5 datacenter, 5 worker, 12 sequence).
//! - [`clock`]: wall clocks: the system's, and a manual one for tests.
//! - [`worker`]: [`worker::IdWorker`], which issues strictly increasing ids under a grant.
//! - [`lease`]: the lease table (MySQL, SQLite) and the keeper that renews a lease.
//! - [`service`]: the gRPC service `snowflake.v1.Snowflake`.
//! - [`server`]: the daemon, `run(listener, config, clock, shutdown)`.
//! - [`config`]: the daemon's settings.
//! - [`client`]: a client with deadlines.
//! - [`bench`]: the load generator behind `snowflake bench`.

pub mod bench;
pub mod client;
pub mod clock;
pub mod config;
pub mod id;
pub mod lease;
pub mod server;
pub mod service;
pub mod worker;
