//! Fast non-cryptographic hashing for request keys and ring points, and a
//! keyed variant for sticky cookie values.
//!
//! The mix is a 64-bit multiply-xorshift over 8-byte words with a final
//! avalanche (splitmix64's finaliser): well spread, stable across runs and
//! builds (the ring and cookie values must be the same in every process).

const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xbf58_476d_1ce4_e5b9;
const K2: u64 = 0x94d0_49bb_1331_11eb;

/// splitmix64's finaliser: every input bit reaches every output bit.
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(K1);
    x ^= x >> 27;
    x = x.wrapping_mul(K2);
    x ^ (x >> 31)
}

/// Hashes `bytes` from `seed`.
pub(crate) fn hash_seeded(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K0);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = mix(h ^ u64::from_le_bytes(w));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = mix(h ^ u64::from_le_bytes(w) ^ K0);
    }
    mix(h)
}

/// Hashes `bytes`.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    hash_seeded(K0, bytes)
}

/// Hashes `bytes` under `key`: without the key, the value does not tell
/// which of a few thousand likely inputs it came from any faster than
/// trying them with every key.
pub(crate) fn keyed_hash(key: &[u8], bytes: &[u8]) -> u64 {
    let seed = hash_seeded(K1, key);
    // Two rounds, the second over the first's result with the key again,
    // so the key is mixed in at both ends.
    let inner = hash_seeded(seed, bytes);
    hash_seeded(seed ^ inner, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_spread() {
        assert_eq!(hash_bytes(b"abc"), hash_bytes(b"abc"));
        assert_ne!(hash_bytes(b"abc"), hash_bytes(b"abd"));
        assert_ne!(hash_bytes(b""), hash_bytes(b"\0"));
        assert_ne!(hash_bytes(b"12345678"), hash_bytes(b"12345678\0"));
        // One flipped input bit flips about half the output bits.
        let mut total = 0;
        for i in 0..64u64 {
            let a = hash_bytes(&i.to_le_bytes());
            let b = hash_bytes(&(i ^ 1).to_le_bytes());
            total += (a ^ b).count_ones();
        }
        let mean = total / 64;
        assert!((24..=40).contains(&mean), "mean flipped bits {mean}");
    }

    #[test]
    fn the_key_changes_a_keyed_hash() {
        assert_ne!(keyed_hash(b"a", b"x"), keyed_hash(b"b", b"x"));
        assert_eq!(keyed_hash(b"a", b"x"), keyed_hash(b"a", b"x"));
    }
}
