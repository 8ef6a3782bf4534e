//! The simulated world: hosts, the datagram network, the event queue and
//! the virtual clock. Everything that happens is an event popped in
//! (time, sequence) order, so a seed replays exactly.

use crate::check;
use crate::rng::Rng;
use crate::workload::{self, Prog};
use crate::Failure;
use latch_nlm::client::{CallFailure, ClientAction, ClientConfig};
use latch_nlm::proto::{self as nlm, Res};
use latch_nlm::{Action, FileHostStore, NlmConfig, NlmServer};
use latch_nsm::monitor::MonitorConfig;
use latch_nsm::{FileStore, Monitor, SimFs};
use latch_oncrpc::client::{encode_call, CallTable, RetryPolicy};
use latch_oncrpc::drc::Drc;
use latch_oncrpc::msg::{self, Credential, Xid};
use latch_oncrpc::{CallContext, Dispatcher, Program, RpcError, Transport};
use latch_xdr::{Writer, XdrString};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Where every host's NLM and NSM listen (one dispatcher, as in latchd).
pub const SERVICE_PORT: u16 = 4045;
/// The server is host 0.
pub const SERVER: usize = 0;

pub(crate) fn lk<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The one real instant the simulation is anchored to; every machine sees
/// `base() + virtual time`.
// The simulator reads the clock once, only to have an `Instant` to add
// virtual durations to; nothing depends on its value.
#[allow(clippy::disallowed_methods)]
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Keep the whole trace (for `--trace`), not only its tail.
    pub keep_trace: bool,
    /// Write the simulated traffic here (pcap).
    pub pcap: Option<std::path::PathBuf>,
    /// Scales the safety phase's length (1.0 = normal).
    pub length: f64,
    /// Checker 5 accepts a reclaim that takes back more than the owner
    /// held before the crash (the client core reclaims its requests whole
    /// after partial unlocks), as long as the owner held something there.
    pub lenient_reclaim: bool,
    /// Fault kinds this run leaves out whatever the seed picks (`loss`,
    /// `dup`, `delay`, `partitions`, `client_crash`, `server_crash`,
    /// `disk`; and `msg`, the `_MSG` style of some client hosts): narrows
    /// a failing seed down to the faults it needs.
    pub without: Vec<String>,
    /// Every client host uses the `_MSG` procedures.
    pub all_msg: bool,
}

impl Options {
    pub fn seed(seed: u64) -> Options {
        Options {
            seed,
            keep_trace: false,
            pcap: None,
            length: 1.0,
            lenient_reclaim: false,
            without: Vec::new(),
            all_msg: false,
        }
    }
}

/// The faults one seed enables, and how hard.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub loss: f64,
    pub dup: f64,
    /// Extra delay up to this much, uniformly: datagrams overtake each other.
    pub delay_max_ms: u64,
    pub partitions: bool,
    pub client_crash: bool,
    pub server_crash: bool,
    pub disk: bool,
    /// Client hosts (bit i: client host i + 1) whose client side asks with
    /// the asynchronous `_MSG` procedures. Not a fault, but a kind of the
    /// swarm all the same (`msg`), drawn from the seed without touching
    /// its generator, so every other choice of a seed stays what it was.
    pub msg_hosts: u64,
}

impl Faults {
    /// Leaves out the named kinds; unknown names were refused earlier.
    fn remove(&mut self, without: &[String]) {
        for w in without {
            match w.as_str() {
                "loss" => self.loss = 0.0,
                "dup" => self.dup = 0.0,
                "delay" => self.delay_max_ms = 0,
                "partitions" => self.partitions = false,
                "client_crash" => self.client_crash = false,
                "server_crash" => self.server_crash = false,
                "disk" => self.disk = false,
                "msg" => self.msg_hosts = 0,
                _ => {}
            }
        }
    }

    /// The names [`Options::without`] accepts.
    pub const KINDS: [&'static str; 8] = [
        "loss",
        "dup",
        "delay",
        "partitions",
        "client_crash",
        "server_crash",
        "disk",
        "msg",
    ];

    /// Half the seeds have `_MSG` hosts, each client host with even odds.
    fn msg_hosts(seed: u64) -> u64 {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ 0x6d73_675f_7374_796c;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if z & 1 == 0 {
            0
        } else {
            (z >> 8) & 0xff
        }
    }

    fn swarm(rng: &mut Rng) -> Faults {
        let mut f = Faults::default();
        if rng.chance(0.5) {
            f.loss = [0.01, 0.05, 0.15, 0.3][rng.below(4) as usize];
        }
        if rng.chance(0.5) {
            f.dup = [0.01, 0.05, 0.2][rng.below(3) as usize];
        }
        if rng.chance(0.5) {
            f.delay_max_ms = [20, 200, 1_000, 3_000][rng.below(4) as usize];
        }
        f.partitions = rng.chance(0.5);
        f.client_crash = rng.chance(0.5);
        f.server_crash = rng.chance(0.5);
        f.disk = rng.chance(0.5);
        f
    }
}

/// What a run exercised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub datagrams: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub reordered: u64,
    pub partitions: u64,
    pub partition_drops: u64,
    pub client_crashes: u64,
    pub server_crashes: u64,
    pub disk_faults: u64,
    /// Writes refused (the store could not make them durable).
    pub failed_writes: u64,
    pub failed_fsyncs: u64,
    /// Power failures in the middle of a disk write (then a crash).
    pub power_cuts: u64,
    /// Unsynced file contents a crash lost, tore or kept.
    pub unsynced_lost: u64,
    pub unsynced_torn: u64,
    pub unsynced_kept: u64,
    pub rpc_timeouts: u64,
    pub grants: u64,
    pub blocked: u64,
    pub reclaim_lost: u64,
    /// Requests the client core refused as `Busy` (overlapping the same
    /// owner's unresolved request).
    pub busy: u64,
    /// Share reservations granted.
    pub shares: u64,
    pub grace_periods: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.datagrams += o.datagrams;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
        self.reordered += o.reordered;
        self.partitions += o.partitions;
        self.partition_drops += o.partition_drops;
        self.client_crashes += o.client_crashes;
        self.server_crashes += o.server_crashes;
        self.disk_faults += o.disk_faults;
        self.failed_writes += o.failed_writes;
        self.failed_fsyncs += o.failed_fsyncs;
        self.power_cuts += o.power_cuts;
        self.unsynced_lost += o.unsynced_lost;
        self.unsynced_torn += o.unsynced_torn;
        self.unsynced_kept += o.unsynced_kept;
        self.rpc_timeouts += o.rpc_timeouts;
        self.grants += o.grants;
        self.blocked += o.blocked;
        self.reclaim_lost += o.reclaim_lost;
        self.busy += o.busy;
        self.shares += o.shares;
        self.grace_periods += o.grace_periods;
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub sim_ms: u64,
    pub faults: Faults,
    pub counts: Counts,
    /// FNV-1a over every trace line: equal for equal runs.
    pub trace_hash: u64,
    pub trace: Vec<String>,
}

/// The NLM machine behind the dispatcher (the dispatcher owns a handle).
struct SharedNlm(Arc<Mutex<NlmServer>>);

impl Program for SharedNlm {
    fn number(&self) -> u32 {
        nlm::PROGRAM
    }
    fn versions(&self) -> (u32, u32) {
        NlmServer::VERSIONS
    }
    fn is_cached(&self, _v: u32, p: u32) -> bool {
        NlmServer::is_cached_proc(p)
    }
    fn call(
        &mut self,
        ctx: &CallContext<'_>,
        args: &[u8],
        res: &mut Writer,
    ) -> latch_oncrpc::Outcome {
        lk(&self.0).call(ctx, args, res)
    }
}

struct SharedNsm(Arc<Mutex<Monitor<FileStore<SimFs>>>>);

impl Program for SharedNsm {
    fn number(&self) -> u32 {
        latch_nsm::proto::PROGRAM
    }
    fn versions(&self) -> (u32, u32) {
        let v = latch_nsm::proto::VERSION;
        (v, v)
    }
    fn call(
        &mut self,
        ctx: &CallContext<'_>,
        args: &[u8],
        res: &mut Writer,
    ) -> latch_oncrpc::Outcome {
        lk(&self.0).call(ctx, args, res)
    }
}

/// SM_NOTIFY to one peer, retried with backoff as latchd's driver does.
#[derive(Debug, Clone)]
pub(crate) struct NotifyJob {
    host: Vec<u8>,
    names: Vec<Vec<u8>>,
    state: u32,
    started: u64,
    delay: u64,
}

/// What a reply (or a timeout) is reported to.
#[derive(Debug, Clone)]
enum Purpose {
    Client {
        token: u64,
    },
    Grant {
        id: latch_lock::RequestId,
        vers: u32,
    },
    OneWay,
    Notify(NotifyJob),
}

struct OutCall {
    dst: SocketAddr,
    bytes: Vec<u8>,
    started: u64,
    attempt: u32,
}

/// Where a host keeps its status monitor's store and its lock manager's
/// list of hosts, as latchd does under its state directory.
const NSM_DIR: &str = "/var/lib/latch/nsm";
const NLM_HOSTS: &str = "/var/lib/latch/nlm-hosts";

/// A running host's machines. Dropped whole when the host crashes.
pub(crate) struct Live {
    pub nlm: Arc<Mutex<NlmServer>>,
    pub nsm: Arc<Mutex<Monitor<FileStore<SimFs>>>>,
    d: Dispatcher,
    calls: CallTable<Purpose>,
    out: BTreeMap<u32, OutCall>,
    port: u16,
    loop_xid: u32,
}

pub(crate) struct Host {
    pub ip: IpAddr,
    pub name: Vec<u8>,
    pub inc: u32,
    pub live: Option<Live>,
    /// The host's disk: the status monitor's store and the lock manager's
    /// list of hosts, through the same file code as latchd. A crash loses,
    /// tears or keeps what was not synced.
    pub disk: SimFs,
    pub progs: Vec<Prog>,
}

#[derive(Debug, Clone)]
enum Ev {
    Deliver {
        src: SocketAddr,
        dst: SocketAddr,
        bytes: Vec<u8>,
    },
    Tick(usize),
    Retransmit {
        host: usize,
        inc: u32,
        xid: u32,
    },
    Prog {
        host: usize,
        inc: u32,
        prog: usize,
    },
    Crash(usize),
    Restart(usize),
    NotifyRetry {
        host: usize,
        inc: u32,
        job: NotifyJob,
    },
    MonRetry {
        host: usize,
        inc: u32,
        name: Vec<u8>,
        attempt: u32,
        /// For the client side, which waits for the answer.
        client: bool,
    },
    Partition {
        from: usize,
        to: usize,
        on: bool,
    },
    /// The next `writes` fsyncs fail, or (`cut`) the power fails after
    /// that many more writing filesystem calls, in the middle of a store's
    /// write if one is under way then, and the host crashes.
    DiskFault {
        host: usize,
        writes: u32,
        cut: bool,
    },
    Heal,
    Quiet,
}

const TICK_MS: u64 = 100;
const NOTIFY_TIMEOUT_MS: u64 = 15 * 60 * 1000;
const RPC: RetryPolicy = RetryPolicy {
    first_timeout: Duration::from_millis(300),
    max_timeout: Duration::from_secs(2),
    deadline: Duration::from_secs(5),
};

pub struct World {
    pub(crate) rng: Rng,
    pub(crate) seed: u64,
    pub(crate) now: u64,
    seq: u64,
    last_dump: Vec<String>,
    queue: BTreeMap<(u64, u64), Ev>,
    pub(crate) hosts: Vec<Host>,
    pub faults: Faults,
    pub counts: Counts,
    blocked_links: BTreeSet<(usize, usize)>,
    last_delivery: BTreeMap<(usize, usize), u64>,
    /// Faults are over: the liveness phase.
    pub(crate) healed: bool,
    heal_at: u64,
    end_at: u64,
    pub(crate) next_conn: u64,
    /// conn -> (host, incarnation).
    pub(crate) conns: BTreeMap<u64, (usize, u32)>,
    /// conn -> file -> the bytes it ever asked to lock.
    pub(crate) requested: BTreeMap<u64, BTreeMap<usize, u64>>,
    /// Per host: the incarnation each NSM state number belongs to.
    nsm_states: Vec<BTreeMap<u32, u32>>,
    /// Per host: incarnations below this one are known rebooted by the
    /// server's lock manager (its status monitor's callback got through).
    pub(crate) dead_below: Vec<u32>,
    /// The server's holders just before its last crash: (conn, file) ->
    /// bytes; during grace nothing else may be held.
    pub(crate) before_crash: BTreeMap<(u64, usize), u64>,
    pub(crate) nfiles: usize,
    pub(crate) lenient_reclaim: bool,
    trace_hash: u64,
    tail: VecDeque<String>,
    trace: Vec<String>,
    keep_trace: bool,
    pcap: Option<crate::pcap::Pcap>,
    pcap_path: Option<std::path::PathBuf>,
    pub(crate) failure: Option<String>,
}

fn fnv(mut h: u64, s: &str) -> u64 {
    for b in s.bytes().chain(std::iter::once(b'\n')) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn host_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

impl World {
    pub fn new(opts: &Options) -> World {
        let mut rng = Rng::new(opts.seed);
        let mut faults = Faults::swarm(&mut rng);
        faults.msg_hosts = Faults::msg_hosts(opts.seed);
        if opts.all_msg {
            faults.msg_hosts = u64::MAX;
        }
        faults.remove(&opts.without);
        let clients = rng.range(2, 4) as usize;
        let nfiles = rng.range(1, 3) as usize;
        let hosts = (0..=clients)
            .map(|i| {
                let ip = host_ip(i);
                Host {
                    ip,
                    name: ip.to_string().into_bytes(),
                    inc: 0,
                    live: None,
                    disk: SimFs::default(),
                    progs: Vec::new(),
                }
            })
            .collect();
        let safety_ms = (rng.range(60_000, 240_000) as f64 * opts.length) as u64;
        let mut w = World {
            rng,
            seed: opts.seed,
            now: 0,
            seq: 0,
            last_dump: Vec::new(),
            queue: BTreeMap::new(),
            hosts,
            faults,
            counts: Counts::default(),
            blocked_links: BTreeSet::new(),
            last_delivery: BTreeMap::new(),
            healed: false,
            heal_at: safety_ms,
            end_at: safety_ms + 600_000,
            next_conn: 1,
            conns: BTreeMap::new(),
            requested: BTreeMap::new(),
            nsm_states: vec![BTreeMap::new(); clients + 1],
            dead_below: vec![0; clients + 1],
            before_crash: BTreeMap::new(),
            nfiles,
            lenient_reclaim: opts.lenient_reclaim,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            tail: VecDeque::new(),
            trace: Vec::new(),
            keep_trace: opts.keep_trace,
            pcap: opts.pcap.as_ref().map(|_| crate::pcap::Pcap::default()),
            pcap_path: opts.pcap.clone(),
            failure: None,
        };
        w.log(format!(
            "seed {} clients {} files {} faults {:?} heal at {}ms",
            opts.seed, clients, nfiles, w.faults, safety_ms
        ));
        for h in 0..w.hosts.len() {
            w.start_host(h);
            let t = w.rng.below(TICK_MS);
            w.at(t, Ev::Tick(h));
        }
        w.schedule_faults();
        w.at(safety_ms, Ev::Heal);
        w
    }

    pub(crate) fn log(&mut self, line: String) {
        let line = format!("{:>9} {line}", self.now);
        self.trace_hash = fnv(self.trace_hash, &line);
        if self.keep_trace {
            self.trace.push(line.clone());
        }
        if self.tail.len() >= 200 {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    pub(crate) fn instant(&self) -> Instant {
        base() + Duration::from_millis(self.now)
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn after(&mut self, ms: u64, ev: Ev) {
        self.at(self.now + ms, ev);
    }

    pub(crate) fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            self.log(format!("FAIL {reason}"));
            for line in crate::check::server_dump(self) {
                self.log(line);
            }
            self.failure = Some(reason);
        }
    }

    /// Schedules this seed's crashes, partitions and disk faults over the
    /// safety phase.
    fn schedule_faults(&mut self) {
        let span = self.heal_at;
        let n = self.hosts.len();
        if self.faults.partitions {
            for _ in 0..self.rng.range(1, 6) {
                let from = self.rng.below(n as u64) as usize;
                let to = (from + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                let t = self.rng.below(span);
                let len = self.rng.range(500, 20_000);
                self.at(t, Ev::Partition { from, to, on: true });
                self.at(
                    t + len,
                    Ev::Partition {
                        from,
                        to,
                        on: false,
                    },
                );
                // Often both ways at once.
                if self.rng.chance(0.5) {
                    self.at(
                        t,
                        Ev::Partition {
                            from: to,
                            to: from,
                            on: true,
                        },
                    );
                    self.at(
                        t + len,
                        Ev::Partition {
                            from: to,
                            to: from,
                            on: false,
                        },
                    );
                }
            }
        }
        if self.faults.client_crash {
            for _ in 0..self.rng.range(1, 4) {
                let h = self.rng.range(1, n as u64 - 1) as usize;
                let t = self.rng.below(span);
                self.at(t, Ev::Crash(h));
            }
        }
        if self.faults.server_crash {
            for _ in 0..self.rng.range(1, 3) {
                let t = self.rng.below(span);
                self.at(t, Ev::Crash(SERVER));
            }
        }
        if self.faults.disk {
            for _ in 0..self.rng.range(1, 8) {
                let host = self.rng.below(n as u64) as usize;
                let t = self.rng.below(span);
                let writes = self.rng.range(1, 4) as u32;
                let cut = self.rng.chance(0.3);
                self.at(t, Ev::DiskFault { host, writes, cut });
            }
        }
    }

    /// Boots host `h` from its stable storage: the status monitor first
    /// (its state bumped durably), then the lock manager. A monitor that
    /// cannot save its new state does not start (as latchd): try again.
    fn start_host(&mut self, h: usize) {
        let host = &self.hosts[h];
        let name = host.name.clone();
        let ncfg = MonitorConfig {
            names: vec![name.clone()],
            ..MonitorConfig::default()
        };
        let store = FileStore::open_in(host.disk.clone(), NSM_DIR);
        let nsm = match store.and_then(|s| Monitor::start(s, ncfg)) {
            Ok(m) => m,
            Err(e) => {
                self.counts.failed_writes += 1;
                self.log(format!("host {h} NSM does not start: {e}"));
                self.after(1_000, Ev::Restart(h));
                return;
            }
        };
        let state = nsm.state();
        let cfg = NlmConfig {
            our_name: name.clone(),
            client: ClientConfig {
                our_name: name.clone(),
                msg: h != SERVER && self.faults.msg_hosts >> (h - 1) & 1 == 1,
                ..ClientConfig::default()
            },
            ..NlmConfig::default()
        };
        let now = self.instant();
        let hosts = FileHostStore {
            path: NLM_HOSTS.into(),
            fs: self.hosts[h].disk.clone(),
        };
        let server = match NlmServer::new(cfg, Box::new(hosts), now) {
            Ok(s) => s,
            Err(e) => {
                self.fail(format!("host {h} NLM does not start: {e}"));
                return;
            }
        };
        if server.in_grace() {
            self.counts.grace_periods += 1;
        }
        let nlm = Arc::new(Mutex::new(server));
        lk(&nlm).client.set_nsm_state(state);
        lk(&nlm).set_boot(state);
        lk(&nlm).set_own_state(state);
        let to_tell: Vec<Vec<u8>> = nsm.to_notify().map(<[u8]>::to_vec).collect();
        lk(&nlm)
            .client
            .set_announcing(to_tell.iter().map(Vec::as_slice));
        let nsm = Arc::new(Mutex::new(nsm));
        let mut d = Dispatcher::new(Drc::new(4096, 4 << 20));
        d.register(Box::new(SharedNlm(nlm.clone())));
        d.register(Box::new(SharedNsm(nsm.clone())));
        let inc = self.hosts[h].inc + 1;
        let first_xid = self.rng.next_u64() as u32;
        let port = 600 + (inc % 300) as u16;
        self.hosts[h].inc = inc;
        self.hosts[h].live = Some(Live {
            nlm,
            nsm,
            d,
            calls: CallTable::new(first_xid, 4096),
            out: BTreeMap::new(),
            port,
            loop_xid: 1,
        });
        self.nsm_states[h].insert(state, inc);
        let grace = self.hosts[h]
            .live
            .as_ref()
            .is_some_and(|l| lk(&l.nlm).in_grace());
        self.log(format!(
            "host {h} up, incarnation {inc}, NSM state {state}{}",
            if grace { ", in grace" } else { "" }
        ));
        if h != SERVER {
            let n = self.rng.range(1, 3) as usize;
            self.hosts[h].progs = (0..n).map(|_| Prog::default()).collect();
            for p in 0..n {
                workload::new_conn(self, h, p);
                let t = self.rng.range(10, 2_000);
                self.after(
                    t,
                    Ev::Prog {
                        host: h,
                        inc,
                        prog: p,
                    },
                );
            }
        }
    }

    fn crash(&mut self, h: usize) {
        if self.hosts[h].live.is_none() || self.healed {
            return;
        }
        if h == SERVER {
            self.counts.server_crashes += 1;
            let in_grace = self.hosts[h]
                .live
                .as_ref()
                .is_some_and(|l| lk(&l.nlm).in_grace());
            let mut now = check::server_holdings(self);
            if in_grace {
                // Crashed again before every lock was reclaimed: what was
                // held before the previous crash may still be reclaimed
                // (grace gave it to nobody else meanwhile).
                for (k, m) in std::mem::take(&mut self.before_crash) {
                    *now.entry(k).or_insert(0) |= m;
                }
            }
            self.before_crash = now;
            self.log(format!(
                "server crashes {} grace",
                if in_grace { "in" } else { "out of" }
            ));
        } else {
            self.counts.client_crashes += 1;
        }
        self.hosts[h].live = None;
        self.hosts[h].progs.clear();
        // Power loss: what was not synced may be lost, torn or kept.
        let rng = &mut self.rng;
        self.hosts[h].disk.crash(&mut |n| rng.below(n));
        self.log(format!("host {h} CRASH"));
        let down = self.rng.range(200, 15_000);
        self.after(down, Ev::Restart(h));
    }

    /// Hosts whose power failed in the middle of a disk write crash now.
    fn power_cuts(&mut self) {
        for h in 0..self.hosts.len() {
            if lk(&self.hosts[h].disk.disk).cut {
                self.counts.power_cuts += 1;
                self.log(format!("host {h} POWER CUT during a disk write"));
                if self.hosts[h].live.is_some() && !self.healed {
                    self.crash(h);
                } else {
                    let rng = &mut self.rng;
                    self.hosts[h].disk.crash(&mut |n| rng.below(n));
                }
            }
        }
    }

    /// Runs to the end of the liveness phase, or to the first failure.
    pub fn run(&mut self) -> Result<Report, Failure> {
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > self.end_at {
                break;
            }
            self.now = t;
            self.handle(ev);
            self.pump();
            self.power_cuts();
            if self.failure.is_none() {
                check::safety(self);
            }
            if self.healed && self.failure.is_none() && check::quiescent(self) {
                self.log("quiescent: every wait resolved, every lock released".into());
                break;
            }
            if let Some(reason) = self.failure.take() {
                return Err(self.failure_report(reason));
            }
        }
        if let Some(reason) = check::liveness(self) {
            self.fail(reason.clone());
            return Err(self.failure_report(reason));
        }
        self.save_pcap();
        for h in &self.hosts {
            let d = lk(&h.disk.disk);
            self.counts.failed_fsyncs += d.failed_syncs;
            self.counts.unsynced_lost += d.lost;
            self.counts.unsynced_torn += d.torn;
            self.counts.unsynced_kept += d.kept_unsynced;
        }
        Ok(Report {
            seed: self.seed,
            sim_ms: self.now,
            faults: self.faults.clone(),
            counts: self.counts.clone(),
            trace_hash: self.trace_hash,
            trace: std::mem::take(&mut self.trace),
        })
    }

    /// Writes the traffic so far as a pcap file, if asked to.
    fn save_pcap(&self) {
        if let (Some(p), Some(path)) = (&self.pcap, &self.pcap_path) {
            if let Err(e) = p.write(path) {
                eprintln!("pcap {}: {e}", path.display());
            }
        }
    }

    fn failure_report(&mut self, reason: String) -> Failure {
        self.save_pcap();
        Failure {
            seed: self.seed,
            at_ms: self.now,
            reason,
            tail: if self.keep_trace {
                std::mem::take(&mut self.trace)
            } else {
                self.tail.iter().cloned().collect()
            },
        }
    }

    fn handle(&mut self, ev: Ev) {
        if std::env::var_os("SIM_DUMP").is_some() {
            let d = crate::check::server_dump(self);
            if d != self.last_dump {
                for line in &d {
                    self.log(format!("DUMP{line}"));
                }
                self.last_dump = d;
            }
        }
        match ev {
            Ev::Deliver { src, dst, bytes } => self.deliver(src, dst, bytes),
            Ev::Tick(h) => {
                if let Some(l) = &self.hosts[h].live {
                    let now = self.instant();
                    lk(&l.nlm).tick(now);
                }
                self.after(TICK_MS, Ev::Tick(h));
            }
            Ev::Retransmit { host, inc, xid } => self.retransmit(host, inc, xid),
            Ev::Prog { host, inc, prog } => {
                if self.hosts[host].inc == inc && self.hosts[host].live.is_some() {
                    let next = workload::step(self, host, prog);
                    self.after(next, Ev::Prog { host, inc, prog });
                }
            }
            Ev::Crash(h) => self.crash(h),
            Ev::Restart(h) => {
                if self.hosts[h].live.is_none() {
                    self.start_host(h);
                }
            }
            Ev::NotifyRetry { host, inc, job } => {
                if self.hosts[host].inc == inc && self.hosts[host].live.is_some() {
                    self.send_notify(host, job);
                }
            }
            Ev::MonRetry {
                host,
                inc,
                name,
                attempt,
                client,
            } => {
                if self.hosts[host].inc == inc && self.hosts[host].live.is_some() {
                    self.monitor(host, name, attempt, client);
                }
            }
            Ev::Partition { from, to, on } => {
                if on && !self.healed {
                    self.counts.partitions += 1;
                    self.blocked_links.insert((from, to));
                    self.log(format!("partition {from} -> {to}"));
                } else if self.blocked_links.remove(&(from, to)) {
                    self.log(format!("heal {from} -> {to}"));
                }
            }
            Ev::DiskFault { host, writes, cut } => {
                if !self.healed {
                    self.counts.disk_faults += 1;
                    let mut d = lk(&self.hosts[host].disk.disk);
                    if cut {
                        d.cut_after = Some(writes - 1);
                        drop(d);
                        self.log(format!("host {host} disk: power fails in {writes} writes"));
                    } else {
                        d.fail_syncs += writes;
                        drop(d);
                        self.log(format!("host {host} disk: next {writes} fsyncs fail"));
                    }
                }
            }
            Ev::Heal => self.heal(),
            Ev::Quiet => {}
        }
    }

    fn heal(&mut self) {
        self.healed = true;
        self.log("HEAL: faults off, programs drain".into());
        self.blocked_links.clear();
        for h in 0..self.hosts.len() {
            let mut d = lk(&self.hosts[h].disk.disk);
            d.fail_syncs = 0;
            d.cut_after = None;
            drop(d);
            if self.hosts[h].live.is_none() {
                self.at(self.now, Ev::Restart(h));
            }
        }
        self.after(1, Ev::Quiet);
    }

    /// The network: loss, duplication, delay, partitions.
    fn send(&mut self, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        self.counts.datagrams += 1;
        let (Some(from), Some(to)) = (self.host_of(src.ip()), self.host_of(dst.ip())) else {
            return;
        };
        if let Some(p) = &mut self.pcap {
            p.push(self.now, src, dst, &bytes);
        }
        if !self.healed {
            if self.blocked_links.contains(&(from, to)) {
                self.counts.partition_drops += 1;
                return;
            }
            if self.rng.chance(self.faults.loss) {
                self.counts.lost += 1;
                return;
            }
            if self.rng.chance(self.faults.dup) {
                self.counts.duplicated += 1;
                self.schedule_delivery(from, to, src, dst, bytes.clone());
            }
        }
        self.schedule_delivery(from, to, src, dst, bytes);
    }

    fn schedule_delivery(
        &mut self,
        from: usize,
        to: usize,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: Vec<u8>,
    ) {
        let mut delay = 1;
        if !self.healed && self.faults.delay_max_ms > 0 {
            let extra = self.rng.below(self.faults.delay_max_ms + 1);
            if extra > 0 {
                self.counts.delayed += 1;
            }
            delay += extra;
        }
        let t = self.now + delay;
        let last = self.last_delivery.entry((from, to)).or_insert(0);
        if t < *last {
            self.counts.reordered += 1;
        } else {
            *last = t;
        }
        self.at(t, Ev::Deliver { src, dst, bytes });
    }

    fn host_of(&self, ip: IpAddr) -> Option<usize> {
        self.hosts.iter().position(|h| h.ip == ip)
    }

    fn deliver(&mut self, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        let Some(h) = self.host_of(dst.ip()) else {
            return;
        };
        let now = self.instant();
        let Some(l) = self.hosts[h].live.as_mut() else {
            return;
        };
        if msg::reply_xid(&bytes).is_some() {
            if dst.port() != l.port {
                return;
            }
            let Some((xid, purpose)) = l.calls.complete(Some(src), &bytes) else {
                return;
            };
            l.out.remove(&xid.0);
            let result = match msg::parse_reply(&bytes) {
                Some(r) => r.result.map(<[u8]>::to_vec).map_err(CallFailure::Rpc),
                None => Err(CallFailure::Transport("malformed reply".into())),
            };
            self.finish(h, purpose, result);
            return;
        }
        if dst.port() != SERVICE_PORT {
            return;
        }
        self.log(format!("{} -> {} {}", src, dst, describe_call(&bytes)));
        let Some(l) = self.hosts[h].live.as_mut() else {
            return;
        };
        if let Some(reply) = l.d.handle(src, Some(dst), Transport::Udp, &bytes, now, 0) {
            self.send(dst, src, reply);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_call(
        &mut self,
        h: usize,
        to: IpAddr,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
        purpose: Purpose,
    ) {
        let ip = self.hosts[h].ip;
        let Some(l) = self.hosts[h].live.as_mut() else {
            return;
        };
        let dst = SocketAddr::new(to, SERVICE_PORT);
        let xid = match l.calls.register(Some(dst), purpose.clone()) {
            Ok(x) => x,
            Err(e) => {
                let why = format!("{e}");
                self.finish(h, purpose, Err(CallFailure::Transport(why)));
                return;
            }
        };
        let bytes = encode_call(xid, prog, vers, proc_, &Credential::None, args);
        let src = SocketAddr::new(ip, l.port);
        l.out.insert(
            xid.0,
            OutCall {
                dst,
                bytes: bytes.clone(),
                started: self.now,
                attempt: 0,
            },
        );
        let inc = self.hosts[h].inc;
        self.send(src, dst, bytes);
        let t = RPC.timeout_for(0).as_millis() as u64;
        self.after(
            t,
            Ev::Retransmit {
                host: h,
                inc,
                xid: xid.0,
            },
        );
    }

    fn retransmit(&mut self, h: usize, inc: u32, xid: u32) {
        if self.hosts[h].inc != inc {
            return;
        }
        let now = self.now;
        let ip = self.hosts[h].ip;
        let Some(l) = self.hosts[h].live.as_mut() else {
            return;
        };
        let Some(c) = l.out.get_mut(&xid) else {
            return;
        };
        let deadline = RPC.deadline.as_millis() as u64;
        let elapsed = now - c.started;
        if elapsed >= deadline {
            l.out.remove(&xid);
            if let Some(p) = l.calls.forget(Xid(xid)) {
                self.counts.rpc_timeouts += 1;
                self.finish(h, p, Err(CallFailure::Transport("no answer".into())));
            }
            return;
        }
        c.attempt += 1;
        let wait = (RPC.timeout_for(c.attempt).as_millis() as u64).min(deadline - elapsed);
        let (src, dst, bytes) = (SocketAddr::new(ip, l.port), c.dst, c.bytes.clone());
        self.send(src, dst, bytes);
        self.after(wait, Ev::Retransmit { host: h, inc, xid });
    }

    fn finish(&mut self, h: usize, purpose: Purpose, result: Result<Vec<u8>, CallFailure>) {
        let now = self.instant();
        let Some(l) = self.hosts[h].live.as_ref() else {
            return;
        };
        match purpose {
            Purpose::Client { token } => {
                let nlm = l.nlm.clone();
                if std::env::var_os("SIM_DUMP").is_some() {
                    let what = match &result {
                        Ok(b) => format!("answered ({} bytes)", b.len()),
                        Err(e) => format!("failed: {e:?}"),
                    };
                    self.log(format!("host {h} client call {token} {what}"));
                }
                lk(&nlm).client_reply(token, result, now);
            }
            Purpose::Grant { id, vers } => {
                let stat = result
                    .ok()
                    .and_then(|b| nlm::decode::<Res>(&b, vers).ok())
                    .map(|r| r.stat);
                let nlm = l.nlm.clone();
                self.log(format!("host {h} GRANTED {id:?} answered {stat:?}"));
                lk(&nlm).call_result(id, stat, now);
            }
            Purpose::OneWay => {}
            Purpose::Notify(mut job) => {
                if result.is_ok() {
                    lk(&l.nsm).notify_done(&job.host);
                    lk(&l.nlm).client.announced(&job.host);
                    self.log(format!(
                        "host {h} notified {}",
                        String::from_utf8_lossy(&job.host)
                    ));
                } else if self.now - job.started < NOTIFY_TIMEOUT_MS {
                    let inc = self.hosts[h].inc;
                    let delay = job.delay;
                    job.delay = (delay * 2).min(60_000);
                    self.after(delay, Ev::NotifyRetry { host: h, inc, job });
                } else {
                    lk(&l.nlm).client.announced(&job.host);
                    self.log(format!("host {h} gave up notifying"));
                }
            }
        }
    }

    fn send_notify(&mut self, h: usize, job: NotifyJob) {
        let Some(to) = std::str::from_utf8(&job.host)
            .ok()
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            return;
        };
        let name = job.names.first().cloned().unwrap_or_default();
        let args = latch_xdr::to_bytes(&latch_nsm::proto::StatChge {
            mon_name: XdrString::new(name).unwrap_or_default(),
            state: job.state,
        });
        let (p, v) = (latch_nsm::proto::PROGRAM, latch_nsm::proto::VERSION);
        self.start_call(
            h,
            to,
            p,
            v,
            latch_nsm::proto::SM_NOTIFY,
            &args,
            Purpose::Notify(job),
        );
    }

    /// A call to a program on the same host, from loopback (no faults).
    fn loopback(
        &mut self,
        h: usize,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Option<Result<Vec<u8>, RpcError>> {
        let now = self.instant();
        let l = self.hosts[h].live.as_mut()?;
        l.loop_xid += 1;
        let bytes = encode_call(Xid(l.loop_xid), prog, vers, proc_, &Credential::None, args);
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 700);
        let reply = l.d.handle(peer, None, Transport::Udp, &bytes, now, 0)?;
        msg::parse_reply(&reply).map(|r| r.result.map(<[u8]>::to_vec))
    }

    /// SM_MON at the host's own status monitor, with NLM v3 procedure 16
    /// as the callback (as latchd); retried a few times if refused.
    fn monitor(&mut self, h: usize, name: Vec<u8>, attempt: u32, client: bool) {
        use latch_nsm::proto as sm;
        let args = latch_xdr::to_bytes(&nlm::monitor_args(&name));
        let ok = match self.loopback(h, sm::PROGRAM, sm::VERSION, sm::SM_MON, &args) {
            Some(Ok(b)) => latch_xdr::from_bytes::<sm::SmStatRes>(&b)
                .is_ok_and(|r| r.res_stat == sm::STAT_SUCC),
            _ => false,
        };
        if ok {
            self.monitor_answer(h, &name, client, true);
            return;
        }
        self.counts.failed_writes += 1;
        self.log(format!(
            "host {h} SM_MON {} refused (attempt {attempt})",
            String::from_utf8_lossy(&name)
        ));
        if attempt < 4 {
            let inc = self.hosts[h].inc;
            self.after(
                200 << attempt,
                Ev::MonRetry {
                    host: h,
                    inc,
                    name,
                    attempt: attempt + 1,
                    client,
                },
            );
        } else {
            self.monitor_answer(h, &name, client, false);
        }
    }

    /// Tells the client side of host `h` what became of its SM_MON.
    fn monitor_answer(&mut self, h: usize, name: &[u8], client: bool, ok: bool) {
        if let (true, Some(l)) = (client, &self.hosts[h].live) {
            lk(&l.nlm).client.monitor_result(name, ok);
        }
    }

    fn unmonitor(&mut self, h: usize, name: Vec<u8>) {
        use latch_nsm::proto as sm;
        let args = latch_xdr::to_bytes(&sm::MonId {
            mon_name: XdrString::new(name).unwrap_or_default(),
            my_id: sm::MyId {
                my_name: XdrString::from_text("localhost").unwrap_or_default(),
                my_prog: nlm::PROGRAM,
                my_vers: 3,
                my_proc: nlm::SM_NOTIFY,
            },
        });
        let _ = self.loopback(h, sm::PROGRAM, sm::VERSION, sm::SM_UNMON, &args);
    }

    /// Carries out every queued action until nothing moves.
    fn pump(&mut self) {
        for _ in 0..1_000 {
            let mut moved = false;
            for h in 0..self.hosts.len() {
                let Some(l) = self.hosts[h].live.as_ref() else {
                    continue;
                };
                let (acts, cacts) = {
                    let mut n = lk(&l.nlm);
                    (n.take_actions(), n.take_client_actions())
                };
                let sacts = lk(&l.nsm).take_actions();
                moved |= !acts.is_empty() || !cacts.is_empty() || !sacts.is_empty();
                for a in acts {
                    self.server_action(h, a);
                }
                for a in cacts {
                    self.client_action(h, a);
                }
                for a in sacts {
                    self.nsm_action(h, a);
                }
            }
            if !moved {
                return;
            }
        }
        self.fail("actions never settle".into());
    }

    fn server_action(&mut self, h: usize, a: Action) {
        match a {
            Action::Call {
                to,
                vers,
                proc_,
                args,
                grant,
            } => {
                let purpose = match grant {
                    Some(id) => Purpose::Grant { id, vers },
                    None => Purpose::OneWay,
                };
                self.start_call(h, to, nlm::PROGRAM, vers, proc_, &args, purpose);
            }
            Action::Monitor { name } => self.monitor(h, name, 0, false),
            Action::Unmonitor { name } => self.unmonitor(h, name),
        }
    }

    fn client_action(&mut self, h: usize, a: ClientAction) {
        match a {
            ClientAction::Call {
                token,
                server,
                vers,
                proc_,
                args,
            } => {
                if std::env::var_os("SIM_DUMP").is_some() {
                    let what = match (
                        nlm::decode::<nlm::LockArgs>(&args, vers),
                        nlm::decode::<nlm::UnlockArgs>(&args, vers),
                        nlm::decode::<nlm::CancArgs>(&args, vers),
                    ) {
                        (Ok(a), _, _) if proc_ == nlm::LOCK => format!(
                            "LOCK reclaim={} block={} svid {} [{}, +{})",
                            a.reclaim, a.block, a.lock.svid, a.lock.offset, a.lock.len
                        ),
                        (_, Ok(a), _) if proc_ == nlm::UNLOCK => format!(
                            "UNLOCK svid {} [{}, +{})",
                            a.lock.svid, a.lock.offset, a.lock.len
                        ),
                        (_, _, Ok(a)) if proc_ == nlm::CANCEL => format!(
                            "CANCEL svid {} [{}, +{})",
                            a.lock.svid, a.lock.offset, a.lock.len
                        ),
                        _ => format!("proc {proc_}"),
                    };
                    self.log(format!("host {h} client call {token}: {what}"));
                }
                self.start_call(
                    h,
                    server,
                    nlm::PROGRAM,
                    vers,
                    proc_,
                    &args,
                    Purpose::Client { token },
                )
            }
            ClientAction::Monitor { name } => self.monitor(h, name, 0, true),
            ClientAction::Local { conn, event } => workload::on_event(self, h, conn, event),
        }
    }

    fn nsm_action(&mut self, h: usize, a: latch_nsm::Action) {
        match a {
            latch_nsm::Action::Notify {
                host, names, state, ..
            } => {
                let job = NotifyJob {
                    host,
                    names,
                    state,
                    started: self.now,
                    delay: 500,
                };
                self.send_notify(h, job);
            }
            latch_nsm::Action::Callback {
                prog,
                vers,
                proc_,
                args,
            } => {
                let peer = self.host_of_name(args.mon_name.as_bytes());
                let state = args.state;
                self.log(format!(
                    "host {h} NSM callback: {} rebooted, state {state}",
                    String::from_utf8_lossy(args.mon_name.as_bytes())
                ));
                let ok = matches!(
                    self.loopback(h, prog, vers, proc_, &latch_xdr::to_bytes(&args)),
                    Some(Ok(_))
                );
                if let (true, SERVER, Some(p)) = (ok, h, peer) {
                    if let Some(&inc) = self.nsm_states[p].get(&state) {
                        let d = &mut self.dead_below[p];
                        *d = (*d).max(inc);
                    }
                }
            }
            latch_nsm::Action::Resolve { host } => {
                let ip = std::str::from_utf8(&host)
                    .ok()
                    .and_then(|s| s.parse::<IpAddr>().ok());
                if let (Some(ip), Some(l)) = (ip, self.hosts[h].live.as_ref()) {
                    lk(&l.nsm).learn_addrs(&host, &[ip]);
                }
            }
        }
    }

    fn host_of_name(&self, name: &[u8]) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    pub(crate) fn server(&self) -> Option<MutexGuard<'_, NlmServer>> {
        self.hosts[SERVER].live.as_ref().map(|l| lk(&l.nlm))
    }

    pub(crate) fn server_inc(&self) -> u32 {
        self.hosts[SERVER].inc
    }

    pub(crate) fn server_ip(&self) -> IpAddr {
        self.hosts[SERVER].ip
    }
}

/// A short description of an RPC call for the trace.
fn describe_call(bytes: &[u8]) -> String {
    match msg::parse_call(bytes) {
        Ok(c) => {
            let name = match (c.prog, c.proc_) {
                (nlm::PROGRAM, p) => nlm_proc_name(p).to_string(),
                (latch_nsm::proto::PROGRAM, 2) => "SM_MON".into(),
                (latch_nsm::proto::PROGRAM, 6) => "SM_NOTIFY".into(),
                (p, n) => format!("{p}/{n}"),
            };
            format!(
                "xid {} {name} v{} ({} bytes)",
                c.xid.0,
                c.vers,
                c.args.len()
            )
        }
        Err(_) => "undecodable".into(),
    }
}

fn nlm_proc_name(p: u32) -> &'static str {
    const N: [&str; 17] = [
        "NULL",
        "TEST",
        "LOCK",
        "CANCEL",
        "UNLOCK",
        "GRANTED",
        "TEST_MSG",
        "LOCK_MSG",
        "CANCEL_MSG",
        "UNLOCK_MSG",
        "GRANTED_MSG",
        "TEST_RES",
        "LOCK_RES",
        "CANCEL_RES",
        "UNLOCK_RES",
        "GRANTED_RES",
        "SM_NOTIFY",
    ];
    N.get(p as usize).copied().unwrap_or("OTHER")
}
