//! The hasher for the maps looked up on every intercepted error (hosts, paths, cache,
//! fetches in flight). std's SipHash guards maps whose keys an attacker inserts; every key
//! here comes from the policy (host names, path rules, error-object paths with a status
//! of 100-599), so a request can look keys up but never add one, and a multiply-rotate
//! hash (the one rustc uses internally, "Fx") is several times cheaper, which shows in
//! the wasm VM.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_only_in_the_tail_or_length_differ() {
        let mut m: FastMap<String, usize> = FastMap::default();
        for (i, k) in ["a", "ab", "abcdefgh", "abcdefghi", "abcdefgh\0", "", "shop.example.com", "shop.example.co"]
            .iter()
            .enumerate()
        {
            assert_eq!(m.insert(k.to_string(), i), None);
        }
        assert_eq!(m.len(), 8);
        assert_eq!(m.get("abcdefghi"), Some(&3));
        assert_eq!(m.get("shop.example.co"), Some(&7));
        assert_eq!(m.get("shop.example.c"), None);
    }
}
