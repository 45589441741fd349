//! DNS membership: re-resolve a name on an interval and publish the region's peer addresses.
//!
//! The documented case is a Kubernetes headless Service, whose name resolves to the A/AAAA
//! records of every ready pod; SRV names give the port too. Each round's answer goes through
//! [`Membership`], so a failed or empty lookup keeps the current peers and a huge answer is
//! cut to `max_peers`. The full current set is published on a `watch` channel; changes are
//! logged once (info) and anomalies once per distinct anomaly (warn), and counted in
//! `derp_mesh_dns_*`.
//!
//! The resolver's cache is cleared before every round: the interval, not the records' TTL,
//! decides how fresh the set is.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::membership::{Anomaly, Membership, MembershipChange, ResolveFailure};
use crate::config::{ConfigError, go_duration};
use crate::defaults;
use crate::metrics::{DnsLookupResult, Metrics};

/// SRV targets resolved at once: enough that a round of 64 targets takes a few round trips,
/// few enough not to burst a cluster DNS server.
const SRV_TARGET_CONCURRENCY: usize = 8;

/// One DNS membership source: a `[[mesh.dns]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DnsSource {
    /// The name to resolve. End it with a dot (`derp.ns.svc.cluster.local.`) to skip the
    /// system resolver's search domains.
    pub name: String,
    /// Which records to ask for.
    pub kind: RecordKind,
    /// How often to resolve again (the first lookup is immediate).
    #[serde(default = "default_interval", with = "go_duration")]
    pub interval: Duration,
    /// Name servers to ask; empty means the system's (`/etc/resolv.conf`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<SocketAddr>,
    /// Most peers this source may name; larger answers keep the first `max_peers` addresses in
    /// sorted order.
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    /// Deadline for one lookup round, every query included.
    #[serde(default = "default_timeout", with = "go_duration")]
    pub timeout: Duration,
    /// How links reach the peers found: scheme, TLS name, path and optional
    /// `#sha256-raw:<hex>` pin, in `--mesh-with` URL form (`quic://name` or `auto://name` for
    /// QUIC links to our relays). The address and port come from DNS.
    /// Default: `https://<name>/derp` (a headless Service's pods usually share one certificate
    /// for a public name: set that name here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
}

/// Which records name the peers.
///
/// In the config file: `kind = { type = "addresses", port = 443 }` or `kind = { type = "srv" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRecordKind", into = "RawRecordKind")]
#[non_exhaustive]
pub enum RecordKind {
    /// A and AAAA records, every address dialled at `port` (a headless Service).
    Addresses {
        /// The peers' DERP port.
        port: u16,
    },
    /// SRV records: each target's A/AAAA addresses at the record's port. Priority and weight
    /// are ignored: every target is a peer.
    Srv,
}

/// [`RecordKind`] as written, so that a `port` given to SRV is refused rather than ignored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecordKind {
    #[serde(rename = "type")]
    kind: RawKindTag,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKindTag {
    Addresses,
    Srv,
}

impl TryFrom<RawRecordKind> for RecordKind {
    type Error = &'static str;

    fn try_from(raw: RawRecordKind) -> Result<Self, Self::Error> {
        match (raw.kind, raw.port) {
            (RawKindTag::Addresses, Some(port)) => Ok(Self::Addresses { port }),
            (RawKindTag::Addresses, None) => {
                Err("type = \"addresses\" needs the peers' DERP port (port = 443)")
            }
            (RawKindTag::Srv, None) => Ok(Self::Srv),
            (RawKindTag::Srv, Some(_)) => {
                Err("type = \"srv\" takes no port: each SRV record carries its own")
            }
        }
    }
}

impl From<RecordKind> for RawRecordKind {
    fn from(kind: RecordKind) -> Self {
        match kind {
            RecordKind::Addresses { port } => Self {
                kind: RawKindTag::Addresses,
                port: Some(port),
            },
            RecordKind::Srv => Self {
                kind: RawKindTag::Srv,
                port: None,
            },
        }
    }
}

fn default_interval() -> Duration {
    defaults::MESH_DNS_INTERVAL
}

fn default_timeout() -> Duration {
    defaults::MESH_DNS_TIMEOUT
}

fn default_max_peers() -> usize {
    defaults::MESH_DNS_MAX_PEERS
}

impl DnsSource {
    /// A source for `name` with the default interval, timeout and `max_peers`, using the
    /// system's name servers.
    pub fn new(name: impl Into<String>, kind: RecordKind) -> Self {
        Self {
            name: name.into(),
            kind,
            interval: defaults::MESH_DNS_INTERVAL,
            nameservers: Vec::new(),
            max_peers: defaults::MESH_DNS_MAX_PEERS,
            timeout: defaults::MESH_DNS_TIMEOUT,
            peer_url: None,
        }
    }

    /// The target every address found is dialled as (see [`DnsSource::peer_url`]).
    pub fn peer_template(&self) -> Result<super::PeerTarget, ConfigError> {
        let url = match &self.peer_url {
            Some(u) => u.clone(),
            None => format!("https://{}/derp", self.name.trim_end_matches('.')),
        };
        super::PeerTarget::parse(&url).map_err(|e| ConfigError::Invalid {
            key: "mesh.dns.peer_url",
            reason: e.to_string(),
        })
    }

    /// Refuses values the source cannot run with, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        if self.name.trim().is_empty() {
            return Err(invalid("mesh.dns.name", "must not be empty".into()));
        }
        if let Err(e) = Name::from_str(&self.name) {
            return Err(invalid(
                "mesh.dns.name",
                format!("{:?} is not a DNS name: {e}", self.name),
            ));
        }
        if self.interval.is_zero() {
            return Err(invalid(
                "mesh.dns.interval",
                "must be more than 0 (the name would be resolved back to back)".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid(
                "mesh.dns.timeout",
                "must be more than 0 (every lookup would time out)".into(),
            ));
        }
        if self.max_peers == 0 {
            return Err(invalid("mesh.dns.max_peers", "must be at least 1".into()));
        }
        if let Some(url) = &self.peer_url
            && !url.contains("://")
        {
            return Err(invalid(
                "mesh.dns.peer_url",
                format!("{url:?} must be a URL such as https://derp.example.com/derp"),
            ));
        }
        self.peer_template()?;
        if self.kind == (RecordKind::Addresses { port: 0 }) {
            return Err(invalid(
                "mesh.dns.kind.port",
                "must not be 0 (the peers' DERP port, e.g. 443)".into(),
            ));
        }
        if let Some(ns) = self.nameservers.iter().find(|ns| ns.port() == 0) {
            return Err(invalid(
                "mesh.dns.nameservers",
                format!("{ns} has port 0 (DNS is port 53)"),
            ));
        }
        Ok(())
    }
}

/// Why a DNS source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsSourceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The system resolver configuration could not be read.
    #[error("mesh DNS source {name}: system resolver configuration: {reason}")]
    SystemConfig {
        /// The source's name.
        name: String,
        /// What the resolver said.
        reason: String,
    },
}

/// Resolves `source` now and then every `interval`, publishing the current peer set on
/// `peers`, until `cancel` fires.
///
/// `exclude` holds our own addresses, left out of every answer. A failed or empty lookup keeps
/// the published set. Returns early only if the source cannot start. On return the published
/// set is left as it was (the caller decides what a stopped source means; the channel closes
/// when `peers` drops) and this source's peers leave `derp_mesh_dns_peers`.
pub async fn run(
    source: DnsSource,
    exclude: HashSet<SocketAddr>,
    metrics: Arc<Metrics>,
    peers: watch::Sender<BTreeSet<SocketAddr>>,
    cancel: CancellationToken,
) -> Result<(), DnsSourceError> {
    source.validate()?;
    let resolver = build_resolver(&source)?;
    // Cannot fail: validate() parsed it.
    let name = Name::from_str(&source.name).map_err(|e| ConfigError::Invalid {
        key: "mesh.dns.name",
        reason: e.to_string(),
    })?;
    let mut membership = Membership::new(source.max_peers).excluding(exclude);
    let mut ticker = tokio::time::interval(source.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Targets cut by the previous round, so a persistent cut is logged once.
    let mut last_targets_cut = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        resolver.clear_cache();
        let round = tokio::time::timeout(
            source.timeout,
            resolve(&resolver, &name, source.kind, source.max_peers),
        );
        let answer = tokio::select! {
            () = cancel.cancelled() => break,
            answer = round => answer.unwrap_or_else(|_| Err(Failure {
                kind: ResolveFailure::Timeout,
                detail: format!("no answer within {:?}", source.timeout),
            })),
        };
        let (answer, detail, targets_cut) = match answer {
            Ok(a) => (Ok(a.addrs), None, a.targets_cut),
            Err(f) => (Err(f.kind), Some(f.detail), 0),
        };
        let change = membership.update(answer, std::time::Instant::now());
        record(&source, &metrics, &change, detail.as_deref(), targets_cut);
        if detail.is_none() {
            if targets_cut > 0 && targets_cut != last_targets_cut {
                warn!(
                    name = %source.name,
                    cut = targets_cut,
                    max_peers = source.max_peers,
                    "mesh DNS: more SRV targets than max_peers; resolving the first by name"
                );
            }
            last_targets_cut = targets_cut;
        }
        if change.is_change() {
            peers.send_replace(membership.current().clone());
        }
    }
    // This source names no one any more; the gauge is a sum over sources.
    metrics
        .mesh_dns_peers
        .decrement(membership.current().len() as f64);
    Ok(())
}

/// Counts and logs one round.
fn record(
    source: &DnsSource,
    metrics: &Metrics,
    change: &MembershipChange,
    detail: Option<&str>,
    targets_cut: usize,
) {
    let name = &source.name;
    metrics.mesh_dns_lookup(match change.note {
        Some(Anomaly::Failed(_)) => DnsLookupResult::Error,
        Some(Anomaly::Empty { .. }) => DnsLookupResult::Empty,
        _ => DnsLookupResult::Ok,
    });
    let truncated =
        matches!(change.note, Some(Anomaly::Trimmed { truncated, .. }) if truncated > 0);
    if truncated || targets_cut > 0 {
        metrics.mesh_dns_truncated.increment(1);
    }
    metrics.mesh_dns_added.increment(change.added.len() as u64);
    metrics
        .mesh_dns_removed
        .increment(change.removed.len() as u64);
    metrics.mesh_dns_peers.increment(change.added.len() as f64);
    metrics
        .mesh_dns_peers
        .decrement(change.removed.len() as f64);
    if change.is_change() {
        info!(%name, added = ?change.added, removed = ?change.removed, "mesh DNS peers changed");
    }
    match change.note {
        Some(note) if !change.repeated => {
            warn!(%name, detail = detail.unwrap_or(""), "mesh DNS: {note}");
        }
        None if change.recovered => info!(%name, "mesh DNS answers are clean again"),
        _ => {}
    }
}

fn build_resolver(source: &DnsSource) -> Result<TokioResolver, DnsSourceError> {
    let mut builder = if source.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| DnsSourceError::SystemConfig {
            name: source.name.clone(),
            reason: e.to_string(),
        })?
    } else {
        let servers = source
            .nameservers
            .iter()
            .map(|ns| {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                // Large answers (hundreds of pods) come back truncated over UDP.
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = source.timeout;
    // /etc/hosts would shadow the records this source exists to follow.
    options.use_hosts_file = ResolveHosts::Never;
    builder.build().map_err(|e| DnsSourceError::SystemConfig {
        name: source.name.clone(),
        reason: e.to_string(),
    })
}

/// One round's usable result.
struct Answer {
    addrs: Vec<SocketAddr>,
    /// SRV targets beyond `max_peers`, not resolved.
    targets_cut: usize,
}

/// Why a round failed: the kind for [`Membership`], the text for the log.
struct Failure {
    kind: ResolveFailure,
    detail: String,
}

impl Failure {
    fn new(kind: ResolveFailure, e: &NetError) -> Self {
        Self {
            kind,
            detail: e.to_string(),
        }
    }
}

async fn resolve(
    resolver: &TokioResolver,
    name: &Name,
    kind: RecordKind,
    max_peers: usize,
) -> Result<Answer, Failure> {
    match kind {
        RecordKind::Addresses { port } => {
            let ips = lookup_ips(resolver, name).await?;
            Ok(Answer {
                addrs: ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
                targets_cut: 0,
            })
        }
        RecordKind::Srv => resolve_srv(resolver, name, max_peers).await,
    }
}

/// SRV: the targets (sorted by name, at most `max_targets`), each resolved to its addresses at the record's port. A target that does not exist (a pod
/// going away) contributes nothing; a target whose lookup fails fails the round, so a partial
/// answer never removes peers.
async fn resolve_srv(
    resolver: &TokioResolver,
    name: &Name,
    max_targets: usize,
) -> Result<Answer, Failure> {
    let Some(lookup) = records(resolver.srv_lookup(name.clone()).await)? else {
        return Err(nxdomain(name));
    };
    let mut targets: Vec<(Name, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            // "." means "no service here" (RFC 2782).
            RData::SRV(srv) if !srv.target.is_root() => Some((srv.target.to_lowercase(), srv.port)),
            _ => None,
        })
        .collect();
    targets.sort();
    targets.dedup();
    // Every target resolves to at least one address, so more targets than max_peers can only
    // be cut later; resolving them all would let one answer fan out into thousands of queries.
    let targets_cut = targets.len().saturating_sub(max_targets);
    targets.truncate(max_targets);
    let mut lookups = futures_util::stream::iter(targets)
        .map(|(target, port)| async move {
            match lookup_ips(resolver, &target).await {
                Ok(ips) => Ok(ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()),
                Err(f) if f.kind == ResolveFailure::NxDomain => Ok(Vec::new()),
                Err(f) => Err(f),
            }
        })
        .buffer_unordered(SRV_TARGET_CONCURRENCY);
    let mut addrs = Vec::new();
    while let Some(result) = lookups.next().await {
        let found: Vec<SocketAddr> = result?;
        addrs.extend(found);
    }
    Ok(Answer { addrs, targets_cut })
}

/// A and AAAA for `name`, asked together. NXDOMAIN for both is a failure; no records of
/// either type is an empty answer; any other failure fails the lookup (half an answer would
/// remove the other family's peers).
async fn lookup_ips(resolver: &TokioResolver, name: &Name) -> Result<Vec<IpAddr>, Failure> {
    let (v4, v6) = tokio::join!(
        resolver.ipv4_lookup(name.clone()),
        resolver.ipv6_lookup(name.clone())
    );
    let (v4, v6) = (records(v4)?, records(v6)?);
    if v4.is_none() && v6.is_none() {
        return Err(nxdomain(name));
    }
    Ok(v4
        .iter()
        .chain(v6.iter())
        .flat_map(|lookup| lookup.answers())
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect())
}

/// `Some(lookup)` for an answer (maybe without records of the type asked), `None` for
/// NXDOMAIN, or the failure.
fn records(result: Result<Lookup, NetError>) -> Result<Option<Lookup>, Failure> {
    match result {
        Ok(lookup) => Ok(Some(lookup)),
        Err(NetError::Dns(DnsError::NoRecordsFound(no))) => {
            if no.response_code == ResponseCode::NXDomain {
                Ok(None)
            } else {
                Ok(Some(Lookup::new_with_max_ttl(*no.query, [])))
            }
        }
        Err(e @ NetError::Timeout) => Err(Failure::new(ResolveFailure::Timeout, &e)),
        Err(NetError::Dns(DnsError::ResponseCode(code))) => Err(Failure {
            kind: ResolveFailure::ServerError {
                rcode: u16::from(code),
            },
            detail: format!("server answered {code}"),
        }),
        Err(e) => Err(Failure::new(ResolveFailure::Transport, &e)),
    }
}

fn nxdomain(name: &Name) -> Failure {
    Failure {
        kind: ResolveFailure::NxDomain,
        detail: format!("{name} does not exist"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[[mesh.dns]]` entries as the config file holds them.
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Mesh {
        dns: Vec<DnsSource>,
    }

    #[test]
    fn config_entries_read_with_defaults_and_round_trip() {
        let text = r#"
            [[dns]]
            name = "derp-headless.derp.svc.cluster.local."
            kind = { type = "addresses", port = 443 }

            [[dns]]
            name = "_derp._tcp.derp.example.com."
            kind = { type = "srv" }
            interval = "30s"
            timeout = "2s"
            max_peers = 8
            nameservers = ["10.96.0.10:53"]
        "#;
        let mesh: Mesh = toml::from_str(text).unwrap();
        let headless = DnsSource::new(
            "derp-headless.derp.svc.cluster.local.",
            RecordKind::Addresses { port: 443 },
        );
        assert_eq!(mesh.dns[0], headless);
        let srv = &mesh.dns[1];
        assert_eq!(srv.kind, RecordKind::Srv);
        assert_eq!(srv.interval, Duration::from_secs(30));
        assert_eq!(srv.timeout, Duration::from_secs(2));
        assert_eq!(srv.max_peers, 8);
        assert_eq!(srv.nameservers, vec!["10.96.0.10:53".parse().unwrap()]);
        for source in &mesh.dns {
            source.validate().unwrap();
        }
        let printed = toml::to_string(&mesh).unwrap();
        let again: Mesh = toml::from_str(&printed).unwrap();
        assert_eq!(again.dns, mesh.dns, "{printed}");
    }

    #[test]
    fn quic_peer_urls_carry_over_to_every_address_found() {
        let mut source = DnsSource::new("derp.example.com.", RecordKind::Addresses { port: 8443 });
        source.peer_url = Some("quic://derp.example.com".into());
        source.validate().unwrap();
        let template = source.peer_template().unwrap();
        assert_eq!(template.transport, super::super::LinkTransport::Quic);
        let at = template.at("10.0.0.7:8443".parse().unwrap());
        assert_eq!(at.transport, super::super::LinkTransport::Quic);
        assert_eq!(
            at.dial,
            Some(super::super::DialTarget::Addr(
                "10.0.0.7:8443".parse().unwrap()
            ))
        );
        assert_eq!(at.url, "https://derp.example.com/derp");
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "[[dns]]\nname = \"a.\"\nkind = { type = \"srv\" }\nintervall = \"1s\"",
            "[[dns]]\nname = \"a.\"\nkind = { type = \"srv\", port = 443 }",
            "[[dns]]\nname = \"a.\"\nkind = { type = \"cname\" }",
            "[[dns]]\nname = \"a.\"\nkind = { type = \"addresses\" }",
        ] {
            assert!(toml::from_str::<Mesh>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let ok = DnsSource::new("derp.example.com.", RecordKind::Addresses { port: 443 });
        ok.validate().unwrap();
        type Spoil = fn(&mut DnsSource);
        let cases: [(&str, Spoil); 7] = [
            ("mesh.dns.name", |s| s.name = " ".into()),
            ("mesh.dns.name", |s| s.name = "a..b".into()),
            ("mesh.dns.interval", |s| s.interval = Duration::ZERO),
            ("mesh.dns.timeout", |s| s.timeout = Duration::ZERO),
            ("mesh.dns.max_peers", |s| s.max_peers = 0),
            ("mesh.dns.kind.port", |s| {
                s.kind = RecordKind::Addresses { port: 0 }
            }),
            ("mesh.dns.nameservers", |s| {
                s.nameservers = vec!["10.0.0.1:0".parse().unwrap()]
            }),
        ];
        for (want, spoil) in cases {
            let mut bad = ok.clone();
            spoil(&mut bad);
            match bad.validate() {
                Err(ConfigError::Invalid { key, reason }) => {
                    assert_eq!(key, want, "{reason}");
                }
                other => panic!("{want}: {other:?}"),
            }
        }
    }
}
