//! Test hosts: each test gets its own network namespace (its own loopback,
//! its own port 111) and, where a port mapper runs, its own /run, so tests
//! run in parallel and never touch the machine's real services.
//!
//! These tests need root, iproute2, util-linux and (for some) Debian's
//! rpcbind package; `scripts/test` installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const LATCHD: &str = env!("CARGO_BIN_EXE_latchd");

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lt{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    /// Starts `argv` in this namespace with a private, empty /run (where
    /// port mappers put their AF_LOCAL socket). The returned pid is the
    /// program's own: the wrappers exec into it.
    pub fn spawn_private_run(&self, argv: &[&str], log: &Path) -> Daemon {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.name,
            "unshare",
            "-m",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", "mount -t tmpfs tmpfs /run && exec \"$@\"", "sh"])
        .args(argv);
        Daemon::spawn(cmd, log)
    }

    /// Starts `argv` inside the namespaces (network and mount) of `host`.
    pub fn spawn_beside(&self, host: &Daemon, argv: &[&str], log: &Path) -> Daemon {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &host.pid().to_string(), "-n", "-m", "--"])
            .args(argv);
        Daemon::spawn(cmd, log)
    }

    /// Runs a command to completion inside the namespaces of `host`.
    pub fn run_beside(&self, host: &Daemon, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &host.pid().to_string(), "-n", "-m", "--"])
            .args(argv)
            .output()
            .expect("nsenter runs")
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// creates stay in the namespace whichever thread uses them later.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).expect("netns file");
                // SAFETY: a valid namespace fd; setns changes only this thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread")
        })
    }

    pub fn udp(&self) -> UdpSocket {
        self.enter(|| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
    }

    pub fn udp6(&self) -> UdpSocket {
        self.enter(|| {
            let s = UdpSocket::bind("[::1]:0").expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
    }

    pub fn tcp(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.enter(|| {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(s)
        })
    }
}

impl Netns {
    /// Gives processes started in this namespace their own /etc/hosts
    /// (`ip netns exec` bind-mounts /etc/netns/NAME/hosts over it).
    pub fn hosts(&self, entries: &[(&str, &str)]) {
        let dir = PathBuf::from("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (ip, name) in entries {
            text.push_str(&format!("{ip} {name}\n"));
        }
        std::fs::write(dir.join("hosts"), text).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// A process we started, ended by its pid on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    fn spawn(mut cmd: Command, log: &Path) -> Daemon {
        let out = File::create(log).expect("log file");
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("RUST_LOG", "debug")
            .spawn()
            .expect("spawn");
        Daemon {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Encodes a CALL with AUTH_NONE.
pub fn call_bytes(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [xid, 0, 2, prog, vers, proc_, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(args);
    v
}

/// The accept_stat of a reply (None for a denied or malformed reply).
pub fn accept_stat(reply: &[u8]) -> Option<u32> {
    let w = |i: usize| {
        reply
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    (w(1)? == 1 && w(2)? == 0).then_some(())?;
    w(5)
}

/// One UDP call; the reply or None on timeout.
pub fn udp_call(s: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    s.send_to(msg, to).unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) if from == to && buf[..4] == msg[..4] => return Some(buf[..n].to_vec()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// One call over a TCP stream; the reply record or None if the stream ended.
pub fn tcp_call(s: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
    let mut rec = ((msg.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(msg);
    s.write_all(&rec).ok()?;
    let mut h = [0u8; 4];
    s.read_exact(&mut h).ok()?;
    let len = (u32::from_be_bytes(h) & 0x7fff_ffff) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// Polls NULL of `prog`/`vers` at `addr` over UDP until it answers.
pub fn wait_ready(ns: &Netns, addr: SocketAddr, prog: u32, vers: u32, daemon: &mut Daemon) {
    let s = if addr.is_ipv4() { ns.udp() } else { ns.udp6() };
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut xid = 1;
    loop {
        xid += 1;
        if udp_call(&s, addr, &call_bytes(xid, prog, vers, 0, &[])).is_some() {
            return;
        }
        assert!(daemon.is_running(), "exited early:\n{}", daemon.log_text());
        assert!(
            Instant::now() < deadline,
            "not ready:\n{}",
            daemon.log_text()
        );
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Connects two namespaces with a veth pair and gives each end an address
/// (a /24), so that they are two hosts on one link.
pub fn link(a: &Netns, b: &Netns, ip_a: &str, ip_b: &str) {
    run_ok(Command::new("ip").args([
        "link", "add", "veth0", "netns", &a.name, "type", "veth", "peer", "name", "veth0", "netns",
        &b.name,
    ]));
    for (ns, ip) in [(a, ip_a), (b, ip_b)] {
        run_ok(Command::new("ip").args([
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "veth0",
        ]));
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "veth0", "up"]));
    }
}

/// A UDP socket in `ns` on a reserved port of `ip` (servers such as
/// rpcbind and statd trust local calls only from those).
pub fn reserved_udp(ns: &Netns, ip: &str) -> UdpSocket {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    ns.enter(|| {
        for port in (600..1024).rev() {
            if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, port)) {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                return s;
            }
        }
        panic!("no reserved port free");
    })
}

/// A call with retries (UDP may lose the first datagram while ARP resolves).
pub fn udp_call_retry(s: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    for _ in 0..10 {
        if let Some(r) = udp_call(s, to, msg) {
            return r;
        }
    }
    panic!("no answer from {to}");
}

/// The results of a successful reply.
pub fn results(reply: &[u8]) -> &[u8] {
    assert_eq!(accept_stat(reply), Some(0), "reply {reply:?}");
    &reply[24..]
}

/// Registers `prog`/`vers` over UDP at `port` with the rpcbind of `ns`.
pub fn rpcb_set(ns: &Netns, prog: u32, vers: u32, port: u16) {
    let s = reserved_udp(ns, "127.0.0.1");
    let mut args = vec![];
    for w in [prog, vers, 17, u32::from(port)] {
        args.extend_from_slice(&w.to_be_bytes());
    }
    let r = udp_call_retry(
        &s,
        "127.0.0.1:111".parse().unwrap(),
        &call_bytes(0x5e7, 100_000, 2, 1, &args),
    );
    assert_eq!(results(&r), &[0, 0, 0, 1], "rpcbind SET refused");
}

/// The UDP port of `prog`/`vers` according to the rpcbind of `ns`.
pub fn rpcb_getport(ns: &Netns, prog: u32, vers: u32) -> u16 {
    let s = ns.udp();
    let mut args = vec![];
    for w in [prog, vers, 17, 0] {
        args.extend_from_slice(&w.to_be_bytes());
    }
    let r = udp_call_retry(
        &s,
        "127.0.0.1:111".parse().unwrap(),
        &call_bytes(0x9e7, 100_000, 2, 3, &args),
    );
    u16::try_from(u32::from_be_bytes(results(&r).try_into().unwrap())).unwrap()
}

/// A program that records the calls it gets and answers each with success
/// (void): stands in for a lock manager's callback endpoint.
pub struct Listener {
    pub port: u16,
    pub calls: std::sync::mpsc::Receiver<(u32, u32, Vec<u8>)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Listener {
    pub fn start(ns: &Netns) -> Listener {
        let s = ns.udp();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = s.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(call) = latch_oncrpc::msg::parse_call(&buf[..n]) else {
                    continue;
                };
                let _ = tx.send((call.vers, call.proc_, call.args.to_vec()));
                let mut w = latch_xdr::Writer::new();
                latch_oncrpc::msg::write_accepted_prefix(&mut w, call.xid);
                w.put_u32(0);
                let _ = s.send_to(w.as_bytes(), from);
            }
        });
        Listener {
            port,
            calls: rx,
            stop,
        }
    }

    /// The next call, waiting up to `secs`.
    pub fn next(&self, secs: u64) -> Option<(u32, u32, Vec<u8>)> {
        self.calls.recv_timeout(Duration::from_secs(secs)).ok()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Polls `rpcinfo -p` beside `host` until its listing contains `needle`
/// (at most 5 s); returns the last listing and whether it did.
pub fn wait_listed(ns: &Netns, host: &Daemon, needle: &str) -> (String, bool) {
    let mut listing = String::new();
    for _ in 0..100 {
        let out = ns.run_beside(host, &["rpcinfo", "-p"]);
        listing = String::from_utf8_lossy(&out.stdout).into_owned();
        if listing.contains(needle) {
            return (listing, true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (listing, false)
}

/// Runs nfs-common's `sm-notify` beside `host` (a "rebooted" host announcing
/// itself as `name`, state in `dir`); `extra` adds flags such as `-n`.
pub fn sm_notify(ns: &Netns, host: &Daemon, dir: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["sm-notify", "-d", "-f", "-m", "1"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-P", dir.to_str().unwrap(), "-v", name]);
    ns.run_beside(host, &args)
}
