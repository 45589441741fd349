//! Shared helpers: spawn our relay on loopback, connect our client, find Tailscale's derper.
#![allow(dead_code, unreachable_pub)]

pub mod hostile;
pub mod mesh;
pub mod pebble;

use std::path::PathBuf;
use std::time::Duration;

use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{Client, ConnectOptions, Transport};
use derp_proto::{NodePublicKey, NodeSecretKey, ServerToClient};
use derper::{Server, ServerConfig, ServerHandle};

/// A relay of ours on 127.0.0.1 with an ephemeral key: plain HTTP, no STUN.
pub async fn plain_server() -> ServerHandle {
    Server::spawn(ServerConfig::plain("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("spawn server")
}

/// A relay of ours serving TLS with a generated self-signed certificate for 127.0.0.1.
/// Returns the handle, the sha256 pin and the temp dir that holds the certificate.
pub async fn tls_server() -> (ServerHandle, [u8; 32], tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::plain("127.0.0.1:0".parse().unwrap());
    config.tls = Some(derper::tls::TlsOptions {
        cert_mode: derper::tls::CertMode::Manual,
        cert_dir: dir.path().join("certs"),
        hostname: "127.0.0.1".into(),
    });
    let server = Server::spawn(config).await.expect("spawn tls server");
    let hex = server.tls().unwrap().leaf_sha256_hex.clone();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(hex, &mut pin).unwrap();
    (server, pin, dir)
}

pub fn options(url: &str, verify: ServerVerify, transport: Transport) -> ConnectOptions {
    let mut o = ConnectOptions::new(url, NodeSecretKey::generate());
    o.verify = verify;
    o.transport = transport;
    o.connect_timeout = Duration::from_secs(5);
    o
}

pub async fn connect(url: &str) -> Client {
    Client::connect(&options(url, ServerVerify::Insecure, Transport::Upgrade))
        .await
        .expect("connect")
}

pub async fn connect_with(opts: &ConnectOptions) -> Client {
    Client::connect(opts).await.expect("connect")
}

/// Receives frames until a packet arrives, skipping keepalives and the like.
pub async fn recv_packet(c: &mut Client) -> (NodePublicKey, Vec<u8>) {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .expect("timed out waiting for a packet")
            .expect("recv");
        if let ServerToClient::RecvPacket { src, packet } = f {
            return (src, packet.to_vec());
        }
    }
}

/// Receives frames until `pred` matches one, within `wait`.
pub async fn recv_until(
    c: &mut Client,
    wait: Duration,
    mut pred: impl FnMut(&ServerToClient) -> bool,
) -> Option<ServerToClient> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Err(_) => return None,
            Ok(Err(_)) => return None,
            Ok(Ok(f)) if pred(&f) => return Some(f),
            Ok(Ok(_)) => {}
        }
    }
}

/// Waits for the next PeerGone and asserts it names `peer` with `reason`.
pub async fn expect_peer_gone(
    c: &mut Client,
    peer: NodePublicKey,
    reason: derp_proto::frame::PeerGoneReason,
) {
    let gone = recv_until(c, Duration::from_secs(5), |f| {
        matches!(f, ServerToClient::PeerGone { .. })
    })
    .await;
    assert_eq!(gone, Some(ServerToClient::PeerGone { peer, reason }));
}

/// Tailscale's derper binary, from `TAILSCALE_DERPER` or `.tools/bin/derper` (installed by
/// `scripts/install-go-tools.sh`). `None` prints why; under `CI=true` absence is a failure.
pub fn tailscale_derper() -> Option<PathBuf> {
    let candidate = std::env::var_os("TAILSCALE_DERPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/derper"));
    if candidate.exists() {
        return Some(candidate);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "Tailscale's derper not found at {candidate:?}; CI must run scripts/install-go-tools.sh first"
        );
    }
    eprintln!(
        "SKIPPED: Tailscale's derper not found at {candidate:?} (run scripts/install-go-tools.sh or set TAILSCALE_DERPER)"
    );
    None
}

/// A running Tailscale derper on loopback, killed on drop.
pub struct GoDerper {
    child: std::process::Child,
    pub url: String,
    /// The TCP port it serves DERP on (127.0.0.1).
    pub port: u16,
    pub pin: Option<[u8; 32]>,
    /// Its stderr (Go's log), when captured.
    log: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl GoDerper {
    /// What it has logged so far (empty when its log is not captured).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Kills the process now (SIGKILL) and waits for it: its clients and mesh links see the
    /// connections reset.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GoDerper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Tailscale's derper, plain or TLS with a self-signed certificate for 127.0.0.1.
pub async fn start_go_derper(bin: &std::path::Path, tls: bool) -> GoDerper {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("-a")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-c")
        .arg(dir.path().join("derper.key"))
        .args(["-http-port", "-1", "-stun=false"])
        .env("HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if tls {
        cmd.args(["-certmode", "manual", "-hostname", "127.0.0.1", "-certdir"])
            .arg(dir.path().join("certs"));
    }
    let child = cmd.spawn().expect("start Tailscale derper");
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/derp");
    // Wait until it accepts connections.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pin = tls.then(|| {
        use sha2::Digest as _;
        let pem = std::fs::read_to_string(dir.path().join("certs/127.0.0.1.crt")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64_decode(&b64);
        sha2::Sha256::digest(der).into()
    });
    GoDerper {
        child,
        url,
        port,
        pin,
        log: None,
        _dir: dir,
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|x| *x == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Polls `check` every 10 ms until it holds, for at most 5 s; returns whether it held. For
/// state that settles asynchronously (gauges, a departure noticed); never for a timeout.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Our `derper` binary (`DERPER_BIN`, or `target/debug/derper` that `scripts/test.sh` builds
/// first). `None` prints why; under `CI=true` absence is a failure.
pub fn our_derper() -> Option<PathBuf> {
    let candidate = std::env::var_os("DERPER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/derper")
        });
    if candidate.exists() {
        return Some(candidate);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "our derper binary not found at {candidate:?}; build it first (cargo build -p derper)"
        );
    }
    eprintln!("SKIPPED: our derper binary not found at {candidate:?} (cargo build -p derper)");
    None
}

/// Waits until something accepts TCP connections on `port` (at most 10 s).
pub async fn wait_for_port(port: u16) -> bool {
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
