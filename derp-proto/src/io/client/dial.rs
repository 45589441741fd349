//! Opening a client connection from a URL: TCP, TLS, upgrade, then the handshake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::handshake::box_for;
use super::upgrade::{Target, Upgraded, http_upgrade, websocket};
use super::{Client, ClientError, HandshakeOptions};
use crate::handshake::ClientInfo;
use crate::io::BoxStream;
use crate::io::tls::{ServerVerify, client_config, server_key_from_connection};
use crate::key::{MeshKey, NodePublicKey, NodeSecretKey, SharedBox};

/// How the DERP byte stream is carried after HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// `Upgrade: DERP` on HTTP/1.1, as native Tailscale clients do.
    #[default]
    Upgrade,
    /// WebSocket with the `derp` subprotocol, as browser clients do.
    WebSocket,
}

/// Everything needed to open a client connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// `http://host:port/derp` or `https://host[:port]/derp`.
    pub url: String,
    /// The client's node key.
    pub secret: NodeSecretKey,
    /// Upgrade or WebSocket.
    pub transport: Transport,
    /// How to check the server certificate for `https` URLs.
    pub verify: ServerVerify,
    /// Mesh key, for mesh peers and privileged tools.
    pub mesh_key: Option<MeshKey>,
    /// Set the prober flag in ClientInfo.
    pub is_prober: bool,
    /// Budget for dial, TLS, upgrade and handshake together (Go clients use 10 s).
    pub connect_timeout: Duration,
    /// Use fast start when TLS 1.3 reveals the server key through the metacert.
    pub fast_start: bool,
    /// Local address to bind before connecting (spreads load tests over source addresses).
    pub local_addr: Option<IpAddr>,
    /// Connect here instead of resolving the URL host (derper's `--mesh-with host/dialhost`).
    pub dial_addr: Option<SocketAddr>,
    /// Stop before sending anything if the server presents this key (a relay's own key, for
    /// its mesh links); see [`HandshakeOptions::refuse_server_key`].
    pub refuse_server_key: Option<NodePublicKey>,
    /// A box the secret key already shares with a server ([`Client::shared_box`] of an earlier
    /// connection to it): a reconnect that meets the same server key computes no X25519.
    pub shared_box: Option<(NodePublicKey, SharedBox)>,
}

impl ConnectOptions {
    /// Options with the usual defaults: upgrade transport, WebPKI verification, fast start on,
    /// 10 s budget.
    pub fn new(url: impl Into<String>, secret: NodeSecretKey) -> Self {
        Self {
            url: url.into(),
            secret,
            transport: Transport::Upgrade,
            verify: ServerVerify::WebPki,
            mesh_key: None,
            is_prober: false,
            connect_timeout: Duration::from_secs(10),
            fast_start: true,
            local_addr: None,
            dial_addr: None,
            refuse_server_key: None,
            shared_box: None,
        }
    }

    /// Sends `key` in ClientInfo, as mesh peers do.
    pub fn with_mesh_key(mut self, key: MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// The ClientInfo these options send.
    pub fn client_info(&self) -> ClientInfo {
        ClientInfo {
            mesh_key: self.mesh_key.clone(),
            is_prober: self.is_prober,
            ..ClientInfo::new()
        }
    }
}

impl Client {
    /// Dials, upgrades and handshakes within `opts.connect_timeout`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, ClientError> {
        tokio::time::timeout(opts.connect_timeout, connect_inner(opts))
            .await
            .map_err(|_| ClientError::Timeout(opts.connect_timeout))?
    }
}

async fn connect_inner(opts: &ConnectOptions) -> Result<Client, ClientError> {
    let target = Target::parse(&opts.url)?;
    let tcp = dial(opts, &target).await?;
    let local_addr = tcp.local_addr().ok();
    let mut metacert_key = None;
    let stream: BoxStream = if target.tls {
        let connector = TlsConnector::from(client_config(opts.verify.clone()));
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| ClientError::InvalidUrl(opts.url.clone()))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(ClientError::Tls)?;
        // Only under TLS 1.3, where certificates are encrypted.
        metacert_key = server_key_from_connection(tls.get_ref().1)
            .map(|(key, _version)| NodePublicKey::from_bytes(key));
        // The metacert names the server before anything is sent; a refused key stops here,
        // so not even the upgrade request (which may carry ClientInfo) goes out.
        if let Some(key) = metacert_key
            && opts.refuse_server_key == Some(key)
        {
            return Err(ClientError::RefusedServerKey(key));
        }
        Box::new(tls)
    } else {
        Box::new(tcp)
    };

    let mut handshake = HandshakeOptions {
        info: opts.client_info(),
        info_sent_to: None,
        refuse_server_key: opts.refuse_server_key,
        shared_box: opts.shared_box.clone(),
    };
    let (stream, leftover) = match opts.transport {
        Transport::WebSocket => (websocket(stream, &target).await?, Default::default()),
        Transport::Upgrade => {
            // Fast start seals ClientInfo to the metacert's key now; the handshake then opens
            // ServerInfo with the same box, so the connection costs one X25519 (or none).
            let fast = metacert_key
                .filter(|_| opts.fast_start)
                .map(|key| (key, box_for(&opts.secret, opts.shared_box.as_ref(), key)));
            if fast.is_some() {
                handshake.shared_box = fast.clone();
            }
            let Upgraded {
                stream,
                leftover,
                info_sent_to,
            } = http_upgrade(
                stream,
                &target,
                &opts.secret,
                &handshake.info,
                fast.as_ref(),
            )
            .await?;
            handshake.info_sent_to = info_sent_to;
            (stream, leftover)
        }
    };
    let mut client = Client::handshake_over(stream, leftover, &opts.secret, &handshake).await?;
    client.local_addr = local_addr;
    Ok(client)
}

/// Connects TCP to the first address of `t` (or `opts.dial_addr`) that answers.
async fn dial(opts: &ConnectOptions, t: &Target) -> Result<TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> = match opts.dial_addr {
        Some(a) => vec![a],
        None => tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|source| ClientError::Dial {
                addr: format!("{}:{}", t.host, t.port),
                source,
            })?
            .collect(),
    };
    let mut last = None;
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let result = async {
            let socket = socket?;
            if let Some(ip) = opts.local_addr {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(addr).await
        }
        .await;
        match result {
            Ok(s) => {
                // Small frames (pings, disco) must not wait for Nagle.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(source) => {
                last = Some(ClientError::Dial {
                    addr: addr.to_string(),
                    source,
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| ClientError::InvalidUrl(format!("{}: no addresses", t.host))))
}
