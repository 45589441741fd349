//! WireGuard-shaped test packets that carry a sequence number, a send time and an AEAD tag.
//!
//! The relay never looks inside a packet, but its queues, batching and drop policy see packet
//! sizes and types, so we send what WireGuard sends: a handshake initiation (148 bytes, type 1),
//! a response (92 bytes, type 2), then transport data (type 4) of the chosen size. Every packet
//! is sealed with ChaCha20-Poly1305 under a per-pair key, so the receiver can tell loss,
//! duplication and reordering (from the counter) from corruption (a bad tag), exactly.
//!
//! ```text
//! offset size
//! 0      1     message type: 1 initiation, 2 response, 4 transport data (WireGuard's values)
//! 1      3     zero
//! 4      4     receiver index, little endian: the pair id
//! 8      8     counter, little endian: the sequence number (0 for handshake messages)
//! 16     8     sealed: send time, nanoseconds since the run's epoch, little endian
//! 24     n     sealed: zero padding up to the packet size
//! 24+n   16    Poly1305 tag over bytes 0..16 (associated data) and the sealed part
//! ```
//!
//! The nonce is the counter, as in WireGuard, with the message type in its first byte so that
//! handshake messages (counter 0) never share a nonce with data.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};

/// WireGuard's handshake initiation message type.
pub const TYPE_INITIATION: u8 = 0x01;
/// WireGuard's handshake response message type.
pub const TYPE_RESPONSE: u8 = 0x02;
/// WireGuard's transport data message type.
pub const TYPE_DATA: u8 = 0x04;

/// Size of a WireGuard handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Size of a WireGuard handshake response.
pub const RESPONSE_LEN: usize = 92;

/// Cleartext header: type, reserved, receiver index, counter.
const HEADER_LEN: usize = 16;
/// Sealed send time.
const TIME_LEN: usize = 8;
/// Poly1305 tag.
const TAG_LEN: usize = 16;

/// Smallest packet we can build: header, send time and tag (WireGuard's keepalive is 32).
pub const MIN_PACKET_LEN: usize = HEADER_LEN + TIME_LEN + TAG_LEN;

/// A packet that passed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decoded {
    /// Message type ([`TYPE_DATA`], [`TYPE_INITIATION`] or [`TYPE_RESPONSE`]).
    pub ty: u8,
    /// Pair id from the receiver index field.
    pub pair: u32,
    /// Sequence number.
    pub seq: u64,
    /// Send time in nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

/// Why a received packet was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodePacketError {
    /// Shorter than [`MIN_PACKET_LEN`] or not one of our message types: not ours at all.
    Foreign,
    /// Well-formed header but the tag does not verify: the bytes were changed in flight.
    Corrupted,
}

impl std::fmt::Display for DecodePacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Foreign => f.write_str("not a loadtest packet"),
            Self::Corrupted => f.write_str("authentication tag mismatch"),
        }
    }
}

impl std::error::Error for DecodePacketError {}

/// Seals and opens packets for one pair.
#[derive(Clone)]
pub struct PacketCodec {
    aead: ChaCha20Poly1305,
    pair: u32,
}

impl std::fmt::Debug for PacketCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketCodec")
            .field("pair", &self.pair)
            .finish_non_exhaustive()
    }
}

impl PacketCodec {
    /// A codec for pair `pair` with a 32-byte key shared by its two peers.
    pub fn new(pair: u32, key: [u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
            pair,
        }
    }

    /// The pair id written into every packet.
    pub fn pair(&self) -> u32 {
        self.pair
    }

    /// Builds a packet of exactly `len` bytes (at least [`MIN_PACKET_LEN`]) into `out`.
    pub fn encode(&self, ty: u8, seq: u64, sent_ns: u64, len: usize, out: &mut Vec<u8>) {
        let len = len.max(MIN_PACKET_LEN);
        out.clear();
        out.resize(len, 0);
        out[0] = ty;
        out[4..8].copy_from_slice(&self.pair.to_le_bytes());
        out[8..16].copy_from_slice(&seq.to_le_bytes());
        out[16..24].copy_from_slice(&sent_ns.to_le_bytes());
        let (head, rest) = out.split_at_mut(HEADER_LEN);
        let (body, tag_out) = rest.split_at_mut(len - HEADER_LEN - TAG_LEN);
        // Encryption only fails for messages over 256 GiB; ours are under 64 KiB.
        if let Ok(tag) = self
            .aead
            .encrypt_in_place_detached(&nonce(ty, seq), head, body)
        {
            tag_out.copy_from_slice(&tag);
        }
    }

    /// Checks and opens a packet in place (the buffer is scratch afterwards).
    pub fn decode(&self, packet: &mut [u8]) -> Result<Decoded, DecodePacketError> {
        if packet.len() < MIN_PACKET_LEN
            || !matches!(packet[0], TYPE_DATA | TYPE_INITIATION | TYPE_RESPONSE)
        {
            return Err(DecodePacketError::Foreign);
        }
        let ty = packet[0];
        let seq = le64(&packet[8..16]);
        let len = packet.len();
        let (head, rest) = packet.split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(len - HEADER_LEN - TAG_LEN);
        self.aead
            .decrypt_in_place_detached(&nonce(ty, seq), head, body, Tag::from_slice(tag))
            .map_err(|_| DecodePacketError::Corrupted)?;
        Ok(Decoded {
            ty,
            pair: u32::from_le_bytes([head[4], head[5], head[6], head[7]]),
            seq,
            sent_ns: le64(&body[..8]),
        })
    }
}

/// The pair id of a packet, read without authentication, to pick the codec.
pub fn peek_pair(packet: &[u8]) -> Option<u32> {
    let b = packet.get(4..8)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn nonce(ty: u8, seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = ty;
    n[4..].copy_from_slice(&seq.to_le_bytes());
    *Nonce::from_slice(&n)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_size() {
        let c = PacketCodec::new(7, [9; 32]);
        let mut buf = Vec::new();
        for len in [
            0,
            MIN_PACKET_LEN,
            100,
            RESPONSE_LEN,
            INITIATION_LEN,
            1_300,
            65_000,
        ] {
            c.encode(TYPE_DATA, 42, 123_456, len, &mut buf);
            assert_eq!(buf.len(), len.max(MIN_PACKET_LEN));
            assert_eq!(buf[0], TYPE_DATA);
            let d = c.decode(&mut buf).unwrap();
            assert_eq!(
                (d.ty, d.pair, d.seq, d.sent_ns),
                (TYPE_DATA, 7, 42, 123_456)
            );
        }
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let c = PacketCodec::new(1, [3; 32]);
        let mut good = Vec::new();
        c.encode(TYPE_DATA, 5, 99, 100, &mut good);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            let r = c.decode(&mut bad);
            assert!(r.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn wrong_key_is_corruption_and_junk_is_foreign() {
        let a = PacketCodec::new(1, [3; 32]);
        let b = PacketCodec::new(1, [4; 32]);
        let mut p = Vec::new();
        a.encode(TYPE_INITIATION, 0, 1, INITIATION_LEN, &mut p);
        assert_eq!(b.decode(&mut p), Err(DecodePacketError::Corrupted));
        assert_eq!(a.decode(&mut [4u8; 10]), Err(DecodePacketError::Foreign));
        assert_eq!(a.decode(&mut [9u8; 100]), Err(DecodePacketError::Foreign));
    }
}
