//! Stable storage for the status monitor: the local state number and one
//! record per monitored host. The monitor talks to a [`Storage`]; the
//! [`FileStore`] is the durable one (temp file, fsync, rename, fsync of the
//! directory), the [`MemStore`] is for tests and the simulator and can be
//! told to fail.
//!
//! Layout of a [`FileStore`] directory:
//! ```text
//! state           the state number, as decimal text
//! sm/<host>       hosts we monitor now
//! sm.bak/<host>   hosts to notify of our restart (moved from sm/ at start)
//! ```
//! File names come from [`crate::name::file_name`]; the real name is inside.

use crate::fs::{Fs, RealFs};
use crate::name;
use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Someone to call back when a host reboots.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Registration {
    pub my_name: Vec<u8>,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub priv_: [u8; 16],
}

impl Registration {
    /// Two registrations are the same callback when all but the private
    /// data agree (SM_MON again replaces the private data).
    pub fn same_target(&self, other: &Registration) -> bool {
        (&self.my_name, self.prog, self.vers, self.proc_)
            == (&other.my_name, other.prog, other.vers, other.proc_)
    }
}

/// What we keep about one monitored host.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HostRecord {
    /// The name as the monitor's caller gave it.
    pub name: Vec<u8>,
    /// The last state number the host announced (or was seen with).
    pub last_state: Option<u32>,
    /// Addresses the host is known by (resolved or seen at).
    pub addrs: Vec<IpAddr>,
    pub regs: Vec<Registration>,
}

/// Everything that survives a restart.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Persisted {
    /// 0 when there was none yet.
    pub state: u32,
    pub monitored: Vec<HostRecord>,
    pub to_notify: Vec<HostRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: line {line}: {what}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

/// Where the monitor keeps what it promised to remember. Every method
/// returns only once the change is durable (or has failed and changed
/// nothing).
pub trait Storage: Send {
    fn load(&mut self) -> Result<Persisted, StoreError>;
    fn save_state(&mut self, state: u32) -> Result<(), StoreError>;
    /// Creates or replaces the record of a monitored host.
    fn save_host(&mut self, rec: &HostRecord) -> Result<(), StoreError>;
    fn remove_host(&mut self, name: &[u8]) -> Result<(), StoreError>;
    /// Moves a monitored host to the to-notify set.
    fn move_to_notify(&mut self, name: &[u8]) -> Result<(), StoreError>;
    /// Forgets a host that has been told of our restart.
    fn notified(&mut self, name: &[u8]) -> Result<(), StoreError>;
}

/// The durable store on a filesystem (the real one, or a simulated disk).
#[derive(Debug)]
pub struct FileStore<F: Fs = RealFs> {
    dir: PathBuf,
    fs: F,
}

const MONITORED: &str = "sm";
const TO_NOTIFY: &str = "sm.bak";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        FileStore::open_in(RealFs, dir)
    }
}

impl<F: Fs> FileStore<F> {
    /// Opens (creating if needed) the store in `dir` of `fs`.
    pub fn open_in(mut fs: F, dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        for sub in [MONITORED, TO_NOTIFY] {
            let p = dir.join(sub);
            fs.create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(FileStore { dir, fs })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn host_path(&self, sub: &str, host: &[u8]) -> PathBuf {
        self.dir.join(sub).join(name::file_name(host))
    }

    fn load_dir(&mut self, sub: &str) -> Result<Vec<HostRecord>, StoreError> {
        let d = self.dir.join(sub);
        let mut out = Vec::new();
        for p in self.fs.read_dir(&d).map_err(io_err(&d))? {
            let is_tmp = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if is_tmp {
                // A write that crashed before its rename: it never happened.
                let _ = self.fs.remove(&p);
                continue;
            }
            let bytes = self.fs.read(&p).map_err(io_err(&p))?;
            let text = String::from_utf8_lossy(&bytes);
            out.push(parse_record(&text, &p)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Writes `bytes` to `path` so that after any crash the file holds either
/// its old content or all of the new.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_in(&mut RealFs, path, bytes)
}

/// [`write_atomic`] on `fs`: a temp file written and synced, renamed over
/// `path`, then the directory synced. A crash at any point leaves the old
/// content or the new, never a mix: an unsynced temp file is never renamed,
/// and a temp file left behind is removed by the next load.
pub fn write_atomic_in(fs: &mut impl Fs, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file}.tmp"));
    fs.write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs.sync_file(&tmp).map_err(io_err(&tmp))?;
    fs.rename(&tmp, path).map_err(io_err(path))?;
    fs.sync_dir(dir).map_err(io_err(dir))
}

/// Removes `path` and syncs its directory. Also when the file is gone
/// already: an earlier removal whose directory sync failed is not durable
/// yet, and a crash could bring the file back.
fn remove_durably(fs: &mut impl Fs, path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    match fs.remove(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    fs.sync_dir(dir).map_err(io_err(dir))
}

impl<F: Fs> Storage for FileStore<F> {
    fn load(&mut self) -> Result<Persisted, StoreError> {
        let p = self.dir.join("state");
        let state = match self.fs.read(&p) {
            Ok(t) => {
                String::from_utf8_lossy(&t)
                    .trim()
                    .parse()
                    .map_err(|_| StoreError::Corrupt {
                        path: p.clone(),
                        line: 1,
                        what: format!(
                            "not a state number: {:?}",
                            String::from_utf8_lossy(&t).trim()
                        ),
                    })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&p)(e)),
        };
        Ok(Persisted {
            state,
            monitored: self.load_dir(MONITORED)?,
            to_notify: self.load_dir(TO_NOTIFY)?,
        })
    }

    fn save_state(&mut self, state: u32) -> Result<(), StoreError> {
        write_atomic_in(
            &mut self.fs,
            &self.dir.join("state"),
            format!("{state}\n").as_bytes(),
        )
    }

    fn save_host(&mut self, rec: &HostRecord) -> Result<(), StoreError> {
        let p = self.host_path(MONITORED, &rec.name);
        write_atomic_in(&mut self.fs, &p, format_record(rec).as_bytes())
    }

    fn remove_host(&mut self, name: &[u8]) -> Result<(), StoreError> {
        let p = self.host_path(MONITORED, name);
        remove_durably(&mut self.fs, &p)
    }

    fn move_to_notify(&mut self, name: &[u8]) -> Result<(), StoreError> {
        let from = self.host_path(MONITORED, name);
        let to = self.host_path(TO_NOTIFY, name);
        // Not there: moved already, maybe not durably (synced below).
        match self.fs.rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&from)(e)),
        }
        for sub in [TO_NOTIFY, MONITORED] {
            let d = self.dir.join(sub);
            self.fs.sync_dir(&d).map_err(io_err(&d))?;
        }
        Ok(())
    }

    fn notified(&mut self, name: &[u8]) -> Result<(), StoreError> {
        let p = self.host_path(TO_NOTIFY, name);
        remove_durably(&mut self.fs, &p)
    }
}

/// One record as text: a line per field, names escaped.
pub fn format_record(r: &HostRecord) -> String {
    let mut s = format!("name {}\n", name::escape(&r.name));
    if let Some(st) = r.last_state {
        s.push_str(&format!("state {st}\n"));
    }
    for a in &r.addrs {
        s.push_str(&format!("addr {a}\n"));
    }
    for g in &r.regs {
        let priv_hex: String = g.priv_.iter().map(|b| format!("{b:02x}")).collect();
        s.push_str(&format!(
            "reg {} {} {} {} {}\n",
            g.prog,
            g.vers,
            g.proc_,
            priv_hex,
            name::escape(&g.my_name)
        ));
    }
    s
}

/// Parses [`format_record`]'s output; `path` names errors.
pub fn parse_record(text: &str, path: &Path) -> Result<HostRecord, StoreError> {
    let mut r = HostRecord::default();
    let mut has_name = false;
    for (i, line) in text.lines().enumerate() {
        let bad = |what: &str| StoreError::Corrupt {
            path: path.to_path_buf(),
            line: i + 1,
            what: what.to_string(),
        };
        let mut f = line.split(' ');
        match f.next() {
            Some("name") => {
                r.name = f
                    .next()
                    .and_then(name::unescape)
                    .ok_or_else(|| bad("bad name"))?;
                has_name = true;
            }
            Some("state") => r.last_state = Some(num(f.next()).ok_or_else(|| bad("bad state"))?),
            Some("addr") => r.addrs.push(
                f.next()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| bad("bad addr"))?,
            ),
            Some("reg") => {
                let (prog, vers, proc_) = (num(f.next()), num(f.next()), num(f.next()));
                let priv_ = f.next().and_then(parse_priv);
                let my_name = f.next().and_then(name::unescape);
                match (prog, vers, proc_, priv_, my_name) {
                    (Some(prog), Some(vers), Some(proc_), Some(priv_), Some(my_name)) => {
                        r.regs.push(Registration {
                            my_name,
                            prog,
                            vers,
                            proc_,
                            priv_,
                        })
                    }
                    _ => return Err(bad("bad registration")),
                }
            }
            Some("") | None => {}
            Some(other) => return Err(bad(&format!("unknown key {other:?}"))),
        }
    }
    if !has_name {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            line: 1,
            what: "no name".into(),
        });
    }
    Ok(r)
}

fn num(s: Option<&str>) -> Option<u32> {
    s?.parse().ok()
}

fn parse_priv(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An in-memory store whose "disk" is shared with the test that made it, so
/// the test can crash the monitor, inspect what survived, and start again.
/// Faults can be injected: the next N writes fail and change nothing.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    pub disk: Arc<Mutex<MemDisk>>,
}

#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    pub state: u32,
    pub monitored: BTreeMap<Vec<u8>, HostRecord>,
    pub to_notify: BTreeMap<Vec<u8>, HostRecord>,
    /// How many of the next writes fail.
    pub fail_writes: u32,
    pub writes: u64,
}

impl MemStore {
    fn write<T>(&self, f: impl FnOnce(&mut MemDisk) -> T) -> Result<T, StoreError> {
        let mut d = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        if d.fail_writes > 0 {
            d.fail_writes -= 1;
            return Err(StoreError::Injected("write failed"));
        }
        d.writes += 1;
        Ok(f(&mut d))
    }
}

impl Storage for MemStore {
    fn load(&mut self) -> Result<Persisted, StoreError> {
        let d = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Persisted {
            state: d.state,
            monitored: d.monitored.values().cloned().collect(),
            to_notify: d.to_notify.values().cloned().collect(),
        })
    }

    fn save_state(&mut self, state: u32) -> Result<(), StoreError> {
        self.write(|d| d.state = state)
    }

    fn save_host(&mut self, rec: &HostRecord) -> Result<(), StoreError> {
        self.write(|d| {
            d.monitored.insert(rec.name.clone(), rec.clone());
        })
    }

    fn remove_host(&mut self, name: &[u8]) -> Result<(), StoreError> {
        self.write(|d| {
            d.monitored.remove(name);
        })
    }

    fn move_to_notify(&mut self, name: &[u8]) -> Result<(), StoreError> {
        self.write(|d| {
            if let Some(r) = d.monitored.remove(name) {
                d.to_notify.insert(name.to_vec(), r);
            }
        })
    }

    fn notified(&mut self, name: &[u8]) -> Result<(), StoreError> {
        self.write(|d| {
            d.to_notify.remove(name);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &[u8]) -> HostRecord {
        HostRecord {
            name: name.to_vec(),
            last_state: Some(7),
            addrs: vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            regs: vec![Registration {
                my_name: b"local host".to_vec(),
                prog: 100_021,
                vers: 3,
                proc_: 16,
                priv_: [0xab; 16],
            }],
        }
    }

    #[test]
    fn records_round_trip_through_text_even_with_hostile_names() {
        for n in [
            &b"client"[..],
            b"../../etc/passwd",
            b"a\nb\0c d",
            &[0xff; 1024],
        ] {
            let r = rec(n);
            assert_eq!(parse_record(&format_record(&r), Path::new("x")).unwrap(), r);
        }
    }

    #[test]
    fn corrupt_records_name_the_line() {
        let e = parse_record("name a\nstate x\n", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse_record("state 1\n", Path::new("f")).is_err());
    }

    #[test]
    fn the_file_store_survives_reopening_and_ignores_crashed_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), Persisted::default());
        s.save_state(5).unwrap();
        for n in [&b"a"[..], b"../../etc/passwd", &[b'x'; 1024]] {
            s.save_host(&rec(n)).unwrap();
        }
        s.remove_host(b"a").unwrap();
        s.remove_host(b"never-there").unwrap();
        s.move_to_notify(&[b'x'; 1024]).unwrap();
        // A write that died before its rename.
        std::fs::write(dir.path().join("sm").join(".b.tmp"), "garbage").unwrap();
        let mut again = FileStore::open(dir.path()).unwrap();
        let p = again.load().unwrap();
        assert_eq!(p.state, 5);
        assert_eq!(p.monitored, vec![rec(b"../../etc/passwd")]);
        assert_eq!(p.to_notify, vec![rec(&[b'x'; 1024])]);
        assert!(!dir.path().join("sm").join(".b.tmp").exists());
        // Nothing escaped the store's directory.
        assert!(!dir.path().parent().unwrap().join("etc").exists());
        again.notified(&[b'x'; 1024]).unwrap();
        assert!(again.load().unwrap().to_notify.is_empty());
    }

    #[test]
    fn injected_faults_change_nothing() {
        let mut m = MemStore::default();
        m.save_host(&rec(b"a")).unwrap();
        m.disk.lock().unwrap().fail_writes = 2;
        assert!(m.save_state(9).is_err());
        assert!(m.remove_host(b"a").is_err());
        let p = m.load().unwrap();
        assert_eq!((p.state, p.monitored.len()), (0, 1));
    }
}
