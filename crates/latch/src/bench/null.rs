//! `latch bench null`: NULL round trips per second against a target server
//! and a reference server (e.g. the system rpcbind) in the same run.
//!
//! The two servers are measured alternately, in slices of each cell, by the
//! same client threads, so a noisy neighbour hurts both alike. Without a
//! reference, the target fills both sides.

use super::common::{alternating, null_op, Proto, Target};
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
            let other = reference.unwrap_or(target);
            let (a, b) = alternating(k, dur, |i| {
                Ok((null_op(target, proto, i)?, null_op(other, proto, i)?))
            })?;
            let b = reference.map(|_| b);
            let name = proto.name();
            match b {
                Some(b) => println!(
                    "{:<4} {:>3} {:>12.0} {:>8.1} {:>8.1} {:>12.0} {:>8.1} {:>8.1} {:>7.2}",
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
                    "{:<4} {:>3} {:>12.0} {:>8.1} {:>8.1}",
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
