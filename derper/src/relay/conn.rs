//! One connection as the rest of the relay sees it: identity, the outbox other connections
//! queue into, and the on-demand writer's parked state.
//!
//! An idle connection holds no buffers and no writer task: the outbox's queues are empty
//! `VecDeque`s (no heap), and the socket's write half sits parked in [`Conn::sink`]. The first
//! frame queued for the connection spawns a writer task that takes the sink, drains the
//! outbox in batches, and parks the sink again when the outbox is empty (Tailscale derper
//! v1.104 starts its writer goroutine the same way).
//!
//! A mesh watcher (a mesh peer that sent WatchConns) also has a pending presence set: the
//! keys whose local presence changed since its writer last looked, each held once however
//! often it changed. The writer turns each into one PeerPresent or PeerGone carrying the key's
//! state at that moment (Go derper's `peerStateChange` list, coalesced).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::Bytes;
use derp_proto::NodePublicKey;
use derp_proto::frame::{PeerGoneReason, PeerPresentFlags};
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::metrics::{DropReason, Metrics, PacketKind};

/// A process-unique id for one connection, so a key's several connections can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A packet waiting in a destination's queue.
#[derive(Debug)]
pub(crate) struct Packet {
    /// The sender's key, written into RecvPacket.
    pub(crate) src: NodePublicKey,
    /// The packet bytes, shared with the reader's buffer (no copy on the way through).
    pub(crate) data: Bytes,
    /// Disco or not, classified once by the reader that received it.
    pub(crate) kind: PacketKind,
    /// When it was queued, for the queue-delay histogram.
    pub(crate) enqueued_at: Instant,
}

/// Frames other than packets that the writer sends.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// Tell the client a peer left or is unknown.
    PeerGone(NodePublicKey, PeerGoneReason),
    /// Tell a watcher a peer connected.
    PeerPresent {
        key: NodePublicKey,
        addr: SocketAddr,
        flags: PeerPresentFlags,
    },
    /// Tell the client the server is restarting.
    Restarting {
        reconnect_in_ms: u32,
        try_for_ms: u32,
    },
    /// Keep an idle connection alive.
    KeepAlive,
    /// The relay's health changed: the writer sends the current text (region-wide problems
    /// plus this connection's own), empty when all is well.
    Health,
}

/// One frame taken from the outbox by the writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Control(Control),
    Pong([u8; 8]),
    /// A key whose presence a mesh watcher must hear; the writer reads its state from the
    /// registry as it encodes the frame, so the watcher always ends with the latest state.
    Presence(NodePublicKey),
    Packet(Packet),
}

/// What [`Conn::enqueue_packet`] did, so the sender's reader can be fair to the writer it woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued; nothing else to do.
    Queued,
    /// Queued, and the lane is filling while its writer has been scheduled but has not run
    /// yet: the sender's reader should yield so the writer gets a worker before the lane
    /// overflows (a burst read in one syscall would otherwise be head-dropped).
    Backlogged,
    /// Not queued: the connection is closing. Counted as `gone_disconnected`.
    Closed,
}

/// Queue depths for one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueDepths {
    pub(crate) packets: usize,
    pub(crate) control: usize,
}

/// Where the writer is, as far as enqueuers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    /// The connection's accept still holds the write half (handshake, ServerInfo): frames
    /// wait in the outbox until it hands the sink over.
    Held,
    /// No writer task; the sink is parked.
    Parked,
    /// A writer task was spawned (or told to go on) and has not taken a batch since.
    Scheduled,
    /// The writer took a batch and is encoding or writing it.
    Draining,
}

/// One packet lane: the packets and the bytes they hold.
#[derive(Debug, Default)]
struct Lane {
    packets: VecDeque<Packet>,
    bytes: usize,
}

impl Lane {
    fn len(&self) -> usize {
        self.packets.len()
    }

    fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    fn push_back(&mut self, p: Packet) {
        self.bytes += p.data.len();
        self.packets.push_back(p);
    }

    fn pop_front(&mut self) -> Option<Packet> {
        let p = self.packets.pop_front()?;
        self.bytes -= p.data.len();
        Some(p)
    }

    /// Empties the lane and gives its memory back.
    fn take(&mut self) -> VecDeque<Packet> {
        self.bytes = 0;
        std::mem::take(&mut self.packets)
    }
}

/// Keys whose presence a mesh watcher has not heard yet, each once, in the order they first
/// changed.
///
/// Only the key is kept, not what happened to it: the writer reads the key's state from the
/// registry when it encodes the frame. So however often a key comes and goes before the
/// writer runs, the watcher gets one frame, and it is never stale: a change after the writer
/// took the key queues it again. (Keeping the state instead would race with the registry's
/// unlocked broadcasts: a WatchConns flood could re-queue a snapshot older than a PeerGone
/// already sent.)
#[derive(Debug, Default)]
struct PendingPresence {
    /// Membership, so a key that is already waiting is not queued twice.
    keys: HashSet<NodePublicKey>,
    /// The same keys, oldest first.
    order: VecDeque<NodePublicKey>,
    /// The set outgrew its cap: the connection is being closed and takes nothing more.
    overflowed: bool,
}

impl PendingPresence {
    fn len(&self) -> usize {
        self.order.len()
    }

    /// Moves the oldest keys into `batch` until it holds `until` frames.
    fn take_into(&mut self, batch: &mut Vec<Outgoing>, until: usize) {
        while batch.len() < until {
            let Some(k) = self.order.pop_front() else {
                return;
            };
            self.keys.remove(&k);
            batch.push(Outgoing::Presence(k));
        }
    }
}

/// The queues other tasks push into; popped only by this connection's writer.
#[derive(Debug)]
struct Outbox {
    data: Lane,
    disco: Lane,
    control: VecDeque<Control>,
    /// At most one pending Pong: a Ping that arrives while one is pending is ignored (Go).
    pong: Option<[u8; 8]>,
    /// Mesh watchers only, created by the first presence change queued: other connections
    /// pay one pointer for it.
    presence: Option<Box<PendingPresence>>,
    writer: WriterState,
    /// Since when the writer has waited on a socket that could not take its write (a write
    /// the socket takes at once is never stamped).
    writing_since: Option<Instant>,
    /// Set once the connection ends; nothing is queued after that.
    closed: bool,
}

impl Outbox {
    fn presence_len(&self) -> usize {
        self.presence.as_ref().map_or(0, |p| p.len())
    }

    /// Whether nothing waits for the writer.
    fn is_empty(&self) -> bool {
        self.control.is_empty()
            && self.pong.is_none()
            && self.presence_len() == 0
            && self.disco.is_empty()
            && self.data.is_empty()
    }

    /// Whether the writer is moving data right now: spawned or woken and about to run, busy
    /// encoding, or waiting moments on a full socket. Not when parked, held by
    /// the handshake, or waiting on a socket that has not taken bytes for [`STUCK_AFTER`].
    fn writer_keeping_up(&self) -> bool {
        match self.writer {
            WriterState::Held | WriterState::Parked => false,
            WriterState::Scheduled | WriterState::Draining => match self.writing_since {
                None => true,
                Some(t) => t.elapsed() < STUCK_AFTER,
            },
        }
    }
}

/// How far a full lane may stretch, in queue depths, while its writer keeps up.
const BURST_FACTOR: usize = 8;

/// Bytes beyond which a lane no longer stretches: 8 × 32 packets of 1 280 B fit, while 64 KiB
/// packets stretch a lane by at most 16 (so a lane holds at most this plus depth × 64 KiB).
const BURST_BYTES: usize = 1 << 20;

/// A write the socket has not taken for this long means the receiver is not keeping up (a
/// socket with room takes a write at once, and that is never stamped).
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// The socket's write half and the writer's memory that outlives one writer task.
pub(crate) struct Sink {
    pub(crate) io: Pin<Box<dyn AsyncWrite + Send>>,
    /// Senders whose PeerGone bookkeeping is already recorded for this receiver, so the
    /// writer touches the registry only on a sender's first packet.
    pub(crate) seen_src: HashSet<NodePublicKey>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("seen_src", &self.seen_src.len())
            .finish_non_exhaustive()
    }
}

/// Everything about one connection that other tasks may touch. Shared as [`ConnHandle`].
#[derive(Debug)]
pub(crate) struct Conn {
    // Static after construction.
    pub(crate) conn_id: ConnectionId,
    pub(crate) key: NodePublicKey,
    pub(crate) remote: SocketAddr,
    pub(crate) flags: PeerPresentFlags,
    pub(crate) is_mesh: bool,
    pub(crate) cancel: CancellationToken,
    depths: QueueDepths,
    /// The relay, for spawning the writer; weak so the registry's handles form no cycle.
    relay: Weak<Inner>,

    // Guarded by its mutex: pushed by any task, popped by this connection's writer.
    outbox: Mutex<Outbox>,
    /// Parked while no writer runs; taken by the writer it spawns. Only the task that moved
    /// the outbox from `Parked` to `Scheduled` takes it, so the lock is never contended.
    sink: Mutex<Option<Sink>>,
    /// Wakes a writer whose socket write is pending when a lane fills, so it moves the lane
    /// into its buffer rather than let the lane head-drop.
    filling: tokio::sync::Notify,

    // Guarded by the registry: set while the key has other connections too.
    pub(crate) is_dup: AtomicBool,
    /// Set by the reader while the client is held back by its rate limit; the writer adds a
    /// line about it to the Health text.
    pub(crate) rate_limited: AtomicBool,
}

/// A shared reference to a connection.
pub(crate) type ConnHandle = Arc<Conn>;

impl Conn {
    #[allow(clippy::too_many_arguments)] // one constructor, called from accept and tests
    pub(crate) fn new(
        conn_id: ConnectionId,
        key: NodePublicKey,
        remote: SocketAddr,
        flags: PeerPresentFlags,
        is_mesh: bool,
        depths: QueueDepths,
        cancel: CancellationToken,
        relay: Weak<Inner>,
    ) -> Self {
        Self {
            conn_id,
            key,
            remote,
            flags,
            is_mesh,
            cancel,
            depths: QueueDepths {
                packets: depths.packets.max(1),
                control: depths.control.max(1),
            },
            relay,
            outbox: Mutex::new(Outbox {
                data: Lane::default(),
                disco: Lane::default(),
                control: VecDeque::new(),
                pong: None,
                presence: None,
                writer: WriterState::Held,
                writing_since: None,
                closed: false,
            }),
            sink: Mutex::new(None),
            filling: tokio::sync::Notify::new(),
            is_dup: AtomicBool::new(false),
            rate_limited: AtomicBool::new(false),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding the lock cannot leave the queues inconsistent (every update
        // is a single push or pop), so a poisoned lock is still usable.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the write half over after the handshake: from now on queued frames start a
    /// writer, and anything queued while accept held it goes out now.
    pub(crate) fn release_sink(self: &Arc<Self>, sink: Sink) {
        self.park_sink(sink);
        let mut ob = self.outbox();
        if ob.writer != WriterState::Held {
            return;
        }
        ob.writer = WriterState::Parked;
        if !ob.is_empty() {
            self.schedule(ob);
        }
    }

    /// Parks the write half (accept's hand-over, or a writer that found the outbox empty).
    pub(crate) fn park_sink(&self, sink: Sink) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Takes the parked write half (the writer, or the connection's end).
    pub(crate) fn take_sink(&self) -> Option<Sink> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Queues a packet without waiting. When the lane is full the oldest packet is dropped
    /// (fresh packets matter more, as in Go derper) and counted as `queue_head`.
    pub(crate) fn enqueue_packet(self: &Arc<Self>, packet: Packet, metrics: &Metrics) -> Enqueued {
        let mut ob = self.outbox();
        if ob.closed {
            drop(ob);
            metrics.drop_packet(DropReason::GoneDisconnected, packet.kind, packet.data.len());
            return Enqueued::Closed;
        }
        let depth = self.depths.packets;
        let full = match packet.kind {
            PacketKind::Disco => ob.disco.len() >= depth,
            PacketKind::Other => ob.data.len() >= depth,
        };
        // A full lane head-drops, unless its writer is keeping up: then a burst may stretch it
        // to BURST_FACTOR × depth, since the writer will have it out in moments (a receiver
        // that keeps up loses nothing to a burst). A writer stuck on its socket (a receiver
        // that stopped reading) gets no slack: its lane drops at `depth`, as Go's does. Only
        // a full lane asks (it may read the clock).
        let stretch = full && ob.writer_keeping_up();
        let lane = match packet.kind {
            PacketKind::Disco => &mut ob.disco,
            PacketKind::Other => &mut ob.data,
        };
        let limit = if stretch && lane.bytes < BURST_BYTES {
            depth * BURST_FACTOR
        } else {
            depth
        };
        let dropped = if lane.len() >= limit {
            lane.pop_front()
        } else {
            None
        };
        lane.push_back(packet);
        let filling = lane.len() * 2 >= depth;
        let spawn = ob.writer == WriterState::Parked;
        let backlogged = filling && ob.writer == WriterState::Scheduled;
        let wake_writer = filling && ob.writer == WriterState::Draining;
        if spawn {
            ob.writer = WriterState::Scheduled;
        }
        drop(ob);
        if wake_writer {
            self.filling.notify_one();
        }
        if let Some(old) = dropped {
            metrics.drop_packet(DropReason::QueueHead, old.kind, old.data.len());
        }
        if spawn {
            self.spawn_writer();
        }
        if backlogged {
            Enqueued::Backlogged
        } else {
            Enqueued::Queued
        }
    }

    /// Queues a control frame; returns false (and counts it) if the control queue is full or
    /// the connection is closing.
    pub(crate) fn enqueue_control(self: &Arc<Self>, control: Control, metrics: &Metrics) -> bool {
        let mut ob = self.outbox();
        if ob.closed {
            return false;
        }
        if ob.control.len() >= self.depths.control {
            drop(ob);
            metrics.control_dropped.increment(1);
            return false;
        }
        ob.control.push_back(control);
        self.schedule(ob);
        true
    }

    /// Queues presence updates for a mesh watcher: the writer will send each key's state as it
    /// is when the frame is encoded. A key already pending is not queued again (counted as
    /// coalesced). If a new key would make more than `max` pending, the watcher is hopelessly
    /// behind: it is cancelled (counted and logged) rather than left with a wrong view of the
    /// region; it reconnects and gets a fresh, complete flood. Keys of a closing connection
    /// are ignored.
    pub(crate) fn enqueue_presence(
        self: &Arc<Self>,
        keys: &[NodePublicKey],
        max: usize,
        metrics: &Metrics,
    ) {
        let mut ob = self.outbox();
        if ob.closed {
            return;
        }
        let pending = ob.presence.get_or_insert_with(Box::default);
        if pending.overflowed {
            return;
        }
        let (mut queued, mut coalesced) = (0, 0);
        let mut overflow = None;
        for k in keys {
            if pending.keys.contains(k) {
                coalesced += 1;
            } else if pending.len() >= max {
                overflow = Some(pending.len());
                // Give the memory back now; nothing more is sent to this watcher.
                **pending = PendingPresence {
                    overflowed: true,
                    ..PendingPresence::default()
                };
                break;
            } else {
                pending.keys.insert(*k);
                pending.order.push_back(*k);
                queued += 1;
            }
        }
        if overflow.is_none() && queued > 0 {
            self.schedule(ob);
        } else {
            drop(ob);
        }
        metrics.mesh_presence_queued.increment(queued);
        metrics.mesh_presence_coalesced.increment(coalesced);
        if let Some(pending) = overflow {
            metrics.mesh_watchers_closed_backlog.increment(1);
            if let Some(suppressed) = crate::log_limit::SLOW_WATCHERS.allow() {
                tracing::warn!(
                    id = %self.conn_id,
                    remote = %self.remote,
                    key = %self.key.short(),
                    pending,
                    suppressed,
                    "closing mesh watcher: too many presence updates pending \
                     (relay.mesh_presence_pending_max); it will reconnect and get a fresh flood"
                );
            }
            self.cancel.cancel();
        }
    }

    /// Queues a Pong unless one is already pending.
    pub(crate) fn enqueue_pong(self: &Arc<Self>, data: [u8; 8]) {
        let mut ob = self.outbox();
        if ob.closed || ob.pong.is_some() {
            return;
        }
        ob.pong = Some(data);
        self.schedule(ob);
    }

    /// Spawns the writer if none is running; consumes the outbox guard.
    fn schedule(self: &Arc<Self>, mut ob: MutexGuard<'_, Outbox>) {
        let spawn = ob.writer == WriterState::Parked;
        if spawn {
            ob.writer = WriterState::Scheduled;
        }
        drop(ob);
        if spawn {
            self.spawn_writer();
        }
    }

    fn spawn_writer(self: &Arc<Self>) {
        // Without a relay (unit tests, or the relay is gone) nothing could write anyway.
        if let Some(relay) = self.relay.upgrade() {
            super::writer::spawn(relay, self.clone());
        }
    }

    /// Moves up to `max` frames into `batch` in priority order (control, pong, disco, data),
    /// with a mesh watcher's pending presence taking up to half the batch before the packets
    /// and any room left after them, so a flood of presence and a stream of packets cannot
    /// starve each other. Returns false if the outbox is empty; the writer stays scheduled
    /// either way, so nobody spawns a second one (see [`park_if_idle`](Self::park_if_idle)).
    pub(crate) fn take_batch(&self, batch: &mut Vec<Outgoing>, max: usize) -> bool {
        let mut guard = self.outbox();
        let ob = &mut *guard;
        let queued = ob.control.len()
            + usize::from(ob.pong.is_some())
            + ob.presence_len()
            + ob.disco.len()
            + ob.data.len();
        if queued == 0 {
            ob.writer = WriterState::Scheduled;
            return false;
        }
        batch.reserve(queued.min(max));
        while batch.len() < max {
            if let Some(c) = ob.control.pop_front() {
                batch.push(Outgoing::Control(c));
            } else if let Some(p) = ob.pong.take() {
                batch.push(Outgoing::Pong(p));
            } else {
                break;
            }
        }
        if let Some(p) = ob.presence.as_deref_mut() {
            p.take_into(batch, (batch.len() + max.div_ceil(2)).min(max));
        }
        while batch.len() < max {
            if let Some(p) = ob.disco.pop_front() {
                batch.push(Outgoing::Packet(p));
            } else if let Some(p) = ob.data.pop_front() {
                batch.push(Outgoing::Packet(p));
            } else {
                break;
            }
        }
        if let Some(p) = ob.presence.as_deref_mut() {
            p.take_into(batch, max);
        }
        ob.writer = WriterState::Draining;
        true
    }

    /// Ends the writer if the outbox is still empty: marks it parked and gives back the lanes'
    /// memory. The writer must have parked its sink first, so that an enqueue that sees
    /// `Parked` and spawns a new writer finds the sink. Returns false (the writer goes on and
    /// takes its sink back) if something was queued meanwhile.
    pub(crate) fn park_if_idle(&self) -> bool {
        let mut ob = self.outbox();
        if !ob.is_empty() || ob.closed {
            return ob.closed;
        }
        ob.writer = WriterState::Parked;
        // Give back what a burst grew; an idle connection holds no queue memory.
        ob.data.take();
        ob.disco.take();
        ob.control = VecDeque::new();
        if let Some(p) = ob.presence.as_deref_mut() {
            // A flood grows these to the region's size; keep only the (small) box.
            p.keys = HashSet::new();
            p.order = VecDeque::new();
        }
        true
    }

    /// Records that the socket could not take a write at `now`, so the writer waits on it (see
    /// [`Outbox::writer_keeping_up`]).
    pub(crate) fn write_started(&self, now: Instant) {
        self.outbox().writing_since = Some(now);
    }

    /// Records that the write the writer waited on finished.
    pub(crate) fn write_ended(&self) {
        self.outbox().writing_since = None;
    }

    /// Resolves when a lane filled while the writer was draining (see [`Conn::filling`]).
    pub(crate) async fn lane_filling(&self) {
        self.filling.notified().await;
    }

    /// Marks the writer as about to take its next batch: enqueuers that fill a lane from now
    /// on ask their reader to yield to it.
    pub(crate) fn writer_ready(&self) {
        let mut ob = self.outbox();
        if ob.writer == WriterState::Draining {
            ob.writer = WriterState::Scheduled;
        }
    }

    /// Closes the outbox: nothing is queued from now on, and whatever is queued is counted as
    /// `gone_disconnected`. Called once the connection's reader and writer stopped.
    pub(crate) fn close(&self, metrics: &Metrics) {
        let (data, disco) = {
            let mut ob = self.outbox();
            ob.closed = true;
            ob.control = VecDeque::new();
            ob.pong = None;
            ob.presence = None;
            (ob.data.take(), ob.disco.take())
        };
        for p in data.into_iter().chain(disco) {
            metrics.drop_packet(DropReason::GoneDisconnected, p.kind, p.data.len());
        }
    }

    /// Queued frames, for tests.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<Outgoing> {
        let mut ob = self.outbox();
        let mut out = Vec::new();
        out.extend(ob.control.drain(..).map(Outgoing::Control));
        out.extend(ob.pong.take().map(Outgoing::Pong));
        if let Some(p) = ob.presence.as_deref_mut() {
            p.keys.clear();
            out.extend(p.order.drain(..).map(Outgoing::Presence));
        }
        out.extend(ob.disco.take().into_iter().map(Outgoing::Packet));
        out.extend(ob.data.take().into_iter().map(Outgoing::Packet));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection past its handshake (writer parked), with no relay to spawn writers on.
    fn conn(depth: usize) -> Arc<Conn> {
        let c = Arc::new(Conn::new(
            ConnectionId(1),
            NodePublicKey::from_bytes([1; 32]),
            "127.0.0.1:1".parse().unwrap(),
            PeerPresentFlags::IS_REGULAR,
            false,
            QueueDepths {
                packets: depth,
                control: 2,
            },
            CancellationToken::new(),
            Weak::new(),
        ));
        c.outbox().writer = WriterState::Parked;
        c
    }

    fn packet(n: u8) -> Packet {
        let data = Bytes::from(vec![n; 10]);
        Packet {
            src: NodePublicKey::from_bytes([2; 32]),
            kind: PacketKind::of(&data),
            data,
            enqueued_at: Instant::now(),
        }
    }

    fn data_bytes(out: &[Outgoing]) -> Vec<u8> {
        out.iter()
            .filter_map(|o| match o {
                Outgoing::Packet(p) => Some(p.data[0]),
                _ => None,
            })
            .collect()
    }

    /// A connection whose writer has been stuck in a socket write (its receiver stopped
    /// reading).
    fn stuck(depth: usize) -> Arc<Conn> {
        let c = conn(depth);
        let mut ob = c.outbox();
        ob.writer = WriterState::Draining;
        ob.writing_since = Some(Instant::now() - STUCK_AFTER * 2);
        drop(ob);
        c
    }

    #[test]
    fn full_queue_of_a_stuck_writer_drops_oldest() {
        let m = Metrics::new();
        let c = stuck(2);
        for n in 0..4 {
            c.enqueue_packet(packet(n), &m);
        }
        assert_eq!(data_bytes(&c.queued()), [2, 3]);
    }

    #[test]
    fn a_writer_that_keeps_up_lets_a_burst_stretch_its_lane_within_a_bound() {
        let m = Metrics::new();
        let c = conn(2);
        // The first packet schedules the writer; it is keeping up from then on.
        for n in 0..(2 * BURST_FACTOR as u8 + 3) {
            c.enqueue_packet(packet(n), &m);
        }
        let got = data_bytes(&c.queued());
        assert_eq!(
            got.len(),
            2 * BURST_FACTOR,
            "stretched to the bound, no further"
        );
        assert_eq!(got[0], 3, "beyond the bound the oldest still go");
        // A write the socket refused just now still counts as keeping up; one stuck for longer
        // does not.
        c.write_started(Instant::now());
        assert!(c.outbox().writer_keeping_up());
        c.outbox().writing_since = Some(Instant::now() - STUCK_AFTER * 2);
        assert!(!c.outbox().writer_keeping_up());
        c.write_ended();
        assert!(c.outbox().writer_keeping_up());
    }

    #[test]
    fn disco_has_its_own_lane_and_goes_first() {
        let m = Metrics::new();
        let c = stuck(1);
        let mut disco = vec![0u8; 70];
        disco[..6].copy_from_slice(&derp_proto::disco::MAGIC);
        c.enqueue_packet(packet(1), &m);
        c.enqueue_packet(
            Packet {
                kind: PacketKind::Disco,
                data: Bytes::from(disco),
                ..packet(0)
            },
            &m,
        );
        c.enqueue_packet(packet(2), &m);
        let out = c.queued();
        assert!(matches!(&out[0], Outgoing::Packet(p) if p.kind == PacketKind::Disco));
        assert_eq!(data_bytes(&out[1..]), [2]);
    }

    #[test]
    fn closed_conn_takes_nothing() {
        let m = Metrics::new();
        let c = conn(4);
        c.close(&m);
        assert_eq!(c.enqueue_packet(packet(1), &m), Enqueued::Closed);
        assert!(!c.enqueue_control(Control::PeerGone(c.key, PeerGoneReason::DISCONNECTED), &m));
        c.enqueue_presence(&[c.key], 8, &m);
        assert!(c.queued().is_empty());
        assert!(c.outbox().presence.is_none());
    }

    #[test]
    fn one_pending_pong() {
        let c = conn(1);
        c.enqueue_pong([1; 8]);
        c.enqueue_pong([2; 8]);
        let out = c.queued();
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], Outgoing::Pong([1, ..])));
    }

    #[test]
    fn control_queue_is_bounded() {
        let m = Metrics::new();
        let c = conn(1);
        let gone = Control::PeerGone(c.key, PeerGoneReason::DISCONNECTED);
        assert!(c.enqueue_control(gone.clone(), &m));
        assert!(c.enqueue_control(gone.clone(), &m));
        assert!(!c.enqueue_control(gone, &m));
    }

    fn keys(range: std::ops::Range<u8>) -> Vec<NodePublicKey> {
        range.map(|k| NodePublicKey::from_bytes([k; 32])).collect()
    }

    #[test]
    fn an_ordinary_connection_holds_no_presence_set() {
        let c = conn(4);
        assert!(c.outbox().presence.is_none());
        // The set is one pointer in the outbox, not a struct inline.
        assert_eq!(
            size_of::<Option<Box<PendingPresence>>>(),
            size_of::<usize>()
        );
    }

    #[test]
    fn presence_is_held_once_per_key_in_order() {
        let (m, h) = crate::metrics::recorded();
        let c = conn(4);
        let all = keys(0..100);
        c.enqueue_presence(&all, 1000, &m);
        c.enqueue_presence(&all[..10], 1000, &m);
        c.enqueue_presence(&all[50..51], 1000, &m);
        let got: Vec<NodePublicKey> = c
            .queued()
            .into_iter()
            .map(|o| match o {
                Outgoing::Presence(k) => k,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, all);
        let updates = |result: &str| {
            crate::metrics::sample(
                &h,
                &format!("derp_mesh_presence_updates_total{{result=\"{result}\"}}"),
            )
        };
        assert_eq!(updates("queued"), 100.0);
        assert_eq!(updates("coalesced"), 11.0);
        // Taken keys are queued afresh.
        c.enqueue_presence(&all[..1], 1000, &m);
        assert_eq!(c.queued().len(), 1);
    }

    #[test]
    fn presence_and_packets_share_each_batch() {
        let m = Metrics::new();
        let c = conn(4);
        c.enqueue_presence(&keys(0..20), 1000, &m);
        for n in 0..3 {
            c.enqueue_packet(packet(n), &m);
        }
        c.enqueue_control(Control::KeepAlive, &m);
        let mut batch = Vec::new();
        assert!(c.take_batch(&mut batch, 8));
        let shape: String = batch
            .iter()
            .map(|o| match o {
                Outgoing::Control(_) => 'c',
                Outgoing::Pong(_) => 'p',
                Outgoing::Presence(_) => 'k',
                Outgoing::Packet(_) => 'd',
            })
            .collect();
        // Control first, presence up to half the batch, the packets, presence in the rest.
        assert_eq!(shape, "ckkkkddd");
        batch.clear();
        let mut presence = 4;
        while c.take_batch(&mut batch, 8) {
            presence += batch.len();
            batch.clear();
        }
        assert_eq!(presence, 20);
    }

    #[test]
    fn a_parked_watcher_gives_its_presence_memory_back() {
        let m = Metrics::new();
        let c = conn(4);
        c.enqueue_presence(&keys(0..200), 1000, &m);
        let mut batch = Vec::new();
        while c.take_batch(&mut batch, 64) {
            batch.clear();
        }
        assert!(c.park_if_idle());
        let ob = c.outbox();
        let p = ob.presence.as_deref().expect("still a watcher");
        assert_eq!((p.keys.capacity(), p.order.capacity()), (0, 0));
    }

    #[test]
    fn a_watcher_past_its_presence_cap_is_cancelled_and_takes_no_more() {
        let (m, h) = crate::metrics::recorded();
        let c = conn(4);
        c.enqueue_presence(&keys(0..4), 4, &m);
        c.enqueue_presence(&keys(0..4), 4, &m);
        assert!(!c.cancel.is_cancelled(), "pending keys do not count twice");
        c.enqueue_presence(&keys(4..6), 4, &m);
        assert!(c.cancel.is_cancelled());
        c.enqueue_presence(&keys(10..20), 4, &m);
        assert!(c.queued().is_empty());
        assert_eq!(
            crate::metrics::sample(
                &h,
                r#"derp_mesh_watchers_closed_total{reason="presence_backlog"}"#
            ),
            1.0
        );
    }

    #[test]
    fn filling_lane_with_a_scheduled_writer_asks_the_reader_to_yield() {
        let m = Metrics::new();
        let c = conn(4);
        // The first packet schedules the writer (no relay here, so nothing is spawned).
        assert_eq!(c.enqueue_packet(packet(0), &m), Enqueued::Queued);
        assert_eq!(c.enqueue_packet(packet(1), &m), Enqueued::Backlogged);
        // Once the writer has taken a batch it is draining: no more yields are asked for,
        // since a writer blocked on a slow socket is not helped by the sender yielding.
        let mut batch = Vec::new();
        assert!(c.take_batch(&mut batch, 64));
        assert_eq!(batch.len(), 2);
        for n in 2..5 {
            assert_eq!(c.enqueue_packet(packet(n), &m), Enqueued::Queued);
        }
        c.writer_ready();
        assert_eq!(c.enqueue_packet(packet(5), &m), Enqueued::Backlogged);
    }

    #[test]
    fn empty_outbox_parks_the_writer_and_frees_queues() {
        let m = Metrics::new();
        let c = conn(64);
        for n in 0..40 {
            c.enqueue_packet(packet(n), &m);
        }
        let mut batch = Vec::new();
        assert!(c.take_batch(&mut batch, 64));
        batch.clear();
        assert!(!c.take_batch(&mut batch, 64));
        assert_eq!(
            c.outbox().writer,
            WriterState::Scheduled,
            "still the writer's"
        );
        assert!(c.park_if_idle());
        let ob = c.outbox();
        assert_eq!(ob.writer, WriterState::Parked);
        assert_eq!(ob.data.packets.capacity(), 0);
        assert_eq!(ob.data.bytes, 0);
    }

    #[test]
    fn a_frame_queued_while_the_writer_looks_again_keeps_that_writer() {
        let m = Metrics::new();
        let c = conn(4);
        c.park_sink(Sink {
            io: Box::pin(tokio::io::sink()),
            seen_src: Default::default(),
        });
        c.enqueue_packet(packet(0), &m);
        // The writer runs: takes the sink and the packet, then finds the outbox empty.
        let sink = c.take_sink().expect("parked sink");
        let mut batch = Vec::new();
        assert!(c.take_batch(&mut batch, 64));
        batch.clear();
        assert!(!c.take_batch(&mut batch, 64));
        // A packet arrives before the writer parks: the outbox is still the writer's, so
        // nobody spawns another one.
        c.enqueue_packet(packet(1), &m);
        assert_eq!(c.outbox().writer, WriterState::Scheduled);
        c.park_sink(sink);
        assert!(!c.park_if_idle(), "the writer must go on");
        assert!(c.take_sink().is_some(), "and takes its sink back");
        assert!(c.take_batch(&mut batch, 64));
        assert_eq!(data_bytes(&batch), [1]);
    }

    #[test]
    fn a_lane_stretches_only_within_its_byte_budget() {
        let m = Metrics::new();
        let c = conn(2);
        let big = |n: u8| {
            let data = Bytes::from(vec![n; 64 * 1024]);
            Packet {
                src: NodePublicKey::from_bytes([2; 32]),
                kind: PacketKind::Other,
                data,
                enqueued_at: Instant::now(),
            }
        };
        for n in 0..20 {
            c.enqueue_packet(big(n), &m);
        }
        let ob = c.outbox();
        // Sixteen 64 KiB packets reach the 1 MiB budget; every packet after that pushes the
        // oldest out, so the lane stays at the budget.
        assert_eq!(ob.data.len(), 16);
        assert_eq!(ob.data.bytes, BURST_BYTES);
        assert_eq!(ob.data.packets.front().map(|p| p.data[0]), Some(4));
    }
}
