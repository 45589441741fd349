//! The DERP relay wire protocol, without I/O.
//!
//! DERP ("Designated Encrypted Relay for Packets") relays opaque packets between nodes that
//! cannot reach each other directly. A client upgrades an HTTP connection, learns the server's
//! key from the ServerKey frame, proves its own node key by sealing ClientInfo to the server, and
//! then sends packets addressed by destination key. The server never decrypts packets.
//!
//! ```text
//! bytes ─► FrameDecoder ─► RawFrame ─► ClientToServer / ServerToClient
//!                                 └──► handshake::{read_client_info, read_server_key, …}
//! ```
//!
//! Certificate facts DERP needs (the relay's metacert, `sha256-raw:` pins) are in [`cert`],
//! also without a TLS stack.
//!
//! Reconnect [`backoff`] and the mesh watcher's [`mesh::WatchSet`] are state machines that take
//! `now` (and randomness) from the caller.
//!
//! Everything here works on byte slices and buffers: no sockets, no clocks, no global state.
//! The `tokio` feature adds thin async adapters and a client in [`io`].
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backoff;
pub mod cert;
pub mod consts;
pub mod datagram;
pub mod disco;
mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod key;
pub mod mesh;
pub mod stun;

pub use error::{DecodeError, HandshakeError};
pub use frame::{ClientToServer, FrameDecoder, FrameType, RawFrame, ServerToClient};
pub use key::{MeshKey, NodePublicKey, NodeSecretKey};

#[cfg(feature = "tokio")]
pub mod io;
