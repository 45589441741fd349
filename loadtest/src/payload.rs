//! WireGuard-shaped test packets that carry a sequence number, a send time and an AEAD tag.
//!
//! The relay never looks inside a packet, but its queues, batching and drop policy see packet
//! sizes and types, so we send what WireGuard sends: a handshake initiation (148 bytes, type 1),
//! a response (92 bytes, type 2), then transport data (type 4) of the chosen size. The header
//! and send time are sealed with ChaCha20-Poly1305 under a per-pair key, and the rest of the
//! packet is a fixed pseudo-random filler the receiver compares byte for byte, so it can tell
//! loss, duplication and reordering (from the counter) from corruption (a bad tag or a changed
//! filler byte), exactly.
//!
//! ```text
//! offset size
//! 0      1     message type: 1 initiation, 2 response, 4 transport data (WireGuard's values)
//! 1      3     zero
//! 4      4     receiver index, little endian: the pair id
//! 8      8     counter, little endian: the sequence number (0 for handshake messages)
//! 16     8     sealed: send time, nanoseconds since the run's epoch, little endian
//! 24     16    Poly1305 tag over bytes 0..16 (associated data) and the sealed time
//! 40     n     filler: bytes 0..n of one fixed ChaCha20 keystream (the same in every process)
//! ```
//!
//! Only 8 bytes are sealed per packet, not the whole packet: sealing 1 300 bytes on send and
//! again on receive was about 70 % of the load client's CPU, and on a machine whose cores the
//! client shares with the relay that made every throughput figure a measure of the client.
//! Comparing the filler costs a memcmp and still catches any changed byte.
//!
//! The nonce is the counter, as in WireGuard, with the message type in its first byte so that
//! handshake messages (counter 0) never share a nonce with data.

use std::sync::OnceLock;

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
/// Where the filler starts.
const FILLER_AT: usize = HEADER_LEN + TIME_LEN + TAG_LEN;
/// Longest filler: enough for the largest DERP packet.
const FILLER_LEN: usize = 64 * 1024;

/// Smallest packet we can build: header, send time and tag (WireGuard's keepalive is 32).
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
        let len = len.clamp(MIN_PACKET_LEN, MIN_PACKET_LEN + FILLER_LEN);
        out.clear();
        out.resize(FILLER_AT, 0);
        out[0] = ty;
        out[4..8].copy_from_slice(&self.pair.to_le_bytes());
        out[8..16].copy_from_slice(&seq.to_le_bytes());
        out[16..24].copy_from_slice(&sent_ns.to_le_bytes());
        let (head, rest) = out.split_at_mut(HEADER_LEN);
        let (time, tag_out) = rest.split_at_mut(TIME_LEN);
        // Encryption only fails for messages over 256 GiB.
        if let Ok(tag) = self
            .aead
            .encrypt_in_place_detached(&nonce(ty, seq), head, time)
        {
            tag_out.copy_from_slice(&tag);
        }
        out.extend_from_slice(&filler()[..len - FILLER_AT]);
    }

    /// Checks and opens a packet (the buffer is left as it was).
    pub fn decode(&self, packet: &[u8]) -> Result<Decoded, DecodePacketError> {
        if packet.len() < MIN_PACKET_LEN
            || packet.len() > MIN_PACKET_LEN + FILLER_LEN
            || !matches!(packet[0], TYPE_DATA | TYPE_INITIATION | TYPE_RESPONSE)
        {
            return Err(DecodePacketError::Foreign);
        }
        let ty = packet[0];
        let seq = le64(&packet[8..16]);
        let mut time = [0u8; TIME_LEN];
        time.copy_from_slice(&packet[HEADER_LEN..HEADER_LEN + TIME_LEN]);
        let tag = &packet[HEADER_LEN + TIME_LEN..FILLER_AT];
        self.aead
            .decrypt_in_place_detached(
                &nonce(ty, seq),
                &packet[..HEADER_LEN],
                &mut time,
                Tag::from_slice(tag),
            )
            .map_err(|_| DecodePacketError::Corrupted)?;
        if packet[FILLER_AT..] != filler()[..packet.len() - FILLER_AT] {
            return Err(DecodePacketError::Corrupted);
        }
        Ok(Decoded {
            ty,
            pair: u32::from_le_bytes([packet[4], packet[5], packet[6], packet[7]]),
            seq,
            sent_ns: u64::from_le_bytes(time),
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
