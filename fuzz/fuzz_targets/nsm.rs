//! Arbitrary calls to the status monitor, from loopback and from the
//! network, with its storage failing now and then: it never panics, its
//! state number stays odd, and what it says it monitors is on its "disk".
#![no_main]
use latch_nsm::{MemStore, Monitor, MonitorConfig};
use latch_oncrpc::drc::Drc;
use latch_oncrpc::{msg, Dispatcher, Transport};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Shared(Arc<Mutex<Monitor<MemStore>>>);

impl latch_oncrpc::Program for Shared {
    fn number(&self) -> u32 {
        latch_nsm::proto::PROGRAM
    }
    fn versions(&self) -> (u32, u32) {
        (1, 1)
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
    let store = MemStore::default();
    let cfg = MonitorConfig {
        max_hosts: 8,
        ..MonitorConfig::default()
    };
    let m = Arc::new(Mutex::new(Monitor::start(store.clone(), cfg).unwrap()));
    let mut d = Dispatcher::new(Drc::new(16, 1 << 14));
    d.register(Box::new(Shared(m.clone())));
    let mut rest = data;
    let mut xid = 0u32;
    while let [len, who, body @ ..] = rest {
        let n = usize::from(*len).min(body.len());
        let (args, tail) = body.split_at(n);
        rest = tail;
        xid += 1;
        if who & 0x80 != 0 {
            store.disk.lock().unwrap().fail_writes = 1;
        }
        let proc_ = u32::from(*who) % 8;
        let call = latch_oncrpc::client::encode_call(
            msg::Xid(xid),
            latch_nsm::proto::PROGRAM,
            1,
            proc_,
            &msg::Credential::None,
            args,
        );
        let peer = if who & 0x40 != 0 {
            "10.0.0.9:800"
        } else {
            "127.0.0.1:800"
        };
        if let Some(r) = d.handle(
            peer.parse().unwrap(),
            None,
            Transport::Udp,
            &call,
            Instant::now(),
            0,
        ) {
            assert!(msg::parse_reply(&r).is_some());
        }
        store.disk.lock().unwrap().fail_writes = 0;
        let mut mon = m.lock().unwrap();
        assert_eq!(mon.state() % 2, 1);
        let _ = mon.take_actions();
        let disk = store.disk.lock().unwrap();
        for h in mon.monitored() {
            let on_disk = disk.monitored.get(&h.name);
            assert!(
                on_disk.is_some_and(|r| r.regs.len() == h.regs.len()),
                "{:?} promised but not stored",
                h.name
            );
        }
    }
});
