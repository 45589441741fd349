//! Async adapters over tokio (feature `tokio`): framed reading and writing, a WebSocket byte
//! stream, TLS client configuration, and a small DERP client that the relay's mesh and the load
//! generator share.
//!
//! Keep this module thin: if it grows beyond adapters and a client, it belongs in its own crate.

mod client;
mod framed;
pub mod tls;
mod ws;

pub use client::{
    Client, ClientError, ClientReader, ClientWriter, ConnectOptions, HandshakeOptions, Transport,
};
pub use framed::{FramedRead, FramedWrite, ReadFrameError};
pub use ws::{MAX_EMPTY_MESSAGES, WsStream};

use tokio::io::{AsyncRead, AsyncWrite};

/// Any byte stream a DERP connection can run over: TCP, TLS over TCP, WebSocket, a QUIC stream
/// or an in-memory pipe.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed [`Stream`], so one client type serves every transport.
pub type BoxStream = Box<dyn Stream>;
