//! A WebSocket connection as a plain byte stream: DERP frames ride in binary messages whose
//! boundaries carry no meaning.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// How many empty binary messages in a row a reader accepts before it closes with 1008 (policy
/// violation). An empty message carries no DERP bytes, so a peer could otherwise keep the reader
/// busy for ever without making progress. 100 is Go's bound in effect: `bufio.Reader` gives up
/// with `io.ErrNoProgress` after 100 reads that return nothing, and Tailscale's `wsconn` returns
/// one such read per empty message. Real clients never send a run of them.
pub const MAX_EMPTY_MESSAGES: u32 = 100;

/// Largest message written. Tailscale's WebSocket library (nhooyr/coder websocket as used by
/// derphttp) reads at most 32 KiB per message; larger messages break its connections.
const MAX_MESSAGE_WRITE: usize = 32 * 1024;

/// Adapts a [`WebSocketStream`] to `AsyncRead + AsyncWrite`.
///
/// Each write becomes one binary message; close and end-of-stream read as EOF. A peer that
/// breaks the rules is sent a close frame and the read fails with `InvalidData`: a text message
/// closes with 1003 (unsupported data, as Go's `wsconn` does), and more than
/// [`MAX_EMPTY_MESSAGES`] empty binary messages in a row close with 1008 (policy violation).
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    pending: Bytes,
    /// Empty binary messages read since the last one that carried bytes.
    empty_in_a_row: u32,
    /// Set once the peer broke the rules: the close frame to send, then the read error.
    refusal: Option<Refusal>,
    /// The peer sent Close: tungstenite queued the reply (RFC 6455 §5.5.1), which must be
    /// flushed before the read reports end of stream.
    peer_closed: bool,
}

/// Why the reader closes the WebSocket, and how far it got telling the peer.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    code: CloseCode,
    reason: &'static str,
    /// The close frame is queued; what is left is flushing it.
    queued: bool,
}

impl<S> WsStream<S> {
    /// Wraps an established WebSocket.
    pub fn new(inner: WebSocketStream<S>) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            empty_in_a_row: 0,
            refusal: None,
            peer_closed: false,
        }
    }
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream").finish_non_exhaustive()
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends the refusal's close frame (like any write, as long as the caller's deadlines
    /// allow), then fails the read. A close that cannot be sent does not hide the reason.
    fn poll_refuse(&mut self, mut refusal: Refusal, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let error = || {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                refusal.reason,
            )))
        };
        if !refusal.queued {
            if ready!(Pin::new(&mut self.inner).poll_ready(cx)).is_err() {
                return error();
            }
            let frame = CloseFrame {
                code: refusal.code,
                reason: refusal.reason.into(),
            };
            if Pin::new(&mut self.inner)
                .start_send(Message::Close(Some(frame)))
                .is_err()
            {
                return error();
            }
            refusal.queued = true;
            self.refusal = Some(refusal);
        }
        // Ok or not, the peer has been told what it could be told.
        let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        error()
    }

    fn refuse(&mut self, code: CloseCode, reason: &'static str) {
        self.refusal = Some(Refusal {
            code,
            reason,
            queued: false,
        });
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(refusal) = self.refusal {
                return self.poll_refuse(refusal, cx);
            }
            if self.peer_closed {
                // Answer the peer's Close (best effort), then end of stream.
                let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                return Poll::Ready(Ok(()));
            }
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Close(_))) => self.peer_closed = true,
                Some(Ok(Message::Binary(data))) if data.is_empty() => {
                    self.empty_in_a_row += 1;
                    if self.empty_in_a_row > MAX_EMPTY_MESSAGES {
                        self.refuse(CloseCode::Policy, "too many empty messages in a row");
                    }
                }
                Some(Ok(Message::Binary(data))) => {
                    self.empty_in_a_row = 0;
                    self.pending = data;
                }
                Some(Ok(Message::Text(_))) => {
                    self.refuse(CloseCode::Unsupported, "text message on a DERP websocket");
                }
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_MESSAGE_WRITE);
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A server-side [`WsStream`] over a pipe whose other end the test writes raw frames to.
    async fn server() -> (WsStream<DuplexStream>, DuplexStream) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        (WsStream::new(ws), client)
    }

    /// A masked client frame (the zero mask, so the payload reads as sent).
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    /// The unmasked close frame a server sends: FIN + opcode 8, length, code, reason.
    fn close_frame(code: u16, reason: &str) -> Vec<u8> {
        let mut f = vec![0x88, 2 + reason.len() as u8];
        f.extend_from_slice(&code.to_be_bytes());
        f.extend_from_slice(reason.as_bytes());
        f
    }

    async fn read_exactly(peer: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(std::time::Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("answered")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn binary_messages_read_as_bytes() {
        let (mut ws, mut peer) = server().await;
        peer.write_all(&client_frame(0x2, b"abc")).await.unwrap();
        peer.write_all(&client_frame(0x2, b"")).await.unwrap();
        peer.write_all(&client_frame(0x2, b"de")).await.unwrap();
        let mut got = [0; 5];
        ws.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcde");
    }

    #[tokio::test]
    async fn a_peers_close_is_answered_then_reads_as_eof() {
        let (mut ws, mut peer) = server().await;
        peer.write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(ws.read(&mut [0; 16]).await.unwrap(), 0, "end of stream");
        // RFC 6455 §5.5.1: the endpoint answers with a Close (echoing the code).
        let want = close_frame(1000, "");
        assert_eq!(read_exactly(&mut peer, want.len()).await, want);
    }

    #[tokio::test]
    async fn a_text_message_closes_with_1003() {
        let (mut ws, mut peer) = server().await;
        peer.write_all(&client_frame(0x1, b"hello")).await.unwrap();
        let err = ws.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "text message on a DERP websocket");
        let want = close_frame(1003, "text message on a DERP websocket");
        assert_eq!(read_exactly(&mut peer, want.len()).await, want);
    }

    #[tokio::test]
    async fn a_run_of_empty_messages_is_bounded() {
        // Up to the bound, then bytes: fine, and the count starts again.
        let (mut ws, mut peer) = server().await;
        for round in 0..2u8 {
            for _ in 0..MAX_EMPTY_MESSAGES {
                peer.write_all(&client_frame(0x2, b"")).await.unwrap();
            }
            peer.write_all(&client_frame(0x2, &[round])).await.unwrap();
            let mut got = [0; 1];
            ws.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round]);
        }
        // One more than the bound: closed with 1008 without waiting for anything else.
        for _ in 0..=MAX_EMPTY_MESSAGES {
            peer.write_all(&client_frame(0x2, b"")).await.unwrap();
        }
        let err = ws.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let want = close_frame(1008, "too many empty messages in a row");
        assert_eq!(read_exactly(&mut peer, want.len()).await, want);
        // The read keeps failing; nothing more is sent.
        assert!(ws.read(&mut [0; 16]).await.is_err());
    }
}
