//! The test harness every crate's integration tests use, and nothing else: tests never touch
//! the machine's own MariaDB on 3306.
//!
//! - [`mariadb`]: private `mariadbd` instances on free loopback ports, started from a cached
//!   template datadir, which tests can stop, kill, pause, resume and restart.
//! - [`cluster`]: a Gizzard cluster (nameserver server, shard servers, an in-process proxy
//!   running the key-value application).
//! - [`relay`]: a TCP relay a test cuts, to partition one connection path.
//! - [`kv`]: a small key-value application on Gizzard, to exercise the framework on real
//!   tables.
//! - [`tweets`]: a T-Bird cluster with in-process servers, and a writer that keeps a ledger
//!   of acknowledged posts, for migration tests and benchmarks.
//! - [`backend`]: one test suite run on every backend ([`backend_suite!`]), one test per case.
//! - [`binary`]: builds and locates the workspace's binaries, for tests that run a daemon as
//!   a real process (to SIGKILL it).
//! - [`stack`]: a T-Bird stack as real processes (MariaDB servers, Snowflake, `tbird serve`)
//!   that tests kill and restart, and how to look at it from outside (queue depth, rows,
//!   `/metrics`).
//! - [`grpcurl`]: what grpcurl does (descriptors by reflection, requests and answers in JSON),
//!   to run the README's examples against running servers.
//! - [`property`]: random cases (proptest) run against real databases, on SQLite and MariaDB.
//! - [`wait`]: waiting for a condition, never for a fixed time ([`wait_until`]).

pub mod backend;
pub mod binary;
pub mod cluster;
pub mod grpcurl;
pub mod kv;
pub mod mariadb;
pub mod property;
pub mod relay;
pub mod stack;
pub mod tweets;
pub mod wait;

pub use mariadb::{HarnessError, MariaDb};
pub use wait::wait_until;
