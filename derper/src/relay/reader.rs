//! The reader: the connection's own task after the handshake. It decodes the client's frames
//! and forwards packets, and it keeps the keepalive timer (so an idle connection is one
//! parked task and nothing else).
//!
//! Fairness: a read can bring in thousands of frames, and working through bytes already
//! buffered never reaches a socket `.await`, so tokio's cooperative budget (which counts
//! resource polls, not frames) would never stop this loop. Every frame therefore consumes a
//! unit of budget, and a reader that fills a destination lane whose writer has not run yet
//! yields to it at once, so a burst arriving in one read reaches a receiver that keeps up.

use std::time::{Duration, Instant};

use derp_proto::frame::FrameType;
use derp_proto::io::{FramedRead, ReadFrameError};
use derp_proto::{ClientToServer, DecodeError};
use tokio::io::AsyncRead;

use super::conn::{ConnHandle, Control, Enqueued};
use super::forward::{self, Origin};
use super::limiter;
use super::{DatagramFuture, DatagramSource, Inner};
use crate::metrics::{DropReason, PacketKind};

/// Why the reader ended the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Read(#[from] ReadFrameError),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0:?} frame from a non-mesh client")]
    NotMesh(FrameType),
}

/// Reads and dispatches frames (and, for a QUIC mesh peer, datagrams) until the client
/// leaves, misbehaves, or the connection is cancelled. Sends KeepAlive every `keepalive`.
pub(crate) async fn run<R: AsyncRead + Unpin>(
    relay: &Inner,
    conn: &ConnHandle,
    reader: &mut FramedRead<R>,
    keepalive: Duration,
    mut datagrams: Option<Box<dyn DatagramSource>>,
) -> Result<(), ReadError> {
    let metrics = &relay.metrics;
    let mut preferred = false;
    let mut forwarded_in: Option<InboundCounters> = None;
    let result = async {
        let mut not_here = limiter::not_here_limiter(Instant::now());
        let mut rate = RateLimit::default();
        let start = tokio::time::Instant::now() + keepalive;
        let mut keepalive = tokio::time::interval_at(start, keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One pending receive at a time, kept across loop turns (it loses nothing if dropped).
        let mut next_datagram: Option<DatagramFuture> = datagrams.as_mut().map(|d| d.recv());
        loop {
            let frame = tokio::select! {
                biased;
                _ = conn.cancel.cancelled() => return Ok(()),
                _ = keepalive.tick() => {
                    conn.enqueue_control(Control::KeepAlive, metrics);
                    continue;
                }
                // Lazy: the timer is only built while a Health line is up.
                _ = async { if let Some(t) = rate.clear_at { tokio::time::sleep_until(t).await } }, if rate.clear_at.is_some() => {
                    rate.clear_at = None;
                    conn.rate_limited.store(false, std::sync::atomic::Ordering::Relaxed);
                    conn.enqueue_control(Control::Health, metrics);
                    continue;
                }
                f = reader.read_frame() => f?,
                d = async {
                    match next_datagram.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if next_datagram.is_some() => {
                    next_datagram = match (d, datagrams.as_mut()) {
                        (Some(d), Some(source)) => {
                            let enqueued = datagram(relay, conn, d, &mut forwarded_in, &mut not_here);
                            if enqueued == Enqueued::Backlogged {
                                tokio::task::yield_now().await;
                            } else {
                                tokio::task::consume_budget().await;
                            }
                            Some(source.recv())
                        }
                        // The transport delivers no more; the stream ends with it.
                        _ => None,
                    };
                    continue;
                }
            };
            if !conn.is_mesh {
                // Backpressure, as derper: the next read waits until the client is within its
                // rate, so TCP flow control slows the sender; nothing is dropped.
                let delay = rate.charge(relay, frame.payload.len());
                if !delay.is_zero() {
                    metrics.rate_limit_waited.increment(1);
                    if !conn.rate_limited.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        conn.enqueue_control(Control::Health, metrics);
                    }
                    rate.clear_at = Some(
                        tokio::time::Instant::now() + delay + crate::defaults::RATE_LIMITED_HEALTH_HOLD,
                    );
                    tokio::select! {
                        biased;
                        _ = conn.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
            if conn.is_dup.load(std::sync::atomic::Ordering::Relaxed) {
                relay.registry.note_activity(conn);
            }
            let msg = ClientToServer::decode(frame.ty, frame.payload)?;
            let enqueued = match msg {
                ClientToServer::SendPacket { dst, packet } => forward::deliver(
                    relay,
                    conn,
                    Origin::Client,
                    conn.key,
                    &dst,
                    packet,
                    &mut not_here,
                ),
                ClientToServer::ForwardPacket { src, dst, packet } => {
                    if !conn.is_mesh {
                        return Err(ReadError::NotMesh(FrameType::FORWARD_PACKET));
                    }
                    forwarded(relay, conn, src, dst, packet, &mut forwarded_in, &mut not_here)
                }
                ClientToServer::NotePreferred(p) => {
                    if p != preferred {
                        preferred = p;
                        if p {
                            metrics.current_home_connections.increment(1.0);
                        } else {
                            metrics.current_home_connections.decrement(1.0);
                        }
                    }
                    Enqueued::Queued
                }
                ClientToServer::Ping(data) => {
                    metrics.got_ping.increment(1);
                    conn.enqueue_pong(data);
                    Enqueued::Queued
                }
                ClientToServer::Pong(_) => Enqueued::Queued,
                ClientToServer::WatchConns => {
                    if !conn.is_mesh {
                        return Err(ReadError::NotMesh(FrameType::WATCH_CONNS));
                    }
                    // A relay meshing with itself must not watch itself.
                    if conn.key != relay.public_key {
                        relay.registry.add_watcher(conn);
                    }
                    Enqueued::Queued
                }
                ClientToServer::ClosePeer(key) => {
                    if !conn.is_mesh {
                        return Err(ReadError::NotMesh(FrameType::CLOSE_PEER));
                    }
                    let n = relay.registry.close_key(&key);
                    tracing::info!(
                        peer = %key.short(),
                        closed = n,
                        mesh_peer = %conn.key.short(),
                        remote = %conn.remote,
                        "close peer requested by mesh"
                    );
                    Enqueued::Queued
                }
                // Unknown frames, and future variants of the non-exhaustive enum, are skipped.
                _ => {
                    metrics.unknown_frames.increment(1);
                    Enqueued::Queued
                }
            };
            if enqueued == Enqueued::Backlogged {
                // The destination's writer is scheduled (most likely in this worker's LIFO
                // slot, which other workers cannot steal) and its lane is half full: let it
                // run before this buffer's next frames overflow the lane.
                tokio::task::yield_now().await;
            } else {
                tokio::task::consume_budget().await;
            }
        }
    }
    .await;
    if preferred {
        metrics.current_home_connections.decrement(1.0);
    }
    result
}

/// A regular client's receive rate limit (`--rate-config`), rebuilt when the operator changes
/// the config (the relay bumps a generation; checking it is one relaxed load per frame).
#[derive(Default)]
struct RateLimit {
    generation: Option<u64>,
    bucket: Option<limiter::TokenBucket>,
    /// When to clear the "rate limited" Health line, once the client stopped waiting.
    clear_at: Option<tokio::time::Instant>,
}

impl RateLimit {
    /// Charges a frame of `len` bytes (at most one full frame's worth, as derper) and returns
    /// how long to wait before reading on.
    fn charge(&mut self, relay: &Inner, len: usize) -> Duration {
        let generation = relay
            .rate_generation
            .load(std::sync::atomic::Ordering::Acquire);
        // Paused-time aware: tokio's clock, as a std instant.
        let now = tokio::time::Instant::now().into_std();
        if self.generation != Some(generation) {
            self.generation = Some(generation);
            let rc = relay.rate_config();
            self.bucket = rc.is_enabled().then(|| {
                limiter::TokenBucket::with_burst(
                    rc.bytes_per_sec as f64,
                    rc.burst_bytes as f64,
                    now,
                )
            });
        }
        match &mut self.bucket {
            None => Duration::ZERO,
            Some(b) => {
                let charged = (len as u64).min(crate::limits::MIN_RATE_BURST);
                b.reserve(charged as f64, now)
            }
        }
    }
}

/// Routes one packet a mesh peer forwarded (frame or datagram): counted per peer, and
/// dropped if its source is a client connected only here.
fn forwarded(
    relay: &Inner,
    conn: &ConnHandle,
    src: derp_proto::NodePublicKey,
    dst: derp_proto::NodePublicKey,
    packet: bytes::Bytes,
    counters: &mut Option<InboundCounters>,
    not_here: &mut limiter::TokenBucket,
) -> Enqueued {
    counters
        .get_or_insert_with(|| InboundCounters::new(relay, conn))
        .count(relay, conn, packet.len());
    if relay.registry.is_local_only(&src) {
        // The source is a client of this node that no peer announced: the peer is forging it
        // (or replaying a client that moved here).
        relay.metrics.drop_packet(
            DropReason::ForgedSource,
            PacketKind::of(&packet),
            packet.len(),
        );
        if let Some(suppressed) = crate::log_limit::BAD_CONNECTIONS.allow() {
            tracing::info!(mesh_peer = %conn.key.short(), remote = %conn.remote, src = %src.short(), suppressed, "dropped ForwardPacket from a source connected here");
        }
        return Enqueued::Closed;
    }
    forward::deliver(relay, conn, Origin::Mesh, src, &dst, packet, not_here)
}

/// Decodes and routes one datagram of a QUIC mesh peer; a bad one is dropped and counted (the
/// connection stays: datagrams are independent, and the peer is authenticated).
fn datagram(
    relay: &Inner,
    conn: &ConnHandle,
    datagram: bytes::Bytes,
    counters: &mut Option<InboundCounters>,
    not_here: &mut limiter::TokenBucket,
) -> Enqueued {
    use derp_proto::datagram::{self, DatagramError};

    use crate::metrics::DatagramDrop;
    match datagram::decode(datagram) {
        Ok(d) => {
            relay.metrics.quic_datagrams_received.increment(1);
            forwarded(relay, conn, d.src, d.dst, d.packet, counters, not_here)
        }
        Err(e) => {
            relay.metrics.quic_datagram_dropped(match e {
                DatagramError::Malformed => DatagramDrop::Malformed,
                DatagramError::Oversized(_) => DatagramDrop::Oversized,
            });
            if let Some(suppressed) = crate::log_limit::BAD_CONNECTIONS.allow() {
                tracing::info!(mesh_peer = %conn.key.short(), remote = %conn.remote, error = %e, suppressed, "dropped a mesh datagram");
            }
            Enqueued::Closed
        }
    }
}

/// `derp_mesh_forwarded_{packets,bytes}_total{peer,direction="in"}` for one mesh peer's
/// connection, labelled with the name of our link to that relay (or `unlisted` while we have
/// none: asked again every 4 096 packets, so the label follows once our link is up).
struct InboundCounters {
    labelled: bool,
    until_retry: u32,
    packets: metrics::Counter,
    bytes: metrics::Counter,
}

impl InboundCounters {
    fn new(relay: &Inner, conn: &ConnHandle) -> Self {
        let name = relay
            .mesh_peer_names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&conn.key)
            .cloned();
        let (packets, bytes) = crate::metrics::mesh_inbound(name.as_deref().unwrap_or("unlisted"));
        Self {
            labelled: name.is_some(),
            until_retry: 4096,
            packets,
            bytes,
        }
    }

    fn count(&mut self, relay: &Inner, conn: &ConnHandle, len: usize) {
        if !self.labelled {
            self.until_retry -= 1;
            if self.until_retry == 0 {
                *self = Self::new(relay, conn);
            }
        }
        self.packets.increment(1);
        self.bytes.increment(len as u64);
    }
}
