//! Two connections with one key: the newest is active, the last writer wins, and PeerGone is
//! sent only when the last one leaves.

mod common;

use std::time::Duration;

use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{Client, ConnectOptions, Transport};
use derp_proto::{ClientToServer, NodeSecretKey, ServerToClient};

async fn connect_as(url: &str, key: &NodeSecretKey) -> Client {
    let mut o = ConnectOptions::new(url, key.clone());
    o.verify = ServerVerify::Insecure;
    o.transport = Transport::Upgrade;
    Client::connect(&o).await.unwrap()
}

async fn quiet(c: &mut Client) -> bool {
    common::recv_until(c, Duration::from_millis(300), |f| {
        matches!(f, ServerToClient::RecvPacket { .. })
    })
    .await
    .is_none()
}

#[tokio::test]
async fn last_writer_is_active() {
    let server = common::plain_server().await;
    let url = server.derp_url();
    let key = NodeSecretKey::generate();
    let mut b = common::connect(&url).await;
    let mut a1 = connect_as(&url, &key).await;
    a1.send_packet(&b.public_key(), b"from a1").await.unwrap();
    common::recv_packet(&mut b).await;
    let mut a2 = connect_as(&url, &key).await;

    b.send_packet(&key.public_key(), b"p1").await.unwrap();
    assert_eq!(
        common::recv_packet(&mut a2).await.1,
        b"p1",
        "newest is active"
    );
    assert!(quiet(&mut a1).await);

    // a1 speaks (a Ping): it becomes active.
    a1.send(&ClientToServer::Ping([1; 8])).await.unwrap();
    common::recv_until(&mut a1, Duration::from_secs(2), |f| {
        matches!(f, ServerToClient::Pong(_))
    })
    .await
    .unwrap();
    b.send_packet(&key.public_key(), b"p2").await.unwrap();
    assert_eq!(common::recv_packet(&mut a1).await.1, b"p2");

    // The active one leaves: the other takes over, and b hears no PeerGone.
    drop(a1);
    // Until the relay notices a1 is gone, p3 goes to a1 and is lost; then a2 gets it.
    let mut delivered = false;
    for _ in 0..50 {
        b.send_packet(&key.public_key(), b"p3").await.unwrap();
        let got = common::recv_until(&mut a2, Duration::from_millis(100), |f| {
            matches!(f, ServerToClient::RecvPacket { .. })
        })
        .await;
        if let Some(ServerToClient::RecvPacket { packet, .. }) = got {
            assert_eq!(&packet[..], b"p3");
            delivered = true;
            break;
        }
    }
    assert!(delivered, "a2 never took over");
    assert!(
        common::recv_until(&mut b, Duration::from_millis(300), |f| matches!(
            f,
            ServerToClient::PeerGone { .. }
        ))
        .await
        .is_none()
    );

    drop(a2);
    let gone = common::recv_until(&mut b, Duration::from_secs(5), |f| {
        matches!(f, ServerToClient::PeerGone { .. })
    })
    .await;
    assert!(
        matches!(gone, Some(ServerToClient::PeerGone { peer, .. }) if peer == key.public_key())
    );
}
