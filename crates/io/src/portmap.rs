//! Asking a host's port mapper where a program listens.

use crate::client::{CallError, RpcClient};
use latch_oncrpc::rpcbind::{self, Mapping, Netid, Rpcb};
use std::net::{IpAddr, SocketAddr};

/// The port of `prog`/`vers` over UDP or TCP on `host`, asking the port
/// mapper at `host:rpcbind_port` through `client` (a UDP client of the
/// host's family). `Ok(None)`: not registered.
pub async fn getport(
    client: &RpcClient,
    host: IpAddr,
    rpcbind_port: u16,
    prog: u32,
    vers: u32,
    tcp: bool,
) -> Result<Option<u16>, CallError> {
    let pm = SocketAddr::new(host, rpcbind_port);
    if host.is_ipv4() {
        // Portmap v2 is what every port mapper speaks.
        let m = Mapping {
            prog,
            vers,
            prot: if tcp {
                rpcbind::IPPROTO_TCP
            } else {
                rpcbind::IPPROTO_UDP
            },
            port: 0,
        };
        let res = client
            .call(
                Some(pm),
                rpcbind::PROGRAM,
                2,
                rpcbind::PROC_GETPORT,
                &latch_xdr::to_bytes(&m),
            )
            .await?;
        let port: u32 = latch_xdr::from_bytes(&res).map_err(|_| CallError::Malformed)?;
        return Ok(u16::try_from(port).ok().filter(|p| *p != 0));
    }
    let netid = if tcp { Netid::Tcp6 } else { Netid::Udp6 };
    let mut r = Rpcb::new(prog, vers, netid, pm, "");
    r.addr = Default::default();
    let res = client
        .call(
            Some(pm),
            rpcbind::PROGRAM,
            3,
            rpcbind::PROC_GETADDR,
            &rpcbind::rpcb_args(&r),
        )
        .await?;
    let addr = rpcbind::decode_getaddr(&res).ok_or(CallError::Malformed)?;
    Ok(addr.map(|a| a.port()).filter(|p| *p != 0))
}
