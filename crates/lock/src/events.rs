//! What the engine tells its caller: answers and the events they caused.

use crate::types::{FileKey, LeaseKind, Mode, Owner, Range, RequestId};

/// An answer plus everything the call caused for *other* parties. Each event
/// appears in exactly one reply, so a caller that delivers what it is given
/// never delivers anything twice.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "events must be delivered"]
pub struct Reply<T> {
    pub answer: T,
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A blocked request now holds its lock (send NLM GRANTED).
    Granted {
        id: RequestId,
        file: FileKey,
        owner: Owner,
        range: Range,
        mode: Mode,
    },
    /// The holder must give its lease up (`to: None`) or downgrade it to
    /// `to: Some(Read)`. Sent once per break; sent again only if a later
    /// conflict demands more (a break to read becoming a break to none).
    LeaseBreak {
        file: FileKey,
        holder: Owner,
        to: Option<LeaseKind>,
    },
    /// The break deadline passed: the lease is now `to` (gone if `None`).
    LeaseRevoked {
        file: FileKey,
        holder: Owner,
        to: Option<LeaseKind>,
    },
}

/// A lock held by someone else, as NLM TEST and a denied LOCK report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub owner: Owner,
    pub mode: Mode,
    /// The whole held segment (after merging), not only the overlap.
    pub range: Range,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockAnswer {
    Granted,
    /// Queued; a [`Event::Granted`] with this id follows once it is granted.
    Blocked(RequestId),
    /// Conflicts with a held lock (reported), or only with an earlier
    /// blocked request or a lease being broken (`None`).
    Denied(Option<Holder>),
    /// Waiting would close a cycle in the wait-for graph.
    Deadlock,
    /// Grace period and not a reclaim.
    DeniedGrace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestAnswer {
    Free,
    Conflict(Holder),
    DeniedGrace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareAnswer {
    Granted,
    /// Conflicts with another owner's share, or with a lease now being
    /// broken (retry later).
    Denied,
    DeniedGrace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    Granted,
    /// Conflicts with another owner's lock, share, blocked request or lease
    /// (a conflicting lease is now being broken).
    Denied,
    DeniedGrace,
}

/// Plain counters, for metrics export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub files: usize,
    pub owners: usize,
    pub segments: usize,
    pub waiters: usize,
    pub shares: usize,
    pub leases: usize,
    pub entries: usize,
    pub deadlocks_refused: u64,
    /// Owners visited by deadlock searches, in total.
    pub deadlock_visits: u64,
}
