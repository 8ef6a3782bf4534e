//! Socket construction: one socket per address family (IPv6 sockets are
//! v6-only so that the IPv4 socket owns IPv4), reserved ports for root.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The lowest and highest reserved ports we pick from, as the C library's
/// bindresvport does (below 600 many ports belong to well-known services).
const RESERVED_LOW: u16 = 600;
const RESERVED_HIGH: u16 = 1023;

fn socket(addr: &SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(*addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A UDP socket bound to `addr`, with a receive buffer large enough for
/// bursts of many clients.
pub fn udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = socket(&addr, Type::DGRAM, Protocol::UDP)?;
    s.set_reuse_address(true)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// A listening TCP socket bound to `addr`.
pub fn tcp_listener(addr: SocketAddr, backlog: i32) -> io::Result<tokio::net::TcpListener> {
    let s = socket(&addr, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// The unspecified local address of the family of `peer`.
pub fn any_for(peer: &SocketAddr) -> SocketAddr {
    let ip: IpAddr = if peer.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, 0)
}

/// Whether we may bind reserved ports.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Binds `make(port)` to the first free reserved port, trying from the top.
fn bind_reserved<T>(ip: IpAddr, make: impl Fn(SocketAddr) -> io::Result<T>) -> io::Result<T> {
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no reserved port free");
    for port in (RESERVED_LOW..=RESERVED_HIGH).rev() {
        match make(SocketAddr::new(ip, port)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// A client UDP socket for the family of `peer`: on a reserved port when we
/// are root (servers such as rpcbind and statd trust only those), otherwise
/// an ephemeral one.
pub fn client_udp(peer: &SocketAddr, reserved: bool) -> io::Result<tokio::net::UdpSocket> {
    let any = any_for(peer);
    if reserved && is_root() {
        let make = |a: SocketAddr| {
            let s = socket(&a, Type::DGRAM, Protocol::UDP)?;
            s.bind(&a.into())?;
            Ok(s)
        };
        let s = bind_reserved(any.ip(), make)?;
        return tokio::net::UdpSocket::from_std(s.into());
    }
    udp(any)
}

/// A TCP connection to `peer`, from a reserved port when asked and root.
pub async fn client_tcp(peer: SocketAddr, reserved: bool) -> io::Result<tokio::net::TcpStream> {
    if reserved && is_root() {
        let any = any_for(&peer);
        let make = |a: SocketAddr| {
            let s = tokio::net::TcpSocket::from_std_stream(
                socket(&a, Type::STREAM, Protocol::TCP)?.into(),
            );
            s.bind(a)?;
            Ok(s)
        };
        let s = bind_reserved(any.ip(), make)?;
        let stream = s.connect(peer).await?;
        stream.set_nodelay(true)?;
        return Ok(stream);
    }
    let stream = tokio::net::TcpStream::connect(peer).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Raises the open-file limit to its hard maximum (a server holding
/// thousands of TCP connections needs it); returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit no larger than the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}
