//! The status monitor, sans-IO.
//!
//! A monitored peer moves through these states:
//!
//! ```text
//!              SM_MON (stat_succ once durable)
//!   unknown ─────────────────────────────────> monitored ──┐ SM_NOTIFY, newer state:
//!      ^                                      │   ^        │ callbacks queued,
//!      │ SM_UNMON / SM_UNMON_ALL (last reg)   │   └────────┘ state recorded
//!      └──────────────────────────────────────┘
//!                                              │ we restart or SM_SIMU_CRASH
//!                                              v
//!                                          to-notify ── answered SM_NOTIFY ──> unknown
//! ```
//!
//! Every change to what we promised to remember is written to [`Storage`]
//! before the call is answered; if the write fails the change is undone and
//! the caller hears `stat_fail`. Outgoing work (callbacks to local programs,
//! SM_NOTIFY to peers, name resolution) is queued as [`Action`]s for the I/O
//! shell, which reports back with [`Monitor::notify_done`] and
//! [`Monitor::learn_addrs`].

use crate::proto::*;
use crate::store::{HostRecord, Registration, Storage, StoreError};
use latch_oncrpc::dispatch::decode_args;
use latch_oncrpc::{CallContext, Outcome, Program};
use latch_xdr::{Encode, Writer, XdrString};
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a notice about a host nobody watches is kept for a caller that
/// asks for late notices ([`PRIV_LATE_OK`]): longer than a request from the
/// host's previous start can spend in the network before it arrives.
pub const LATE_NOTICE_KEEP: Duration = Duration::from_secs(120);

/// Who may make SM_NOTIFY affect a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyCheck {
    /// Only a sender at an address the host resolves to or was seen at (or
    /// loopback, or the address the name itself spells).
    Address,
    /// Anyone (for networks where addresses are not stable).
    Off,
}

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Names we announce in SM_NOTIFY (several for floating HA addresses).
    pub names: Vec<Vec<u8>>,
    pub max_hosts: usize,
    pub max_regs_per_host: usize,
    pub max_actions: usize,
    pub notify_check: NotifyCheck,
    /// Notices about hosts nobody watches kept for late delivery; past it
    /// the oldest goes.
    pub max_late_notices: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            names: vec![b"localhost".to_vec()],
            max_hosts: 4096,
            max_regs_per_host: 16,
            max_actions: 8192,
            notify_check: NotifyCheck::Address,
            max_late_notices: 256,
        }
    }
}

/// Work for the I/O shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send SM_NOTIFY{name, state} for each of `names` to `host` (at `addrs`
    /// and whatever its name resolves to); report with `notify_done`.
    Notify {
        host: Vec<u8>,
        addrs: Vec<IpAddr>,
        names: Vec<Vec<u8>>,
        state: u32,
    },
    /// Call `prog`/`vers`/`proc_` on this host (loopback) with `args`.
    Callback {
        prog: u32,
        vers: u32,
        proc_: u32,
        args: Status,
    },
    /// Resolve `host` and report its addresses with `learn_addrs`.
    Resolve { host: Vec<u8> },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MonitorStats {
    pub mon: u64,
    pub unmon: u64,
    pub notify_received: u64,
    pub notify_stale: u64,
    pub notify_untrusted: u64,
    pub notify_unknown: u64,
    pub callbacks: u64,
    /// Notices delivered late, when their host came to be watched.
    pub late_delivered: u64,
    pub refused_remote: u64,
    pub store_errors: u64,
    pub actions_dropped: u64,
}

/// Hosts are matched case-insensitively, as DNS names are.
fn key(name: &[u8]) -> Vec<u8> {
    name.to_ascii_lowercase()
}

/// The next "up" state number after `s`: odd, larger (wrapping past u32::MAX
/// to 1 after four billion restarts).
pub fn next_up(s: u32) -> u32 {
    if s % 2 == 1 {
        s.wrapping_add(2)
    } else {
        s.wrapping_add(1)
    }
}

/// A notice about a host nobody watched when it came.
#[derive(Debug, Clone)]
struct LateNotice {
    peer: IpAddr,
    state: u32,
    at: Instant,
}

pub struct Monitor<S: Storage> {
    state: u32,
    hosts: BTreeMap<Vec<u8>, HostRecord>,
    /// Recent notices about hosts nobody watched, by host key: a lock
    /// manager asks to watch a host only once it holds state, and a request
    /// from that host's previous start, late in the network, may make it so
    /// after the host's reboot notice came (seed 0x2176d).
    late: BTreeMap<Vec<u8>, LateNotice>,
    /// The time of the last call, for the ages of `late`.
    clock: Option<Instant>,
    to_notify: BTreeMap<Vec<u8>, HostRecord>,
    storage: S,
    cfg: MonitorConfig,
    actions: VecDeque<Action>,
    pub stats: MonitorStats,
}

impl<S: Storage> Monitor<S> {
    /// Loads what was persisted, bumps the state number to the next odd one
    /// (durably, before anything is answered), and queues SM_NOTIFY for
    /// every host monitored before. Fails if the new state cannot be saved:
    /// answering with an old state number would hide our restart.
    pub fn start(mut storage: S, cfg: MonitorConfig) -> Result<Self, StoreError> {
        let p = storage.load()?;
        let state = next_up(p.state);
        storage.save_state(state)?;
        let mut to_notify: BTreeMap<_, _> =
            p.to_notify.into_iter().map(|r| (key(&r.name), r)).collect();
        for r in p.monitored {
            storage.move_to_notify(&r.name)?;
            to_notify.insert(key(&r.name), r);
        }
        let mut m = Monitor {
            state,
            hosts: BTreeMap::new(),
            late: BTreeMap::new(),
            clock: None,
            to_notify,
            storage,
            cfg,
            actions: VecDeque::new(),
            stats: MonitorStats::default(),
        };
        m.queue_notifies();
        Ok(m)
    }

    pub fn state(&self) -> u32 {
        self.state
    }

    /// Hosts monitored before our restart that have not yet been told of it:
    /// the NLM grace period waits for these.
    pub fn to_notify(&self) -> impl Iterator<Item = &[u8]> {
        self.to_notify.values().map(|r| r.name.as_slice())
    }

    pub fn monitored(&self) -> impl Iterator<Item = &HostRecord> {
        self.hosts.values()
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        self.actions.drain(..).collect()
    }

    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    fn push(&mut self, a: Action) {
        if self.actions.len() >= self.cfg.max_actions {
            self.stats.actions_dropped += 1;
            return;
        }
        self.actions.push_back(a);
    }

    fn queue_notifies(&mut self) {
        let list: Vec<_> = self.to_notify.values().cloned().collect();
        for r in list {
            self.push(Action::Notify {
                host: r.name,
                addrs: r.addrs,
                names: self.cfg.names.clone(),
                state: self.state,
            });
        }
    }

    /// `host` acknowledged our SM_NOTIFY.
    pub fn notify_done(&mut self, host: &[u8]) {
        if self.to_notify.remove(&key(host)).is_some() && self.storage.notified(host).is_err() {
            // It stays on disk and is notified again after the next restart,
            // which is harmless.
            self.stats.store_errors += 1;
        }
    }

    /// Addresses `host` resolves to or was seen at, for the notify check.
    pub fn learn_addrs(&mut self, host: &[u8], addrs: &[IpAddr]) {
        let Some(r) = self.hosts.get_mut(&key(host)) else {
            return;
        };
        let before = r.addrs.len();
        for a in addrs {
            if !r.addrs.contains(a) && r.addrs.len() < 16 {
                r.addrs.push(*a);
            }
        }
        if r.addrs.len() != before {
            let r = r.clone();
            if self.storage.save_host(&r).is_err() {
                self.stats.store_errors += 1;
            }
            // A notice untrusted at SM_MON may come from an address learnt
            // now.
            self.deliver_late(&key(host), None);
        }
    }

    /// Keeps a notice about a host nobody watches, for [`Self::deliver_late`].
    fn keep_late(&mut self, named: Vec<u8>, peer: IpAddr, state: u32) {
        let Some(now) = self.clock else {
            return;
        };
        self.late
            .retain(|_, n| now.saturating_duration_since(n.at) <= LATE_NOTICE_KEEP);
        if let Some(n) = self.late.get_mut(&named) {
            if state >= n.state {
                *n = LateNotice {
                    peer,
                    state,
                    at: now,
                };
            }
            return;
        }
        if self.late.len() >= self.cfg.max_late_notices {
            let oldest = self
                .late
                .iter()
                .min_by_key(|(_, n)| n.at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.late.remove(&k);
                }
                None => return,
            }
        }
        self.late.insert(
            named,
            LateNotice {
                peer,
                state,
                at: now,
            },
        );
    }

    /// The notice kept about host `k`, if it is recent, trusted and newer
    /// than what we know, goes to the registrations that asked for late
    /// notices (`only`: just that one, at its SM_MON). It is then the
    /// host's last known state, so a copy of it arriving again is stale.
    fn deliver_late(&mut self, k: &[u8], only: Option<&Registration>) {
        let (Some(now), Some(r)) = (self.clock, self.hosts.get(k)) else {
            return;
        };
        // The notice under this name, or one sent from an address the host
        // is known at, under another name (as on_notify matches them).
        let fresh = |n: &&LateNotice| now.saturating_duration_since(n.at) <= LATE_NOTICE_KEEP;
        let named = self
            .late
            .get(k)
            .filter(fresh)
            .filter(|n| self.trusted(r, n.peer, &r.name));
        let by_addr = self
            .late
            .values()
            .filter(fresh)
            .filter(|n| {
                let p = canonical(n.peer);
                !p.is_loopback() && r.addrs.iter().any(|a| canonical(*a) == p)
            })
            .max_by_key(|n| n.state);
        let Some(n) = named.into_iter().chain(by_addr).max_by_key(|n| n.state) else {
            return;
        };
        let n = n.clone();
        if r.last_state.is_some_and(|s| n.state <= s) {
            return;
        }
        let regs: Vec<Registration> = r
            .regs
            .iter()
            .filter(|g| g.priv_ == PRIV_LATE_OK && only.is_none_or(|o| o.same_target(g)))
            .cloned()
            .collect();
        if regs.is_empty() {
            return;
        }
        let mut r = r.clone();
        r.last_state = Some(n.state);
        if self.storage.save_host(&r).is_err() {
            self.stats.store_errors += 1;
        }
        for g in &regs {
            self.stats.late_delivered += 1;
            self.push(Action::Callback {
                prog: g.prog,
                vers: g.vers,
                proc_: g.proc_,
                args: Status {
                    mon_name: XdrString::new(r.name.clone()).unwrap_or_default(),
                    state: n.state,
                    priv_: latch_xdr::FixedOpaque(PRIV_LATE),
                },
            });
        }
        self.hosts.insert(k.to_vec(), r);
    }

    /// The lock manager saw `host` with NSM state `state` (in a LOCK): a
    /// later SM_NOTIFY with that state or older is stale.
    pub fn observed_state(&mut self, host: &[u8], state: u32) {
        if let Some(r) = self.hosts.get_mut(&key(host)) {
            if r.last_state.is_none_or(|s| state > s) {
                r.last_state = Some(state);
            }
        }
    }

    /// Records a registration durably; false if a limit or the store refused.
    fn mon(&mut self, m: Mon) -> bool {
        let k = key(m.mon_id.mon_name.as_bytes());
        let reg = Registration {
            my_name: m.mon_id.my_id.my_name.as_bytes().to_vec(),
            prog: m.mon_id.my_id.my_prog,
            vers: m.mon_id.my_id.my_vers,
            proc_: m.mon_id.my_id.my_proc,
            priv_: m.priv_.0,
        };
        let is_new = !self.hosts.contains_key(&k);
        if k.is_empty() || (is_new && self.hosts.len() >= self.cfg.max_hosts) {
            return false;
        }
        let mut rec = self.hosts.get(&k).cloned().unwrap_or_else(|| HostRecord {
            name: m.mon_id.mon_name.as_bytes().to_vec(),
            ..HostRecord::default()
        });
        match rec.regs.iter().position(|r| r.same_target(&reg)) {
            Some(i) => rec.regs[i].priv_ = reg.priv_,
            None if rec.regs.len() < self.cfg.max_regs_per_host => rec.regs.push(reg.clone()),
            None => return false,
        }
        if let Ok(ip) = std::str::from_utf8(&rec.name)
            .unwrap_or("")
            .parse::<IpAddr>()
        {
            if !rec.addrs.contains(&ip) {
                rec.addrs.push(ip);
            }
        }
        if self.storage.save_host(&rec).is_err() {
            self.stats.store_errors += 1;
            return false;
        }
        if is_new {
            self.push(Action::Resolve {
                host: rec.name.clone(),
            });
        }
        self.hosts.insert(k.clone(), rec);
        self.deliver_late(&k, Some(&reg));
        true
    }

    /// Removes the registrations `matches` selects from `host` (every host
    /// when `None`), durably.
    fn unmon(&mut self, host: Option<&[u8]>, matches: impl Fn(&Registration) -> bool) {
        let keys: Vec<Vec<u8>> = match host {
            Some(h) => vec![key(h)],
            None => self.hosts.keys().cloned().collect(),
        };
        for k in keys {
            let Some(rec) = self.hosts.get(&k) else {
                continue;
            };
            let mut rec = rec.clone();
            let before = rec.regs.len();
            rec.regs.retain(|r| !matches(r));
            if rec.regs.len() == before {
                continue;
            }
            let saved = if rec.regs.is_empty() {
                self.storage.remove_host(&rec.name)
            } else {
                self.storage.save_host(&rec)
            };
            if saved.is_err() {
                self.stats.store_errors += 1;
                continue;
            }
            if rec.regs.is_empty() {
                self.hosts.remove(&k);
            } else {
                self.hosts.insert(k, rec);
            }
        }
    }

    /// Our own simulated crash: a new state, and every monitored host is to
    /// be told, as after a real restart.
    fn simu_crash(&mut self) {
        let state = next_up(self.state);
        if self.storage.save_state(state).is_err() {
            self.stats.store_errors += 1;
            return;
        }
        self.state = state;
        let hosts = std::mem::take(&mut self.hosts);
        for (k, r) in hosts {
            if self.storage.move_to_notify(&r.name).is_err() {
                self.stats.store_errors += 1;
            }
            self.to_notify.insert(k, r);
        }
        self.queue_notifies();
    }

    fn trusted(&self, r: &HostRecord, peer: IpAddr, named: &[u8]) -> bool {
        match self.cfg.notify_check {
            NotifyCheck::Off => true,
            NotifyCheck::Address => {
                let peer = canonical(peer);
                peer.is_loopback()
                    || r.addrs.iter().any(|a| canonical(*a) == peer)
                    || std::str::from_utf8(named)
                        .ok()
                        .and_then(|n| n.parse::<IpAddr>().ok())
                        .is_some_and(|ip| canonical(ip) == peer)
            }
        }
    }

    /// SM_NOTIFY from `peer`: callbacks for every registration on the named
    /// host (and on any host known at the sender's address under another
    /// name), unless the state is not newer than the one we know.
    pub fn on_notify(&mut self, peer: IpAddr, c: &StatChge) {
        self.stats.notify_received += 1;
        let named = key(c.mon_name.as_bytes());
        let mut matched = Vec::new();
        if let Some(r) = self.hosts.get(&named) {
            if self.trusted(r, peer, c.mon_name.as_bytes()) {
                matched.push(named.clone());
            } else {
                self.stats.notify_untrusted += 1;
            }
        }
        let p = canonical(peer);
        if !p.is_loopback() {
            for (k, r) in &self.hosts {
                if *k != named && r.addrs.iter().any(|a| canonical(*a) == p) {
                    matched.push(k.clone());
                }
            }
        }
        if matched.is_empty() {
            self.stats.notify_unknown += 1;
            self.keep_late(named.clone(), peer, c.state);
        }
        for k in matched {
            self.host_rebooted(&k, c.state);
        }
    }

    fn host_rebooted(&mut self, k: &[u8], state: u32) {
        let Some(r) = self.hosts.get_mut(k) else {
            return;
        };
        if r.last_state.is_some_and(|s| state <= s) {
            self.stats.notify_stale += 1;
            return;
        }
        r.last_state = Some(state);
        let r = r.clone();
        if self.storage.save_host(&r).is_err() {
            // The callbacks still go out: freeing a rebooted client's locks
            // matters more than remembering its state number.
            self.stats.store_errors += 1;
        }
        for g in &r.regs {
            self.stats.callbacks += 1;
            let args = Status {
                mon_name: XdrString::new(r.name.clone()).unwrap_or_default(),
                state,
                priv_: latch_xdr::FixedOpaque(g.priv_),
            };
            self.push(Action::Callback {
                prog: g.prog,
                vers: g.vers,
                proc_: g.proc_,
                args,
            });
        }
    }

    fn reply_state(&self, res: &mut Writer) -> Outcome {
        SmStat { state: self.state }.encode(res);
        Outcome::Reply
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl<S: Storage> Program for Monitor<S> {
    fn number(&self) -> u32 {
        PROGRAM
    }

    fn versions(&self) -> (u32, u32) {
        (VERSION, VERSION)
    }

    fn call(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        self.clock = Some(self.clock.map_or(ctx.now, |c| c.max(ctx.now)));
        let local = ctx.is_local();
        if !local && matches!(ctx.proc_, SM_MON | SM_UNMON | SM_UNMON_ALL | SM_SIMU_CRASH) {
            self.stats.refused_remote += 1;
            if ctx.proc_ == SM_MON {
                SmStatRes {
                    res_stat: STAT_FAIL,
                    state: self.state,
                }
                .encode(res);
                return Outcome::Reply;
            }
            // No failure code in their results: stay silent.
            return Outcome::NoReply;
        }
        match ctx.proc_ {
            SM_NULL => Outcome::Reply,
            SM_STAT => match decode_args::<SmName>(args) {
                Ok(_) => {
                    let r = SmStatRes {
                        res_stat: STAT_SUCC,
                        state: self.state,
                    };
                    r.encode(res);
                    Outcome::Reply
                }
                Err(o) => o,
            },
            SM_MON => match decode_args::<Mon>(args) {
                Ok(m) => {
                    self.stats.mon += 1;
                    let res_stat = if self.mon(m) { STAT_SUCC } else { STAT_FAIL };
                    let r = SmStatRes {
                        res_stat,
                        state: self.state,
                    };
                    r.encode(res);
                    Outcome::Reply
                }
                Err(o) => o,
            },
            SM_UNMON => match decode_args::<MonId>(args) {
                Ok(id) => {
                    self.stats.unmon += 1;
                    let probe = reg_of(&id.my_id);
                    self.unmon(Some(id.mon_name.as_bytes()), |r| r.same_target(&probe));
                    self.reply_state(res)
                }
                Err(o) => o,
            },
            SM_UNMON_ALL => match decode_args::<MyId>(args) {
                Ok(id) => {
                    self.stats.unmon += 1;
                    let probe = reg_of(&id);
                    self.unmon(None, |r| r.same_target(&probe));
                    self.reply_state(res)
                }
                Err(o) => o,
            },
            SM_SIMU_CRASH => {
                self.simu_crash();
                Outcome::Reply
            }
            SM_NOTIFY => match decode_args::<StatChge>(args) {
                Ok(c) => {
                    self.on_notify(ctx.peer.ip(), &c);
                    Outcome::Reply
                }
                Err(o) => o,
            },
            _ => Outcome::ProcUnavail,
        }
    }
}

fn reg_of(id: &MyId) -> Registration {
    Registration {
        my_name: id.my_name.as_bytes().to_vec(),
        prog: id.my_prog,
        vers: id.my_vers,
        proc_: id.my_proc,
        priv_: [0; 16],
    }
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
