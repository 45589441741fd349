//! Pebble (Let's Encrypt's ACME test server) on loopback, for the ACME tests: its own HTTPS
//! certificate from a throwaway CA (rcgen), a config with the validation ports of the relay under
//! test, and DNS through a [`derp_tests::dns::TestDns`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use derp_proto::io::tls::{ServerVerify, client_config};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Pebble's binary: `PEBBLE_BIN` (set by `scripts/test.sh`) or `.tools/bin/pebble` (installed
/// by `scripts/install-pebble.sh`). `None` prints why; under `CI=true` absence is a failure.
pub fn pebble_bin() -> Option<PathBuf> {
    let candidate = std::env::var_os("PEBBLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/pebble"));
    if candidate.exists() {
        return Some(candidate);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("Pebble not found at {candidate:?}; CI must run scripts/install-pebble.sh first");
    }
    eprintln!(
        "SKIPPED: Pebble not found at {candidate:?} (run scripts/install-pebble.sh or set PEBBLE_BIN)"
    );
    None
}

/// The CA and certificate Pebble's HTTPS endpoints serve; the relay trusts the CA through
/// `--acme-ca-file`. Generated before Pebble starts, so a relay can be pointed at a Pebble
/// that is not running yet.
pub struct PebbleTls {
    /// The CA certificate (PEM), for `--acme-ca-file`.
    pub ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    roots: Arc<RootCertStore>,
}

impl PebbleTls {
    /// A CA and a certificate for `localhost` and 127.0.0.1, written below `dir`.
    pub fn generate(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Pebble directory test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let this = Self {
            ca_file: dir.join("pebble-ca.pem"),
            cert_file: dir.join("pebble-cert.pem"),
            key_file: dir.join("pebble-key.pem"),
            roots: {
                let mut roots = RootCertStore::empty();
                roots.add(ca_cert.der().clone()).unwrap();
                Arc::new(roots)
            },
        };
        std::fs::write(&this.ca_file, ca_cert.pem()).unwrap();
        std::fs::write(&this.cert_file, cert.pem()).unwrap();
        std::fs::write(&this.key_file, key.serialize_pem()).unwrap();
        this
    }
}

/// Where Pebble listens and validates.
pub struct PebbleConfig {
    /// The ACME directory's port (127.0.0.1).
    pub listen_port: u16,
    /// Where the VA sends HTTP-01 requests (the relay's `--http-port`).
    pub http_port: u16,
    /// Where the VA makes TLS-ALPN-01 handshakes (the relay's main port).
    pub tls_port: u16,
    /// The DNS server that resolves the test hostnames.
    pub dns: SocketAddr,
    /// Certificate lifetime in seconds (Pebble's default profile: 90 days).
    pub validity_secs: u64,
}

/// A running Pebble, killed on drop.
pub struct Pebble {
    child: Child,
    listen_port: u16,
    management_port: u16,
    roots: Arc<RootCertStore>,
    log: PathBuf,
}

impl Pebble {
    /// Starts `bin` with `cfg` in `dir` and waits until its directory answers TCP.
    pub async fn start(bin: &Path, dir: &Path, tls: &PebbleTls, cfg: &PebbleConfig) -> Self {
        let management_port = super::free_port();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", cfg.listen_port),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": tls.cert_file,
                "privateKey": tls.key_file,
                "httpPort": cfg.http_port,
                "tlsPort": cfg.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "keyAlgorithm": "ecdsa",
                "profiles": {
                    "default": {
                        "description": "test profile",
                        "validityPeriod": cfg.validity_secs,
                    }
                }
            }
        });
        let config_file = dir.join("pebble-config.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &cfg.dns.to_string()])
            // Validate at once instead of after a random 0-15 s, and never reject nonces on
            // purpose: the tests are about the relay, not the client's retry of bad nonces.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates again, so each issuance exercises a challenge.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start pebble");
        let mut pebble = Self {
            child,
            listen_port: cfg.listen_port,
            management_port,
            roots: Arc::clone(&tls.roots),
            log,
        };
        for _ in 0..1000 {
            if let Some(status) = pebble.child.try_wait().unwrap() {
                panic!("pebble exited ({status}):\n{}", pebble.log());
            }
            if TcpStream::connect(("127.0.0.1", cfg.listen_port))
                .await
                .is_ok()
                && TcpStream::connect(("127.0.0.1", management_port))
                    .await
                    .is_ok()
            {
                return pebble;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("pebble not listening after 10 s:\n{}", pebble.log());
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen_port)
    }

    /// What Pebble logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The root that issued certificates chain to (Pebble makes a new one each start), from
    /// its management endpoint `/roots/0`.
    pub async fn issuing_root(&self) -> Arc<RootCertStore> {
        let config = client_config(ServerVerify::Roots(Arc::clone(&self.roots)));
        let tcp = TcpStream::connect(("127.0.0.1", self.management_port))
            .await
            .unwrap();
        let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS to Pebble's management endpoint");
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        // Go closes without close_notify sometimes; what arrived is enough.
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut body.as_bytes()) {
            roots.add(cert.expect("PEM root")).unwrap();
        }
        assert!(!roots.is_empty(), "no root from Pebble:\n{text}");
        Arc::new(roots)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
