//! The relay core, independent of transports: handshake, admission, the registry of the
//! region's keys, forwarding, and each connection's reader and on-demand writer.
//!
//! Transports (HTTP upgrade, WebSocket, over TCP or TLS; later QUIC) end in
//! [`Relay::accept`], which runs one connection as four steps:
//!
//! ```text
//! handshake ─► admit ─► register ─► run (reader task; writer spawned while there is output)
//! ```
//!
//! Nothing below `accept` knows about HTTP or TLS; the transport supplies any bytes that must
//! precede ServerKey (the `101 Switching Protocols` response) in [`ConnMeta::preface`].

mod admission;
pub(crate) mod conn;
pub mod forward;
mod handshake;
pub mod health;
pub mod lifecycle;
pub(crate) mod limiter;
mod reader;
pub(crate) mod registry;
mod writer;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use derp_proto::handshake::{self as proto_handshake, ServerInfo};
use derp_proto::io::{FramedRead, ReadFrameError, Stream};
use derp_proto::{FrameDecoder, HandshakeError, MeshKey, NodePublicKey, NodeSecretKey};
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use conn::ConnectionId;
use conn::{Conn, Control, QueueDepths, Sink};
pub use forward::{ForwardOutcome, Forwarder, ForwarderHandle, LinkId};
pub use health::Problem;
pub use lifecycle::{Lifecycle, Phase};
use registry::{Registry, RegistryLimits};

use crate::admission::Admission;
use crate::config::RelaySettings;
use crate::limits::RateConfig;
use crate::metrics::{HandshakeFailure, Metrics};

/// Settings of the relay core: its identity, and the tunables the config file's `[relay]`
/// section holds (embedded whole, so nothing is copied field by field).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The server's DERP identity.
    pub secret: NodeSecretKey,
    /// Mesh pre-shared key; connections that present it are privileged.
    pub mesh_key: Option<MeshKey>,
    /// Queues, deadlines and bounds, with defaults from [`crate::defaults`].
    pub settings: RelaySettings,
    /// Client admission (webhook, local tailscaled); `None` admits every client.
    pub admission: Option<Arc<Admission>>,
    /// Per-client receive rate limit at start (changed later with [`Relay::set_rate_config`]).
    pub rate: RateConfig,
}

impl RelayConfig {
    /// Default settings with the given key.
    pub fn new(secret: NodeSecretKey) -> Self {
        Self {
            secret,
            mesh_key: None,
            settings: RelaySettings::default(),
            admission: None,
            rate: RateConfig::default(),
        }
    }
}

/// How a connection reached [`Relay::accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// `Upgrade: DERP` (or legacy bare `Upgrade: websocket`).
    Upgrade,
    /// WebSocket with the `derp` subprotocol.
    WebSocket,
}

/// Facts about a connection that the transport learnt before the DERP stream began.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnMeta {
    /// The client's address.
    pub remote: SocketAddr,
    /// The transport.
    pub transport: TransportKind,
    /// The request carried `Ideal-Node`: the client would rather be on another node.
    pub not_ideal: bool,
    /// Bytes written just before ServerKey, in the same write: the transport's
    /// `101 Switching Protocols` response (empty for fast start, WebSocket, and transports
    /// that answered HTTP themselves).
    pub preface: Bytes,
}

impl ConnMeta {
    /// Metadata for a connection from `remote` over `transport`.
    pub fn new(remote: SocketAddr, transport: TransportKind) -> Self {
        Self {
            remote,
            transport,
            not_ideal: false,
            preface: Bytes::new(),
        }
    }
}

/// Why a connection ended before or during its life; logged once by the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// The socket failed during the handshake.
    #[error("handshake i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the handshake rules.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The first frame could not be read.
    #[error("handshake: {0}")]
    Read(#[from] ReadFrameError),
    /// The client presented a mesh key that does not match.
    #[error("wrong mesh key")]
    MeshKey,
    /// Too many connections for this key.
    #[error("key {0} already has the maximum number of connections")]
    TooManyDups(String),
    /// The relay is draining or stopped and takes no new connections.
    #[error("relay is draining")]
    Draining,
    /// Admission refused the client.
    #[error("not admitted: {0}")]
    NotAdmitted(String),
}

/// The context every connection task shares: identity, settings, registry, metrics, and the
/// tracker that owns every connection task.
pub(crate) struct Inner {
    pub(crate) secret: NodeSecretKey,
    pub(crate) public_key: NodePublicKey,
    pub(crate) config: RelayConfig,
    pub(crate) registry: Registry,
    pub(crate) metrics: Arc<Metrics>,
    next_conn_id: AtomicU64,
    lifecycle: Mutex<Lifecycle>,
    /// Cancelled at shutdown; every connection's token is a child.
    pub(crate) shutdown: CancellationToken,
    /// Owns writer tasks (readers are owned by the transport's task that called `accept`).
    pub(crate) tasks: TaskTracker,
    /// Names of the peer relays our mesh links reach, by server key: the `peer` label of
    /// packets those relays forward to us.
    pub(crate) mesh_peer_names:
        std::sync::RwLock<std::collections::HashMap<NodePublicKey, Arc<str>>>,
    /// Region-wide problems sent to clients in Health frames.
    health: Mutex<health::Health>,
    /// The per-client receive rate limit, and a generation readers compare to notice a change
    /// without taking the lock per frame.
    rate: std::sync::RwLock<RateConfig>,
    pub(crate) rate_generation: AtomicU64,
    /// Local connections that are not mesh peers (what a drain waits for).
    regular_conns: AtomicUsize,
}

impl Inner {
    /// The per-flush write deadline for a connection.
    pub(crate) fn write_timeout(&self, is_mesh: bool) -> Option<Duration> {
        if is_mesh {
            Some(self.config.settings.mesh_write_timeout)
        } else {
            self.config.settings.write_timeout
        }
    }

    fn lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Health frame text for `conn`: region-wide problems plus its own rate limiting.
    pub(crate) fn health_text(&self, conn: &Conn) -> String {
        let own = conn
            .rate_limited
            .load(Ordering::Relaxed)
            .then(|| self.rate_limited_text());
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .text(own.as_deref())
    }

    fn rate_limited_text(&self) -> String {
        let rc = self.rate_config();
        format!(
            "this relay limits each client to {} bytes/s and is holding your traffic back",
            rc.bytes_per_sec
        )
    }

    /// The per-client rate limit in force.
    pub(crate) fn rate_config(&self) -> RateConfig {
        *self.rate.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The transport-independent relay. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("public_key", &self.inner.public_key)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Builds a relay.
    pub fn new(config: RelayConfig, metrics: Arc<Metrics>) -> Self {
        let rate = config.rate.applied();
        let limits = RegistryLimits {
            max_conns_per_key: config.settings.max_conns_per_key,
            max_peer_gone_watchers: config.settings.max_peer_gone_watchers,
            max_forwarders_per_key: config.settings.max_forwarders_per_key,
            mesh_presence_pending_max: config.settings.mesh_presence_pending_max,
        };
        Self {
            inner: Arc::new(Inner {
                public_key: config.secret.public_key(),
                secret: config.secret.clone(),
                registry: Registry::new(limits, metrics.clone()),
                metrics,
                config,
                next_conn_id: AtomicU64::new(1),
                lifecycle: Mutex::new(Lifecycle::default()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                mesh_peer_names: Default::default(),
                health: Mutex::new(health::Health::default()),
                rate: std::sync::RwLock::new(rate),
                rate_generation: AtomicU64::new(0),
                regular_conns: AtomicUsize::new(0),
            }),
        }
        .with_rate_gauges()
    }

    fn with_rate_gauges(self) -> Self {
        self.inner.metrics.rate_config(&self.inner.rate_config());
        self
    }

    /// The server's DERP public key.
    pub fn public_key(&self) -> NodePublicKey {
        self.inner.public_key
    }

    /// The server's DERP secret key (mesh links log in with it, as Go's do).
    pub(crate) fn secret(&self) -> &NodeSecretKey {
        &self.inner.secret
    }

    /// The `101 Switching Protocols` response a transport writes as [`ConnMeta::preface`]
    /// for an `Upgrade: DERP` request.
    pub fn upgrade_response(&self) -> Bytes {
        Bytes::from(format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: {}\r\nDerp-Public-Key: {}\r\n\r\n",
            derp_proto::consts::PROTOCOL_VERSION,
            self.inner.public_key.to_hex()
        ))
    }

    /// The metrics handles.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Number of distinct keys connected here now.
    pub fn client_count(&self) -> usize {
        self.inner.registry.key_count()
    }

    /// Where the relay is in its lifecycle.
    pub fn phase(&self) -> Phase {
        self.inner.lifecycle().phase()
    }

    /// Whether the relay takes new connections (false once draining): `/readyz`.
    pub fn is_ready(&self) -> bool {
        self.inner.lifecycle().accepts_new()
    }

    /// Local connections that are not mesh peers.
    pub fn regular_connection_count(&self) -> usize {
        self.inner.regular_conns.load(Ordering::Relaxed)
    }

    /// Each local client that is not a mesh peer, with the address it connected from.
    pub fn regular_clients(&self) -> Vec<(NodePublicKey, std::net::IpAddr)> {
        self.inner
            .registry
            .regular_connections()
            .iter()
            .map(|c| (c.key, c.remote.ip()))
            .collect()
    }

    /// Closes every local connection of `key`. Returns how many there were.
    pub fn close_client(&self, key: &NodePublicKey) -> usize {
        self.inner.registry.close_key(key)
    }

    /// Sets (`Some`) or clears (`None`) a region-wide problem; clients get a Health frame with
    /// the new text when it changed.
    pub fn set_problem(&self, problem: Problem, text: Option<String>) {
        let changed = self
            .inner
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(problem, text);
        if changed {
            self.inner.registry.send_clients(&Control::Health);
        }
    }

    /// Applies a new per-client receive rate limit to every client, connected ones included,
    /// without reconnecting them. Returns what is applied (see [`RateConfig::applied`]).
    pub fn set_rate_config(&self, rc: RateConfig) -> RateConfig {
        let applied = rc.applied();
        *self.inner.rate.write().unwrap_or_else(|e| e.into_inner()) = applied;
        self.inner.rate_generation.fetch_add(1, Ordering::Release);
        self.inner.metrics.rate_config(&applied);
        applied
    }

    /// The per-client receive rate limit in force.
    pub fn rate_config(&self) -> RateConfig {
        self.inner.rate_config()
    }

    /// Makes `key` reachable through a mesh link (the link got PeerPresent for it). Returns
    /// false if the key already has the maximum number of forwarders.
    pub fn add_forwarder(&self, key: NodePublicKey, fwd: ForwarderHandle) -> bool {
        self.inner.registry.add_forwarder(key, fwd)
    }

    /// Records that the relay with server key `key` is the mesh peer called `name` (a link to
    /// it is up), or forgets it (`None`).
    pub(crate) fn name_mesh_peer(&self, key: NodePublicKey, name: Option<Arc<str>>) {
        let mut names = self
            .inner
            .mesh_peer_names
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match name {
            Some(n) => names.insert(key, n),
            None => names.remove(&key),
        };
    }

    /// Withdraws a mesh link's route to `key` (PeerGone on the link).
    pub fn remove_forwarder(&self, key: &NodePublicKey, link: LinkId) {
        self.inner.registry.remove_forwarder(key, link);
    }

    /// Withdraws every route through `link` (the link broke). Returns how many keys it held.
    pub fn remove_link(&self, link: LinkId) -> usize {
        self.inner.registry.remove_link(link)
    }

    /// Runs a DERP connection to completion: handshake under a deadline, admission,
    /// registration, then the reader here (the writer is spawned whenever there is output).
    /// `initial` holds bytes the transport read past the HTTP request (the start of the DERP
    /// stream).
    pub async fn accept<S: Stream>(
        &self,
        io: S,
        initial: BytesMut,
        meta: ConnMeta,
    ) -> Result<(), AcceptError> {
        let conn_id = ConnectionId(self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed));
        // A debug-level span: enabled, it costs ~500 B per connection in the subscriber, so at
        // the default level the few lines logged about a connection carry its fields instead.
        let span = tracing::debug_span!("conn", id = %conn_id, remote = %meta.remote, key = tracing::field::Empty);
        self.accept_inner(io, initial, meta, conn_id)
            .instrument(span)
            .await
    }

    async fn accept_inner<S: Stream>(
        &self,
        io: S,
        initial: BytesMut,
        meta: ConnMeta,
        conn_id: ConnectionId,
    ) -> Result<(), AcceptError> {
        let inner = &self.inner;
        let metrics = &inner.metrics;
        if !inner.lifecycle().accepts_new() {
            return Err(AcceptError::Draining);
        }
        let (r, mut w) = tokio::io::split(io);
        let mut reader = FramedRead::new(r, FrameDecoder::server(), initial);

        // 1. Handshake.
        let hello = handshake::run(inner, &mut reader, &mut w, &meta.preface).await?;
        tracing::Span::current().record("key", tracing::field::display(hello.client_key.short()));

        // 2. Admission.
        let admitted = admission::admit(&hello, &meta, inner.config.mesh_key.as_ref(), metrics)?;
        if let Some(verifier) = &inner.config.admission {
            // Boxed: its state (the webhook call) lives only while admitting, not in every
            // connection's future.
            Box::pin(admission::verify(
                verifier, &hello, &meta, admitted, metrics,
            ))
            .await?;
        }

        // 3. Registration. Frames queued for the connection from here on wait in its outbox
        // until ServerInfo is written, so ServerInfo is always the second frame.
        let conn = Arc::new(Conn::new(
            conn_id,
            hello.client_key,
            meta.remote,
            admitted.flags,
            admitted.is_mesh,
            QueueDepths {
                packets: inner.config.settings.queue_depth,
                control: inner.config.settings.control_queue_depth,
            },
            inner.shutdown.child_token(),
            Arc::downgrade(inner),
        ));
        if let Err(e) = inner.registry.register(&conn) {
            metrics.handshake_failed(HandshakeFailure::TooManyDups);
            tracing::warn!(remote = %meta.remote, key = %hello.client_key.short(), error = %e, "refusing connection");
            return Err(AcceptError::TooManyDups(
                hello.client_key.short().to_string(),
            ));
        }
        metrics.accepts.increment(1);
        if meta.transport == TransportKind::WebSocket {
            metrics.websocket_accepts.increment(1);
        }
        metrics.current_connections.increment(1.0);
        if !admitted.is_mesh {
            inner.regular_conns.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            mesh = admitted.is_mesh,
            version = hello.info.version,
            "client connected"
        );

        // 4. Run. A relay with a problem tells newcomers at once (after ServerInfo).
        if !admitted.is_mesh
            && !inner
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            conn.enqueue_control(Control::Health, metrics);
        }
        let mut info = BytesMut::new();
        proto_handshake::write_server_info_to(&mut info, &hello, &ServerInfo::new());
        let write_info = async {
            w.write_all(&info).await?;
            w.flush().await
        };
        let sent = match inner.write_timeout(admitted.is_mesh) {
            Some(t) => tokio::time::timeout(t, write_info)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => write_info.await,
        };
        drop(info);
        match sent {
            Ok(()) => {
                conn.release_sink(Sink {
                    io: Box::pin(w),
                    seen_src: HashSet::new(),
                });
                // Jitter spreads keepalives of clients that connected together (Go: [0, 5 s)).
                let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..5000));
                let keepalive = inner.config.settings.keepalive + jitter;
                let result = reader::run(inner, &conn, &mut reader, keepalive).await;
                match result {
                    Err(e) => log_conn_end(&conn, &ConnEnd::Read(e)),
                    Ok(()) => tracing::debug!("client disconnected"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not write server info"),
        }

        conn.cancel.cancel();
        inner.registry.unregister(&conn);
        conn.close(metrics);
        // Closes the write half unless a writer still holds it (it ends on the cancel above).
        drop(conn.take_sink());
        metrics.current_connections.decrement(1.0);
        if !admitted.is_mesh {
            inner.regular_conns.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Starts draining: refuses new connections, tells clients in a Health frame (shown by
    /// Tailscale clients as a warning for this region) and a Restarting frame (they come back
    /// after `restart_hint`). Returns false if already draining. Connections stay open; see
    /// [`Relay::drained`] and [`Relay::shutdown`].
    pub fn begin_drain(&self, grace: Duration, restart_hint: Duration) -> bool {
        if !self
            .inner
            .lifecycle()
            .begin_drain(std::time::Instant::now(), grace)
        {
            return false;
        }
        self.set_problem(
            Problem::Draining,
            Some(format!(
                "this relay is draining (shutting down or leaving rotation) and closes its connections within {}; use another relay of the region",
                crate::config::format_go_duration(grace)
            )),
        );
        let ms = u32::try_from(restart_hint.as_millis()).unwrap_or(u32::MAX);
        self.inner.registry.send_all(&Control::Restarting {
            reconnect_in_ms: ms,
            try_for_ms: ms.saturating_mul(10).max(60_000),
        });
        true
    }

    /// Resolves once no client (mesh peers aside) is connected, polling every `poll`.
    pub async fn drained(&self, poll: Duration) {
        while self.regular_connection_count() > 0 {
            tokio::time::sleep(poll).await;
        }
    }

    /// Drains: refuses new connections, tells every client the server is restarting, waits
    /// `grace` for writers to flush, then cancels all connections and waits for their tasks.
    pub async fn shutdown(&self, restart_hint: Duration, grace: Duration) {
        if self.begin_drain(grace, restart_hint) {
            // Not drained before: give writers `grace` to flush the Restarting frames.
            tokio::time::sleep(grace).await;
        }
        self.inner.lifecycle().stop();
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// What ended a connection, for the one log line it gets.
#[derive(Debug)]
pub(crate) enum ConnEnd {
    Read(reader::ReadError),
    Write(writer::WriteError),
}

/// Logs why a connection ended, once, with the connection's identity; ordinary departures
/// at debug level, anything else at info (rate-limited, since peers can trigger it).
pub(crate) fn log_conn_end(conn: &Conn, e: &ConnEnd) {
    let (id, remote, key) = (conn.conn_id, conn.remote, conn.key.short());
    match e {
        ConnEnd::Read(reader::ReadError::Read(ReadFrameError::Closed)) => {
            tracing::debug!(%id, %remote, %key, "client disconnected")
        }
        ConnEnd::Read(reader::ReadError::Read(ReadFrameError::Io(err)))
            if matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            tracing::debug!(%id, %remote, %key, "client reset the connection")
        }
        ConnEnd::Read(other) => {
            if let Some(suppressed) = crate::log_limit::BAD_CONNECTIONS.allow() {
                tracing::info!(%id, %remote, %key, error = %other, suppressed, "closing client connection");
            }
        }
        ConnEnd::Write(other) => {
            if let Some(suppressed) = crate::log_limit::BAD_CONNECTIONS.allow() {
                tracing::info!(%id, %remote, %key, error = %other, suppressed, "closing client connection");
            }
        }
    }
}

#[cfg(test)]
mod tests;
