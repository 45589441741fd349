//! Our client against Tailscale's own derper (pinned release): the server we must interoperate
//! with decides whether our client is right.

mod common;

use std::time::Duration;

use derp_proto::frame::PeerGoneReason;
use derp_proto::io::Transport;
use derp_proto::io::tls::ServerVerify;
use derp_proto::{ClientToServer, ServerToClient};

async fn relay_and_peer_gone(url: &str, verify: ServerVerify) {
    let mut a =
        common::connect_with(&common::options(url, verify.clone(), Transport::Upgrade)).await;
    let mut b = common::connect_with(&common::options(url, verify, Transport::Upgrade)).await;
    assert_eq!(a.server_info().version, 2);
    for size in [1usize, 1300, 65_536] {
        let p = vec![0x5a; size];
        a.send_packet(&b.public_key(), &p).await.unwrap();
        assert_eq!(
            common::recv_packet(&mut b).await,
            (a.public_key(), p.clone())
        );
        b.send_packet(&a.public_key(), &p).await.unwrap();
        assert_eq!(common::recv_packet(&mut a).await, (b.public_key(), p));
    }
    a.send(&ClientToServer::Ping(*b"pingpong")).await.unwrap();
    let pong = common::recv_until(&mut a, Duration::from_secs(5), |f| {
        matches!(f, ServerToClient::Pong(_))
    })
    .await;
    assert_eq!(pong, Some(ServerToClient::Pong(*b"pingpong")));

    let b_key = b.public_key();
    drop(b);
    common::expect_peer_gone(&mut a, b_key, PeerGoneReason::DISCONNECTED).await;
}

#[tokio::test]
async fn our_client_against_tailscale_derper_plain() {
    let Some(bin) = common::tailscale_derper() else {
        return;
    };
    let go = common::start_go_derper(&bin, false).await;
    relay_and_peer_gone(&go.url, ServerVerify::Insecure).await;
}

#[tokio::test]
async fn our_client_against_tailscale_derper_tls_pinned_fast_start() {
    let Some(bin) = common::tailscale_derper() else {
        return;
    };
    let go = common::start_go_derper(&bin, true).await;
    let pin = go.pin.unwrap();
    relay_and_peer_gone(&go.url, ServerVerify::Pin(pin)).await;
}

#[tokio::test]
async fn our_websocket_client_against_tailscale_derper() {
    let Some(bin) = common::tailscale_derper() else {
        return;
    };
    let go = common::start_go_derper(&bin, false).await;
    let mut a = common::connect_with(&common::options(
        &go.url,
        ServerVerify::Insecure,
        Transport::WebSocket,
    ))
    .await;
    let mut b = common::connect(&go.url).await;
    // Tailscale's WebSocket server reads at most 32 KiB per message; stay under it.
    let p = vec![1u8; 1300];
    a.send_packet(&b.public_key(), &p).await.unwrap();
    assert_eq!(common::recv_packet(&mut b).await.1, p);
    b.send_packet(&a.public_key(), &p).await.unwrap();
    assert_eq!(common::recv_packet(&mut a).await.1, p);
}

#[tokio::test]
async fn not_here_from_tailscale_derper() {
    let Some(bin) = common::tailscale_derper() else {
        return;
    };
    let go = common::start_go_derper(&bin, false).await;
    let mut a = common::connect(&go.url).await;
    let nobody = derp_proto::NodeSecretKey::generate().public_key();
    let mut disco = vec![0u8; 100];
    disco[..6].copy_from_slice(&derp_proto::disco::MAGIC);
    a.send_packet(&nobody, &disco).await.unwrap();
    let f = common::recv_until(&mut a, Duration::from_secs(5), |f| {
        matches!(f, ServerToClient::PeerGone { .. })
    })
    .await;
    assert_eq!(
        f,
        Some(ServerToClient::PeerGone {
            peer: nobody,
            reason: PeerGoneReason::NOT_HERE
        })
    );
}
