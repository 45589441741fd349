//! Mesh peers as written by an operator: derper's `--mesh-with` syntax, or a full URL.
//!
//! ```text
//! derp2.example.com                      https://derp2.example.com/derp
//! derp2.example.com/10.0.0.7             same URL and TLS name, but dial 10.0.0.7:443
//! localhost:8443                         https://localhost:8443/derp
//! https://derp2.example.com:8443/derp    as written
//! http://10.0.0.7:3340/derp              plain HTTP (needs the explicit plain opt-in)
//! derp2.example.com#sha256-raw:<hex>     verify by certificate pin instead of roots
//! quic://derp2.example.com:8443          QUIC to UDP 8443 (our relays' `--quic-port`)
//! auto://derp2.example.com:443           QUIC to UDP 443, else https://…:443/derp over TCP
//! ```
//!
//! `quic://` and `auto://` name one of our relays: the TLS name is the host, as for https.
//! `auto://` uses the same port number for both transports (as HTTP/3 does beside HTTPS), so a
//! relay serving `-a :443 --quic-port 443` is reachable either way.
//!
//! The first two forms are Tailscale's (`cmd/derper/mesh.go`): the host is used for the URL,
//! SNI and certificate verification, and the optional second part is only where to connect.
//! The URL form and the `#sha256-raw:` fragment are extensions. Pure parsing; no IO.

use std::fmt;
use std::net::SocketAddr;

use derp_proto::io::tls::CERT_NAME_PIN_PREFIX;

/// Why a mesh peer entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mesh peer {entry:?}: {why}")]
pub struct TargetError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub why: String,
}

/// How a link reaches its peer relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum LinkTransport {
    /// DERP over TCP (TLS unless the URL is plain http): every relay speaks it.
    #[default]
    Tcp,
    /// DERP login and presence on a QUIC stream, packets as QUIC datagrams (our relays only).
    Quic,
    /// QUIC, falling back to TCP/TLS when QUIC does not answer in time, and back again.
    Auto,
}

impl LinkTransport {
    /// The `transport` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
            Self::Auto => "auto",
        }
    }
}

/// One relay of the region to keep a mesh link to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerTarget {
    /// Name for logs and the `peer` metric label: the host (and port) as written, plus the
    /// dial address when it differs; `quic://` and `auto://` entries keep their scheme.
    pub name: String,
    /// `http(s)://host[:port]/path`, the URL the link upgrades (its host is the TLS name).
    pub url: String,
    /// Where to connect instead of resolving the URL's host.
    pub dial: Option<DialTarget>,
    /// Verify the peer's certificate by this SHA-256 pin (`sha256-raw:`) instead of roots.
    pub pin: Option<[u8; 32]>,
    /// TCP, QUIC (at the URL's port, over UDP) or both.
    pub transport: LinkTransport,
}

/// Where a link connects when it is not the URL's host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DialTarget {
    /// A host name or IP literal, resolved at each connect; the port is the URL's.
    Host(String),
    /// An address found by a membership source (DNS).
    Addr(SocketAddr),
}

impl fmt::Debug for PeerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Display for PeerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl PeerTarget {
    /// Parses one entry (see the [module docs](self)).
    pub fn parse(entry: &str) -> Result<Self, TargetError> {
        let fail = |why: &str| TargetError {
            entry: entry.to_string(),
            why: why.to_string(),
        };
        let trimmed = entry.trim();
        if trimmed.is_empty() {
            return Err(fail("empty entry"));
        }
        if trimmed.contains(char::is_whitespace) {
            return Err(fail("contains whitespace"));
        }
        let (body, pin) = match trimmed.split_once('#') {
            Some((body, fragment)) => (body, Some(parse_pin(fragment).map_err(|w| fail(&w))?)),
            None => (trimmed, None),
        };
        if let Some((scheme, rest)) = body.split_once("://") {
            let transport = match scheme {
                "quic" => Some(LinkTransport::Quic),
                "auto" => Some(LinkTransport::Auto),
                _ => None,
            };
            if let Some(transport) = transport {
                if rest.contains('/') {
                    return Err(fail("a quic:// or auto:// peer takes no path"));
                }
                check_authority(rest).map_err(|w| fail(&w))?;
                return Ok(Self {
                    name: format!("{scheme}://{rest}"),
                    url: format!("https://{rest}/derp"),
                    dial: None,
                    pin,
                    transport,
                });
            }
            let tls = match scheme {
                "https" => true,
                "http" => false,
                _ => return Err(fail("scheme must be https, http, quic or auto")),
            };
            if pin.is_some() && !tls {
                return Err(fail("a certificate pin needs https"));
            }
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/derp"),
            };
            check_authority(authority).map_err(|w| fail(&w))?;
            if path.contains(['?', '#']) {
                return Err(fail("a URL may not carry a query"));
            }
            return Ok(Self {
                name: authority.to_string(),
                url: format!("{scheme}://{authority}{path}"),
                dial: None,
                pin,
                transport: LinkTransport::Tcp,
            });
        }
        let mut parts = body.split('/');
        let host = parts.next().unwrap_or_default();
        let dial = parts.next();
        if parts.next().is_some() {
            // Go: "too many components in host tuple".
            return Err(fail(
                "too many components: expected `host` or `host/dial-host`",
            ));
        }
        check_authority(host).map_err(|w| fail(&w))?;
        let dial = match dial {
            None => None,
            Some("") => return Err(fail("empty dial host after `/`")),
            Some(d) if d == host => None,
            Some(d) => {
                if d.contains(':') && d.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(fail(
                        "the dial host takes no port (the URL's port is used, as in Go)",
                    ));
                }
                Some(DialTarget::Host(d.to_string()))
            }
        };
        let name = match &dial {
            Some(DialTarget::Host(d)) => format!("{host}/{d}"),
            _ => host.to_string(),
        };
        Ok(Self {
            name,
            url: format!("https://{host}/derp"),
            dial,
            pin,
            transport: LinkTransport::Tcp,
        })
    }

    /// Parses a comma-separated list (`--mesh-with`). Empty entries are refused.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, TargetError> {
        list.split(',').map(Self::parse).collect()
    }

    /// Whether the link runs over plain HTTP (the mesh key is then exposed to the path).
    pub fn is_plain(&self) -> bool {
        self.url.starts_with("http://")
    }

    /// The URL's host and port (the port defaulting by scheme).
    pub fn host_port(&self) -> (String, u16) {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let default = if self.is_plain() { 80 } else { 443 };
        split_host_port(authority, default)
    }

    /// This target for an address found by a membership source: the same URL (and TLS
    /// name), dialled at `addr`.
    pub fn at(&self, addr: SocketAddr) -> Self {
        Self {
            name: format!("{}@{addr}", self.name),
            dial: Some(DialTarget::Addr(addr)),
            ..self.clone()
        }
    }
}

fn parse_pin(fragment: &str) -> Result<[u8; 32], String> {
    let hex_digits = fragment.strip_prefix(CERT_NAME_PIN_PREFIX).ok_or_else(|| {
        format!("the only fragment understood is `#{CERT_NAME_PIN_PREFIX}<64 hex digits>`")
    })?;
    let mut pin = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut pin)
        .map_err(|_| format!("{CERT_NAME_PIN_PREFIX} needs 64 hex digits"))?;
    Ok(pin)
}

/// Accepts `host`, `host:port`, `[v6]` and `[v6]:port`.
fn check_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() {
        return Err("empty host".into());
    }
    if authority.contains('@') {
        return Err("user info is not allowed".into());
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in IPv6 address".to_string())?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{v6:?} is not an IPv6 address"))?;
        (v6, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("bad port {port:?}")),
        }
    }
    Ok(())
}

fn split_host_port(authority: &str, default: u16) -> (String, u16) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (v6.to_string(), port.unwrap_or(default));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(default)),
        None => (authority.to_string(), default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        let t = PeerTarget::parse("derp2.example.com").unwrap();
        assert_eq!(t.url, "https://derp2.example.com/derp");
        assert_eq!(t.dial, None);
        assert_eq!(t.host_port(), ("derp2.example.com".into(), 443));

        let t = PeerTarget::parse("derp2.example.com/10.0.0.7").unwrap();
        assert_eq!(t.url, "https://derp2.example.com/derp");
        assert_eq!(t.dial, Some(DialTarget::Host("10.0.0.7".into())));
        assert_eq!(t.name, "derp2.example.com/10.0.0.7");

        let t = PeerTarget::parse("localhost:8443").unwrap();
        assert_eq!(t.url, "https://localhost:8443/derp");
        assert_eq!(t.host_port(), ("localhost".into(), 8443));

        // Dialling the host itself is no dial override.
        assert_eq!(PeerTarget::parse("a.example/a.example").unwrap().dial, None);
        let list = PeerTarget::parse_list("a.example,b.example/10.0.0.2").unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn urls_and_pins() {
        let t = PeerTarget::parse("http://10.0.0.7:3340/derp").unwrap();
        assert!(t.is_plain());
        assert_eq!(t.host_port(), ("10.0.0.7".into(), 3340));
        let t = PeerTarget::parse("https://[::1]:8443").unwrap();
        assert_eq!(t.url, "https://[::1]:8443/derp");
        assert_eq!(t.host_port(), ("::1".into(), 8443));

        let hex = "ab".repeat(32);
        let t = PeerTarget::parse(&format!("derp2.example.com#sha256-raw:{hex}")).unwrap();
        assert_eq!(t.pin, Some([0xab; 32]));
        assert_eq!(t.url, "https://derp2.example.com/derp");
        let at = t.at("10.1.2.3:443".parse().unwrap());
        assert_eq!(
            at.dial,
            Some(DialTarget::Addr("10.1.2.3:443".parse().unwrap()))
        );
        assert_eq!(at.pin, t.pin);
    }

    #[test]
    fn quic_and_auto_peers() {
        let t = PeerTarget::parse("quic://localhost:8443").unwrap();
        assert_eq!(t.transport, LinkTransport::Quic);
        assert_eq!(t.url, "https://localhost:8443/derp");
        assert_eq!(t.host_port(), ("localhost".into(), 8443));
        assert!(!t.is_plain());
        let t =
            PeerTarget::parse(&format!("auto://10.0.0.7#sha256-raw:{}", "cd".repeat(32))).unwrap();
        assert_eq!(t.transport, LinkTransport::Auto);
        assert_eq!(t.host_port(), ("10.0.0.7".into(), 443));
        assert_eq!(t.pin, Some([0xcd; 32]));
        // The same host over another transport is another target.
        assert_ne!(
            PeerTarget::parse("quic://a:1").unwrap(),
            PeerTarget::parse("https://a:1").unwrap()
        );
        assert_eq!(
            PeerTarget::parse("a").unwrap().transport,
            LinkTransport::Tcp
        );
    }

    #[test]
    fn bad_entries_say_why() {
        for (entry, why) in [
            ("", "empty entry"),
            ("a/b/c", "too many components"),
            ("a/", "empty dial host"),
            ("a:0", "bad port"),
            ("a:http", "bad port"),
            ("ftp://a/derp", "scheme"),
            ("quic://a:8443/derp", "no path"),
            ("auto://", "empty host"),
            ("a#sha256-raw:00", "64 hex digits"),
            ("a#b", "fragment"),
            ("https://u@a/derp", "user info"),
            ("https://a/derp?x=1", "query"),
            ("a/b:9", "takes no port"),
            ("a b", "whitespace"),
        ] {
            let err = PeerTarget::parse(entry).unwrap_err();
            assert!(err.to_string().contains(why), "{entry:?}: {err}");
        }
        let plain_pin = format!("http://a/derp#sha256-raw:{}", "00".repeat(32));
        assert!(
            PeerTarget::parse(&plain_pin)
                .unwrap_err()
                .why
                .contains("needs https")
        );
        assert!(PeerTarget::parse_list("a,,b").is_err());
    }
}
