//! Shards of the queue: how replicas divide the queued actions between
//! them instead of racing for the same ones.
//!
//! A key's shard is a function of its last [`SHARD_CHARS`] characters,
//! written so that each store can compute it where the keys are (SQLite in
//! an expression index, Couchbase in a GSI index over an expression on
//! `META().id`, see `store::couchbase::statements`), and a replica's
//! discovery reads only the shards it owns. Only built-in string functions
//! are used: SQL++'s `SUBSTR`, `LENGTH` and `POSITION`, SQLite's `substr`
//! and `instr`. Each character is coded by its place in [`SHARD_ALPHABET`]
//! (1 to 66, 0 for any other character), and the codes are weighted by
//! powers of 11: over ids of every common shape (sequential numbers,
//! random hex, UUIDs, base62) the 256 shards then hold the same number of
//! keys to within about 15%, and 64 replicas' shares to within 8%.
//!
//! Nothing here decides safety: the claim's lock arbitrates every action,
//! whoever owns its shard. A store whose function disagrees with this one
//! for some keys (say, SQL++ counting bytes where this counts characters,
//! for a key ending in non-ASCII characters) still gives every key exactly
//! one shard, so every key still has an owner.

/// Shards the queue is divided into. Every replica owns
/// `SHARDS / replicas` of them (rounded either way), so up to 256 replicas
/// divide the queue. Changing it changes the stores' index definitions.
pub const SHARDS: u32 = 256;

/// Characters at the end of a key that decide its shard.
pub const SHARD_CHARS: usize = 4;

/// The characters coded by their place (a key's characters elsewhere code
/// 0). ASCII only, so that byte and character positions agree on them.
pub const SHARD_ALPHABET: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.:";

/// The weight of the code of the `k`th character from the end (0 = last).
pub const SHARD_WEIGHTS: [u32; SHARD_CHARS] = [1, 11, 121, 1331];

/// The code of one character: 1 + its place in [`SHARD_ALPHABET`], else 0.
fn code(c: char) -> u32 {
    SHARD_ALPHABET
        .find(c)
        .and_then(|place| u32::try_from(place + 1).ok())
        .unwrap_or(0)
}

/// The shard of a document key, in `0..SHARDS`.
pub fn shard_of(key: &str) -> u32 {
    key.chars()
        .rev()
        .take(SHARD_CHARS)
        .zip(SHARD_WEIGHTS)
        .map(|(c, weight)| code(c) * weight)
        .sum::<u32>()
        % SHARDS
}

/// The shard of a document key as Couchbase's index computes it from
/// `shard_expression` (`store::couchbase::statements`): SQL++'s `LENGTH`,
/// `SUBSTR` and `POSITION` count bytes, not characters (couchbase/query
/// `expression/func_str.go`: `Length` is `len(string)`, `Substr0` and
/// `Position0` slice and search bytes; the `MB_` variants count
/// characters), so the last [`SHARD_CHARS`] *bytes* decide, and a byte of
/// a multi-byte character codes 0. It differs from [`shard_of`] only for a
/// key that ends in non-ASCII characters, and is as total: every key still
/// has exactly one shard. The memory store files keys by it, as
/// Couchbase does; SQLite's `substr` counts characters, as [`shard_of`].
pub fn shard_of_bytes(key: &str) -> u32 {
    key.bytes()
        .rev()
        .take(SHARD_CHARS)
        .zip(SHARD_WEIGHTS)
        .map(|(b, weight)| code(char::from(b)) * u32::from(b.is_ascii()) * weight)
        .sum::<u32>()
        % SHARDS
}

/// The shards owned by the member at `place` among `members` live members
/// (in the order every member sorts them): a contiguous range, so that one
/// range scan of the shard index reads a member's whole share and nothing
/// else. Balanced to one shard (more members than shards leave some with
/// none); a change of membership moves shards, which costs at most a few
/// claims that meet another's lock, never money.
pub fn owned_shards(place: usize, members: usize) -> std::ops::Range<u32> {
    let members = u64::try_from(members.max(1)).unwrap_or(u64::MAX);
    let place = u64::try_from(place).unwrap_or(u64::MAX).min(members);
    let bound = |p: u64| u32::try_from(p * u64::from(SHARDS) / members).map_or(SHARDS, |b| b.min(SHARDS));
    bound(place)..bound(place + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn couchbase_counts_bytes_where_keys_end_in_other_characters() {
        // The same for ASCII keys.
        for key in ["action:0000", "action:a", "action:7f3a-9c2e", ""] {
            assert_eq!(shard_of_bytes(key), shard_of(key), "{key}");
        }
        // "é" is two bytes, neither in the alphabet: the last four bytes
        // are those of "é", "1" and "b".
        assert_eq!(shard_of_bytes("action:ab1é"), (2 * 121 + 12 * 1331) % SHARDS);
        assert_eq!(shard_of("action:ab1é"), (2 * 11 + 12 * 121 + 11 * 1331) % SHARDS);
        // A character after the alphabet's bytes is never read as one of them.
        assert_eq!(shard_of_bytes("🎉🎉"), 0);
    }

    #[test]
    fn a_shard_is_the_weighted_code_of_the_last_four_characters() {
        // "0" codes 1, "a" 11, "n" 24, "o" 25, "x" 34, ":" 66, "é" 0.
        assert_eq!(shard_of("action:0000"), (1 + 11 + 121 + 1331) % SHARDS);
        assert_eq!(shard_of("action:a"), (11 + 66 * 11 + 24 * 121 + 25 * 1331) % SHARDS);
        assert_eq!(shard_of("xé"), (34 * 11) % SHARDS);
        assert_eq!(shard_of(""), 0);
    }

    #[test]
    fn sequential_and_random_ids_spread_evenly_over_replicas() {
        let spread = |keys: Vec<String>, replicas: usize| {
            let mut per_member = vec![0u32; replicas];
            for key in &keys {
                let owner = (0..replicas).find(|p| owned_shards(*p, replicas).contains(&shard_of(key)));
                per_member[owner.expect("every shard has an owner")] += 1;
            }
            let mean = keys.len() as f64 / replicas as f64;
            let most = f64::from(per_member.iter().copied().max().unwrap_or(0));
            most / mean
        };
        let sequential: Vec<String> = (0..100_000).map(|i| format!("action:click-{i:08}")).collect();
        let hex: Vec<String> = (0..100_000u64)
            .map(|i| format!("action:{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        for replicas in [4, 16, 64] {
            assert!(
                spread(sequential.clone(), replicas) < 1.1,
                "sequential ids, {replicas} replicas"
            );
            assert!(spread(hex.clone(), replicas) < 1.15, "hex ids, {replicas} replicas");
        }
    }

    proptest! {
        #[test]
        fn every_shard_has_exactly_one_owner(members in 1usize..300) {
            let mut owners = vec![0u32; SHARDS as usize];
            for place in 0..members {
                for s in owned_shards(place, members) {
                    owners[s as usize] += 1;
                }
            }
            prop_assert!(owners.iter().all(|&n| n == 1));
            let sizes: Vec<usize> = (0..members).map(|p| owned_shards(p, members).len()).collect();
            prop_assert!(owned_shards(members, members).is_empty(), "no place beyond the members");
            let (least, most) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
            prop_assert!(most - least <= 1, "balanced to one shard: {least}..{most}");
        }

        #[test]
        fn every_key_has_a_shard(key in ".{0,40}") {
            prop_assert!(shard_of(&key) < SHARDS);
        }
    }
}
