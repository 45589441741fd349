//! The `idle` scenario: hold N connections open and measure what they cost the server.
//!
//! With `--server-pid`, the server's resident memory (VmRSS in /proc/<pid>/status) is read
//! before the first connection and after the last one has settled; the difference divided by
//! the connections held is the figure operators size machines with.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use derp_proto::NodeSecretKey;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::dial::DialOptions;
use crate::report::Report;
use crate::stats::Progress;

/// Options of an `idle` run.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct IdleConfig {
    /// How to reach the relay.
    #[serde(skip)]
    pub dial: DialOptions,
    /// Connections to hold.
    pub conns: u64,
    /// Index of this shard's first connection (spreads source addresses across workers).
    pub first_conn: u64,
    /// How long to hold them once all are up.
    pub hold: Duration,
    /// Connections being set up at once.
    pub connect_concurrency: usize,
    /// Budget for connecting all of them.
    pub setup_timeout: Duration,
    /// Server process to measure, if local.
    pub server_pid: Option<u32>,
    /// Wait after the last connection before reading memory, so the server's allocator settles.
    pub settle: Duration,
}

impl IdleConfig {
    /// Defaults: 1 000 connections held 5 s.
    pub fn new(dial: DialOptions) -> Self {
        Self {
            dial,
            conns: 1_000,
            first_conn: 0,
            hold: Duration::from_secs(5),
            connect_concurrency: 256,
            setup_timeout: Duration::from_secs(60),
            server_pid: None,
            settle: Duration::from_secs(1),
        }
    }
}

/// Resident set size of `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// Runs the scenario.
pub async fn run_idle(cfg: &IdleConfig) -> anyhow::Result<Report> {
    let mut report = Report::new("idle", &cfg.dial.urls.join(","));
    report.config = serde_json::to_value(cfg)?;
    report.peers.requested = cfg.conns;
    let before = cfg.server_pid.map(rss_kib).transpose()?;
    let epoch = Instant::now();
    let progress = Arc::new(Progress::default());
    let sem = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let deadline = epoch + cfg.setup_timeout;
    let mut dialing = JoinSet::new();
    for k in 0..cfg.conns {
        let i = cfg.first_conn + k;
        let dial = cfg.dial.clone();
        let sem = Arc::clone(&sem);
        dialing.spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            let t0 = Instant::now();
            let r = dial.connect(NodeSecretKey::generate(), i, i as usize).await;
            (i, t0.elapsed(), r)
        });
    }
    let mut held = JoinSet::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    loop {
        match tokio::time::timeout_at(deadline, dialing.join_next()).await {
            Ok(Some(Ok((i, took, r)))) => match r {
                Ok(client) => {
                    Progress::add(&progress.connected, 1);
                    report.latency_us.histogram.record(took.as_micros() as u64);
                    let stop = Arc::clone(&stop);
                    // Read (and discard) keepalives so the server never sees a stuck reader.
                    held.spawn(async move {
                        let (mut r, w) = client.split();
                        tokio::select! {
                            () = stop.notified() => {}
                            _ = async { while r.recv().await.is_ok() {} } => {}
                        }
                        drop(w);
                        i
                    });
                }
                Err(e) => report.push_error(format!("conn {i}"), "connect", format!("{e:#}")),
            },
            Ok(Some(Err(e))) => report.push_error("task", "connect", e),
            Ok(None) => break,
            Err(_) => {
                let left = dialing.len() as u64;
                dialing.abort_all();
                report.errors_total += left;
                report.push_error(format!("{left} conns"), "connect", "setup timed out");
                break;
            }
        }
    }
    let connected = Progress::read(&progress.connected);
    report.peers.connected = connected;
    report.peers.failed = cfg.conns - connected;
    report.measured_secs = epoch.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.settle).await;
    let alive_after_settle = connected - finished(&mut held);
    if let (Some(pid), Some(before)) = (cfg.server_pid, before) {
        // A server that died under the load (the OOM killer, say) is a finding, not a crash.
        match rss_kib(pid) {
            Ok(after) => {
                report
                    .extra
                    .insert("server_rss_before_kib".into(), before.into());
                report
                    .extra
                    .insert("server_rss_after_kib".into(), after.into());
            }
            Err(e) => report.push_error(
                format!("server pid {pid}"),
                "memory",
                format!("{e:#} (server gone?)"),
            ),
        }
        // `server_bytes_per_conn` is derived in `Report::finalize`.
    }
    if let Ok(own) = rss_kib(std::process::id()) {
        report.extra.insert("loadtest_rss_kib".into(), own.into());
    }
    tokio::time::sleep(cfg.hold).await;
    // Connections the server closed while we held them.
    let dropped = finished(&mut held) + (connected - alive_after_settle);
    report
        .extra
        .insert("held".into(), connected.saturating_sub(dropped).into());
    if dropped > 0 {
        report.push_error(
            format!("{dropped} conns"),
            "hold",
            "closed by the server while idle",
        );
    }
    stop.notify_waiters();
    held.abort_all();
    report.finalize();
    Ok(report)
}

/// Counts tasks that already ended (their connection closed) without waiting.
fn finished(set: &mut JoinSet<u64>) -> u64 {
    let mut n = 0;
    while let Some(r) = set.try_join_next() {
        n += u64::from(r.is_ok());
    }
    n
}
