//! `loadtest probe` over a DERP map, and `pairs` over TLS with a `sha256-raw:` pin and over
//! WebSocket, against our relay.

mod common;

use std::time::Duration;

use derp_proto::io::Transport;
use derp_proto::io::tls::ServerVerify;
use derper::{Server, ServerConfig};
use loadtest::derpmap::DerpMap;
use loadtest::probe::{ProbeConfig, run_probe};
use loadtest::{DialOptions, PairsConfig, Thresholds, run_pairs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_checks_every_node_of_a_derp_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::plain("127.0.0.1:0".parse().unwrap());
    config.tls = Some(derper::tls::TlsOptions {
        cert_mode: derper::tls::CertMode::Manual,
        cert_dir: dir.path().join("certs"),
        hostname: "127.0.0.1".into(),
    });
    config.stun_addrs = vec!["127.0.0.1:0".parse().unwrap()];
    let server = Server::spawn(config).await.expect("spawn");
    let pin = server.tls().unwrap().leaf_sha256_hex.clone();
    let port = server.local_addr().port();
    let stun_port = server.stun_addrs()[0].port();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let map = DerpMap::parse(&format!(
        r#"{{"Regions": {{
          "900": {{"RegionID": 900, "RegionCode": "lo", "Nodes": [
            {{"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "IPv4": "127.0.0.1",
              "DERPPort": {port}, "STUNPort": {stun_port}, "CertName": "sha256-raw:{pin}"}}]}},
          "901": {{"RegionID": 901, "RegionCode": "dead", "Nodes": [
            {{"Name": "901a", "RegionID": 901, "HostName": "127.0.0.1", "IPv4": "127.0.0.1",
              "DERPPort": {dead}, "STUNPort": -1, "InsecureForTests": true}}]}}}}}}"#
    ))
    .unwrap();
    let mut cfg = ProbeConfig::default();
    cfg.timeout = Duration::from_secs(3);
    let mut r = tokio::time::timeout(Duration::from_secs(30), run_probe(&map, &cfg, "map"))
        .await
        .expect("probe outlived its deadlines");
    r.judge(&Thresholds::default());
    let nodes = r.extra["probe"].as_array().unwrap().clone();
    assert_eq!(nodes.len(), 2, "{}", r.summary());
    let good = &nodes[0];
    assert_eq!(good["node"], "900a");
    assert!(
        good["failures"].as_array().unwrap().is_empty(),
        "{}",
        r.summary()
    );
    assert!(good["connect_us"].is_u64() && good["rtt_us"].is_u64());
    assert!(
        good["stun_mapped"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let bad = &nodes[1];
    assert!(bad["rtt_us"].is_null());
    assert!(!bad["failures"].as_array().unwrap().is_empty());
    assert_eq!(r.errors_total, 1, "{}", r.summary());
    assert!(!r.verdict.pass, "a dead node fails the probe");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_over_pinned_tls_and_websocket() {
    let (server, pin, _dir) = common::tls_server().await;
    for transport in [Transport::Upgrade, Transport::WebSocket] {
        let mut d = DialOptions::new(server.derp_url());
        d.verify = ServerVerify::Pin(pin);
        d.transport = transport;
        let mut c = PairsConfig::new(d);
        c.pairs = 2;
        c.size = 1_300;
        c.rate = Some(50.0);
        c.duration = Duration::from_secs(1);
        let mut r = tokio::time::timeout(Duration::from_secs(30), run_pairs(&c))
            .await
            .expect("deadline")
            .expect("run");
        let mut th = Thresholds::default();
        th.max_loss = Some(0.0);
        r.judge(&th);
        assert!(r.verdict.pass, "{transport:?}: {}", r.summary());
        assert!(r.traffic.received > 0);
    }
    // A wrong pin is a per-peer connect error, not a hang or a crash.
    let mut d = DialOptions::new(server.derp_url());
    d.verify = ServerVerify::Pin([0; 32]);
    let mut c = PairsConfig::new(d);
    c.duration = Duration::from_millis(200);
    let r = run_pairs(&c).await.unwrap();
    assert_eq!(
        (r.peers.connected, r.errors_total),
        (0, 2),
        "{}",
        r.summary()
    );
    server.shutdown().await;
}
