//! latchd as seen by Debian's `rpcinfo`: registered with the host's real
//! rpcbind, or with latchd's own embedded one, over IPv4 and IPv6.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

const NLM: u32 = 100_021;
const NSM: u32 = 100_024;

/// (program, version, proto) rows of `rpcinfo -p`.
fn rows(out: &str) -> Vec<(u32, u32, String, u16)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.to_string(),
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

fn assert_lists_latch(p: &str, port: u16) {
    let rows = rows(p);
    let mut want = vec![];
    for v in [1, 3, 4] {
        want.push((NLM, v));
    }
    want.push((NSM, 1));
    for (prog, vers) in want {
        for proto in ["udp", "tcp"] {
            assert!(
                rows.contains(&(prog, vers, proto.to_string(), port)),
                "missing {prog} v{vers} {proto} port {port} in:\n{p}"
            );
        }
    }
    assert!(
        !rows.iter().any(|r| r.0 == NLM && r.1 == 2),
        "v2 is not advertised"
    );
}

/// Pings every program and version with -u, -t and over IPv6 with -T.
fn assert_pings(ns: &Netns, host: &Daemon) {
    for (prog, vers) in [(NLM, 1), (NLM, 3), (NLM, 4), (NSM, 1)] {
        let (p, v) = (prog.to_string(), vers.to_string());
        for args in [
            vec!["rpcinfo", "-u", "127.0.0.1", &p, &v],
            vec!["rpcinfo", "-t", "127.0.0.1", &p, &v],
            vec!["rpcinfo", "-T", "udp6", "::1", &p, &v],
            vec!["rpcinfo", "-T", "tcp6", "::1", &p, &v],
        ] {
            let out = ns.run_beside(host, &args);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("ready and waiting"),
                "{args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn embedded_rpcbind_serves_rpcinfo_on_v4_v6_and_the_local_socket() {
    let ns = Netns::new();
    let dir = tempdir();
    let state = dir.path().join("nsm");
    let mut d = ns.spawn_private_run(
        &[LATCHD, "--state-dir", state.to_str().unwrap()],
        &dir.path().join("latchd.log"),
    );
    wait_ready(&ns, "127.0.0.1:4045".parse().unwrap(), NLM, 4, &mut d);
    assert!(
        d.log_text().contains("no rpcbind found"),
        "{}",
        d.log_text()
    );
    // `rpcinfo -p` with no host talks to /run/rpcbind.sock.
    let local = run_ok(std::process::Command::new("nsenter").args([
        "-t",
        &d.pid().to_string(),
        "-n",
        "-m",
        "--",
        "rpcinfo",
        "-p",
    ]));
    assert_lists_latch(&local, 4045);
    assert!(rows(&local).iter().any(|r| r.0 == 100_000 && r.3 == 111));
    let remote = run_ok(std::process::Command::new("nsenter").args([
        "-t",
        &d.pid().to_string(),
        "-n",
        "-m",
        "--",
        "rpcinfo",
        "-p",
        "127.0.0.1",
    ]));
    assert_lists_latch(&remote, 4045);
    assert_pings(&ns, &d);
    // The v3/v4 view lists IPv6 transports too.
    let s = run_ok(std::process::Command::new("nsenter").args([
        "-t",
        &d.pid().to_string(),
        "-n",
        "-m",
        "--",
        "rpcinfo",
        "-s",
        "127.0.0.1",
    ]));
    let nlm_line = s
        .lines()
        .find(|l| l.trim_start().starts_with("100021"))
        .unwrap();
    for netid in ["udp6", "tcp6", "udp", "tcp"] {
        assert!(nlm_line.contains(netid), "{s}");
    }
    let st = d.terminate();
    assert!(st.success(), "exit {st:?}\n{}", d.log_text());
}

#[test]
fn registers_with_the_system_rpcbind_and_unregisters_on_sigterm() {
    let ns = Netns::new();
    let dir = tempdir();
    let rpcbind = ns.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.path().join("rpcbind.log"));
    let mut up = false;
    for _ in 0..100 {
        let out = ns.run_beside(&rpcbind, &["rpcinfo", "-p"]);
        if out.status.success() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "rpcbind did not start: {}", rpcbind.log_text());
    let mut d = ns.spawn_beside(
        &rpcbind,
        &[
            LATCHD,
            "--rpcbind",
            "system",
            "--nlm-port",
            "4001",
            "--nsm-port",
            "4002",
        ],
        &dir.path().join("latchd.log"),
    );
    wait_ready(&ns, "127.0.0.1:4001".parse().unwrap(), NLM, 4, &mut d);
    // Ready on the NLM port does not yet mean registered: wait for that too.
    let mut listed = String::new();
    for _ in 0..100 {
        listed = String::from_utf8_lossy(&ns.run_beside(&rpcbind, &["rpcinfo", "-p"]).stdout)
            .into_owned();
        if listed.contains("100024") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let rows_ = rows(&listed);
    for v in [1, 3, 4] {
        assert!(rows_.contains(&(NLM, v, "udp".into(), 4001)), "{listed}");
        assert!(rows_.contains(&(NLM, v, "tcp".into(), 4001)), "{listed}");
    }
    assert!(rows_.contains(&(NSM, 1, "udp".into(), 4002)), "{listed}");
    assert!(rows_.contains(&(NSM, 1, "tcp".into(), 4002)), "{listed}");
    assert_pings(&ns, &d);
    assert!(!d.log_text().contains("serving our own"));
    let st = d.terminate();
    assert!(st.success(), "{}", d.log_text());
    let after =
        String::from_utf8_lossy(&ns.run_beside(&rpcbind, &["rpcinfo", "-p"]).stdout).into_owned();
    assert!(
        !after.contains("100021") && !after.contains("100024"),
        "still registered:\n{after}"
    );
    assert!(after.contains("100000"), "{after}");
}

#[test]
fn system_mode_without_rpcbind_fails_clearly() {
    let ns = Netns::new();
    let dir = tempdir();
    let state = dir.path().join("nsm");
    let mut d = ns.spawn_private_run(
        &[
            LATCHD,
            "--rpcbind",
            "system",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &dir.path().join("l.log"),
    );
    let st = d.child.wait().unwrap();
    assert!(!st.success());
    assert!(
        d.log_text().contains("no rpcbind answers on 127.0.0.1:111"),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_bad_config_line_is_named_and_nothing_starts() {
    let dir = tempdir();
    let cfg = dir.path().join("latchd.toml");
    std::fs::write(&cfg, "nlm_port = 4045\n[limits]\nmax_conections = 3\n").unwrap();
    let out = std::process::Command::new(LATCHD)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("max_conections"),
        "{err}"
    );
}
