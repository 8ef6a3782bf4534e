//! A hasher for the engine's own ids (file, owner, host and request
//! numbers). They are chosen by the server, not by clients, so nobody can
//! pick colliding keys, and a multiply spreads them well enough; the keyed
//! SipHash of the standard maps cost more than the lookups it served, on
//! every lock and unlock. Maps keyed by what clients send (file and owner
//! handles) use the keyed hasher of `latch-hash`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

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
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and its tag from the
        // high ones: fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub(crate) type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;
