//! The two loops of a connection: the reader routes the client's frames, the writer owns the
//! socket's write half and drains this client's queues in batches.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::BufMut;
use derp_proto::frame::{FrameType, PeerGoneReason, encode_recv_packet_header};
use derp_proto::io::{FramedRead, FramedWrite, ReadFrameError};
use derp_proto::{ClientToServer, DecodeError, NodePublicKey, ServerToClient};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Relay;
use super::queue::{ClientHandle, Control, Packet};
use super::registry::Route;
use crate::metrics::{DropReason, PacketKind};

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error(transparent)]
    Read(#[from] ReadFrameError),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0:?} frame from a non-mesh client")]
    NotMesh(FrameType),
    #[error("write timed out after {0:?}")]
    WriteTimeout(Duration),
    #[error("write: {0}")]
    Write(std::io::Error),
}

/// Most frames drained into one write before flushing, so one busy client cannot hold its
/// writer in a drain loop forever and the buffer stays bounded (~64 × 64 KiB worst case).
const MAX_BATCH_FRAMES: usize = 64;

/// Flush early once this much is buffered.
const FLUSH_BYTES: usize = 256 * 1024;

/// Token bucket for PeerGone(NotHere) replies: one per second, burst of three (Go derper).
struct NotHereLimiter {
    tokens: f64,
    last: Instant,
}

impl NotHereLimiter {
    fn new() -> Self {
        Self {
            tokens: 3.0,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64()).min(3.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reads and dispatches frames until the client leaves or misbehaves.
pub(crate) async fn read_loop<R: AsyncRead + Unpin>(
    relay: &Relay,
    client: &ClientHandle,
    reader: &mut FramedRead<R>,
) -> Result<(), ConnError> {
    let metrics = &relay.inner.metrics;
    let registry = &relay.inner.registry;
    let mut not_here = NotHereLimiter::new();
    let mut preferred = false;
    let result = async {
        loop {
            let frame = tokio::select! {
                biased;
                _ = client.cancel.cancelled() => return Ok(()),
                f = reader.read_frame() => f?,
            };
            if client.is_dup.load(std::sync::atomic::Ordering::Relaxed) {
                registry.note_activity(client);
            }
            let msg = ClientToServer::decode(frame.ty, frame.payload)?;
            match msg {
                ClientToServer::SendPacket { dst, packet } => deliver(
                    relay,
                    client,
                    &dst,
                    client.key,
                    packet,
                    DropReason::UnknownDest,
                    &mut not_here,
                ),
                ClientToServer::ForwardPacket { src, dst, packet } => {
                    if !client.is_mesh {
                        return Err(ConnError::NotMesh(FrameType::FORWARD_PACKET));
                    }
                    deliver(
                        relay,
                        client,
                        &dst,
                        src,
                        packet,
                        DropReason::UnknownDestOnFwd,
                        &mut not_here,
                    );
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
                }
                ClientToServer::Ping(data) => {
                    metrics.got_ping.increment(1);
                    client.enqueue_pong(data);
                }
                ClientToServer::Pong(_) => {}
                ClientToServer::WatchConns => {
                    if !client.is_mesh {
                        return Err(ConnError::NotMesh(FrameType::WATCH_CONNS));
                    }
                    // A relay meshing with itself must not watch itself.
                    if client.key != relay.inner.public_key {
                        registry.add_watcher(client);
                    }
                }
                ClientToServer::ClosePeer(key) => {
                    if !client.is_mesh {
                        return Err(ConnError::NotMesh(FrameType::CLOSE_PEER));
                    }
                    let n = registry.close_key(&key);
                    tracing::info!(peer = %key.short(), closed = n, "close peer requested by mesh");
                }
                ClientToServer::Unknown { .. } => metrics.unknown_frames.increment(1),
                // Future variants of the non-exhaustive enum: skip like unknown frames.
                _ => metrics.unknown_frames.increment(1),
            }
        }
    }
    .await;
    if preferred {
        metrics.current_home_connections.decrement(1.0);
    }
    result
}

/// Counts a received packet and routes it to its destination's queue, or drops and counts it.
fn deliver(
    relay: &Relay,
    sender: &ClientHandle,
    dst: &NodePublicKey,
    src: NodePublicKey,
    packet: bytes::Bytes,
    unknown_reason: DropReason,
    not_here: &mut NotHereLimiter,
) {
    let metrics = &relay.inner.metrics;
    let kind = PacketKind::of(&packet);
    metrics.received_packet(kind, packet.len());
    match relay.inner.registry.route(dst) {
        Route::Local(target) => target.enqueue_packet(
            Packet {
                src,
                data: packet,
                enqueued_at: Instant::now(),
            },
            metrics,
        ),
        Route::DupNoActive => metrics.drop_packet(DropReason::DupClient, kind, packet.len()),
        Route::Unknown => {
            metrics.drop_packet(unknown_reason, kind, packet.len());
            if kind == PacketKind::Disco
                && not_here.allow()
                && sender
                    .enqueue_control(Control::PeerGone(*dst, PeerGoneReason::NOT_HERE), metrics)
            {
                metrics.peer_gone_not_here.increment(1);
            }
        }
    }
}

/// Drains this client's queues into the socket until cancelled or a write fails.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    relay: &Relay,
    client: &ClientHandle,
    mut writer: FramedWrite<W>,
    write_timeout: Option<Duration>,
    keepalive: Duration,
) -> Result<(), ConnError> {
    let metrics = &relay.inner.metrics;
    let registry = &relay.inner.registry;
    // Senders this connection has received from; owned by the writer alone so PeerGone
    // bookkeeping costs a registry write only on a sender's first packet.
    let mut seen_src: HashSet<NodePublicKey> = HashSet::new();
    let start = tokio::time::Instant::now() + keepalive;
    let mut keepalive = tokio::time::interval_at(start, keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let mut frames = 0usize;
        let mut packets = 0u64;
        let mut packet_bytes = 0u64;
        let mut oldest: Option<Instant> = None;
        let buf = writer.buffer();
        while frames < MAX_BATCH_FRAMES && buf.len() < FLUSH_BYTES {
            if let Some(c) = client.pop_control() {
                match c {
                    Control::PeerGone(peer, reason) => {
                        if reason == PeerGoneReason::DISCONNECTED {
                            seen_src.remove(&peer);
                        }
                        ServerToClient::PeerGone { peer, reason }.encode(buf);
                    }
                    Control::PeerPresent { key, addr, flags } => ServerToClient::PeerPresent {
                        peer: key,
                        addr: Some(addr),
                        flags,
                    }
                    .encode(buf),
                    Control::Restarting {
                        reconnect_in_ms,
                        try_for_ms,
                    } => ServerToClient::Restarting {
                        reconnect_in_ms,
                        try_for_ms,
                    }
                    .encode(buf),
                }
            } else if let Some(d) = client.pop_pong() {
                ServerToClient::Pong(d).encode(buf);
                metrics.sent_pong.increment(1);
            } else if let Some(p) = client.pop_disco().or_else(|| client.pop_data()) {
                if !seen_src.contains(&p.src) && registry.add_peer_gone_watcher(&p.src, client) {
                    seen_src.insert(p.src);
                }
                encode_recv_packet_header(buf, &p.src, p.data.len());
                buf.put_slice(&p.data);
                packets += 1;
                packet_bytes += p.data.len() as u64;
                oldest = Some(oldest.map_or(p.enqueued_at, |o| o.min(p.enqueued_at)));
            } else {
                break;
            }
            frames += 1;
        }

        if frames == 0 {
            tokio::select! {
                biased;
                _ = client.cancel.cancelled() => return Ok(()),
                _ = client.woken() => continue,
                _ = keepalive.tick() => {
                    ServerToClient::KeepAlive.encode(writer.buffer());
                    frames = 1;
                }
            }
        }

        let flush = writer.flush();
        let result = match write_timeout {
            Some(t) => match tokio::time::timeout(t, flush).await {
                Ok(r) => r,
                Err(_) => {
                    metrics.write_timeouts.increment(1);
                    if packets > 0 {
                        metrics.drop_packets(
                            DropReason::WriteError,
                            PacketKind::Other,
                            packets,
                            packet_bytes,
                        );
                    }
                    return Err(ConnError::WriteTimeout(t));
                }
            },
            None => flush.await,
        };
        if let Err(e) = result {
            if packets > 0 {
                metrics.drop_packets(
                    DropReason::WriteError,
                    PacketKind::Other,
                    packets,
                    packet_bytes,
                );
            }
            return Err(ConnError::Write(e));
        }
        metrics.write_batch_frames.record(frames as f64);
        if packets > 0 {
            metrics.packets_sent.increment(packets);
            metrics.bytes_sent.increment(packet_bytes);
        }
        if let Some(t) = oldest {
            metrics.queue_delay.record(t.elapsed().as_secs_f64());
        }
    }
}
