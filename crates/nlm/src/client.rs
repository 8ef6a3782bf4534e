//! The client side, sans-IO: local programs' lock requests on remote NLM
//! servers. The FreeBSD design (seed 001): one lock manager per host owns
//! the NLM callback port and relays grants to the local programs that asked.
//!
//! A remote request moves through these states:
//!
//! ```text
//!            request
//!               v
//!           in flight ──(no answer / error)──> failed (told once)
//!        ┌──────┼───────────────┐
//!  granted│     │blocked         │denied, deadlock, grace, nolocks
//!        v      v                v
//!      held <── waiting        told once
//!        ^      │  GRANTED callback (or a resent LOCK answered granted)
//!        └──────┘
//!      held ──(server rebooted)──> reclaiming ──granted──> held
//!                                           └─denied──> lost (told)
//! ```
//!
//! Each local connection is one lock owner (like a process): its svid is the
//! connection number and its owner handle names this host and connection.
//! When a connection goes, its locks are unlocked and its waits cancelled.

use crate::proto::*;
use latch_oncrpc::RpcError;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A local program's connection to latchd.
pub type ConnId = u64;
/// A request number, chosen by the connection.
pub type ReqId = u64;

/// What a request came to, as the local program hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    /// Queued at the server; a later `Granted` event follows.
    Blocked,
    /// TEST: nobody conflicts.
    Free,
    /// Held by someone else (TEST, or a LOCK that would not wait).
    Denied(Option<Holder>),
    Deadlock,
    /// The server is in its grace period (retry later).
    Grace,
    /// A server limit was reached.
    NoLocks,
    /// Refused here, not sent: another LOCK, UNLOCK or CANCEL of the same
    /// connection on an overlapping range of the file is unresolved
    /// (waiting at the server, or unanswered). Wait for its answer or
    /// cancel it first.
    Busy,
    /// The server could not be reached or refused the protocol.
    Failed(String),
}

/// Messages for a local program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEvent {
    /// The answer to request `req`.
    Reply { req: ReqId, outcome: Outcome },
    /// Blocked request `req` now holds its lock.
    Granted { req: ReqId },
    /// Blocked request `req` will never be granted: asked again (the
    /// server restarted, or a GRANTED was lost), the server refused it
    /// (for example `Deadlock`: the wait would now close a cycle).
    Refused { req: ReqId, outcome: Outcome },
    /// A lock held on a server that rebooted could not be reclaimed.
    Lost {
        server: IpAddr,
        fh: Vec<u8>,
        offset: u64,
        len: u64,
    },
    /// A lease the program holds must be given up (`to_read`: downgraded).
    LeaseBreak { fh: Vec<u8>, to_read: bool },
    /// The lease was revoked after its break deadline.
    LeaseRevoked { fh: Vec<u8> },
}

/// One byte range on one server, as a local program names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLock {
    pub server: IpAddr,
    /// The server's name, for status monitoring (an address is fine).
    pub server_name: Vec<u8>,
    pub fh: Vec<u8>,
    pub offset: u64,
    pub len: u64,
    pub exclusive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Test,
    Lock {
        block: bool,
    },
    Unlock,
    Cancel,
    Reclaim,
    /// SHARE (always synchronous: NLM has no SHARE_MSG).
    Share {
        access: u32,
        deny: u32,
        reclaim: bool,
    },
    Unshare,
}

#[derive(Debug, Clone)]
struct InFlight {
    conn: ConnId,
    /// `None` for calls nobody waits on (cleanup, reclaim, resends).
    req: Option<ReqId>,
    op: Op,
    lock: RemoteLock,
    vers: u32,
}

#[derive(Debug, Clone)]
struct Entry {
    conn: ConnId,
    req: ReqId,
    lock: RemoteLock,
    last_sent_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our caller name on servers (what their status monitors watch).
    pub our_name: Vec<u8>,
    /// How often a blocked LOCK is sent again, in case its GRANTED was lost.
    pub resend_blocked_ms: u64,
    /// Bound on requests in flight and locks held through this host.
    pub max_entries: usize,
    /// Ask with the asynchronous procedures (TEST_MSG, LOCK_MSG, CANCEL_MSG,
    /// UNLOCK_MSG; answers come back as `_RES` calls, see
    /// [`ClientCore::msg_res`]) instead of the synchronous ones.
    pub msg: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            our_name: b"localhost".to_vec(),
            resend_blocked_ms: 30_000,
            max_entries: 65_536,
            msg: false,
        }
    }
}

/// Work for the shell on the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Call NLM `vers`/`proc_` on `server`; report with `ClientCore::reply`.
    Call {
        token: u64,
        server: IpAddr,
        vers: u32,
        proc_: u32,
        args: Vec<u8>,
    },
    /// Ask the status monitor to watch a server we hold locks on.
    Monitor { name: Vec<u8> },
    /// Tell local connection `conn`.
    Local { conn: ConnId, event: LocalEvent },
}

/// Why a call failed, as the shell reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    Rpc(RpcError),
    /// No answer, or the server is unreachable.
    Transport(String),
}

#[derive(Debug, Default)]
pub struct ClientCore {
    cfg: ClientConfig,
    /// Our NSM state number, sent in every LOCK.
    nsm_state: u32,
    /// Differs from one start of this host's lock manager to the next.
    boot: u32,
    next_token: u64,
    in_flight: BTreeMap<u64, InFlight>,
    waiting: BTreeMap<(ConnId, ReqId), Entry>,
    held: Vec<Entry>,
    /// The NLM version each server speaks (4, falling back to 3 and 1).
    versions: BTreeMap<IpAddr, u32>,
    /// _MSG calls taken by the server whose _RES has not come, and until
    /// when it may.
    awaiting_res: BTreeMap<u64, u64>,
    /// Servers our status monitor watches for us (`true`), or has been
    /// asked to (`false`). A server's reboot can only be announced to it
    /// if it is on our monitor's durable list, so no LOCK goes to a server
    /// before that: a crash of ours would leave its locks there forever.
    monitored: BTreeMap<Vec<u8>, bool>,
    /// LOCKs waiting for their server to be monitored (as Linux's lock
    /// manager does, which fails the lock if the monitor refuses).
    held_back: Vec<(ConnId, ReqId, ClientOp, RemoteLock)>,
    /// Share reservations held: (conn, file, access, deny).
    shares: Vec<(ConnId, RemoteLock, u32, u32)>,
    /// Servers our status monitor has yet to tell of our restart (name
    /// keys). A SHARE carries no NSM state, so one sent to such a server
    /// before the notice arrives would be freed by it; a LOCK would tell
    /// the server of our reboot before the notice does, which then finds
    /// nothing newer to free, and an old start's shares would stay. Both
    /// wait (`Grace`).
    announcing: std::collections::BTreeSet<Vec<u8>>,
    /// Share reclaims the server was not ready for: sent again next tick.
    share_later: Vec<InFlight>,
    /// Files each connection asked a share on, unshared when it closes
    /// (at once and [`LINGER_MS`] later), like `touched` for locks.
    touched_shares: BTreeMap<ConnId, std::collections::BTreeSet<FileAt>>,
    /// The files each connection sent a LOCK for (server, server name, fh),
    /// up to [`TOUCHED_MAX`] per connection (a LOCK on one more file is
    /// refused with `NoLocks`): when it closes, its owner
    /// unlocks each whole file there, whatever we believe it holds, and
    /// again [`LINGER_MS`] later. A LOCK datagram delayed in the network
    /// past its call's timeout and its undo can still take a lock; the
    /// owner is gone for good, so a whole-file UNLOCK can only free what
    /// nobody believes held.
    touched: BTreeMap<ConnId, std::collections::BTreeSet<FileAt>>,
    /// Whole-file UNLOCKs of closed connections to send again, and when
    /// (stamped at the next tick).
    linger: Vec<(Option<u64>, InFlight)>,
    /// Reclaims to send again (the server was not ready for them).
    reclaim_later: Vec<Entry>,
    /// Reclaims (of locks and shares) sent in the last [`LINGER_MS`], and
    /// until when they count (stamped at the next tick). A copy of one,
    /// delayed in the network, can reach the server's next start during
    /// its grace and be granted there after the lock was let go (seed
    /// 0x19478): when that next start's notice comes, each is undone
    /// [`LINGER_MS`] later, for what its owner no longer holds.
    recent_reclaims: Vec<(Option<u64>, InFlight)>,
    /// LOCKs and SHAREs (by token) in flight when their server's reboot
    /// notice came: a `granted` answer may be the old start's, on its way
    /// when that start ended, so what it grants is reclaimed from the new
    /// one (seed 0x1c448).
    crossed: std::collections::BTreeSet<u64>,
    /// Reclaims (by token) still unanswered when their server's next start
    /// announced itself: told lost, and undone whatever their answer.
    abandoned: std::collections::BTreeSet<u64>,
    /// The NSM state each server's last reboot notice gave (by name key,
    /// at most `max_entries`), written into the cookies of our reclaims.
    server_states: BTreeMap<Vec<u8>, u32>,
    /// Waits on a server whose reboot notice came, until the new start
    /// answers one of their resends `blocked`: a GRANTED for them may be
    /// the old start's, late in the network (seed 0x22d57), so it is
    /// answered `denied_grace_period`, which a live server retries.
    unconfirmed: std::collections::BTreeSet<(ConnId, ReqId)>,
    /// Waits a resend of which got no answer: the server may have granted
    /// that LOCK at once and the answer been lost, so cancelling the wait
    /// also unlocks what its owner does not hold (seed 0x20bde).
    maybe_granted: std::collections::BTreeSet<(ConnId, ReqId)>,
    /// UNLOCKs and CANCELs that did not get through: sent again until they
    /// do, or the server is known to have restarted, so that no lock is
    /// left held on a server forever.
    cleanup_later: Vec<InFlight>,
    /// Blocking LOCKs in flight whose GRANTED came before their `blocked`
    /// answer (by token).
    granted_early: std::collections::BTreeSet<u64>,
    /// GRANTED callbacks (server, cookie) we refused: a retransmission of
    /// one must be refused too, as the server has already let it go.
    refused: Remembered,
    /// GRANTED callbacks we took: a retransmission of one (our answer was
    /// lost) is acknowledged again even if the owner has since changed
    /// what it holds there, which the server saw happen after the grant.
    accepted: Remembered,
    /// Locks (as a GRANTED names them) of blocking LOCKs that got no
    /// answer, until when a GRANTED for them may still come from that
    /// request: the server may have queued and granted it, and its GRANTED
    /// (sent again by the RPC layer after the grant was withdrawn, or late
    /// in the network) names a later wait for the same lock just as well.
    /// A GRANTED for such a lock is not taken on its word: the wait's LOCK
    /// is sent again and its answer decides (seed 0x36a8b).
    stale_grants: BTreeMap<GrantKey, u64>,
    actions: Vec<ClientAction>,
}

/// A file on a server: (server, server name, file handle).
type FileAt = (IpAddr, Vec<u8>, Vec<u8>);

/// A lock as a GRANTED callback names it: server, file handle, svid,
/// owner handle, offset, length, exclusive.
type GrantKey = (IpAddr, Vec<u8>, u32, Vec<u8>, u64, u64, bool);

/// How many files one connection may lock in (see `ClientCore::touched`).
const TOUCHED_MAX: usize = 1024;

/// How long after a connection closed its whole-file UNLOCKs are sent
/// again: longer than an RPC call's deadline plus the time a datagram can
/// spend in the network.
const LINGER_MS: u64 = 15_000;

/// How long a _MSG call's answer (its _RES call) is waited for.
const RES_WAIT_MS: u64 = 5_000;

/// How soon a blocked LOCK answered "grace period" is asked again.
const GRACE_RETRY_MS: u64 = 5_000;

/// GRANTED cookies (with the server they came from), the latest
/// [`Remembered::CAP`] of them.
#[derive(Debug, Default)]
struct Remembered {
    order: std::collections::VecDeque<(IpAddr, Vec<u8>)>,
    set: std::collections::HashSet<(IpAddr, Vec<u8>)>,
}

impl Remembered {
    const CAP: usize = 4096;

    fn contains(&self, k: &(IpAddr, Vec<u8>)) -> bool {
        self.set.contains(k)
    }

    fn insert(&mut self, k: (IpAddr, Vec<u8>)) {
        if self.set.contains(&k) {
            return;
        }
        if self.order.len() >= Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(k.clone());
        self.order.push_back(k);
    }
}

/// The NLM owner of local connection `conn`: svid and owner handle
/// `<our name>#<boot, hex>-<conn>`. Connection numbers start over when
/// latchd restarts; the boot number keeps the owners of two incarnations
/// apart, so a GRANTED meant for the last one (sent before the server
/// learnt of the restart) matches no wait of this one.
/// A connection's lock owner: `<our name>#<boot hex>-<conn>`, and
/// `~<NSM state hex>` after it when our status monitor's state is known.
/// SHARE carries no NSM state of its own; a Latch server reads it there
/// (see `latch_nlm::ops`), to refuse a SHARE sent before a reboot it knows
/// of and to learn of a newer one.
fn owner(cfg: &ClientConfig, boot: u32, state: u32, conn: ConnId) -> (u32, Vec<u8>) {
    let mut oh = cfg.our_name.clone();
    oh.extend_from_slice(format!("#{boot:x}-{conn}").as_bytes());
    if state != 0 {
        oh.extend_from_slice(format!("~{state:x}").as_bytes());
    }
    (conn as u32, oh)
}

/// The cookie of our call `token`: this start's boot number, then the
/// token. Tokens start again at 1 after a restart, and a `_RES` of the
/// previous start's call, late in the network, must not answer this start's
/// (seed 0x1fdfc).
fn cookie_of(boot: u32, token: u64) -> [u8; 12] {
    let mut c = [0; 12];
    c[..4].copy_from_slice(&boot.to_be_bytes());
    c[4..].copy_from_slice(&token.to_be_bytes());
    c
}

/// Marks a reclaim's cookie that names the server start it is meant for.
pub const RECLAIM_MARK: [u8; 4] = *b"LRCL";

/// The cookie of reclaim `token` meant for the server start whose reboot
/// notice gave `server_state`: [`cookie_of`], [`RECLAIM_MARK`], the state.
/// A Latch server refuses one meant for an earlier start of its own (a copy late
/// in the network, seed 0x2b714); any other server echoes it.
fn reclaim_cookie_of(boot: u32, token: u64, server_state: u32) -> [u8; 20] {
    let mut c = [0; 20];
    c[..12].copy_from_slice(&cookie_of(boot, token));
    c[12..16].copy_from_slice(&RECLAIM_MARK);
    c[16..].copy_from_slice(&server_state.to_be_bytes());
    c
}

/// The server start a reclaim cookie in our form is meant for.
pub fn reclaim_target(cookie: &[u8]) -> Option<u32> {
    let c = <[u8; 20]>::try_from(cookie).ok()?;
    if c[12..16] != RECLAIM_MARK {
        return None;
    }
    Some(u32::from_be_bytes(c[16..].try_into().ok()?))
}

/// The token in a cookie of ours from this start.
fn token_of(boot: u32, cookie: &[u8]) -> Option<u64> {
    let cookie = match cookie.len() {
        20 if reclaim_target(cookie).is_some() => &cookie[..12],
        _ => cookie,
    };
    let c = <[u8; 12]>::try_from(cookie).ok()?;
    let (b, t) = c.split_at(4);
    if b != boot.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(t.try_into().ok()?))
}

fn fallback(vers: u32) -> Option<u32> {
    match vers {
        4 => Some(3),
        3 => Some(1),
        _ => None,
    }
}

impl ClientCore {
    pub fn new(cfg: ClientConfig, nsm_state: u32) -> Self {
        ClientCore {
            cfg,
            nsm_state,
            next_token: 1,
            ..ClientCore::default()
        }
    }

    pub fn set_nsm_state(&mut self, state: u32) {
        self.nsm_state = state;
    }

    /// The servers our status monitor is about to tell of our restart.
    pub fn set_announcing<'a>(&mut self, names: impl IntoIterator<Item = &'a [u8]>) {
        self.announcing = names.into_iter().map(crate::hosts::name_key).collect();
    }

    /// Our status monitor told `name` of our restart, or gave up.
    pub fn announced(&mut self, name: &[u8]) {
        self.announcing.remove(&crate::hosts::name_key(name));
    }

    /// A number that differs from one start to the next (part of every
    /// owner handle).
    pub fn set_boot(&mut self, boot: u32) {
        self.boot = boot;
    }

    pub fn take_actions(&mut self) -> Vec<ClientAction> {
        std::mem::take(&mut self.actions)
    }

    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// Locks held through this host, for listing.
    pub fn held(&self) -> impl Iterator<Item = (ConnId, &RemoteLock)> {
        self.held.iter().map(|e| (e.conn, &e.lock))
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn tell(&mut self, conn: ConnId, event: LocalEvent) {
        self.actions.push(ClientAction::Local { conn, event });
    }

    fn nlm_lock(&self, conn: ConnId, l: &RemoteLock) -> Lock {
        let (svid, oh) = owner(&self.cfg, self.boot, self.nsm_state, conn);
        Lock {
            caller_name: Name::new(self.cfg.our_name.clone()).unwrap_or_default(),
            fh: Netobj::new(l.fh.clone()).unwrap_or_default(),
            oh: Netobj::new(oh).unwrap_or_default(),
            svid,
            offset: l.offset,
            len: l.len,
        }
    }

    fn encode(&self, f: &InFlight, token: u64) -> (u32, Vec<u8>) {
        let (proc_, args) = self.encode_sync(f, token);
        if !self.cfg.msg {
            return (proc_, args);
        }
        // The _MSG procedure of each takes the same arguments.
        let msg = match proc_ {
            TEST => TEST_MSG,
            LOCK => LOCK_MSG,
            CANCEL => CANCEL_MSG,
            UNLOCK => UNLOCK_MSG,
            p => p,
        };
        (msg, args)
    }

    fn encode_sync(&self, f: &InFlight, token: u64) -> (u32, Vec<u8>) {
        let reclaim = matches!(f.op, Op::Reclaim | Op::Share { reclaim: true, .. });
        let target = self
            .server_states
            .get(&crate::hosts::name_key(&f.lock.server_name))
            .filter(|_| reclaim);
        let cookie = match target {
            Some(&s) => Netobj::from_slice(&reclaim_cookie_of(self.boot, token, s)),
            None => Netobj::from_slice(&cookie_of(self.boot, token)),
        }
        .unwrap_or_default();
        let lock = self.nlm_lock(f.conn, &f.lock);
        let excl = f.lock.exclusive;
        match f.op {
            Op::Test => (
                TEST,
                encode(
                    &TestArgs {
                        cookie,
                        exclusive: excl,
                        lock,
                    },
                    f.vers,
                ),
            ),
            Op::Lock { .. } | Op::Reclaim => {
                let a = LockArgs {
                    cookie,
                    block: matches!(f.op, Op::Lock { block: true }),
                    exclusive: excl,
                    lock,
                    reclaim: f.op == Op::Reclaim,
                    state: self.nsm_state,
                };
                (LOCK, encode(&a, f.vers))
            }
            Op::Unlock => (UNLOCK, encode(&UnlockArgs { cookie, lock }, f.vers)),
            Op::Share {
                access,
                deny,
                reclaim,
            } => {
                let share = ShareLock {
                    caller_name: lock.caller_name,
                    fh: lock.fh,
                    oh: lock.oh,
                    mode: deny,
                    access,
                };
                let a = ShareArgs {
                    cookie,
                    share,
                    reclaim,
                };
                (SHARE, encode(&a, f.vers))
            }
            Op::Unshare => {
                let share = ShareLock {
                    caller_name: lock.caller_name,
                    fh: lock.fh,
                    oh: lock.oh,
                    mode: 0,
                    access: 0,
                };
                let a = ShareArgs {
                    cookie,
                    share,
                    reclaim: false,
                };
                (UNSHARE, encode(&a, f.vers))
            }
            Op::Cancel => (
                CANCEL,
                encode(
                    &CancArgs {
                        cookie,
                        block: true,
                        exclusive: excl,
                        lock,
                    },
                    f.vers,
                ),
            ),
        }
    }

    fn send(&mut self, mut f: InFlight) {
        f.vers = self.versions.get(&f.lock.server).copied().unwrap_or(4);
        let wide = f.lock.offset > u64::from(u32::MAX) || f.lock.len > u64::from(u32::MAX);
        if f.vers < 4 && wide {
            if let Some(req) = f.req {
                let why = "the server speaks only 32-bit NLM and the range does not fit";
                self.tell(
                    f.conn,
                    LocalEvent::Reply {
                        req,
                        outcome: Outcome::Failed(why.into()),
                    },
                );
            }
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let (proc_, args) = self.encode(&f, token);
        let server = f.lock.server;
        let undo = match f.op {
            Op::Reclaim => Some(Op::Unlock),
            Op::Share { reclaim: true, .. } => Some(Op::Unshare),
            _ => None,
        };
        if let Some(op) = undo {
            if self.recent_reclaims.len() < self.cfg.max_entries {
                let undo = InFlight {
                    req: None,
                    op,
                    ..f.clone()
                };
                self.recent_reclaims.push((None, undo));
            }
        }
        self.actions.push(ClientAction::Call {
            token,
            server,
            vers: f.vers,
            proc_,
            args,
        });
        self.in_flight.insert(token, f);
    }

    fn full(&self) -> bool {
        self.in_flight.len()
            + self.waiting.len()
            + self.held.len()
            + self.held_back.len()
            + self.shares.len()
            + self.share_later.len()
            >= self.cfg.max_entries
    }

    /// A local program's request. `req` must be unique per connection.
    pub fn request(&mut self, conn: ConnId, req: ReqId, op: ClientOp, lock: RemoteLock) {
        let changes = matches!(op, ClientOp::Lock { .. } | ClientOp::Unlock);
        let fresh = matches!(
            op,
            ClientOp::Lock { .. } | ClientOp::Test | ClientOp::Share { .. }
        );
        let sharing = matches!(op, ClientOp::Share { .. } | ClientOp::Unshare);
        let refuse = if self.full() {
            Some(Outcome::NoLocks)
        } else if (changes && self.unresolved_overlap(conn, &lock))
            || (sharing && self.share_unresolved(conn, &lock, op))
        {
            Some(Outcome::Busy)
        } else if (fresh && self.reclaiming(lock.server))
            || (matches!(op, ClientOp::Share { .. } | ClientOp::Lock { .. })
                && self
                    .announcing
                    .contains(&crate::hosts::name_key(&lock.server_name)))
        {
            // What the server answers in grace. Sent now, it would also
            // tell the server our recovery is over while reclaims are
            // still on their way, and its grace could end before them.
            Some(Outcome::Grace)
        } else {
            None
        };
        if let Some(outcome) = refuse {
            self.tell(conn, LocalEvent::Reply { req, outcome });
            return;
        }
        let op = match op {
            ClientOp::Test => Op::Test,
            ClientOp::Lock { .. } | ClientOp::Share { .. } if !self.touch(conn, &lock, op) => {
                self.tell(
                    conn,
                    LocalEvent::Reply {
                        req,
                        outcome: Outcome::NoLocks,
                    },
                );
                return;
            }
            ClientOp::Lock { .. } | ClientOp::Share { .. }
                if self.monitored.get(&lock.server_name) != Some(&true) =>
            {
                self.monitor(&lock.server_name);
                self.held_back.push((conn, req, op, lock));
                return;
            }
            ClientOp::Lock { wait } => Op::Lock { block: wait },
            ClientOp::Share { access, deny } => Op::Share {
                access,
                deny,
                reclaim: false,
            },
            ClientOp::Unshare => {
                self.shares
                    .retain(|(c, l, ..)| !(*c == conn && same_file(l, &lock)));
                Op::Unshare
            }
            ClientOp::Unlock => {
                self.forget_held(conn, &lock);
                // Not to be reclaimed any more either.
                self.reclaim_later = cut(std::mem::take(&mut self.reclaim_later), conn, &lock);
                Op::Unlock
            }
            ClientOp::Cancel => {
                let before = self.held_back.len();
                self.held_back.retain(|(c, _, o, l)| {
                    !(*c == conn && matches!(o, ClientOp::Lock { .. }) && same_range(l, &lock))
                });
                if self.held_back.len() < before {
                    // Never sent: nothing to cancel at the server.
                    let outcome = Outcome::Granted;
                    self.tell(conn, LocalEvent::Reply { req, outcome });
                    return;
                }
                let ended: Vec<(ConnId, ReqId)> = self
                    .waiting
                    .iter()
                    .filter(|(_, e)| e.conn == conn && same_range(&e.lock, &lock))
                    .map(|(&k, _)| k)
                    .collect();
                for k in ended {
                    self.waiting.remove(&k);
                    if self.maybe_granted.remove(&k) {
                        for l in self.not_held(conn, &lock) {
                            let undo = InFlight {
                                conn,
                                req: None,
                                op: Op::Unlock,
                                lock: l,
                                vers: 4,
                            };
                            self.linger_later(&undo);
                            self.cleanup_later.push(undo);
                        }
                    }
                }
                // A resend of the wait still in flight may come back
                // `blocked` or `granted` after this: it is undone then,
                // not taken for a new wait.
                for f in self.in_flight.values_mut() {
                    if f.conn == conn
                        && f.op == (Op::Lock { block: true })
                        && same_range(&f.lock, &lock)
                    {
                        f.req = None;
                    }
                }
                Op::Cancel
            }
        };
        self.send(InFlight {
            conn,
            req: Some(req),
            op,
            lock,
            vers: 4,
        });
    }

    /// Remembers that `conn` locks in `lock`'s file; false if it cannot
    /// (too many files, or too many connections remembered).
    fn touch(&mut self, conn: ConnId, lock: &RemoteLock, op: ClientOp) -> bool {
        let k = (lock.server, lock.server_name.clone(), lock.fh.clone());
        let map = if matches!(op, ClientOp::Share { .. }) {
            &mut self.touched_shares
        } else {
            &mut self.touched
        };
        if !map.contains_key(&conn) && map.len() >= self.cfg.max_entries {
            return false;
        }
        let files = map.entry(conn).or_default();
        files.contains(&k) || files.len() < TOUCHED_MAX && files.insert(k)
    }

    /// Whether `conn` has a share request on `lock`'s file not answered
    /// yet, or (for a SHARE) holds a share there already.
    fn share_unresolved(&self, conn: ConnId, lock: &RemoteLock, op: ClientOp) -> bool {
        let pending = self
            .in_flight
            .values()
            .chain(self.cleanup_later.iter())
            .any(|f| {
                f.conn == conn
                    && matches!(f.op, Op::Share { .. } | Op::Unshare)
                    && same_file(&f.lock, lock)
            })
            || self.held_back.iter().any(|(c, _, o, l)| {
                *c == conn && matches!(o, ClientOp::Share { .. }) && same_file(l, lock)
            });
        let held = self
            .shares
            .iter()
            .any(|(c, l, ..)| *c == conn && same_file(l, lock));
        pending || (matches!(op, ClientOp::Share { .. }) && held)
    }

    /// Sends a lingering UNLOCK or UNSHARE again, for what its owner does
    /// not hold, ask for or wait for now (a whole-file UNLOCK of a closed
    /// connection is all of that).
    fn linger_due(&mut self, f: InFlight) {
        let conn = f.conn;
        let (s, e) = span(&f.lock);
        let overlaps = |c: ConnId, l: &RemoteLock| {
            let (ls, le) = span(l);
            c == conn && same_file(l, &f.lock) && ls <= e && s <= le
        };
        // Shares and locks are independent: only the owner's share calls
        // on the file keep an UNSHARE back (seed 0x1c20b: a LOCK in flight
        // kept it back for good).
        let busy = if f.op == Op::Unshare {
            self.in_flight.values().any(|x| {
                matches!(x.op, Op::Share { .. } | Op::Unshare)
                    && x.conn == conn
                    && same_file(&x.lock, &f.lock)
            }) || self.held_back.iter().any(|(c, _, o, l)| {
                *c == conn && matches!(o, ClientOp::Share { .. }) && same_file(l, &f.lock)
            })
        } else {
            self.in_flight
                .values()
                .any(|x| x.op != Op::Test && overlaps(x.conn, &x.lock))
                || self.waiting.values().any(|w| overlaps(w.conn, &w.lock))
                || self.held_back.iter().any(|(c, _, _, l)| overlaps(*c, l))
        };
        match f.op {
            // Not now, but not never either: what it undoes may be a copy
            // of a reclaim granted by the server's next start, which only
            // this frees (seed 0x2ab5f: dropped while an UNLOCK of the
            // closed connection was in flight, the lock stayed for good).
            _ if busy => self.linger_later(&f),
            Op::Unlock => {
                for l in self.not_held(conn, &f.lock) {
                    self.send(InFlight {
                        lock: l,
                        ..f.clone()
                    });
                }
            }
            Op::Unshare => {
                let held = self
                    .shares
                    .iter()
                    .any(|(c, l, ..)| *c == conn && same_file(l, &f.lock));
                if !held {
                    self.send(f);
                }
            }
            _ => self.send(f),
        }
    }

    /// Queues `f` (an UNLOCK or UNSHARE undoing a call that got no answer)
    /// to be sent once more [`LINGER_MS`] from now: the call's datagram
    /// may still be in the network and take the lock after the first undo.
    fn linger_later(&mut self, f: &InFlight) {
        if self.linger.len() < self.cfg.max_entries {
            self.linger.push((
                None,
                InFlight {
                    req: None,
                    ..f.clone()
                },
            ));
        }
    }

    /// Whether reclaims to `server` are still under way (in flight, or to
    /// be sent again). Like Linux's lock manager, we send that server no
    /// new LOCK or TEST meanwhile: a server takes a host's first ordinary
    /// request as the end of its recovery.
    fn reclaiming(&self, server: IpAddr) -> bool {
        self.in_flight.values().any(|f| {
            f.lock.server == server && matches!(f.op, Op::Reclaim | Op::Share { reclaim: true, .. })
        }) || self.reclaim_later.iter().any(|e| e.lock.server == server)
            || self.share_later.iter().any(|f| f.lock.server == server)
    }

    /// Whether `conn` has a request on an overlapping range of the same
    /// file whose effect at the server is not settled yet: one waiting
    /// there, or a LOCK, UNLOCK or CANCEL not yet answered. The server
    /// may apply such a request before or after a new one, and POSIX
    /// results depend on the order (a grant replaces the owner's own
    /// overlapping locks; an unlock cuts a fresh grant), so a new LOCK or
    /// UNLOCK there would leave us unsure what the owner holds.
    fn unresolved_overlap(&self, conn: ConnId, lock: &RemoteLock) -> bool {
        let (s, e) = span(lock);
        let hits = |c: ConnId, l: &RemoteLock| {
            let (ls, le) = span(l);
            c == conn && l.server == lock.server && l.fh == lock.fh && ls <= e && s <= le
        };
        self.waiting.values().any(|w| hits(w.conn, &w.lock))
            || self.held_back.iter().any(|(c, _, _, l)| hits(*c, l))
            || self
                .in_flight
                .values()
                .chain(self.cleanup_later.iter())
                .any(|f| f.op != Op::Test && hits(f.conn, &f.lock))
    }

    /// Drops `lock`'s range from our record of what `conn` holds, splitting
    /// pieces as the server does on UNLOCK, so that the record mirrors the
    /// server's exactly (a reclaim must ask for no more than was held).
    fn forget_held(&mut self, conn: ConnId, lock: &RemoteLock) {
        self.held = cut(std::mem::take(&mut self.held), conn, lock);
    }

    /// Records that `conn` now holds `lock` (replacing what it held there
    /// in another mode, as POSIX does).
    fn add_held(&mut self, conn: ConnId, req: ReqId, lock: RemoteLock, now_ms: u64) {
        self.forget_held(conn, &lock);
        self.held.push(Entry {
            conn,
            req,
            lock,
            last_sent_ms: now_ms,
        });
    }

    /// The parts of `lock`'s range that `conn` does not hold: what a LOCK
    /// that may or may not have happened could have taken.
    fn not_held(&self, conn: ConnId, lock: &RemoteLock) -> Vec<RemoteLock> {
        let (mut s, e) = span(lock);
        // Held, or being reclaimed: the owner's either way.
        let reclaiming = self
            .in_flight
            .iter()
            .filter(|(t, f)| f.op == Op::Reclaim && !self.abandoned.contains(t))
            .map(|(_, f)| (f.conn, &f.lock));
        let mut mine: Vec<(u64, u64)> = self
            .held
            .iter()
            .chain(self.reclaim_later.iter())
            .map(|h| (h.conn, &h.lock))
            .chain(reclaiming)
            .filter(|(c, l)| *c == conn && l.server == lock.server && l.fh == lock.fh)
            .map(|(_, l)| span(l))
            .filter(|&(hs, he)| he >= s && hs <= e)
            .collect();
        mine.sort_unstable();
        let mut out = Vec::new();
        for (hs, he) in mine {
            if hs > s {
                out.push(with_span(lock, s, hs - 1));
            }
            if he >= e {
                return out;
            }
            s = s.max(he + 1);
        }
        out.push(with_span(lock, s, e));
        out
    }

    /// Unlocks, on behalf of the connections in `conns`, what they hold of
    /// `lock`'s range, and tells each holder its lock is gone (`latch
    /// unlock`: a user releasing a lock held by another of their own
    /// processes). Returns how many holders there were.
    pub fn unlock_for(&mut self, conns: &[ConnId], lock: &RemoteLock) -> usize {
        let end = |l: &RemoteLock| {
            if l.len == 0 {
                u64::MAX
            } else {
                l.offset.saturating_add(l.len - 1)
            }
        };
        let holders: Vec<ConnId> = self
            .held
            .iter()
            .filter(|e| {
                conns.contains(&e.conn)
                    && e.lock.server == lock.server
                    && e.lock.fh == lock.fh
                    && e.lock.offset <= end(lock)
                    && lock.offset <= end(&e.lock)
            })
            .map(|e| e.conn)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for &conn in &holders {
            self.forget_held(conn, lock);
            self.send(InFlight {
                conn,
                req: None,
                op: Op::Unlock,
                lock: lock.clone(),
                vers: 4,
            });
            let ev = LocalEvent::Lost {
                server: lock.server,
                fh: lock.fh.clone(),
                offset: lock.offset,
                len: lock.len,
            };
            self.tell(conn, ev);
        }
        holders.len()
    }

    /// The connection is gone: unlock what it holds, cancel what it waits
    /// for. Nobody is told.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.held_back.retain(|(c, ..)| *c != conn);
        self.share_later.retain(|f| f.conn != conn);
        self.shares.retain(|(c, ..)| *c != conn);
        for (server, server_name, fh) in self.touched_shares.remove(&conn).unwrap_or_default() {
            let f = InFlight {
                conn,
                req: None,
                op: Op::Unshare,
                lock: RemoteLock {
                    server,
                    server_name,
                    fh,
                    offset: 0,
                    len: 0,
                    exclusive: false,
                },
                vers: 4,
            };
            if self.linger.len() < self.cfg.max_entries {
                self.linger.push((None, f.clone()));
            }
            self.send(f);
        }
        for (server, server_name, fh) in self.touched.remove(&conn).unwrap_or_default() {
            let f = InFlight {
                conn,
                req: None,
                op: Op::Unlock,
                lock: RemoteLock {
                    server,
                    server_name,
                    fh,
                    offset: 0,
                    len: 0,
                    exclusive: false,
                },
                vers: 4,
            };
            if self.linger.len() < self.cfg.max_entries {
                self.linger.push((None, f.clone()));
            }
            self.send(f);
        }
        let held: Vec<Entry> = self
            .held
            .iter()
            .filter(|e| e.conn == conn)
            .cloned()
            .collect();
        self.held.retain(|e| e.conn != conn);
        let waiting: Vec<Entry> = self
            .waiting
            .values()
            .filter(|e| e.conn == conn)
            .cloned()
            .collect();
        self.waiting.retain(|_, e| e.conn != conn);
        for e in held {
            self.send(InFlight {
                conn,
                req: None,
                op: Op::Unlock,
                lock: e.lock,
                vers: 4,
            });
        }
        for e in waiting {
            self.send(InFlight {
                conn,
                req: None,
                op: Op::Cancel,
                lock: e.lock,
                vers: 4,
            });
        }
        // A reclaim to send again may have been granted already (its
        // answer was lost): unlocked, as the owner is gone.
        let (gone, kept) = std::mem::take(&mut self.reclaim_later)
            .into_iter()
            .partition(|e| e.conn == conn);
        self.reclaim_later = kept;
        for e in gone {
            self.send(InFlight {
                conn,
                req: None,
                op: Op::Unlock,
                lock: e.lock,
                vers: 4,
            });
        }
        // Answers to requests still in flight go nowhere, and what they
        // take is undone: a reclaim in flight is from now on a LOCK
        // nobody waits for.
        for f in self.in_flight.values_mut() {
            if f.conn == conn {
                f.req = None;
                match f.op {
                    Op::Reclaim => f.op = Op::Lock { block: false },
                    // Granted, it is undone.
                    Op::Share { access, deny, .. } => {
                        f.op = Op::Share {
                            access,
                            deny,
                            reclaim: false,
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The shell's report on call `token`.
    pub fn reply(&mut self, token: u64, result: Result<Vec<u8>, CallFailure>, now_ms: u64) {
        let Some(f) = self.in_flight.remove(&token) else {
            return;
        };
        if self.cfg.msg && result.as_ref().is_ok_and(Vec::is_empty) {
            // The _MSG call was taken; its answer comes as a _RES call.
            self.awaiting_res
                .insert(token, now_ms.saturating_add(RES_WAIT_MS));
            self.in_flight.insert(token, f);
            return;
        }
        self.awaiting_res.remove(&token);
        if self.abandoned.remove(&token) {
            // Told lost already: whatever the answer, nothing of it stays.
            return self.undo_abandoned(&f);
        }
        let crossed = self.crossed.remove(&token);
        if result.is_err() {
            self.granted_early.remove(&token);
        }
        let bytes = match result {
            Ok(b) => b,
            Err(CallFailure::Rpc(RpcError::ProgMismatch { .. } | RpcError::ProcUnavail)) => {
                if let Some(v) = fallback(f.vers) {
                    self.versions.insert(f.lock.server, v);
                    self.send(f);
                    return;
                }
                return self.failed(f, "the server refuses every NLM version we speak");
            }
            Err(CallFailure::Rpc(e)) => {
                return self.failed(f, &format!("the server refused the call: {e}"))
            }
            Err(CallFailure::Transport(e)) => return self.unanswered(f, &e, now_ms),
        };
        if matches!(f.op, Op::Share { .. } | Op::Unshare) {
            let Ok(r) = decode::<ShareRes>(&bytes, f.vers) else {
                return self.failed(f, "undecodable SHARE reply");
            };
            if crossed && r.stat == Stat::Granted {
                self.share_reply(f.clone(), r.stat);
                return self.reclaim_crossed(&f);
            }
            return self.share_reply(f, r.stat);
        }
        if f.op == Op::Test {
            let Ok(r) = decode::<TestRes>(&bytes, f.vers) else {
                return self.failed(f, "undecodable TEST reply");
            };
            let outcome = match r.stat {
                Stat::Granted => Outcome::Free,
                Stat::Denied => Outcome::Denied(r.holder),
                s => stat_outcome(s),
            };
            if let Some(req) = f.req {
                self.tell(f.conn, LocalEvent::Reply { req, outcome });
            }
            return;
        }
        let Ok(r) = decode::<Res>(&bytes, f.vers) else {
            return self.failed(f, "undecodable reply");
        };
        let early = self.granted_early.remove(&token);
        if let (false, Stat::Blocked, Some(req)) = (crossed, r.stat, f.req) {
            self.unconfirmed.remove(&(f.conn, req));
        }
        if crossed && matches!(r.stat, Stat::Granted | Stat::Blocked) {
            self.lock_reply(f.clone(), r.stat, early, now_ms);
            return self.reclaim_crossed(&f);
        }
        self.lock_reply(f, r.stat, early, now_ms);
    }

    /// Whether the request `f` was sent for holds its lock already (its
    /// GRANTED callback ended the wait `f` resends).
    fn held_by_request(&self, f: &InFlight) -> bool {
        f.req.is_some_and(|r| {
            self.held
                .iter()
                .any(|e| e.conn == f.conn && e.req == r && same_range(&e.lock, &f.lock))
        })
    }

    /// `f` was in flight when its server's reboot notice came, and its
    /// answer (`granted`, or `blocked`) may be the old start's: what we now
    /// hold by it is reclaimed from the new start, and a wait is asked for
    /// again at once.
    fn reclaim_crossed(&mut self, f: &InFlight) {
        match f.op {
            Op::Lock { .. } | Op::Reclaim => {
                self.reclaim_held(|c, l| c == f.conn && same_range(l, &f.lock));
                for w in self.waiting.values_mut() {
                    if w.conn == f.conn && same_range(&w.lock, &f.lock) {
                        w.last_sent_ms = 0;
                    }
                }
            }
            Op::Share { .. } => {
                self.reclaim_shares(|c, l| c == f.conn && same_file(l, &f.lock));
            }
            _ => {}
        }
    }

    fn share_reply(&mut self, f: InFlight, stat: Stat) {
        let Op::Share {
            access,
            deny,
            reclaim,
        } = f.op
        else {
            // UNSHARE: the share left our books when it was asked.
            if let Some(req) = f.req {
                let outcome = Outcome::Granted;
                self.tell(f.conn, LocalEvent::Reply { req, outcome });
            }
            return;
        };
        match (stat, f.req, reclaim) {
            // Its connection went while it was in flight: undone.
            (Stat::Granted, None, false) => self.send(InFlight {
                op: Op::Unshare,
                ..f
            }),
            (Stat::Granted, req, _) => {
                self.shares.push((f.conn, f.lock.clone(), access, deny));
                if let Some(req) = req {
                    let outcome = Outcome::Granted;
                    self.tell(f.conn, LocalEvent::Reply { req, outcome });
                }
            }
            (Stat::DeniedGracePeriod, _, true) => self.share_later.push(f),
            (_, _, true) => {
                let ev = LocalEvent::Lost {
                    server: f.lock.server,
                    fh: f.lock.fh.clone(),
                    offset: 0,
                    len: 0,
                };
                self.tell(f.conn, ev);
            }
            (s, Some(req), false) => {
                let outcome = match s {
                    Stat::Denied => Outcome::Denied(None),
                    s => stat_outcome(s),
                };
                self.tell(f.conn, LocalEvent::Reply { req, outcome });
            }
            (_, None, false) => {}
        }
    }

    fn lock_reply(&mut self, f: InFlight, stat: Stat, early: bool, now_ms: u64) {
        match (f.op, stat) {
            // The connection went while this was in flight: undo it.
            (Op::Lock { .. }, Stat::Granted | Stat::Blocked) if f.req.is_none() => {
                if stat == Stat::Blocked {
                    return self.send(InFlight {
                        op: Op::Cancel,
                        ..f
                    });
                }
                // Only what the owner does not hold besides (all of it,
                // once its connection is gone).
                for l in self.not_held(f.conn, &f.lock) {
                    self.send(InFlight {
                        op: Op::Unlock,
                        lock: l,
                        ..f.clone()
                    });
                }
            }
            (Op::Lock { .. } | Op::Reclaim, Stat::Granted) => self.grant_now(f, now_ms),
            // Its GRANTED came first: it holds the lock already.
            (Op::Lock { .. }, Stat::Blocked) if early => self.grant_now(f, now_ms),
            // A resend of a wait whose GRANTED (for the first LOCK's
            // cookie) came meanwhile: moot. Taken as a new wait, the
            // program's CANCEL of it undid the grant (seed 0x291a5).
            (Op::Lock { .. }, Stat::Blocked) if self.held_by_request(&f) => {}
            (Op::Lock { .. }, Stat::Blocked) => {
                if let Some(req) = f.req {
                    // A resent LOCK still blocked changes nothing.
                    if let std::collections::btree_map::Entry::Vacant(v) =
                        self.waiting.entry((f.conn, req))
                    {
                        v.insert(Entry {
                            conn: f.conn,
                            req,
                            lock: f.lock.clone(),
                            last_sent_ms: now_ms,
                        });
                        self.monitor(&f.lock.server_name);
                        self.tell(
                            f.conn,
                            LocalEvent::Reply {
                                req,
                                outcome: Outcome::Blocked,
                            },
                        );
                    }
                }
            }
            (Op::Reclaim, Stat::DeniedGracePeriod) => {
                // The server is not ready for reclaims yet: again next tick.
                self.reclaim_later.push(Entry {
                    conn: f.conn,
                    req: 0,
                    lock: f.lock,
                    last_sent_ms: 0,
                });
            }
            (Op::Reclaim, _) => {
                let ev = LocalEvent::Lost {
                    server: f.lock.server,
                    fh: f.lock.fh.clone(),
                    offset: f.lock.offset,
                    len: f.lock.len,
                };
                self.tell(f.conn, ev);
            }
            // A blocked request asked again: still waiting in grace; any
            // other answer ends the wait.
            (Op::Lock { block: true }, s)
                if f.req
                    .is_some_and(|r| self.waiting.contains_key(&(f.conn, r))) =>
            {
                let key = (f.conn, f.req.unwrap_or_default());
                if s == Stat::DeniedGracePeriod {
                    let soon = self.cfg.resend_blocked_ms.min(GRACE_RETRY_MS);
                    if let Some(w) = self.waiting.get_mut(&key) {
                        w.last_sent_ms = now_ms.saturating_sub(self.cfg.resend_blocked_ms - soon);
                    }
                } else if self.waiting.remove(&key).is_some() {
                    let outcome = stat_outcome(s);
                    self.tell(
                        f.conn,
                        LocalEvent::Refused {
                            req: key.1,
                            outcome,
                        },
                    );
                }
            }
            (_, s) => {
                if let Some(req) = f.req {
                    let outcome = if matches!(f.op, Op::Unlock | Op::Cancel) {
                        Outcome::Granted
                    } else {
                        stat_outcome(s)
                    };
                    self.tell(f.conn, LocalEvent::Reply { req, outcome });
                }
            }
        }
    }

    /// `f`'s lock is held now.
    fn grant_now(&mut self, f: InFlight, now_ms: u64) {
        // A resent LOCK answered granted: the GRANTED was lost.
        let was_waiting = f.req.and_then(|r| self.waiting.remove(&(f.conn, r)));
        self.monitor(&f.lock.server_name);
        self.add_held(f.conn, f.req.unwrap_or(0), f.lock.clone(), now_ms);
        if let (Some(req), false) = (f.req, f.op == Op::Reclaim) {
            let event = if was_waiting.is_some() {
                LocalEvent::Granted { req }
            } else {
                LocalEvent::Reply {
                    req,
                    outcome: Outcome::Granted,
                }
            };
            self.tell(f.conn, event);
        }
    }

    /// No answer: the call may or may not have happened on the server.
    /// Whatever could be left held there is undone, and undone again until
    /// the server hears it.
    fn unanswered(&mut self, f: InFlight, why: &str, now_ms: u64) {
        match f.op {
            Op::Unlock | Op::Cancel => {
                if self.cleanup_later.len() < self.cfg.max_entries {
                    self.cleanup_later.push(InFlight {
                        req: None,
                        ..f.clone()
                    });
                }
                // The program's lock is gone from our books either way.
                if let Some(req) = f.req {
                    self.tell(
                        f.conn,
                        LocalEvent::Reply {
                            req,
                            outcome: Outcome::Granted,
                        },
                    );
                }
            }
            // A resent blocked LOCK: it is still waiting; the next resend
            // will do.
            Op::Lock { .. }
                if f.req
                    .is_some_and(|r| self.waiting.contains_key(&(f.conn, r))) =>
            {
                if let Some(r) = f.req {
                    self.maybe_granted.insert((f.conn, r));
                }
            }
            // A resend of a wait its GRANTED callback has ended: moot (seed
            // 0x1dc13: its CANCEL undid the grant at the server, whose
            // GRANTED had not been acknowledged yet).
            Op::Lock { .. } if self.held_by_request(&f) => {}
            Op::Lock { block } => {
                let undo = InFlight {
                    op: Op::Unlock,
                    ..f.clone()
                };
                self.linger_later(&undo);
                // A CANCEL names the waiting request by its exact range
                // (one cut to what the owner does not hold would match no
                // waiter, which would be granted later: seed 0x1af06). The
                // server undoes a grant the client never acknowledged back
                // to what the owner held before.
                let granted = self.held.iter().any(|e| {
                    e.conn == f.conn
                        && same_range(&e.lock, &f.lock)
                        && e.lock.exclusive == f.lock.exclusive
                });
                if block && !granted {
                    self.taint(f.conn, &f.lock, now_ms);
                    self.cleanup_later.push(InFlight {
                        conn: f.conn,
                        req: None,
                        op: Op::Cancel,
                        lock: f.lock.clone(),
                        vers: 4,
                    });
                }
                for l in self.not_held(f.conn, &f.lock) {
                    self.cleanup_later.push(InFlight {
                        conn: f.conn,
                        req: None,
                        op: Op::Unlock,
                        lock: l,
                        vers: 4,
                    });
                }
                if let Some(req) = f.req {
                    self.waiting.remove(&(f.conn, req));
                }
                self.failed(f, why);
            }
            Op::Reclaim => self.reclaim_later.push(Entry {
                conn: f.conn,
                req: 0,
                lock: f.lock,
                last_sent_ms: 0,
            }),
            Op::Test => self.failed(f, why),
            Op::Share { reclaim: true, .. } => self.share_later.push(f),
            // It may have been taken: undone until the server hears it.
            Op::Share { .. } => {
                let undo = InFlight {
                    req: None,
                    op: Op::Unshare,
                    ..f.clone()
                };
                self.linger_later(&undo);
                if self.cleanup_later.len() < self.cfg.max_entries {
                    self.cleanup_later.push(undo);
                }
                self.failed(f, why);
            }
            Op::Unshare => {
                if self.cleanup_later.len() < self.cfg.max_entries {
                    self.cleanup_later.push(InFlight {
                        req: None,
                        ..f.clone()
                    });
                }
                if let Some(req) = f.req {
                    let outcome = Outcome::Granted;
                    self.tell(f.conn, LocalEvent::Reply { req, outcome });
                }
            }
        }
    }

    fn failed(&mut self, f: InFlight, why: &str) {
        if let Some(req) = f.req {
            self.tell(
                f.conn,
                LocalEvent::Reply {
                    req,
                    outcome: Outcome::Failed(why.to_string()),
                },
            );
        }
    }

    fn monitor(&mut self, name: &[u8]) {
        if !self.monitored.contains_key(name) {
            self.monitored.insert(name.to_vec(), false);
            self.actions.push(ClientAction::Monitor {
                name: name.to_vec(),
            });
        }
    }

    /// What became of [`ClientAction::Monitor`] for `name`: the LOCKs held
    /// back for it go out now, or (the monitor refused) fail with
    /// `NoLocks`; the next LOCK asks the monitor again.
    pub fn monitor_result(&mut self, name: &[u8], ok: bool) {
        if ok {
            self.monitored.insert(name.to_vec(), true);
        } else {
            self.monitored.remove(name);
        }
        let (mine, rest) = std::mem::take(&mut self.held_back)
            .into_iter()
            .partition(|(_, _, _, l)| l.server_name == name);
        self.held_back = rest;
        for (conn, req, op, lock) in mine {
            if ok {
                self.request(conn, req, op, lock);
            } else {
                let outcome = Outcome::NoLocks;
                self.tell(conn, LocalEvent::Reply { req, outcome });
            }
        }
    }

    /// GRANTEDs for this lock may belong to an unanswered LOCK for a while
    /// (see `stale_grants`).
    fn taint(&mut self, conn: ConnId, l: &RemoteLock, now_ms: u64) {
        let (svid, oh) = owner(&self.cfg, self.boot, self.nsm_state, conn);
        let key = (
            l.server,
            l.fh.clone(),
            svid,
            oh,
            l.offset,
            l.len,
            l.exclusive,
        );
        if self.stale_grants.len() >= self.cfg.max_entries && !self.stale_grants.contains_key(&key)
        {
            // Full: the one that lapses first goes.
            let first = self
                .stale_grants
                .iter()
                .min_by_key(|(_, &t)| t)
                .map(|(k, _)| k.clone());
            if let Some(k) = first {
                self.stale_grants.remove(&k);
            }
        }
        self.stale_grants
            .insert(key, now_ms.saturating_add(LINGER_MS));
    }

    /// A GRANTED callback from `from`: the answer for the server.
    pub fn granted(&mut self, from: IpAddr, a: &TestArgs) -> Stat {
        let cookie = (from, a.cookie.as_bytes().to_vec());
        // A copy of a GRANTED we refused: the server let that lock go.
        if self.refused.contains(&cookie) {
            return Stat::Denied;
        }
        if self.accepted.contains(&cookie) {
            return Stat::Granted;
        }
        let (cfg, boot, state) = (&self.cfg, self.boot, self.nsm_state);
        let is = |conn: ConnId, l: &RemoteLock| {
            let (svid, oh) = owner(cfg, boot, state, conn);
            l.server == from
                && l.fh == a.lock.fh.as_bytes()
                && oh == a.lock.oh.as_bytes()
                && svid == a.lock.svid
                && l.exclusive == a.exclusive
                && l.offset == a.lock.offset
                && l.len == a.lock.len
        };
        let stale = self.stale_grants.contains_key(&(
            from,
            a.lock.fh.as_bytes().to_vec(),
            a.lock.svid,
            a.lock.oh.as_bytes().to_vec(),
            a.lock.offset,
            a.lock.len,
            a.exclusive,
        ));
        let waiting = self
            .waiting
            .iter()
            .find(|(_, e)| is(e.conn, &e.lock))
            .map(|(k, _)| *k);
        if let Some(k) = waiting {
            if self.unconfirmed.contains(&k) {
                return Stat::DeniedGracePeriod;
            }
            // Maybe the unanswered request's: ask again now, and let the
            // server try this GRANTED later (if it is this wait's, the
            // server holds the lock for us and answers the LOCK `granted`).
            if stale {
                if let Some(e) = self.waiting.get_mut(&k) {
                    e.last_sent_ms = 0;
                }
                return Stat::DeniedGracePeriod;
            }
            if let Some(e) = self.waiting.remove(&k) {
                self.tell(e.conn, LocalEvent::Granted { req: e.req });
                let now = e.last_sent_ms;
                self.add_held(e.conn, e.req, e.lock, now);
            }
            self.accepted.insert(cookie);
            return Stat::Granted;
        }
        // Granted before its LOCK's `blocked` answer reached us.
        let early = self
            .in_flight
            .iter()
            .find(|(_, f)| {
                f.op == (Op::Lock { block: true }) && f.req.is_some() && is(f.conn, &f.lock)
            })
            .map(|(t, _)| *t);
        let unconfirmed = |t: u64| {
            self.in_flight
                .get(&t)
                .and_then(|f| f.req.map(|r| (f.conn, r)))
                .is_some_and(|k| self.unconfirmed.contains(&k))
        };
        if let Some(t) = early {
            if unconfirmed(t) || stale {
                return Stat::DeniedGracePeriod;
            }
            self.granted_early.insert(t);
            self.accepted.insert(cookie);
            return Stat::Granted;
        }
        // A repeat of a GRANTED for a lock we hold is acknowledged again;
        // anything else is refused, and remembered, so the server releases
        // it and no later copy is taken.
        if self.held.iter().any(|e| is(e.conn, &e.lock)) {
            return Stat::Granted;
        }
        self.refused.insert(cookie);
        Stat::Denied
    }

    /// The server named `name` rebooted (its SM_NOTIFY reached our status
    /// monitor): reclaim every lock held there, and ask again for what we
    /// wait for.
    pub fn server_rebooted(&mut self, name: &[u8], state: u32) {
        let key = crate::hosts::name_key(name);
        if self.server_states.len() < self.cfg.max_entries || self.server_states.contains_key(&key)
        {
            self.server_states.insert(key.clone(), state);
        }
        let matches = |l: &RemoteLock| crate::hosts::name_key(&l.server_name) == key;
        self.abandon_reclaims(&matches);
        self.reclaim_held(|_, l| matches(l));
        for (&k, e) in self.waiting.iter_mut() {
            if matches(&e.lock) {
                e.last_sent_ms = 0;
                self.unconfirmed.insert(k);
            }
        }
        // Whatever they would have undone is gone with the server's state.
        self.cleanup_later.retain(|f| !matches(&f.lock));
        for (&token, f) in &self.in_flight {
            let takes = matches!(f.op, Op::Lock { .. } | Op::Reclaim | Op::Share { .. });
            if takes && matches(&f.lock) && !self.abandoned.contains(&token) {
                self.crossed.insert(token);
            }
        }
        let (late, recent): (Vec<_>, Vec<_>) = std::mem::take(&mut self.recent_reclaims)
            .into_iter()
            .partition(|(_, f)| matches(&f.lock));
        self.recent_reclaims = recent;
        for (_, undo) in late {
            self.linger_later(&undo);
        }
        self.reclaim_shares(|_, l| matches(l));
    }

    /// Reclaims of the server's previous start that it never answered are
    /// lost, not reclaimed from the new one: that start may have ended its
    /// grace without them and given the range to someone else (seed
    /// 0x2b714: retried through a partition longer than the grace, a
    /// reclaim reached the next start and was granted there).
    fn abandon_reclaims(&mut self, matches: &impl Fn(&RemoteLock) -> bool) {
        let (gone, later): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.reclaim_later)
            .into_iter()
            .partition(|e| matches(&e.lock));
        self.reclaim_later = later;
        let (gone_sh, later_sh): (Vec<InFlight>, Vec<InFlight>) =
            std::mem::take(&mut self.share_later)
                .into_iter()
                .partition(|f| matches(&f.lock));
        self.share_later = later_sh;
        let flying: Vec<(u64, ConnId, RemoteLock, bool)> = self
            .in_flight
            .iter()
            .filter(|(t, f)| {
                matches(&f.lock)
                    && !self.abandoned.contains(t)
                    && matches!(f.op, Op::Reclaim | Op::Share { reclaim: true, .. })
            })
            .map(|(&t, f)| (t, f.conn, f.lock.clone(), f.op == Op::Reclaim))
            .collect();
        let mut lost: Vec<(ConnId, RemoteLock, bool)> = gone
            .into_iter()
            .map(|e| (e.conn, e.lock, true))
            .chain(gone_sh.into_iter().map(|f| (f.conn, f.lock, false)))
            .collect();
        for (token, conn, lock, is_lock) in flying {
            self.abandoned.insert(token);
            lost.push((conn, lock, is_lock));
        }
        for (conn, lock, is_lock) in lost {
            let (offset, len) = if is_lock {
                (lock.offset, lock.len)
            } else {
                (0, 0)
            };
            let ev = LocalEvent::Lost {
                server: lock.server,
                fh: lock.fh.clone(),
                offset,
                len,
            };
            self.tell(conn, ev);
        }
    }

    /// The answer to an abandoned reclaim came: undo what it may have taken
    /// (a copy arriving later is undone by the reclaims' linger).
    fn undo_abandoned(&mut self, f: &InFlight) {
        match f.op {
            Op::Reclaim => {
                for l in self.not_held(f.conn, &f.lock) {
                    self.send(InFlight {
                        conn: f.conn,
                        req: None,
                        op: Op::Unlock,
                        lock: l,
                        vers: 4,
                    });
                }
            }
            _ => {
                let held = self
                    .shares
                    .iter()
                    .any(|(c, l, ..)| *c == f.conn && same_file(l, &f.lock));
                if !held {
                    self.send(InFlight {
                        req: None,
                        op: Op::Unshare,
                        ..f.clone()
                    });
                }
            }
        }
    }

    /// Sends a reclaim for every held lock `pick(conn, lock)` selects; each
    /// is held again once the server grants it.
    fn reclaim_held(&mut self, pick: impl Fn(ConnId, &RemoteLock) -> bool) {
        let (mine, rest): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|e| pick(e.conn, &e.lock));
        self.held = rest;
        for e in mine {
            self.send(InFlight {
                conn: e.conn,
                req: None,
                op: Op::Reclaim,
                lock: e.lock,
                vers: 4,
            });
        }
    }

    /// The same for the shares `pick(conn, lock)` selects.
    fn reclaim_shares(&mut self, pick: impl Fn(ConnId, &RemoteLock) -> bool) {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.shares)
            .into_iter()
            .partition(|(c, l, ..)| pick(*c, l));
        self.shares = rest;
        for (conn, lock, access, deny) in mine {
            self.send(InFlight {
                conn,
                req: None,
                op: Op::Share {
                    access,
                    deny,
                    reclaim: true,
                },
                lock,
                vers: 4,
            });
        }
    }

    /// A `_RES` call from `from` (TEST_RES, LOCK_RES, CANCEL_RES or
    /// UNLOCK_RES, version `vers`): the answer to our `_MSG` call whose
    /// cookie it carries, taken as the synchronous reply would be. Answers
    /// to nothing we wait for (late, repeated, or forged) are ignored.
    pub fn msg_res(&mut self, from: IpAddr, proc_: u32, vers: u32, args: &[u8], now_ms: u64) {
        let cookie = if proc_ == TEST_RES {
            decode::<TestRes>(args, vers).map(|r| r.cookie)
        } else {
            decode::<Res>(args, vers).map(|r| r.cookie)
        };
        let Some(token) = cookie.ok().and_then(|c| token_of(self.boot, c.as_bytes())) else {
            return;
        };
        let expected = match self.in_flight.get(&token) {
            Some(f) => {
                f.lock.server == from
                    && f.vers == vers
                    && matches!(
                        (f.op, proc_),
                        (Op::Test, TEST_RES)
                            | (Op::Lock { .. } | Op::Reclaim, LOCK_RES)
                            | (Op::Cancel, CANCEL_RES)
                            | (Op::Unlock, UNLOCK_RES)
                    )
            }
            None => false,
        };
        if expected {
            self.reply(token, Ok(args.to_vec()), now_ms);
        }
    }

    /// Resends blocked LOCKs that are due (a lost GRANTED is recovered by
    /// the server answering `granted`), and retries reclaims the server was
    /// not ready for.
    pub fn tick(&mut self, now_ms: u64) {
        self.stale_grants.retain(|_, until| *until > now_ms);
        // _MSG calls whose _RES never came: no answer.
        let lapsed: Vec<u64> = self
            .awaiting_res
            .iter()
            .filter(|(_, &at)| at <= now_ms)
            .map(|(&t, _)| t)
            .collect();
        for t in lapsed {
            let failure = CallFailure::Transport("no _RES answer".into());
            self.reply(t, Err(failure), now_ms);
        }
        // Waits are asked again once the server's reclaims are done.
        let due: Vec<Entry> = self
            .waiting
            .values()
            .filter(|e| {
                now_ms.saturating_sub(e.last_sent_ms) >= self.cfg.resend_blocked_ms
                    || e.last_sent_ms == 0
            })
            .filter(|e| !self.reclaiming(e.lock.server))
            .cloned()
            .collect();
        for e in due {
            if let Some(w) = self.waiting.get_mut(&(e.conn, e.req)) {
                w.last_sent_ms = now_ms.max(1);
            }
            // Sent with the request number so a "granted" answer is routed.
            self.send(InFlight {
                conn: e.conn,
                req: Some(e.req),
                op: Op::Lock { block: true },
                lock: e.lock,
                vers: 4,
            });
        }
        for f in std::mem::take(&mut self.cleanup_later) {
            self.send(f);
        }
        let flying = &self.in_flight;
        self.abandoned.retain(|t| flying.contains_key(t));
        let waiting = &self.waiting;
        self.unconfirmed.retain(|k| waiting.contains_key(k));
        self.maybe_granted.retain(|k| waiting.contains_key(k));
        self.recent_reclaims = std::mem::take(&mut self.recent_reclaims)
            .into_iter()
            .map(|(at, f)| (at.unwrap_or(now_ms + LINGER_MS), f))
            .filter(|(at, _)| *at > now_ms)
            .map(|(at, f)| (Some(at), f))
            .collect();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.linger)
            .into_iter()
            .map(|(at, f)| (at.unwrap_or(now_ms + LINGER_MS), f))
            .partition(|(at, _)| *at <= now_ms);
        self.linger = later.into_iter().map(|(at, f)| (Some(at), f)).collect();
        for (_, f) in due {
            self.linger_due(f);
        }
        for f in std::mem::take(&mut self.share_later) {
            self.send(f);
        }
        for e in std::mem::take(&mut self.reclaim_later) {
            self.send(InFlight {
                conn: e.conn,
                req: None,
                op: Op::Reclaim,
                lock: e.lock,
                vers: 4,
            });
        }
    }
}

/// What a local program asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOp {
    Test,
    Lock {
        wait: bool,
    },
    Unlock,
    Cancel,
    /// A DOS share reservation on the whole file: `access` what we do,
    /// `deny` what others may not (each 0 none, 1 read, 2 write, 3 both).
    /// One per connection and file: unshare before asking another.
    Share {
        access: u32,
        deny: u32,
    },
    Unshare,
}

/// A lock's bytes as an inclusive span.
/// `entries` without `lock`'s range for `conn`, pieces split as the server
/// splits them on UNLOCK.
fn cut(entries: Vec<Entry>, conn: ConnId, lock: &RemoteLock) -> Vec<Entry> {
    let (us, ue) = span(lock);
    let mut kept = Vec::with_capacity(entries.len());
    for e in entries {
        let same = e.conn == conn && e.lock.server == lock.server && e.lock.fh == lock.fh;
        let (s, en) = span(&e.lock);
        if !same || en < us || ue < s {
            kept.push(e);
            continue;
        }
        if s < us {
            kept.push(Entry {
                lock: with_span(&e.lock, s, us - 1),
                ..e.clone()
            });
        }
        if ue < en {
            kept.push(Entry {
                lock: with_span(&e.lock, ue + 1, en),
                ..e.clone()
            });
        }
    }
    kept
}

fn span(l: &RemoteLock) -> (u64, u64) {
    let end = if l.len == 0 {
        u64::MAX
    } else {
        l.offset.saturating_add(l.len - 1)
    };
    (l.offset, end)
}

/// `l` narrowed to bytes `s..=e`.
fn with_span(l: &RemoteLock, s: u64, e: u64) -> RemoteLock {
    let len = if e == u64::MAX { 0 } else { e - s + 1 };
    RemoteLock {
        offset: s,
        len,
        ..l.clone()
    }
}

fn same_file(a: &RemoteLock, b: &RemoteLock) -> bool {
    a.server == b.server && a.fh == b.fh
}

fn same_range(a: &RemoteLock, b: &RemoteLock) -> bool {
    a.server == b.server && a.fh == b.fh && a.offset == b.offset && a.len == b.len
}

fn stat_outcome(s: Stat) -> Outcome {
    match s {
        Stat::Granted => Outcome::Granted,
        Stat::Blocked => Outcome::Blocked,
        Stat::Denied => Outcome::Denied(None),
        Stat::Deadlock => Outcome::Deadlock,
        Stat::DeniedGracePeriod => Outcome::Grace,
        Stat::DeniedNolocks => Outcome::NoLocks,
        s => Outcome::Failed(format!("the server answered {s:?}")),
    }
}
