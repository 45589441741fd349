//! Property tests: every frame round-trips, `encoded_len` is exact, and no input panics.

use bytes::{Bytes, BytesMut};
use derp_proto::consts::MAX_UNKNOWN_FRAME_LEN;
use derp_proto::frame::{PeerGoneReason, PeerPresentFlags};
use derp_proto::{
    ClientToServer, DecodeError, FrameDecoder, FrameType, NodePublicKey, ServerToClient,
};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = NodePublicKey> {
    any::<[u8; 32]>().prop_map(NodePublicKey::from_bytes)
}

fn packet() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..2048).prop_map(Bytes::from)
}

fn client_frame() -> impl Strategy<Value = ClientToServer> {
    prop_oneof![
        (key(), packet()).prop_map(|(dst, packet)| ClientToServer::SendPacket { dst, packet }),
        (key(), key(), packet()).prop_map(|(src, dst, packet)| ClientToServer::ForwardPacket {
            src,
            dst,
            packet
        }),
        any::<bool>().prop_map(ClientToServer::NotePreferred),
        Just(ClientToServer::WatchConns),
        key().prop_map(ClientToServer::ClosePeer),
        any::<[u8; 8]>().prop_map(ClientToServer::Ping),
        any::<[u8; 8]>().prop_map(ClientToServer::Pong),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerToClient> {
    let addr = prop_oneof![
        Just(None),
        (any::<[u8; 4]>(), 1..u16::MAX)
            .prop_map(|(ip, port)| Some(std::net::SocketAddr::from((ip, port)))),
        (any::<[u8; 16]>(), 1..u16::MAX).prop_filter_map("not v4-mapped", |(ip, port)| {
            let ip = std::net::Ipv6Addr::from(ip);
            ip.to_ipv4_mapped()
                .is_none()
                .then(|| Some(std::net::SocketAddr::from((ip, port))))
        }),
    ];
    prop_oneof![
        (key(), packet()).prop_map(|(src, packet)| ServerToClient::RecvPacket { src, packet }),
        Just(ServerToClient::KeepAlive),
        (key(), any::<u8>()).prop_map(|(peer, r)| ServerToClient::PeerGone {
            peer,
            reason: PeerGoneReason(r)
        }),
        (key(), addr, any::<u8>()).prop_map(|(peer, addr, f)| ServerToClient::PeerPresent {
            peer,
            addr,
            flags: PeerPresentFlags(f)
        }),
        any::<[u8; 8]>().prop_map(ServerToClient::Ping),
        any::<[u8; 8]>().prop_map(ServerToClient::Pong),
        packet().prop_map(ServerToClient::Health),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| ServerToClient::Restarting {
            reconnect_in_ms: a,
            try_for_ms: b
        }),
        key().prop_map(ServerToClient::ServerKey),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(frames in prop::collection::vec(client_frame(), 1..8)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            let before = buf.len();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len() - before, f.encoded_len());
        }
        let mut dec = FrameDecoder::server();
        for f in &frames {
            let raw = dec.decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(&ClientToServer::decode(raw.ty, raw.payload).unwrap(), f);
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn server_frames_round_trip(frames in prop::collection::vec(server_frame(), 1..8)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            let before = buf.len();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len() - before, f.encoded_len());
        }
        let mut dec = FrameDecoder::client();
        for f in &frames {
            let raw = dec.decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(&ServerToClient::decode(raw.ty, raw.payload).unwrap(), f);
        }
    }

    #[test]
    fn decoding_never_panics(input in prop::collection::vec(any::<u8>(), 0..4096), split in 0usize..4096) {
        for mut dec in [FrameDecoder::server(), FrameDecoder::client()] {
            let split = split.min(input.len());
            let mut buf = BytesMut::from(&input[..split]);
            let mut rest = &input[split..];
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(raw)) => {
                        let _ = ClientToServer::decode(raw.ty, raw.payload.clone());
                        let _ = ServerToClient::decode(raw.ty, raw.payload);
                    }
                    Ok(None) if !rest.is_empty() => {
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    /// A server cuts out an unknown frame up to `MAX_UNKNOWN_FRAME_LEN` (it is then skipped) and
    /// refuses a longer one from its header alone, whatever bytes follow.
    #[test]
    fn unknown_frames_are_bounded(
        ty in (0x16u8..=0xff),
        len in prop_oneof![0usize..=MAX_UNKNOWN_FRAME_LEN, (MAX_UNKNOWN_FRAME_LEN + 1)..=(u32::MAX as usize)],
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        prop_assume!(FrameType(ty).name().is_none());
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[ty]);
        buf.extend_from_slice(&(len as u32).to_be_bytes());
        let mut dec = FrameDecoder::server();
        if len <= MAX_UNKNOWN_FRAME_LEN {
            prop_assert_eq!(dec.needed(&buf), len);
            buf.extend_from_slice(&vec![0; len]);
            buf.extend_from_slice(&tail);
            let raw = dec.decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(
                ClientToServer::decode(raw.ty, raw.payload).unwrap(),
                ClientToServer::Unknown { ty: FrameType(ty), len }
            );
            prop_assert_eq!(&buf[..], &tail[..]);
        } else {
            prop_assert_eq!(dec.needed(&buf), 0);
            buf.extend_from_slice(&tail);
            prop_assert_eq!(
                dec.decode(&mut buf),
                Err(DecodeError::UnknownTooLarge { ty: FrameType(ty), len, max: MAX_UNKNOWN_FRAME_LEN })
            );
        }
    }

    #[test]
    fn perturbed_frames_never_panic(f in client_frame(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        for (at, x) in flips {
            let n = buf.len();
            buf[at % n] ^= x;
        }
        let mut dec = FrameDecoder::server();
        if let Ok(Some(raw)) = dec.decode(&mut buf) {
            let _ = ClientToServer::decode(raw.ty, raw.payload);
        }
    }
}

#[test]
fn golden_client_frames() {
    let k = NodePublicKey::from_bytes([0x11; 32]);
    let mut buf = BytesMut::new();
    ClientToServer::SendPacket {
        dst: k,
        packet: Bytes::from_static(b"hi"),
    }
    .encode(&mut buf);
    //               type  len(34)           dst key                      packet
    let mut want = vec![0x04, 0, 0, 0, 0x22];
    want.extend_from_slice(&[0x11; 32]);
    want.extend_from_slice(b"hi");
    assert_eq!(&buf[..], &want[..]);

    buf.clear();
    ClientToServer::NotePreferred(true).encode(&mut buf);
    assert_eq!(&buf[..], &[0x07, 0, 0, 0, 1, 1]);
    buf.clear();
    ClientToServer::WatchConns.encode(&mut buf);
    assert_eq!(&buf[..], &[0x10, 0, 0, 0, 0]);
}

#[test]
fn golden_server_frames() {
    let k = NodePublicKey::from_bytes([0x22; 32]);
    let mut buf = BytesMut::new();
    ServerToClient::PeerGone {
        peer: k,
        reason: PeerGoneReason::NOT_HERE,
    }
    .encode(&mut buf);
    assert_eq!(&buf[..5], &[0x08, 0, 0, 0, 33]);
    assert_eq!(buf[37], 0x01);

    buf.clear();
    ServerToClient::PeerPresent {
        peer: k,
        addr: Some("1.2.3.4:258".parse().unwrap()),
        flags: PeerPresentFlags::IS_REGULAR,
    }
    .encode(&mut buf);
    //          type  len 51
    assert_eq!(&buf[..5], &[0x09, 0, 0, 0, 0x33]);
    //          ::ffff:1.2.3.4                                           port 258  flags
    assert_eq!(
        &buf[37..],
        &[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 1, 2, 0x01
        ]
    );

    buf.clear();
    ServerToClient::KeepAlive.encode(&mut buf);
    assert_eq!(&buf[..], &[0x06, 0, 0, 0, 0]);

    // A legacy 32-byte PeerGone decodes as Disconnected; a short one is rejected.
    let legacy = ServerToClient::decode(FrameType::PEER_GONE, Bytes::from(vec![0x22; 32]));
    assert_eq!(
        legacy.unwrap(),
        ServerToClient::PeerGone {
            peer: k,
            reason: PeerGoneReason::DISCONNECTED
        }
    );
    assert!(ServerToClient::decode(FrameType::PEER_GONE, Bytes::from(vec![0; 31])).is_err());
}

#[test]
fn server_rejects_bad_client_frames() {
    use derp_proto::FrameType;
    // NotePreferred must be exactly one byte; SendPacket over 64 KiB is refused; Ping ≤ 1000.
    assert!(ClientToServer::decode(FrameType::NOTE_PREFERRED, Bytes::new()).is_err());
    assert!(
        ClientToServer::decode(FrameType::SEND_PACKET, Bytes::from(vec![0; 32 + 65537])).is_err()
    );
    assert!(
        ClientToServer::decode(FrameType::SEND_PACKET, Bytes::from(vec![0; 32 + 65536])).is_ok()
    );
    assert!(ClientToServer::decode(FrameType::PING, Bytes::from(vec![0; 1001])).is_err());
    assert_eq!(
        ClientToServer::decode(FrameType::PING, Bytes::from(vec![7; 20])).unwrap(),
        ClientToServer::Ping([7; 8])
    );
    assert!(ClientToServer::decode(FrameType::WATCH_CONNS, Bytes::from_static(&[0])).is_err());
    assert!(matches!(
        ClientToServer::decode(FrameType(0x0b), Bytes::from_static(&[1, 2])).unwrap(),
        ClientToServer::Unknown { len: 2, .. }
    ));
}
