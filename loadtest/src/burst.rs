//! The `burst` scenario: one sender writes bursts of N SendPacket frames in a single write, one
//! receiver reads as fast as it can.
//!
//! Real WireGuard-over-DERP bulk traffic reaches the relay as many frames per read. A relay that
//! works through such a read before the destination's writer gets to run can overflow the
//! destination's queue and drop the tail of every burst, although the receiver keeps up. Each
//! burst is queued into one buffer and written with one `write_all`; the sender then waits until
//! the receiver has the whole burst or `burst_timeout` passes, and sends the next. Packets carry
//! their burst and index in the sequence number (see [`seq_of`]), so late arrivals are counted
//! for the burst they belong to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use derp_proto::io::ClientReader;
use derp_proto::{NodePublicKey, NodeSecretKey, ServerToClient};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dial::DialOptions;
use crate::payload::{self, PacketCodec};
use crate::report::Report;
use crate::stats::Histogram;

/// Options of a `burst` run.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BurstConfig {
    /// How to reach the relay.
    #[serde(skip)]
    pub dial: DialOptions,
    /// SendPacket frames per burst (one write).
    pub burst: u64,
    /// Number of bursts.
    pub bursts: u64,
    /// Packet size in bytes.
    pub size: usize,
    /// Longest wait for a burst to arrive before sending the next.
    pub burst_timeout: Duration,
    /// Budget for connecting both peers.
    pub setup_timeout: Duration,
}

impl BurstConfig {
    /// Defaults: 20 bursts of 64 packets of 1 200 bytes, 2 s per burst.
    pub fn new(dial: DialOptions) -> Self {
        Self {
            dial,
            burst: 64,
            bursts: 20,
            size: 1_200,
            burst_timeout: Duration::from_secs(2),
            setup_timeout: Duration::from_secs(10),
        }
    }
}

/// Sequence number of packet `i` (0-based) of burst `b` (0-based), `n` packets per burst.
/// Starts at 1: 0 is the handshake messages' counter in [`payload`].
pub fn seq_of(b: u64, i: u64, n: u64) -> u64 {
    b * n + i + 1
}

/// What the receiver has counted, per burst.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BurstTally {
    /// Packets per burst.
    n: u64,
    /// One flag per packet of the run: arrived.
    seen: Vec<bool>,
    /// Distinct packets received, per burst.
    pub received: Vec<u64>,
    /// Packets that arrived more than once.
    pub duplicated: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Packets whose tag did not verify.
    pub corrupted: u64,
    /// Packets that were not this run's (or out of its sequence range).
    pub foreign: u64,
    /// Bytes of distinct packets.
    pub bytes: u64,
    /// Highest sequence number so far.
    highest: u64,
    /// Time from the start of a packet's burst write to its arrival, µs.
    pub latency_us: Histogram,
}

impl BurstTally {
    /// Room for `bursts` bursts of `n` packets.
    pub fn new(n: u64, bursts: u64) -> Self {
        Self {
            n: n.max(1),
            seen: vec![false; (n.max(1) * bursts) as usize],
            received: vec![0; bursts as usize],
            duplicated: 0,
            reordered: 0,
            corrupted: 0,
            foreign: 0,
            bytes: 0,
            highest: 0,
            latency_us: Histogram::default(),
        }
    }

    /// Counts data packet `seq` of `len` bytes, sent at `sent_ns`; returns its burst if it was
    /// new.
    pub fn on_seq(&mut self, seq: u64, len: usize, sent_ns: u64, now_ns: u64) -> Option<u64> {
        let Some(slot) = seq.checked_sub(1).filter(|s| *s < self.seen.len() as u64) else {
            self.foreign += 1;
            return None;
        };
        if std::mem::replace(&mut self.seen[slot as usize], true) {
            self.duplicated += 1;
            return None;
        }
        if seq < self.highest {
            self.reordered += 1;
        }
        self.highest = self.highest.max(seq);
        let b = slot / self.n;
        self.received[b as usize] += 1;
        self.bytes += len as u64;
        self.latency_us
            .record(now_ns.saturating_sub(sent_ns) / 1_000);
        Some(b)
    }

    /// Distinct packets over all bursts.
    pub fn total(&self) -> u64 {
        self.received.iter().sum()
    }
}

/// One row of the report's `bursts` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BurstRow {
    /// Burst number, from 1.
    pub burst: u64,
    /// Packets written (0 when the write failed).
    pub sent: u64,
    /// Distinct packets received, however late.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
}

/// Per-burst rows from what was sent and what arrived.
pub fn burst_rows(sent: &[u64], received: &[u64]) -> Vec<BurstRow> {
    sent.iter()
        .zip(received)
        .enumerate()
        .map(|(b, (&s, &r))| BurstRow {
            burst: b as u64 + 1,
            sent: s,
            received: r,
            lost: s.saturating_sub(r),
        })
        .collect()
}

/// Runs the scenario.
pub async fn run_burst(cfg: &BurstConfig) -> anyhow::Result<Report> {
    if cfg.burst == 0 || cfg.bursts == 0 {
        bail!("--burst and --bursts must be at least 1");
    }
    if cfg.size < payload::MIN_PACKET_LEN || cfg.size > derp_proto::consts::MAX_PACKET_SIZE {
        bail!(
            "--size must be within {}..={} bytes",
            payload::MIN_PACKET_LEN,
            derp_proto::consts::MAX_PACKET_SIZE
        );
    }
    let mut report = Report::new("burst", &cfg.dial.urls.join(","));
    report.config = serde_json::to_value(cfg)?;
    report.peers.requested = 2;
    let keys = [NodeSecretKey::generate(), NodeSecretKey::generate()];
    let dst = keys[1].public_key();
    let src = keys[0].public_key();
    let setup = async {
        tokio::try_join!(
            cfg.dial.connect(keys[0].clone(), 0, 0),
            cfg.dial.connect(keys[1].clone(), 1, 0),
        )
    };
    let (a, b) = match tokio::time::timeout(cfg.setup_timeout, setup).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            report.push_error("pair", "connect", format!("{e:#}"));
            report.peers.failed = 2;
            report.finalize();
            return Ok(report);
        }
        Err(_) => {
            report.push_error("pair", "connect", "setup timed out");
            report.peers.failed = 2;
            report.finalize();
            return Ok(report);
        }
    };
    report.peers.connected = 2;
    let (_a_reader, mut writer) = a.split();
    let (reader, _b_writer) = b.split();

    let codec = PacketCodec::new(0, rand::random());
    let tally = Arc::new(Mutex::new(BurstTally::new(cfg.burst, cfg.bursts)));
    let arrived = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let epoch = Instant::now();
    let recv = tokio::spawn(recv_loop(
        reader,
        src,
        codec.clone(),
        Arc::clone(&tally),
        Arc::clone(&arrived),
        epoch,
        stop.clone(),
    ));

    let mut sent = vec![0u64; cfg.bursts as usize];
    let mut buf = Vec::with_capacity(cfg.size);
    let mut send_error = None;
    let count = |b: u64| {
        tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .received[b as usize]
    };
    for b in 0..cfg.bursts {
        let now_ns = epoch.elapsed().as_nanos() as u64;
        for i in 0..cfg.burst {
            let seq = seq_of(b, i, cfg.burst);
            codec.encode(payload::TYPE_DATA, seq, now_ns, cfg.size, &mut buf);
            writer.queue_packet(&dst, &buf)?;
        }
        // The whole burst in one write. Counted before: a burst handed to a failing
        // connection is lost.
        sent[b as usize] = cfg.burst;
        let deadline = Instant::now() + cfg.burst_timeout;
        match tokio::time::timeout_at(deadline, writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                send_error = Some(format!("burst {}: {e}", b + 1));
                break;
            }
            Err(_) => {
                send_error = Some(format!("burst {}: write stalled", b + 1));
                break;
            }
        }
        // Until the receiver has the whole burst, or the timeout.
        while count(b) < cfg.burst {
            if tokio::time::timeout_at(deadline, arrived.notified())
                .await
                .is_err()
            {
                break;
            }
        }
    }
    let measured = epoch.elapsed();
    stop.cancel();
    let recv_error = match recv.await {
        Ok(r) => r.err().map(|e| format!("{e:#}")),
        Err(e) => Some(e.to_string()),
    };
    if let Some(e) = send_error {
        report.push_error("sender", "send", e);
    }
    if let Some(e) = recv_error {
        report.push_error("receiver", "recv", e);
    }

    let tally = tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let rows = burst_rows(&sent, &tally.received);
    let t = &mut report.traffic;
    t.sent = sent.iter().sum();
    t.received = tally.total();
    t.duplicated = tally.duplicated;
    t.reordered = tally.reordered;
    t.corrupted = tally.corrupted;
    t.foreign = tally.foreign;
    t.bytes_received = tally.bytes;
    report.latency_us.histogram = tally.latency_us.clone();
    report.measured_secs = measured.as_secs_f64();
    let complete = rows.iter().filter(|r| r.sent > 0 && r.lost == 0).count() as u64;
    let worst = rows
        .iter()
        .filter(|r| r.sent > 0)
        .map(|r| r.received)
        .min()
        .unwrap_or(0);
    report
        .extra
        .insert("bursts_complete".into(), complete.into());
    report
        .extra
        .insert("worst_burst_received".into(), worst.into());
    report
        .extra
        .insert("bursts".into(), serde_json::to_value(&rows)?);
    report.finalize();
    Ok(report)
}

async fn recv_loop(
    mut reader: ClientReader,
    src: NodePublicKey,
    codec: PacketCodec,
    tally: Arc<Mutex<BurstTally>>,
    arrived: Arc<Notify>,
    epoch: Instant,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = reader.recv() => m.context("DERP recv")?,
        };
        let ServerToClient::RecvPacket { src: from, packet } = msg else {
            continue;
        };
        let now_ns = epoch.elapsed().as_nanos() as u64;
        let mut t = tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if from != src || payload::peek_pair(&packet) != Some(codec.pair()) {
            t.foreign += 1;
            continue;
        }
        match codec.decode(&packet) {
            Ok(d) if d.ty == payload::TYPE_DATA => {
                if t.on_seq(d.seq, packet.len(), d.sent_ns, now_ns).is_some() {
                    arrived.notify_one();
                }
            }
            Ok(_) => t.foreign += 1,
            Err(payload::DecodePacketError::Corrupted) => t.corrupted += 1,
            Err(_) => t.foreign += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_map_back_to_their_burst() {
        let mut t = BurstTally::new(4, 3);
        assert_eq!(seq_of(0, 0, 4), 1);
        assert_eq!(seq_of(2, 3, 4), 12);
        assert_eq!(t.on_seq(seq_of(0, 0, 4), 100, 0, 5_000), Some(0));
        assert_eq!(t.on_seq(seq_of(1, 3, 4), 100, 0, 5_000), Some(1));
        assert_eq!(t.on_seq(seq_of(2, 3, 4), 100, 0, 9_000), Some(2));
        // A late packet of burst 0 is counted for burst 0, as reordered.
        assert_eq!(t.on_seq(seq_of(0, 1, 4), 100, 0, 5_000), Some(0));
        assert_eq!(t.received, vec![2, 1, 1]);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.total(), 4);
        assert_eq!(t.bytes, 400);
        assert_eq!(t.latency_us.max, 9);
    }

    #[test]
    fn duplicates_and_out_of_range_are_not_counted() {
        let mut t = BurstTally::new(2, 2);
        assert_eq!(t.on_seq(1, 10, 0, 0), Some(0));
        assert_eq!(t.on_seq(1, 10, 0, 0), None);
        assert_eq!(t.on_seq(0, 10, 0, 0), None, "0 is a handshake counter");
        assert_eq!(t.on_seq(5, 10, 0, 0), None, "past the last burst");
        assert_eq!(t.received, vec![1, 0]);
        assert_eq!((t.duplicated, t.foreign), (1, 2));
    }

    #[test]
    fn rows_report_loss_per_burst() {
        let rows = burst_rows(&[64, 64, 0], &[32, 64, 0]);
        assert_eq!(
            rows,
            vec![
                BurstRow {
                    burst: 1,
                    sent: 64,
                    received: 32,
                    lost: 32
                },
                BurstRow {
                    burst: 2,
                    sent: 64,
                    received: 64,
                    lost: 0
                },
                BurstRow {
                    burst: 3,
                    sent: 0,
                    received: 0,
                    lost: 0
                },
            ]
        );
    }
}
