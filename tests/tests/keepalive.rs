//! A silent connection still hears from the server: KeepAlive arrives on the configured period
//! (plus per-connection jitter under 5 s), so clients never hit their 120 s read timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use derp_proto::handshake::{self, ClientInfo};
use derp_proto::io::FramedRead;
use derp_proto::{FrameDecoder, FrameType, NodeSecretKey};
use tokio::io::AsyncWriteExt;

// Paused time: the runtime jumps to each timer when idle, so 60 s periods take no real time.
#[tokio::test(start_paused = true)]
async fn idle_client_gets_keepalives() {
    let config = derper::RelayConfig::new(NodeSecretKey::generate());
    let period = config.settings.keepalive;
    let relay = derper::Relay::new(config, Arc::new(derper::metrics::Metrics::new()));
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let meta = derper::relay::ConnMeta::new(
        "127.0.0.1:1".parse().unwrap(),
        derper::relay::TransportKind::Upgrade,
    );
    tokio::spawn({
        let relay = relay.clone();
        async move { relay.accept(server_io, BytesMut::new(), meta).await }
    });

    let (r, mut w) = tokio::io::split(client_io);
    let mut reader = FramedRead::new(r, FrameDecoder::client(), BytesMut::new());
    let server_key = handshake::read_server_key(&reader.read_frame().await.unwrap()).unwrap();
    let me = NodeSecretKey::generate();
    let mut out = BytesMut::new();
    handshake::write_client_info(&mut out, &me, &server_key, &ClientInfo::new());
    w.write_all(&out).await.unwrap();
    let info = reader.read_frame().await.unwrap();
    assert_eq!(info.ty, FrameType::SERVER_INFO);

    // KeepAlives every period + this connection's jitter (under 5 s), and nothing before.
    let connected = tokio::time::Instant::now();
    let mut previous = connected;
    for n in 1..=3u32 {
        let f = tokio::time::timeout(period + Duration::from_secs(5), reader.read_frame())
            .await
            .expect("a keepalive within period + jitter")
            .unwrap();
        assert_eq!(f.ty, FrameType::KEEP_ALIVE);
        assert!(f.payload.is_empty());
        let now = tokio::time::Instant::now();
        let gap = now - previous;
        assert!(
            gap >= period && gap < period + Duration::from_secs(5),
            "keepalive {n} after {gap:?}"
        );
        previous = now;
    }
}
