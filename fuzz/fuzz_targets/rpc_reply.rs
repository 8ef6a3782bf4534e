//! Replies from a hostile server: parsing never panics and the call table
//! only ever completes calls it registered.
#![no_main]
use latch_oncrpc::client::CallTable;
use latch_oncrpc::msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = msg::parse_reply(data);
    let mut t = CallTable::new(0, 8);
    let x = t.register(None, 1u8).expect("room");
    if let Some((xid, tok)) = t.complete(None, data) {
        assert_eq!((xid, tok), (x, 1));
    }
});
