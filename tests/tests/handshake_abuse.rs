//! Bad input during the handshake closes that connection only, with a counted reason.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use derp_proto::handshake::{self, ClientInfo};
use derp_proto::io::{FramedRead, ReadFrameError};
use derp_proto::{FrameDecoder, FrameType, NodeSecretKey, RawFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UPGRADE: &[u8] =
    b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n";

/// Sends the upgrade, reads the 101 and the ServerKey frame, then `payload`, and returns
/// whether the server closed the connection within `wait`.
async fn closes_after(addr: std::net::SocketAddr, payload: &[u8], wait: Duration) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(UPGRADE).await.unwrap();
    s.write_all(payload).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn malformed_client_info_is_closed_and_others_unaffected() {
    let server = common::plain_server().await;
    let addr = server.local_addr();
    let mut a = common::connect(&server.derp_url()).await;
    let mut b = common::connect(&server.derp_url()).await;

    // Wrong first frame type.
    let mut send = vec![0x04, 0, 0, 0, 0x20];
    send.extend_from_slice(&[0; 32]);
    assert!(closes_after(addr, &send, Duration::from_secs(5)).await);
    // ClientInfo too short.
    assert!(
        closes_after(
            addr,
            &[0x02, 0, 0, 0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            Duration::from_secs(5)
        )
        .await
    );
    // ClientInfo longer than 256 KiB is refused from the header alone.
    assert!(closes_after(addr, &[0x02, 0, 0x10, 0, 0], Duration::from_secs(5)).await);
    // A box that does not open.
    let mut junk = vec![0x02, 0, 0, 0, 100];
    junk.extend_from_slice(&[0xab; 100]);
    assert!(closes_after(addr, &junk, Duration::from_secs(5)).await);

    a.send_packet(&b.public_key(), b"unaffected").await.unwrap();
    assert_eq!(common::recv_packet(&mut b).await.1, b"unaffected");
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_cut_at_the_handshake_deadline() {
    // The default deadline (10 s) on paused time, driven over an in-memory pipe.
    let config = derper::RelayConfig::new(NodeSecretKey::generate());
    let deadline = config.settings.handshake_timeout;
    let started = tokio::time::Instant::now();
    let relay = derper::Relay::new(config, Arc::new(derper::metrics::Metrics::new()));
    let (server_io, mut client_io) = tokio::io::duplex(4096);
    let meta = derper::relay::ConnMeta::new(
        "127.0.0.1:1".parse().unwrap(),
        derper::relay::TransportKind::Upgrade,
    );
    let accept = tokio::spawn({
        let relay = relay.clone();
        async move { relay.accept(server_io, BytesMut::new(), meta).await }
    });
    let mut key_frame = [0u8; 45];
    client_io.read_exact(&mut key_frame).await.unwrap();
    assert_eq!(&key_frame[..5], &[0x01, 0, 0, 0, 0x28]);
    let result = tokio::time::timeout(deadline * 2, accept)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(result, Err(derper::relay::AcceptError::Timeout)),
        "{result:?}"
    );
    assert_eq!(started.elapsed(), deadline, "cut exactly at the deadline");
}

#[tokio::test]
async fn slow_loris_http_head_does_not_block_others() {
    let server = common::plain_server().await;
    let addr = server.local_addr();
    // Many connections that send half a request and stall.
    let mut stalls = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /derp HTTP/1.1\r\nHost:").await.unwrap();
        stalls.push(s);
    }
    let mut a = common::connect(&server.derp_url()).await;
    let mut b = common::connect(&server.derp_url()).await;
    a.send_packet(&b.public_key(), b"through").await.unwrap();
    assert_eq!(common::recv_packet(&mut b).await.1, b"through");
}

#[tokio::test]
async fn bytes_that_cannot_be_http_get_400_at_once() {
    let server = common::plain_server().await;
    // A TLS ClientHello's first bytes on the plain port, and an HTTP/2 preface: both used to
    // wait for the 10 s head timeout and then close without a word.
    for opening in [
        &[
            0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
        ][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
        s.write_all(opening).await.unwrap();
        let mut answer = Vec::new();
        // Far below the head timeout: an answer after the timeout would fail here.
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer))
            .await
            .expect("answered before the head timeout")
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 400 "),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // The relay still serves.
    let mut a = common::connect(&server.derp_url()).await;
    let mut b = common::connect(&server.derp_url()).await;
    a.send_packet(&b.public_key(), b"fine").await.unwrap();
    assert_eq!(common::recv_packet(&mut b).await.1, b"fine");
}

/// Writes `request` and returns everything the server answers before it closes.
async fn answer(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// HTTP/1.1 requires Host; Go's net/http answers 400 before derper's handler runs. We used to
/// accept the upgrade.
#[tokio::test]
async fn an_upgrade_without_host_gets_400() {
    let server = common::plain_server().await;
    let addr = server.local_addr();
    let r = answer(
        addr,
        "GET /derp HTTP/1.1\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    assert_eq!(
        r,
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 46\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header\n"
    );
    let r = answer(addr, &WS_UPGRADE.replace("Host: x\r\n", "")).await;
    assert!(
        r.starts_with("HTTP/1.1 400 Bad Request\r\n")
            && r.ends_with("missing required Host header\n"),
        "{r}"
    );
    // Clients that send Host (ours, Tailscale's) are unaffected.
    let mut a = common::connect(&server.derp_url()).await;
    let mut b = common::connect(&server.derp_url()).await;
    a.send_packet(&b.public_key(), b"hosted").await.unwrap();
    assert_eq!(common::recv_packet(&mut b).await.1, b"hosted");
}

/// A WebSocket upgrade as Tailscale's client sends it (the RFC 6455 sample key).
const WS_UPGRADE: &str = "GET /derp HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: derp\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// RFC 6455 §4.2.1/§4.4: a bad or missing key and a version other than 13 get 400 (with the
/// version we speak). tungstenite used to accept any key and drop the others without a word.
#[tokio::test]
async fn a_malformed_websocket_handshake_gets_400() {
    let server = common::plain_server().await;
    let addr = server.local_addr();
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (request, reason) in [
        (
            WS_UPGRADE.replace(key, "Sec-WebSocket-Key: c2hvcnQ=\r\n"),
            "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
        ),
        (
            WS_UPGRADE.replace(key, ""),
            "exactly one Sec-WebSocket-Key header is required",
        ),
        (
            WS_UPGRADE.replace("Version: 13", "Version: 8"),
            "unsupported WebSocket version (only 13 is supported)",
        ),
        (
            WS_UPGRADE.replace("Sec-WebSocket-Version: 13\r\n", ""),
            "unsupported WebSocket version (only 13 is supported)",
        ),
    ] {
        let r = answer(addr, &request).await;
        assert!(
            r.starts_with("HTTP/1.1 400 Bad Request\r\n")
                && r.ends_with(&format!("\r\n\r\n400 Bad Request: {reason}\n")),
            "{request:?} got {r:?}"
        );
        let names_13 = r.contains("\r\nSec-WebSocket-Version: 13\r\n");
        assert_eq!(names_13, reason.starts_with("unsupported"), "{r}");
    }
    // The well-formed handshake still upgrades.
    let (_ws, head) = websocket(addr).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

/// Upgrades to WebSocket with [`WS_UPGRADE`]; returns the socket after the 101 head and the head.
async fn websocket(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(WS_UPGRADE.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("101 head")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed in the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (s, String::from_utf8(head).unwrap())
}

/// Reads one unmasked server frame: the first header byte (FIN + opcode) and the payload.
async fn read_ws_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await?;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => usize::from(s.read_u16().await?),
            127 => usize::try_from(s.read_u64().await?).unwrap(),
            n => usize::from(n),
        };
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>((h[0], payload))
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a frame in time")
        .unwrap()
}

/// A masked client frame with FIN set (the zero mask, so the payload goes as it is).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

/// Completes the DERP handshake inside binary WebSocket messages.
async fn derp_over_websocket(addr: std::net::SocketAddr) -> TcpStream {
    let (mut s, _) = websocket(addr).await;
    let (op, server_key) = read_ws_frame(&mut s).await;
    assert_eq!(op, 0x82);
    let server_key = handshake::read_server_key(&RawFrame {
        ty: FrameType(server_key[0]),
        payload: Bytes::copy_from_slice(&server_key[5..]),
    })
    .unwrap();
    let mut info = BytesMut::new();
    handshake::write_client_info(
        &mut info,
        &NodeSecretKey::generate(),
        &server_key,
        &ClientInfo::new(),
    );
    s.write_all(&ws_frame(0x2, &info)).await.unwrap();
    let (op, server_info) = read_ws_frame(&mut s).await;
    assert_eq!((op, server_info[0]), (0x82, FrameType::SERVER_INFO.0));
    s
}

/// The close frame a server sends: FIN + opcode 8, the code, the reason.
fn ws_close(code: u16, reason: &str) -> (u8, Vec<u8>) {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    (0x88, payload)
}

/// After the upgrade, a text message closes the connection with 1003 (unsupported data), as
/// Tailscale's `wsconn` does. We used to drop the connection without a close frame.
#[tokio::test]
async fn a_websocket_text_message_closes_with_1003() {
    let server = common::plain_server().await;
    let mut s = derp_over_websocket(server.local_addr()).await;
    s.write_all(&ws_frame(0x1, b"hello")).await.unwrap();
    assert_eq!(
        read_ws_frame(&mut s).await,
        ws_close(1003, "text message on a DERP websocket")
    );
}

/// More than `MAX_EMPTY_MESSAGES` empty binary messages in a row close with 1008 (policy
/// violation); up to that many, then a frame, is fine. We used to read empty messages for ever.
#[tokio::test]
async fn a_flood_of_empty_websocket_messages_closes_with_1008() {
    use derp_proto::io::MAX_EMPTY_MESSAGES;
    let server = common::plain_server().await;
    let mut s = derp_over_websocket(server.local_addr()).await;
    let empty = ws_frame(0x2, b"");
    s.write_all(&empty.repeat(MAX_EMPTY_MESSAGES as usize))
        .await
        .unwrap();
    let ping = [0x12, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    s.write_all(&ws_frame(0x2, &ping)).await.unwrap();
    let (op, pong) = read_ws_frame(&mut s).await;
    assert_eq!(
        (op, &pong[..]),
        (0x82, &[0x13, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8][..])
    );

    s.write_all(&empty.repeat(MAX_EMPTY_MESSAGES as usize + 1))
        .await
        .unwrap();
    assert_eq!(
        read_ws_frame(&mut s).await,
        ws_close(1008, "too many empty messages in a row")
    );
}

/// A ClientInfo whose AppName is 200 KB (inside the 256 KiB frame cap) is refused, as Go's
/// `ValidAppName` refuses it, and counted as a protocol failure; a regular client on the same
/// relay is unaffected. We used to accept and keep the whole name.
#[tokio::test]
async fn a_huge_app_name_is_refused_and_counted() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let metrics = Arc::new(metrics::with_local_recorder(
        &recorder,
        derper::metrics::Metrics::new,
    ));
    let relay = derper::Relay::new(derper::RelayConfig::new(NodeSecretKey::generate()), metrics);
    let sample = |series: &str| {
        scrape
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };

    // Runs the handshake with `info` over a pipe; returns the accept result and the frame
    // the client got after ClientInfo.
    let login = |info: ClientInfo| {
        let relay = relay.clone();
        async move {
            let (server_io, client_io) = tokio::io::duplex(512 * 1024);
            let meta = derper::relay::ConnMeta::new(
                "127.0.0.1:1".parse().unwrap(),
                derper::relay::TransportKind::Upgrade,
            );
            let accept = tokio::spawn({
                let relay = relay.clone();
                async move { relay.accept(server_io, BytesMut::new(), meta).await }
            });
            let (r, mut w) = tokio::io::split(client_io);
            let mut reader = FramedRead::new(r, FrameDecoder::client(), BytesMut::new());
            let key = handshake::read_server_key(&reader.read_frame().await.unwrap()).unwrap();
            let mut out = BytesMut::new();
            handshake::write_client_info(&mut out, &NodeSecretKey::generate(), &key, &info);
            w.write_all(&out).await.unwrap();
            let next = tokio::time::timeout(Duration::from_secs(5), reader.read_frame())
                .await
                .expect("an answer or a close");
            (accept, next, reader, w)
        }
    };

    let mut huge = ClientInfo::new();
    huge.app_name = Some("A".repeat(200_000));
    let (accept, next, ..) = login(huge).await;
    assert!(matches!(next, Err(ReadFrameError::Closed)), "{next:?}");
    let result = accept.await.unwrap();
    assert!(
        matches!(
            result,
            Err(derper::relay::AcceptError::Handshake(
                derp_proto::HandshakeError::InvalidAppName { len: 200_000, .. }
            ))
        ),
        "{result:?}"
    );
    let failures = "derp_handshake_failures_total{reason=\"protocol\"}";
    assert_eq!(sample(failures), 1.0);

    let mut named = ClientInfo::new();
    named.app_name = Some("tailscaled".into());
    for info in [ClientInfo::new(), named] {
        let (_accept, next, _r, _w) = login(info).await;
        assert_eq!(next.unwrap().ty, FrameType::SERVER_INFO);
    }
    assert_eq!(sample(failures), 1.0, "others are not refused");
    assert_eq!(sample("derp_accepts_total"), 2.0);
}
