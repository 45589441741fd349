//! `auto://` mesh links when UDP is blocked: two of our relays in a network namespace of their
//! own, with nftables dropping UDP to their QUIC ports. The links come up over TCP/TLS within
//! the fallback bound; once the rule is gone they move back to QUIC within the retry interval.
//! Needs root, `ip` and `nft` (skips loudly otherwise; under CI=true it fails instead).
//!
//! The whole test runs on one thread that entered the namespace, so every socket it makes
//! (both relays, the clients, the metrics listener) lives there, on the namespace's own
//! loopback; nothing outside the namespace is touched.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::time::{Duration, Instant};

use common::hostile::scrape;
use common::mesh::{OurLink, OurRegion, auto_entry};
use derp_proto::ServerToClient;
use derp_proto::io::Client;
use derper::Server;

const FALLBACK_AFTER: Duration = Duration::from_secs(1);
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

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
        Command::new(t)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let why = "needs root and the ip and nft tools (apt-get install -y nftables iproute2)";
    if !(root && tools) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "mesh_quic_fallback {why}"
        );
        eprintln!("SKIPPED mesh_quic_fallback: {why}");
    }
    root && tools
}

/// A network namespace owned by the test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("qfb{}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    fn nft(&self, args: &[&str]) {
        let ns = ["ip", "netns", "exec", &self.0, "nft"];
        run(&[&ns[..], args].concat());
    }

    /// Runs `test` to completion on a new thread inside the namespace (only that thread and
    /// the threads it starts are moved).
    fn run<F: Future<Output = ()>>(&self, test: impl FnOnce() -> F + Send + 'static) {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap();
            // SAFETY: setns only reads the descriptor, which `ns` keeps open for the call; it
            // changes this new thread's network namespace and nothing else.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(test());
        })
        .join()
        .expect("test thread");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the series of `name` whose labels include every pair in `labels`.
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

/// Waits (at most `within`) until node 0's link to `peer` is up over `transport`; returns
/// how long that took.
async fn link_up(metrics: SocketAddr, peer: &str, transport: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let t = scrape(metrics).await;
        let labels = [("peer", peer), ("transport", transport)];
        if value(&t, "derp_mesh_link_up", &labels) == 1.0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "link to {peer} not up over {transport} within {within:?}:\n{}",
            t.lines()
                .filter(|l| l.starts_with("derp_mesh_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends from `from` to `to` every 50 ms until one arrives.
async fn deliver(from: &mut Client, to: &mut Client) {
    let (src, dst) = (from.public_key(), to.public_key());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut resend = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => panic!("no delivery within 10 s"),
            _ = resend.tick() => from.send_packet(&dst, b"across").await.unwrap(),
            m = to.recv() => {
                if let ServerToClient::RecvPacket { src: s, .. } = m.unwrap() && s == src {
                    return;
                }
            }
        }
    }
}

#[test]
fn auto_links_fall_back_to_tcp_when_udp_is_blocked_and_return_to_quic() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let ports = [common::free_port(), common::free_port()];
    // UDP to both QUIC ports is dropped from the start (TCP on the same ports passes).
    ns.nft(&["add", "table", "inet", "qfb"]);
    ns.nft(&[
        "add",
        "chain",
        "inet",
        "qfb",
        "in",
        "{ type filter hook input priority 0 ; }",
    ]);
    let rule = format!("udp dport {{ {}, {} }} drop", ports[0], ports[1]);
    let mut add = vec!["add", "rule", "inet", "qfb", "in"];
    add.extend(rule.split(' '));
    ns.nft(&add);
    let ns_name = ns.0.clone();

    ns.run(move || async move {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = listener.local_addr().unwrap();
        drop(listener);
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(metrics)
            .install()
            .unwrap();
        let net = OurRegion::new(OurLink::Quic);
        let peers: Vec<String> = ports.iter().map(|p| auto_entry(*p)).collect();
        let mut nodes = Vec::new();
        let started = Instant::now();
        for port in ports {
            let mut config = net.config(port, &peers, &net.region.mesh_key);
            config.mesh.quic_fallback_after = FALLBACK_AFTER;
            config.mesh.quic_retry_interval = RETRY_INTERVAL;
            nodes.push(Server::spawn(config).await.unwrap());
        }
        let peer = auto_entry(ports[1]);
        // Within the bound: the QUIC attempt, then a TLS dial on loopback.
        let bound = FALLBACK_AFTER + Duration::from_secs(3);
        link_up(metrics, &peer, "tcp", bound).await;
        let t = started.elapsed();
        eprintln!("UDP blocked: link up over TCP {t:?} after start (bound {bound:?})");
        assert!(t < bound);
        let mut a = common::connect(&net.url(ports[0])).await;
        let mut b = common::connect(&net.url(ports[1])).await;
        deliver(&mut a, &mut b).await;
        deliver(&mut b, &mut a).await;
        let failed = value(
            &scrape(metrics).await,
            "derp_mesh_connects_total",
            &[("peer", &peer), ("transport", "quic"), ("result", "error")],
        );
        assert!(failed >= 1.0, "no failed QUIC attempt counted");

        // Unblock UDP: the next probe finds QUIC and the link moves back.
        run(&[
            "ip", "netns", "exec", &ns_name, "nft", "delete", "table", "inet", "qfb",
        ]);
        let unblocked = Instant::now();
        link_up(
            metrics,
            &peer,
            "quic",
            RETRY_INTERVAL + Duration::from_secs(5),
        )
        .await;
        eprintln!(
            "UDP unblocked: link back on QUIC after {:?} (retry interval {RETRY_INTERVAL:?})",
            unblocked.elapsed()
        );
        let t = scrape(metrics).await;
        let tcp_up = value(
            &t,
            "derp_mesh_link_up",
            &[("peer", &peer), ("transport", "tcp")],
        );
        assert_eq!(tcp_up, 0.0, "still up over TCP too");
        deliver(&mut a, &mut b).await;
        deliver(&mut b, &mut a).await;
        for node in nodes {
            node.shutdown().await;
        }
    });
}
