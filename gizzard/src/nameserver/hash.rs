//! The key hash that picks a forwarding: xxh3-64 of the key's 8 little-endian bytes, cut to
//! 60 bits so that hashes (and the base ids of forwardings) fit a signed BIGINT column and
//! stay non-negative. Rows store their hash, so splitting a range is a range scan.

use xxhash_rust::xxh3::xxh3_64;

use super::model::MAX_HASH;

/// Returns the 60-bit hash of `key`, in `0..=MAX_HASH`.
pub fn hash(key: u64) -> i64 {
    // The mask keeps 60 bits, so the cast can neither wrap nor turn negative.
    (xxh3_64(&key.to_le_bytes()) & MAX_HASH as u64) as i64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hash_is_stable() {
        // The hash decides where rows live: it must never change between releases.
        assert_eq!(hash(0), 0x077b_3abb_6f87_acd9);
        assert_eq!(hash(1), 0x0fbc_5935_64db_792e);
        assert_eq!(hash(u64::MAX), 0x0111_c7e4_7d78_4413);
    }

    proptest! {
        #[test]
        fn hash_is_in_range(key in any::<u64>()) {
            let h = hash(key);
            prop_assert!((0..=MAX_HASH).contains(&h), "hash({key}) = {h}");
            prop_assert_eq!(h, hash(key));
        }
    }
}
