//! The server side of the DERP handshake: ServerKey out (after whatever preface the transport
//! asked for), ClientInfo in, all under one deadline.

use bytes::BytesMut;
use derp_proto::handshake::{self, ClientHello};
use derp_proto::io::{FramedRead, ReadFrameError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{AcceptError, Inner};
use crate::metrics::HandshakeFailure;

/// Writes `preface` and ServerKey in one write, then reads and opens ClientInfo. Counts the
/// failure by reason before returning it.
pub(crate) async fn run<R, W>(
    relay: &Inner,
    reader: &mut FramedRead<R>,
    writer: &mut W,
    preface: &[u8],
) -> Result<ClientHello, AcceptError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let exchange = async {
        let mut out = BytesMut::with_capacity(preface.len() + 64);
        out.extend_from_slice(preface);
        handshake::write_server_key(&mut out, &relay.public_key);
        writer.write_all(&out).await?;
        writer.flush().await?;
        drop(out);
        let frame = reader.read_frame().await?;
        Ok::<_, AcceptError>(handshake::read_client_info(&relay.secret, &frame)?)
    };
    match tokio::time::timeout(relay.config.settings.handshake_timeout, exchange).await {
        Err(_) => {
            relay.metrics.handshake_failed(HandshakeFailure::Timeout);
            Err(AcceptError::Timeout)
        }
        Ok(Err(e)) => {
            relay.metrics.handshake_failed(match e {
                AcceptError::Io(_)
                | AcceptError::Read(ReadFrameError::Io(_) | ReadFrameError::Closed) => {
                    HandshakeFailure::Io
                }
                _ => HandshakeFailure::Protocol,
            });
            Err(e)
        }
        Ok(Ok(hello)) => Ok(hello),
    }
}
