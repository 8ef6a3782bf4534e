//! The Network Status Monitor (NSM, program 100024), sans-IO: wire types,
//! the monitor state machine, the host-name sanitiser, and stable storage.
//!
//! The state number is how lock managers tell a real reboot from a stale
//! notification: it is odd while up, only grows, and is bumped at every
//! start before anything is answered.

pub mod fs;
pub mod monitor;
pub mod name;
pub mod proto;
pub mod store;

pub use fs::{Fs, RealFs, SimFs};
pub use monitor::{Action, Monitor, MonitorConfig, NotifyCheck};
pub use store::{FileStore, MemStore, Storage};
