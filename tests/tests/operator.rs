//! Operator features of our `derper` binary, end to end: admission through a webhook speaking
//! derper's JSON (allow, deny, hang, revocation, mesh bypass), the accept-rate limit, rate
//! config reload on SIGHUP, the drain (SIGTERM, POST /admin/drain, a second signal), the admin
//! endpoints, and /bootstrap-dns.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::hostile::{DerperProcess, metric};
use derp_proto::io::Client;
use derp_proto::io::tls::ServerVerify;
use derp_proto::{MeshKey, NodePublicKey, NodeSecretKey, ServerToClient};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A webhook answering `{"Allow": …}` from an allow-list of node keys, counting calls;
/// `hang` makes it never answer.
#[derive(Clone, Default)]
struct Webhook {
    allowed: Arc<Mutex<HashSet<String>>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl Webhook {
    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            me.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if me.hang.load(std::sync::atomic::Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let key = v["NodePublic"].as_str().unwrap_or_default().to_string();
                            let allow = me.allowed.lock().unwrap().contains(&key);
                            let text = format!("{{\"Allow\":{allow}}}");
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(text),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn allow(&self, key: &NodePublicKey) {
        self.allowed
            .lock()
            .unwrap()
            .insert(format!("nodekey:{}", key.to_hex()));
    }

    fn revoke(&self, key: &NodePublicKey) {
        self.allowed
            .lock()
            .unwrap()
            .remove(&format!("nodekey:{}", key.to_hex()));
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn start(dir: &std::path::Path, name: &str, args: &[&str]) -> Option<DerperProcess> {
    DerperProcess::plain(dir, name, common::free_port(), args).await
}

async fn client_with(relay: &DerperProcess, secret: &NodeSecretKey) -> Result<Client, String> {
    let mut o = relay.options();
    o.secret = secret.clone();
    Client::connect(&o).await.map_err(|e| e.to_string())
}

/// Sends one packet a → b and checks it arrives.
async fn relays(a: &mut Client, b: &mut Client) {
    a.send_packet(&b.public_key(), b"hello").await.unwrap();
    let (src, data) = common::recv_packet(b).await;
    assert_eq!(src, a.public_key());
    assert_eq!(data, b"hello");
}

/// One HTTP/1.1 request to `addr`; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// Receives frames until a Health frame arrives; returns its text.
async fn next_health(c: &mut Client) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.recv()).await {
            Ok(Ok(ServerToClient::Health(t))) => return String::from_utf8_lossy(&t).into_owned(),
            Ok(Ok(_)) => continue,
            other => panic!("no Health frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_webhook_allows_denies_revokes_and_lets_mesh_peers_by() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::default();
    let hook_addr = hook.serve().await;
    let psk = dir.path().join("mesh.key");
    let mesh_key = MeshKey::from_bytes([7; 32]);
    std::fs::write(&psk, hex::encode([7u8; 32])).unwrap();
    let url = format!("http://{hook_addr}/verify");
    let Some(relay) = start(
        dir.path(),
        "admission",
        &[
            "--verify-client-url",
            &url,
            "--verify-client-reverify=1s",
            "--verify-client-timeout=1s",
            "--mesh-psk-file",
            psk.to_str().unwrap(),
        ],
    )
    .await
    else {
        return;
    };
    let (a_key, b_key) = (NodeSecretKey::generate(), NodeSecretKey::generate());
    hook.allow(&a_key.public_key());
    hook.allow(&b_key.public_key());
    let mut a = client_with(&relay, &a_key).await.expect("allowed client a");
    let mut b = client_with(&relay, &b_key).await.expect("allowed client b");
    relays(&mut a, &mut b).await;

    // A key the webhook does not know is refused; so is its reconnect (from the cache).
    let stranger = NodeSecretKey::generate();
    assert!(client_with(&relay, &stranger).await.is_err());
    let calls = hook.calls();
    assert!(client_with(&relay, &stranger).await.is_err());
    assert_eq!(hook.calls(), calls, "the refusal was cached");

    // A mesh peer is not asked.
    let mut o = relay.options();
    o.mesh_key = Some(mesh_key);
    Client::connect(&o)
        .await
        .expect("mesh peer admitted without the webhook");

    // Revocation: once the webhook stops allowing b, re-verification disconnects it.
    hook.revoke(&b_key.public_key());
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if b.recv().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "revoked client still connected");
    assert!(client_with(&relay, &b_key).await.is_err());

    // A hanging webhook: new keys are refused at the deadline; a's cached admission stands.
    hook.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        client_with(&relay, &NodeSecretKey::generate())
            .await
            .is_err()
    );
    drop(a);
    client_with(&relay, &a_key)
        .await
        .expect("cached admission survives a hanging webhook");

    let m = relay.scrape().await;
    for (series, at_least) in [
        (r#"derp_admission_decisions_total{outcome="allowed"}"#, 2.0),
        (r#"derp_admission_decisions_total{outcome="denied"}"#, 1.0),
        (
            r#"derp_admission_decisions_total{outcome="denied_cached"}"#,
            1.0,
        ),
        (
            r#"derp_admission_decisions_total{outcome="allowed_cached"}"#,
            1.0,
        ),
        (
            r#"derp_admission_decisions_total{outcome="fail_closed"}"#,
            1.0,
        ),
        (
            r#"derp_admission_decisions_total{outcome="mesh_peer"}"#,
            1.0,
        ),
        (r#"derp_admission_calls_total{result="timeout"}"#, 1.0),
        ("derp_admission_revoked_total", 1.0),
        (
            r#"derp_handshake_failures_total{reason="not_admitted"}"#,
            3.0,
        ),
    ] {
        assert!(
            metric(&m, series) >= at_least,
            "{series} < {at_least}:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_rate_limit_closes_the_excess_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(relay) = start(
        dir.path(),
        "accept",
        &[
            "--accept-connection-limit=0.5",
            "--accept-connection-burst=3",
        ],
    )
    .await
    else {
        return;
    };
    // The start-up probes of DerperProcess used some of the burst; ten quick connections
    // certainly exceed what is left plus the refill.
    let mut closed = 0;
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(b"GET /derp/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        if out.is_empty() {
            closed += 1;
        }
    }
    assert!(closed >= 6, "only {closed} of 10 refused");
    let m = relay.scrape().await;
    assert!(
        metric(&m, "tls_listener_rejected_connections") >= f64::from(closed),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_config_reloads_on_sighup_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let rate = dir.path().join("rate.json");
    std::fs::write(
        &rate,
        r#"{"PerClientRateLimitBytesPerSec": 1000000, "PerClientRateBurstBytes": 2000000}"#,
    )
    .unwrap();
    let Some(relay) = start(
        dir.path(),
        "rate",
        &["--rate-config", rate.to_str().unwrap()],
    )
    .await
    else {
        return;
    };
    let series = "derp_rate_limit_per_client_bytes_per_second";
    assert_eq!(metric(&relay.scrape().await, series), 1_000_000.0);
    let mut a = client_with(&relay, &NodeSecretKey::generate())
        .await
        .unwrap();
    let mut b = client_with(&relay, &NodeSecretKey::generate())
        .await
        .unwrap();

    std::fs::write(&rate, r#"{"PerClientRateLimitBytesPerSec": 5000000}"#).unwrap();
    let hup = |pid: u32| unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    assert_eq!(hup(relay.pid()), 0);
    assert!(
        common::eventually(|| async { metric(&relay.scrape().await, series) == 5_000_000.0 }).await
    );
    // The burst is raised to derper's floor (a full frame).
    assert_eq!(
        metric(
            &relay.scrape().await,
            "derp_rate_limit_per_client_burst_bytes"
        ),
        65568.0
    );

    // Garbage: the limit in force stays, the failure is counted, clients keep relaying.
    std::fs::write(&rate, "{ not json").unwrap();
    assert_eq!(hup(relay.pid()), 0);
    assert!(
        common::eventually(|| async {
            metric(
                &relay.scrape().await,
                r#"derp_rate_config_reloads_total{result="error"}"#,
            ) == 1.0
        })
        .await
    );
    assert_eq!(metric(&relay.scrape().await, series), 5_000_000.0);
    relays(&mut a, &mut b).await;
    assert!(
        relay.log().contains("rate config reload failed"),
        "{}",
        relay.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_see_health_and_restarting_readyz_turns_503() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut relay) = start(dir.path(), "drain", &["--drain-grace=60s"]).await else {
        return;
    };
    assert_eq!(http(relay.metrics, "GET", "/readyz").await.0, 200);
    let mut a = client_with(&relay, &NodeSecretKey::generate())
        .await
        .unwrap();
    assert_eq!(unsafe { libc::kill(relay.pid() as i32, libc::SIGTERM) }, 0);
    let text = next_health(&mut a).await;
    assert!(text.contains("draining"), "{text}");
    let restarting = loop {
        match tokio::time::timeout(Duration::from_secs(5), a.recv()).await {
            Ok(Ok(ServerToClient::Restarting {
                reconnect_in_ms, ..
            })) => break reconnect_in_ms,
            Ok(Ok(_)) => continue,
            other => panic!("no Restarting: {other:?}"),
        }
    };
    assert!(restarting > 0);
    // Not ready, still alive; new clients are refused while existing ones stay connected.
    assert_eq!(http(relay.metrics, "GET", "/readyz").await.0, 503);
    assert_eq!(http(relay.metrics, "GET", "/healthz").await.0, 200);
    assert_eq!(metric(&relay.scrape().await, "derp_draining"), 1.0);
    assert!(
        client_with(&relay, &NodeSecretKey::generate())
            .await
            .is_err()
    );
    a.send(&derp_proto::ClientToServer::Ping([9; 8]))
        .await
        .unwrap();
    // The last client leaves: the drain is complete and the process exits 0 long before the
    // 60 s grace.
    drop(a);
    let exited = common::eventually(|| {
        let done = !relay.running();
        async move { done }
    })
    .await;
    assert!(
        exited,
        "still running after its last client left:\n{}",
        relay.log()
    );
    assert!(relay.exit_status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_then_a_second_signal_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut relay) = start(dir.path(), "admin", &["--drain-grace=10m"]).await else {
        return;
    };
    let mut a = client_with(&relay, &NodeSecretKey::generate())
        .await
        .unwrap();
    assert_eq!(http(relay.metrics, "GET", "/admin/drain").await.0, 405);
    assert_eq!(http(relay.metrics, "POST", "/admin/drain").await.0, 202);
    assert!(next_health(&mut a).await.contains("draining"));
    assert_eq!(http(relay.metrics, "GET", "/readyz").await.0, 503);
    // The client stays; a SIGTERM now ends the drain at once instead of after 10 minutes.
    assert_eq!(unsafe { libc::kill(relay.pid() as i32, libc::SIGTERM) }, 0);
    let exited = common::eventually(|| {
        let done = !relay.running();
        async move { done }
    })
    .await;
    assert!(exited, "second signal did not stop it:\n{}", relay.log());
    assert!(relay.exit_status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_dns_serves_configured_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let Some(relay) = start(dir.path(), "dns", &["--bootstrap-dns-names=localhost"]).await else {
        return;
    };
    let ok = common::eventually(|| async {
        let (status, body) = http(relay.addr, "GET", "/bootstrap-dns").await;
        status == 200 && body.contains("\"localhost\":[") && body.contains("127.0.0.1")
    })
    .await;
    assert!(ok, "{:?}", http(relay.addr, "GET", "/bootstrap-dns").await);
    let (_, body) = http(relay.addr, "GET", "/bootstrap-dns?q=example.com").await;
    assert_eq!(body, "{}");
    // The home page names no software.
    let (_, home) = http(relay.addr, "GET", "/").await;
    assert!(
        !home.to_lowercase().contains("tailscale") && !home.contains("derper"),
        "{home}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hear_when_the_region_is_unreachable_and_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("mesh.key");
    std::fs::write(&psk, hex::encode([3u8; 32])).unwrap();
    let peer_port = common::free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}/derp");
    let psk_arg = psk.to_str().unwrap();
    let Some(relay) = start(
        dir.path(),
        "lonely",
        &[
            "--mesh-psk-file",
            psk_arg,
            "--mesh-allow-plain",
            "--mesh-with",
            &peer_url,
        ],
    )
    .await
    else {
        return;
    };
    let mut a = client_with(&relay, &NodeSecretKey::generate())
        .await
        .unwrap();
    let text = next_health(&mut a).await;
    assert!(
        text.contains("cannot reach 1 of its region's relays"),
        "{text}"
    );
    // The peer comes up: the link connects and the problem clears.
    let bin = common::our_derper().unwrap();
    let _peer = DerperProcess::start(
        &bin,
        dir.path(),
        "peer",
        peer_port,
        peer_url.clone(),
        ServerVerify::Insecure,
        &["--stun=false", "--mesh-psk-file", psk_arg].map(String::from),
    )
    .await;
    assert_eq!(
        next_health(&mut a).await,
        "",
        "cleared once the peer is reachable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    // The test's key file is mode 0644, so the relay warns about it at start: a line to check.
    let Some(relay) = start(dir.path(), "json", &["--log-format=json"]).await else {
        return;
    };
    let log = relay.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing logged");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_derp_map_lists_the_region_and_drops_a_draining_node() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("mesh.key");
    std::fs::write(&psk, hex::encode([4u8; 32])).unwrap();
    let peer_port = common::free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}/derp");
    let psk_arg = psk.to_str().unwrap();
    let bin = common::our_derper().unwrap();
    let _peer = DerperProcess::start(
        &bin,
        dir.path(),
        "peer",
        peer_port,
        peer_url.clone(),
        ServerVerify::Insecure,
        &["--stun=false", "--mesh-psk-file", psk_arg].map(String::from),
    )
    .await;
    let Some(relay) = start(
        dir.path(),
        "mapped",
        &[
            "--mesh-psk-file",
            psk_arg,
            "--mesh-allow-plain",
            "--mesh-with",
            &peer_url,
            "--derp-map-region-id=900",
            "--derp-map-region-code=lab",
            "--derp-map-region-name=Lab",
            "--derp-map-node-name=900a",
            "--derp-map-ipv4=127.0.0.1",
            "--drain-grace=10m",
        ],
    )
    .await
    else {
        return;
    };
    let nodes = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["Regions"]["900"]["Nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Name"].as_str().unwrap().to_string())
            .collect()
    };
    let peer_name = format!("127.0.0.1:{peer_port}");
    let both = common::eventually(|| async {
        let (status, body) = http(relay.addr, "GET", "/derpmap").await;
        status == 200 && nodes(&body) == [peer_name.clone(), "900a".to_string()]
    })
    .await;
    let (_, body) = http(relay.addr, "GET", "/derpmap").await;
    assert!(both, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let own = &v["Regions"]["900"]["Nodes"][1];
    assert_eq!(own["IPv4"], "127.0.0.1");
    assert_eq!(own["RegionID"], 900);
    assert_eq!(v["Regions"]["900"]["RegionCode"], "lab");
    // Draining (a client keeps the drain going): this relay leaves its own map; the peer stays.
    let _client = client_with(&relay, &NodeSecretKey::generate())
        .await
        .unwrap();
    assert_eq!(http(relay.metrics, "POST", "/admin/drain").await.0, 202);
    let left = common::eventually(|| async {
        nodes(&http(relay.addr, "GET", "/derpmap").await.1) == [peer_name.clone()]
    })
    .await;
    assert!(left, "{}", http(relay.addr, "GET", "/derpmap").await.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derp_map_check_passes_a_live_map_and_names_a_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let Some(relay) = start(
        dir.path(),
        "checked",
        &[
            "--derp-map-region-id=900",
            "--derp-map-region-code=lab",
            "--derp-map-node-name=900a",
            "--derp-map-ipv4=127.0.0.1",
        ],
    )
    .await
    else {
        return;
    };
    let bin = common::our_derper().unwrap();
    let url = format!("http://{}/derpmap", relay.addr);
    let out = std::process::Command::new(&bin)
        .args(["derp-map", "check", &url, "--plain", "--no-stun"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok   region 900 node 900a"), "{text}");
    assert!(text.contains("1 nodes checked, 0 failed"), "{text}");

    // A map naming a node nobody serves: that node fails, by name, and the exit code says so.
    let dead = common::free_port();
    let map = dir.path().join("map.json");
    std::fs::write(
        &map,
        format!(r#"{{"Regions":{{"900":{{"RegionID":900,"RegionCode":"lab","Nodes":[{{"Name":"900z","RegionID":900,"HostName":"127.0.0.1","IPv4":"127.0.0.1","DERPPort":{dead}}}]}}}}}}"#),
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .args([
            "derp-map",
            "check",
            map.to_str().unwrap(),
            "--plain",
            "--no-stun",
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL region 900 node 900z"), "{text}");
    // Not a map at all: a clear error, exit 2.
    std::fs::write(&map, "garbage").unwrap();
    let out = std::process::Command::new(&bin)
        .args(["derp-map", "check", map.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a DERP map"));
}
