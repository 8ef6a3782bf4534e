//! The simulator on a fixed set of seeds, and one regression test per bug
//! it found (ignored until the bug is fixed; run them with
//! `cargo test -p latch-sim -- --ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use latch_sim::{run, Options};

fn check(seed: u64) {
    if let Err(f) = run(&Options::seed(seed)) {
        for line in &f.tail {
            eprintln!("{line}");
        }
        panic!("{f}\nreplay: cargo run -p latch-sim --release -- --seed {seed:#x} --trace");
    }
}

/// Seeds that pass today, chosen to span the fault mixes (every seed draws
/// its own subset of loss, duplication, delay, partitions, crashes and
/// disk faults).
#[test]
fn fixed_seeds_run_clean() {
    for seed in [1, 3, 7, 8, 9, 10, 14, 16, 17, 18, 19, 21, 23, 24] {
        check(seed);
    }
}

#[test]
fn a_seed_replays_exactly() {
    let a = run(&Options::seed(3)).unwrap();
    let b = run(&Options::seed(3)).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.counts, b.counts);
    assert_eq!(a.sim_ms, b.sim_ms);
}

/// A GRANTED callback that overtakes the "blocked" answer to its LOCK is
/// refused by the client core (nobody waits yet); a retransmission of the
/// same GRANTED, arriving after "blocked", is accepted and the program is
/// told it holds the lock. The server acts on the first answer it gets
/// (denied) and gives the lock to the next waiter.
#[test]
#[ignore = "bug: client core refuses a GRANTED that arrives before the LOCK's blocked reply"]
fn regression_granted_before_blocked_reply() {
    check(0x16);
}

/// An UNLOCK that gets no answer (partition, loss) is not retried and the
/// client core forgot the lock when the program asked: the server keeps it
/// until the client host reboots ("locked forever").
#[test]
#[ignore = "bug: a failed UNLOCK is never retried; the server keeps the lock"]
fn regression_failed_unlock_leaves_the_lock_on_the_server() {
    check(0xf);
}

/// After partial unlocks the client core still keeps its requests whole, so
/// a reclaim in grace takes back bytes the owner no longer held (checker 5),
/// which can take them from another client's reclaim.
#[test]
#[ignore = "bug: reclaim asks for whole requests after partial unlocks"]
fn regression_reclaim_takes_more_than_was_held() {
    check(0x2);
}

/// A program holding a shared lock on part of a range asks to upgrade the
/// whole range (blocks), then cancels: its shared lock is gone from the
/// server while it still believes it holds it, and another owner gets an
/// exclusive lock there.
#[test]
#[ignore = "bug: cancelling a blocked upgrade loses the shared lock it covered"]
fn regression_cancelled_upgrade_loses_the_lock_it_covered() {
    check(0x14);
}
