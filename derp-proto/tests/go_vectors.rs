//! Golden vectors from Tailscale's own Go code (`testdata/go-vectors.json`, written by
//! `tests/go/cmd/goldens` against tailscale.com v1.102.5).
//!
//! Every frame is decoded the way its receiver would (a server decoder for client frames, a
//! client decoder for server frames), checked against the value Go meant to send, and, unless it
//! is sealed with a random nonce, re-encoded to Go's exact bytes.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use derp_proto::consts::{
    BOX_OVERHEAD, FRAME_HEADER_LEN, KEY_LEN, MAGIC, MAX_PACKET_SIZE, NONCE_LEN, PROTOCOL_VERSION,
};
use derp_proto::frame::{PeerGoneReason, PeerPresentFlags};
use derp_proto::handshake::{self, ClientInfo, ServerInfo};
use derp_proto::{
    ClientToServer, FrameDecoder, FrameType, MeshKey, NodePublicKey, NodeSecretKey, RawFrame,
    ServerToClient, disco,
};
use serde_json::Value;

const VECTORS: &str = include_str!("../testdata/go-vectors.json");

struct Client {
    name: String,
    secret: NodeSecretKey,
    public: NodePublicKey,
    remote_addr: Option<SocketAddr>,
}

struct Vectors {
    json: Value,
    server: NodeSecretKey,
    clients: Vec<Client>,
}

impl Vectors {
    fn load() -> Self {
        let json: Value = serde_json::from_str(VECTORS).unwrap();
        assert_eq!(json["tailscale_version"], "v1.102.5");
        let server: NodeSecretKey = str_field(&json, "server_private").parse().unwrap();
        assert_eq!(
            server.public_key(),
            str_field(&json, "server_public").parse().unwrap(),
            "server_public is not the public half of server_private"
        );
        assert_eq!(server.to_text(), str_field(&json, "server_private"));
        let clients = json["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let secret: NodeSecretKey = str_field(c, "private").parse().unwrap();
                let public: NodePublicKey = str_field(c, "public").parse().unwrap();
                // Go derives the public key from the private one exactly as we do.
                assert_eq!(secret.public_key(), public, "client {}", c["name"]);
                assert_eq!(public.to_string(), str_field(c, "public"));
                Client {
                    name: str_field(c, "name").to_owned(),
                    secret,
                    public,
                    remote_addr: c["remote_addr"].as_str().map(|a| a.parse().unwrap()),
                }
            })
            .collect();
        Self {
            json,
            server,
            clients,
        }
    }

    fn client(&self, name: &str) -> &Client {
        self.clients
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no client {name:?} in the vectors"))
    }

    fn key(&self, name: &str) -> NodePublicKey {
        self.client(name).public
    }

    fn addr(&self, name: &str) -> Option<SocketAddr> {
        Some(self.client(name).remote_addr.unwrap())
    }

    fn mesh_key(&self) -> MeshKey {
        str_field(&self.json, "mesh_key").parse().unwrap()
    }

    fn frames(&self) -> impl Iterator<Item = Frame<'_>> {
        self.json["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| Frame {
                name: str_field(f, "name"),
                c2s: match str_field(f, "direction") {
                    "c2s" => true,
                    "s2c" => false,
                    other => panic!("direction {other:?}"),
                },
                client: str_field(f, "client"),
                bytes: hex::decode(str_field(f, "hex")).unwrap(),
                plaintext: f["plaintext"].as_str(),
            })
    }

    fn frame(&self, name: &str) -> Frame<'_> {
        self.frames()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no frame {name:?} in the vectors"))
    }
}

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} missing or not a string"))
}

/// One frame as Go wrote it.
struct Frame<'a> {
    name: &'a str,
    /// Client to server (else server to client).
    c2s: bool,
    /// The client whose connection carried it.
    client: &'a str,
    /// Header and payload.
    bytes: Vec<u8>,
    /// For sealed frames, the JSON inside the box.
    plaintext: Option<&'a str>,
}

impl Frame<'_> {
    /// Decodes the frame as its receiver does; it must be exactly one whole frame.
    fn decode(&self) -> RawFrame {
        let mut decoder = if self.c2s {
            FrameDecoder::server()
        } else {
            FrameDecoder::client()
        };
        let mut buf = BytesMut::from(&self.bytes[..]);
        assert_eq!(decoder.needed(&buf), 0, "{}: whole frame", self.name);
        let frame = decoder.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "{}: bytes left over", self.name);
        assert_eq!(frame.ty.0, self.bytes[0]);
        assert_eq!(frame.payload.len(), self.bytes.len() - FRAME_HEADER_LEN);
        frame
    }
}

/// What each named Go frame means, as our typed messages.
enum Expected {
    Client(ClientToServer),
    Server(ServerToClient),
    /// Handshake frames, checked separately.
    Handshake,
}

fn expected(v: &Vectors, name: &str) -> Expected {
    use Expected::{Client, Handshake, Server};
    match name {
        "server_key" | "client_info" | "server_info" | "client_info_mesh" => Handshake,
        "note_preferred" => Client(ClientToServer::NotePreferred(true)),
        "send_packet" => Client(ClientToServer::SendPacket {
            dst: v.key("b"),
            packet: Bytes::from_static(b"hello from a"),
        }),
        "recv_packet" => Server(ServerToClient::RecvPacket {
            src: v.key("b"),
            packet: Bytes::from_static(b"hello from b"),
        }),
        "ping" => Client(ClientToServer::Ping(*b"ping\x01\x02\x03\x04")),
        "pong" => Server(ServerToClient::Pong(*b"ping\x01\x02\x03\x04")),
        "client_pong" => Client(ClientToServer::Pong(*b"pong\x05\x06\x07\x08")),
        "send_packet_disco_unknown" => {
            // Disco magic followed by 56 bytes of 0xd1: the shortest packet Go derper counts as
            // disco.
            let mut packet = disco::MAGIC.to_vec();
            packet.extend_from_slice(&[0xd1; 56]);
            assert!(disco::looks_like_disco(&packet));
            assert_eq!(packet.len(), disco::HEADER_LEN);
            Client(ClientToServer::SendPacket {
                dst: v.key("unknown"),
                packet: packet.into(),
            })
        }
        "peer_gone_not_here" => Server(ServerToClient::PeerGone {
            peer: v.key("unknown"),
            reason: PeerGoneReason::NOT_HERE,
        }),
        "peer_gone_disconnected" | "peer_gone_watcher" => Server(ServerToClient::PeerGone {
            peer: v.key("b"),
            reason: PeerGoneReason::DISCONNECTED,
        }),
        "keep_alive" => Server(ServerToClient::KeepAlive),
        "watch_conns" => Client(ClientToServer::WatchConns),
        "peer_present_a" | "peer_present_b" => {
            let who = &name["peer_present_".len()..];
            Server(ServerToClient::PeerPresent {
                peer: v.key(who),
                addr: v.addr(who),
                flags: PeerPresentFlags::IS_REGULAR,
            })
        }
        "peer_present_mesh" => Server(ServerToClient::PeerPresent {
            peer: v.key("mesh"),
            addr: v.addr("mesh"),
            flags: PeerPresentFlags::IS_MESH_PEER,
        }),
        "forward_packet" => Client(ClientToServer::ForwardPacket {
            src: v.key("z"),
            dst: v.key("a"),
            packet: Bytes::from_static(b"forwarded from z"),
        }),
        "recv_packet_forwarded" => Server(ServerToClient::RecvPacket {
            src: v.key("z"),
            packet: Bytes::from_static(b"forwarded from z"),
        }),
        "close_peer" => Client(ClientToServer::ClosePeer(v.key("a"))),
        other => panic!("new Go vector {other:?}: add what it means to this test"),
    }
}

#[test]
fn constants_match_go() {
    let v = Vectors::load();
    let c = &v.json["constants"];
    assert_eq!(hex::decode(str_field(c, "magic_hex")).unwrap(), MAGIC);
    assert_eq!(
        hex::decode(str_field(c, "disco_magic_hex")).unwrap(),
        disco::MAGIC
    );
    assert_eq!(c["protocol_version"], PROTOCOL_VERSION);
    assert_eq!(c["max_packet_size"].as_u64(), Some(MAX_PACKET_SIZE as u64));
}

/// The fuzz harnesses open the Go ClientInfo and ServerInfo frames of the corpus with these keys.
#[test]
fn fuzzing_keys_are_the_vector_keys() {
    let v = Vectors::load();
    assert_eq!(
        derp_proto::fuzzing::SERVER_PRIVATE,
        v.server.to_bytes(),
        "fuzzing::SERVER_PRIVATE"
    );
    assert_eq!(
        derp_proto::fuzzing::CLIENT_PRIVATE,
        v.client("a").secret.to_bytes(),
        "fuzzing::CLIENT_PRIVATE"
    );
}

#[test]
fn every_frame_type_in_the_vectors_is_covered() {
    let v = Vectors::load();
    let seen: BTreeSet<u8> = v.frames().map(|f| f.bytes[0]).collect();
    // Everything but Health and Restarting, which Go's server only sends on admin action.
    let want: BTreeSet<u8> = [
        FrameType::SERVER_KEY,
        FrameType::CLIENT_INFO,
        FrameType::SERVER_INFO,
        FrameType::SEND_PACKET,
        FrameType::RECV_PACKET,
        FrameType::KEEP_ALIVE,
        FrameType::NOTE_PREFERRED,
        FrameType::PEER_GONE,
        FrameType::PEER_PRESENT,
        FrameType::FORWARD_PACKET,
        FrameType::WATCH_CONNS,
        FrameType::CLOSE_PEER,
        FrameType::PING,
        FrameType::PONG,
    ]
    .iter()
    .map(|t| t.0)
    .collect();
    assert_eq!(seen, want);
}

/// Every steady-state frame decodes to the message Go meant and re-encodes to Go's bytes.
#[test]
fn messages_decode_and_reencode_byte_for_byte() {
    let v = Vectors::load();
    let mut checked = 0;
    for f in v.frames() {
        let frame = f.decode();
        match expected(&v, f.name) {
            Expected::Client(want) => {
                assert!(f.c2s, "{}", f.name);
                let got = ClientToServer::decode(frame.ty, frame.payload).unwrap();
                assert_eq!(got, want, "{}", f.name);
                let mut out = Vec::new();
                got.encode(&mut out);
                assert_eq!(hex::encode(&out), hex::encode(&f.bytes), "{}", f.name);
                assert_eq!(got.encoded_len(), f.bytes.len(), "{}", f.name);
            }
            Expected::Server(want) => {
                assert!(!f.c2s, "{}", f.name);
                let got = ServerToClient::decode(frame.ty, frame.payload).unwrap();
                assert_eq!(got, want, "{}", f.name);
                let mut out = Vec::new();
                got.encode(&mut out);
                assert_eq!(hex::encode(&out), hex::encode(&f.bytes), "{}", f.name);
                assert_eq!(got.encoded_len(), f.bytes.len(), "{}", f.name);
            }
            Expected::Handshake => continue,
        }
        checked += 1;
    }
    assert_eq!(checked, 18);
}

/// The frames of both directions, back to back, cut into the same frames one byte at a time.
#[test]
fn streams_decode_incrementally() {
    let v = Vectors::load();
    for c2s in [true, false] {
        let frames: Vec<Frame<'_>> = v.frames().filter(|f| f.c2s == c2s).collect();
        let mut decoder = if c2s {
            FrameDecoder::server()
        } else {
            FrameDecoder::client()
        };
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in frames.iter().flat_map(|f| f.bytes.iter()) {
            buf.extend_from_slice(&[*byte]);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got.len(), frames.len());
        for (frame, f) in got.iter().zip(&frames) {
            assert_eq!(frame.ty.0, f.bytes[0], "{}", f.name);
            assert_eq!(frame.payload[..], f.bytes[FRAME_HEADER_LEN..], "{}", f.name);
        }
    }
}

#[test]
fn server_key() {
    let v = Vectors::load();
    let f = v.frame("server_key");
    assert!(!f.c2s);
    let frame = f.decode();
    assert_eq!(
        handshake::read_server_key(&frame).unwrap(),
        v.server.public_key()
    );
    assert_eq!(
        ServerToClient::decode(frame.ty, frame.payload).unwrap(),
        ServerToClient::ServerKey(v.server.public_key())
    );
    let mut out = Vec::new();
    handshake::write_server_key(&mut out, &v.server.public_key());
    assert_eq!(hex::encode(&out), hex::encode(&f.bytes));
    let mut out = Vec::new();
    ServerToClient::ServerKey(v.server.public_key()).encode(&mut out);
    assert_eq!(hex::encode(&out), hex::encode(&f.bytes));
}

/// Go's ClientInfo opens with the server key; the JSON inside is what Go says it sealed, parses
/// to what Go meant, and is byte for byte what our `to_json` writes for the same info.
#[test]
fn client_info() {
    let v = Vectors::load();
    for (name, want) in [
        ("client_info", ClientInfo::new()),
        ("client_info_mesh", {
            let mut info = ClientInfo::new();
            info.mesh_key = Some(v.mesh_key());
            info.can_ack_pings = false;
            info
        }),
    ] {
        let f = v.frame(name);
        assert!(f.c2s);
        let client = v.client(f.client);
        let plaintext = f.plaintext.unwrap().as_bytes();
        let frame = f.decode();
        // Client key ‖ nonce ‖ tag ‖ ciphertext.
        assert_eq!(
            frame.payload.len(),
            KEY_LEN + NONCE_LEN + BOX_OVERHEAD + plaintext.len(),
            "{name}"
        );

        let hello = handshake::read_client_info(&v.server, &frame).unwrap();
        assert_eq!(hello.client_key, client.public, "{name}");
        assert_eq!(hello.info, want, "{name}");
        assert_eq!(ClientInfo::from_json(plaintext).unwrap(), want, "{name}");
        assert_eq!(
            String::from_utf8(want.to_json()).unwrap(),
            f.plaintext.unwrap(),
            "{name}: our ClientInfo JSON differs from Go's"
        );

        // The box holds exactly the plaintext, and resealing it with Go's nonce gives Go's bytes.
        let sealed = &frame.payload[KEY_LEN..];
        let opened = v.server.open_from(&client.public, sealed).unwrap();
        assert_eq!(opened, plaintext, "{name}");
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().unwrap();
        let resealed =
            client
                .secret
                .seal_to_with_nonce(&v.server.public_key(), nonce, &want.to_json());
        assert_eq!(hex::encode(&resealed), hex::encode(sealed), "{name}");

        // Our writer has the same layout (the nonce differs: it is random).
        let mut out = Vec::new();
        handshake::write_client_info(&mut out, &client.secret, &v.server.public_key(), &want);
        assert_eq!(out.len(), f.bytes.len(), "{name}");
        assert_eq!(
            out[..FRAME_HEADER_LEN + KEY_LEN],
            f.bytes[..FRAME_HEADER_LEN + KEY_LEN]
        );

        // After the handshake a server skips a second ClientInfo rather than failing.
        assert!(matches!(
            ClientToServer::decode(frame.ty, frame.payload.clone()).unwrap(),
            ClientToServer::Unknown { ty: FrameType::CLIENT_INFO, len } if len == frame.payload.len()
        ));
    }
}

/// Go's ServerInfo opens with client a's key and says `{"version":2}`, as ours does.
#[test]
fn server_info() {
    let v = Vectors::load();
    let f = v.frame("server_info");
    assert!(!f.c2s);
    assert_eq!(f.plaintext, Some(r#"{"version":2}"#));
    let client = v.client(f.client);
    let frame = f.decode();
    assert_eq!(
        frame.payload.len(),
        NONCE_LEN + BOX_OVERHEAD + f.plaintext.unwrap().len()
    );

    let info = handshake::read_server_info(&client.secret, &v.server.public_key(), &frame).unwrap();
    assert_eq!(info, ServerInfo::new());
    assert_eq!(info.version, PROTOCOL_VERSION);

    let opened = client
        .secret
        .open_from(&v.server.public_key(), &frame.payload)
        .unwrap();
    assert_eq!(opened, br#"{"version":2}"#);
    assert_eq!(serde_json::to_vec(&ServerInfo::new()).unwrap(), opened);

    let nonce: [u8; NONCE_LEN] = frame.payload[..NONCE_LEN].try_into().unwrap();
    let resealed = v
        .server
        .seal_to_with_nonce(&client.public, nonce, br#"{"version":2}"#);
    assert_eq!(hex::encode(&resealed), hex::encode(&frame.payload));

    let mut out = Vec::new();
    handshake::write_server_info(&mut out, &v.server, &client.public, &ServerInfo::new());
    assert_eq!(out.len(), f.bytes.len());
    assert_eq!(out[..FRAME_HEADER_LEN], f.bytes[..FRAME_HEADER_LEN]);
}

/// A whole login, Go's bytes on both sides: the client learns the key Go's server sent, the
/// server authenticates Go's client, and the client opens Go's ServerInfo.
#[test]
fn login_sequence() {
    let v = Vectors::load();
    let a = v.client("a");
    let server_key = handshake::read_server_key(&v.frame("server_key").decode()).unwrap();
    let hello = handshake::read_client_info(&v.server, &v.frame("client_info").decode()).unwrap();
    assert_eq!(hello.client_key, a.public);
    let info =
        handshake::read_server_info(&a.secret, &server_key, &v.frame("server_info").decode())
            .unwrap();
    assert_eq!(info.version, 2);
    // Client b cannot open a box sealed to a, and the server's box does not open as a's.
    let b = v.client("b");
    assert!(
        handshake::read_server_info(&b.secret, &server_key, &v.frame("server_info").decode())
            .is_err()
    );
    let other_server = NodeSecretKey::from_bytes([7; KEY_LEN]);
    assert!(handshake::read_client_info(&other_server, &v.frame("client_info").decode()).is_err());
}
