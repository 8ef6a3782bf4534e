//! Prometheus metrics: `GET /metrics` in the text exposition format, on an
//! HTTP port that is off unless `metrics_listen` is set. A tiny HTTP/1.1
//! responder: one request per connection, the request head bounded, a
//! bounded number of connections, each with a deadline.

use crate::admin::{proc_name, stats, Parts};
use serde_json::Value;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
const PROCS: usize = 24;

/// NLM call handling times per procedure (lock waits included): bucket
/// counts (the last is +Inf), the count and the sum in microseconds.
struct Histogram {
    buckets: [[AtomicU64; BUCKETS_US.len() + 1]; PROCS],
    count: [AtomicU64; PROCS],
    sum_us: [AtomicU64; PROCS],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicU64; BUCKETS_US.len() + 1] = [ZERO; BUCKETS_US.len() + 1];

static NLM_LATENCY: Histogram = Histogram {
    buckets: [ROW; PROCS],
    count: [ZERO; PROCS],
    sum_us: [ZERO; PROCS],
};

/// Records one NLM call's handling time. Lock-free; a few atomic adds.
pub fn observe_nlm(proc_: u32, took: Duration) {
    let p = proc_ as usize;
    if p >= PROCS {
        return;
    }
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let b = BUCKETS_US
        .iter()
        .position(|&le| us <= le)
        .unwrap_or(BUCKETS_US.len());
    let h = &NLM_LATENCY;
    h.buckets[p][b].fetch_add(1, Ordering::Relaxed);
    h.count[p].fetch_add(1, Ordering::Relaxed);
    h.sum_us[p].fetch_add(us, Ordering::Relaxed);
}

const MAX_CONNS: usize = 8;
const MAX_HEAD: usize = 8 * 1024;
const DEADLINE: Duration = Duration::from_secs(5);

pub fn spawn(addr: SocketAddr, parts: Parts) {
    tokio::spawn(async move {
        let l = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot serve metrics");
                return;
            }
        };
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        let limit = Arc::new(Semaphore::new(MAX_CONNS));
        loop {
            let s = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // At the limit, new connections are closed at once.
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                continue;
            };
            let parts = parts.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(DEADLINE, respond(s, &parts)).await;
                drop(permit);
            });
        }
    });
}

async fn respond(mut s: TcpStream, parts: &Parts) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return reply(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = render(parts);
            reply(&mut s, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        ("GET", _) => reply(&mut s, "404 Not Found", "text/plain", "try /metrics\n").await,
        _ => reply(&mut s, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn reply(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

/// One metric family: `# HELP`, `# TYPE` and its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }

    /// A single unlabelled value read from `section.key` of the stats.
    fn one(&mut self, st: &Value, path: (&str, &str), name: &str, kind: &str, help: &str) {
        if let Some(v) = st.get(path.0).and_then(|s| s.get(path.1)) {
            self.family(name, kind, help);
            let v = v
                .as_bool()
                .map_or_else(|| v.to_string(), |b| u8::from(b).to_string());
            self.sample(name, "", v);
        }
    }

    /// Every key of the object at `section.key` as a label value.
    fn labelled(&mut self, st: &Value, path: (&str, &str), name: &str, label: &str, help: &str) {
        let Some(Value::Object(m)) = st.get(path.0).and_then(|s| s.get(path.1)) else {
            return;
        };
        self.family(name, "counter", help);
        for (k, v) in m {
            self.sample(name, &format!("{label}=\"{k}\""), v);
        }
    }

    /// `key` of every object under `section`, labelled by the object's name.
    fn per(&mut self, st: &Value, section: &str, key: &str, name: &str, kind: &str, help: &str) {
        let Some(Value::Object(m)) = st.get(section) else {
            return;
        };
        self.family(name, kind, help);
        for (server, o) in m {
            if let Some(v) = o.get(key) {
                self.sample(name, &format!("server=\"{server}\""), v);
            }
        }
    }
}

/// The whole page.
pub fn render(parts: &Parts) -> String {
    let st = stats(parts);
    let mut o = Out(String::with_capacity(8192));
    let c = "counter";
    let g = "gauge";
    o.labelled(
        &st,
        ("nlm", "calls"),
        "latch_nlm_requests_total",
        "procedure",
        "NLM calls by procedure.",
    );
    o.labelled(
        &st,
        ("nlm", "results"),
        "latch_nlm_results_total",
        "status",
        "NLM answers by status.",
    );
    o.one(
        &st,
        ("engine", "segments"),
        "latch_nlm_locks_held",
        g,
        "Held lock segments.",
    );
    o.one(
        &st,
        ("engine", "waiters"),
        "latch_nlm_waiters",
        g,
        "Blocked lock requests.",
    );
    o.one(
        &st,
        ("engine", "shares"),
        "latch_nlm_shares",
        g,
        "Share reservations.",
    );
    o.one(
        &st,
        ("engine", "files"),
        "latch_nlm_files",
        g,
        "Files with locks, waiters or shares.",
    );
    o.one(
        &st,
        ("engine", "owners"),
        "latch_nlm_owners",
        g,
        "Lock owners with state.",
    );
    o.one(
        &st,
        ("engine", "deadlocks_refused"),
        "latch_nlm_deadlocks_refused_total",
        c,
        "Blocking requests refused as deadlocks.",
    );
    o.one(
        &st,
        ("nlm", "hosts"),
        "latch_nlm_hosts",
        g,
        "Client hosts known (caller name and address).",
    );
    o.one(
        &st,
        ("nlm", "in_grace"),
        "latch_nlm_grace",
        g,
        "1 while in the grace period after a restart.",
    );
    o.one(
        &st,
        ("nlm", "pending_grants"),
        "latch_nlm_pending_grants",
        g,
        "Grants not yet acknowledged by the client.",
    );
    o.one(
        &st,
        ("nlm", "callbacks_sent"),
        "latch_nlm_callbacks_sent_total",
        c,
        "GRANTED callbacks sent (retries included).",
    );
    o.one(
        &st,
        ("nlm", "callbacks_retried"),
        "latch_nlm_callbacks_retried_total",
        c,
        "GRANTED callbacks re-sent.",
    );
    o.one(
        &st,
        ("nlm", "callbacks_abandoned"),
        "latch_nlm_callbacks_abandoned_total",
        c,
        "GRANTED callbacks given up after the last try.",
    );
    o.one(
        &st,
        ("nlm", "reboots_detected"),
        "latch_nlm_reboots_detected_total",
        c,
        "Client reboots (SM_NOTIFY or a newer NSM state).",
    );
    o.one(
        &st,
        ("nlm", "actions_dropped"),
        "latch_nlm_actions_dropped_total",
        c,
        "Callbacks dropped at the action queue bound.",
    );
    o.one(
        &st,
        ("nlm", "store_errors"),
        "latch_nlm_store_errors_total",
        c,
        "Requests refused because the list of hosts holding locks could not be saved.",
    );
    o.one(
        &st,
        ("nlm", "stale_requests"),
        "latch_nlm_stale_requests_total",
        c,
        "LOCKs refused as sent before a reboot of their host (an older NSM state).",
    );
    o.one(
        &st,
        ("nsm", "state"),
        "latch_nsm_state",
        g,
        "Our NSM state number.",
    );
    o.one(
        &st,
        ("nsm", "monitored_hosts"),
        "latch_nsm_monitored_hosts",
        g,
        "Hosts the status monitor watches.",
    );
    o.one(
        &st,
        ("nsm", "to_notify"),
        "latch_nsm_to_notify",
        g,
        "Hosts still to be told of our restart.",
    );
    for (k, help) in [
        ("mon", "SM_MON requests served."),
        ("unmon", "SM_UNMON requests served."),
        ("notify_received", "SM_NOTIFY received."),
        ("notify_stale", "SM_NOTIFY with an old state number."),
        (
            "notify_untrusted",
            "SM_NOTIFY from an address the host is not known at.",
        ),
        ("notify_unknown", "SM_NOTIFY about hosts nobody monitors."),
        ("callbacks", "Reboot callbacks to local programs."),
        (
            "late_delivered",
            "Notices about unwatched hosts delivered when they came to be watched.",
        ),
        (
            "refused_remote",
            "Monitor requests refused from non-loopback callers.",
        ),
        ("store_errors", "Failures to write the monitor list."),
    ] {
        o.one(&st, ("nsm", k), &format!("latch_nsm_{k}_total"), c, help);
    }
    for (k, help) in [
        ("calls", "RPC calls dispatched."),
        ("dropped", "RPC messages dropped."),
        ("garbage_args", "Calls answered GARBAGE_ARGS."),
        ("proc_unavail", "Calls answered PROC_UNAVAIL."),
        (
            "drc_hits",
            "Retransmissions answered from the duplicate request cache.",
        ),
        (
            "drc_in_progress_drops",
            "Retransmissions dropped while the original was in progress.",
        ),
        ("drc_evictions", "Duplicate request cache evictions."),
    ] {
        o.per(&st, "dispatch", k, &format!("latch_rpc_{k}_total"), c, help);
    }
    o.per(
        &st,
        "dispatch",
        "drc_entries",
        "latch_rpc_drc_entries",
        g,
        "Duplicate request cache entries.",
    );
    o.per(
        &st,
        "servers",
        "connections",
        "latch_server_connections",
        g,
        "Open TCP connections.",
    );
    for (k, help) in [
        ("accepted", "TCP connections accepted."),
        ("evicted", "TCP connections closed at the connection limit."),
        ("idle_closed", "TCP connections closed when idle."),
        ("record_errors", "TCP connections closed on a bad record."),
    ] {
        o.per(
            &st,
            "servers",
            k,
            &format!("latch_server_{k}_total"),
            c,
            help,
        );
    }
    histogram(&mut o);
    o.0
}

fn histogram(o: &mut Out) {
    let name = "latch_nlm_request_duration_seconds";
    o.family(
        name,
        "histogram",
        "Time to handle an NLM call, from taking it off the socket to its reply, lock waits included.",
    );
    let h = &NLM_LATENCY;
    for p in 0..PROCS {
        let count = h.count[p].load(Ordering::Relaxed);
        let Some(proc_) = proc_name(p).filter(|_| count > 0) else {
            continue;
        };
        let mut cum = 0;
        for (i, le) in BUCKETS_US.iter().enumerate() {
            cum += h.buckets[p][i].load(Ordering::Relaxed);
            let le = *le as f64 / 1e6;
            o.sample(
                &format!("{name}_bucket"),
                &format!("procedure=\"{proc_}\",le=\"{le}\""),
                cum,
            );
        }
        // +Inf and the count from the same reads, so the page is consistent.
        let count = cum + h.buckets[p][BUCKETS_US.len()].load(Ordering::Relaxed);
        o.sample(
            &format!("{name}_bucket"),
            &format!("procedure=\"{proc_}\",le=\"+Inf\""),
            count,
        );
        let sum = h.sum_us[p].load(Ordering::Relaxed) as f64 / 1e6;
        o.sample(
            &format!("{name}_sum"),
            &format!("procedure=\"{proc_}\""),
            sum,
        );
        o.sample(
            &format!("{name}_count"),
            &format!("procedure=\"{proc_}\""),
            count,
        );
    }
}
