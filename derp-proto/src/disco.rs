//! Disco (NAT traversal) packet recognition.
//!
//! The relay never decrypts disco; it only needs to tell disco from WireGuard so the two get
//! separate queues and so NotHere replies go only to disco senders.

use crate::consts::{KEY_LEN, NONCE_LEN};

/// The 6 bytes that open every disco packet: `TS` and the UTF-8 speech-balloon emoji.
pub const MAGIC: [u8; 6] = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];

/// Length of the cleartext header: magic, sender disco key, nonce.
pub const HEADER_LEN: usize = MAGIC.len() + KEY_LEN + NONCE_LEN;

/// Whether `packet` is classified as disco, by Go derper's rule: at least the header long and
/// starting with the magic. No cryptography is checked.
pub fn looks_like_disco(packet: &[u8]) -> bool {
    packet.len() >= HEADER_LEN && packet[..MAGIC.len()] == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_go() {
        let mut p = vec![0u8; HEADER_LEN];
        p[..6].copy_from_slice(&MAGIC);
        assert!(looks_like_disco(&p));
        assert!(!looks_like_disco(&p[..HEADER_LEN - 1]));
        p[0] = 0;
        assert!(!looks_like_disco(&p));
        assert!(!looks_like_disco(&[]));
    }
}
