//! The few filesystem calls stable storage makes, behind a trait: the real
//! filesystem ([`RealFs`]) in the daemon, and a simulated disk ([`SimFs`])
//! with a page cache that a crash loses, tears or partly keeps, and with
//! failing `fsync`s, for the simulator and the tests. The stores above it
//! ([`crate::store::FileStore`], NLM's host list) run the same code on both.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// What stable storage needs of a filesystem. Nothing is durable until
/// synced: a file's content by [`sync_file`](Fs::sync_file), names in a
/// directory (creations, renames, removals) by [`sync_dir`](Fs::sync_dir).
pub trait Fs: Send {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()>;
    /// The paths of the entries of `dir`.
    fn read_dir(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates or truncates `path` and writes `bytes`.
    fn write(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    fn sync_file(&mut self, path: &Path) -> io::Result<()>;
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

/// The operating system's filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl Fs for RealFs {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn read_dir(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn write(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        File::create(path)?.write_all(bytes)
    }

    fn sync_file(&mut self, path: &Path) -> io::Result<()> {
        // fsync through any descriptor writes back the file's dirty pages.
        File::open(path)?.sync_all()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A simulated disk shared by everything that opened it (a host's daemon
/// across its restarts, and the test or simulator that crashes it).
#[derive(Debug, Default, Clone)]
pub struct SimFs {
    pub disk: Arc<Mutex<SimDisk>>,
}

/// One file: what is on the platter, and what the page cache holds.
#[derive(Debug, Default, Clone)]
struct Inode {
    durable: Vec<u8>,
    cached: Vec<u8>,
    /// The cache holds data not written back yet.
    dirty: bool,
}

/// Directories and names, as the running system sees them (`live`) and as
/// they are on the platter (`durable`); a name maps to an inode number.
#[derive(Debug, Default, Clone)]
pub struct SimDisk {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    live: BTreeMap<PathBuf, Option<u64>>,
    durable: BTreeMap<PathBuf, Option<u64>>,
    /// Renames since the last crash: a journal makes each one reach the
    /// platter whole or not at all, both names together.
    renames: Vec<(PathBuf, PathBuf)>,
    /// How many of the next `fsync`s (of files or directories) fail. A
    /// failed `fsync` of a file drops its dirty state without writing it,
    /// as Linux does: a later `fsync` reports success and writes nothing.
    pub fail_syncs: u32,
    /// The power fails after this many more filesystem calls: the call
    /// that finds it gone, and every one after, fails, until [`crash`]
    /// (`SimDisk::crash`) is called for the machine. A crash in the
    /// middle of a store's write, between its write, sync and rename.
    pub cut_after: Option<u32>,
    /// The power is gone (see `cut_after`): the machine must crash.
    pub cut: bool,
    /// Counts, for reports.
    pub syncs: u64,
    pub failed_syncs: u64,
    pub crashes: u64,
    /// Writes a crash lost, tore or kept although never synced.
    pub lost: u64,
    pub torn: u64,
    pub kept_unsynced: u64,
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, p.display().to_string())
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl SimDisk {
    fn lock(fs: &SimFs) -> std::sync::MutexGuard<'_, SimDisk> {
        fs.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call that writes goes through here first: it fails once the
    /// power is cut.
    fn step(&mut self) -> io::Result<()> {
        if !self.cut {
            match self.cut_after {
                Some(0) => {
                    self.cut = true;
                    self.cut_after = None;
                }
                Some(n) => self.cut_after = Some(n - 1),
                None => {}
            }
        }
        self.powered()
    }

    /// Reads fail once the power is gone, but do not count towards the cut.
    fn powered(&self) -> io::Result<()> {
        if self.cut {
            return Err(io::Error::other("injected: the power failed"));
        }
        Ok(())
    }

    fn file(&self, p: &Path) -> io::Result<u64> {
        match self.live.get(p) {
            Some(Some(i)) => Ok(*i),
            _ => Err(not_found(p)),
        }
    }

    fn check_dir(&self, dir: &Path) -> io::Result<()> {
        match self.live.get(dir) {
            Some(None) => Ok(()),
            _ => Err(not_found(dir)),
        }
    }

    fn fsync_fails(&mut self) -> bool {
        self.syncs += 1;
        if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            self.failed_syncs += 1;
            return true;
        }
        false
    }

    /// The machine loses power. Every name and file content that was
    /// synced survives. Of what was not, each change independently may
    /// have reached the platter anyway (`pick(2) == 0`), and file content
    /// that did may be torn: a prefix of it only. `pick(n)` returns a
    /// number below `n`, from the caller's seeded generator.
    pub fn crash(&mut self, pick: &mut dyn FnMut(u64) -> u64) {
        self.crashes += 1;
        self.cut = false;
        self.cut_after = None;
        for ino in self.inodes.values_mut() {
            if !ino.dirty {
                ino.cached = ino.durable.clone();
                continue;
            }
            match pick(4) {
                0 => {
                    ino.durable = ino.cached.clone();
                    self.kept_unsynced += 1;
                }
                1 => {
                    let n = pick(ino.cached.len() as u64 + 1) as usize;
                    ino.durable = ino.cached.get(..n).unwrap_or_default().to_vec();
                    self.torn += 1;
                }
                _ => self.lost += 1,
            }
            ino.cached = ino.durable.clone();
            ino.dirty = false;
        }
        let mut decided = std::collections::BTreeSet::new();
        for (from, to) in std::mem::take(&mut self.renames) {
            let pending = |p: &PathBuf| self.live.get(p) != self.durable.get(p);
            let unit: Vec<PathBuf> = [from, to].into_iter().filter(|p| pending(p)).collect();
            let keep = pick(2) == 0;
            for p in unit {
                if decided.insert(p.clone()) && keep {
                    self.persist(p);
                }
            }
        }
        let names: Vec<PathBuf> = self
            .live
            .keys()
            .chain(self.durable.keys())
            .cloned()
            .collect();
        for p in names {
            let same = self.live.get(&p) == self.durable.get(&p);
            if !same && !decided.contains(&p) && pick(2) == 0 {
                // This unsynced name change made it to the platter.
                self.persist(p);
            }
        }
        // A name whose directory is gone from the platter is gone too.
        let orphans: Vec<PathBuf> = self
            .durable
            .keys()
            .filter(|p| {
                p.parent()
                    .is_some_and(|d| !d.as_os_str().is_empty() && !self.durable.contains_key(d))
            })
            .cloned()
            .collect();
        for p in orphans {
            self.durable.remove(&p);
        }
        self.live = self.durable.clone();
        let used: std::collections::BTreeSet<u64> = self.live.values().flatten().copied().collect();
        self.inodes.retain(|i, _| used.contains(i));
    }

    fn persist(&mut self, p: PathBuf) {
        match self.live.get(&p).copied() {
            Some(v) => self.durable.insert(p, v),
            None => self.durable.remove(&p),
        };
    }

    /// The content of `path` on the platter, if any.
    pub fn durable_content(&self, path: &Path) -> Option<Vec<u8>> {
        let i = (*self.durable.get(path)?)?;
        Some(self.inodes.get(&i)?.durable.clone())
    }
}

impl SimFs {
    /// Loses power: see [`SimDisk::crash`].
    pub fn crash(&self, pick: &mut dyn FnMut(u64) -> u64) {
        SimDisk::lock(self).crash(pick);
    }
}

impl Fs for SimFs {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        let mut d = SimDisk::lock(self);
        d.step()?;
        let mut at = PathBuf::new();
        for c in dir.components() {
            at.push(c);
            match d.live.get(&at) {
                Some(None) => {}
                Some(Some(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        at.display().to_string(),
                    ))
                }
                // Directory creation is made durable at once (the stores
                // create their directories once, at first start).
                None => {
                    d.live.insert(at.clone(), None);
                    d.durable.insert(at.clone(), None);
                }
            }
        }
        Ok(())
    }

    fn read_dir(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let d = SimDisk::lock(self);
        d.powered()?;
        d.check_dir(dir)?;
        Ok(d.live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        let d = SimDisk::lock(self);
        d.powered()?;
        let i = d.file(path)?;
        Ok(d.inodes
            .get(&i)
            .map(|n| n.cached.clone())
            .unwrap_or_default())
    }

    fn write(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut d = SimDisk::lock(self);
        d.step()?;
        d.check_dir(&parent(path))?;
        let i = match d.live.get(path) {
            Some(Some(i)) => *i,
            Some(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    path.display().to_string(),
                ))
            }
            None => {
                d.next_inode += 1;
                let i = d.next_inode;
                d.inodes.insert(i, Inode::default());
                d.live.insert(path.to_path_buf(), Some(i));
                i
            }
        };
        let ino = d.inodes.entry(i).or_default();
        ino.cached = bytes.to_vec();
        ino.dirty = true;
        Ok(())
    }

    fn sync_file(&mut self, path: &Path) -> io::Result<()> {
        let mut d = SimDisk::lock(self);
        d.step()?;
        let i = d.file(path)?;
        let failed = d.fsync_fails();
        let ino = d.inodes.entry(i).or_default();
        if failed {
            // The pages stay in the cache, marked clean: lost at a crash.
            ino.dirty = false;
            return Err(io::Error::other("injected: fsync failed"));
        }
        if ino.dirty {
            ino.durable = ino.cached.clone();
            ino.dirty = false;
        }
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = SimDisk::lock(self);
        d.step()?;
        let i = d.file(from)?;
        d.check_dir(&parent(to))?;
        d.live.remove(from);
        d.live.insert(to.to_path_buf(), Some(i));
        d.renames.push((from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        let mut d = SimDisk::lock(self);
        d.step()?;
        d.file(path)?;
        d.live.remove(path);
        Ok(())
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let mut d = SimDisk::lock(self);
        d.step()?;
        d.check_dir(dir)?;
        if d.fsync_fails() {
            return Err(io::Error::other("injected: fsync of a directory failed"));
        }
        let live: Vec<(PathBuf, Option<u64>)> = d
            .live
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, v)| (p.clone(), *v))
            .collect();
        d.durable.retain(|p, _| p.parent() != Some(dir));
        d.durable.extend(live);
        // A rename is one journal entry: making one of its directories
        // durable makes both of its names durable.
        let whole: Vec<PathBuf> = d
            .renames
            .iter()
            .filter(|(f, t)| f.parent() == Some(dir) || t.parent() == Some(dir))
            .flat_map(|(f, t)| [f.clone(), t.clone()])
            .collect();
        for p in whole {
            d.persist(p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FileStore, HostRecord, Storage};
    use std::collections::BTreeMap;

    /// A small seeded generator for the crash's choices.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    #[test]
    fn the_simulated_disk_loses_and_tears_what_was_not_synced() {
        // The classic mistake, rename before fsync, must be able to lose
        // data here, or the disk proves nothing about the stores.
        let (mut empty, mut torn_or_lost) = (0, 0);
        for seed in 1..200 {
            let mut fs = SimFs::default();
            let mut rng = Rng(seed);
            fs.create_dir_all(Path::new("/d")).unwrap();
            fs.write(Path::new("/d/f"), b"old content").unwrap();
            fs.sync_file(Path::new("/d/f")).unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            fs.write(Path::new("/d/.f.tmp"), b"new content").unwrap();
            fs.rename(Path::new("/d/.f.tmp"), Path::new("/d/f"))
                .unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            fs.crash(&mut |n| rng.below(n));
            let got = fs.read(Path::new("/d/f")).unwrap();
            if got.is_empty() {
                empty += 1;
            }
            if got != b"new content" {
                torn_or_lost += 1;
            }
            assert_ne!(got, b"old content", "the rename was synced");
        }
        assert!(empty > 0 && torn_or_lost > empty, "{empty} {torn_or_lost}");
    }

    #[test]
    fn a_failed_fsync_is_not_retried_by_the_next_one() {
        let mut fs = SimFs::default();
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.write(Path::new("/d/f"), b"data").unwrap();
        fs.disk.lock().unwrap().fail_syncs = 1;
        assert!(fs.sync_file(Path::new("/d/f")).is_err());
        // Linux: the pages were marked clean; this fsync writes nothing.
        fs.sync_file(Path::new("/d/f")).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.crash(&mut |_| 1);
        assert_eq!(fs.read(Path::new("/d/f")).unwrap(), b"");
    }

    fn rec(name: &str, state: u32) -> HostRecord {
        HostRecord {
            name: name.as_bytes().to_vec(),
            last_state: Some(state),
            addrs: vec!["10.0.0.1".parse().unwrap()],
            regs: vec![],
        }
    }

    /// What the running system sees of host `n`: (version monitored,
    /// version to notify); read past a power cut.
    fn live_of(fs: &mut SimFs, n: &str) -> [Option<u32>; 2] {
        let cut = std::mem::take(&mut fs.disk.lock().unwrap().cut);
        let mut get = |sub: &str| {
            let p = Path::new("/var/lib/latch")
                .join(sub)
                .join(crate::name::file_name(n.as_bytes()));
            let text = fs.read(&p).ok()?;
            let r = crate::store::parse_record(&String::from_utf8(text).unwrap(), &p).unwrap();
            r.last_state
        };
        let both = [get("sm"), get("sm.bak")];
        fs.disk.lock().unwrap().cut = cut;
        both
    }

    /// The version promised, and those failed writes left since.
    type Promise = (Option<u32>, Vec<Option<u32>>);

    /// Crashes the disk, reopens the store and checks every promise.
    fn crash_and_check(
        seed: u64,
        fs: &SimFs,
        rng: &mut Rng,
        state: &mut (u32, Vec<u32>),
        hosts: &mut BTreeMap<String, [Promise; 2]>,
    ) -> FileStore<SimFs> {
        fs.disk.lock().unwrap().fail_syncs = 0;
        fs.crash(&mut |n| rng.below(n));
        let mut store = FileStore::open_in(fs.clone(), "/var/lib/latch").unwrap();
        let p = store.load().unwrap();
        assert!(
            p.state == state.0 || state.1.contains(&p.state),
            "seed {seed}: state {} after promising {}",
            p.state,
            state.0
        );
        *state = (p.state, vec![]);
        for (n, lists) in hosts.iter_mut() {
            let find = |l: &[HostRecord]| {
                l.iter()
                    .find(|r| r.name == n.as_bytes())
                    .map(|r| r.last_state.unwrap())
            };
            let got = [find(&p.monitored), find(&p.to_notify)];
            for (c, (acked, tried)) in lists.iter_mut().enumerate() {
                assert!(
                    got[c] == *acked || tried.contains(&got[c]),
                    "seed {seed}: {n} list {c} is {:?} after promising {acked:?}",
                    got[c]
                );
                *acked = got[c];
                tried.clear();
            }
        }
        store
    }

    /// Random writes, failing fsyncs, power losses between writes and in
    /// the middle of one, against the status monitor's store: after every
    /// crash, each host's records are what the last write that returned Ok
    /// left, or what a later failed write left; nothing torn is ever read,
    /// and the store always loads.
    #[test]
    fn the_file_store_keeps_its_promises_through_crashes() {
        let mut cuts = 0;
        for seed in 1..300u64 {
            let mut fs = SimFs::default();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut store = FileStore::open_in(fs.clone(), "/var/lib/latch").unwrap();
            let mut state = (0u32, Vec::<u32>::new());
            // Per host, for each list (monitored, to notify).
            let mut hosts: BTreeMap<String, [Promise; 2]> = BTreeMap::new();
            let mut next = 1u32;
            for _ in 0..60 {
                let name = format!("h{}", rng.below(3));
                // The lists a write promises something about.
                let (r, touches) = match rng.below(13) {
                    0 => {
                        fs.disk.lock().unwrap().fail_syncs += 1 + rng.below(2) as u32;
                        continue;
                    }
                    1 => {
                        fs.disk.lock().unwrap().cut_after = Some(rng.below(4) as u32);
                        continue;
                    }
                    2 => {
                        next += 2;
                        match store.save_state(next) {
                            Ok(()) => state = (next, vec![]),
                            Err(_) => state.1.push(next),
                        }
                        (Ok(()), &[][..])
                    }
                    3..=5 => {
                        next += 1;
                        (store.save_host(&rec(&name, next)), &[0][..])
                    }
                    6 => (store.remove_host(name.as_bytes()), &[0][..]),
                    7 => (store.move_to_notify(name.as_bytes()), &[0, 1][..]),
                    8 => (store.notified(name.as_bytes()), &[1][..]),
                    _ => {
                        store = crash_and_check(seed, &fs, &mut rng, &mut state, &mut hosts);
                        continue;
                    }
                };
                let now = live_of(&mut fs, &name);
                let lists = hosts.entry(name).or_default();
                for (c, (acked, tried)) in lists.iter_mut().enumerate() {
                    if r.is_ok() && touches.contains(&c) {
                        (*acked, *tried) = (now[c], vec![]);
                    } else {
                        tried.push(now[c]);
                    }
                }
                if fs.disk.lock().unwrap().cut {
                    cuts += 1;
                    store = crash_and_check(seed, &fs, &mut rng, &mut state, &mut hosts);
                }
            }
        }
        assert!(
            cuts > 100,
            "only {cuts} power cuts in the middle of a write"
        );
    }
}
