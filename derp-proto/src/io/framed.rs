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
#[derive(Debug)]
pub struct FramedRead<R> {
    io: R,
    buf: BytesMut,
    decoder: FrameDecoder,
}

/// Read size when nothing more specific is known; large enough to take many small frames per
/// syscall, small enough that a retained packet pins little memory.
const READ_CHUNK: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> FramedRead<R> {
    /// Wraps `io`, starting with any bytes already read past an HTTP upgrade.
    pub fn new(io: R, decoder: FrameDecoder, initial: BytesMut) -> Self {
        Self {
            io,
            buf: initial,
            decoder,
        }
    }

    /// Reads the next frame. The payload shares no memory with later frames' buffers beyond the
    /// read chunk it arrived in.
    pub async fn read_frame(&mut self) -> Result<RawFrame, ReadFrameError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(frame);
            }
            // Reserve for the frame in progress (bounded by the decoder's limits) so a large
            // packet is read into one allocation instead of many small ones.
            self.buf
                .reserve(self.decoder.needed(&self.buf).max(READ_CHUNK));
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(ReadFrameError::Closed);
            }
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
            buf: BytesMut::with_capacity(READ_CHUNK),
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
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.io.flush().await
    }

    /// Shuts the write side down.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}
