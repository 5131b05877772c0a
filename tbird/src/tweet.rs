//! A tweet and its validation. Input from the edge (bytes, optional fields, zero ids) becomes
//! a [`Tweet`] only through these checks, each error naming the field.

use serde::{Deserialize, Serialize};
use snowflake::id::IdParts;

/// The most characters (Unicode scalar values) a tweet's text may hold.
pub const MAX_TEXT_CHARS: usize = 280;

/// A stored tweet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tweet {
    /// A Snowflake id; its time is the tweet's creation time.
    pub id: u64,
    pub user_id: u64,
    pub text: String,
    pub in_reply_to: Option<u64>,
    pub deleted: bool,
}

/// Why input is not a valid tweet; each names the field.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InvalidTweet {
    #[error("text is empty")]
    EmptyText,
    #[error("text has {0} characters, over the {MAX_TEXT_CHARS} allowed")]
    TextTooLong(usize),
    #[error("text is not valid UTF-8 (first bad byte at offset {0})")]
    TextNotUtf8(usize),
    #[error("{0} must not be 0")]
    ZeroId(&'static str),
    #[error("{field} {id} is not a Snowflake id: its top bit is set")]
    NotSnowflake { field: &'static str, id: u64 },
}

/// Returns `bytes` as tweet text: valid UTF-8 of 1 to 280 characters.
pub fn validate_text(bytes: Vec<u8>) -> Result<String, InvalidTweet> {
    let text = String::from_utf8(bytes)
        .map_err(|e| InvalidTweet::TextNotUtf8(e.utf8_error().valid_up_to()))?;
    let chars = text.chars().count();
    if chars == 0 {
        return Err(InvalidTweet::EmptyText);
    }
    if chars > MAX_TEXT_CHARS {
        return Err(InvalidTweet::TextTooLong(chars));
    }
    Ok(text)
}

/// Returns `id` if it can name a tweet or a user: not zero, top bit clear.
pub fn validate_id(field: &'static str, id: u64) -> Result<u64, InvalidTweet> {
    if id == 0 {
        return Err(InvalidTweet::ZeroId(field));
    }
    if id >> 63 != 0 {
        return Err(InvalidTweet::NotSnowflake { field, id });
    }
    Ok(id)
}

impl Tweet {
    /// Returns a validated tweet.
    pub fn new(
        id: u64,
        user_id: u64,
        text: Vec<u8>,
        in_reply_to: Option<u64>,
    ) -> Result<Self, InvalidTweet> {
        Ok(Self {
            id: validate_id("id", id)?,
            user_id: validate_id("user_id", user_id)?,
            text: validate_text(text)?,
            in_reply_to: in_reply_to
                .map(|id| validate_id("in_reply_to", id))
                .transpose()?,
            deleted: false,
        })
    }

    /// Returns the creation time in ms since the Unix epoch, from the id.
    pub fn created_at_ms(&self) -> u64 {
        IdParts::decompose(self.id).map_or(0, |parts| parts.timestamp_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_one_to_280_characters_of_utf8() {
        assert_eq!(validate_text(b"hello".to_vec()), Ok("hello".into()));
        // 280 four-byte characters are 1,120 bytes, still one tweet.
        let emoji = "🐦".repeat(MAX_TEXT_CHARS);
        assert_eq!(validate_text(emoji.clone().into_bytes()), Ok(emoji));
        assert_eq!(validate_text(Vec::new()), Err(InvalidTweet::EmptyText));
        let long = "a".repeat(MAX_TEXT_CHARS + 1).into_bytes();
        assert_eq!(validate_text(long), Err(InvalidTweet::TextTooLong(281)));
        assert_eq!(
            validate_text(vec![b'o', b'k', 0xff]),
            Err(InvalidTweet::TextNotUtf8(2))
        );
    }

    #[test]
    fn ids_are_nonzero_snowflakes() {
        let err = Tweet::new(0, 1, b"x".to_vec(), None).expect_err("zero id");
        assert_eq!(err.to_string(), "id must not be 0");
        let err = Tweet::new(1, 1, b"x".to_vec(), Some(0)).expect_err("zero reply");
        assert_eq!(err.to_string(), "in_reply_to must not be 0");
        assert!(matches!(
            validate_id("user_id", 1 << 63),
            Err(InvalidTweet::NotSnowflake { .. })
        ));
    }

    #[test]
    fn creation_time_comes_from_the_id() {
        let id = IdParts {
            timestamp_ms: 1_700_000_000_000,
            datacenter_id: 1,
            worker_id: 2,
            sequence: 3,
        }
        .compose()
        .expect("valid id");
        let tweet = Tweet::new(id, 9, b"hi".to_vec(), None).expect("valid");
        assert_eq!(tweet.created_at_ms(), 1_700_000_000_000);
    }
}
