//! Benchmarks run by `latch bench`.

pub mod common;
pub mod lock;
pub mod null;

pub use common::{Proto, Target};
