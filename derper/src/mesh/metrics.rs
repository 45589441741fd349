//! Mesh metrics: per-link handles (label `peer`, one value per configured or discovered peer,
//! so bounded by the peer limits) and region-wide counters.

use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};

use super::target::LinkTransport;
use crate::metrics::names;

/// Handles of one link for one transport it dials (label `transport`: `tcp` or `quic`; an
/// `auto://` link has both).
#[derive(Debug, Clone)]
pub(crate) struct TransportMetrics {
    /// `derp_mesh_link_up{peer,transport}`: 1 while connected over this transport.
    pub(crate) up: Gauge,
    /// `derp_mesh_connects_total{peer,transport,result="ok"}`.
    pub(crate) connects_ok: Counter,
    /// `derp_mesh_connects_total{peer,transport,result="error"}`.
    pub(crate) connects_failed: Counter,
    /// `derp_mesh_quic_packets_total{peer,path="datagram"}`: packets sent as QUIC datagrams.
    pub(crate) datagrams: Counter,
    /// `derp_mesh_quic_packets_total{peer,path="stream"}`: packets too large for a datagram,
    /// sent as ForwardPacket frames on the QUIC stream instead.
    pub(crate) stream_fallback: Counter,
}

impl TransportMetrics {
    fn new(peer: &str, transport: LinkTransport) -> Self {
        let (p, t) = (peer.to_string(), transport.as_str());
        let quic = transport == LinkTransport::Quic;
        Self {
            up: gauge!(names::MESH_LINK_UP, "peer" => p.clone(), "transport" => t),
            connects_ok: counter!(names::MESH_CONNECTS_TOTAL, "peer" => p.clone(), "transport" => t, "result" => "ok"),
            connects_failed: counter!(names::MESH_CONNECTS_TOTAL, "peer" => p.clone(), "transport" => t, "result" => "error"),
            datagrams: if quic {
                counter!(names::MESH_QUIC_PACKETS_TOTAL, "peer" => p.clone(), "path" => "datagram")
            } else {
                Counter::noop()
            },
            stream_fallback: if quic {
                counter!(names::MESH_QUIC_PACKETS_TOTAL, "peer" => p, "path" => "stream")
            } else {
                Counter::noop()
            },
        }
    }

    /// Handles that record nothing, for a transport the link never dials (so no series of
    /// zeros appears for it).
    fn unused() -> Self {
        Self {
            up: Gauge::noop(),
            connects_ok: Counter::noop(),
            connects_failed: Counter::noop(),
            datagrams: Counter::noop(),
            stream_fallback: Counter::noop(),
        }
    }
}

/// Handles of one link, labelled with its peer's name.
#[derive(Debug, Clone)]
pub(crate) struct LinkMetrics {
    /// Over TCP (TLS or plain).
    pub(crate) tcp: TransportMetrics,
    /// Over QUIC.
    pub(crate) quic: TransportMetrics,
    /// `derp_mesh_forwarded_packets_total{peer,direction="out"}`.
    pub(crate) packets_out: Counter,
    /// `derp_mesh_forwarded_bytes_total{peer,direction="out"}`.
    pub(crate) bytes_out: Counter,
    /// `derp_mesh_link_queue_dropped_total{peer}`.
    pub(crate) queue_dropped: Counter,
    /// `derp_mesh_presence_received_total{peer,kind="present"}`.
    pub(crate) present: Counter,
    /// `derp_mesh_presence_received_total{peer,kind="gone"}`.
    pub(crate) gone: Counter,
    /// `derp_mesh_link_keys{peer}`: keys this link announces.
    pub(crate) keys: Gauge,
}

impl LinkMetrics {
    /// The handles of one transport (`Auto` is never connected as such; it reads as QUIC).
    pub(crate) fn transport(&self, t: LinkTransport) -> &TransportMetrics {
        match t {
            LinkTransport::Tcp => &self.tcp,
            LinkTransport::Quic | LinkTransport::Auto => &self.quic,
        }
    }

    /// Handles for a link to `peer` that dials over `transport`.
    pub(crate) fn new(peer: &str, transport: LinkTransport) -> Self {
        describe();
        let p = peer.to_string();
        let uses = |t: LinkTransport| transport == t || transport == LinkTransport::Auto;
        let for_transport = |t: LinkTransport| {
            if uses(t) {
                TransportMetrics::new(peer, t)
            } else {
                TransportMetrics::unused()
            }
        };
        Self {
            tcp: for_transport(LinkTransport::Tcp),
            quic: for_transport(LinkTransport::Quic),
            packets_out: counter!(names::MESH_FORWARDED_PACKETS_TOTAL, "peer" => p.clone(), "direction" => "out"),
            bytes_out: counter!(names::MESH_FORWARDED_BYTES_TOTAL, "peer" => p.clone(), "direction" => "out"),
            queue_dropped: counter!(names::MESH_LINK_QUEUE_DROPPED_TOTAL, "peer" => p.clone()),
            present: counter!(names::MESH_PRESENCE_RECEIVED_TOTAL, "peer" => p.clone(), "kind" => "present"),
            gone: counter!(names::MESH_PRESENCE_RECEIVED_TOTAL, "peer" => p.clone(), "kind" => "gone"),
            keys: gauge!(names::MESH_LINK_KEYS, "peer" => p),
        }
    }
}

/// Region-wide mesh handles.
#[derive(Debug, Clone)]
pub(crate) struct MeshMetrics {
    /// `derp_mesh_links{state="up"}`.
    pub(crate) links_up: Gauge,
    /// `derp_mesh_links{state="configured"}`: links the relay keeps (self excluded).
    pub(crate) links_configured: Gauge,
    /// `derp_mesh_self_links_total`: targets that turned out to be this relay.
    pub(crate) self_links: Counter,
    /// `derp_mesh_watch_set_full_total`: PeerPresent refused because a link's set was full.
    pub(crate) watch_set_full: Counter,
    /// `derp_mesh_membership_changes_total{change="added"}`.
    pub(crate) links_added: Counter,
    /// `derp_mesh_membership_changes_total{change="removed"}`.
    pub(crate) links_removed: Counter,
}

impl MeshMetrics {
    pub(crate) fn new() -> Self {
        describe();
        Self {
            links_up: gauge!(names::MESH_LINKS, "state" => "up"),
            links_configured: gauge!(names::MESH_LINKS, "state" => "configured"),
            self_links: counter!(names::MESH_SELF_LINKS_TOTAL),
            watch_set_full: counter!(names::MESH_WATCH_SET_FULL_TOTAL),
            links_added: counter!(names::MESH_MEMBERSHIP_CHANGES_TOTAL, "change" => "added"),
            links_removed: counter!(names::MESH_MEMBERSHIP_CHANGES_TOTAL, "change" => "removed"),
        }
    }
}

fn describe() {
    describe_gauge!(
        names::MESH_LINK_UP,
        "1 while the mesh link to a peer relay is connected"
    );
    describe_counter!(
        names::MESH_CONNECTS_TOTAL,
        "Mesh link connection attempts, by peer and result"
    );
    describe_counter!(
        names::MESH_FORWARDED_PACKETS_TOTAL,
        "Packets forwarded between relays of the region, by peer and direction"
    );
    describe_counter!(
        names::MESH_FORWARDED_BYTES_TOTAL,
        Unit::Bytes,
        "Packet bytes forwarded between relays of the region, by peer and direction"
    );
    describe_counter!(
        names::MESH_QUIC_PACKETS_TOTAL,
        "Packets a QUIC mesh link sent, by path (datagram, or the stream when too large)"
    );
    describe_counter!(
        names::MESH_LINK_QUEUE_DROPPED_TOTAL,
        "Packets dropped because a mesh link's queue was full"
    );
    describe_counter!(
        names::MESH_PRESENCE_RECEIVED_TOTAL,
        "PeerPresent/PeerGone frames received on mesh links"
    );
    describe_gauge!(names::MESH_LINK_KEYS, "Keys announced by each mesh link");
    describe_gauge!(names::MESH_LINKS, "Mesh links, by state");
    describe_counter!(
        names::MESH_SELF_LINKS_TOTAL,
        "Mesh targets that turned out to be this relay (skipped)"
    );
    describe_counter!(
        names::MESH_WATCH_SET_FULL_TOTAL,
        "PeerPresent frames refused because a mesh link's key set was full"
    );
    describe_counter!(
        names::MESH_MEMBERSHIP_CHANGES_TOTAL,
        "Mesh links added or removed by membership changes"
    );
}
