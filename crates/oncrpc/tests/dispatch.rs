//! The dispatcher answers every malformed or unserved call correctly and
//! keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use latch_oncrpc::client::encode_call;
use latch_oncrpc::dispatch::{decode_args, CallContext, Dispatcher, Outcome, Program, Transport};
use latch_oncrpc::drc::Drc;
use latch_oncrpc::msg::{self, AuthStat, AuthSys, Credential, RpcError, Xid};
use latch_xdr::Writer;
use proptest::prelude::*;
use std::net::SocketAddr;
use std::time::Instant;

/// A counter program: proc 1 adds its u32 argument (cached), proc 2 reads,
/// proc 3 defers, proc 4 sends no reply, proc 5 echoes the AUTH_SYS uid.
struct Counter {
    value: u32,
    runs: u32,
}

impl Program for Counter {
    fn number(&self) -> u32 {
        300_000
    }
    fn versions(&self) -> (u32, u32) {
        (2, 3)
    }
    fn is_cached(&self, _vers: u32, proc_: u32) -> bool {
        matches!(proc_, 1 | 3 | 4)
    }
    fn call(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        match ctx.proc_ {
            0 => Outcome::Reply,
            1 => match decode_args::<u32>(args) {
                Ok(n) => {
                    self.runs += 1;
                    self.value += n;
                    res.put_u32(self.value);
                    Outcome::Reply
                }
                Err(o) => o,
            },
            2 => {
                res.put_u32(self.value);
                Outcome::Reply
            }
            3 => {
                self.runs += 1;
                Outcome::Deferred
            }
            4 => {
                self.runs += 1;
                Outcome::NoReply
            }
            5 => match ctx.cred {
                Credential::Sys(s) => {
                    res.put_u32(s.uid);
                    Outcome::Reply
                }
                Credential::None => Outcome::SystemErr,
            },
            _ => Outcome::ProcUnavail,
        }
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:800".parse().unwrap()
}

fn setup() -> Dispatcher {
    let mut d = Dispatcher::new(Drc::new(64, 1 << 16));
    d.register(Box::new(Counter { value: 0, runs: 0 }));
    d
}

fn send(d: &mut Dispatcher, bytes: &[u8]) -> Option<Vec<u8>> {
    d.handle(peer(), None, Transport::Udp, bytes, Instant::now(), 0)
}

fn call(d: &mut Dispatcher, xid: u32, vers: u32, proc_: u32, args: &[u8]) -> Option<Vec<u8>> {
    send(
        d,
        &encode_call(Xid(xid), 300_000, vers, proc_, &Credential::None, args),
    )
}

fn result(reply: &[u8]) -> Result<Vec<u8>, RpcError> {
    msg::parse_reply(reply).unwrap().result.map(<[u8]>::to_vec)
}

fn value(d: &mut Dispatcher) -> u32 {
    let mut w = Writer::new();
    let p = d.program_mut(300_000).unwrap();
    // Read the counter through the program itself.
    let cred = Credential::None;
    let ctx = CallContext {
        peer: peer(),
        local: None,
        transport: Transport::Udp,
        xid: Xid(0),
        vers: 2,
        proc_: 2,
        cred: &cred,
        now: Instant::now(),
        wall_secs: 0,
    };
    p.call(&ctx, &[], &mut w);
    u32::from_be_bytes(w.as_bytes()[..4].try_into().unwrap())
}

#[test]
fn each_error_gets_its_reply() {
    let mut d = setup();
    assert_eq!(result(&call(&mut d, 1, 2, 0, &[]).unwrap()), Ok(vec![]));
    let unknown = encode_call(Xid(2), 999, 1, 0, &Credential::None, &[]);
    assert_eq!(
        result(&send(&mut d, &unknown).unwrap()),
        Err(RpcError::ProgUnavail)
    );
    assert_eq!(
        result(&call(&mut d, 3, 7, 0, &[]).unwrap()),
        Err(RpcError::ProgMismatch { low: 2, high: 3 })
    );
    assert_eq!(
        result(&call(&mut d, 4, 2, 99, &[]).unwrap()),
        Err(RpcError::ProcUnavail)
    );
    assert_eq!(
        result(&call(&mut d, 5, 2, 1, &[1, 2]).unwrap()),
        Err(RpcError::GarbageArgs)
    );
    // Deep junk after valid arguments is garbage too.
    let junk = [0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    assert_eq!(
        result(&call(&mut d, 6, 2, 1, &junk).unwrap()),
        Err(RpcError::GarbageArgs)
    );
    assert_eq!(
        result(&call(&mut d, 7, 2, 5, &[]).unwrap()),
        Err(RpcError::SystemErr)
    );
    // rpcvers 3.
    let mut bad = encode_call(Xid(8), 300_000, 2, 0, &Credential::None, &[]);
    bad[11] = 3;
    assert_eq!(
        result(&send(&mut d, &bad).unwrap()),
        Err(RpcError::RpcMismatch { low: 2, high: 2 })
    );
    // An unknown auth flavor (RPCSEC_GSS = 6).
    let mut gss = encode_call(Xid(9), 300_000, 2, 0, &Credential::None, &[]);
    gss[27] = 6;
    assert_eq!(
        result(&send(&mut d, &gss).unwrap()),
        Err(RpcError::Auth(AuthStat::BadCred))
    );
    // A credential claiming 4 GiB.
    let mut huge = encode_call(Xid(10), 300_000, 2, 0, &Credential::None, &[]);
    huge[28..32].copy_from_slice(&[0xff; 4]);
    assert_eq!(
        result(&send(&mut d, &huge).unwrap()),
        Err(RpcError::Auth(AuthStat::BadCred))
    );
    // Truncated headers and replies are dropped silently.
    for len in 0..24 {
        assert_eq!(send(&mut d, &unknown[..len]), None, "len {len}");
    }
    let reply = msg::accept_error_reply(Xid(11), msg::AcceptError::ProcUnavail);
    assert_eq!(send(&mut d, &reply), None);
    // And the server still serves.
    assert_eq!(result(&call(&mut d, 12, 3, 0, &[]).unwrap()), Ok(vec![]));
    assert_eq!(d.stats.garbage_args, 2);
}

#[test]
fn auth_sys_is_parsed_into_a_typed_credential() {
    let mut d = setup();
    let cred = Credential::Sys(AuthSys {
        stamp: 1,
        machine_name: latch_xdr::XdrString::from_text("client").unwrap(),
        uid: 1234,
        gid: 5,
        gids: vec![1, 2, 3],
    });
    let r = send(&mut d, &encode_call(Xid(1), 300_000, 2, 5, &cred, &[])).unwrap();
    assert_eq!(result(&r), Ok(1234u32.to_be_bytes().to_vec()));
    // 17 supplementary groups exceed AUTH_SYS's 16.
    let Credential::Sys(mut sys) = cred else {
        unreachable!()
    };
    sys.gids = (0..17).collect();
    let r = send(
        &mut d,
        &encode_call(Xid(2), 300_000, 2, 5, &Credential::Sys(sys), &[]),
    )
    .unwrap();
    assert_eq!(result(&r), Err(RpcError::Auth(AuthStat::BadCred)));
}

#[test]
fn retransmissions_get_the_original_reply_byte_for_byte() {
    let mut d = setup();
    let first = call(&mut d, 42, 2, 1, &5u32.to_be_bytes()).unwrap();
    // State changes through another request...
    call(&mut d, 43, 2, 1, &7u32.to_be_bytes()).unwrap();
    // ...yet the retransmission of 42 gets the original answer and does not run.
    let again = call(&mut d, 42, 2, 1, &5u32.to_be_bytes()).unwrap();
    assert_eq!(first, again);
    assert_eq!(result(&again), Ok(5u32.to_be_bytes().to_vec()));
    assert_eq!(value(&mut d), 12, "42 ran once, 43 once");
    // The same xid from another port is another request.
    let other: SocketAddr = "127.0.0.1:801".parse().unwrap();
    let bytes = encode_call(
        Xid(42),
        300_000,
        2,
        1,
        &Credential::None,
        &5u32.to_be_bytes(),
    );
    let r = d
        .handle(other, None, Transport::Udp, &bytes, Instant::now(), 0)
        .unwrap();
    assert_eq!(result(&r), Ok(17u32.to_be_bytes().to_vec()));
}

#[test]
fn a_retransmission_while_executing_is_dropped_then_replayed() {
    let mut d = setup();
    assert_eq!(call(&mut d, 50, 2, 3, &[]), None);
    let pending = d.take_deferred().unwrap();
    assert_eq!(
        call(&mut d, 50, 2, 3, &[]),
        None,
        "still executing: dropped"
    );
    assert!(d.take_deferred().is_none(), "and not run again");
    let reply = d.complete(pending, |w| w.put_u32(99));
    assert_eq!(result(&reply), Ok(99u32.to_be_bytes().to_vec()));
    assert_eq!(call(&mut d, 50, 2, 3, &[]), Some(reply));
    // A no-reply procedure runs once however often it is retransmitted.
    assert_eq!(call(&mut d, 51, 2, 4, &[]), None);
    assert_eq!(call(&mut d, 51, 2, 4, &[]), None);
    assert_eq!(d.drc().stats.hits, 2);
    assert_eq!(d.drc().stats.in_progress_drops, 1);
}

proptest! {
    #[test]
    fn garbage_never_panics_and_the_server_keeps_serving(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        prefix_len in 0usize..48,
    ) {
        let mut d = setup();
        send(&mut d, &bytes);
        // Valid header, then random bytes.
        let mut mixed = encode_call(Xid(1), 300_000, 2, 1, &Credential::None, &[]);
        mixed.truncate(prefix_len.min(mixed.len()));
        mixed.extend_from_slice(&bytes);
        if let Some(r) = send(&mut d, &mixed) {
            prop_assert!(msg::parse_reply(&r).is_some());
        }
        prop_assert_eq!(result(&call(&mut d, 9999, 2, 0, &[]).unwrap()), Ok(vec![]));
    }
}
