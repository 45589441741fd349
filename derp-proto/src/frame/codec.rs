//! Incremental frame decoding from a byte buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::FrameType;
use crate::consts::{
    FRAME_HEADER_LEN, MAX_CLIENT_INFO_LEN, MAX_CLIENT_RECV_FRAME_LEN, MAX_FRAME_LEN,
};
use crate::error::DecodeError;

/// One frame cut out of the stream: its type and payload, not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// Frame type from the header.
    pub ty: FrameType,
    /// The payload, split from the read buffer without copying. Empty for a skipped frame.
    pub payload: Bytes,
    /// Payload length announced by the header (differs from `payload.len()` only when skipped).
    pub len: usize,
}

impl RawFrame {
    /// Whether the payload was discarded rather than buffered (unknown type over the limit).
    pub fn is_skipped(&self) -> bool {
        self.payload.len() != self.len
    }
}

/// Which side of the connection decodes; the two have different limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The server reads client frames: ClientInfo up to 256 KiB, others up to [`MAX_FRAME_LEN`],
    /// unknown types of any length skipped without buffering (Go: `handleUnknownFrame`).
    Server,
    /// The client reads server frames: anything over 1 MiB is fatal (Go client).
    Client,
}

/// Cuts frames out of a stream of bytes.
///
/// Lengths are checked against a limit before any payload is buffered, so a peer cannot make the
/// reader reserve memory by announcing a large frame. "Not enough bytes yet" is `Ok(None)`;
/// anything else that is wrong is an error and the connection should close.
#[derive(Debug)]
pub struct FrameDecoder {
    side: Side,
    /// Bytes of an oversized unknown frame still to be discarded.
    skip_remaining: usize,
}

impl FrameDecoder {
    /// A decoder for frames a server receives from clients.
    pub fn server() -> Self {
        Self {
            side: Side::Server,
            skip_remaining: 0,
        }
    }

    /// A decoder for frames a client receives from a server.
    pub fn client() -> Self {
        Self {
            side: Side::Client,
            skip_remaining: 0,
        }
    }

    fn limit(&self, ty: FrameType) -> Option<usize> {
        match self.side {
            Side::Client => Some(MAX_CLIENT_RECV_FRAME_LEN),
            Side::Server => match ty {
                FrameType::CLIENT_INFO => Some(MAX_CLIENT_INFO_LEN),
                t if t.name().is_some() => Some(MAX_FRAME_LEN),
                _ => None,
            },
        }
    }

    /// How many more bytes the frame in progress needs, so the caller can reserve that much
    /// (never more than one frame) in its read buffer. 0 while an oversized unknown frame is
    /// being discarded or when the header is already known to be invalid: reserve the usual
    /// read size then.
    pub fn needed(&self, buf: &BytesMut) -> usize {
        if self.skip_remaining > 0 {
            return 0;
        }
        if buf.len() < FRAME_HEADER_LEN {
            return FRAME_HEADER_LEN - buf.len();
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let ty = FrameType(buf[0]);
        match self.limit(ty) {
            Some(max) if len > max => 0,
            None if len > MAX_FRAME_LEN => 0,
            _ => (FRAME_HEADER_LEN + len).saturating_sub(buf.len()),
        }
    }

    /// Decodes the next frame from `buf`, consuming its bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, DecodeError> {
        if self.skip_remaining > 0 {
            let n = self.skip_remaining.min(buf.len());
            buf.advance(n);
            self.skip_remaining -= n;
            if self.skip_remaining > 0 {
                return Ok(None);
            }
        }
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let ty = FrameType(buf[0]);
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        match self.limit(ty) {
            Some(max) if len > max => return Err(DecodeError::TooLarge { ty, len, max }),
            None if len > MAX_FRAME_LEN => {
                // An unknown frame too large to buffer: report it now and discard its bytes
                // as they arrive.
                buf.advance(FRAME_HEADER_LEN);
                let n = len.min(buf.len());
                buf.advance(n);
                self.skip_remaining = len - n;
                return Ok(Some(RawFrame {
                    ty,
                    payload: Bytes::new(),
                    len,
                }));
            }
            _ => {}
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        Ok(Some(RawFrame { ty, payload, len }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_whole_frame() {
        let mut d = FrameDecoder::server();
        let mut buf = BytesMut::from(&[0x12, 0, 0, 0, 8, 1, 2, 3][..]);
        assert_eq!(d.needed(&buf), 5);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[4, 5, 6, 7, 8, 0x06]);
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.ty, FrameType::PING);
        assert_eq!(&f.payload[..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[..], &[0x06]);
        assert_eq!(d.needed(&buf), 4);
    }

    #[test]
    fn rejects_oversized_known_frame_before_buffering() {
        let mut d = FrameDecoder::server();
        let len = (MAX_FRAME_LEN + 1) as u32;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x04]);
        buf.extend_from_slice(&len.to_be_bytes());
        assert_eq!(d.needed(&buf), 0);
        assert!(matches!(
            d.decode(&mut buf),
            Err(DecodeError::TooLarge { len: l, .. }) if l == MAX_FRAME_LEN + 1
        ));
    }

    #[test]
    fn client_info_has_its_own_cap() {
        let mut d = FrameDecoder::server();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x02]);
        buf.extend_from_slice(&((MAX_CLIENT_INFO_LEN + 1) as u32).to_be_bytes());
        assert!(matches!(
            d.decode(&mut buf),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn skips_huge_unknown_frames_without_buffering() {
        let mut d = FrameDecoder::server();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x7f]);
        buf.extend_from_slice(&(10_000_000u32).to_be_bytes());
        buf.extend_from_slice(&[0xaa; 100]);
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.ty, FrameType(0x7f));
        assert!(f.is_skipped());
        assert!(buf.is_empty());
        // The rest of the skipped payload, then a KeepAlive-shaped frame.
        let mut rest = BytesMut::from(&vec![0u8; 10_000_000 - 100][..]);
        rest.extend_from_slice(&[0x12, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
        let f = d.decode(&mut rest).unwrap().unwrap();
        assert_eq!(f.ty, FrameType::PING);
        assert_eq!(f.payload[7], 9);
    }

    #[test]
    fn client_side_caps_every_frame_at_one_mib() {
        let mut d = FrameDecoder::client();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x7f]);
        buf.extend_from_slice(&((1u32 << 20) + 1).to_be_bytes());
        assert!(d.decode(&mut buf).is_err());
    }
}
