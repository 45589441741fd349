//! Fuzz harnesses for the parsers of the relay process: one function per target in
//! `fuzz/fuzz_targets/` whose input reaches derper code (the protocol crate's targets live in
//! `derp_proto::fuzzing`).
//!
//! Each function takes arbitrary bytes and must not panic, except through the `assert!`s that
//! state an invariant. `tests/fuzz_corpus.rs` replays `fuzz/corpus/<target>/` through them in
//! every `cargo test`, so a crash the fuzzer found stays fixed once its input is committed.
//!
//! | target               | input                                                          |
//! |----------------------|----------------------------------------------------------------|
//! | `http_head`          | control byte ‖ the first bytes a client sends on the main port |
//! | `websocket_frames`   | control byte ‖ a WebSocket client's frames after the upgrade   |
//! | `config_file`        | the `--config-file` TOML                                       |
//! | `admission_response` | the body of the admission webhook's `200` answer               |
//!
//! The in-memory streams here never wait, so the async readers are polled once with a no-op
//! waker instead of inside a runtime: a future that is still pending is itself a bug.
//!
//! Not part of the public API: hidden from the docs and free to change.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use derp_proto::io::{MAX_EMPTY_MESSAGES, WsStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::admission::Answer;
use crate::admission::webhook;
use crate::config::ConfigFile;
use crate::defaults;
use crate::http::{FirstRequest, HeadState, parse_first_request, read_head, websocket_config};

/// Runs a future over in-memory IO to completion in one poll.
fn poll_now<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("pending on in-memory IO, which never waits"),
    }
}

/// A peer that sends `input` in reads of at most `chunk` bytes, then end of stream, and keeps
/// what it is sent.
struct Peer {
    input: Vec<u8>,
    pos: usize,
    chunk: usize,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    fn new(input: &[u8], chunk: usize) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let peer = Self {
            input: input.to_vec(),
            pos: 0,
            chunk,
            sent: sent.clone(),
        };
        (peer, sent)
    }
}

impl AsyncRead for Peer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (self.input.len() - self.pos)
            .min(self.chunk)
            .min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn sent_bytes(sent: &Mutex<Vec<u8>>) -> Vec<u8> {
    sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

// --- http_head ---

/// Read sizes a client's bytes may arrive in.
const CHUNKS: [usize; 4] = [13, 256, 4096, usize::MAX];

/// Reads and classifies the first request on a connection as `serve_main` does. Control byte:
/// bit 0 set turns `/derp` off, bits 1-2 pick the read size.
///
/// Invariants: the head is a prefix of the input and complete, cut at the size cap or not
/// HTTP; the classification is the same for every read size and every call; only `/derp`
/// with DERP enabled is ever upgraded or refused; an accepted upgrade has a head of at most
/// [`defaults::MAX_HTTP_HEAD`] bytes, exactly one `Host` (HTTP/1.1; at most one in 1.0) and,
/// for WebSocket, a GET with version 13 and one 16-byte key; a refusal is a well-formed
/// response.
pub fn http_head(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let derp_enabled = control & 1 == 0;
    let chunk = CHUNKS[usize::from(control >> 1) % CHUNKS.len()];
    let Some((head, state, kind)) = first_request(input, chunk, derp_enabled) else {
        return;
    };
    // Read sizes change how much is read past the head, never what the head is.
    let whole = first_request(input, usize::MAX, derp_enabled).map(|(_, _, kind)| kind);
    assert_eq!(
        whole.as_ref(),
        Some(&kind),
        "read size {chunk} changes the result"
    );
    assert_eq!(parse_first_request(&head, derp_enabled), kind);
    let (kind, head_len) = kind;
    assert!(head_len <= head.len());
    if state == HeadState::NotHttp {
        assert_eq!((&kind, head_len), (&FirstRequest::Other, 0));
    }
    match kind {
        FirstRequest::Other => {}
        FirstRequest::Refused(refusal) => {
            assert!(derp_enabled);
            check_refusal(&refusal.response(), refusal.status);
        }
        FirstRequest::Derp { .. } | FirstRequest::WebSocket => {
            assert!(derp_enabled);
            assert!(
                (1..=defaults::MAX_HTTP_HEAD).contains(&head_len),
                "accepted a {head_len} byte head"
            );
            check_upgrade(&head[..head_len], kind == FirstRequest::WebSocket);
        }
    }
}

/// `read_head` over `input` arriving `chunk` bytes at a time, then `parse_first_request`.
fn first_request(
    input: &[u8],
    chunk: usize,
    derp_enabled: bool,
) -> Option<(Vec<u8>, HeadState, (FirstRequest, usize))> {
    let (mut peer, _) = Peer::new(input, chunk);
    let read = match poll_now(read_head(&mut peer)) {
        Ok(read) => read,
        Err(e) => panic!("in-memory read failed: {e}"),
    };
    let Some((head, state)) = read else {
        assert!(input.is_empty(), "bytes were sent, but none read");
        return None;
    };
    assert!(!head.is_empty() && input.starts_with(&head));
    assert_ne!(state, HeadState::Partial);
    let kind = parse_first_request(&head, derp_enabled);
    Some((head.to_vec(), state, kind))
}

/// What an accepted upgrade's head must look like, checked on a fresh parse.
fn check_upgrade(head: &[u8], websocket: bool) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    assert_eq!(
        req.parse(head).ok(),
        Some(httparse::Status::Complete(head.len()))
    );
    let path = req.path.unwrap_or("");
    assert_eq!(path.split('?').next(), Some("/derp"));
    let values = |name: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let hosts = values("Host").len();
    match req.version {
        Some(1) => assert_eq!(hosts, 1, "HTTP/1.1 upgrade with {hosts} Host headers"),
        _ => assert!(hosts <= 1, "upgrade with {hosts} Host headers"),
    }
    if !websocket {
        return;
    }
    assert_eq!(req.method, Some("GET"));
    assert_eq!(req.version, Some(1));
    let trimmed = |v: &[u8]| String::from_utf8_lossy(v).trim().to_string();
    assert_eq!(
        values("Sec-WebSocket-Version").first().map(|v| trimmed(v)),
        Some("13".to_string())
    );
    let keys = values("Sec-WebSocket-Key");
    assert_eq!(keys.len(), 1, "{} Sec-WebSocket-Key headers", keys.len());
    let nonce = base64::engine::general_purpose::STANDARD.decode(trimmed(keys[0]));
    assert_eq!(nonce.map(|n| n.len()).ok(), Some(16));
}

/// A refusal is one complete HTTP/1.1 response whose Content-Length is its body.
fn check_refusal(response: &[u8], status: &str) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = resp.parse(response) else {
        panic!("refusal is not an HTTP response: {response:?}");
    };
    assert_eq!(
        resp.code.map(|c| c.to_string()).as_deref(),
        status.split(' ').next()
    );
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Content-Length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
    assert_eq!(length, Some(response.len() - n));
}

// --- websocket_frames ---

/// Reads a WebSocket client's frames through [`WsStream`] as the relay does after the upgrade
/// (server role, the server's size limits). Control byte: bits 0-1 pick how the bytes arrive,
/// bits 2-3 the size of the relay's reads.
///
/// Invariants: the bytes read are a prefix of the binary payloads a simple frame model finds,
/// all of them when the stream ends cleanly (which only a Close does); a text message fails
/// the read and closes with 1003, a run of more than [`MAX_EMPTY_MESSAGES`] empty messages with
/// 1008, and the read keeps failing without sending more; the server only ever sends unmasked
/// Pong and Close frames, a Close last.
pub fn websocket_frames(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let chunk = CHUNKS[usize::from(control) % CHUNKS.len()];
    let read_size = [1, 7, 1000, 65536][usize::from(control >> 2) % 4];
    let (peer, sent) = Peer::new(input, chunk);
    let ws = poll_now(WebSocketStream::from_raw_socket(
        peer,
        Role::Server,
        Some(websocket_config()),
    ));
    let mut ws = WsStream::new(ws);
    let mut got = Vec::new();
    let mut buf = vec![0; read_size];
    let end = loop {
        match poll_now(ws.read(&mut buf)) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    let model = ws_model(input);
    assert!(
        model.payload.starts_with(&got),
        "read {} bytes that the client did not send as binary messages",
        got.len()
    );
    let sent_now = sent_bytes(&sent);
    let close = check_server_frames(&sent_now);
    match end {
        Ok(()) => {
            assert_eq!(
                model.end,
                ModelEnd::Close,
                "clean end of stream without a Close"
            );
            assert_eq!(
                got, model.payload,
                "clean end before every binary message was read"
            );
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            let reason = e.to_string();
            let (code, want_end) = match reason.as_str() {
                "text message on a DERP websocket" => (1003, ModelEnd::Text),
                "too many empty messages in a row" => (1008, ModelEnd::EmptyRun),
                _ => return,
            };
            assert_eq!(model.end, want_end, "{reason}");
            assert_eq!(
                got, model.payload,
                "{reason} before every binary message was read"
            );
            assert_eq!(close, Some(code), "{reason}: wrong close frame");
            assert!(poll_now(ws.read(&mut buf)).is_err(), "read after {reason}");
            assert_eq!(sent_bytes(&sent), sent_now, "sent more after {reason}");
        }
        Err(_) => {}
    }
}

/// How a model read of client frames ends.
#[derive(Debug, PartialEq, Eq)]
enum ModelEnd {
    /// A complete text message (the relay refuses it; tungstenite may fail it first, as
    /// invalid UTF-8).
    Text,
    /// One more empty binary message than [`MAX_EMPTY_MESSAGES`] in a row.
    EmptyRun,
    /// A Close frame (tungstenite may refuse its payload).
    Close,
    /// The input ended, or a frame broke RFC 6455 or the size limits.
    Other,
}

/// The binary payload bytes of `input` read as masked client frames (RFC 6455 §5), up to the
/// first thing that ends a relay's read.
struct WsModel {
    payload: Vec<u8>,
    end: ModelEnd,
}

fn ws_model(input: &[u8]) -> WsModel {
    let mut payload = Vec::new();
    let mut rest = input;
    // The message being assembled from fragments: is it text, and its bytes.
    let mut message: Option<(bool, Vec<u8>)> = None;
    let mut empty_in_a_row = 0;
    let end = loop {
        let Some(frame) = next_client_frame(&mut rest) else {
            break ModelEnd::Other;
        };
        let (fin, opcode, data) = frame;
        match opcode {
            0x0..=0x2 => {
                let mut current = match (opcode, message.take()) {
                    (0x0, Some(current)) => current,
                    (0x1 | 0x2, None) => (opcode == 0x1, Vec::new()),
                    _ => break ModelEnd::Other,
                };
                current.1.extend_from_slice(&data);
                if current.1.len() > defaults::MAX_WEBSOCKET_MESSAGE {
                    break ModelEnd::Other;
                }
                if !fin {
                    message = Some(current);
                    continue;
                }
                let (text, bytes) = current;
                if text {
                    break ModelEnd::Text;
                }
                if bytes.is_empty() {
                    empty_in_a_row += 1;
                    if empty_in_a_row > MAX_EMPTY_MESSAGES {
                        break ModelEnd::EmptyRun;
                    }
                } else {
                    empty_in_a_row = 0;
                    payload.extend_from_slice(&bytes);
                }
            }
            0x8..=0xa if !fin || data.len() > 125 => break ModelEnd::Other,
            0x8 => break ModelEnd::Close,
            0x9 | 0xa => {}
            _ => break ModelEnd::Other,
        }
    };
    WsModel { payload, end }
}

/// Cuts one masked client frame off `rest`: FIN, opcode and the unmasked payload. `None` for
/// a cut-short, unmasked, oversized or RSV-flagged frame.
fn next_client_frame(rest: &mut &[u8]) -> Option<(bool, u8, Vec<u8>)> {
    let b = *rest;
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
        return None;
    }
    let (len, at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).ok()?;
    if len > defaults::MAX_WEBSOCKET_MESSAGE {
        return None;
    }
    let mask: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    let body = b.get(at + 4..at + 4 + len)?;
    let data = body
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ mask[i % 4])
        .collect();
    *rest = &b[at + 4 + len..];
    Some((b0 & 0x80 != 0, b0 & 0x0f, data))
}

/// The server's frames: unmasked, final, only Pong and Close, Close last. Returns the Close
/// code, if one was sent.
fn check_server_frames(mut out: &[u8]) -> Option<u16> {
    let mut close = None;
    while !out.is_empty() {
        assert!(close.is_none(), "a frame after Close");
        assert!(out.len() >= 2, "cut-short server frame");
        let (b0, b1) = (out[0], out[1]);
        assert_eq!(b1 & 0x80, 0, "masked server frame");
        assert_eq!(b0 & 0xf0, 0x80, "server frame not final or with RSV bits");
        let len = usize::from(b1 & 0x7f);
        assert!(len <= 125, "server control frame of {len} bytes");
        let payload = &out[2..2 + len];
        match b0 & 0x0f {
            0xa => {}
            0x8 => {
                close = Some(
                    payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
                )
            }
            other => panic!("server sent opcode {other:#x}"),
        }
        out = &out[2 + len..];
    }
    close
}

// --- config_file ---

/// Parses `data` as `--config-file` and validates it.
///
/// Invariants: errors format (they locate the key by re-parsing); whatever validates prints
/// with `to_toml`, and that text parses back to the same settings, validates and prints the
/// same again.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let settings = match ConfigFile::parse(text, path) {
        Ok(file) => file.settings,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if let Err(e) = settings.validate() {
        let _ = e.to_string();
        return;
    }
    let printed = match settings.to_toml() {
        Ok(printed) => printed,
        Err(e) => panic!("valid settings do not print: {e}\n{settings:?}"),
    };
    let back = match ConfigFile::parse(&printed, path) {
        Ok(file) => file.settings,
        Err(e) => panic!("printed settings do not parse: {e}\n{printed}"),
    };
    assert_eq!(
        back, settings,
        "printed settings parse differently:\n{printed}"
    );
    assert!(back.validate().is_ok(), "printed settings do not validate");
    assert_eq!(back.to_toml().ok().as_ref(), Some(&printed));
}

// --- admission_response ---

/// Parses `data` as the admission webhook's `200` body.
///
/// Invariants: an answer comes only from a JSON object whose `Allow` is that boolean (the last
/// one, if repeated), and every such object is an answer.
pub fn admission_response(data: &[u8]) {
    let answer = webhook::parse_answer(data);
    let value: Option<serde_json::Value> = serde_json::from_slice(data).ok();
    let allow = value
        .as_ref()
        .and_then(|v| v.as_object())
        .and_then(|o| o.get("Allow"))
        .and_then(serde_json::Value::as_bool);
    match (answer, allow) {
        (Ok(Answer::Allow), Some(true)) | (Ok(Answer::Deny), Some(false)) | (Err(_), None) => {}
        (answer, allow) => panic!("answer {answer:?} from a body whose Allow is {allow:?}"),
    }
}
