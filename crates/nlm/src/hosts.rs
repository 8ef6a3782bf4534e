//! Client hosts. A host is its caller name *together with* the address it
//! talks from: the same name from another address is another host, so
//! nobody can unlock, cancel or free someone else's locks by sending their
//! name. The names of hosts that hold state are kept on stable storage so
//! that the grace period after a restart knows whom to wait for.

use latch_lock::HostId;
use latch_nsm::fs::{Fs, RealFs};
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Clone)]
pub struct Host {
    pub id: HostId,
    /// The caller name as sent.
    pub name: Vec<u8>,
    pub ip: IpAddr,
    /// The client's NSM state number from its last LOCK (0 = never told).
    pub nsm_state: u32,
    /// Whether we asked the status monitor to watch it.
    pub monitored: bool,
    pub last_active_ms: u64,
    /// Shares granted since `nsm_state` was last heard (in a LOCK or a
    /// reboot notice), at most [`FRESH_SHARES_MAX`]. A SHARE carries no
    /// state, so these may be a newer start's: a LOCK that then tells of a
    /// reboot leaves them alone.
    pub fresh_shares: Vec<(latch_lock::FileKey, latch_lock::Owner)>,
    /// When it last got a lock or share (`None`: not since it was
    /// interned or released), for how long its name stays durable.
    pub held_ms: Option<u64>,
}

/// Bound on [`Host::fresh_shares`]; past it a share counts as an old one.
pub const FRESH_SHARES_MAX: usize = 64;

/// Names compare as DNS names do.
pub fn name_key(name: &[u8]) -> Vec<u8> {
    name.to_ascii_lowercase()
}

/// [`name_key`] without a copy when the name is already in lower case (as
/// addresses and most host names are): every call looks its host up.
pub fn name_key_ref(name: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if name.iter().any(u8::is_ascii_uppercase) {
        std::borrow::Cow::Owned(name_key(name))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// IPv4-mapped IPv6 addresses are their IPv4 selves.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[derive(Debug, Default)]
pub struct Hosts {
    /// By name key, then address (a name rarely comes from more than one):
    /// looked up by a borrowed name, with no allocation per call.
    by_key: HashMap<Vec<u8>, Vec<(IpAddr, HostId)>, latch_hash::KeyedState>,
    /// Looked up several times per call: hashed, not a tree. Iterated in id
    /// order (see [`Hosts::iter`]).
    by_id: HashMap<HostId, Host, BuildHasherDefault<latch_hash::IdHasher>>,
    next_id: u64,
}

impl Hosts {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn find(&self, name: &[u8], ip: IpAddr) -> Option<HostId> {
        let ip = canonical(ip);
        self.by_key
            .get(&*name_key_ref(name))?
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, id)| *id)
    }

    /// The host for (name, ip), created if there is room.
    pub fn intern(&mut self, name: &[u8], ip: IpAddr, max: usize, now_ms: u64) -> Option<HostId> {
        self.intern_new(name, ip, max, now_ms).map(|(id, _)| id)
    }

    /// As [`Hosts::intern`], and whether the host was created by this call
    /// (one lookup, where `find` then `intern` made two).
    pub fn intern_new(
        &mut self,
        name: &[u8],
        ip: IpAddr,
        max: usize,
        now_ms: u64,
    ) -> Option<(HostId, bool)> {
        let ip = canonical(ip);
        if let Some(id) = self.find(name, ip) {
            if let Some(h) = self.by_id.get_mut(&id) {
                h.last_active_ms = now_ms;
            }
            return Some((id, false));
        }
        if self.by_id.len() >= max {
            return None;
        }
        self.next_id += 1;
        let id = HostId(self.next_id);
        self.by_key
            .entry(name_key(name))
            .or_default()
            .push((ip, id));
        self.by_id.insert(
            id,
            Host {
                id,
                name: name.to_vec(),
                ip,
                nsm_state: 0,
                monitored: false,
                last_active_ms: now_ms,
                fresh_shares: Vec::new(),
                held_ms: None,
            },
        );
        Some((id, true))
    }

    pub fn get(&self, id: HostId) -> Option<&Host> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: HostId) -> Option<&mut Host> {
        self.by_id.get_mut(&id)
    }

    /// Every host with this name, from any address (a reboot notification
    /// names the host, not the address).
    pub fn named(&self, name: &[u8]) -> Vec<HostId> {
        let mut ids: Vec<HostId> = self
            .by_key
            .get(&*name_key_ref(name))
            .map(|v| v.iter().map(|&(_, id)| id).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    pub fn remove(&mut self, id: HostId) -> Option<Host> {
        let h = self.by_id.remove(&id)?;
        let k = name_key_ref(&h.name);
        if let Some(v) = self.by_key.get_mut(&*k) {
            v.retain(|&(_, i)| i != id);
            if v.is_empty() {
                self.by_key.remove(&*k);
            }
        }
        Some(h)
    }

    /// In no particular order: for what does not depend on it.
    pub fn iter(&self) -> impl Iterator<Item = &Host> {
        self.by_id.values()
    }

    /// In id order (the order hosts were first seen), for listings.
    pub fn sorted(&self) -> Vec<&Host> {
        let mut all: Vec<&Host> = self.by_id.values().collect();
        all.sort_unstable_by_key(|h| h.id);
        all
    }
}

/// Stable storage for the names of hosts that hold state.
pub trait HostStore: Send {
    /// The list; `None` if none was ever saved (the first start).
    fn load(&mut self) -> std::io::Result<Option<BTreeSet<Vec<u8>>>>;
    /// Replaces the list; returns once it is durable.
    fn save(&mut self, names: &BTreeSet<Vec<u8>>) -> std::io::Result<()>;
}

/// One escaped name per line, written atomically.
#[derive(Debug)]
pub struct FileHostStore<F: Fs = RealFs> {
    pub path: PathBuf,
    /// The filesystem: the real one, or a simulated disk.
    pub fs: F,
}

impl<F: Fs> HostStore for FileHostStore<F> {
    fn load(&mut self) -> std::io::Result<Option<BTreeSet<Vec<u8>>>> {
        match self.fs.read(&self.path) {
            Ok(bytes) => Ok(Some(
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter_map(latch_nsm::name::unescape)
                    .filter(|n| !n.is_empty())
                    .collect(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&mut self, names: &BTreeSet<Vec<u8>>) -> std::io::Result<()> {
        let mut text = String::new();
        for n in names {
            text.push_str(&latch_nsm::name::escape(n));
            text.push('\n');
        }
        latch_nsm::store::write_atomic_in(&mut self.fs, &self.path, text.as_bytes())
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// An in-memory store shared with the test that made it. It counts as
/// saved once something was saved or a name was put in it.
#[derive(Debug, Default, Clone)]
pub struct MemHostStore {
    pub names: Arc<Mutex<BTreeSet<Vec<u8>>>>,
    pub saved: Arc<Mutex<bool>>,
}

impl HostStore for MemHostStore {
    fn load(&mut self) -> std::io::Result<Option<BTreeSet<Vec<u8>>>> {
        let names = self
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let saved = *self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        Ok((saved || !names.is_empty()).then_some(names))
    }

    fn save(&mut self, names: &BTreeSet<Vec<u8>>) -> std::io::Result<()> {
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = names.clone();
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_other_address_is_another_host() {
        let mut h = Hosts::default();
        let a = h
            .intern(b"Client", "10.0.0.1".parse().unwrap(), 10, 0)
            .unwrap();
        let b = h
            .intern(b"client", "10.0.0.2".parse().unwrap(), 10, 0)
            .unwrap();
        let a2 = h
            .intern(b"CLIENT", "::ffff:10.0.0.1".parse().unwrap(), 10, 0)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a2);
        assert_eq!(h.named(b"client").len(), 2);
        assert!(
            h.intern(b"x", "10.0.0.3".parse().unwrap(), 2, 0).is_none(),
            "bounded"
        );
    }

    #[test]
    fn the_file_store_round_trips_hostile_names() {
        let dir = std::env::temp_dir().join(format!("latch-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = FileHostStore {
            path: dir.join("hosts"),
            fs: RealFs,
        };
        assert!(s.load().unwrap().is_none(), "never saved");
        s.save(&BTreeSet::new()).unwrap();
        assert_eq!(s.load().unwrap(), Some(BTreeSet::new()));
        let names: BTreeSet<Vec<u8>> = [b"a\nb".to_vec(), b"../x".to_vec(), vec![0, 255]].into();
        s.save(&names).unwrap();
        assert_eq!(s.load().unwrap(), Some(names));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
