//! `latch`: the command line for people. So far: benchmarks.

mod admin;
mod bench;
mod cmd_lock;
mod probe;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use latch::client::LockSpec;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "Latch: network lock manager tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure a server.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Every lock, waiter and share on this host's latchd (admin socket).
    Locks(admin::Common),
    /// The client hosts this host's latchd knows, their NSM state and locks.
    Hosts(admin::Common),
    /// Drop one client host's locks, waiters and shares (not a reboot);
    /// the waiters behind them are granted.
    Release {
        /// The host's caller name.
        #[arg(long)]
        host: String,
        /// Only the host of that name at this address.
        #[arg(long)]
        addr: Option<std::net::IpAddr>,
        #[command(flatten)]
        common: admin::Common,
    },
    /// The grace period after a restart.
    Grace {
        /// End it now.
        #[arg(long, required = true)]
        end: bool,
        #[command(flatten)]
        common: admin::Common,
    },
    /// latchd's counters.
    Stats(admin::Common),
    /// Run CMD while holding a lock on a file of SERVER (`local`: this
    /// host), through the local latchd: the network flock(1). Exits with
    /// CMD's code; see README for latch's own codes.
    Lock {
        #[command(flatten)]
        file: FileArgs,
        /// Share the range with other shared holders.
        #[arg(long)]
        shared: bool,
        /// Wait for the lock (forever, or this long: 30s, 5m, 250ms).
        #[arg(long, num_args = 0..=1, default_missing_value = "forever")]
        wait: Option<String>,
        /// The command to run (without one: hold until interrupted).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Release a range wherever *you* hold it (locks belong to the process
    /// that took them; this frees one left by another process of yours,
    /// such as `latch lock` without a command).
    Unlock {
        #[command(flatten)]
        file: FileArgs,
    },
    /// Print the NFS file handle of SERVER:/PATH (MOUNT v3 + LOOKUP), in hex.
    Fh {
        /// SERVER:/export/path
        path: String,
    },
    /// Whether a range is free; exit 1 and the holder if not.
    Test {
        #[command(flatten)]
        file: FileArgs,
        #[arg(long)]
        shared: bool,
    },
    /// What a server speaks (rpcbind, NLM versions, NSM), round trips, and
    /// a lock self-test; one verdict line.
    Probe {
        /// Host name or address.
        server: String,
    },
}

#[derive(clap::Args, Debug)]
struct FileArgs {
    /// The NLM server (name or address), or `local` for this host.
    server: String,
    /// The file: a name (its bytes are the handle, as latchd servers take
    /// any opaque handle), or give the handle with --fh.
    file: String,
    /// The file handle in hex.
    #[arg(long)]
    fh: Option<String>,
    /// OFFSET:LENGTH (LENGTH 0 or empty: to the end). Default: whole file.
    #[arg(long)]
    range: Option<String>,
    /// latchd's local socket.
    #[arg(long, default_value = latch::client::DEFAULT_SOCKET)]
    socket: String,
}

impl FileArgs {
    /// The lock, and the NFS path whose handle it still needs.
    fn spec(&self, shared: bool) -> Result<(LockSpec, NfsPath), String> {
        let t = cmd_lock::target(&self.server, &self.file, self.fh.as_deref())?;
        let (offset, len) = cmd_lock::range(self.range.as_deref())?;
        let spec = LockSpec {
            server: t.server,
            file: t.file,
            offset,
            len,
            exclusive: !shared,
        };
        Ok((spec, t.nfs))
    }
}

type NfsPath = Option<(String, String)>;

/// Runs an async command on a small runtime and exits with its code.
fn run_async(f: impl std::future::Future<Output = u8>) -> ! {
    let code = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("latch: {e}");
            cmd_lock::exit::CANNOT_RUN
        }
    };
    std::process::exit(i32::from(code))
}

fn usage(msg: String) -> ! {
    eprintln!("latch: {msg}");
    std::process::exit(2)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtoArg {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadArg {
    Files,
    Ranges,
    Contended,
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// NULL round trips per second with K concurrent clients, against a
    /// target and (optionally) a reference server in the same run.
    Null {
        /// ADDR:PORT[/PROG/VERS] of the server to measure.
        #[arg(long, default_value = "127.0.0.1:4045/100021/4")]
        target: bench::Target,
        /// ADDR:PORT[/PROG/VERS] of the reference, e.g. the system rpcbind
        /// as 127.0.0.1:111/100000/2.
        #[arg(long)]
        reference: Option<bench::Target>,
        #[arg(long, value_delimiter = ',', default_value = "udp,tcp")]
        proto: Vec<ProtoArg>,
        /// Concurrent clients, each with one call in flight.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Length of each measurement.
        #[arg(long, default_value_t = 2000)]
        duration_ms: u64,
    },
    /// NLM LOCK+UNLOCK pairs per second with K clients (and the same
    /// server's NULL rate as the ceiling).
    Lock {
        /// The NLM server, ADDR:PORT.
        #[arg(long, default_value = "127.0.0.1:4045")]
        server: SocketAddr,
        /// The caller name to send: this host's name or address.
        #[arg(long, default_value = "127.0.0.1")]
        caller: String,
        /// This host's port mapper, where the GRANTED listener registers.
        #[arg(long, default_value = "127.0.0.1:111")]
        rpcbind: SocketAddr,
        #[arg(long, value_delimiter = ',', default_value = "files,ranges,contended")]
        workload: Vec<WorkloadArg>,
        #[arg(long, value_delimiter = ',', default_value = "udp,tcp")]
        proto: Vec<ProtoArg>,
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 2000)]
        duration_ms: u64,
    },
}

fn protos(p: &[ProtoArg]) -> Vec<bench::Proto> {
    p.iter()
        .map(|p| match p {
            ProtoArg::Udp => bench::Proto::Udp,
            ProtoArg::Tcp => bench::Proto::Tcp,
        })
        .collect()
}

fn main() -> Result<()> {
    let admin = |c: admin::Common, op| std::process::exit(admin::run(&c.admin_socket, op, c.json));
    match Cli::parse().cmd {
        Cmd::Locks(c) => admin(c, admin::Op::Locks),
        Cmd::Hosts(c) => admin(c, admin::Op::Hosts),
        Cmd::Release { host, addr, common } => admin(common, admin::Op::Release { host, addr }),
        Cmd::Grace { end: _, common } => admin(common, admin::Op::GraceEnd),
        Cmd::Stats(c) => admin(c, admin::Op::Stats),
        Cmd::Probe { server } => std::process::exit(probe::run(&server)),
        Cmd::Lock {
            file,
            shared,
            wait,
            cmd,
        } => {
            let (spec, nfs) = file.spec(shared).unwrap_or_else(|e| usage(e));
            let wait = match wait.as_deref() {
                None => None,
                Some("forever") => Some(None),
                Some(d) => Some(Some(cmd_lock::duration(d).unwrap_or_else(|e| usage(e)))),
            };
            run_async(cmd_lock::lock(cmd_lock::LockArgs {
                socket: file.socket.clone(),
                target: cmd_lock::Target {
                    server: spec.server,
                    file: spec.file,
                    nfs,
                },
                offset: spec.offset,
                len: spec.len,
                shared,
                wait,
                cmd,
            }))
        }
        Cmd::Unlock { file } => {
            let (mut spec, nfs) = file.spec(false).unwrap_or_else(|e| usage(e));
            run_async(async move {
                match cmd_lock::resolve(&mut spec, &nfs).await {
                    Ok(()) => cmd_lock::unlock(&file.socket, spec).await,
                    Err(c) => c,
                }
            })
        }
        Cmd::Test { file, shared } => {
            let (mut spec, nfs) = file.spec(shared).unwrap_or_else(|e| usage(e));
            run_async(async move {
                match cmd_lock::resolve(&mut spec, &nfs).await {
                    Ok(()) => cmd_lock::test(&file.socket, spec).await,
                    Err(c) => c,
                }
            })
        }
        Cmd::Fh { path } => {
            let Some((host, p)) = latch::nfs::split(&path) else {
                usage(format!("{path:?} is not SERVER:/PATH"))
            };
            let (host, p) = (host.to_string(), p.to_string());
            run_async(async move { cmd_lock::fh(&host, &p).await })
        }
        Cmd::Bench {
            what:
                BenchCmd::Null {
                    target,
                    reference,
                    proto,
                    clients,
                    duration_ms,
                },
        } => bench::null::run(
            target,
            reference,
            &protos(&proto),
            &clients,
            Duration::from_millis(duration_ms),
        ),
        Cmd::Bench {
            what:
                BenchCmd::Lock {
                    server,
                    caller,
                    rpcbind,
                    workload,
                    proto,
                    clients,
                    duration_ms,
                },
        } => bench::lock::run(&bench::lock::Options {
            server,
            caller,
            rpcbind,
            workloads: workload
                .iter()
                .map(|w| match w {
                    WorkloadArg::Files => bench::lock::Workload::Files,
                    WorkloadArg::Ranges => bench::lock::Workload::Ranges,
                    WorkloadArg::Contended => bench::lock::Workload::Contended,
                })
                .collect(),
            protos: protos(&proto),
            ks: clients,
            dur: Duration::from_millis(duration_ms),
        }),
    }
}
