//! The grace period after a restart: only reclaims are accepted, until
//! every host that held locks before has reclaimed (reclaimed, then quiet
//! for a moment), freed its locks, or been reported rebooted; or until the
//! time runs out.
//!
//! An ordinary request does not end a host's recovery: it may be a
//! retransmission of a call made before the crash, sent before the host
//! learnt of the restart and reclaimed anything (found by the simulator:
//! grace ended before a late-notified host's reclaims, and the lock came
//! back only in the next grace, which had to refuse its rightful holder).

use crate::hosts::name_key;
use latch_xdr::XdrString;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub(crate) struct Grace {
    active: bool,
    ends_ms: u64,
    /// No early end before this.
    min_ms: u64,
    settle_ms: u64,
    /// Host name -> the time of its last reclaim, if any.
    waiting: BTreeMap<Vec<u8>, Option<u64>>,
}

impl Grace {
    /// After a restart, grace waits for `hosts`, and lasts `min_ms` at
    /// least even with none; the first start has none.
    pub fn start(
        hosts: &BTreeSet<Vec<u8>>,
        restart: bool,
        grace_ms: u64,
        min_ms: u64,
        settle_ms: u64,
    ) -> Grace {
        Grace {
            active: restart,
            ends_ms: grace_ms,
            min_ms,
            settle_ms,
            waiting: hosts.iter().map(|h| (name_key(h), None)).collect(),
        }
    }

    pub fn active(&self) -> bool {
        self.active
    }

    pub fn end(&mut self) {
        self.active = false;
        self.waiting.clear();
    }

    pub fn waiting_names(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.waiting.keys().cloned()
    }

    /// A request from `name`: a reclaim restarts its settle time.
    pub fn note_request<const N: u32>(&mut self, name: &XdrString<N>, reclaim: bool, now: u64) {
        if !self.active || !reclaim {
            return;
        }
        if let Some(t) = self.waiting.get_mut(&name_key(name.as_bytes())) {
            *t = Some(now);
        }
    }

    pub fn host_gone(&mut self, name: &[u8]) {
        self.waiting.remove(&name_key(name));
    }

    /// True when grace ended on this tick.
    pub fn tick(&mut self, now: u64) -> bool {
        if !self.active {
            return false;
        }
        let settle = self.settle_ms;
        self.waiting
            .retain(|_, last| last.is_none_or(|t| now.saturating_sub(t) < settle));
        if now >= self.ends_ms || (self.waiting.is_empty() && now >= self.min_ms) {
            self.end();
            return true;
        }
        false
    }
}
