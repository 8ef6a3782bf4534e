//! A keyed hasher for maps whose keys come from the network (duplicate
//! request cache entries, file and owner handles): a folded 128-bit
//! multiply per eight bytes under two keys drawn at random once per map
//! (as foldhash does), a fraction of SipHash's cost on every lock, unlock
//! and cached call. Clients choose the bytes hashed, but without the keys
//! they cannot aim them at one bucket; and every such map is bounded, so
//! even colliding keys would cost a scan of a bounded table, not an
//! unbounded one.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Builds [`KeyedHasher`]s with keys of its own.
#[derive(Clone, Copy, Debug)]
pub struct KeyedState {
    seed: u64,
    mul: u64,
}

impl KeyedState {
    pub fn new() -> KeyedState {
        let r = RandomState::new();
        KeyedState {
            seed: r.hash_one(0x243f_6a88_85a3_08d3u64),
            // Odd, so the multiply loses no bits of the word.
            mul: r.hash_one(0x1319_8a2e_0370_7344u64) | 1,
        }
    }
}

impl Default for KeyedState {
    fn default() -> Self {
        KeyedState::new()
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            h: self.seed,
            mul: self.mul,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct KeyedHasher {
    h: u64,
    mul: u64,
}

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.write_u64(u64::from_le_bytes(a));
        }
        let rest = words.remainder();
        // The length keeps "ab" + "" apart from "a" + "b".
        let mut a = [0u8; 8];
        a[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(a) ^ (bytes.len() as u64).rotate_right(8));
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, w: u64) {
        self.h = fold(self.h ^ w, self.mul).wrapping_add(w);
    }
    fn write_u128(&mut self, w: u128) {
        self.write_u64(w as u64);
        self.write_u64((w >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        fold(self.h, self.mul ^ self.h.rotate_left(32))
    }
}

/// A hasher for ids a server chooses itself (file, owner, host and request
/// numbers): nobody else can pick colliding ones, and a multiply spreads
/// them well enough, for less than even [`KeyedHasher`].
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const ID_K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(ID_K);
    }

    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and its tag from the
        // high ones: fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &KeyedState, b: &[u8]) -> u64 {
        let mut x = s.build_hasher();
        x.write(b);
        x.finish()
    }

    #[test]
    fn equal_bytes_hash_equally_and_near_ones_apart() {
        let s = KeyedState::new();
        assert_eq!(h(&s, b"file-handle-1"), h(&s, b"file-handle-1"));
        let mut seen = std::collections::HashSet::new();
        // Every length 0..=24 of zeros, and every one-bit change of a key.
        for n in 0..=24 {
            assert!(seen.insert(h(&s, &vec![0u8; n])), "zeros of length {n}");
        }
        let base = *b"owner#1-2~3 file";
        for i in 0..base.len() * 8 {
            let mut b = base;
            b[i / 8] ^= 1 << (i % 8);
            assert!(seen.insert(h(&s, &b)), "bit {i}");
        }
        // Another state, other keys.
        let t = KeyedState::new();
        assert_ne!(h(&s, b"file-handle-1"), h(&t, b"file-handle-1"));
    }
}
