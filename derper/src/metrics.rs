//! Metric names, descriptions and pre-registered handles.
//!
//! Names follow Prometheus conventions and stay recognisable against Go derper's expvar names.
//! Every label is a closed enum; no per-key labels. Handles are built once at start-up so the
//! packet path never looks a metric up by name. Keep this table and the README in step.

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

/// Every metric name, declared once: the handles and the descriptions both use these.
pub mod names {
    /// `derp_acme_attempts_total`.
    pub const ACME_ATTEMPTS_TOTAL: &str = "derp_acme_attempts_total";
    /// `derp_acme_challenges_served_total`.
    pub const ACME_CHALLENGES_SERVED_TOTAL: &str = "derp_acme_challenges_served_total";
    /// `derp_acme_renewal_timestamp_seconds`.
    pub const ACME_RENEWAL_TIMESTAMP_SECONDS: &str = "derp_acme_renewal_timestamp_seconds";
    /// `derp_cert_not_after_timestamp_seconds`.
    pub const CERT_NOT_AFTER_TIMESTAMP_SECONDS: &str = "derp_cert_not_after_timestamp_seconds";
    /// `derp_cert_reload_total`.
    pub const CERT_RELOAD_TOTAL: &str = "derp_cert_reload_total";
    /// `derp_accept_errors_total`.
    pub const ACCEPT_ERRORS_TOTAL: &str = "derp_accept_errors_total";
    /// `derp_accepts_total`.
    pub const ACCEPTS_TOTAL: &str = "derp_accepts_total";
    /// `derp_admission_cache_entries`.
    pub const ADMISSION_CACHE_ENTRIES: &str = "derp_admission_cache_entries";
    /// `derp_admission_cache_evictions_total`.
    pub const ADMISSION_CACHE_EVICTIONS_TOTAL: &str = "derp_admission_cache_evictions_total";
    /// `derp_admission_calls_total`.
    pub const ADMISSION_CALLS_TOTAL: &str = "derp_admission_calls_total";
    /// `derp_admission_decisions_total`.
    pub const ADMISSION_DECISIONS_TOTAL: &str = "derp_admission_decisions_total";
    /// `derp_admission_revoked_total`.
    pub const ADMISSION_REVOKED_TOTAL: &str = "derp_admission_revoked_total";
    /// `derp_bytes_dropped_total`.
    pub const BYTES_DROPPED_TOTAL: &str = "derp_bytes_dropped_total";
    /// `derp_bytes_received_total`.
    pub const BYTES_RECEIVED_TOTAL: &str = "derp_bytes_received_total";
    /// `derp_bytes_sent_total`.
    pub const BYTES_SENT_TOTAL: &str = "derp_bytes_sent_total";
    /// `derp_clients_remote`.
    pub const CLIENTS_REMOTE: &str = "derp_clients_remote";
    /// `derp_connection_limit_rejections_total`.
    pub const CONNECTION_LIMIT_REJECTIONS_TOTAL: &str = "derp_connection_limit_rejections_total";
    /// `derp_control_dropped_total`.
    pub const CONTROL_DROPPED_TOTAL: &str = "derp_control_dropped_total";
    /// `derp_current_connections`.
    pub const CURRENT_CONNECTIONS: &str = "derp_current_connections";
    /// `derp_current_dup_client_keys`.
    pub const CURRENT_DUP_CLIENT_KEYS: &str = "derp_current_dup_client_keys";
    /// `derp_current_home_connections`.
    pub const CURRENT_HOME_CONNECTIONS: &str = "derp_current_home_connections";
    /// `derp_dup_client_conns_total`.
    pub const DUP_CLIENT_CONNS_TOTAL: &str = "derp_dup_client_conns_total";
    /// `derp_forwarders_dropped_total`.
    pub const FORWARDERS_DROPPED_TOTAL: &str = "derp_forwarders_dropped_total";
    /// `derp_got_ping_total`.
    pub const GOT_PING_TOTAL: &str = "derp_got_ping_total";
    /// `derp_handshake_failures_total`.
    pub const HANDSHAKE_FAILURES_TOTAL: &str = "derp_handshake_failures_total";
    /// `derp_mesh_connects_total`.
    pub const MESH_CONNECTS_TOTAL: &str = "derp_mesh_connects_total";
    /// `derp_mesh_forwarded_bytes_total`.
    pub const MESH_FORWARDED_BYTES_TOTAL: &str = "derp_mesh_forwarded_bytes_total";
    /// `derp_mesh_forwarded_packets_total`.
    pub const MESH_FORWARDED_PACKETS_TOTAL: &str = "derp_mesh_forwarded_packets_total";
    /// `derp_mesh_link_keys`.
    pub const MESH_LINK_KEYS: &str = "derp_mesh_link_keys";
    /// `derp_mesh_link_queue_dropped_total`.
    pub const MESH_LINK_QUEUE_DROPPED_TOTAL: &str = "derp_mesh_link_queue_dropped_total";
    /// `derp_mesh_quic_packets_total`.
    pub const MESH_QUIC_PACKETS_TOTAL: &str = "derp_mesh_quic_packets_total";
    /// `derp_mesh_link_up`.
    pub const MESH_LINK_UP: &str = "derp_mesh_link_up";
    /// `derp_mesh_links`.
    pub const MESH_LINKS: &str = "derp_mesh_links";
    /// `derp_mesh_membership_changes_total`.
    pub const MESH_MEMBERSHIP_CHANGES_TOTAL: &str = "derp_mesh_membership_changes_total";
    /// `derp_mesh_presence_received_total`.
    pub const MESH_PRESENCE_RECEIVED_TOTAL: &str = "derp_mesh_presence_received_total";
    /// `derp_mesh_self_links_total`.
    pub const MESH_SELF_LINKS_TOTAL: &str = "derp_mesh_self_links_total";
    /// `derp_mesh_watch_set_full_total`.
    pub const MESH_WATCH_SET_FULL_TOTAL: &str = "derp_mesh_watch_set_full_total";
    /// `derp_mesh_presence_updates_total`.
    pub const MESH_PRESENCE_UPDATES_TOTAL: &str = "derp_mesh_presence_updates_total";
    /// `derp_mesh_watchers_closed_total`.
    pub const MESH_WATCHERS_CLOSED_TOTAL: &str = "derp_mesh_watchers_closed_total";
    /// `derp_mesh_dns_changes_total`.
    pub const MESH_DNS_CHANGES_TOTAL: &str = "derp_mesh_dns_changes_total";
    /// `derp_mesh_dns_lookups_total`.
    pub const MESH_DNS_LOOKUPS_TOTAL: &str = "derp_mesh_dns_lookups_total";
    /// `derp_mesh_dns_peers`.
    pub const MESH_DNS_PEERS: &str = "derp_mesh_dns_peers";
    /// `derp_mesh_dns_truncated_total`.
    pub const MESH_DNS_TRUNCATED_TOTAL: &str = "derp_mesh_dns_truncated_total";
    /// `derp_packets_dropped_total`.
    pub const PACKETS_DROPPED_TOTAL: &str = "derp_packets_dropped_total";
    /// `derp_packets_received_total`.
    pub const PACKETS_RECEIVED_TOTAL: &str = "derp_packets_received_total";
    /// `derp_packets_sent_total`.
    pub const PACKETS_SENT_TOTAL: &str = "derp_packets_sent_total";
    /// `derp_peer_gone_frames_total`.
    pub const PEER_GONE_FRAMES_TOTAL: &str = "derp_peer_gone_frames_total";
    /// `derp_peer_gone_watchers_dropped_total`.
    pub const PEER_GONE_WATCHERS_DROPPED_TOTAL: &str = "derp_peer_gone_watchers_dropped_total";
    /// `derp_draining`.
    pub const DRAINING: &str = "derp_draining";
    /// `derp_rate_config_reloads_total`.
    pub const RATE_CONFIG_RELOADS_TOTAL: &str = "derp_rate_config_reloads_total";
    /// `derp_rate_limit_per_client_bytes_per_second` (derper's name).
    pub const RATE_LIMIT_PER_CLIENT_BYTES_PER_SECOND: &str =
        "derp_rate_limit_per_client_bytes_per_second";
    /// `derp_rate_limit_per_client_burst_bytes` (derper's name).
    pub const RATE_LIMIT_PER_CLIENT_BURST_BYTES: &str = "derp_rate_limit_per_client_burst_bytes";
    /// `derp_rate_limit_per_client_waited` (derper's name).
    pub const RATE_LIMIT_PER_CLIENT_WAITED: &str = "derp_rate_limit_per_client_waited";
    /// `tls_listener_accepted_connections` (derper's name for its accept-rate limiter).
    pub const TLS_LISTENER_ACCEPTED_CONNECTIONS: &str = "tls_listener_accepted_connections";
    /// `tls_listener_rejected_connections` (derper's name).
    pub const TLS_LISTENER_REJECTED_CONNECTIONS: &str = "tls_listener_rejected_connections";
    /// `derp_quic_connections_total`.
    pub const QUIC_CONNECTIONS_TOTAL: &str = "derp_quic_connections_total";
    /// `derp_quic_datagrams_dropped_total`.
    pub const QUIC_DATAGRAMS_DROPPED_TOTAL: &str = "derp_quic_datagrams_dropped_total";
    /// `derp_quic_datagrams_received_total`.
    pub const QUIC_DATAGRAMS_RECEIVED_TOTAL: &str = "derp_quic_datagrams_received_total";
    /// `derp_queue_delay_seconds`.
    pub const QUEUE_DELAY_SECONDS: &str = "derp_queue_delay_seconds";
    /// `derp_sent_pong_total`.
    pub const SENT_PONG_TOTAL: &str = "derp_sent_pong_total";
    /// `derp_unknown_frames_total`.
    pub const UNKNOWN_FRAMES_TOTAL: &str = "derp_unknown_frames_total";
    /// `derp_websocket_accepts_total`.
    pub const WEBSOCKET_ACCEPTS_TOTAL: &str = "derp_websocket_accepts_total";
    /// `derp_write_batch_frames`.
    pub const WRITE_BATCH_FRAMES: &str = "derp_write_batch_frames";
    /// `derp_write_timeouts_total`.
    pub const WRITE_TIMEOUTS_TOTAL: &str = "derp_write_timeouts_total";
}

/// Why a packet was dropped (label `reason`), named as Go derper names them. The
/// discriminant indexes the handle arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
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
    /// A mesh peer forwarded a packet whose source is a client connected only here: it
    /// cannot have come from that peer's node.
    ForgedSource,
}

impl DropReason {
    const ALL: [Self; 8] = [
        Self::UnknownDest,
        Self::UnknownDestOnFwd,
        Self::GoneDisconnected,
        Self::QueueHead,
        Self::QueueTail,
        Self::WriteError,
        Self::DupClient,
        Self::ForgedSource,
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
            Self::ForgedSource => "forged_src",
        }
    }
}

/// What kind of packet was dropped or received (label `kind`). The discriminant indexes the
/// handle arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum PacketKind {
    /// Disco (NAT traversal) packets.
    Disco,
    /// Everything else, normally WireGuard.
    Other,
}

impl PacketKind {
    const ALL: [Self; 2] = [Self::Disco, Self::Other];

    /// Classifies a packet by the disco magic.
    pub fn of(packet: &[u8]) -> Self {
        if derp_proto::disco::looks_like_disco(packet) {
            Self::Disco
        } else {
            Self::Other
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disco => "disco",
            Self::Other => "other",
        }
    }
}

/// Why a handshake failed (label `reason` of `derp_handshake_failures_total`). The
/// discriminant indexes the handle array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
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
    /// Admission (webhook, local tailscaled) refused the client.
    NotAdmitted,
    /// A transport reserved for mesh peers (QUIC) was used without the mesh key.
    NotMesh,
}

impl HandshakeFailure {
    const ALL: [Self; 8] = [
        Self::Timeout,
        Self::Io,
        Self::Protocol,
        Self::MeshKey,
        Self::TooManyDups,
        Self::Http,
        Self::NotAdmitted,
        Self::NotMesh,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Protocol => "protocol",
            Self::MeshKey => "mesh_key",
            Self::TooManyDups => "too_many_dups",
            Self::Http => "http",
            Self::NotAdmitted => "not_admitted",
            Self::NotMesh => "not_mesh",
        }
    }
}

/// Why a QUIC mesh datagram was dropped before routing (label `reason` of
/// `derp_quic_datagrams_dropped_total`). The discriminant indexes the handle array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DatagramDrop {
    /// Arrived before the connection had logged in as a mesh peer.
    BeforeHandshake,
    /// Shorter than its header or an unknown tag.
    Malformed,
    /// The packet inside exceeds the 64 KiB DERP limit.
    Oversized,
}

impl DatagramDrop {
    const ALL: [Self; 3] = [Self::BeforeHandshake, Self::Malformed, Self::Oversized];

    fn as_str(self) -> &'static str {
        match self {
            Self::BeforeHandshake => "before_handshake",
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
        }
    }
}

/// How one inbound QUIC connection ended up (label `result` of
/// `derp_quic_connections_total`). The discriminant indexes the handle array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum QuicConnResult {
    /// Logged in as a mesh peer and ran.
    Mesh,
    /// The QUIC/TLS handshake failed (wrong ALPN, bad certificate, timeout), or the DERP
    /// stream could not be opened.
    HandshakeFailed,
    /// The DERP login failed or was refused (no or wrong mesh key); the reason is in
    /// `derp_handshake_failures_total`.
    Refused,
    /// Refused at once: `defaults::QUIC_MAX_CONNECTIONS` were already open.
    Limit,
}

impl QuicConnResult {
    const ALL: [Self; 4] = [
        Self::Mesh,
        Self::HandshakeFailed,
        Self::Refused,
        Self::Limit,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Mesh => "mesh",
            Self::HandshakeFailed => "handshake_failed",
            Self::Refused => "refused",
            Self::Limit => "limit",
        }
    }
}

/// How one DNS membership lookup ended (label `result` of `derp_mesh_dns_lookups_total`). The
/// discriminant indexes the handle array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DnsLookupResult {
    /// At least one usable address.
    Ok,
    /// An answer without a usable address; the peer set was kept.
    Empty,
    /// NXDOMAIN, timeout, server error or transport error; the peer set was kept.
    Error,
}

impl DnsLookupResult {
    const ALL: [Self; 3] = [Self::Ok, Self::Empty, Self::Error];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Empty => "empty",
            Self::Error => "error",
        }
    }
}

/// How one ACME issuance attempt ended (`derp_acme_attempts_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcmeOutcome {
    /// A certificate was issued and is being served.
    Issued,
    /// The account could not be created or loaded (CA unreachable, error answer, EAB refused).
    AccountError,
    /// The order could not be created or followed (CA unreachable, rate limit, error answer).
    OrderError,
    /// The CA could not validate a hostname, or offered no challenge this relay can answer.
    ValidationFailed,
    /// Finalizing or downloading the certificate failed, or it was unusable.
    FinalizeError,
}

impl AcmeOutcome {
    /// Every outcome, in label-index order.
    pub const ALL: [Self; 5] = [
        Self::Issued,
        Self::AccountError,
        Self::OrderError,
        Self::ValidationFailed,
        Self::FinalizeError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::AccountError => "account_error",
            Self::OrderError => "order_error",
            Self::ValidationFailed => "validation_failed",
            Self::FinalizeError => "finalize_error",
        }
    }
}

/// Which ACME challenge answer was served (`derp_acme_challenges_served_total{type}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcmeChallengeKind {
    /// An HTTP-01 token on the `--http-port` listener.
    Http01,
    /// A TLS-ALPN-01 certificate on the main listener.
    TlsAlpn01,
}

/// How one manual certificate reload ended (`derp_cert_reload_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertReloadOutcome {
    /// New files were loaded and are being served.
    Reloaded,
    /// The new files were refused (unreadable, garbage, key mismatch, wrong name); the previous
    /// certificate stays. Counted once per distinct bad content.
    Failed,
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
    /// `derp_clients_remote`: keys known only through mesh links (Go: `gauge_clients_remote`).
    pub clients_remote: Gauge,
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
    packets_dropped: [[Counter; 2]; 8],
    /// `derp_bytes_dropped_total{reason,kind}`.
    bytes_dropped: [[Counter; 2]; 8],
    /// `derp_handshake_failures_total{reason}`.
    handshake_failures: [Counter; 8],
    /// `derp_quic_connections_total{result}`: inbound QUIC connections, by outcome.
    quic_connections: [Counter; 4],
    /// `derp_quic_datagrams_received_total`: QUIC datagrams received from mesh peers and
    /// routed (each is one forwarded packet).
    pub quic_datagrams_received: Counter,
    /// `derp_quic_datagrams_dropped_total{reason}`: QUIC datagrams dropped before routing.
    quic_datagrams_dropped: [Counter; 3],
    /// `derp_peer_gone_frames_total{reason=disconnected}`.
    pub peer_gone_disconnected: Counter,
    /// `derp_peer_gone_frames_total{reason=not_here}`.
    pub peer_gone_not_here: Counter,
    /// `derp_control_dropped_total`: control frames (PeerGone, KeepAlive, Restarting) dropped
    /// because a client's control queue was full. Mesh presence never lands here.
    pub control_dropped: Counter,
    /// `derp_mesh_presence_updates_total{result=queued}`: presence changes (a key connected
    /// or left, or a WatchConns flood entry) that added a key to a mesh watcher's pending set.
    pub mesh_presence_queued: Counter,
    /// `derp_mesh_presence_updates_total{result=coalesced}`: presence changes for a key that
    /// was already pending for that watcher, so no extra frame (it gets the latest state).
    pub mesh_presence_coalesced: Counter,
    /// `derp_mesh_watchers_closed_total{reason=presence_backlog}`: mesh watchers closed
    /// because more keys were pending than `relay.mesh_presence_pending_max`.
    pub mesh_watchers_closed_backlog: Counter,
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
    /// `derp_mesh_dns_lookups_total{result}`: DNS membership lookups, by outcome.
    mesh_dns_lookups: [Counter; 3],
    /// `derp_mesh_dns_peers`: mesh peers the DNS sources currently name, summed over sources
    /// (each source adds and subtracts its own changes).
    pub mesh_dns_peers: Gauge,
    /// `derp_mesh_dns_changes_total{change=added}`: peers that appeared in DNS answers.
    pub mesh_dns_added: Counter,
    /// `derp_mesh_dns_changes_total{change=removed}`: peers that disappeared from DNS answers.
    pub mesh_dns_removed: Counter,
    /// `derp_mesh_dns_truncated_total`: DNS answers with more addresses than `max_peers`, cut
    /// to the first `max_peers` (counted on every lookup that is cut).
    pub mesh_dns_truncated: Counter,
    /// `derp_acme_attempts_total{outcome}`: ACME issuance attempts, by how they ended.
    acme_attempts: [Counter; 5],
    /// `derp_acme_challenges_served_total{type}`: challenge answers served to a validator
    /// (`http-01`, `tls-alpn-01`).
    acme_challenges_served: [Counter; 2],
    /// `derp_acme_renewal_timestamp_seconds`: when the served ACME certificate is due for
    /// renewal (Unix seconds).
    acme_renewal_due: Gauge,
    /// `derp_cert_not_after_timestamp_seconds`: expiry of the certificate served now (Unix
    /// seconds), manual or ACME; alert when it comes close.
    cert_not_after: Gauge,
    /// `derp_cert_reload_total{outcome}`: manual certificate reloads (file change or SIGHUP).
    cert_reloads: [Counter; 2],
    /// `derp_rate_limit_per_client_bytes_per_second` (derper's name): the per-client receive
    /// rate in force, 0 when off.
    rate_limit_bytes_per_second: Gauge,
    /// `derp_rate_limit_per_client_burst_bytes` (derper's name).
    rate_limit_burst_bytes: Gauge,
    /// `derp_rate_limit_per_client_waited` (derper's name): times a client's frame had to wait
    /// for its rate limit.
    pub rate_limit_waited: Counter,
    /// `derp_rate_config_reloads_total{result}`: `--rate-config` reloads applied or refused.
    pub rate_config_reloaded: Counter,
    /// `derp_rate_config_reloads_total{result="error"}`.
    pub rate_config_reload_failed: Counter,
    /// `tls_listener_accepted_connections` (derper's name): connections the accept-rate
    /// limiter let through.
    pub accept_limit_accepted: Counter,
    /// `tls_listener_rejected_connections` (derper's name): connections closed at once by the
    /// accept-rate limiter.
    pub accept_limit_rejected: Counter,
    /// `derp_draining`: 1 while the relay drains.
    pub draining: Gauge,
    /// `derp_write_batch_frames`: frames written per flush.
    pub write_batch_frames: Histogram,
    /// `derp_queue_delay_seconds`: age of the oldest packet in each written batch.
    pub queue_delay: Histogram,
}

impl Metrics {
    /// Describes every metric and builds the handles. Call after installing the recorder.
    pub fn new() -> Self {
        describe();
        let kinds = PacketKind::ALL;
        Self {
            accepts: counter!(names::ACCEPTS_TOTAL),
            websocket_accepts: counter!(names::WEBSOCKET_ACCEPTS_TOTAL),
            current_connections: gauge!(names::CURRENT_CONNECTIONS),
            current_home_connections: gauge!(names::CURRENT_HOME_CONNECTIONS),
            current_dup_client_keys: gauge!(names::CURRENT_DUP_CLIENT_KEYS),
            clients_remote: gauge!(names::CLIENTS_REMOTE),
            dup_client_conns: counter!(names::DUP_CLIENT_CONNS_TOTAL),
            bytes_received: counter!(names::BYTES_RECEIVED_TOTAL),
            bytes_sent: counter!(names::BYTES_SENT_TOTAL),
            packets_received: kinds.map(|k| counter!(names::PACKETS_RECEIVED_TOTAL, "kind" => k.as_str())),
            packets_sent: counter!(names::PACKETS_SENT_TOTAL),
            packets_dropped: DropReason::ALL.map(|r| {
                kinds.map(|k| counter!(names::PACKETS_DROPPED_TOTAL, "reason" => r.as_str(), "kind" => k.as_str()))
            }),
            bytes_dropped: DropReason::ALL.map(|r| {
                kinds.map(|k| counter!(names::BYTES_DROPPED_TOTAL, "reason" => r.as_str(), "kind" => k.as_str()))
            }),
            handshake_failures: HandshakeFailure::ALL
                .map(|r| counter!(names::HANDSHAKE_FAILURES_TOTAL, "reason" => r.as_str())),
            quic_connections: QuicConnResult::ALL
                .map(|r| counter!(names::QUIC_CONNECTIONS_TOTAL, "result" => r.as_str())),
            quic_datagrams_received: counter!(names::QUIC_DATAGRAMS_RECEIVED_TOTAL),
            quic_datagrams_dropped: DatagramDrop::ALL
                .map(|r| counter!(names::QUIC_DATAGRAMS_DROPPED_TOTAL, "reason" => r.as_str())),
            peer_gone_disconnected: counter!(names::PEER_GONE_FRAMES_TOTAL, "reason" => "disconnected"),
            peer_gone_not_here: counter!(names::PEER_GONE_FRAMES_TOTAL, "reason" => "not_here"),
            control_dropped: counter!(names::CONTROL_DROPPED_TOTAL),
            mesh_presence_queued: counter!(names::MESH_PRESENCE_UPDATES_TOTAL, "result" => "queued"),
            mesh_presence_coalesced: counter!(names::MESH_PRESENCE_UPDATES_TOTAL, "result" => "coalesced"),
            mesh_watchers_closed_backlog: counter!(names::MESH_WATCHERS_CLOSED_TOTAL, "reason" => "presence_backlog"),
            got_ping: counter!(names::GOT_PING_TOTAL),
            sent_pong: counter!(names::SENT_PONG_TOTAL),
            unknown_frames: counter!(names::UNKNOWN_FRAMES_TOTAL),
            write_timeouts: counter!(names::WRITE_TIMEOUTS_TOTAL),
            accept_fd_exhausted: counter!(names::ACCEPT_ERRORS_TOTAL, "reason" => "fd_exhausted"),
            accept_other_errors: counter!(names::ACCEPT_ERRORS_TOTAL, "reason" => "other"),
            connection_limit_rejections: counter!(names::CONNECTION_LIMIT_REJECTIONS_TOTAL),
            watchers_dropped: counter!(names::PEER_GONE_WATCHERS_DROPPED_TOTAL),
            forwarders_dropped: counter!(names::FORWARDERS_DROPPED_TOTAL),
            mesh_dns_lookups: DnsLookupResult::ALL
                .map(|r| counter!(names::MESH_DNS_LOOKUPS_TOTAL, "result" => r.as_str())),
            mesh_dns_peers: gauge!(names::MESH_DNS_PEERS),
            mesh_dns_added: counter!(names::MESH_DNS_CHANGES_TOTAL, "change" => "added"),
            mesh_dns_removed: counter!(names::MESH_DNS_CHANGES_TOTAL, "change" => "removed"),
            mesh_dns_truncated: counter!(names::MESH_DNS_TRUNCATED_TOTAL),
            acme_attempts: AcmeOutcome::ALL
                .map(|o| counter!(names::ACME_ATTEMPTS_TOTAL, "outcome" => o.as_str())),
            acme_challenges_served: ["http-01", "tls-alpn-01"]
                .map(|t| counter!(names::ACME_CHALLENGES_SERVED_TOTAL, "type" => t)),
            acme_renewal_due: gauge!(names::ACME_RENEWAL_TIMESTAMP_SECONDS),
            cert_not_after: gauge!(names::CERT_NOT_AFTER_TIMESTAMP_SECONDS),
            cert_reloads: ["reloaded", "failed"]
                .map(|o| counter!(names::CERT_RELOAD_TOTAL, "outcome" => o)),
            rate_limit_bytes_per_second: gauge!(names::RATE_LIMIT_PER_CLIENT_BYTES_PER_SECOND),
            rate_limit_burst_bytes: gauge!(names::RATE_LIMIT_PER_CLIENT_BURST_BYTES),
            rate_limit_waited: counter!(names::RATE_LIMIT_PER_CLIENT_WAITED),
            rate_config_reloaded: counter!(names::RATE_CONFIG_RELOADS_TOTAL, "result" => "ok"),
            rate_config_reload_failed: counter!(names::RATE_CONFIG_RELOADS_TOTAL, "result" => "error"),
            accept_limit_accepted: counter!(names::TLS_LISTENER_ACCEPTED_CONNECTIONS),
            accept_limit_rejected: counter!(names::TLS_LISTENER_REJECTED_CONNECTIONS),
            draining: gauge!(names::DRAINING),
            write_batch_frames: histogram!(names::WRITE_BATCH_FRAMES),
            queue_delay: histogram!(names::QUEUE_DELAY_SECONDS),
        }
    }

    /// Publishes the per-client rate limit in force.
    pub fn rate_config(&self, rc: &crate::limits::RateConfig) {
        self.rate_limit_bytes_per_second
            .set(rc.bytes_per_sec as f64);
        self.rate_limit_burst_bytes.set(rc.burst_bytes as f64);
    }

    /// Counts one dropped packet of `len` bytes.
    pub fn drop_packet(&self, reason: DropReason, kind: PacketKind, len: usize) {
        self.drop_packets(reason, kind, 1, len as u64);
    }

    /// Counts `packets` dropped packets totalling `bytes`.
    pub fn drop_packets(&self, reason: DropReason, kind: PacketKind, packets: u64, bytes: u64) {
        let r = reason as usize;
        self.packets_dropped[r][kind.index()].increment(packets);
        self.bytes_dropped[r][kind.index()].increment(bytes);
    }

    /// Counts one received packet.
    pub fn received_packet(&self, kind: PacketKind, len: usize) {
        self.packets_received[kind.index()].increment(1);
        self.bytes_received.increment(len as u64);
    }

    /// Counts one DNS membership lookup.
    pub fn mesh_dns_lookup(&self, result: DnsLookupResult) {
        self.mesh_dns_lookups[result as usize].increment(1);
    }

    /// Counts one inbound QUIC connection's outcome.
    pub fn quic_connection(&self, result: QuicConnResult) {
        self.quic_connections[result as usize].increment(1);
    }

    /// Counts one QUIC datagram dropped before routing.
    pub fn quic_datagram_dropped(&self, reason: DatagramDrop) {
        self.quic_datagrams_dropped[reason as usize].increment(1);
    }

    /// Counts one failed handshake.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].increment(1);
    }

    /// Counts one ACME issuance attempt.
    pub fn acme_attempt(&self, outcome: AcmeOutcome) {
        self.acme_attempts[outcome as usize].increment(1);
    }

    /// Counts one challenge answer served.
    pub fn acme_challenge_served(&self, kind: AcmeChallengeKind) {
        self.acme_challenges_served[kind as usize].increment(1);
    }

    /// Records when the served ACME certificate is due for renewal.
    pub fn acme_renewal_due(&self, at: std::time::SystemTime) {
        self.acme_renewal_due.set(unix_seconds(at));
    }

    /// Records the expiry of the certificate served now.
    pub fn cert_not_after(&self, at: std::time::SystemTime) {
        self.cert_not_after.set(unix_seconds(at));
    }

    /// Counts one manual certificate reload.
    pub fn cert_reload(&self, outcome: CertReloadOutcome) {
        self.cert_reloads[outcome as usize].increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_seconds(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn describe() {
    describe_counter!(
        names::QUIC_CONNECTIONS_TOTAL,
        "Inbound QUIC mesh connections, by outcome"
    );
    describe_counter!(
        names::QUIC_DATAGRAMS_RECEIVED_TOTAL,
        "QUIC datagrams (forwarded packets) received from mesh peers"
    );
    describe_counter!(
        names::QUIC_DATAGRAMS_DROPPED_TOTAL,
        "QUIC datagrams dropped before routing, by reason"
    );
    describe_counter!(
        names::ACME_ATTEMPTS_TOTAL,
        "ACME certificate issuance attempts, by outcome (issued, account_error, order_error, validation_failed, finalize_error)"
    );
    describe_counter!(
        names::ACME_CHALLENGES_SERVED_TOTAL,
        "ACME challenge answers served to a validator, by type (http-01, tls-alpn-01)"
    );
    describe_gauge!(
        names::ACME_RENEWAL_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "When the served ACME certificate is due for renewal (Unix time)"
    );
    describe_gauge!(
        names::CERT_NOT_AFTER_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Expiry of the TLS certificate served now (Unix time)"
    );
    describe_counter!(
        names::CERT_RELOAD_TOTAL,
        "Manual certificate reloads after a file change or SIGHUP, by outcome (reloaded, failed)"
    );
    describe_counter!(
        names::ACCEPTS_TOTAL,
        "DERP connections that completed the handshake"
    );
    describe_counter!(
        names::WEBSOCKET_ACCEPTS_TOTAL,
        "DERP connections accepted over WebSocket"
    );
    describe_gauge!(names::CURRENT_CONNECTIONS, "DERP connections open now");
    describe_gauge!(
        names::CURRENT_HOME_CONNECTIONS,
        "Connections whose client marked this relay as home"
    );
    describe_gauge!(
        names::CLIENTS_REMOTE,
        "Keys connected to other relays of the region and not here (Go: gauge_clients_remote)"
    );
    describe_gauge!(
        names::CURRENT_DUP_CLIENT_KEYS,
        "Keys with more than one open connection"
    );
    describe_counter!(
        names::DUP_CLIENT_CONNS_TOTAL,
        "Connections that joined an already connected key"
    );
    describe_counter!(
        names::BYTES_RECEIVED_TOTAL,
        Unit::Bytes,
        "Packet bytes received from clients"
    );
    describe_counter!(
        names::BYTES_SENT_TOTAL,
        Unit::Bytes,
        "Packet bytes written to clients"
    );
    describe_counter!(
        names::PACKETS_RECEIVED_TOTAL,
        "Packets received from clients, by kind"
    );
    describe_counter!(names::PACKETS_SENT_TOTAL, "Packets written to clients");
    describe_counter!(
        names::PACKETS_DROPPED_TOTAL,
        "Packets dropped, by reason and kind"
    );
    describe_counter!(
        names::BYTES_DROPPED_TOTAL,
        Unit::Bytes,
        "Packet bytes dropped, by reason and kind"
    );
    describe_counter!(
        names::HANDSHAKE_FAILURES_TOTAL,
        "Connections that failed before or during the DERP handshake, by reason"
    );
    describe_counter!(
        names::PEER_GONE_FRAMES_TOTAL,
        "PeerGone frames queued to clients, by reason"
    );
    describe_counter!(
        names::CONTROL_DROPPED_TOTAL,
        "Control frames (PeerGone, KeepAlive, Restarting) dropped because a client's control queue was full"
    );
    describe_counter!(
        names::MESH_PRESENCE_UPDATES_TOTAL,
        "Presence changes for mesh watchers: queued (a new pending key) or coalesced (the key was already pending)"
    );
    describe_counter!(
        names::MESH_WATCHERS_CLOSED_TOTAL,
        "Mesh watchers closed, by reason (presence_backlog: more keys pending than allowed)"
    );
    describe_counter!(names::GOT_PING_TOTAL, "Ping frames received from clients");
    describe_counter!(names::SENT_PONG_TOTAL, "Pong frames written to clients");
    describe_counter!(
        names::UNKNOWN_FRAMES_TOTAL,
        "Frames of unknown type skipped"
    );
    describe_counter!(
        names::WRITE_TIMEOUTS_TOTAL,
        "Connections closed because a write missed its deadline"
    );
    describe_counter!(names::ACCEPT_ERRORS_TOTAL, "TCP accept failures, by reason");
    describe_gauge!(
        names::RATE_LIMIT_PER_CLIENT_BYTES_PER_SECOND,
        Unit::Bytes,
        "Per-client receive rate limit in force, bytes per second (0: off; derper's name)"
    );
    describe_gauge!(
        names::RATE_LIMIT_PER_CLIENT_BURST_BYTES,
        Unit::Bytes,
        "Per-client receive burst in force, bytes (derper's name)"
    );
    describe_counter!(
        names::RATE_LIMIT_PER_CLIENT_WAITED,
        "Frames that waited for their client's rate limit before being read (derper's name)"
    );
    describe_counter!(
        names::RATE_CONFIG_RELOADS_TOTAL,
        "--rate-config reloads (SIGHUP), by result (ok, error: the previous limit stays)"
    );
    describe_counter!(
        names::TLS_LISTENER_ACCEPTED_CONNECTIONS,
        "Connections let through by the accept-rate limiter (derper's name)"
    );
    describe_counter!(
        names::TLS_LISTENER_REJECTED_CONNECTIONS,
        "Connections closed at accept by the accept-rate limiter (derper's name)"
    );
    describe_gauge!(names::DRAINING, "1 while the relay is draining");
    describe_counter!(
        names::CONNECTION_LIMIT_REJECTIONS_TOTAL,
        "Connections closed at accept because the connection limit was reached"
    );
    describe_counter!(
        names::PEER_GONE_WATCHERS_DROPPED_TOTAL,
        "PeerGone bookkeeping entries not recorded because a key's watcher set was full"
    );
    describe_counter!(
        names::FORWARDERS_DROPPED_TOTAL,
        "Mesh announcements not recorded because a key had the maximum number of forwarders"
    );
    describe_counter!(
        names::MESH_DNS_LOOKUPS_TOTAL,
        "DNS mesh membership lookups, by result (ok, empty, error)"
    );
    describe_gauge!(
        names::MESH_DNS_PEERS,
        "Mesh peers named by the DNS membership sources"
    );
    describe_counter!(
        names::MESH_DNS_CHANGES_TOTAL,
        "Mesh peers added to or removed from the DNS membership, by change"
    );
    describe_counter!(
        names::MESH_DNS_TRUNCATED_TOTAL,
        "DNS membership answers cut to max_peers addresses"
    );
    describe_histogram!(names::WRITE_BATCH_FRAMES, "Frames written per socket flush");
    describe_histogram!(
        names::QUEUE_DELAY_SECONDS,
        Unit::Seconds,
        "Age of the oldest packet in each written batch"
    );
}

/// The `direction="in"` forwarding counters for packets a mesh peer relay called `peer`
/// forwards to us.
pub(crate) fn mesh_inbound(peer: &str) -> (Counter, Counter) {
    let p = peer.to_string();
    (
        counter!(names::MESH_FORWARDED_PACKETS_TOTAL, "peer" => p.clone(), "direction" => "in"),
        counter!(names::MESH_FORWARDED_BYTES_TOTAL, "peer" => p, "direction" => "in"),
    )
}

/// Metrics kept by a recorder of their own, so a unit test can read what it counted.
#[cfg(test)]
pub(crate) fn recorded() -> (Metrics, metrics_exporter_prometheus::PrometheusHandle) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    (
        metrics::with_local_recorder(&recorder, Metrics::new),
        handle,
    )
}

/// One series of [`recorded`] metrics, written as rendered (`name{label="value"}`); 0 if
/// never touched.
#[cfg(test)]
pub(crate) fn sample(handle: &metrics_exporter_prometheus::PrometheusHandle, series: &str) -> f64 {
    handle
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arrays_are_indexed_by_discriminant() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        for (i, k) in PacketKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
        for (i, h) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(*h as usize, i, "{h:?}");
        }
        for (i, r) in DnsLookupResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
