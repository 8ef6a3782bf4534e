//! Garbage is harmless: every malformed message gets the right RPC error or
//! is dropped, hostile TCP peers are cut off, memory stays bounded, and the
//! server keeps answering everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

const NLM: u32 = 100_021;
const RPCBIND: u32 = 100_000;

struct Host {
    ns: Netns,
    d: Daemon,
    _dir: tempfile::TempDir,
}

fn nlm() -> SocketAddr {
    "127.0.0.1:4045".parse().unwrap()
}

fn rpcb() -> SocketAddr {
    "127.0.0.1:111".parse().unwrap()
}

/// latchd with its embedded rpcbind and small connection limits.
fn start(limits: &str) -> Host {
    let ns = Netns::new();
    let dir = tempdir();
    let cfg = dir.path().join("latchd.toml");
    std::fs::write(&cfg, format!("[limits]\n{limits}\n")).unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let state = dir.path().join("nsm");
    let mut d = ns.spawn_private_run(
        &[
            LATCHD,
            "--config",
            &cfg,
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &dir.path().join("latchd.log"),
    );
    wait_ready(&ns, nlm(), NLM, 4, &mut d);
    wait_ready(&ns, rpcb(), RPCBIND, 2, &mut d);
    Host { ns, d, _dir: dir }
}

fn still_serves(h: &Host) {
    let s = h.ns.udp();
    let r =
        udp_call(&s, nlm(), &call_bytes(0xabcd, NLM, 4, 0, &[])).expect("NULL over UDP answered");
    assert_eq!(accept_stat(&r), Some(0));
    let mut t = h.ns.tcp(nlm()).expect("TCP connect");
    let r = tcp_call(&mut t, &call_bytes(0xabce, NLM, 1, 0, &[])).expect("NULL over TCP answered");
    assert_eq!(accept_stat(&r), Some(0));
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn malformed_datagrams_get_the_right_error_or_silence() {
    let h = start("");
    let s = h.ns.udp();
    let good = call_bytes(7, NLM, 4, 0, &[]);
    // Truncated headers: dropped, never answered with junk.
    for len in 0..good.len() {
        let r = udp_call(&s, nlm(), &good[..len]);
        assert!(r.is_none() || len >= 8, "len {len} answered: {r:?}");
    }
    // Unknown program, version, procedure.
    let r = udp_call(&s, nlm(), &call_bytes(8, 123_456, 1, 0, &[])).unwrap();
    assert_eq!(accept_stat(&r), Some(1));
    let r = udp_call(&s, nlm(), &call_bytes(9, NLM, 9, 0, &[])).unwrap();
    assert_eq!(
        words(&r)[5..],
        [2, 0, 4],
        "PROG_MISMATCH with the range 0..4 (0 is FreeBSD's NLM_SM callback version)"
    );
    let r = udp_call(&s, nlm(), &call_bytes(10, NLM, 4, 99, &[])).unwrap();
    assert_eq!(accept_stat(&r), Some(3));
    // rpcvers 3: RPC_MISMATCH 2..2.
    let mut v3 = call_bytes(11, NLM, 4, 0, &[]);
    v3[11] = 3;
    let r = udp_call(&s, nlm(), &v3).unwrap();
    assert_eq!(words(&r), [11, 1, 1, 0, 2, 2]);
    // A credential length of 4 GiB: AUTH_ERROR / AUTH_BADCRED.
    let mut huge = call_bytes(12, NLM, 4, 0, &[]);
    huge[28..32].copy_from_slice(&[0xff; 4]);
    let r = udp_call(&s, nlm(), &huge).unwrap();
    assert_eq!(words(&r), [12, 1, 1, 1, 1]);
    // Arguments with a 4 GiB string length, and deep junk after valid ones.
    let mut args = vec![0, 1, 0x86, 0xa5, 0, 0, 0, 1];
    args.extend_from_slice(&[0xff; 4]);
    let r = udp_call(&s, rpcb(), &call_bytes(13, RPCBIND, 4, 3, &args)).unwrap();
    assert_eq!(accept_stat(&r), Some(4), "GARBAGE_ARGS");
    let mut getport = call_bytes(
        14,
        RPCBIND,
        2,
        3,
        &[0, 1, 0x86, 0xb5, 0, 0, 0, 4, 0, 0, 0, 17, 0, 0, 0, 0],
    );
    let ok = udp_call(&s, rpcb(), &getport).unwrap();
    assert_eq!(accept_stat(&ok), Some(0));
    assert_eq!(&ok[24..], &4045u32.to_be_bytes(), "GETPORT finds NLM v4");
    getport[..4].copy_from_slice(&15u32.to_be_bytes());
    getport.extend(std::iter::repeat_n(0x5a, 1000));
    let r = udp_call(&s, rpcb(), &getport).unwrap();
    assert_eq!(accept_stat(&r), Some(4));
    // A flood of random datagrams, then business as usual.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..5000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 200) as usize;
        let mut junk: Vec<u8> = (0..len).map(|j| (x >> (j % 56)) as u8).collect();
        if i % 2 == 0 && junk.len() >= 8 {
            // Make half of them look like calls so they reach deeper code.
            junk[4..8].copy_from_slice(&[0; 4]);
        }
        s.send_to(&junk, if i % 3 == 0 { rpcb() } else { nlm() })
            .unwrap();
    }
    still_serves(&h);
}

#[test]
fn a_fragment_header_claiming_2gib_closes_only_that_connection() {
    let h = start("max_record_bytes = 65536");
    let mut t = h.ns.tcp(nlm()).unwrap();
    t.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
    t.write_all(&[0u8; 4096]).unwrap();
    let mut buf = [0u8; 16];
    match t.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected the connection to close, got {n} bytes"),
    }
    still_serves(&h);
    assert!(
        h.d.log_text().contains("exceeds the limit"),
        "{}",
        h.d.log_text()
    );
}

#[test]
fn a_peer_that_sends_half_a_record_and_stalls_is_cut_off() {
    let h = start("idle_timeout_ms = 1500");
    let mut t = h.ns.tcp(nlm()).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let rec = call_bytes(1, NLM, 4, 0, &[]);
    t.write_all(&(0x8000_0000u32 | rec.len() as u32).to_be_bytes())
        .unwrap();
    t.write_all(&rec[..10]).unwrap();
    // Meanwhile everyone else is served.
    still_serves(&h);
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = t.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "closed by the idle timeout"
    );
}

#[test]
fn ten_thousand_idle_connections_leave_the_server_serving_in_bounded_memory() {
    let h = start("max_connections = 200");
    let before = h.d.rss_kib();
    let conns: Vec<TcpStream> = h.ns.enter(|| {
        (0..10_000)
            .map(|i| TcpStream::connect(nlm()).unwrap_or_else(|e| panic!("connection {i}: {e}")))
            .collect()
    });
    still_serves(&h);
    let after = h.d.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // The quietest connections were closed to make room.
    let mut closed = 0;
    for c in conns.iter().take(100) {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        if matches!((&*c).read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 100, "the oldest idle connections were evicted");
    // And the newest still work.
    let mut last = conns.last().unwrap().try_clone().unwrap();
    let r = tcp_call(&mut last, &call_bytes(77, NLM, 3, 0, &[])).expect("newest connection served");
    assert_eq!(accept_stat(&r), Some(0));
}
