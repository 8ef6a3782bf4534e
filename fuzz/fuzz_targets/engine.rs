//! The lock engine against its naive reference model, on operation
//! sequences the fuzzer makes up: every answer, every event and the whole
//! state must agree after every step, and every waiter must be granted once
//! everyone lets go.
#![no_main]

#[path = "../../crates/lock/tests/model/harness.rs"]
#[allow(dead_code, clippy::all)]
mod harness;
#[path = "../../crates/lock/tests/model/reference.rs"]
#[allow(dead_code, clippy::all)]
mod reference;

// `reference` names these as `super::...`.
pub use harness::*;

use latch_lock::{Engine, Limits};
use libfuzzer_sys::fuzz_target;
use reference::Model;

/// Reads small numbers off the input.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self, n: usize) -> usize {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        usize::from(b) % n.max(1)
    }
    fn flag(&mut self) -> bool {
        self.next(2) == 1
    }
    fn range(&mut self) -> R {
        let a = self.next(16);
        match self.next(5) {
            0 => R {
                start: a,
                end: None,
            },
            _ => {
                let b = self.next(16);
                R {
                    start: a.min(b),
                    end: Some(a.max(b)),
                }
            }
        }
    }
    fn op(&mut self) -> Op {
        let (f, o) = (self.next(FILES), self.next(OWNERS.len()));
        match self.next(14) {
            0..=3 => Op::Lock {
                f,
                o,
                r: self.range(),
                x: self.flag(),
                block: self.flag(),
                reclaim: self.flag(),
                caller_id: self.flag(),
            },
            4 | 5 => Op::Unlock {
                f,
                o,
                r: self.range(),
            },
            6 => Op::Test {
                f,
                o,
                r: self.range(),
                x: self.flag(),
            },
            7 => Op::Cancel(self.next(8)),
            8 => Op::ReleaseOwner(o),
            9 => Op::ReleaseHost(1 + self.next(2) as u64),
            10 => Op::Share {
                f,
                o,
                access: self.next(4) as u32,
                deny: self.next(4) as u32,
                reclaim: self.flag(),
            },
            11 => Op::Lease {
                f,
                o,
                write: self.flag(),
            },
            12 => Op::Tick(self.next(8) as u64),
            _ => match self.next(3) {
                0 => Op::Unshare { f, o },
                1 => Op::Unlease { f, o },
                _ => Op::Grace(self.flag()),
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let limits = Limits {
        waiters_per_file: 1 + b.next(8),
        entries_per_host: 2 + b.next(30),
        entries_total: 4 + b.next(60),
        lease_break_time: BREAK_TIME,
        ..Limits::default()
    };
    let mut h = Harness {
        e: Engine::new(limits),
        m: Model::new(limits),
        now: 0,
        next_caller_id: 0,
    };
    for _ in 0..64 {
        if b.0.is_empty() {
            break;
        }
        let op = b.op();
        h.run(&op);
    }
    h.drain();
});
