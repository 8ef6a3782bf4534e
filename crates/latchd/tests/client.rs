//! The client side end to end: two latchd, one on a "server" host and one
//! on a "client" host (two network namespaces), and real `latch lock`
//! processes and the library's example program on the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use latch_nlm::proto::*;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const SERVER_IP: &str = "10.205.0.1";
const CLIENT_IP: &str = "10.205.0.2";

fn latch_bin() -> PathBuf {
    let p = Path::new(LATCHD).with_file_name("latch");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test does)",
        p.display()
    );
    p
}

fn example(name: &str) -> PathBuf {
    let p = Path::new(LATCHD).with_file_name("examples").join(name);
    assert!(
        p.exists(),
        "{} is missing: `cargo test` builds examples",
        p.display()
    );
    p
}

struct Hosts {
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    server_d: Option<Daemon>,
    client_d: Option<Daemon>,
}

impl Hosts {
    fn new() -> Hosts {
        let (server, client) = (Netns::new(), Netns::new());
        link(&server, &client, SERVER_IP, CLIENT_IP);
        let dir = tempdir();
        let mut h = Hosts {
            server,
            client,
            dir,
            server_d: None,
            client_d: None,
        };
        h.start_server();
        h.client_d = Some(h.start(&h.client, "client", CLIENT_IP));
        h
    }

    fn start(&self, ns: &Netns, tag: &str, ip: &str) -> Daemon {
        let d = self.dir.path();
        let cfg = d.join(format!("{tag}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[nsm]\nnames = [\"{ip}\"]\nnotify_timeout_ms = 30000\n[client]\nname = \"{ip}\"\nresend_blocked_ms = 2000\n[nlm]\ngrace_ms = 20000\ngrace_min_ms = 3000\n"
            ),
        )
        .unwrap();
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut daemon = ns.spawn_private_run(
            &[
                LATCHD,
                "--config",
                cfg.to_str().unwrap(),
                "--state-dir",
                d.join(format!("{tag}-state")).to_str().unwrap(),
                "--local-socket",
                d.join(format!("{tag}.sock")).to_str().unwrap(),
                "--admin-socket",
                d.join(format!("{tag}-admin.sock")).to_str().unwrap(),
            ],
            &d.join(format!("{tag}-{n}.log")),
        );
        wait_ready(
            ns,
            "127.0.0.1:4045".parse().unwrap(),
            PROGRAM,
            4,
            &mut daemon,
        );
        daemon
    }

    fn start_server(&mut self) {
        let d = self.start(&self.server, "server", SERVER_IP);
        self.server_d = Some(d);
    }

    fn kill_server(&mut self) {
        let mut d = self.server_d.take().unwrap();
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    }

    fn sock(&self, tag: &str) -> String {
        self.dir
            .path()
            .join(format!("{tag}.sock"))
            .to_str()
            .unwrap()
            .to_string()
    }

    /// `latch ARGS` on the client host, in its own process group so the
    /// test can end it and its command together.
    fn latch(&self, args: &[&str]) -> Child {
        Command::new(latch_bin())
            .args(args)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        let s = self
            .server_d
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default();
        let c = self
            .client_d
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default();
        format!("--- server ---\n{s}\n--- client ---\n{c}")
    }
}

/// Ends a `latch` we started and its command (its process group).
fn kill_group(c: &mut Child) {
    // SAFETY: signalling the process group of a child we spawned.
    unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
    let _ = c.wait();
}

/// `latch test` until it exits with `code`; false if it never does.
fn until_test(h: &Hosts, args: &[&str], code: i32, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let out = Command::new(latch_bin())
            .arg("test")
            .args(args)
            .output()
            .unwrap();
        if out.status.code() == Some(code) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = h;
    false
}

#[test]
fn latch_lock_waits_for_the_holder_and_a_killed_holder_releases() {
    let h = Hosts::new();
    let sock = h.sock("client");
    let log = h.dir.path().join("order.log");
    let logs = log.to_str().unwrap().to_string();
    let mut a = h.latch(&[
        "lock",
        SERVER_IP,
        "f",
        "--socket",
        &sock,
        "--",
        "sh",
        "-c",
        &format!("echo A-start >> {logs}; sleep 1.5; echo A-end >> {logs}"),
    ]);
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("A-start")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "A never ran: {}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Without --wait: refused at once, exit 1.
    let busy = Command::new(latch_bin())
        .args(["lock", SERVER_IP, "f", "--socket", &sock, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        busy.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    // With --wait: runs after A.
    let b = Command::new(latch_bin())
        .args([
            "lock",
            SERVER_IP,
            "f",
            "--wait",
            "--socket",
            &sock,
            "--",
            "sh",
            "-c",
            &format!("echo B-start >> {logs}"),
        ])
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert!(a.wait().unwrap().success());
    let order = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        vec!["A-start", "A-end", "B-start"]
    );
    // CMD's exit code is latch's.
    let c = Command::new(latch_bin())
        .args([
            "lock", SERVER_IP, "f", "--socket", &sock, "--", "sh", "-c", "exit 7",
        ])
        .status()
        .unwrap();
    assert_eq!(c.code(), Some(7));

    // A holder killed with SIGKILL: latchd sees its connection close and
    // releases the lock on the server.
    let mut holder = h.latch(&[
        "lock", SERVER_IP, "g", "--socket", &sock, "--", "sleep", "60",
    ]);
    assert!(
        until_test(&h, &[SERVER_IP, "g", "--socket", &sock], 1, 10),
        "never held"
    );
    kill_group(&mut holder);
    assert!(
        until_test(&h, &[SERVER_IP, "g", "--socket", &sock], 0, 10),
        "not released: {}",
        h.log()
    );
    // `latch test` says who holds what.
    let mut holder = h.latch(&[
        "lock", SERVER_IP, "g", "--range", "10:5", "--shared", "--socket", &sock, "--", "sleep",
        "60",
    ]);
    assert!(until_test(&h, &[SERVER_IP, "g", "--socket", &sock], 1, 10));
    let out = Command::new(latch_bin())
        .args(["test", SERVER_IP, "g", "--socket", &sock])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("shared 10:5"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    kill_group(&mut holder);
    // latchd not running: its own exit code.
    let gone = Command::new(latch_bin())
        .args([
            "test",
            SERVER_IP,
            "g",
            "--socket",
            "/nonexistent/latchd.sock",
        ])
        .status()
        .unwrap();
    assert_eq!(gone.code(), Some(10));
}

#[test]
fn latch_unlock_frees_a_lock_held_by_another_of_your_processes() {
    let h = Hosts::new();
    for (server, sock) in [(SERVER_IP, h.sock("client")), ("local", h.sock("server"))] {
        // `latch lock` without a command holds until interrupted.
        let mut holder = h.latch(&["lock", server, "u", "--socket", &sock]);
        assert!(
            until_test(&h, &[server, "u", "--socket", &sock], 1, 10),
            "{server}: never held"
        );
        let out = Command::new(latch_bin())
            .args(["unlock", server, "u", "--socket", &sock])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{server}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            until_test(&h, &[server, "u", "--socket", &sock], 0, 10),
            "{server}: still held"
        );
        // Nothing of ours is left there now.
        let again = Command::new(latch_bin())
            .args(["unlock", server, "u", "--socket", &sock])
            .status()
            .unwrap();
        assert_eq!(again.code(), Some(1), "{server}");
        kill_group(&mut holder);
    }
}

/// One JSON line to latchd's local socket and the answers until `until`.
fn jsonl(stream: &mut std::os::unix::net::UnixStream, line: &str) {
    use std::io::Write;
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn read_line(r: &mut std::io::BufReader<std::os::unix::net::UnixStream>) -> serde_json::Value {
    use std::io::BufRead;
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))
}

#[test]
fn a_local_lease_is_broken_by_a_remote_lock_which_waits_for_it() {
    let h = Hosts::new();
    // A program on the server host takes a write lease through the socket.
    let mut s = std::os::unix::net::UnixStream::connect(h.sock("server")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    jsonl(&mut s, r#"{"id":1,"op":"lease","fh":"6c","kind":"write"}"#);
    assert_eq!(read_line(&mut r)["status"], "granted");
    // A remote client wants the file: it waits, and the holder hears.
    let mut waiter = h.latch(&[
        "lock",
        SERVER_IP,
        "l",
        "--wait=20s",
        "--socket",
        &h.sock("client"),
        "--",
        "true",
    ]);
    let ev = read_line(&mut r);
    assert_eq!(
        (ev["event"].as_str(), ev["fh"].as_str(), ev["to"].as_str()),
        (Some("lease_break"), Some("6c"), Some("none")),
        "{ev}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "not granted over a lease being broken"
    );
    // The holder gives the lease up: the remote lock is granted.
    jsonl(&mut s, r#"{"id":2,"op":"lease","fh":"6c","kind":"none"}"#);
    assert_eq!(read_line(&mut r)["status"], "granted");
    assert!(waiter.wait().unwrap().success());
}

#[test]
fn the_library_example_never_loses_an_update() {
    let h = Hosts::new();
    let sock = h.sock("client");
    let file = h.dir.path().join("counter");
    let runs: Vec<Child> = (0..4)
        .map(|_| {
            Command::new(example("counter"))
                .args([
                    sock.as_str(),
                    SERVER_IP,
                    "counter-lock",
                    file.to_str().unwrap(),
                    "25",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut r in runs {
        assert!(r.wait().unwrap().success());
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "100");
}

/// A raw NLM LOCK from another client host (same namespace, another
/// caller name) to see what the server answers.
fn other_lock(s: &UdpSocket, xid: u32) -> Stat {
    let l = Lock {
        caller_name: Name::from_text("intruder").unwrap(),
        fh: Netobj::from_slice(b"r").unwrap(),
        oh: Netobj::from_slice(b"intruder-1").unwrap(),
        svid: 1,
        offset: 0,
        len: 0,
    };
    let a = LockArgs {
        cookie: Netobj::default(),
        block: false,
        exclusive: true,
        lock: l,
        reclaim: false,
        state: 0,
    };
    let to: SocketAddr = format!("{SERVER_IP}:4045").parse().unwrap();
    let r = udp_call_retry(s, to, &call_bytes(xid, PROGRAM, 4, LOCK, &encode(&a, 4)));
    decode::<Res>(results(&r), 4).unwrap().stat
}

#[test]
fn after_the_server_restarts_the_client_reclaims_and_nobody_gets_in_between() {
    let mut h = Hosts::new();
    let sock = h.sock("client");
    let mut holder = h.latch(&[
        "lock", SERVER_IP, "r", "--socket", &sock, "--", "sleep", "120",
    ]);
    assert!(
        until_test(&h, &[SERVER_IP, "r", "--socket", &sock], 1, 10),
        "never held"
    );
    let s = h
        .client
        .enter(|| UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap());
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(other_lock(&s, 1), Stat::Denied);
    h.kill_server();
    let restarted = Instant::now();
    h.start_server();
    // Until the client has reclaimed, and after: never granted to the other.
    let mut saw = vec![];
    let mut xid = 10;
    while restarted.elapsed() < Duration::from_secs(8) {
        xid += 1;
        let st = other_lock(&s, xid);
        assert_ne!(
            st,
            Stat::Granted,
            "someone else got the lock during recovery: {}",
            h.log()
        );
        if saw.last() != Some(&st) {
            saw.push(st);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(saw.first(), Some(&Stat::DeniedGracePeriod), "{saw:?}");
    assert_eq!(
        saw.last(),
        Some(&Stat::Denied),
        "grace ended and the reclaimed lock holds: {saw:?}\n{}",
        h.log()
    );
    // The holder's lock is still its own: once it ends, the other gets it.
    kill_group(&mut holder);
    let t0 = Instant::now();
    loop {
        xid += 1;
        if other_lock(&s, xid) == Stat::Granted {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn local_programs_on_the_server_and_remote_ones_share_one_queue() {
    let h = Hosts::new();
    let log = h.dir.path().join("order.log");
    let logs = log.to_str().unwrap().to_string();
    // A program on the server host holds the lock, through the server's
    // own engine ("local").
    let mut a = Command::new(latch_bin())
        .args([
            "lock",
            "local",
            "q",
            "--socket",
            &h.sock("server"),
            "--",
            "sh",
            "-c",
            &format!("echo local-start >> {logs}; sleep 1; echo local-end >> {logs}"),
        ])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("local-start")
    {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    // A program on the client host waits for it over NLM.
    let b = Command::new(latch_bin())
        .args([
            "lock",
            SERVER_IP,
            "q",
            "--wait=20s",
            "--socket",
            &h.sock("client"),
            "--",
            "sh",
            "-c",
            &format!("echo remote >> {logs}"),
        ])
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert!(a.wait().unwrap().success());
    let order = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        vec!["local-start", "local-end", "remote"]
    );
}
