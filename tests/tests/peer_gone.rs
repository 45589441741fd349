//! PeerGone: Disconnected after a sender leaves, NotHere (rate-limited) for disco to nobody.

mod common;

use std::time::Duration;

use derp_proto::frame::PeerGoneReason;
use derp_proto::{NodeSecretKey, ServerToClient};

fn disco_packet() -> Vec<u8> {
    let mut p = vec![0u8; 100];
    p[..6].copy_from_slice(&derp_proto::disco::MAGIC);
    p
}

#[tokio::test]
async fn receiver_hears_when_sender_disconnects() {
    let server = common::plain_server().await;
    let url = server.derp_url();
    let mut a = common::connect(&url).await;
    let mut b = common::connect(&url).await;
    b.send_packet(&a.public_key(), b"hello").await.unwrap();
    assert_eq!(common::recv_packet(&mut a).await.1, b"hello");
    let b_key = b.public_key();
    drop(b);
    common::expect_peer_gone(&mut a, b_key, PeerGoneReason::DISCONNECTED).await;
}

#[tokio::test]
async fn disco_to_unknown_key_gets_not_here_rate_limited() {
    let server = common::plain_server().await;
    let mut a = common::connect(&server.derp_url()).await;
    let nobody = NodeSecretKey::generate().public_key();
    for _ in 0..6 {
        a.send_packet(&nobody, &disco_packet()).await.unwrap();
    }
    // Non-disco to an unknown key is dropped silently.
    a.send_packet(&nobody, b"wireguard").await.unwrap();
    let mut not_here = 0;
    while let Some(f) = common::recv_until(&mut a, Duration::from_millis(500), |f| {
        matches!(f, ServerToClient::PeerGone { .. })
    })
    .await
    {
        assert_eq!(
            f,
            ServerToClient::PeerGone {
                peer: nobody,
                reason: PeerGoneReason::NOT_HERE
            }
        );
        not_here += 1;
    }
    assert_eq!(not_here, 3, "burst of three, then one per second");
}
