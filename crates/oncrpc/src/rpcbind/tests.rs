#![allow(clippy::disallowed_methods)] // tests may read the clock
use super::*;
use crate::dispatch::{CallContext, Outcome, Program, Transport};
use crate::msg::{Credential, Xid};
use std::time::Instant;

fn ctx<'a>(cred: &'a Credential, peer: &str, vers: u32, proc_: u32) -> CallContext<'a> {
    CallContext {
        peer: peer.parse().unwrap(),
        local: None,
        transport: Transport::Udp,
        xid: Xid(1),
        vers,
        proc_,
        cred,
        now: Instant::now(),
        wall_secs: 1_700_000_000,
    }
}

fn call(s: &mut RpcbindServer, peer: &str, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let cred = Credential::None;
    let mut w = Writer::new();
    assert_eq!(
        s.call(&ctx(&cred, peer, vers, proc_), args, &mut w),
        Outcome::Reply
    );
    w.into_bytes()
}

const LOCAL: &str = "127.0.0.1:600";

#[test]
fn uaddr_round_trips_v4_and_v6() {
    for a in ["10.1.2.3:2049", "[::1]:4045", "[fe80::1]:1", "0.0.0.0:0"] {
        let a: SocketAddr = a.parse().unwrap();
        assert_eq!(parse_uaddr(&to_uaddr(a)), Some(a));
    }
    assert_eq!(
        to_uaddr("127.0.0.1:4045".parse().unwrap()),
        "127.0.0.1.15.205"
    );
    for bad in [
        "",
        "1.2.3.4",
        "1.2.3.4.256.1",
        "::1.1",
        "x.1.1",
        "1.2.3.4.-1.0",
    ] {
        assert_eq!(parse_uaddr(bad), None, "{bad}");
    }
}

#[test]
fn v3_set_getaddr_unset_and_dump() {
    let mut s = RpcbindServer::new();
    let r = Rpcb::new(
        100021,
        4,
        Netid::Tcp6,
        "[::]:4045".parse().unwrap(),
        "latchd",
    );
    assert_eq!(
        decode_bool(&call(&mut s, LOCAL, 4, PROC_SET, &rpcb_args(&r))),
        Some(true)
    );
    // A second SET of the same (prog, vers, netid) fails, as in RFC 1833.
    assert_eq!(
        decode_bool(&call(&mut s, LOCAL, 4, PROC_SET, &rpcb_args(&r))),
        Some(false)
    );
    // The wildcard registration is reported at the loopback the caller used.
    let got = decode_getaddr(&call(&mut s, "[::1]:700", 3, PROC_GETADDR, &rpcb_args(&r)));
    assert_eq!(got, Some(Some("[::1]:4045".parse().unwrap())));
    let list = decode_rpcblist(&call(&mut s, LOCAL, 4, PROC_DUMP, &[])).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].netid.as_bytes(), b"tcp6");
    // GETVERSADDR is exact; GETADDR falls back to another version.
    let mut v1 = r.clone();
    v1.vers = 1;
    let exact = decode_getaddr(&call(&mut s, LOCAL, 4, PROC_GETVERSADDR, &rpcb_args(&v1)));
    assert_eq!(exact, Some(None));
    let any = decode_getaddr(&call(&mut s, "[::1]:7", 4, PROC_GETADDR, &rpcb_args(&v1)));
    assert!(matches!(any, Some(Some(_))));
    // UNSET with an empty netid removes every transport.
    let mut all = r.clone();
    all.netid = Default::default();
    assert_eq!(
        decode_bool(&call(&mut s, LOCAL, 4, PROC_UNSET, &rpcb_args(&all))),
        Some(true)
    );
    assert!(s.is_empty());
}

#[test]
fn v2_set_getport_dump_unset() {
    let mut s = RpcbindServer::new();
    let m = Mapping {
        prog: 100024,
        vers: 1,
        prot: IPPROTO_UDP,
        port: 662,
    };
    let args = latch_xdr::to_bytes(&m);
    assert_eq!(
        decode_bool(&call(&mut s, LOCAL, 2, PROC_SET, &args)),
        Some(true)
    );
    let port: u32 = latch_xdr::from_bytes(&call(&mut s, LOCAL, 2, PROC_GETPORT, &args)).unwrap();
    assert_eq!(port, 662);
    let tcp = Mapping {
        prot: IPPROTO_TCP,
        ..m
    };
    let tcp_args = latch_xdr::to_bytes(&tcp);
    let port: u32 =
        latch_xdr::from_bytes(&call(&mut s, LOCAL, 2, PROC_GETPORT, &tcp_args)).unwrap();
    assert_eq!(port, 0, "not registered on tcp");
    // IPv6 registrations are invisible to v2 DUMP.
    s.set(&Rpcb::new(
        100024,
        1,
        Netid::Udp6,
        "[::]:662".parse().unwrap(),
        "x",
    ));
    assert_eq!(
        decode_pmaplist(&call(&mut s, LOCAL, 2, PROC_DUMP, &[])).unwrap(),
        vec![m]
    );
    assert_eq!(
        decode_bool(&call(&mut s, LOCAL, 2, PROC_UNSET, &args)),
        Some(true)
    );
    assert_eq!(s.len(), 1, "the udp6 entry stays");
}

#[test]
fn registration_from_the_network_is_refused() {
    let mut s = RpcbindServer::new();
    let r = Rpcb::new(
        100021,
        4,
        Netid::Udp,
        "10.0.0.1:4045".parse().unwrap(),
        "evil",
    );
    assert_eq!(
        decode_bool(&call(&mut s, "10.0.0.9:600", 3, PROC_SET, &rpcb_args(&r))),
        Some(false)
    );
    assert!(s.is_empty());
    assert!(s.set(&r));
    assert_eq!(
        decode_bool(&call(&mut s, "10.0.0.9:600", 3, PROC_UNSET, &rpcb_args(&r))),
        Some(false)
    );
    assert_eq!(s.len(), 1);
    assert_eq!(s.stats.refused_remote, 2);
}

#[test]
fn the_table_is_bounded_and_rejects_bad_addresses() {
    let mut s = RpcbindServer::new();
    for i in 0..server::MAX_ENTRIES as u32 {
        assert!(s.set(&Rpcb::new(
            200000 + i,
            1,
            Netid::Udp,
            "127.0.0.1:9".parse().unwrap(),
            ""
        )));
    }
    assert!(!s.set(&Rpcb::new(
        1,
        1,
        Netid::Udp,
        "127.0.0.1:9".parse().unwrap(),
        ""
    )));
    let mut bad = Rpcb::new(2, 1, Netid::Udp, "127.0.0.1:9".parse().unwrap(), "");
    bad.addr = latch_xdr::XdrString::from_text("not-an-address").unwrap();
    s.unset(200000, 1, b"");
    assert!(!s.set(&bad));
}

#[test]
fn callit_is_not_served() {
    let mut s = RpcbindServer::new();
    let cred = Credential::None;
    let mut w = Writer::new();
    assert_eq!(
        s.call(&ctx(&cred, LOCAL, 2, 5,), &[], &mut w),
        Outcome::ProcUnavail
    );
    assert_eq!(
        s.call(&ctx(&cred, LOCAL, 4, 5), &[], &mut w),
        Outcome::ProcUnavail
    );
    // GETVERSADDR does not exist in v3.
    assert_eq!(
        s.call(&ctx(&cred, LOCAL, 3, 9), &[], &mut w),
        Outcome::ProcUnavail
    );
}
