//! How simulated peers reach a relay: URL(s), transport, certificate check, source addresses.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{Client, ConnectOptions, Transport};
use derp_proto::key::SharedBox;
use derp_proto::{NodePublicKey, NodeSecretKey};

/// Connection settings shared by every peer of a run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DialOptions {
    /// Relay URLs (`http(s)://host:port/derp`); peers are spread over them.
    pub urls: Vec<String>,
    /// HTTP upgrade or WebSocket.
    pub transport: Transport,
    /// Certificate check for `https` URLs.
    pub verify: ServerVerify,
    /// Budget for dial, TLS, upgrade and handshake of one connection.
    pub connect_timeout: Duration,
    /// Local addresses to bind, used round robin (spreads ephemeral ports; empty: the kernel's
    /// choice).
    pub source_ips: Vec<IpAddr>,
    /// Per URL (same index), an address to dial instead of resolving the host (a DERP map's
    /// `IPv4`/`IPv6`); missing entries resolve.
    pub dial_addrs: Vec<Option<std::net::SocketAddr>>,
}

impl DialOptions {
    /// Plain defaults for one URL: upgrade, WebPKI, 10 s budget, no source binding.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            transport: Transport::Upgrade,
            verify: ServerVerify::WebPki,
            connect_timeout: Duration::from_secs(10),
            source_ips: Vec::new(),
            dial_addrs: Vec::new(),
        }
    }

    /// Every DERP node of `map` (STUN-only nodes skipped), dialled at its literal address when
    /// the map gives one. `plain` uses `http://` (loopback fleets without TLS).
    pub fn from_derp_map(map: &crate::derpmap::DerpMap, plain: bool) -> anyhow::Result<Self> {
        let nodes: Vec<_> = map
            .nodes()
            .into_iter()
            .filter(|(_, n)| !n.stun_only)
            .collect();
        if nodes.is_empty() {
            bail!("the DERP map has no DERP nodes");
        }
        let mut d = Self::new(String::new());
        d.urls = nodes.iter().map(|(_, n)| n.derp_url(plain)).collect();
        d.dial_addrs = nodes.iter().map(|(_, n)| n.dial_addr(plain)).collect();
        Ok(d)
    }

    /// Connects connection number `i` to URL number `url_idx` (both taken modulo).
    pub async fn connect(
        &self,
        secret: NodeSecretKey,
        i: u64,
        url_idx: usize,
    ) -> anyhow::Result<Client> {
        self.reconnect(secret, i, url_idx, None).await
    }

    /// [`connect`](Self::connect), reusing the box `secret` shares with a server it met before
    /// ([`Client::shared_box`]): a reconnect to that server computes no X25519, as a real
    /// client's would not need to, so a handshake storm measures the relay, not the client.
    pub async fn reconnect(
        &self,
        secret: NodeSecretKey,
        i: u64,
        url_idx: usize,
        shared_box: Option<(NodePublicKey, SharedBox)>,
    ) -> anyhow::Result<Client> {
        let idx = url_idx % self.urls.len().max(1);
        let url = self.urls.get(idx).context("no relay URL")?;
        let mut o = ConnectOptions::new(url.clone(), secret);
        o.dial_addr = self.dial_addrs.get(idx).copied().flatten();
        o.transport = self.transport;
        o.verify = self.verify.clone();
        o.connect_timeout = self.connect_timeout;
        o.shared_box = shared_box;
        if !self.source_ips.is_empty() {
            o.local_addr = Some(self.source_ips[(i % self.source_ips.len() as u64) as usize]);
        }
        // The client's own budget covers the dial; this outer one also covers a stalled server
        // that accepts and never answers, so nothing waits past the budget.
        match tokio::time::timeout(self.connect_timeout, Client::connect(&o)).await {
            Ok(r) => Ok(r?),
            Err(_) => bail!("connect timed out after {:?}", self.connect_timeout),
        }
    }
}

/// Parses `--verify`: `webpki`, `insecure` or a `sha256-raw:<hex>` pin.
pub fn parse_verify(s: &str) -> anyhow::Result<ServerVerify> {
    match s {
        "webpki" => Ok(ServerVerify::WebPki),
        "insecure" => Ok(ServerVerify::Insecure),
        _ => ServerVerify::from_cert_name(s).with_context(|| {
            format!("--verify {s:?}: expected webpki, insecure or sha256-raw:<64 hex>")
        }),
    }
}

/// Parses source addresses: a list of IPs and `a-b` IPv4 ranges, e.g. `127.0.0.1-127.0.0.8`.
pub fn parse_source_ips(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a.parse().with_context(|| format!("range start {a:?}"))?;
            let b: std::net::Ipv4Addr = b.parse().with_context(|| format!("range end {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("bad source range {part:?}");
            }
            out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("source address {part:?}"))?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        let v = parse_source_ips("127.0.0.1-127.0.0.3, ::1").unwrap();
        assert_eq!(v.len(), 4);
        assert!(parse_source_ips("127.0.0.3-127.0.0.1").is_err());
        assert!(parse_verify("insecure").is_ok());
        assert!(parse_verify("sha256-raw:zz").is_err());
    }
}
