//! The mesh's Prometheus series move: links up, forwarded packets out and in per peer, self
//! links, and a wrong mesh key counted. (Its own binary: the recorder is process-global.)

mod common;

use std::net::SocketAddr;

use derp_proto::MeshKey;
use derper::config::MeshSettings;
use derper::{Server, ServerConfig};

/// The value of the first series of `name` whose labels include every `labels` pair.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn node(port: u16, peers: &[String], key: &str) -> ServerConfig {
    let mut config = ServerConfig::plain(SocketAddr::from(([127, 0, 0, 1], port)));
    config.mesh_key = Some(key.parse::<MeshKey>().unwrap());
    let mut mesh = MeshSettings::default();
    mesh.peers = peers.to_vec();
    mesh.allow_plain = true;
    config.mesh = mesh;
    config
}

#[tokio::test]
async fn mesh_series_move() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    drop(listener);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(metrics_addr)
        .install()
        .unwrap();

    let key = "3c".repeat(32);
    let ports = [common::free_port(), common::free_port()];
    let names: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let urls: Vec<String> = names.iter().map(|n| format!("http://{n}/derp")).collect();
    let n0 = Server::spawn(node(ports[0], &urls, &key)).await.unwrap();
    let n1 = Server::spawn(node(ports[1], &urls, &key)).await.unwrap();
    let mut a = common::connect(&urls[0]).await;
    let mut b = common::connect(&urls[1]).await;
    // Wait until node 0 routes to b, then send exactly 10 packets.
    assert!(
        common::eventually(|| async {
            let t = common::hostile::scrape(metrics_addr).await;
            value(&t, "derp_mesh_link_keys", &[("peer", &names[1])]) >= 2.0
        })
        .await,
        "node 0 never learnt node 1's clients"
    );
    for i in 0..10u8 {
        a.send_packet(&b.public_key(), &[i; 50]).await.unwrap();
        assert_eq!(common::recv_packet(&mut b).await.1, vec![i; 50]);
    }

    // A relay with the wrong key links to node 0 and is refused.
    let _impostor = Server::spawn(node(common::free_port(), &urls[..1], &"99".repeat(32)))
        .await
        .unwrap();
    assert!(
        common::eventually(|| async {
            let t = common::hostile::scrape(metrics_addr).await;
            value(
                &t,
                "derp_handshake_failures_total",
                &[("reason", "mesh_key")],
            ) >= 1.0
        })
        .await
    );

    let t = common::hostile::scrape(metrics_addr).await;
    let out = [("peer", names[1].as_str()), ("direction", "out")];
    let inbound = [("peer", names[0].as_str()), ("direction", "in")];
    assert_eq!(
        value(&t, "derp_mesh_forwarded_packets_total", &out),
        10.0,
        "{t}"
    );
    assert_eq!(value(&t, "derp_mesh_forwarded_bytes_total", &out), 500.0);
    assert_eq!(
        value(&t, "derp_mesh_forwarded_packets_total", &inbound),
        10.0,
        "{t}"
    );
    assert_eq!(value(&t, "derp_mesh_links", &[("state", "up")]), 2.0, "{t}");
    assert_eq!(value(&t, "derp_mesh_self_links_total", &[]), 2.0, "{t}");
    assert_eq!(value(&t, "derp_mesh_link_up", &[("peer", &names[1])]), 1.0);
    // Each node knows the other's client (and the other node's link key) only remotely; the
    // gauge is shared by both nodes in this process.
    assert!(value(&t, "derp_clients_remote", &[]) >= 2.0, "{t}");
    assert!(
        value(
            &t,
            "derp_mesh_connects_total",
            &[("peer", &names[0]), ("result", "error")]
        ) >= 1.0,
        "the impostor's failed link is counted: {t}"
    );
    drop((n0, n1));
}
