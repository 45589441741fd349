//! Tools for hostile-input tests against our `derper` binary run as a child process: the
//! process itself (its descriptors and Prometheus gauges can be read from outside), a canary
//! pair that must lose nothing, raw DERP sessions that send exactly the bytes a case wants, and
//! WebSocket framing by hand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use derp_proto::handshake::{self, ClientInfo};
use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{BoxStream, Client, Transport};
use derp_proto::{ClientToServer, FrameDecoder, FrameType, NodePublicKey, NodeSecretKey, RawFrame};
use derp_proto::{MeshKey, ServerToClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Our `derper` binary running as a child process, killed on drop.
pub struct DerperProcess {
    child: Child,
    /// The main listener (plain or TLS) on 127.0.0.1.
    pub addr: SocketAddr,
    /// `--metrics-addr`.
    pub metrics: SocketAddr,
    /// Its DERP URL (`http://127.0.0.1:PORT/derp` or `https://localhost:PORT/derp`).
    pub url: String,
    /// How clients verify it.
    pub verify: ServerVerify,
    /// Its private key (written to its key file by us).
    pub secret: NodeSecretKey,
    log: PathBuf,
}

impl DerperProcess {
    /// Starts `bin` with `args` plus `-a 127.0.0.1:<port>`, `-c <key file>` and
    /// `--metrics-addr`, and waits until it accepts connections.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        port: u16,
        url: String,
        verify: ServerVerify,
        args: &[String],
    ) -> Self {
        let secret = NodeSecretKey::generate();
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(
            &key_file,
            format!("{{\"PrivateKey\": \"{}\"}}", secret.to_text()),
        )
        .unwrap();
        let metrics: SocketAddr = ([127, 0, 0, 1], super::free_port()).into();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin)
            .args(["-a", &format!("127.0.0.1:{port}")])
            .arg("-c")
            .arg(&key_file)
            .args(["--metrics-addr", &metrics.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start derper");
        let mut p = Self {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            metrics,
            url,
            verify,
            secret,
            log,
        };
        for _ in 0..500 {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("derper {name} exited ({status}):\n{}", p.log());
            }
            if TcpStream::connect(p.addr).await.is_ok() && TcpStream::connect(metrics).await.is_ok()
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.child.kill().ok();
        panic!("derper {name} not listening after 10 s:\n{}", p.log());
    }

    /// Our binary, plain HTTP on `port` without STUN, with `args`; `None` (after saying why)
    /// when the binary is not built and this is not CI.
    pub async fn plain(dir: &Path, name: &str, port: u16, args: &[&str]) -> Option<Self> {
        let bin = super::our_derper()?;
        let args: Vec<String> = ["--stun=false"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        Some(
            Self::start(
                &bin,
                dir,
                name,
                port,
                format!("http://127.0.0.1:{port}/derp"),
                ServerVerify::Insecure,
                &args,
            )
            .await,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its open descriptors, with what each points at.
    pub fn fds(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) {
            for e in dir.flatten() {
                let target = std::fs::read_link(e.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                out.push(format!("{}->{target}", e.file_name().to_string_lossy()));
            }
        }
        out
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// How the process exited, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Options for a fresh client of this relay.
    pub fn options(&self) -> derp_proto::io::ConnectOptions {
        let mut o = super::options(&self.url, self.verify.clone(), Transport::Upgrade);
        o.dial_addr = Some(self.addr);
        o
    }

    /// Scrapes `/metrics`.
    pub async fn scrape(&self) -> String {
        scrape(self.metrics).await
    }
}

impl Drop for DerperProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Prometheus text of `addr`'s `/metrics` (empty on failure).
pub async fn scrape(addr: SocketAddr) -> String {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The value of one series (name with its labels exactly as exported), 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A pair of clients on one relay: one sends a sequence-numbered packet every 5 ms (200/s),
/// the other checks that every number arrives once and in order. Runs on its own thread and
/// runtime so the load the test itself generates cannot starve it.
pub struct Canary {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Canary {
    /// Connects both clients (before returning) and starts sending.
    pub fn start(name: &'static str, opts: derp_proto::io::ConnectOptions) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(tokio::sync::Notify::new());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let (sent, received, errors, stop) =
                (sent.clone(), received.clone(), errors.clone(), stop.clone());
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run_canary(
                    name, opts, sent, received, errors, stop, ready_tx,
                ));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("canary connected");
        Self {
            sent,
            received,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Everything that went wrong so far (gaps, reordering, lost connections).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits until every packet sent so far has arrived (at most `within`); `Err` describes
    /// what is missing or what went wrong.
    pub async fn caught_up(&self, within: Duration) -> Result<(), String> {
        let target = self.sent();
        let deadline = tokio::time::Instant::now() + within;
        while self.received() < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let errors = self.errors();
        if !errors.is_empty() {
            return Err(format!("canary: {errors:?}"));
        }
        if self.received() < target {
            return Err(format!(
                "canary: {} of {target} packets arrived within {within:?}",
                self.received()
            ));
        }
        Ok(())
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run_canary(
    name: &'static str,
    opts: derp_proto::io::ConnectOptions,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<tokio::sync::Notify>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let mut tx_opts = opts.clone();
    tx_opts.secret = NodeSecretKey::generate();
    let mut rx_opts = opts;
    rx_opts.secret = NodeSecretKey::generate();
    let tx = Client::connect(&tx_opts).await.expect("canary sender");
    let rx = Client::connect(&rx_opts).await.expect("canary receiver");
    let (tx_key, rx_key) = (tx.public_key(), rx.public_key());
    let (mut rx, _rx_w) = rx.split();
    let (_tx_r, mut tx) = tx.split();
    let started = std::time::Instant::now();
    let fail = |e: String| {
        errors
            .lock()
            .unwrap()
            .push(format!("{name} at {:?}: {e}", started.elapsed()));
    };
    let _ = ready.send(());
    let receive = async {
        let mut next = 0u64;
        loop {
            match rx.recv().await {
                Ok(ServerToClient::RecvPacket { src, packet }) if src == tx_key => {
                    let seq = u64::from_be_bytes(packet[..8].try_into().unwrap());
                    if seq != next {
                        fail(format!("expected packet {next}, got {seq}"));
                    }
                    next = seq + 1;
                    received.store(next, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(e) => {
                    fail(format!("receiver: {e}"));
                    return;
                }
            }
        }
    };
    let send = async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut seq = 0u64;
        loop {
            tick.tick().await;
            let mut packet = [0x5au8; 64];
            packet[..8].copy_from_slice(&seq.to_be_bytes());
            if let Err(e) = tx.send_packet(&rx_key, &packet).await {
                fail(format!("sender: {e}"));
                return;
            }
            seq += 1;
            sent.store(seq, Ordering::SeqCst);
        }
    };
    tokio::select! {
        _ = stop.notified() => {}
        _ = receive => {}
        _ = send => {}
    }
}

/// A TLS client config that accepts any certificate, with the given ALPN protocols.
pub fn insecure_tls(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut c = (*derp_proto::io::tls::client_config(ServerVerify::Insecure)).clone();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// Opens TCP to `addr` and, when `sni` is given, TLS over it with that server name.
pub async fn open(addr: SocketAddr, tls: Option<&str>) -> std::io::Result<BoxStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some(sni) => {
            let name = rustls::pki_types::ServerName::try_from(sni.to_owned())
                .map_err(std::io::Error::other)?;
            let connector = tokio_rustls::TlsConnector::from(insecure_tls(&[b"http/1.1"]));
            let s = tokio::time::timeout(Duration::from_secs(2), connector.connect(name, tcp))
                .await
                .map_err(|_| std::io::Error::other("tls handshake timed out"))??;
            Ok(Box::new(s))
        }
    }
}

/// The upgrade request our raw sessions send.
pub const UPGRADE: &[u8] =
    b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n";

/// A DERP connection driven byte by byte: the test decides what to send and reads raw frames.
pub struct RawDerp {
    pub io: BoxStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// The key ServerKey named.
    pub server_key: NodePublicKey,
    /// Our key, once logged in.
    pub secret: NodeSecretKey,
}

impl RawDerp {
    /// Sends the upgrade on `io` and reads the 101 and ServerKey.
    pub async fn upgrade(mut io: BoxStream) -> std::io::Result<Self> {
        io.write_all(UPGRADE).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::other("closed before 101"));
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101 ") {
            return Err(std::io::Error::other(format!(
                "not upgraded: {:?}",
                String::from_utf8_lossy(&buf[..head_end])
            )));
        }
        let _ = buf.split_to(head_end);
        let mut raw = Self {
            io,
            buf,
            decoder: FrameDecoder::client(),
            server_key: NodePublicKey::from_bytes([0; 32]),
            secret: NodeSecretKey::generate(),
        };
        let f = raw.frame().await?;
        raw.server_key = handshake::read_server_key(&f).map_err(std::io::Error::other)?;
        Ok(raw)
    }

    /// Upgrade and log in with `info` (a regular client unless it carries a mesh key).
    pub async fn login(io: BoxStream, info: &ClientInfo) -> std::io::Result<Self> {
        let mut raw = Self::upgrade(io).await?;
        let mut out = BytesMut::new();
        handshake::write_client_info(&mut out, &raw.secret, &raw.server_key, info);
        raw.io.write_all(&out).await?;
        let f = raw.frame().await?;
        handshake::read_server_info(&raw.secret, &raw.server_key, &f)
            .map_err(std::io::Error::other)?;
        Ok(raw)
    }

    /// ClientInfo bytes carrying `json`, sealed properly by `secret` to this server.
    pub fn client_info_json(&self, secret: &NodeSecretKey, json: &[u8]) -> Vec<u8> {
        let sealed = secret.seal_to(&self.server_key, json);
        let mut out = Vec::new();
        derp_proto::frame::write_frame_header(&mut out, FrameType::CLIENT_INFO, 32 + sealed.len());
        out.extend_from_slice(secret.public_key().as_bytes());
        out.extend_from_slice(&sealed);
        out
    }

    /// Reads the next frame.
    pub async fn frame(&mut self) -> std::io::Result<RawFrame> {
        loop {
            if let Some(f) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(std::io::Error::other)?
            {
                return Ok(f);
            }
            self.buf.reserve(64 * 1024);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Sends Pings (another every 100 ms: a relay keeps one Pong pending and drops Pings
    /// that arrive meanwhile, as Go's does) until one of them is answered, at most `within`,
    /// skipping other frames.
    pub async fn ping(&mut self, within: Duration) -> Result<(), String> {
        let mut sent = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let data = rand8();
            sent.push(data);
            let mut out = BytesMut::new();
            ClientToServer::Ping(data).encode(&mut out);
            self.send(&out).await.map_err(|e| format!("ping: {e}"))?;
            let next = (tokio::time::Instant::now() + PING_RETRY).min(deadline);
            let wait = async {
                loop {
                    let f = self.frame().await?;
                    if f.ty == FrameType::PONG && sent.iter().any(|d| f.payload[..] == d[..]) {
                        return Ok::<_, std::io::Error>(());
                    }
                }
            };
            match tokio::time::timeout_at(next, wait).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(format!("no pong, connection ended: {e}")),
                Err(_) if next >= deadline => return Err(format!("no pong within {within:?}")),
                Err(_) => {}
            }
        }
    }

    /// Waits (at most `within`) for the server to close, reading and discarding frames.
    pub async fn closed(&mut self, within: Duration) -> Result<(), String> {
        let wait = async {
            loop {
                self.buf.clear();
                self.buf.reserve(64 * 1024);
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| format!("still open after {within:?}"))
    }
}

/// How long a ping helper waits before sending another Ping.
const PING_RETRY: Duration = Duration::from_millis(100);

/// 8 bytes that differ between calls.
pub fn rand8() -> [u8; 8] {
    static N: AtomicU64 = AtomicU64::new(1);
    (N.fetch_add(1, Ordering::Relaxed) ^ 0x9e37_79b9_7f4a_7c15).to_be_bytes()
}

/// One frame: header then payload of `len` bytes of `fill`.
pub fn frame(ty: u8, len: usize, fill: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + len);
    out.put_u8(ty);
    out.put_u32(len as u32);
    out.resize(5 + len, fill);
    out
}

/// A frame with an explicit payload.
pub fn frame_with(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.put_u8(ty);
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(payload);
    out
}

/// A header that announces `len` bytes, without the payload.
pub fn header(ty: u8, len: u32) -> Vec<u8> {
    let mut out = vec![ty];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// `n` copies of `bytes`.
pub fn repeat(bytes: &[u8], n: usize) -> Vec<u8> {
    bytes.repeat(n)
}

/// A WebSocket frame as a client sends it (masked unless `masked` is false).
pub fn ws_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A binary WebSocket message in one masked frame.
pub fn ws_binary(payload: &[u8]) -> Vec<u8> {
    ws_frame(true, 0, 0x2, payload, true)
}

/// A masked frame header that announces `len` bytes, without the payload.
pub fn ws_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// A frame the server sent on a WebSocket.
#[derive(Debug)]
pub struct WsFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// The WebSocket upgrade a well-behaved DERP client sends, with `extra` header lines.
pub fn ws_head(extra: &str) -> String {
    format!(
        "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: derp\r\n{extra}\r\n"
    )
}

/// A WebSocket connection read by hand: the 101 has been consumed.
pub struct RawWs {
    pub io: BoxStream,
    buf: BytesMut,
    /// DERP bytes received in binary messages, not yet consumed.
    derp: BytesMut,
    decoder: FrameDecoder,
}

impl RawWs {
    /// Sends `head` and reads the response head: `Ok` if it was a 101.
    pub async fn upgrade(mut io: BoxStream, head: &str) -> Result<Self, String> {
        io.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if io.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed before a response".into());
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101 ") {
            return Err(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        let _ = buf.split_to(end);
        Ok(Self {
            io,
            buf,
            derp: BytesMut::new(),
            decoder: FrameDecoder::client(),
        })
    }

    /// The next WebSocket frame from the server (`None` at end of stream).
    pub async fn ws_frame(&mut self) -> std::io::Result<Option<WsFrame>> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let _ = self.buf.split_to(at);
                    let payload = self.buf.split_to(len).to_vec();
                    return Ok(Some(WsFrame { opcode, payload }));
                }
            }
            self.buf.reserve(64 * 1024);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next DERP frame carried in binary messages.
    pub async fn derp_frame(&mut self) -> std::io::Result<RawFrame> {
        loop {
            if let Some(f) = self
                .decoder
                .decode(&mut self.derp)
                .map_err(std::io::Error::other)?
            {
                return Ok(f);
            }
            match self.ws_frame().await? {
                Some(WsFrame {
                    opcode: 0x2,
                    payload,
                }) => self.derp.extend_from_slice(&payload),
                Some(WsFrame { opcode: 0x8, .. }) | None => {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Some(_) => {}
            }
        }
    }

    /// Reads ServerKey and returns it.
    pub async fn server_key(&mut self) -> std::io::Result<NodePublicKey> {
        let f = self.derp_frame().await?;
        handshake::read_server_key(&f).map_err(std::io::Error::other)
    }

    /// Logs in as a regular client, ClientInfo sent in one binary message.
    pub async fn login(&mut self) -> std::io::Result<()> {
        let server_key = self.server_key().await?;
        let secret = NodeSecretKey::generate();
        let mut out = BytesMut::new();
        handshake::write_client_info(&mut out, &secret, &server_key, &ClientInfo::new());
        self.io.write_all(&ws_binary(&out)).await?;
        let f = self.derp_frame().await?;
        handshake::read_server_info(&secret, &server_key, &f).map_err(std::io::Error::other)?;
        Ok(())
    }

    /// Sends DERP Pings in binary messages until one is answered (see [`RawDerp::ping`]).
    pub async fn ping(&mut self, within: Duration) -> Result<(), String> {
        let mut sent = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let data = rand8();
            sent.push(data);
            let mut out = BytesMut::new();
            ClientToServer::Ping(data).encode(&mut out);
            self.io
                .write_all(&ws_binary(&out))
                .await
                .map_err(|e| format!("ping: {e}"))?;
            let next = (tokio::time::Instant::now() + PING_RETRY).min(deadline);
            let wait = async {
                loop {
                    let f = self.derp_frame().await?;
                    if f.ty == FrameType::PONG && sent.iter().any(|d| f.payload[..] == d[..]) {
                        return Ok::<_, std::io::Error>(());
                    }
                }
            };
            match tokio::time::timeout_at(next, wait).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(format!("no pong, connection ended: {e}")),
                Err(_) if next >= deadline => return Err(format!("no pong within {within:?}")),
                Err(_) => {}
            }
        }
    }

    /// Waits for the end of the connection; returns the close code the server sent, if any.
    pub async fn closed(&mut self, within: Duration) -> Result<Option<u16>, String> {
        let wait = async {
            let mut code = None;
            loop {
                match self.ws_frame().await {
                    Ok(Some(WsFrame {
                        opcode: 0x8,
                        payload,
                    })) => {
                        code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                        // Answer the close, as a client must; the server then ends the stream.
                        let mut echo = Vec::new();
                        if let Some(c) = code {
                            echo.extend_from_slice(&c.to_be_bytes());
                        }
                        let _ = self
                            .io
                            .write_all(&ws_frame(true, 0, 0x8, &echo, true))
                            .await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return code,
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| format!("still open after {within:?}"))
    }
}

/// A mesh key's ClientInfo.
pub fn mesh_info(key: &MeshKey) -> ClientInfo {
    let mut info = ClientInfo::new();
    info.mesh_key = Some(key.clone());
    info
}
