//! Frame-at-a-time reading and batched writing over async byte streams.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::DecodeError;
use crate::frame::{FrameDecoder, RawFrame};

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadFrameError {
    /// The peer closed the stream (cleanly, between frames, or mid-frame).
    #[error("connection closed")]
    Closed,
    /// The socket failed.
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads frames from a stream with a [`FrameDecoder`].
///
/// The read size adapts: it grows while reads fill the buffer (bulk traffic: fewer syscalls)
/// and shrinks back while they do not (idle connections hold little memory).
#[derive(Debug)]
pub struct FramedRead<R> {
    io: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    read_size: usize,
}

/// Smallest read reservation: enough for a handshake frame or a few small packets.
const MIN_READ: usize = 4 * 1024;

/// Largest read reservation: one maximal packet frame per read when traffic is heavy.
const MAX_READ: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FramedRead<R> {
    /// Wraps `io`, starting with any bytes already read past an HTTP upgrade.
    pub fn new(io: R, decoder: FrameDecoder, initial: BytesMut) -> Self {
        Self {
            io,
            buf: initial,
            decoder,
            read_size: MIN_READ,
        }
    }

    /// Reads the next frame. Packet payloads are split out of the read buffer without copying.
    ///
    /// Cancel-safe: bytes read so far stay buffered for the next call.
    pub async fn read_frame(&mut self) -> Result<RawFrame, ReadFrameError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(frame);
            }
            if self.buf.is_empty() && self.buf.capacity() > 2 * self.read_size {
                // Drop a large buffer kept from a burst (or shared with packets still queued
                // elsewhere) rather than pin it while the connection idles.
                self.buf = BytesMut::new();
            }
            // Reserve for the frame in progress (the decoder bounds it) or one read's worth.
            let want = self.decoder.needed(&self.buf).max(self.read_size);
            let (n, spare) = std::future::poll_fn(|cx| self.poll_fill(cx, want)).await?;
            if n == 0 {
                return Err(ReadFrameError::Closed);
            }
            if n >= spare {
                self.read_size = (self.read_size * 2).min(MAX_READ);
            } else if n < self.read_size / 8 {
                self.read_size = (self.read_size / 2).max(MIN_READ);
            }
        }
    }

    /// One read into the buffer; returns the bytes read and the room there was.
    ///
    /// A connection waiting between frames holds no read buffer: when the read would block
    /// and nothing is buffered, the reservation is given back before returning `Pending`
    /// (an idle relay client costs a few hundred bytes instead of a 4 KiB buffer; Tailscale
    /// derper v1.104 frees its idle buffers for the same reason). The next wake-up allocates
    /// again, which costs far less than the read it precedes.
    fn poll_fill(
        &mut self,
        cx: &mut std::task::Context<'_>,
        want: usize,
    ) -> std::task::Poll<std::io::Result<(usize, usize)>> {
        self.buf.reserve(want);
        let spare = self.buf.capacity() - self.buf.len();
        let polled = {
            let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
            read.poll(cx)
        };
        match polled {
            std::task::Poll::Pending => {
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
                std::task::Poll::Pending
            }
            std::task::Poll::Ready(r) => std::task::Poll::Ready(r.map(|n| (n, spare))),
        }
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }
}

/// Buffers frames and writes them with one syscall per flush.
#[derive(Debug)]
pub struct FramedWrite<W> {
    io: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FramedWrite<W> {
    /// Wraps `io`.
    pub fn new(io: W) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The pending output; encode frames into it, then [`flush`](Self::flush).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything buffered and flushes the stream.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let written = self.buf.len();
        if written > 0 {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        // Release a large buffer kept from a burst once writes are small again.
        if self.buf.capacity() > MAX_READ && written < MIN_READ {
            self.buf = BytesMut::new();
        }
        self.io.flush().await
    }

    /// Shuts the write side down.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}
