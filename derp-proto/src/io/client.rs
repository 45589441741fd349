//! A small DERP client: dial, upgrade, handshake, then send and receive frames.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::framed::{FramedRead, FramedWrite, ReadFrameError};
use super::tls::{ServerVerify, client_config, server_key_from_certs};
use super::{BoxStream, WsStream};
use crate::consts::{KEY_LEN, MAX_PACKET_SIZE, WEBSOCKET_PROTOCOL};
use crate::error::{DecodeError, HandshakeError};
use crate::frame::{ClientToServer, FrameDecoder, FrameType, ServerToClient, write_frame_header};
use crate::handshake::{self, ClientInfo, ServerInfo};
use crate::key::{MeshKey, NodePublicKey, NodeSecretKey};

/// How the DERP byte stream is carried after HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// `Upgrade: DERP` on HTTP/1.1, as native Tailscale clients do.
    #[default]
    Upgrade,
    /// WebSocket with the `derp` subprotocol, as browser clients do.
    WebSocket,
}

/// Everything needed to open a client connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// `http://host:port/derp` or `https://host[:port]/derp`.
    pub url: String,
    /// The client's node key.
    pub secret: NodeSecretKey,
    /// Upgrade or WebSocket.
    pub transport: Transport,
    /// How to check the server certificate for `https` URLs.
    pub verify: ServerVerify,
    /// Mesh key, for mesh peers and privileged tools.
    pub mesh_key: Option<MeshKey>,
    /// Set the prober flag in ClientInfo.
    pub is_prober: bool,
    /// Budget for dial, TLS, upgrade and handshake together (Go clients use 10 s).
    pub connect_timeout: Duration,
    /// Use fast start when TLS 1.3 reveals the server key through the metacert.
    pub fast_start: bool,
    /// Local address to bind before connecting (spreads load tests over source addresses).
    pub local_addr: Option<IpAddr>,
    /// Connect here instead of resolving the URL host (derper's `--mesh-with host/dialhost`).
    pub dial_addr: Option<SocketAddr>,
}

impl ConnectOptions {
    /// Options with the usual defaults: upgrade transport, WebPKI verification, fast start on,
    /// 10 s budget.
    pub fn new(url: impl Into<String>, secret: NodeSecretKey) -> Self {
        Self {
            url: url.into(),
            secret,
            transport: Transport::Upgrade,
            verify: ServerVerify::WebPki,
            mesh_key: None,
            is_prober: false,
            connect_timeout: Duration::from_secs(10),
            fast_start: true,
            local_addr: None,
            dial_addr: None,
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http(s)://host[:port][/path]`.
    #[error("invalid DERP url {0:?}")]
    InvalidUrl(String),
    /// The connect budget ran out.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// TCP connect failed.
    #[error("dial {addr}: {source}")]
    Dial {
        /// Address dialled.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS handshake failed.
    #[error("tls: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP upgrade was refused or malformed.
    #[error("upgrade refused: {0}")]
    Upgrade(String),
    /// The DERP handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// Reading failed or the connection closed.
    #[error(transparent)]
    Read(#[from] ReadFrameError),
    /// The server sent a malformed frame.
    #[error("bad frame from server: {0}")]
    Decode(#[from] DecodeError),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[source] std::io::Error),
    /// The packet exceeds [`MAX_PACKET_SIZE`].
    #[error("packet of {0} bytes exceeds the 64 KiB limit")]
    PacketTooLarge(usize),
}

/// An established, handshaken DERP connection.
#[derive(Debug)]
pub struct Client {
    reader: ClientReader,
    writer: ClientWriter,
    server_key: NodePublicKey,
    server_info: ServerInfo,
    local_addr: Option<SocketAddr>,
    public_key: NodePublicKey,
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    path_and_query: String,
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let bad = || ClientError::InvalidUrl(url.to_string());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let host = uri.host().ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => crate::consts::DERP_PATH.to_string(),
        Some(p) => p.to_string(),
    };
    Ok(Target {
        tls,
        host,
        port,
        path_and_query,
    })
}

fn host_header(t: &Target) -> String {
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let default = if t.tls { 443 } else { 80 };
    if t.port == default {
        host
    } else {
        format!("{host}:{}", t.port)
    }
}

async fn dial(opts: &ConnectOptions, t: &Target) -> Result<TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> = match opts.dial_addr {
        Some(a) => vec![a],
        None => tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|source| ClientError::Dial {
                addr: format!("{}:{}", t.host, t.port),
                source,
            })?
            .collect(),
    };
    let mut last = None;
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let result = async {
            let socket = socket?;
            if let Some(ip) = opts.local_addr {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(addr).await
        }
        .await;
        match result {
            Ok(s) => {
                // Small frames (pings, disco) must not wait for Nagle.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(source) => {
                last = Some(ClientError::Dial {
                    addr: addr.to_string(),
                    source,
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| ClientError::InvalidUrl(format!("{}: no addresses", t.host))))
}

/// Reads an HTTP response head (bounded) and returns it plus any bytes after it.
async fn read_response_head(io: &mut BoxStream) -> Result<(String, BytesMut), ClientError> {
    const MAX_HEAD: usize = 16 * 1024;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf.split_off(end + 4);
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(ClientError::Upgrade("response header too large".into()));
        }
        buf.reserve(1024);
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|e| ClientError::Read(e.into()))?;
        if n == 0 {
            return Err(ClientError::Upgrade(
                "connection closed during upgrade".into(),
            ));
        }
    }
}

impl Client {
    /// Dials, upgrades and handshakes within `opts.connect_timeout`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, ClientError> {
        tokio::time::timeout(opts.connect_timeout, Self::connect_inner(opts))
            .await
            .map_err(|_| ClientError::Timeout(opts.connect_timeout))?
    }

    async fn connect_inner(opts: &ConnectOptions) -> Result<Self, ClientError> {
        let target = parse_url(&opts.url)?;
        let tcp = dial(opts, &target).await?;
        let local_addr = tcp.local_addr().ok();
        let mut metacert_key = None;
        let stream: BoxStream = if target.tls {
            let connector = TlsConnector::from(client_config(opts.verify.clone()));
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| ClientError::InvalidUrl(opts.url.clone()))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(ClientError::Tls)?;
            let (_, conn) = tls.get_ref();
            if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                metacert_key = conn
                    .peer_certificates()
                    .and_then(server_key_from_certs)
                    .filter(|(_, version)| *version > 0)
                    .map(|(key, _)| NodePublicKey::from_bytes(key));
            }
            Box::new(tls)
        } else {
            Box::new(tcp)
        };

        let info = ClientInfo {
            mesh_key: opts.mesh_key.clone(),
            is_prober: opts.is_prober,
            ..ClientInfo::new()
        };
        let (stream, leftover, fast_key) = match opts.transport {
            Transport::WebSocket => (
                Self::websocket(stream, &target).await?,
                BytesMut::new(),
                None,
            ),
            Transport::Upgrade => {
                let fast_key = metacert_key.filter(|_| opts.fast_start);
                Self::upgrade(stream, &target, opts, &info, fast_key).await?
            }
        };

        let (r, w) = tokio::io::split(stream);
        let mut reader = FramedRead::new(r, FrameDecoder::client(), leftover);
        let mut writer = FramedWrite::new(w);

        let frame = reader.read_frame().await?;
        let server_key = handshake::read_server_key(&frame)?;
        match fast_key {
            // ClientInfo already went out with the request; the ServerKey must agree with the
            // key the metacert promised, or the ClientInfo was sealed to the wrong key.
            Some(k) if k != server_key => {
                return Err(HandshakeError::BadMagic.into());
            }
            Some(_) => {}
            None => {
                handshake::write_client_info(writer.buffer(), &opts.secret, &server_key, &info);
                writer.flush().await.map_err(ClientError::Write)?;
            }
        }
        let frame = reader.read_frame().await?;
        let server_info = handshake::read_server_info(&opts.secret, &server_key, &frame)?;
        Ok(Self {
            reader: ClientReader { inner: reader },
            writer: ClientWriter { inner: writer },
            server_key,
            server_info,
            local_addr,
            public_key: opts.secret.public_key(),
        })
    }

    async fn upgrade(
        mut stream: BoxStream,
        target: &Target,
        opts: &ConnectOptions,
        info: &ClientInfo,
        fast_key: Option<NodePublicKey>,
    ) -> Result<(BoxStream, BytesMut, Option<NodePublicKey>), ClientError> {
        let mut req = BytesMut::with_capacity(512);
        req.put_slice(
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: derp-fleet\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n",
                target.path_and_query,
                host_header(target)
            )
            .as_bytes(),
        );
        if fast_key.is_some() {
            req.put_slice(b"Derp-Fast-Start: 1\r\n");
        }
        req.put_slice(b"\r\n");
        if let Some(key) = fast_key {
            handshake::write_client_info(&mut req, &opts.secret, &key, info);
        }
        stream.write_all(&req).await.map_err(ClientError::Write)?;
        stream.flush().await.map_err(ClientError::Write)?;
        if fast_key.is_some() {
            return Ok((stream, BytesMut::new(), fast_key));
        }
        let (head, rest) = read_response_head(&mut stream).await?;
        let status = head.lines().next().unwrap_or_default().to_string();
        if status.split_whitespace().nth(1) != Some("101") {
            return Err(ClientError::Upgrade(status));
        }
        Ok((stream, rest, None))
    }

    async fn websocket(stream: BoxStream, target: &Target) -> Result<BoxStream, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let scheme = if target.tls { "wss" } else { "ws" };
        let url = format!(
            "{scheme}://{}{}",
            host_header(target),
            target.path_and_query
        );
        let mut request = url
            .into_client_request()
            .map_err(|e| ClientError::Upgrade(e.to_string()))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            http::HeaderValue::from_static(WEBSOCKET_PROTOCOL),
        );
        let (ws, _resp) = tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|e| ClientError::Upgrade(e.to_string()))?;
        Ok(Box::new(WsStream::new(ws)))
    }

    /// This client's own public key.
    pub fn public_key(&self) -> NodePublicKey {
        self.public_key
    }

    /// The server's DERP public key.
    pub fn server_key(&self) -> NodePublicKey {
        self.server_key
    }

    /// What the server said in ServerInfo.
    pub fn server_info(&self) -> ServerInfo {
        self.server_info
    }

    /// The local TCP address of the connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Splits into halves that can live in different tasks.
    pub fn split(self) -> (ClientReader, ClientWriter) {
        (self.reader, self.writer)
    }

    /// Receives the next frame; see [`ClientReader::recv`].
    pub async fn recv(&mut self) -> Result<ServerToClient, ClientError> {
        self.reader.recv().await
    }

    /// Sends one frame and flushes; see [`ClientWriter::send`].
    pub async fn send(&mut self, msg: &ClientToServer) -> Result<(), ClientError> {
        self.writer.send(msg).await
    }

    /// Sends one packet and flushes; see [`ClientWriter::send_packet`].
    pub async fn send_packet(
        &mut self,
        dst: &NodePublicKey,
        packet: &[u8],
    ) -> Result<(), ClientError> {
        self.writer.send_packet(dst, packet).await
    }
}

/// The receiving half of a [`Client`].
pub struct ClientReader {
    inner: FramedRead<ReadHalf<BoxStream>>,
}

impl std::fmt::Debug for ClientReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientReader").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientWriter").finish_non_exhaustive()
    }
}

impl ClientReader {
    /// Receives the next frame from the server.
    ///
    /// Like Tailscale's client, frames that are too short for their type or that only a client
    /// sends are dropped and reading goes on; a stray ServerKey (after fast start) and unknown
    /// frame types are returned as such, and callers usually ignore them.
    pub async fn recv(&mut self) -> Result<ServerToClient, ClientError> {
        loop {
            let frame = self.inner.read_frame().await?;
            if frame.ty == FrameType::SERVER_INFO {
                return Ok(ServerToClient::Unknown {
                    ty: frame.ty,
                    len: frame.len,
                });
            }
            if let Ok(msg) = ServerToClient::decode(frame.ty, frame.payload) {
                return Ok(msg);
            }
        }
    }
}

/// The sending half of a [`Client`].
pub struct ClientWriter {
    inner: FramedWrite<WriteHalf<BoxStream>>,
}

impl ClientWriter {
    /// Queues `msg` without writing; call [`flush`](Self::flush) to send queued frames at once.
    pub fn queue(&mut self, msg: &ClientToServer) {
        msg.encode(self.inner.buffer());
    }

    /// Queues a SendPacket without building a message first.
    pub fn queue_packet(&mut self, dst: &NodePublicKey, packet: &[u8]) -> Result<(), ClientError> {
        if packet.len() > MAX_PACKET_SIZE {
            return Err(ClientError::PacketTooLarge(packet.len()));
        }
        let buf = self.inner.buffer();
        write_frame_header(buf, FrameType::SEND_PACKET, KEY_LEN + packet.len());
        buf.put_slice(dst.as_bytes());
        buf.put_slice(packet);
        Ok(())
    }

    /// Bytes queued and not yet flushed.
    pub fn pending(&self) -> usize {
        self.inner.pending()
    }

    /// Writes all queued frames.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.inner.flush().await.map_err(ClientError::Write)
    }

    /// Sends one frame and flushes.
    pub async fn send(&mut self, msg: &ClientToServer) -> Result<(), ClientError> {
        self.queue(msg);
        self.flush().await
    }

    /// Sends one packet to `dst` and flushes.
    pub async fn send_packet(
        &mut self,
        dst: &NodePublicKey,
        packet: &[u8],
    ) -> Result<(), ClientError> {
        self.queue_packet(dst, packet)?;
        self.flush().await
    }

    /// Closes the write side.
    pub async fn shutdown(&mut self) -> Result<(), ClientError> {
        self.inner.shutdown().await.map_err(ClientError::Write)
    }
}
