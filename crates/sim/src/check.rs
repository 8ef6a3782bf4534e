//! The checkers, run after every step, and the liveness verdict.
//!
//! 1. No two conflicting holders, according to the server's engine.
//! 2. No program believes it holds a byte that the server has given to a
//!    conflicting owner. One window is allowed, and only one:
//!    **E1 (server restart):** the belief dates from an earlier incarnation
//!    of the server and the program's owner does not hold that byte in the
//!    current one. The server lost the lock when it crashed; the client
//!    learns it when its reclaim is refused (`Lost`), which may come after
//!    grace ended and another owner took the byte (a client partitioned
//!    from the server through the whole grace period cannot do better).
//!    The liveness phase then requires every such belief to be resolved.
//! 3. Every grant answers a request: a `Granted` event names a lock request
//!    of that connection, and every byte the server holds for an owner lies
//!    in a range that owner asked to lock.
//! 4. Once the server's lock manager has heard (from its status monitor)
//!    that a client rebooted, nothing of that client's earlier lives is
//!    held or waiting there.
//! 5. While the server is in grace after a restart, every byte it holds was
//!    held by the same owner before the crash (it came back by reclaim).

use crate::workload::BYTES;
use crate::world::{lk, World, SERVER};
use latch_lock::{FileKey, Holder, Mode, Owner, Share, ShareBits};
use std::collections::BTreeMap;

/// The connection number inside a client core's owner handle
/// (`<host name>#<boot>-<conn>`, then `~<NSM state>`).
pub fn owner_conn(o: &Owner) -> Option<u64> {
    let s = std::str::from_utf8(&o.handle).ok()?;
    let tail = s.rsplit_once('#')?.1.rsplit_once('-')?.1;
    tail.split('~').next()?.parse().ok()
}

fn file_idx(f: &FileKey) -> Option<usize> {
    std::str::from_utf8(&f.0)
        .ok()?
        .strip_prefix("file")?
        .parse()
        .ok()
}

struct Held {
    conn: u64,
    file: usize,
    mask: u64,
    mode: Mode,
}

fn holder_mask(h: &Holder) -> Option<u64> {
    let (s, e) = (h.range.start(), h.range.end());
    (e < BYTES).then(|| crate::workload::mask(s, e - s + 1))
}

/// What the server holds: (holders, waiters as (conn, file, range bits)),
/// or an explanation of what is malformed.
/// Holders, waiters (conn, file), and whether the server is in grace.
type View = (Vec<Held>, Vec<(u64, usize)>, bool);

fn server_view(w: &World) -> Option<Result<View, String>> {
    let s = w.server()?;
    let mut held = Vec::new();
    let mut waiting = Vec::new();
    for f in s.engine().files() {
        let Some(file) = file_idx(&f) else {
            return Some(Err(format!("the server knows a file nobody uses: {f:?}")));
        };
        for h in s.engine().locks(&f) {
            let (Some(conn), Some(mask)) = (owner_conn(&h.owner), holder_mask(&h)) else {
                return Some(Err(format!("a holder nobody asked for: {h:?}")));
            };
            held.push(Held {
                conn,
                file,
                mask,
                mode: h.mode,
            });
        }
        for b in s.engine().blocked_on(&f) {
            if let Some(conn) = owner_conn(&b.owner) {
                waiting.push((conn, file));
            }
        }
    }
    Some(Ok((held, waiting, s.in_grace())))
}

/// The server's holdings by (conn, file), every mode.
pub(crate) fn server_holdings(w: &World) -> BTreeMap<(u64, usize), u64> {
    let mut m = BTreeMap::new();
    if let Some(Ok((held, _, _))) = server_view(w) {
        for h in held {
            *m.entry((h.conn, h.file)).or_insert(0) |= h.mask;
        }
    }
    m
}

/// The server's share reservations: (conn, file, share).
fn server_shares(w: &World) -> Vec<(u64, usize, Share)> {
    let Some(s) = w.server() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for f in s.engine().files() {
        let Some(file) = file_idx(&f) else {
            continue;
        };
        for (o, sh) in s.engine().shares_on(&f) {
            out.push((owner_conn(&o).unwrap_or(0), file, sh));
        }
    }
    out
}

/// Share reservations: none of two owners conflict on the server, and
/// none conflicts with one a program believes it holds (granted or
/// reclaimed in this server incarnation).
fn share_checks(w: &World) -> Option<String> {
    let shares = server_shares(w);
    for (i, a) in shares.iter().enumerate() {
        for b in &shares[i + 1..] {
            if a.1 == b.1 && a.0 != b.0 && a.2.conflicts(b.2) {
                return Some(format!(
                    "checker 1: conn {} ({:?}) and conn {} ({:?}) hold conflicting shares of file{}",
                    a.0, a.2, b.0, b.2, a.1
                ));
            }
        }
    }
    let server_inc = w.server_inc();
    for (hi, host) in w.hosts.iter().enumerate().skip(1) {
        if host.live.is_none() {
            continue;
        }
        for p in &host.progs {
            for (file, b) in p.belief.iter().enumerate() {
                let Some((access, deny, epoch)) = b.share else {
                    continue;
                };
                let (Some(access), Some(deny)) =
                    (ShareBits::from_wire(access), ShareBits::from_wire(deny))
                else {
                    continue;
                };
                let mine = Share { access, deny };
                let clash = shares
                    .iter()
                    .find(|x| x.1 == file && x.0 != p.conn && x.2.conflicts(mine));
                if let (Some(x), true) = (clash, epoch == server_inc) {
                    return Some(format!(
                        "checker 2: host {hi} conn {} believes it holds share {mine:?} of file{file}, but the server gave conn {} the conflicting {:?}",
                        p.conn, x.0, x.2
                    ));
                }
            }
        }
    }
    None
}

pub(crate) fn safety(w: &mut World) {
    if let Some(e) = share_checks(w) {
        return w.fail(e);
    }
    let (held, waiting, grace) = match server_view(w) {
        None => return,
        Some(Err(e)) => return w.fail(format!("checker 3: {e}")),
        Some(Ok(v)) => v,
    };
    if let Some(e) = conflicts(&held) {
        return w.fail(format!("checker 1: {e}"));
    }
    for h in &held {
        let asked = w
            .requested
            .get(&h.conn)
            .and_then(|f| f.get(&h.file))
            .copied()
            .unwrap_or(0);
        if h.mask & !asked != 0 {
            return w.fail(format!(
                "checker 3: the server holds {:#x} of file{} for conn {}, which asked only for {asked:#x}",
                h.mask, h.file, h.conn
            ));
        }
        if grace {
            let before = w.before_crash.get(&(h.conn, h.file)).copied().unwrap_or(0);
            let bad = if w.lenient_reclaim {
                before == 0
            } else {
                h.mask & !before != 0
            };
            if bad {
                return w.fail(format!(
                    "checker 5: in grace the server holds {:#x} of file{} for conn {}, which held only {before:#x} before the crash",
                    h.mask, h.file, h.conn
                ));
            }
        }
    }
    let survivors = held
        .iter()
        .map(|h| (h.conn, h.file, "holds"))
        .chain(waiting.iter().map(|&(c, f)| (c, f, "has a waiter")));
    for (conn, file, what) in survivors {
        if let Some(&(host, inc)) = w.conns.get(&conn) {
            if inc < w.dead_below[host] {
                return w.fail(format!(
                    "checker 4: the server still {what} on file{file} for conn {conn} of host {host}'s incarnation {inc}, after hearing it rebooted (incarnation {} is up)",
                    w.dead_below[host]
                ));
            }
        }
    }
    if let Some(e) = beliefs(w, &held) {
        w.fail(format!("checker 2: {e}"));
    }
}

fn conflicts(held: &[Held]) -> Option<String> {
    for (i, a) in held.iter().enumerate() {
        for b in &held[i + 1..] {
            let clash = a.file == b.file
                && a.conn != b.conn
                && a.mask & b.mask != 0
                && a.mode.conflicts(b.mode);
            if clash {
                return Some(format!(
                    "conn {} ({:?} {:#x}) and conn {} ({:?} {:#x}) both hold file{}",
                    a.conn, a.mode, a.mask, b.conn, b.mode, b.mask, a.file
                ));
            }
        }
    }
    None
}

fn beliefs(w: &World, held: &[Held]) -> Option<String> {
    let server_inc = w.server_inc();
    for (hi, host) in w.hosts.iter().enumerate().skip(1) {
        if host.live.is_none() {
            continue;
        }
        for p in &host.progs {
            for (file, b) in p.belief.iter().enumerate() {
                if b.held() == 0 {
                    continue;
                }
                let own: u64 = held
                    .iter()
                    .filter(|x| x.conn == p.conn && x.file == file)
                    .fold(0, |m, x| m | x.mask);
                for x in held.iter().filter(|x| x.file == file && x.conn != p.conn) {
                    let clash = if x.mode == Mode::Exclusive {
                        b.held() & x.mask
                    } else {
                        b.excl & x.mask
                    };
                    for bit in 0..BYTES {
                        if clash & (1 << bit) == 0 {
                            continue;
                        }
                        let e1 = b.epoch[bit as usize] < server_inc && own & (1 << bit) == 0;
                        if !e1 {
                            return Some(format!(
                                "host {hi} conn {} believes it holds byte {bit} of file{file} ({}), but the server gave it to conn {} ({:?}); the server holds {own:#x} of it for the believer",
                                p.conn,
                                if b.excl & (1 << bit) != 0 { "excl" } else { "shared" },
                                x.conn,
                                x.mode
                            ));
                        }
                    }
                }
            }
        }
    }
    None
}

/// Everything resolved: no program waits or holds or has a request out,
/// no client core holds or waits, the server holds nothing and has no
/// waiter and no unacknowledged grant.
pub(crate) fn quiescent(w: &World) -> bool {
    leftover(w).is_none()
}

fn leftover(w: &World) -> Option<String> {
    for (hi, host) in w.hosts.iter().enumerate() {
        let Some(l) = host.live.as_ref() else {
            return Some(format!("host {hi} is down"));
        };
        for p in &host.progs {
            if let Some(r) = p.outstanding {
                return Some(format!(
                    "host {hi} conn {} still waits for the answer to request {r}",
                    p.conn
                ));
            }
            if let Some((r, since)) = p.blocked.iter().next() {
                return Some(format!(
                    "host {hi} conn {} has been blocked on request {r} since t={since}ms",
                    p.conn
                ));
            }
            if let Some((f, b)) = p.belief.iter().enumerate().find(|(_, b)| b.share.is_some()) {
                return Some(format!(
                    "host {hi} conn {} still believes it holds share {:?} of file{f}",
                    p.conn, b.share
                ));
            }
            if let Some((f, b)) = p.belief.iter().enumerate().find(|(_, b)| b.held() != 0) {
                return Some(format!(
                    "host {hi} conn {} still believes it holds {:#x} of file{f}",
                    p.conn,
                    b.held()
                ));
            }
        }
        if hi != SERVER {
            let n = lk(&l.nlm);
            if let Some((conn, lock)) = n.client.held().next() {
                return Some(format!(
                    "host {hi}'s client core still holds {:?} [{}, +{}) for conn {conn}",
                    String::from_utf8_lossy(&lock.fh),
                    lock.offset,
                    lock.len
                ));
            }
            if n.client.waiting_len() > 0 {
                return Some(format!(
                    "host {hi}'s client core still waits for {} locks",
                    n.client.waiting_len()
                ));
            }
        }
    }
    // (Before the server's lock is taken below: this takes it too.)
    if let Some((conn, file, sh)) = server_shares(w).first() {
        return Some(format!(
            "the server still holds share {sh:?} of file{file} for conn {conn}, which nobody believes held"
        ));
    }
    let s = w.server()?;
    for f in s.engine().files() {
        if let Some(h) = s.engine().locks(&f).first() {
            let conn = owner_conn(&h.owner).unwrap_or(0);
            let who = w.conns.get(&conn).copied();
            return Some(format!(
                "the server still holds {:?} {:?} of {:?} for conn {conn} (host, incarnation {who:?}), which nobody believes held",
                h.range,
                h.mode,
                String::from_utf8_lossy(&f.0)
            ));
        }
        if let Some(b) = s.engine().blocked_on(&f).first() {
            return Some(format!(
                "the server still has a waiter {:?} of {:?} for {:?}",
                b.range,
                String::from_utf8_lossy(&f.0),
                String::from_utf8_lossy(&b.owner.handle)
            ));
        }
    }
    if s.pending_grants() > 0 {
        return Some(format!(
            "the server has {} unacknowledged grants",
            s.pending_grants()
        ));
    }
    None
}

/// The liveness verdict at the end of the run.
pub(crate) fn liveness(w: &World) -> Option<String> {
    leftover(w).map(|e| format!("liveness: {e}"))
}

/// The server's engine state, a line per held range and per waiter, for
/// the trace of a failing seed.
pub(crate) fn server_dump(w: &World) -> Vec<String> {
    let Some(s) = w.server() else {
        return vec!["server down".into()];
    };
    let mut out = Vec::new();
    for f in s.engine().files() {
        let name = String::from_utf8_lossy(&f.0).into_owned();
        for h in s.engine().locks(&f) {
            out.push(format!(
                "  server holds {name} [{}, {}] {:?} for conn {:?}",
                h.range.start(),
                h.range.end(),
                h.mode,
                owner_conn(&h.owner)
            ));
        }
        for b in s.engine().blocked_on(&f) {
            out.push(format!(
                "  server queues {name} [{}, {}] {:?} for conn {:?} ({:?})",
                b.range.start(),
                b.range.end(),
                b.mode,
                owner_conn(&b.owner),
                b.id
            ));
        }
    }
    out
}
