//! The I/O shell: the only crate with sockets, timers and the clock. It drives
//! the sans-IO machines of `latch-oncrpc` (and later NLM and NSM).

pub mod client;
pub mod portmap;
pub mod server;
pub mod sock;

pub use client::{CallError, RpcClient};
pub use server::{serve, Endpoint, ServerHandle, ServerLimits, SharedDispatcher};

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before it). Read from
/// the coarse clock (updated every tick, a few ms): whole seconds are all we
/// need, and every call served reads it, so the cheap read matters.
pub fn wall_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        return u64::try_from(ts.tv_sec).unwrap_or(0);
    }
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
