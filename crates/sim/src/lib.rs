//! A deterministic simulator for Latch (issue 7): the real sans-IO NLM
//! server, client core and status monitor of one server host and a few
//! client hosts, behind their real RPC dispatchers (duplicate request cache
//! included), over a simulated datagram network driven by a seeded PRNG and
//! a virtual clock.
//!
//! Each seed picks its own mix of faults (swarm testing): loss,
//! duplication, delay with reordering, asymmetric partitions that heal,
//! client and server crashes with restarts, and failed writes of the status
//! monitor's store. Local programs on the client hosts lock, unlock, test
//! and cancel over a few files and small overlapping ranges. After every
//! step the checkers in [`check`] run; then a liveness phase heals every
//! fault, lets the programs release what they hold, and requires that the
//! server and every client end up empty within a bounded virtual time.
//!
//! A run is a pure function of its seed: the same seed gives the same trace
//! (its hash is in the [`Report`]).

pub mod check;
pub mod pcap;
pub mod rng;
pub mod workload;
pub mod world;

pub use world::{Counts, Faults, Options, Report, World};

/// Why a seed failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub at_ms: u64,
    pub reason: String,
    /// The last trace lines before the failure.
    pub tail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at t={}ms: {}",
            self.seed, self.at_ms, self.reason
        )
    }
}

/// Runs one seed to the end.
pub fn run(opts: &Options) -> Result<Report, Failure> {
    let mut w = World::new(opts);
    w.run()
}
