//! Latch's status monitor over real sockets, and with the real thing on the
//! other side: nfs-common's `sm-notify` and `rpc.statd` in a second
//! network namespace. Crash safety by SIGKILL at random points.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use latch_nsm::proto::*;
use latch_nsm::{FileStore, Storage};
use latch_xdr::{FixedOpaque, XdrString};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const SERVER_IP: &str = "10.200.0.1";
const CLIENT_IP: &str = "10.200.0.2";

fn nsm_at() -> SocketAddr {
    "127.0.0.1:4045".parse().unwrap()
}

fn mon_args(host: &str, prog: u32, vers: u32, proc_: u32, p: u8) -> Vec<u8> {
    latch_xdr::to_bytes(&Mon {
        mon_id: MonId {
            mon_name: XdrString::from_text(host).unwrap(),
            my_id: MyId {
                my_name: XdrString::from_text("localhost").unwrap(),
                my_prog: prog,
                my_vers: vers,
                my_proc: proc_,
            },
        },
        priv_: FixedOpaque([p; 16]),
    })
}

fn latchd(ns: &Netns, dir: &Path, extra_cfg: &str) -> Daemon {
    let cfg = dir.join("latchd.toml");
    std::fs::write(
        &cfg,
        format!("[nsm]\nnames = [\"{SERVER_IP}\"]\nnotify_timeout_ms = 20000\n{extra_cfg}\n"),
    )
    .unwrap();
    let state = dir;
    let mut d = ns.spawn_private_run(
        &[
            LATCHD,
            "--config",
            cfg.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &dir.join(format!(
            "latchd-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )),
    );
    wait_ready(ns, nsm_at(), PROGRAM, VERSION, &mut d);
    d
}

fn sm_stat(ns: &Netns, at: SocketAddr) -> SmStatRes {
    let s = ns.udp();
    let args = latch_xdr::to_bytes(&SmName {
        mon_name: XdrString::from_text("x").unwrap(),
    });
    let r = udp_call_retry(&s, at, &call_bytes(1, PROGRAM, VERSION, SM_STAT, &args));
    latch_xdr::from_bytes(results(&r)).unwrap()
}

fn sm_mon(s: &std::net::UdpSocket, at: SocketAddr, args: &[u8]) -> SmStatRes {
    let r = udp_call_retry(
        s,
        at,
        &call_bytes(rand_xid(), PROGRAM, VERSION, SM_MON, args),
    );
    latch_xdr::from_bytes(results(&r)).unwrap()
}

fn rand_xid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static X: AtomicU32 = AtomicU32::new(0x1000);
    X.fetch_add(1, Ordering::Relaxed)
}

/// rpcbind and rpc.statd in `ns` with a private /run, state in `dir`.
fn statd(ns: &Netns, dir: &Path) -> (Daemon, Daemon) {
    for sub in ["sm", "sm.bak"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let rpcbind = ns.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.join("rpcbind.log"));
    std::thread::sleep(Duration::from_millis(300));
    let statd = ns.spawn_beside(
        &rpcbind,
        &[
            "rpc.statd",
            "-F",
            "-d",
            "-L",
            "-P",
            dir.to_str().unwrap(),
            "-n",
            CLIENT_IP,
        ],
        &dir.join("statd.log"),
    );
    assert!(
        wait_listed(ns, &rpcbind, "100024").1,
        "statd did not register: {}",
        statd.log_text()
    );
    (rpcbind, statd)
}

fn status_of(args: &[u8]) -> Status {
    latch_xdr::from_bytes(args).unwrap()
}

#[test]
fn procedures_over_the_wire_and_the_loopback_rule() {
    let ns = Netns::new();
    // A second, non-loopback address on this host.
    run_ok(Command::new("ip").args(["-n", &ns.name, "addr", "add", "10.201.0.1/32", "dev", "lo"]));
    let dir = tempdir();
    let mut d = latchd(&ns, dir.path(), "");
    let st = sm_stat(&ns, nsm_at());
    assert_eq!(st.res_stat, STAT_SUCC);
    assert_eq!(st.state % 2, 1, "odd while up");
    // From a non-loopback address: refused, nothing recorded.
    let remote = reserved_udp(&ns, "10.201.0.1");
    let to = "10.201.0.1:4045".parse().unwrap();
    assert_eq!(
        sm_mon(&remote, to, &mon_args("h1", 200_100, 1, 1, 0)).res_stat,
        STAT_FAIL
    );
    let local = reserved_udp(&ns, "127.0.0.1");
    let r = sm_mon(&local, nsm_at(), &mon_args("h2", 200_100, 1, 1, 0));
    assert_eq!(
        r,
        SmStatRes {
            res_stat: STAT_SUCC,
            state: st.state
        }
    );
    // SM_SIMU_CRASH from loopback bumps the state by two.
    udp_call_retry(
        &local,
        nsm_at(),
        &call_bytes(rand_xid(), PROGRAM, VERSION, SM_SIMU_CRASH, &[]),
    );
    assert_eq!(sm_stat(&ns, nsm_at()).state, st.state + 2);
    d.terminate();
    let p = FileStore::open(dir.path().join("nsm"))
        .unwrap()
        .load()
        .unwrap();
    let names: Vec<_> = p
        .monitored
        .iter()
        .chain(&p.to_notify)
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(names, vec![b"h2".to_vec()]);
    assert_eq!(p.state, st.state + 2);
}

#[test]
fn sm_notify_from_a_real_client_reaches_the_registered_callback() {
    let (server, client) = (Netns::new(), Netns::new());
    link(&server, &client, SERVER_IP, CLIENT_IP);
    // sm-notify turns its address into a name, so the client must have one.
    client.hosts(&[(CLIENT_IP, "client"), (SERVER_IP, "server")]);
    let sdir = tempdir();
    let _d = latchd(&server, sdir.path(), "");
    let listener = Listener::start(&server);
    rpcb_set(&server, 200_100, 1, listener.port);
    let local = reserved_udp(&server, "127.0.0.1");
    assert_eq!(
        sm_mon(&local, nsm_at(), &mon_args(CLIENT_IP, 200_100, 1, 1, 0x42)).res_stat,
        STAT_SUCC
    );

    // The client's statd monitors the server (as its kernel would on a lock),
    // which writes the record sm-notify reads after the client "reboots".
    let cdir = tempdir();
    let (rpcbind, mut statd) = statd(&client, cdir.path());
    let statd_port = rpcb_getport(&client, PROGRAM, VERSION);
    let cs = reserved_udp(&client, "127.0.0.1");
    let to = SocketAddr::new("127.0.0.1".parse().unwrap(), statd_port);
    let r = sm_mon(&cs, to, &mon_args(SERVER_IP, 100_021, 3, 16, 0));
    assert_eq!(r.res_stat, STAT_SUCC, "{}", statd.log_text());
    statd.terminate();
    let out = sm_notify(&client, &rpcbind, cdir.path(), CLIENT_IP, &[]);
    assert!(
        out.status.success(),
        "sm-notify: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (vers, proc_, args) = listener.next(15).expect("callback from latchd's NSM");
    assert_eq!((vers, proc_), (1, 1));
    let s = status_of(&args);
    assert_eq!(s.mon_name.as_bytes(), CLIENT_IP.as_bytes());
    assert_eq!(s.priv_, FixedOpaque([0x42; 16]));
    assert!(s.state > 0);
    // The same notification again is stale: no second callback.
    let again = sm_notify(&client, &rpcbind, cdir.path(), CLIENT_IP, &["-n"]);
    let _ = again;
    assert!(
        listener.next(3).is_none(),
        "a repeated state must not call back twice"
    );
}

#[test]
fn our_restart_reaches_a_real_statd_which_calls_its_lock_manager_back() {
    let (server, client) = (Netns::new(), Netns::new());
    link(&server, &client, SERVER_IP, CLIENT_IP);
    let cdir = tempdir();
    let (_rpcbind, statd) = statd(&client, cdir.path());
    // Our stand-in for the client's lockd, registered as NLM v3.
    let lockd = Listener::start(&client);
    rpcb_set(&client, 100_021, 3, lockd.port);
    let statd_port = rpcb_getport(&client, PROGRAM, VERSION);
    let cs = reserved_udp(&client, "127.0.0.1");
    let to = SocketAddr::new("127.0.0.1".parse().unwrap(), statd_port);
    let r = sm_mon(&cs, to, &mon_args(SERVER_IP, 100_021, 3, 16, 0x17));
    assert_eq!(r.res_stat, STAT_SUCC, "{}", statd.log_text());

    let sdir = tempdir();
    let mut d = latchd(&server, sdir.path(), "");
    let local = reserved_udp(&server, "127.0.0.1");
    assert_eq!(
        sm_mon(&local, nsm_at(), &mon_args(CLIENT_IP, 100_021, 4, 16, 0)).res_stat,
        STAT_SUCC
    );
    let before = sm_stat(&server, nsm_at()).state;
    // Crash, and come back.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let _d2 = latchd(&server, sdir.path(), "");
    let after = sm_stat(&server, nsm_at()).state;
    assert!(after > before && after % 2 == 1, "{before} -> {after}");

    let (vers, proc_, args) = lockd
        .next(20)
        .unwrap_or_else(|| panic!("statd did not call back: {}", statd.log_text()));
    assert_eq!((vers, proc_), (3, 16));
    let s = status_of(&args);
    assert_eq!(s.mon_name.as_bytes(), SERVER_IP.as_bytes());
    assert_eq!(s.state, after);
    assert_eq!(s.priv_, FixedOpaque([0x17; 16]));
}

/// SIGKILL at random points while hosts are monitored and unmonitored: after
/// each restart the state number grew and is odd, and every host whose
/// SM_MON was answered (and not unmonitored since) is still on the list.
#[test]
fn sigkill_at_random_points_loses_nothing_promised() {
    let ns = Netns::new();
    let dir = tempdir();
    let mut last_state = 0;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..8 {
        let mut d = latchd(&ns, dir.path(), "notify_check = \"off\"");
        let st = sm_stat(&ns, nsm_at()).state;
        assert!(
            st > last_state && st % 2 == 1,
            "round {round}: {last_state} -> {st}"
        );
        last_state = st;
        let s = reserved_udp(&ns, "127.0.0.1");
        let kill_after = Duration::from_millis(20 + rnd() % 200);
        let pid = d.pid() as i32;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let mut kept = std::collections::BTreeSet::new();
        let mut log = vec![];
        for i in 0.. {
            let host = format!("127.1.{round}.{}", i % 40);
            let unmon = rnd() % 3 == 0;
            let msg = if unmon {
                let id = latch_xdr::to_bytes(&MonId {
                    mon_name: XdrString::from_text(&host).unwrap(),
                    my_id: MyId {
                        my_name: XdrString::from_text("localhost").unwrap(),
                        my_prog: 200_100,
                        my_vers: 1,
                        my_proc: 1,
                    },
                });
                call_bytes(rand_xid(), PROGRAM, VERSION, SM_UNMON, &id)
            } else {
                call_bytes(
                    rand_xid(),
                    PROGRAM,
                    VERSION,
                    SM_MON,
                    &mon_args(&host, 200_100, 1, 1, 0),
                )
            };
            // An unanswered call may or may not have happened; stop there.
            let r = udp_call(&s, nsm_at(), &msg);
            log.push((host.clone(), unmon, r.clone()));
            let Some(r) = r else {
                if unmon {
                    kept.remove(&host);
                }
                break;
            };
            if unmon {
                kept.remove(&host);
            } else if latch_xdr::from_bytes::<SmStatRes>(results(&r))
                .unwrap()
                .res_stat
                == STAT_SUCC
            {
                kept.insert(host);
            }
        }
        killer.join().unwrap();
        d.child.wait().unwrap();
        let p = FileStore::open(dir.path().join("nsm"))
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(p.state, st, "the state on disk is the one we answered with");
        let on_disk: std::collections::BTreeSet<String> = p
            .monitored
            .iter()
            .chain(&p.to_notify)
            .map(|r| String::from_utf8(r.name.clone()).unwrap())
            .collect();
        for h in &kept {
            assert!(
                on_disk.contains(h),
                "round {round}: {h} was promised but lost; log: {:?} disk {on_disk:?}",
                log.iter()
                    .filter(|(x, _, _)| x == h)
                    .map(|(_, u, r)| (*u, r.as_ref().map(|r| results(r).to_vec())))
                    .collect::<Vec<_>>()
            );
        }
    }
}
