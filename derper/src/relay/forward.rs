//! Forwarding one packet: route it, queue it for a local connection or hand it to the mesh
//! link that announced its destination, or drop and count it.
//!
//! Nothing here waits: queues are bounded and head-drop, and a mesh link's [`Forwarder`]
//! queues without blocking too.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use derp_proto::NodePublicKey;
use derp_proto::frame::PeerGoneReason;

use super::Inner;
use super::conn::{ConnHandle, Control, Enqueued, Packet};
use super::limiter::TokenBucket;
use super::registry::Route;
use crate::metrics::{DropReason, PacketKind};

/// Identifies one mesh link (an outbound connection to another relay of the region).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(pub u64);

/// A way to reach keys connected to another relay of the region: the outbound mesh link that
/// announced them with PeerPresent. Implemented by the mesh client; the relay core only
/// routes through it.
pub trait Forwarder: Send + Sync + std::fmt::Debug {
    /// The link this forwarder sends on.
    fn link_id(&self) -> LinkId;

    /// Queues a ForwardPacket(src, dst, packet) without waiting. Returns `Closed` if the link
    /// is down; the caller counts the drop.
    fn forward(&self, src: NodePublicKey, dst: NodePublicKey, packet: Bytes) -> ForwardOutcome;
}

/// What a [`Forwarder`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardOutcome {
    /// Queued on the link.
    Queued,
    /// The link's queue was full; the packet (or an older one) was dropped and counted by the
    /// link.
    Dropped,
    /// The link is down.
    Closed,
}

/// A shared mesh forwarder.
pub type ForwarderHandle = Arc<dyn Forwarder>;

/// Where a packet came from, which decides what may be done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// SendPacket from a client connected here.
    Client,
    /// ForwardPacket from a mesh peer: delivered locally or dropped, never forwarded again
    /// (one hop in a region, so no loops).
    Mesh,
}

/// Routes one packet from `src` to `dst`. Returns [`Enqueued::Backlogged`] when the sender's
/// reader should yield to the destination's writer.
pub(crate) fn deliver(
    relay: &Inner,
    sender: &ConnHandle,
    origin: Origin,
    src: NodePublicKey,
    dst: &NodePublicKey,
    data: Bytes,
    not_here: &mut TokenBucket,
) -> Enqueued {
    let metrics = &relay.metrics;
    let kind = PacketKind::of(&data);
    metrics.received_packet(kind, data.len());
    let len = data.len();
    match relay.registry.route(dst) {
        Route::Local(target) => target.enqueue_packet(
            Packet {
                src,
                data,
                kind,
                enqueued_at: Instant::now(),
            },
            metrics,
        ),
        Route::Remote(fwd) if origin == Origin::Client => match fwd.forward(src, *dst, data) {
            ForwardOutcome::Queued | ForwardOutcome::Dropped => Enqueued::Queued,
            ForwardOutcome::Closed => {
                metrics.drop_packet(DropReason::GoneDisconnected, kind, len);
                Enqueued::Closed
            }
        },
        Route::Remote(_) => {
            metrics.drop_packet(DropReason::UnknownDestOnFwd, kind, len);
            Enqueued::Closed
        }
        Route::DupNoActive => {
            metrics.drop_packet(DropReason::DupClient, kind, len);
            Enqueued::Closed
        }
        Route::Unknown => {
            let reason = match origin {
                Origin::Client => DropReason::UnknownDest,
                Origin::Mesh => DropReason::UnknownDestOnFwd,
            };
            metrics.drop_packet(reason, kind, len);
            // Only a client is told (Go answers SendPacket, not ForwardPacket).
            if origin == Origin::Client
                && kind == PacketKind::Disco
                && not_here.allow(Instant::now())
                && sender
                    .enqueue_control(Control::PeerGone(*dst, PeerGoneReason::NOT_HERE), metrics)
            {
                metrics.peer_gone_not_here.increment(1);
            }
            Enqueued::Closed
        }
    }
}
