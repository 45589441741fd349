//! `loadtest pairs` against our relay (in-process) and, when `TAILSCALE_DERPER` names the Go
//! binary, against Tailscale's: CI thresholds, NAT mix outcomes, exact integrity accounting,
//! the report's JSON schema, and bad servers that must not hang the run.

use std::time::Duration;

use derper::{Server, ServerConfig};
use loadtest::nat::NatMix;
use loadtest::pairs::Faults;
use loadtest::{DialOptions, PairsConfig, Report, Thresholds, run_pairs};

/// A run that must finish well inside this, whatever the server does.
const RUN_LIMIT: Duration = Duration::from_secs(30);

async fn our_relay() -> derper::ServerHandle {
    Server::spawn(ServerConfig::plain("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("spawn our derper")
}

/// A small, slow workload: the tests check accounting, never speed.
fn small(url: &str, pairs: u64) -> PairsConfig {
    let mut c = PairsConfig::new(DialOptions::new(url));
    c.pairs = pairs;
    c.size = 200;
    c.rate = Some(50.0);
    c.duration = Duration::from_secs(1);
    c.drain = Duration::from_millis(500);
    c.setup_timeout = Duration::from_secs(10);
    c
}

async fn run(c: &PairsConfig) -> Report {
    tokio::time::timeout(RUN_LIMIT, run_pairs(c))
        .await
        .expect("run outlived its deadlines")
        .expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_against_our_relay_pass_ci_thresholds() {
    let server = our_relay().await;
    let mut report = run(&small(&server.derp_url(), 4)).await;
    let mut th = Thresholds::default();
    th.max_loss = Some(0.0);
    th.max_errors = 0;
    report.judge(&th);
    assert!(report.verdict.pass, "{}", report.summary());
    assert_eq!(report.peers.connected, 8);
    assert!(report.traffic.sent > 0);
    assert_eq!(report.traffic.received, report.traffic.sent);
    assert_eq!(
        report.traffic.handshakes, 8,
        "one WireGuard-shaped handshake message per peer"
    );
    assert_eq!(report.paths.relayed, 8);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_mix_decides_direct_or_relayed() {
    let server = our_relay().await;
    let mut c = small(&server.derp_url(), 2);
    c.nat_mix = Some("cone=1".parse::<NatMix>().unwrap());
    let r = run(&c).await;
    assert_eq!((r.paths.direct, r.paths.relayed), (4, 0), "{}", r.summary());
    assert_eq!(r.traffic.received, r.traffic.sent, "{}", r.summary());

    c.nat_mix = Some("symmetric=1".parse::<NatMix>().unwrap());
    c.first_pair = 100;
    let mut r = run(&c).await;
    assert_eq!((r.paths.direct, r.paths.relayed), (0, 4), "{}", r.summary());
    assert_eq!(
        r.traffic.received, r.traffic.sent,
        "relay fallback carries the data"
    );
    let mut th = Thresholds::default();
    th.min_direct_ratio = Some(0.5);
    r.judge(&th);
    assert!(
        !r.verdict.pass,
        "min-direct-ratio must fail an all-relayed run"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_checks_count_corrupted_dropped_and_duplicated_packets_exactly() {
    let server = our_relay().await;
    let mut c = small(&server.derp_url(), 1);
    c.one_way = true;
    let mut f = Faults::default();
    f.corrupt_every = Some(10);
    f.drop_every = Some(7);
    f.duplicate_every = Some(5);
    c.faults = f;
    let r = run(&c).await;
    // Replay the sender's rules over the sequence numbers it used.
    let (mut lost, mut corrupted, mut duplicated) = (0, 0, 0);
    for seq in 1..=r.traffic.sent {
        let dup = u64::from(seq % 5 == 0);
        if seq % 7 == 0 {
            lost += 1;
        } else if seq % 10 == 0 {
            lost += 1;
            corrupted += 1 + dup;
        } else {
            duplicated += dup;
        }
    }
    assert!(r.traffic.sent >= 35, "{}", r.summary());
    assert_eq!(r.traffic.lost, lost, "{}", r.summary());
    assert_eq!(r.traffic.corrupted, corrupted, "{}", r.summary());
    assert_eq!(r.traffic.duplicated, duplicated, "{}", r.summary());
    assert_eq!(r.traffic.reordered, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_json_has_the_documented_schema() {
    let server = our_relay().await;
    let mut r = run(&small(&server.derp_url(), 1)).await;
    r.judge(&Thresholds::default());
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(v["schema"], "derp-loadtest/report/v1");
    assert_eq!(v["scenario"], "pairs");
    for (path, kind) in [
        ("/target", "string"),
        ("/shards", "u64"),
        ("/started_unix_ms", "u64"),
        ("/measured_secs", "f64"),
        ("/config/pairs", "u64"),
        ("/config/size", "u64"),
        ("/peers/requested", "u64"),
        ("/peers/connected", "u64"),
        ("/peers/failed", "u64"),
        ("/paths/direct", "u64"),
        ("/paths/relayed", "u64"),
        ("/paths/direct_ratio", "f64"),
        ("/nat", "object"),
        ("/traffic/sent", "u64"),
        ("/traffic/received", "u64"),
        ("/traffic/lost", "u64"),
        ("/traffic/loss_ratio", "f64"),
        ("/traffic/reordered", "u64"),
        ("/traffic/duplicated", "u64"),
        ("/traffic/corrupted", "u64"),
        ("/traffic/packets_per_sec", "f64"),
        ("/traffic/bits_per_sec", "f64"),
        ("/latency_us/p50", "u64"),
        ("/latency_us/p99", "u64"),
        ("/latency_us/p999", "u64"),
        ("/latency_us/histogram/count", "u64"),
        ("/latency_us/histogram/buckets", "object"),
        ("/errors_total", "u64"),
        ("/errors", "array"),
        ("/verdict/pass", "bool"),
        ("/verdict/failures", "array"),
    ] {
        let x = v
            .pointer(path)
            .unwrap_or_else(|| panic!("missing {path} in {v:#}"));
        let ok = match kind {
            "string" => x.is_string(),
            "u64" => x.is_u64(),
            "f64" => x.is_number(),
            "bool" => x.is_boolean(),
            "array" => x.is_array(),
            _ => x.is_object(),
        };
        assert!(ok, "{path} should be {kind}, is {x}");
    }
    // Shard reports merge back into the same shape.
    let back: Report = serde_json::from_value(v).unwrap();
    let mut merged = Report::default();
    merged.merge(&back);
    merged.merge(&back);
    merged.finalize();
    assert_eq!(merged.shards, 2);
    assert_eq!(merged.traffic.sent, 2 * r.traffic.sent);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_and_stalling_servers_are_reported_per_peer_without_hanging() {
    // Refused: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Stalled: accepts and never answers.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_url = format!("http://{}/derp", stall.local_addr().unwrap());
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stall.accept().await {
            held.push(s);
        }
    });
    for url in [format!("http://127.0.0.1:{port}/derp"), stall_url] {
        let mut c = small(&url, 2);
        c.dial.connect_timeout = Duration::from_secs(1);
        let started = std::time::Instant::now();
        let mut r = run(&c).await;
        r.judge(&Thresholds::default());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(r.peers.connected, 0, "{}", r.summary());
        assert_eq!(r.errors_total, 4, "{}", r.summary());
        assert!(
            r.errors.iter().all(|e| e.stage == "connect"),
            "{:?}",
            r.errors
        );
        assert!(!r.verdict.pass);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_against_tailscale_derper() {
    let Some(bin) = std::env::var_os("TAILSCALE_DERPER") else {
        eprintln!(
            "SKIPPED pairs_against_tailscale_derper: set TAILSCALE_DERPER to Tailscale's derper \
             binary (go install tailscale.com/cmd/derper@v1.102.5)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(bin)
        .args([
            "-a",
            &format!("127.0.0.1:{port}"),
            "-http-port",
            "-1",
            "-stun=false",
            "-c",
        ])
        .arg(dir.path().join("derper.key"))
        .kill_on_drop(true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start Tailscale derper");
    // Wait for the listener.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = small(&format!("http://127.0.0.1:{port}/derp"), 2);
    c.nat_mix = Some("cone=1,symmetric=1".parse().unwrap());
    let mut r = run(&c).await;
    let mut th = Thresholds::default();
    th.max_loss = Some(0.0);
    r.judge(&th);
    assert!(r.verdict.pass, "{}", r.summary());
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_upgrade_is_a_per_peer_handshake_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/derp", l.local_addr().unwrap());
    let _server = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4_096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n\
                          Connection: Upgrade\r\n\r\n\x01\x00\x00\x00\x28garbage-garbage-garbage",
                    )
                    .await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let mut c = small(&url, 2);
    c.dial.connect_timeout = Duration::from_secs(2);
    let r = run(&c).await;
    assert_eq!(r.peers.connected, 0, "{}", r.summary());
    assert_eq!(r.errors_total, 4, "{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_closing_mid_run_is_reported_and_the_run_ends_on_time() {
    let server = our_relay().await;
    let mut c = small(&server.derp_url(), 2);
    c.duration = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move { run_pairs(&c).await });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.shutdown().await;
    let r = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("run outlived its deadlines")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r.peers.connected, 4);
    assert!(r.errors_total >= 1, "{}", r.summary());
    assert!(
        r.errors
            .iter()
            .all(|e| e.stage == "recv" || e.stage == "send"),
        "{:?}",
        r.errors
    );
    assert!(
        r.traffic.received > 0,
        "packets before the close still count"
    );
}
