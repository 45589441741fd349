//! QUIC mesh datagrams: how two of our relays carry ForwardPacket outside the DERP stream.
//!
//! A QUIC mesh link (ALPN [`ALPN`]) runs the ordinary DERP login and presence on its first
//! bidirectional stream; forwarded packets travel as unreliable QUIC datagrams so that one lost
//! datagram delays nothing else. A packet too large for the path's datagram limit goes as a
//! normal ForwardPacket frame on the stream instead.
//!
//! ```text
//! datagram = tag (1 byte) ‖ body
//! tag 0x01  FORWARD: 32B src key ‖ 32B dst key ‖ packet (0 ..= MAX_PACKET_SIZE bytes)
//! ```
//!
//! Unknown tags are refused as malformed (not skipped: a datagram is one message, and a peer
//! speaking a newer format would have negotiated a newer ALPN). Pure encoding; no I/O.

use bytes::{BufMut, Bytes, BytesMut};

use crate::consts::{KEY_LEN, MAX_PACKET_SIZE};
use crate::key::NodePublicKey;

/// The ALPN protocol of a QUIC mesh link between our relays.
pub const ALPN: &[u8] = b"derp-mesh/1";

/// Tag of a forwarded packet.
pub const TAG_FORWARD: u8 = 0x01;

/// Bytes before the packet in a FORWARD datagram: tag, source and destination keys.
pub const FORWARD_HEADER_LEN: usize = 1 + 2 * KEY_LEN;

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Shorter than its header, or an unknown tag.
    #[error("malformed mesh datagram")]
    Malformed,
    /// The packet inside exceeds [`MAX_PACKET_SIZE`].
    #[error("mesh datagram packet of {0} bytes exceeds the 64 KiB limit")]
    Oversized(usize),
}

/// A decoded FORWARD datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardDatagram {
    /// The sender's key (a client of the peer relay).
    pub src: NodePublicKey,
    /// The destination key (a client of the receiving relay).
    pub dst: NodePublicKey,
    /// The packet; a slice of the datagram, not a copy.
    pub packet: Bytes,
}

/// Appends a FORWARD datagram to `out`.
pub fn encode_forward(out: &mut BytesMut, src: &NodePublicKey, dst: &NodePublicKey, packet: &[u8]) {
    out.reserve(FORWARD_HEADER_LEN + packet.len());
    out.put_u8(TAG_FORWARD);
    out.put_slice(src.as_bytes());
    out.put_slice(dst.as_bytes());
    out.put_slice(packet);
}

/// Decodes one datagram. The header is checked before anything is sliced.
pub fn decode(mut datagram: Bytes) -> Result<ForwardDatagram, DatagramError> {
    if datagram.len() < FORWARD_HEADER_LEN || datagram[0] != TAG_FORWARD {
        return Err(DatagramError::Malformed);
    }
    let len = datagram.len() - FORWARD_HEADER_LEN;
    if len > MAX_PACKET_SIZE {
        return Err(DatagramError::Oversized(len));
    }
    let mut src = [0u8; KEY_LEN];
    let mut dst = [0u8; KEY_LEN];
    src.copy_from_slice(&datagram[1..1 + KEY_LEN]);
    dst.copy_from_slice(&datagram[1 + KEY_LEN..FORWARD_HEADER_LEN]);
    let packet = datagram.split_off(FORWARD_HEADER_LEN);
    Ok(ForwardDatagram {
        src: NodePublicKey::from_bytes(src),
        dst: NodePublicKey::from_bytes(dst),
        packet,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn forward_round_trips(
            src in any::<[u8; 32]>(),
            dst in any::<[u8; 32]>(),
            packet in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let (src, dst) = (NodePublicKey::from_bytes(src), NodePublicKey::from_bytes(dst));
            let mut out = BytesMut::new();
            encode_forward(&mut out, &src, &dst, &packet);
            prop_assert_eq!(out.len(), FORWARD_HEADER_LEN + packet.len());
            let d = decode(out.freeze()).unwrap();
            prop_assert_eq!((d.src, d.dst, &d.packet[..]), (src, dst, &packet[..]));
        }

        #[test]
        fn any_bytes_decode_or_are_refused(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            crate::fuzzing::mesh_datagram(&data);
        }
    }

    #[test]
    fn golden_forward_datagram() {
        let mut out = BytesMut::new();
        let (src, dst) = (
            NodePublicKey::from_bytes([0xaa; 32]),
            NodePublicKey::from_bytes([0xbb; 32]),
        );
        encode_forward(&mut out, &src, &dst, b"hi");
        let expected = [
            "01",             // tag FORWARD
            &"aa".repeat(32), // src
            &"bb".repeat(32), // dst
            "6869",           // packet
        ]
        .concat();
        assert_eq!(hex::encode(&out), expected);
        let d = decode(out.freeze()).unwrap();
        assert_eq!((d.src, d.dst, &d.packet[..]), (src, dst, &b"hi"[..]));
    }

    #[test]
    fn empty_packet_round_trips_and_bad_input_is_refused() {
        let mut out = BytesMut::new();
        let k = NodePublicKey::from_bytes([1; 32]);
        encode_forward(&mut out, &k, &k, b"");
        assert!(decode(out.clone().freeze()).unwrap().packet.is_empty());

        // Every truncation of the header is malformed, as is an unknown tag.
        for cut in 0..FORWARD_HEADER_LEN {
            assert_eq!(
                decode(out.clone().freeze().slice(..cut)),
                Err(DatagramError::Malformed)
            );
        }
        let mut unknown = out.clone();
        unknown[0] = 0x02;
        assert_eq!(decode(unknown.freeze()), Err(DatagramError::Malformed));

        let mut big = BytesMut::new();
        encode_forward(&mut big, &k, &k, &vec![0; MAX_PACKET_SIZE + 1]);
        assert_eq!(
            decode(big.freeze()),
            Err(DatagramError::Oversized(MAX_PACKET_SIZE + 1))
        );
    }
}
