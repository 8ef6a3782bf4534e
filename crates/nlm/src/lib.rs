//! The Network Lock Manager (NLM, program 100021), sans-IO: wire types for
//! versions 1, 3 and 4 and the server machine that drives the lock engine.

pub mod admin;
pub mod client;
mod grace;
mod grants;
pub mod hosts;
mod local;
mod ops;
pub mod proto;
pub mod server;

pub use hosts::{FileHostStore, HostStore, MemHostStore};
pub use local::{local_owner, LOCAL_HOST};
pub use server::{Action, GrantedStyle, NlmConfig, NlmServer, NlmStats, Unacknowledged};
