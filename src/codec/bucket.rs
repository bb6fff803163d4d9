//! Account → partition key, and partition key → 128-bit hash key (as Kinesis maps keys to
//! shards). Both functions are part of the wire contract: changing either moves accounts
//! between keys or shards while events are in flight.

use md5::{Digest, Md5};

/// FNV-1a, 64-bit: stable across platforms and releases, unlike `std`'s hasher.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The bucket of an account, in `0..buckets`. Every event of an account shares it.
pub fn bucket(account: &str, buckets: u32) -> u32 {
    assert!(
        buckets > 0,
        "bucket count is validated at configuration time"
    );
    (fnv1a64(account.as_bytes()) % u64::from(buckets)) as u32
}

/// The Kinesis partition key of a bucket: `b` + four hex digits or more, e.g. `b03f2`.
pub fn partition_key(bucket: u32) -> String {
    format!("b{bucket:04x}")
}

/// The partition key of an account's events.
pub fn partition_key_of(account: &str, buckets: u32) -> String {
    partition_key(bucket(account, buckets))
}

/// Kinesis's hash key of a partition key: MD5 as a big-endian 128-bit integer.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// The shard owning `hash_key` when `shards` shards split the 128-bit space evenly, as
/// `CreateStream` does.
pub fn shard_of(hash_key: u128, shards: u32) -> u32 {
    assert!(shards > 0, "shard count is validated at configuration time");
    if shards == 1 {
        return 0;
    }
    // ceil(2^128 / shards), computed without overflowing u128.
    let width = u128::MAX / u128::from(shards) + 1;
    (hash_key / width) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn md5_hash_key_matches_the_rfc_1321_vector() {
        assert_eq!(hash_key("abc"), 0x9001_5098_3cd2_4fb0_d696_3f7d_28e1_7f72);
    }

    #[test]
    fn buckets_and_shards_stay_in_range_and_cover_the_space() {
        for i in 0..2000 {
            assert!(bucket(&format!("acct-{i}"), 7) < 7);
        }
        assert_eq!(shard_of(0, 4), 0);
        assert_eq!(shard_of(u128::MAX, 4), 3);
        assert_eq!(shard_of(u128::MAX / 4, 4), 0);
        assert_eq!(shard_of(u128::MAX / 4 + 1, 4), 1);
        assert_eq!(shard_of(u128::MAX, 1), 0);
        assert_eq!(partition_key(0x3f2), "b03f2");
    }
}
