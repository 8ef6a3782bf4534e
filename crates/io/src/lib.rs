//! The I/O shell: the only crate with sockets, timers and the clock. It drives
//! the sans-IO machines of `latch-oncrpc` (and later NLM and NSM).

pub mod client;
pub mod portmap;
pub mod server;
pub mod sock;

pub use client::{CallError, RpcClient};
pub use server::{serve, Endpoint, ServerHandle, ServerLimits, SharedDispatcher};

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A seed for xids that differs across restarts, so a server's duplicate
/// request cache does not mistake a new life's calls for old ones.
pub fn xid_seed() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Mix the pid in so two clients started in the same instant differ.
    (nanos as u32) ^ std::process::id().rotate_left(16)
}
