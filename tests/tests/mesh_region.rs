//! Our relays meshed into one region: clients homed on different nodes reach each other by
//! one ForwardPacket hop; presence follows clients between nodes; PeerGone only when a key
//! leaves the region; a broken link or a restarted node converges again; a wrong mesh key is
//! refused and counted. The region behaviours run twice: our relays linked over TCP and over
//! QUIC (`common::mesh::OurLink`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::mesh::{OurLink, OurRegion};
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
    ports: Vec<u16>,
    net: OurRegion,
}

/// `n` relays, each linking to every node (itself included) over `link`.
async fn region(link: OurLink, n: usize) -> Region {
    let net = OurRegion::new(link);
    let ports: Vec<u16> = (0..n).map(|_| common::free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| net.url(*p)).collect();
    let peers: Vec<String> = ports.iter().map(|p| net.entry(*p)).collect();
    let mut nodes = Vec::new();
    for &port in &ports {
        let config = net.config(port, &peers, &net.region.mesh_key);
        nodes.push(Server::spawn(config).await.expect("spawn node"));
    }
    Region {
        nodes,
        urls,
        ports,
        net,
    }
}

/// Two tests from one body: our relays linked over TCP, and over QUIC.
macro_rules! over_tcp_and_quic {
    ($body:ident: $tcp:ident, $quic:ident) => {
        #[tokio::test]
        async fn $tcp() {
            $body(OurLink::Tcp).await;
        }

        #[tokio::test]
        async fn $quic() {
            $body(OurLink::Quic).await;
        }
    };
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
                    ServerToClient::RecvPacket { src, packet }
                        if src == from.public_key() && &packet[..] == b"probe" =>
                    {
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

/// The next packet that is not a leftover probe of [`until_delivered`].
async fn next_packet(c: &mut Client) -> (derp_proto::NodePublicKey, Vec<u8>) {
    loop {
        let (src, data) = common::recv_packet(c).await;
        if data != b"probe" {
            return (src, data);
        }
    }
}

async fn exchange(a: &mut Client, b: &mut Client) {
    for i in 0..20u8 {
        a.send_packet(&b.public_key(), &[i; 100]).await.unwrap();
        let (src, data) = next_packet(b).await;
        assert_eq!((src, data), (a.public_key(), vec![i; 100]));
        b.send_packet(&a.public_key(), &[i; 200]).await.unwrap();
        let (src, data) = next_packet(a).await;
        assert_eq!((src, data), (b.public_key(), vec![i; 200]));
    }
}

over_tcp_and_quic!(clients_on_three_nodes_talk_both_ways: three_nodes_over_tcp, three_nodes_over_quic);

async fn clients_on_three_nodes_talk_both_ways(link: OurLink) {
    let r = region(link, 3).await;
    let mut a = common::connect(&r.urls[0]).await;
    let mut b = common::connect(&r.urls[1]).await;
    let mut c = common::connect(&r.urls[2]).await;
    let t = until_delivered(&mut a, &mut b).await;
    eprintln!("{link:?}: cross-node route A→B converged in {t:?}");
    until_delivered(&mut b, &mut c).await;
    until_delivered(&mut c, &mut a).await;
    exchange(&mut a, &mut b).await;
    exchange(&mut b, &mut c).await;
    exchange(&mut c, &mut a).await;
    // Each node linked to the two others and found itself by server key.
    for (node, url) in r.nodes.iter().zip(&r.urls) {
        let mesh = node.mesh().expect("mesh configured").clone();
        assert_eq!(mesh.targets().len(), 3);
        assert!(
            common::eventually(|| async { mesh.self_targets().len() == 1 }).await,
            "self not detected"
        );
        assert_eq!(&mesh.self_targets()[0].url, url);
    }
}

over_tcp_and_quic!(a_client_moving_between_nodes_is_never_gone_until_it_leaves: moving_client_over_tcp, moving_client_over_quic);

async fn a_client_moving_between_nodes_is_never_gone_until_it_leaves(link: OurLink) {
    let r = region(link, 3).await;
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

over_tcp_and_quic!(a_restarted_node_carries_cross_node_traffic_again: restarted_node_over_tcp, restarted_node_over_quic);

async fn a_restarted_node_carries_cross_node_traffic_again(link: OurLink) {
    let Region {
        mut nodes,
        urls,
        ports,
        net,
    } = region(link, 2).await;
    let n1 = nodes.pop().unwrap();
    let n0 = nodes.pop().unwrap();
    let peers: Vec<String> = ports.iter().map(|p| net.entry(*p)).collect();
    let mut a = common::connect(&urls[0]).await;
    let mut b = common::connect(&urls[1]).await;
    until_delivered(&mut a, &mut b).await;

    // Node 1 goes away (its clients with it) and comes back on the same address.
    n1.shutdown().await;
    drop(b);
    let n1 = Server::spawn(net.config(ports[1], &peers, &net.region.mesh_key))
        .await
        .unwrap();
    let restarted = Instant::now();
    let mut b = common::connect(&urls[1]).await;
    until_delivered(&mut a, &mut b).await;
    eprintln!(
        "{link:?}: restarted node carried cross-node traffic {:?} after it accepted connections",
        restarted.elapsed()
    );
    exchange(&mut a, &mut b).await;
    drop((n0, n1));
}

over_tcp_and_quic!(a_wrong_mesh_key_is_refused_and_others_keep_talking: wrong_key_over_tcp, wrong_key_over_quic);

async fn a_wrong_mesh_key_is_refused_and_others_keep_talking(link: OurLink) {
    let r = region(link, 2).await;
    let mut a = common::connect(&r.urls[0]).await;
    let mut b = common::connect(&r.urls[1]).await;
    until_delivered(&mut a, &mut b).await;

    // An impostor with another key links to node 0 and is refused at the handshake.
    let wrong: MeshKey = "ff".repeat(32).parse().unwrap();
    let impostor_port = common::free_port();
    let _impostor = Server::spawn(
        r.net
            .config(impostor_port, &[r.net.entry(r.ports[0])], &wrong),
    )
    .await
    .unwrap();
    let mut x = common::connect(&r.net.url(impostor_port)).await;
    // The impostor never learns node 0's clients: x cannot reach a.
    let refused =
        tokio::time::timeout(Duration::from_millis(500), until_delivered(&mut x, &mut a)).await;
    assert!(refused.is_err(), "impostor forwarded into the region");
    exchange(&mut a, &mut b).await;
}

/// A relay of the region serving TLS with a self-signed certificate for 127.0.0.1 kept in
/// `dir`; returns its config and the certificate's pin.
fn tls_node_config(port: u16, dir: &std::path::Path, key: &MeshKey) -> (ServerConfig, String) {
    let opts = derper::tls::TlsOptions {
        cert_mode: derper::tls::CertMode::Manual,
        cert_dir: dir.to_path_buf(),
        hostname: "127.0.0.1".into(),
    };
    // Generates the certificate now (the server loads the same files), so every node's pin
    // is known before any node starts.
    let setup = derper::tls::load(&opts, &[0; 32]).expect("generate certificate");
    let mut config = node_config(port, &[], key);
    config.tls = Some(opts);
    config.mesh.allow_plain = false;
    (config, setup.leaf_sha256_hex.clone())
}

#[tokio::test]
async fn tls_links_verify_pinned_certificates() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports = [common::free_port(), common::free_port()];
    let mut configs = Vec::new();
    let mut peers = Vec::new();
    for (port, dir) in ports.iter().zip(&dirs) {
        let (config, pin) = tls_node_config(*port, dir.path(), &mesh_key());
        peers.push(format!("https://127.0.0.1:{port}/derp#sha256-raw:{pin}"));
        configs.push(config);
    }
    let mut nodes = Vec::new();
    for mut config in configs {
        config.mesh.peers = peers.clone();
        nodes.push(Server::spawn(config).await.unwrap());
    }
    let mut a = common::connect(&nodes[0].derp_url()).await;
    let mut b = common::connect(&nodes[1].derp_url()).await;
    until_delivered(&mut a, &mut b).await;
    exchange(&mut a, &mut b).await;

    // A node that pins the wrong certificate never links: its clients cannot reach b.
    let wrong_pin = format!(
        "https://127.0.0.1:{}/derp#sha256-raw:{}",
        ports[1],
        "00".repeat(32)
    );
    let mut config = node_config(common::free_port(), &[wrong_pin], &mesh_key());
    config.mesh.allow_plain = false;
    let impostor = Server::spawn(config).await.unwrap();
    let mut x = common::connect(&impostor.derp_url()).await;
    let reached =
        tokio::time::timeout(Duration::from_millis(500), until_delivered(&mut x, &mut b)).await;
    assert!(reached.is_err(), "linked despite a wrong pin");
}

#[tokio::test]
async fn plain_peers_need_the_explicit_opt_in() {
    let mut config = node_config(
        common::free_port(),
        &["http://127.0.0.1:1/derp".into()],
        &mesh_key(),
    );
    config.mesh.allow_plain = false;
    let err = Server::spawn(config).await.unwrap_err().to_string();
    assert!(err.contains("--mesh-allow-plain"), "{err}");
    assert!(err.contains("mesh key"), "{err}");
}

/// A TCP proxy that can cut every connection through it, or stop moving bytes while keeping
/// connections open (a black hole: the far side seems to have vanished).
struct Proxy {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    hole: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let hole = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (hole2, accepted2) = (hole.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let mut cut_rx = cut_rx.clone();
                cut_rx.borrow_and_update();
                let hole = hole2.clone();
                tokio::spawn(async move {
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    // Dropping the halves when one side ends (or on a cut) closes both sockets.
                    tokio::select! {
                        _ = cut_rx.changed() => {}
                        _ = pump(ir, ow, hole.clone()) => {}
                        _ = pump(or, iw, hole) => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            hole,
            accepted,
            _task: task,
        }
    }

    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn black_hole(&self, on: bool) {
        self.hole.store(on, Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    hole: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // In a black hole nothing is read, so nothing is lost: the bytes wait in the kernel.
        while hole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_cut_or_silent_link_reconnects_and_routes_converge() {
    // Node 0 reaches node 1 through the proxy; node 1 reaches node 0 directly.
    let ports = [common::free_port(), common::free_port()];
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], ports[1]))).await;
    let key = mesh_key();
    let mut c0 = node_config(
        ports[0],
        &[format!("http://127.0.0.1:{}/derp", proxy.addr.port())],
        &key,
    );
    c0.mesh.ping_interval = Duration::from_millis(100);
    let c1 = node_config(
        ports[1],
        &[format!("http://127.0.0.1:{}/derp", ports[0])],
        &key,
    );
    let n0 = Server::spawn(c0).await.unwrap();
    let n1 = Server::spawn(c1).await.unwrap();
    let mut a = common::connect(&n0.derp_url()).await;
    let mut b = common::connect(&n1.derp_url()).await;
    until_delivered(&mut a, &mut b).await;

    // Cut mid-stream: the link sees the connection close and reconnects.
    proxy.cut_all();
    let t = until_delivered(&mut a, &mut b).await;
    eprintln!("after a cut link, A→B converged again in {t:?}");
    exchange(&mut a, &mut b).await;

    // Black hole: nothing arrives and nothing is refused; pings go unanswered and after
    // three silent intervals the link gives up and reconnects (the proxy forwards again).
    let before = proxy.accepted();
    proxy.black_hole(true);
    a.send_packet(&b.public_key(), b"stuck").await.unwrap();
    // The link notices the silence and dials again (through the proxy).
    assert!(common::eventually(|| async { proxy.accepted() > before }).await);
    proxy.black_hole(false);
    let t = until_delivered(&mut a, &mut b).await;
    eprintln!("after a silent link, A→B converged again in {t:?}");
    exchange(&mut a, &mut b).await;
    drop((n0, n1));
}
