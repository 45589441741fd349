//! Incremental frame decoding from a byte buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::FrameType;
use crate::consts::{
    FRAME_HEADER_LEN, MAX_CLIENT_INFO_LEN, MAX_CLIENT_RECV_FRAME_LEN, MAX_FRAME_LEN,
    MAX_UNKNOWN_FRAME_LEN,
};
use crate::error::DecodeError;

/// One frame cut out of the stream: its type and payload, not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// Frame type from the header.
    pub ty: FrameType,
    /// The payload, split from the read buffer without copying.
    pub payload: Bytes,
}

/// Which side of the connection decodes; the two have different limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The server reads client frames: ClientInfo up to 256 KiB, known types up to
    /// [`MAX_FRAME_LEN`], unknown types up to [`MAX_UNKNOWN_FRAME_LEN`] (Go:
    /// `handleUnknownFrame`).
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
}

impl FrameDecoder {
    /// A decoder for frames a server receives from clients.
    pub fn server() -> Self {
        Self { side: Side::Server }
    }

    /// A decoder for frames a client receives from a server.
    pub fn client() -> Self {
        Self { side: Side::Client }
    }

    /// The largest payload accepted for a frame of type `ty`.
    fn limit(&self, ty: FrameType) -> usize {
        match self.side {
            Side::Client => MAX_CLIENT_RECV_FRAME_LEN,
            Side::Server => match ty {
                FrameType::CLIENT_INFO => MAX_CLIENT_INFO_LEN,
                t if t.name().is_some() => MAX_FRAME_LEN,
                _ => MAX_UNKNOWN_FRAME_LEN,
            },
        }
    }

    /// How many more bytes the frame in progress needs, so the caller can reserve that much
    /// (never more than one frame) in its read buffer. 0 when the header is already known to be
    /// invalid (the next [`decode`](Self::decode) returns the error).
    pub fn needed(&self, buf: &BytesMut) -> usize {
        if buf.len() < FRAME_HEADER_LEN {
            return FRAME_HEADER_LEN - buf.len();
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > self.limit(FrameType(buf[0])) {
            return 0;
        }
        (FRAME_HEADER_LEN + len).saturating_sub(buf.len())
    }

    /// Decodes the next frame from `buf`, consuming its bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, DecodeError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let ty = FrameType(buf[0]);
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let max = self.limit(ty);
        if len > max {
            return Err(if self.side == Side::Server && ty.name().is_none() {
                // Go closes here too rather than read and discard an arbitrary amount.
                DecodeError::UnknownTooLarge { ty, len, max }
            } else {
                DecodeError::TooLarge { ty, len, max }
            });
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        Ok(Some(RawFrame { ty, payload }))
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
    fn unknown_frames_up_to_the_bound_are_cut_out_whole() {
        let mut d = FrameDecoder::server();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x7f]);
        buf.extend_from_slice(&(MAX_UNKNOWN_FRAME_LEN as u32).to_be_bytes());
        assert_eq!(d.needed(&buf), MAX_UNKNOWN_FRAME_LEN);
        buf.extend_from_slice(&vec![0xaa; MAX_UNKNOWN_FRAME_LEN]);
        // Then a Ping.
        buf.extend_from_slice(&[0x12, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.ty, FrameType(0x7f));
        assert_eq!(f.payload.len(), MAX_UNKNOWN_FRAME_LEN);
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.ty, FrameType::PING);
        assert_eq!(f.payload[7], 9);
        assert!(buf.is_empty());
    }

    /// Go v1.104 closes on an unknown frame over `MaxPacketSize + KeyLen`; so do we, from the
    /// header alone, where we used to discard any length (4 GiB for as long as the client liked).
    #[test]
    fn unknown_frames_over_the_bound_are_an_error_from_the_header() {
        assert_eq!(MAX_UNKNOWN_FRAME_LEN, 65_568);
        for len in [MAX_UNKNOWN_FRAME_LEN + 1, MAX_FRAME_LEN, u32::MAX as usize] {
            let mut d = FrameDecoder::server();
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&[0x7f]);
            buf.extend_from_slice(&(len as u32).to_be_bytes());
            assert_eq!(d.needed(&buf), 0);
            let err = d.decode(&mut buf).unwrap_err();
            assert_eq!(
                err,
                DecodeError::UnknownTooLarge {
                    ty: FrameType(0x7f),
                    len,
                    max: MAX_UNKNOWN_FRAME_LEN
                }
            );
            assert_eq!(
                err.to_string(),
                format!("unknown frame type 0x7f too large: {len} bytes (limit 65568)")
            );
        }
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
