//! RFC 5531 messages: calls, replies and the credentials they carry.

use latch_xdr::{decode_array, Decode, Encode, Reader, Writer, XdrString};
use std::fmt;

pub const RPC_VERSION: u32 = 2;
const CALL: u32 = 0;
const REPLY: u32 = 1;
const MSG_ACCEPTED: u32 = 0;
const MSG_DENIED: u32 = 1;
/// RFC 5531: an opaque_auth body is at most 400 bytes.
pub const MAX_AUTH_BYTES: u32 = 400;

pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;

/// A transaction id. The client's to choose; the server only echoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// An AUTH_SYS credential, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AuthSys {
    pub stamp: u32,
    pub machine_name: XdrString<255>,
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Encode for AuthSys {
    fn encode(&self, w: &mut Writer) {
        self.stamp.encode(w);
        self.machine_name.encode(w);
        self.uid.encode(w);
        self.gid.encode(w);
        latch_xdr::encode_array(w, &self.gids);
    }
}

impl<'a> Decode<'a> for AuthSys {
    fn decode(r: &mut Reader<'a>) -> latch_xdr::Result<Self> {
        Ok(AuthSys {
            stamp: r.u32()?,
            machine_name: XdrString::decode(r)?,
            uid: r.u32()?,
            gid: r.u32()?,
            gids: decode_array(r, 16)?,
        })
    }
}

/// The credentials we accept. Any other flavor is refused with AUTH_ERROR
/// before a procedure runs, so a handler never sees one.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Credential {
    #[default]
    None,
    Sys(AuthSys),
}

impl Encode for Credential {
    fn encode(&self, w: &mut Writer) {
        match self {
            Credential::None => {
                w.put_u32(AUTH_NONE);
                w.put_u32(0);
            }
            Credential::Sys(sys) => {
                w.put_u32(AUTH_SYS);
                w.put_opaque_var(&latch_xdr::to_bytes(sys));
            }
        }
    }
}

/// `auth_stat` of a denied reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AuthStat {
    Ok = 0,
    BadCred = 1,
    RejectedCred = 2,
    BadVerf = 3,
    RejectedVerf = 4,
    TooWeak = 5,
    InvalidResp = 6,
    Failed = 7,
}

impl AuthStat {
    fn from_u32(v: u32) -> Option<Self> {
        use AuthStat::*;
        [
            Ok,
            BadCred,
            RejectedCred,
            BadVerf,
            RejectedVerf,
            TooWeak,
            InvalidResp,
            Failed,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

/// `accept_stat` of an accepted reply that is not SUCCESS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptError {
    ProgUnavail,
    ProgMismatch { low: u32, high: u32 },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
}

/// Every way an RPC reply can say "no".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("program unavailable")]
    ProgUnavail,
    #[error("program version mismatch (server has {low}..={high})")]
    ProgMismatch { low: u32, high: u32 },
    #[error("procedure unavailable")]
    ProcUnavail,
    #[error("server could not decode the arguments")]
    GarbageArgs,
    #[error("server system error")]
    SystemErr,
    #[error("RPC version mismatch (server has {low}..={high})")]
    RpcMismatch { low: u32, high: u32 },
    #[error("authentication error {0:?}")]
    Auth(AuthStat),
}

impl From<AcceptError> for RpcError {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::ProgUnavail => RpcError::ProgUnavail,
            AcceptError::ProgMismatch { low, high } => RpcError::ProgMismatch { low, high },
            AcceptError::ProcUnavail => RpcError::ProcUnavail,
            AcceptError::GarbageArgs => RpcError::GarbageArgs,
            AcceptError::SystemErr => RpcError::SystemErr,
        }
    }
}

/// A decoded CALL header; `args` borrows the undecoded procedure arguments.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub xid: Xid,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub cred: Credential,
    pub args: &'a [u8],
}

/// Why a message could not be taken as a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadCall {
    /// Too short to even carry an xid and message type, or not a CALL: a
    /// server drops these without answering.
    Drop,
    /// Answer with this denial.
    Deny { xid: Xid, reply: Denial },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    RpcMismatch,
    Auth(AuthStat),
}

/// Parses a CALL. Anything it cannot use becomes a [`BadCall`] that says
/// whether to answer.
pub fn parse_call(bytes: &[u8]) -> Result<Call<'_>, BadCall> {
    let mut r = Reader::new(bytes);
    let (Ok(xid), Ok(CALL)) = (r.u32(), r.u32()) else {
        return Err(BadCall::Drop);
    };
    let xid = Xid(xid);
    let deny = |reply| BadCall::Deny { xid, reply };
    match r.u32() {
        Ok(RPC_VERSION) => {}
        Ok(_) => return Err(deny(Denial::RpcMismatch)),
        Err(_) => return Err(BadCall::Drop),
    }
    let (Ok(prog), Ok(vers), Ok(proc_)) = (r.u32(), r.u32(), r.u32()) else {
        return Err(BadCall::Drop);
    };
    let bad_cred = deny(Denial::Auth(AuthStat::BadCred));
    let (Ok(cred_flavor), Ok(cred_body)) = (r.u32(), r.opaque_var(MAX_AUTH_BYTES)) else {
        return Err(bad_cred);
    };
    let (Ok(_verf_flavor), Ok(_verf_body)) = (r.u32(), r.opaque_var(MAX_AUTH_BYTES)) else {
        return Err(deny(Denial::Auth(AuthStat::BadVerf)));
    };
    let cred = match cred_flavor {
        AUTH_NONE => Credential::None,
        AUTH_SYS => {
            let sys = latch_xdr::from_bytes::<AuthSys>(cred_body).map_err(|_| bad_cred.clone())?;
            Credential::Sys(sys)
        }
        _ => return Err(bad_cred),
    };
    Ok(Call {
        xid,
        prog,
        vers,
        proc_,
        cred,
        args: r.rest(),
    })
}

/// Writes a CALL header with an AUTH_NONE verifier; the arguments follow.
pub fn write_call_header(
    w: &mut Writer,
    xid: Xid,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: &Credential,
) {
    w.put_u32(xid.0);
    w.put_u32(CALL);
    w.put_u32(RPC_VERSION);
    w.put_u32(prog);
    w.put_u32(vers);
    w.put_u32(proc_);
    cred.encode(w);
    w.put_u32(AUTH_NONE);
    w.put_u32(0);
}

/// Writes the header of an accepted reply up to, not including, accept_stat.
/// Returns the offset where accept_stat goes, so a handler's failure can
/// truncate back to it.
pub fn write_accepted_prefix(w: &mut Writer, xid: Xid) -> usize {
    w.put_u32(xid.0);
    w.put_u32(REPLY);
    w.put_u32(MSG_ACCEPTED);
    w.put_u32(AUTH_NONE);
    w.put_u32(0);
    w.len()
}

/// Writes accept_stat (and the version range of PROG_MISMATCH).
pub fn write_accept_error(w: &mut Writer, e: AcceptError) {
    match e {
        AcceptError::ProgUnavail => w.put_u32(1),
        AcceptError::ProgMismatch { low, high } => {
            w.put_u32(2);
            w.put_u32(low);
            w.put_u32(high);
        }
        AcceptError::ProcUnavail => w.put_u32(3),
        AcceptError::GarbageArgs => w.put_u32(4),
        AcceptError::SystemErr => w.put_u32(5),
    }
}

/// A complete accepted reply that carries an error.
pub fn accept_error_reply(xid: Xid, e: AcceptError) -> Vec<u8> {
    let mut w = Writer::with_capacity(32);
    write_accepted_prefix(&mut w, xid);
    write_accept_error(&mut w, e);
    w.into_bytes()
}

/// A complete denied reply.
pub fn denied_reply(xid: Xid, d: Denial) -> Vec<u8> {
    let mut w = Writer::with_capacity(24);
    w.put_u32(xid.0);
    w.put_u32(REPLY);
    w.put_u32(MSG_DENIED);
    match d {
        Denial::RpcMismatch => {
            w.put_u32(0);
            w.put_u32(RPC_VERSION);
            w.put_u32(RPC_VERSION);
        }
        Denial::Auth(stat) => {
            w.put_u32(1);
            w.put_u32(stat as u32);
        }
    }
    w.into_bytes()
}

/// A decoded REPLY; on success `result` borrows the procedure's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    pub xid: Xid,
    pub result: Result<&'a [u8], RpcError>,
}

/// Reads just the xid and checks the message is a REPLY, so a client can
/// route it before decoding the rest.
pub fn reply_xid(bytes: &[u8]) -> Option<Xid> {
    let mut r = Reader::new(bytes);
    match (r.u32(), r.u32()) {
        (Ok(xid), Ok(REPLY)) => Some(Xid(xid)),
        _ => None,
    }
}

/// Parses a REPLY. `None` for anything malformed: a client ignores it.
pub fn parse_reply(bytes: &[u8]) -> Option<Reply<'_>> {
    let mut r = Reader::new(bytes);
    let xid = Xid(r.u32().ok()?);
    if r.u32().ok()? != REPLY {
        return None;
    }
    let result = match r.u32().ok()? {
        MSG_ACCEPTED => {
            r.u32().ok()?;
            r.opaque_var(MAX_AUTH_BYTES).ok()?;
            match r.u32().ok()? {
                0 => Ok(r.rest()),
                1 => Err(RpcError::ProgUnavail),
                2 => Err(RpcError::ProgMismatch {
                    low: r.u32().ok()?,
                    high: r.u32().ok()?,
                }),
                3 => Err(RpcError::ProcUnavail),
                4 => Err(RpcError::GarbageArgs),
                5 => Err(RpcError::SystemErr),
                _ => return None,
            }
        }
        MSG_DENIED => match r.u32().ok()? {
            0 => Err(RpcError::RpcMismatch {
                low: r.u32().ok()?,
                high: r.u32().ok()?,
            }),
            1 => Err(RpcError::Auth(AuthStat::from_u32(r.u32().ok()?)?)),
            _ => return None,
        },
        _ => return None,
    };
    Some(Reply { xid, result })
}
