//! Directed tests: fairness, wake-ups, deadlock shapes, liveness, bounds,
//! ranges, shares and leases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};

use latch_lock::{
    Bound, Engine, Error, Event, FileKey, HostId, LeaseAnswer, LeaseKind, Limits, LockAnswer,
    LockRequest, Mode, Owner, Range, RequestId, Share, ShareAnswer, ShareBits, TestAnswer,
};

const S: Mode = Mode::Shared;
const X: Mode = Mode::Exclusive;

fn own(i: u32) -> Owner {
    Owner::new(HostId(u64::from(i % 3)), i, b"oh")
}

fn fk() -> FileKey {
    FileKey::new(b"file")
}

fn rg(s: u64, e: u64) -> Range {
    Range::new(s, e).unwrap()
}

fn lock(e: &mut Engine, o: u32, r: Range, m: Mode, block: bool) -> (LockAnswer, Vec<Event>) {
    lock_on(e, &fk(), o, r, m, block)
}

fn lock_on(
    e: &mut Engine,
    f: &FileKey,
    o: u32,
    r: Range,
    m: Mode,
    block: bool,
) -> (LockAnswer, Vec<Event>) {
    let ow = own(o);
    let req = LockRequest {
        file: f,
        owner: &ow,
        range: r,
        mode: m,
        block,
        reclaim: false,
        id: None,
    };
    let rep = e.lock(&req, 0).unwrap();
    (rep.answer, rep.events)
}

fn blocked(e: &mut Engine, o: u32, r: Range, m: Mode) -> RequestId {
    match lock(e, o, r, m, true) {
        (LockAnswer::Blocked(id), ev) => {
            assert!(ev.is_empty());
            id
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
}

fn granted(e: &mut Engine, o: u32, r: Range, m: Mode) {
    assert_eq!(lock(e, o, r, m, true).0, LockAnswer::Granted);
}

fn grant_ids(ev: &[Event]) -> Vec<RequestId> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Granted { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

fn unlock(e: &mut Engine, o: u32, r: Range) -> Vec<Event> {
    e.unlock(&fk(), &own(o), r).unwrap().events
}

#[test]
fn fcfs_writer_behind_readers_is_not_overtaken() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 9), S);
    let w = blocked(&mut e, 2, rg(0, 9), X);
    // A later reader is compatible with the holder but not with the writer
    // waiting before it.
    assert_eq!(
        lock(&mut e, 3, rg(0, 9), S, false).0,
        LockAnswer::Denied(None)
    );
    let r = blocked(&mut e, 3, rg(5, 5), S);
    assert_eq!(grant_ids(&unlock(&mut e, 1, Range::ALL)), vec![w]);
    assert_eq!(grant_ids(&unlock(&mut e, 2, Range::ALL)), vec![r]);
}

#[test]
fn release_grants_exactly_the_compatible_prefix() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 99), X);
    let a = blocked(&mut e, 2, rg(0, 99), S);
    let b = blocked(&mut e, 3, rg(10, 20), S);
    let _c = blocked(&mut e, 4, rg(0, 99), X);
    let _d = blocked(&mut e, 5, rg(0, 99), S);
    assert_eq!(grant_ids(&unlock(&mut e, 9, Range::ALL)), vec![]);
    let ev = unlock(&mut e, 1, Range::ALL);
    // Exactly the readers before the writer; the writer and the reader
    // behind it get nothing, not even a wake-up.
    assert_eq!(grant_ids(&ev), vec![a, b]);
    assert_eq!(ev.len(), 2);
    assert_eq!(e.stats().waiters, 2);
}

#[test]
fn two_cycle_is_refused() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 0), X);
    granted(&mut e, 2, rg(1, 1), X);
    blocked(&mut e, 1, rg(1, 1), X);
    assert_eq!(lock(&mut e, 2, rg(0, 0), X, true).0, LockAnswer::Deadlock);
    // Non-blocking is simply denied, with the holder.
    match lock(&mut e, 2, rg(0, 0), X, false).0 {
        LockAnswer::Denied(Some(h)) => assert_eq!(h.owner, own(1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.stats().deadlocks_refused, 1);
}

fn ring(n: u32) {
    let mut e = Engine::new(Limits::default());
    for i in 0..n {
        granted(&mut e, i, rg(u64::from(i), u64::from(i)), X);
    }
    for i in 0..n - 1 {
        blocked(&mut e, i, rg(u64::from(i) + 1, u64::from(i) + 1), X);
    }
    // The last link closes a cycle of n owners.
    assert_eq!(
        lock(&mut e, n - 1, rg(0, 0), X, true).0,
        LockAnswer::Deadlock
    );
    // A newcomer at the end of the chain is not refused, and is granted
    // once the chain unwinds.
    let tail = blocked(&mut e, n, rg(0, 0), X);
    let mut got = Vec::new();
    for i in (0..n).rev() {
        got.extend(grant_ids(&unlock(&mut e, i, Range::ALL)));
    }
    got.extend(grant_ids(&unlock(&mut e, 0, Range::ALL)));
    assert!(got.contains(&tail));
}

#[test]
fn cycle_of_50_owners_is_refused() {
    ring(50);
}

#[test]
fn cycle_of_1000_owners_is_refused() {
    ring(1000);
}

#[test]
fn request_spanning_two_blockers() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 0), X);
    granted(&mut e, 2, rg(5, 5), X);
    granted(&mut e, 3, rg(7, 7), X);
    // Only the second blocker leads back to the requester.
    blocked(&mut e, 2, rg(7, 7), X);
    assert_eq!(lock(&mut e, 3, rg(0, 5), X, true).0, LockAnswer::Deadlock);
    // Without that edge the same shape just waits.
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 0), X);
    granted(&mut e, 2, rg(5, 5), X);
    granted(&mut e, 3, rg(7, 7), X);
    blocked(&mut e, 3, rg(0, 5), X);
}

#[test]
fn cycle_through_an_earlier_waiter() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 9), S);
    blocked(&mut e, 2, rg(0, 9), X); // 2 -> 1
    granted(&mut e, 3, rg(20, 20), X);
    blocked(&mut e, 1, rg(20, 20), X); // 1 -> 3
                                       // 3 holds what 1 waits for; its shared request would wait behind the
                                       // earlier writer 2, which waits on 1: 3 -> 2 -> 1 -> 3.
    assert_eq!(lock(&mut e, 3, rg(0, 9), S, true).0, LockAnswer::Deadlock);
    // Non-blocking: denied by the waiter alone (no holder conflicts).
    assert_eq!(
        lock(&mut e, 3, rg(0, 9), S, false).0,
        LockAnswer::Denied(None)
    );
}

#[test]
fn upgrade_deadlock() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 9), S);
    granted(&mut e, 2, rg(0, 9), S);
    let up = blocked(&mut e, 1, rg(0, 9), X);
    assert_eq!(lock(&mut e, 2, rg(0, 9), X, true).0, LockAnswer::Deadlock);
    // The refused upgrader lets go; the first upgrade completes.
    assert_eq!(grant_ids(&unlock(&mut e, 2, Range::ALL)), vec![up]);
    let l = e.locks(&fk());
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].mode, l[0].range), (X, rg(0, 9)));
}

#[test]
fn downgrade_in_place_never_waits_and_wakes_readers() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 9), X);
    let r = blocked(&mut e, 2, rg(0, 9), S);
    let (a, ev) = lock(&mut e, 1, rg(0, 9), S, true);
    assert_eq!(a, LockAnswer::Granted);
    assert_eq!(grant_ids(&ev), vec![r]);
}

#[test]
fn posix_merge_split_upgrade() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 9), S);
    granted(&mut e, 1, rg(5, 5), X);
    let shape = |e: &Engine| -> Vec<(Mode, Range)> {
        e.locks(&fk()).iter().map(|h| (h.mode, h.range)).collect()
    };
    assert_eq!(shape(&e), vec![(S, rg(0, 4)), (X, rg(5, 5)), (S, rg(6, 9))]);
    granted(&mut e, 1, rg(5, 5), S);
    assert_eq!(shape(&e), vec![(S, rg(0, 9))]);
    granted(&mut e, 1, rg(10, 19), S); // touching: merges
    assert_eq!(shape(&e), vec![(S, rg(0, 19))]);
    unlock(&mut e, 1, rg(3, 4));
    assert_eq!(shape(&e), vec![(S, rg(0, 2)), (S, rg(5, 19))]);
    assert_eq!(e.stats().segments, 2);
}

#[test]
fn test_reports_a_holder() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(10, 19), S);
    assert_eq!(e.test(&fk(), &own(2), rg(0, 9), X), TestAnswer::Free);
    assert_eq!(e.test(&fk(), &own(2), rg(0, 10), S), TestAnswer::Free);
    match e.test(&fk(), &own(2), rg(0, 10), X) {
        TestAnswer::Conflict(h) => {
            assert_eq!((h.owner, h.mode, h.range), (own(1), S, rg(10, 19)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.test(&fk(), &own(1), rg(0, 99), X), TestAnswer::Free);
}

/// TEST names an exclusive holder from the key kept beside its segment:
/// short and long handles (the latter only in the owner table), owners that
/// differ only in host, svid or handle, and an asker whose own segment is
/// the one found first.
#[test]
fn test_names_exclusive_holders_by_key() {
    let mut e = Engine::new(Limits::default());
    let f = fk();
    let long = vec![b'h'; 200];
    let owners = [
        Owner::new(HostId(7), 1, b"oh"),
        Owner::new(HostId(8), 1, b"oh"),
        Owner::new(HostId(7), 2, b"oh"),
        Owner::new(HostId(7), 1, b"oh2"),
        Owner::new(HostId(7), 1, &long),
        Owner::new(HostId(7), 1, &long[..19]),
        Owner::new(HostId(7), 1, &long[..20]),
        Owner::new(HostId(7), 1, b""),
    ];
    for (i, o) in owners.iter().enumerate() {
        let r = rg(10 * i as u64, 10 * i as u64 + 4);
        let req = LockRequest {
            file: &f,
            owner: o,
            range: r,
            mode: X,
            block: false,
            reclaim: false,
            id: None,
        };
        assert_eq!(e.lock(&req, 0).unwrap().answer, LockAnswer::Granted);
    }
    for (i, asker) in owners.iter().enumerate() {
        for (j, holder) in owners.iter().enumerate() {
            let at = 10 * j as u64;
            let got = e.test(&f, asker, rg(at + 2, at + 2), S);
            if i == j {
                assert_eq!(got, TestAnswer::Free, "{i} asks about itself");
            } else {
                let want = TestAnswer::Conflict(latch_lock::Holder {
                    owner: holder.clone(),
                    mode: X,
                    range: rg(at, at + 4),
                });
                assert_eq!(got, want, "{i} asks about {j}");
            }
        }
        // Its own segment is the one found first; another's before it.
        let mine = 10 * i as u64;
        match e.test(&f, asker, rg(mine.saturating_sub(6), mine + 2), X) {
            TestAnswer::Conflict(h) if i > 0 => {
                assert_eq!(h.owner, owners[i - 1]);
                assert_eq!(h.range, rg(mine - 10, mine - 6));
            }
            TestAnswer::Free if i == 0 => {}
            other => panic!("{i}: {other:?}"),
        }
        // And after it.
        match e.test(&f, asker, rg(mine, mine + 14), X) {
            TestAnswer::Conflict(h) if i + 1 < owners.len() => {
                assert_eq!(h.owner, owners[i + 1]);
                assert_eq!(h.range, rg(mine + 10, mine + 14));
            }
            TestAnswer::Free if i + 1 == owners.len() => {}
            other => panic!("{i}: {other:?}"),
        }
    }
    // Someone the engine never saw.
    let stranger = Owner::new(HostId(9), 9, &long);
    match e.test(&f, &stranger, rg(40, 40), X) {
        TestAnswer::Conflict(h) => assert_eq!(h.owner, owners[4]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn overflow_is_clipped_to_the_end() {
    assert_eq!(Range::from_offset_len(5, 0), rg(5, u64::MAX));
    assert_eq!(
        Range::from_offset_len(u64::MAX - 5, 100),
        rg(u64::MAX - 5, u64::MAX)
    );
    assert_eq!(Range::from_offset_len(u64::MAX, 1), rg(u64::MAX, u64::MAX));
    assert_eq!(Range::from_offset_len(10, 5), rg(10, 14));
    assert_eq!(Range::from_offset_len(10, 5).len(), 5);
    assert_eq!(Range::from_offset_len(10, 0).len(), 0);
    assert!(Range::new(5, 4).is_none());
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, Range::from_offset_len(u64::MAX - 1, 1000), X);
    assert_eq!(
        lock(&mut e, 2, Range::from_offset_len(u64::MAX, 1), X, false).0,
        LockAnswer::Denied(Some(latch_lock::Holder {
            owner: own(1),
            mode: X,
            range: rg(u64::MAX - 1, u64::MAX)
        }))
    );
}

#[test]
fn duplicate_blocking_request_keeps_its_id_and_bad_ids_are_refused() {
    let mut e = Engine::new(Limits::default());
    granted(&mut e, 1, rg(0, 9), X);
    let id = blocked(&mut e, 2, rg(0, 9), X);
    assert_eq!(blocked(&mut e, 2, rg(0, 9), X), id);
    assert_eq!(e.stats().waiters, 1);
    let (f, o) = (fk(), own(3));
    let mut req = LockRequest {
        file: &f,
        owner: &o,
        range: rg(0, 0),
        mode: X,
        block: true,
        reclaim: false,
        id: Some(RequestId(7)),
    };
    assert_eq!(
        e.lock(&req, 0).unwrap().answer,
        LockAnswer::Blocked(RequestId(7))
    );
    req.range = rg(1, 1);
    assert_eq!(e.lock(&req, 0), Err(Error::BadRequestId(RequestId(7))));
    req.id = Some(RequestId(RequestId::ENGINE_BASE));
    assert!(e.lock(&req, 0).is_err());
    assert_eq!(e.find_waiter(&f, &o, rg(0, 0), X), Some(RequestId(7)));
    assert!(e.cancel(RequestId(7)).answer);
    assert!(!e.cancel(RequestId(7)).answer);
}

#[test]
fn grace_admits_only_reclaims() {
    let mut e = Engine::new(Limits::default());
    e.set_grace(true);
    assert_eq!(
        lock(&mut e, 1, rg(0, 9), X, false).0,
        LockAnswer::DeniedGrace
    );
    let (f, o) = (fk(), own(1));
    let req = LockRequest {
        file: &f,
        owner: &o,
        range: rg(0, 9),
        mode: X,
        block: false,
        reclaim: true,
        id: None,
    };
    assert_eq!(e.lock(&req, 0).unwrap().answer, LockAnswer::Granted);
    assert_eq!(e.test(&f, &own(2), rg(0, 0), S), TestAnswer::DeniedGrace);
    e.set_grace(false);
    assert!(matches!(
        e.test(&f, &own(2), rg(0, 0), S),
        TestAnswer::Conflict(_)
    ));
}

#[test]
fn release_host_frees_everything_and_grants_others() {
    let mut e = Engine::new(Limits::default());
    // Owners 1 and 4 are on host 1, owner 2 on host 2.
    granted(&mut e, 1, rg(0, 9), X);
    granted(&mut e, 4, rg(20, 29), X);
    let w4 = blocked(&mut e, 4, rg(0, 0), X);
    let w2 = blocked(&mut e, 2, rg(0, 29), S);
    let (f, o1) = (fk(), own(1));
    let sh = Share {
        access: ShareBits::READ,
        deny: ShareBits::NONE,
    };
    assert_eq!(
        e.share(&f, &o1, sh, false, 0).unwrap().answer,
        ShareAnswer::Granted
    );
    let ev = e.release_host(HostId(1)).events;
    // Host 1's own waiter is dropped, not granted.
    assert_eq!(grant_ids(&ev), vec![w2]);
    assert!(!grant_ids(&ev).contains(&w4));
    let st = e.stats();
    assert_eq!(
        (st.waiters, st.shares, st.segments, st.owners),
        (0, 0, 1, 1)
    );
}

#[test]
fn release_host_keeping_keeps_only_the_named_shares() {
    let mut e = Engine::new(Limits::default());
    let sh = Share {
        access: ShareBits::READ,
        deny: ShareBits::WRITE,
    };
    let (f, g) = (fk(), FileKey::new(b"other"));
    // Owners 1 and 4 are on host 1, owner 2 on host 2.
    for (file, o) in [(&f, 1), (&g, 1), (&f, 4), (&f, 2)] {
        assert_eq!(
            e.share(file, &own(o), sh, false, 0).unwrap().answer,
            ShareAnswer::Granted
        );
    }
    granted(&mut e, 4, rg(0, 9), X);
    // Owner 2's share is another host's: naming it changes nothing.
    let keep = [(g.clone(), own(1)), (f.clone(), own(2))];
    let _ = e.release_host_keeping(HostId(1), &keep);
    let on = |e: &Engine, file: &FileKey| -> Vec<u32> {
        let mut v: Vec<u32> = e.shares_on(file).iter().map(|(o, _)| o.svid).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(on(&e, &f), vec![2]);
    assert_eq!(on(&e, &g), vec![1]);
    assert_eq!(e.host_entries(HostId(1)), 1);
    // Host 1's lock went: another owner gets the range.
    granted(&mut e, 5, rg(0, 9), X);
    // The kept share still stands against a conflicting one.
    let w = Share {
        access: ShareBits::WRITE,
        deny: ShareBits::NONE,
    };
    assert_eq!(
        e.share(&g, &own(2), w, false, 0).unwrap().answer,
        ShareAnswer::Denied
    );
    // And a plain release frees it.
    let _ = e.release_host(HostId(1));
    assert_eq!(on(&e, &g), Vec::<u32>::new());
    assert_eq!(e.host_entries(HostId(1)), 0);
}

#[test]
fn liveness_random_schedules() {
    // A small LCG: deterministic, no RNG crate needed.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _round in 0..30 {
        let mut e = Engine::new(Limits::default());
        let mut waiting: HashSet<RequestId> = HashSet::new();
        let mut granted_ids: HashMap<RequestId, usize> = HashMap::new();
        let mut note = |ev: Vec<Event>, waiting: &mut HashSet<RequestId>| {
            for id in grant_ids(&ev) {
                *granted_ids.entry(id).or_default() += 1;
                assert!(waiting.remove(&id), "granted something not waiting");
            }
        };
        for _ in 0..300 {
            let o = next(12) as u32;
            let s = next(40);
            let r = rg(s, s + next(8));
            let m = if next(3) == 0 { X } else { S };
            match next(10) {
                0..=6 => {
                    let (a, ev) = lock(&mut e, o, r, m, true);
                    note(ev, &mut waiting);
                    if let LockAnswer::Blocked(id) = a {
                        waiting.insert(id);
                    }
                }
                _ => {
                    let ev = unlock(&mut e, o, r);
                    note(ev, &mut waiting);
                }
            }
        }
        // Everyone lets go of everything, round after round: every request
        // that was not refused is granted.
        for _ in 0..=waiting.len() {
            for o in 0..12 {
                let ev = unlock(&mut e, o, Range::ALL);
                note(ev, &mut waiting);
            }
        }
        assert!(waiting.is_empty(), "never granted: {waiting:?}");
        assert_eq!(e.stats().waiters, 0);
        assert!(granted_ids.values().all(|&n| n == 1));
    }
}

fn small(f: impl FnOnce(&mut Limits)) -> Engine {
    let mut l = Limits::default();
    f(&mut l);
    Engine::new(l)
}

#[test]
fn bound_waiters_per_file() {
    let mut e = small(|l| l.waiters_per_file = 2);
    granted(&mut e, 1, rg(0, 9), X);
    blocked(&mut e, 2, rg(0, 9), X);
    blocked(&mut e, 3, rg(0, 9), X);
    let before = e.stats();
    let (f, o) = (fk(), own(4));
    let req = LockRequest {
        file: &f,
        owner: &o,
        range: rg(0, 9),
        mode: X,
        block: true,
        reclaim: false,
        id: None,
    };
    assert_eq!(e.lock(&req, 0), Err(Error::NoLocks(Bound::WaitersPerFile)));
    assert_eq!(e.stats(), before);
}

#[test]
fn bound_entries_per_host_and_total() {
    let mut e = small(|l| l.entries_per_host = 3);
    // Owners 0 and 3 share host 0.
    granted(&mut e, 0, rg(0, 4), X);
    granted(&mut e, 0, rg(8, 8), X);
    granted(&mut e, 3, rg(40, 40), X);
    let before = (e.stats(), e.locks(&fk()));
    let (f, o) = (fk(), own(3));
    let req = LockRequest {
        file: &f,
        owner: &o,
        range: rg(60, 60),
        mode: X,
        block: false,
        reclaim: false,
        id: None,
    };
    assert_eq!(e.lock(&req, 0), Err(Error::NoLocks(Bound::EntriesPerHost)));
    // An unlock that would split a segment needs room too.
    assert_eq!(
        e.unlock(&f, &own(0), rg(2, 2)),
        Err(Error::NoLocks(Bound::EntriesPerHost))
    );
    assert_eq!((e.stats(), e.locks(&fk())), before);
    // Merging frees room; other hosts are not affected.
    granted(&mut e, 0, rg(0, 9), S);
    assert_eq!(e.stats().entries, 2);
    granted(&mut e, 3, rg(60, 60), X);
    granted(&mut e, 1, rg(20, 20), X);

    let mut e = small(|l| l.entries_total = 2);
    granted(&mut e, 1, rg(0, 9), S);
    granted(&mut e, 2, rg(20, 29), S);
    let before = (e.stats(), e.locks(&fk()));
    assert_eq!(
        e.unlock(&fk(), &own(1), rg(4, 5)),
        Err(Error::NoLocks(Bound::EntriesTotal))
    );
    let (f, o) = (fk(), own(5));
    let req = LockRequest {
        file: &f,
        owner: &o,
        range: rg(40, 40),
        mode: X,
        block: false,
        reclaim: false,
        id: None,
    };
    assert_eq!(e.lock(&req, 0), Err(Error::NoLocks(Bound::EntriesTotal)));
    assert_eq!((e.stats(), e.locks(&fk())), before);
}

#[test]
fn bound_key_lengths() {
    let mut e = small(|l| {
        l.owner_handle_len_max = 4;
        l.file_key_len_max = 4;
    });
    let long_owner = Owner::new(HostId(1), 1, b"12345");
    let long_file = FileKey::new(b"12345");
    let f = FileKey::new(b"1234");
    let req = LockRequest {
        file: &f,
        owner: &long_owner,
        range: rg(0, 0),
        mode: X,
        block: false,
        reclaim: false,
        id: None,
    };
    assert_eq!(e.lock(&req, 0), Err(Error::NoLocks(Bound::OwnerHandleLen)));
    let o = Owner::new(HostId(1), 1, b"1234");
    let req = LockRequest {
        file: &long_file,
        owner: &o,
        ..req
    };
    assert_eq!(e.lock(&req, 0), Err(Error::NoLocks(Bound::FileKeyLen)));
    assert_eq!(e.stats().owners, 0);
    assert_eq!(e.stats().files, 0);
}

#[test]
fn share_conflict_table() {
    for a1 in 0..4 {
        for d1 in 0..4 {
            for a2 in 0..4 {
                for d2 in 0..4 {
                    let mut e = Engine::new(Limits::default());
                    let s1 = Share {
                        access: ShareBits::from_wire(a1).unwrap(),
                        deny: ShareBits::from_wire(d1).unwrap(),
                    };
                    let s2 = Share {
                        access: ShareBits::from_wire(a2).unwrap(),
                        deny: ShareBits::from_wire(d2).unwrap(),
                    };
                    let f = fk();
                    assert_eq!(
                        e.share(&f, &own(1), s1, false, 0).unwrap().answer,
                        ShareAnswer::Granted
                    );
                    let want = if (a1 & d2) != 0 || (a2 & d1) != 0 {
                        ShareAnswer::Denied
                    } else {
                        ShareAnswer::Granted
                    };
                    assert_eq!(e.share(&f, &own(2), s2, false, 0).unwrap().answer, want);
                    // The same owner never conflicts with itself.
                    let mut e = Engine::new(Limits::default());
                    let _ = e.share(&f, &own(1), s1, false, 0).unwrap();
                    assert_eq!(
                        e.share(&f, &own(1), s2, false, 0).unwrap().answer,
                        ShareAnswer::Granted
                    );
                }
            }
        }
    }
}

#[test]
fn read_leases_break_for_a_writer_and_expire() {
    let mut e = small(|l| l.lease_break_time = 100);
    let f = fk();
    assert_eq!(
        e.lease(&f, &own(1), LeaseKind::Read, 0).unwrap().answer,
        LeaseAnswer::Granted
    );
    assert_eq!(
        e.lease(&f, &own(2), LeaseKind::Read, 0).unwrap().answer,
        LeaseAnswer::Granted
    );
    let req = LockRequest {
        file: &f,
        owner: &own(3),
        range: rg(0, 0),
        mode: X,
        block: false,
        reclaim: false,
        id: None,
    };
    let rep = e.lock(&req, 5).unwrap();
    assert_eq!(rep.answer, LockAnswer::Denied(None));
    let breaks: Vec<_> = rep
        .events
        .iter()
        .filter(|e| matches!(e, Event::LeaseBreak { to: None, .. }))
        .collect();
    assert_eq!(breaks.len(), 2);
    // Announced once only.
    assert!(e.lock(&req, 6).unwrap().events.is_empty());
    let id = match e
        .lock(
            &LockRequest {
                block: true,
                ..req.clone()
            },
            7,
        )
        .unwrap()
    {
        r if matches!(r.answer, LockAnswer::Blocked(_)) => {
            assert!(r.events.is_empty());
            let LockAnswer::Blocked(id) = r.answer else {
                unreachable!()
            };
            id
        }
        r => panic!("{r:?}"),
    };
    assert_eq!(e.next_lease_deadline(), Some(105));
    assert!(e.unlease(&f, &own(1)).events.is_empty());
    assert!(e.expire_leases(104).events.is_empty());
    let ev = e.expire_leases(105).events;
    assert!(ev.contains(&Event::LeaseRevoked {
        file: f.clone(),
        holder: own(2),
        to: None
    }));
    assert_eq!(grant_ids(&ev), vec![id]);
    assert_eq!(e.next_lease_deadline(), None);
}

#[test]
fn write_lease_breaks_to_read_for_a_reader() {
    let mut e = Engine::new(Limits::default());
    let f = fk();
    assert_eq!(
        e.lease(&f, &own(1), LeaseKind::Write, 0).unwrap().answer,
        LeaseAnswer::Granted
    );
    assert_eq!(
        e.lease(&f, &own(2), LeaseKind::Read, 0).unwrap().answer,
        LeaseAnswer::Denied
    );
    let (a, ev) = lock(&mut e, 3, rg(0, 9), S, true);
    let LockAnswer::Blocked(id) = a else {
        panic!("{a:?}")
    };
    // The break was already announced (to read) by the lease request.
    assert!(ev.is_empty());
    // A writer needs more: the break is strengthened, announced again.
    let ev = e
        .share(
            &f,
            &own(4),
            Share {
                access: ShareBits::WRITE,
                deny: ShareBits::NONE,
            },
            false,
            0,
        )
        .unwrap();
    assert_eq!(ev.answer, ShareAnswer::Denied);
    assert_eq!(
        ev.events,
        vec![Event::LeaseBreak {
            file: f.clone(),
            holder: own(1),
            to: None
        }]
    );
    // Downgrading satisfies the reader.
    let ev = e.lease(&f, &own(1), LeaseKind::Read, 1).unwrap();
    assert_eq!(grant_ids(&ev.events), vec![id]);
    // The break to nothing is still on (downgrading did not satisfy it):
    // a writer is queued without a second announcement.
    let (a, ev) = lock(&mut e, 5, rg(100, 100), X, true);
    assert!(matches!(a, LockAnswer::Blocked(_)));
    assert!(ev.is_empty());
    assert!(e.next_lease_deadline().is_some());
    assert_eq!(e.stats().leases, 1);
    // A lease is refused outright while someone else waits for (or holds)
    // an exclusive lock.
    assert_eq!(
        e.lease(&f, &own(6), LeaseKind::Read, 2).unwrap().answer,
        LeaseAnswer::Denied
    );
}

#[test]
fn many_shared_owners_do_not_slow_a_conflict_check() {
    let mut e = Engine::new(Limits::default());
    for i in 0..20_000 {
        granted(&mut e, i, Range::ALL, S);
    }
    match e.test(&fk(), &own(99_999), rg(5, 5), X) {
        TestAnswer::Conflict(h) => assert_eq!(h.mode, S),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.test(&fk(), &own(99_999), rg(5, 5), S), TestAnswer::Free);
    granted(&mut e, 99_999, rg(5, 5), S);
    assert_eq!(e.stats().segments, 20_001);
}

#[test]
fn release_host_where_frees_only_the_selected_owners() {
    let mut e = Engine::new(Limits::default());
    // Owners 1, 4 and 7 are on host 1; owner 2 on host 2.
    granted(&mut e, 1, rg(0, 9), X);
    granted(&mut e, 4, rg(20, 29), X);
    let sh = Share {
        access: ShareBits::READ,
        deny: ShareBits::WRITE,
    };
    assert_eq!(
        e.share(&fk(), &own(7), sh, false, 0).unwrap().answer,
        ShareAnswer::Granted
    );
    let w1 = blocked(&mut e, 2, rg(0, 9), X);
    let w4 = blocked(&mut e, 5, rg(20, 29), X);
    // Owner 1's lock and owner 7's share go; owner 4's lock stays.
    let ev = e.release_host_where(HostId(1), &[], |o| o.svid != 4).events;
    assert_eq!(grant_ids(&ev), vec![w1]);
    assert!(e.shares_on(&fk()).is_empty());
    assert_eq!(e.host_entries(HostId(1)), 1);
    // The kept owner's lock still conflicts, and its release grants w4.
    let ev = e.release_host(HostId(1)).events;
    assert_eq!(grant_ids(&ev), vec![w4]);
}

/// `held_since`: stamped when an owner goes from holding nothing on the
/// file to holding something, at the lock's `now` or, for a grant made
/// inside a call that takes no time, at the last `set_clock`; kept while
/// the hold grows or splits; gone with the last byte.
#[test]
fn held_since_counts_from_the_first_hold_or_the_grant() {
    let mut e = Engine::new(Limits::default());
    let (f, o1, o2) = (fk(), own(1), own(2));
    let at = |e: &mut Engine, o: &Owner, r: Range, now: u64| {
        let req = LockRequest {
            file: &f,
            owner: o,
            range: r,
            mode: X,
            block: true,
            reclaim: false,
            id: None,
        };
        e.lock(&req, now).unwrap().answer
    };
    assert_eq!(at(&mut e, &o1, rg(0, 9), 100), LockAnswer::Granted);
    assert!(matches!(
        at(&mut e, &o2, rg(0, 4), 150),
        LockAnswer::Blocked(_)
    ));
    assert_eq!(e.held_since(&f, &o2), None, "a waiter holds nothing");
    assert_eq!(at(&mut e, &o1, rg(10, 19), 200), LockAnswer::Granted);
    assert!(e.unlock(&f, &o1, rg(12, 13)).unwrap().events.is_empty());
    assert_eq!(e.held_since(&f, &o1), Some(100));
    e.set_clock(300);
    let ev = e.unlock(&f, &o1, Range::ALL).unwrap().events;
    assert_eq!(grant_ids(&ev).len(), 1);
    assert_eq!(e.held_since(&f, &o1), None);
    assert_eq!(e.held_since(&f, &o2), Some(300), "stamped at the grant");
    assert_eq!(at(&mut e, &o1, rg(50, 50), 400), LockAnswer::Granted);
    assert_eq!(e.held_since(&f, &o1), Some(400), "a new hold starts over");
}

/// Files that emptied and were forgotten (past the idle files kept) lend
/// their states to new files: a new file starts with nothing of the old
/// one's locks, waiters or shares, and behaves as a file never seen.
#[test]
fn a_new_file_on_a_forgotten_files_state_starts_empty() {
    let mut e = Engine::new(Limits::default());
    let rw = Share {
        access: ShareBits::from_wire(3).unwrap(),
        deny: ShareBits::from_wire(3).unwrap(),
    };
    for i in 0..1_000u32 {
        let f = FileKey::new(format!("old{i}").as_bytes());
        assert_eq!(
            lock_on(&mut e, &f, 1, rg(0, 9), X, false).0,
            LockAnswer::Granted
        );
        assert_eq!(
            lock_on(&mut e, &f, 2, rg(20, 29), S, false).0,
            LockAnswer::Granted
        );
        let (LockAnswer::Blocked(id), _) = lock_on(&mut e, &f, 4, rg(5, 25), X, true) else {
            panic!("not blocked");
        };
        assert_eq!(
            e.share(&f, &own(1), rw, false, 0).unwrap().answer,
            ShareAnswer::Granted
        );
        assert!(e.cancel(id).answer);
        assert!(e.unshare(&f, &own(1)).answer);
        assert!(e.unlock(&f, &own(1), rg(0, 9)).unwrap().events.is_empty());
        assert!(e.unlock(&f, &own(2), rg(20, 29)).unwrap().events.is_empty());
    }
    let st = e.stats();
    assert_eq!((st.segments, st.waiters, st.shares), (0, 0, 0));
    for i in 0..300u32 {
        let f = FileKey::new(format!("new{i}").as_bytes());
        assert_eq!(e.test(&f, &own(3), Range::ALL, X), TestAnswer::Free);
        assert!(e.shares_on(&f).is_empty());
        assert_eq!(
            e.share(&f, &own(3), rw, false, 0).unwrap().answer,
            ShareAnswer::Granted
        );
        let (answer, events) = lock_on(&mut e, &f, 3, rg(7, 7), X, false);
        assert_eq!(answer, LockAnswer::Granted);
        assert!(events.is_empty());
        match e.test(&f, &own(5), Range::ALL, S) {
            TestAnswer::Conflict(h) => {
                assert_eq!((h.owner, h.mode, h.range), (own(3), X, rg(7, 7)))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.shares_on(&f), vec![(own(3), rw)]);
    }
    let st = e.stats();
    assert_eq!((st.segments, st.waiters, st.shares), (300, 0, 300));
}
