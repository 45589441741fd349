//! Bad input during the handshake closes that connection only, with a counted reason.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use derp_proto::handshake::{self, ClientInfo};
use derp_proto::io::{FramedRead, ReadFrameError};
use derp_proto::{FrameDecoder, FrameType, NodeSecretKey};
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
