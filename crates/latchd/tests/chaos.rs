//! Chaos on real processes: one server latchd and three client latchd, each
//! in a network namespace of its own, joined by a hub namespace in which
//! this test relays every Ethernet frame between the hosts' links (a
//! learning switch on packet sockets) and delays, duplicates and so
//! reorders IPv4 frames at random; nftables rules (`numgen random`) in each
//! host drop a share of the UDP datagrams and TCP segments it receives (one
//! client talks TCP to the server, the others UDP). Workers run real
//! `latch lock SERVER chaos --wait -- CMD` processes on the client hosts,
//! CMD appending START and END records (CLOCK_MONOTONIC, all on this one
//! machine) to a shared log only while holding the exclusive lock; between
//! rounds the test crashes a client host (its latchd and its `latch`
//! processes, SIGKILL), a client latchd alone, or the server latchd, and
//! restarts it on the same state directory. A checker then proves from the
//! log that no two critical sections overlapped and that every section a
//! worker saw complete (exit 0) is there exactly once, and nothing else.
//!
//! `LATCH_CHAOS_ROUNDS` (default 6) sets the number of faults,
//! `LATCH_CHAOS_SEED` replays the choices of the relay and of the fault
//! schedule (the nftables drops and the processes' timing are not
//! replayable), `LATCH_CHAOS_LOSS` the drop percentage (default 10).
//! Needs root, iproute2, util-linux and nftables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use latch_nlm::proto::PROGRAM;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use support::*;

const SERVER_IP: &str = "10.210.0.1";
const CLIENTS: usize = 3;
const WORKERS_PER_CLIENT: usize = 2;
/// The environment variable that turns this test binary into a critical
/// section (see `chaos_section`).
const SECTION_ENV: &str = "LATCH_CHAOS_SECTION";

fn client_ip(i: usize) -> String {
    format!("10.210.0.{}", i + 2)
}

fn latch_bin() -> PathBuf {
    let p = Path::new(LATCHD).with_file_name("latch");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test does)",
        p.display()
    );
    p
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for the test and the sections.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

/// splitmix64: a small seeded generator, so that a seed replays a schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in lo..hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Not a test: the critical section that `latch lock` runs, this binary
/// started again with `SECTION_ENV` = "LOG WORKER SEQ HOLD_US". Without it
/// (an ordinary test run) it does nothing.
#[test]
fn chaos_section() {
    let Ok(spec) = std::env::var(SECTION_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split(' ').collect();
    let (log, worker, seq, hold) = (f[0], f[1], f[2], f[3].parse::<u64>().unwrap());
    let mut out = OpenOptions::new().append(true).open(log).unwrap();
    // One write(2) per record on an O_APPEND file: records never interleave.
    out.write_all(format!("S {} {worker} {seq}\n", mono_ns()).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_micros(hold));
    out.write_all(format!("E {} {worker} {seq}\n", mono_ns()).as_bytes())
        .unwrap();
    // Before libtest reports anything.
    std::process::exit(0);
}

// ---------------------------------------------------------------------------
// The hub: a learning switch on packet sockets, with delay and duplication.

/// A veth pair from port `port` of the hub to `veth0` of `host`, which gets
/// `ip`/24.
fn hub_port(hub: &Netns, host: &Netns, port: &str, ip: &str) {
    run_ok(Command::new("ip").args([
        "link", "add", port, "netns", &hub.name, "type", "veth", "peer", "name", "veth0", "netns",
        &host.name,
    ]));
    run_ok(Command::new("ip").args([
        "-n",
        &host.name,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "veth0",
    ]));
    run_ok(Command::new("ip").args(["-n", &host.name, "link", "set", "veth0", "up"]));
    run_ok(Command::new("ip").args(["-n", &hub.name, "link", "set", port, "up"]));
}

/// A raw packet socket bound to interface `ifname` of the calling thread's
/// namespace.
fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no interface {ifname}");
    // SAFETY: zeroed sockaddr_ll is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = i32::try_from(index).unwrap();
    // SAFETY: binding a socket we own to a valid sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sll).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: setting SO_RCVTIMEO from a valid timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap(),
        )
    };
    assert_eq!(rc, 0);
    fd
}

/// The Internet checksum of `parts`, concatenated.
fn inet_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Completes the UDP or TCP checksum of an unfragmented IPv4 frame: veth
/// hands frames over with the checksum left to "hardware", which a frame
/// sent again from a packet socket no longer has.
fn fix_checksum(frame: &mut [u8]) {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if frag != 0 || total > ip.len() || ihl < 20 || total < ihl {
        return;
    }
    let proto = ip[9];
    let at = match proto {
        17 if total >= ihl + 8 => 6,
        6 if total >= ihl + 20 => 16,
        _ => return,
    };
    let (src, dst) = (ip[12..16].to_vec(), ip[16..20].to_vec());
    let l4 = &mut frame[14 + ihl..14 + total];
    if proto == 17 && l4[6..8] == [0, 0] {
        return; // no checksum
    }
    l4[at] = 0;
    l4[at + 1] = 0;
    let len = u16::try_from(l4.len()).unwrap().to_be_bytes();
    let mut c = inet_sum(&[&src, &dst, &[0, proto], &len, l4]);
    if c == 0 && proto == 17 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[derive(Default)]
struct RelayStats {
    frames: AtomicU64,
    delayed: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

/// A frame to send at `due`; `seq` is its arrival order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    due: u64,
    seq: u64,
    from: usize,
    frame: Vec<u8>,
}

struct Relay {
    stop: Arc<AtomicBool>,
    stats: Arc<RelayStats>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Faults {
    delay_pct: u64,
    max_delay_ms: u64,
    dup_pct: u64,
    /// Every frame the hub sends, as it leaves (not knowing which the
    /// receiver's nftables then drops), for a post-mortem with tshark.
    pcap: Option<PathBuf>,
}

/// A pcap file (microseconds, Ethernet) of what the hub sends.
struct Pcap(std::io::BufWriter<File>);

impl Pcap {
    fn create(path: &Path) -> Pcap {
        let mut w = std::io::BufWriter::new(File::create(path).unwrap());
        for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
            // magic; version 2.4 (major, minor: u16 each, little-endian); zone;
            // sigfigs; snaplen; link type Ethernet
            w.write_all(&v.to_le_bytes()).unwrap();
        }
        Pcap(w)
    }

    fn frame(&mut self, frame: &[u8]) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let len = u32::try_from(frame.len()).unwrap();
        for v in [
            u32::try_from(t.as_secs()).unwrap(),
            t.subsec_micros(),
            len,
            len,
        ] {
            self.0.write_all(&v.to_le_bytes()).unwrap();
        }
        self.0.write_all(frame).unwrap();
    }
}

impl Relay {
    fn start(hub: &Netns, ports: &[String], seed: u64, faults: Faults) -> Relay {
        let socks: Arc<Vec<OwnedFd>> = Arc::new(
            ports
                .iter()
                .map(|p| hub.enter(|| packet_socket(p)))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let queue = Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));
        let macs: Arc<Mutex<HashMap<[u8; 6], usize>>> = Arc::default();
        let arrivals = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(faults);
        let mut threads = vec![];
        for port in 0..socks.len() {
            let (socks, stop, stats, queue, macs, arrivals, faults) = (
                socks.clone(),
                stop.clone(),
                stats.clone(),
                queue.clone(),
                macs.clone(),
                arrivals.clone(),
                faults.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (port as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: zeroed sockaddr_ll is a valid value.
                    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut flen = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap();
                    // SAFETY: buffers of the sizes given.
                    let n = unsafe {
                        libc::recvfrom(
                            socks[port].as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            std::ptr::addr_of_mut!(from).cast(),
                            &mut flen,
                        )
                    };
                    let Ok(n) = usize::try_from(n) else { continue };
                    // Our own sends out of this port come back as outgoing.
                    if from.sll_pkttype == libc::PACKET_OUTGOING || n < 14 {
                        continue;
                    }
                    let mut frame = buf[..n].to_vec();
                    let src: [u8; 6] = frame[6..12].try_into().unwrap();
                    macs.lock().unwrap().insert(src, port);
                    fix_checksum(&mut frame);
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    let now = mono_ns();
                    let ipv4 = frame[12..14] == [0x08, 0x00];
                    let mut due = now;
                    if ipv4 && rng.percent(faults.delay_pct) {
                        due += rng.range(1, faults.max_delay_ms + 1) * 1_000_000;
                        stats.delayed.fetch_add(1, Ordering::Relaxed);
                    }
                    let seq = arrivals.fetch_add(1, Ordering::Relaxed);
                    let (lock, cv) = &*queue;
                    let mut q = lock.lock().unwrap();
                    if ipv4 && rng.percent(faults.dup_pct) {
                        stats.duplicated.fetch_add(1, Ordering::Relaxed);
                        let later = due + rng.range(0, faults.max_delay_ms + 1) * 1_000_000;
                        q.push(std::cmp::Reverse(Pending {
                            due: later,
                            seq,
                            from: port,
                            frame: frame.clone(),
                        }));
                    }
                    q.push(std::cmp::Reverse(Pending {
                        due,
                        seq,
                        from: port,
                        frame,
                    }));
                    cv.notify_one();
                }
            }));
        }
        // The sender: frames in the order they fall due.
        let (socks2, stop2, stats2) = (socks.clone(), stop.clone(), stats.clone());
        let mut pcap = faults.pcap.as_deref().map(Pcap::create);
        threads.push(std::thread::spawn(move || {
            let (lock, cv) = &*queue;
            let mut sent_max: Option<u64> = None;
            let mut q = lock.lock().unwrap();
            while !stop2.load(Ordering::Relaxed) {
                let now = mono_ns();
                let wait = match q.peek() {
                    Some(std::cmp::Reverse(p)) if p.due <= now => None,
                    Some(std::cmp::Reverse(p)) => Some(Duration::from_nanos(p.due - now)),
                    None => Some(Duration::from_millis(100)),
                };
                if let Some(w) = wait {
                    q = cv.wait_timeout(q, w).unwrap().0;
                    continue;
                }
                let std::cmp::Reverse(p) = q.pop().unwrap();
                drop(q);
                if sent_max.is_some_and(|m| p.seq < m) {
                    stats2.reordered.fetch_add(1, Ordering::Relaxed);
                }
                sent_max = sent_max.max(Some(p.seq));
                if let Some(pcap) = pcap.as_mut() {
                    pcap.frame(&p.frame);
                }
                let dst: [u8; 6] = p.frame[0..6].try_into().unwrap();
                let to = macs.lock().unwrap().get(&dst).copied();
                for (i, s) in socks2.iter().enumerate() {
                    if i == p.from || to.is_some_and(|t| t != i) {
                        continue;
                    }
                    // SAFETY: sending a buffer of its own length on a bound socket.
                    unsafe { libc::send(s.as_raw_fd(), p.frame.as_ptr().cast(), p.frame.len(), 0) };
                }
                q = lock.lock().unwrap();
            }
        }));
        Relay {
            stop,
            stats,
            threads,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Loss: nftables in each host.

/// Drops `pct`% of the UDP datagrams and TCP segments `ns` receives on its
/// link, counting them and every one it receives there.
fn nft_loss(ns: &Netns, pct: u64) {
    let rules = format!(
        "table inet chaos {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  iifname \"veth0\" meta l4proto {{ udp, tcp }} counter\n  iifname \"veth0\" meta l4proto {{ udp, tcp }} numgen random mod 100 < {pct} counter drop\n }}\n}}\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (apt-get install nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft rules refused");
}

/// (packets received, dropped) by the rules of `nft_loss`.
fn nft_counts(ns: &Netns) -> (u64, u64) {
    let out = run_ok(Command::new("ip").args([
        "netns", "exec", &ns.name, "nft", "-j", "list", "table", "inet", "chaos",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut counts = vec![];
    for item in v["nftables"].as_array().unwrap() {
        if let Some(exprs) = item["rule"]["expr"].as_array() {
            for e in exprs {
                if let Some(p) = e["counter"]["packets"].as_u64() {
                    counts.push(p);
                }
            }
        }
    }
    assert_eq!(counts.len(), 2, "{out}");
    (counts[0], counts[1])
}

// ---------------------------------------------------------------------------
// Hosts and their latchd.

struct Host {
    tag: String,
    ns: Netns,
    ip: String,
    daemon: Option<Daemon>,
    starts: u32,
}

struct World {
    dir: PathBuf,
    server: Host,
    clients: Vec<Host>,
}

impl World {
    fn start(dir: &Path, h: &mut Host) {
        let cfg = dir.join(format!("{}.toml", h.tag));
        // The last client talks to the server over TCP, the others UDP;
        // the first asks with the _MSG procedures.
        let transport = if h.tag == format!("client{}", CLIENTS - 1) {
            "tcp"
        } else {
            "udp"
        };
        let procedures = if h.tag == "client0" { "msg" } else { "sync" };
        std::fs::write(
            &cfg,
            format!(
                "[nsm]\nnames = [\"{ip}\"]\nnotify_timeout_ms = 60000\n[client]\nname = \"{ip}\"\ntransport = \"{transport}\"\nprocedures = \"{procedures}\"\nresend_blocked_ms = 2000\n[nlm]\ngrace_ms = 6000\n",
                ip = h.ip
            ),
        )
        .unwrap();
        h.starts += 1;
        let mut daemon = h.ns.spawn_private_run(
            &[
                LATCHD,
                "--config",
                cfg.to_str().unwrap(),
                "--state-dir",
                dir.join(format!("{}-state", h.tag)).to_str().unwrap(),
                "--local-socket",
                dir.join(format!("{}.sock", h.tag)).to_str().unwrap(),
                "--admin-socket",
                dir.join(format!("{}-admin.sock", h.tag)).to_str().unwrap(),
            ],
            &dir.join(format!("{}-{}.log", h.tag, h.starts)),
        );
        wait_ready(
            &h.ns,
            "127.0.0.1:4045".parse().unwrap(),
            PROGRAM,
            4,
            &mut daemon,
        );
        h.daemon = Some(daemon);
    }

    /// SIGKILL, by pid, and reaped.
    fn kill(h: &mut Host) {
        let mut d = h.daemon.take().unwrap();
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    }

    fn sock(&self, client: usize) -> String {
        self.dir
            .join(format!("{}.sock", self.clients[client].tag))
            .to_str()
            .unwrap()
            .to_string()
    }
}

// ---------------------------------------------------------------------------
// Workers.

/// How one `latch lock` run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// latch's exit code.
    Exit(i32),
    /// Killed by the test (a crash of its host); reaped at this time.
    Killed(u64),
}

#[derive(Debug, Clone)]
struct Run {
    worker: usize,
    seq: u64,
    end: End,
    /// When the test started and reaped it (CLOCK_MONOTONIC ns).
    started: u64,
    ended: u64,
}

/// `latch lock`'s exit code when the lock was lost while CMD ran (README):
/// CMD was stopped, and the section had no guarantee from some point on.
const LOST: i32 = 5;
/// The exit codes a `latch lock --wait` run may end with here: CMD's 0,
/// timeout, lost, latchd not running, grace or no room, server trouble.
const EXPECTED_CODES: [i32; 6] = [0, 4, LOST, 10, 14, 20];

/// The `latch` a worker is running, if any; `killed` once the test has
/// sent it SIGKILL.
#[derive(Default)]
struct Slot {
    child: Option<Child>,
    killed: bool,
}

struct Shared {
    stop: AtomicBool,
    /// Per client host: workers start nothing new while set.
    paused: Vec<AtomicBool>,
    slots: Vec<Mutex<Slot>>,
    runs: Mutex<Vec<Run>>,
}

struct WorkerCfg {
    worker: usize,
    client: usize,
    sock: String,
    log: String,
    stderr: PathBuf,
    seed: u64,
}

fn worker(sh: &Shared, c: WorkerCfg) {
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(c.seed);
    let mut seq = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        {
            let mut slot = sh.slots[c.worker].lock().unwrap();
            if sh.paused[c.client].load(Ordering::SeqCst) {
                drop(slot);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            seq += 1;
            // Mostly short sections; some long ones, which faults hit.
            let hold = if rng.percent(15) {
                rng.range(200_000, 1_000_000)
            } else {
                rng.range(1_000, 20_000)
            };
            let err = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&c.stderr)
                .unwrap();
            let child = Command::new(latch_bin())
                .args([
                    "lock",
                    SERVER_IP,
                    "chaos",
                    "--wait=30s",
                    "--socket",
                    &c.sock,
                    "--",
                ])
                .arg(&exe)
                .args(["chaos_section", "--exact", "--test-threads=1", "-q"])
                .env(SECTION_ENV, format!("{} {} {seq} {hold}", c.log, c.worker))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .process_group(0)
                .spawn()
                .unwrap();
            slot.child = Some(child);
            slot.killed = false;
        }
        let started = mono_ns();
        let end = loop {
            {
                let mut slot = sh.slots[c.worker].lock().unwrap();
                let st = slot.child.as_mut().unwrap().try_wait().unwrap();
                if let Some(st) = st {
                    slot.child = None;
                    break if slot.killed {
                        End::Killed(mono_ns())
                    } else {
                        End::Exit(st.code().unwrap_or_else(|| {
                            panic!("latch died of signal {:?} we did not send", st.signal())
                        }))
                    };
                }
            }
            std::thread::sleep(Duration::from_millis(3));
        };
        sh.runs.lock().unwrap().push(Run {
            worker: c.worker,
            seq,
            end,
            started,
            ended: mono_ns(),
        });
        if end != End::Exit(0) {
            std::thread::sleep(Duration::from_millis(rng.range(50, 300)));
        }
    }
}

/// Pauses client `client`'s workers and, if `kill`, SIGKILLs the process
/// group of each `latch` they are running (which holds its CMD).
fn pause(sh: &Shared, client: usize, kill: bool) -> usize {
    sh.paused[client].store(true, Ordering::SeqCst);
    let mut killed = 0;
    for w in 0..WORKERS_PER_CLIENT {
        let mut slot = sh.slots[client * WORKERS_PER_CLIENT + w].lock().unwrap();
        if !kill {
            continue;
        }
        let slot = &mut *slot;
        if let Some(child) = slot.child.as_mut() {
            // Not reaped (we hold the slot), so its pid and group are ours.
            if child.try_wait().unwrap().is_none() {
                // SAFETY: signalling the process group of a child we spawned.
                unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
                slot.killed = true;
                killed += 1;
            }
        }
    }
    killed
}

/// The worker inside its critical section (the log's last record is a
/// START), waiting up to `d` for one.
fn open_section(log: &Path, d: Duration) -> Option<usize> {
    let deadline = Instant::now() + d;
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        let last = text.lines().last().unwrap_or("");
        if let Some(rest) = last.strip_prefix("S ") {
            return rest.split(' ').nth(1).map(|w| w.parse().unwrap());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until no worker of `client` runs a `latch`.
fn drained(sh: &Shared, client: usize, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let busy = (0..WORKERS_PER_CLIENT).any(|w| {
            sh.slots[client * WORKERS_PER_CLIENT + w]
                .lock()
                .unwrap()
                .child
                .is_some()
        });
        if !busy {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

// ---------------------------------------------------------------------------
// The checker.

#[derive(Debug, Default, Clone, Copy)]
struct Section {
    start: Option<u64>,
    end: Option<u64>,
}

/// The log's records by (worker, seq); an error for a malformed or
/// repeated record.
fn parse_log(text: &str) -> Result<BTreeMap<(usize, u64), Section>, String> {
    let mut m: BTreeMap<(usize, u64), Section> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let bad = || format!("malformed record {line:?}");
        if f.len() != 4 {
            return Err(bad());
        }
        let ts: u64 = f[1].parse().map_err(|_| bad())?;
        let key = (
            f[2].parse().map_err(|_| bad())?,
            f[3].parse().map_err(|_| bad())?,
        );
        let s = m.entry(key).or_default();
        let field = match f[0] {
            "S" => &mut s.start,
            "E" => &mut s.end,
            _ => return Err(bad()),
        };
        if field.replace(ts).is_some() {
            return Err(format!("record written twice: {line:?}"));
        }
    }
    Ok(m)
}

#[derive(Debug, PartialEq)]
struct Verdict {
    /// Sections held from start to end (exit 0).
    complete: usize,
    /// Runs that lost their lock (exit 5), each during a fault that could
    /// take it; their sections are outside the overlap proof.
    lost: usize,
}

/// Every section accounted for, and no two held ones overlapping. A run
/// that exited 0 wrote both records; a refused one (4, 10, 14, 20) none; a
/// killed one held until it was reaped; a lost one (5) is excused only if
/// its host's latchd or the server was killed while it ran.
fn check(log: &str, runs: &[Run], faults: &[(u64, Fault)]) -> Result<Verdict, String> {
    let mut sections = parse_log(log)?;
    let mut intervals = vec![];
    let (mut complete, mut lost) = (0, 0);
    for r in runs {
        let s = sections.remove(&(r.worker, r.seq));
        let who = format!("worker {} run {}", r.worker, r.seq);
        if s.is_some_and(|s| s.start.is_none()) {
            return Err(format!("{who}: END without START: {s:?}"));
        }
        match (r.end, s) {
            (End::Exit(c), _) if !EXPECTED_CODES.contains(&c) => {
                return Err(format!("{who}: latch exited {c}, unexpected here: {s:?}"))
            }
            (
                End::Exit(0),
                Some(Section {
                    start: Some(a),
                    end: Some(b),
                }),
            ) => {
                complete += 1;
                intervals.push((a, b, who));
            }
            (End::Exit(0), s) => {
                return Err(format!("{who}: latch exited 0 but its section is {s:?}"))
            }
            (End::Exit(LOST), _) => {
                let host = r.worker / WORKERS_PER_CLIENT;
                let excuse = faults.iter().find(|(at, f)| {
                    (r.started..=r.ended).contains(at)
                        && match f {
                            Fault::Server => true,
                            Fault::ClientHost(c) | Fault::ClientLatchd(c) => *c == host,
                        }
                });
                if excuse.is_none() {
                    return Err(format!(
                        "{who}: latch says the lock was lost (exit {LOST}), but neither the server \
                         nor its host's latchd was killed while it ran ({}..{})",
                        r.started, r.ended
                    ));
                }
                lost += 1;
            }
            // The lock was never taken: CMD never ran.
            (End::Exit(_), None) => {}
            (End::Exit(code), Some(s)) => {
                return Err(format!("{who}: latch exited {code} but its CMD ran: {s:?}"))
            }
            (End::Killed(_), None) => {}
            (End::Killed(at), Some(s)) => {
                // Killed inside its section: it held until it was dead.
                intervals.push((s.start.unwrap_or(at), s.end.unwrap_or(at), who));
            }
        }
    }
    if let Some((k, s)) = sections.iter().next() {
        return Err(format!("section {k:?} of no run we know: {s:?}"));
    }
    intervals.sort();
    for pair in intervals.windows(2) {
        let ((a0, b0, w0), (a1, b1, w1)) = (&pair[0], &pair[1]);
        if a1 <= b0 {
            return Err(format!(
                "overlap: {w0} held {a0}..{b0} and {w1} held {a1}..{b1} (CLOCK_MONOTONIC ns)"
            ));
        }
    }
    Ok(Verdict { complete, lost })
}

#[test]
fn checker_finds_overlaps_and_losses() {
    let run = |worker, seq, end| Run {
        worker,
        seq,
        end,
        started: 0,
        ended: 100,
    };
    let v = |complete, lost| Ok(Verdict { complete, lost });
    let ok = "S 10 0 1\nE 20 0 1\nS 30 1 1\nE 40 1 1\n";
    let runs = [run(0, 1, End::Exit(0)), run(1, 1, End::Exit(0))];
    assert_eq!(check(ok, &runs, &[]), v(2, 0));
    // Overlapping.
    let bad = "S 10 0 1\nS 15 1 1\nE 20 0 1\nE 40 1 1\n";
    assert!(check(bad, &runs, &[]).unwrap_err().contains("overlap"));
    // A completed section missing, or written twice.
    assert!(check("S 10 0 1\nE 20 0 1\n", &runs, &[]).is_err());
    assert!(check(&format!("{ok}E 41 1 1\n"), &runs, &[]).is_err());
    // A killed holder holds until it is dead.
    let runs = [run(0, 1, End::Killed(35)), run(1, 1, End::Exit(0))];
    assert!(check("S 10 0 1\nS 30 1 1\nE 40 1 1\n", &runs, &[]).is_err());
    assert_eq!(check("S 10 0 1\nS 36 1 1\nE 40 1 1\n", &runs, &[]), v(1, 0));
    // A refused run whose CMD ran anyway, or a section of no run.
    let runs = [run(0, 1, End::Exit(4))];
    assert!(check("S 10 0 1\nE 20 0 1\n", &runs, &[]).is_err());
    assert!(check(
        "S 10 0 1\nE 20 0 1\nS 30 1 1\nE 40 1 1\n",
        &[run(0, 1, End::Exit(0))],
        &[]
    )
    .is_err());
    // A lost lock is excused by a kill of the server or of its own host's
    // latchd while it ran, and by nothing else.
    let runs = [run(0, 1, End::Exit(LOST)), run(2, 1, End::Exit(0))];
    let log = "S 10 0 1\nS 15 2 1\nE 20 2 1\n";
    assert_eq!(check(log, &runs, &[(12, Fault::Server)]), v(1, 1));
    assert_eq!(check(log, &runs, &[(12, Fault::ClientLatchd(0))]), v(1, 1));
    assert!(check(log, &runs, &[(12, Fault::ClientLatchd(1))]).is_err());
    assert!(check(log, &runs, &[(200, Fault::Server)]).is_err());
    assert!(check(log, &runs, &[]).is_err());
    // An exit code that has no business here.
    assert!(check("", &[run(0, 1, End::Exit(1))], &[]).is_err());
}

// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A client host crashes: its latchd and its `latch` processes.
    ClientHost(usize),
    /// A client's latchd alone.
    ClientLatchd(usize),
    Server,
}

#[test]
fn chaos_on_real_processes() {
    if std::env::var(SECTION_ENV).is_ok() {
        return;
    }
    let t0 = Instant::now();
    let rounds = env_u64("LATCH_CHAOS_ROUNDS", 6);
    let seed = env_u64(
        "LATCH_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_000,
    );
    let loss = env_u64("LATCH_CHAOS_LOSS", 10);
    println!("chaos: LATCH_CHAOS_SEED={seed} LATCH_CHAOS_ROUNDS={rounds} LATCH_CHAOS_LOSS={loss}");
    // The sections log is in CLOCK_MONOTONIC, latchd's logs and the pcap in
    // real time: the two clocks side by side.
    println!(
        "chaos: CLOCK_MONOTONIC {} ns = {:?} since the epoch",
        mono_ns(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    );
    let mut rng = Rng(seed);
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();

    let hub = Netns::new();
    let mut world = World {
        dir: dir.clone(),
        server: Host {
            tag: "server".into(),
            ns: Netns::new(),
            ip: SERVER_IP.into(),
            daemon: None,
            starts: 0,
        },
        clients: (0..CLIENTS)
            .map(|i| Host {
                tag: format!("client{i}"),
                ns: Netns::new(),
                ip: client_ip(i),
                daemon: None,
                starts: 0,
            })
            .collect(),
    };
    let mut ports = vec![];
    for (i, h) in std::iter::once(&world.server)
        .chain(&world.clients)
        .enumerate()
    {
        let port = format!("p{i}");
        hub_port(&hub, &h.ns, &port, &h.ip);
        nft_loss(&h.ns, loss);
        ports.push(port);
    }
    let relay = Relay::start(
        &hub,
        &ports,
        seed,
        Faults {
            delay_pct: 20,
            max_delay_ms: 30,
            dup_pct: 5,
            pcap: Some(dir.join("hub.pcap")),
        },
    );
    World::start(&dir, &mut world.server);
    for h in &mut world.clients {
        World::start(&dir, h);
    }

    let log = dir.join("sections.log");
    File::create(&log).unwrap();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        paused: (0..CLIENTS).map(|_| AtomicBool::new(false)).collect(),
        slots: (0..CLIENTS * WORKERS_PER_CLIENT)
            .map(|_| Mutex::default())
            .collect(),
        runs: Mutex::default(),
    });
    let workers: Vec<_> = (0..CLIENTS * WORKERS_PER_CLIENT)
        .map(|w| {
            let cfg = WorkerCfg {
                worker: w,
                client: w / WORKERS_PER_CLIENT,
                sock: world.sock(w / WORKERS_PER_CLIENT),
                log: log.to_str().unwrap().to_string(),
                stderr: dir.join(format!("worker{w}.err")),
                seed: seed.wrapping_add(1000 + w as u64),
            };
            let sh = shared.clone();
            std::thread::spawn(move || worker(&sh, cfg))
        })
        .collect();

    let mut faults: Vec<(u64, Fault)> = vec![];
    let mut in_section = 0;
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.range(1_500, 4_000)));
        // Most faults strike while a section is open, at its holder's host.
        let holder = if rng.percent(75) {
            open_section(&log, Duration::from_secs(5))
        } else {
            None
        };
        in_section += usize::from(holder.is_some());
        let c = holder.map_or_else(
            || rng.range(0, CLIENTS as u64) as usize,
            |w| w / WORKERS_PER_CLIENT,
        );
        let fault = match rng.range(0, 3) {
            0 => Fault::ClientHost(c),
            1 => Fault::ClientLatchd(c),
            _ => Fault::Server,
        };
        let down = Duration::from_millis(rng.range(100, 1_500));
        let at = t0.elapsed();
        faults.push((mono_ns(), fault));
        match fault {
            Fault::ClientHost(c) => {
                World::kill(&mut world.clients[c]);
                pause(&shared, c, true);
                assert!(drained(&shared, c, 10), "killed latch did not end");
                std::thread::sleep(down);
                World::start(&dir, &mut world.clients[c]);
                shared.paused[c].store(false, Ordering::SeqCst);
            }
            Fault::ClientLatchd(c) => {
                // Its `latch lock` runs stay: holders stop CMD and exit 5.
                World::kill(&mut world.clients[c]);
                std::thread::sleep(down);
                World::start(&dir, &mut world.clients[c]);
            }
            Fault::Server => {
                World::kill(&mut world.server);
                std::thread::sleep(down);
                World::start(&dir, &mut world.server);
            }
        }
        println!(
            "chaos: round {round} at {:.1}s: {fault:?}, down {} ms{}",
            at.as_secs_f64(),
            down.as_millis(),
            holder.map_or(String::new(), |w| format!(", worker {w} in its section"))
        );
    }
    // Some time without faults, then every worker finishes its run: a
    // `latch` waits 30 s at most, plus 5 s to stop CMD.
    std::thread::sleep(Duration::from_secs(3));
    shared.stop.store(true, Ordering::Relaxed);
    let mut hung = 0;
    for c in 0..CLIENTS {
        if !drained(&shared, c, 60) {
            hung += pause(&shared, c, true);
        }
    }
    for w in workers {
        w.join().unwrap();
    }

    // Every client host can still take the lock: nothing was left held.
    // (Under heavy loss a call may go unanswered: 20, tried again.)
    let mut stuck = vec![];
    for c in 0..CLIENTS {
        for attempt in 1..=5 {
            let st = Command::new(latch_bin())
                .args([
                    "lock",
                    SERVER_IP,
                    "chaos",
                    "--wait=60s",
                    "--socket",
                    &world.sock(c),
                    "--",
                    "true",
                ])
                .status()
                .unwrap();
            if st.success() {
                break;
            }
            if !matches!(st.code(), Some(14 | 20)) || attempt == 5 {
                stuck.push((c, st));
                break;
            }
        }
    }

    let runs = shared.runs.lock().unwrap().clone();
    let text = std::fs::read_to_string(&log).unwrap();
    let verdict = check(&text, &runs, &faults);
    let mut per_host = [0usize; CLIENTS];
    for r in runs.iter().filter(|r| r.end == End::Exit(0)) {
        per_host[r.worker / WORKERS_PER_CLIENT] += 1;
    }
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for r in &runs {
        let k = match r.end {
            End::Exit(c) => format!("exit {c}"),
            End::Killed(_) => "killed".into(),
        };
        *codes.entry(k).or_default() += 1;
    }
    let (mut udp, mut dropped) = (0, 0);
    for h in std::iter::once(&world.server).chain(&world.clients) {
        let (u, d) = nft_counts(&h.ns);
        udp += u;
        dropped += d;
    }
    let count = |f: fn(&Fault) -> bool| faults.iter().filter(|x| f(&x.1)).count();
    let st = &relay.stats;
    println!(
        "chaos summary: seed {seed}, {rounds} rounds in {:.1}s; faults: {} client host crashes, {} client latchd kills, {} server kills ({in_section} inside a section); \
         {} latch runs {codes:?}, {} sections completed (per client host {per_host:?}), {} lost their lock in a fault (exit 5, outside the overlap proof); UDP/TCP packets received {udp}, dropped {dropped} by nftables; \
         relay: {} frames, {} delayed, {} duplicated, {} reordered; \
         {hung} latch still running a minute after the end, killed",
        t0.elapsed().as_secs_f64(),
        count(|f| matches!(f, Fault::ClientHost(_))),
        count(|f| matches!(f, Fault::ClientLatchd(_))),
        count(|f| matches!(f, Fault::Server)),
        runs.len(),
        verdict.as_ref().map_or(0, |v| v.complete),
        verdict.as_ref().map_or(0, |v| v.lost),
        st.frames.load(Ordering::Relaxed),
        st.delayed.load(Ordering::Relaxed),
        st.duplicated.load(Ordering::Relaxed),
        st.reordered.load(Ordering::Relaxed),
    );
    drop(relay);
    let failed = verdict.is_err() || !stuck.is_empty() || hung > 0;
    if failed {
        // Keep the logs for the post-mortem.
        let kept = tmp.keep();
        panic!(
            "chaos (seed {seed}) failed: {verdict:?}; hosts that could not lock at the end: {stuck:?}; \
             latch runs that never ended: {hung}; \
             logs (latchd per start, workers' stderr, sections.log, hub.pcap: \
             tshark -r hub.pcap -d udp.port==4045,rpc -d tcp.port==4045,rpc) in {}",
            kept.display()
        );
    }
    assert!(
        verdict.unwrap().complete > 0,
        "no section completed at all: {}",
        dir.display()
    );
}

/// Regression (found by the chaos): when the local latchd died while
/// `latch lock -- CMD` ran CMD, CMD kept running and `latch` exited with
/// CMD's code, 0, as if the section had been held throughout; once latchd
/// was back, its SM_NOTIFY made the server release the lock and another
/// host's holder ran beside CMD. Now `latch` stops CMD and exits 5.
#[test]
fn a_latch_lock_whose_latchd_dies_keeps_running_cmd() {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let hub = Netns::new();
    let mut server = Host {
        tag: "server".into(),
        ns: Netns::new(),
        ip: SERVER_IP.into(),
        daemon: None,
        starts: 0,
    };
    let mut clients: Vec<Host> = (0..2)
        .map(|i| Host {
            tag: format!("client{i}"),
            ns: Netns::new(),
            ip: client_ip(i),
            daemon: None,
            starts: 0,
        })
        .collect();
    for (i, h) in std::iter::once(&server).chain(&clients).enumerate() {
        hub_port(&hub, &h.ns, &format!("p{i}"), &h.ip);
    }
    let _relay = Relay::start(
        &hub,
        &["p0".into(), "p1".into(), "p2".into()],
        1,
        Faults {
            delay_pct: 0,
            max_delay_ms: 0,
            dup_pct: 0,
            pcap: None,
        },
    );
    World::start(&dir, &mut server);
    for h in &mut clients {
        World::start(&dir, h);
    }
    let sock = |i: usize| {
        dir.join(format!("client{i}.sock"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let log = dir.join("order.log");
    let logs = log.to_str().unwrap().to_string();
    let mut a = Command::new(latch_bin())
        .args([
            "lock",
            SERVER_IP,
            "gap",
            "--socket",
            &sock(0),
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "echo A-start >> {logs}; sleep 4; echo A-end >> {logs}"
        ))
        .process_group(0)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("A-start")
    {
        assert!(t.elapsed() < Duration::from_secs(10), "A never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A's latchd crashes and comes back while A's CMD runs.
    World::kill(&mut clients[0]);
    World::start(&dir, &mut clients[0]);
    let b = Command::new(latch_bin())
        .args([
            "lock",
            SERVER_IP,
            "gap",
            "--wait=20s",
            "--socket",
            &sock(1),
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("echo B-start >> {logs}"))
        .status()
        .unwrap();
    // (Bounded: A's latch used to hang too, the other bug.)
    let a = wait_bounded(&mut a, Duration::from_secs(15));
    let order = std::fs::read_to_string(&log).unwrap();
    println!("order: {order:?}; A exited {a:?}, B exited {b:?}");
    assert!(
        order.lines().collect::<Vec<_>>() != ["A-start", "B-start", "A-end"],
        "B held the lock inside A's section (A exited {a:?}; None = still running 15 s later)"
    );
    assert_eq!(
        a.and_then(|a| a.code()),
        Some(LOST),
        "A's latch did not report the lost lock: {order:?}"
    );
    assert!(b.success(), "B never got the lock: {order:?}");
}

/// The exit status of `c` within `d`, or None after ending its process
/// group.
fn wait_bounded(c: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if let Some(st) = c.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling the process group of a child we spawned, not reaped.
    unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
    let _ = c.wait();
    None
}

/// Regression (found by the chaos): once its latchd had died, a `latch
/// lock -- CMD` never exited after CMD ended: the unlock it then sent
/// registered for a reply after the connection's reader had already
/// dropped every pending reply (`latch::client::Client::send`), so it
/// waited forever. Here with the host's own engine (`local`): no network.
#[test]
fn a_latch_lock_whose_latchd_dies_hangs_after_cmd() {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let mut host = Host {
        tag: "host".into(),
        ns: Netns::new(),
        ip: "127.0.0.1".into(),
        daemon: None,
        starts: 0,
    };
    World::start(&dir, &mut host);
    let sock = dir.join("host.sock");
    let mark = dir.join("started");
    let mut a = Command::new(latch_bin())
        .args([
            "lock",
            "local",
            "h",
            "--socket",
            sock.to_str().unwrap(),
            "--",
        ])
        .args(["sh", "-c", &format!("touch {}; sleep 1", mark.display())])
        .process_group(0)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !mark.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "CMD never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    World::kill(&mut host);
    // CMD ends about a second later; latch should follow it at once.
    let st = wait_bounded(&mut a, Duration::from_secs(10));
    assert!(
        st.is_some(),
        "latch lock was still running 9 s after its CMD ended (its latchd died under it)"
    );
    assert_eq!(st.and_then(|s| s.code()), Some(LOST), "the lock was lost");
}

/// Regression (found by the chaos, seed 683780171, 15 rounds, 25% loss):
/// the server kept retrying a GRANTED callback after the client it
/// is for has rebooted (SM_NOTIFY) and the server has freed that client's
/// locks and granted the lock to someone else. In the chaos a client host
/// crashed just after the server's GRANTED for its owner svid 2, whose
/// answer was lost; after the restart, the server's retry reached the new
/// latchd, whose own (new) owner svid 2 was waiting for the same lock and
/// took the stale GRANTED as its grant: two holders. Here the client's
/// lock manager is a socket that never answers, and the reboot a plain
/// SM_NOTIFY. The GRANTED's RPC call retransmitted on its own for 5 s,
/// after the core had withdrawn the grant; now each GRANTED is one
/// datagram and the core alone resends it.
#[test]
fn no_granted_is_retried_after_the_client_rebooted() {
    use latch_nlm::proto::*;
    const S_IP: &str = "10.211.0.1";
    const C_IP: &str = "10.211.0.2";
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let mut server = Host {
        tag: "server".into(),
        ns: Netns::new(),
        ip: S_IP.into(),
        daemon: None,
        starts: 0,
    };
    let client = Netns::new();
    link(&server.ns, &client, S_IP, C_IP);
    World::start(&dir, &mut server);
    // The client host's port mapper, and its "lock manager": a socket that
    // records every call and answers none.
    let rpcbind = client.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.join("rpcbind.log"));
    assert!(wait_listed(&client, &rpcbind, "100000").1, "rpcbind");
    let lockd = client.enter(|| UdpSocket::bind(format!("{C_IP}:0")).unwrap());
    rpcb_set(&client, PROGRAM, 4, lockd.local_addr().unwrap().port());
    let (tx, calls) = std::sync::mpsc::channel();
    lockd
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, _)) = lockd.recv_from(&mut buf) {
                if let Ok(c) = latch_oncrpc::msg::parse_call(&buf[..n]) {
                    let _ = tx.send((Instant::now(), c.proc_));
                }
            }
        }
    });
    let granted_after = |t: Instant, secs: u64| -> Option<Instant> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match calls.recv_timeout(left) {
                Ok((at, GRANTED)) if at > t => return Some(at),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    let s = client.enter(|| UdpSocket::bind(format!("{C_IP}:0")).unwrap());
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let to: std::net::SocketAddr = format!("{S_IP}:4045").parse().unwrap();
    let mut xid = 0x7000;
    let mut call = |proc_: u32, args: Vec<u8>| {
        xid += 1;
        let r = udp_call_retry(&s, to, &call_bytes(xid, PROGRAM, 4, proc_, &args));
        decode::<Res>(results(&r), 4).unwrap().stat
    };
    let lock = |host: &str, svid: u32| Lock {
        caller_name: Name::from_text(host).unwrap(),
        fh: Netobj::from_slice(b"g").unwrap(),
        oh: Netobj::from_slice(format!("{host}-{svid}").as_bytes()).unwrap(),
        svid,
        offset: 0,
        len: 0,
    };
    let args = |l: Lock, block: bool| LockArgs {
        cookie: Netobj::from_slice(b"k").unwrap(),
        block,
        exclusive: true,
        lock: l,
        reclaim: false,
        state: 3,
    };
    assert_eq!(
        call(LOCK, encode(&args(lock("other", 1), false), 4)),
        Stat::Granted
    );
    assert_eq!(
        call(LOCK, encode(&args(lock(C_IP, 2), true), 4)),
        Stat::Blocked
    );
    let unlock = UnlockArgs {
        cookie: Netobj::from_slice(b"u").unwrap(),
        lock: lock("other", 1),
    };
    let t = Instant::now();
    assert_eq!(call(UNLOCK, encode(&unlock, 4)), Stat::Granted);
    assert!(granted_after(t, 10).is_some(), "no GRANTED at all");
    // The client reboots (state 3 -> 5) and says so.
    let sm = reserved_udp(&client, C_IP);
    let notify = latch_xdr::to_bytes(&latch_nsm::proto::StatChge {
        mon_name: latch_xdr::XdrString::from_text(C_IP).unwrap(),
        state: 5,
    });
    udp_call_retry(
        &sm,
        to,
        &call_bytes(0x5000, latch_nsm::proto::PROGRAM, 1, 6, &notify),
    );
    // Its locks are freed: "other" gets the lock again...
    let t0 = Instant::now();
    while call(LOCK, encode(&args(lock("other", 3), false), 4)) != Stat::Granted {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the rebooted client's lock was never freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let freed = Instant::now();
    // ...and nobody may tell the client's new lock manager it holds it.
    let late = granted_after(freed, 8);
    stop.store(true, Ordering::Relaxed);
    assert!(
        late.is_none(),
        "GRANTED sent {:?} after the rebooted client's locks were freed and granted to another",
        late.map(|l| l - freed)
    );
}
