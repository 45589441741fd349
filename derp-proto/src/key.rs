//! Node keys (the DERP identity of a client or server) and the mesh pre-shared key.
//!
//! Text forms follow Tailscale's `types/key`: `nodekey:<64 hex>` for public keys and
//! `privkey:<64 hex>` for private keys; encoders write lowercase, decoders accept either case.

use std::fmt;
use std::str::FromStr;

use crypto_box::aead::{Aead, AeadCore, OsRng};
use crypto_box::{Nonce, SalsaBox};
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::consts::{BOX_OVERHEAD, KEY_LEN, NONCE_LEN};

const NODE_PUBLIC_PREFIX: &str = "nodekey:";
const PRIVATE_PREFIX: &str = "privkey:";

/// Why a key's text form did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyParseError {
    /// The text lacks the expected type prefix.
    #[error("key must start with {0:?}")]
    MissingPrefix(&'static str),
    /// The text after the prefix is not 64 hex digits.
    #[error("key must be 64 hex digits")]
    BadHex,
}

fn parse_hex32(s: &str) -> Result<[u8; KEY_LEN], KeyParseError> {
    let mut out = [0u8; KEY_LEN];
    if s.len() != 2 * KEY_LEN {
        return Err(KeyParseError::BadHex);
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyParseError::BadHex)?;
    Ok(out)
}

/// A node's public key: its identity on a DERP server.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePublicKey([u8; KEY_LEN]);

/// Encodings of the Curve25519 points of small order, with the top bit cleared (X25519 ignores
/// it): 0, 1, two points of order 8, and p − 1, p, p + 1. A key equal to one of these yields
/// an all-zero shared secret with every peer (the list libsodium's `has_small_order` uses).
const SMALL_ORDER_POINTS: [[u8; KEY_LEN]; 7] = [
    [0; 32],
    [
        0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

impl NodePublicKey {
    /// Whether this key is a point of small order (including all zeros): X25519 with it gives
    /// an all-zero shared secret whatever the other side's secret, so a box "sealed by" it
    /// proves nothing. Compared without early exit (the key is public, but the habit is cheap).
    pub fn is_small_order(&self) -> bool {
        let mut k = self.0;
        k[KEY_LEN - 1] &= 0x7f;
        SMALL_ORDER_POINTS
            .iter()
            .fold(false, |hit, p| hit | bool::from(k[..].ct_eq(&p[..])))
    }

    /// Wraps 32 raw bytes as they appear on the wire.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a key from the first 32 bytes of `buf`, or `None` if it is shorter.
    pub fn from_slice(buf: &[u8]) -> Option<Self> {
        let bytes: [u8; KEY_LEN] = buf.get(..KEY_LEN)?.try_into().ok()?;
        Some(Self(bytes))
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Untyped lowercase hex, as in the `Derp-Public-Key` header and the metacert CN.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Log form: `[` + the first five characters of standard base64 + `]`, as Tailscale logs keys.
    pub fn short(&self) -> ShortKey {
        ShortKey(*self)
    }
}

impl fmt::Display for NodePublicKey {
    /// The `nodekey:<hex>` text form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{NODE_PUBLIC_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePublicKey({})", self.short())
    }
}

impl FromStr for NodePublicKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(NODE_PUBLIC_PREFIX)
            .ok_or(KeyParseError::MissingPrefix(NODE_PUBLIC_PREFIX))?;
        parse_hex32(hex).map(Self)
    }
}

/// The short log form of a public key; see [`NodePublicKey::short`].
#[derive(Clone, Copy)]
pub struct ShortKey(NodePublicKey);

impl fmt::Display for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use base64::Engine as _;
        let mut b64 = [0u8; 8];
        // Six bytes encode to exactly eight base64 characters; we print the first five.
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(&self.0.0[..6], &mut b64)
            .unwrap_or(0);
        let s = std::str::from_utf8(&b64[..n.min(5)]).unwrap_or("?");
        write!(f, "[{s}]")
    }
}

impl fmt::Debug for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A node's private key. Never printed; zeroed on drop.
#[derive(Clone)]
pub struct NodeSecretKey {
    raw: [u8; KEY_LEN],
    secret: crypto_box::SecretKey,
    public: NodePublicKey,
}

impl NodeSecretKey {
    /// Generates a fresh key from the operating system's RNG.
    pub fn generate() -> Self {
        Self::generate_from(&mut OsRng)
    }

    /// Generates a key from `rng`, clamped as Tailscale stores keys.
    pub fn generate_from(rng: &mut impl CryptoRngCore) -> Self {
        let mut raw = [0u8; KEY_LEN];
        rng.fill_bytes(&mut raw);
        let key = Self::from_bytes(raw);
        raw.zeroize();
        key
    }

    /// Builds a key from 32 raw bytes, applying X25519 clamping so the stored form matches Go's.
    pub fn from_bytes(mut raw: [u8; KEY_LEN]) -> Self {
        raw[0] &= 248;
        raw[31] = (raw[31] & 127) | 64;
        let secret = crypto_box::SecretKey::from(raw);
        let public = NodePublicKey(*secret.public_key().as_bytes());
        Self {
            raw,
            secret,
            public,
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> NodePublicKey {
        self.public
    }

    /// The raw (clamped) 32 bytes.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.raw
    }

    /// The `privkey:<hex>` text form used in derper's key file.
    pub fn to_text(&self) -> String {
        format!("{PRIVATE_PREFIX}{}", hex::encode(self.raw))
    }

    /// Precomputes the box shared with `peer`: one X25519 for any number of seals and opens.
    pub fn shared_box(&self, peer: &NodePublicKey) -> SharedBox {
        SharedBox(std::sync::Arc::new(SalsaBox::new(
            &crypto_box::PublicKey::from(peer.0),
            &self.secret,
        )))
    }

    /// Seals `plaintext` to `peer` as `nonce ‖ tag ‖ ciphertext` with a fresh random nonce.
    pub fn seal_to(&self, peer: &NodePublicKey, plaintext: &[u8]) -> Vec<u8> {
        self.shared_box(peer).seal(plaintext)
    }

    /// Seals with a caller-chosen nonce. Reusing a nonce with the same key pair breaks the box:
    /// this exists for deterministic test vectors.
    pub fn seal_to_with_nonce(
        &self,
        peer: &NodePublicKey,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let sbox = SalsaBox::new(&crypto_box::PublicKey::from(peer.0), &self.secret);
        let nonce = Nonce::from(nonce);
        let mut out = Vec::with_capacity(NONCE_LEN + BOX_OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce);
        // Encryption with XSalsa20-Poly1305 cannot fail for in-memory input; an empty result
        // would simply not open on the other side.
        if let Ok(ct) = sbox.encrypt(&nonce, plaintext) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens `nonce ‖ tag ‖ ciphertext` sealed by `peer` to this key.
    pub fn open_from(&self, peer: &NodePublicKey, sealed: &[u8]) -> Option<Vec<u8>> {
        self.shared_box(peer).open(sealed)
    }
}

/// A NaCl box precomputed between two node keys (see [`NodeSecretKey::shared_box`]).
#[derive(Clone)]
pub struct SharedBox(std::sync::Arc<SalsaBox>);

impl SharedBox {
    /// Seals as `nonce ‖ tag ‖ ciphertext` with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = SalsaBox::generate_nonce(&mut OsRng);
        let mut out = Vec::with_capacity(NONCE_LEN + BOX_OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce);
        // Encryption with XSalsa20-Poly1305 cannot fail for in-memory input; an empty result
        // would simply not open on the other side.
        if let Ok(ct) = self.0.encrypt(&nonce, plaintext) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens `nonce ‖ tag ‖ ciphertext`.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + BOX_OVERHEAD {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.0.decrypt(Nonce::from_slice(nonce), ct).ok()
    }
}

impl fmt::Debug for SharedBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedBox(..)")
    }
}

impl Drop for NodeSecretKey {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}

impl fmt::Debug for NodeSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeSecretKey(public {})", self.public.short())
    }
}

impl FromStr for NodeSecretKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or(KeyParseError::MissingPrefix(PRIVATE_PREFIX))?;
        let mut raw = parse_hex32(hex)?;
        let key = Self::from_bytes(raw);
        raw.zeroize();
        Ok(key)
    }
}

/// The pre-shared key that authenticates mesh peers: exactly 32 bytes written as 64 hex digits.
///
/// Compared in constant time, as Go's derper has since v1.86.
#[derive(Clone)]
pub struct MeshKey([u8; KEY_LEN]);

impl MeshKey {
    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Lowercase hex, as sent in ClientInfo's `meshKey`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for MeshKey {
    type Err = KeyParseError;

    /// Parses 64 hex digits, ignoring surrounding whitespace (key files end in a newline).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s.trim()).map(Self)
    }
}

impl PartialEq for MeshKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for MeshKey {}

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshKey(..)")
    }
}

impl Drop for MeshKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {

    /// Every listed point really is of small order: X25519 with it gives the all-zero secret
    /// (checked with x25519-dalek, not with our list), also with the top bit set; and an
    /// ordinary key is not flagged.
    #[test]
    fn small_order_points_give_all_zero_secrets() {
        let secret = x25519_dalek::StaticSecret::random_from_rng(OsRng);
        for p in SMALL_ORDER_POINTS {
            for top in [0u8, 0x80] {
                let mut bytes = p;
                bytes[31] |= top;
                let key = NodePublicKey::from_bytes(bytes);
                assert!(key.is_small_order(), "{bytes:02x?}");
                let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(bytes));
                assert!(
                    !shared.was_contributory(),
                    "{bytes:02x?} is not small-order"
                );
            }
        }
        for _ in 0..100 {
            assert!(!NodeSecretKey::generate().public_key().is_small_order());
        }
    }
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let k = NodeSecretKey::from_bytes([7; 32]);
        let text = k.to_text();
        assert!(text.starts_with("privkey:"));
        let back: NodeSecretKey = text.parse().unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let pubtext = k.public_key().to_string();
        assert_eq!(pubtext.parse::<NodePublicKey>().unwrap(), k.public_key());
        assert_eq!(
            pubtext
                .to_uppercase()
                .replace("NODEKEY:", "nodekey:")
                .parse::<NodePublicKey>(),
            Ok(k.public_key())
        );
        assert_eq!(
            "nodekey:abc".parse::<NodePublicKey>(),
            Err(KeyParseError::BadHex)
        );
        assert_eq!(
            hex::encode([1u8; 32]).parse::<NodePublicKey>(),
            Err(KeyParseError::MissingPrefix("nodekey:"))
        );
    }

    #[test]
    fn clamping_matches_go() {
        let k = NodeSecretKey::from_bytes([0xff; 32]);
        let raw = k.to_bytes();
        assert_eq!(raw[0], 0xf8);
        assert_eq!(raw[31], 0x7f);
    }

    #[test]
    fn box_round_trip_and_layout() {
        let a = NodeSecretKey::from_bytes([1; 32]);
        let b = NodeSecretKey::from_bytes([2; 32]);
        let sealed = a.seal_to_with_nonce(&b.public_key(), [9; 24], b"hello");
        assert_eq!(&sealed[..24], &[9; 24]);
        assert_eq!(sealed.len(), 24 + 16 + 5);
        assert_eq!(b.open_from(&a.public_key(), &sealed).unwrap(), b"hello");
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(b.open_from(&a.public_key(), &bad).is_none());
        assert!(b.open_from(&a.public_key(), &sealed[..20]).is_none());
    }

    #[test]
    fn short_form_is_five_base64_chars() {
        let k = NodePublicKey::from_bytes([0; 32]);
        assert_eq!(k.short().to_string(), "[AAAAA]");
    }

    #[test]
    fn mesh_key_parses_and_compares() {
        let hex = "ab".repeat(32);
        let a: MeshKey = format!(" {hex}\n").parse().unwrap();
        let b: MeshKey = hex.parse().unwrap();
        assert_eq!(a, b);
        assert!("ab".repeat(31).parse::<MeshKey>().is_err());
        assert_ne!(a, MeshKey::from_bytes([0; 32]));
    }
}
