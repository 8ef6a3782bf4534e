//! ONC RPC (RFC 5531), sans-IO: messages and credentials, TCP record marking,
//! program dispatch with a duplicate request cache, the client call table, and
//! port mapper / rpcbind (client encoding and the embedded server).
//!
//! Nothing here reads a socket or the clock; the `latch-io` crate drives it.

pub mod client;
pub mod dispatch;
pub mod drc;
pub mod msg;
pub mod record;
pub mod rpcbind;

pub use dispatch::{CallContext, Dispatcher, Outcome, Program, Transport};
pub use msg::{Credential, RpcError, Xid};
