//! A hasher for the engine's own ids (file, owner, host and request
//! numbers). They are chosen by the server, not by clients, so nobody can
//! pick colliding keys, and a multiply spreads them well enough; the keyed
//! SipHash of the standard maps cost more than the lookups it served, on
//! every lock and unlock. Maps keyed by what clients send (file and owner
//! handles) use the keyed hasher of `latch-hash`.

use latch_hash::IdHasher;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub(crate) type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;
