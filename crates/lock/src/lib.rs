//! The Latch byte-range lock engine: POSIX record locks with strict FCFS
//! queues and complete deadlock detection, NLM share reservations and
//! leases, for the NLM server.
//!
//! The engine is pure: no I/O, no clock, no threads, no randomness. Every
//! call takes its input (and, where a lease break may start, the caller's
//! `now`) and returns an answer plus the [`Event`]s it caused for others
//! (grants of blocked requests, lease breaks and revocations), which the
//! protocol layer turns into messages. The same calls in the same order
//! always give the same answers and events.
//!
//! Cost: a lock, unlock or test is O(log n) in the locks on the file
//! (plus the same owner's segments it replaces), however many owners hold
//! overlapping shared locks: each file keeps its segments in an arena treap
//! in (owner, start) order for POSIX merge and split, threaded a second time
//! by start with a max-end augmentation for the shared segments, which may
//! overlap; the exclusive ones, pairwise disjoint, are in a chunked sorted
//! index laid out so that a probe at a million locks costs about one trip
//! to memory (see `excl`).
//!
//! Entry points: [`Engine::lock`], [`Engine::unlock`], [`Engine::test`],
//! [`Engine::cancel`], [`Engine::release_owner`], [`Engine::release_host`],
//! [`Engine::set_grace`], [`Engine::share`], [`Engine::unshare`],
//! [`Engine::lease`], [`Engine::unlease`], [`Engine::expire_leases`].

mod deadlock;
mod engine;
mod events;
mod excl;
mod file;
mod idhash;
mod lease;
mod owner;
mod query;
mod share;
mod tree;
mod types;
mod wake;

pub use engine::{BlockedRequest, Engine, LockRequest};
pub use events::{Event, Holder, LeaseAnswer, LockAnswer, Reply, ShareAnswer, Stats, TestAnswer};
pub use types::{
    Bound, Error, FileKey, HandleBytes, HostId, LeaseKind, Limits, Mode, Owner, OwnerId, Range,
    RequestId, Share, ShareBits,
};
