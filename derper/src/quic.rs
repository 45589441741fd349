//! The QUIC mesh transport (quinn + rustls): a transport adapter that ends in
//! [`Relay::accept_with_datagrams`], and the dialler our mesh links use.
//!
//! ```text
//! UDP --quic-port ─► quinn Endpoint (ALPN derp-mesh/1, the main listener's certificate)
//!   └► connection ─► we open the one bidirectional stream ─► Relay::accept (ServerKey first,
//!                    as on every transport; mesh key required)
//!                 └► datagrams ─► the connection's reader (FORWARD, derp_proto::datagram)
//! ```
//!
//! The relay opens the DERP stream because a DERP server speaks first; a peer may open no
//! stream at all (its stream limits are 0), so "many streams" is refused by QUIC flow control.
//! Only mesh peers may log in ([`ConnMeta::mesh_only`]): the mesh-key check and admission are
//! the same code as for TCP. Datagrams before the login are dropped and counted by the core.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use derp_proto::NodeSecretKey;
use derp_proto::datagram::ALPN;
use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{BoxStream, Client, ClientError, HandshakeOptions};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use tokio::io::Join;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::defaults;
use crate::metrics::QuicConnResult;
use crate::relay::{ConnMeta, DatagramFuture, DatagramSource, Relay, TransportKind};

/// A QUIC bidirectional stream as one byte stream (the DERP stream of a mesh connection).
pub type QuicStream = Join<RecvStream, SendStream>;

/// Application close code: the connection ended normally.
const CLOSE_DONE: VarInt = VarInt::from_u32(0);
/// Application close code: the DERP login was refused (no or wrong mesh key).
const CLOSE_REFUSED: VarInt = VarInt::from_u32(1);

/// Why the QUIC listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The TLS configuration cannot be used for QUIC (it needs TLS 1.3).
    #[error("QUIC TLS config: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("bind QUIC on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Transport parameters of every mesh connection. `accept_streams`: bidirectional streams the
/// other side may open (the dialler accepts the relay's one DERP stream; the relay none).
fn transport_config(accept_streams: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(accept_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(defaults::QUIC_KEEP_ALIVE))
        .initial_rtt(defaults::QUIC_INITIAL_RTT)
        .max_idle_timeout(
            // 15 s is far below QUIC's 2^62 µs ceiling.
            quinn::IdleTimeout::try_from(defaults::QUIC_IDLE_TIMEOUT).ok(),
        )
        .datagram_receive_buffer_size(Some(defaults::QUIC_DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(defaults::QUIC_DATAGRAM_SEND_BUFFER);
    t
}

/// The main listener's TLS config (same certificate resolver, so SIGHUP reloads reach QUIC
/// too) with the mesh ALPN instead of `http/1.1`.
fn server_config(tls: &rustls::ServerConfig) -> Result<quinn::ServerConfig, QuicError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(0)));
    Ok(config)
}

/// The endpoint's stateless-reset key and connection-ID key, derived from the relay's private
/// key so both survive a restart: a peer whose link still points at our previous life sends
/// to a connection ID we still recognise as ours, gets a valid stateless reset, and reconnects
/// at once instead of waiting out the idle timeout (the QUIC counterpart of the RST a
/// restarted TCP listener sends).
fn endpoint_config(secret: &NodeSecretKey) -> quinn::EndpointConfig {
    use sha2::{Digest, Sha256};
    let derive = |label: &[u8]| {
        let mut h = Sha256::new();
        h.update(label);
        h.update(secret.to_bytes());
        h.finalize()
    };
    let reset = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &derive(b"derp-mesh/1 QUIC stateless reset key"),
    );
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derive(b"derp-mesh/1 QUIC connection ID key")[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// Binds the QUIC mesh listener on `addr` with the main listener's TLS config; `secret` is
/// the relay's key (see [`endpoint_config`]).
pub fn bind(
    addr: SocketAddr,
    tls: &rustls::ServerConfig,
    secret: &NodeSecretKey,
) -> Result<Endpoint, QuicError> {
    let config = server_config(tls)?;
    let bind_err = |source| QuicError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
    Endpoint::new(
        endpoint_config(secret),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)
}

/// Accepts QUIC connections until `cancel` fires; each runs in a task of `tasks`. At most
/// [`defaults::QUIC_MAX_CONNECTIONS`] are open at once; more are refused before any crypto.
pub async fn serve(
    endpoint: Endpoint,
    relay: Relay,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(defaults::QUIC_MAX_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            relay.metrics().quic_connection(QuicConnResult::Limit);
            incoming.refuse();
            continue;
        };
        let relay = relay.clone();
        tasks.spawn(async move {
            serve_connection(incoming, &relay).await;
            drop(permit);
        });
    }
    // CONNECTION_CLOSE to every peer at once: their links notice as promptly as `Restarting`
    // would tell them, and the UDP port is free for the relay's next start.
    endpoint.close(CLOSE_DONE, b"relay stopping");
}

async fn serve_connection(incoming: quinn::Incoming, relay: &Relay) {
    let remote = incoming.remote_address();
    let metrics = relay.metrics().clone();
    let deadline = relay.inner.config.settings.handshake_timeout;
    let connected = tokio::time::timeout(deadline, async {
        let conn = incoming.accept()?.await?;
        let (send, recv) = conn.open_bi().await?;
        Ok::<_, quinn::ConnectionError>((conn, send, recv))
    })
    .await;
    let (conn, send, recv) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            metrics.quic_connection(QuicConnResult::HandshakeFailed);
            if let Some(suppressed) = crate::log_limit::BAD_CONNECTIONS.allow() {
                tracing::info!(%remote, error = %e, suppressed, "QUIC handshake failed");
            }
            return;
        }
        Err(_) => {
            metrics.quic_connection(QuicConnResult::HandshakeFailed);
            return;
        }
    };
    let mut meta = ConnMeta::new(remote, TransportKind::Quic);
    meta.mesh_only = true;
    let datagrams = Box::new(QuinnDatagrams(conn.clone()));
    let stream = tokio::io::join(recv, send);
    match relay
        .accept_with_datagrams(stream, BytesMut::new(), meta, Some(datagrams))
        .await
    {
        Ok(()) => {
            metrics.quic_connection(QuicConnResult::Mesh);
            conn.close(CLOSE_DONE, b"");
        }
        Err(e) => {
            metrics.quic_connection(QuicConnResult::Refused);
            if let Some(suppressed) = crate::log_limit::BAD_CONNECTIONS.allow() {
                tracing::info!(%remote, error = %e, suppressed, "refused QUIC connection");
            }
            conn.close(CLOSE_REFUSED, b"refused");
        }
    }
}

/// A quinn connection's datagrams, for the relay core.
struct QuinnDatagrams(quinn::Connection);

impl DatagramSource for QuinnDatagrams {
    fn recv(&mut self) -> DatagramFuture {
        let conn = self.0.clone();
        // quinn's read_datagram loses nothing when dropped before it completes.
        Box::pin(async move { conn.read_datagram().await.ok() })
    }
}

/// Dials mesh peers over QUIC from one client endpoint per address family, made on first use
/// and shared by every link.
#[derive(Debug, Default)]
pub(crate) struct QuicDialer {
    endpoints: Mutex<[Option<Endpoint>; 2]>,
}

/// A DERP client logged in over QUIC, and the connection its datagrams go through.
pub(crate) struct QuicClient {
    pub(crate) client: Client,
    pub(crate) conn: quinn::Connection,
}

impl QuicDialer {
    fn endpoint(&self, v6: bool) -> Result<Endpoint, ClientError> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut endpoints[usize::from(v6)];
        if let Some(e) = slot {
            return Ok(e.clone());
        }
        let any = if v6 {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        let endpoint = Endpoint::client(any).map_err(|source| ClientError::Dial {
            addr: any.to_string(),
            source,
        })?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Connects to `addr` (TLS name `server_name`, checked by `verify`), accepts the relay's
    /// DERP stream and logs in, all within `timeout`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        verify: ServerVerify,
        secret: &NodeSecretKey,
        opts: &HandshakeOptions,
        timeout: Duration,
    ) -> Result<QuicClient, ClientError> {
        let dial_err = |e: &dyn std::fmt::Display| ClientError::Dial {
            addr: format!("quic://{addr}"),
            source: std::io::Error::other(e.to_string()),
        };
        let mut tls = (*derp_proto::io::tls::client_config(verify)).clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| dial_err(&e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(1)));
        let endpoint = self.endpoint(addr.is_ipv6())?;
        let login = async {
            let conn = endpoint
                .connect_with(config, addr, server_name)
                .map_err(|e| dial_err(&e))?
                .await
                .map_err(|e| dial_err(&e))?;
            let (send, recv) = conn.accept_bi().await.map_err(|e| dial_err(&e))?;
            let stream: BoxStream = Box::new(tokio::io::join(recv, send));
            let client = Client::handshake_over(stream, BytesMut::new(), secret, opts).await?;
            Ok(QuicClient { client, conn })
        };
        tokio::time::timeout(timeout, login)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}
