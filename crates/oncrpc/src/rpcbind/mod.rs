//! Port mapper v2 and rpcbind v3/v4 (RFC 1833): wire types, universal
//! addresses, and the procedures both our client and our embedded server use.

mod server;

pub use server::{RpcbindServer, RpcbindStats};

use latch_xdr::{Decode, Encode, Reader, Writer, XdrString};
use std::net::{IpAddr, SocketAddr};

pub const PROGRAM: u32 = 100_000;
pub const PORT: u16 = 111;

pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

/// Procedures shared by all versions.
pub const PROC_NULL: u32 = 0;
pub const PROC_SET: u32 = 1;
pub const PROC_UNSET: u32 = 2;
/// v2 GETPORT and v3/v4 GETADDR share number 3.
pub const PROC_GETPORT: u32 = 3;
pub const PROC_GETADDR: u32 = 3;
pub const PROC_DUMP: u32 = 4;
pub const PROC_GETTIME: u32 = 6;
pub const PROC_GETVERSADDR: u32 = 9;

/// rpcbind strings are unbounded in RFC 1833; we bound them.
pub const MAX_STR: u32 = 255;

/// Portmap v2 `mapping`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub prog: u32,
    pub vers: u32,
    pub prot: u32,
    pub port: u32,
}

impl Encode for Mapping {
    fn encode(&self, w: &mut Writer) {
        w.put_u32(self.prog);
        w.put_u32(self.vers);
        w.put_u32(self.prot);
        w.put_u32(self.port);
    }
}

impl<'a> Decode<'a> for Mapping {
    fn decode(r: &mut Reader<'a>) -> latch_xdr::Result<Self> {
        Ok(Mapping {
            prog: r.u32()?,
            vers: r.u32()?,
            prot: r.u32()?,
            port: r.u32()?,
        })
    }
}

/// rpcbind v3/v4 `rpcb`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rpcb {
    pub prog: u32,
    pub vers: u32,
    pub netid: XdrString<MAX_STR>,
    pub addr: XdrString<MAX_STR>,
    pub owner: XdrString<MAX_STR>,
}

impl Rpcb {
    /// A registration of `prog`/`vers` at `addr` over `netid`.
    pub fn new(prog: u32, vers: u32, netid: Netid, addr: SocketAddr, owner: &str) -> Self {
        Rpcb {
            prog,
            vers,
            netid: str_or_empty(netid.as_str()),
            addr: str_or_empty(&to_uaddr(addr)),
            owner: str_or_empty(owner),
        }
    }
}

/// Our own strings are short; an over-long one (a logic error) becomes
/// empty rather than a panic.
fn str_or_empty(s: &str) -> XdrString<MAX_STR> {
    XdrString::from_text(s).unwrap_or_default()
}

impl Encode for Rpcb {
    fn encode(&self, w: &mut Writer) {
        w.put_u32(self.prog);
        w.put_u32(self.vers);
        self.netid.encode(w);
        self.addr.encode(w);
        self.owner.encode(w);
    }
}

impl<'a> Decode<'a> for Rpcb {
    fn decode(r: &mut Reader<'a>) -> latch_xdr::Result<Self> {
        Ok(Rpcb {
            prog: r.u32()?,
            vers: r.u32()?,
            netid: XdrString::decode(r)?,
            addr: XdrString::decode(r)?,
            owner: XdrString::decode(r)?,
        })
    }
}

/// The transports we know, by their rpcbind network id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Netid {
    Udp,
    Tcp,
    Udp6,
    Tcp6,
}

impl Netid {
    pub fn as_str(self) -> &'static str {
        match self {
            Netid::Udp => "udp",
            Netid::Tcp => "tcp",
            Netid::Udp6 => "udp6",
            Netid::Tcp6 => "tcp6",
        }
    }

    pub fn parse(s: &[u8]) -> Option<Self> {
        match s {
            b"udp" => Some(Netid::Udp),
            b"tcp" => Some(Netid::Tcp),
            b"udp6" => Some(Netid::Udp6),
            b"tcp6" => Some(Netid::Tcp6),
            _ => None,
        }
    }

    pub fn for_addr(tcp: bool, addr: &SocketAddr) -> Self {
        match (tcp, addr.is_ipv4()) {
            (false, true) => Netid::Udp,
            (true, true) => Netid::Tcp,
            (false, false) => Netid::Udp6,
            (true, false) => Netid::Tcp6,
        }
    }

    pub fn is_tcp(self) -> bool {
        matches!(self, Netid::Tcp | Netid::Tcp6)
    }

    pub fn is_v6(self) -> bool {
        matches!(self, Netid::Udp6 | Netid::Tcp6)
    }

    /// The portmap v2 protocol number (v2 only knows IPv4).
    pub fn ipproto(self) -> u32 {
        if self.is_tcp() {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        }
    }
}

/// Formats a universal address: `h1.h2.h3.h4.p1.p2` or `<ipv6>.p1.p2`.
pub fn to_uaddr(addr: SocketAddr) -> String {
    let p = addr.port();
    format!("{}.{}.{}", addr.ip(), p >> 8, p & 0xff)
}

/// Parses a universal address. `None` for anything malformed.
pub fn parse_uaddr(s: &str) -> Option<SocketAddr> {
    let (rest, lo) = s.rsplit_once('.')?;
    let (host, hi) = rest.rsplit_once('.')?;
    let hi: u16 = hi.parse().ok().filter(|h| *h <= 255)?;
    let lo: u16 = lo.parse().ok().filter(|l| *l <= 255)?;
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, hi << 8 | lo))
}

/// Encodes the arguments of a v3/v4 SET/UNSET/GETADDR.
pub fn rpcb_args(rpcb: &Rpcb) -> Vec<u8> {
    latch_xdr::to_bytes(rpcb)
}

/// Decodes a SET/UNSET result.
pub fn decode_bool(res: &[u8]) -> Option<bool> {
    latch_xdr::from_bytes(res).ok()
}

/// Decodes a GETADDR result: an empty string means "not registered".
pub fn decode_getaddr(res: &[u8]) -> Option<Option<SocketAddr>> {
    let s: XdrString<MAX_STR> = latch_xdr::from_bytes(res).ok()?;
    if s.as_bytes().is_empty() {
        return Some(None);
    }
    s.as_str().and_then(parse_uaddr).map(Some)
}

/// Decodes a v2 DUMP result.
pub fn decode_pmaplist(res: &[u8]) -> Option<Vec<Mapping>> {
    let mut r = Reader::new(res);
    let list = latch_xdr::decode_list(&mut r, server::MAX_ENTRIES).ok()?;
    r.finish().ok()?;
    Some(list)
}

/// Decodes a v3/v4 DUMP result.
pub fn decode_rpcblist(res: &[u8]) -> Option<Vec<Rpcb>> {
    let mut r = Reader::new(res);
    let list = latch_xdr::decode_list(&mut r, server::MAX_ENTRIES).ok()?;
    r.finish().ok()?;
    Some(list)
}

#[cfg(test)]
mod tests;
