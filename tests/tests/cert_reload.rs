//! Manual certificates (`--certmode=manual`) reloaded while clients stay connected: files
//! replaced the way a Kubernetes Secret volume does it (an atomic swap of a `..data` directory
//! symlink), SIGHUP, and bad new files (garbage, a key that does not match) that must leave the
//! current certificate in place, counted in `derp_cert_reload_total` and logged.
//!
//! Runs our `derper` binary as a child process (`cargo build -p derper` first).

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use common::hostile::{DerperProcess, metric, scrape};
use common::{eventually, free_port, our_derper, recv_packet};
use derp_proto::io::Client;
use derp_proto::io::tls::{ServerVerify, client_config};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

const HOST: &str = "derp.test";

/// A test CA the clients trust.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    roots: Arc<RootCertStore>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "reload test CA");
        let cert = params.self_signed(&key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        Self {
            cert,
            key,
            roots: Arc::new(roots),
        }
    }

    /// A leaf for [`HOST`]: (certificate PEM, key PEM, SHA-256 hex of the leaf).
    fn issue(&self) -> (String, String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![HOST.to_owned()])
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        (
            cert.pem(),
            key.serialize_pem(),
            hex::encode(Sha256::digest(cert.der())),
        )
    }
}

/// The Kubernetes Secret volume layout: `<dir>/derp.test.crt -> ..data/derp.test.crt`, and
/// `..data -> ..<version>`, swapped atomically by renaming a new symlink over `..data`.
struct SecretVolume {
    dir: std::path::PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path, cert: &str, key: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut v = Self {
            dir: dir.to_owned(),
            version: 0,
        };
        v.publish(cert, key);
        symlink(
            format!("..data/{HOST}.crt"),
            dir.join(format!("{HOST}.crt")),
        )
        .unwrap();
        symlink(
            format!("..data/{HOST}.key"),
            dir.join(format!("{HOST}.key")),
        )
        .unwrap();
        v
    }

    /// Writes a new version and swaps `..data` to it in one rename.
    fn publish(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        let version = self.dir.join(&name);
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join(format!("{HOST}.crt")), cert).unwrap();
        std::fs::write(version.join(format!("{HOST}.key")), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// SHA-256 hex of the leaf new handshakes get.
async fn served(port: u16, roots: &Arc<RootCertStore>) -> String {
    let config = client_config(ServerVerify::Roots(Arc::clone(roots)));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    hex::encode(Sha256::digest(
        &tls.get_ref().1.peer_certificates().unwrap()[0],
    ))
}

async fn relays(a: &mut Client, b: &mut Client, payload: &[u8]) {
    a.send_packet(&b.public_key(), payload).await.unwrap();
    let (_, got) = recv_packet(b).await;
    assert_eq!(got, payload);
}

fn reloads(text: &str, outcome: &str) -> f64 {
    metric(
        text,
        &format!("derp_cert_reload_total{{outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_certificate_reloads_without_dropping_clients() {
    let Some(bin) = our_derper() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (cert_a, key_a, sha_a) = ca.issue();
    let certs = dir.path().join("certs");
    let mut volume = SecretVolume::new(&certs, &cert_a, &key_a);
    let port = free_port();
    let args: Vec<String> = [
        "--stun=false",
        "--http-port",
        "-1",
        "--certmode",
        "manual",
        "--hostname",
        HOST,
        "--certdir",
        certs.to_str().unwrap(),
        "--cert-reload-interval",
        "50ms",
    ]
    .map(str::to_owned)
    .to_vec();
    let relay = DerperProcess::start(
        &bin,
        dir.path(),
        "manual",
        port,
        format!("https://{HOST}:{port}/derp"),
        ServerVerify::Roots(Arc::clone(&ca.roots)),
        &args,
    )
    .await;
    assert_eq!(served(port, &ca.roots).await, sha_a);
    let mut a = Client::connect(&relay.options()).await.unwrap();
    let mut b = Client::connect(&relay.options()).await.unwrap();
    relays(&mut a, &mut b, b"under certificate A").await;

    // A new Secret version: served to new handshakes, the old connections go on.
    let (cert_b, key_b, sha_b) = ca.issue();
    volume.publish(&cert_b, &key_b);
    assert!(
        eventually(|| async { served(port, &ca.roots).await == sha_b }).await,
        "B served:\n{}",
        relay.log()
    );
    let text = scrape(relay.metrics).await;
    assert_eq!(reloads(&text, "reloaded"), 1.0, "{text}");
    relays(&mut a, &mut b, b"after the swap").await;
    relays(&mut b, &mut a, b"both ways").await;

    // Garbage: refused once, B stays.
    volume.publish("not a certificate", &key_b);
    assert!(
        eventually(|| async { reloads(&scrape(relay.metrics).await, "failed") == 1.0 }).await,
        "garbage counted:\n{}",
        relay.log()
    );
    assert_eq!(served(port, &ca.roots).await, sha_b);

    // A certificate with someone else's key: refused, B stays.
    let (cert_c, _, _) = ca.issue();
    volume.publish(&cert_c, &key_b);
    assert!(
        eventually(|| async { reloads(&scrape(relay.metrics).await, "failed") == 2.0 }).await,
        "mismatch counted:\n{}",
        relay.log()
    );
    assert_eq!(served(port, &ca.roots).await, sha_b);

    // SIGHUP re-reads even unchanged (still bad) files, and reports it.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(relay.pid() as i32, libc::SIGHUP) }, 0);
    assert!(
        eventually(|| async { reloads(&scrape(relay.metrics).await, "failed") == 3.0 }).await,
        "SIGHUP counted:\n{}",
        relay.log()
    );
    let log = relay.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("certificate reload refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "one line per refusal:\n{log}");
    assert!(
        refusals[0].contains("CERTIFICATE"),
        "says why: {}",
        refusals[0]
    );
    assert!(
        refusals[1].contains("does not match"),
        "says why: {}",
        refusals[1]
    );

    // Good files again.
    let (cert_d, key_d, sha_d) = ca.issue();
    volume.publish(&cert_d, &key_d);
    assert!(
        eventually(|| async { served(port, &ca.roots).await == sha_d }).await,
        "D served:\n{}",
        relay.log()
    );
    relays(&mut a, &mut b, b"still connected").await;
    let text = scrape(relay.metrics).await;
    assert_eq!(reloads(&text, "reloaded"), 2.0, "{text}");
    assert_eq!(reloads(&text, "failed"), 3.0, "{text}");
    assert_eq!(metric(&text, "derp_current_connections"), 2.0, "{text}");
}
