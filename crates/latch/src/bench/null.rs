//! `latch bench null`: NULL round trips per second against a target server
//! and a reference server (e.g. the system rpcbind) in the same run.
//!
//! The two servers are measured alternately, cell by cell, so a
//! noisy neighbour hurts both alike.

use super::common::{measure_null as measure, Proto, Target};
use anyhow::Result;
use std::time::Duration;

/// The whole table: every transport and K, target and reference alternately.
pub fn run(
    target: Target,
    reference: Option<Target>,
    protos: &[Proto],
    ks: &[usize],
    dur: Duration,
) -> Result<()> {
    println!(
        "{:<4} {:>3} {:>12} {:>8} {:>8} {:>12} {:>8} {:>8} {:>7}",
        "", "K", "target/s", "p50us", "p99us", "reference/s", "p50us", "p99us", "ratio"
    );
    for &proto in protos {
        for &k in ks {
            let a = measure(target, proto, k, dur)?;
            let b = reference.map(|r| measure(r, proto, k, dur)).transpose()?;
            let name = proto.name();
            match b {
                Some(b) => println!(
                    "{:<4} {:>3} {:>12.0} {:>8} {:>8} {:>12.0} {:>8} {:>8} {:>7.2}",
                    name,
                    k,
                    a.rate(),
                    a.p50_us,
                    a.p99_us,
                    b.rate(),
                    b.p50_us,
                    b.p99_us,
                    a.rate() / b.rate()
                ),
                None => println!(
                    "{:<4} {:>3} {:>12.0} {:>8} {:>8}",
                    name,
                    k,
                    a.rate(),
                    a.p50_us,
                    a.p99_us
                ),
            }
            if a.errors > 0 {
                println!("     ({} calls to the target went unanswered)", a.errors);
            }
        }
    }
    Ok(())
}
