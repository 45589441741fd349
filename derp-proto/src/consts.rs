//! Protocol constants, each with the name it has in Tailscale's `derp` package.

use std::time::Duration;

/// The 8 bytes that open a ServerKey frame: `DERP` followed by the UTF-8 key emoji (Go: `Magic`).
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91];

/// The protocol version spoken on the wire (Go: `ProtocolVersion`). Version 2 prefixes every
/// RecvPacket with the sender's key; servers do not negotiate it.
pub const PROTOCOL_VERSION: u32 = 2;

/// Length of every frame header: 1 type byte and a big-endian `u32` payload length.
pub const FRAME_HEADER_LEN: usize = 5;

/// Length of a raw Curve25519 key on the wire (Go: `keyLen`).
pub const KEY_LEN: usize = 32;

/// Length of a NaCl box nonce (Go: `nonceLen`).
pub const NONCE_LEN: usize = 24;

/// Length of the Poly1305 tag a NaCl box adds (Go: `box.Overhead`).
pub const BOX_OVERHEAD: usize = 16;

/// Largest relayed packet, not counting keys (Go: `MaxPacketSize`).
pub const MAX_PACKET_SIZE: usize = 64 << 10;

/// Largest frame payload a server accepts: a ForwardPacket carrying two keys and a maximal packet.
/// Anything longer is rejected before a byte of it is buffered. ClientInfo has its own, larger cap.
pub const MAX_FRAME_LEN: usize = 2 * KEY_LEN + MAX_PACKET_SIZE;

/// Largest unknown frame a server reads and discards (Go: `maxUnknownFrameLen`): a SendPacket
/// with a full-size packet, the largest frame a regular client sends, which leaves room for
/// future frame types. A longer unknown frame closes the connection, as in Go v1.104, rather
/// than make the server discard an arbitrary amount.
pub const MAX_UNKNOWN_FRAME_LEN: usize = MAX_PACKET_SIZE + KEY_LEN;

/// Largest ClientInfo frame a server accepts; bounds the JSON it parses (Go: `recvClientKey`).
pub const MAX_CLIENT_INFO_LEN: usize = 256 << 10;

/// Longest `AppName` a client may put in ClientInfo, in bytes of printable ASCII (Go:
/// `MaxAppNameLen`, checked by `ValidAppName`).
pub const MAX_APP_NAME_LEN: usize = 32;

/// Smallest valid ClientInfo: client key, nonce and an empty box.
pub const MIN_CLIENT_INFO_LEN: usize = KEY_LEN + NONCE_LEN;

/// Largest frame a client accepts from a server (Go client: `1 << 20`).
pub const MAX_CLIENT_RECV_FRAME_LEN: usize = 1 << 20;

/// Largest ServerInfo payload a client accepts (Go: `nonceLen + 1 MiB`).
pub const MAX_SERVER_INFO_LEN: usize = NONCE_LEN + (1 << 20);

/// Largest Ping payload a server accepts; extra bytes after the first 8 are ignored.
pub const MAX_PING_LEN: usize = 1000;

/// Length of Ping/Pong data.
pub const PING_DATA_LEN: usize = 8;

/// How often a server sends KeepAlive, before jitter (Go: `KeepAlive`). Clients reconnect after
/// 120 s of silence, so this must stay well inside that.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// The WebSocket subprotocol that carries DERP.
pub const WEBSOCKET_PROTOCOL: &str = "derp";

/// The HTTP path clients upgrade on.
pub const DERP_PATH: &str = "/derp";

/// Header a client sends when it learnt the server key from the metacert and skips the 101.
pub const FAST_START_HEADER: &str = "Derp-Fast-Start";

/// Prefix of the Subject CN of the meta certificate appended to TLS chains (Go: `MetaCertCommonNamePrefix`).
pub const META_CERT_CN_PREFIX: &str = "derpkey";
