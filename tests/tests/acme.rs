//! `--certmode=letsencrypt` end to end against Pebble (Let's Encrypt's ACME test server): our
//! `derper` binary runs as a child process with the real flags, Pebble validates it over
//! loopback (DNS from a test server that answers 127.0.0.1 for the test hostname), and clients
//! verify what it serves against Pebble's issuing root.
//!
//! Needs Pebble (`scripts/install-pebble.sh`, found through `PEBBLE_BIN`) and our binary
//! (`cargo build -p derper`); without them each test says SKIPPED, and fails under `CI=true`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::hostile::{DerperProcess, metric, scrape};
use common::pebble::{Pebble, PebbleConfig, PebbleTls, pebble_bin};
use common::{free_port, our_derper, recv_packet};
use derp_proto::io::Client;
use derp_proto::io::tls::{ServerVerify, client_config};
use derp_tests::dns::TestDns;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const HOST: &str = "derp.test";
/// Pebble's default lifetime (90 days): renewal is two months away.
const LONG_VALIDITY: u64 = 90 * 86_400;
/// Budget for an issuance: Pebble validates at once, so this is slack for a loaded machine.
const ISSUE_BUDGET: Duration = Duration::from_secs(60);

/// Everything one test runs: Pebble's TLS material, the DNS, the relay's ports and dirs.
struct Setup {
    derper: PathBuf,
    pebble: PathBuf,
    dir: tempfile::TempDir,
    dns: TestDns,
    tls: PebbleTls,
    main_port: u16,
    http_port: u16,
    pebble_port: u16,
}

impl Setup {
    async fn new() -> Option<Self> {
        let derper = our_derper()?;
        let pebble = pebble_bin()?;
        let dir = tempfile::tempdir().unwrap();
        let dns = TestDns::start().await;
        dns.set_a(HOST, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let tls = PebbleTls::generate(dir.path());
        Some(Self {
            derper,
            pebble,
            dns,
            tls,
            main_port: free_port(),
            http_port: free_port(),
            pebble_port: free_port(),
            dir,
        })
    }

    async fn start_pebble(&self, validity_secs: u64) -> Pebble {
        let cfg = PebbleConfig {
            listen_port: self.pebble_port,
            http_port: self.http_port,
            tls_port: self.main_port,
            dns: self.dns.addr(),
            validity_secs,
        };
        Pebble::start(&self.pebble, self.dir.path(), &self.tls, &cfg).await
    }

    /// Our relay in letsencrypt mode against this setup's Pebble, with or without its plain
    /// listener.
    async fn start_relay(&self, name: &str, challenge: &str, plain: bool) -> DerperProcess {
        let config = self.dir.path().join("derper.toml");
        // Fast retries so the failure tests do not wait a minute.
        std::fs::write(
            &config,
            "[tls]\nacme_retry_min = \"200ms\"\nacme_retry_max = \"1s\"\n",
        )
        .unwrap();
        let args: Vec<String> = [
            "--config-file",
            config.to_str().unwrap(),
            "--stun=false",
            "--certmode",
            "letsencrypt",
            "--hostname",
            HOST,
            "--certdir",
            self.dir.path().join("certs").to_str().unwrap(),
            "--acme-directory",
            &format!("https://127.0.0.1:{}/dir", self.pebble_port),
            "--acme-ca-file",
            self.tls.ca_file.to_str().unwrap(),
            "--acme-email",
            "ops@derp.test",
            "--acme-challenge",
            challenge,
            "--http-port",
            &if plain {
                self.http_port.to_string()
            } else {
                "-1".to_owned()
            },
        ]
        .map(str::to_owned)
        .to_vec();
        DerperProcess::start(
            &self.derper,
            self.dir.path(),
            name,
            self.main_port,
            format!("https://{HOST}:{}/derp", self.main_port),
            ServerVerify::Insecure,
            &args,
        )
        .await
    }
}

/// The serial of the leaf a TLS client verifying against `roots` sees on `port` with SNI
/// [`HOST`], or why the handshake failed.
async fn served_serial(port: u16, roots: &Arc<RootCertStore>) -> Result<Vec<u8>, String> {
    let config = client_config(ServerVerify::Roots(Arc::clone(roots)));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(HOST).unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok(derp_proto::cert::parse_cert_summary(&leaf).unwrap().serial)
}

/// Polls until the relay serves a certificate that verifies and `accept` likes.
async fn wait_for_serial(
    relay: &DerperProcess,
    pebble: &Pebble,
    port: u16,
    budget: Duration,
    accept: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        // Pebble's root is fetched each round: it is only known once Pebble runs.
        let roots = pebble.issuing_root().await;
        let last = match served_serial(port, &roots).await {
            Ok(serial) if accept(&serial) => return serial,
            Ok(serial) => format!("still serving serial {}", hex::encode(serial)),
            Err(e) => e,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "no acceptable certificate within {budget:?} ({last})\nrelay log:\n{}\npebble log:\n{}",
            relay.log(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A DERP client of the relay verifying against Pebble's root.
async fn derp_client(relay: &DerperProcess, roots: &Arc<RootCertStore>) -> Client {
    let mut opts = relay.options();
    opts.verify = ServerVerify::Roots(Arc::clone(roots));
    Client::connect(&opts)
        .await
        .expect("DERP over the ACME certificate")
}

/// `a` sends to `b` and `b` receives it.
async fn relays(a: &mut Client, b: &mut Client, b_key: &derp_proto::NodePublicKey, payload: &[u8]) {
    a.send_packet(b_key, payload).await.unwrap();
    let (_, got) = recv_packet(b).await;
    assert_eq!(got, payload);
}

fn attempts(text: &str, outcome: &str) -> f64 {
    metric(
        text,
        &format!("derp_acme_attempts_total{{outcome=\"{outcome}\"}}"),
    )
}

fn all_attempts(text: &str) -> f64 {
    [
        "issued",
        "account_error",
        "order_error",
        "validation_failed",
        "finalize_error",
    ]
    .iter()
    .map(|o| attempts(text, o))
    .sum()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// HTTP-01 on `--http-port`; DERP works over the issued certificate; a restart serves the
/// cached certificate at once and orders nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_and_restart_reuses_the_cache() {
    let Some(s) = Setup::new().await else { return };
    let pebble = s.start_pebble(LONG_VALIDITY).await;
    let relay = s.start_relay("http01", "http-01", true).await;
    let serial = wait_for_serial(&relay, &pebble, s.main_port, ISSUE_BUDGET, |_| true).await;
    let roots = pebble.issuing_root().await;

    let mut a = derp_client(&relay, &roots).await;
    let mut b = derp_client(&relay, &roots).await;
    let b_pub = b.public_key();
    relays(&mut a, &mut b, &b_pub, b"over an ACME certificate").await;

    let text = scrape(relay.metrics).await;
    assert_eq!(attempts(&text, "issued"), 1.0, "{text}");
    assert!(
        metric(&text, "derp_acme_challenges_served_total{type=\"http-01\"}") >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "derp_acme_challenges_served_total{type=\"tls-alpn-01\"}"
        ),
        0.0
    );
    let not_after = metric(&text, "derp_cert_not_after_timestamp_seconds");
    assert!(not_after > unix_now() + 80.0 * 86_400.0, "{text}");
    drop((a, b));
    drop(relay);

    // Restart on the same --certdir: the cached certificate is served from the first
    // handshake, and no attempt is made (renewal is two months away).
    let relay = s.start_relay("http01-restart", "http-01", true).await;
    let again = served_serial(s.main_port, &roots)
        .await
        .expect("cached certificate");
    assert_eq!(again, serial, "the cached certificate is served");
    let renewal_due = || async {
        metric(
            &scrape(relay.metrics).await,
            "derp_acme_renewal_timestamp_seconds",
        )
    };
    assert!(
        common::eventually(|| async { renewal_due().await > 0.0 }).await,
        "renewal scheduled:\n{}",
        relay.log()
    );
    let renewal = renewal_due().await;
    assert!(renewal > unix_now() + 50.0 * 86_400.0, "{renewal}");
    assert_eq!(
        all_attempts(&scrape(relay.metrics).await),
        0.0,
        "no new order"
    );
}

/// TLS-ALPN-01 on the main listener, with the plain listener off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_on_the_main_listener() {
    let Some(s) = Setup::new().await else { return };
    let pebble = s.start_pebble(LONG_VALIDITY).await;
    let relay = s.start_relay("alpn", "tls-alpn-01", false).await;
    wait_for_serial(&relay, &pebble, s.main_port, ISSUE_BUDGET, |_| true).await;
    let roots = pebble.issuing_root().await;
    let mut a = derp_client(&relay, &roots).await;
    let mut b = derp_client(&relay, &roots).await;
    let b_pub = b.public_key();
    relays(&mut a, &mut b, &b_pub, b"tls-alpn-01").await;
    let text = scrape(relay.metrics).await;
    assert_eq!(attempts(&text, "issued"), 1.0, "{text}");
    assert!(
        metric(
            &text,
            "derp_acme_challenges_served_total{type=\"tls-alpn-01\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", s.http_port))
            .await
            .is_err(),
        "no plain listener with --http-port -1"
    );
}

/// A short-lived certificate is renewed at 2/3 of its life: new handshakes see a new serial,
/// while clients connected before stay connected and keep relaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_under_live_connections() {
    let Some(s) = Setup::new().await else { return };
    // Renewal is due 8 s after issuance.
    let pebble = s.start_pebble(12).await;
    let relay = s.start_relay("renew", "http-01", true).await;
    let first = wait_for_serial(&relay, &pebble, s.main_port, ISSUE_BUDGET, |_| true).await;
    let roots = pebble.issuing_root().await;
    let mut a = derp_client(&relay, &roots).await;
    let mut b = derp_client(&relay, &roots).await;
    let (a_pub, b_pub) = (a.public_key(), b.public_key());
    relays(&mut a, &mut b, &b_pub, b"before renewal").await;

    let second = wait_for_serial(&relay, &pebble, s.main_port, ISSUE_BUDGET, |serial| {
        serial != first.as_slice()
    })
    .await;
    assert_ne!(first, second);
    // The connections made under the first certificate are untouched.
    relays(&mut a, &mut b, &b_pub, b"after renewal").await;
    relays(&mut b, &mut a, &a_pub, b"and back").await;
    let text = scrape(relay.metrics).await;
    assert!(attempts(&text, "issued") >= 2.0, "{text}");
    assert_eq!(metric(&text, "derp_current_connections"), 2.0, "{text}");
}

/// The CA unreachable: every attempt fails, is counted and retried, the error is logged once,
/// the relay keeps serving its plain listener; once the CA comes up the next retry issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ca_is_retried_then_issues() {
    let Some(s) = Setup::new().await else { return };
    let relay = s.start_relay("down", "http-01", true).await;
    assert!(
        eventually_for(Duration::from_secs(30), || async {
            attempts(&scrape(relay.metrics).await, "account_error") >= 3.0
        })
        .await,
        "retries counted:\n{}",
        relay.log()
    );
    let log = relay.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ACME certificate attempt failed"))
        .collect();
    assert_eq!(failures.len(), 1, "logged once:\n{log}");
    assert!(
        failures[0].contains(&format!("127.0.0.1:{}", s.pebble_port)),
        "names the CA: {}",
        failures[0]
    );
    assert!(
        failures[0].contains("no certificate yet"),
        "{}",
        failures[0]
    );
    // Still serving: the plain listener answers, TLS has nothing to offer yet.
    assert_eq!(http_status(s.http_port, "/generate_204").await, 204);
    let scratch = Arc::new(RootCertStore::empty());
    assert!(served_serial(s.main_port, &scratch).await.is_err());

    let pebble = s.start_pebble(LONG_VALIDITY).await;
    wait_for_serial(&relay, &pebble, s.main_port, ISSUE_BUDGET, |_| true).await;
    let roots = pebble.issuing_root().await;
    let mut a = derp_client(&relay, &roots).await;
    let mut b = derp_client(&relay, &roots).await;
    let b_pub = b.public_key();
    relays(&mut a, &mut b, &b_pub, b"after the CA came back").await;
    assert_eq!(attempts(&scrape(relay.metrics).await, "issued"), 1.0);
}

/// Like `common::eventually` with a longer budget, for retries paced by backoff.
async fn eventually_for<F, Fut>(budget: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status code of a plain GET.
async fn http_status(port: u16, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The CA answers with an error (validation fails: the name resolves to an address where
/// nothing answers): counted as `validation_failed` with the CA's reason in the one log line,
/// retried; once DNS is fixed the next retry issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_validation_is_counted_and_retried() {
    let Some(s) = Setup::new().await else { return };
    // 127.0.0.2 is loopback too, but the relay listens on 127.0.0.1 only.
    s.dns
        .set_a(HOST, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
    let pebble = s.start_pebble(LONG_VALIDITY).await;
    let relay = s.start_relay("invalid", "http-01", true).await;
    assert!(
        eventually_for(Duration::from_secs(30), || async {
            attempts(&scrape(relay.metrics).await, "validation_failed") >= 2.0
        })
        .await,
        "validation failures counted:\n{}",
        relay.log()
    );
    let log = relay.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ACME certificate attempt failed"))
        .collect();
    assert_eq!(failures.len(), 1, "logged once:\n{log}");
    assert!(
        failures[0].contains("validation failed") && failures[0].contains("127.0.0.2"),
        "the CA's reason: {}",
        failures[0]
    );

    s.dns.set_a(HOST, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    wait_for_serial(&relay, &pebble, s.main_port, ISSUE_BUDGET, |_| true).await;
    assert_eq!(attempts(&scrape(relay.metrics).await, "issued"), 1.0);
}
