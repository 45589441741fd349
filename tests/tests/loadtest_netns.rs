//! `loadtest pairs --netns`: real NATs (network namespaces + nftables masquerade) behave like the
//! userspace simulator: cone pairs punch, symmetric pairs fall back to the relay. Needs root,
//! `ip` and `nft`; skips loudly otherwise.

use std::time::Duration;

use derper::{Server, ServerConfig};
use loadtest::{DialOptions, PairsConfig, run_pairs};

fn can_run() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let tools = ["ip", "nft"].iter().all(|t| {
        std::process::Command::new(t)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !(root && tools) {
        eprintln!(
            "SKIPPED loadtest_netns: needs root and the ip and nft tools (apt-get install -y nftables iproute2)"
        );
    }
    root && tools
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nats_cone_punches_and_symmetric_falls_back() {
    if !can_run() {
        return;
    }
    let server = Server::spawn(ServerConfig::plain("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    for (mix, direct) in [("cone=1", 4), ("symmetric=1", 0)] {
        let mut c = PairsConfig::new(DialOptions::new(server.derp_url()));
        c.pairs = 2;
        c.size = 200;
        c.rate = Some(20.0);
        c.duration = Duration::from_secs(1);
        c.netns = true;
        c.punch_timeout = Duration::from_secs(2);
        c.nat_mix = Some(mix.parse().unwrap());
        let r = tokio::time::timeout(Duration::from_secs(60), run_pairs(&c))
            .await
            .expect("deadline")
            .expect("run");
        assert_eq!(r.errors_total, 0, "{}", r.summary());
        assert_eq!(r.paths.direct, direct, "{mix}: {}", r.summary());
        assert_eq!(r.traffic.received, r.traffic.sent, "{}", r.summary());
    }
    server.shutdown().await;
}
