//! The NLM server, sans-IO: decoded calls in, replies and [`Action`]s out.
//!
//! The machine owns the lock engine, the host table, the blocked requests
//! waiting for a GRANTED callback, and the grace period. It never waits:
//! callbacks, asynchronous `_RES` answers and status-monitor requests leave
//! as actions for the I/O shell, which reports what became of them
//! ([`NlmServer::call_result`]) and calls [`NlmServer::tick`] to drive
//! retries and timeouts.

use crate::client::{ClientAction, ClientConfig, ClientCore, ConnId, ReqId};
use crate::grace::Grace;
use crate::grants::Grants;
use crate::hosts::{HostStore, Hosts};
use crate::proto::{self, *};
use latch_lock::{Engine, Limits, RequestId};
use latch_oncrpc::{CallContext, Outcome, Program};
use latch_xdr::Writer;
use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

/// Which callback tells a client its blocked lock was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantedStyle {
    /// GRANTED_MSG to clients that asked with LOCK_MSG, GRANTED otherwise
    /// (the default, and what Linux and FreeBSD servers do).
    Auto,
    Sync,
    Msg,
}

/// What to do with a granted lock whose client never acknowledges the
/// GRANTED callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unacknowledged {
    /// Keep it: the client's retransmitted LOCK is answered `granted` (the
    /// default: dropping a lock a client may believe it holds is worse).
    Keep,
    /// Release it after the last retry.
    Release,
}

#[derive(Debug, Clone)]
pub struct NlmConfig {
    /// Our name, sent as the caller name in GRANTED callbacks.
    pub our_name: Vec<u8>,
    pub max_hosts: usize,
    pub grace_ms: u64,
    /// Grace never ends early before this: a request sent before the crash
    /// (retransmitted by the client's RPC layer, or delayed in the network)
    /// would otherwise be granted after grace by a server whose duplicate
    /// request cache forgot it, though its client has moved on (found by
    /// the simulator). Longer than clients' retransmission deadline plus
    /// a datagram's lifetime.
    pub grace_min_ms: u64,
    /// A host that reclaimed and then stayed quiet this long is done.
    pub reclaim_settle_ms: u64,
    pub granted_style: GrantedStyle,
    pub granted_retry_first_ms: u64,
    pub granted_retry_max_ms: u64,
    pub granted_tries_max: u32,
    pub unacknowledged: Unacknowledged,
    /// A host without state this long is unmonitored and forgotten.
    pub host_idle_ms: u64,
    pub limits: Limits,
    /// Bound on queued actions (the shell drains them continuously).
    pub max_actions: usize,
    /// The client side: this host's locks on other servers.
    pub client: ClientConfig,
}

impl Default for NlmConfig {
    fn default() -> Self {
        NlmConfig {
            our_name: b"localhost".to_vec(),
            max_hosts: 4096,
            grace_ms: 45_000,
            grace_min_ms: 10_000,
            reclaim_settle_ms: 2_000,
            granted_style: GrantedStyle::Auto,
            granted_retry_first_ms: 500,
            granted_retry_max_ms: 8_000,
            granted_tries_max: 10,
            unacknowledged: Unacknowledged::Keep,
            host_idle_ms: 60_000,
            limits: Limits::default(),
            max_actions: 65_536,
            client: ClientConfig::default(),
        }
    }
}

/// Work for the I/O shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Call NLM `vers`/`proc_` on the client at `to` (its NLM port, found
    /// through its rpcbind). With `grant: Some(id)`, report the outcome with
    /// [`NlmServer::call_result`].
    Call {
        to: IpAddr,
        vers: u32,
        proc_: u32,
        args: Vec<u8>,
        grant: Option<RequestId>,
    },
    /// Ask the status monitor to watch `name` (SM_MON).
    Monitor { name: Vec<u8> },
    /// Ask the status monitor to stop watching `name` (SM_UNMON).
    Unmonitor { name: Vec<u8> },
}

/// Counters for the metrics page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NlmStats {
    pub calls: [u64; 24],
    pub granted: u64,
    pub denied: u64,
    pub blocked: u64,
    pub deadlock: u64,
    pub nolocks: u64,
    pub grace_denied: u64,
    pub callbacks_sent: u64,
    pub callbacks_retried: u64,
    pub callbacks_abandoned: u64,
    pub reboots_detected: u64,
    pub actions_dropped: u64,
    /// Host-list saves that failed (the request was refused).
    pub store_errors: u64,
    /// LOCKs refused as sent before a reboot of their host that we know of
    /// (an older NSM state than the host's).
    pub stale_requests: u64,
}

/// Rejects a file handle as stale (v4 answers `stale_fh`).
pub type FhCheck = Box<dyn Fn(&[u8]) -> bool + Send>;

pub struct NlmServer {
    pub(crate) cfg: NlmConfig,
    pub(crate) engine: Engine,
    pub(crate) hosts: Hosts,
    pub(crate) grants: Grants,
    /// Differs from one start to the next (our NSM state): part of every
    /// GRANTED cookie.
    pub(crate) boot: u32,
    /// Our NSM state when our own status monitor keeps it (0: unknown, as
    /// with rpc.statd): a Latch client's reclaim meant for another start
    /// of ours is refused.
    pub(crate) own_state: u32,
    pub(crate) grace: Grace,
    pub(crate) store: Box<dyn HostStore>,
    /// Names of hosts holding state, as last saved.
    pub(crate) saved: BTreeSet<Vec<u8>>,
    pub(crate) actions: VecDeque<Action>,
    pub(crate) epoch: Instant,
    pub(crate) fh_stale: Option<FhCheck>,
    pub(crate) next_request: u64,
    /// Local programs' blocked requests on this server's files.
    pub(crate) local_blocked: std::collections::HashMap<RequestId, (ConnId, ReqId)>,
    /// The client side, whose GRANTED callbacks arrive at this program.
    pub client: ClientCore,
    pub(crate) ages: crate::admin::Ages,
    pub stats: NlmStats,
}

impl NlmServer {
    /// Starts the server at `now`. If the store lists hosts that held locks
    /// before, the grace period begins: only reclaims are accepted until
    /// every one of them has reclaimed or gone, or `grace_ms` passes.
    pub fn new(
        cfg: NlmConfig,
        mut store: Box<dyn HostStore>,
        now: Instant,
    ) -> std::io::Result<Self> {
        let before = store.load()?;
        // A restart, even one with no host to wait for, has a grace of
        // `grace_min_ms`: a LOCK sent to the previous start may still come,
        // retransmitted or late in the network, and must not be granted by
        // a start that never answered it (seed 0x3b905). The first start
        // leaves an empty list, so the next one knows it is a restart.
        let restart = before.is_some();
        let before = before.unwrap_or_default();
        let mut store_errors = 0;
        if !restart && store.save(&before).is_err() {
            store_errors += 1;
        }
        let mut engine = Engine::new(cfg.limits);
        let grace = Grace::start(
            &before,
            restart,
            cfg.grace_ms,
            cfg.grace_min_ms,
            cfg.reclaim_settle_ms,
        );
        engine.set_grace(grace.active());
        Ok(NlmServer {
            cfg: cfg.clone(),
            engine,
            hosts: Hosts::default(),
            grants: Grants::default(),
            boot: 0,
            own_state: 0,
            grace,
            store,
            saved: before,
            actions: VecDeque::new(),
            epoch: now,
            fh_stale: None,
            next_request: 1,
            local_blocked: Default::default(),
            client: ClientCore::new(cfg.client.clone(), 0),
            ages: Default::default(),
            stats: NlmStats {
                store_errors,
                ..NlmStats::default()
            },
        })
    }

    /// Sets what tells this start from the previous ones (our NSM state
    /// number, which every start increases), used in GRANTED cookies.
    pub fn set_boot(&mut self, boot: u32) {
        self.boot = boot;
        self.client.set_boot(boot);
    }

    /// Our NSM state as our own status monitor announces it in SM_NOTIFY.
    pub fn set_own_state(&mut self, state: u32) {
        self.own_state = state;
    }

    /// Installs the stale-handle check.
    pub fn set_fh_check(&mut self, check: FhCheck) {
        self.fh_stale = Some(check);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// Grants waiting for the client's acknowledgement.
    pub fn pending_grants(&self) -> usize {
        self.grants.pending_len()
    }

    pub fn in_grace(&self) -> bool {
        self.grace.active()
    }

    /// Ends the grace period now (the operator's `latch grace --end`).
    pub fn end_grace(&mut self) {
        self.grace.end();
        self.engine.set_grace(false);
    }

    pub(crate) fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// [`NlmServer::ms`], also given to the engine: a grant made during
    /// this call is stamped with it (the lock listing's ages).
    pub(crate) fn clock(&mut self, now: Instant) -> u64 {
        let ms = self.ms(now);
        self.engine.set_clock(ms);
        ms
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        self.actions.drain(..).collect()
    }

    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty() || self.client.has_actions()
    }

    pub fn take_client_actions(&mut self) -> Vec<ClientAction> {
        self.client.take_actions()
    }

    /// The shell's report on a client-side call.
    pub fn client_reply(
        &mut self,
        token: u64,
        result: Result<Vec<u8>, crate::client::CallFailure>,
        now: Instant,
    ) {
        let ms = self.ms(now);
        self.client.reply(token, result, ms);
    }

    pub(crate) fn push(&mut self, a: Action) {
        if self.actions.len() >= self.cfg.max_actions {
            self.stats.actions_dropped += 1;
            return;
        }
        self.actions.push_back(a);
    }

    /// Drives time: callback retries, the grace period, idle hosts, lease
    /// deadlines. Call it every few hundred milliseconds.
    pub fn tick(&mut self, now: Instant) {
        let now_ms = self.clock(now);
        self.retry_grants(now_ms);
        if self.grace.tick(now_ms) {
            self.engine.set_grace(false);
            self.persist_hosts(now_ms, true);
        }
        let expired = self.engine.expire_leases(now_ms);
        self.deliver(expired.events, now_ms);
        self.client.tick(now_ms);
        self.forget_idle_hosts(now_ms);
    }

    /// Hosts idle and without state: unmonitored and forgotten.
    fn forget_idle_hosts(&mut self, now_ms: u64) {
        let mut idle: Vec<_> = self
            .hosts
            .iter()
            .filter(|h| {
                now_ms.saturating_sub(h.last_active_ms) >= self.cfg.host_idle_ms
                    && self.engine.host_entries(h.id) == 0
                    && !self.grants.involves(h.id)
            })
            .map(|h| h.id)
            .collect();
        // Actions go out in id order, whatever the hash order (every tick
        // comes here: only the idle few are sorted).
        idle.sort_unstable();
        for id in idle {
            if let Some(h) = self.hosts.remove(id) {
                if h.monitored && self.hosts.named(&h.name).is_empty() {
                    self.push(Action::Unmonitor { name: h.name });
                }
            }
        }
        self.persist_hosts(now_ms, true);
    }

    /// Saves the names of hosts holding state if they changed. New names are
    /// saved at once (see `note_state`); removals can wait for a tick, and
    /// with `linger` a name stays for [`NAME_LINGER_MS`] after its host
    /// last got a lock or share (strict trimming passes `false`).
    pub(crate) fn persist_hosts(&mut self, now_ms: u64, linger: bool) {
        let keep = |h: &crate::hosts::Host| {
            self.engine.host_entries(h.id) > 0
                || (linger
                    && h.held_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) < NAME_LINGER_MS))
        };
        let mut now: BTreeSet<Vec<u8>> = self
            .hosts
            .iter()
            .filter(|h| keep(h))
            .map(|h| crate::hosts::name_key(&h.name))
            .collect();
        // During grace, hosts that have not come back yet still count.
        now.extend(self.grace.waiting_names());
        if now != self.saved && self.store.save(&now).is_ok() {
            self.saved = now;
        }
    }
}

/// How long the name of a host that holds nothing any more stays on the
/// durable list after the host last got a lock or share. A client that locks and
/// unlocks in turn would otherwise lose its name at a tick that finds it
/// between the two and have it saved again (write, fsync, rename) by its
/// next LOCK, on the request path and with every other call waiting. The
/// price: after a crash within this time, grace may wait for a host with
/// nothing to reclaim, until the grace period runs out.
pub(crate) const NAME_LINGER_MS: u64 = 5_000;

impl NlmServer {
    /// Version 0 is FreeBSD's NLM_SM callback; 1 to 4 are NLM proper.
    pub const VERSIONS: (u32, u32) = (NLM_SM_VERSION, 4);

    /// Whether a retransmission of `proc_` must be answered from the
    /// duplicate request cache: everything that changes state. TEST and
    /// the callbacks' answers are idempotent.
    pub fn is_cached_proc(proc_: u32) -> bool {
        matches!(
            proc_,
            LOCK | CANCEL | UNLOCK | TEST_MSG..=UNLOCK_MSG | SHARE | UNSHARE | NM_LOCK | FREE_ALL
        )
    }
}

/// The procedures a version serves.
fn served(vers: u32, proc_: u32) -> bool {
    match vers {
        NLM_SM_VERSION => proc_ == NLM_SM_NOTIFY,
        1 | 2 => proc_ <= SM_NOTIFY,
        3 | 4 => proc_ <= SM_NOTIFY || (SHARE..=FREE_ALL).contains(&proc_),
        _ => false,
    }
}

impl Program for NlmServer {
    fn number(&self) -> u32 {
        proto::PROGRAM
    }

    fn versions(&self) -> (u32, u32) {
        Self::VERSIONS
    }

    fn is_cached(&self, _vers: u32, proc_: u32) -> bool {
        Self::is_cached_proc(proc_)
    }

    fn call(&mut self, ctx: &CallContext<'_>, args: &[u8], res: &mut Writer) -> Outcome {
        if !served(ctx.vers, ctx.proc_) {
            return Outcome::ProcUnavail;
        }
        if let Some(c) = self.stats.calls.get_mut(ctx.proc_ as usize) {
            *c += 1;
        }
        // Version 2 is version 1 on the wire.
        let vers = if ctx.vers == 2 { 1 } else { ctx.vers };
        let now = self.clock(ctx.now);
        match self.dispatch(ctx, vers, args, res, now) {
            Ok(o) => o,
            Err(_) => Outcome::GarbageArgs,
        }
    }
}

impl NlmServer {
    fn dispatch(
        &mut self,
        ctx: &CallContext<'_>,
        vers: u32,
        args: &[u8],
        res: &mut Writer,
        now: u64,
    ) -> latch_xdr::Result<Outcome> {
        let peer = ctx.peer.ip();
        if vers == NLM_SM_VERSION {
            return Ok(self.sm_notify(ctx, decode(args, vers)?, now));
        }
        match ctx.proc_ {
            NULL => {}
            TEST => self
                .test(peer, decode(args, vers)?, now)
                .encode_v(res, vers),
            LOCK | NM_LOCK => {
                let nm = ctx.proc_ == NM_LOCK;
                self.lock(peer, decode(args, vers)?, vers, nm, false, now)
                    .encode_v(res, vers)
            }
            CANCEL => self
                .cancel(peer, decode(args, vers)?, now)
                .encode_v(res, vers),
            UNLOCK => self
                .unlock(peer, decode(args, vers)?, now)
                .encode_v(res, vers),
            // A server we asked grants our client side a blocked lock.
            GRANTED => {
                let a: TestArgs = decode(args, vers)?;
                let stat = self.client.granted(peer, &a);
                Res {
                    cookie: a.cookie,
                    stat,
                }
                .encode_v(res, vers)
            }
            TEST_MSG => {
                let r = self.test(peer, decode(args, vers)?, now);
                self.answer(peer, vers, TEST_RES, encode(&r, vers));
            }
            LOCK_MSG => {
                let r = self.lock(peer, decode(args, vers)?, vers, false, true, now);
                self.answer(peer, vers, LOCK_RES, encode(&r, vers));
            }
            CANCEL_MSG => {
                let r = self.cancel(peer, decode(args, vers)?, now);
                self.answer(peer, vers, CANCEL_RES, encode(&r, vers));
            }
            UNLOCK_MSG => {
                let r = self.unlock(peer, decode(args, vers)?, now);
                self.answer(peer, vers, UNLOCK_RES, encode(&r, vers));
            }
            GRANTED_MSG => {
                let a: TestArgs = decode(args, vers)?;
                let stat = self.client.granted(peer, &a);
                let r = Res {
                    cookie: a.cookie,
                    stat,
                };
                self.answer(peer, vers, GRANTED_RES, encode(&r, vers));
            }
            GRANTED_RES => {
                let r: Res = decode(args, vers)?;
                self.granted_res(&r.cookie, r.stat, now);
            }
            // Answers to our client side's _MSG calls.
            TEST_RES..=UNLOCK_RES => self.client.msg_res(peer, ctx.proc_, vers, args, now),
            SM_NOTIFY => return Ok(self.sm_notify(ctx, decode(args, vers)?, now)),
            SHARE => self
                .share(peer, decode(args, vers)?, now)
                .encode_v(res, vers),
            UNSHARE => self
                .unshare(peer, decode(args, vers)?, now)
                .encode_v(res, vers),
            FREE_ALL => self.free_all(peer, decode(args, vers)?, now),
            _ => return Ok(Outcome::ProcUnavail),
        }
        Ok(Outcome::Reply)
    }

    /// Queues an asynchronous answer (`*_RES`) to the client at `to`.
    fn answer(&mut self, to: IpAddr, vers: u32, proc_: u32, args: Vec<u8>) {
        self.push(Action::Call {
            to,
            vers,
            proc_,
            args,
            grant: None,
        });
    }
}
