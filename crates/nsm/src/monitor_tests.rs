#![allow(clippy::disallowed_methods)] // tests may read the clock

use super::*;
use crate::store::MemStore;
use latch_oncrpc::{Credential, Transport, Xid};
use latch_xdr::FixedOpaque;
use std::time::Instant;

fn name(s: &str) -> Name {
    Name::from_text(s).unwrap()
}

fn my_id(prog: u32) -> MyId {
    MyId {
        my_name: name("localhost"),
        my_prog: prog,
        my_vers: 3,
        my_proc: 16,
    }
}

fn mon(host: &str, prog: u32, p: u8) -> Mon {
    Mon {
        mon_id: MonId {
            mon_name: name(host),
            my_id: my_id(prog),
        },
        priv_: FixedOpaque([p; 16]),
    }
}

fn call(
    m: &mut Monitor<MemStore>,
    from: &str,
    proc_: u32,
    args: &impl Encode,
) -> (Outcome, Vec<u8>) {
    call_at(m, from, proc_, args, Instant::now())
}

fn call_at(
    m: &mut Monitor<MemStore>,
    from: &str,
    proc_: u32,
    args: &impl Encode,
    now: Instant,
) -> (Outcome, Vec<u8>) {
    let cred = Credential::None;
    let ctx = CallContext {
        peer: format!("{from}:700").parse().unwrap(),
        local: None,
        transport: Transport::Udp,
        xid: Xid(1),
        vers: 1,
        proc_,
        cred: &cred,
        now,
        wall_secs: 0,
    };
    let mut w = Writer::new();
    let o = m.call(&ctx, &latch_xdr::to_bytes(args), &mut w);
    (o, w.into_bytes())
}

fn stat_res(b: &[u8]) -> SmStatRes {
    latch_xdr::from_bytes(b).unwrap()
}

fn started(store: &MemStore) -> Monitor<MemStore> {
    let cfg = MonitorConfig {
        names: vec![b"server".to_vec()],
        max_hosts: 3,
        ..MonitorConfig::default()
    };
    Monitor::start(store.clone(), cfg).unwrap()
}

const LO: &str = "127.0.0.1";

fn callbacks(m: &mut Monitor<MemStore>) -> Vec<(u32, Status)> {
    m.take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Callback { prog, args, .. } => Some((prog, args)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_state_is_odd_and_grows_across_restarts() {
    let store = MemStore::default();
    let mut seen = vec![];
    for _ in 0..4 {
        seen.push(started(&store).state());
    }
    assert_eq!(seen, vec![1, 3, 5, 7]);
    store.disk.lock().unwrap().state = 10; // a crash while "down"
    assert_eq!(started(&store).state(), 11);
    store.disk.lock().unwrap().state = u32::MAX;
    assert_eq!(started(&store).state(), 1, "wraps to the first odd number");
}

#[test]
fn a_start_that_cannot_save_its_state_fails() {
    let store = MemStore::default();
    store.disk.lock().unwrap().fail_writes = 1;
    assert!(Monitor::start(store.clone(), MonitorConfig::default()).is_err());
}

#[test]
fn stat_mon_unmon_and_unmon_all_answer_with_the_state() {
    let store = MemStore::default();
    let mut m = started(&store);
    let (o, r) = call(
        &mut m,
        LO,
        SM_STAT,
        &SmName {
            mon_name: name("x"),
        },
    );
    assert_eq!(
        (o, stat_res(&r)),
        (
            Outcome::Reply,
            SmStatRes {
                res_stat: STAT_SUCC,
                state: 1
            }
        )
    );
    let (_, r) = call(&mut m, LO, SM_MON, &mon("client", 100_021, 1));
    assert_eq!(
        stat_res(&r),
        SmStatRes {
            res_stat: STAT_SUCC,
            state: 1
        }
    );
    call(&mut m, LO, SM_MON, &mon("client", 300_000, 2));
    call(&mut m, LO, SM_MON, &mon("other", 100_021, 3));
    assert_eq!(store.disk.lock().unwrap().monitored.len(), 2);
    assert_eq!(
        store.disk.lock().unwrap().monitored[&b"client".to_vec()]
            .regs
            .len(),
        2
    );
    // UNMON removes one registration; the host stays for the other.
    let id = MonId {
        mon_name: name("CLIENT"),
        my_id: my_id(100_021),
    };
    let (_, r) = call(&mut m, LO, SM_UNMON, &id);
    assert_eq!(latch_xdr::from_bytes::<SmStat>(&r).unwrap().state, 1);
    assert_eq!(
        store.disk.lock().unwrap().monitored[&b"client".to_vec()]
            .regs
            .len(),
        1
    );
    // UNMON_ALL for 100021 removes "other" entirely.
    call(&mut m, LO, SM_UNMON_ALL, &my_id(100_021));
    let names: Vec<_> = store
        .disk
        .lock()
        .unwrap()
        .monitored
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, vec![b"client".to_vec()]);
    assert_eq!(m.monitored().count(), 1);
}

#[test]
fn only_loopback_may_monitor() {
    let store = MemStore::default();
    let mut m = started(&store);
    let (o, r) = call(&mut m, "10.0.0.5", SM_MON, &mon("client", 100_021, 1));
    assert_eq!((o, stat_res(&r).res_stat), (Outcome::Reply, STAT_FAIL));
    call(&mut m, LO, SM_MON, &mon("client", 100_021, 1));
    let id = MonId {
        mon_name: name("client"),
        my_id: my_id(100_021),
    };
    assert_eq!(call(&mut m, "10.0.0.5", SM_UNMON, &id).0, Outcome::NoReply);
    assert_eq!(
        call(&mut m, "10.0.0.5", SM_UNMON_ALL, &my_id(100_021)).0,
        Outcome::NoReply
    );
    assert_eq!(
        call(&mut m, "10.0.0.5", SM_SIMU_CRASH, &()).0,
        Outcome::NoReply
    );
    assert_eq!(m.state(), 1);
    assert_eq!(store.disk.lock().unwrap().monitored.len(), 1);
    assert_eq!(m.stats.refused_remote, 4);
    // IPv4-mapped loopback on a dual-stack socket counts as loopback.
    let (_, r) = call(&mut m, "[::ffff:127.0.0.1]", SM_MON, &mon("c2", 100_021, 1));
    assert_eq!(stat_res(&r).res_stat, STAT_SUCC);
}

#[test]
fn notify_calls_back_once_per_new_state_with_the_private_data() {
    let store = MemStore::default();
    let mut m = started(&store);
    call(&mut m, LO, SM_MON, &mon("10.0.0.7", 100_021, 9));
    call(&mut m, LO, SM_MON, &mon("10.0.0.7", 300_000, 8));
    m.take_actions();
    let n = |s| StatChge {
        mon_name: name("10.0.0.7"),
        state: s,
    };
    call(&mut m, "10.0.0.7", SM_NOTIFY, &n(5));
    let cb = callbacks(&mut m);
    assert_eq!(cb.len(), 2);
    assert_eq!(
        cb[0].1,
        Status {
            mon_name: name("10.0.0.7"),
            state: 5,
            priv_: FixedOpaque([9; 16])
        }
    );
    assert_eq!(cb[1].0, 300_000);
    // Repeated, then older: stale, nothing.
    call(&mut m, "10.0.0.7", SM_NOTIFY, &n(5));
    call(&mut m, "10.0.0.7", SM_NOTIFY, &n(3));
    assert!(callbacks(&mut m).is_empty());
    assert_eq!(m.stats.notify_stale, 2);
    // Newer, compared as unsigned.
    call(&mut m, "10.0.0.7", SM_NOTIFY, &n(0x8000_0001));
    assert_eq!(callbacks(&mut m).len(), 2);
    // The state seen survives a restart of ours... but the host is then to
    // be notified, not monitored, so nothing more is called back.
    assert_eq!(
        store.disk.lock().unwrap().monitored[&b"10.0.0.7".to_vec()].last_state,
        Some(0x8000_0001)
    );
}

#[test]
fn a_state_seen_in_a_lock_makes_an_older_notify_stale() {
    let store = MemStore::default();
    let mut m = started(&store);
    call(&mut m, LO, SM_MON, &mon("10.0.0.7", 100_021, 0));
    m.observed_state(b"10.0.0.7", 9);
    call(
        &mut m,
        "10.0.0.7",
        SM_NOTIFY,
        &StatChge {
            mon_name: name("10.0.0.7"),
            state: 9,
        },
    );
    assert!(callbacks(&mut m).is_empty());
}

#[test]
fn notify_from_a_stranger_is_ignored_unless_the_check_is_off() {
    let store = MemStore::default();
    let mut m = started(&store);
    call(&mut m, LO, SM_MON, &mon("client", 100_021, 0));
    let n = StatChge {
        mon_name: name("client"),
        state: 3,
    };
    call(&mut m, "10.9.9.9", SM_NOTIFY, &n);
    assert!(callbacks(&mut m).is_empty());
    assert_eq!(m.stats.notify_untrusted, 1);
    // Once the name is known to resolve to the sender, it is trusted.
    m.learn_addrs(b"client", &["10.9.9.9".parse().unwrap()]);
    call(&mut m, "10.9.9.9", SM_NOTIFY, &n);
    assert_eq!(callbacks(&mut m).len(), 1);
    // A host known at an address, announcing itself under another name.
    call(
        &mut m,
        "10.9.9.9",
        SM_NOTIFY,
        &StatChge {
            mon_name: name("client.example"),
            state: 5,
        },
    );
    assert_eq!(callbacks(&mut m).len(), 1);
    // With the check off, anyone may.
    let mut open = Monitor::start(
        MemStore::default(),
        MonitorConfig {
            notify_check: NotifyCheck::Off,
            ..MonitorConfig::default()
        },
    )
    .unwrap();
    call(&mut open, LO, SM_MON, &mon("client", 100_021, 0));
    call(&mut open, "10.1.1.1", SM_NOTIFY, &n);
    assert_eq!(callbacks(&mut open).len(), 1);
}

#[test]
fn restart_and_simu_crash_notify_every_monitored_host() {
    let store = MemStore::default();
    let mut m = started(&store);
    call(&mut m, LO, SM_MON, &mon("a", 100_021, 0));
    call(&mut m, LO, SM_MON, &mon("b", 100_021, 0));
    m.learn_addrs(b"b", &["10.0.0.2".parse().unwrap()]);
    drop(m);
    let mut m = started(&store);
    assert_eq!(m.state(), 3);
    let mut hosts: Vec<_> = m
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Notify {
                host,
                names,
                state,
                addrs,
            } => {
                assert_eq!((names, state), (vec![b"server".to_vec()], 3));
                Some((host, addrs))
            }
            _ => None,
        })
        .collect();
    hosts.sort();
    assert_eq!(
        hosts,
        vec![
            (b"a".to_vec(), vec![]),
            (b"b".to_vec(), vec!["10.0.0.2".parse().unwrap()])
        ]
    );
    assert_eq!(m.to_notify().count(), 2);
    assert_eq!(m.monitored().count(), 0);
    m.notify_done(b"a");
    assert_eq!(store.disk.lock().unwrap().to_notify.len(), 1);
    // A crash before "b" answered: it is still to be notified next time.
    drop(m);
    let mut m = started(&store);
    assert_eq!(m.to_notify().collect::<Vec<_>>(), vec![&b"b"[..]]);
    // SM_SIMU_CRASH: a new state and notifications, as after a restart.
    m.take_actions();
    call(&mut m, LO, SM_MON, &mon("c", 100_021, 0));
    m.take_actions();
    let before = m.state();
    call(&mut m, LO, SM_SIMU_CRASH, &());
    assert_eq!(m.state(), before + 2);
    assert_eq!(store.disk.lock().unwrap().state, before + 2);
    let notified: Vec<_> = m
        .take_actions()
        .into_iter()
        .filter(|a| matches!(a, Action::Notify { .. }))
        .collect();
    assert_eq!(notified.len(), 2, "b (still pending) and c");
}

#[test]
fn a_failed_write_answers_stat_fail_and_leaves_no_trace() {
    let store = MemStore::default();
    let mut m = started(&store);
    store.disk.lock().unwrap().fail_writes = 1;
    let (_, r) = call(&mut m, LO, SM_MON, &mon("client", 100_021, 1));
    assert_eq!(stat_res(&r).res_stat, STAT_FAIL);
    assert_eq!(m.monitored().count(), 0);
    assert!(store.disk.lock().unwrap().monitored.is_empty());
    let (_, r) = call(&mut m, LO, SM_MON, &mon("client", 100_021, 1));
    assert_eq!(stat_res(&r).res_stat, STAT_SUCC);
}

#[test]
fn limits_refuse_new_hosts_and_garbage_is_garbage() {
    let store = MemStore::default();
    let mut m = started(&store);
    for h in ["a", "b", "c"] {
        assert_eq!(
            stat_res(&call(&mut m, LO, SM_MON, &mon(h, 1, 0)).1).res_stat,
            STAT_SUCC
        );
    }
    assert_eq!(
        stat_res(&call(&mut m, LO, SM_MON, &mon("d", 1, 0)).1).res_stat,
        STAT_FAIL
    );
    assert_eq!(
        stat_res(&call(&mut m, LO, SM_MON, &mon("a", 2, 0)).1).res_stat,
        STAT_SUCC
    );
    assert_eq!(
        stat_res(&call(&mut m, LO, SM_MON, &mon("", 2, 0)).1).res_stat,
        STAT_FAIL
    );
    assert_eq!(call(&mut m, LO, SM_MON, &7u32).0, Outcome::GarbageArgs);
    assert_eq!(call(&mut m, LO, 99, &()).0, Outcome::ProcUnavail);
}

fn late_ok(host: &str, prog: u32) -> Mon {
    Mon {
        priv_: FixedOpaque(PRIV_LATE_OK),
        ..mon(host, prog, 0)
    }
}

fn notice(host: &str, state: u32) -> StatChge {
    StatChge {
        mon_name: name(host),
        state,
    }
}

#[test]
fn a_notice_before_the_watch_reaches_only_who_asked_for_late_ones() {
    let mut m = started(&MemStore::default());
    let t = Instant::now();
    call_at(&mut m, "10.1.1.1", SM_NOTIFY, &notice("10.1.1.1", 5), t);
    call_at(&mut m, "10.1.1.2", SM_NOTIFY, &notice("10.1.1.2", 3), t);
    assert!(callbacks(&mut m).is_empty());
    // A caller with another priv gets the standard behaviour: nothing.
    call_at(&mut m, LO, SM_MON, &mon("10.1.1.2", 100_099, 1), t);
    assert!(callbacks(&mut m).is_empty());
    // One that asked for late notices hears of it at once, marked late.
    call_at(&mut m, LO, SM_MON, &late_ok("10.1.1.1", 100_021), t);
    let cb = callbacks(&mut m);
    assert_eq!(cb.len(), 1);
    assert_eq!((cb[0].1.state, cb[0].1.priv_.0), (5, PRIV_LATE));
    assert_eq!(m.stats.late_delivered, 1);
    // The same notice again (the host retransmitting) is stale now; a
    // newer one is delivered as usual, with the caller's own priv.
    call_at(&mut m, "10.1.1.1", SM_NOTIFY, &notice("10.1.1.1", 5), t);
    assert!(callbacks(&mut m).is_empty());
    call_at(&mut m, "10.1.1.1", SM_NOTIFY, &notice("10.1.1.1", 7), t);
    let cb = callbacks(&mut m);
    assert_eq!(cb.len(), 1);
    assert_eq!((cb[0].1.state, cb[0].1.priv_.0), (7, PRIV_LATE_OK));
}

#[test]
fn a_late_notice_expires_is_bounded_and_must_be_trusted() {
    let store = MemStore::default();
    let mut m = Monitor::start(
        store,
        MonitorConfig {
            max_late_notices: 2,
            ..MonitorConfig::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    // Too old by the time the host is watched.
    call_at(&mut m, "10.1.1.1", SM_NOTIFY, &notice("10.1.1.1", 5), t);
    let later = t + LATE_NOTICE_KEEP + Duration::from_secs(1);
    call_at(&mut m, LO, SM_MON, &late_ok("10.1.1.1", 100_021), later);
    assert!(callbacks(&mut m).is_empty());
    // Three notices with room for two: the oldest goes.
    for (i, h) in ["10.2.0.1", "10.2.0.2", "10.2.0.3"].iter().enumerate() {
        let at = later + Duration::from_millis(i as u64);
        call_at(&mut m, h, SM_NOTIFY, &notice(h, 3), at);
    }
    for h in ["10.2.0.1", "10.2.0.2", "10.2.0.3"] {
        call_at(&mut m, LO, SM_MON, &late_ok(h, 100_021), later);
    }
    let cb = callbacks(&mut m);
    let names: Vec<_> = cb
        .iter()
        .map(|(_, s)| s.mon_name.as_bytes().to_vec())
        .collect();
    assert_eq!(names, vec![b"10.2.0.2".to_vec(), b"10.2.0.3".to_vec()]);
    // A notice about a name from an address it is not known at waits
    // until the name is found to resolve there.
    call_at(&mut m, "10.3.0.1", SM_NOTIFY, &notice("client", 9), later);
    call_at(&mut m, LO, SM_MON, &late_ok("client", 100_021), later);
    assert!(callbacks(&mut m).is_empty());
    m.learn_addrs(b"client", &["10.3.0.9".parse().unwrap()]);
    assert!(callbacks(&mut m).is_empty());
    m.learn_addrs(b"client", &["10.3.0.1".parse().unwrap()]);
    let cb = callbacks(&mut m);
    assert_eq!(cb.len(), 1);
    assert_eq!((cb[0].1.state, cb[0].1.priv_.0), (9, PRIV_LATE));
    // A host that announces itself by name, watched by its address (as
    // rpc.statd's sm-notify and a lock manager keyed by caller address do).
    call_at(&mut m, "10.4.0.1", SM_NOTIFY, &notice("box", 5), later);
    call_at(&mut m, LO, SM_MON, &late_ok("10.4.0.1", 100_021), later);
    let cb = callbacks(&mut m);
    assert_eq!(cb.len(), 1);
    assert_eq!(cb[0].1.mon_name.as_bytes(), b"10.4.0.1");
    assert_eq!((cb[0].1.state, cb[0].1.priv_.0), (5, PRIV_LATE));
}
