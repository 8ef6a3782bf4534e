//! The shared RPC client against our own server over real loopback sockets:
//! hundreds of concurrent callers on one socket, several servers behind one
//! UDP socket, retransmission and deadlines. (Stray and forged replies are
//! covered by the call table's unit tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use latch_io::{server, CallError, Endpoint, RpcClient, ServerLimits};
use latch_oncrpc::client::RetryPolicy;
use latch_oncrpc::drc::Drc;
use latch_oncrpc::{CallContext, Dispatcher, Outcome, Program, RpcError};
use latch_xdr::Writer;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PROG: u32 = 400_000;

/// proc 1 echoes its arguments; proc 2 ignores the first transmission of
/// each xid (a lost datagram); proc 3 never answers; proc 4 answers with
/// the server's tag, so a caller can tell servers apart.
struct Echo {
    tag: u32,
    seen: HashSet<u32>,
}

impl Program for Echo {
    fn number(&self) -> u32 {
        PROG
    }
    fn versions(&self) -> (u32, u32) {
        (1, 1)
    }
    fn call(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        match ctx.proc_ {
            0 => Outcome::Reply,
            1 => {
                res.put_raw(args);
                Outcome::Reply
            }
            2 if self.seen.insert(ctx.xid.0) => Outcome::NoReply,
            2 => {
                res.put_raw(args);
                Outcome::Reply
            }
            3 => Outcome::NoReply,
            4 => {
                res.put_u32(self.tag);
                Outcome::Reply
            }
            _ => Outcome::ProcUnavail,
        }
    }
}

fn start(addr: &str, tag: u32) -> (latch_io::ServerHandle, SocketAddr, SocketAddr) {
    let mut d = Dispatcher::new(Drc::new(16, 1 << 16));
    d.register(Box::new(Echo {
        tag,
        seen: HashSet::new(),
    }));
    let ep = Endpoint {
        addr: addr.parse().unwrap(),
        udp: true,
        tcp: true,
    };
    let h = server::serve(
        Arc::new(Mutex::new(d)),
        &[ep],
        None,
        ServerLimits::default(),
    )
    .unwrap();
    let udp = h
        .bound
        .iter()
        .find(|(t, _)| *t == latch_oncrpc::Transport::Udp)
        .unwrap()
        .1;
    let tcp = h
        .bound
        .iter()
        .find(|(t, _)| *t == latch_oncrpc::Transport::Tcp)
        .unwrap()
        .1;
    (h, udp, tcp)
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        first_timeout: Duration::from_millis(50),
        max_timeout: Duration::from_millis(200),
        deadline: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_calls_share_one_udp_socket() {
    let (_h, udp, _) = start("127.0.0.1:0", 1);
    let c = Arc::new(RpcClient::udp(udp, false).unwrap());
    let calls = (0..500u32).map(|i| {
        let c = c.clone();
        tokio::spawn(async move { c.call(Some(udp), PROG, 1, 1, &i.to_be_bytes()).await })
    });
    for (i, h) in calls.enumerate() {
        let r = h.await.unwrap().unwrap();
        assert_eq!(
            r,
            (i as u32).to_be_bytes(),
            "every caller gets its own answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_calls_share_one_tcp_connection() {
    let (_h, _, tcp) = start("127.0.0.1:0", 1);
    let c = Arc::new(RpcClient::tcp(tcp, false).await.unwrap());
    let calls = (0..500u32).map(|i| {
        let c = c.clone();
        tokio::spawn(async move { c.call(None, PROG, 1, 1, &i.to_be_bytes()).await })
    });
    for (i, h) in calls.enumerate() {
        assert_eq!(h.await.unwrap().unwrap(), (i as u32).to_be_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_udp_socket_talks_to_many_servers() {
    let servers: Vec<_> = (1..=4)
        .map(|i| start(&format!("127.0.0.{i}:0"), i))
        .collect();
    let c = Arc::new(RpcClient::udp(servers[0].1, false).unwrap());
    let local = c.local_addr().unwrap();
    for round in 0..3 {
        for (i, (_, udp, _)) in servers.iter().enumerate() {
            let r = c.call(Some(*udp), PROG, 1, 4, &[]).await.unwrap();
            assert_eq!(r, (i as u32 + 1).to_be_bytes(), "round {round}");
        }
    }
    assert_eq!(c.local_addr().unwrap(), local, "still the one socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_datagram_is_retransmitted_with_the_same_xid() {
    let (_h, udp, _) = start("127.0.0.1:0", 1);
    let mut c = RpcClient::udp(udp, false).unwrap();
    c.policy = fast_policy();
    // The server ignores the first transmission of each xid: only a
    // retransmission with the same xid is answered.
    for i in 0..20u32 {
        assert_eq!(
            c.call(Some(udp), PROG, 1, 2, &i.to_be_bytes())
                .await
                .unwrap(),
            i.to_be_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_rpc_errors_are_reported() {
    let (_h, udp, tcp) = start("127.0.0.1:0", 1);
    let mut c = RpcClient::udp(udp, false).unwrap();
    c.policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..fast_policy()
    };
    assert!(matches!(
        c.call(Some(udp), PROG, 1, 3, &[]).await,
        Err(CallError::Timeout)
    ));
    assert!(matches!(
        c.call(Some(udp), PROG, 9, 0, &[]).await,
        Err(CallError::Rpc(RpcError::ProgMismatch { low: 1, high: 1 }))
    ));
    assert!(matches!(
        c.call(Some(udp), PROG, 1, 77, &[]).await,
        Err(CallError::Rpc(RpcError::ProcUnavail))
    ));
    let mut t = RpcClient::tcp(tcp, false).await.unwrap();
    t.policy = c.policy;
    assert!(matches!(
        t.call(None, PROG, 1, 3, &[]).await,
        Err(CallError::Timeout)
    ));
    // The abandoned calls left nothing behind; the client still works.
    assert_eq!(t.call(None, PROG, 1, 1, b"okok").await.unwrap(), b"okok");
}
