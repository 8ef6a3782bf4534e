//! The kernel's own lock table as the reference: OFD locks on a tmpfs file,
//! one open file description per owner.

use std::ffi::CString;

pub struct KFile {
    path: CString,
    pub fds: Vec<i32>,
}

/// Raises RLIMIT_NOFILE as far as allowed; returns the soft limit now in
/// force.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        let want = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: 1 << 20,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

impl KFile {
    pub fn new(name: &str) -> KFile {
        let path = CString::new(format!(
            "/dev/shm/latch-bench-{}-{name}",
            std::process::id()
        ))
        .unwrap_or_default();
        KFile {
            path,
            fds: Vec::new(),
        }
    }

    /// Opens one more file description; `None` when out of descriptors.
    pub fn open(&mut self) -> Option<i32> {
        // SAFETY: path is a valid NUL-terminated string.
        let fd = unsafe { libc::open(self.path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
        if fd < 0 {
            return None;
        }
        self.fds.push(fd);
        Some(fd)
    }

    fn flock(fd: i32, cmd: libc::c_int, ty: libc::c_short, start: u64, len: u64) -> libc::flock {
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = ty;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start as libc::off_t;
        fl.l_len = len as libc::off_t;
        // SAFETY: fd is open, fl is a valid flock; OFD commands need l_pid 0.
        let rc = unsafe { libc::fcntl(fd, cmd, &mut fl) };
        if rc != 0 {
            fl.l_type = -1;
        }
        fl
    }

    /// F_OFD_SETLK; `true` if granted.
    pub fn lock(fd: i32, excl: bool, start: u64, len: u64) -> bool {
        let ty = if excl { libc::F_WRLCK } else { libc::F_RDLCK };
        Self::flock(fd, libc::F_OFD_SETLK, ty as libc::c_short, start, len).l_type != -1
    }

    pub fn unlock(fd: i32, start: u64, len: u64) {
        Self::flock(
            fd,
            libc::F_OFD_SETLK,
            libc::F_UNLCK as libc::c_short,
            start,
            len,
        );
    }

    /// F_OFD_GETLK; `true` if something conflicts.
    pub fn test(fd: i32, excl: bool, start: u64, len: u64) -> bool {
        let ty = if excl { libc::F_WRLCK } else { libc::F_RDLCK };
        let fl = Self::flock(fd, libc::F_OFD_GETLK, ty as libc::c_short, start, len);
        fl.l_type != libc::F_UNLCK as libc::c_short
    }
}

impl Drop for KFile {
    fn drop(&mut self) {
        for &fd in &self.fds {
            // SAFETY: we opened these.
            unsafe { libc::close(fd) };
        }
        // SAFETY: valid path.
        unsafe { libc::unlink(self.path.as_ptr()) };
    }
}
