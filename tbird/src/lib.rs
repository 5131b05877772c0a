//! T-Bird stores tweets on Gizzard: tweets by id in table 1, each user's tweet ids in table 2,
//! on replicated MySQL shards, with ids from Snowflake.
//!
//! - [`tweet`]: the tweet and the rules its fields obey.
//! - [`ids`]: tweet ids from Snowflake, prefetched in batches (or from an in-process worker).
//! - [`store`]: tweet and timeline shards (MySQL, SQLite) and the writes that commute on them.

pub mod ids;
pub mod store;
pub mod tweet;
