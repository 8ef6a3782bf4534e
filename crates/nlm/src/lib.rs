//! The Network Lock Manager (NLM, program 100021), sans-IO: wire types for
//! versions 1, 3 and 4 and the server machine that drives the lock engine.

mod grace;
mod grants;
pub mod hosts;
mod ops;
pub mod proto;
pub mod server;

pub use hosts::{FileHostStore, HostStore, MemHostStore};
pub use server::{Action, GrantedStyle, NlmConfig, NlmServer, NlmStats, Unacknowledged};
