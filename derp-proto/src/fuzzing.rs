//! Fuzz harnesses: one function per target in `fuzz/fuzz_targets/`.
//!
//! Each function takes arbitrary bytes. It must not panic on any input, except through the
//! `assert!`s below, each of which states an invariant of the codec (a decoded frame re-encodes
//! and decodes to itself, feeding bytes in pieces gives the same frames as feeding them at once,
//! a STUN response stays within the amplification budget, ...). `tests/fuzz_corpus.rs` replays
//! the committed corpus in `fuzz/corpus/<target>/` through these functions in every `cargo test`,
//! so a crash the fuzzer found stays fixed once its input is committed.
//!
//! Input formats:
//!
//! | target             | input                                                        |
//! |--------------------|--------------------------------------------------------------|
//! | `frame_decoder`    | a byte stream as it arrives on the wire, read by both sides  |
//! | `client_messages`  | frame type byte ‖ payload (no length field), read by a server|
//! | `server_messages`  | frame type byte ‖ payload (no length field), read by a client|
//! | `handshake_server` | the first frame a server reads (header included)             |
//! | `client_info_open` | ClientInfo (and ServerInfo) JSON                             |
//! | `stun_request`     | one UDP datagram arriving at the STUN port                   |
//! | `mesh_datagram`    | one QUIC datagram from a mesh peer                           |
//! | `presence_frames`  | control byte ‖ the byte stream a mesh link reads             |
//! | `stun_response`    | one UDP datagram arriving at a STUN client                   |
//!
//! The derper-side targets (`http_head`, `websocket_frames`, `config_file`,
//! `admission_response`) have their harnesses in `derper::fuzzing`.
//!
//! Not part of the public API: hidden from the docs and free to change.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::consts::{
    FRAME_HEADER_LEN, KEY_LEN, MAX_CLIENT_INFO_LEN, MAX_CLIENT_RECV_FRAME_LEN, MAX_FRAME_LEN,
    MAX_UNKNOWN_FRAME_LEN, NONCE_LEN,
};
use crate::frame::{
    ClientToServer, FrameDecoder, FrameType, PeerGoneReason, PeerPresentFlags, RawFrame,
    ServerToClient,
};
use crate::handshake::{self, ClientInfo, ServerInfo};
use crate::key::{NodePublicKey, NodeSecretKey};
use crate::mesh::{ReconnectPolicy, WatchAction, WatchSet, WatchSetFull};
use crate::stun::{self, BindingRequest, MAGIC_COOKIE, Reply, RequestKind, Rfc5780Addrs};
use crate::{DecodeError, HandshakeError};

/// The server private key of `derp-proto/testdata/go-vectors.json`, so that the Go ClientInfo
/// frames in the corpus open and reach the JSON parser.
pub const SERVER_PRIVATE: [u8; KEY_LEN] = [
    0x60, 0x42, 0x4c, 0x20, 0x93, 0x5d, 0x69, 0xa3, 0xc2, 0x74, 0x4e, 0x29, 0xce, 0xee, 0x5b, 0xda,
    0xa7, 0xe9, 0x86, 0xe9, 0xdf, 0x4d, 0x0d, 0x3d, 0xce, 0xf9, 0x58, 0x3d, 0xf6, 0x98, 0x16, 0x47,
];

/// Client "a" of the Go vectors: opens the Go ServerInfo frame and seals fuzzed ClientInfo JSON.
pub const CLIENT_PRIVATE: [u8; KEY_LEN] = [
    0xc0, 0xcf, 0xcf, 0xed, 0x6d, 0x21, 0x27, 0x9e, 0x69, 0xea, 0xa6, 0x4b, 0xeb, 0xa3, 0x2f, 0x83,
    0x1f, 0xcd, 0x65, 0xf5, 0x12, 0xab, 0x04, 0xd2, 0xf1, 0x1a, 0x4b, 0xf7, 0xc0, 0xab, 0x41, 0x4f,
];

fn keys() -> &'static (NodeSecretKey, NodeSecretKey) {
    static KEYS: OnceLock<(NodeSecretKey, NodeSecretKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            NodeSecretKey::from_bytes(SERVER_PRIVATE),
            NodeSecretKey::from_bytes(CLIENT_PRIVATE),
        )
    })
}

// --- frame_decoder ---

/// Cuts `data` into frames as a server and as a client would.
///
/// Invariants: the frames and the final error are the same whether the bytes arrive at once,
/// one at a time, or in chunks whose sizes come from the data; every frame is exactly the bytes
/// it was cut from; limits hold; and each frame goes through [`client_messages`] or
/// [`server_messages`] checks.
pub fn frame_decoder(data: &[u8]) {
    for side in [Side::Server, Side::Client] {
        let whole = cut(side, data, &[data.len()]);
        check_cut(side, data, &whole);
        let bytewise = cut(side, data, &[1]);
        assert_eq!(whole, bytewise, "{side:?}: one byte at a time differs");
        let sizes: Vec<usize> = data.iter().map(|b| usize::from(*b % 64) + 1).collect();
        if !sizes.is_empty() {
            let chunked = cut(side, data, &sizes);
            assert_eq!(whole, chunked, "{side:?}: chunked input differs");
        }
        for frame in &whole.frames {
            match side {
                Side::Server => check_client_message(frame.ty, frame.payload.clone()),
                Side::Client => {
                    check_server_message(frame.ty, frame.payload.clone());
                    check_client_handshake(frame);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn decoder(self) -> FrameDecoder {
        match self {
            Self::Server => FrameDecoder::server(),
            Self::Client => FrameDecoder::client(),
        }
    }
}

/// Everything a decoder produced from one input.
#[derive(Debug, PartialEq, Eq)]
struct Cut {
    frames: Vec<RawFrame>,
    error: Option<DecodeError>,
    /// Bytes left in the buffer and what `needed` said about them (only without an error: after
    /// one, feeding stops and the buffer depends on where the last chunk ended).
    rest: Option<(Vec<u8>, usize)>,
}

/// Feeds `data` to a fresh decoder in chunks of the sizes in `sizes` (cycled), decoding as much
/// as possible after each chunk.
fn cut(side: Side, data: &[u8], sizes: &[usize]) -> Cut {
    let mut decoder = side.decoder();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = data;
    let mut sizes = sizes.iter().copied().cycle();
    loop {
        let n = sizes
            .next()
            .unwrap_or(rest.len())
            .clamp(1, rest.len().max(1));
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        buf.extend_from_slice(chunk);
        rest = tail;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    return Cut {
                        frames,
                        error: Some(e),
                        rest: None,
                    };
                }
            }
        }
        // Waiting for bytes: `needed` asks for more.
        let needed = decoder.needed(&buf);
        assert!(
            needed > 0,
            "{side:?}: decode wants more bytes but needed() is 0"
        );
        if rest.is_empty() {
            return Cut {
                frames,
                error: None,
                rest: Some((buf.to_vec(), needed)),
            };
        }
    }
}

/// Checks the frames of a one-shot cut against the input they came from.
fn check_cut(side: Side, data: &[u8], cut: &Cut) {
    let mut at = 0;
    for frame in &cut.frames {
        let header = &data[at..at + FRAME_HEADER_LEN];
        assert_eq!(header[0], frame.ty.0);
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        assert_eq!(len, frame.payload.len());
        assert!(len <= limit(side, frame.ty));
        at += FRAME_HEADER_LEN;
        assert_eq!(&data[at..at + len], &frame.payload[..]);
        at += len;
    }
    match (&cut.error, &cut.rest) {
        (Some(DecodeError::TooLarge { ty, len, max }), None) => {
            assert_eq!(data[at], ty.0);
            assert!(side == Side::Client || ty.name().is_some());
            assert!(*len > *max && *max == limit(side, *ty));
        }
        (Some(DecodeError::UnknownTooLarge { ty, len, max }), None) => {
            assert_eq!(data[at], ty.0);
            assert!(side == Side::Server && ty.name().is_none());
            assert!(*len > *max && *max == limit(side, *ty));
        }
        (Some(e), _) => panic!("{side:?}: the frame decoder returned {e:?}"),
        (None, Some((rest, _))) => {
            assert_eq!(&data[at..], &rest[..], "{side:?}: bytes lost or invented");
        }
        (None, None) => unreachable!("a cut without error records its rest"),
    }
}

fn limit(side: Side, ty: FrameType) -> usize {
    match (side, ty) {
        (Side::Client, _) => MAX_CLIENT_RECV_FRAME_LEN,
        (Side::Server, FrameType::CLIENT_INFO) => MAX_CLIENT_INFO_LEN,
        (Side::Server, ty) if ty.name().is_some() => MAX_FRAME_LEN,
        (Side::Server, _) => MAX_UNKNOWN_FRAME_LEN,
    }
}

/// Decodes `bytes`, which must hold exactly one whole frame.
fn decode_exactly_one(side: Side, bytes: &[u8]) -> RawFrame {
    let mut buf = BytesMut::from(bytes);
    let frame = match side.decoder().decode(&mut buf) {
        Ok(Some(frame)) => frame,
        other => panic!("{side:?}: an encoded frame did not decode: {other:?}"),
    };
    assert!(
        buf.is_empty(),
        "{side:?}: an encoded frame left bytes behind"
    );
    frame
}

// --- client_messages / server_messages ---

/// Decodes `type ‖ payload` as a server reads client frames and round-trips what decodes.
pub fn client_messages(data: &[u8]) {
    if let Some((&ty, payload)) = data.split_first() {
        check_client_message(FrameType(ty), Bytes::copy_from_slice(payload));
    }
}

/// Decodes `type ‖ payload` as a client reads server frames and round-trips what decodes.
pub fn server_messages(data: &[u8]) {
    if let Some((&ty, payload)) = data.split_first() {
        let payload = Bytes::copy_from_slice(payload);
        check_server_message(FrameType(ty), payload.clone());
        check_client_handshake(&RawFrame {
            ty: FrameType(ty),
            payload,
        });
    }
}

/// decode → encode → decode gives the same message, `encoded_len` is exact, and the encoding
/// passes the server's frame decoder when it is within the server's limits.
fn check_client_message(ty: FrameType, payload: Bytes) {
    let Ok(msg) = ClientToServer::decode(ty, payload) else {
        return;
    };
    assert_eq!(msg.frame_type(), ty);
    let mut out = Vec::new();
    msg.encode(&mut out);
    assert_eq!(out.len(), msg.encoded_len());
    let payload_len = check_header(&out, ty);
    let again = ClientToServer::decode(ty, Bytes::copy_from_slice(&out[FRAME_HEADER_LEN..]));
    assert_eq!(
        again.as_ref(),
        Ok(&msg),
        "client message did not round-trip"
    );
    if payload_len <= limit(Side::Server, ty) {
        let frame = decode_exactly_one(Side::Server, &out);
        assert_eq!(ClientToServer::decode(frame.ty, frame.payload), Ok(msg));
    }
}

/// As [`check_client_message`], for what a client reads.
fn check_server_message(ty: FrameType, payload: Bytes) {
    let Ok(msg) = ServerToClient::decode(ty, payload) else {
        return;
    };
    assert_eq!(msg.frame_type(), ty);
    let mut out = Vec::new();
    msg.encode(&mut out);
    assert_eq!(out.len(), msg.encoded_len());
    let payload_len = check_header(&out, ty);
    let again = ServerToClient::decode(ty, Bytes::copy_from_slice(&out[FRAME_HEADER_LEN..]));
    assert_eq!(
        again.as_ref(),
        Ok(&msg),
        "server message did not round-trip"
    );
    if payload_len <= limit(Side::Client, ty) {
        let frame = decode_exactly_one(Side::Client, &out);
        assert_eq!(ServerToClient::decode(frame.ty, frame.payload), Ok(msg));
    }
}

/// Checks an encoded frame's header and returns its payload length.
fn check_header(out: &[u8], ty: FrameType) -> usize {
    assert!(out.len() >= FRAME_HEADER_LEN);
    assert_eq!(out[0], ty.0);
    let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
    assert_eq!(len, out.len() - FRAME_HEADER_LEN, "header length is wrong");
    len
}

/// The client's handshake readers agree with the message decoder on ServerKey, and a ServerInfo
/// that opens parses to something that serialises and parses back to itself.
fn check_client_handshake(frame: &RawFrame) {
    match frame.ty {
        FrameType::SERVER_KEY => {
            let via_handshake = handshake::read_server_key(frame).ok();
            let via_message = match ServerToClient::decode(frame.ty, frame.payload.clone()) {
                Ok(ServerToClient::ServerKey(key)) => Some(key),
                _ => None,
            };
            assert_eq!(via_handshake, via_message, "ServerKey readers disagree");
        }
        FrameType::SERVER_INFO => {
            let (server, client) = keys();
            if let Ok(info) = handshake::read_server_info(client, &server.public_key(), frame) {
                check_server_info(&info);
            }
        }
        _ => {}
    }
}

// --- handshake_server ---

/// Reads the first frame of `data` as a server's first frame, with a fixed server key.
///
/// Also seals `data` itself as ClientInfo JSON from a fixed client and checks that
/// [`handshake::read_client_info`] accepts it exactly when [`ClientInfo::from_json`] does, so the
/// JSON path behind the box gets fuzzed too (a mutated box never opens).
pub fn handshake_server(data: &[u8]) {
    let (server, client) = keys();
    let mut buf = BytesMut::from(data);
    if let Ok(Some(frame)) = FrameDecoder::server().decode(&mut buf) {
        match handshake::read_client_info(server, &frame) {
            Ok(hello) => {
                assert_eq!(frame.ty, FrameType::CLIENT_INFO);
                assert_eq!(hello.client_key.as_bytes()[..], frame.payload[..KEY_LEN]);
                check_client_info(&hello.info);
            }
            Err(HandshakeError::UnexpectedFrame { got, .. }) => assert_eq!(got, frame.ty),
            Err(_) => {}
        }
    }

    if data.len() + KEY_LEN + NONCE_LEN + crate::consts::BOX_OVERHEAD > MAX_CLIENT_INFO_LEN {
        return;
    }
    let mut sealed = client.public_key().as_bytes().to_vec();
    sealed.extend(client.seal_to_with_nonce(&server.public_key(), [0x24; NONCE_LEN], data));
    let frame = RawFrame {
        ty: FrameType::CLIENT_INFO,
        payload: Bytes::from(sealed),
    };
    let opened = handshake::read_client_info(server, &frame);
    match (opened, ClientInfo::from_json(data)) {
        (Ok(hello), Ok(info)) => {
            assert_eq!(hello.client_key, client.public_key());
            assert_eq!(hello.info, info);
            check_client_info(&info);
        }
        (
            Err(
                HandshakeError::Json { .. }
                | HandshakeError::BadMeshKey
                | HandshakeError::InvalidAppName { .. },
            ),
            Err(_),
        ) => {}
        (opened, parsed) => panic!("read_client_info {opened:?} but from_json {parsed:?}"),
    }
}

// --- client_info_open ---

/// Parses `data` as ClientInfo and as ServerInfo JSON; what parses must serialise and parse back
/// to itself.
pub fn client_info_open(data: &[u8]) {
    if let Ok(info) = ClientInfo::from_json(data) {
        check_client_info(&info);
    }
    if let Ok(info) = ServerInfo::from_json(data) {
        check_server_info(&info);
    }
}

fn check_client_info(info: &ClientInfo) {
    if let Some(name) = &info.app_name {
        assert!(
            !name.is_empty() && handshake::valid_app_name(name),
            "accepted AppName {name:?}"
        );
    }
    let json = info.to_json();
    match ClientInfo::from_json(&json) {
        Ok(back) => assert_eq!(
            &back, info,
            "ClientInfo did not round-trip through {json:?}"
        ),
        Err(e) => panic!("our own ClientInfo JSON {json:?} does not parse: {e}"),
    }
}

fn check_server_info(info: &ServerInfo) {
    let json = match serde_json::to_vec(info) {
        Ok(json) => json,
        Err(e) => panic!("ServerInfo does not serialise: {e}"),
    };
    match ServerInfo::from_json(&json) {
        Ok(back) => assert_eq!(&back, info, "ServerInfo did not round-trip"),
        Err(e) => panic!("our own ServerInfo JSON does not parse: {e}"),
    }
}

// --- stun_request ---

/// Sources a request may come from, including an IPv4-mapped address from a dual-stack socket.
const SOURCES: [SocketAddr; 3] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 0x8055),
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        41641,
    ),
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc633, 0x6407)),
        3478,
    ),
];

/// RFC 5780 address pairs, IPv4 and IPv6, to answer with.
const RFC5780: [Rfc5780Addrs; 2] = [
    Rfc5780Addrs {
        response_origin: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478),
        other_address: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 3479),
    },
    Rfc5780Addrs {
        response_origin: SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
            3478,
        ),
        other_address: SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20)),
            3479,
        ),
    },
];

/// Parses `data` as a datagram on the STUN port and answers it from several sources, with and
/// without RFC 5780 addresses.
///
/// Invariants: a response never exceeds the amplification budget, echoes the transaction ID and
/// cookie, has a correct header length, and carries the source address (as Tailscale's parser
/// reads it); only RFC 3489 requests are ever dropped.
pub fn stun_request(data: &[u8]) {
    let is_stun = stun::is_stun(data);
    if let Ok((tx, _)) = stun::parse_binding_response(data) {
        assert!(is_stun);
        assert_eq!(tx.0[..], data[8..20]);
    }
    let Ok(req) = stun::parse_binding_request(data) else {
        return;
    };
    assert_eq!(req.len, data.len());
    assert_eq!(req.tx.0[..], data[8..20]);
    assert_eq!(req.cookie[..], data[4..8]);
    assert!(req.unknown_attributes().len() <= 4);
    match req.kind {
        RequestKind::Tailscale | RequestKind::Standard { .. } => assert!(is_stun),
        RequestKind::Classic => assert_ne!(req.cookie, MAGIC_COOKIE),
    }
    for source in SOURCES {
        for rfc5780 in [None, Some(&RFC5780[0]), Some(&RFC5780[1])] {
            check_stun_response(&req, source, rfc5780);
        }
    }
}

fn check_stun_response(req: &BindingRequest, source: SocketAddr, rfc5780: Option<&Rfc5780Addrs>) {
    const PREFIX: [u8; 3] = [0xaa; 3];
    let mut out = PREFIX.to_vec();
    let reply = stun::binding_response(req, source, rfc5780, &mut out);
    assert_eq!(
        out[..3],
        PREFIX,
        "binding_response overwrote its output buffer"
    );
    let resp = &out[3..];
    assert!(
        resp.len() <= req.response_budget(),
        "{} byte response to a {} byte request",
        resp.len(),
        req.len
    );
    if reply == Reply::Drop {
        assert!(resp.is_empty());
        assert_eq!(
            req.kind,
            RequestKind::Classic,
            "only RFC 3489 requests are dropped"
        );
        return;
    }
    assert!(resp.len() >= stun::HEADER_LEN);
    let attrs_len = usize::from(u16::from_be_bytes([resp[2], resp[3]]));
    assert_eq!(stun::HEADER_LEN + attrs_len, resp.len());
    assert_eq!(resp[4..8], req.cookie);
    assert_eq!(resp[8..20], req.tx.0);
    let want = unmap(source);
    match reply {
        Reply::Success => {
            // Tailscale's parser needs the cookie; an RFC 3489 answer has only MAPPED-ADDRESS,
            // which does not depend on it, so lend it one.
            let mut resp = resp.to_vec();
            resp[4..8].copy_from_slice(&MAGIC_COOKIE);
            assert_eq!(
                stun::parse_binding_response(&resp),
                Ok((req.tx, want)),
                "the response does not carry the source address"
            );
        }
        Reply::UnknownAttributes => {
            assert!(matches!(req.kind, RequestKind::Standard { .. }));
            assert_eq!(
                stun::parse_binding_response(resp),
                Err(stun::StunError::NotSuccessResponse(stun::BINDING_ERROR))
            );
        }
        Reply::Drop => unreachable!("handled above"),
    }
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(addr, |v4| SocketAddr::new(IpAddr::V4(v4), v6.port())),
        SocketAddr::V4(_) => addr,
    }
}

/// Decodes one QUIC mesh datagram ([`crate::datagram`]).
///
/// Invariants: a datagram that decodes re-encodes to exactly its bytes, and its packet is
/// within the DERP limit.
pub fn mesh_datagram(data: &[u8]) {
    use crate::consts::MAX_PACKET_SIZE;
    use crate::datagram;

    if let Ok(d) = datagram::decode(Bytes::copy_from_slice(data)) {
        assert!(d.packet.len() <= MAX_PACKET_SIZE);
        let mut again = BytesMut::new();
        datagram::encode_forward(&mut again, &d.src, &d.dst, &d.packet);
        assert_eq!(&again[..], data);
    }
}

// --- presence_frames ---

/// Reads `data` as a mesh link does: byte 0 picks the [`WatchSet`] bound (0..=7) and policy,
/// the rest is the byte stream from the peer relay, cut into frames by a client decoder and
/// decoded as `ClientReader::recv` does (undecodable frames skipped). PeerPresent and PeerGone
/// go to the set; a KeepAlive stands for one second passing (`handle_timeout`), a Ping for the
/// link breaking and reconnecting.
///
/// Invariants: the set never holds more than its bound, and every action it returns is what a
/// plain `HashMap` model of the held keys predicts (Add only for a new key, Update only for a
/// changed one, Remove only for a held one, a refusal only when full).
pub fn presence_frames(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max_peers = usize::from(control & 0x07);
    let policy = if control & 0x08 == 0 {
        ReconnectPolicy::ClearOnBreak
    } else {
        ReconnectPolicy::Resync {
            window: Duration::from_secs(u64::from(control >> 4)),
        }
    };
    let mut set = WatchSet::new(max_peers, policy);
    let mut model = PresenceModel::default();
    let start = Instant::now();
    let mut now = start;
    let mut decoder = FrameDecoder::client();
    let mut buf = BytesMut::from(stream);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let Ok(msg) = ServerToClient::decode(frame.ty, frame.payload) else {
            continue;
        };
        match msg {
            ServerToClient::PeerPresent { peer, addr, flags } => {
                let got = set.peer_present(peer, addr, flags);
                let want = model.present(peer, addr, flags, max_peers);
                assert_eq!(got, want, "PeerPresent for {peer:?}");
            }
            ServerToClient::PeerGone { peer, reason } => {
                let got = set.peer_gone(peer, reason);
                let want = model
                    .held
                    .remove(&peer)
                    .map(|_| WatchAction::Remove { peer, reason });
                assert_eq!(got, want, "PeerGone for {peer:?}");
            }
            ServerToClient::KeepAlive => {
                now += Duration::from_secs(1);
                let got = set.handle_timeout(now);
                let want = match model.deadline {
                    Some(deadline) if now >= deadline => model.expire(),
                    _ => Vec::new(),
                };
                assert_same_actions(got, want);
            }
            ServerToClient::Ping(_) => {
                let mut got = set.disconnected();
                got.extend(set.connected(now));
                let want = match policy {
                    ReconnectPolicy::ClearOnBreak => model.clear(),
                    ReconnectPolicy::Resync { window } => {
                        for held in model.held.values_mut() {
                            held.2 = true;
                        }
                        model.deadline = (!model.held.is_empty()).then(|| now + window);
                        Vec::new()
                    }
                };
                assert_same_actions(got, want);
            }
            _ => {}
        }
        if model.held.values().all(|held| !held.2) {
            model.deadline = None;
        }
        assert!(
            set.len() <= max_peers,
            "{} keys over a bound of {max_peers}",
            set.len()
        );
        assert_eq!(set.len(), model.held.len());
        assert_eq!(set.stale_len(), model.held.values().filter(|h| h.2).count());
        assert_eq!(set.poll_timeout(), model.deadline);
        for peer in model.held.keys() {
            assert!(set.contains(peer), "{peer:?} missing");
        }
    }
}

/// The keys a [`WatchSet`] should hold: address, flags, stale.
#[derive(Default)]
struct PresenceModel {
    held: HashMap<NodePublicKey, (Option<SocketAddr>, PeerPresentFlags, bool)>,
    deadline: Option<Instant>,
}

impl PresenceModel {
    fn present(
        &mut self,
        peer: NodePublicKey,
        addr: Option<SocketAddr>,
        flags: PeerPresentFlags,
        max_peers: usize,
    ) -> Result<Option<WatchAction>, WatchSetFull> {
        let len = self.held.len();
        match self.held.get_mut(&peer) {
            Some(held) => {
                held.2 = false;
                if (held.0, held.1) == (addr, flags) {
                    return Ok(None);
                }
                (held.0, held.1) = (addr, flags);
                Ok(Some(WatchAction::Update { peer, addr, flags }))
            }
            None if len >= max_peers => Err(WatchSetFull { peer, max_peers }),
            None => {
                self.held.insert(peer, (addr, flags, false));
                Ok(Some(WatchAction::Add { peer, addr, flags }))
            }
        }
    }

    fn clear(&mut self) -> Vec<WatchAction> {
        self.deadline = None;
        self.held.drain().map(|(peer, _)| broke(peer)).collect()
    }

    fn expire(&mut self) -> Vec<WatchAction> {
        self.deadline = None;
        let stale: Vec<NodePublicKey> = self
            .held
            .iter()
            .filter(|(_, held)| held.2)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &stale {
            self.held.remove(peer);
        }
        stale.into_iter().map(broke).collect()
    }
}

fn broke(peer: NodePublicKey) -> WatchAction {
    WatchAction::Remove {
        peer,
        reason: PeerGoneReason::MESH_CONN_BROKE,
    }
}

/// The same actions, in any order (a set's iteration order is not part of its contract).
///
/// Sorted by the whole key first: `Debug` shows only a key's first characters, and keys that
/// share them (the fuzzer makes such keys) would otherwise keep their arrival order.
fn assert_same_actions(mut got: Vec<WatchAction>, mut want: Vec<WatchAction>) {
    let key = |a: &WatchAction| {
        let (WatchAction::Add { peer, .. }
        | WatchAction::Update { peer, .. }
        | WatchAction::Remove { peer, .. }) = a;
        (*peer.as_bytes(), format!("{a:?}"))
    };
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want);
}

// --- stun_response ---

/// Parses `data` as a Binding Response, as a Tailscale client reads our STUN server's answers.
///
/// Invariants: a parsed response is STUN with the success type, its TxID is bytes 8..20, its
/// address is never IPv4-mapped, bytes after the header's length change nothing, and our own
/// answer to that TxID sent to that address parses back to exactly the same pair.
pub fn stun_response(data: &[u8]) {
    let parsed = stun::parse_binding_response(data);
    let Ok((tx, addr)) = parsed else {
        return;
    };
    // The header's length is honoured: bytes after the message change nothing.
    let mut longer = data.to_vec();
    longer.extend_from_slice(&[0xa5; 7]);
    assert_eq!(stun::parse_binding_response(&longer), parsed);
    assert!(stun::is_stun(data));
    assert_eq!(
        u16::from_be_bytes([data[0], data[1]]),
        stun::BINDING_SUCCESS
    );
    assert_eq!(tx.0[..], data[8..20], "TxID is not the header's");
    if let IpAddr::V6(v6) = addr.ip() {
        assert!(v6.to_ipv4_mapped().is_none(), "{addr} left IPv4-mapped");
    }
    let request = stun::binding_request(tx);
    let req = match stun::parse_binding_request(&request) {
        Ok(req) => req,
        Err(e) => panic!("our own request does not parse: {e}"),
    };
    for rfc5780 in [None, Some(&RFC5780[0]), Some(&RFC5780[1])] {
        let mut out = Vec::new();
        assert_eq!(
            stun::binding_response(&req, addr, rfc5780, &mut out),
            Reply::Success
        );
        assert_eq!(
            stun::parse_binding_response(&out),
            Ok((tx, addr)),
            "our answer to {addr} does not round-trip"
        );
    }
}
