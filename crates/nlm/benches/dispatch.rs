//! The server side of one NLM call, in process: message decoding, the
//! duplicate request cache, the lock manager and the reply, as latchd's
//! shell calls them, with no socket. NULL against UNLOCK and LOCK on
//! distinct files, or distinct ranges of one file, from 64 client hosts
//! that each hold their lock between pairs, so the cost LOCK+UNLOCK adds over
//! two NULLs (issue 4's `rate` at K=64) can be seen apart from the network
//! and the benchmark client.
//!
//! `cargo bench -p latch-nlm --bench dispatch`

#![allow(clippy::disallowed_methods)] // a benchmark reads the clock once

use criterion::{criterion_group, criterion_main, Criterion};
use latch_nlm::proto::{encode, Lock, LockArgs, Netobj, UnlockArgs, LOCK, PROGRAM, UNLOCK};
use latch_nlm::{MemHostStore, NlmConfig, NlmServer};
use latch_oncrpc::client::encode_call;
use latch_oncrpc::drc::Drc;
use latch_oncrpc::{Credential, Dispatcher, Transport, Xid};
use latch_xdr::XdrString;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

const CLIENTS: usize = 64;

struct Client {
    peer: SocketAddr,
    lock: Vec<u8>,
    unlock: Vec<u8>,
}

/// A call message as a client sends it; its xid is rewritten per call.
fn call(proc_: u32, args: &[u8]) -> Vec<u8> {
    let cred = Credential::Sys(latch_oncrpc::msg::AuthSys {
        stamp: 1,
        machine_name: XdrString::from_text("client").unwrap_or_default(),
        uid: 0,
        gid: 0,
        gids: Vec::new(),
    });
    encode_call(Xid(0), PROGRAM, 4, proc_, &cred, args)
}

/// Each client on a file of its own (`one_file` false) or on a range of
/// its own in one file, as `latch bench lock`'s files and ranges.
fn clients(one_file: bool) -> Vec<Client> {
    (0..CLIENTS)
        .map(|i| {
            let name = format!("10.9.{}.{}", i / 250, i % 250 + 1);
            let f = if one_file { 0 } else { i };
            let l = Lock {
                caller_name: XdrString::from_text(&name).unwrap_or_default(),
                fh: Netobj::from_slice(format!("file-handle-{f:020}").as_bytes())
                    .unwrap_or_default(),
                oh: Netobj::from_slice(format!("{name}#1-1~1").as_bytes()).unwrap_or_default(),
                svid: 1,
                offset: if one_file { i as u64 * 4096 } else { 0 },
                len: if one_file { 4096 } else { 0 },
            };
            let la = LockArgs {
                cookie: Netobj::from_slice(b"cookie01").unwrap_or_default(),
                block: false,
                exclusive: true,
                lock: l.clone(),
                reclaim: false,
                state: 1,
            };
            let ua = UnlockArgs {
                cookie: Netobj::from_slice(b"cookie02").unwrap_or_default(),
                lock: l,
            };
            Client {
                peer: format!("{name}:800")
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
                lock: call(LOCK, &encode(&la, 4)),
                unlock: call(UNLOCK, &encode(&ua, 4)),
            }
        })
        .collect()
}

fn set_xid(msg: &mut [u8], xid: u32) {
    msg[..4].copy_from_slice(&xid.to_be_bytes());
}

fn dispatch(c: &mut Criterion) {
    let t0 = Instant::now();
    let server = match NlmServer::new(NlmConfig::default(), Box::new(MemHostStore::default()), t0) {
        Ok(s) => s,
        Err(e) => panic!("server: {e}"),
    };
    // latchd's default cache size.
    let mut d = Dispatcher::new(Drc::new(4096, 4 << 20));
    d.register(Box::new(server));
    let mut null = call(0, &[]);
    let mut xid = 1u32;
    let mut k = 0usize;
    let mut g = c.benchmark_group("nlm_dispatch_64_hosts");
    let peers: Vec<SocketAddr> = clients(false).iter().map(|c| c.peer).collect();
    g.bench_function("null", |b| {
        b.iter(|| {
            xid = xid.wrapping_add(1);
            set_xid(&mut null, xid);
            k = (k + 1) % CLIENTS;
            black_box(d.handle(peers[k], None, Transport::Udp, &null, t0, 0))
        })
    });
    for (name, one_file) in [("files", false), ("ranges", true)] {
        let mut cl = clients(one_file);
        // As at K=64, every client holds its lock between its pairs, so
        // the one file of `ranges` holds 63 or 64 locks throughout: each
        // step is an UNLOCK then the same client's LOCK.
        for c in cl.iter_mut() {
            xid = xid.wrapping_add(1);
            set_xid(&mut c.lock, xid);
            black_box(d.handle(c.peer, None, Transport::Udp, &c.lock, t0, 0));
        }
        g.bench_function(format!("lock_unlock_pair/{name}"), |b| {
            b.iter(|| {
                k = (k + 1) % CLIENTS;
                let c = &mut cl[k];
                xid = xid.wrapping_add(1);
                set_xid(&mut c.unlock, xid);
                black_box(d.handle(c.peer, None, Transport::Udp, &c.unlock, t0, 0));
                xid = xid.wrapping_add(1);
                set_xid(&mut c.lock, xid);
                black_box(d.handle(c.peer, None, Transport::Udp, &c.lock, t0, 0))
            })
        });
        for c in cl.iter_mut() {
            xid = xid.wrapping_add(1);
            set_xid(&mut c.unlock, xid);
            black_box(d.handle(c.peer, None, Transport::Udp, &c.unlock, t0, 0));
        }
    }
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
