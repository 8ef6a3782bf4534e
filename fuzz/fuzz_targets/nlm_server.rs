//! Arbitrary calls to the NLM server through the RPC dispatcher, from a few
//! peers, with time moving: it never panics, answers only with well-formed
//! replies, and its engine never lets two conflicting locks coexist.
#![no_main]
use latch_lock::Mode;
use latch_nlm::{MemHostStore, NlmConfig, NlmServer};
use latch_oncrpc::drc::Drc;
use latch_oncrpc::{msg, Dispatcher, Transport};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Shared(Arc<Mutex<NlmServer>>);

impl latch_oncrpc::Program for Shared {
    fn number(&self) -> u32 {
        latch_nlm::proto::PROGRAM
    }
    fn versions(&self) -> (u32, u32) {
        NlmServer::VERSIONS
    }
    fn is_cached(&self, _v: u32, p: u32) -> bool {
        NlmServer::is_cached_proc(p)
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

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let cfg = NlmConfig {
        max_hosts: 4,
        ..NlmConfig::default()
    };
    let srv = Arc::new(Mutex::new(
        NlmServer::new(cfg, Box::new(MemHostStore::default()), t0).unwrap(),
    ));
    let mut d = Dispatcher::new(Drc::new(16, 1 << 14));
    d.register(Box::new(Shared(srv.clone())));
    let peers = ["10.0.0.1:700", "10.0.0.2:701", "127.0.0.1:702"];
    let mut now = t0;
    // Messages are length-prefixed by one byte; the next byte picks a peer
    // and a call header is added so that most inputs reach NLM itself.
    let mut rest = data;
    let mut xid = 0u32;
    while let [len, who, body @ ..] = rest {
        let n = usize::from(*len).min(body.len());
        let (args, tail) = body.split_at(n);
        rest = tail;
        xid += 1;
        let proc_ = u32::from(*who >> 2) % 24;
        let vers = [1, 3, 4, 0][usize::from(*who) % 4];
        let call = latch_oncrpc::client::encode_call(
            msg::Xid(xid),
            latch_nlm::proto::PROGRAM,
            vers,
            proc_,
            &msg::Credential::None,
            args,
        );
        let peer = peers[usize::from(*who) % 3].parse().unwrap();
        if let Some(r) = d.handle(peer, None, Transport::Udp, &call, now, 0) {
            assert!(msg::parse_reply(&r).is_some());
        }
        now += Duration::from_millis(u64::from(*who) * 10);
        let mut s = srv.lock().unwrap();
        s.tick(now);
        let _ = s.take_actions();
        let _ = s.take_client_actions();
        // Safety: no two holders of different owners conflict.
        let e = s.engine();
        for f in e.files() {
            let locks = e.locks(&f);
            for (i, a) in locks.iter().enumerate() {
                for b in &locks[i + 1..] {
                    let conflict = a.owner != b.owner
                        && a.range.overlaps(b.range)
                        && (a.mode == Mode::Exclusive || b.mode == Mode::Exclusive);
                    assert!(!conflict, "{a:?} and {b:?}");
                }
            }
        }
    }
});
