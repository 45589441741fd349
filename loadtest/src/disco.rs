//! Disco messages, sealed the way Tailscale seals them (derp-protocol.md §7).
//!
//! `derp-proto` only classifies disco; a load generator has to play both ends, so sealing and
//! opening live here. Layout: magic ‖ sender disco key ‖ nonce\[24] ‖ NaCl box (tag ‖ ciphertext)
//! of `type ‖ version ‖ body`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use derp_proto::NodePublicKey;
use derp_proto::disco::{HEADER_LEN, MAGIC};

const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
const VERSION: u8 = 0;
const NONCE_LEN: usize = 24;
/// One endpoint in Pong and CallMeMaybe: IPv6 (IPv4-mapped for v4) and big-endian port.
const ENDPOINT_LEN: usize = 18;

/// A disco key pair.
#[derive(Clone)]
pub struct DiscoKey {
    secret: SecretKey,
    public: [u8; 32],
}

impl std::fmt::Debug for DiscoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiscoKey({:02x?})", &self.public[..4])
    }
}

impl DiscoKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let secret = SecretKey::from(rand::random::<[u8; 32]>());
        let public = *secret.public_key().as_bytes();
        Self { secret, public }
    }

    /// The public half, as carried in the packet header.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The precomputed box towards `peer` (one X25519 per peer, not per packet).
    pub fn shared(&self, peer: &[u8; 32]) -> SharedBox {
        SharedBox {
            inner: SalsaBox::new(&PublicKey::from(*peer), &self.secret),
            me: self.public,
        }
    }
}

/// A precomputed box between us and one peer.
pub struct SharedBox {
    inner: SalsaBox,
    me: [u8; 32],
}

impl std::fmt::Debug for SharedBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBox").finish_non_exhaustive()
    }
}

/// The disco messages hole punching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoMessage {
    /// "Are you there?" with a transaction id and the sender's node key.
    Ping {
        /// Transaction id echoed by the Pong.
        txid: [u8; 12],
        /// Sender's node key.
        node_key: NodePublicKey,
    },
    /// Reply to a Ping, saying where it came from.
    Pong {
        /// The Ping's transaction id.
        txid: [u8; 12],
        /// The Ping's source address as the responder saw it.
        src: SocketAddr,
    },
    /// "Try these addresses of mine", sent over DERP.
    CallMeMaybe(Vec<SocketAddr>),
}

impl SharedBox {
    /// Seals `msg` into a full disco packet.
    pub fn seal(&self, msg: &DiscoMessage) -> Vec<u8> {
        let mut plain = vec![0, VERSION];
        match msg {
            DiscoMessage::Ping { txid, node_key } => {
                plain[0] = TYPE_PING;
                plain.extend_from_slice(txid);
                plain.extend_from_slice(node_key.as_bytes());
            }
            DiscoMessage::Pong { txid, src } => {
                plain[0] = TYPE_PONG;
                plain.extend_from_slice(txid);
                put_endpoint(&mut plain, *src);
            }
            DiscoMessage::CallMeMaybe(eps) => {
                plain[0] = TYPE_CALL_ME_MAYBE;
                for ep in eps {
                    put_endpoint(&mut plain, *ep);
                }
            }
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(HEADER_LEN + 16 + plain.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.me);
        out.extend_from_slice(&nonce);
        // Sealing cannot fail for a buffer this small.
        if let Ok(ct) = self.inner.encrypt(&nonce.into(), plain.as_slice()) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens a disco packet from this box's peer; `None` when it is not one or does not verify.
    pub fn open(&self, packet: &[u8]) -> Option<DiscoMessage> {
        if !derp_proto::disco::looks_like_disco(packet) {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = packet[38..HEADER_LEN].try_into().ok()?;
        let plain = self
            .inner
            .decrypt(&nonce.into(), &packet[HEADER_LEN..])
            .ok()?;
        let (&ty, rest) = plain.split_first()?;
        let body = rest.get(1..)?;
        match ty {
            TYPE_PING => Some(DiscoMessage::Ping {
                txid: body.get(..12)?.try_into().ok()?,
                node_key: body
                    .get(12..44)
                    .and_then(NodePublicKey::from_slice)
                    .unwrap_or(NodePublicKey::from_bytes([0; 32])),
            }),
            TYPE_PONG => Some(DiscoMessage::Pong {
                txid: body.get(..12)?.try_into().ok()?,
                src: endpoint(body.get(12..30)?)?,
            }),
            TYPE_CALL_ME_MAYBE => {
                // Tailscale reads a malformed list as empty rather than rejecting the message.
                if body.len() % ENDPOINT_LEN != 0 || rest[0] != VERSION {
                    return Some(DiscoMessage::CallMeMaybe(Vec::new()));
                }
                Some(DiscoMessage::CallMeMaybe(
                    body.chunks(ENDPOINT_LEN).filter_map(endpoint).collect(),
                ))
            }
            _ => None,
        }
    }
}

/// The sender's disco key of a disco packet.
pub fn sender_of(packet: &[u8]) -> Option<[u8; 32]> {
    if !derp_proto::disco::looks_like_disco(packet) {
        return None;
    }
    packet[6..38].try_into().ok()
}

fn put_endpoint(out: &mut Vec<u8>, ep: SocketAddr) {
    let ip = match ep.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&ep.port().to_be_bytes());
}

fn endpoint(b: &[u8]) -> Option<SocketAddr> {
    let octets: [u8; 16] = b.get(..16)?.try_into().ok()?;
    let ip = Ipv6Addr::from(octets);
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    Some(SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_tailscale_and_round_trip() {
        let a = DiscoKey::generate();
        let b = DiscoKey::generate();
        let ab = a.shared(&b.public());
        let ba = b.shared(&a.public());
        let ping = DiscoMessage::Ping {
            txid: [7; 12],
            node_key: NodePublicKey::from_bytes([1; 32]),
        };
        let p = ab.seal(&ping);
        assert_eq!(
            p.len(),
            124,
            "Ping without padding is 124 bytes in Tailscale"
        );
        assert_eq!(sender_of(&p), Some(a.public()));
        assert_eq!(ba.open(&p), Some(ping));
        let pong = DiscoMessage::Pong {
            txid: [7; 12],
            src: "127.1.2.3:4567".parse().unwrap(),
        };
        let p = ba.seal(&pong);
        assert_eq!(p.len(), 110);
        assert_eq!(ab.open(&p), Some(pong));
        let eps = vec!["127.0.0.9:1".parse().unwrap(), "[::1]:2".parse().unwrap()];
        let p = ab.seal(&DiscoMessage::CallMeMaybe(eps.clone()));
        assert_eq!(p.len(), 80 + 18 * 2);
        assert_eq!(ba.open(&p), Some(DiscoMessage::CallMeMaybe(eps)));
        let mut bad = p.clone();
        bad[70] ^= 1;
        assert_eq!(ba.open(&bad), None);
    }
}
