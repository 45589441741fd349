//! Per-connection state shared between the connection's tasks and other connections' readers:
//! bounded queues with Go derper's drop policy, and the writer's wake-up signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use derp_proto::NodePublicKey;
use derp_proto::frame::{PeerGoneReason, PeerPresentFlags};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
}

/// Everything about one connection that other tasks may touch. Cheap to share as
/// [`ClientHandle`].
#[derive(Debug)]
pub(crate) struct ClientShared {
    // Static after construction.
    pub(crate) conn_id: ConnectionId,
    pub(crate) key: NodePublicKey,
    pub(crate) remote: SocketAddr,
    pub(crate) flags: PeerPresentFlags,
    pub(crate) is_mesh: bool,
    pub(crate) cancel: CancellationToken,

    // Pushed by any task, popped only by this connection's writer.
    data: ArrayQueue<Packet>,
    disco: ArrayQueue<Packet>,
    /// Control frames. A tokio channel because it allocates in small blocks as it fills, so a
    /// generous bound (needed by mesh watchers) costs an idle connection nothing.
    control_tx: tokio::sync::mpsc::Sender<Control>,
    /// Only the writer receives; the mutex is uncontended and never held across an await.
    control_rx: std::sync::Mutex<tokio::sync::mpsc::Receiver<Control>>,
    /// Holds at most one pending Pong: a Ping that arrives while one is pending is ignored, as
    /// in Go derper.
    pong: ArrayQueue<[u8; 8]>,
    wake: Notify,

    // Guarded by the registry: set while the key has other connections too.
    pub(crate) is_dup: AtomicBool,
}

/// A shared reference to a connection.
pub(crate) type ClientHandle = Arc<ClientShared>;

/// Queue depths for one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueDepths {
    pub(crate) packets: usize,
    pub(crate) control: usize,
}

impl ClientShared {
    pub(crate) fn new(
        conn_id: ConnectionId,
        key: NodePublicKey,
        remote: SocketAddr,
        flags: PeerPresentFlags,
        is_mesh: bool,
        depths: QueueDepths,
        cancel: CancellationToken,
    ) -> Self {
        let (control_tx, control_rx) = tokio::sync::mpsc::channel(depths.control.max(1));
        Self {
            conn_id,
            key,
            remote,
            flags,
            is_mesh,
            cancel,
            data: ArrayQueue::new(depths.packets.max(1)),
            disco: ArrayQueue::new(depths.packets.max(1)),
            control_tx,
            control_rx: std::sync::Mutex::new(control_rx),
            pong: ArrayQueue::new(1),
            wake: Notify::new(),
            is_dup: AtomicBool::new(false),
        }
    }

    /// Queues a packet for this client without waiting. When the lane is full the oldest packet
    /// is dropped (fresh packets matter more, as in Go derper) and counted as `queue_head`.
    pub(crate) fn enqueue_packet(&self, packet: Packet, metrics: &Metrics) {
        let kind = PacketKind::of(&packet.data);
        if self.cancel.is_cancelled() {
            metrics.drop_packet(DropReason::GoneDisconnected, kind, packet.data.len());
            return;
        }
        let lane = match kind {
            PacketKind::Disco => &self.disco,
            PacketKind::Other => &self.data,
        };
        if let Some(old) = lane.force_push(packet) {
            metrics.drop_packet(
                DropReason::QueueHead,
                PacketKind::of(&old.data),
                old.data.len(),
            );
        }
        self.wake.notify_one();
    }

    /// Queues a control frame; returns false (and counts it) if the control queue is full.
    pub(crate) fn enqueue_control(&self, control: Control, metrics: &Metrics) -> bool {
        if self.cancel.is_cancelled() {
            return false;
        }
        if self.control_tx.try_send(control).is_err() {
            metrics.control_dropped.increment(1);
            return false;
        }
        self.wake.notify_one();
        true
    }

    /// Queues a Pong unless one is already pending.
    pub(crate) fn enqueue_pong(&self, data: [u8; 8]) {
        if self.pong.push(data).is_ok() {
            self.wake.notify_one();
        }
    }

    pub(crate) fn pop_control(&self) -> Option<Control> {
        self.control_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_recv()
            .ok()
    }

    pub(crate) fn pop_pong(&self) -> Option<[u8; 8]> {
        self.pong.pop()
    }

    pub(crate) fn pop_disco(&self) -> Option<Packet> {
        self.disco.pop()
    }

    pub(crate) fn pop_data(&self) -> Option<Packet> {
        self.data.pop()
    }

    /// Waits until something was queued since the last wake-up.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Counts everything still queued as `gone_disconnected`; called once the writer stopped.
    pub(crate) fn drain_as_gone(&self, metrics: &Metrics) {
        while let Some(p) = self.data.pop().or_else(|| self.disco.pop()) {
            metrics.drop_packet(
                DropReason::GoneDisconnected,
                PacketKind::of(&p.data),
                p.data.len(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use derp_proto::frame::PeerGoneReason;

    fn client(depth: usize) -> ClientShared {
        ClientShared::new(
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
        )
    }

    fn packet(n: u8) -> Packet {
        Packet {
            src: NodePublicKey::from_bytes([2; 32]),
            data: Bytes::from(vec![n; 10]),
            enqueued_at: Instant::now(),
        }
    }

    #[test]
    fn full_queue_drops_oldest() {
        let m = Metrics::new();
        let c = client(2);
        for n in 0..4 {
            c.enqueue_packet(packet(n), &m);
        }
        assert_eq!(c.pop_data().unwrap().data[0], 2);
        assert_eq!(c.pop_data().unwrap().data[0], 3);
        assert!(c.pop_data().is_none());
    }

    #[test]
    fn disco_has_its_own_lane() {
        let m = Metrics::new();
        let c = client(1);
        let mut disco = vec![0u8; 70];
        disco[..6].copy_from_slice(&derp_proto::disco::MAGIC);
        c.enqueue_packet(packet(1), &m);
        c.enqueue_packet(
            Packet {
                data: Bytes::from(disco),
                ..packet(0)
            },
            &m,
        );
        c.enqueue_packet(packet(2), &m);
        assert!(c.pop_disco().is_some());
        assert_eq!(c.pop_data().unwrap().data[0], 2);
    }

    #[test]
    fn closed_client_takes_nothing() {
        let m = Metrics::new();
        let c = client(4);
        c.cancel.cancel();
        c.enqueue_packet(packet(1), &m);
        assert!(c.pop_data().is_none());
        assert!(!c.enqueue_control(Control::PeerGone(c.key, PeerGoneReason::DISCONNECTED), &m));
    }

    #[test]
    fn one_pending_pong() {
        let c = client(1);
        c.enqueue_pong([1; 8]);
        c.enqueue_pong([2; 8]);
        assert_eq!(c.pop_pong(), Some([1; 8]));
        assert_eq!(c.pop_pong(), None);
    }
}
