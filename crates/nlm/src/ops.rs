//! The procedures: TEST, LOCK (and NM_LOCK), CANCEL, UNLOCK, SHARE,
//! UNSHARE, FREE_ALL, and the status monitor's reboot callback.

use crate::grants::BlockedInfo;
use crate::hosts::{name_key, name_key_ref};
use crate::proto::*;
use crate::server::{Action, NlmServer};
use latch_lock::{
    Error, FileKey, HostId, LockAnswer, LockRequest, Mode, Owner, Range, RequestId, Share,
    ShareAnswer, ShareBits, TestAnswer,
};
use latch_oncrpc::{CallContext, Outcome};
use std::net::IpAddr;

fn mode(exclusive: bool) -> Mode {
    if exclusive {
        Mode::Exclusive
    } else {
        Mode::Shared
    }
}

fn range(l: &Lock) -> Range {
    Range::from_offset_len(l.offset, l.len)
}

/// A held lock as NLM reports it.
pub(crate) fn holder(h: &latch_lock::Holder) -> Holder {
    Holder {
        exclusive: h.mode == Mode::Exclusive,
        svid: h.owner.svid,
        oh: Netobj::from_slice(&h.owner.handle).unwrap_or_default(),
        offset: h.range.start(),
        len: h.range.len(),
    }
}

impl NlmServer {
    fn stale(&self, fh: &Netobj) -> bool {
        self.fh_stale.as_ref().is_some_and(|f| f(fh.as_bytes()))
    }

    fn count(&mut self, stat: Stat) -> Stat {
        let s = &mut self.stats;
        match stat {
            Stat::Granted => s.granted += 1,
            Stat::Denied => s.denied += 1,
            Stat::Blocked => s.blocked += 1,
            Stat::Deadlock => s.deadlock += 1,
            Stat::DeniedNolocks => s.nolocks += 1,
            Stat::DeniedGracePeriod => s.grace_denied += 1,
            _ => {}
        }
        stat
    }

    pub(crate) fn test(&mut self, peer: IpAddr, a: TestArgs, now: u64) -> TestRes {
        let (stat, h) = self.test_inner(peer, &a, now);
        TestRes {
            cookie: a.cookie,
            stat: self.count(stat),
            holder: h,
        }
    }

    fn test_inner(&mut self, peer: IpAddr, a: &TestArgs, now: u64) -> (Stat, Option<Holder>) {
        if self.stale(&a.lock.fh) {
            return (Stat::StaleFh, None);
        }
        self.grace.note_request(&a.lock.caller_name, false, now);
        // TEST creates no state: an unknown host holds nothing, and its
        // owner is compared by value against the holders.
        let host = self
            .hosts
            .find(a.lock.caller_name.as_bytes(), peer)
            .unwrap_or(HostId(0));
        let owner = Owner::new(host, a.lock.svid, a.lock.oh.as_bytes());
        let file = FileKey::new(a.lock.fh.as_bytes());
        match self
            .engine
            .test(&file, &owner, range(&a.lock), mode(a.exclusive))
        {
            TestAnswer::Free => (Stat::Granted, None),
            TestAnswer::Conflict(h) => (Stat::Denied, Some(holder(&h))),
            TestAnswer::DeniedGrace => (Stat::DeniedGracePeriod, None),
        }
    }

    /// LOCK, NM_LOCK (`nm`: never blocks, no monitoring) and LOCK_MSG
    /// (`msg`: a later grant goes out as GRANTED_MSG by default).
    pub(crate) fn lock(
        &mut self,
        peer: IpAddr,
        a: LockArgs,
        vers: u32,
        nm: bool,
        msg: bool,
        now: u64,
    ) -> Res {
        let stat = self.lock_inner(peer, &a, vers, nm, msg, now);
        Res {
            cookie: a.cookie,
            stat: self.count(stat),
        }
    }

    fn lock_inner(
        &mut self,
        peer: IpAddr,
        a: &LockArgs,
        vers: u32,
        nm: bool,
        msg: bool,
        now: u64,
    ) -> Stat {
        if self.stale(&a.lock.fh) {
            return Stat::StaleFh;
        }
        let name = a.lock.caller_name.as_bytes();
        let Some((host, created)) = self.hosts.intern_new(name, peer, self.cfg.max_hosts, now)
        else {
            return Stat::DeniedNolocks;
        };
        let stat = self.lock_as(host, peer, a, vers, nm, msg, now);
        self.forget_if_new(host, created);
        stat
    }

    /// A host this request created but that holds nothing after it is not
    /// kept: refused requests with made-up names cannot fill the table.
    fn forget_if_new(&mut self, host: HostId, created: bool) {
        if created && self.engine.host_entries(host) == 0 && !self.grants.involves(host) {
            self.hosts.remove(host);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn lock_as(
        &mut self,
        host: HostId,
        peer: IpAddr,
        a: &LockArgs,
        vers: u32,
        nm: bool,
        msg: bool,
        now: u64,
    ) -> Stat {
        if !nm && self.check_reboot(host, a.state, now) {
            self.stats.stale_requests += 1;
            return Stat::Denied;
        }
        if a.reclaim && self.meant_for_an_earlier_start(&a.cookie) {
            return Stat::Denied;
        }
        self.grace.note_request(&a.lock.caller_name, a.reclaim, now);
        let owner = Owner::new(host, a.lock.svid, a.lock.oh.as_bytes());
        let file = FileKey::new(a.lock.fh.as_bytes());
        // What to give back if the host's name cannot be made durable.
        let durable = self.name_saved(host);
        let before = if durable {
            Vec::new()
        } else {
            self.holdings(&owner, &file, range(&a.lock))
        };
        let id = RequestId(self.next_request);
        let req = LockRequest {
            file: &file,
            owner: &owner,
            range: range(&a.lock),
            mode: mode(a.exclusive),
            block: a.block && !nm,
            reclaim: a.reclaim,
            id: Some(id),
        };
        let reply = match self.engine.lock(&req, now) {
            Ok(r) => r,
            Err(Error::NoLocks(_)) => return Stat::DeniedNolocks,
            Err(Error::BadRequestId(_)) => return Stat::DeniedNolocks,
        };
        let stat = match reply.answer {
            LockAnswer::Granted => Stat::Granted,
            LockAnswer::Blocked(bid) => {
                if bid == id {
                    self.next_request += 1;
                }
                let info = BlockedInfo {
                    host,
                    to: peer,
                    vers,
                    msg,
                    exclusive: a.exclusive,
                    lock: a.lock.clone(),
                    prior: self.holdings(&owner, &file, range(&a.lock)),
                };
                self.grants.add_blocked(bid, info);
                Stat::Blocked
            }
            LockAnswer::Denied(_) => Stat::Denied,
            LockAnswer::Deadlock => Stat::Deadlock,
            LockAnswer::DeniedGrace => Stat::DeniedGracePeriod,
        };
        self.age_lock(&reply.answer, now);
        if stat == Stat::Granted {
            self.note_acquired(&owner, &file, range(&a.lock), mode(a.exclusive));
        }
        self.refresh_prior(&owner, &file);
        self.deliver(reply.events, now);
        if matches!(stat, Stat::Granted | Stat::Blocked) && !durable && !self.save_name(host) {
            // A host gets state only once its name is on the durable list
            // (after a restart, grace waits for every name on it): undone.
            match reply.answer {
                LockAnswer::Blocked(bid) => {
                    self.grants.remove_blocked(&bid);
                    let r = self.engine.cancel(bid);
                    self.deliver(r.events, now);
                }
                _ => {
                    let info = BlockedInfo {
                        host,
                        to: peer,
                        vers,
                        msg,
                        exclusive: a.exclusive,
                        lock: a.lock.clone(),
                        prior: before,
                    };
                    self.release_grant(&info, now);
                }
            }
            return Stat::DeniedNolocks;
        }
        if matches!(stat, Stat::Granted | Stat::Blocked) {
            self.note_state(host, !nm, now);
        }
        stat
    }

    /// A LOCK carrying a newer NSM state than we knew means the client
    /// rebooted without telling us: its old locks go first. One carrying
    /// an older state was sent before a reboot we know of (a datagram
    /// delayed in the network, found by the simulator): it would give a
    /// lock to a process that no longer exists, so it is refused (`true`).
    ///
    /// Shares granted since the old state was last heard are kept: a SHARE
    /// carries no state, and a host whose previous start held nothing here
    /// (so had no reboot to announce to us) may have asked them after its
    /// restart, before this LOCK (seed 0x194f0). An older start's shares
    /// are freed by its reboot notice, which our client side lets reach a
    /// server before its first LOCK or SHARE there.
    fn check_reboot(&mut self, host: HostId, state: u32, now: u64) -> bool {
        let Some(h) = self.hosts.get_mut(host) else {
            return false;
        };
        let known = h.nsm_state;
        if state == 0 {
            return false;
        }
        if state == known {
            h.fresh_shares.clear();
            return false;
        }
        if known != 0 && state < known {
            return true;
        }
        h.nsm_state = state;
        let keep = std::mem::take(&mut h.fresh_shares);
        if known != 0 {
            self.stats.reboots_detected += 1;
            self.release_host_keeping(host, &keep, now);
        }
        false
    }

    /// A Latch client's reclaim names the start of ours whose reboot notice
    /// it answers ([`crate::client::reclaim_target`]); one meant for an
    /// earlier start is a copy late in the network (seed 0x2b714: meant
    /// for the previous start, whose grace had ended without it), or comes
    /// from a client that heard no notice since (seed 0x31626: it held
    /// nothing in the starts between, so no later start watched it, and
    /// it would retry for ever). It gets `denied`, for good: the lock it
    /// names is lost either way, as a Latch client that hears the newer
    /// notice tells its reclaims meant for an earlier start lost.
    fn meant_for_an_earlier_start(&mut self, cookie: &Netobj) -> bool {
        let target = crate::client::reclaim_target(cookie.as_bytes());
        // Older only: our status monitor may have announced a newer state
        // than this start knows (SM_SIMU_CRASH).
        let stale = target.is_some_and(|t| t < self.own_state);
        if stale {
            self.stats.stale_requests += 1;
        }
        stale
    }

    /// Whether `host`'s name is on the durable list of hosts holding state.
    fn name_saved(&self, host: HostId) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|h| self.saved.contains(&*name_key_ref(&h.name)))
    }

    /// Puts `host`'s name on the durable list of hosts holding state: a
    /// host may keep state only once it is there (after a restart, grace
    /// waits for every name on it), so a LOCK whose name cannot be saved
    /// is undone and refused with `denied_nolocks` (a SHARE is refused
    /// before it is tried). The list is trimmed to the hosts that hold
    /// state first when it has grown to the host limit.
    fn save_name(&mut self, host: HostId) -> bool {
        let Some(key) = self.hosts.get(host).map(|h| name_key(&h.name)) else {
            return false;
        };
        if self.saved.len() >= self.cfg.max_hosts {
            self.persist_hosts(0, false);
        }
        let mut names = self.saved.clone();
        names.insert(key);
        if self.store.save(&names).is_err() {
            self.stats.store_errors += 1;
            return false;
        }
        self.saved = names;
        true
    }

    /// The host now holds state: ask the monitor to watch it (once per
    /// host, off the request path). Its name is already durable: LOCK and
    /// SHARE make it so before they take anything.
    pub(crate) fn note_state(&mut self, host: HostId, monitor: bool, now: u64) {
        let Some(h) = self.hosts.get_mut(host) else {
            return;
        };
        h.held_ms = Some(now);
        if monitor && !h.monitored {
            h.monitored = true;
            let name = h.name.clone();
            self.push(Action::Monitor { name });
        }
    }

    pub(crate) fn cancel(&mut self, peer: IpAddr, a: CancArgs, now: u64) -> Res {
        let stat = self.cancel_inner(peer, &a, now);
        Res {
            cookie: a.cookie,
            stat: self.count(stat),
        }
    }

    /// Cancelling something we do not know answers `granted` (as Linux
    /// does): the request is not waiting, which is what the client wants.
    /// A request granted but not yet acknowledged is undone: the client
    /// gave up on it before it heard of the grant.
    fn cancel_inner(&mut self, peer: IpAddr, a: &CancArgs, now: u64) -> Stat {
        let Some(host) = self.hosts.find(a.lock.caller_name.as_bytes(), peer) else {
            return Stat::Granted;
        };
        let owner = Owner::new(host, a.lock.svid, a.lock.oh.as_bytes());
        let file = FileKey::new(a.lock.fh.as_bytes());
        let (r, m) = (range(&a.lock), mode(a.exclusive));
        if let Some(id) = self.engine.find_waiter(&file, &owner, r, m) {
            let reply = self.engine.cancel(id);
            self.grants.remove_blocked(&id);
            self.deliver(reply.events, now);
        } else if let Some(info) = self.grants.take_unacked(host, &a.lock, a.exclusive) {
            self.release_grant(&info, now);
        }
        Stat::Granted
    }

    pub(crate) fn unlock(&mut self, peer: IpAddr, a: UnlockArgs, now: u64) -> Res {
        let stat = self.unlock_inner(peer, &a, now);
        Res {
            cookie: a.cookie,
            stat: self.count(stat),
        }
    }

    /// Unlocking what is not held answers `granted`. Allowed during grace:
    /// letting go can only help the reclaimers.
    fn unlock_inner(&mut self, peer: IpAddr, a: &UnlockArgs, now: u64) -> Stat {
        if self.stale(&a.lock.fh) {
            return Stat::StaleFh;
        }
        let Some(host) = self.hosts.find(a.lock.caller_name.as_bytes(), peer) else {
            return Stat::Granted;
        };
        let owner = Owner::new(host, a.lock.svid, a.lock.oh.as_bytes());
        let file = FileKey::new(a.lock.fh.as_bytes());
        match self.engine.unlock(&file, &owner, range(&a.lock)) {
            Ok(reply) => {
                self.refresh_prior(&owner, &file);
                self.deliver(reply.events, now);
                Stat::Granted
            }
            // Splitting a lock needs one more entry than the host may have.
            Err(_) => Stat::DeniedNolocks,
        }
    }

    pub(crate) fn share(&mut self, peer: IpAddr, a: ShareArgs, now: u64) -> ShareRes {
        let stat = self.share_inner(peer, &a, now);
        ShareRes {
            cookie: a.cookie,
            stat: self.count(stat),
            sequence: 0,
        }
    }

    fn share_inner(&mut self, peer: IpAddr, a: &ShareArgs, now: u64) -> Stat {
        let s = &a.share;
        if self.stale(&s.fh) {
            return Stat::StaleFh;
        }
        let (Some(access), Some(deny)) =
            (ShareBits::from_wire(s.access), ShareBits::from_wire(s.mode))
        else {
            return Stat::Failed;
        };
        let created = self.hosts.find(s.caller_name.as_bytes(), peer).is_none();
        let Some(host) = self
            .hosts
            .intern(s.caller_name.as_bytes(), peer, self.cfg.max_hosts, now)
        else {
            return Stat::DeniedNolocks;
        };
        let stat = self.share_as(host, a, access, deny, now);
        self.forget_if_new(host, created);
        stat
    }

    fn share_as(
        &mut self,
        host: HostId,
        a: &ShareArgs,
        access: ShareBits,
        deny: ShareBits,
        now: u64,
    ) -> Stat {
        let s = &a.share;
        let state = latch_state_in(s.oh.as_bytes(), s.caller_name.as_bytes());
        if let Some(state) = state {
            if self.check_reboot(host, state, now) {
                self.stats.stale_requests += 1;
                return Stat::Denied;
            }
        }
        if a.reclaim && self.meant_for_an_earlier_start(&a.cookie) {
            return Stat::Denied;
        }
        self.grace.note_request(&s.caller_name, a.reclaim, now);
        if !self.name_saved(host) && !self.save_name(host) {
            return Stat::DeniedNolocks;
        }
        // Shares have no svid: the owner is the host and the owner handle.
        let owner = Owner::new(host, 0, s.oh.as_bytes());
        let file = FileKey::new(s.fh.as_bytes());
        let reply = match self
            .engine
            .share(&file, &owner, Share { access, deny }, a.reclaim, now)
        {
            Ok(r) => r,
            Err(_) => return Stat::DeniedNolocks,
        };
        self.deliver(reply.events, now);
        match reply.answer {
            ShareAnswer::Granted => {
                // One whose start we know is not in doubt.
                if let Some(h) = self.hosts.get_mut(host).filter(|_| state.is_none()) {
                    let mine = (file, owner);
                    if h.fresh_shares.len() < crate::hosts::FRESH_SHARES_MAX
                        && !h.fresh_shares.contains(&mine)
                    {
                        h.fresh_shares.push(mine);
                    }
                }
                self.note_state(host, true, now);
                Stat::Granted
            }
            ShareAnswer::Denied => Stat::Denied,
            ShareAnswer::DeniedGrace => Stat::DeniedGracePeriod,
        }
    }

    pub(crate) fn unshare(&mut self, peer: IpAddr, a: ShareArgs, now: u64) -> ShareRes {
        let s = &a.share;
        if let Some(host) = self.hosts.find(s.caller_name.as_bytes(), peer) {
            let owner = Owner::new(host, 0, s.oh.as_bytes());
            let reply = self.engine.unshare(&FileKey::new(s.fh.as_bytes()), &owner);
            self.deliver(reply.events, now);
        }
        ShareRes {
            cookie: a.cookie,
            stat: self.count(Stat::Granted),
            sequence: 0,
        }
    }

    /// FREE_ALL: the client's own lock manager says it lost everything.
    /// Only the host at the sender's address is affected.
    pub(crate) fn free_all(&mut self, peer: IpAddr, a: FreeAllArgs, now: u64) {
        let name = a.name.as_bytes();
        if let Some(host) = self.hosts.find(name, peer) {
            self.release_host(host, now);
        }
        self.grace.host_gone(name);
    }

    /// The status monitor's reboot callback (SM_NOTIFY relayed to us). Only
    /// a local status monitor may make it; it frees every host of that name.
    pub(crate) fn sm_notify(&mut self, ctx: &CallContext<'_>, s: SmStatus, now: u64) -> Outcome {
        if !ctx.is_local() {
            return Outcome::NoReply;
        }
        let name = s.mon_name.as_bytes();
        let late = s.priv_.0 == latch_nsm::proto::PRIV_LATE;
        for host in self.hosts.named(name) {
            // Its LOCKs already carried this state (or a newer one): that
            // reboot was handled then, and what it holds now is the new
            // incarnation's.
            let known = self.hosts.get(host).map_or(0, |h| h.nsm_state);
            if known != 0 && s.state != 0 && s.state <= known {
                continue;
            }
            self.stats.reboots_detected += 1;
            if late {
                self.release_older_starts(host, s.state, now);
            } else {
                self.release_host(host, now);
            }
            if let Some(h) = self.hosts.get_mut(host) {
                h.nsm_state = s.state;
                h.fresh_shares.clear();
            }
        }
        self.grace.host_gone(name);
        // If it is a server we hold locks on, reclaim them. A late notice
        // is about a host we held nothing on when it came (we watched it
        // only later), so nothing of ours there predates it.
        if !late {
            self.client.server_rebooted(name, s.state);
        }
        Outcome::Reply
    }

    /// A notice that came before we watched `host`, delivered late: the host
    /// got its state after the reboot, so part of it may be the new start's.
    /// What is known to be older goes: owners whose Latch owner handle
    /// names an older state, and, when the host's LOCKs told an older state
    /// than `state`, its other owners but for the shares granted since.
    fn release_older_starts(&mut self, host: HostId, state: u32, now: u64) {
        let Some(h) = self.hosts.get(host) else {
            return;
        };
        let (known, caller) = (h.nsm_state, h.name.clone());
        let keep = if known != 0 {
            h.fresh_shares.clone()
        } else {
            Vec::new()
        };
        let old = |oh: &[u8]| match latch_state_in(oh, &caller) {
            Some(s) => s < state,
            None => known != 0,
        };
        let reply = self
            .engine
            .release_host_where(host, &keep, |o| old(&o.handle));
        if self.engine.host_entries(host) == 0 {
            if let Some(h) = self.hosts.get_mut(host) {
                h.held_ms = None;
            }
        }
        self.age_host_released();
        self.grants.forget_owners(host, old);
        self.deliver(reply.events, now);
    }

    /// Everything of `host` goes; waiters it blocked are granted.
    pub(crate) fn release_host(&mut self, host: HostId, now: u64) {
        self.release_host_keeping(host, &[], now);
    }

    /// [`Self::release_host`] but for the shares `keep` names.
    fn release_host_keeping(&mut self, host: HostId, keep: &[(FileKey, Owner)], now: u64) {
        let reply = self.engine.release_host_keeping(host, keep);
        if let Some(h) = self.hosts.get_mut(host) {
            h.held_ms = None;
        }
        self.age_host_released();
        self.grants.forget_host(host);
        self.deliver(reply.events, now);
    }
}

/// The NSM state a Latch client writes at the end of its owner handles,
/// `<caller name>#<boot hex>-<conn>~<state hex>` (anything else: `None`).
/// A SHARE has no state field; with this one a SHARE sent before a reboot
/// we know of (a datagram delayed in the network, seed 0x188cb) is refused
/// as a stale LOCK is, and one sent after a reboot tells us of it.
pub(crate) fn latch_state_in(oh: &[u8], caller: &[u8]) -> Option<u32> {
    let rest = oh.strip_prefix(caller)?.strip_prefix(b"#")?;
    let at = rest.iter().rposition(|&b| b == b'~')?;
    let hex = &rest[at + 1..];
    if hex.is_empty() || hex.len() > 8 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let hex = std::str::from_utf8(hex).ok()?;
    u32::from_str_radix(hex, 16).ok().filter(|&s| s != 0)
}

#[cfg(test)]
mod tests {
    use super::latch_state_in;

    #[test]
    fn the_nsm_state_is_read_only_from_a_latch_owner_handle() {
        assert_eq!(latch_state_in(b"a#5-12~1f", b"a"), Some(0x1f));
        assert_eq!(latch_state_in(b"a#5-12~ffffffff", b"a"), Some(u32::MAX));
        for (oh, caller) in [
            (&b"a#5-12"[..], &b"a"[..]),
            (b"b#5-12~3", b"a"),
            (b"a5-12~3", b"a"),
            (b"a#5-12~", b"a"),
            (b"a#5-12~0", b"a"),
            (b"a#5-12~+3", b"a"),
            (b"a#5-12~123456789", b"a"),
            (b"a#5-12~3g", b"a"),
            (b"1234@client", b"client"),
        ] {
            assert_eq!(latch_state_in(oh, caller), None, "{oh:?}");
        }
    }
}
