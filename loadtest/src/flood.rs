//! The `flood` scenario: clients that stream small valid frames as fast as they can, never
//! reading, against one well-behaved canary pair.
//!
//! A relay reader working through bytes already buffered may never reach an `.await` that
//! yields; with as many flooders as worker threads, other connections' readers and writers then
//! wait. Half the flooders stream Pings, half 1-byte SendPackets to random (absent) keys, many
//! frames per write. Meanwhile one canary peer sends `rate` numbered, timestamped packets per
//! second to its partner (the `pairs` packet format). The report is the canary's: loss and
//! one-way latency; the flood's own volume goes in `extra`.
//!
//! The canary runs on its own thread and runtime, so the flooders in this process cannot delay
//! it; what delays it is the relay (and the shared machine). A flooder the relay disconnects
//! (for not reading its Pongs, say) reconnects and floods on, as an abuser would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use derp_proto::io::{ClientReader, ClientWriter};
use derp_proto::{ClientToServer, NodePublicKey, NodeSecretKey, ServerToClient};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dial::DialOptions;
use crate::pairs::Receiver;
use crate::payload::{self, PacketCodec};
use crate::report::Report;

/// Options of a `flood` run.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FloodConfig {
    /// How to reach the relay.
    #[serde(skip)]
    pub dial: DialOptions,
    /// Flooding clients (even: Pings, odd: 1-byte SendPackets to random keys).
    pub flooders: u64,
    /// Frames per flooder write.
    pub frames_per_write: usize,
    /// Canary packets per second.
    pub rate: f64,
    /// Canary packet size in bytes.
    pub size: usize,
    /// How long the canary sends.
    pub duration: Duration,
    /// Flooding before the canary starts, so it meets a relay already under the flood.
    pub warmup: Duration,
    /// The canary receiver keeps counting at most this long after the canary stops.
    pub drain: Duration,
    /// Budget for connecting everyone.
    pub setup_timeout: Duration,
}

impl FloodConfig {
    /// Defaults: 4 flooders of 512 frames per write, canary 200 packets/s of 200 bytes, 5 s.
    pub fn new(dial: DialOptions) -> Self {
        Self {
            dial,
            flooders: 4,
            frames_per_write: 512,
            rate: 200.0,
            size: 200,
            duration: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
            drain: Duration::from_secs(1),
            setup_timeout: Duration::from_secs(10),
        }
    }
}

/// What a flooder writes: Pings or 1-byte SendPackets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// Ping frames (the relay answers each with a Pong nobody reads).
    Ping,
    /// 1-byte SendPackets to keys nobody holds.
    SendToNobody,
}

impl FloodKind {
    /// Flooder `i`'s kind: even ones Ping, odd ones send.
    pub fn of(i: u64) -> Self {
        if i.is_multiple_of(2) {
            Self::Ping
        } else {
            Self::SendToNobody
        }
    }

    /// Bytes on the wire per frame (5-byte frame header included).
    pub fn frame_len(self) -> u64 {
        match self {
            Self::Ping => 5 + 8,
            Self::SendToNobody => 5 + 32 + 1,
        }
    }
}

/// Canary packets due by `elapsed` at `rate` per second (the first at time 0), capped at
/// `max_batch` beyond the `sent` already sent.
pub fn canary_due(elapsed: Duration, rate: f64, sent: u64, max_batch: u64) -> u64 {
    let due = (elapsed.as_secs_f64() * rate) as u64 + 1;
    due.saturating_sub(sent).min(max_batch)
}

/// Flood volume, shared by the flooder tasks.
#[derive(Debug, Default)]
struct FloodCounters {
    frames: AtomicU64,
    bytes: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
}

/// The canary's result.
struct CanaryOutcome {
    sent: u64,
    rx: Receiver,
    errors: Vec<(String, &'static str, String)>,
}

/// Runs the scenario.
pub async fn run_flood(cfg: &FloodConfig) -> anyhow::Result<Report> {
    if !cfg.rate.is_finite() || cfg.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    if cfg.size < payload::MIN_PACKET_LEN || cfg.size > derp_proto::consts::MAX_PACKET_SIZE {
        bail!(
            "--size must be within {}..={} bytes",
            payload::MIN_PACKET_LEN,
            derp_proto::consts::MAX_PACKET_SIZE
        );
    }
    let mut report = Report::new("flood", &cfg.dial.urls.join(","));
    report.config = serde_json::to_value(cfg)?;
    report.peers.requested = 2 + cfg.flooders;
    let setup_deadline = Instant::now() + cfg.setup_timeout;

    // The canary pair, on its own thread: connects, says it is ready, waits for the start.
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
    let (start_tx, start_rx) = oneshot::channel::<Option<Instant>>();
    let canary_cfg = cfg.clone();
    let canary = std::thread::Builder::new()
        .name("canary".into())
        .spawn(move || -> anyhow::Result<CanaryOutcome> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(canary(&canary_cfg, ready_tx, start_rx))
        })
        .context("spawn canary thread")?;

    // Flooders.
    let mut dialing = JoinSet::new();
    for i in 0..cfg.flooders {
        let dial = cfg.dial.clone();
        dialing.spawn(async move {
            let key = NodeSecretKey::generate();
            let r = dial.connect(key.clone(), 2 + i, 0).await;
            (i, key, r)
        });
    }
    let mut flooders = Vec::new();
    loop {
        match tokio::time::timeout_at(setup_deadline, dialing.join_next()).await {
            Ok(Some(Ok((i, key, Ok(c))))) => flooders.push((i, key, c)),
            Ok(Some(Ok((i, _, Err(e))))) => {
                report.push_error(format!("flooder {i}"), "connect", format!("{e:#}"));
            }
            Ok(Some(Err(e))) => report.push_error("flooder task", "connect", e),
            Ok(None) => break,
            Err(_) => {
                let left = dialing.len();
                dialing.abort_all();
                for _ in 0..left {
                    report.push_error("flooder", "connect", "setup timed out");
                }
                break;
            }
        }
    }
    let canary_ready = match tokio::time::timeout_at(setup_deadline, ready_rx).await {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(e))) => {
            report.push_error("canary", "connect", format!("{e:#}"));
            false
        }
        Ok(Err(_)) => {
            report.push_error("canary", "connect", "canary thread ended");
            false
        }
        Err(_) => {
            report.push_error("canary", "connect", "setup timed out");
            false
        }
    };
    report.peers.connected = flooders.len() as u64 + if canary_ready { 2 } else { 0 };
    report.peers.failed = report.peers.requested - report.peers.connected;

    let flood_start = Instant::now();
    let start = flood_start + cfg.warmup;
    let counters = Arc::new(FloodCounters::default());
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let flooding = flooders.len() as u64;
    for (i, key, client) in flooders {
        let (reader, writer) = client.split();
        tasks.spawn(flooder(
            i,
            key,
            cfg.clone(),
            reader,
            writer,
            Arc::clone(&counters),
            stop.clone(),
        ));
    }
    let _ = start_tx.send(canary_ready.then_some(start));
    // The thread ends on its own deadlines (start + duration + drain + a write grace).
    let outcome = tokio::task::spawn_blocking(move || canary.join())
        .await
        .context("join canary")?;
    let flood_secs = flood_start.elapsed().as_secs_f64();
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    match outcome {
        Ok(Ok(o)) => {
            for (peer, stage, e) in o.errors {
                report.push_error(peer, stage, e);
            }
            let t = &mut report.traffic;
            t.sent = o.sent;
            t.received = o.rx.tracker.unique;
            t.reordered = o.rx.tracker.reordered;
            t.duplicated = o.rx.tracker.duplicated;
            t.corrupted = o.rx.corrupted;
            t.foreign = o.rx.foreign;
            t.bytes_received = o.rx.bytes;
            report.latency_us.histogram = o.rx.latency_us;
        }
        // A canary that never got ready was reported at setup already.
        Ok(Err(e)) if canary_ready => report.push_error("canary", "run", format!("{e:#}")),
        Ok(Err(_)) => {}
        Err(_) => report.push_error("canary", "run", "canary thread panicked"),
    }
    report.measured_secs = cfg.duration.as_secs_f64();
    let frames = counters.frames.load(Ordering::Relaxed);
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let x = &mut report.extra;
    x.insert("flooders".into(), flooding.into());
    x.insert("flood_frames".into(), frames.into());
    x.insert(
        "flood_frames_per_sec".into(),
        (frames as f64 / flood_secs.max(1e-9)).into(),
    );
    x.insert(
        "flood_mbit_per_sec".into(),
        (8.0 * bytes as f64 / flood_secs.max(1e-9) / 1e6).into(),
    );
    x.insert(
        "flooder_reconnects".into(),
        counters.reconnects.load(Ordering::Relaxed).into(),
    );
    x.insert(
        "flooder_reconnect_failures".into(),
        counters.connect_failures.load(Ordering::Relaxed).into(),
    );
    report.finalize();
    Ok(report)
}

/// Floods until `stop`: never reads (the reader is only held), reconnects when the relay
/// closes the connection.
async fn flooder(
    i: u64,
    key: NodeSecretKey,
    cfg: FloodConfig,
    reader: ClientReader,
    writer: ClientWriter,
    counters: Arc<FloodCounters>,
    stop: CancellationToken,
) {
    let kind = FloodKind::of(i);
    // Keys nobody holds; a fresh one per frame would cost a key generation per frame.
    let nobody: Vec<NodePublicKey> = (0..64)
        .map(|_| NodeSecretKey::generate().public_key())
        .collect();
    let per_write = cfg.frames_per_write.max(1) as u64;
    let mut conn = Some((reader, writer));
    let mut k = 0usize;
    while !stop.is_cancelled() {
        let Some((_never_read, writer)) = conn.as_mut() else {
            // Reconnect; a relay that refuses is retried after a short pause.
            let dialed = tokio::select! {
                () = stop.cancelled() => return,
                r = cfg.dial.connect(key.clone(), 2 + i, 0) => r,
            };
            match dialed {
                Ok(c) => {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    conn = Some(c.split());
                }
                Err(_) => {
                    counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
            continue;
        };
        for _ in 0..per_write {
            match kind {
                FloodKind::Ping => writer.queue(&ClientToServer::Ping([7; 8])),
                FloodKind::SendToNobody => {
                    k = (k + 1) % nobody.len();
                    // One byte never exceeds the packet size limit.
                    let _ = writer.queue_packet(&nobody[k], &[1]);
                }
            }
        }
        let written = tokio::select! {
            () = stop.cancelled() => return,
            r = writer.flush() => r.is_ok(),
        };
        if written {
            counters.frames.fetch_add(per_write, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(per_write * kind.frame_len(), Ordering::Relaxed);
        } else {
            conn = None;
        }
        // Flood the relay, not this process's own scheduler.
        tokio::task::yield_now().await;
    }
}

/// The canary pair: connect, report ready, wait for the start, send at `rate` until
/// `start + duration` while the partner counts, drain, return the counts.
async fn canary(
    cfg: &FloodConfig,
    ready: oneshot::Sender<anyhow::Result<()>>,
    start: oneshot::Receiver<Option<Instant>>,
) -> anyhow::Result<CanaryOutcome> {
    let keys = [NodeSecretKey::generate(), NodeSecretKey::generate()];
    let src = keys[0].public_key();
    let dst = keys[1].public_key();
    let dialed = tokio::try_join!(
        cfg.dial.connect(keys[0].clone(), 0, 0),
        cfg.dial.connect(keys[1].clone(), 1, 0),
    );
    let (a, b) = match dialed {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            bail!("canary connect: {msg}");
        }
    };
    let _ = ready.send(Ok(()));
    let codec = PacketCodec::new(0, rand::random());
    let Ok(Some(start)) = start.await else {
        bail!("run cancelled before the canary started");
    };
    let end = start + cfg.duration;
    let epoch = start;
    let (_a_reader, mut writer) = a.split();
    let (mut reader, _b_writer) = b.split();
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));

    let rx_stop = stop.clone();
    let rx_codec = codec.clone();
    let rx_received = Arc::clone(&received);
    let recv = tokio::spawn(async move {
        let mut rx = Receiver::new(rx_codec);
        let mut err = None;
        loop {
            let m = tokio::select! {
                () = rx_stop.cancelled() => break,
                m = reader.recv() => m,
            };
            match m {
                Ok(ServerToClient::RecvPacket { src: from, packet }) if from == src => {
                    let now_ns = epoch.elapsed().as_nanos() as u64;
                    if rx.on_packet(&packet, now_ns) {
                        rx_received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(ServerToClient::RecvPacket { .. }) => rx.foreign += 1,
                Ok(_) => {}
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
        (rx, err)
    });

    let mut errors = Vec::new();
    let mut buf = Vec::with_capacity(cfg.size);
    let mut seq = 0u64;
    tokio::time::sleep_until(start).await;
    while Instant::now() < end {
        let now = Instant::now();
        let n = canary_due(now - start, cfg.rate, seq, 64);
        if n == 0 {
            let next = start + Duration::from_secs_f64(seq as f64 / cfg.rate);
            tokio::time::sleep_until(next.min(end)).await;
            continue;
        }
        for _ in 0..n {
            seq += 1;
            codec.encode(
                payload::TYPE_DATA,
                seq,
                epoch.elapsed().as_nanos() as u64,
                cfg.size,
                &mut buf,
            );
            writer.queue_packet(&dst, &buf)?;
        }
        // Counted before the write: a packet handed to a failing connection is lost.
        sent.fetch_add(n, Ordering::Relaxed);
        match tokio::time::timeout_at(end + Duration::from_secs(1), writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors.push(("canary a".into(), "send", e.to_string()));
                break;
            }
            Err(_) => {
                errors.push(("canary a".into(), "send", "write stalled".into()));
                break;
            }
        }
    }
    let drain_end = Instant::now().max(end) + cfg.drain;
    while Instant::now() < drain_end
        && received.load(Ordering::Relaxed) < sent.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let (rx, err) = recv.await.context("canary receiver")?;
    if let Some(e) = err {
        errors.push(("canary b".into(), "recv", e));
    }
    Ok(CanaryOutcome {
        sent: sent.load(Ordering::Relaxed),
        rx,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flooders_alternate_pings_and_sends() {
        assert_eq!(FloodKind::of(0), FloodKind::Ping);
        assert_eq!(FloodKind::of(1), FloodKind::SendToNobody);
        assert_eq!(FloodKind::of(6), FloodKind::Ping);
        assert_eq!(FloodKind::Ping.frame_len(), 13);
        assert_eq!(FloodKind::SendToNobody.frame_len(), 38);
    }

    #[test]
    fn canary_schedule_keeps_the_rate_and_caps_catch_up() {
        let ms = Duration::from_millis;
        // The first packet is due at once.
        assert_eq!(canary_due(ms(0), 200.0, 0, 64), 1);
        assert_eq!(canary_due(ms(4), 200.0, 1, 64), 0);
        assert_eq!(canary_due(ms(5), 200.0, 1, 64), 1);
        // One second at 1 000/s is 1 001 due (t = 0 included).
        assert_eq!(canary_due(ms(1_000), 1_000.0, 1_000, 64), 1);
        // Far behind: at most one batch at a time.
        assert_eq!(canary_due(ms(1_000), 1_000.0, 0, 64), 64);
    }
}
