//! Typed frames in each direction, with their encoders and decoders.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes};

use super::FrameType;
use crate::consts::{FRAME_HEADER_LEN, KEY_LEN, MAX_PACKET_SIZE, MAX_PING_LEN, PING_DATA_LEN};
use crate::error::DecodeError;
use crate::key::NodePublicKey;

/// Why a PeerGone frame was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerGoneReason(pub u8);

impl PeerGoneReason {
    /// The peer was connected somewhere in the region and left.
    pub const DISCONNECTED: Self = Self(0x00);
    /// The server has no record of the destination.
    pub const NOT_HERE: Self = Self(0x01);
    /// Never on the wire: a mesh watcher's upstream connection broke.
    pub const MESH_CONN_BROKE: Self = Self(0xf0);
}

/// The flags byte of PeerPresent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PeerPresentFlags(pub u8);

impl PeerPresentFlags {
    /// None of the other flags apply.
    pub const IS_REGULAR: Self = Self(0x01);
    /// The connection authenticated with the mesh key.
    pub const IS_MESH_PEER: Self = Self(0x02);
    /// ClientInfo said `IsProber`.
    pub const IS_PROBER: Self = Self(0x04);
    /// The upgrade request carried `Ideal-Node`.
    pub const NOT_IDEAL: Self = Self(0x08);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for PeerPresentFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A frame a client sends once the handshake is done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientToServer {
    /// Relay `packet` to `dst`.
    SendPacket {
        /// Destination node.
        dst: NodePublicKey,
        /// Opaque packet, at most [`MAX_PACKET_SIZE`] bytes.
        packet: Bytes,
    },
    /// Mesh only: deliver `packet` from `src` to the local client `dst`.
    ForwardPacket {
        /// Originating client.
        src: NodePublicKey,
        /// Destination client.
        dst: NodePublicKey,
        /// Opaque packet.
        packet: Bytes,
    },
    /// Whether this server is the client's home.
    NotePreferred(bool),
    /// Mesh only: subscribe to connection presence.
    WatchConns,
    /// Mesh only: close every connection of this key.
    ClosePeer(NodePublicKey),
    /// Liveness check; the server answers with Pong.
    Ping([u8; PING_DATA_LEN]),
    /// Answer to a server Ping.
    Pong([u8; PING_DATA_LEN]),
    /// A frame type this side does not know; its payload was skipped.
    Unknown {
        /// Frame type.
        ty: FrameType,
        /// Payload length (at most
        /// [`MAX_UNKNOWN_FRAME_LEN`](crate::consts::MAX_UNKNOWN_FRAME_LEN): the server's decoder
        /// refuses longer unknown frames).
        len: usize,
    },
}

/// A frame a server sends once the handshake is done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerToClient {
    /// A packet from `src`.
    RecvPacket {
        /// Original sender (for mesh-forwarded packets, the originating client).
        src: NodePublicKey,
        /// Opaque packet.
        packet: Bytes,
    },
    /// Sent periodically so idle connections stay up.
    KeepAlive,
    /// `peer` is gone.
    PeerGone {
        /// The peer.
        peer: NodePublicKey,
        /// Why; a 32-byte frame from an old server means Disconnected.
        reason: PeerGoneReason,
    },
    /// `peer` connected (only sent to watchers).
    PeerPresent {
        /// The peer.
        peer: NodePublicKey,
        /// Its remote address, if the server knows and sent it.
        addr: Option<SocketAddr>,
        /// Connection flags; zero if the server predates them.
        flags: PeerPresentFlags,
    },
    /// Liveness check; the client answers with Pong.
    Ping([u8; PING_DATA_LEN]),
    /// Answer to a client Ping.
    Pong([u8; PING_DATA_LEN]),
    /// A problem to show users, or empty when healthy again.
    Health(Bytes),
    /// The server is restarting.
    Restarting {
        /// How long to wait before reconnecting, in milliseconds.
        reconnect_in_ms: u32,
        /// How long to keep trying, in milliseconds.
        try_for_ms: u32,
    },
    /// The ServerKey frame (normally consumed by the handshake, skipped after fast start).
    ServerKey(NodePublicKey),
    /// A frame type this side does not know; its payload was skipped.
    Unknown {
        /// Frame type.
        ty: FrameType,
        /// Payload length skipped.
        len: usize,
    },
}

/// Writes a frame header for a payload of `len` bytes.
pub fn write_frame_header(buf: &mut impl BufMut, ty: FrameType, len: usize) {
    buf.put_u8(ty.0);
    // Callers bound `len` far below u32::MAX (the largest frame we build is < 1 MiB).
    buf.put_u32(len as u32);
}

/// Writes the header and source key of a RecvPacket whose packet follows separately, so the
/// relay's writer can emit the packet bytes without copying them into a new frame.
pub fn encode_recv_packet_header(buf: &mut impl BufMut, src: &NodePublicKey, packet_len: usize) {
    write_frame_header(buf, FrameType::RECV_PACKET, KEY_LEN + packet_len);
    buf.put_slice(src.as_bytes());
}

fn key_at(payload: &[u8], at: usize, ty: FrameType) -> Result<NodePublicKey, DecodeError> {
    payload
        .get(at..)
        .and_then(NodePublicKey::from_slice)
        .ok_or(DecodeError::BadLength {
            ty,
            len: payload.len(),
        })
}

fn ping_data(payload: &[u8], ty: FrameType) -> Result<[u8; PING_DATA_LEN], DecodeError> {
    payload
        .get(..PING_DATA_LEN)
        .and_then(|d| d.try_into().ok())
        .ok_or(DecodeError::BadLength {
            ty,
            len: payload.len(),
        })
}

impl ClientToServer {
    /// Length of the encoded frame, header included.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        match self {
            Self::SendPacket { packet, .. } => KEY_LEN + packet.len(),
            Self::ForwardPacket { packet, .. } => 2 * KEY_LEN + packet.len(),
            Self::NotePreferred(_) => 1,
            Self::WatchConns => 0,
            Self::ClosePeer(_) => KEY_LEN,
            Self::Ping(_) | Self::Pong(_) => PING_DATA_LEN,
            Self::Unknown { len, .. } => *len,
        }
    }

    /// The frame type this message is sent as.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::SendPacket { .. } => FrameType::SEND_PACKET,
            Self::ForwardPacket { .. } => FrameType::FORWARD_PACKET,
            Self::NotePreferred(_) => FrameType::NOTE_PREFERRED,
            Self::WatchConns => FrameType::WATCH_CONNS,
            Self::ClosePeer(_) => FrameType::CLOSE_PEER,
            Self::Ping(_) => FrameType::PING,
            Self::Pong(_) => FrameType::PONG,
            Self::Unknown { ty, .. } => *ty,
        }
    }

    /// Appends the whole frame to `buf`. `Unknown` encodes as zero-filled payload.
    pub fn encode(&self, buf: &mut impl BufMut) {
        write_frame_header(buf, self.frame_type(), self.payload_len());
        match self {
            Self::SendPacket { dst, packet } => {
                buf.put_slice(dst.as_bytes());
                buf.put_slice(packet);
            }
            Self::ForwardPacket { src, dst, packet } => {
                buf.put_slice(src.as_bytes());
                buf.put_slice(dst.as_bytes());
                buf.put_slice(packet);
            }
            Self::NotePreferred(p) => buf.put_u8(u8::from(*p)),
            Self::WatchConns => {}
            Self::ClosePeer(k) => buf.put_slice(k.as_bytes()),
            Self::Ping(d) | Self::Pong(d) => buf.put_slice(d),
            Self::Unknown { len, .. } => buf.put_bytes(0, *len),
        }
    }

    /// Decodes a payload as the server reads it, enforcing Go derper's per-frame rules.
    /// Frame types the server does not handle decode as [`Self::Unknown`].
    pub fn decode(ty: FrameType, payload: Bytes) -> Result<Self, DecodeError> {
        let len = payload.len();
        let bad_len = DecodeError::BadLength { ty, len };
        Ok(match ty {
            FrameType::SEND_PACKET => {
                if !(KEY_LEN..=KEY_LEN + MAX_PACKET_SIZE).contains(&len) {
                    return Err(bad_len);
                }
                let dst = key_at(&payload, 0, ty)?;
                Self::SendPacket {
                    dst,
                    packet: payload.slice(KEY_LEN..),
                }
            }
            FrameType::FORWARD_PACKET => {
                if !(2 * KEY_LEN..=2 * KEY_LEN + MAX_PACKET_SIZE).contains(&len) {
                    return Err(bad_len);
                }
                Self::ForwardPacket {
                    src: key_at(&payload, 0, ty)?,
                    dst: key_at(&payload, KEY_LEN, ty)?,
                    packet: payload.slice(2 * KEY_LEN..),
                }
            }
            FrameType::NOTE_PREFERRED => match *payload {
                [b] => Self::NotePreferred(b != 0),
                _ => return Err(bad_len),
            },
            FrameType::WATCH_CONNS => {
                if len != 0 {
                    return Err(bad_len);
                }
                Self::WatchConns
            }
            FrameType::CLOSE_PEER => {
                if len != KEY_LEN {
                    return Err(bad_len);
                }
                Self::ClosePeer(key_at(&payload, 0, ty)?)
            }
            FrameType::PING => {
                if len > MAX_PING_LEN {
                    return Err(bad_len);
                }
                Self::Ping(ping_data(&payload, ty)?)
            }
            FrameType::PONG => Self::Pong(ping_data(&payload, ty)?),
            // Like Go derper, anything else (including a second ClientInfo or frames only a
            // server sends) is skipped, not fatal: new clients may send frames we don't know.
            _ => Self::Unknown { ty, len },
        })
    }
}

impl ServerToClient {
    /// Length of the encoded frame, header included.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        match self {
            Self::RecvPacket { packet, .. } => KEY_LEN + packet.len(),
            Self::KeepAlive => 0,
            Self::PeerGone { .. } => KEY_LEN + 1,
            Self::PeerPresent { .. } => KEY_LEN + 16 + 2 + 1,
            Self::Ping(_) | Self::Pong(_) => PING_DATA_LEN,
            Self::Health(text) => text.len(),
            Self::Restarting { .. } => 8,
            Self::ServerKey(_) => crate::consts::MAGIC.len() + KEY_LEN,
            Self::Unknown { len, .. } => *len,
        }
    }

    /// The frame type this message is sent as.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::RecvPacket { .. } => FrameType::RECV_PACKET,
            Self::KeepAlive => FrameType::KEEP_ALIVE,
            Self::PeerGone { .. } => FrameType::PEER_GONE,
            Self::PeerPresent { .. } => FrameType::PEER_PRESENT,
            Self::Ping(_) => FrameType::PING,
            Self::Pong(_) => FrameType::PONG,
            Self::Health(_) => FrameType::HEALTH,
            Self::Restarting { .. } => FrameType::RESTARTING,
            Self::ServerKey(_) => FrameType::SERVER_KEY,
            Self::Unknown { ty, .. } => *ty,
        }
    }

    /// Appends the whole frame to `buf`. PeerPresent is always the current 51-byte form.
    pub fn encode(&self, buf: &mut impl BufMut) {
        write_frame_header(buf, self.frame_type(), self.payload_len());
        match self {
            Self::RecvPacket { src, packet } => {
                buf.put_slice(src.as_bytes());
                buf.put_slice(packet);
            }
            Self::KeepAlive => {}
            Self::PeerGone { peer, reason } => {
                buf.put_slice(peer.as_bytes());
                buf.put_u8(reason.0);
            }
            Self::PeerPresent { peer, addr, flags } => {
                buf.put_slice(peer.as_bytes());
                let (ip, port) = match addr {
                    Some(a) => (
                        match a.ip() {
                            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                            IpAddr::V6(v6) => v6,
                        },
                        a.port(),
                    ),
                    None => (Ipv6Addr::UNSPECIFIED, 0),
                };
                buf.put_slice(&ip.octets());
                buf.put_u16(port);
                buf.put_u8(flags.0);
            }
            Self::Ping(d) | Self::Pong(d) => buf.put_slice(d),
            Self::Health(text) => buf.put_slice(text),
            Self::Restarting {
                reconnect_in_ms,
                try_for_ms,
            } => {
                buf.put_u32(*reconnect_in_ms);
                buf.put_u32(*try_for_ms);
            }
            Self::ServerKey(key) => {
                buf.put_slice(&crate::consts::MAGIC);
                buf.put_slice(key.as_bytes());
            }
            Self::Unknown { len, .. } => buf.put_bytes(0, *len),
        }
    }

    /// Decodes a payload as a client reads it, with the Go client's tolerance for old and new
    /// servers: trailing bytes are ignored, short legacy forms are accepted.
    pub fn decode(ty: FrameType, payload: Bytes) -> Result<Self, DecodeError> {
        let len = payload.len();
        let bad_len = DecodeError::BadLength { ty, len };
        Ok(match ty {
            FrameType::RECV_PACKET => {
                let src = key_at(&payload, 0, ty)?;
                Self::RecvPacket {
                    src,
                    packet: payload.slice(KEY_LEN..),
                }
            }
            FrameType::KEEP_ALIVE => Self::KeepAlive,
            FrameType::PEER_GONE => {
                let peer = key_at(&payload, 0, ty)?;
                let reason = PeerGoneReason(payload.get(KEY_LEN).copied().unwrap_or(0));
                Self::PeerGone { peer, reason }
            }
            FrameType::PEER_PRESENT => {
                let peer = key_at(&payload, 0, ty)?;
                let addr = payload.get(KEY_LEN..KEY_LEN + 18).and_then(|b| {
                    let ip: [u8; 16] = b[..16].try_into().ok()?;
                    let port = u16::from_be_bytes([b[16], b[17]]);
                    let ip = Ipv6Addr::from(ip);
                    if ip.is_unspecified() && port == 0 {
                        return None;
                    }
                    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                    Some(SocketAddr::new(ip, port))
                });
                let flags = PeerPresentFlags(payload.get(KEY_LEN + 18).copied().unwrap_or(0));
                Self::PeerPresent { peer, addr, flags }
            }
            FrameType::PING => Self::Ping(ping_data(&payload, ty)?),
            FrameType::PONG => Self::Pong(ping_data(&payload, ty)?),
            FrameType::HEALTH => Self::Health(payload),
            FrameType::RESTARTING => {
                let b = payload.get(..8).ok_or(bad_len)?;
                Self::Restarting {
                    reconnect_in_ms: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    try_for_ms: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                }
            }
            FrameType::SERVER_KEY => {
                let magic = crate::consts::MAGIC;
                if payload.get(..magic.len()) != Some(&magic[..]) {
                    return Err(DecodeError::Invalid {
                        ty,
                        reason: "wrong magic",
                    });
                }
                Self::ServerKey(key_at(&payload, magic.len(), ty)?)
            }
            FrameType::CLIENT_INFO
            | FrameType::SEND_PACKET
            | FrameType::FORWARD_PACKET
            | FrameType::NOTE_PREFERRED
            | FrameType::WATCH_CONNS
            | FrameType::CLOSE_PEER => return Err(DecodeError::UnexpectedType(ty)),
            _ => Self::Unknown { ty, len },
        })
    }
}
