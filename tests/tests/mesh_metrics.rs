//! The mesh's Prometheus series move: links up, forwarded packets out and in per peer, self
//! links, and a wrong mesh key counted. (Its own binary: the recorder is process-global.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use derp_proto::MeshKey;
use derper::config::MeshSettings;
use derper::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let ports = [free_port(), free_port()];
    let names: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let urls: Vec<String> = names.iter().map(|n| format!("http://{n}/derp")).collect();
    let n0 = Server::spawn(node(ports[0], &urls, &key)).await.unwrap();
    let n1 = Server::spawn(node(ports[1], &urls, &key)).await.unwrap();
    let mut a = common::connect(&urls[0]).await;
    let mut b = common::connect(&urls[1]).await;
    // Wait until node 0 routes to b, then send exactly 10 packets.
    assert!(
        common::eventually(|| async {
            let t = scrape(metrics_addr).await;
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
    let _impostor = Server::spawn(node(free_port(), &urls[..1], &"99".repeat(32)))
        .await
        .unwrap();
    assert!(
        common::eventually(|| async {
            let t = scrape(metrics_addr).await;
            value(
                &t,
                "derp_handshake_failures_total",
                &[("reason", "mesh_key")],
            ) >= 1.0
        })
        .await
    );

    let t = scrape(metrics_addr).await;
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
