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
    for seed in [1, 5, 7, 8, 9, 10, 14, 16, 18, 19, 21, 23, 24, 26] {
        check(seed);
    }
}

#[test]
fn a_seed_replays_exactly() {
    let a = run(&Options::seed(5)).unwrap();
    let b = run(&Options::seed(5)).unwrap();
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
// Fixed: the client core now accepts a GRANTED for a blocking LOCK still in
// flight, and answers every copy of a GRANTED it refused the same way.
fn regression_granted_before_blocked_reply() {
    check(0x16);
}

/// An UNLOCK that gets no answer (partition, loss) is not retried and the
/// client core forgot the lock when the program asked: the server keeps it
/// until the client host reboots ("locked forever").
#[test]
// Fixed: unanswered UNLOCKs and CANCELs are sent again until they get
// through (or the server restarts), and an unanswered LOCK is undone.
fn regression_failed_unlock_leaves_the_lock_on_the_server() {
    check(0xf);
}

/// After partial unlocks the client core still keeps its requests whole, so
/// a reclaim in grace takes back bytes the owner no longer held (checker 5),
/// which can take them from another client's reclaim.
#[test]
// The reclaim part is fixed (the client core keeps exact pieces); the seed
// now fails on liveness instead: a program waits forever.
#[ignore = "open: liveness, a blocked program is never granted"]
fn regression_reclaim_takes_more_than_was_held() {
    check(0x2);
}

/// A program holding a shared lock on part of a range asks to upgrade the
/// whole range (blocks), then cancels: its shared lock is gone from the
/// server while it still believes it holds it, and another owner gets an
/// exclusive lock there.
#[test]
// Fixed: undoing a grant (refused GRANTED, CANCEL crossing it) gives back
// what the owner held in the range before.
fn regression_cancelled_upgrade_loses_the_lock_it_covered() {
    check(0x14);
}

/// Open: found after the fixes above; see the closing note of issue 7.
#[test]
#[ignore = "open: liveness, a blocked program is never granted"]
fn open_liveness_blocked_program() {
    check(3);
}

#[test]
#[ignore = "open: checker 2, a believed exclusive lock given to another owner"]
fn open_believed_lock_given_away() {
    check(0x11);
}

#[test]
#[ignore = "open: checker 5, grace holds bytes the owner did not hold before"]
fn open_grace_holds_more_than_before() {
    check(0x22);
}
