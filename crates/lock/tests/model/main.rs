//! The engine against a naive reference model, over random operation
//! sequences.
//!
//! The model knows nothing of trees, plans or incremental wake-ups: a file
//! is 17 cells (bytes 0..=15, and cell 16 standing for [16, u64::MAX]), each
//! holding a mode per owner; blocked requests are a FIFO list; after every
//! operation it grants, from the front, every waiter that nothing held,
//! nothing earlier and no lease blocks, until none is left to grant; the
//! deadlock check builds the whole wait-for graph and searches it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use latch_lock::{Engine, Limits};
use proptest::prelude::*;
use reference::Model;

mod harness;
mod reference;

// `reference` names these as `super::...`.
pub use harness::*;

fn range_strategy() -> impl Strategy<Value = R> {
    (0usize..16, prop::option::weighted(0.8, 0usize..16)).prop_map(|(a, b)| match b {
        Some(b) => R {
            start: a.min(b),
            end: Some(a.max(b)),
        },
        None => R {
            start: a,
            end: None,
        },
    })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let f = 0..FILES;
    let o = 0..OWNERS.len();
    prop_oneof![
        12 => (f.clone(), o.clone(), range_strategy(), any::<bool>(), prop::bool::weighted(0.6), prop::bool::weighted(0.2), any::<bool>())
            .prop_map(|(f, o, r, x, block, reclaim, caller_id)| Op::Lock { f, o, r, x, block, reclaim, caller_id }),
        5 => (f.clone(), o.clone(), range_strategy()).prop_map(|(f, o, r)| Op::Unlock { f, o, r }),
        3 => (f.clone(), o.clone(), range_strategy(), any::<bool>()).prop_map(|(f, o, r, x)| Op::Test { f, o, r, x }),
        2 => (0usize..8).prop_map(Op::Cancel),
        1 => o.clone().prop_map(Op::ReleaseOwner),
        1 => (1u64..=2).prop_map(Op::ReleaseHost),
        2 => (f.clone(), o.clone(), 0u32..4, 0u32..4, prop::bool::weighted(0.2))
            .prop_map(|(f, o, access, deny, reclaim)| Op::Share { f, o, access, deny, reclaim }),
        1 => (f.clone(), o.clone()).prop_map(|(f, o)| Op::Unshare { f, o }),
        2 => (f.clone(), o.clone(), any::<bool>()).prop_map(|(f, o, write)| Op::Lease { f, o, write }),
        1 => (f.clone(), o.clone()).prop_map(|(f, o)| Op::Unlease { f, o }),
        2 => (0u64..8).prop_map(Op::Tick),
        1 => any::<bool>().prop_map(Op::Grace),
    ]
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits {
            lease_break_time: BREAK_TIME,
            ..Limits::default()
        }),
        (2usize..5, 4usize..12, 6usize..20).prop_map(|(w, h, t)| Limits {
            waiters_per_file: w,
            entries_per_host: h,
            entries_total: t,
            lease_break_time: BREAK_TIME,
            ..Limits::default()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400), failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_model(limits in limits_strategy(), ops in prop::collection::vec(op_strategy(), 1..80)) {
        let mut h = Harness { e: Engine::new(limits), m: Model::new(limits), now: 0, next_caller_id: 0 };
        for op in &ops {
            h.run(op);
        }
        h.drain();
    }
}

#[test]
fn owner_index_roundtrip() {
    for i in 0..OWNERS.len() {
        assert_eq!(owner_index(&owner(i)), i);
    }
    assert_eq!(file_index(&file(1)), 1);
}
