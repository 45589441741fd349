//! Every default, with the reason for its value.

use std::time::Duration;

/// Depth of each client's data and disco queues. Go derper uses 32: deep enough to absorb a
/// burst between two writer wake-ups, shallow enough that a stalled client holds at most
/// 32 × 64 KiB per lane and that latency under overload stays low (old packets are dropped).
pub const QUEUE_DEPTH: usize = 32;

/// Depth of a regular client's control queue: PeerGone for peers that left since the writer
/// last ran. Far more than a burst of simultaneous departures a client normally sees; the
/// queue allocates as it fills, so the bound costs an idle connection nothing.
pub const CONTROL_QUEUE_DEPTH: usize = 1024;

/// Depth of a mesh peer's control queue: on WatchConns it gets one PeerPresent per connected
/// key at once, so this bounds the keys a region can hold without dropping presence updates.
pub const MESH_CONTROL_QUEUE_DEPTH: usize = 256 * 1024;

/// Write deadline per flush for regular clients (Go: `-tcp-write-timeout`, 2 s).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Write deadline per flush for mesh peers (Go: 30 s); they carry many clients' traffic.
pub const MESH_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Time a client has to send ClientInfo (Go: 10 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// KeepAlive period before jitter (Go: 60 s; clients give up after 120 s of silence).
pub const KEEPALIVE: Duration = Duration::from_secs(60);

/// Connections per key. A reconnecting client briefly holds two; a cloned key a few more.
/// Beyond this a key is misbehaving and new connections are refused.
pub const MAX_CONNS_PER_KEY: usize = 64;

/// Mesh links that may announce one key: one per other node of a region, with room for a
/// region of 16 nodes. More announcers add nothing (the first is used until it goes).
pub const MAX_FORWARDERS_PER_KEY: usize = 16;

/// Receivers remembered per sender for PeerGone. A node talks to at most a few thousand peers.
pub const MAX_PEER_GONE_WATCHERS: usize = 16 * 1024;

/// Reserve of file descriptors kept free below the process limit when deriving the default
/// connection limit: listeners, STUN sockets, metrics, log files.
pub const FD_RESERVE: u64 = 64;

/// How long accept pauses after the process ran out of file descriptors, so the loop does
/// not spin while existing clients go on.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Budget for reading the HTTP request head before the DERP stream starts.
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest HTTP request head accepted on the DERP listener.
pub const MAX_HTTP_HEAD: usize = 16 * 1024;

/// Time given to writers to flush the Restarting frame at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Reconnect hint sent in Restarting at shutdown.
pub const RESTART_HINT: Duration = Duration::from_secs(5);

/// Dev-mode main listener (Go: `:3340`), on loopback so `--dev` exposes nothing.
pub const DEV_ADDR: &str = "127.0.0.1:3340";

/// STUN port (Go: 3478).
pub const STUN_PORT: u16 = 3478;
