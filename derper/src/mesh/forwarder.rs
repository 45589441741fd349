//! The outbound half of a mesh link as the relay core sees it: a bounded queue of
//! ForwardPacket frames that the link's writer drains.
//!
//! [`LinkForwarder::forward`] never waits: it pushes under a short mutex, head-drops when the
//! queue is full (by packets or bytes), and wakes the writer only when the queue was empty.
//! While the link is down every forward is refused (`Closed`), so the relay counts the drop
//! where it happens.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use derp_proto::NodePublicKey;
use tokio::sync::Notify;

use super::metrics::LinkMetrics;
use crate::metrics::{DropReason, Metrics, PacketKind};
use crate::relay::{ForwardOutcome, Forwarder, LinkId};

/// One queued ForwardPacket.
#[derive(Debug)]
pub(crate) struct Forwarded {
    pub(crate) src: NodePublicKey,
    pub(crate) dst: NodePublicKey,
    pub(crate) packet: Bytes,
}

/// What the writer takes from the queue in one go.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) packets: VecDeque<Forwarded>,
    pub(crate) pong: Option<[u8; 8]>,
    pub(crate) ping: bool,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.packets.is_empty() && self.pong.is_none() && !self.ping
    }
}

#[derive(Debug, Default)]
struct Queue {
    up: bool,
    packets: VecDeque<Forwarded>,
    bytes: usize,
    /// A Pong owed to the peer relay (only the latest Ping is answered, as the relay does).
    pong: Option<[u8; 8]>,
    /// The reader heard nothing for a while and wants a Ping sent.
    ping: bool,
}

/// The [`Forwarder`] of one mesh link. Lives as long as the link; up while a connection is.
#[derive(Debug)]
pub(crate) struct LinkForwarder {
    id: LinkId,
    max_packets: usize,
    max_bytes: usize,
    queue: Mutex<Queue>,
    /// Wakes the link's writer.
    pub(crate) ready: Notify,
    link_metrics: LinkMetrics,
    metrics: std::sync::Arc<Metrics>,
}

impl LinkForwarder {
    pub(crate) fn new(
        id: LinkId,
        max_packets: usize,
        max_bytes: usize,
        link_metrics: LinkMetrics,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        Self {
            id,
            max_packets: max_packets.max(1),
            max_bytes,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            link_metrics,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection is up: forwards are accepted from now on.
    pub(crate) fn set_up(&self) {
        self.lock().up = true;
    }

    /// The connection is gone: refuses forwards and drops (and counts) what was queued.
    pub(crate) fn set_down(&self) {
        let dropped = {
            let mut q = self.lock();
            q.up = false;
            q.bytes = 0;
            q.pong = None;
            q.ping = false;
            std::mem::take(&mut q.packets)
        };
        for f in dropped {
            self.metrics.drop_packet(
                DropReason::GoneDisconnected,
                PacketKind::of(&f.packet),
                f.packet.len(),
            );
        }
    }

    /// Takes everything queued, swapping `spare` (an empty deque with capacity) in.
    pub(crate) fn take(&self, spare: VecDeque<Forwarded>) -> Batch {
        let mut q = self.lock();
        q.bytes = 0;
        Batch {
            packets: std::mem::replace(&mut q.packets, spare),
            pong: q.pong.take(),
            ping: std::mem::take(&mut q.ping),
        }
    }

    /// Queues a Pong for the peer relay's Ping.
    pub(crate) fn queue_pong(&self, data: [u8; 8]) {
        self.lock().pong = Some(data);
        self.ready.notify_one();
    }

    /// Asks the writer to send a Ping (the reader heard nothing for a while).
    pub(crate) fn queue_ping(&self) {
        self.lock().ping = true;
        self.ready.notify_one();
    }

    /// Counts packets the writer put on the wire.
    pub(crate) fn count_sent(&self, packets: u64, bytes: u64) {
        self.link_metrics.packets_out.increment(packets);
        self.link_metrics.bytes_out.increment(bytes);
    }

    /// Packets queued now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.lock().packets.len()
    }
}

impl Forwarder for LinkForwarder {
    fn link_id(&self) -> LinkId {
        self.id
    }

    fn forward(&self, src: NodePublicKey, dst: NodePublicKey, packet: Bytes) -> ForwardOutcome {
        let len = packet.len();
        let mut outcome = ForwardOutcome::Queued;
        let mut q = self.lock();
        if !q.up {
            return ForwardOutcome::Closed;
        }
        let was_empty = q.packets.is_empty();
        let mut dropped = Vec::new();
        while !q.packets.is_empty()
            && (q.packets.len() >= self.max_packets || q.bytes + len > self.max_bytes)
        {
            if let Some(old) = q.packets.pop_front() {
                q.bytes -= old.packet.len();
                dropped.push(old.packet);
            }
        }
        q.bytes += len;
        q.packets.push_back(Forwarded { src, dst, packet });
        drop(q);
        for old in dropped {
            outcome = ForwardOutcome::Dropped;
            self.link_metrics.queue_dropped.increment(1);
            self.metrics
                .drop_packet(DropReason::QueueHead, PacketKind::of(&old), old.len());
        }
        if was_empty {
            self.ready.notify_one();
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn forwarder(max_packets: usize, max_bytes: usize) -> LinkForwarder {
        LinkForwarder::new(
            LinkId(1),
            max_packets,
            max_bytes,
            LinkMetrics::new("test", crate::mesh::LinkTransport::Tcp),
            Arc::new(Metrics::new()),
        )
    }

    fn key(n: u8) -> NodePublicKey {
        NodePublicKey::from_bytes([n; 32])
    }

    #[test]
    fn refuses_while_down_and_drops_the_queue_on_down() {
        let f = forwarder(4, 1 << 20);
        let p = Bytes::from_static(b"x");
        assert_eq!(f.forward(key(1), key(2), p.clone()), ForwardOutcome::Closed);
        f.set_up();
        assert_eq!(f.forward(key(1), key(2), p.clone()), ForwardOutcome::Queued);
        assert_eq!(f.queued(), 1);
        f.set_down();
        assert_eq!(f.queued(), 0);
        assert_eq!(f.forward(key(1), key(2), p), ForwardOutcome::Closed);
    }

    #[test]
    fn full_queue_drops_oldest_by_count_and_bytes() {
        let f = forwarder(3, 10);
        f.set_up();
        for n in 0..3u8 {
            let out = f.forward(key(1), key(2), Bytes::from(vec![n; 2]));
            assert_eq!(out, ForwardOutcome::Queued);
        }
        // A fourth packet pushes out the oldest.
        assert_eq!(
            f.forward(key(1), key(2), Bytes::from(vec![3; 2])),
            ForwardOutcome::Dropped
        );
        // 6 bytes queued; 8 more exceed 10, so the two oldest go (2 + 8 fits).
        assert_eq!(
            f.forward(key(1), key(2), Bytes::from(vec![4; 8])),
            ForwardOutcome::Dropped
        );
        let batch = f.take(VecDeque::new());
        let firsts: Vec<u8> = batch.packets.iter().map(|p| p.packet[0]).collect();
        assert_eq!(firsts, vec![3, 4]);
        assert!(f.take(VecDeque::new()).is_empty());
    }

    #[tokio::test]
    async fn first_packet_wakes_the_writer() {
        let f = Arc::new(forwarder(8, 1 << 20));
        f.set_up();
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move { f.ready.notified().await })
        };
        tokio::task::yield_now().await;
        f.forward(key(1), key(2), Bytes::from_static(b"x"));
        waiter.await.unwrap();
        // The permit model: a wake-up sent while nobody waits is kept for the next wait.
        f.queue_ping();
        f.ready.notified().await;
        assert!(f.take(VecDeque::new()).ping);
    }
}
