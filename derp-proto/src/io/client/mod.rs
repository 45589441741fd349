//! A small DERP client: dial, upgrade, handshake, then send and receive frames.
//!
//! The pieces are separate so that each can be reused on its own:
//!
//! * [`dial`](self::dial): [`ConnectOptions`] and [`Client::connect`], which open TCP (and TLS),
//!   then upgrade and handshake. This is what a regular client or the load generator uses.
//! * [`upgrade`](self::upgrade): the HTTP `Upgrade: DERP` request (with fast start) and the
//!   WebSocket alternative, over any [`Stream`].
//! * [`handshake`](self::handshake): [`Client::handshake_over`], the DERP login over any
//!   [`Stream`] that already carries DERP frames: TCP, TLS, WebSocket or a QUIC stream. Mesh
//!   links and alternative transports start here.
//!
//! After the handshake a [`Client`] splits into a [`ClientReader`] and a [`ClientWriter`] that
//! can live in different tasks.

mod dial;
mod handshake;
mod upgrade;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{ReadHalf, WriteHalf};

pub use self::dial::{ConnectOptions, Transport};
pub use self::handshake::HandshakeOptions;
use super::framed::{FramedRead, FramedWrite, ReadFrameError};
use super::{BoxStream, Stream};
use crate::consts::{KEY_LEN, MAX_PACKET_SIZE};
use crate::error::HandshakeError;
use crate::frame::{ClientToServer, FrameType, ServerToClient, write_frame_header};
use crate::handshake::ServerInfo;
use crate::key::{NodePublicKey, SharedBox};

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
    /// After fast start, the ServerKey frame named a different key than the one ClientInfo was
    /// already sealed to (the TLS metacert's), so the server cannot have opened it.
    #[error("server key {got:?} differs from the key {expected:?} ClientInfo was sealed to")]
    ServerKeyMismatch {
        /// The key ClientInfo was sealed to.
        expected: NodePublicKey,
        /// The key the ServerKey frame carried.
        got: NodePublicKey,
    },
    /// The server presented a key the caller refused
    /// ([`HandshakeOptions::refuse_server_key`]); nothing was sent.
    #[error("server key {0:?} refused (it is our own)")]
    RefusedServerKey(NodePublicKey),
    /// Reading failed or the connection closed.
    #[error(transparent)]
    Read(#[from] ReadFrameError),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[source] std::io::Error),
    /// The packet exceeds [`MAX_PACKET_SIZE`].
    #[error("packet of {0} bytes exceeds the 64 KiB limit")]
    PacketTooLarge(usize),
}

/// An established, handshaken DERP connection over the stream `S`.
///
/// [`Client::connect`] yields a `Client<BoxStream>` whatever the transport;
/// [`Client::handshake_over`] keeps the caller's stream type.
pub struct Client<S = BoxStream> {
    reader: ClientReader<S>,
    writer: ClientWriter<S>,
    server_key: NodePublicKey,
    server_info: ServerInfo,
    local_addr: Option<SocketAddr>,
    public_key: NodePublicKey,
    /// The box sealed ClientInfo and opened ServerInfo, kept for [`Client::shared_box`].
    shared_box: SharedBox,
}

impl<S> std::fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server_key", &self.server_key)
            .field("server_info", &self.server_info)
            .field("local_addr", &self.local_addr)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl<S: Stream> Client<S> {
    /// This client's own public key.
    pub fn public_key(&self) -> NodePublicKey {
        self.public_key
    }

    /// The server's DERP public key.
    pub fn server_key(&self) -> NodePublicKey {
        self.server_key
    }

    /// The server's key and the box this client's key shares with it, for
    /// [`ConnectOptions::shared_box`](crate::io::ConnectOptions::shared_box) on a reconnect.
    pub fn shared_box(&self) -> (NodePublicKey, SharedBox) {
        (self.server_key, self.shared_box.clone())
    }

    /// What the server said in ServerInfo.
    pub fn server_info(&self) -> ServerInfo {
        self.server_info
    }

    /// The local TCP address of the connection, if it was dialled by [`Client::connect`].
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Splits into halves that can live in different tasks.
    pub fn split(self) -> (ClientReader<S>, ClientWriter<S>) {
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
pub struct ClientReader<S = BoxStream> {
    inner: FramedRead<ReadHalf<S>>,
}

impl<S> std::fmt::Debug for ClientReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientReader").finish_non_exhaustive()
    }
}

impl<S: Stream> ClientReader<S> {
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
                    len: frame.payload.len(),
                });
            }
            if let Ok(msg) = ServerToClient::decode(frame.ty, frame.payload) {
                return Ok(msg);
            }
        }
    }
}

/// The sending half of a [`Client`].
pub struct ClientWriter<S = BoxStream> {
    inner: FramedWrite<WriteHalf<S>>,
}

impl<S> std::fmt::Debug for ClientWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientWriter").finish_non_exhaustive()
    }
}

impl<S: Stream> ClientWriter<S> {
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
