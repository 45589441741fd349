//! `loadtest mesh` against a region of two Tailscale derpers meshed over TLS: one run reports
//! same-node and cross-node pairs side by side, and both classes lose nothing at a modest rate.

mod common;

use std::time::Duration;

use common::mesh::{HOSTNAME, MeshRegion, start_go_mesh, wait_meshed};
use loadtest::derpmap::DerpMap;
use loadtest::{DialOptions, PairsConfig, Thresholds, run_pairs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_scenario_reports_both_classes_over_a_meshed_go_region() {
    let Some(bin) = common::tailscale_derper() else {
        return;
    };
    let region = MeshRegion::new();
    let nodes = start_go_mesh(&bin, &region, 2).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    wait_meshed(&urls, &region.ca.verify(), Duration::from_secs(15)).await;

    // The nodes as a DERP map would list them: one region, TLS name `localhost`, literal IPs,
    // the leaf pinned.
    let pin = hex::encode(region.ca.leaf_pin);
    let map_nodes: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                r#"{{"Name": "900{i}", "RegionID": 900, "HostName": "{HOSTNAME}", "IPv4": "127.0.0.1",
                    "DERPPort": {}, "STUNPort": -1, "CertName": "sha256-raw:{pin}"}}"#,
                n.port
            )
        })
        .collect();
    let map = DerpMap::parse(&format!(
        r#"{{"Regions": {{"900": {{"RegionID": 900, "RegionCode": "test", "Nodes": [{}]}}}}}}"#,
        map_nodes.join(",")
    ))
    .unwrap();
    let mut dial = DialOptions::from_derp_map(&map, false).unwrap();
    dial.verify = map.nodes()[0].1.verify();
    assert_eq!(dial.urls, urls);

    let mut c = PairsConfig::new(dial);
    c.cross_relay = true;
    c.pairs = 8;
    c.size = 200;
    c.rate = Some(50.0);
    c.duration = Duration::from_secs(2);
    c.drain = Duration::from_secs(1);
    c.setup_timeout = Duration::from_secs(15);
    let mut r = tokio::time::timeout(Duration::from_secs(40), run_pairs(&c))
        .await
        .expect("run outlived its deadlines")
        .expect("run");
    let mut th = Thresholds::default();
    th.max_loss = Some(0.0);
    r.judge(&th);
    eprint!("{}", r.summary());
    assert!(r.verdict.pass, "{}", r.summary());
    assert_eq!(r.scenario, "mesh");
    assert_eq!(r.peers.connected, 16);
    assert_eq!(r.classes.len(), 2, "{}", r.summary());
    for name in ["same_node", "cross_node"] {
        let class = &r.classes[name];
        assert_eq!(class.pairs, 4, "{name}: half the pairs");
        let t = &class.traffic;
        assert!(t.sent >= 4 * 2 * 40, "{name}: {}", r.summary());
        assert_eq!((t.received, t.lost), (t.sent, 0), "{name}: {}", r.summary());
        assert_eq!(class.latency_us.histogram.count, t.received, "{name}");
        assert!(class.latency_us.p99 > 0, "{name}");
    }
    let total: u64 = r.classes.values().map(|c| c.traffic.sent).sum();
    assert_eq!(total, r.traffic.sent, "the classes partition the run");

    let v = serde_json::to_value(&r).unwrap();
    for path in [
        "/classes/cross_node/traffic/loss_ratio",
        "/classes/cross_node/traffic/packets_per_sec",
        "/classes/cross_node/latency_us/p50",
        "/classes/same_node/latency_us/p99",
    ] {
        assert!(v.pointer(path).is_some_and(|x| x.is_number()), "{path}");
    }
    for n in &nodes {
        assert!(!n.log().contains("x509"), "{}", n.log());
    }
}
