//! `loadtest burst` and `loadtest flood` against our relay (in-process): the accounting adds up,
//! the JSON report carries the scenario fields, and CI thresholds judge it. Never speed.

use std::time::Duration;

use derper::{Server, ServerConfig};
use loadtest::burst::{BurstConfig, run_burst};
use loadtest::flood::{FloodConfig, run_flood};
use loadtest::{DialOptions, Thresholds};

/// A run that must finish well inside this, whatever the server does.
const RUN_LIMIT: Duration = Duration::from_secs(30);

async fn our_relay() -> derper::ServerHandle {
    Server::spawn(ServerConfig::plain("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("spawn our derper")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_counts_every_packet_per_burst() {
    let server = our_relay().await;
    let mut c = BurstConfig::new(DialOptions::new(server.derp_url()));
    c.burst = 16;
    c.bursts = 3;
    c.size = 200;
    let mut report = tokio::time::timeout(RUN_LIMIT, run_burst(&c))
        .await
        .expect("run outlived its deadlines")
        .expect("run");
    let mut th = Thresholds::default();
    th.max_loss = Some(0.0);
    report.judge(&th);
    assert!(report.verdict.pass, "{}", report.summary());
    assert_eq!(report.traffic.sent, 48);
    assert_eq!(report.traffic.received, 48);
    assert_eq!(report.latency_us.histogram.count, 48);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scenario"], "burst");
    let bursts = json["extra"]["bursts"].as_array().unwrap();
    assert_eq!(bursts.len(), 3);
    for b in bursts {
        assert_eq!(
            (b["sent"].as_u64(), b["lost"].as_u64()),
            (Some(16), Some(0))
        );
    }
    assert_eq!(json["extra"]["bursts_complete"], 3);
    assert_eq!(json["extra"]["worst_burst_received"], 16);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_reports_the_canary_and_the_flood() {
    let server = our_relay().await;
    let mut c = FloodConfig::new(DialOptions::new(server.derp_url()));
    c.flooders = 2;
    c.frames_per_write = 64;
    c.rate = 100.0;
    c.duration = Duration::from_millis(300);
    c.warmup = Duration::from_millis(50);
    c.drain = Duration::from_secs(2);
    let mut report = tokio::time::timeout(RUN_LIMIT, run_flood(&c))
        .await
        .expect("run outlived its deadlines")
        .expect("run");
    report.judge(&Thresholds::default());
    assert!(report.verdict.pass, "{}", report.summary());
    assert_eq!(report.peers.connected, 4);
    assert!(report.traffic.sent > 0);
    assert!(report.traffic.received > 0, "{}", report.summary());
    assert_eq!(
        report.latency_us.histogram.count, report.traffic.received,
        "one latency sample per canary packet"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scenario"], "flood");
    assert_eq!(json["extra"]["flooders"], 2);
    assert!(json["extra"]["flood_frames"].as_u64().unwrap() > 0);
    server.shutdown().await;
}
