//! Our client against our server: every transport, packet sizes, limits.

mod common;

use std::time::Duration;

use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{Client, ClientError, Transport};
use derp_proto::{ClientToServer, ServerToClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn exchange_both_ways(a: &mut Client, b: &mut Client) {
    let (ka, kb) = (a.public_key(), b.public_key());
    for size in [1usize, 1300, 65_536] {
        let p: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        a.send_packet(&kb, &p).await.unwrap();
        assert_eq!(
            common::recv_packet(b).await,
            (ka, p.clone()),
            "a -> b, {size} bytes"
        );
        b.send_packet(&ka, &p).await.unwrap();
        assert_eq!(
            common::recv_packet(a).await,
            (kb, p),
            "b -> a, {size} bytes"
        );
    }
}

#[tokio::test]
async fn plain_upgrade_relays_all_sizes() {
    let server = common::plain_server().await;
    let url = server.derp_url();
    let mut a = common::connect(&url).await;
    let mut b = common::connect(&url).await;
    assert_eq!(a.server_key(), server.relay().public_key());
    assert_eq!(a.server_info().version, 2);
    exchange_both_ways(&mut a, &mut b).await;
}

#[tokio::test]
async fn tls_with_pin_and_fast_start_relays() {
    let (server, pin, _dir) = common::tls_server().await;
    let url = server.derp_url();
    assert!(url.starts_with("https://"));
    let mut a = common::connect_with(&common::options(
        &url,
        ServerVerify::Pin(pin),
        Transport::Upgrade,
    ))
    .await;
    let mut b = common::connect_with(&common::options(
        &url,
        ServerVerify::Pin(pin),
        Transport::Upgrade,
    ))
    .await;
    assert_eq!(a.server_key(), server.relay().public_key());
    exchange_both_ways(&mut a, &mut b).await;

    // A wrong pin is refused by our client.
    let wrong = common::options(&url, ServerVerify::Pin([0; 32]), Transport::Upgrade);
    assert!(matches!(
        Client::connect(&wrong).await,
        Err(ClientError::Tls(_))
    ));
}

#[tokio::test]
async fn tls_without_fast_start_relays() {
    let (server, pin, _dir) = common::tls_server().await;
    let mut o = common::options(
        &server.derp_url(),
        ServerVerify::Pin(pin),
        Transport::Upgrade,
    );
    o.fast_start = false;
    let mut a = common::connect_with(&o).await;
    let mut b = common::connect(&server.derp_url()).await;
    exchange_both_ways(&mut a, &mut b).await;
}

#[tokio::test]
async fn websocket_relays_plain_and_tls() {
    let server = common::plain_server().await;
    let url = server.derp_url();
    let mut a = common::connect_with(&common::options(
        &url,
        ServerVerify::Insecure,
        Transport::WebSocket,
    ))
    .await;
    let mut b = common::connect(&url).await;
    exchange_both_ways(&mut a, &mut b).await;

    let (tls, pin, _dir) = common::tls_server().await;
    let url = tls.derp_url();
    let mut a = common::connect_with(&common::options(
        &url,
        ServerVerify::Pin(pin),
        Transport::WebSocket,
    ))
    .await;
    let mut b = common::connect_with(&common::options(
        &url,
        ServerVerify::Pin(pin),
        Transport::WebSocket,
    ))
    .await;
    exchange_both_ways(&mut a, &mut b).await;
}

#[tokio::test]
async fn oversize_packet_is_refused_by_client_and_closes_raw_sender() {
    let server = common::plain_server().await;
    let url = server.derp_url();
    let mut a = common::connect(&url).await;
    let b = common::connect(&url).await;
    let big = vec![0u8; 65_537];
    assert!(matches!(
        a.send_packet(&b.public_key(), &big).await,
        Err(ClientError::PacketTooLarge(65_537))
    ));

    // Bypass the client check: the server must close this connection, and only this one.
    a.send(&ClientToServer::SendPacket {
        dst: b.public_key(),
        packet: bytes::Bytes::from(big),
    })
    .await
    .unwrap();
    let closed = common::recv_until(&mut a, Duration::from_secs(5), |_| false).await;
    assert!(closed.is_none());
    assert!(
        a.recv().await.is_err(),
        "server must close an oversize sender"
    );

    let mut c = common::connect(&url).await;
    let mut b = b;
    c.send_packet(&b.public_key(), b"still fine").await.unwrap();
    assert_eq!(common::recv_packet(&mut b).await.1, b"still fine");
}

#[tokio::test]
async fn ping_gets_pong_and_unknown_frames_are_skipped() {
    let server = common::plain_server().await;
    let mut a = common::connect(&server.derp_url()).await;
    a.send(&ClientToServer::Unknown {
        ty: derp_proto::FrameType(0x7e),
        len: 100,
    })
    .await
    .unwrap();
    a.send(&ClientToServer::NotePreferred(true)).await.unwrap();
    a.send(&ClientToServer::Ping(*b"12345678")).await.unwrap();
    let pong = common::recv_until(&mut a, Duration::from_secs(5), |f| {
        matches!(f, ServerToClient::Pong(_))
    })
    .await;
    assert_eq!(pong, Some(ServerToClient::Pong(*b"12345678")));
}

#[tokio::test]
async fn http_endpoints_answer() {
    let server = common::plain_server().await;
    let addr = server.local_addr();
    let r = get(addr, "GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: ts_127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("x-tailscale-response: response ts_127.0.0.1"),
        "{r}"
    );
    let r = get(
        addr,
        "HEAD /derp/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = get(
        addr,
        "GET /derp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    let r = get(
        addr,
        "GET /robots.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.contains("Disallow: /"), "{r}");
    let r = get(addr, "GARBAGE\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect() {
    let server = common::plain_server().await;
    let mut a = common::connect(&server.derp_url()).await;
    let shutdown = tokio::spawn(server.shutdown());
    let f = common::recv_until(&mut a, Duration::from_secs(5), |f| {
        matches!(f, ServerToClient::Restarting { .. })
    })
    .await;
    assert!(
        matches!(
            f,
            Some(ServerToClient::Restarting {
                reconnect_in_ms: 5000,
                ..
            })
        ),
        "{f:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(a.recv().await.is_err(), "connection closed after shutdown");
}

#[tokio::test]
async fn port80_companion_answers_captive_checks_and_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = derper::ServerConfig::plain("127.0.0.1:0".parse().unwrap());
    config.tls = Some(derper::tls::TlsOptions {
        cert_mode: derper::tls::CertMode::Manual,
        cert_dir: dir.path().join("certs"),
        hostname: "127.0.0.1".into(),
    });
    config.http_addr = Some("127.0.0.1:0".parse().unwrap());
    let server = derper::Server::spawn(config).await.unwrap();
    let http = server.http_addr().expect("port-80 listener");
    let r = get(http, "GET /generate_204 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tailscale-Challenge: ts_127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("x-tailscale-response: response ts_127.0.0.1"),
        "{r}"
    );
    let r = get(
        http,
        "GET /derp/probe HTTP/1.1\r\nHost: derp.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 302"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("location: https://derp.example/derp/probe"),
        "{r}"
    );
    let r = get(
        http,
        "POST /x HTTP/1.1\r\nHost: derp.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

/// Sends a raw HTTP request and returns the whole response (the request asks to close).
async fn get(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
