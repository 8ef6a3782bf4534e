//! The embedded rpcbind: portmap v2 and rpcbind v3/v4, served when the host
//! has no rpcbind of its own.
//!
//! Deliberate differences from the C rpcbind: CALLIT/INDIRECT are not served
//! (they forward calls for anyone and are a classic amplification vector),
//! registrations are accepted from loopback only, and the table is bounded.

use super::*;
use crate::dispatch::{decode_args, CallContext, Outcome, Program};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// More registrations than any host needs; SET past it answers false.
pub const MAX_ENTRIES: usize = 1024;

type Key = (u32, u32, Vec<u8>);

#[derive(Debug, Clone)]
struct Entry {
    addr: String,
    owner: XdrString<MAX_STR>,
}

/// Counters for the metrics page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RpcbindStats {
    pub sets: u64,
    pub unsets: u64,
    pub lookups: u64,
    pub refused_remote: u64,
}

/// The registration table and its procedures.
#[derive(Debug, Default)]
pub struct RpcbindServer {
    entries: BTreeMap<Key, Entry>,
    pub stats: RpcbindStats,
}

impl RpcbindServer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registers directly (for the daemon's own programs). False if taken or
    /// the table is full.
    pub fn set(&mut self, r: &Rpcb) -> bool {
        let key = (r.prog, r.vers, r.netid.as_bytes().to_vec());
        if self.entries.contains_key(&key) || self.entries.len() >= MAX_ENTRIES {
            return false;
        }
        let Some(addr) = r.addr.as_str().filter(|a| parse_uaddr(a).is_some()) else {
            return false;
        };
        self.stats.sets += 1;
        let entry = Entry {
            addr: addr.to_string(),
            owner: r.owner.clone(),
        };
        self.entries.insert(key, entry);
        true
    }

    /// Removes `prog`/`vers` on `netid`, or on every netid when it is empty.
    pub fn unset(&mut self, prog: u32, vers: u32, netid: &[u8]) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|(p, v, n), _| !(*p == prog && *v == vers && (netid.is_empty() || n == netid)));
        self.stats.unsets += 1;
        self.entries.len() != before
    }

    /// The address for (prog, vers, netid); like the C rpcbind, when that
    /// version is not registered another version of the program is returned
    /// so that the caller learns of the mismatch from the program itself.
    fn lookup(&mut self, prog: u32, vers: u32, netid: &[u8], exact: bool) -> Option<&Entry> {
        self.stats.lookups += 1;
        let key = (prog, vers, netid.to_vec());
        if self.entries.contains_key(&key) {
            return self.entries.get(&key);
        }
        if exact {
            return None;
        }
        self.entries
            .iter()
            .find(|((p, _, n), _)| *p == prog && n == netid)
            .map(|(_, e)| e)
    }

    fn rpcbs(&self) -> Vec<Rpcb> {
        self.entries
            .iter()
            .map(|((prog, vers, netid), e)| Rpcb {
                prog: *prog,
                vers: *vers,
                netid: XdrString::new(netid.clone()).unwrap_or_default(),
                addr: XdrString::from_text(&e.addr).unwrap_or_default(),
                owner: e.owner.clone(),
            })
            .collect()
    }

    fn call_v2(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        match ctx.proc_ {
            PROC_NULL => Outcome::Reply,
            PROC_SET | PROC_UNSET => {
                let m: Mapping = match decode_args(args) {
                    Ok(m) => m,
                    Err(o) => return o,
                };
                let ok = ctx.is_local() && self.set_unset_v2(ctx.proc_ == PROC_SET, &m);
                self.count_refusal(ctx);
                res.put_bool(ok);
                Outcome::Reply
            }
            PROC_GETPORT => {
                let m: Mapping = match decode_args(args) {
                    Ok(m) => m,
                    Err(o) => return o,
                };
                let netid = if m.prot == IPPROTO_TCP { "tcp" } else { "udp" };
                let port = (m.prot == IPPROTO_TCP || m.prot == IPPROTO_UDP)
                    .then(|| self.lookup(m.prog, m.vers, netid.as_bytes(), false))
                    .flatten()
                    .and_then(|e| parse_uaddr(&e.addr))
                    .map_or(0, |a| u32::from(a.port()));
                res.put_u32(port);
                Outcome::Reply
            }
            PROC_DUMP => {
                let list: Vec<Mapping> = self
                    .entries
                    .iter()
                    .filter_map(|((prog, vers, netid), e)| {
                        let n = Netid::parse(netid).filter(|n| !n.is_v6())?;
                        let port = u32::from(parse_uaddr(&e.addr)?.port());
                        Some(Mapping {
                            prog: *prog,
                            vers: *vers,
                            prot: n.ipproto(),
                            port,
                        })
                    })
                    .collect();
                latch_xdr::encode_list(res, &list);
                Outcome::Reply
            }
            _ => Outcome::ProcUnavail,
        }
    }

    fn set_unset_v2(&mut self, set: bool, m: &Mapping) -> bool {
        let netid = match m.prot {
            IPPROTO_TCP => Netid::Tcp,
            IPPROTO_UDP => Netid::Udp,
            _ => return false,
        };
        if !set {
            // Portmap v2 UNSET drops the program version on every IPv4 protocol.
            let a = self.unset(m.prog, m.vers, b"udp");
            let b = self.unset(m.prog, m.vers, b"tcp");
            return a || b;
        }
        let Ok(port) = u16::try_from(m.port) else {
            return false;
        };
        let addr = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
        self.set(&Rpcb::new(m.prog, m.vers, netid, addr, "unknown"))
    }

    fn count_refusal(&mut self, ctx: &CallContext<'_>) {
        if !ctx.is_local() {
            self.stats.refused_remote += 1;
        }
    }

    fn call_v34(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        match ctx.proc_ {
            PROC_NULL => Outcome::Reply,
            PROC_SET | PROC_UNSET => {
                let r: Rpcb = match decode_args(args) {
                    Ok(r) => r,
                    Err(o) => return o,
                };
                self.count_refusal(ctx);
                let ok = ctx.is_local()
                    && if ctx.proc_ == PROC_SET {
                        self.set(&r)
                    } else {
                        self.unset(r.prog, r.vers, r.netid.as_bytes())
                    };
                res.put_bool(ok);
                Outcome::Reply
            }
            PROC_GETADDR | PROC_GETVERSADDR if ctx.proc_ == PROC_GETADDR || ctx.vers == 4 => {
                let r: Rpcb = match decode_args(args) {
                    Ok(r) => r,
                    Err(o) => return o,
                };
                let exact = ctx.proc_ == PROC_GETVERSADDR;
                let uaddr = self
                    .lookup(r.prog, r.vers, r.netid.as_bytes(), exact)
                    .and_then(|e| parse_uaddr(&e.addr))
                    .map(|a| to_uaddr(merge_addr(a, ctx)))
                    .unwrap_or_default();
                res.put_opaque_var(uaddr.as_bytes());
                Outcome::Reply
            }
            PROC_DUMP => {
                latch_xdr::encode_list(res, &self.rpcbs());
                Outcome::Reply
            }
            PROC_GETTIME => {
                res.put_u32(u32::try_from(ctx.wall_secs).unwrap_or(u32::MAX));
                Outcome::Reply
            }
            _ => Outcome::ProcUnavail,
        }
    }
}

/// A service registered on a wildcard address is reported at the address the
/// caller reached us on (as the C rpcbind does), so that the answer is an
/// address the caller can use.
fn merge_addr(registered: SocketAddr, ctx: &CallContext<'_>) -> SocketAddr {
    if !registered.ip().is_unspecified() {
        return registered;
    }
    let same_family = |a: &SocketAddr| a.is_ipv4() == registered.is_ipv4();
    if let Some(local) = ctx
        .local
        .filter(|l| same_family(l) && !l.ip().is_unspecified())
    {
        return SocketAddr::new(local.ip(), registered.port());
    }
    if crate::dispatch::is_loopback(ctx.peer) {
        let ip: IpAddr = if registered.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        return SocketAddr::new(ip, registered.port());
    }
    registered
}

impl Program for RpcbindServer {
    fn number(&self) -> u32 {
        PROGRAM
    }

    fn versions(&self) -> (u32, u32) {
        (2, 4)
    }

    fn call(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        if ctx.vers == 2 {
            self.call_v2(ctx, args, res)
        } else {
            self.call_v34(ctx, args, res)
        }
    }
}
