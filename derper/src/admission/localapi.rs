//! `--verify-clients`: asks the tailscaled on this machine whether a node key belongs to its
//! tailnet, as derper does (`WhoIsNodeKey` over the LocalAPI socket): `200` means a peer,
//! `404` means not one; anything else is no answer.

use std::path::PathBuf;

use bytes::Bytes;
use derp_proto::NodePublicKey;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::webhook::error_chain;
use super::{Answer, CallError};
use crate::defaults;

/// The LocalAPI's fixed host name (tailscale's `apitype.LocalAPIHost`).
const LOCAL_API_HOST: &str = "local-tailscaled.sock";

/// A client of the local tailscaled's LocalAPI socket.
#[derive(Debug, Clone)]
pub(crate) struct LocalTailscaled {
    socket: PathBuf,
}

impl LocalTailscaled {
    /// A client for the socket at `socket` (default: tailscaled's on Linux).
    pub(crate) fn new(socket: Option<PathBuf>) -> Self {
        Self {
            socket: socket.unwrap_or_else(|| PathBuf::from(defaults::TAILSCALED_SOCKET)),
        }
    }

    /// Asks whether `key` is a node of the local tailnet. The caller bounds the time.
    pub(crate) async fn ask(&self, key: &NodePublicKey) -> Result<Answer, CallError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            CallError::Unreachable(format!("tailscaled socket {}: {e}", self.socket.display()))
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&error_chain(&e)))?;
        let req = Request::get(format!("/localapi/v0/whois?addr=nodekey:{}", key.to_hex()))
            .header(http::header::HOST, LOCAL_API_HOST)
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(&e))?;
        let exchange = async {
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(&error_chain(&e)))?;
            let status = res.status();
            // The WhoIs body is not needed, only read (bounded) so the connection ends cleanly.
            let _ = Limited::new(res.into_body(), defaults::ADMISSION_MAX_RESPONSE)
                .collect()
                .await;
            Ok::<_, CallError>(status)
        };
        // The connection future must be polled for the exchange to progress; it ends once the
        // answer is read (Connection: close).
        tokio::pin!(exchange);
        tokio::pin!(conn);
        let mut driving = true;
        let status = loop {
            tokio::select! {
                r = &mut exchange => break r?,
                _ = &mut conn, if driving => driving = false,
            }
        };
        match status {
            StatusCode::OK => Ok(Answer::Allow),
            StatusCode::NOT_FOUND => Ok(Answer::Deny),
            other => Err(CallError::BadStatus(other.as_u16())),
        }
    }
}
