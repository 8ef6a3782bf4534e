//! An independent client: `tests/interop/nlm_libnfs.c`, built here against
//! Debian's libnfs, drives TEST/LOCK/UNLOCK/CANCEL and a blocked lock granted
//! by callback against latchd, from a client host (its own namespace, with
//! Debian's rpcbind, where the C program registers its libnfs callback
//! service). dumpcap records the link between the two hosts and tshark must
//! decode every NLM call and reply in it, with no malformed packet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const SERVER_IP: &str = "10.201.0.1";
const CLIENT_IP: &str = "10.201.0.2";

/// Compiles the C program into `dir`, with libnfs's flags from pkg-config.
fn build_client(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/nlm_libnfs.c");
    let out = dir.join("nlm_libnfs");
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libnfs"])
        .output()
        .expect("pkg-config (scripts/deps installs it)");
    assert!(
        flags.status.success(),
        "libnfs-dev missing (scripts/deps installs it): {}",
        String::from_utf8_lossy(&flags.stderr)
    );
    let flags = String::from_utf8(flags.stdout).unwrap();
    let mut cc = Command::new("cc");
    cc.args([
        "-std=c99",
        "-D_DEFAULT_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O1",
    ])
    .arg("-o")
    .arg(&out)
    .arg(&src)
    .args(flags.split_whitespace());
    run_ok(&mut cc);
    out
}

/// Runs tshark on a capture file (no name resolution, nothing sent anywhere).
fn tshark(file: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n").arg("-r").arg(file).args(args);
    run_ok(&mut cmd)
}

#[test]
fn libnfs_client_against_latchd_and_tshark_decodes_it() {
    let started = Instant::now();
    let dir = tempdir();
    let client_bin = build_client(dir.path());

    let (server, client) = (Netns::new(), Netns::new());
    link(&server, &client, SERVER_IP, CLIENT_IP);
    for ns in [&server, &client] {
        ns.hosts(&[(CLIENT_IP, "client"), (SERVER_IP, "server")]);
    }

    // The client host: Debian's rpcbind, where the C program registers the
    // libnfs service that receives GRANTED.
    let rpcbind =
        client.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.path().join("rpcbind.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .run_beside(&rpcbind, &["rpcinfo", "-p"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "rpcbind did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The server host: latchd (with its embedded rpcbind).
    let cfg = dir.path().join("latchd.toml");
    std::fs::write(&cfg, format!("[nsm]\nnames = [\"{SERVER_IP}\"]\n")).unwrap();
    let state = dir.path().join("state");
    let mut latchd = server.spawn_private_run(
        &[
            LATCHD,
            "--config",
            cfg.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &dir.path().join("latchd.log"),
    );
    wait_ready(
        &server,
        "127.0.0.1:4045".parse().unwrap(),
        100_021,
        4,
        &mut latchd,
    );

    // Everything on the link between the hosts; it carries only this test.
    let pcap = dir.path().join("nlm.pcapng");
    let mut dumpcap = server.spawn_beside(
        &latchd,
        // A large capture buffer: on a loaded machine the default one can
        // overflow, and a missing segment leaves tshark a TCP record it
        // cannot reassemble.
        &[
            "dumpcap",
            "-n",
            "-B",
            "64",
            "-i",
            "veth0",
            "-w",
            pcap.to_str().unwrap(),
        ],
        &dir.path().join("dumpcap.log"),
    );
    // dumpcap says "Capturing on" before it captures: send probes across
    // the link until it reports having captured packets.
    let probe = client.enter(|| std::net::UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dumpcap.log_text().contains("Packets:") {
        assert!(dumpcap.is_running(), "dumpcap: {}", dumpcap.log_text());
        assert!(Instant::now() < deadline, "dumpcap captures nothing");
        probe.send_to(b"probe", format!("{SERVER_IP}:9")).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut c = client.spawn_beside(
        &rpcbind,
        &[client_bin.to_str().unwrap(), SERVER_IP, "4045"],
        &dir.path().join("client.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = c.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the C client hangs:\n{}\nlatchd:\n{}",
            c.log_text(),
            latchd.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = c.log_text();
    assert!(
        status.success() && out.contains("PASS"),
        "the C client failed ({status}):\n{out}\nlatchd:\n{}",
        latchd.log_text()
    );

    // Let the last answers reach the capture, then end it cleanly.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(dumpcap.terminate().success(), "{}", dumpcap.log_text());

    let malformed = tshark(
        &pcap,
        &["-Y", "_ws.malformed || _ws.expert.severity >= error"],
    );
    assert!(
        malformed.trim().is_empty(),
        "tshark found malformed packets:\n{malformed}\n{}",
        tshark(
            &pcap,
            &["-V", "-Y", "_ws.malformed || _ws.expert.severity >= error"]
        )
    );

    // Every NLM message, as tshark decodes it: message type (0 call,
    // 1 reply), procedure, status (LOCK/UNLOCK/CANCEL/GRANTED or TEST),
    // source and destination address, UDP source port.
    let nlm = tshark(
        &pcap,
        &[
            "-Y",
            "nlm",
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "rpc.msgtyp",
            "-e",
            "nlm.procedure_v4",
            "-e",
            "nlm.stat",
            "-e",
            "nlm.test_stat.stat",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "udp.srcport",
        ],
    );
    let summary = format!("{}\n{}", tshark(&pcap, &[]), dumpcap.log_text());
    let rows: Vec<Vec<&str>> = nlm.lines().map(|l| l.split(',').collect()).collect();
    let count = |msgtyp: &str, proc_: &str, stat: Option<&str>| {
        rows.iter()
            .filter(|r| {
                r[0] == msgtyp
                    && r[1] == proc_
                    && stat.is_none_or(|s| r[2] == s || r.get(3) == Some(&s))
            })
            .count()
    };
    // NLM4 procedures: 0 NULL, 1 TEST, 2 LOCK, 3 CANCEL, 4 UNLOCK, 5 GRANTED;
    // status 0 granted, 1 denied, 3 blocked.
    let want = [
        // libnfs pings with NULL when it connects, then the program does.
        ("call NULL", count("0", "0", None), 2),
        ("reply NULL", count("1", "0", None), 2),
        ("call TEST", count("0", "1", None), 4),
        ("TEST granted", count("1", "1", Some("0")), 2),
        ("TEST denied", count("1", "1", Some("1")), 2),
        ("call LOCK", count("0", "2", None), 3),
        ("LOCK granted", count("1", "2", Some("0")), 1),
        ("LOCK denied", count("1", "2", Some("1")), 1),
        ("LOCK blocked", count("1", "2", Some("3")), 1),
        ("call CANCEL", count("0", "3", None), 1),
        ("CANCEL granted", count("1", "3", Some("0")), 1),
        ("call UNLOCK", count("0", "4", None), 2),
        ("UNLOCK granted", count("1", "4", Some("0")), 2),
        ("call GRANTED", count("0", "5", None), 1),
        ("GRANTED granted", count("1", "5", Some("0")), 1),
    ];
    for (what, got, n) in want {
        assert_eq!(got, n, "{what} in the capture:\n{nlm}\n{summary}");
    }
    // The client calls, except GRANTED, which the server calls back.
    for r in &rows {
        let caller = if (r[0] == "0") == (r[1] == "5") {
            SERVER_IP
        } else {
            CLIENT_IP
        };
        assert_eq!(r[4], caller, "{r:?} in the capture:\n{summary}");
    }
    // latchd runs as root here: its callback comes from a reserved port.
    let granted = rows.iter().find(|r| r[0] == "0" && r[1] == "5").unwrap();
    let port: u16 = granted[6].parse().expect("GRANTED over UDP");
    assert!(port < 1024, "GRANTED from port {port}:\n{summary}");
    // latchd found the callback through the client's rpcbind.
    let getport = tshark(
        &pcap,
        &[
            "-Y",
            &format!("portmap && ip.dst == {CLIENT_IP} && rpc.msgtyp == 0"),
        ],
    );
    assert!(
        !getport.trim().is_empty(),
        "no port mapper call to the client"
    );
    println!(
        "C client:\n{out}\ncapture:\n{summary}\ntest took {:?}",
        started.elapsed()
    );
}
