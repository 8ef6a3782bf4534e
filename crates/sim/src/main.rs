//! `sim`: runs the deterministic simulator.
//!
//! ```text
//! sim --seeds N [--start S]   N seeds (S, S+1, ...; S random if not given)
//! sim --seed S [--trace] [--pcap FILE]   one seed, replayed exactly
//! --lenient-reclaim   checker 5 tolerates reclaims of whole requests
//! --without K[,K..]   leave out these fault kinds (loss, dup, delay,
//!                     partitions, client_crash, server_crash, disk, msg:
//!                     client hosts asking with the _MSG procedures)
//! --msg               every client host asks with the _MSG procedures
//! ```
//! Prints every failing seed with a one-line reason, and at the end the
//! seeds run, the simulated hours and the faults exercised.

use latch_sim::{Counts, Faults, Options};
use std::process::ExitCode;

struct Args {
    seed: Option<u64>,
    seeds: u64,
    start: Option<u64>,
    trace: bool,
    pcap: Option<std::path::PathBuf>,
    lenient_reclaim: bool,
    without: Vec<String>,
    msg: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seed: None,
        seeds: 100,
        start: None,
        trace: false,
        pcap: None,
        lenient_reclaim: false,
        without: Vec::new(),
        msg: false,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> Result<u64, String> {
        let v = v.ok_or(format!("{what} wants a number"))?;
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => v.parse(),
        }
        .map_err(|e| format!("{what} {v}: {e}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => a.seed = Some(num(it.next(), "--seed")?),
            "--seeds" => a.seeds = num(it.next(), "--seeds")?,
            "--start" => a.start = Some(num(it.next(), "--start")?),
            "--trace" => a.trace = true,
            "--msg" => a.msg = true,
            "--lenient-reclaim" => a.lenient_reclaim = true,
            "--without" => {
                let v = it.next().ok_or("--without wants fault kinds")?;
                for k in v.split(',') {
                    if !Faults::KINDS.contains(&k) {
                        return Err(format!(
                            "--without: unknown fault kind {k:?} (one of {})",
                            Faults::KINDS.join(", ")
                        ));
                    }
                    a.without.push(k.to_string());
                }
            }
            "--pcap" => a.pcap = Some(it.next().ok_or("--pcap wants a file")?.into()),
            "-h" | "--help" => {
                return Err(
                    "usage: sim [--seeds N [--start S]] [--seed S [--trace] [--pcap FILE]] [--lenient-reclaim] [--without K,..] [--msg]".into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// A starting seed that differs per run: the process id and the address of
/// a stack variable, mixed (no clock, no thread RNG).
fn fresh_start() -> u64 {
    let x = 0u8;
    let addr = &x as *const u8 as u64;
    let mut r = latch_sim::rng::Rng::new(u64::from(std::process::id()) << 32 ^ addr);
    r.next_u64()
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => {
            let start = args.start.unwrap_or_else(fresh_start);
            (0..args.seeds).map(|i| start.wrapping_add(i)).collect()
        }
    };
    let single = args.seed.is_some();
    let mut total = Counts::default();
    let (mut ran, mut failed, mut sim_ms) = (0u64, 0u64, 0u64);
    for seed in seeds {
        let opts = Options {
            seed,
            keep_trace: single && args.trace,
            pcap: args.pcap.clone().filter(|_| single),
            length: 1.0,
            lenient_reclaim: args.lenient_reclaim,
            without: args.without.clone(),
            all_msg: args.msg,
        };
        ran += 1;
        match latch_sim::run(&opts) {
            Ok(r) => {
                sim_ms += r.sim_ms;
                total.add(&r.counts);
                for line in &r.trace {
                    println!("{line}");
                }
                if single {
                    println!(
                        "seed {seed} ok: {} simulated s, trace hash {:016x}",
                        r.sim_ms / 1000,
                        r.trace_hash
                    );
                    println!("faults: {:?}", r.faults);
                }
            }
            Err(f) => {
                failed += 1;
                sim_ms += f.at_ms;
                println!("FAIL seed {seed:#x}: {}", f.reason);
                if single {
                    for line in &f.tail {
                        println!("  {line}");
                    }
                }
            }
        }
    }
    println!(
        "seeds run {ran}, failed {failed}, simulated hours {:.2}",
        sim_ms as f64 / 3_600_000.0
    );
    println!("faults exercised: {total:#?}");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
