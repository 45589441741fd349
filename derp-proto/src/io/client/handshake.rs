//! The DERP login over a stream that already carries DERP frames.

use bytes::BytesMut;

use super::{Client, ClientError, ClientReader, ClientWriter};
use crate::frame::FrameDecoder;
use crate::handshake::{self, ClientInfo};
use crate::io::Stream;
use crate::io::framed::{FramedRead, FramedWrite};
use crate::key::{MeshKey, NodePublicKey, NodeSecretKey, SharedBox};

/// What the client says and knows going into [`Client::handshake_over`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandshakeOptions {
    /// Sealed into ClientInfo: the mesh key (mesh peers and privileged tools), the prober flag,
    /// the application name.
    pub info: ClientInfo,
    /// The server key ClientInfo was already sealed to and sent with, if it was (HTTP fast
    /// start sends it with the upgrade request). The handshake then only checks that ServerKey
    /// names this key instead of sending ClientInfo again.
    pub info_sent_to: Option<NodePublicKey>,
    /// Stop with [`ClientError::RefusedServerKey`] before sending anything if the server
    /// presents this key. A relay's mesh links set their own key, so a relay that finds
    /// itself in its peer list never logs in to itself.
    pub refuse_server_key: Option<NodePublicKey>,
    /// A box the secret key already shares with a server ([`Client::shared_box`] of an earlier
    /// connection). If the server presents that key, the handshake computes no X25519: a
    /// client reconnecting to the same server pays for the key agreement once.
    pub shared_box: Option<(NodePublicKey, SharedBox)>,
}

impl HandshakeOptions {
    /// A regular client's options: [`ClientInfo::new`], nothing sent yet.
    pub fn new() -> Self {
        Self {
            info: ClientInfo::new(),
            info_sent_to: None,
            refuse_server_key: None,
            shared_box: None,
        }
    }

    /// Sends `key` in ClientInfo, as mesh peers do.
    pub fn with_mesh_key(mut self, key: MeshKey) -> Self {
        self.info.mesh_key = Some(key);
        self
    }

    /// Sets the prober flag in ClientInfo.
    pub fn with_prober(mut self, is_prober: bool) -> Self {
        self.info.is_prober = is_prober;
        self
    }
}

impl Default for HandshakeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Stream> Client<S> {
    /// Runs the DERP handshake over `stream` and returns the established client.
    ///
    /// `stream` must already carry DERP frames: a TCP or TLS stream after the HTTP upgrade, a
    /// [`WsStream`](crate::io::WsStream), a QUIC stream, or an in-memory pipe. `initial` holds
    /// bytes already read from it past the upgrade (they are decoded first); pass an empty
    /// buffer if there are none. The exchange is the one of Go's `derp.Client`: read ServerKey,
    /// send ClientInfo sealed to it (unless `opts.info_sent_to` says it already went out),
    /// read ServerInfo.
    ///
    /// There is no deadline inside: wrap the call in `tokio::time::timeout` (Go clients allow
    /// 10 s for dial, TLS, upgrade and handshake together).
    pub async fn handshake_over(
        stream: S,
        initial: BytesMut,
        secret: &NodeSecretKey,
        opts: &HandshakeOptions,
    ) -> Result<Self, ClientError> {
        let (r, w) = tokio::io::split(stream);
        let mut reader = FramedRead::new(r, FrameDecoder::client(), initial);
        let mut writer = FramedWrite::new(w);

        let frame = reader.read_frame().await?;
        let server_key = handshake::read_server_key(&frame)?;
        if opts.refuse_server_key == Some(server_key) {
            return Err(ClientError::RefusedServerKey(server_key));
        }
        // At most one X25519 for both boxes: ClientInfo is sealed and ServerInfo opened with it.
        let shared = box_for(secret, opts.shared_box.as_ref(), server_key);
        match opts.info_sent_to {
            // ClientInfo already went out with the request; the ServerKey must agree with the
            // key it was sealed to, or the server cannot open it.
            Some(expected) if expected != server_key => {
                return Err(ClientError::ServerKeyMismatch {
                    expected,
                    got: server_key,
                });
            }
            Some(_) => {}
            None => {
                handshake::write_client_info_with(
                    writer.buffer(),
                    &secret.public_key(),
                    &shared,
                    &opts.info,
                );
                writer.flush().await.map_err(ClientError::Write)?;
            }
        }
        let frame = reader.read_frame().await?;
        let server_info = handshake::read_server_info_with(&shared, &frame)?;
        Ok(Self {
            reader: ClientReader { inner: reader },
            writer: ClientWriter { inner: writer },
            server_key,
            server_info,
            local_addr: None,
            public_key: secret.public_key(),
            shared_box: shared,
        })
    }
}

/// The box `secret` shares with `server`: `known` if it was made for that key, else one X25519.
pub(super) fn box_for(
    secret: &NodeSecretKey,
    known: Option<&(NodePublicKey, SharedBox)>,
    server: NodePublicKey,
) -> SharedBox {
    match known {
        Some((key, shared)) if *key == server => shared.clone(),
        _ => secret.shared_box(&server),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

    use super::*;
    use crate::error::HandshakeError;
    use crate::frame::{ClientToServer, FrameType, ServerToClient};
    use crate::handshake::{ClientHello, ServerInfo};
    use crate::io::ReadFrameError;

    const SERVER: [u8; 32] = [3; 32];
    const CLIENT: [u8; 32] = [4; 32];

    /// The server half of a handshake, built only from `crate::handshake`: sends ServerKey
    /// (unless `key_already_sent`), reads ClientInfo, answers ServerInfo.
    async fn serve_handshake(
        io: DuplexStream,
        key_already_sent: bool,
    ) -> (
        ClientHello,
        FramedRead<ReadHalf<DuplexStream>>,
        WriteHalf<DuplexStream>,
    ) {
        let server = NodeSecretKey::from_bytes(SERVER);
        let (r, mut w) = tokio::io::split(io);
        let mut reader = FramedRead::new(r, FrameDecoder::server(), BytesMut::new());
        if !key_already_sent {
            let mut buf = BytesMut::new();
            handshake::write_server_key(&mut buf, &server.public_key());
            w.write_all(&buf).await.expect("write server key");
        }
        let frame = reader.read_frame().await.expect("client info frame");
        let hello = handshake::read_client_info(&server, &frame).expect("client info");
        let mut buf = BytesMut::new();
        handshake::write_server_info_to(&mut buf, &hello, &ServerInfo::new());
        w.write_all(&buf).await.expect("write server info");
        (hello, reader, w)
    }

    /// A reconnect reuses the box of an earlier handshake with the same server (the server
    /// opens ClientInfo with it, so a wrong box fails), and ignores a box for another key.
    #[tokio::test]
    async fn reconnect_reuses_the_box_only_for_the_same_server_key() {
        let secret = NodeSecretKey::from_bytes(CLIENT);
        let login = |opts: HandshakeOptions| {
            let secret = secret.clone();
            async move {
                let (client_io, server_io) = tokio::io::duplex(4096);
                let server = tokio::spawn(serve_handshake(server_io, false));
                let client = Client::handshake_over(client_io, BytesMut::new(), &secret, &opts)
                    .await
                    .expect("handshake");
                let (hello, _, _) = server.await.expect("server");
                assert_eq!(hello.client_key, secret.public_key());
                client
            }
        };
        let first = login(HandshakeOptions::new()).await;
        let (server_key, shared) = first.shared_box();
        assert_eq!(server_key, NodeSecretKey::from_bytes(SERVER).public_key());

        let mut again = HandshakeOptions::new();
        again.shared_box = Some((server_key, shared));
        let second = login(again).await;
        assert_eq!(second.server_key(), server_key);

        // A box recorded for some other server is not used: this one still logs in.
        let other = NodeSecretKey::from_bytes([5; 32]).public_key();
        let mut stale = HandshakeOptions::new();
        stale.shared_box = Some((other, secret.shared_box(&other)));
        let third = login(stale).await;
        assert_eq!(third.server_key(), server_key);
    }

    #[tokio::test]
    async fn handshake_over_duplex_with_mesh_key() {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let (hello, mut reader, mut w) = serve_handshake(server_io, false).await;
            // After the login: one packet each way.
            let frame = reader.read_frame().await.expect("packet frame");
            assert_eq!(frame.ty, FrameType::SEND_PACKET);
            let msg = ClientToServer::decode(frame.ty, frame.payload).expect("decode");
            let mut buf = BytesMut::new();
            ServerToClient::RecvPacket {
                src: NodePublicKey::from_bytes([9; 32]),
                packet: bytes::Bytes::from_static(b"pong"),
            }
            .encode(&mut buf);
            w.write_all(&buf).await.expect("write packet");
            (hello, msg)
        });

        let secret = NodeSecretKey::from_bytes(CLIENT);
        let mesh = MeshKey::from_bytes([0xab; 32]);
        let opts = HandshakeOptions::new()
            .with_mesh_key(mesh.clone())
            .with_prober(true);
        let mut client = Client::handshake_over(client_io, BytesMut::new(), &secret, &opts)
            .await
            .expect("handshake");
        assert_eq!(
            client.server_key(),
            NodeSecretKey::from_bytes(SERVER).public_key()
        );
        assert_eq!(client.server_info(), ServerInfo::new());
        assert_eq!(client.public_key(), secret.public_key());
        assert_eq!(client.local_addr(), None);

        let dst = NodePublicKey::from_bytes([7; 32]);
        client.send_packet(&dst, b"ping").await.expect("send");
        match client.recv().await.expect("recv") {
            ServerToClient::RecvPacket { src, packet } => {
                assert_eq!(src, NodePublicKey::from_bytes([9; 32]));
                assert_eq!(&packet[..], b"pong");
            }
            other => panic!("unexpected {other:?}"),
        }

        let (hello, msg) = server.await.expect("server side");
        assert_eq!(hello.client_key, secret.public_key());
        assert_eq!(hello.info.mesh_key, Some(mesh));
        assert!(hello.info.is_prober);
        match msg {
            ClientToServer::SendPacket { dst: got, packet } => {
                assert_eq!(got, dst);
                assert_eq!(&packet[..], b"ping");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn initial_bytes_are_decoded_first() {
        // The ServerKey frame arrives as bytes read past the upgrade, not from the stream.
        let server_key = NodeSecretKey::from_bytes(SERVER).public_key();
        let mut initial = BytesMut::new();
        handshake::write_server_key(&mut initial, &server_key);
        let (client_io, server_io) = tokio::io::duplex(4096);
        let server = tokio::spawn(serve_handshake(server_io, true));
        let secret = NodeSecretKey::from_bytes(CLIENT);
        let client = Client::handshake_over(client_io, initial, &secret, &HandshakeOptions::new())
            .await
            .expect("handshake");
        assert_eq!(client.server_key(), server_key);
        let (hello, _, _) = server.await.expect("server side");
        assert_eq!(hello.info, ClientInfo::new());
    }

    #[tokio::test]
    async fn fast_start_checks_the_promised_key() {
        let server = NodeSecretKey::from_bytes(SERVER);
        let secret = NodeSecretKey::from_bytes(CLIENT);

        // ClientInfo went out already, sealed to the right key: no second ClientInfo.
        let (client_io, server_io) = tokio::io::duplex(4096);
        let (r, mut w) = tokio::io::split(server_io);
        let mut buf = BytesMut::new();
        handshake::write_server_key(&mut buf, &server.public_key());
        handshake::write_server_info(&mut buf, &server, &secret.public_key(), &ServerInfo::new());
        w.write_all(&buf).await.expect("write");
        let opts = HandshakeOptions {
            info_sent_to: Some(server.public_key()),
            ..HandshakeOptions::new()
        };
        let mut client = Client::handshake_over(client_io, BytesMut::new(), &secret, &opts)
            .await
            .expect("fast start");
        assert_eq!(client.server_key(), server.public_key());
        // The server side received nothing during the handshake; the first frame is ours.
        client
            .send(&ClientToServer::Ping([1; 8]))
            .await
            .expect("ping");
        let mut reader = FramedRead::new(r, FrameDecoder::server(), BytesMut::new());
        assert_eq!(
            reader.read_frame().await.expect("frame").ty,
            FrameType::PING
        );

        // Sealed to another key: refused before anything is sent.
        let (client_io, server_io) = tokio::io::duplex(4096);
        let (_r, mut w) = tokio::io::split(server_io);
        let mut buf = BytesMut::new();
        handshake::write_server_key(&mut buf, &server.public_key());
        w.write_all(&buf).await.expect("write");
        let other = NodePublicKey::from_bytes([5; 32]);
        let opts = HandshakeOptions {
            info_sent_to: Some(other),
            ..HandshakeOptions::new()
        };
        let err = Client::handshake_over(client_io, BytesMut::new(), &secret, &opts)
            .await
            .expect_err("mismatch");
        assert!(
            matches!(err, ClientError::ServerKeyMismatch { expected, got }
                if expected == other && got == server.public_key()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_refused_server_key_stops_before_client_info() {
        let server = NodeSecretKey::from_bytes(SERVER);
        let (client_io, server_io) = tokio::io::duplex(4096);
        let (mut r, mut w) = tokio::io::split(server_io);
        let mut buf = BytesMut::new();
        handshake::write_server_key(&mut buf, &server.public_key());
        w.write_all(&buf).await.expect("write");
        let opts = HandshakeOptions {
            refuse_server_key: Some(server.public_key()),
            ..HandshakeOptions::new().with_mesh_key(MeshKey::from_bytes([1; 32]))
        };
        let secret = NodeSecretKey::from_bytes(CLIENT);
        let err = Client::handshake_over(client_io, BytesMut::new(), &secret, &opts)
            .await
            .expect_err("refused");
        assert!(
            matches!(err, ClientError::RefusedServerKey(k) if k == server.public_key()),
            "{err}"
        );
        // Nothing was sent: the client hung up without a byte.
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest)
            .await
            .expect("read");
        assert!(rest.is_empty(), "client sent {} bytes", rest.len());
    }

    #[tokio::test]
    async fn bad_server_frames_fail_the_handshake() {
        let secret = NodeSecretKey::from_bytes(CLIENT);

        // A frame other than ServerKey first.
        let (client_io, mut server_io) = tokio::io::duplex(4096);
        let mut buf = BytesMut::new();
        ClientToServer::Ping([0; 8]).encode(&mut buf);
        server_io.write_all(&buf).await.expect("write");
        let err = Client::handshake_over(
            client_io,
            BytesMut::new(),
            &secret,
            &HandshakeOptions::new(),
        )
        .await
        .expect_err("not a server key");
        assert!(
            matches!(
                err,
                ClientError::Handshake(HandshakeError::UnexpectedFrame { .. })
            ),
            "{err}"
        );

        // The server hangs up after ServerKey.
        let (client_io, mut server_io) = tokio::io::duplex(4096);
        let mut buf = BytesMut::new();
        handshake::write_server_key(&mut buf, &NodeSecretKey::from_bytes(SERVER).public_key());
        server_io.write_all(&buf).await.expect("write");
        drop(server_io);
        let err = Client::handshake_over(
            client_io,
            BytesMut::new(),
            &secret,
            &HandshakeOptions::new(),
        )
        .await
        .expect_err("closed");
        assert!(
            matches!(
                err,
                ClientError::Write(_) | ClientError::Read(ReadFrameError::Closed)
            ),
            "{err}"
        );

        // ServerInfo sealed by someone else.
        let (client_io, mut server_io) = tokio::io::duplex(4096);
        let server = NodeSecretKey::from_bytes(SERVER);
        let impostor = NodeSecretKey::from_bytes([6; 32]);
        let mut buf = BytesMut::new();
        handshake::write_server_key(&mut buf, &server.public_key());
        handshake::write_server_info(
            &mut buf,
            &impostor,
            &secret.public_key(),
            &ServerInfo::new(),
        );
        server_io.write_all(&buf).await.expect("write");
        let err = Client::handshake_over(
            client_io,
            BytesMut::new(),
            &secret,
            &HandshakeOptions::new(),
        )
        .await
        .expect_err("box");
        assert!(
            matches!(err, ClientError::Handshake(HandshakeError::BoxOpen)),
            "{err}"
        );
    }
}
