//! DERP frames: the header, the frame types and their payload layouts.
//!
//! ```text
//! Login:
//!   client → server   HTTP GET /derp, Upgrade: DERP  (or WebSocket, subprotocol "derp")
//!   server → client   101 Switching Protocols          (skipped with Derp-Fast-Start: 1)
//!   server → client   ServerKey   magic[8] ‖ server public key[32]
//!   client → server   ClientInfo  client key[32] ‖ nonce[24] ‖ box(client info JSON)
//!   server → client   ServerInfo  nonce[24] ‖ box(server info JSON)
//!
//! Steady state:
//!   client → server   SendPacket(dst, packet), NotePreferred, Ping, Pong
//!   server → client   RecvPacket(src, packet), KeepAlive, Ping, Pong, PeerGone, Health, Restarting
//!   mesh peer ↔ server  WatchConns → PeerPresent/PeerGone stream; ForwardPacket; ClosePeer
//!
//! Every frame: type[1] ‖ payload length[4, big-endian] ‖ payload.
//! ```

mod codec;
mod message;

pub use codec::{FrameDecoder, RawFrame};
pub use message::{
    ClientToServer, PeerGoneReason, PeerPresentFlags, ServerToClient, encode_recv_packet_header,
    write_frame_header,
};

use std::fmt;

/// A frame type byte. Unknown values are representable so that they can be skipped.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameType(pub u8);

macro_rules! frame_types {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        impl FrameType {
            $($(#[$doc])* pub const $name: Self = Self($value);)*

            /// The frame's name, or `None` for an unassigned value.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

frame_types! {
    /// S→C: magic[8] ‖ server public key[32] (+ future bytes, ignored).
    SERVER_KEY = 0x01,
    /// C→S: client public key[32] ‖ nonce[24] ‖ box(JSON).
    CLIENT_INFO = 0x02,
    /// S→C: nonce[24] ‖ box(JSON).
    SERVER_INFO = 0x03,
    /// C→S: destination key[32] ‖ packet (≤ 64 KiB).
    SEND_PACKET = 0x04,
    /// S→C: source key[32] ‖ packet (protocol v2).
    RECV_PACKET = 0x05,
    /// S→C: empty; keeps idle connections alive.
    KEEP_ALIVE = 0x06,
    /// C→S: one byte, non-zero if this is the client's home region.
    NOTE_PREFERRED = 0x07,
    /// S→C: peer key[32] ‖ reason[1] (older servers: key only).
    PEER_GONE = 0x08,
    /// S→C (watchers): peer key[32] [‖ ip[16] ‖ port[2] [‖ flags[1]]].
    PEER_PRESENT = 0x09,
    /// C→S, mesh only: source key[32] ‖ destination key[32] ‖ packet.
    FORWARD_PACKET = 0x0a,
    /// C→S, mesh only: empty; subscribe to PeerPresent/PeerGone for every connection.
    WATCH_CONNS = 0x10,
    /// C→S, mesh only: key[32] of a peer whose connections to close.
    CLOSE_PEER = 0x11,
    /// Both ways: 8 opaque bytes.
    PING = 0x12,
    /// Both ways: the 8 bytes of the Ping answered.
    PONG = 0x13,
    /// S→C: UTF-8 problem text; empty means healthy again.
    HEALTH = 0x14,
    /// S→C: reconnect-in ms[4] ‖ try-for ms[4].
    RESTARTING = 0x15,
}

impl fmt::Debug for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "FrameType({:#04x})", self.0),
        }
    }
}
