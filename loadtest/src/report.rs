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

/// Key in [`Report::extra`] of the per-flow delivered counts (one per sender-to-receiver
/// direction; arrays concatenate when shards merge), from which [`Report::fairness`] derives.
pub const FLOW_RECEIVED_KEY: &str = "flow_received";

/// Most flows whose counts a report keeps: enough for any fairness question, small enough
/// that a 100 000-pair run's JSON stays readable.
pub const MAX_FLOWS_RECORDED: usize = 4096;

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
    /// The same figures per class of pair, side by side from one run (the `mesh` scenario:
    /// `same_node` and `cross_node`); absent when the run has no classes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, ClassReport>,
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
    /// Distinct data packets received that passed their checks.
    pub received: u64,
    /// `sent - received`: never arrived (or arrived after the drain period).
    pub lost: u64,
    /// `lost / sent`, derived.
    pub loss_ratio: f64,
    /// Arrived after a higher sequence number.
    pub reordered: u64,
    /// Arrived more than once.
    pub duplicated: u64,
    /// Failed the check value or filler comparison: bytes changed in flight.
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

/// Traffic and latency of one class of pairs (e.g. both peers on one relay, or on two).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ClassReport {
    /// Pairs of this class that reached the data phase.
    pub pairs: u64,
    /// Data packet accounting of these pairs; rates over the run's `measured_secs`.
    pub traffic: Traffic,
    /// One-way latency of their data packets, microseconds.
    pub latency_us: Latency,
}

impl ClassReport {
    /// Adds `other`'s raw counts.
    pub fn merge(&mut self, other: &Self) {
        self.pairs += other.pairs;
        self.traffic.add(&other.traffic);
        self.latency_us.histogram.merge(&other.latency_us.histogram);
    }

    /// Recomputes the derived fields from the raw counts.
    pub fn finalize(&mut self, measured_secs: f64) {
        self.traffic.finalize(measured_secs);
        self.latency_us.finalize();
    }
}

/// How evenly delivered packets were spread over the flows of a run: a relay that lets one
/// sender starve another shows a low `min_over_mean` and a Jain index well below 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fairness {
    /// Flows counted.
    pub flows: usize,
    /// Packets/s of the least-served flow.
    pub min_pps: f64,
    /// Mean packets/s per flow.
    pub mean_pps: f64,
    /// Packets/s of the best-served flow.
    pub max_pps: f64,
    /// Jain's fairness index, (Σx)² / (n·Σx²): 1 when every flow got the same, 1/n when one
    /// flow got everything.
    pub jain: f64,
}

impl Fairness {
    /// The spread of `counts` (packets delivered per flow) over `secs` seconds; `None` without
    /// flows or time.
    pub fn from_counts(counts: &[u64], secs: f64) -> Option<Self> {
        if counts.is_empty() || secs <= 0.0 {
            return None;
        }
        let n = counts.len() as f64;
        let sum: f64 = counts.iter().map(|&c| c as f64).sum();
        let sum_sq: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
        let min = counts.iter().copied().min().unwrap_or(0) as f64;
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        Some(Self {
            flows: counts.len(),
            min_pps: min / secs,
            mean_pps: sum / n / secs,
            max_pps: max / secs,
            jain: if sum_sq > 0.0 {
                sum * sum / (n * sum_sq)
            } else {
                0.0
            },
        })
    }

    /// The least-served flow's share of the mean (1 = perfectly even).
    pub fn min_over_mean(&self) -> f64 {
        if self.mean_pps > 0.0 {
            self.min_pps / self.mean_pps
        } else {
            0.0
        }
    }
}

impl Traffic {
    /// Adds `other`'s raw counts (derived fields are left for [`Traffic::finalize`]).
    pub fn add(&mut self, o: &Self) {
        self.sent += o.sent;
        self.received += o.received;
        self.reordered += o.reordered;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
        self.foreign += o.foreign;
        self.handshakes += o.handshakes;
        self.bytes_received += o.bytes_received;
    }

    /// Recomputes loss and rates from the raw counts.
    pub fn finalize(&mut self, measured_secs: f64) {
        self.lost = self.sent.saturating_sub(self.received);
        self.loss_ratio = ratio(self.lost, self.sent);
        if measured_secs > 0.0 {
            self.packets_per_sec = self.received as f64 / measured_secs;
            self.bits_per_sec = 8.0 * self.bytes_received as f64 / measured_secs;
        }
    }
}

impl Latency {
    /// Recomputes the percentiles from the histogram.
    pub fn finalize(&mut self) {
        let h = &self.histogram;
        self.p50 = h.quantile(0.50);
        self.p90 = h.quantile(0.90);
        self.p99 = h.quantile(0.99);
        self.p999 = h.quantile(0.999);
        self.max = h.max;
        self.mean = h.mean();
    }
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
    /// Per-flow spread of deliveries, when the scenario recorded it (`pairs`, `mesh`).
    pub fn fairness(&self) -> Option<Fairness> {
        let counts: Vec<u64> = self
            .extra
            .get(FLOW_RECEIVED_KEY)?
            .as_array()?
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        Fairness::from_counts(&counts, self.measured_secs)
    }

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
        self.traffic.finalize(self.measured_secs);
        for c in self.classes.values_mut() {
            c.finalize(self.measured_secs);
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
        self.latency_us.finalize();
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
        // Loss and p99 limits hold for every class as well as for the whole: a run whose
        // cross-node pairs lose what its same-node pairs do not fails even if the total passes.
        for (name, c) in &self.classes {
            if let Some(max) = th.max_p99 {
                let p99 = Duration::from_micros(c.latency_us.p99);
                if p99 > max {
                    f.push(format!("{name}: p99 latency {p99:?} > {max:?}"));
                }
            }
            if let Some(max) = th.max_loss
                && c.traffic.loss_ratio > max
            {
                f.push(format!(
                    "{name}: loss {:.4} % > {:.4} %",
                    c.traffic.loss_ratio * 100.0,
                    max * 100.0
                ));
            }
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
        self.traffic.add(&other.traffic);
        self.latency_us.histogram.merge(&other.latency_us.histogram);
        for (k, c) in &other.classes {
            self.classes.entry(k.clone()).or_default().merge(c);
        }
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
        if let Some(f) = self.fairness() {
            let _ = writeln!(
                s,
                "  fairness   {} flows: packets/s min {:.0}, mean {:.0}, max {:.0}; min/mean {:.3}, Jain {:.4}",
                f.flows,
                f.min_pps,
                f.mean_pps,
                f.max_pps,
                f.min_over_mean(),
                f.jain
            );
        }
        if !self.classes.is_empty() {
            let _ = writeln!(
                s,
                "  by class   {:<12} {:>6} {:>10} {:>10} {:>8} {:>9} {:>11} {:>9} {:>9}",
                "", "pairs", "sent", "received", "lost", "loss %", "packets/s", "p50 µs", "p99 µs"
            );
            for (name, c) in &self.classes {
                let (t, l) = (&c.traffic, &c.latency_us);
                let _ = writeln!(
                    s,
                    "             {name:<12} {:>6} {:>10} {:>10} {:>8} {:>9.4} {:>11.0} {:>9} {:>9}",
                    c.pairs,
                    t.sent,
                    t.received,
                    t.lost,
                    t.loss_ratio * 100.0,
                    t.packets_per_sec,
                    l.p50,
                    l.p99
                );
            }
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

    #[test]
    fn fairness_of_even_and_starved_flows() {
        let even = Fairness::from_counts(&[100, 100, 100, 100], 2.0).unwrap();
        assert_eq!(
            (even.min_pps, even.mean_pps, even.max_pps),
            (50.0, 50.0, 50.0)
        );
        assert!((even.jain - 1.0).abs() < 1e-12);
        assert!((even.min_over_mean() - 1.0).abs() < 1e-12);
        // One flow got everything: Jain is 1/n, the starved flows' share 0.
        let starved = Fairness::from_counts(&[400, 0, 0, 0], 1.0).unwrap();
        assert!((starved.jain - 0.25).abs() < 1e-12);
        assert_eq!(starved.min_over_mean(), 0.0);
        assert_eq!(Fairness::from_counts(&[], 1.0), None);
        assert_eq!(Fairness::from_counts(&[1], 0.0), None);
    }

    #[test]
    fn fairness_spans_merged_shards() {
        let mut a = Report::new("pairs", "x");
        a.measured_secs = 1.0;
        a.extra
            .insert(FLOW_RECEIVED_KEY.into(), vec![10u64, 30].into());
        let mut b = a.clone();
        b.extra.insert(FLOW_RECEIVED_KEY.into(), vec![20u64].into());
        a.merge(&b);
        let f = a.fairness().unwrap();
        assert_eq!((f.flows, f.min_pps, f.max_pps), (3, 10.0, 30.0));
        assert!(
            a.summary()
                .contains("fairness   3 flows: packets/s min 10, mean 20, max 30")
        );
    }

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

    /// A mesh run: two same-node pairs that lost nothing, two cross-node pairs that lost 1 %
    /// and were slower.
    fn mesh_sample() -> Report {
        let mut r = Report::new("mesh", "https://a/derp,https://b/derp");
        r.measured_secs = 2.0;
        for (name, lost, base) in [("same_node", 0, 100), ("cross_node", 4, 1_000)] {
            let mut c = ClassReport {
                pairs: 2,
                ..ClassReport::default()
            };
            c.traffic.sent = 400;
            c.traffic.received = 400 - lost;
            c.traffic.bytes_received = (400 - lost) * 100;
            for v in 0..c.traffic.received {
                c.latency_us.histogram.record(base + v % 100);
            }
            r.traffic.add(&c.traffic);
            r.latency_us.histogram.merge(&c.latency_us.histogram);
            r.classes.insert(name.into(), c);
        }
        r.finalize();
        r
    }

    #[test]
    fn classes_are_derived_judged_and_printed_side_by_side() {
        let mut r = mesh_sample();
        let (same, cross) = (&r.classes["same_node"], &r.classes["cross_node"]);
        assert_eq!(same.traffic.loss_ratio, 0.0);
        assert!((cross.traffic.loss_ratio - 0.01).abs() < 1e-9);
        assert!((same.traffic.packets_per_sec - 200.0).abs() < 1e-9);
        assert!((cross.traffic.packets_per_sec - 198.0).abs() < 1e-9);
        assert!(same.latency_us.p99 < 200 && cross.latency_us.p50 >= 1_000);
        assert!((r.traffic.loss_ratio - 0.005).abs() < 1e-9);

        // The total passes 0.6 %; the cross-node class does not.
        r.judge(&Thresholds {
            max_loss: Some(0.006),
            ..Thresholds::default()
        });
        assert_eq!(r.verdict.failures.len(), 1, "{:?}", r.verdict.failures);
        assert!(r.verdict.failures[0].starts_with("cross_node: loss"));
        // A p99 limit between the classes fails only the slow one (and the total).
        r.judge(&Thresholds {
            max_p99: Some(Duration::from_micros(500)),
            ..Thresholds::default()
        });
        let f = &r.verdict.failures;
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().any(|l| l.starts_with("cross_node: p99")), "{f:?}");

        let text = r.summary();
        let row = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap()
        };
        assert!(row("same_node").contains(" 400 "), "{text}");
        assert!(row("cross_node").contains(" 396 "), "{text}");
    }

    #[test]
    fn classes_merge_exactly_and_are_absent_from_classless_json() {
        let a = mesh_sample();
        let back: Report = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        let mut m = Report::default();
        m.merge(&a);
        m.merge(&back);
        m.finalize();
        let cross = &m.classes["cross_node"];
        assert_eq!(cross.pairs, 4);
        assert_eq!(cross.traffic.sent, 800);
        assert_eq!(cross.traffic.lost, 8);
        assert_eq!(cross.latency_us.p99, a.classes["cross_node"].latency_us.p99);
        assert!((cross.traffic.packets_per_sec - 396.0).abs() < 1e-9);
        assert_eq!(m.classes["same_node"].traffic.lost, 0);

        // Scenarios without classes keep the v1 shape exactly.
        let v = serde_json::to_value(sample()).unwrap();
        assert!(v.get("classes").is_none(), "{v}");
    }

    #[test]
    fn json_round_trip() {
        let a = sample();
        let s = serde_json::to_string(&a).unwrap();
        let b: Report = serde_json::from_str(&s).unwrap();
        assert_eq!(a, b);
    }
}
