//! Latch for programs: lock byte ranges of files on NLM servers through the
//! local latchd. See [`client`].

pub mod client;
pub mod nfs;
