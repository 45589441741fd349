//! The live DERP map (`/derpmap`): this relay's region as `tailcfg.DERPMap` JSON, built from
//! the mesh membership, for Headscale's `derp.urls` or anything else that polls a map.
//!
//! A node leaves the map when clients should stop choosing it: this relay while it drains, a
//! peer this relay cannot reach. A peer that disappears briefly (a pod restarting, a DNS
//! answer missing it once) stays for [`crate::defaults::DERP_MAP_KEEP`] after it was last
//! seen healthy (keep-last-good), so one restart does not reshuffle every client's home.
//! Nodes are sorted by name so every client sees the same order.
//!
//! [`LiveMap`] is pure: fed what the relay knows and `now`, it returns the map.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `tailcfg.DERPMap` (the fields a map of self-hosted regions uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DerpMap {
    /// By region ID (JSON object keys are the IDs as strings, as Go's `map[int]`).
    pub regions: BTreeMap<u32, DerpRegion>,
    /// Tailscale's own regions are not wanted alongside.
    #[serde(
        rename = "omitDefaultRegions",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub omit_default_regions: bool,
}

/// `tailcfg.DERPRegion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DerpRegion {
    /// `RegionID`.
    #[serde(rename = "RegionID")]
    pub region_id: u32,
    /// Short code, e.g. `fra`.
    pub region_code: String,
    /// Human name, e.g. `Frankfurt`.
    pub region_name: String,
    /// Set when no node of the region should be chosen as a home (all draining or
    /// unreachable): clients still reach peers homed here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_measure_no_home: bool,
    /// Nodes in priority order.
    pub nodes: Vec<DerpNode>,
}

/// `tailcfg.DERPNode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DerpNode {
    /// Unique name, e.g. `900a`.
    pub name: String,
    /// `RegionID`.
    #[serde(rename = "RegionID")]
    pub region_id: u32,
    /// TLS name and, without IPs, where to connect.
    pub host_name: String,
    /// Certificate name to verify instead of `HostName` (`sha256-raw:<hex>` pins).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_name: String,
    /// IPv4 address to dial.
    #[serde(rename = "IPv4", default, skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// IPv6 address to dial.
    #[serde(rename = "IPv6", default, skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// STUN port (0: 3478).
    #[serde(rename = "STUNPort", default, skip_serializing_if = "is_zero")]
    pub stun_port: u16,
    /// DERP (HTTPS) port (0: 443).
    #[serde(rename = "DERPPort", default, skip_serializing_if = "is_zero")]
    pub derp_port: u16,
    /// Skip certificate checks (tests only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_for_tests: bool,
    /// Port 80 answers captive-portal checks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_port80: bool,
}

fn is_zero(p: &u16) -> bool {
    *p == 0
}

/// What the region looks like from this relay at one moment.
#[derive(Debug, Clone)]
pub struct Observation {
    /// This relay's node.
    pub own: DerpNode,
    /// Whether this relay is draining.
    pub draining: bool,
    /// The other relays this one links to, and whether each is reachable.
    pub peers: Vec<(DerpNode, bool)>,
}

/// The region's map with keep-last-good memory of peers.
#[derive(Debug)]
pub struct LiveMap {
    region_id: u32,
    region_code: String,
    region_name: String,
    keep: Duration,
    /// Peers last seen healthy, by node name.
    last_good: BTreeMap<String, (DerpNode, Instant)>,
}

impl LiveMap {
    /// A map of region `region_id`; peers stay `keep` after they were last seen healthy.
    pub fn new(region_id: u32, region_code: String, region_name: String, keep: Duration) -> Self {
        Self {
            region_id,
            region_code,
            region_name,
            keep,
            last_good: BTreeMap::new(),
        }
    }

    /// The map as of `now`, given what the relay observes.
    pub fn update(&mut self, seen: Observation, now: Instant) -> DerpMap {
        for (node, reachable) in seen.peers {
            if reachable {
                self.last_good.insert(node.name.clone(), (node, now));
            }
        }
        let keep = self.keep;
        self.last_good
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < keep);
        let mut nodes: Vec<DerpNode> = self
            .last_good
            .values()
            .map(|(n, _)| n.clone())
            .filter(|n| n.name != seen.own.name)
            .collect();
        if !seen.draining {
            nodes.push(seen.own);
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for n in &mut nodes {
            n.region_id = self.region_id;
        }
        let region = DerpRegion {
            region_id: self.region_id,
            region_code: self.region_code.clone(),
            region_name: self.region_name.clone(),
            no_measure_no_home: nodes.is_empty(),
            nodes,
        };
        DerpMap {
            regions: BTreeMap::from([(self.region_id, region)]),
            omit_default_regions: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> DerpNode {
        DerpNode {
            name: name.into(),
            region_id: 0,
            host_name: format!("{name}.example.com"),
            cert_name: String::new(),
            ipv4: String::new(),
            ipv6: String::new(),
            stun_port: 0,
            derp_port: 0,
            insecure_for_tests: false,
            can_port80: false,
        }
    }

    fn names(m: &DerpMap) -> Vec<String> {
        m.regions[&900]
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    #[test]
    fn draining_and_unreachable_nodes_leave_briefly_missing_ones_stay() {
        let t0 = Instant::now();
        let keep = Duration::from_secs(60);
        let mut live = LiveMap::new(900, "fra".into(), "Frankfurt".into(), keep);
        let obs = |draining, peers: &[(&str, bool)]| Observation {
            own: node("900b"),
            draining,
            peers: peers.iter().map(|(n, ok)| (node(n), *ok)).collect(),
        };
        let m = live.update(obs(false, &[("900a", true), ("900c", true)]), t0);
        assert_eq!(names(&m), ["900a", "900b", "900c"]);
        assert!(m.regions[&900].nodes.iter().all(|n| n.region_id == 900));
        // 900c disappears from membership for 30 s: kept (last good).
        let m = live.update(obs(false, &[("900a", true)]), t0 + Duration::from_secs(30));
        assert_eq!(names(&m), ["900a", "900b", "900c"]);
        // ... and after `keep` without being seen healthy: gone.
        let m = live.update(obs(false, &[("900a", true)]), t0 + Duration::from_secs(61));
        assert_eq!(names(&m), ["900a", "900b"]);
        // Unreachable is not "seen healthy" (last: 61 s): it ages out the same way.
        let m = live.update(
            obs(false, &[("900a", false)]),
            t0 + Duration::from_secs(120),
        );
        assert_eq!(names(&m), ["900a", "900b"]);
        let m = live.update(
            obs(false, &[("900a", false)]),
            t0 + Duration::from_secs(121),
        );
        assert_eq!(names(&m), ["900b"]);
        // Draining: this relay leaves its own map; with nothing left, no home here.
        let m = live.update(obs(true, &[]), t0 + Duration::from_secs(122));
        assert!(names(&m).is_empty());
        assert!(m.regions[&900].no_measure_no_home);
    }

    #[test]
    fn json_has_tailcfgs_field_names() {
        let mut live = LiveMap::new(
            900,
            "fra".into(),
            "Frankfurt".into(),
            Duration::from_secs(1),
        );
        let mut own = node("900a");
        own.ipv4 = "203.0.113.7".into();
        own.stun_port = 3478;
        own.derp_port = 8443;
        let m = live.update(
            Observation {
                own,
                draining: false,
                peers: vec![],
            },
            Instant::now(),
        );
        let json = serde_json::to_value(&m).unwrap();
        let n = &json["Regions"]["900"]["Nodes"][0];
        assert_eq!(n["RegionID"], 900);
        assert_eq!(n["HostName"], "900a.example.com");
        assert_eq!(n["IPv4"], "203.0.113.7");
        assert_eq!(n["STUNPort"], 3478);
        assert_eq!(n["DERPPort"], 8443);
        assert!(
            n.get("IPv6").is_none(),
            "empty fields are left out, as Go's omitempty"
        );
        assert_eq!(json["Regions"]["900"]["RegionCode"], "fra");
        let back: DerpMap = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }
}

/// This relay's node as configured (`[derp_map]` plus the listeners).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Region ID.
    pub region_id: u32,
    /// Region code.
    pub region_code: String,
    /// Region name.
    pub region_name: String,
    /// This node's name.
    pub node_name: String,
    /// The TLS name clients use.
    pub host_name: String,
    /// Public IPv4 to dial.
    pub ipv4: String,
    /// Public IPv6 to dial.
    pub ipv6: String,
    /// The DERP port.
    pub derp_port: u16,
    /// The STUN port (0: no STUN).
    pub stun_port: u16,
    /// Plain HTTP (tests and TLS-terminating proxies only).
    pub plain: bool,
    /// Port 80 answers captive-portal checks.
    pub can_port80: bool,
}

impl NodeConfig {
    /// The DERP-map node for this relay; `cert_name` pins a self-signed certificate.
    pub fn node(&self, cert_name: Option<&str>) -> DerpNode {
        DerpNode {
            name: self.node_name.clone(),
            region_id: self.region_id,
            host_name: self.host_name.clone(),
            cert_name: cert_name.unwrap_or_default().to_string(),
            ipv4: self.ipv4.clone(),
            ipv6: self.ipv6.clone(),
            stun_port: self.stun_port,
            derp_port: if self.derp_port == 443 {
                0
            } else {
                self.derp_port
            },
            insecure_for_tests: false,
            can_port80: self.can_port80,
        }
    }

    /// The node for a mesh peer: its name, the URL's host and port, the address it is
    /// dialled at (when known), its pin; STUN on this relay's port (a region is deployed
    /// alike).
    pub fn peer_node(&self, peer: &crate::mesh::target::PeerTarget) -> DerpNode {
        let (host, port) = peer.host_port();
        let dial_ip = match &peer.dial {
            Some(crate::mesh::target::DialTarget::Addr(a)) => Some(a.ip()),
            Some(crate::mesh::target::DialTarget::Host(h)) => h.parse().ok(),
            None => host.trim_matches(['[', ']']).parse().ok(),
        };
        let (ipv4, ipv6) = match dial_ip {
            Some(std::net::IpAddr::V4(v4)) => (v4.to_string(), String::new()),
            Some(std::net::IpAddr::V6(v6)) => (String::new(), v6.to_string()),
            None => (String::new(), String::new()),
        };
        DerpNode {
            name: peer.name.clone(),
            region_id: self.region_id,
            host_name: host.trim_matches(['[', ']']).to_string(),
            cert_name: peer
                .pin
                .map(|p| format!("sha256-raw:{}", hex::encode(p)))
                .unwrap_or_default(),
            ipv4,
            ipv6,
            stun_port: self.stun_port,
            derp_port: if port == 443 { 0 } else { port },
            insecure_for_tests: false,
            can_port80: self.can_port80,
        }
    }
}

/// Serves `/derpmap` for a running relay: its configuration, the mesh, the relay's phase.
#[derive(Debug)]
pub struct DerpMapSource {
    node: NodeConfig,
    cert_name: Option<String>,
    relay: crate::relay::Relay,
    mesh: Option<crate::mesh::Mesh>,
    live: std::sync::Mutex<LiveMap>,
}

impl DerpMapSource {
    /// A source for `relay` (and its `mesh`, if it has one).
    pub fn new(
        node: NodeConfig,
        cert_name: Option<String>,
        relay: crate::relay::Relay,
        mesh: Option<crate::mesh::Mesh>,
    ) -> Self {
        let live = LiveMap::new(
            node.region_id,
            node.region_code.clone(),
            node.region_name.clone(),
            crate::defaults::DERP_MAP_KEEP,
        );
        Self {
            node,
            cert_name,
            relay,
            mesh,
            live: std::sync::Mutex::new(live),
        }
    }

    /// The map now, as JSON.
    pub fn json(&self) -> bytes::Bytes {
        let peers = self
            .mesh
            .as_ref()
            .map(|m| {
                m.peers()
                    .into_iter()
                    .map(|(t, ok)| (self.node.peer_node(&t), ok))
                    .collect()
            })
            .unwrap_or_default();
        let seen = Observation {
            own: self.node.node(self.cert_name.as_deref()),
            draining: !self.relay.is_ready(),
            peers,
        };
        let map = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(seen, Instant::now());
        bytes::Bytes::from(serde_json::to_vec(&map).unwrap_or_default())
    }
}
