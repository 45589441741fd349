//! Turning an HTTP connection into a DERP byte stream: `Upgrade: DERP` or WebSocket.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ClientError;
use crate::consts::{DERP_PATH, WEBSOCKET_PROTOCOL};
use crate::handshake::{self, ClientInfo};
use crate::io::{BoxStream, Stream, WsStream};
use crate::key::{NodePublicKey, NodeSecretKey, SharedBox};

/// Longest HTTP response head accepted before the upgrade is declared broken.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Where an HTTP request goes: parsed from a DERP URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path_and_query: String,
}

impl Target {
    /// Parses `http(s)://host[:port][/path]`; an empty path means [`DERP_PATH`].
    pub(super) fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::InvalidUrl(url.to_string());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri.host().ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => DERP_PATH.to_string(),
            Some(p) => p.to_string(),
        };
        Ok(Self {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// The `Host` header: brackets around IPv6, the port only when not the scheme's default.
    pub(super) fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The result of [`http_upgrade`]: the stream, bytes read past the response head, and the key
/// ClientInfo was sealed to if it went out with the request.
pub(super) struct Upgraded<S> {
    pub(super) stream: S,
    pub(super) leftover: BytesMut,
    pub(super) info_sent_to: Option<NodePublicKey>,
}

/// Sends `GET <path>` with `Upgrade: DERP` and waits for `101`.
///
/// With `fast_key` (learnt from the TLS metacert) the request carries `Derp-Fast-Start: 1` and
/// ClientInfo sealed to that key right behind it, and the response is not awaited: the server
/// answers with DERP frames directly, as Go's server does for fast start.
pub(super) async fn http_upgrade<S: Stream>(
    mut stream: S,
    target: &Target,
    secret: &NodeSecretKey,
    info: &ClientInfo,
    fast: Option<&(NodePublicKey, SharedBox)>,
) -> Result<Upgraded<S>, ClientError> {
    let fast_key = fast.map(|(key, _)| *key);
    let mut req = BytesMut::with_capacity(512);
    req.put_slice(
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: derp-fleet\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n",
            target.path_and_query,
            target.host_header()
        )
        .as_bytes(),
    );
    if fast_key.is_some() {
        req.put_slice(b"Derp-Fast-Start: 1\r\n");
    }
    req.put_slice(b"\r\n");
    if let Some((_, shared)) = fast {
        handshake::write_client_info_with(&mut req, &secret.public_key(), shared, info);
    }
    stream.write_all(&req).await.map_err(ClientError::Write)?;
    stream.flush().await.map_err(ClientError::Write)?;
    if fast_key.is_some() {
        return Ok(Upgraded {
            stream,
            leftover: BytesMut::new(),
            info_sent_to: fast_key,
        });
    }
    let (head, leftover) = read_response_head(&mut stream).await?;
    let status = head.lines().next().unwrap_or_default().to_string();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(ClientError::Upgrade(status));
    }
    Ok(Upgraded {
        stream,
        leftover,
        info_sent_to: None,
    })
}

/// Opens a WebSocket with the `derp` subprotocol and returns it as a byte stream.
pub(super) async fn websocket<S: Stream>(
    stream: S,
    target: &Target,
) -> Result<BoxStream, ClientError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let scheme = if target.tls { "wss" } else { "ws" };
    let url = format!(
        "{scheme}://{}{}",
        target.host_header(),
        target.path_and_query
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::Upgrade(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        http::HeaderValue::from_static(WEBSOCKET_PROTOCOL),
    );
    let (ws, _resp) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| ClientError::Upgrade(e.to_string()))?;
    Ok(Box::new(WsStream::new(ws)))
}

/// Reads an HTTP response head (bounded) and returns it plus any bytes after it.
async fn read_response_head<S: Stream>(io: &mut S) -> Result<(String, BytesMut), ClientError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf.split_off(end + 4);
            return Ok((head, rest));
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(ClientError::Upgrade("response header too large".into()));
        }
        buf.reserve(1024);
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|e| ClientError::Read(e.into()))?;
        if n == 0 {
            return Err(ClientError::Upgrade(
                "connection closed during upgrade".into(),
            ));
        }
    }
}
