//! A tweet and its validation. Input from the edge (text of any length, optional fields, zero
//! ids) becomes a [`Tweet`] only through these checks, each error naming the field. The text
//! is UTF-8 already: the API's `string` fields are checked when a message is decoded.

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
    #[error("{0} must not be 0")]
    ZeroId(&'static str),
    #[error("{field} {id} is not a Snowflake id: its top bit is set")]
    NotSnowflake { field: &'static str, id: u64 },
}

/// Returns `text` if it can be a tweet's: 1 to 280 characters.
pub fn validate_text(text: String) -> Result<String, InvalidTweet> {
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
        text: String,
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

    /// Returns whether the tweet carries content. A delete stored before its tweet arrived is
    /// a tombstone without any: user 0, empty text (validation never lets user 0 in).
    pub fn has_content(&self) -> bool {
        self.user_id != 0
    }

    /// Returns the content's place in the merge order: `(user_id, text bytes, in_reply_to)`,
    /// compared in that order, the text byte by byte (which for UTF-8 is code point order),
    /// and no reply before any reply. Between two contents of one id the smaller is kept.
    pub fn content_key(&self) -> (u64, &[u8], Option<u64>) {
        (self.user_id, self.text.as_bytes(), self.in_reply_to)
    }

    /// Returns whether `self` and `other` carry the same content (deletion aside).
    pub fn same_content(&self, other: &Tweet) -> bool {
        self.content_key() == other.content_key()
    }

    /// Returns the merge of two stored versions of one tweet, as every replica's SQL merge
    /// computes it: deleted if either is (a tombstone wins), and the content of the one that
    /// has some, or of the smaller by [`Tweet::content_key`] when both do. The merge is
    /// commutative, associative and idempotent (content is a join-semilattice with "no
    /// content" as its bottom, deletion an OR), so replicas that receive the same writes in
    /// any order and any number of times end with the same row.
    pub fn merge(&self, other: &Tweet) -> Tweet {
        let content = match (self.has_content(), other.has_content()) {
            (true, false) => self,
            (false, true) => other,
            _ if other.content_key() < self.content_key() => other,
            _ => self,
        };
        Tweet {
            deleted: self.deleted || other.deleted,
            ..content.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_one_to_280_characters() {
        assert_eq!(validate_text("hello".into()), Ok("hello".into()));
        // 280 four-byte characters are 1,120 bytes, still one tweet.
        let emoji = "🐦".repeat(MAX_TEXT_CHARS);
        assert_eq!(validate_text(emoji.clone()), Ok(emoji));
        assert_eq!(validate_text(String::new()), Err(InvalidTweet::EmptyText));
        let long = "a".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(validate_text(long), Err(InvalidTweet::TextTooLong(281)));
    }

    #[test]
    fn ids_are_nonzero_snowflakes() {
        let err = Tweet::new(0, 1, "x".into(), None).expect_err("zero id");
        assert_eq!(err.to_string(), "id must not be 0");
        let err = Tweet::new(1, 1, "x".into(), Some(0)).expect_err("zero reply");
        assert_eq!(err.to_string(), "in_reply_to must not be 0");
        assert!(matches!(
            validate_id("user_id", 1 << 63),
            Err(InvalidTweet::NotSnowflake { .. })
        ));
    }

    fn arb_tweet() -> impl proptest::strategy::Strategy<Value = Tweet> {
        use proptest::prelude::*;
        let text = prop::sample::select(vec!["", "a", "a ", "A", "ab", "é", "e\u{301}"]);
        (0u64..3, text, proptest::option::of(1u64..3), any::<bool>()).prop_map(
            |(user_id, text, in_reply_to, deleted)| Tweet {
                id: 1,
                user_id,
                // A tombstone without content has an empty text, as deletes store it.
                text: if user_id == 0 { "" } else { text }.to_owned(),
                in_reply_to: in_reply_to.filter(|_| user_id != 0),
                deleted,
            },
        )
    }

    proptest::proptest! {
        #[test]
        fn merge_is_a_semilattice(a in arb_tweet(), b in arb_tweet(), c in arb_tweet()) {
            proptest::prop_assert_eq!(a.merge(&b), b.merge(&a));
            proptest::prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
            proptest::prop_assert_eq!(a.merge(&a), a.clone());
        }
    }

    #[test]
    fn merge_keeps_the_smaller_content_and_any_delete() {
        let tweet = |user_id, text: &str| Tweet {
            id: 1,
            user_id,
            text: text.into(),
            in_reply_to: None,
            deleted: false,
        };
        // Text compares byte by byte: a trailing space sorts after, "A" before "a".
        assert_eq!(tweet(2, "a ").merge(&tweet(2, "a")).text, "a");
        assert_eq!(tweet(2, "a").merge(&tweet(2, "A")).text, "A");
        assert_eq!(tweet(3, "a").merge(&tweet(2, "b")).user_id, 2);
        let tombstone = Tweet {
            deleted: true,
            ..tweet(0, "")
        };
        let merged = tombstone.merge(&tweet(5, "late"));
        assert_eq!((merged.user_id, merged.text.as_str()), (5, "late"));
        assert!(merged.deleted, "a delete that came first still wins");
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
        let tweet = Tweet::new(id, 9, "hi".into(), None).expect("valid");
        assert_eq!(tweet.created_at_ms(), 1_700_000_000_000);
    }
}
