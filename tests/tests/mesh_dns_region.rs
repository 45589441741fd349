//! A region whose relays find each other through DNS (the Kubernetes headless-Service case):
//! a test DNS server names the relays' addresses; a relay added to the name joins the mesh and
//! one removed leaves it, while traffic between the others keeps flowing.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use derp_proto::io::Client;
use derp_proto::{MeshKey, ServerToClient};
use derp_tests::dns::TestDns;
use derper::config::MeshSettings;
use derper::mesh::dns::{DnsSource, RecordKind};
use derper::{Server, ServerConfig, ServerHandle};

const NAME: &str = "relays.region.test.";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A port free on every address we use (each relay binds its own loopback address).
fn common_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if (3..=4).all(|n| std::net::TcpListener::bind((ip(n), port)).is_ok()) {
            return port;
        }
    }
}

async fn node(last: u8, port: u16, dns: &TestDns) -> ServerHandle {
    let mut config = ServerConfig::plain(SocketAddr::new(ip(last), port));
    config.mesh_key = Some("4e".repeat(32).parse::<MeshKey>().unwrap());
    let mut source = DnsSource::new(NAME, RecordKind::Addresses { port });
    source.interval = Duration::from_millis(50);
    source.nameservers = vec![dns.addr()];
    source.peer_url = Some("http://relays.region.test/derp".into());
    let mut mesh = MeshSettings::default();
    mesh.dns = vec![source];
    mesh.allow_plain = true;
    mesh.reconnect_max = Duration::from_millis(200);
    config.mesh = mesh;
    Server::spawn(config).await.expect("spawn node")
}

/// Sends probes until one arrives or `within` passes; returns whether one arrived.
async fn delivers(from: &mut Client, to: &mut Client, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        from.send_packet(&to.public_key(), b"probe").await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(20), async {
            loop {
                if let ServerToClient::RecvPacket { src, packet } = to.recv().await.unwrap()
                    && src == from.public_key()
                    && &packet[..] == b"probe"
                {
                    return;
                }
            }
        })
        .await;
        if got.is_ok() {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn relays_join_and_leave_the_region_as_dns_names_them() {
    let dns = TestDns::start().await;
    let port = common_port();
    dns.set_a(NAME, vec![ip(2), ip(3)]);
    let n2 = node(2, port, &dns).await;
    let n3 = node(3, port, &dns).await;
    let n4 = node(4, port, &dns).await;
    let mut a = common::connect(&n2.derp_url()).await;
    let mut b = common::connect(&n3.derp_url()).await;
    let mut c = common::connect(&n4.derp_url()).await;
    assert!(delivers(&mut a, &mut b, Duration::from_secs(10)).await);
    assert!(delivers(&mut b, &mut a, Duration::from_secs(10)).await);
    // Node 4 is not in DNS yet: nobody links to it, so its client is unknown to node 2.
    assert!(!delivers(&mut a, &mut c, Duration::from_millis(300)).await);
    let links_of = |n: &ServerHandle| n.mesh().unwrap().targets().len();
    // Each relay leaves its own address out (it never dials itself).
    assert_eq!((links_of(&n2), links_of(&n3)), (1, 1));

    // Node 4 joins the name: the others link to it, and it links to them.
    dns.set_a(NAME, vec![ip(2), ip(3), ip(4)]);
    assert!(delivers(&mut a, &mut c, Duration::from_secs(10)).await);
    assert!(delivers(&mut c, &mut b, Duration::from_secs(10)).await);
    assert_eq!(links_of(&n2), 2);

    // Node 4 leaves the name: nodes 2 and 3 drop their links to it and forget its client,
    // while a and b keep talking.
    dns.set_a(NAME, vec![ip(2), ip(3)]);
    assert!(
        common::eventually(|| async { links_of(&n2) == 1 && links_of(&n3) == 1 }).await,
        "links to the removed relay still up"
    );
    assert!(!delivers(&mut a, &mut c, Duration::from_millis(300)).await);
    assert!(delivers(&mut a, &mut b, Duration::from_secs(2)).await);
    assert!(delivers(&mut b, &mut a, Duration::from_secs(2)).await);

    // A DNS outage keeps the region as it is.
    let before = dns.queries();
    dns.remove(NAME);
    // Several rounds of NXDOMAIN for every relay.
    assert!(common::eventually(|| async { dns.queries() >= before + 12 }).await);
    assert_eq!((links_of(&n2), links_of(&n3)), (1, 1));
    assert!(delivers(&mut a, &mut b, Duration::from_secs(2)).await);
    drop((n2, n3, n4));
}
