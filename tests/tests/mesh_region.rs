//! Our relays meshed into one region: clients homed on different nodes reach each other by
//! one ForwardPacket hop; presence follows clients between nodes; PeerGone only when a key
//! leaves the region; a broken link or a restarted node converges again; a wrong mesh key is
//! refused and counted.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use derp_proto::frame::PeerGoneReason;
use derp_proto::io::Client;
use derp_proto::{MeshKey, NodeSecretKey, ServerToClient};
use derper::config::MeshSettings;
use derper::{Server, ServerConfig, ServerHandle};

fn mesh_key() -> MeshKey {
    "00112233445566778899aabbccddeeff"
        .repeat(2)
        .parse()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay of the region on `port`, linking to every `peers` URL (its own among them, as an
/// operator's shared list would have it).
fn node_config(port: u16, peers: &[String], key: &MeshKey) -> ServerConfig {
    let mut config = ServerConfig::plain(SocketAddr::from(([127, 0, 0, 1], port)));
    config.mesh_key = Some(key.clone());
    let mut mesh = MeshSettings::default();
    mesh.peers = peers.to_vec();
    mesh.allow_plain = true;
    mesh.reconnect_max = Duration::from_millis(200);
    config.mesh = mesh;
    config
}

struct Region {
    nodes: Vec<ServerHandle>,
    urls: Vec<String>,
}

async fn region(n: usize) -> Region {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/derp"))
        .collect();
    let mut nodes = Vec::new();
    for &port in &ports {
        let config = node_config(port, &urls, &mesh_key());
        nodes.push(Server::spawn(config).await.expect("spawn node"));
    }
    Region { nodes, urls }
}

/// Sends from `from` to `to` every 20 ms until `to` receives one; returns how long it took.
/// Routes in a mesh settle asynchronously (links connect, presence floods), so the first
/// packets may be dropped; this is the convergence time.
async fn until_delivered(from: &mut Client, to: &mut Client) -> Duration {
    let start = Instant::now();
    let dst = to.public_key();
    loop {
        from.send_packet(&dst, b"probe").await.expect("send");
        let got = tokio::time::timeout(Duration::from_millis(20), async {
            loop {
                match to.recv().await.expect("recv") {
                    ServerToClient::RecvPacket { src, .. } if src == from.public_key() => {
                        return;
                    }
                    _ => {}
                }
            }
        })
        .await;
        if got.is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no delivery within 10 s"
        );
    }
}

async fn exchange(a: &mut Client, b: &mut Client) {
    for i in 0..20u8 {
        a.send_packet(&b.public_key(), &[i; 100]).await.unwrap();
        let (src, data) = common::recv_packet(b).await;
        assert_eq!((src, data), (a.public_key(), vec![i; 100]));
        b.send_packet(&a.public_key(), &[i; 200]).await.unwrap();
        let (src, data) = common::recv_packet(a).await;
        assert_eq!((src, data), (b.public_key(), vec![i; 200]));
    }
}

#[tokio::test]
async fn clients_on_three_nodes_talk_both_ways() {
    let r = region(3).await;
    let mut a = common::connect(&r.urls[0]).await;
    let mut b = common::connect(&r.urls[1]).await;
    let mut c = common::connect(&r.urls[2]).await;
    let t = until_delivered(&mut a, &mut b).await;
    eprintln!("cross-node route A→B converged in {t:?}");
    until_delivered(&mut b, &mut c).await;
    until_delivered(&mut c, &mut a).await;
    exchange(&mut a, &mut b).await;
    exchange(&mut b, &mut c).await;
    exchange(&mut c, &mut a).await;
    // Each node linked to the two others and skipped itself.
    for node in &r.nodes {
        let mesh = node.mesh().expect("mesh configured");
        assert_eq!(mesh.targets().count(), 3);
    }
}

#[tokio::test]
async fn a_client_moving_between_nodes_is_never_gone_until_it_leaves() {
    let r = region(3).await;
    let mut a = common::connect(&r.urls[0]).await;
    let b_key = NodeSecretKey::generate();
    let connect_b = |url: &str| {
        let mut o = common::options(
            url,
            derp_proto::io::tls::ServerVerify::Insecure,
            derp_proto::io::Transport::Upgrade,
        );
        o.secret = b_key.clone();
        o
    };
    let mut b_on_1 = common::connect_with(&connect_b(&r.urls[1])).await;
    until_delivered(&mut a, &mut b_on_1).await;

    // b moves: connects to node 2, then leaves node 1.
    let mut b_on_2 = common::connect_with(&connect_b(&r.urls[2])).await;
    drop(b_on_1);
    until_delivered(&mut a, &mut b_on_2).await;
    exchange(&mut a, &mut b_on_2).await;
    // Node 1 and node 2 were both announcing b for a moment; a heard no PeerGone.
    let gone = common::recv_until(&mut a, Duration::from_millis(300), |f| {
        matches!(f, ServerToClient::PeerGone { .. })
    })
    .await;
    assert!(gone.is_none(), "PeerGone while b only moved: {gone:?}");

    // b leaves the region: a, who sent to b, hears PeerGone(Disconnected).
    let b_pub = b_on_2.public_key();
    drop(b_on_2);
    let gone = common::recv_until(&mut a, Duration::from_secs(5), |f| {
        matches!(f, ServerToClient::PeerGone { .. })
    })
    .await;
    match gone {
        Some(ServerToClient::PeerGone { peer, reason }) => {
            assert_eq!(peer, b_pub);
            assert_eq!(reason, PeerGoneReason::DISCONNECTED);
        }
        other => panic!("expected PeerGone for b, got {other:?}"),
    }
}

#[tokio::test]
async fn a_restarted_node_carries_cross_node_traffic_again() {
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/derp"))
        .collect();
    let n0 = Server::spawn(node_config(ports[0], &urls, &mesh_key()))
        .await
        .unwrap();
    let n1 = Server::spawn(node_config(ports[1], &urls, &mesh_key()))
        .await
        .unwrap();
    let mut a = common::connect(&urls[0]).await;
    let mut b = common::connect(&urls[1]).await;
    until_delivered(&mut a, &mut b).await;

    // Node 1 goes away (its clients with it) and comes back on the same address.
    n1.shutdown().await;
    drop(b);
    let n1 = Server::spawn(node_config(ports[1], &urls, &mesh_key()))
        .await
        .unwrap();
    let restarted = Instant::now();
    let mut b = common::connect(&urls[1]).await;
    until_delivered(&mut a, &mut b).await;
    eprintln!(
        "restarted node carried cross-node traffic {:?} after it accepted connections",
        restarted.elapsed()
    );
    exchange(&mut a, &mut b).await;
    drop((n0, n1));
}

#[tokio::test]
async fn a_wrong_mesh_key_is_refused_and_others_keep_talking() {
    let r = region(2).await;
    let mut a = common::connect(&r.urls[0]).await;
    let mut b = common::connect(&r.urls[1]).await;
    until_delivered(&mut a, &mut b).await;

    // An impostor with another key links to node 0 and is refused at the handshake.
    let wrong: MeshKey = "ff".repeat(32).parse().unwrap();
    let impostor = Server::spawn(node_config(free_port(), &r.urls[..1], &wrong))
        .await
        .unwrap();
    let mut x = common::connect(&impostor.derp_url()).await;
    // The impostor never learns node 0's clients: x cannot reach a.
    let refused =
        tokio::time::timeout(Duration::from_millis(500), until_delivered(&mut x, &mut a)).await;
    assert!(refused.is_err(), "impostor forwarded into the region");
    exchange(&mut a, &mut b).await;
}
