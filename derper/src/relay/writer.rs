//! The on-demand writer: a task that exists only while a connection has something to write.
//!
//! It takes the parked [`Sink`](super::conn::Sink), drains the outbox in batches (control,
//! pong, disco, data), encodes each batch into one buffer and writes it with one flush under
//! the write deadline. When the outbox is empty it parks the sink and ends, giving back its
//! buffer; the next queued frame spawns a new writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use derp_proto::ServerToClient;
use derp_proto::frame::{PeerGoneReason, encode_recv_packet_header};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::Inner;
use super::conn::{Conn, Control, Outgoing, Sink};
use crate::metrics::{DropReason, PacketKind};

/// Most frames drained into one write, so one busy connection cannot hold its writer in a
/// drain loop forever and the buffer stays bounded (~64 × 64 KiB worst case).
pub(crate) const MAX_BATCH_FRAMES: usize = 64;

/// Why a writer stopped the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("write timed out after {0:?}")]
    Timeout(Duration),
    #[error("write: {0}")]
    Io(std::io::Error),
}

/// Starts a writer for `conn`; called by whoever moved its outbox from parked to scheduled.
pub(crate) fn spawn(relay: Arc<Inner>, conn: Arc<Conn>) {
    let span = tracing::debug_span!("writer", id = %conn.conn_id);
    let tasks = relay.tasks.clone();
    tasks.spawn(
        async move {
            if let Err(e) = run(&relay, &conn).await {
                super::log_conn_end(&conn, &super::ConnEnd::Write(e));
                // Whatever ended the writer ends the connection.
                conn.cancel.cancel();
            }
        }
        .instrument(span),
    );
}

/// Drains the outbox until it is empty (parks the sink), the connection is cancelled, or a
/// write fails.
async fn run(relay: &Inner, conn: &Conn) -> Result<(), WriteError> {
    // The sink is parked before the connection is registered, so only a connection that is
    // already ending finds it gone.
    let Some(mut sink) = conn.take_sink() else {
        return Ok(());
    };
    let write_timeout = relay.write_timeout(conn.is_mesh);
    let mut batch = Vec::new();
    let mut buf = BytesMut::new();
    let mut lingered = false;
    loop {
        if !conn.take_batch(&mut batch, MAX_BATCH_FRAMES) {
            if !lingered {
                // Under steady traffic the next frame is usually queued while this one was
                // written: look once more after letting other tasks run, rather than park
                // and have the next enqueue spawn a new writer.
                lingered = true;
                tokio::task::yield_now().await;
                continue;
            }
            conn.park_sink(sink);
            if conn.park_if_idle() {
                return Ok(());
            }
            // Something arrived between the look and the park: nobody else can have taken
            // the sink (a writer is spawned only once the outbox is parked).
            let Some(back) = conn.take_sink() else {
                return Ok(());
            };
            sink = back;
            continue;
        }
        lingered = false;
        let stats = encode_batch(relay, conn, &mut sink, &mut batch, &mut buf);
        let io = &mut sink.io;
        let write = async {
            io.write_all(&buf).await?;
            // TLS and WebSocket streams buffer inside; flush puts the bytes on the socket.
            io.flush().await
        };
        let result = tokio::select! {
            biased;
            _ = conn.cancel.cancelled() => return Ok(()),
            r = deadline(write_timeout, write) => r,
        };
        buf.clear();
        if let Err(e) = result {
            for kind in [PacketKind::Disco, PacketKind::Other] {
                let (packets, bytes) = stats.by_kind[kind as usize];
                if packets > 0 {
                    relay
                        .metrics
                        .drop_packets(DropReason::WriteError, kind, packets, bytes);
                }
            }
            if matches!(e, WriteError::Timeout(_)) {
                relay.metrics.write_timeouts.increment(1);
            }
            return Err(e);
        }
        let metrics = &relay.metrics;
        metrics.write_batch_frames.record(stats.frames as f64);
        if stats.packets > 0 {
            metrics.packets_sent.increment(stats.packets);
            metrics.bytes_sent.increment(stats.bytes);
        }
        if let Some(t) = stats.oldest {
            metrics.queue_delay.record(t.elapsed().as_secs_f64());
        }
        conn.writer_ready();
    }
}

async fn deadline(
    timeout: Option<Duration>,
    write: impl Future<Output = std::io::Result<()>>,
) -> Result<(), WriteError> {
    match timeout {
        Some(t) => match tokio::time::timeout(t, write).await {
            Ok(r) => r.map_err(WriteError::Io),
            Err(_) => Err(WriteError::Timeout(t)),
        },
        None => write.await.map_err(WriteError::Io),
    }
}

#[derive(Debug, Default)]
struct BatchStats {
    frames: usize,
    packets: u64,
    bytes: u64,
    /// Packets and bytes by [`PacketKind`], so a failed write counts its drops by kind.
    by_kind: [(u64, u64); 2],
    oldest: Option<Instant>,
}

/// Encodes `batch` into `buf` (emptying `batch`) and records PeerGone bookkeeping for senders
/// seen for the first time.
fn encode_batch(
    relay: &Inner,
    conn: &Conn,
    sink: &mut Sink,
    batch: &mut Vec<Outgoing>,
    buf: &mut BytesMut,
) -> BatchStats {
    let mut stats = BatchStats {
        frames: batch.len(),
        ..BatchStats::default()
    };
    for item in batch.drain(..) {
        match item {
            Outgoing::Control(c) => encode_control(c, &mut sink.seen_src, buf),
            Outgoing::Pong(d) => {
                ServerToClient::Pong(d).encode(buf);
                relay.metrics.sent_pong.increment(1);
            }
            Outgoing::Packet(p) => {
                if !sink.seen_src.contains(&p.src)
                    && relay.registry.add_peer_gone_watcher(&p.src, conn)
                {
                    sink.seen_src.insert(p.src);
                }
                encode_recv_packet_header(buf, &p.src, p.data.len());
                buf.put_slice(&p.data);
                let len = p.data.len() as u64;
                stats.packets += 1;
                stats.bytes += len;
                let k = &mut stats.by_kind[p.kind as usize];
                k.0 += 1;
                k.1 += len;
                stats.oldest = Some(stats.oldest.map_or(p.enqueued_at, |o| o.min(p.enqueued_at)));
            }
        }
    }
    stats
}

fn encode_control(
    c: Control,
    seen_src: &mut std::collections::HashSet<derp_proto::NodePublicKey>,
    buf: &mut BytesMut,
) {
    match c {
        Control::PeerGone(peer, reason) => {
            if reason == PeerGoneReason::DISCONNECTED {
                // The sender left: its next packet (after it reconnects) records again.
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
        Control::KeepAlive => ServerToClient::KeepAlive.encode(buf),
    }
}
