//! `latch lock`, `latch test`: the network flock(1).

use latch::client::{Client, Error, Event, LockSpec, Wait};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// Exit codes a script can act on (CMD's own code otherwise). They share
/// the numbering of the admin commands and `latch probe` (README).
pub mod exit {
    /// Held by someone else (and not waiting), or TEST found a holder.
    pub const BUSY: u8 = 1;
    pub const DEADLOCK: u8 = 3;
    /// Waited as long as asked.
    pub const TIMEOUT: u8 = 4;
    /// The lock was lost while CMD ran (latchd went away, or the server
    /// restarted and the lock could not be reclaimed); CMD was stopped.
    pub const LOST: u8 = 5;
    /// latchd is not running (no local socket).
    pub const NOT_RUNNING: u8 = 10;
    /// Not allowed to use latchd's socket.
    pub const PERMISSION: u8 = 11;
    /// The server stayed in its grace period, or is out of room.
    pub const TEMPFAIL: u8 = 14;
    /// The server is unreachable or refused the protocol.
    pub const SERVER: u8 = 20;
    /// CMD could not be started.
    pub const CANNOT_RUN: u8 = 126;
}

#[derive(Debug)]
pub struct Target {
    pub server: Option<String>,
    pub file: Vec<u8>,
    /// An NFS path still to resolve to its handle: (host, path).
    pub nfs: Option<(String, String)>,
}

/// `SERVER` is a name or address, or `local` for this host; `FILE` names
/// the file by its handle: a plain name is its bytes (latchd servers treat
/// handles as opaque), `--fh HEX` gives the bytes directly.
pub fn target(server: &str, file: &str, fh: Option<&str>) -> Result<Target, String> {
    let server = match server {
        "local" | "-" => None,
        s => Some(s.to_string()),
    };
    let file = match fh {
        Some(h) => {
            let bytes: Option<Vec<u8>> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                .collect();
            match bytes {
                Some(b) if !b.is_empty() && h.len() % 2 == 0 => b,
                _ => return Err(format!("--fh {h:?} is not an even number of hex digits")),
            }
        }
        None => {
            if let Some((host, path)) = latch::nfs::split(file) {
                let nfs = Some((host.to_string(), path.to_string()));
                return Ok(Target {
                    server,
                    file: Vec::new(),
                    nfs,
                });
            }
            file.as_bytes().to_vec()
        }
    };
    Ok(Target {
        server,
        file,
        nfs: None,
    })
}

/// `OFF:LEN` (LEN 0 or empty: to the end).
pub fn range(s: Option<&str>) -> Result<(u64, u64), String> {
    let Some(s) = s else { return Ok((0, 0)) };
    let (o, l) = s.split_once(':').unwrap_or((s, "0"));
    let off = o
        .parse()
        .map_err(|_| format!("bad offset in --range {s:?}"))?;
    let len = if l.is_empty() {
        0
    } else {
        l.parse()
            .map_err(|_| format!("bad length in --range {s:?}"))?
    };
    Ok((off, len))
}

pub fn error_code(e: &Error) -> u8 {
    match e {
        Error::NotRunning(_) => exit::NOT_RUNNING,
        Error::Permission(_) => exit::PERMISSION,
        Error::Denied(_) => exit::BUSY,
        Error::Deadlock => exit::DEADLOCK,
        Error::Timeout => exit::TIMEOUT,
        Error::Grace | Error::NoLocks => exit::TEMPFAIL,
        Error::Failed(_) | Error::Io(_) | Error::Closed => exit::SERVER,
    }
}

fn describe(e: &Error) -> String {
    match e {
        Error::Denied(Some(h)) => format!(
            "held by another owner (svid {}, {} range {}:{})",
            h.svid,
            if h.exclusive { "exclusive" } else { "shared" },
            h.offset,
            h.len
        ),
        e => e.to_string(),
    }
}

pub struct LockArgs {
    pub socket: String,
    pub target: Target,
    pub offset: u64,
    pub len: u64,
    pub shared: bool,
    /// None: do not wait; Some(None): forever; Some(Some(d)): that long.
    pub wait: Option<Option<Duration>>,
    pub cmd: Vec<String>,
}

/// Takes the lock, runs CMD, releases. The lock is held by this process's
/// connection to latchd: if this process dies, latchd releases it.
pub async fn lock(a: LockArgs) -> u8 {
    let mut spec = LockSpec {
        server: a.target.server.clone(),
        file: a.target.file.clone(),
        offset: a.offset,
        len: a.len,
        exclusive: !a.shared,
    };
    if let Err(code) = resolve(&mut spec, &a.target.nfs).await {
        return code;
    }
    let tty = std::io::stderr().is_terminal();
    let client = match Client::connect(&a.socket).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let deadline = a.wait.flatten().map(|d| Instant::now() + d);
    let guard = loop {
        let wait = match (a.wait, deadline) {
            (None, _) => Wait::No,
            (Some(None), _) => Wait::Forever,
            (Some(Some(_)), Some(d)) => Wait::For(d.saturating_duration_since(Instant::now())),
            (Some(Some(d)), None) => Wait::For(d),
        };
        if tty && wait != Wait::No {
            eprint!("latch: waiting for the lock...\r");
        }
        match client.lock(&spec, wait).await {
            Ok(g) => break g,
            // A server just restarted: retry while the caller is willing to wait.
            Err(Error::Grace)
                if a.wait.is_some() && deadline.is_none_or(|d| Instant::now() < d) =>
            {
                if tty {
                    eprint!("latch: the server is in its grace period, retrying...\r");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return fail(&e),
        }
    };
    if tty && a.wait.is_some() {
        eprint!("\x1b[K");
    }
    let Some((prog, args)) = a.cmd.split_first() else {
        // No command: hold until interrupted.
        eprintln!("latch: locked; interrupt to release");
        let mut events = client.events();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            why = lock_lost(&client, &mut events) => {
                eprintln!("latch: the lock was lost ({why})");
                return exit::LOST;
            }
        }
        let _ = guard.unlock().await;
        return 0;
    };
    let mut events = client.events();
    let mut child = match tokio::process::Command::new(prog).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.unlock().await;
            eprintln!("latch: cannot run {prog}: {e}");
            return exit::CANNOT_RUN;
        }
    };
    let status = tokio::select! {
        s = child.wait() => s,
        why = lock_lost(&client, &mut events) => {
            // CMD runs on the lock's guarantee: without it, it must stop.
            eprintln!("latch: the lock was lost ({why}); stopping {prog}");
            stop(&mut child).await;
            return exit::LOST;
        }
    };
    let _ = guard.unlock().await;
    match status {
        Ok(s) => match s.code() {
            Some(c) => u8::try_from(c).unwrap_or(1),
            // Killed by a signal: the shell's convention.
            None => {
                let sig = std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0);
                128u8.saturating_add(u8::try_from(sig).unwrap_or(0))
            }
        },
        Err(e) => {
            eprintln!("latch: cannot run {prog}: {e}");
            exit::CANNOT_RUN
        }
    }
}

/// Returns once the lock this connection holds is gone: latchd closed the
/// connection, or said the lock could not be reclaimed after a server
/// restart.
async fn lock_lost(
    client: &Client,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
) -> String {
    loop {
        if client.is_closed() {
            return "latchd closed the connection".into();
        }
        match events.recv().await {
            Ok(Event::Lost { server, .. }) => {
                return format!("{server} restarted and did not give it back")
            }
            Ok(Event::Disconnected) | Err(RecvError::Closed) => {
                return "latchd closed the connection".into()
            }
            // Missed events are re-checked through `is_closed`; a missed
            // `lost` cannot be: only this lock's events come here, and
            // there are at most two.
            Ok(_) | Err(RecvError::Lagged(_)) => {}
        }
    }
}

/// SIGTERM to CMD, and SIGKILL if it is still there 5 seconds later.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Reports who holds a conflicting lock; exit 0 when free, 1 when held.
pub async fn test(socket: &str, spec: LockSpec) -> u8 {
    let client = match Client::connect(socket).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match client.test(&spec).await {
        Ok(None) => {
            println!("free");
            0
        }
        Ok(Some(h)) => {
            println!(
                "held: {} {}:{} by svid {} owner {}",
                if h.exclusive { "exclusive" } else { "shared" },
                h.offset,
                h.len,
                h.svid,
                h.owner
            );
            exit::BUSY
        }
        Err(e) => fail(&e),
    }
}

/// `latch unlock`: releases the range wherever this user holds it (a lock
/// is its process's; this is for one left by another process of yours,
/// such as a `latch lock` without a command). Exit 1 if none held it.
pub async fn unlock(socket: &str, spec: LockSpec) -> u8 {
    let client = match Client::connect(socket).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match client.release_mine(&spec).await {
        Ok(0) => {
            eprintln!("latch: none of your locks covers that range");
            exit::BUSY
        }
        Ok(n) => {
            println!("released the range for {n} of your lock holders");
            0
        }
        Err(e) => fail(&e),
    }
}

/// Fills in the handle of an NFS path (MOUNT + LOOKUP on its server).
pub async fn resolve(spec: &mut LockSpec, nfs: &Option<(String, String)>) -> Result<(), u8> {
    if let Some((host, path)) = nfs {
        match latch::nfs::file_handle(host, path).await {
            Ok(fh) => spec.file = fh,
            Err(e) => {
                eprintln!("latch: {e}");
                return Err(exit::SERVER);
            }
        }
    }
    Ok(())
}

/// `latch fh SERVER:/PATH`: prints the file handle in hex.
pub async fn fh(host: &str, path: &str) -> u8 {
    match latch::nfs::file_handle(host, path).await {
        Ok(fh) => {
            println!(
                "{}",
                fh.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            0
        }
        Err(e) => {
            eprintln!("latch: {e}");
            exit::SERVER
        }
    }
}

fn fail(e: &Error) -> u8 {
    eprintln!("latch: {}", describe(e));
    error_code(e)
}

/// `--wait[=DURATION]`: `30s`, `5m`, `250ms`, or a number of seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_ranges_and_durations() {
        let t = target("local", "db/lock", None).unwrap();
        assert_eq!((t.server, t.file), (None, b"db/lock".to_vec()));
        assert_eq!(target("srv", "x", Some("0a0B")).unwrap().file, vec![10, 11]);
        assert!(target("srv", "x", Some("abc")).is_err());
        let t = target("srv", "nfs:/export/a", None).unwrap();
        assert_eq!(t.nfs, Some(("nfs".to_string(), "/export/a".to_string())));
        assert_eq!(range(Some("10:20")).unwrap(), (10, 20));
        assert_eq!(range(Some("10:")).unwrap(), (10, 0));
        assert_eq!(range(None).unwrap(), (0, 0));
        assert!(range(Some("x:1")).is_err());
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        assert!(duration("3 days").is_err());
    }
}
