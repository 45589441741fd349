//! The DNS membership source against a live test DNS server: peers found, added and removed
//! while running, SRV ports, huge answers cut and counted, and DNS trouble that keeps the set.
//!
//! Every wait is bounded polling of the published set or of a counter (`eventually`, 5 s), never
//! a sleep sized to the resolve interval.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use derp_tests::dns::TestDns;
use derper::mesh::dns::{self, DnsSource, RecordKind};
use derper::metrics::Metrics;
use hickory_proto::op::ResponseCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Short, so a test sees many rounds; the waits are bounded by `eventually`, not by this.
const INTERVAL: Duration = Duration::from_millis(50);

/// One running source with its own metrics.
struct Running {
    peers: watch::Receiver<BTreeSet<SocketAddr>>,
    metrics: PrometheusHandle,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), dns::DnsSourceError>>,
}

impl Running {
    fn start(dns: &TestDns, name: &str, kind: RecordKind, max_peers: usize) -> Self {
        let mut source = DnsSource::new(name, kind);
        source.interval = INTERVAL;
        source.timeout = Duration::from_millis(500);
        source.nameservers = vec![dns.addr()];
        source.max_peers = max_peers;
        // A recorder per test: the handles keep pointing at it after this scope.
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let handles = Arc::new(metrics::with_local_recorder(&recorder, Metrics::new));
        let (tx, peers) = watch::channel(BTreeSet::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(dns::run(
            source,
            HashSet::new(),
            handles,
            tx,
            cancel.clone(),
        ));
        Self {
            peers,
            metrics,
            cancel,
            task,
        }
    }

    fn peers(&self) -> BTreeSet<SocketAddr> {
        self.peers.borrow().clone()
    }

    /// Waits until the published set is `want`.
    async fn expect_peers(&self, want: &BTreeSet<SocketAddr>) {
        let found = eventually(|| async { self.peers() == *want }).await;
        assert!(found, "peers {:?}, want {want:?}", self.peers());
    }

    /// The value of one series (`name{labels}` exactly as rendered), 0 if absent.
    fn metric(&self, series: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Waits until the series has grown by `by` from now: that many more rounds of its kind.
    async fn expect_growth(&self, series: &str, by: f64) {
        let start = self.metric(series);
        let grew = eventually(|| async { self.metric(series) >= start + by }).await;
        assert!(grew, "{series} stayed at {}", self.metric(series));
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn at(port: u16, ips: &[IpAddr]) -> BTreeSet<SocketAddr> {
    ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
}

const OK: &str = r#"derp_mesh_dns_lookups_total{result="ok"}"#;
const EMPTY: &str = r#"derp_mesh_dns_lookups_total{result="empty"}"#;
const ERROR: &str = r#"derp_mesh_dns_lookups_total{result="error"}"#;

#[tokio::test]
async fn peers_are_added_and_removed_as_the_records_change() {
    let dns = TestDns::start().await;
    let name = "derp-headless.derp.svc.cluster.local.";
    dns.set_a(name, vec![loopback(3), loopback(2), loopback(4)]);
    let run = Running::start(&dns, name, RecordKind::Addresses { port: 443 }, 64);
    run.expect_peers(&at(443, &[loopback(2), loopback(3), loopback(4)]))
        .await;

    // One pod goes, another comes.
    dns.set_a(name, vec![loopback(2), loopback(3), loopback(5)]);
    run.expect_peers(&at(443, &[loopback(2), loopback(3), loopback(5)]))
        .await;
    assert_eq!(
        run.metric(r#"derp_mesh_dns_changes_total{change="added"}"#),
        4.0
    );
    assert_eq!(
        run.metric(r#"derp_mesh_dns_changes_total{change="removed"}"#),
        1.0
    );
    assert_eq!(run.metric("derp_mesh_dns_peers"), 3.0);
    assert_eq!(run.metric(ERROR), 0.0);

    // IPv6 pods are peers too.
    let v6: IpAddr = "::1".parse().unwrap();
    dns.set_a(name, vec![loopback(2), v6]);
    run.expect_peers(&at(443, &[loopback(2), v6])).await;
    let metrics = run.metrics.clone();
    run.stop().await;
    assert!(
        metrics.render().contains("\nderp_mesh_dns_peers 0\n"),
        "a stopped source names no peers"
    );
}

#[tokio::test]
async fn srv_targets_are_resolved_at_their_ports() {
    let dns = TestDns::start().await;
    let name = "_derp._tcp.derp.example.";
    dns.set_srv(
        name,
        vec![(8443, "a.derp.example."), (9443, "b.derp.example.")],
    );
    dns.set_a("a.derp.example.", vec![loopback(2)]);
    dns.set_a("b.derp.example.", vec![loopback(3), loopback(4)]);
    let run = Running::start(&dns, name, RecordKind::Srv, 64);
    let mut want = at(8443, &[loopback(2)]);
    want.extend(at(9443, &[loopback(3), loopback(4)]));
    run.expect_peers(&want).await;

    // A target that no longer exists (its pod went) contributes nothing; the rest stay.
    dns.remove("b.derp.example.");
    run.expect_peers(&at(8443, &[loopback(2)])).await;
    run.stop().await;
}

#[tokio::test]
async fn a_huge_answer_is_cut_to_max_peers_and_counted() {
    let dns = TestDns::start().await;
    let name = "big.derp.example.";
    let ips: Vec<IpAddr> = (0..300u16)
        .rev()
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 1) as u8)))
        .collect();
    dns.set_a(name, ips.clone());
    let run = Running::start(&dns, name, RecordKind::Addresses { port: 443 }, 16);
    let mut sorted = ips;
    sorted.sort();
    run.expect_peers(&at(443, &sorted[..16])).await;
    run.expect_growth("derp_mesh_dns_truncated_total", 2.0)
        .await;
    assert_eq!(run.metric("derp_mesh_dns_peers"), 16.0);
    assert_eq!(run.peers().len(), 16);
    run.stop().await;
}

#[tokio::test]
async fn empty_and_failed_lookups_keep_the_set() {
    let dns = TestDns::start().await;
    let name = "derp.example.";
    dns.set_a(name, vec![loopback(2), loopback(3)]);
    let run = Running::start(&dns, name, RecordKind::Addresses { port: 443 }, 64);
    let want = at(443, &[loopback(2), loopback(3)]);
    run.expect_peers(&want).await;

    // The name exists but has no addresses (every pod unready, or a blip).
    dns.set_a(name, vec![]);
    run.expect_growth(EMPTY, 3.0).await;
    assert_eq!(run.peers(), want);

    // NXDOMAIN (the Service deleted and re-created), SERVFAIL, REFUSED, and no answer.
    dns.remove(name);
    run.expect_growth(ERROR, 3.0).await;
    assert_eq!(run.peers(), want);
    for code in [ResponseCode::ServFail, ResponseCode::Refused] {
        dns.set_failure(name, code);
        run.expect_growth(ERROR, 2.0).await;
        assert_eq!(run.peers(), want, "{code}");
    }
    dns.set_silent(name);
    run.expect_growth(ERROR, 2.0).await;
    assert_eq!(run.peers(), want);
    assert_eq!(
        run.metric(r#"derp_mesh_dns_changes_total{change="removed"}"#),
        0.0
    );

    // Answers come back: the set follows them again.
    dns.set_a(name, vec![loopback(4)]);
    run.expect_peers(&at(443, &[loopback(4)])).await;
    assert!(run.metric(OK) >= 2.0);
    run.stop().await;
}

#[tokio::test]
async fn more_srv_targets_than_max_peers_resolves_the_first_by_name() {
    let dns = TestDns::start().await;
    let name = "_derp._tcp.many.example.";
    let targets = [
        "d.many.example.",
        "b.many.example.",
        "c.many.example.",
        "a.many.example.",
    ];
    dns.set_srv(name, targets.iter().map(|t| (443, *t)).collect());
    for (i, target) in targets.iter().enumerate() {
        dns.set_a(target, vec![loopback(10 + i as u8)]);
    }
    let run = Running::start(&dns, name, RecordKind::Srv, 2);
    // a → 127.0.0.13, b → 127.0.0.11.
    run.expect_peers(&at(443, &[loopback(11), loopback(13)]))
        .await;
    run.expect_growth("derp_mesh_dns_truncated_total", 2.0)
        .await;
    run.stop().await;
}
