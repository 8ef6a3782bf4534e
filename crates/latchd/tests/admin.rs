//! The operator's view of a running latchd, through the real `latch`
//! binary: `latch locks/hosts/release/grace/stats` over the admin socket,
//! `/metrics` over HTTP, and `latch probe` from a client host. A server host
//! and a client host in two network namespaces, as in `nlm.rs`.
//!
//! `latch` is another package's binary, which cargo does not build for
//! this package's tests: it is looked for next to latchd's
//! (`target/<profile>/latch`). `scripts/test` builds every binary first;
//! by hand, run `cargo build -p latch` before `cargo test -p latchd --test admin`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use latch_nlm::proto::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use support::*;

const SERVER_IP: &str = "10.201.0.1";
const CLIENT_IP: &str = "10.201.0.2";

fn latch_bin() -> PathBuf {
    let p = Path::new(LATCHD).with_file_name("latch");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p latch` (scripts/test builds every binary first)",
        p.display()
    );
    p
}

fn xid() -> u32 {
    static X: AtomicU32 = AtomicU32::new(0x7000);
    X.fetch_add(1, Ordering::Relaxed)
}

struct World {
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    latchd: Option<Daemon>,
    _rpcbind: Daemon,
}

impl World {
    fn new(cfg: &str) -> World {
        let (server, client) = (Netns::new(), Netns::new());
        link(&server, &client, SERVER_IP, CLIENT_IP);
        for ns in [&server, &client] {
            ns.hosts(&[(CLIENT_IP, "client"), (SERVER_IP, "server")]);
        }
        let dir = tempdir();
        let rpcbind =
            client.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.path().join("rpcbind.log"));
        for _ in 0..100 {
            if client
                .run_beside(&rpcbind, &["rpcinfo", "-p"])
                .status
                .success()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut w = World {
            server,
            client,
            dir,
            latchd: None,
            _rpcbind: rpcbind,
        };
        w.start_latchd(cfg);
        w
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn start_latchd(&mut self, cfg: &str) {
        let path = self.dir.path().join("latchd.toml");
        std::fs::write(
            &path,
            format!(
                "metrics_listen = \"127.0.0.1:9405\"\n{cfg}\n[nsm]\nnames = [\"{SERVER_IP}\"]\n"
            ),
        )
        .unwrap();
        let state = self.dir.path().join("state");
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut d = self.server.spawn_private_run(
            &[
                LATCHD,
                "--config",
                path.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--admin-socket",
                self.socket().to_str().unwrap(),
            ],
            &self.dir.path().join(format!("latchd-{n}.log")),
        );
        wait_ready(
            &self.server,
            "127.0.0.1:4045".parse().unwrap(),
            PROGRAM,
            4,
            &mut d,
        );
        self.latchd = Some(d);
    }

    fn kill_latchd(&mut self) {
        let mut d = self.latchd.take().unwrap();
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    }

    fn log(&self) -> String {
        self.latchd
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    /// `latch ARGS --admin-socket <ours>`.
    fn latch(&self, args: &[&str]) -> Output {
        let out = Command::new(latch_bin())
            .args(args)
            .arg("--admin-socket")
            .arg(self.socket())
            .output()
            .unwrap();
        eprintln!(
            "latch {args:?} -> {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.latch(&a);
        assert_eq!(out.status.code(), Some(0), "{}", self.log());
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A stand-in for the client's lock manager, registered with the
    /// client's rpcbind for NLM version 4; it answers GRANTED with granted.
    fn client_lockd(&self) -> (u16, std::sync::mpsc::Receiver<(u32, Vec<u8>)>) {
        let s = self.client.enter(|| UdpSocket::bind("0.0.0.0:0").unwrap());
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = s.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(call) = latch_oncrpc::msg::parse_call(&buf[..n]) else {
                    continue;
                };
                let mut w = latch_xdr::Writer::new();
                latch_oncrpc::msg::write_accepted_prefix(&mut w, call.xid);
                w.put_u32(0);
                if call.proc_ == GRANTED {
                    let a: TestArgs = decode(call.args, call.vers).unwrap();
                    Res {
                        cookie: a.cookie,
                        stat: Stat::Granted,
                    }
                    .encode_v(&mut w, call.vers);
                }
                let _ = s.send_to(w.as_bytes(), from);
                if tx.send((call.proc_, call.args.to_vec())).is_err() {
                    return;
                }
            }
        });
        rpcb_set(&self.client, PROGRAM, 4, port);
        (port, rx)
    }

    fn udp(&self) -> UdpSocket {
        let s = self
            .client
            .enter(|| UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap());
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    }

    /// GET /metrics from inside the server's namespace.
    fn metrics(&self) -> String {
        let mut s = self
            .server
            .tcp("127.0.0.1:9405".parse().unwrap())
            .expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        text
    }
}

fn call(s: &UdpSocket, proc_: u32, args: &[u8]) -> Vec<u8> {
    let to: SocketAddr = format!("{SERVER_IP}:4045").parse().unwrap();
    let r = udp_call_retry(s, to, &call_bytes(xid(), PROGRAM, 4, proc_, args));
    results(&r).to_vec()
}

fn lk(host: &str, svid: u32, fh: &[u8], offset: u64, len: u64) -> Lock {
    Lock {
        caller_name: Name::from_text(host).unwrap(),
        fh: Netobj::from_slice(fh).unwrap(),
        oh: Netobj::from_slice(format!("{host}-{svid}").as_bytes()).unwrap(),
        svid,
        offset,
        len,
    }
}

fn lock(s: &UdpSocket, l: &Lock, block: bool, reclaim: bool) -> Stat {
    let a = LockArgs {
        cookie: Netobj::from_slice(b"k").unwrap(),
        block,
        exclusive: true,
        lock: l.clone(),
        reclaim,
        state: 0,
    };
    decode::<Res>(&call(s, LOCK, &encode(&a, 4)), 4)
        .unwrap()
        .stat
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// (host, fh hex, state, offset, len) of every entry, sorted.
fn entries(v: &Value) -> Vec<(String, String, String, u64, u64)> {
    let mut e: Vec<_> = v["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["host"].as_str().unwrap().to_string(),
                l["fh"].as_str().unwrap().to_string(),
                l["state"].as_str().unwrap().to_string(),
                l["offset"].as_u64().unwrap(),
                l["len"].as_u64().unwrap(),
            )
        })
        .collect();
    e.sort();
    e
}

#[test]
fn locks_hosts_release_stats_and_metrics_through_the_latch_command() {
    let t0 = Instant::now();
    let w = World::new("");
    let (_port, calls) = w.client_lockd();
    let c = w.udp();
    // Two hosts from the client's address: hostA and hostB.
    assert_eq!(
        lock(&c, &lk("hostA", 1, b"f1", 0, 100), false, false),
        Stat::Granted
    );
    assert_eq!(
        lock(&c, &lk("hostB", 2, b"f2", 0, 0), false, false),
        Stat::Granted
    );
    // hostA waits behind hostB's lock.
    assert_eq!(
        lock(&c, &lk("hostA", 3, b"f2", 10, 5), true, false),
        Stat::Blocked
    );
    std::thread::sleep(Duration::from_millis(50));

    let v = w.json(&["locks"]);
    assert_eq!(
        entries(&v),
        vec![
            ("hostA".into(), hex(b"f1"), "held".into(), 0, 100),
            ("hostA".into(), hex(b"f2"), "waiting".into(), 10, 5),
            ("hostB".into(), hex(b"f2"), "held".into(), 0, 0),
        ]
    );
    for l in v["locks"].as_array().unwrap() {
        assert_eq!(l["addr"], CLIENT_IP);
        assert_eq!(l["mode"], "exclusive");
        assert!(l["age_ms"].as_u64().unwrap() >= 50, "{l}");
    }
    let a1 = v["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["host"] == "hostA" && l["state"] == "held")
        .unwrap();
    assert_eq!(
        (a1["svid"].as_u64(), a1["oh"].as_str()),
        (Some(1), Some(hex(b"hostA-1").as_str()))
    );
    let table = String::from_utf8(w.latch(&["locks"]).stdout).unwrap();
    assert!(table.starts_with("FILE"), "{table}");
    assert!(
        table.contains("hostB (10.201.0.2)") && table.contains("waiting"),
        "{table}"
    );

    let h = w.json(&["hosts"]);
    let mut hosts: Vec<(String, String, u64)> = h["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().into(),
                h["addr"].as_str().unwrap().into(),
                h["entries"].as_u64().unwrap(),
            )
        })
        .collect();
    hosts.sort();
    assert_eq!(
        hosts,
        vec![
            ("hostA".into(), CLIENT_IP.into(), 2),
            ("hostB".into(), CLIENT_IP.into(), 1)
        ]
    );
    assert_eq!(h["in_grace"], false);

    // Releasing hostB frees exactly its lock; hostA's waiter is granted by
    // callback.
    let released = Instant::now();
    let out = w.latch(&["release", "--host", "hostB"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("released 1 host(s) named hostB"));
    let granted = loop {
        let (p, args) = calls
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no GRANTED: {}", w.log()));
        if p == GRANTED {
            break decode::<TestArgs>(&args, 4).unwrap();
        }
    };
    eprintln!("release to GRANTED: {:?}", released.elapsed());
    assert_eq!(
        (
            granted.lock.svid,
            granted.lock.offset,
            granted.lock.len,
            granted.lock.fh.as_bytes()
        ),
        (3, 10, 5, &b"f2"[..])
    );
    let v = w.json(&["locks"]);
    assert_eq!(
        entries(&v),
        vec![
            ("hostA".into(), hex(b"f1"), "held".into(), 0, 100),
            ("hostA".into(), hex(b"f2"), "held".into(), 10, 5),
        ]
    );
    // A name nobody has, and an address hostA is not at: nothing released.
    assert_eq!(
        w.latch(&["release", "--host", "nobody"]).status.code(),
        Some(13)
    );
    assert_eq!(
        w.latch(&["release", "--host", "hostA", "--addr", "10.201.0.9"])
            .status
            .code(),
        Some(13)
    );
    assert_eq!(entries(&w.json(&["locks"])).len(), 2);

    let st = w.json(&["stats"]);
    assert_eq!(st["nlm"]["calls"]["lock"], 3, "{st}");
    assert_eq!(st["nlm"]["results"]["granted"], 2, "{st}");
    assert_eq!(st["nlm"]["results"]["blocked"], 1, "{st}");
    assert!(st["nlm"]["callbacks_sent"].as_u64().unwrap() >= 1, "{st}");
    assert!(
        st["dispatch"]["nlm"]["calls"].as_u64().unwrap() >= 4,
        "{st}"
    );
    assert_eq!(st["engine"]["segments"], 2, "{st}");
    assert!(st["nsm"]["state"].as_u64().unwrap() >= 1, "{st}");
    let human = String::from_utf8(w.latch(&["stats"]).stdout).unwrap();
    assert!(human.contains("callbacks_sent"), "{human}");

    let m = w.metrics();
    for line in [
        "latch_nlm_requests_total{procedure=\"lock\"} 3",
        "latch_nlm_results_total{status=\"granted\"} 2",
        "latch_nlm_results_total{status=\"blocked\"} 1",
        "latch_nlm_locks_held 2",
        "latch_nlm_waiters 0",
        "latch_nlm_hosts 2",
        "latch_nlm_grace 0",
        "latch_nlm_callbacks_retried_total 0",
        "latch_nlm_request_duration_seconds_count{procedure=\"lock\"} 3",
        "latch_nlm_request_duration_seconds_bucket{procedure=\"lock\",le=\"+Inf\"} 3",
        "# TYPE latch_nlm_request_duration_seconds histogram",
        "latch_server_connections{server=\"nlm\"} 0",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    for name in [
        "latch_nsm_mon_total",
        "latch_rpc_drc_hits_total",
        "latch_nlm_callbacks_abandoned_total",
    ] {
        assert!(
            m.contains(&format!("# TYPE {name} counter")),
            "missing {name}\n{m}"
        );
    }
    eprintln!("took {:?}", t0.elapsed());
}

#[test]
fn grace_end_and_the_errors_a_person_can_act_on() {
    let mut w = World::new("[nlm]\ngrace_ms = 60000");
    let c = w.udp();
    assert_eq!(
        lock(&c, &lk("hostA", 1, b"g", 0, 0), false, false),
        Stat::Granted
    );
    w.kill_latchd();
    w.start_latchd("[nlm]\ngrace_ms = 60000");
    let other = lk("hostB", 2, b"g", 0, 0);
    assert_eq!(lock(&c, &other, false, false), Stat::DeniedGracePeriod);
    assert_eq!(w.json(&["hosts"])["in_grace"], true);
    assert!(w.metrics().contains("latch_nlm_grace 1"));
    let out = w.latch(&["grace", "--end"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "grace period ended\n");
    assert_eq!(lock(&c, &other, false, false), Stat::Granted, "{}", w.log());
    assert_eq!(w.json(&["hosts"])["in_grace"], false);
    let again = w.latch(&["grace", "--end"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("not in a grace period"));

    // No latchd at that socket.
    let out = Command::new(latch_bin())
        .args(["locks", "--admin-socket"])
        .arg(w.dir.path().join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("latchd is not running"));
    // The socket is root's alone.
    let meta = std::fs::metadata(w.socket()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(latch_bin())
        .args(["stats", "--admin-socket"])
        .arg(w.socket())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("run as root"));
}

fn probe(ns: &Netns, target: &str) -> Output {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(latch_bin())
        .args(["probe", target])
        .output()
        .unwrap();
    eprintln!(
        "latch probe {target} -> {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn probe_says_ok_of_latchd_and_names_each_failure() {
    let w = World::new("");
    let out = probe(&w.client, SERVER_IP);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", w.log());
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("OK: 10.201.0.1 speaks NLM v1/v3/v4 and NSM"),
        "{last}"
    );
    for line in [
        "NLM v4 udp port 4045",
        "NLM v4 tcp port 4045",
        "NSM v1 udp port 4045",
        "NULL v4 tcp:",
    ] {
        assert!(text.contains(line), "missing {line:?}");
    }
    // The probe left nothing behind but its host entry.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(entries(&w.json(&["locks"])), vec![]);

    // The client's own rpcbind: up, but no lock manager registered.
    let out = probe(&w.client, CLIENT_IP);
    assert_eq!(out.status.code(), Some(21));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL: "));
    // A host with nothing listening at all.
    let empty = Netns::new();
    let out = probe(&empty, "127.0.0.1");
    assert_eq!(out.status.code(), Some(20));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("FAIL: 127.0.0.1:111: no answer"),
        "{text}"
    );
}
