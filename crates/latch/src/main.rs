//! `latch`: the command line for people. So far: benchmarks.

mod bench;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
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
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtoArg {
    Udp,
    Tcp,
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
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Bench {
            what:
                BenchCmd::Null {
                    target,
                    reference,
                    proto,
                    clients,
                    duration_ms,
                },
        } => {
            let protos: Vec<_> = proto
                .iter()
                .map(|p| match p {
                    ProtoArg::Udp => bench::Proto::Udp,
                    ProtoArg::Tcp => bench::Proto::Tcp,
                })
                .collect();
            bench::run(
                target,
                reference,
                &protos,
                &clients,
                Duration::from_millis(duration_ms),
            )
        }
    }
}
