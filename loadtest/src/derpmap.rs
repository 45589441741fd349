//! The DERPMap JSON that Tailscale clients and Headscale consume (derp-protocol.md §9).
//!
//! Go decodes field names case-insensitively; we accept the Go names and lower-case aliases,
//! which covers what control servers emit.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context as _;
use derp_proto::io::tls::ServerVerify;
use serde::{Deserialize, Serialize};

/// A DERP map: regions keyed by decimal region ID.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[non_exhaustive]
pub struct DerpMap {
    /// Regions by ID string.
    #[serde(rename = "Regions", alias = "regions", default)]
    pub regions: BTreeMap<String, DerpRegion>,
}

/// One region.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DerpRegion {
    /// Region ID (900–999 for self-hosted).
    #[serde(rename = "RegionID", alias = "regionID", alias = "regionId")]
    pub region_id: i64,
    /// Short code.
    #[serde(rename = "RegionCode", alias = "regionCode")]
    pub region_code: String,
    /// Nodes in priority order.
    #[serde(rename = "Nodes", alias = "nodes")]
    pub nodes: Vec<DerpNode>,
}

/// One node of a region.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DerpNode {
    /// Unique node name, e.g. `900a`.
    #[serde(rename = "Name", alias = "name")]
    pub name: String,
    /// Owning region.
    #[serde(rename = "RegionID", alias = "regionID", alias = "regionId")]
    pub region_id: i64,
    /// Host name for TLS and, without IPs, DNS.
    #[serde(rename = "HostName", alias = "hostName", alias = "hostname")]
    pub host_name: String,
    /// Expected certificate name or `sha256-raw:` pin.
    #[serde(rename = "CertName", alias = "certName")]
    pub cert_name: String,
    /// Literal IPv4 to dial ("none" disables IPv4).
    #[serde(rename = "IPv4", alias = "ipv4")]
    pub ipv4: String,
    /// Literal IPv6 to dial.
    #[serde(rename = "IPv6", alias = "ipv6")]
    pub ipv6: String,
    /// 0 ⇒ 3478, −1 ⇒ no STUN.
    #[serde(rename = "STUNPort", alias = "stunPort")]
    pub stun_port: i64,
    /// STUN only, no DERP.
    #[serde(rename = "STUNOnly", alias = "stunOnly")]
    pub stun_only: bool,
    /// TLS port, 0 ⇒ 443.
    #[serde(rename = "DERPPort", alias = "derpPort")]
    pub derp_port: u16,
    /// Skip certificate verification.
    #[serde(rename = "InsecureForTests", alias = "insecureForTests")]
    pub insecure_for_tests: bool,
    /// Override STUN destination IP.
    #[serde(rename = "STUNTestIP", alias = "stunTestIP")]
    pub stun_test_ip: String,
}

impl DerpMap {
    /// Parses map JSON.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        serde_json::from_str(json).context("parse DERP map JSON")
    }

    /// Every node with its region, in region-ID then priority order.
    pub fn nodes(&self) -> Vec<(&DerpRegion, &DerpNode)> {
        let mut regions: Vec<&DerpRegion> = self.regions.values().collect();
        regions.sort_by_key(|r| r.region_id);
        regions
            .into_iter()
            .flat_map(|r| r.nodes.iter().map(move |n| (r, n)))
            .collect()
    }
}

impl DerpNode {
    /// The address to dial instead of resolving the host name, if the map gives one.
    pub fn dial_ip(&self) -> Option<IpAddr> {
        self.ipv4
            .parse::<IpAddr>()
            .ok()
            .or_else(|| self.ipv6.parse().ok())
    }

    /// The DERP URL: `https://host:port/derp`, or `http://` when `plain` (loopback test fleets
    /// without TLS).
    pub fn derp_url(&self, plain: bool) -> String {
        let (scheme, default_port) = if plain { ("http", 80) } else { ("https", 443) };
        let port = if self.derp_port == 0 {
            default_port
        } else {
            self.derp_port
        };
        let host = if self.host_name.contains(':') {
            format!("[{}]", self.host_name)
        } else {
            self.host_name.clone()
        };
        format!("{scheme}://{host}:{port}/derp")
    }

    /// Where to dial: the literal IP and the DERP port, when known.
    pub fn dial_addr(&self, plain: bool) -> Option<SocketAddr> {
        let default_port = if plain { 80 } else { 443 };
        let port = if self.derp_port == 0 {
            default_port
        } else {
            self.derp_port
        };
        self.dial_ip().map(|ip| SocketAddr::new(ip, port))
    }

    /// How to check the certificate.
    pub fn verify(&self) -> ServerVerify {
        if self.insecure_for_tests {
            ServerVerify::Insecure
        } else {
            ServerVerify::from_cert_name(&self.cert_name).unwrap_or(ServerVerify::WebPki)
        }
    }

    /// The STUN address, unless disabled.
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        if self.stun_port < 0 {
            return None;
        }
        let port = if self.stun_port == 0 {
            3_478
        } else {
            self.stun_port as u16
        };
        let ip = self.stun_test_ip.parse().ok().or_else(|| self.dial_ip())?;
        Some(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let m = DerpMap::parse(
            r#"{"Regions": {"900": {"RegionID": 900, "RegionCode": "home", "RegionName": "Home DERP",
              "Nodes": [
                {"Name": "900a", "RegionID": 900, "HostName": "derp1.example.com",
                 "IPv4": "192.0.2.1", "IPv6": "2001:db8::1", "CanPort80": true},
                {"Name": "900b", "RegionID": 900, "HostName": "derp2.example.com",
                 "STUNPort": -1, "DERPPort": 8443, "InsecureForTests": true}]}},
              "omitDefaultRegions": true}"#,
        )
        .unwrap();
        let nodes = m.nodes();
        assert_eq!(nodes.len(), 2);
        let (r, a) = nodes[0];
        assert_eq!(r.region_id, 900);
        assert_eq!(a.derp_url(false), "https://derp1.example.com:443/derp");
        assert_eq!(a.dial_addr(false), Some("192.0.2.1:443".parse().unwrap()));
        assert_eq!(a.stun_addr(), Some("192.0.2.1:3478".parse().unwrap()));
        let b = nodes[1].1;
        assert_eq!(b.derp_url(true), "http://derp2.example.com:8443/derp");
        assert_eq!(b.stun_addr(), None);
        assert_eq!(b.verify(), ServerVerify::Insecure);
    }
}
