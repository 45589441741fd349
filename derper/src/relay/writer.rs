//! The on-demand writer: a task that exists only while a connection has something to write.
//!
//! It takes the parked [`Sink`](super::conn::Sink), drains the outbox in batches (control,
//! pong, a mesh watcher's presence, disco, data), encodes each batch into one buffer and writes it with one flush under
//! the write deadline. When the outbox is empty it parks the sink and ends, giving back its
//! buffer; the next queued frame spawns a new writer.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use derp_proto::frame::{PeerGoneReason, encode_recv_packet_header};
use derp_proto::{NodePublicKey, ServerToClient};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::Inner;
use super::conn::{Conn, Control, Outgoing, Sink};
use crate::metrics::{DropReason, PacketKind};

/// Most frames taken from the outbox under one lock.
pub(crate) const MAX_BATCH_FRAMES: usize = 64;

/// Most bytes the writer holds encoded while its socket is busy (one more batch of up to
/// 64 frames may be added once below it, so the bound is this plus 64 × 64 KiB).
const WRITE_BUFFER_CAP: usize = 256 * 1024;

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
///
/// Frames are encoded into a buffer and written with as few syscalls as the socket allows.
/// While a write is pending (the receiver is a few milliseconds late), a lane that fills wakes
/// the writer, which moves it into a second buffer (up to [`WRITE_BUFFER_CAP`]): the sender's
/// burst waits here, encoded, instead of overflowing the lane. Each write must make progress
/// within the write deadline; a receiver that stops reading is cut when it does not.
async fn run(relay: &Inner, conn: &Conn) -> Result<(), WriteError> {
    // The sink is parked before the connection is registered, so only a connection that is
    // already ending finds it gone.
    let Some(mut sink) = conn.take_sink() else {
        return Ok(());
    };
    let write_timeout = relay.write_timeout(conn.is_mesh);
    let metrics = &relay.metrics;
    let mut batch = Vec::new();
    // `out` is being written; `next` fills while a write is pending. Their stats say what
    // they hold that has not been written yet.
    let (mut out, mut next) = (BytesMut::new(), BytesMut::new());
    let (mut out_stats, mut next_stats) = (BatchStats::default(), BatchStats::default());
    let mut lingered = false;
    loop {
        if out.is_empty() {
            std::mem::swap(&mut out, &mut next);
            std::mem::swap(&mut out_stats, &mut next_stats);
        }
        // Newer frames go after everything already encoded: into `next` while it holds any.
        let (fill, fill_stats) = if next.is_empty() {
            (&mut out, &mut out_stats)
        } else {
            (&mut next, &mut next_stats)
        };
        while fill.len() < WRITE_BUFFER_CAP && conn.take_batch(&mut batch, MAX_BATCH_FRAMES) {
            fill_stats.add(encode_batch(relay, conn, &mut sink, &mut batch, fill));
        }
        if out.is_empty() {
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

        if conn.cancel.is_cancelled() {
            return Ok(());
        }
        let Sink { io, seen_src } = &mut sink;
        let written = {
            let write = deadline(write_timeout, io.write(&out));
            tokio::pin!(write);
            // A socket with room takes the write in its first poll. Only a write the socket
            // cannot take marks the writer as waiting (`Outbox::writer_keeping_up`): stamping
            // every write would let a thread the OS preempts between the stamp and the end of
            // a write that went through look like a stuck receiver, and cost bursts their slack.
            match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    conn.write_started(Instant::now());
                    let r = loop {
                        tokio::select! {
                            biased;
                            _ = conn.cancel.cancelled() => return Ok(()),
                            r = &mut write => break r,
                            _ = conn.lane_filling(), if next.len() < WRITE_BUFFER_CAP => {
                                while next.len() < WRITE_BUFFER_CAP
                                    && conn.take_batch(&mut batch, MAX_BATCH_FRAMES)
                                {
                                    next_stats.add(encode_frames(relay, conn, seen_src, &mut batch, &mut next));
                                }
                            }
                        }
                    };
                    conn.write_ended();
                    r
                }
            }
        };
        let result = match written {
            Ok(0) => Err(WriteError::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                out.advance(n);
                if out.is_empty() && next.is_empty() {
                    // TLS and WebSocket streams buffer inside; flush puts the bytes out.
                    tokio::select! {
                        biased;
                        _ = conn.cancel.cancelled() => return Ok(()),
                        r = deadline(write_timeout, io.flush()) => r,
                    }
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            out_stats.add(std::mem::take(&mut next_stats));
            for kind in [PacketKind::Disco, PacketKind::Other] {
                let (packets, bytes) = out_stats.by_kind[kind as usize];
                if packets > 0 {
                    metrics.drop_packets(DropReason::WriteError, kind, packets, bytes);
                }
            }
            if matches!(e, WriteError::Timeout(_)) {
                metrics.write_timeouts.increment(1);
            }
            return Err(e);
        }
        if out.is_empty() {
            metrics.write_batch_frames.record(out_stats.frames as f64);
            if out_stats.packets > 0 {
                metrics.packets_sent.increment(out_stats.packets);
                metrics.bytes_sent.increment(out_stats.bytes);
            }
            if let Some(t) = out_stats.oldest {
                metrics.queue_delay.record(t.elapsed().as_secs_f64());
            }
            out_stats = BatchStats::default();
            out.clear();
            conn.writer_ready();
        }
    }
}

/// Runs one write (or flush) under the write deadline, if there is one.
async fn deadline<T>(
    timeout: Option<Duration>,
    write: impl Future<Output = std::io::Result<T>>,
) -> Result<T, WriteError> {
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

impl BatchStats {
    fn add(&mut self, other: Self) {
        self.frames += other.frames;
        self.packets += other.packets;
        self.bytes += other.bytes;
        for (mine, theirs) in self.by_kind.iter_mut().zip(other.by_kind) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
        self.oldest = match (self.oldest, other.oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
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
    encode_frames(relay, conn, &mut sink.seen_src, batch, buf)
}

/// [`encode_batch`] with the sink's PeerGone bookkeeping passed alone, for use while the
/// sink's stream is borrowed by a pending write.
fn encode_frames(
    relay: &Inner,
    conn: &Conn,
    seen_src: &mut HashSet<NodePublicKey>,
    batch: &mut Vec<Outgoing>,
    buf: &mut BytesMut,
) -> BatchStats {
    let mut stats = BatchStats {
        frames: batch.len(),
        ..BatchStats::default()
    };
    for item in batch.drain(..) {
        match item {
            Outgoing::Control(Control::Health) => {
                // Read now, so the client gets the current text however many changes queued.
                let text = relay.health_text(conn);
                ServerToClient::Health(bytes::Bytes::from(text)).encode(buf);
            }
            Outgoing::Control(c) => encode_control(c, seen_src, buf),
            // Read now, not when the change was queued: the watcher gets the latest state.
            Outgoing::Presence(key) => encode_control(relay.registry.presence(&key), seen_src, buf),
            Outgoing::Pong(d) => {
                ServerToClient::Pong(d).encode(buf);
                relay.metrics.sent_pong.increment(1);
            }
            Outgoing::Packet(p) => {
                if !seen_src.contains(&p.src) && relay.registry.add_peer_gone_watcher(&p.src, conn)
                {
                    seen_src.insert(p.src);
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

fn encode_control(c: Control, seen_src: &mut HashSet<NodePublicKey>, buf: &mut BytesMut) {
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
        // Encoded by `encode_frames`, which has the relay to read the text from.
        Control::Health => {}
    }
}
