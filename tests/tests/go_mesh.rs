//! A region of Tailscale's derpers meshed over TLS (`--mesh-with`, `--mesh-psk-file`, a test CA
//! through `SSL_CERT_FILE`), with our clients on its nodes: proves the mesh harness in
//! `common::mesh`, and records what Go's mesh does that a mixed region must match.
//!
//! Go's PeerGone rule (derpserver.go `noteSendFromSrc`, `notePeerGoneFromRegionLocked`): a
//! client is told `PeerGone(Disconnected)` about a key when that key leaves the region, and only
//! if it has *received* a packet from that key. Leaving the region is the key's last connection
//! closing on its node, which then tells its mesh watchers; or the mesh link to its node
//! breaking (Go's mesh client drops every key it learned over that link).

mod common;

use std::time::Duration;

use common::mesh::{
    MeshRegion, free_ports, mesh_entry, our_relay_config, quic_entry, start_go_derper_mesh,
    start_go_mesh, wait_meshed,
};
use derp_proto::ServerToClient;
use derp_proto::frame::PeerGoneReason;
use derp_proto::io::{Client, Transport};

async fn client(url: &str, region: &MeshRegion) -> Client {
    common::connect_with(&common::options(
        url,
        region.ca.verify(),
        Transport::Upgrade,
    ))
    .await
}

/// Sends `packet` from `from` to `to` and checks it arrives intact, resending every 100 ms
/// while the destination's node may not have announced `to` yet.
async fn deliver(from: &mut Client, to: &mut Client, packet: &[u8]) {
    let (src, dst) = (from.public_key(), to.public_key());
    let mut resend = tokio::time::interval(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => panic!("{} bytes never arrived", packet.len()),
            _ = resend.tick() => from.send_packet(&dst, packet).await.unwrap(),
            m = to.recv() => {
                if let ServerToClient::RecvPacket { src: s, packet: p } = m.unwrap()
                    && s == src
                {
                    assert_eq!(&p[..], packet);
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_clients_talk_across_a_meshed_region_of_tailscale_derpers() {
    let Some(bin) = common::tailscale_derper() else {
        return;
    };
    let region = MeshRegion::new();
    let mut nodes = start_go_mesh(&bin, &region, 3).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let took = wait_meshed(&urls, &region.ca.verify(), Duration::from_secs(15)).await;
    eprintln!("region of 3 meshed in {took:?}");

    let mut a = client(&urls[0], &region).await;
    let mut b = client(&urls[1], &region).await;
    let mut c = client(&urls[2], &region).await;
    for size in [1usize, 1_300, 65_536] {
        let p = vec![0x5a; size];
        deliver(&mut a, &mut b, &p).await;
        deliver(&mut b, &mut a, &p).await;
    }
    deliver(&mut c, &mut a, b"c to a").await;
    deliver(&mut a, &mut c, b"a to c").await;
    // c sends to b but never hears from b.
    deliver(&mut c, &mut b, b"c to b").await;

    // b leaves: a (which received from b) is told; c (which only sent to b) is not.
    let b_key = b.public_key();
    drop(b);
    common::expect_peer_gone(&mut a, b_key, PeerGoneReason::DISCONNECTED).await;
    let told_c = common::recv_until(&mut c, Duration::from_millis(500), |f| {
        matches!(f, ServerToClient::PeerGone { .. })
    })
    .await;
    assert_eq!(
        told_c, None,
        "Go tells only those that received from the key"
    );

    // c's node dies: a's node loses its mesh link to it and tells a, which received from c.
    let c_key = c.public_key();
    nodes[2].kill();
    common::expect_peer_gone(&mut a, c_key, PeerGoneReason::DISCONNECTED).await;
    drop(c);

    // The remaining two still forward.
    let mut b2 = client(&urls[1], &region).await;
    deliver(&mut a, &mut b2, b"after the loss of a node").await;
    deliver(&mut b2, &mut a, b"and back").await;
    assert!(
        !nodes[0].log().contains("x509"),
        "no certificate complaints:\n{}",
        nodes[0].log()
    );
}

/// Half a mixed region, as far as it works before our relay dials out: a Go node meshed with
/// our relay (Go dials it over TLS, verified by the test CA, and watches it with the mesh key)
/// delivers its client's packets to a client of ours. The way back needs our relay's own mesh
/// link to the Go node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_node_forwards_into_our_relay_over_its_mesh_link() {
    let Some(bin) = common::tailscale_derper() else {
        return;
    };
    let region = MeshRegion::new();
    let [ours_port, go_port] = free_ports(2)[..] else {
        unreachable!()
    };
    let certs = tempfile::tempdir().unwrap();
    let ours = derper::Server::spawn(our_relay_config(&region, ours_port, certs.path()))
        .await
        .expect("spawn our relay");
    // Ours listens before Go starts, so Go's first mesh dial succeeds (no 5 s retry).
    let go = start_go_derper_mesh(
        &bin,
        &region,
        go_port,
        &[mesh_entry(go_port), mesh_entry(ours_port)],
    )
    .await;

    let mut on_go = client(&go.url, &region).await;
    let mut on_ours = client(&common::mesh::node_url(ours_port), &region).await;
    deliver(&mut on_go, &mut on_ours, b"from a Go node into ours").await;
    deliver(&mut on_go, &mut on_ours, &vec![7u8; 65_536]).await;
    assert!(!go.log().contains("x509"), "{}", go.log());
    ours.shutdown().await;
}

/// A mixed region: two of our relays linked to each other over QUIC (`quic://`, the only
/// link between them, so every packet between their clients crosses it) and to a Tailscale
/// derper over TLS; the Go node dials both of ours over TLS. Every pair of nodes forwards,
/// both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_region_ours_over_quic_and_tls_to_go() {
    let Some(bin) = common::tailscale_derper() else {
        return;
    };
    let region = MeshRegion::new();
    let [p0, p1, go_port] = free_ports(3)[..] else {
        unreachable!()
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut ours = Vec::new();
    for (port, dir) in [p0, p1].into_iter().zip(&dirs) {
        let mut config = our_relay_config(&region, port, dir.path());
        config.quic_addr = Some(([127, 0, 0, 1], port).into());
        config.mesh.ca_file = Some(region.ca.ca_pem.clone());
        config.mesh.peers = vec![quic_entry(p0), quic_entry(p1), mesh_entry(go_port)];
        ours.push(
            derper::Server::spawn(config)
                .await
                .expect("spawn our relay"),
        );
    }
    let go = start_go_derper_mesh(
        &bin,
        &region,
        go_port,
        &[mesh_entry(go_port), mesh_entry(p0), mesh_entry(p1)],
    )
    .await;
    let urls = [
        common::mesh::node_url(p0),
        common::mesh::node_url(p1),
        go.url.clone(),
    ];
    let took = wait_meshed(&urls, &region.ca.verify(), Duration::from_secs(20)).await;
    eprintln!("mixed region (QUIC between ours, TLS to Go) meshed in {took:?}");

    let mut a = client(&urls[0], &region).await;
    let mut b = client(&urls[1], &region).await;
    let mut g = client(&urls[2], &region).await;
    // 1 300 bytes fits a datagram; 65 536 does not and takes the QUIC stream.
    for size in [1usize, 1_300, 65_536] {
        let p = vec![0x3c; size];
        deliver(&mut a, &mut b, &p).await;
        deliver(&mut b, &mut a, &p).await;
        deliver(&mut g, &mut a, &p).await;
        deliver(&mut b, &mut g, &p).await;
    }
    assert!(!go.log().contains("x509"), "{}", go.log());
    for node in ours {
        node.shutdown().await;
    }
}
