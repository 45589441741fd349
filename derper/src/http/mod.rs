//! The HTTP side of the relay: the DERP upgrade (including fast start and WebSocket) and the
//! plain endpoints.
//!
//! The first request on a connection is read here rather than by hyper, because fast start
//! requires that no HTTP response at all is written and that bytes after the request head are
//! kept for the DERP stream. Anything else is handed to hyper with those bytes replayed.

mod rewind;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use derp_proto::io::{Stream, WsStream};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub(crate) use rewind::Rewind;
pub use routes::HomePage;
use routes::Listener;

use crate::defaults;
use crate::log_limit::BAD_CONNECTIONS;
use crate::metrics::HandshakeFailure;
use crate::relay::{ConnMeta, Relay, TransportKind};

/// Per-listener HTTP settings shared by all its connections.
#[derive(Debug)]
pub(crate) struct HttpContext {
    pub(crate) relay: Relay,
    pub(crate) home: HomePage,
    pub(crate) derp_enabled: bool,
    /// The `101 Switching Protocols` response, built once (it names the server key).
    pub(crate) upgrade_response: Bytes,
}

/// How the first request on a connection should be handled.
#[derive(Debug, PartialEq, Eq)]
enum FirstRequest {
    /// `Upgrade: DERP` (or legacy bare websocket): raw DERP framing follows.
    Derp { fast_start: bool, not_ideal: bool },
    /// WebSocket with the `derp` subprotocol.
    WebSocket,
    /// Anything else: let hyper serve it.
    Other,
}

fn classify(req: &httparse::Request<'_, '_>, derp_enabled: bool) -> FirstRequest {
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    if path != "/derp" || !derp_enabled {
        return FirstRequest::Other;
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let upgrade = header("Upgrade").unwrap_or_default().to_ascii_lowercase();
    let protocols = header("Sec-WebSocket-Protocol").unwrap_or_default();
    match upgrade.as_str() {
        "websocket" if protocols.contains("derp") => FirstRequest::WebSocket,
        "derp" | "websocket" => FirstRequest::Derp {
            fast_start: header("Derp-Fast-Start").as_deref() == Some("1"),
            not_ideal: header("Ideal-Node").is_some_and(|v| !v.is_empty()),
        },
        _ => FirstRequest::Other,
    }
}

/// Classifies the first request and returns where its head ends (0 if it is not a complete,
/// valid head: hyper then answers 400). A separate function so the parser's header array
/// never lives in the connection's task.
fn parse_first_request(head: &[u8], derp_enabled: bool) -> (FirstRequest, usize) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => (classify(&req, derp_enabled), n),
        // Malformed or oversized: hyper answers with a proper 400 and closes.
        _ => (FirstRequest::Other, 0),
    }
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
enum HeadState {
    /// A whole request head (or the size limit was reached: hyper answers that).
    Complete,
    /// A valid beginning of a request head.
    Partial,
    /// Not HTTP/1.x at all (a TLS ClientHello on the plain port, an HTTP/2 preface, noise).
    NotHttp,
}

fn head_state(buf: &[u8]) -> HeadState {
    if buf.len() >= defaults::MAX_HTTP_HEAD {
        return HeadState::Complete;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(_)) => HeadState::Complete,
        Ok(httparse::Status::Partial) => HeadState::Partial,
        // More headers than we parse: hyper, which allows more, decides.
        Err(httparse::Error::TooManyHeaders) => HeadState::Complete,
        Err(_) => HeadState::NotHttp,
    }
}

/// Reads a request head (bounded in size) and returns everything read so far, and whether it
/// can be HTTP at all: bytes that cannot begin a request are answered at once rather than
/// held until the head timeout.
async fn read_head<S: Stream>(io: &mut S) -> std::io::Result<Option<(BytesMut, HeadState)>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        buf.reserve(1024);
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(if buf.is_empty() {
                None
            } else {
                Some((buf, HeadState::Complete))
            });
        }
        match head_state(&buf) {
            HeadState::Partial => {}
            state => return Ok(Some((buf, state))),
        }
    }
}

/// The answer to bytes that are not an HTTP/1.x request (Go's derper answers 400 too).
const NOT_HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nnot an HTTP/1.1\n";

/// Serves one accepted connection (after TLS, if any) on the main listener.
pub(crate) async fn serve_main<S: Stream>(mut io: S, remote: SocketAddr, ctx: Arc<HttpContext>) {
    let metrics = ctx.relay.metrics().clone();
    let head = match tokio::time::timeout(defaults::HTTP_HEAD_TIMEOUT, read_head(&mut io)).await {
        Ok(Ok(Some((buf, HeadState::NotHttp)))) => {
            metrics.handshake_failed(HandshakeFailure::Http);
            if let Some(suppressed) = BAD_CONNECTIONS.allow() {
                let start = &buf[..buf.len().min(8)];
                tracing::info!(%remote, first_bytes = ?start, suppressed, "not an HTTP/1.x request: answered 400");
            }
            use tokio::io::AsyncWriteExt as _;
            let _ = io.write_all(NOT_HTTP_RESPONSE).await;
            let _ = io.shutdown().await;
            return;
        }
        Ok(Ok(Some((buf, _)))) => buf,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "reading request head");
            return;
        }
        Err(_) => {
            metrics.handshake_failed(HandshakeFailure::Timeout);
            tracing::debug!(%remote, "request head timed out");
            return;
        }
    };
    let (kind, head_len) = parse_first_request(&head, ctx.derp_enabled);
    match kind {
        FirstRequest::Derp {
            fast_start,
            not_ideal,
        } => {
            let mut head = head;
            let rest = head.split_off(head_len);
            // The request head is done with; the connection must not keep it for its life.
            drop(head);
            let mut meta = ConnMeta::new(remote, TransportKind::Upgrade);
            meta.not_ideal = not_ideal;
            // With fast start no HTTP response at all is written.
            if !fast_start {
                meta.preface = ctx.upgrade_response.clone();
            }
            // Boxed so this task's own state stays small (a task is as large as its largest
            // state, and the WebSocket and hyper branches are much larger).
            if let Err(e) = Box::pin(ctx.relay.accept(io, rest, meta)).await
                && let Some(suppressed) = BAD_CONNECTIONS.allow()
            {
                tracing::info!(%remote, error = %e, suppressed, "derp connection failed");
            }
        }
        FirstRequest::WebSocket => {
            let rewound = Rewind::new(head.freeze(), io);
            #[allow(clippy::result_large_err)] // the error type is tungstenite's callback contract
            let choose_derp = |_req: &WsRequest, mut resp: WsResponse| {
                resp.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    http::HeaderValue::from_static(derp_proto::consts::WEBSOCKET_PROTOCOL),
                );
                Ok(resp)
            };
            let mut config = WebSocketConfig::default();
            // A frame can be 64 KiB of packet plus keys; anything much larger is abuse.
            config.max_message_size = Some(1 << 20);
            config.max_frame_size = Some(1 << 20);
            let ws = match Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
                rewound,
                choose_derp,
                Some(config),
            ))
            .await
            {
                Ok(ws) => ws,
                Err(e) => {
                    metrics.handshake_failed(HandshakeFailure::Http);
                    if let Some(suppressed) = BAD_CONNECTIONS.allow() {
                        tracing::info!(%remote, error = %e, suppressed, "websocket handshake failed");
                    }
                    return;
                }
            };
            let meta = ConnMeta::new(remote, TransportKind::WebSocket);
            // Boxed once, like the TLS stream: no dead copy in the futures it passes through.
            let ws = Box::new(WsStream::new(ws));
            if let Err(e) = Box::pin(ctx.relay.accept(ws, BytesMut::new(), meta)).await
                && let Some(suppressed) = BAD_CONNECTIONS.allow()
            {
                tracing::info!(%remote, error = %e, suppressed, "derp websocket connection failed");
            }
        }
        FirstRequest::Other => {
            Box::pin(serve_hyper(
                Rewind::new(head.freeze(), io),
                Listener::Main,
                ctx,
            ))
            .await
        }
    }
}

/// Serves a connection on the plain-HTTP port that accompanies TLS.
pub(crate) async fn serve_port80<S: Stream>(io: S, ctx: Arc<HttpContext>) {
    serve_hyper(Rewind::new(Bytes::new(), io), Listener::Port80, ctx).await;
}

async fn serve_hyper<S: Stream>(io: Rewind<S>, listener: Listener, ctx: Arc<HttpContext>) {
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { routes::service(req, listener, &ctx.home, ctx.derp_enabled).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(defaults::HTTP_HEAD_TIMEOUT)
        // The head cap applies here too: `read_head` hands over whatever it read once it has
        // MAX_HTTP_HEAD bytes, and hyper's own default (~400 KiB) would accept a longer head
        // that came in one read, or wait out the head timeout for one that never ends. With
        // the buffer capped, hyper answers 431 at once.
        .max_buf_size(defaults::MAX_HTTP_HEAD)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_str(s: &str) -> FirstRequest {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(s.as_bytes()).unwrap();
        classify(&req, true)
    }

    #[test]
    fn heads_that_cannot_be_http_are_recognised_at_once() {
        assert_eq!(
            head_state(b"GET /derp HTTP/1.1\r\nHost:"),
            HeadState::Partial
        );
        assert_eq!(head_state(b"GE"), HeadState::Partial);
        assert_eq!(head_state(b"GET / HTTP/1.1\r\n\r\n"), HeadState::Complete);
        // A TLS ClientHello's record header, an HTTP/2 preface, noise.
        assert_eq!(
            head_state(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            HeadState::NotHttp
        );
        assert_eq!(
            head_state(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            HeadState::NotHttp
        );
        assert_eq!(head_state(b"\x00\x01garbage"), HeadState::NotHttp);
    }

    #[test]
    fn recognises_upgrades() {
        assert_eq!(
            classify_str("GET /derp HTTP/1.1\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"),
            FirstRequest::Derp {
                fast_start: false,
                not_ideal: false
            }
        );
        assert_eq!(
            classify_str(
                "GET /derp HTTP/1.1\r\nupgrade: derp\r\nDerp-Fast-Start: 1\r\nIdeal-Node: 1a\r\n\r\n"
            ),
            FirstRequest::Derp {
                fast_start: true,
                not_ideal: true
            }
        );
        assert_eq!(
            classify_str(
                "GET /derp HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: derp\r\n\r\n"
            ),
            FirstRequest::WebSocket
        );
        // A bare websocket upgrade is a legacy client speaking raw DERP framing.
        assert_eq!(
            classify_str("GET /derp HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\n"),
            FirstRequest::Derp {
                fast_start: false,
                not_ideal: false
            }
        );
        assert_eq!(
            classify_str("GET /derp HTTP/1.1\r\n\r\n"),
            FirstRequest::Other
        );
        assert_eq!(
            classify_str("GET /derp/probe HTTP/1.1\r\nUpgrade: DERP\r\n\r\n"),
            FirstRequest::Other
        );
    }
}
