//! latchd as a library: only what other crates (the fuzz targets) need.
//! The daemon itself is `main.rs`.

pub mod config;
