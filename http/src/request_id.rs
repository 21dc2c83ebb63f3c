//! Request IDs: `$request_id` in rules and the access log's `request_id`.
//!
//! Each worker draws a random 64-bit prefix when it first needs one and
//! counts its requests after it, so an ID is unique across workers and
//! restarts without any shared state: making one is a thread-local
//! increment. It is written as 32 hex digits, as nginx writes its own.

use std::{
    cell::Cell,
    fmt,
    hash::{BuildHasher, Hasher},
};

/// One request's ID.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RequestId(u128);

/// Each byte's two hex digits: one lookup a byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

thread_local! {
    static NEXT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

impl RequestId {
    /// The next ID of this worker.
    #[inline]
    pub fn next() -> Self {
        NEXT.with(|next| {
            let (mut prefix, count) = next.get();
            if prefix == 0 {
                prefix = random_prefix();
            }
            next.set((prefix, count.wrapping_add(1)));
            // An odd multiplier is a bijection on u64: IDs stay unique
            // and do not read as a counter.
            let scrambled = count.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            RequestId(u128::from(prefix) << 64 | u128::from(scrambled))
        })
    }

    /// The ID as 32 lowercase hex digits.
    pub fn hex(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.0.to_be_bytes()) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        out
    }
}

/// 64 random bits (never 0): std's hasher keys are drawn from the OS once
/// per process and differ per thread; the time and thread mix in.
fn random_prefix() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    std::hash::Hash::hash(&std::thread::current().id(), &mut hasher);
    hasher.finish().max(1)
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or_default())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_written_as_32_hex_digits() {
        let a = RequestId::next();
        let b = RequestId::next();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let other = std::thread::spawn(RequestId::next).join().unwrap();
        assert_ne!(
            other.to_string()[..16],
            text[..16],
            "each worker has its own prefix"
        );
    }
}
