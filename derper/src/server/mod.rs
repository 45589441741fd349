//! The relay core: the handshake, the registry and each connection's tasks.
//!
//! Transports (HTTP upgrade, WebSocket, over TCP or TLS) end in [`Relay::accept`]; nothing
//! below it knows about HTTP or TLS.

mod client;
pub(crate) mod queue;
pub(crate) mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use derp_proto::frame::PeerPresentFlags;
use derp_proto::handshake::{self, ServerInfo};
use derp_proto::io::{FramedRead, FramedWrite, ReadFrameError, Stream};
use derp_proto::{FrameDecoder, HandshakeError, MeshKey, NodePublicKey, NodeSecretKey};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use queue::ConnectionId;
use queue::{ClientShared, Control, QueueDepths};
use registry::{Registry, RegistryLimits};

use crate::defaults;
use crate::metrics::{HandshakeFailure, Metrics};

/// Settings of the relay core.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The server's DERP identity.
    pub secret: NodeSecretKey,
    /// Mesh pre-shared key; connections that present it are privileged.
    pub mesh_key: Option<MeshKey>,
    /// Depth of each client's data and disco queues.
    pub queue_depth: usize,
    /// Depth of each regular client's control queue (PeerGone, Restarting).
    pub control_queue_depth: usize,
    /// Depth of each mesh peer's control queue (a PeerPresent per connected key on WatchConns).
    pub mesh_control_queue_depth: usize,
    /// Per-flush write deadline for regular clients; `None` disables it.
    pub write_timeout: Option<Duration>,
    /// Per-flush write deadline for mesh peers.
    pub mesh_write_timeout: Duration,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// KeepAlive period before jitter.
    pub keepalive: Duration,
    /// Connections allowed per key.
    pub max_conns_per_key: usize,
    /// Receivers remembered per sender for PeerGone.
    pub max_peer_gone_watchers: usize,
}

impl RelayConfig {
    /// Defaults from [`defaults`] with the given key.
    pub fn new(secret: NodeSecretKey) -> Self {
        Self {
            secret,
            mesh_key: None,
            queue_depth: defaults::QUEUE_DEPTH,
            control_queue_depth: defaults::CONTROL_QUEUE_DEPTH,
            mesh_control_queue_depth: defaults::MESH_CONTROL_QUEUE_DEPTH,
            write_timeout: Some(defaults::WRITE_TIMEOUT),
            mesh_write_timeout: defaults::MESH_WRITE_TIMEOUT,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            keepalive: defaults::KEEPALIVE,
            max_conns_per_key: defaults::MAX_CONNS_PER_KEY,
            max_peer_gone_watchers: defaults::MAX_PEER_GONE_WATCHERS,
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
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ConnMeta {
    /// The client's address.
    pub remote: SocketAddr,
    /// The transport.
    pub transport: TransportKind,
    /// The request carried `Ideal-Node`: the client would rather be on another node.
    pub not_ideal: bool,
    /// Write the `101 Switching Protocols` response first, in the same write as ServerKey
    /// (false for fast start, WebSocket, and transports that answered HTTP themselves).
    pub send_upgrade_response: bool,
}

impl ConnMeta {
    /// Metadata for a connection from `remote` over `transport`.
    pub fn new(remote: SocketAddr, transport: TransportKind) -> Self {
        Self {
            remote,
            transport,
            not_ideal: false,
            send_upgrade_response: false,
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
}

pub(crate) struct Inner {
    pub(crate) secret: NodeSecretKey,
    /// The `101 Switching Protocols` response; constant because it names the server key.
    upgrade_response: bytes::Bytes,
    pub(crate) public_key: NodePublicKey,
    pub(crate) config: RelayConfig,
    pub(crate) registry: Registry,
    pub(crate) metrics: Arc<Metrics>,
    next_conn_id: AtomicU64,
    /// Cancelled at shutdown; every connection's token is a child.
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
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
        let limits = RegistryLimits {
            max_conns_per_key: config.max_conns_per_key,
            max_peer_gone_watchers: config.max_peer_gone_watchers,
        };
        Self {
            inner: Arc::new(Inner {
                upgrade_response: bytes::Bytes::from(format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: {}\r\nDerp-Public-Key: {}\r\n\r\n",
                    derp_proto::consts::PROTOCOL_VERSION,
                    config.secret.public_key().to_hex()
                )),
                public_key: config.secret.public_key(),
                secret: config.secret.clone(),
                registry: Registry::new(limits, metrics.clone()),
                metrics,
                config,
                next_conn_id: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The server's DERP public key.
    pub fn public_key(&self) -> NodePublicKey {
        self.inner.public_key
    }

    /// The metrics handles.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Number of distinct keys connected now.
    pub fn client_count(&self) -> usize {
        self.inner.registry.key_count()
    }

    /// Runs a DERP connection to completion: handshake under a deadline, registration, then the
    /// reader here and the writer in a child task. `initial` holds bytes the transport read past
    /// the HTTP request (the start of the DERP stream).
    pub async fn accept<S: Stream>(
        &self,
        io: S,
        initial: BytesMut,
        meta: ConnMeta,
    ) -> Result<(), AcceptError> {
        let conn_id = ConnectionId(self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed));
        let span = tracing::info_span!("conn", id = %conn_id, remote = %meta.remote, key = tracing::field::Empty);
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
        let (r, w) = tokio::io::split(io);
        let mut reader = FramedRead::new(r, FrameDecoder::server(), initial);
        let mut writer = FramedWrite::new(w);

        let hello = match tokio::time::timeout(inner.config.handshake_timeout, async {
            if meta.send_upgrade_response {
                writer.buffer().extend_from_slice(&inner.upgrade_response);
            }
            handshake::write_server_key(writer.buffer(), &inner.public_key);
            writer.flush().await?;
            let frame = reader.read_frame().await?;
            Ok::<_, AcceptError>(handshake::read_client_info(&inner.secret, &frame)?)
        })
        .await
        {
            Err(_) => {
                metrics.handshake_failed(HandshakeFailure::Timeout);
                return Err(AcceptError::Timeout);
            }
            Ok(Err(e)) => {
                metrics.handshake_failed(match e {
                    AcceptError::Io(_)
                    | AcceptError::Read(ReadFrameError::Io(_) | ReadFrameError::Closed) => {
                        HandshakeFailure::Io
                    }
                    _ => HandshakeFailure::Protocol,
                });
                return Err(e);
            }
            Ok(Ok(hello)) => hello,
        };
        tracing::Span::current().record("key", tracing::field::display(hello.client_key.short()));

        let is_mesh = match (&hello.info.mesh_key, &inner.config.mesh_key) {
            (None, _) => false,
            (Some(theirs), Some(ours)) if theirs == ours => true,
            (Some(_), _) => {
                metrics.handshake_failed(HandshakeFailure::MeshKey);
                return Err(AcceptError::MeshKey);
            }
        };
        let mut flags = PeerPresentFlags::default();
        if is_mesh {
            flags = flags | PeerPresentFlags::IS_MESH_PEER;
        }
        if hello.info.is_prober {
            flags = flags | PeerPresentFlags::IS_PROBER;
        }
        if meta.not_ideal {
            flags = flags | PeerPresentFlags::NOT_IDEAL;
        }
        if flags == PeerPresentFlags::default() {
            flags = PeerPresentFlags::IS_REGULAR;
        }

        let cancel = inner.shutdown.child_token();
        let client = Arc::new(ClientShared::new(
            conn_id,
            hello.client_key,
            meta.remote,
            flags,
            is_mesh,
            QueueDepths {
                packets: inner.config.queue_depth,
                control: if is_mesh {
                    inner.config.mesh_control_queue_depth
                } else {
                    inner.config.control_queue_depth
                },
            },
            cancel.clone(),
        ));
        if let Err(e) = inner.registry.register(&client) {
            metrics.handshake_failed(HandshakeFailure::TooManyDups);
            tracing::warn!(error = %e, "refusing connection");
            return Err(AcceptError::TooManyDups(
                hello.client_key.short().to_string(),
            ));
        }
        metrics.accepts.increment(1);
        if meta.transport == TransportKind::WebSocket {
            metrics.websocket_accepts.increment(1);
        }
        metrics.current_connections.increment(1.0);
        tracing::debug!(
            mesh = is_mesh,
            version = hello.info.version,
            "client connected"
        );

        // ServerInfo goes out before the writer starts, so it is always the second frame.
        handshake::write_server_info_to(writer.buffer(), &hello, &ServerInfo::new());
        let write_timeout = if is_mesh {
            Some(inner.config.mesh_write_timeout)
        } else {
            inner.config.write_timeout
        };
        let sent = match write_timeout {
            Some(t) => tokio::time::timeout(t, writer.flush())
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => writer.flush().await,
        };

        if sent.is_ok() {
            // Jitter spreads keepalives of clients that connected together (Go: [0, 5 s)).
            let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..5000));
            let keepalive = inner.config.keepalive + jitter;
            let relay = self.clone();
            let wclient = client.clone();
            let writer_task = inner.tasks.spawn(
                async move {
                    let r = client::write_loop(&relay, &wclient, writer, write_timeout, keepalive)
                        .await;
                    // Whatever ended the writer ends the connection.
                    wclient.cancel.cancel();
                    r
                }
                .in_current_span(),
            );
            let read_result = client::read_loop(self, &client, &mut reader).await;
            cancel.cancel();
            let write_result = writer_task.await;
            match (read_result, write_result) {
                (Err(e), _) => log_conn_end(&e),
                (Ok(()), Ok(Err(e))) => log_conn_end(&e),
                _ => tracing::debug!("client disconnected"),
            }
        } else {
            tracing::debug!("could not write server info");
        }

        cancel.cancel();
        inner.registry.unregister(&client);
        client.drain_as_gone(metrics);
        metrics.current_connections.decrement(1.0);
        Ok(())
    }

    /// Tells every client the server is restarting, then cancels all connections.
    pub async fn shutdown(&self, restart_hint: Duration, grace: Duration) {
        let ms = u32::try_from(restart_hint.as_millis()).unwrap_or(u32::MAX);
        self.inner.registry.send_all(&Control::Restarting {
            reconnect_in_ms: ms,
            try_for_ms: ms.saturating_mul(10).max(60_000),
        });
        // Give writers a moment to flush the Restarting frame.
        tokio::time::sleep(grace).await;
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

fn log_conn_end(e: &client::ConnError) {
    match e {
        client::ConnError::Read(ReadFrameError::Closed) => tracing::debug!("client disconnected"),
        client::ConnError::Read(ReadFrameError::Io(err))
            if matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            tracing::debug!("client reset the connection")
        }
        other => {
            if let Some(suppressed) = crate::log_limit::BAD_CONNECTIONS.allow() {
                tracing::info!(error = %other, suppressed, "closing client connection");
            }
        }
    }
}
