//! The QUIC mesh transport against a raw QUIC peer (quinn) that misbehaves: no or wrong mesh
//! key, the wrong ALPN, datagrams before the login, garbage datagrams, extra streams. Each is
//! refused or dropped and counted, and the region's real QUIC link keeps carrying traffic. A
//! well-formed datagram from a logged-in peer is delivered like a ForwardPacket frame. (Its
//! own binary: the metrics recorder is process-global.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::hostile::{metric, scrape};
use common::mesh::{OurLink, OurRegion};
use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{BoxStream, Client, ClientError, HandshakeOptions};
use derp_proto::{MeshKey, NodePublicKey, NodeSecretKey, ServerToClient};
use derper::{Server, ServerHandle};

/// A raw QUIC connection to `addr` offering `alpn`, accepting up to one stream from the relay.
async fn raw_quic(
    addr: SocketAddr,
    alpn: &[u8],
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut tls = (*derp_proto::io::tls::client_config(ServerVerify::Insecure)).clone();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(1u32.into());
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint
        .connect_with(config, addr, common::mesh::HOSTNAME)
        .unwrap()
        .await
}

/// Accepts the relay's DERP stream on `conn` and logs in with `mesh_key`.
async fn login(conn: &quinn::Connection, mesh_key: Option<MeshKey>) -> Result<Client, ClientError> {
    let (send, recv) = tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
        .await
        .expect("the relay opens the DERP stream")
        .expect("stream");
    let stream: BoxStream = Box::new(tokio::io::join(recv, send));
    let mut opts = HandshakeOptions::new();
    if let Some(k) = mesh_key {
        opts = opts.with_mesh_key(k);
    }
    let secret = NodeSecretKey::generate();
    let login = Client::handshake_over(stream, BytesMut::new(), &secret, &opts);
    tokio::time::timeout(Duration::from_secs(5), login)
        .await
        .expect("the login ends")
}

struct Fixture {
    net: OurRegion,
    nodes: Vec<ServerHandle>,
    metrics: SocketAddr,
    a: Client,
    b: Client,
}

/// Two of our relays meshed over QUIC (metrics recorded), a client on each, traffic flowing.
async fn fixture() -> Fixture {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = listener.local_addr().unwrap();
    drop(listener);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(metrics)
        .install()
        .unwrap();
    let net = OurRegion::new(OurLink::Quic);
    let ports = [common::free_port(), common::free_port()];
    let peers: Vec<String> = ports.iter().map(|p| net.entry(*p)).collect();
    let mut nodes = Vec::new();
    for port in ports {
        let config = net.config(port, &peers, &net.region.mesh_key);
        nodes.push(Server::spawn(config).await.unwrap());
    }
    let mut a = common::connect(&net.url(ports[0])).await;
    let mut b = common::connect(&net.url(ports[1])).await;
    exchange(&mut a, &mut b, b"meshed").await;
    Fixture {
        net,
        nodes,
        metrics,
        a,
        b,
    }
}

/// Sends from `from` to `to` every 50 ms until one arrives (routes settle asynchronously).
async fn exchange(from: &mut Client, to: &mut Client, packet: &[u8]) {
    let dst = to.public_key();
    let src = from.public_key();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut resend = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => panic!("no delivery within 10 s"),
            _ = resend.tick() => from.send_packet(&dst, packet).await.unwrap(),
            m = to.recv() => {
                if let ServerToClient::RecvPacket { src: s, packet: p } = m.unwrap()
                    && s == src
                    && &p[..] == packet
                {
                    return;
                }
            }
        }
    }
}

/// Waits until `series` in the scrape is at least `at_least`; panics with the value after 5 s.
async fn expect_metric(metrics: SocketAddr, series: &str, at_least: f64) {
    let reached =
        common::eventually(|| async { metric(&scrape(metrics).await, series) >= at_least }).await;
    let now = metric(&scrape(metrics).await, series);
    assert!(reached, "{series} = {now}, expected at least {at_least}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quic_peers_are_refused_and_counted_and_the_mesh_keeps_working() {
    let Fixture {
        net,
        nodes,
        metrics,
        mut a,
        mut b,
    } = fixture().await;
    let target = nodes[0].quic_addr().expect("QUIC listener");

    // No mesh key: a regular client may not use QUIC.
    let conn = raw_quic(target, derp_proto::datagram::ALPN).await.unwrap();
    assert!(
        login(&conn, None).await.is_err(),
        "logged in without the mesh key"
    );
    expect_metric(
        metrics,
        r#"derp_handshake_failures_total{reason="not_mesh"}"#,
        1.0,
    )
    .await;

    // The wrong mesh key.
    let conn = raw_quic(target, derp_proto::datagram::ALPN).await.unwrap();
    let wrong: MeshKey = "ee".repeat(32).parse().unwrap();
    assert!(
        login(&conn, Some(wrong)).await.is_err(),
        "logged in with a wrong key"
    );
    expect_metric(
        metrics,
        r#"derp_handshake_failures_total{reason="mesh_key"}"#,
        1.0,
    )
    .await;
    expect_metric(
        metrics,
        r#"derp_quic_connections_total{result="refused"}"#,
        2.0,
    )
    .await;

    // The wrong ALPN fails the QUIC handshake itself.
    assert!(raw_quic(target, b"h3").await.is_err(), "h3 accepted");
    expect_metric(
        metrics,
        r#"derp_quic_connections_total{result="handshake_failed"}"#,
        1.0,
    )
    .await;

    // Datagrams before the login are dropped and counted; then a real login (the region's
    // key) may send packets as datagrams, and garbage ones are dropped and counted.
    let conn = raw_quic(target, derp_proto::datagram::ALPN).await.unwrap();
    let (x, a_key) = (NodePublicKey::from_bytes([7; 32]), a.public_key());
    for _ in 0..5 {
        let mut d = BytesMut::new();
        derp_proto::datagram::encode_forward(&mut d, &x, &a_key, b"too early");
        conn.send_datagram(d.freeze()).unwrap();
    }
    expect_metric(
        metrics,
        r#"derp_quic_datagrams_dropped_total{reason="before_handshake"}"#,
        5.0,
    )
    .await;
    let _peer = login(&conn, Some(net.region.mesh_key.clone()))
        .await
        .expect("mesh login over QUIC");
    conn.send_datagram(Bytes::from_static(b"short")).unwrap();
    conn.send_datagram(Bytes::from(vec![0x02; 80])).unwrap();
    expect_metric(
        metrics,
        r#"derp_quic_datagrams_dropped_total{reason="malformed"}"#,
        2.0,
    )
    .await;
    // A well-formed datagram reaches a, as a ForwardPacket from x would.
    let mut d = BytesMut::new();
    derp_proto::datagram::encode_forward(&mut d, &x, &a_key, b"by datagram");
    conn.send_datagram(d.freeze()).unwrap();
    let (src, data) = common::recv_packet(&mut a).await;
    assert_eq!((src, &data[..]), (x, &b"by datagram"[..]));

    // A peer may open no stream of its own: QUIC flow control holds it back.
    let extra = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await;
    assert!(extra.is_err(), "the relay granted a stream to its peer");

    // The real link between the two relays never noticed.
    exchange(&mut a, &mut b, b"still meshed").await;
    exchange(&mut b, &mut a, b"both ways").await;
    assert_eq!(
        metric(
            &scrape(metrics).await,
            r#"derp_quic_datagrams_dropped_total{reason="oversized"}"#
        ),
        0.0
    );
    drop(nodes);
}
