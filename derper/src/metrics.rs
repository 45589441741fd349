//! Metric names, descriptions and pre-registered handles.
//!
//! Names follow Prometheus conventions and stay recognisable against Go derper's expvar names.
//! Every label is a closed enum; no per-key labels. Handles are built once at start-up so the
//! packet path never looks a metric up by name. Keep this table and the README in step.

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

/// Why a packet was dropped (label `reason`), named as Go derper names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No client with that key is connected.
    UnknownDest,
    /// A mesh peer forwarded to a key that is not connected here.
    UnknownDestOnFwd,
    /// The destination disconnected before the packet was written.
    GoneDisconnected,
    /// The destination's queue was full; the oldest queued packet was dropped.
    QueueHead,
    /// The destination's queue was full and the new packet was dropped.
    QueueTail,
    /// Writing to the destination's socket failed.
    WriteError,
    /// The destination key has several connections and none is active.
    DupClient,
}

impl DropReason {
    const ALL: [Self; 7] = [
        Self::UnknownDest,
        Self::UnknownDestOnFwd,
        Self::GoneDisconnected,
        Self::QueueHead,
        Self::QueueTail,
        Self::WriteError,
        Self::DupClient,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownDest => "unknown_dest",
            Self::UnknownDestOnFwd => "unknown_dest_on_fwd",
            Self::GoneDisconnected => "gone_disconnected",
            Self::QueueHead => "queue_head",
            Self::QueueTail => "queue_tail",
            Self::WriteError => "write_error",
            Self::DupClient => "dup_client",
        }
    }
}

/// What kind of packet was dropped or received (label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Disco (NAT traversal) packets.
    Disco,
    /// Everything else, normally WireGuard.
    Other,
}

impl PacketKind {
    /// Classifies a packet by the disco magic.
    pub fn of(packet: &[u8]) -> Self {
        if derp_proto::disco::looks_like_disco(packet) {
            Self::Disco
        } else {
            Self::Other
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Disco => 0,
            Self::Other => 1,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disco => "disco",
            Self::Other => "other",
        }
    }
}

/// Why a handshake failed (label `reason` of `derp_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client did not finish within the deadline.
    Timeout,
    /// The socket failed or closed.
    Io,
    /// Wrong first frame, bad length, box that does not open, or invalid JSON.
    Protocol,
    /// A mesh key was presented and did not match.
    MeshKey,
    /// The key already has the maximum number of connections.
    TooManyDups,
    /// The HTTP request before the DERP stream was not acceptable.
    Http,
}

impl HandshakeFailure {
    const ALL: [Self; 6] = [
        Self::Timeout,
        Self::Io,
        Self::Protocol,
        Self::MeshKey,
        Self::TooManyDups,
        Self::Http,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Protocol => "protocol",
            Self::MeshKey => "mesh_key",
            Self::TooManyDups => "too_many_dups",
            Self::Http => "http",
        }
    }
}

/// Pre-registered metric handles, shared as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    /// `derp_accepts_total`: DERP connections that completed the handshake.
    pub accepts: Counter,
    /// `derp_websocket_accepts_total`: of those, how many came over WebSocket.
    pub websocket_accepts: Counter,
    /// `derp_current_connections`: DERP connections open now.
    pub current_connections: Gauge,
    /// `derp_current_home_connections`: connections whose client said this is its home.
    pub current_home_connections: Gauge,
    /// `derp_current_dup_client_keys`: keys with more than one connection.
    pub current_dup_client_keys: Gauge,
    /// `derp_dup_client_conns_total`: connections that joined a key already connected.
    pub dup_client_conns: Counter,
    /// `derp_bytes_received_total`: packet bytes received from clients (SendPacket payloads).
    pub bytes_received: Counter,
    /// `derp_bytes_sent_total`: packet bytes written to clients (RecvPacket payloads).
    pub bytes_sent: Counter,
    /// `derp_packets_received_total{kind}`: packets received from clients.
    packets_received: [Counter; 2],
    /// `derp_packets_sent_total`: packets written to clients.
    pub packets_sent: Counter,
    /// `derp_packets_dropped_total{reason,kind}`.
    packets_dropped: [[Counter; 2]; 7],
    /// `derp_bytes_dropped_total{reason,kind}`.
    bytes_dropped: [[Counter; 2]; 7],
    /// `derp_handshake_failures_total{reason}`.
    handshake_failures: [Counter; 6],
    /// `derp_peer_gone_frames_total{reason=disconnected}`.
    pub peer_gone_disconnected: Counter,
    /// `derp_peer_gone_frames_total{reason=not_here}`.
    pub peer_gone_not_here: Counter,
    /// `derp_control_dropped_total`: PeerGone/PeerPresent frames dropped because a client's
    /// control queue was full.
    pub control_dropped: Counter,
    /// `derp_got_ping_total`: Ping frames received.
    pub got_ping: Counter,
    /// `derp_sent_pong_total`: Pong frames written.
    pub sent_pong: Counter,
    /// `derp_unknown_frames_total`: frames of unknown type, skipped.
    pub unknown_frames: Counter,
    /// `derp_write_timeouts_total`: connections closed because a write missed its deadline.
    pub write_timeouts: Counter,
    /// `derp_accept_errors_total{reason=fd_exhausted}`: accept failed for lack of descriptors.
    pub accept_fd_exhausted: Counter,
    /// `derp_accept_errors_total{reason=other}`.
    pub accept_other_errors: Counter,
    /// `derp_connection_limit_rejections_total`: connections closed at accept because
    /// `--max-connections` was reached.
    pub connection_limit_rejections: Counter,
    /// `derp_peer_gone_watchers_dropped_total`: PeerGone bookkeeping entries not recorded
    /// because a key's watcher set was full.
    pub watchers_dropped: Counter,
    /// `derp_forwarders_dropped_total`: mesh announcements not recorded because a key already
    /// had the maximum number of forwarders.
    pub forwarders_dropped: Counter,
    /// `derp_write_batch_frames`: frames written per flush.
    pub write_batch_frames: Histogram,
    /// `derp_queue_delay_seconds`: age of the oldest packet in each written batch.
    pub queue_delay: Histogram,
}

impl Metrics {
    /// Describes every metric and builds the handles. Call after installing the recorder.
    pub fn new() -> Self {
        describe();
        let kinds = [PacketKind::Disco, PacketKind::Other];
        Self {
            accepts: counter!("derp_accepts_total"),
            websocket_accepts: counter!("derp_websocket_accepts_total"),
            current_connections: gauge!("derp_current_connections"),
            current_home_connections: gauge!("derp_current_home_connections"),
            current_dup_client_keys: gauge!("derp_current_dup_client_keys"),
            dup_client_conns: counter!("derp_dup_client_conns_total"),
            bytes_received: counter!("derp_bytes_received_total"),
            bytes_sent: counter!("derp_bytes_sent_total"),
            packets_received: kinds.map(|k| counter!("derp_packets_received_total", "kind" => k.as_str())),
            packets_sent: counter!("derp_packets_sent_total"),
            packets_dropped: DropReason::ALL.map(|r| {
                kinds.map(|k| counter!("derp_packets_dropped_total", "reason" => r.as_str(), "kind" => k.as_str()))
            }),
            bytes_dropped: DropReason::ALL.map(|r| {
                kinds.map(|k| counter!("derp_bytes_dropped_total", "reason" => r.as_str(), "kind" => k.as_str()))
            }),
            handshake_failures: HandshakeFailure::ALL
                .map(|r| counter!("derp_handshake_failures_total", "reason" => r.as_str())),
            peer_gone_disconnected: counter!("derp_peer_gone_frames_total", "reason" => "disconnected"),
            peer_gone_not_here: counter!("derp_peer_gone_frames_total", "reason" => "not_here"),
            control_dropped: counter!("derp_control_dropped_total"),
            got_ping: counter!("derp_got_ping_total"),
            sent_pong: counter!("derp_sent_pong_total"),
            unknown_frames: counter!("derp_unknown_frames_total"),
            write_timeouts: counter!("derp_write_timeouts_total"),
            accept_fd_exhausted: counter!("derp_accept_errors_total", "reason" => "fd_exhausted"),
            accept_other_errors: counter!("derp_accept_errors_total", "reason" => "other"),
            connection_limit_rejections: counter!("derp_connection_limit_rejections_total"),
            watchers_dropped: counter!("derp_peer_gone_watchers_dropped_total"),
            forwarders_dropped: counter!("derp_forwarders_dropped_total"),
            write_batch_frames: histogram!("derp_write_batch_frames"),
            queue_delay: histogram!("derp_queue_delay_seconds"),
        }
    }

    /// Counts one dropped packet of `len` bytes.
    pub fn drop_packet(&self, reason: DropReason, kind: PacketKind, len: usize) {
        self.drop_packets(reason, kind, 1, len as u64);
    }

    /// Counts `packets` dropped packets totalling `bytes`.
    pub fn drop_packets(&self, reason: DropReason, kind: PacketKind, packets: u64, bytes: u64) {
        let r = DropReason::ALL
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(0);
        self.packets_dropped[r][kind.index()].increment(packets);
        self.bytes_dropped[r][kind.index()].increment(bytes);
    }

    /// Counts one received packet.
    pub fn received_packet(&self, kind: PacketKind, len: usize) {
        self.packets_received[kind.index()].increment(1);
        self.bytes_received.increment(len as u64);
    }

    /// Counts one failed handshake.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        let r = HandshakeFailure::ALL
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(0);
        self.handshake_failures[r].increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn describe() {
    describe_counter!(
        "derp_accepts_total",
        "DERP connections that completed the handshake"
    );
    describe_counter!(
        "derp_websocket_accepts_total",
        "DERP connections accepted over WebSocket"
    );
    describe_gauge!("derp_current_connections", "DERP connections open now");
    describe_gauge!(
        "derp_current_home_connections",
        "Connections whose client marked this relay as home"
    );
    describe_gauge!(
        "derp_current_dup_client_keys",
        "Keys with more than one open connection"
    );
    describe_counter!(
        "derp_dup_client_conns_total",
        "Connections that joined an already connected key"
    );
    describe_counter!(
        "derp_bytes_received_total",
        Unit::Bytes,
        "Packet bytes received from clients"
    );
    describe_counter!(
        "derp_bytes_sent_total",
        Unit::Bytes,
        "Packet bytes written to clients"
    );
    describe_counter!(
        "derp_packets_received_total",
        "Packets received from clients, by kind"
    );
    describe_counter!("derp_packets_sent_total", "Packets written to clients");
    describe_counter!(
        "derp_packets_dropped_total",
        "Packets dropped, by reason and kind"
    );
    describe_counter!(
        "derp_bytes_dropped_total",
        Unit::Bytes,
        "Packet bytes dropped, by reason and kind"
    );
    describe_counter!(
        "derp_handshake_failures_total",
        "Connections that failed before or during the DERP handshake, by reason"
    );
    describe_counter!(
        "derp_peer_gone_frames_total",
        "PeerGone frames queued to clients, by reason"
    );
    describe_counter!(
        "derp_control_dropped_total",
        "PeerGone/PeerPresent frames dropped because a client's control queue was full"
    );
    describe_counter!("derp_got_ping_total", "Ping frames received from clients");
    describe_counter!("derp_sent_pong_total", "Pong frames written to clients");
    describe_counter!(
        "derp_unknown_frames_total",
        "Frames of unknown type skipped"
    );
    describe_counter!(
        "derp_write_timeouts_total",
        "Connections closed because a write missed its deadline"
    );
    describe_counter!("derp_accept_errors_total", "TCP accept failures, by reason");
    describe_counter!(
        "derp_connection_limit_rejections_total",
        "Connections closed at accept because the connection limit was reached"
    );
    describe_counter!(
        "derp_peer_gone_watchers_dropped_total",
        "PeerGone bookkeeping entries not recorded because a key's watcher set was full"
    );
    describe_counter!(
        "derp_forwarders_dropped_total",
        "Mesh announcements not recorded because a key had the maximum number of forwarders"
    );
    describe_histogram!("derp_write_batch_frames", "Frames written per socket flush");
    describe_histogram!(
        "derp_queue_delay_seconds",
        Unit::Seconds,
        "Age of the oldest packet in each written batch"
    );
}
