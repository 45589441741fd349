//! Errors, one type per operation.

use crate::frame::FrameType;

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The header announces more bytes than the receiver allows; the connection must close.
    #[error("frame {ty:?} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Frame type from the header.
        ty: FrameType,
        /// Announced payload length.
        len: usize,
        /// The receiver's limit for this frame.
        max: usize,
    },
    /// A server got a frame of a type it does not know, longer than it is willing to discard
    /// ([`MAX_UNKNOWN_FRAME_LEN`](crate::consts::MAX_UNKNOWN_FRAME_LEN)); the connection must
    /// close (Go: `handleUnknownFrame`).
    #[error("unknown frame type {:#04x} too large: {len} bytes (limit {max})", ty.0)]
    UnknownTooLarge {
        /// Frame type from the header.
        ty: FrameType,
        /// Announced payload length.
        len: usize,
        /// The limit for unknown frame types.
        max: usize,
    },
    /// The payload is shorter or longer than its frame type requires.
    #[error("frame {ty:?} has invalid length {len}")]
    BadLength {
        /// Frame type from the header.
        ty: FrameType,
        /// Payload length.
        len: usize,
    },
    /// A field inside the payload is malformed.
    #[error("frame {ty:?}: {reason}")]
    Invalid {
        /// Frame type from the header.
        ty: FrameType,
        /// What is wrong.
        reason: &'static str,
    },
    /// The frame type is known but not valid in this direction.
    #[error("frame {0:?} is not valid from this side")]
    UnexpectedType(FrameType),
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The first frame was not the one the handshake needs.
    #[error("expected {expected:?}, got {got:?}")]
    UnexpectedFrame {
        /// Frame the state machine waited for.
        expected: FrameType,
        /// Frame that arrived.
        got: FrameType,
    },
    /// The frame length is outside the permitted range.
    #[error("{ty:?} frame has invalid length {len}")]
    BadLength {
        /// Frame type.
        ty: FrameType,
        /// Payload length.
        len: usize,
    },
    /// The ServerKey frame did not start with the DERP magic.
    #[error("server key frame has wrong magic")]
    BadMagic,
    /// The NaCl box did not open: wrong key, corrupted, or truncated.
    #[error("sealed box did not open")]
    BoxOpen,
    /// The sealed JSON did not parse.
    #[error("invalid {what} json: {source}")]
    Json {
        /// `client info` or `server info`.
        what: &'static str,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The `AppName` in ClientInfo is not at most
    /// [`MAX_APP_NAME_LEN`](crate::consts::MAX_APP_NAME_LEN) bytes of printable ASCII (Go:
    /// `ValidAppName`); the server refuses the client.
    #[error("invalid AppName {start:?} ({len} bytes): must be at most 32 bytes of printable ASCII")]
    InvalidAppName {
        /// Its first 40 characters, for the log line.
        start: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A mesh key in ClientInfo was not 64 hex digits.
    #[error("invalid mesh key in client info")]
    BadMeshKey,
    /// The client claimed a key that proves nothing: a low-order point (its shared secret with
    /// anyone is all zeros, so the box opens without the private key) or the server's own key.
    #[error("client key is not acceptable: {0}")]
    WeakClientKey(&'static str),
}
