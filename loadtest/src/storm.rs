//! The `storm` scenario: M clients connect, then all drop and reconnect at once, R times.
//!
//! It measures what a relay restart or a network flap does: handshakes per second under a
//! thundering herd, reconnect latency percentiles, and how many clients fail to come back.

use std::sync::Arc;
use std::time::Duration;

use derp_proto::key::SharedBox;
use derp_proto::{NodePublicKey, NodeSecretKey};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::dial::DialOptions;
use crate::report::Report;

/// Options of a `storm` run.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StormConfig {
    /// How to reach the relay.
    #[serde(skip)]
    pub dial: DialOptions,
    /// Clients.
    pub clients: u64,
    /// Index of this shard's first client.
    pub first_client: u64,
    /// Reconnect rounds after the initial connect.
    pub rounds: u32,
    /// Cap on simultaneous dials (0: all at once, the real storm).
    pub concurrency: usize,
    /// Budget per round.
    pub round_timeout: Duration,
}

impl StormConfig {
    /// Defaults: 1 000 clients, 3 rounds, no concurrency cap, 30 s per round.
    pub fn new(dial: DialOptions) -> Self {
        Self {
            dial,
            clients: 1_000,
            first_client: 0,
            rounds: 3,
            concurrency: 0,
            round_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs the scenario; `latency_us` holds connect times.
pub async fn run_storm(cfg: &StormConfig) -> anyhow::Result<Report> {
    let mut report = Report::new("storm", &cfg.dial.urls.join(","));
    report.config = serde_json::to_value(cfg)?;
    report.peers.requested = cfg.clients * (u64::from(cfg.rounds) + 1);
    let keys: Vec<NodeSecretKey> = (0..cfg.clients)
        .map(|_| NodeSecretKey::generate())
        .collect();
    // Each client's box with the server it met, so reconnects (rounds 1..) cost the client no
    // X25519: on a box the client shares with the relay, the client's key agreement would
    // otherwise take a third of the client's CPU and bound the measured handshake rate.
    let mut boxes: Vec<Option<(NodePublicKey, SharedBox)>> = vec![None; keys.len()];
    let sem = Arc::new(Semaphore::new(if cfg.concurrency == 0 {
        Semaphore::MAX_PERMITS
    } else {
        cfg.concurrency
    }));
    let started = Instant::now();
    let mut handshakes = 0u64;
    let mut rounds = Vec::new();
    for round in 0..=cfg.rounds {
        let t0 = Instant::now();
        let deadline = t0 + cfg.round_timeout;
        let mut set = JoinSet::new();
        for (k, key) in keys.iter().enumerate() {
            let i = cfg.first_client + k as u64;
            let (dial, key, sem) = (cfg.dial.clone(), key.clone(), Arc::clone(&sem));
            let shared = boxes[k].clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.ok();
                let t = Instant::now();
                let r = dial.reconnect(key, i, i as usize, shared).await;
                (k, i, t.elapsed(), r)
            });
        }
        let mut clients = Vec::with_capacity(keys.len());
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(Ok((k, i, took, r)))) => match r {
                    Ok(c) => {
                        handshakes += 1;
                        boxes[k] = Some(c.shared_box());
                        report.latency_us.histogram.record(took.as_micros() as u64);
                        clients.push(c);
                    }
                    Err(e) => report.push_error(
                        format!("client {i} round {round}"),
                        "connect",
                        format!("{e:#}"),
                    ),
                },
                Ok(Some(Err(e))) => report.push_error("task", "connect", e),
                Ok(None) => break,
                Err(_) => {
                    let left = set.len();
                    set.abort_all();
                    report.errors_total += left as u64;
                    report.push_error(
                        format!("{left} clients round {round}"),
                        "connect",
                        "round timed out",
                    );
                    break;
                }
            }
        }
        let took = t0.elapsed();
        rounds.push(serde_json::json!({
            "round": round,
            "connected": clients.len(),
            "secs": took.as_secs_f64(),
            "handshakes_per_sec": clients.len() as f64 / took.as_secs_f64().max(1e-9),
        }));
        // Everyone drops at once: the next round is the herd.
        drop(clients);
    }
    report.peers.connected = handshakes;
    report.peers.failed = report.peers.requested - handshakes;
    report.measured_secs = started.elapsed().as_secs_f64();
    report.extra.insert(
        "handshakes_per_sec".into(),
        serde_json::json!(handshakes as f64 / report.measured_secs.max(1e-9)),
    );
    report
        .extra
        .insert("rounds".into(), serde_json::Value::Array(rounds));
    report.finalize();
    Ok(report)
}
