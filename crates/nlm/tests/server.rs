//! The NLM server machine through the RPC dispatcher (so the duplicate
//! request cache is in the path), with virtual time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use latch_nlm::proto::*;
use latch_nlm::{Action, MemHostStore, NlmConfig, NlmServer};
use latch_oncrpc::client::encode_call;
use latch_oncrpc::drc::Drc;
use latch_oncrpc::msg::{self, Credential, Xid};
use latch_oncrpc::{Dispatcher, Transport};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A dispatcher around a shared server, plus a virtual clock.
struct Rig {
    d: Dispatcher,
    srv: Arc<Mutex<NlmServer>>,
    t0: Instant,
    now: Duration,
    xid: u32,
}

/// Lets the dispatcher own a handle while the test keeps one.
struct Shared(Arc<Mutex<NlmServer>>);

impl latch_oncrpc::Program for Shared {
    fn number(&self) -> u32 {
        PROGRAM
    }
    fn versions(&self) -> (u32, u32) {
        self.0.lock().unwrap().versions()
    }
    fn is_cached(&self, v: u32, p: u32) -> bool {
        self.0.lock().unwrap().is_cached(v, p)
    }
    fn call(
        &mut self,
        ctx: &latch_oncrpc::CallContext<'_>,
        args: &[u8],
        res: &mut latch_xdr::Writer,
    ) -> latch_oncrpc::Outcome {
        self.0.lock().unwrap().call(ctx, args, res)
    }
}

const A: &str = "10.0.0.1:1001";
const B: &str = "10.0.0.2:1002";
const C: &str = "10.0.0.3:1003";

impl Rig {
    fn new(cfg: NlmConfig, store: impl latch_nlm::HostStore + 'static) -> Rig {
        let t0 = Instant::now();
        let srv = Arc::new(Mutex::new(
            NlmServer::new(cfg, Box::new(store), t0).unwrap(),
        ));
        let mut d = Dispatcher::new(Drc::new(256, 1 << 20));
        d.register(Box::new(Shared(srv.clone())));
        Rig {
            d,
            srv,
            t0,
            now: Duration::ZERO,
            xid: 1,
        }
    }

    fn default() -> Rig {
        Rig::new(NlmConfig::default(), MemHostStore::default())
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        let now = self.t0 + self.now;
        self.srv.lock().unwrap().tick(now);
    }

    fn raw(&mut self, from: &str, xid: u32, vers: u32, proc_: u32, args: &[u8]) -> Option<Vec<u8>> {
        let bytes = encode_call(Xid(xid), PROGRAM, vers, proc_, &Credential::None, args);
        let now = self.t0 + self.now;
        self.d
            .handle(from.parse().unwrap(), None, Transport::Udp, &bytes, now, 0)
    }

    fn call(&mut self, from: &str, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
        self.xid += 1;
        let r = self
            .raw(from, self.xid, vers, proc_, args)
            .expect("a reply");
        msg::parse_reply(&r).unwrap().result.unwrap().to_vec()
    }

    fn lock(&mut self, from: &str, vers: u32, a: &LockArgs) -> Stat {
        decode::<Res>(&self.call(from, vers, LOCK, &encode(a, vers)), vers)
            .unwrap()
            .stat
    }

    fn unlock(&mut self, from: &str, vers: u32, l: &Lock) -> Stat {
        let a = UnlockArgs {
            cookie: cookie(b"u"),
            lock: l.clone(),
        };
        decode::<Res>(&self.call(from, vers, UNLOCK, &encode(&a, vers)), vers)
            .unwrap()
            .stat
    }

    fn test(&mut self, from: &str, vers: u32, l: &Lock, excl: bool) -> TestRes {
        let a = TestArgs {
            cookie: cookie(b"t"),
            exclusive: excl,
            lock: l.clone(),
        };
        decode::<TestRes>(&self.call(from, vers, TEST, &encode(&a, vers)), vers).unwrap()
    }

    fn actions(&mut self) -> Vec<Action> {
        self.srv.lock().unwrap().take_actions()
    }

    fn calls(
        &mut self,
    ) -> Vec<(
        std::net::IpAddr,
        u32,
        Vec<u8>,
        Option<latch_lock::RequestId>,
    )> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Call {
                    to,
                    proc_,
                    args,
                    grant,
                    ..
                } => Some((to, proc_, args, grant)),
                _ => None,
            })
            .collect()
    }
}

fn cookie(b: &[u8]) -> Netobj {
    Netobj::from_slice(b).unwrap()
}

fn lk(host: &str, svid: u32, fh: &[u8], offset: u64, len: u64) -> Lock {
    Lock {
        caller_name: Name::from_text(host).unwrap(),
        fh: Netobj::from_slice(fh).unwrap(),
        oh: Netobj::from_slice(format!("{host}-{svid}").as_bytes()).unwrap(),
        svid,
        offset,
        len,
    }
}

fn la(l: &Lock, excl: bool, block: bool) -> LockArgs {
    LockArgs {
        cookie: cookie(b"cookie-1"),
        block,
        exclusive: excl,
        lock: l.clone(),
        reclaim: false,
        state: 0,
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse::<SocketAddr>().unwrap().ip()
}

#[test]
fn test_lock_unlock_in_every_version_with_the_cookie_echoed() {
    for vers in [1, 2, 3, 4] {
        let mut r = Rig::default();
        let a = lk("a", 1, b"f", 0, 10);
        let b = lk("b", 2, b"f", 5, 10);
        let res = r.call(A, vers, LOCK, &encode(&la(&a, true, false), vers));
        let res: Res = decode(&res, vers).unwrap();
        assert_eq!(
            (res.stat, res.cookie.as_bytes()),
            (Stat::Granted, &b"cookie-1"[..])
        );
        assert_eq!(r.lock(B, vers, &la(&b, true, false)), Stat::Denied);
        let t = r.test(B, vers, &b, false);
        assert_eq!((t.stat, t.cookie.as_bytes()), (Stat::Denied, &b"t"[..]));
        let h = t.holder.unwrap();
        assert_eq!((h.exclusive, h.svid, h.offset, h.len), (true, 1, 0, 10));
        assert_eq!(h.oh.as_bytes(), b"a-1");
        assert_eq!(r.unlock(A, vers, &a), Stat::Granted);
        assert_eq!(r.test(B, vers, &b, true).stat, Stat::Granted);
        assert_eq!(r.lock(B, vers, &la(&b, true, false)), Stat::Granted);
        // Unlocking what is not held is fine.
        assert_eq!(r.unlock(A, vers, &a), Stat::Granted);
    }
}

#[test]
fn v1_reports_wide_holders_clipped_and_never_v4_codes() {
    let mut r = Rig::default();
    let wide = lk("a", 1, b"f", 10, 1 << 40);
    assert_eq!(r.lock(A, 4, &la(&wide, true, false)), Stat::Granted);
    let t = r.test(B, 1, &lk("b", 2, b"f", 0, 0), true);
    let h = t.holder.unwrap();
    assert_eq!((h.offset, h.len), (10, 0), "reaches past 2^32: to end");
    r.srv
        .lock()
        .unwrap()
        .set_fh_check(Box::new(|fh| fh == b"stale"));
    let s = lk("b", 2, b"stale", 0, 1);
    assert_eq!(r.lock(B, 4, &la(&s, true, false)), Stat::StaleFh);
    assert_eq!(r.lock(B, 1, &la(&s, true, false)), Stat::Denied);
    assert_eq!(r.lock(B, 3, &la(&s, true, false)), Stat::Denied);
}

#[test]
fn a_blocked_lock_is_granted_by_callback_and_the_retransmission_answers_granted() {
    let mut r = Rig::default();
    let a = lk("a", 1, b"f", 0, 0);
    let b = lk("b", 2, b"f", 0, 100);
    assert_eq!(r.lock(A, 4, &la(&a, true, false)), Stat::Granted);
    assert_eq!(r.lock(B, 4, &la(&b, true, true)), Stat::Blocked);
    // A retransmission (new xid) does not queue a second waiter.
    assert_eq!(r.lock(B, 4, &la(&b, true, true)), Stat::Blocked);
    assert_eq!(r.srv.lock().unwrap().engine().stats().waiters, 1);
    r.actions();
    assert_eq!(r.unlock(A, 4, &a), Stat::Granted);
    let calls = r.calls();
    assert_eq!(calls.len(), 1, "exactly one callback");
    let (to, proc_, args, grant) = calls[0].clone();
    assert_eq!((to, proc_), (ip(B), GRANTED));
    let g: TestArgs = decode(&args, 4).unwrap();
    assert_eq!(
        (g.lock.svid, g.lock.offset, g.lock.len, g.exclusive),
        (2, 0, 100, true)
    );
    assert_eq!(g.lock.fh.as_bytes(), b"f");
    // The callback is lost: it is sent again after the backoff.
    r.srv
        .lock()
        .unwrap()
        .call_result(grant.unwrap(), None, r.t0 + r.now);
    r.advance(100);
    assert!(r.calls().is_empty(), "not before the backoff");
    r.advance(1000);
    let again = r.calls();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].2, args, "the same callback, same cookie");
    // Meanwhile the client's own retransmitted LOCK finds it granted.
    assert_eq!(r.lock(B, 4, &la(&b, true, true)), Stat::Granted);
    r.srv
        .lock()
        .unwrap()
        .call_result(grant.unwrap(), Some(Stat::Granted), r.t0 + r.now);
    assert_eq!(r.srv.lock().unwrap().pending_grants(), 0);
    r.advance(60_000);
    assert!(r.calls().is_empty(), "acknowledged: no more callbacks");
}

#[test]
fn a_client_that_refuses_the_grant_gives_the_lock_back() {
    let mut r = Rig::default();
    let a = lk("a", 1, b"f", 0, 0);
    assert_eq!(r.lock(A, 4, &la(&a, true, false)), Stat::Granted);
    assert_eq!(
        r.lock(B, 4, &la(&lk("b", 2, b"f", 0, 0), true, true)),
        Stat::Blocked
    );
    assert_eq!(
        r.lock(C, 4, &la(&lk("c", 3, b"f", 0, 0), true, true)),
        Stat::Blocked
    );
    r.actions();
    r.unlock(A, 4, &a);
    let (_, _, _, grant) = r.calls()[0].clone();
    r.srv
        .lock()
        .unwrap()
        .call_result(grant.unwrap(), Some(Stat::Denied), r.t0 + r.now);
    // B's lock went to C.
    let calls = r.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, ip(C));
}

#[test]
fn cancel_racing_with_the_grant_undoes_it() {
    let mut r = Rig::default();
    let a = lk("a", 1, b"f", 0, 0);
    let b = lk("b", 2, b"f", 0, 0);
    r.lock(A, 4, &la(&a, true, false));
    assert_eq!(r.lock(B, 4, &la(&b, true, true)), Stat::Blocked);
    r.unlock(A, 4, &a);
    assert_eq!(r.calls().len(), 1, "GRANTED on its way to B");
    // B gave up before it heard: CANCEL crosses the callback.
    let c = CancArgs {
        cookie: cookie(b"c"),
        block: true,
        exclusive: true,
        lock: b.clone(),
    };
    let res: Res = decode(&r.call(B, 4, CANCEL, &encode(&c, 4)), 4).unwrap();
    assert_eq!(res.stat, Stat::Granted);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Granted,
        "not held by B"
    );
    // Cancelling something unknown also answers granted.
    let res: Res = decode(&r.call(C, 4, CANCEL, &encode(&c, 4)), 4).unwrap();
    assert_eq!(res.stat, Stat::Granted);
    // A plain cancel of a waiter.
    r.lock(A, 4, &la(&a, true, false));
    assert_eq!(r.lock(B, 4, &la(&b, true, true)), Stat::Blocked);
    r.call(B, 4, CANCEL, &encode(&c, 4));
    r.actions();
    r.unlock(A, 4, &a);
    assert!(r.calls().is_empty(), "no grant for a cancelled waiter");
}

#[test]
fn deadlock_between_two_clients_is_refused_at_once() {
    let mut r = Rig::default();
    let a1 = lk("a", 1, b"f", 0, 9);
    let b1 = lk("b", 2, b"f", 10, 19);
    r.lock(A, 4, &la(&a1, true, false));
    r.lock(B, 4, &la(&b1, true, false));
    assert_eq!(
        r.lock(A, 4, &la(&lk("a", 1, b"f", 10, 5), true, true)),
        Stat::Blocked
    );
    assert_eq!(
        r.lock(B, 4, &la(&lk("b", 2, b"f", 0, 5), true, true)),
        Stat::Deadlock
    );
}

#[test]
fn async_msg_flows_answer_by_call_and_match_by_cookie() {
    let mut r = Rig::default();
    let a = lk("a", 1, b"f", 0, 0);
    let b = lk("b", 2, b"f", 0, 0);
    r.lock(A, 4, &la(&a, true, false));
    let m = r.call(B, 4, LOCK_MSG, &encode(&la(&b, true, true), 4));
    assert!(m.is_empty(), "void reply to the _MSG call");
    let calls = r.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].0, calls[0].1), (ip(B), LOCK_RES));
    let res: Res = decode(&calls[0].2, 4).unwrap();
    assert_eq!(
        (res.stat, res.cookie.as_bytes()),
        (Stat::Blocked, &b"cookie-1"[..])
    );
    // TEST_MSG too.
    let t = TestArgs {
        cookie: cookie(b"tm"),
        exclusive: true,
        lock: b.clone(),
    };
    r.call(B, 4, TEST_MSG, &encode(&t, 4));
    let calls = r.calls();
    let tr: TestRes = decode(&calls[0].2, 4).unwrap();
    assert_eq!(
        (calls[0].1, tr.stat, tr.cookie.as_bytes()),
        (TEST_RES, Stat::Denied, &b"tm"[..])
    );
    // The grant goes out as GRANTED_MSG; GRANTED_RES with its cookie ends it.
    r.unlock(A, 4, &a);
    let calls = r.calls();
    assert_eq!(calls[0].1, GRANTED_MSG);
    assert_eq!(calls[0].3, None, "no reply expected");
    let g: TestArgs = decode(&calls[0].2, 4).unwrap();
    r.advance(600);
    assert_eq!(r.calls().len(), 1, "retried until GRANTED_RES");
    let ack = Res {
        cookie: g.cookie.clone(),
        stat: Stat::Granted,
    };
    r.call(B, 4, GRANTED_RES, &encode(&ack, 4));
    r.advance(60_000);
    assert!(r.calls().is_empty());
    // UNLOCK_MSG and CANCEL_MSG answer by call as well.
    let u = UnlockArgs {
        cookie: cookie(b"um"),
        lock: b.clone(),
    };
    r.call(B, 4, UNLOCK_MSG, &encode(&u, 4));
    assert_eq!(r.calls()[0].1, UNLOCK_RES);
    let c = CancArgs {
        cookie: cookie(b"cm"),
        block: true,
        exclusive: true,
        lock: b,
    };
    r.call(B, 4, CANCEL_MSG, &encode(&c, 4));
    assert_eq!(r.calls()[0].1, CANCEL_RES);
}

#[test]
fn a_retransmission_after_a_state_change_gets_the_original_answer() {
    let mut r = Rig::default();
    let a = lk("a", 1, b"f", 0, 0);
    let b = lk("b", 2, b"f", 0, 0);
    let args = encode(&la(&b, true, false), 4);
    r.lock(A, 4, &la(&a, true, false));
    let first = r.raw(B, 777, 4, LOCK, &args).unwrap();
    r.unlock(A, 4, &a);
    // The same request (same xid) again: the cached "denied", byte for byte,
    // although it would now be granted.
    let again = r.raw(B, 777, 4, LOCK, &args).unwrap();
    assert_eq!(first, again);
    let res: Res = decode(msg::parse_reply(&again).unwrap().result.unwrap(), 4).unwrap();
    assert_eq!(res.stat, Stat::Denied);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Granted,
        "and B got nothing"
    );
}

#[test]
fn shares_conflict_by_access_and_deny_and_unshare_releases() {
    let mut r = Rig::default();
    let sh = |host: &str, access: u32, mode: u32| ShareArgs {
        cookie: cookie(b"s"),
        share: ShareLock {
            caller_name: Name::from_text(host).unwrap(),
            fh: Netobj::from_slice(b"f").unwrap(),
            oh: Netobj::from_slice(host.as_bytes()).unwrap(),
            mode,
            access,
        },
        reclaim: false,
    };
    let share = |r: &mut Rig, from, a: &ShareArgs, p| {
        decode::<ShareRes>(&r.call(from, 3, p, &encode(a, 3)), 3)
            .unwrap()
            .stat
    };
    // A reads and denies writers.
    assert_eq!(share(&mut r, A, &sh("a", 1, 2), SHARE), Stat::Granted);
    assert_eq!(
        share(&mut r, B, &sh("b", 2, 0), SHARE),
        Stat::Denied,
        "B wants to write"
    );
    assert_eq!(
        share(&mut r, B, &sh("b", 1, 0), SHARE),
        Stat::Granted,
        "B reads"
    );
    assert_eq!(
        share(&mut r, C, &sh("c", 1, 1), SHARE),
        Stat::Denied,
        "C denies readers"
    );
    assert_eq!(share(&mut r, A, &sh("a", 1, 2), UNSHARE), Stat::Granted);
    assert_eq!(share(&mut r, B, &sh("b", 1, 0), UNSHARE), Stat::Granted);
    assert_eq!(share(&mut r, C, &sh("c", 1, 1), SHARE), Stat::Granted);
    // Version 1 has no SHARE.
    let reply = r
        .raw(A, 9999, 1, SHARE, &encode(&sh("a", 1, 0), 1))
        .unwrap();
    assert_eq!(
        msg::parse_reply(&reply).unwrap().result,
        Err(latch_oncrpc::RpcError::ProcUnavail)
    );
}

#[test]
fn free_all_frees_only_the_host_at_the_senders_address() {
    let mut r = Rig::default();
    let a = lk("a", 1, b"f", 0, 0);
    r.lock(A, 4, &la(&a, true, false));
    let fa = FreeAllArgs {
        name: latch_xdr::XdrString::from_text("a").unwrap(),
        state: 5,
    };
    r.call(B, 4, FREE_ALL, &encode(&fa, 4));
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Denied,
        "B cannot free A"
    );
    r.call(A, 4, FREE_ALL, &encode(&fa, 4));
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Granted
    );
}

#[test]
fn a_lock_with_a_newer_nsm_state_drops_the_clients_old_locks() {
    let mut r = Rig::default();
    let old = lk("a", 1, b"f1", 0, 0);
    let mut args = la(&old, true, false);
    args.state = 3;
    assert_eq!(r.lock(A, 4, &args), Stat::Granted);
    // The client rebooted (state 5) and locks another file.
    let mut new = la(&lk("a", 9, b"f2", 0, 0), true, false);
    new.state = 5;
    assert_eq!(r.lock(A, 4, &new), Stat::Granted);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f1", 0, 0), true).stat,
        Stat::Granted,
        "old lock gone"
    );
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f2", 0, 0), true).stat,
        Stat::Denied,
        "new lock held"
    );
    assert_eq!(r.srv.lock().unwrap().stats.reboots_detected, 1);
    // A LOCK of the old incarnation, delayed in the network, comes now:
    // refused, and the host's state stays 5 (found by the simulator).
    let mut late = la(&lk("a", 2, b"f3", 0, 0), true, false);
    late.state = 3;
    assert_eq!(r.lock(A, 4, &late), Stat::Denied);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f3", 0, 0), true).stat,
        Stat::Granted,
        "nothing taken"
    );
    let mut again = la(&lk("a", 9, b"f4", 0, 0), true, false);
    again.state = 5;
    assert_eq!(r.lock(A, 4, &again), Stat::Granted);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f2", 0, 0), true).stat,
        Stat::Denied,
        "no second reboot seen: the new lock is still held"
    );
    assert_eq!(r.srv.lock().unwrap().stats.stale_requests, 1);
}

/// SHARE arguments: `host` asks `access` and denies `mode` on `file` as
/// owner `oh`.
fn share_args(host: &str, file: &[u8], oh: &[u8], access: u32, mode: u32) -> ShareArgs {
    ShareArgs {
        cookie: cookie(b"s"),
        share: ShareLock {
            caller_name: Name::from_text(host).unwrap(),
            fh: Netobj::from_slice(file).unwrap(),
            oh: Netobj::from_slice(oh).unwrap(),
            mode,
            access,
        },
        reclaim: false,
    }
}

/// A v4 SHARE from `from`: its status.
fn share_v4(r: &mut Rig, from: &str, a: &ShareArgs) -> Stat {
    decode::<ShareRes>(&r.call(from, 4, SHARE, &encode(a, 4)), 4)
        .unwrap()
        .stat
}

/// A SHARE carries no NSM state. One granted after the host's state was
/// last heard may come from a newer start, so the LOCK that then tells of
/// that reboot keeps it; one granted before is the old start's and goes
/// (seed 0x194f0).
#[test]
fn a_reboot_told_by_a_lock_keeps_the_shares_asked_since_the_state_was_heard() {
    let mut r = Rig::default();
    let sh = |file: &[u8], oh: &[u8]| share_args("a", file, oh, 1, 2);
    let writer = |file: &[u8]| share_args("c", file, b"c", 2, 0);
    let share = share_v4;
    let lock_at = |r: &mut Rig, file: &[u8], state: u32| {
        let mut args = la(&lk("a", 1, file, 0, 0), true, false);
        args.state = state;
        r.lock(A, 4, &args)
    };
    // State 3 heard, then a share: it might be state 3's or a newer one's.
    assert_eq!(lock_at(&mut r, b"l1", 3), Stat::Granted);
    assert_eq!(share(&mut r, A, &sh(b"old", b"o")), Stat::Granted);
    // State 3 heard again: that share is state 3's now.
    assert_eq!(lock_at(&mut r, b"l2", 3), Stat::Granted);
    assert_eq!(share(&mut r, A, &sh(b"new", b"n")), Stat::Granted);
    // The LOCK of state 5 tells of a reboot.
    assert_eq!(lock_at(&mut r, b"l3", 5), Stat::Granted);
    assert_eq!(r.srv.lock().unwrap().stats.reboots_detected, 1);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"l1", 0, 0), true).stat,
        Stat::Granted,
        "state 3's locks are gone"
    );
    assert_eq!(
        share(&mut r, C, &writer(b"old")),
        Stat::Granted,
        "old share gone"
    );
    assert_eq!(
        share(&mut r, C, &writer(b"new")),
        Stat::Denied,
        "newer share kept"
    );
    // A reboot notice frees everything, kept shares included.
    let notice = SmStatus {
        mon_name: Name::from_text("a").unwrap(),
        state: 7,
        priv_: Default::default(),
    };
    r.call("127.0.0.1:700", 3, SM_NOTIFY, &encode(&notice, 3));
    assert_eq!(
        share(&mut r, C, &writer(b"new")),
        Stat::Granted,
        "freed by the notice"
    );
}

/// A Latch client writes its NSM state at the end of its owner handles:
/// a SHARE from before a reboot we know of (delayed in the network, seed
/// 0x188cb) is refused like a stale LOCK, and one from a newer start tells
/// us of that reboot.
#[test]
fn a_share_with_the_nsm_state_in_its_owner_handle_is_checked_like_a_lock() {
    let mut r = Rig::default();
    let sh = |file: &[u8], oh: &str| share_args("a", file, oh.as_bytes(), 1, 0);
    let writer = |file: &[u8]| share_args("c", file, b"c", 2, 1);
    let share = share_v4;
    let mut args = la(&lk("a", 1, b"l", 0, 0), true, false);
    args.state = 3;
    assert_eq!(r.lock(A, 4, &args), Stat::Granted);
    // Sent by the start before state 3: refused, nothing taken.
    assert_eq!(share(&mut r, A, &sh(b"f", "a#1-7~1")), Stat::Denied);
    assert_eq!(r.srv.lock().unwrap().stats.stale_requests, 1);
    assert_eq!(share(&mut r, C, &writer(b"f")), Stat::Granted);
    // Of state 3: granted.
    assert_eq!(share(&mut r, A, &sh(b"g", "a#3-7~3")), Stat::Granted);
    // Of state 5: a reboot, state 3's lock and share go first.
    assert_eq!(share(&mut r, A, &sh(b"h", "a#5-7~5")), Stat::Granted);
    assert_eq!(r.srv.lock().unwrap().stats.reboots_detected, 1);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"l", 0, 0), true).stat,
        Stat::Granted,
        "state 3's lock is gone"
    );
    assert_eq!(
        share(&mut r, C, &writer(b"g")),
        Stat::Granted,
        "and its share"
    );
    assert_eq!(
        share(&mut r, C, &writer(b"h")),
        Stat::Denied,
        "state 5's holds"
    );
    // A handle in any other form is opaque.
    assert_eq!(share(&mut r, A, &sh(b"k", "a#1-7")), Stat::Granted);
}

/// A reboot notice that reached Latch's status monitor before it watched
/// the host comes late, marked so (seed 0x2176d): the host got state here
/// after its reboot, so only what is known to be older goes.
#[test]
fn a_late_notice_frees_only_what_an_older_start_asked() {
    let mut r = Rig::default();
    let sh = |file: &[u8], oh: &str| share_args("a", file, oh.as_bytes(), 1, 0);
    let writer = |file: &[u8]| share_args("c", file, b"c", 2, 1);
    let late = |state| SmStatus {
        mon_name: Name::from_text("a").unwrap(),
        state,
        priv_: latch_xdr::FixedOpaque(latch_nsm::proto::PRIV_LATE),
    };
    // No state told yet: a plain share and an NM_LOCK, which cannot be
    // dated, stay.
    assert_eq!(share_v4(&mut r, A, &sh(b"plain", "p")), Stat::Granted);
    let nm = la(&lk("a", 9, b"nm", 0, 1), true, false);
    let res: Res = decode(&r.call(A, 4, NM_LOCK, &encode(&nm, 4)), 4).unwrap();
    assert_eq!(res.stat, Stat::Granted);
    r.call("127.0.0.1:700", 3, SM_NOTIFY, &encode(&late(3), 3));
    assert_eq!(share_v4(&mut r, C, &writer(b"plain")), Stat::Denied);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"nm", 0, 0), true).stat,
        Stat::Denied,
        "the NM_LOCK stays"
    );
    // A copy of a request of the start before is now refused.
    assert_eq!(share_v4(&mut r, A, &sh(b"old2", "a#1-7~1")), Stat::Denied);
    // Host b told state 5 in a LOCK, of the start before the notice's, then
    // asked a plain share and a Latch share of the notice's start.
    let shb = |file: &[u8], oh: &str| share_args("b", file, oh.as_bytes(), 1, 0);
    let mut old = la(&lk("b", 1, b"lb", 0, 0), true, false);
    old.state = 5;
    assert_eq!(r.lock(B, 4, &old), Stat::Granted);
    assert_eq!(share_v4(&mut r, B, &shb(b"bold", "b#1-7~5")), Stat::Granted);
    assert_eq!(share_v4(&mut r, B, &shb(b"bplain", "q")), Stat::Granted);
    let late_b = SmStatus {
        mon_name: Name::from_text("b").unwrap(),
        ..late(7)
    };
    r.call("127.0.0.1:700", 3, SM_NOTIFY, &encode(&late_b, 3));
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"lb", 0, 0), true).stat,
        Stat::Granted,
        "state 5's lock is gone"
    );
    assert_eq!(share_v4(&mut r, C, &writer(b"bold")), Stat::Granted);
    assert_eq!(
        share_v4(&mut r, C, &writer(b"bplain")),
        Stat::Denied,
        "the share asked since state 5 was heard stays"
    );
    // An ordinary notice frees everything.
    let st = SmStatus {
        priv_: Default::default(),
        ..late(5)
    };
    r.call("127.0.0.1:700", 3, SM_NOTIFY, &encode(&st, 3));
    assert_eq!(share_v4(&mut r, C, &writer(b"plain")), Stat::Granted);
}

/// A Latch client's reclaim names the start of ours it answers; a copy of
/// one meant for another start, late in the network, is refused (seed
/// 0x2b714). Other cookies are opaque.
#[test]
fn a_reclaim_meant_for_an_earlier_start_of_ours_is_refused() {
    let mut r = Rig::default();
    r.srv.lock().unwrap().set_own_state(5);
    let reclaim = |file: &[u8], cookie: &[u8]| {
        let mut a = la(&lk("a", 1, file, 0, 0), true, false);
        a.reclaim = true;
        a.cookie = Netobj::from_slice(cookie).unwrap();
        a
    };
    let ours = |state: u32| {
        let mut c = vec![0u8; 12];
        c.extend_from_slice(b"LRCL");
        c.extend_from_slice(&state.to_be_bytes());
        c
    };
    assert_eq!(r.lock(A, 4, &reclaim(b"f", &ours(3))), Stat::Denied);
    assert_eq!(r.srv.lock().unwrap().stats.stale_requests, 1);
    assert_eq!(
        r.test(C, 4, &lk("c", 1, b"f", 0, 0), true).stat,
        Stat::Granted,
        "nothing taken"
    );
    assert_eq!(r.lock(A, 4, &reclaim(b"g", &ours(5))), Stat::Granted);
    // A newer start than this one knows (our monitor's SM_SIMU_CRASH).
    assert_eq!(r.lock(A, 4, &reclaim(b"n", &ours(9))), Stat::Granted);
    let mut other = ours(3);
    other[12] = b'X';
    assert_eq!(r.lock(A, 4, &reclaim(b"h", &other)), Stat::Granted);
    // Shares alike.
    let mut sh = share_args("a", b"s", b"o", 1, 0);
    sh.reclaim = true;
    sh.cookie = Netobj::from_slice(&ours(1)).unwrap();
    assert_eq!(share_v4(&mut r, A, &sh), Stat::Denied);
    sh.cookie = Netobj::from_slice(&ours(5)).unwrap();
    assert_eq!(share_v4(&mut r, A, &sh), Stat::Granted);
}

#[test]
fn the_monitor_is_asked_once_per_host_and_never_for_nm_lock() {
    let mut r = Rig::default();
    r.lock(A, 4, &la(&lk("a", 1, b"f", 0, 1), true, false));
    r.lock(A, 4, &la(&lk("a", 2, b"g", 0, 1), true, false));
    let nm = la(&lk("n", 1, b"h", 0, 1), true, true);
    let res: Res = decode(&r.call(B, 4, NM_LOCK, &encode(&nm, 4)), 4).unwrap();
    assert_eq!(res.stat, Stat::Granted);
    let mons: Vec<_> = r
        .actions()
        .into_iter()
        .filter(|a| matches!(a, Action::Monitor { .. }))
        .collect();
    assert_eq!(
        mons,
        vec![Action::Monitor {
            name: b"a".to_vec()
        }]
    );
    // NM_LOCK never blocks.
    let res: Res = decode(
        &r.call(
            C,
            4,
            NM_LOCK,
            &encode(&la(&lk("c", 1, b"h", 0, 1), true, true), 4),
        ),
        4,
    )
    .unwrap();
    assert_eq!(res.stat, Stat::Denied);
    // Idle and lockless: unmonitored.
    r.unlock(A, 4, &lk("a", 1, b"f", 0, 1));
    r.unlock(A, 4, &lk("a", 2, b"g", 0, 1));
    r.advance(61_000);
    assert!(r.actions().contains(&Action::Unmonitor {
        name: b"a".to_vec()
    }));
}

#[test]
fn the_status_monitor_callback_frees_a_rebooted_host_only_from_loopback() {
    let mut r = Rig::default();
    r.lock(A, 4, &la(&lk("a", 1, b"f", 0, 0), true, false));
    let st = SmStatus {
        mon_name: Name::from_text("a").unwrap(),
        state: 7,
        priv_: Default::default(),
    };
    assert!(
        r.raw(B, 5000, 3, SM_NOTIFY, &encode(&st, 3)).is_none(),
        "from the network: ignored"
    );
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Denied
    );
    r.call("127.0.0.1:700", 3, SM_NOTIFY, &encode(&st, 3));
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Granted
    );
    // The same notification again is stale: the new lock stays.
    r.lock(A, 4, &la(&lk("a", 1, b"f", 0, 0), true, false));
    r.call("127.0.0.1:700", 3, SM_NOTIFY, &encode(&st, 3));
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Denied
    );
    // A newer one, in FreeBSD's form (version 0, procedure 1), frees it.
    let newer = SmStatus { state: 9, ..st };
    r.call("127.0.0.1:700", 0, 1, &encode(&newer, 0));
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Granted
    );
}

#[test]
fn a_late_notification_of_a_reboot_already_seen_in_a_lock_frees_nothing_new() {
    let mut r = Rig::default();
    let mut old = la(&lk("a", 1, b"f", 0, 0), true, false);
    old.state = 3;
    r.lock(A, 4, &old);
    // The client reboots and locks again with its new state before its
    // SM_NOTIFY reaches us.
    let mut new = la(&lk("a", 2, b"g", 0, 0), true, false);
    new.state = 5;
    assert_eq!(r.lock(A, 4, &new), Stat::Granted);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 0, 0), true).stat,
        Stat::Granted,
        "old incarnation freed"
    );
    let st = SmStatus {
        mon_name: Name::from_text("a").unwrap(),
        state: 5,
        priv_: Default::default(),
    };
    r.call("127.0.0.1:700", 3, SM_NOTIFY, &encode(&st, 3));
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"g", 0, 0), true).stat,
        Stat::Denied,
        "the new incarnation's lock stays"
    );
}

#[test]
fn cancelling_an_upgrade_whose_grant_crossed_keeps_the_shared_lock() {
    let mut r = Rig::default();
    // A holds a shared lock on 0..9 and B a shared lock on 20..29.
    r.lock(A, 4, &la(&lk("a", 1, b"f", 0, 10), false, false));
    r.lock(B, 4, &la(&lk("b", 1, b"f", 20, 10), false, false));
    // A asks for an exclusive lock on 0..29: it waits for B.
    assert_eq!(
        r.lock(A, 4, &la(&lk("a", 1, b"f", 0, 30), true, true)),
        Stat::Blocked
    );
    r.actions();
    r.unlock(B, 4, &lk("b", 1, b"f", 20, 10));
    assert_eq!(r.calls().len(), 1, "GRANTED on its way to A");
    // A gave up before it heard: its CANCEL crosses the GRANTED.
    let c = CancArgs {
        cookie: cookie(b"c"),
        block: true,
        exclusive: true,
        lock: lk("a", 1, b"f", 0, 30),
    };
    r.call(A, 4, CANCEL, &encode(&c, 4));
    // A's shared lock on 0..9 is still there; 10..29 is free again.
    assert_eq!(
        r.test(C, 4, &lk("c", 1, b"f", 0, 10), true).stat,
        Stat::Denied
    );
    let t = r.test(C, 4, &lk("c", 1, b"f", 0, 10), true);
    let h = t.holder.unwrap();
    assert_eq!((h.exclusive, h.offset, h.len), (false, 0, 10));
    assert_eq!(
        r.test(C, 4, &lk("c", 1, b"f", 10, 20), true).stat,
        Stat::Granted
    );
}

#[test]
fn grace_accepts_only_reclaims_and_ends_when_every_host_is_back() {
    let store = MemHostStore::default();
    store
        .names
        .lock()
        .unwrap()
        .extend([b"a".to_vec(), b"b".to_vec()]);
    let cfg = NlmConfig {
        grace_ms: 30_000,
        grace_min_ms: 0,
        reclaim_settle_ms: 1000,
        ..NlmConfig::default()
    };
    let mut r = Rig::new(cfg, store.clone());
    let a = lk("a", 1, b"f", 0, 0);
    assert!(r.srv.lock().unwrap().in_grace());
    assert_eq!(r.test(C, 4, &a, true).stat, Stat::DeniedGracePeriod);
    assert_eq!(
        r.lock(C, 4, &la(&lk("c", 1, b"g", 0, 0), true, false)),
        Stat::DeniedGracePeriod
    );
    let mut re = la(&a, true, false);
    re.reclaim = true;
    assert_eq!(r.lock(A, 4, &re), Stat::Granted);
    r.advance(500);
    assert!(r.srv.lock().unwrap().in_grace(), "b has not come back");
    // b reboots meanwhile and says so: it will hold nothing.
    let fa = FreeAllArgs {
        name: latch_xdr::XdrString::from_text("b").unwrap(),
        state: 1,
    };
    r.call(B, 4, FREE_ALL, &encode(&fa, 4));
    r.advance(600);
    assert!(
        !r.srv.lock().unwrap().in_grace(),
        "a settled and b is gone: grace over early"
    );
    assert_eq!(
        r.lock(C, 4, &la(&lk("c", 1, b"f", 0, 0), true, false)),
        Stat::Denied,
        "a's reclaimed lock holds"
    );
    assert_eq!(*store.names.lock().unwrap(), [b"a".to_vec()].into());
}

#[test]
fn grace_ends_at_its_timeout_and_without_previous_hosts_there_is_none() {
    let store = MemHostStore::default();
    store.names.lock().unwrap().insert(b"gone".to_vec());
    let cfg = NlmConfig {
        grace_ms: 5_000,
        ..NlmConfig::default()
    };
    let mut r = Rig::new(cfg, store);
    r.advance(4_000);
    assert!(r.srv.lock().unwrap().in_grace());
    r.advance(1_100);
    assert!(!r.srv.lock().unwrap().in_grace());
    assert!(!Rig::default().srv.lock().unwrap().in_grace());
}

#[test]
fn refused_requests_do_not_fill_the_host_table() {
    let store = MemHostStore::default();
    store.names.lock().unwrap().insert(b"someone".to_vec());
    let cfg = NlmConfig {
        max_hosts: 2,
        ..NlmConfig::default()
    };
    let mut r = Rig::new(cfg, store);
    // During grace, a flood of made-up names is refused and forgotten...
    for i in 0..50 {
        let l = lk(&format!("fake{i}"), 1, b"f", 0, 1);
        assert_eq!(r.lock(B, 4, &la(&l, true, false)), Stat::DeniedGracePeriod);
    }
    assert_eq!(r.srv.lock().unwrap().hosts().len(), 0);
    r.srv.lock().unwrap().end_grace();
    // ...so real hosts still find room.
    assert_eq!(
        r.lock(A, 4, &la(&lk("a", 1, b"f", 0, 1), true, false)),
        Stat::Granted
    );
    assert_eq!(
        r.lock(C, 4, &la(&lk("c", 1, b"f", 5, 1), true, false)),
        Stat::Granted
    );
}

#[test]
fn limits_answer_denied_nolocks() {
    let cfg = NlmConfig {
        max_hosts: 1,
        ..NlmConfig::default()
    };
    let mut r = Rig::new(cfg, MemHostStore::default());
    assert_eq!(
        r.lock(A, 4, &la(&lk("a", 1, b"f", 0, 1), true, false)),
        Stat::Granted
    );
    assert_eq!(
        r.lock(B, 4, &la(&lk("b", 1, b"f", 5, 1), true, false)),
        Stat::DeniedNolocks
    );
    // An oversized string is garbage at the XDR layer.
    let mut big = encode(&la(&lk("a", 1, b"f", 0, 1), true, false), 4);
    big[20..24].copy_from_slice(&2000u32.to_be_bytes()); // caller_name longer than LM_MAXSTRLEN
    let reply = r.raw(A, 4242, 4, LOCK, &big).unwrap();
    assert_eq!(
        msg::parse_reply(&reply).unwrap().result,
        Err(latch_oncrpc::RpcError::GarbageArgs)
    );
}

/// Counts saves, so a test can tell a write to stable storage happened.
#[derive(Clone, Default)]
struct CountingStore {
    inner: MemHostStore,
    saves: Arc<Mutex<u32>>,
}

impl latch_nlm::HostStore for CountingStore {
    fn load(&mut self) -> std::io::Result<Option<std::collections::BTreeSet<Vec<u8>>>> {
        self.inner.load()
    }
    fn save(&mut self, names: &std::collections::BTreeSet<Vec<u8>>) -> std::io::Result<()> {
        *self.saves.lock().unwrap() += 1;
        self.inner.save(names)
    }
}

/// A client that locks and unlocks in turn has its name saved once, not
/// dropped by every tick that finds it between the two and saved again by
/// its next LOCK (a write and fsync on the request path); the name goes
/// once the host has held nothing for a while.
#[test]
fn a_host_that_locks_and_unlocks_in_turn_is_saved_once() {
    let store = CountingStore::default();
    let mut r = Rig::new(NlmConfig::default(), store.clone());
    // The first start leaves an empty list (the next start is a restart).
    assert_eq!(*store.saves.lock().unwrap(), 1);
    let a = lk("a", 1, b"f", 0, 1);
    for _ in 0..20 {
        assert_eq!(r.lock(A, 4, &la(&a, true, false)), Stat::Granted);
        assert_eq!(r.unlock(A, 4, &a), Stat::Granted);
        r.advance(100);
    }
    assert_eq!(*store.saves.lock().unwrap(), 2);
    assert_eq!(*store.inner.names.lock().unwrap(), [b"a".to_vec()].into());
    for _ in 0..100 {
        r.advance(100);
    }
    assert_eq!(*store.saves.lock().unwrap(), 3);
    assert!(store.inner.names.lock().unwrap().is_empty());
}

/// A host's name goes on the durable list of hosts holding state before it
/// may get anything; if it cannot be saved (here a failing fsync on a
/// simulated disk), the LOCK or SHARE is refused and changes nothing.
#[test]
fn a_lock_whose_host_cannot_be_made_durable_is_refused() {
    let disk = latch_nsm::SimFs::default();
    let store = latch_nlm::FileHostStore {
        path: "/state/nlm-hosts".into(),
        fs: disk.clone(),
    };
    latch_nsm::Fs::create_dir_all(&mut disk.clone(), std::path::Path::new("/state")).unwrap();
    let mut r = Rig::new(NlmConfig::default(), store);
    disk.disk.lock().unwrap().fail_syncs = 1;
    let a = lk("a", 1, b"f", 0, 0);
    assert_eq!(r.lock(A, 4, &la(&a, false, true)), Stat::DeniedNolocks);
    assert_eq!(
        r.test(C, 4, &lk("c", 1, b"f", 0, 0), true).stat,
        Stat::Granted,
        "nothing was locked"
    );
    // A wait is undone the same way: c holds, b's wait is refused and
    // does not stay queued.
    assert_eq!(
        r.lock(C, 4, &la(&lk("c", 1, b"w", 0, 0), true, false)),
        Stat::Granted
    );
    disk.disk.lock().unwrap().fail_syncs = 1;
    assert_eq!(
        r.lock(B, 4, &la(&lk("b", 1, b"w", 0, 0), true, true)),
        Stat::DeniedNolocks
    );
    assert_eq!(r.srv.lock().unwrap().list_locks(r.t0 + r.now).len(), 1);
    let sh = ShareArgs {
        cookie: cookie(b"s"),
        share: ShareLock {
            caller_name: Name::from_text("a").unwrap(),
            fh: Netobj::from_slice(b"f").unwrap(),
            oh: Netobj::from_slice(b"a").unwrap(),
            mode: 2,
            access: 3,
        },
        reclaim: false,
    };
    disk.disk.lock().unwrap().fail_syncs = 1;
    let res: ShareRes = decode(&r.call(A, 3, SHARE, &encode(&sh, 3)), 3).unwrap();
    assert_eq!(res.stat, Stat::DeniedNolocks);
    // The disk works again: granted, and the name is on the platter.
    assert_eq!(r.lock(A, 4, &la(&a, false, true)), Stat::Granted);
    let saved = disk
        .disk
        .lock()
        .unwrap()
        .durable_content(std::path::Path::new("/state/nlm-hosts"))
        .unwrap();
    assert_eq!(saved, b"a\nc\n");
}

/// Found by the simulator: an ordinary LOCK from a host during grace (a
/// retransmission of a call made before the crash, sent before the host
/// heard of the restart) ended that host's recovery, and grace ended
/// before its reclaims came. Now only reclaims, FREE_ALL, a reboot notice
/// or the time end it.
#[test]
fn an_ordinary_request_in_grace_does_not_end_the_hosts_recovery() {
    let store = MemHostStore::default();
    store
        .names
        .lock()
        .unwrap()
        .extend([b"a".to_vec(), b"b".to_vec()]);
    let cfg = NlmConfig {
        grace_ms: 30_000,
        grace_min_ms: 0,
        reclaim_settle_ms: 1000,
        ..NlmConfig::default()
    };
    let mut r = Rig::new(cfg, store);
    let mut re = la(&lk("a", 1, b"f", 0, 10), true, false);
    re.reclaim = true;
    assert_eq!(r.lock(A, 4, &re), Stat::Granted);
    // b's LOCK from before the crash, retransmitted.
    assert_eq!(
        r.lock(B, 4, &la(&lk("b", 1, b"f", 20, 10), true, false)),
        Stat::DeniedGracePeriod
    );
    r.advance(5_000);
    assert!(r.srv.lock().unwrap().in_grace(), "b has not reclaimed");
    let mut re = la(&lk("b", 1, b"f", 40, 10), true, false);
    re.reclaim = true;
    assert_eq!(r.lock(B, 4, &re), Stat::Granted);
    r.advance(500);
    assert!(r.srv.lock().unwrap().in_grace(), "b settles");
    r.advance(600);
    assert!(!r.srv.lock().unwrap().in_grace(), "both reclaimed");
}

/// Found by the simulator: a LOCK sent just before the server crashed,
/// still retransmitted (or delayed in the network) after the restart,
/// arrived once grace had ended early and was granted by a server that no
/// longer remembered it, though its client had long moved on. Grace now
/// lasts at least `grace_min_ms`, longer than such a request can live.
#[test]
fn grace_does_not_end_early_before_its_minimum() {
    let store = MemHostStore::default();
    store.names.lock().unwrap().insert(b"a".to_vec());
    let cfg = NlmConfig {
        grace_ms: 30_000,
        grace_min_ms: 10_000,
        reclaim_settle_ms: 1000,
        ..NlmConfig::default()
    };
    let mut r = Rig::new(cfg, store);
    let mut re = la(&lk("a", 1, b"f", 0, 10), true, false);
    re.reclaim = true;
    assert_eq!(r.lock(A, 4, &re), Stat::Granted);
    r.advance(2_000);
    assert!(
        r.srv.lock().unwrap().in_grace(),
        "a settled, the minimum holds"
    );
    // An old LOCK of b, from before the crash, comes late: refused.
    assert_eq!(
        r.lock(B, 4, &la(&lk("b", 1, b"g", 0, 0), true, false)),
        Stat::DeniedGracePeriod
    );
    r.advance(8_100);
    assert!(!r.srv.lock().unwrap().in_grace(), "over at the minimum");
}

/// Found by the simulator (seed 0x3b905): a restart whose list of hosts
/// was empty had no grace at all, and a LOCK sent to the previous start
/// (answered there, then retransmitted or late in the network) was granted
/// by the new start, for a client that had moved on. A restart now always
/// has a grace of `grace_min_ms`; the very first start has none.
#[test]
fn a_restart_with_no_hosts_to_wait_for_still_has_the_minimum_grace() {
    let store = MemHostStore::default();
    let cfg = NlmConfig {
        grace_ms: 30_000,
        grace_min_ms: 10_000,
        ..NlmConfig::default()
    };
    let first = Rig::new(cfg.clone(), store.clone());
    assert!(
        !first.srv.lock().unwrap().in_grace(),
        "first start: no grace"
    );
    drop(first);
    assert!(store.names.lock().unwrap().is_empty());
    let mut r = Rig::new(cfg, store);
    assert!(r.srv.lock().unwrap().in_grace(), "a restart");
    assert_eq!(
        r.lock(B, 4, &la(&lk("b", 1, b"g", 0, 0), true, false)),
        Stat::DeniedGracePeriod
    );
    r.advance(10_100);
    assert!(!r.srv.lock().unwrap().in_grace(), "over at the minimum");
    assert_eq!(
        r.lock(B, 4, &la(&lk("b", 1, b"g", 0, 0), true, false)),
        Stat::Granted
    );
}

/// Found by the simulator: two waits of one owner granted in one wake; the
/// client refused the older one (it had given up on it) and took the newer
/// one, inside the older one's range. Undoing the older grant unlocked the
/// newer one too. An undo now leaves alone what the owner got since.
#[test]
fn undoing_a_refused_grant_keeps_what_the_owner_got_since() {
    let mut r = Rig::default();
    let a = lk("a", 1, b"f", 30, 16);
    assert_eq!(r.lock(A, 4, &la(&a, true, false)), Stat::Granted);
    let old = lk("b", 1, b"f", 32, 11);
    let new = lk("b", 1, b"f", 39, 4);
    assert_eq!(r.lock(B, 4, &la(&old, false, true)), Stat::Blocked);
    assert_eq!(r.lock(B, 4, &la(&new, false, true)), Stat::Blocked);
    r.actions();
    r.unlock(A, 4, &a);
    let calls = r.calls();
    assert_eq!(calls.len(), 2, "both granted");
    let now = r.t0 + r.now;
    let (first, second) = (calls[0].3.unwrap(), calls[1].3.unwrap());
    r.srv
        .lock()
        .unwrap()
        .call_result(first, Some(Stat::Denied), now);
    r.srv
        .lock()
        .unwrap()
        .call_result(second, Some(Stat::Granted), now);
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 39, 4), true).stat,
        Stat::Denied,
        "the newer grant holds"
    );
    assert_eq!(
        r.test(C, 4, &lk("c", 3, b"f", 32, 7), true).stat,
        Stat::Granted,
        "the older one is undone"
    );
}

/// The listing's ages: since the owner went from holding nothing on the
/// file to holding something, by a LOCK or by the grant of its blocked
/// request (at the grant, not at the LOCK that queued it); growing or
/// splitting the hold keeps the age, letting go of all of it resets it.
#[test]
fn lock_ages_count_from_the_first_hold_or_the_grant() {
    let mut r = Rig::default();
    let ages = |r: &Rig| -> Vec<(u32, bool, Option<u64>)> {
        let mut v: Vec<_> = r
            .srv
            .lock()
            .unwrap()
            .list_locks(r.t0 + r.now)
            .iter()
            .map(|e| {
                (
                    e.svid,
                    e.state == latch_nlm::admin::EntryState::Held,
                    e.age_ms,
                )
            })
            .collect();
        v.sort();
        v
    };
    let a = lk("a", 1, b"f", 0, 10);
    assert_eq!(r.lock(A, 4, &la(&a, true, false)), Stat::Granted);
    r.advance(1_000);
    // B queues behind A at 1 s.
    let b = lk("b", 2, b"f", 0, 5);
    assert_eq!(r.lock(B, 4, &la(&b, true, true)), Stat::Blocked);
    r.advance(1_000);
    // A's hold grows and splits; its age stays.
    assert_eq!(
        r.lock(A, 4, &la(&lk("a", 1, b"f", 10, 10), true, false)),
        Stat::Granted
    );
    assert_eq!(r.unlock(A, 4, &lk("a", 1, b"f", 12, 2)), Stat::Granted);
    r.advance(1_000);
    assert_eq!(
        ages(&r),
        vec![
            (1, true, Some(3_000)),
            (1, true, Some(3_000)),
            (2, false, Some(2_000))
        ]
    );
    // A lets go of everything at 3 s: B is granted then.
    assert_eq!(r.unlock(A, 4, &lk("a", 1, b"f", 0, 0)), Stat::Granted);
    r.advance(500);
    assert_eq!(ages(&r), vec![(2, true, Some(500))]);
    // A locks again elsewhere in the file: its age starts over.
    r.advance(500);
    assert_eq!(
        r.lock(A, 4, &la(&lk("a", 1, b"f", 100, 1), true, false)),
        Stat::Granted
    );
    r.advance(250);
    assert_eq!(ages(&r), vec![(1, true, Some(250)), (2, true, Some(1_250))]);
}
