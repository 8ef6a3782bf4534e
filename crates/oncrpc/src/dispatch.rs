//! Program dispatch: from the bytes of a call to the bytes of its reply.
//!
//! Sans-IO: [`Dispatcher::handle`] takes a datagram or record and the time and
//! returns what to send back, if anything. Unknown programs, versions and
//! procedures, bad credentials and undecodable arguments are answered here, so
//! a [`Program`] only sees well-formed calls for versions it serves.

use crate::drc::{Drc, DrcKey, Lookup};
use crate::msg::{self, AcceptError, BadCall, Credential, Xid};
use latch_xdr::{Decode, Reader, Writer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

/// How a call reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What a procedure knows about its call.
#[derive(Debug)]
pub struct CallContext<'a> {
    pub peer: SocketAddr,
    /// The local address the call arrived on, when the transport knows it.
    pub local: Option<SocketAddr>,
    pub transport: Transport,
    pub xid: Xid,
    pub vers: u32,
    pub proc_: u32,
    pub cred: &'a Credential,
    pub now: Instant,
    /// Seconds since the Unix epoch, for the few procedures that report the
    /// wall clock (rpcbind GETTIME). Supplied by the I/O shell.
    pub wall_secs: u64,
}

impl CallContext<'_> {
    /// Whether the caller is on this host (loopback address).
    pub fn is_local(&self) -> bool {
        is_loopback(self.peer)
    }
}

/// Loopback, including IPv4-mapped loopback on a dual-stack socket.
pub fn is_loopback(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// What a procedure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Results were written: send the reply.
    Reply,
    /// No reply on the wire (the `_MSG` procedures answer by a call back).
    NoReply,
    /// The reply comes later through [`Dispatcher::complete`] (for example
    /// after a write reaches stable storage).
    Deferred,
    /// The procedure number is not served in this version.
    ProcUnavail,
    /// The arguments did not decode.
    GarbageArgs,
    /// We could not carry it out (a local failure, not the caller's fault).
    SystemErr,
}

/// One RPC program. Implementations decode their own arguments (see
/// [`decode_args`]) and write results into `res`.
pub trait Program: Send {
    fn number(&self) -> u32;
    /// The inclusive range of versions served.
    fn versions(&self) -> (u32, u32);
    /// Whether retransmissions of this procedure must be answered from the
    /// duplicate request cache rather than run again.
    fn is_cached(&self, _vers: u32, _proc: u32) -> bool {
        false
    }
    fn call(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome;
}

/// Decodes a procedure's arguments, requiring that they use all the bytes.
pub fn decode_args<'a, T: Decode<'a>>(args: &'a [u8]) -> Result<T, Outcome> {
    let mut r = Reader::new(args);
    let v = T::decode(&mut r).map_err(|_| Outcome::GarbageArgs)?;
    r.finish().map_err(|_| Outcome::GarbageArgs)?;
    Ok(v)
}

/// A reply owed for a [`Outcome::Deferred`] call.
#[derive(Debug, Clone)]
pub struct PendingReply {
    xid: Xid,
    key: Option<DrcKey>,
}

/// Counters for the metrics page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DispatchStats {
    pub calls: u64,
    pub dropped: u64,
    pub denied: u64,
    pub prog_unavail: u64,
    pub prog_mismatch: u64,
    pub proc_unavail: u64,
    pub garbage_args: u64,
    pub system_err: u64,
}

/// Routes calls to programs.
pub struct Dispatcher {
    programs: BTreeMap<u32, Box<dyn Program>>,
    drc: Drc,
    /// The call being deferred, filled by `handle` when a program defers.
    last_deferred: Option<PendingReply>,
    pub stats: DispatchStats,
}

impl Dispatcher {
    pub fn new(drc: Drc) -> Self {
        Dispatcher {
            programs: BTreeMap::new(),
            drc,
            last_deferred: None,
            stats: DispatchStats::default(),
        }
    }

    pub fn register(&mut self, program: Box<dyn Program>) {
        self.programs.insert(program.number(), program);
    }

    pub fn program_mut(&mut self, number: u32) -> Option<&mut (dyn Program + 'static)> {
        self.programs.get_mut(&number).map(|b| &mut **b)
    }

    pub fn drc(&self) -> &Drc {
        &self.drc
    }

    /// Handles one call; returns the reply to send, if any.
    pub fn handle(
        &mut self,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        transport: Transport,
        bytes: &[u8],
        now: Instant,
        wall_secs: u64,
    ) -> Option<Vec<u8>> {
        self.handle_parsed(
            msg::parse_call(bytes),
            peer,
            local,
            transport,
            now,
            wall_secs,
        )
    }

    /// [`Dispatcher::handle`] of a message already parsed: the I/O shell
    /// parses (which needs no state) before it takes the dispatcher's lock,
    /// so that the lock is held for less.
    pub fn handle_parsed(
        &mut self,
        call: Result<msg::Call<'_>, BadCall>,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        transport: Transport,
        now: Instant,
        wall_secs: u64,
    ) -> Option<Vec<u8>> {
        self.stats.calls += 1;
        let call = match call {
            Ok(c) => c,
            Err(BadCall::Drop) => {
                self.stats.dropped += 1;
                return None;
            }
            Err(BadCall::Deny { xid, reply }) => {
                self.stats.denied += 1;
                return Some(msg::denied_reply(xid, reply));
            }
        };
        let Some(program) = self.programs.get_mut(&call.prog) else {
            self.stats.prog_unavail += 1;
            return Some(msg::accept_error_reply(call.xid, AcceptError::ProgUnavail));
        };
        let (low, high) = program.versions();
        if !(low..=high).contains(&call.vers) {
            self.stats.prog_mismatch += 1;
            let e = AcceptError::ProgMismatch { low, high };
            return Some(msg::accept_error_reply(call.xid, e));
        }
        let key = program
            .is_cached(call.vers, call.proc_)
            .then(|| DrcKey::new(peer, call.xid, call.prog, call.vers, call.proc_, call.args));
        if let Some(k) = key {
            match self.drc.begin(k) {
                Lookup::New => {}
                Lookup::InProgress => return None,
                Lookup::Replay(r) => return r,
            }
        }
        let ctx = CallContext {
            peer,
            local,
            transport,
            xid: call.xid,
            vers: call.vers,
            proc_: call.proc_,
            cred: &call.cred,
            now,
            wall_secs,
        };
        let mut w = Writer::with_capacity(128);
        let stat_at = msg::write_accepted_prefix(&mut w, call.xid);
        w.put_u32(0);
        let outcome = program.call(&ctx, call.args, &mut w);
        let reply = match outcome {
            Outcome::Reply => Some(w.into_bytes()),
            Outcome::NoReply => None,
            Outcome::Deferred => {
                self.last_deferred = Some(PendingReply { xid: call.xid, key });
                return None;
            }
            Outcome::ProcUnavail | Outcome::GarbageArgs | Outcome::SystemErr => {
                let e = self.count_error(outcome);
                w.truncate(stat_at);
                msg::write_accept_error(&mut w, e);
                Some(w.into_bytes())
            }
        };
        if let Some(k) = key {
            if outcome == Outcome::SystemErr {
                // A local failure: let a retransmission try again.
                self.drc.abandon(&k);
            } else {
                self.drc.finish(k, reply.as_deref());
            }
        }
        reply
    }

    fn count_error(&mut self, outcome: Outcome) -> AcceptError {
        match outcome {
            Outcome::ProcUnavail => {
                self.stats.proc_unavail += 1;
                AcceptError::ProcUnavail
            }
            Outcome::GarbageArgs => {
                self.stats.garbage_args += 1;
                AcceptError::GarbageArgs
            }
            _ => {
                self.stats.system_err += 1;
                AcceptError::SystemErr
            }
        }
    }

    /// Takes the handle of the call the last `handle` deferred. A program that
    /// returns [`Outcome::Deferred`] has its driver call this right after.
    pub fn take_deferred(&mut self) -> Option<PendingReply> {
        self.last_deferred.take()
    }

    /// Completes a deferred call: `write` puts the results. Returns the reply.
    pub fn complete(&mut self, pending: PendingReply, write: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        msg::write_accepted_prefix(&mut w, pending.xid);
        w.put_u32(0);
        write(&mut w);
        let reply = w.into_bytes();
        if let Some(k) = pending.key {
            self.drc.finish(k, Some(&reply));
        }
        reply
    }
}
