//! Privileged (mesh-key) connections: WatchConns presence stream, ForwardPacket delivery,
//! ClosePeer; and the same frames from an ordinary client close that client.

mod common;

use std::time::Duration;

use derp_proto::frame::{PeerGoneReason, PeerPresentFlags};
use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{Client, Transport};
use derp_proto::{ClientToServer, MeshKey, NodeSecretKey, ServerToClient};

async fn server_with_mesh_key(key: &MeshKey) -> derper::ServerHandle {
    let mut config = derper::ServerConfig::plain("127.0.0.1:0".parse().unwrap());
    config.mesh_key = Some(key.clone());
    derper::Server::spawn(config).await.unwrap()
}

async fn mesh_client(url: &str, key: &MeshKey) -> Client {
    let mut o = common::options(url, ServerVerify::Insecure, Transport::Upgrade);
    o.mesh_key = Some(key.clone());
    Client::connect(&o).await.unwrap()
}

#[tokio::test]
async fn watcher_sees_presence_and_can_forward() {
    let mesh_key: MeshKey = "0123456789abcdef".repeat(4).parse().unwrap();
    let server = server_with_mesh_key(&mesh_key).await;
    let url = server.derp_url();
    let mut a = common::connect(&url).await;
    let mut watcher = mesh_client(&url, &mesh_key).await;
    watcher.send(&ClientToServer::WatchConns).await.unwrap();

    // The flood: a and the watcher itself, with the watcher flagged as a mesh peer.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match common::recv_until(&mut watcher, Duration::from_secs(5), |f| {
            matches!(f, ServerToClient::PeerPresent { .. })
        })
        .await
        {
            Some(ServerToClient::PeerPresent { peer, addr, flags }) => {
                assert!(addr.is_some_and(|a| a.ip().is_loopback()));
                seen.push((peer, flags));
            }
            other => panic!("expected PeerPresent, got {other:?}"),
        }
    }
    assert!(seen.contains(&(a.public_key(), PeerPresentFlags::IS_REGULAR)));
    assert!(seen.contains(&(watcher.public_key(), PeerPresentFlags::IS_MESH_PEER)));

    // Updates: a new client appears, then leaves.
    let b = common::connect(&url).await;
    let b_key = b.public_key();
    let present = common::recv_until(&mut watcher, Duration::from_secs(5), |f| {
        matches!(f, ServerToClient::PeerPresent { .. })
    })
    .await;
    assert!(matches!(present, Some(ServerToClient::PeerPresent { peer, .. }) if peer == b_key));
    drop(b);
    common::expect_peer_gone(&mut watcher, b_key, PeerGoneReason::DISCONNECTED).await;

    // ForwardPacket: a receives it with the original source key.
    let remote_src = NodeSecretKey::generate().public_key();
    watcher
        .send(&ClientToServer::ForwardPacket {
            src: remote_src,
            dst: a.public_key(),
            packet: bytes::Bytes::from_static(b"via mesh"),
        })
        .await
        .unwrap();
    assert_eq!(
        common::recv_packet(&mut a).await,
        (remote_src, b"via mesh".to_vec())
    );

    // A forged source: a client connected here (and announced by no mesh link) cannot have
    // sent through another node. The forged packet is dropped; the next one, from a genuine
    // remote source on the same connection, is what a receives.
    let local = common::connect(&url).await;
    for (src, data) in [
        (local.public_key(), &b"forged"[..]),
        (remote_src, &b"genuine"[..]),
    ] {
        watcher
            .send(&ClientToServer::ForwardPacket {
                src,
                dst: a.public_key(),
                packet: bytes::Bytes::copy_from_slice(data),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        common::recv_packet(&mut a).await,
        (remote_src, b"genuine".to_vec())
    );

    // ClosePeer: a's connection is closed by the server.
    watcher
        .send(&ClientToServer::ClosePeer(a.public_key()))
        .await
        .unwrap();
    common::recv_until(&mut a, Duration::from_secs(5), |_| false).await;
    assert!(a.recv().await.is_err(), "ClosePeer must close the target");
}

#[tokio::test]
async fn wrong_mesh_key_is_refused_and_privileged_frames_need_it() {
    let mesh_key: MeshKey = "ab".repeat(32).parse().unwrap();
    let server = server_with_mesh_key(&mesh_key).await;
    let url = server.derp_url();
    let wrong: MeshKey = "cd".repeat(32).parse().unwrap();
    let mut o = common::options(&url, ServerVerify::Insecure, Transport::Upgrade);
    o.mesh_key = Some(wrong);
    assert!(
        Client::connect(&o).await.is_err(),
        "a wrong mesh key must be refused"
    );

    let mut plain = common::connect(&url).await;
    plain.send(&ClientToServer::WatchConns).await.unwrap();
    common::recv_until(&mut plain, Duration::from_secs(5), |_| false).await;
    assert!(
        plain.recv().await.is_err(),
        "WatchConns from a regular client closes it"
    );
}
