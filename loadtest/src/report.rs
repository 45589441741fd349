//! The run report: raw counts, derived figures, a human summary, JSON, and CI thresholds.
//!
//! A report holds raw counts plus a mergeable histogram, and derives ratios and percentiles in
//! [`Report::finalize`]; that is what lets `loadtest merge` combine shard reports exactly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::Histogram;

/// Schema tag written into every report; bump on incompatible changes.
pub const SCHEMA: &str = "derp-loadtest/report/v1";

/// Most per-peer errors kept verbatim; the rest are only counted in `errors_total`.
pub const MAX_LISTED_ERRORS: usize = 200;

/// One run (or the merge of several shards).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// `pairs`, `idle`, `storm`, `probe` or `mesh`.
    pub scenario: String,
    /// The DERP URL(s) or map driven.
    pub target: String,
    /// How many shard reports this one combines (1 for a single process).
    pub shards: u32,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Length of the measured phase in seconds (the longest shard's, after a merge).
    pub measured_secs: f64,
    /// The options the run used, as given.
    pub config: serde_json::Value,
    /// Connection outcomes.
    pub peers: PeerCounts,
    /// Which path each connected peer ended up sending data on.
    pub paths: Paths,
    /// Per NAT behaviour: peers and how many went direct.
    pub nat: BTreeMap<String, NatCounts>,
    /// Data packet accounting.
    pub traffic: Traffic,
    /// One-way latency of data packets, microseconds.
    pub latency_us: Latency,
    /// Every per-peer error, counted.
    pub errors_total: u64,
    /// The first [`MAX_LISTED_ERRORS`] per-peer errors.
    pub errors: Vec<PeerError>,
    /// Scenario-specific figures (idle memory, probe results, storm timings).
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Threshold outcome.
    pub verdict: Verdict,
}

/// Connection outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerCounts {
    /// Peers the run tried to start.
    pub requested: u64,
    /// Peers that completed the DERP handshake.
    pub connected: u64,
    /// Peers that failed at any stage.
    pub failed: u64,
}

/// Direct versus relayed data paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Paths {
    /// Peers sending data over a punched UDP path.
    pub direct: u64,
    /// Peers sending data through DERP.
    pub relayed: u64,
    /// `direct / (direct + relayed)`, derived.
    pub direct_ratio: f64,
}

/// Outcome for one NAT behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatCounts {
    /// Peers behind this kind of NAT.
    pub peers: u64,
    /// Of those, peers that went direct.
    pub direct: u64,
}

/// Data packet accounting, summed over both directions of every pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Traffic {
    /// Data packets written.
    pub sent: u64,
    /// Distinct data packets received and authenticated.
    pub received: u64,
    /// `sent - received`: never arrived (or arrived after the drain period).
    pub lost: u64,
    /// `lost / sent`, derived.
    pub loss_ratio: f64,
    /// Arrived after a higher sequence number.
    pub reordered: u64,
    /// Arrived more than once.
    pub duplicated: u64,
    /// Failed authentication: bytes changed in flight.
    pub corrupted: u64,
    /// Not a loadtest packet at all.
    pub foreign: u64,
    /// WireGuard-shaped handshake messages received.
    pub handshakes: u64,
    /// Payload bytes of received data packets.
    pub bytes_received: u64,
    /// `received / measured_secs`, derived.
    pub packets_per_sec: f64,
    /// `8 * bytes_received / measured_secs`, derived.
    pub bits_per_sec: f64,
}

/// Latency percentiles, derived from the histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
    /// The raw histogram; merging uses this.
    pub histogram: Histogram,
}

/// One peer's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerError {
    /// Which peer, e.g. `pair 12 b` or `conn 5`.
    pub peer: String,
    /// `connect`, `punch`, `send`, `recv`, `probe`.
    pub stage: String,
    /// The error chain.
    pub error: String,
}

/// Threshold outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Verdict {
    /// No threshold failed.
    pub pass: bool,
    /// One line per failed threshold.
    pub failures: Vec<String>,
}

/// Limits that decide the exit code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Thresholds {
    /// Fail when p99 latency exceeds this.
    pub max_p99: Option<Duration>,
    /// Fail when the loss ratio exceeds this (0.01 = 1 %).
    pub max_loss: Option<f64>,
    /// Fail when fewer than this share of peers went direct.
    pub min_direct_ratio: Option<f64>,
    /// Fail when more peers than this failed (default 0: any failure fails the run).
    pub max_errors: u64,
    /// Fail when the relayed packet rate is below this.
    pub min_pps: Option<f64>,
}

impl Report {
    /// An empty report for `scenario` against `target`.
    pub fn new(scenario: &str, target: &str) -> Self {
        Self {
            schema: SCHEMA.into(),
            scenario: scenario.into(),
            target: target.into(),
            shards: 1,
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ..Self::default()
        }
    }

    /// Records a per-peer error, keeping the list bounded.
    pub fn push_error(&mut self, peer: impl Into<String>, stage: &str, error: impl ToString) {
        self.errors_total += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(PeerError {
                peer: peer.into(),
                stage: stage.into(),
                error: error.to_string(),
            });
        }
    }

    /// Recomputes every derived field from the raw counts.
    pub fn finalize(&mut self) {
        let t = &mut self.traffic;
        t.lost = t.sent.saturating_sub(t.received);
        t.loss_ratio = ratio(t.lost, t.sent);
        if self.measured_secs > 0.0 {
            t.packets_per_sec = t.received as f64 / self.measured_secs;
            t.bits_per_sec = 8.0 * t.bytes_received as f64 / self.measured_secs;
        }
        self.paths.direct_ratio = ratio(self.paths.direct, self.paths.direct + self.paths.relayed);
        // Server memory per connection, from the widest before/after readings (exact for one
        // process; for merged shards, the shared server's growth over all their connections).
        let kib = |k: &str| self.extra.get(k).and_then(serde_json::Value::as_u64);
        if let (Some(before), Some(after)) =
            (kib("server_rss_before_kib"), kib("server_rss_after_kib"))
            && self.peers.connected > 0
        {
            let per = after.saturating_sub(before) * 1_024 / self.peers.connected;
            self.extra
                .insert("server_bytes_per_conn".into(), per.into());
        }
        let h = &self.latency_us.histogram;
        self.latency_us.p50 = h.quantile(0.50);
        self.latency_us.p90 = h.quantile(0.90);
        self.latency_us.p99 = h.quantile(0.99);
        self.latency_us.p999 = h.quantile(0.999);
        self.latency_us.max = h.max;
        self.latency_us.mean = h.mean();
    }

    /// Applies `th` and fills [`Report::verdict`]; call after [`finalize`](Self::finalize).
    pub fn judge(&mut self, th: &Thresholds) {
        let mut f = Vec::new();
        if self.errors_total > th.max_errors {
            f.push(format!(
                "{} peer errors (allowed {})",
                self.errors_total, th.max_errors
            ));
        }
        if let Some(max) = th.max_p99 {
            let p99 = Duration::from_micros(self.latency_us.p99);
            if p99 > max {
                f.push(format!("p99 latency {p99:?} > {max:?}"));
            }
        }
        if let Some(max) = th.max_loss
            && self.traffic.loss_ratio > max
        {
            f.push(format!(
                "loss {:.4} % > {:.4} %",
                self.traffic.loss_ratio * 100.0,
                max * 100.0
            ));
        }
        if let Some(min) = th.min_direct_ratio
            && self.paths.direct_ratio < min
        {
            f.push(format!(
                "direct ratio {:.3} < {min:.3}",
                self.paths.direct_ratio
            ));
        }
        if let Some(min) = th.min_pps
            && self.traffic.packets_per_sec < min
        {
            f.push(format!(
                "{:.0} packets/s < {min:.0}",
                self.traffic.packets_per_sec
            ));
        }
        self.verdict = Verdict {
            pass: f.is_empty(),
            failures: f,
        };
    }

    /// Adds `other`'s raw counts into `self` (shards of the same scenario).
    pub fn merge(&mut self, other: &Self) {
        if self.schema.is_empty() {
            self.schema = other.schema.clone();
            self.scenario = other.scenario.clone();
            self.target = other.target.clone();
            self.config = other.config.clone();
            self.started_unix_ms = other.started_unix_ms;
            self.shards = 0;
        }
        self.shards += other.shards.max(1);
        self.started_unix_ms = self.started_unix_ms.min(other.started_unix_ms);
        self.measured_secs = self.measured_secs.max(other.measured_secs);
        let (p, o) = (&mut self.peers, &other.peers);
        p.requested += o.requested;
        p.connected += o.connected;
        p.failed += o.failed;
        self.paths.direct += other.paths.direct;
        self.paths.relayed += other.paths.relayed;
        for (k, v) in &other.nat {
            let e = self.nat.entry(k.clone()).or_default();
            e.peers += v.peers;
            e.direct += v.direct;
        }
        let (t, o) = (&mut self.traffic, &other.traffic);
        t.sent += o.sent;
        t.received += o.received;
        t.reordered += o.reordered;
        t.duplicated += o.duplicated;
        t.corrupted += o.corrupted;
        t.foreign += o.foreign;
        t.handshakes += o.handshakes;
        t.bytes_received += o.bytes_received;
        self.latency_us.histogram.merge(&other.latency_us.histogram);
        self.errors_total += other.errors_total;
        for e in &other.errors {
            if self.errors.len() < MAX_LISTED_ERRORS {
                self.errors.push(e.clone());
            }
        }
        for (k, v) in &other.extra {
            match self.extra.get_mut(k) {
                None => {
                    self.extra.insert(k.clone(), v.clone());
                }
                Some(mine) => merge_value(k, mine, v),
            }
        }
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let t = &self.traffic;
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "{} against {} ({} shard{}), measured {:.1} s",
            self.scenario,
            self.target,
            self.shards,
            if self.shards == 1 { "" } else { "s" },
            self.measured_secs
        );
        let _ = writeln!(
            s,
            "  peers      {} requested, {} connected, {} failed",
            self.peers.requested, self.peers.connected, self.peers.failed
        );
        if self.paths.direct + self.paths.relayed > 0 {
            let _ = writeln!(
                s,
                "  paths      {} direct, {} relayed ({:.1} % direct)",
                self.paths.direct,
                self.paths.relayed,
                self.paths.direct_ratio * 100.0
            );
            for (k, v) in &self.nat {
                let _ = writeln!(s, "    {k:<16} {} peers, {} direct", v.peers, v.direct);
            }
        }
        if t.sent > 0 || t.received > 0 {
            let _ = writeln!(
                s,
                "  packets    {} sent, {} received, {} lost ({:.4} %), {} reordered, {} duplicated, {} corrupted",
                t.sent,
                t.received,
                t.lost,
                t.loss_ratio * 100.0,
                t.reordered,
                t.duplicated,
                t.corrupted
            );
            let _ = writeln!(
                s,
                "  throughput {:.0} packets/s, {:.1} Mbit/s",
                t.packets_per_sec,
                t.bits_per_sec / 1e6
            );
            let _ = writeln!(
                s,
                "  latency    p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        if t.sent == 0 && l.histogram.count > 0 {
            let what = if self.scenario == "probe" {
                "relay 1-way"
            } else {
                "connect"
            };
            let _ = writeln!(
                s,
                "  {what:<10} p50 {} µs, p99 {} µs, max {} µs ({} samples)",
                l.p50, l.p99, l.max, l.histogram.count
            );
        }
        if let Some(serde_json::Value::Array(nodes)) = self.extra.get("probe") {
            for n in nodes {
                let f = |k: &str| n.get(k).map_or_else(String::new, |v| v.to_string());
                let failures = n
                    .get("failures")
                    .and_then(|v| v.as_array())
                    .map_or(0, Vec::len);
                let _ = writeln!(
                    s,
                    "    node {:<8} region {:<5} connect {:>8} µs  rtt {:>8} µs  stun {:>8} µs  mesh {:<5} {}",
                    f("node").trim_matches('"'),
                    f("region"),
                    f("connect_us"),
                    f("rtt_us"),
                    f("stun_us"),
                    f("mesh_ok"),
                    if failures == 0 { "ok" } else { "FAILED" }
                );
            }
        }
        for (k, v) in &self.extra {
            if !v.is_array() && !v.is_object() {
                let _ = writeln!(s, "  {k:<10} {v}");
            }
        }
        if self.errors_total > 0 {
            let _ = writeln!(s, "  errors     {}", self.errors_total);
            for e in self.errors.iter().take(10) {
                let _ = writeln!(s, "    {} [{}]: {}", e.peer, e.stage, e.error);
            }
        }
        let _ = writeln!(
            s,
            "  verdict    {}",
            if self.verdict.pass { "PASS" } else { "FAIL" }
        );
        for f in &self.verdict.failures {
            let _ = writeln!(s, "    {f}");
        }
        s
    }
}

/// Merges one scenario-specific figure: lists concatenate, counts add, and readings of the one
/// shared server take the extreme (before: earliest/min, after: latest/max).
fn merge_value(key: &str, mine: &mut serde_json::Value, other: &serde_json::Value) {
    use serde_json::Value;
    if key.starts_with("server_") {
        if let (Some(a), Some(b)) = (mine.as_u64(), other.as_u64()) {
            *mine = if key.ends_with("before_kib") {
                a.min(b)
            } else {
                a.max(b)
            }
            .into();
        }
        return;
    }
    match (mine, other) {
        (Value::Array(a), Value::Array(b)) => a.extend(b.iter().cloned()),
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                *a = (x + y).into();
            } else if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64())
                && let Some(n) = serde_json::Number::from_f64(x + y)
            {
                *a = n;
            }
        }
        _ => {}
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("pairs", "http://127.0.0.1:1/derp");
        r.measured_secs = 2.0;
        r.peers = PeerCounts {
            requested: 4,
            connected: 4,
            failed: 0,
        };
        r.paths.direct = 1;
        r.paths.relayed = 3;
        r.traffic.sent = 1_000;
        r.traffic.received = 990;
        r.traffic.bytes_received = 990 * 100;
        for v in 1..=990 {
            r.latency_us.histogram.record(v);
        }
        r.finalize();
        r
    }

    #[test]
    fn derived_fields_and_thresholds() {
        let mut r = sample();
        assert_eq!(r.traffic.lost, 10);
        assert!((r.traffic.loss_ratio - 0.01).abs() < 1e-9);
        assert!((r.paths.direct_ratio - 0.25).abs() < 1e-9);
        assert!((r.traffic.packets_per_sec - 495.0).abs() < 1e-9);
        r.judge(&Thresholds::default());
        assert!(r.verdict.pass);
        r.judge(&Thresholds {
            max_loss: Some(0.001),
            max_p99: Some(Duration::from_micros(100)),
            min_direct_ratio: Some(0.5),
            ..Thresholds::default()
        });
        assert_eq!(r.verdict.failures.len(), 3, "{:?}", r.verdict.failures);
    }

    #[test]
    fn merge_is_exact() {
        let a = sample();
        let mut m = Report::default();
        m.merge(&a);
        m.merge(&a);
        m.finalize();
        assert_eq!(m.shards, 2);
        assert_eq!(m.traffic.sent, 2_000);
        assert_eq!(m.latency_us.histogram.count, 1_980);
        assert_eq!(m.latency_us.p99, a.latency_us.p99);
        assert!((m.traffic.packets_per_sec - 990.0).abs() < 1e-9);
    }

    #[test]
    fn json_round_trip() {
        let a = sample();
        let s = serde_json::to_string(&a).unwrap();
        let b: Report = serde_json::from_str(&s).unwrap();
        assert_eq!(a, b);
    }
}
