//! Every default, with the reason for its value.

use std::time::Duration;

/// Depth of each client's data and disco queues. Go derper uses 32: deep enough to absorb a
/// burst between two writer wake-ups, shallow enough that a stalled client holds at most
/// 32 × 64 KiB per lane and that latency under overload stays low (old packets are dropped).
pub const QUEUE_DEPTH: usize = 32;

/// Depth of a client's control queue: PeerGone for peers that left since the writer last ran,
/// KeepAlive, Restarting. Far more than a burst of simultaneous departures a client normally
/// sees; the queue allocates as it fills, so the bound costs an idle connection nothing. Mesh
/// peers use it too: the presence updates they watch wait in their own coalescing set (see
/// [`MESH_PRESENCE_PENDING_MAX`]), not here.
pub const CONTROL_QUEUE_DEPTH: usize = 1024;

/// Keys a mesh watcher may have waiting for a presence frame. A key waits at most once (a
/// newer change to a waiting key replaces it), so only more distinct keys changing than the
/// watcher reads reach this: on WatchConns one per locally connected key, and a node holds
/// well under a million connections (file descriptors and memory run out first). Past the
/// cap the watcher is hopelessly behind and is closed; it reconnects and gets a fresh flood.
/// A waiting key costs about 70 bytes, so a watcher at the cap holds ~70 MiB.
pub const MESH_PRESENCE_PENDING_MAX: usize = 1 << 20;

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

/// Largest WebSocket message (and frame) read from a DERP WebSocket client: a DERP frame is at
/// most 64 KiB of packet plus keys, so anything much larger is abuse.
pub const MAX_WEBSOCKET_MESSAGE: usize = 1 << 20;

/// Time given to writers to flush the Restarting frame at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Reconnect hint sent in Restarting at shutdown.
pub const RESTART_HINT: Duration = Duration::from_secs(5);

/// Serve `/derp` (Go: `-derp true`); off only for a STUN-and-probes-only node.
pub const SERVE_DERP: bool = true;

/// Home page (Go: `-home ""`): empty means the built-in page that says what this server is.
pub const HOME_PAGE: &str = "";

/// Run the embedded STUN server (Go: `-stun true`): clients need STUN to find their public
/// address, and the region's DERP node is where they look for it.
pub const RUN_STUN: bool = true;

/// Main listener (Go: `-a :443`): HTTPS on all addresses, dual-stack.
pub const ADDR: &str = ":443";

/// Plain-HTTP companion port served alongside TLS (Go: `-http-port 80`), for captive-portal
/// checks and redirects to HTTPS.
pub const HTTP_PORT: i32 = 80;

/// TCP keepalive idle time on accepted connections (Go: `-tcp-keepalive-time 10m`): finds
/// dead idle connections within minutes without probing idle clients often.
pub const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(10 * 60);

/// `TCP_USER_TIMEOUT` on accepted connections (Go: `-tcp-user-timeout 15s`): a peer that
/// vanished with data in flight is dropped after 15 s instead of Linux's ~15-minute
/// retransmission give-up.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// Certificate mode (Go: `-certmode letsencrypt`). Kept as Go's default so existing command
/// lines mean the same: when it is only the default, TLS (and so ACME) runs only on port 443,
/// as in Go; written explicitly, it serves TLS on any port (see `config::into_server_config`).
pub const CERT_MODE: &str = "letsencrypt";

/// ACME directory (`--acme-directory`): Let's Encrypt production, as Go's autocert uses.
pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// ACME challenge selection (`--acme-challenge`): `auto` picks TLS-ALPN-01 when the main
/// listener is on port 443 (where CAs connect), else HTTP-01 when `--http-port` is served.
pub const ACME_CHALLENGE: &str = "auto";

/// Fraction of a certificate's lifetime after which it is renewed: 2/3, so a 90-day Let's
/// Encrypt certificate is renewed 30 days before it expires (Let's Encrypt's advice), leaving
/// weeks of retries if the CA is down.
pub const ACME_RENEW_NUMERATOR: u32 = 2;
/// Denominator of [`ACME_RENEW_NUMERATOR`].
pub const ACME_RENEW_DENOMINATOR: u32 = 3;

/// First delay before retrying a failed ACME issuance. Let's Encrypt allows 5 failed
/// validations per hostname per hour, so retries start slow and double.
pub const ACME_RETRY_MIN: Duration = Duration::from_secs(60);

/// Longest delay between ACME retries: an outage of the CA is retried hourly.
pub const ACME_RETRY_MAX: Duration = Duration::from_secs(60 * 60);

/// Budget for one ACME HTTP request (connect, TLS, request, whole response).
pub const ACME_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest ACME response read (a certificate chain is a few KiB).
pub const ACME_MAX_RESPONSE: usize = 1024 * 1024;

/// How long one order may wait for the CA to validate and issue before it counts as failed
/// and is retried from the start.
pub const ACME_ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Hostnames one ACME certificate may cover (Let's Encrypt allows 100 names per order).
pub const ACME_MAX_HOSTNAMES: usize = 100;

/// How often manual certificate files are checked for a change (content hash, so a Kubernetes
/// Secret volume's symlink swap is seen, which inotify on the file would miss). Reading two
/// small files every 10 s costs nothing; a renewed certificate is served within seconds of
/// the kubelet writing it (itself up to a minute after the Secret changed).
pub const CERT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// TLS server name (Go: `-hostname derp.tailscale.com`).
pub const HOSTNAME: &str = "derp.tailscale.com";

/// Certificate directory below the user's cache directory (`$XDG_CACHE_HOME`, else
/// `$HOME/.cache`), as Go's `-certdir` default `tailscale/derper-certs`.
pub const CERT_DIR_IN_CACHE: &str = "tailscale/derper-certs";

/// Key file used when running as root without `-c` (Go: the same path), so a packaged
/// service keeps its identity across restarts.
pub const ROOT_KEY_FILE: &str = "/var/lib/derper/derper.key";

/// Dev-mode main listener (Go: `:3340`), on loopback so `--dev` exposes nothing.
pub const DEV_ADDR: &str = "127.0.0.1:3340";

/// STUN port (Go: 3478).
pub const STUN_PORT: u16 = 3478;

/// ForwardPacket frames one mesh link may queue: a burst of 8 192 packets (about 10 MiB of
/// 1 280-byte packets at most, capped by bytes below) rides out a brief stall of the link.
pub const MESH_LINK_QUEUE_PACKETS: usize = 8 * 1024;

/// Bytes one mesh link may queue; bounds the memory a stalled peer relay can pin.
pub const MESH_LINK_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Silence on a mesh link before it pings; three silent intervals (15 s) end the connection,
/// well inside the peer's 60 s keepalive plus jitter.
pub const MESH_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Budget for dialling a mesh peer, as Go's clients use.
pub const MESH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// First reconnect delay of a mesh link.
pub const MESH_RECONNECT_MIN: Duration = Duration::from_millis(50);

/// Longest reconnect delay of a mesh link: a restarted peer carries cross-node traffic again
/// within about a second of accepting connections (Go retries every 5 s).
pub const MESH_RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Keys one mesh link may announce (a peer relay's clients); more are refused and counted.
pub const MESH_MAX_KEYS_PER_LINK: usize = 1 << 20;

/// How often a DNS mesh source re-resolves its name. Kubernetes' CoreDNS serves records with a
/// 5 s TTL and a pod becomes ready within seconds, so 10 s finds a new relay of the region
/// about as fast as its clients do, at one query pair per relay per 10 s.
pub const MESH_DNS_INTERVAL: Duration = Duration::from_secs(10);

/// Deadline for one DNS mesh lookup round (every query it makes, SRV targets included); the
/// resolver's default per-query timeout, so a round never outlives a normal resolver's patience.
pub const MESH_DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Most mesh peers one DNS source may name. A region is a handful of relays; 64 leaves room
/// for large ones while a misconfigured name (a Service of thousands of pods) cannot make a
/// relay dial thousands of links.
pub const MESH_DNS_MAX_PEERS: usize = 64;

/// Deadline for admitting one connection, waiting for a free call slot included (Go: 5 s
/// per webhook request). A hanging webhook costs each connection this much, no more.
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an allow is reused. Reconnect storms (a restart, a flapping network) come back
/// within seconds to minutes, so two minutes absorbs them; a node removed from the tailnet
/// meanwhile is caught by re-verification, not by this TTL.
pub const ADMISSION_POSITIVE_TTL: Duration = Duration::from_secs(120);

/// How long a deny is reused: short, so a node just added to the tailnet gets in quickly,
/// while a key hammering the relay asks the webhook at most once per 10 s.
pub const ADMISSION_NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// How often connected clients are verified again: a node removed from the tailnet is
/// disconnected within this plus one webhook deadline (well within two minutes).
pub const ADMISSION_REVERIFY_INTERVAL: Duration = Duration::from_secs(60);

/// Keys the admission cache holds (about 100 bytes each: 13 MiB at most). Above the
/// connections one relay carries, so a storm of distinct keys is still answered from it.
pub const ADMISSION_CACHE_MAX_ENTRIES: usize = 128 * 1024;

/// Admission questions in flight at once, across keys: a reconnect storm reaches the
/// webhook as at most this many concurrent requests instead of one per client.
pub const ADMISSION_MAX_IN_FLIGHT: usize = 64;

/// Largest webhook or LocalAPI answer read (Go reads 4 KiB of the webhook's).
pub const ADMISSION_MAX_RESPONSE: usize = 4 * 1024;

/// Idle time after which a kept-alive connection to the webhook is closed.
pub const ADMISSION_IDLE_CONNECTION: Duration = Duration::from_secs(90);

/// tailscaled's LocalAPI socket on Linux (Go derper's `--socket` default).
pub const TAILSCALED_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

/// How long the "rate limited" Health line stays after a client last waited for its rate
/// limit: long enough that a client sending at the limit does not see it flicker.
pub const RATE_LIMITED_HEALTH_HOLD: Duration = Duration::from_secs(5);

/// Grace a drain gives clients to leave before the rest are closed (`--drain-grace`); under
/// Kubernetes' default 30 s termination grace, with time left to close and exit.
pub const DRAIN_GRACE: Duration = Duration::from_secs(25);

/// How often a drain checks whether every client has left.
pub const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Log output format (`--log-format`): human-readable text.
pub const LOG_FORMAT: &str = "text";

/// How often `/bootstrap-dns` names are resolved again (derper: every 10 minutes).
pub const BOOTSTRAP_DNS_REFRESH: Duration = Duration::from_secs(600);

/// How often the Prometheus recorder's upkeep runs (the exporter's own listener uses 5 s).
pub const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How long `/derpmap` keeps a peer after it was last seen healthy: longer than a relay pod's
/// restart, so one restart does not move every client's home node, and short enough that a
/// relay that is gone stops being offered within a minute.
pub const DERP_MAP_KEEP: Duration = Duration::from_secs(60);
/// Inbound QUIC connections open at once. Only mesh peers may use QUIC and a region is a
/// handful of relays; 256 leaves room for reconnect overlap while a flood of handshakes
/// cannot pin unbounded state (more are refused before any crypto and counted).
pub const QUIC_MAX_CONNECTIONS: usize = 256;

/// QUIC keep-alive on mesh connections: a PING every 5 s keeps NAT and firewall state fresh
/// and lets the idle timeout below notice a dead path, like the DERP Ping of TCP links.
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A QUIC mesh connection silent this long is dead (three keep-alives missed, the same
/// 15 s a TCP link allows its Pings).
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// RTT a QUIC mesh connection assumes before it has measured one (quinn's default is 333 ms).
/// The relays of a region sit close together; a low guess makes a lost Initial (a peer that is
/// restarting, UDP still closed) retransmit within about 200 ms instead of about a second, so a
/// restarted relay is linked again about as fast as over TCP. A wrong guess costs one early
/// retransmission.
pub const QUIC_INITIAL_RTT: Duration = Duration::from_millis(50);

/// Bytes of datagrams quinn may hold for sending on one mesh connection. Small on purpose:
/// WireGuard prefers loss to delay, and 256 KiB is about 2 ms at 1 Gbit/s; behind it the
/// link's own queue (`mesh.queue_packets`/`queue_bytes`) head-drops and counts.
pub const QUIC_DATAGRAM_SEND_BUFFER: usize = 256 * 1024;

/// Bytes of received datagrams quinn may hold before the reader takes them (the oldest are
/// dropped by quinn beyond it); 1 MiB is a few milliseconds of a busy link.
pub const QUIC_DATAGRAM_RECEIVE_BUFFER: usize = 1024 * 1024;

/// Bidirectional streams a QUIC mesh peer may open: the DERP stream only. A peer that opens
/// more is stopped by QUIC flow control, not by us.
pub const QUIC_MAX_BIDI_STREAMS: u32 = 1;

/// Time an `auto://` mesh link gives QUIC before dialling TCP/TLS instead (UDP blocked
/// looks like silence, not refusal). A QUIC handshake is one round trip, so 3 s is
/// generous on any real path and still brings the link up over TCP within a few seconds.
pub const MESH_QUIC_FALLBACK_AFTER: Duration = Duration::from_secs(3);

/// How often an `auto://` link running over TCP tries QUIC again (and moves back to it when
/// it answers). A minute keeps the probes cheap; a link is rarely on TCP for long.
pub const MESH_QUIC_RETRY_INTERVAL: Duration = Duration::from_secs(60);
