//! Any bytes sent to a server: the dispatcher never panics, answers only with
//! well-formed replies, and keeps serving.
#![no_main]
use latch_oncrpc::dispatch::{Dispatcher, Transport};
use latch_oncrpc::drc::Drc;
use latch_oncrpc::msg;
use latch_oncrpc::rpcbind::RpcbindServer;
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let mut d = Dispatcher::new(Drc::new(16, 4096));
    d.register(Box::new(RpcbindServer::new()));
    let peer = "127.0.0.1:700".parse().unwrap();
    let now = Instant::now();
    // Twice: the second pass exercises the duplicate cache path.
    for _ in 0..2 {
        if let Some(reply) = d.handle(peer, None, Transport::Udp, data, now, 0) {
            assert!(msg::parse_reply(&reply).is_some(), "malformed reply");
        }
    }
    let null =
        latch_oncrpc::client::encode_call(msg::Xid(1), 100_000, 2, 0, &msg::Credential::None, &[]);
    let r = d
        .handle(peer, None, Transport::Udp, &null, now, 0)
        .expect("NULL answered");
    assert!(matches!(
        msg::parse_reply(&r).map(|r| r.result),
        Some(Ok(_))
    ));
});
