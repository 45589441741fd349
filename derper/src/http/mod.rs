//! The HTTP side of the relay: the DERP upgrade (including fast start and WebSocket) and the
//! plain endpoints.
//!
//! The first request on a connection is read here rather than by hyper, because fast start
//! requires that no HTTP response at all is written and that bytes after the request head are
//! kept for the DERP stream. Anything else is handed to hyper with those bytes replayed.

pub mod bootstrap_dns;
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
    /// `letsencrypt` mode: HTTP-01 answers, served on the `--http-port` listener.
    pub(crate) acme: Option<Arc<crate::acme::Challenges>>,
    /// `/bootstrap-dns`, when names are configured.
    pub(crate) bootstrap_dns: Option<Arc<bootstrap_dns::BootstrapDns>>,
    /// `/derpmap`, when a region is configured.
    pub(crate) derp_map: Option<Arc<crate::derpmap::DerpMapSource>>,
}

/// How the first request on a connection should be handled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FirstRequest {
    /// `Upgrade: DERP` (or legacy bare websocket): raw DERP framing follows.
    Derp { fast_start: bool, not_ideal: bool },
    /// WebSocket with the `derp` subprotocol.
    WebSocket,
    /// An upgrade that breaks HTTP/1.1 or RFC 6455: answered with an error and closed.
    Refused(Refusal),
    /// Anything else: let hyper serve it.
    Other,
}

/// The error answer to an upgrade request: status, extra header lines and a reason for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: &'static str,
    /// Extra header lines, each ending in CRLF.
    pub(crate) headers: &'static str,
    pub(crate) reason: &'static str,
}

impl Refusal {
    const fn bad_request(reason: &'static str) -> Self {
        Self {
            status: "400 Bad Request",
            headers: "",
            reason,
        }
    }

    /// The whole response; the connection closes after it. The body is Go's: the status then
    /// the reason.
    pub(crate) fn response(&self) -> Vec<u8> {
        let body = format!("{}: {}\n", self.status, self.reason);
        format!(
            "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{body}",
            self.status,
            body.len(),
            self.headers,
        )
        .into_bytes()
    }
}

/// HTTP/1.1 requires exactly one `Host` (RFC 9112 §3.2); Go's net/http answers 400 without
/// calling the handler, so Go's derper never sees such an upgrade.
fn check_host(req: &httparse::Request<'_, '_>) -> Result<(), Refusal> {
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Host"))
        .count();
    match hosts {
        0 if req.version == Some(1) => Err(Refusal::bad_request("missing required Host header")),
        0 | 1 => Ok(()),
        _ => Err(Refusal::bad_request("too many Host headers")),
    }
}

/// The opening handshake checks of RFC 6455 §4.2.1 that tungstenite leaves out or answers by
/// dropping the connection, in the order and with the statuses of the WebSocket library Go's
/// derper uses (coder/websocket `verifyClientRequest`).
fn check_websocket(req: &httparse::Request<'_, '_>) -> Result<(), Refusal> {
    use base64::Engine as _;
    let values = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap_or("").trim())
    };
    let has_token = |name: &'static str, token: &str| {
        values(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if req.version != Some(1) {
        return Err(Refusal {
            status: "426 Upgrade Required",
            headers: "",
            reason: "a WebSocket handshake must be at least HTTP/1.1",
        });
    }
    if !has_token("Connection", "upgrade") {
        return Err(Refusal {
            status: "426 Upgrade Required",
            headers: "Upgrade: websocket\r\n",
            reason: "the Connection header does not contain Upgrade",
        });
    }
    if req.method != Some("GET") {
        return Err(Refusal {
            status: "405 Method Not Allowed",
            headers: "Allow: GET\r\n",
            reason: "a WebSocket handshake must be a GET",
        });
    }
    // RFC 6455 §4.4: a version the server does not speak gets the ones it does.
    if values("Sec-WebSocket-Version").next() != Some("13") {
        return Err(Refusal {
            status: "400 Bad Request",
            headers: "Sec-WebSocket-Version: 13\r\n",
            reason: "unsupported WebSocket version (only 13 is supported)",
        });
    }
    let mut keys = values("Sec-WebSocket-Key");
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(Refusal::bad_request(
            "exactly one Sec-WebSocket-Key header is required",
        ));
    };
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => Ok(()),
        _ => Err(Refusal::bad_request(
            "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
        )),
    }
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
    let kind = match upgrade.as_str() {
        "websocket" if protocols.contains("derp") => FirstRequest::WebSocket,
        "derp" | "websocket" => FirstRequest::Derp {
            fast_start: header("Derp-Fast-Start").as_deref() == Some("1"),
            not_ideal: header("Ideal-Node").is_some_and(|v| !v.is_empty()),
        },
        _ => return FirstRequest::Other,
    };
    let checked = match kind {
        FirstRequest::WebSocket => check_host(req).and_then(|()| check_websocket(req)),
        _ => check_host(req),
    };
    match checked {
        Ok(()) => kind,
        Err(refusal) => FirstRequest::Refused(refusal),
    }
}

/// Classifies the first request and returns where its head ends (0 if it is not a complete,
/// valid head: hyper then answers 400). A separate function so the parser's header array
/// never lives in the connection's task.
pub(crate) fn parse_first_request(head: &[u8], derp_enabled: bool) -> (FirstRequest, usize) {
    // `read_head` stops at the cap, but one read can carry it past: only the capped prefix
    // may hold the head, so a longer head is never upgraded (hyper answers it with 431).
    let head = &head[..head.len().min(defaults::MAX_HTTP_HEAD)];
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
pub(crate) enum HeadState {
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
pub(crate) async fn read_head<S: Stream>(
    io: &mut S,
) -> std::io::Result<Option<(BytesMut, HeadState)>> {
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
        FirstRequest::Refused(refusal) => {
            metrics.handshake_failed(HandshakeFailure::Http);
            if let Some(suppressed) = BAD_CONNECTIONS.allow() {
                tracing::info!(%remote, status = refusal.status, reason = refusal.reason, suppressed, "refused upgrade request");
            }
            // Boxed: the write's state would otherwise grow every connection's task.
            Box::pin(answer_and_close(io, refusal.response())).await;
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
            let ws = match Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
                rewound,
                choose_derp,
                Some(websocket_config()),
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

/// The limits of a DERP WebSocket as the server reads it.
pub(crate) fn websocket_config() -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    // A frame can be 64 KiB of packet plus keys; anything much larger is abuse.
    config.max_message_size = Some(defaults::MAX_WEBSOCKET_MESSAGE);
    config.max_frame_size = Some(defaults::MAX_WEBSOCKET_MESSAGE);
    config
}

/// Writes `response` and closes the connection.
async fn answer_and_close<S: Stream>(mut io: S, response: Vec<u8>) {
    use tokio::io::AsyncWriteExt as _;
    let _ = io.write_all(&response).await;
    let _ = io.shutdown().await;
}

/// Serves a connection on the plain-HTTP port that accompanies TLS.
pub(crate) async fn serve_port80<S: Stream>(io: S, ctx: Arc<HttpContext>) {
    serve_hyper(Rewind::new(Bytes::new(), io), Listener::Port80, ctx).await;
}

async fn serve_hyper<S: Stream>(io: Rewind<S>, listener: Listener, ctx: Arc<HttpContext>) {
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move {
            // ACME's HTTP-01 validation always arrives on the plain port.
            if listener == Listener::Port80
                && let Some(acme) = &ctx.acme
                && let Some(answer) = acme.http01_response(req.uri().path())
            {
                return Ok(answer);
            }
            if listener == Listener::Main
                && req.uri().path() == "/bootstrap-dns"
                && let Some(dns) = &ctx.bootstrap_dns
            {
                return Ok(routes::json(dns.answer(req.uri().query())));
            }
            if listener == Listener::Main
                && req.uri().path() == "/derpmap"
                && let Some(map) = &ctx.derp_map
            {
                return Ok(routes::json(map.json()));
            }
            routes::service(req, listener, &ctx.home, ctx.derp_enabled).await
        }
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

    const WS_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    const WS_VERSION: &str = "Sec-WebSocket-Version: 13";

    /// A WebSocket upgrade to /derp with the `derp` subprotocol and `extra` header lines.
    fn websocket(extra: &[&str]) -> String {
        let mut r = String::from(
            "GET /derp HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: derp\r\n",
        );
        for h in extra {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r
    }

    fn refused(s: &str) -> Refusal {
        match classify_str(s) {
            FirstRequest::Refused(r) => r,
            other => panic!("{s:?} was not refused: {other:?}"),
        }
    }

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
            classify_str(
                "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
            ),
            FirstRequest::Derp {
                fast_start: false,
                not_ideal: false
            }
        );
        assert_eq!(
            classify_str(
                "GET /derp HTTP/1.1\r\nHost: x\r\nupgrade: derp\r\nDerp-Fast-Start: 1\r\nIdeal-Node: 1a\r\n\r\n"
            ),
            FirstRequest::Derp {
                fast_start: true,
                not_ideal: true
            }
        );
        assert_eq!(
            classify_str(&websocket(&[WS_KEY, WS_VERSION])),
            FirstRequest::WebSocket
        );
        // A bare websocket upgrade is a legacy client speaking raw DERP framing.
        assert_eq!(
            classify_str("GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\n"),
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

    /// Found by the `http_head` fuzz target: a head that arrived in one read longer than the
    /// cap was upgraded. Only a head within the cap counts; hyper refuses the rest.
    #[test]
    fn a_head_over_the_cap_is_never_an_upgrade() {
        let pad = "a".repeat(defaults::MAX_HTTP_HEAD);
        let head =
            format!("GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nX-Pad: {pad}\r\n\r\n");
        assert_eq!(
            parse_first_request(head.as_bytes(), true),
            (FirstRequest::Other, 0)
        );
        let fits = format!(
            "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nX-Pad: {}\r\n\r\n",
            &pad[..defaults::MAX_HTTP_HEAD - 100]
        );
        assert!(matches!(
            parse_first_request(fits.as_bytes(), true),
            (FirstRequest::Derp { .. }, n) if n == fits.len()
        ));
    }

    /// HTTP/1.1 needs exactly one Host, as Go's net/http enforces before derper's handler runs;
    /// HTTP/1.0 may leave it out.
    #[test]
    fn upgrades_need_a_host() {
        for upgrade in [
            "GET /derp HTTP/1.1\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n",
            "GET /derp HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: derp\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ] {
            assert_eq!(
                refused(upgrade),
                Refusal::bad_request("missing required Host header")
            );
        }
        assert_eq!(
            refused("GET /derp HTTP/1.1\r\nHost: a\r\nHost: b\r\nUpgrade: DERP\r\n\r\n"),
            Refusal::bad_request("too many Host headers")
        );
        assert!(matches!(
            classify_str("GET /derp HTTP/1.0\r\nUpgrade: DERP\r\n\r\n"),
            FirstRequest::Derp { .. }
        ));
        assert_eq!(
            Refusal::bad_request("missing required Host header").response(),
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 46\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header\n"
        );
    }

    /// RFC 6455 §4.2.1: a key that is not base64 of 16 bytes, a missing or repeated key, and a
    /// version other than 13 are refused with 400 (the last naming version 13, §4.4).
    #[test]
    fn websocket_handshakes_are_checked() {
        let bad_key =
            Refusal::bad_request("Sec-WebSocket-Key must be the base64 encoding of 16 bytes");
        for key in [
            "Sec-WebSocket-Key: x",
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", // 32 bytes
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",                       // unpadded
            "Sec-WebSocket-Key: not!base64&at*all?xxxx==",
            "Sec-WebSocket-Key:",
        ] {
            assert_eq!(refused(&websocket(&[key, WS_VERSION])), bad_key, "{key}");
        }
        let one_key = Refusal::bad_request("exactly one Sec-WebSocket-Key header is required");
        assert_eq!(refused(&websocket(&[WS_VERSION])), one_key);
        assert_eq!(refused(&websocket(&[WS_KEY, WS_KEY, WS_VERSION])), one_key);
        for version in [
            None,
            Some("Sec-WebSocket-Version: 8"),
            Some("Sec-WebSocket-Version: 14"),
        ] {
            let r = refused(&websocket(
                &[Some(WS_KEY), version]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>(),
            ));
            assert_eq!(r.status, "400 Bad Request");
            assert_eq!(r.headers, "Sec-WebSocket-Version: 13\r\n");
            let response = String::from_utf8(r.response()).unwrap();
            assert!(
                response.starts_with("HTTP/1.1 400 Bad Request\r\n")
                    && response.contains("\r\nSec-WebSocket-Version: 13\r\n"),
                "{response}"
            );
        }
        // Leading and trailing blanks around the key are allowed.
        assert_eq!(
            classify_str(&websocket(&[
                "Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==  ",
                WS_VERSION
            ])),
            FirstRequest::WebSocket
        );
        assert_eq!(
            refused(
                &websocket(&[WS_KEY, WS_VERSION])
                    .replace("Connection: Upgrade", "Connection: keep-alive")
            )
            .status,
            "426 Upgrade Required"
        );
        assert_eq!(
            refused(&websocket(&[WS_KEY, WS_VERSION]).replacen("GET", "POST", 1)).status,
            "405 Method Not Allowed"
        );
    }
}
