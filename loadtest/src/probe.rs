//! The `probe` scenario: a derpprobe-like check of every node in a DERP map.
//!
//! Per node: connect and handshake (TLS when the map says so) twice, relay a packet from one
//! client to the other and back (round trip), and ask the node's STUN port for our address. Per
//! region with several nodes: a packet between clients on different nodes (mesh reachability).
//! Every step has its own timeout, so an unreachable node costs at most a few seconds.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use derp_proto::io::{Client, ConnectOptions};
use derp_proto::{NodePublicKey, NodeSecretKey, ServerToClient, stun};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::derpmap::{DerpMap, DerpNode};
use crate::report::Report;

/// Options of a `probe` run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// Budget per step (connect, round trip, STUN).
    pub timeout: Duration,
    /// Use `http://` instead of TLS (loopback fleets in tests).
    pub plain: bool,
    /// Skip STUN checks.
    pub no_stun: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            plain: false,
            no_stun: false,
        }
    }
}

/// One node's outcome, reported under `extra.probe`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct NodeResult {
    /// Node name.
    pub node: String,
    /// Region ID.
    pub region: i64,
    /// URL probed.
    pub url: String,
    /// Connect + TLS + handshake time, microseconds.
    pub connect_us: Option<u64>,
    /// Relay round trip between two clients on the node, microseconds.
    pub rtt_us: Option<u64>,
    /// STUN round trip, microseconds.
    pub stun_us: Option<u64>,
    /// Mapped address STUN returned.
    pub stun_mapped: Option<String>,
    /// Reached a client on the region's next node through this one (None: single node).
    pub mesh_ok: Option<bool>,
    /// Every step that failed.
    pub failures: Vec<String>,
}

/// Probes every node of `map`.
pub async fn run_probe(map: &DerpMap, cfg: &ProbeConfig, target: &str) -> Report {
    let mut report = Report::new("probe", target);
    let started = Instant::now();
    let nodes = map.nodes();
    let mut results = Vec::new();
    for (i, (region, node)) in nodes.iter().enumerate() {
        let mut r = NodeResult {
            node: node.name.clone(),
            region: region.region_id,
            url: node.derp_url(cfg.plain),
            ..NodeResult::default()
        };
        if !node.stun_only {
            report.peers.requested += 2;
            match probe_relay(node, cfg).await {
                Ok((connect, rtt)) => {
                    report.peers.connected += 2;
                    r.connect_us = Some(connect.as_micros() as u64);
                    r.rtt_us = Some(rtt.as_micros() as u64);
                    report
                        .latency_us
                        .histogram
                        .record(rtt.as_micros() as u64 / 2);
                }
                Err(e) => r.failures.push(format!("relay: {e:#}")),
            }
            // Mesh: a client here reaches a client on the next node of the same region.
            let next = nodes[i + 1..]
                .iter()
                .find(|(rg, n)| rg.region_id == region.region_id && !n.stun_only);
            if let Some((_, other)) = next {
                match probe_mesh(node, other, cfg).await {
                    Ok(()) => r.mesh_ok = Some(true),
                    Err(e) => {
                        r.mesh_ok = Some(false);
                        r.failures.push(format!("mesh to {}: {e:#}", other.name));
                    }
                }
            }
        }
        if !cfg.no_stun
            && let Some(addr) = node.stun_addr()
        {
            match probe_stun(addr, cfg.timeout).await {
                Ok((rtt, mapped)) => {
                    r.stun_us = Some(rtt.as_micros() as u64);
                    r.stun_mapped = Some(mapped.to_string());
                }
                Err(e) => r.failures.push(format!("stun {addr}: {e:#}")),
            }
        }
        for f in &r.failures {
            report.push_error(format!("node {}", r.node), "probe", f);
        }
        results.push(r);
    }
    report.peers.failed = report.peers.requested - report.peers.connected;
    report.measured_secs = started.elapsed().as_secs_f64();
    report.extra.insert(
        "probe".into(),
        serde_json::to_value(&results).unwrap_or_default(),
    );
    report.finalize();
    report
}

async fn connect(node: &DerpNode, cfg: &ProbeConfig) -> anyhow::Result<(Client, NodePublicKey)> {
    let secret = NodeSecretKey::generate();
    let key = secret.public_key();
    let mut o = ConnectOptions::new(node.derp_url(cfg.plain), secret);
    o.verify = node.verify();
    o.dial_addr = node.dial_addr(cfg.plain);
    o.is_prober = true;
    o.connect_timeout = cfg.timeout;
    match tokio::time::timeout(cfg.timeout, Client::connect(&o)).await {
        Ok(r) => Ok((r?, key)),
        Err(_) => bail!("connect timed out after {:?}", cfg.timeout),
    }
}

async fn probe_relay(node: &DerpNode, cfg: &ProbeConfig) -> anyhow::Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let a = connect(node, cfg).await.context("client a")?;
    let connect_time = t0.elapsed();
    let b = connect(node, cfg).await.context("client b")?;
    let rtt = round_trip(a, b, cfg.timeout).await?;
    Ok((connect_time, rtt))
}

async fn probe_mesh(a: &DerpNode, b: &DerpNode, cfg: &ProbeConfig) -> anyhow::Result<()> {
    let a = connect(a, cfg).await.context("client on first node")?;
    let b = connect(b, cfg).await.context("client on second node")?;
    round_trip(a, b, cfg.timeout).await.map(|_| ())
}

/// How often the probe packet is resent while the receiver's registration may still be
/// propagating (a mesh peer learns of a new client asynchronously).
const PROBE_RESEND: Duration = Duration::from_millis(200);

/// Sends from `a` to `b`, has `b` echo it back, and times the first echo.
async fn round_trip(
    (mut a, ka): (Client, NodePublicKey),
    (mut b, kb): (Client, NodePublicKey),
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + timeout;
    let nonce: [u8; 16] = rand::random();
    let mut resend = tokio::time::interval(PROBE_RESEND);
    let mut sent_at = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => bail!("no round trip within {timeout:?}"),
            _ = resend.tick() => {
                sent_at.get_or_insert_with(Instant::now);
                a.send_packet(&kb, &nonce).await.context("send")?;
            }
            m = b.recv() => {
                if let ServerToClient::RecvPacket { src, packet } = m.context("recv at b")?
                    && src == ka
                    && packet[..] == nonce
                {
                    b.send_packet(&ka, &packet).await.context("echo")?;
                }
            }
            m = a.recv() => {
                if let ServerToClient::RecvPacket { src, packet } = m.context("recv at a")?
                    && src == kb
                    && packet[..] == nonce
                {
                    return Ok(sent_at.map_or(Duration::ZERO, |t| t.elapsed()));
                }
            }
        }
    }
}

async fn probe_stun(addr: SocketAddr, timeout: Duration) -> anyhow::Result<(Duration, SocketAddr)> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let sock = UdpSocket::bind(bind).await?;
    let tx = stun::TxId(rand::random());
    let t0 = Instant::now();
    sock.send_to(&stun::binding_request(tx), addr).await?;
    let mut buf = [0u8; 1_500];
    let deadline = t0 + timeout;
    loop {
        let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await else {
            bail!("no answer within {timeout:?}");
        };
        let (n, _) = r?;
        if let Ok((rtx, mapped)) = stun::parse_binding_response(&buf[..n])
            && rtx == tx
        {
            return Ok((t0.elapsed(), mapped));
        }
    }
}
