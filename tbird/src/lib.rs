//! T-Bird stores tweets on Gizzard: tweets by id in table 1, each user's tweet ids in table 2,
//! on replicated MySQL shards, with ids from Snowflake.
//!
//! - [`tweet`]: the tweet and the rules its fields obey.

pub mod tweet;
