//! Latch beside a real user-space NFS server: Debian's nfs-ganesha serves
//! NFSv3 with its own lock manager off, latchd is the host's NLM, and `latch`
//! names files by NFS path (MOUNT + LOOKUP), so it locks the very handle the
//! kernel's NFS client would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const SERVER_IP: &str = "10.206.0.1";
const CLIENT_IP: &str = "10.206.0.2";

fn latch_bin() -> PathBuf {
    let p = Path::new(LATCHD).with_file_name("latch");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins`",
        p.display()
    );
    p
}

fn latch(args: &[&str]) -> std::process::Output {
    Command::new(latch_bin()).args(args).output().unwrap()
}

#[test]
fn nfs_paths_resolve_to_ganeshas_handles_and_lock_through_latchd() {
    let (server, client) = (Netns::new(), Netns::new());
    link(&server, &client, SERVER_IP, CLIENT_IP);
    let dir = tempdir();
    let export = dir.path().join("export");
    std::fs::create_dir_all(export.join("sub")).unwrap();
    std::fs::write(export.join("a"), "a").unwrap();
    std::fs::write(export.join("sub").join("b"), "b").unwrap();
    let conf = dir.path().join("ganesha.conf");
    std::fs::create_dir_all(dir.path().join("rec")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "NFS_CORE_PARAM {{ Enable_NLM = false; Enable_RQUOTA = false; Protocols = 3; Clustered = false; }}\n\
             NFSV4 {{ Graceless = true; RecoveryRoot = {rec}; }}\n\
             EXPORT {{ Export_Id = 1; Path = {export}; Pseudo = /export; Protocols = 3; Transports = TCP;\n\
                       Access_Type = RW; Squash = No_Root_Squash; FSAL {{ Name = VFS; }} }}\n\
             LOG {{ Default_Log_Level = WARN; }}\n",
            rec = dir.path().join("rec").display(),
            export = export.display(),
        ),
    )
    .unwrap();
    let rpcbind =
        server.spawn_private_run(&["rpcbind", "-f", "-w"], &dir.path().join("rpcbind.log"));
    std::thread::sleep(Duration::from_millis(300));
    let ganesha_log = dir.path().join("ganesha.log");
    let _ganesha = server.spawn_beside(
        &rpcbind,
        &[
            "sh",
            "-c",
            &format!(
            "mkdir -p /run/ganesha && exec ganesha.nfsd -F -f {} -L {} -p /run/ganesha/ganesha.pid",
            conf.display(),
            ganesha_log.display()
        ),
        ],
        &dir.path().join("ganesha.out"),
    );
    let state = dir.path().join("server-state");
    let mut d = server.spawn_beside(
        &rpcbind,
        &[
            LATCHD,
            "--rpcbind",
            "system",
            "--state-dir",
            state.to_str().unwrap(),
            "--admin-socket",
            dir.path().join("sa.sock").to_str().unwrap(),
            "--local-socket",
            dir.path().join("s.sock").to_str().unwrap(),
        ],
        &dir.path().join("server.log"),
    );
    wait_ready(
        &server,
        "127.0.0.1:4045".parse().unwrap(),
        100_021,
        4,
        &mut d,
    );
    // The client host: its own latchd with the local socket.
    let sock = dir.path().join("c.sock");
    let ccfg = dir.path().join("c.toml");
    std::fs::write(&ccfg, format!("[client]\nname = \"{CLIENT_IP}\"\n")).unwrap();
    let mut c = client.spawn_private_run(
        &[
            LATCHD,
            "--config",
            ccfg.to_str().unwrap(),
            "--state-dir",
            dir.path().join("client-state").to_str().unwrap(),
            "--local-socket",
            sock.to_str().unwrap(),
            "--admin-socket",
            dir.path().join("ca.sock").to_str().unwrap(),
        ],
        &dir.path().join("client.log"),
    );
    wait_ready(
        &client,
        "127.0.0.1:4045".parse().unwrap(),
        100_021,
        4,
        &mut c,
    );
    // rpcinfo on the server host: ganesha's NFS and MOUNT, latchd's NLM and NSM.
    let mut listing = String::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        listing = String::from_utf8_lossy(&server.run_beside(&rpcbind, &["rpcinfo", "-p"]).stdout)
            .into_owned();
        if listing.contains("100005") && listing.contains("100021") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for prog in ["100003", "100005", "100021", "100024"] {
        assert!(
            listing.contains(prog),
            "{prog} not registered:\n{listing}\n{}",
            std::fs::read_to_string(&ganesha_log).unwrap_or_default()
        );
    }

    // `latch fh` from the client host: ganesha's handles.
    let path = |p: &str| format!("{SERVER_IP}:{}/{p}", export.display());
    let in_client = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &client.name])
            .arg(latch_bin())
            .args(args)
            .output()
            .unwrap()
    };
    let fh = |p: &str| {
        let out = in_client(&["fh", &path(p)]);
        assert!(
            out.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (a, b) = (fh("a"), fh("sub/b"));
    assert!(
        a.len() >= 8 && a.chars().all(|c| c.is_ascii_hexdigit()),
        "{a}"
    );
    assert_ne!(a, b);
    assert_eq!(fh("a"), a, "the same file, the same handle");
    let missing = in_client(&["fh", &path("nope")]);
    assert_eq!(missing.status.code(), Some(20));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such file"));

    // Lock by path through the client's latchd; the server's NLM sees
    // ganesha's handle for that file.
    let sock_s = sock.to_str().unwrap();
    let mut holder: Child = Command::new("ip")
        .args(["netns", "exec", &client.name])
        .arg(latch_bin())
        .args([
            "lock",
            SERVER_IP,
            &path("a"),
            "--socket",
            sock_s,
            "--",
            "sleep",
            "60",
        ])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let held = |fh: &str| {
        latch(&["test", SERVER_IP, "x", "--fh", fh, "--socket", sock_s])
            .status
            .code()
    };
    let t0 = Instant::now();
    while held(&a) != Some(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "never held:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(held(&b), Some(0), "another file is free");
    // SAFETY: signalling the process group of a child we spawned (latch and
    // its command).
    unsafe { libc::killpg(holder.id() as i32, libc::SIGKILL) };
    let _ = holder.wait();
    let t0 = Instant::now();
    while held(&a) != Some(0) {
        assert!(t0.elapsed() < Duration::from_secs(15), "never released");
        std::thread::sleep(Duration::from_millis(100));
    }
}
