//! T-Bird stores tweets on Gizzard: tweets by id in table 1, each user's tweet ids in table 2,
//! on replicated MySQL shards, with ids from Snowflake.
//!
//! - [`tweet`]: the tweet and the rules its fields obey.
//! - [`bench`]: `tbird bench`, load against a server, optionally against its shards directly.
//! - [`dev`]: `tbird dev`, the whole stack in one process on SQLite files.
//! - [`metrics`]: the Prometheus metrics of `tbird serve` and `tbird dev`.
//! - [`ids`]: tweet ids from Snowflake, prefetched in batches (or from an in-process worker).
//! - [`server`]: `tbird serve`, a production server on a MySQL nameserver and Snowflake.
//! - [`tweets`]: [`tweets::Tweets`], posting, reading and deleting tweets and reading
//!   timelines on the Gizzard proxy, with typed errors.
//! - [`service`]: the gRPC service `tbird.v1.Tweets`, which converts to and from [`tweets`].
//! - [`topology`]: the default topology of both tables.
//! - [`store`]: tweet and timeline shards (MySQL, SQLite) and the writes that commute on them.
//! - [`hosts`]: per-host statement queues, so concurrent statements to one host share one.
//! - [`reads`]: tweet reads batched per host.

pub mod bench;
pub mod dev;
pub mod hosts;
pub mod ids;
pub mod metrics;
pub mod reads;
pub mod server;
pub mod service;
pub mod store;
pub mod topology;
pub mod tweet;
pub mod tweets;
