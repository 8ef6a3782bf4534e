//! Local programs on the client hosts, talking to their host's client core
//! (`NlmServer.client`) as latchd's local connections do. Each program is
//! one connection (one lock owner) and keeps what it was told: the bytes it
//! believes it holds, which the checkers compare with the server.

use crate::rng::Rng;
use crate::world::{lk, World};
use latch_nlm::client::{ClientOp, LocalEvent, Outcome, RemoteLock};
use std::collections::BTreeMap;

/// Every range lies in `0..BYTES` of its file, so a set of bytes is a u64.
pub const BYTES: u64 = 64;

pub fn mask(off: u64, len: u64) -> u64 {
    let m = if len >= 64 {
        u64::MAX
    } else {
        (1u64 << len) - 1
    };
    m << off
}

pub fn fh(file: usize) -> Vec<u8> {
    format!("file{file}").into_bytes()
}

#[derive(Debug, Clone, Copy)]
pub struct Req {
    pub op: ClientOp,
    pub file: usize,
    pub off: u64,
    pub len: u64,
    pub excl: bool,
}

/// What a program believes it holds on one file.
#[derive(Debug, Clone)]
pub struct Belief {
    pub excl: u64,
    pub shared: u64,
    /// The server incarnation in which each byte was granted.
    pub epoch: [u32; 64],
    /// A share reservation held: (access, deny, server incarnation).
    pub share: Option<(u32, u32, u32)>,
}

impl Default for Belief {
    fn default() -> Self {
        Belief {
            excl: 0,
            shared: 0,
            epoch: [0; 64],
            share: None,
        }
    }
}

impl Belief {
    pub fn held(&self) -> u64 {
        self.excl | self.shared
    }
}

#[derive(Debug, Clone, Default)]
pub struct Prog {
    pub conn: u64,
    next_req: u64,
    pub outstanding: Option<u64>,
    reqs: BTreeMap<u64, Req>,
    /// Blocked lock requests, since when.
    pub blocked: BTreeMap<u64, u64>,
    pub belief: Vec<Belief>,
    granted: Vec<Req>,
    /// What each unanswered UNLOCK or LOCK gave up of the belief at once
    /// (file, excl, shared before): a `Busy` refusal gives it back.
    gave_up: BTreeMap<u64, (usize, u64, u64)>,
    /// The share each unanswered UNSHARE gave up: a `Busy` refusal gives
    /// it back.
    unshared: BTreeMap<u64, (usize, (u32, u32, u32))>,
}

/// Gives program `p` of host `h` a fresh connection.
pub(crate) fn new_conn(w: &mut World, h: usize, p: usize) {
    let conn = w.next_conn;
    w.next_conn += 1;
    w.conns.insert(conn, (h, w.hosts[h].inc));
    w.hosts[h].progs[p] = Prog {
        conn,
        next_req: 1,
        belief: vec![Belief::default(); w.nfiles],
        ..Prog::default()
    };
}

fn random_range(rng: &mut Rng) -> (u64, u64) {
    let len = rng.range(1, 12);
    let off = rng.below(BYTES - len + 1);
    (off, len)
}

/// One decision of program `p` on host `h`; returns when to decide again.
pub(crate) fn step(w: &mut World, h: usize, p: usize) -> u64 {
    let prog = &w.hosts[h].progs[p];
    if prog.outstanding.is_some() {
        return 200;
    }
    if w.healed {
        return drain(w, h, p);
    }
    let nfiles = w.nfiles as u64;
    let r = w.rng.below(100);
    let file = w.rng.below(nfiles) as usize;
    let (off, len) = random_range(&mut w.rng);
    let excl = w.rng.chance(0.6);
    let prog = &w.hosts[h].progs[p];
    let blocked: Vec<u64> = prog.blocked.keys().copied().collect();
    let granted = prog.granted.clone();
    match r {
        0..=39 => {
            let wait = w.rng.chance(0.5);
            request(
                w,
                h,
                p,
                Req {
                    op: ClientOp::Lock { wait },
                    file,
                    off,
                    len,
                    excl,
                },
            );
        }
        40..=64 => {
            let spec = match w.rng.pick(&granted) {
                Some(g) if w.rng.chance(0.7) => Req {
                    op: ClientOp::Unlock,
                    ..*g
                },
                _ => Req {
                    op: ClientOp::Unlock,
                    file,
                    off,
                    len,
                    excl,
                },
            };
            request(w, h, p, spec);
        }
        65..=74 => request(
            w,
            h,
            p,
            Req {
                op: ClientOp::Test,
                file,
                off,
                len,
                excl,
            },
        ),
        75..=84 => {
            let Some(&req) = w.rng.pick(&blocked) else {
                return w.rng.range(50, 3_000);
            };
            let spec = w.hosts[h].progs[p].reqs.get(&req).copied();
            if let Some(s) = spec {
                request(
                    w,
                    h,
                    p,
                    Req {
                        op: ClientOp::Cancel,
                        ..s
                    },
                );
            }
        }
        85..=87 => disconnect(w, h, p),
        88..=93 => {
            let held = w.hosts[h].progs[p]
                .belief
                .get(file)
                .is_some_and(|b| b.share.is_some());
            let op = if held {
                ClientOp::Unshare
            } else {
                let access = w.rng.range(1, 3) as u32;
                let deny = w.rng.below(4) as u32;
                ClientOp::Share { access, deny }
            };
            request(
                w,
                h,
                p,
                Req {
                    op,
                    file,
                    off: 0,
                    len: 0,
                    excl,
                },
            );
        }
        _ => {}
    }
    w.rng.range(50, 3_000)
}

/// After the faults heal: wait for what is blocked, then let go of
/// everything, one file at a time.
fn drain(w: &mut World, h: usize, p: usize) -> u64 {
    let prog = &w.hosts[h].progs[p];
    if !prog.blocked.is_empty() {
        return 500;
    }
    if let Some(file) = prog.belief.iter().position(|b| b.share.is_some()) {
        let req = Req {
            op: ClientOp::Unshare,
            file,
            off: 0,
            len: 0,
            excl: false,
        };
        request(w, h, p, req);
        return w.rng.range(10, 1_000);
    }
    let file = prog.belief.iter().position(|b| b.held() != 0);
    if let Some(file) = file {
        let req = Req {
            op: ClientOp::Unlock,
            file,
            off: 0,
            len: BYTES,
            excl: true,
        };
        request(w, h, p, req);
        return w.rng.range(10, 1_000);
    }
    2_000
}

fn disconnect(w: &mut World, h: usize, p: usize) {
    let conn = w.hosts[h].progs[p].conn;
    w.log(format!("host {h} conn {conn} disconnects"));
    let now = w.instant();
    if let Some(l) = w.hosts[h].live.as_ref() {
        lk(&l.nlm).local_disconnect(conn, now);
    }
    new_conn(w, h, p);
}

fn request(w: &mut World, h: usize, p: usize, r: Req) {
    let server = w.server_ip();
    let prog = &mut w.hosts[h].progs[p];
    let (conn, req) = (prog.conn, prog.next_req);
    prog.next_req += 1;
    prog.outstanding = Some(req);
    prog.reqs.insert(req, r);
    let m = mask(r.off, r.len);
    if let (ClientOp::Unlock | ClientOp::Lock { .. }, Some(b)) = (r.op, prog.belief.get(r.file)) {
        prog.gave_up.insert(req, (r.file, b.excl & m, b.shared & m));
    }
    match r.op {
        // Once it asks to unlock, the program no longer relies on the lock.
        ClientOp::Unlock => {
            if let Some(b) = prog.belief.get_mut(r.file) {
                b.excl &= !m;
                b.shared &= !m;
            }
        }
        // The client core drops every wait on the same range.
        ClientOp::Cancel => {
            let same: Vec<u64> = prog
                .blocked
                .keys()
                .filter(|q| {
                    prog.reqs
                        .get(q)
                        .is_some_and(|s| (s.file, s.off, s.len) == (r.file, r.off, r.len))
                })
                .copied()
                .collect();
            for q in same {
                prog.blocked.remove(&q);
            }
        }
        ClientOp::Lock { .. } => {
            // Asking for a shared lock over its own exclusive one is asking
            // to downgrade: the server may do it (and wake others) before
            // the answer arrives, so the program stops relying on the
            // exclusivity now.
            if let (false, Some(b)) = (r.excl, prog.belief.get_mut(r.file)) {
                b.shared |= b.excl & m;
                b.excl &= !m;
            }
            *w.requested
                .entry(conn)
                .or_default()
                .entry(r.file)
                .or_default() |= m;
        }
        ClientOp::Test | ClientOp::Share { .. } => {}
        // Once it asks to unshare, the program no longer relies on it.
        ClientOp::Unshare => {
            if let Some(old) = prog.belief.get_mut(r.file).and_then(|b| b.share.take()) {
                prog.unshared.insert(req, (r.file, old));
            }
        }
    }
    w.log(format!(
        "host {h} conn {conn} req {req}: {:?} file{} [{}, +{}) {}",
        r.op,
        r.file,
        r.off,
        r.len,
        if r.excl { "excl" } else { "shared" }
    ));
    let lock = RemoteLock {
        server,
        server_name: server.to_string().into_bytes(),
        fh: fh(r.file),
        offset: r.off,
        len: r.len,
        exclusive: r.excl,
    };
    if let Some(l) = w.hosts[h].live.as_ref() {
        lk(&l.nlm).client.request(conn, req, r.op, lock);
    }
}

/// What the client core tells a program.
pub(crate) fn on_event(w: &mut World, h: usize, conn: u64, ev: LocalEvent) {
    let Some(p) = w.hosts[h].progs.iter().position(|p| p.conn == conn) else {
        w.log(format!("host {h} conn {conn} (gone) told {ev:?}"));
        return;
    };
    w.log(format!("host {h} conn {conn} told {ev:?}"));
    match ev {
        LocalEvent::Reply { req, outcome } => {
            let prog = &mut w.hosts[h].progs[p];
            if prog.outstanding == Some(req) {
                prog.outstanding = None;
            }
            let gave_up = prog.gave_up.remove(&req);
            if let (Outcome::Busy, Some((file, old))) = (&outcome, prog.unshared.remove(&req)) {
                if let Some(b) = prog.belief.get_mut(file) {
                    b.share = Some(old);
                }
            }
            if let (Outcome::Busy, Some((file, excl, shared))) = (&outcome, gave_up) {
                // Refused without being sent: what the program held, it
                // still holds.
                w.counts.busy += 1;
                if let Some(b) = w.hosts[h].progs[p].belief.get_mut(file) {
                    let m = excl | shared;
                    b.excl = (b.excl & !m) | excl;
                    b.shared = (b.shared & !m) | shared;
                }
            }
            let prog = &mut w.hosts[h].progs[p];
            let Some(spec) = prog.reqs.get(&req).copied() else {
                w.fail(format!(
                    "host {h} conn {conn}: a reply to request {req}, never made"
                ));
                return;
            };
            match (spec.op, outcome) {
                (ClientOp::Lock { .. }, Outcome::Granted) => grant(w, h, p, req, spec),
                (ClientOp::Share { access, deny }, Outcome::Granted) => {
                    w.counts.shares += 1;
                    let epoch = w.server_inc();
                    if let Some(b) = w.hosts[h].progs[p].belief.get_mut(spec.file) {
                        b.share = Some((access, deny, epoch));
                    }
                }
                (ClientOp::Share { .. }, Outcome::Busy) => {}
                (ClientOp::Lock { .. }, Outcome::Blocked) => {
                    w.counts.blocked += 1;
                    let now = w.now;
                    w.hosts[h].progs[p].blocked.insert(req, now);
                }
                _ => {}
            }
        }
        LocalEvent::Granted { req } => {
            let spec = w.hosts[h].progs[p].reqs.get(&req).copied();
            match spec {
                Some(s) if matches!(s.op, ClientOp::Lock { .. }) => grant(w, h, p, req, s),
                _ => w.fail(format!(
                    "host {h} conn {conn}: granted request {req}, which asked for no lock"
                )),
            }
        }
        LocalEvent::Refused { req, .. } => {
            if w.hosts[h].progs[p].blocked.remove(&req).is_none() {
                w.fail(format!(
                    "host {h} conn {conn}: refused request {req}, which was not blocked"
                ));
            }
        }
        LocalEvent::Lost {
            fh: f, offset, len, ..
        } => {
            w.counts.reclaim_lost += 1;
            let file = (0..w.nfiles).find(|i| fh(*i) == f);
            if let Some(b) = file.and_then(|i| w.hosts[h].progs[p].belief.get_mut(i)) {
                // A share is lost whole (the workload's ranges are never
                // empty, and a share has none).
                if len == 0 {
                    b.share = None;
                }
                let m = mask(offset, len);
                b.excl &= !m;
                b.shared &= !m;
            }
        }
        LocalEvent::LeaseBreak { .. } | LocalEvent::LeaseRevoked { .. } => {}
    }
}

fn grant(w: &mut World, h: usize, p: usize, req: u64, r: Req) {
    w.counts.grants += 1;
    let epoch = w.server_inc();
    let prog = &mut w.hosts[h].progs[p];
    prog.blocked.remove(&req);
    prog.granted.push(r);
    if prog.granted.len() > 16 {
        prog.granted.remove(0);
    }
    let m = mask(r.off, r.len);
    if let Some(b) = prog.belief.get_mut(r.file) {
        b.excl &= !m;
        b.shared &= !m;
        if r.excl {
            b.excl |= m;
        } else {
            b.shared |= m;
        }
        for i in r.off..r.off + r.len {
            b.epoch[i as usize] = epoch;
        }
    }
}
