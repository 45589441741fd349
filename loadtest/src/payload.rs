//! WireGuard-shaped test packets that carry a sequence number, a send time and a check value.
//!
//! The relay never looks inside a packet, but its queues, batching and drop policy see packet
//! sizes and types, so we send what WireGuard sends: a handshake initiation (148 bytes, type 1),
//! a response (92 bytes, type 2), then transport data (type 4) of the chosen size. The header
//! and send time carry a keyed 64-bit check value (SipHash under the pair's key), and the rest
//! of the packet is a fixed pseudo-random filler the receiver compares byte for byte, so it can
//! tell loss, duplication and reordering (from the counter) from corruption (a bad check value
//! or a changed filler byte), exactly.
//!
//! ```text
//! offset size
//! 0      1     message type: 1 initiation, 2 response, 4 transport data (WireGuard's values)
//! 1      3     zero
//! 4      4     receiver index, little endian: the pair id
//! 8      8     counter, little endian: the sequence number (0 for handshake messages)
//! 16     8     send time, nanoseconds since the run's epoch, little endian
//! 24     8     check value: SipHash of the pair key and bytes 0..24, little endian
//! 32     n     filler: bytes 0..n of one fixed ChaCha20 keystream (the same in every process)
//! ```
//!
//! Why not seal every packet with an AEAD, as WireGuard does: the relay is no adversary, only
//! a possible source of corruption, and sealing 1 300-byte packets on send and again on
//! receive was about 70 % of the load client's CPU (sealing just the header, still ~50 %: the
//! per-message ChaCha20/Poly1305 setup). On a machine whose cores the client shares with the
//! relay, that made every throughput figure a measure of the client. The check value catches
//! any changed header bit and the filler comparison (a memcmp) any changed byte after it.

use std::sync::OnceLock;

use std::hash::{DefaultHasher, Hasher};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};

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

/// Header: type, reserved, receiver index, counter, send time.
const HEADER_LEN: usize = 24;
/// Check value.
const CHECK_LEN: usize = 8;
/// Where the filler starts.
const FILLER_AT: usize = HEADER_LEN + CHECK_LEN;
/// Longest filler: enough for the largest DERP packet.
const FILLER_LEN: usize = 64 * 1024;

/// Smallest packet we can build: header and check value (as long as WireGuard's keepalive).
pub const MIN_PACKET_LEN: usize = FILLER_AT;

/// The filler every packet carries after its tag: a ChaCha20 keystream under a fixed key, so
/// it looks like WireGuard ciphertext and every process (shards on other machines too)
/// derives the same bytes.
fn filler() -> &'static [u8] {
    static FILLER: OnceLock<Vec<u8>> = OnceLock::new();
    FILLER.get_or_init(|| {
        let mut bytes = vec![0u8; FILLER_LEN];
        let aead = ChaCha20Poly1305::new(Key::from_slice(b"derp-fleet loadtest filler key!!"));
        // Cannot fail below 256 GiB.
        let _ = aead.encrypt_in_place_detached(&Nonce::default(), b"", &mut bytes);
        bytes
    })
}

/// A packet that passed its checks.
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
    /// Well-formed header but the check value or the filler differs: changed in flight.
    Corrupted,
}

impl std::fmt::Display for DecodePacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Foreign => f.write_str("not a loadtest packet"),
            Self::Corrupted => f.write_str("check value or filler mismatch: changed in flight"),
        }
    }
}

impl std::error::Error for DecodePacketError {}

/// Builds and checks packets for one pair.
#[derive(Clone)]
pub struct PacketCodec {
    key: [u8; 32],
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
        Self { key, pair }
    }

    /// The pair id written into every packet.
    pub fn pair(&self) -> u32 {
        self.pair
    }

    /// The check value of a header: SipHash-1-3 (std's `DefaultHasher`, fixed keys; the same
    /// binary builds and checks) over the pair key and the header.
    fn check(&self, header: &[u8]) -> u64 {
        let mut h = DefaultHasher::new();
        h.write(&self.key);
        h.write(header);
        h.finish()
    }

    /// Builds a packet of exactly `len` bytes (at least [`MIN_PACKET_LEN`]) into `out`.
    pub fn encode(&self, ty: u8, seq: u64, sent_ns: u64, len: usize, out: &mut Vec<u8>) {
        let len = len.clamp(MIN_PACKET_LEN, MIN_PACKET_LEN + FILLER_LEN);
        out.clear();
        out.resize(HEADER_LEN, 0);
        out[0] = ty;
        out[4..8].copy_from_slice(&self.pair.to_le_bytes());
        out[8..16].copy_from_slice(&seq.to_le_bytes());
        out[16..24].copy_from_slice(&sent_ns.to_le_bytes());
        let check = self.check(out);
        out.extend_from_slice(&check.to_le_bytes());
        out.extend_from_slice(&filler()[..len - FILLER_AT]);
    }

    /// Checks and reads a packet.
    pub fn decode(&self, packet: &[u8]) -> Result<Decoded, DecodePacketError> {
        if packet.len() < MIN_PACKET_LEN
            || packet.len() > MIN_PACKET_LEN + FILLER_LEN
            || !matches!(packet[0], TYPE_DATA | TYPE_INITIATION | TYPE_RESPONSE)
        {
            return Err(DecodePacketError::Foreign);
        }
        let header = &packet[..HEADER_LEN];
        if le64(&packet[HEADER_LEN..FILLER_AT]) != self.check(header)
            || packet[FILLER_AT..] != filler()[..packet.len() - FILLER_AT]
        {
            return Err(DecodePacketError::Corrupted);
        }
        Ok(Decoded {
            ty: packet[0],
            pair: u32::from_le_bytes([packet[4], packet[5], packet[6], packet[7]]),
            seq: le64(&packet[8..16]),
            sent_ns: le64(&packet[16..24]),
        })
    }
}

/// The pair id of a packet, read without authentication, to pick the codec.
pub fn peek_pair(packet: &[u8]) -> Option<u32> {
    let b = packet.get(4..8)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
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
            let d = c.decode(&buf).unwrap();
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
            let r = c.decode(&bad);
            assert!(r.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn filler_looks_random_and_a_change_deep_in_a_large_packet_is_caught() {
        let c = PacketCodec::new(2, [5; 32]);
        let mut p = Vec::new();
        c.encode(TYPE_DATA, 9, 1, 1_300, &mut p);
        let zeros = p[MIN_PACKET_LEN..].iter().filter(|&&b| b == 0).count();
        assert!(
            zeros < 30,
            "filler should look like ciphertext, {zeros} zero bytes"
        );
        let last = p.len() - 1;
        p[last] ^= 1;
        assert_eq!(c.decode(&p), Err(DecodePacketError::Corrupted));
        // Longer than any filler: not ours.
        assert_eq!(
            c.decode(&vec![TYPE_DATA; MIN_PACKET_LEN + FILLER_LEN + 1]),
            Err(DecodePacketError::Foreign)
        );
    }

    #[test]
    fn wrong_key_is_corruption_and_junk_is_foreign() {
        let a = PacketCodec::new(1, [3; 32]);
        let b = PacketCodec::new(1, [4; 32]);
        let mut p = Vec::new();
        a.encode(TYPE_INITIATION, 0, 1, INITIATION_LEN, &mut p);
        assert_eq!(b.decode(&p), Err(DecodePacketError::Corrupted));
        assert_eq!(a.decode(&[4u8; 10]), Err(DecodePacketError::Foreign));
        assert_eq!(a.decode(&[9u8; 100]), Err(DecodePacketError::Foreign));
    }
}
