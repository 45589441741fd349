//! A meshed region over TLS for tests: a test CA, a mesh key, and Tailscale's derper started as
//! region nodes that dial each other (`--mesh-with`) and verify each other against the CA.
//!
//! Every node of a region serves the same leaf certificate, issued by the region's CA for
//! `localhost` and 127.0.0.1. So:
//! - Go derpers verify their mesh peers through `SSL_CERT_FILE` = [`TestCa::ca_pem`] (Go reads
//!   the system roots from it on Linux);
//! - our test clients pin the leaf ([`TestCa::verify`]), one pin for every node, so one
//!   `loadtest::DialOptions` reaches them all;
//! - a node that is not a Go derper (our relay, another process) joins the region by serving
//!   the same leaf ([`TestCa::install_leaf`] into its cert dir, hostname [`HOSTNAME`]), listening
//!   on 127.0.0.1 at a port from [`free_ports`], and trusting [`TestCa::ca_pem`] (or
//!   [`TestCa::root_store`]) when it dials its peers at [`node_url`].
//!
//! Go's manual cert mode with `--hostname localhost` reads `<certdir>/localhost.crt` and `.key`
//! and refuses a TLS ClientHello whose SNI is not `localhost` (only an IP `--hostname` skips
//! that check), so every URL here names `localhost`, never 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{Client, Transport};
use derp_proto::{MeshKey, NodePublicKey, ServerToClient};

use super::GoDerper;

/// The TLS name of every node: what URLs, SNI and the leaf certificate use.
pub const HOSTNAME: &str = "localhost";

/// A certificate authority for one test and the one server certificate it issued (for
/// `localhost` and 127.0.0.1), held in a temp dir that lives as long as this value.
pub struct TestCa {
    /// The CA certificate, PEM: `SSL_CERT_FILE` for Go derpers, a CA file for anything else.
    pub ca_pem: PathBuf,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// SHA-256 of the leaf certificate: our clients' `ServerVerify::Pin`.
    pub leaf_pin: [u8; 32],
    leaf_cert_pem: String,
    leaf_key_pem: String,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// A fresh CA (ECDSA P-256) and a leaf for `localhost` + 127.0.0.1 signed by it.
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use sha2::Digest as _;

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "derp-fleet test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        // A DNS string that parses as an IP becomes an IP SAN.
        let mut leaf = CertificateParams::new(vec![HOSTNAME.into(), "127.0.0.1".into()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, HOSTNAME);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        Self {
            ca_pem,
            ca_der: ca.der().to_vec(),
            leaf_pin: sha2::Sha256::digest(leaf.der()).into(),
            leaf_cert_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
            _dir: dir,
        }
    }

    /// Writes the leaf as `<cert_dir>/localhost.crt` (the leaf alone, so pinning clients see
    /// exactly one certificate) and `<cert_dir>/localhost.key` (PKCS#8), creating `cert_dir`:
    /// the layout of Go's `--certmode manual --certdir DIR --hostname localhost` and of our
    /// relay's `CertMode::Manual` with hostname `localhost`.
    pub fn install_leaf(&self, cert_dir: &Path) {
        std::fs::create_dir_all(cert_dir).unwrap();
        std::fs::write(
            cert_dir.join(format!("{HOSTNAME}.crt")),
            &self.leaf_cert_pem,
        )
        .unwrap();
        std::fs::write(cert_dir.join(format!("{HOSTNAME}.key")), &self.leaf_key_pem).unwrap();
    }

    /// How our clients check any node of the region: the leaf's pin.
    pub fn verify(&self) -> ServerVerify {
        ServerVerify::Pin(self.leaf_pin)
    }

    /// A rustls root store holding only this CA (for a mesh dialer built on rustls).
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .unwrap();
        roots
    }

    /// A rustls client config that trusts only this CA (ring provider, HTTP/1.1 ALPN).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

/// What every node of one region shares: the CA and its leaf, and the mesh key (also written
/// as a `--mesh-psk-file`).
pub struct MeshRegion {
    pub ca: TestCa,
    pub mesh_key: MeshKey,
    /// The mesh key as 64 lowercase hex digits and a newline, for `--mesh-psk-file`.
    pub psk_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl MeshRegion {
    /// A new CA and a random mesh key.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hex_key = hex::encode(rand_bytes());
        let psk_file = dir.path().join("mesh.key");
        std::fs::write(&psk_file, format!("{hex_key}\n")).unwrap();
        Self {
            ca: TestCa::new(),
            mesh_key: hex_key.parse().unwrap(),
            psk_file,
            _dir: dir,
        }
    }
}

/// 32 random bytes from the kernel (the tests crate has no `rand`).
fn rand_bytes() -> [u8; 32] {
    use std::io::Read as _;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// `n` distinct free TCP ports on 127.0.0.1, all held until every one is picked (so none
/// repeats); pick a region's ports before starting any node, so each can name all its peers.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The DERP URL of the node on `port`: `https://localhost:PORT/derp`.
pub fn node_url(port: u16) -> String {
    format!("https://{HOSTNAME}:{port}/derp")
}

/// A `--mesh-with` entry for the node on `port`: `localhost:PORT`. Go dials
/// `https://localhost:PORT/derp` (its `host` or `host/dialhost` syntax takes a port in `host`;
/// with `/dialhost`, Go dials that host at the URL's port instead of resolving `localhost`).
pub fn mesh_entry(port: u16) -> String {
    format!("{HOSTNAME}:{port}")
}

/// Starts Tailscale's derper as one node of `region`: TLS on 127.0.0.1:`port` with the region's
/// leaf, `--mesh-psk-file`, `--mesh-with` = `mesh_with` joined by commas (its own entry may be
/// in it: Go skips itself by server key), `SSL_CERT_FILE` = the region's CA, no STUN, no port
/// 80. Returns once it accepts TCP; its peers need not be running yet (Go retries a mesh dial
/// that failed after 5 s, so a region started together meshes within about 5 s: see
/// [`wait_meshed`]). Its log is kept ([`GoDerper::log`]); it is killed on drop.
pub async fn start_go_derper_mesh(
    bin: &Path,
    region: &MeshRegion,
    port: u16,
    mesh_with: &[String],
) -> GoDerper {
    let mut node = spawn_go_derper_mesh(bin, region, port, mesh_with);
    wait_listening(&mut node).await;
    node
}

/// Starts `n` Go derpers as one fully meshed region (each `--mesh-with` every node, itself
/// included), all processes at once, and returns them in port order once all listen; call
/// [`wait_meshed`] before relying on cross-node forwarding.
pub async fn start_go_mesh(bin: &Path, region: &MeshRegion, n: usize) -> Vec<GoDerper> {
    let ports = free_ports(n);
    let mesh_with: Vec<String> = ports.iter().map(|p| mesh_entry(*p)).collect();
    let mut nodes: Vec<GoDerper> = ports
        .iter()
        .map(|p| spawn_go_derper_mesh(bin, region, *p, &mesh_with))
        .collect();
    for node in &mut nodes {
        wait_listening(node).await;
    }
    nodes
}

fn spawn_go_derper_mesh(
    bin: &Path,
    region: &MeshRegion,
    port: u16,
    mesh_with: &[String],
) -> GoDerper {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    region.ca.install_leaf(&certs);
    let log = dir.path().join("derper.log");
    let no_roots = dir.path().join("no-roots");
    std::fs::create_dir(&no_roots).unwrap();
    let child = std::process::Command::new(bin)
        .arg("-a")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-c")
        .arg(dir.path().join("derper.key"))
        .args(["-http-port", "-1", "-stun=false"])
        .args(["-certmode", "manual", "-hostname", HOSTNAME, "-certdir"])
        .arg(&certs)
        .arg("-mesh-psk-file")
        .arg(&region.psk_file)
        .arg("-mesh-with")
        .arg(mesh_with.join(","))
        .env("HOME", dir.path())
        .env("SSL_CERT_FILE", &region.ca.ca_pem)
        // No other roots (an empty directory instead of /etc/ssl/certs): a peer is verified
        // by the test CA or not at all.
        .env("SSL_CERT_DIR", &no_roots)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start Tailscale derper");
    GoDerper {
        child,
        url: node_url(port),
        port,
        pin: Some(region.ca.leaf_pin),
        log: Some(log),
        _dir: dir,
    }
}

/// Waits until `node` accepts TCP; panics with its log if it exits or takes over 5 s.
async fn wait_listening(node: &mut GoDerper) {
    let port = node.port;
    for _ in 0..200 {
        if let Some(status) = node.child.try_wait().unwrap() {
            panic!("Go derper on {port} exited ({status}):\n{}", node.log());
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "Go derper on {port} not listening after 5 s:\n{}",
        node.log()
    );
}

/// Our relay's config as a node of `region`: TLS on 127.0.0.1:`port` with the region's leaf
/// (installed into `cert_dir`, hostname [`HOSTNAME`], so it answers the SNI Go's mesh dialer
/// sends), and the region's mesh key (so Go nodes may watch it and forward into it). Outbound
/// mesh peers, once our relay has them, go on top of this.
pub fn our_relay_config(region: &MeshRegion, port: u16, cert_dir: &Path) -> derper::ServerConfig {
    region.ca.install_leaf(cert_dir);
    let mut config = derper::ServerConfig::plain(([127, 0, 0, 1], port).into());
    config.tls = Some(derper::tls::TlsOptions {
        cert_mode: derper::tls::CertMode::Manual,
        cert_dir: cert_dir.to_owned(),
        hostname: HOSTNAME.into(),
    });
    config.mesh_key = Some(region.mesh_key.clone());
    config
}

/// Waits until every pair of nodes forwards between them: for each pair, a client on each
/// node, and a packet from the first that the second echoes back, resent every 100 ms (a node
/// learns of a client on another node only through their mesh link). Works for any DERP
/// servers at `urls` that `verify` accepts. Returns how long it took; panics after `within`.
pub async fn wait_meshed(urls: &[String], verify: &ServerVerify, within: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    let deadline = started + within;
    for i in 0..urls.len() {
        for j in i + 1..urls.len() {
            let options = |url: &str| super::options(url, verify.clone(), Transport::Upgrade);
            let mut a = super::connect_with(&options(&urls[i])).await;
            let mut b = super::connect_with(&options(&urls[j])).await;
            if tokio::time::timeout_at(deadline, round_trip(&mut a, &mut b))
                .await
                .is_err()
            {
                panic!(
                    "nodes {} and {} not meshed within {within:?}",
                    urls[i], urls[j]
                );
            }
        }
    }
    started.elapsed()
}

/// Sends from `a` to `b` every 100 ms until `b` has echoed one back.
async fn round_trip(a: &mut Client, b: &mut Client) {
    let (ka, kb): (NodePublicKey, NodePublicKey) = (a.public_key(), b.public_key());
    let probe = b"mesh-probe".to_vec();
    let mut resend = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = resend.tick() => a.send_packet(&kb, &probe).await.unwrap(),
            m = b.recv() => {
                if let ServerToClient::RecvPacket { src, packet } = m.unwrap()
                    && src == ka
                {
                    b.send_packet(&ka, &packet).await.unwrap();
                }
            }
            m = a.recv() => {
                if let ServerToClient::RecvPacket { src, .. } = m.unwrap()
                    && src == kb
                {
                    return;
                }
            }
        }
    }
}

/// The `--mesh-with` entry for our relay on `port` over QUIC: `quic://localhost:PORT` (our
/// test relays serve QUIC on the UDP port with the same number as their TCP port).
pub fn quic_entry(port: u16) -> String {
    format!("quic://{HOSTNAME}:{port}")
}

/// The `--mesh-with` entry for our relay on `port` in automatic mode: QUIC on UDP `port`,
/// else TLS on TCP `port`.
pub fn auto_entry(port: u16) -> String {
    format!("auto://{HOSTNAME}:{port}")
}

/// How our relays of a test region link to each other; mesh tests run once per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OurLink {
    /// Plain-HTTP DERP over TCP (`http://127.0.0.1:PORT/derp`, `--mesh-allow-plain`).
    Tcp,
    /// QUIC (`quic://localhost:PORT`), each relay serving TLS and `--quic-port PORT`.
    Quic,
}

/// A region of our relays linked by [`OurLink`]: the region's CA and mesh key (for QUIC,
/// which always uses TLS) and the nodes' certificate directories.
pub struct OurRegion {
    pub link: OurLink,
    pub region: MeshRegion,
    dir: tempfile::TempDir,
}

impl OurRegion {
    /// A region whose relays link over `link`.
    pub fn new(link: OurLink) -> Self {
        Self {
            link,
            region: MeshRegion::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The URL our test clients use for the node on `port`.
    pub fn url(&self, port: u16) -> String {
        match self.link {
            OurLink::Tcp => format!("http://127.0.0.1:{port}/derp"),
            OurLink::Quic => node_url(port),
        }
    }

    /// The `--mesh-with` entry naming the node on `port`.
    pub fn entry(&self, port: u16) -> String {
        match self.link {
            OurLink::Tcp => format!("http://127.0.0.1:{port}/derp"),
            OurLink::Quic => quic_entry(port),
        }
    }

    /// Our relay on 127.0.0.1:`port` linking to `peers` with mesh key `key` (the region's,
    /// or another to play an impostor). Over QUIC: TLS with the region's leaf, the QUIC
    /// listener on UDP `port`, peers verified by the region's CA.
    pub fn config(&self, port: u16, peers: &[String], key: &MeshKey) -> derper::ServerConfig {
        let mut config = match self.link {
            OurLink::Tcp => derper::ServerConfig::plain(([127, 0, 0, 1], port).into()),
            OurLink::Quic => {
                let certs = self.dir.path().join(port.to_string());
                let mut c = our_relay_config(&self.region, port, &certs);
                c.quic_addr = Some(([127, 0, 0, 1], port).into());
                c.mesh.ca_file = Some(self.region.ca.ca_pem.clone());
                c
            }
        };
        config.mesh_key = Some(key.clone());
        config.mesh.peers = peers.to_vec();
        config.mesh.allow_plain = self.link == OurLink::Tcp;
        config.mesh.reconnect_max = Duration::from_millis(200);
        config
    }
}
