//! Outbound mesh: the links that make the relays of a region act as one.
//!
//! Every relay keeps one [`link`] to each other relay of its region. A link is a DERP client
//! logged in with this relay's key and the region's mesh key; it watches the peer relay's
//! connections (WatchConns → PeerPresent/PeerGone) and registers itself in the
//! [`Relay`](crate::relay::Relay) as the forwarder for the keys it hears about, so a packet
//! for a client homed on another node goes one hop by ForwardPacket. The inbound side (a peer
//! watching us, and ForwardPacket delivery) is part of the relay core.
//!
//! Membership: the set of targets is the static `--mesh-with` list plus whatever the
//! membership sources (DNS) currently report; each change starts links for new targets
//! and stops links for targets that went away. A target that turns out to be this relay
//! (same server key) is kept as a stopped entry so it is not dialled again.
//!
//! Security: the mesh key travels inside ClientInfo, sealed to whatever key the server
//! presents. Over plain HTTP anyone in the path who answers as the peer learns the key, so
//! links are TLS by default, verified against the system roots, a `--mesh-ca` bundle, or a
//! per-peer `sha256-raw:` pin; plain links need `--mesh-allow-plain`.

pub mod dns;
pub mod membership;
pub mod target;

mod auto;
mod forwarder;
mod health;
mod link;
mod metrics;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use derp_proto::MeshKey;
use derp_proto::backoff::{BackoffConfig, Jitter};
use derp_proto::io::tls::ServerVerify;
use rustls::RootCertStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::link::{LinkContext, LinkExit, LinkSettings};
use self::metrics::MeshMetrics;
pub use self::target::{DialTarget, LinkTransport, PeerTarget, TargetError};
use crate::config::MeshSettings;
use crate::relay::{LinkId, Relay};

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// Peers are configured but no mesh key is.
    #[error("--mesh-with requires --mesh-psk-file")]
    NoMeshKey,
    /// A peer entry is malformed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A plain-HTTP peer without the explicit opt-in.
    #[error(
        "mesh peer {0} is plain HTTP: the mesh key would be readable by anyone in the path who \
         answers as that relay; use https, or accept the risk with --mesh-allow-plain"
    )]
    PlainRefused(String),
    /// A DNS source is misconfigured.
    #[error(transparent)]
    Dns(crate::config::ConfigError),
    /// The CA bundle could not be used.
    #[error("mesh CA bundle {path}: {reason}")]
    CaBundle {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The running mesh: the links to the region's other relays, kept in step with the static
/// peer list and the DNS sources. Dropping it does not stop anything; the server's
/// cancellation (or [`Mesh::stop`]) does.
#[derive(Debug, Clone)]
pub struct Mesh {
    links: Arc<Mutex<Links>>,
}

/// Every link task, by target.
#[derive(Debug)]
struct Links {
    ctx: Arc<LinkContext>,
    links: HashMap<PeerTarget, Running>,
    next_id: u64,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    /// Set by the link when the target turned out to be this relay.
    is_self: Arc<AtomicBool>,
}

impl Mesh {
    /// Checks the settings and starts the mesh for `relay`: links to the static peers at
    /// once, and one task per DNS source whose answers add and remove links. `exclude` holds
    /// this relay's own listen addresses (DNS answers naming them are not dialled; anything
    /// else that is this relay is found by its server key). Every task belongs to `tasks`
    /// and stops with `cancel`.
    pub fn start(
        relay: Relay,
        settings: &MeshSettings,
        mesh_key: Option<MeshKey>,
        exclude: HashSet<SocketAddr>,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, MeshError> {
        let statics = settings
            .peers
            .iter()
            .map(|p| PeerTarget::parse(p))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let mut templates = Vec::new();
        for source in &settings.dns {
            source.validate().map_err(MeshError::Dns)?;
            templates.push(source.peer_template().map_err(MeshError::Dns)?);
        }
        let Some(mesh_key) = mesh_key else {
            return Err(MeshError::NoMeshKey);
        };
        for t in statics.iter().chain(&templates) {
            if t.is_plain() {
                if !settings.allow_plain {
                    return Err(MeshError::PlainRefused(t.name.clone()));
                }
                tracing::warn!(peer = %t, "mesh link over plain HTTP: anyone in the path who answers as this peer learns the mesh key");
            }
        }
        let verify = match &settings.ca_file {
            Some(path) => ServerVerify::Roots(Arc::new(load_ca_bundle(path)?)),
            None => system_roots(),
        };
        let ctx = Arc::new(LinkContext {
            secret: relay.secret().clone(),
            relay,
            mesh_key,
            verify,
            settings: LinkSettings {
                queue_packets: settings.queue_packets,
                queue_bytes: settings.queue_bytes,
                write_timeout: settings.write_timeout,
                ping_interval: settings.ping_interval,
                connect_timeout: settings.connect_timeout,
                backoff: reconnect_backoff(settings),
                max_keys: settings.max_keys_per_link,
                quic_fallback_after: settings.quic_fallback_after,
                quic_retry_interval: settings.quic_retry_interval,
            },
            metrics: MeshMetrics::new(),
            unreachable: Default::default(),
            quic: Default::default(),
        });
        let metrics = ctx.relay.metrics().clone();
        let mut links = Links {
            ctx,
            links: HashMap::new(),
            next_id: 1,
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        };
        links.reconcile(&statics);
        let mesh = Self {
            links: Arc::new(Mutex::new(links)),
        };
        if settings.dns.is_empty() {
            return Ok(mesh);
        }
        let mut found = Vec::new();
        for (source, template) in settings.dns.iter().cloned().zip(templates) {
            let (tx, rx) = tokio::sync::watch::channel(BTreeSet::new());
            let (exclude, metrics, cancel) = (exclude.clone(), metrics.clone(), cancel.clone());
            let name = source.name.clone();
            tasks.spawn(async move {
                if let Err(e) = dns::run(source, exclude, metrics, tx, cancel).await {
                    tracing::error!(source = %name, error = %e, "mesh DNS source stopped");
                }
            });
            found.push((template, rx));
        }
        let membership = mesh.clone();
        tasks.spawn(async move {
            membership.follow(statics, found, cancel).await;
        });
        Ok(mesh)
    }

    /// Reconciles the links with the static targets plus every DNS source's current
    /// answer, each time an answer changes, until cancelled or every source has stopped.
    async fn follow(
        &self,
        statics: BTreeSet<PeerTarget>,
        mut found: Vec<(
            PeerTarget,
            tokio::sync::watch::Receiver<BTreeSet<SocketAddr>>,
        )>,
        cancel: CancellationToken,
    ) {
        loop {
            let mut desired = statics.clone();
            for (template, rx) in &mut found {
                desired.extend(rx.borrow_and_update().iter().map(|a| template.at(*a)));
            }
            self.lock().reconcile(&desired);
            if found.is_empty() {
                return;
            }
            let changes = found
                .iter_mut()
                .map(|(_, rx)| Box::pin(rx.changed()))
                .collect::<Vec<_>>();
            let (changed, index, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = futures_util::future::select_all(changes) => r,
            };
            if changed.is_err() {
                // That source's task ended (it logged why); its last answer no longer counts.
                found.remove(index);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Targets with a link (including ones found to be this relay).
    pub fn targets(&self) -> Vec<PeerTarget> {
        self.lock().links.keys().cloned().collect()
    }

    /// The region's other relays as this one sees them: each target that is not this relay,
    /// and whether it is reachable (false after repeated failed connects).
    pub fn peers(&self) -> Vec<(PeerTarget, bool)> {
        let links = self.lock();
        let unreachable = links
            .ctx
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .names();
        links
            .links
            .iter()
            .filter(|(_, r)| !r.is_self.load(Ordering::Relaxed))
            .map(|(t, _)| (t.clone(), !unreachable.contains(&t.name)))
            .collect()
    }

    /// Targets found to be this relay (their links stopped after the first connect).
    pub fn self_targets(&self) -> Vec<PeerTarget> {
        self.lock()
            .links
            .iter()
            .filter(|(_, r)| r.is_self.load(Ordering::Relaxed))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Stops every link (the DNS sources stop with the server's cancellation).
    pub fn stop(&self) {
        let mut links = self.lock();
        for (_, running) in links.links.drain() {
            running.cancel.cancel();
        }
        links.ctx.metrics.links_configured.set(0.0);
    }
}

impl Links {
    /// Makes the running links exactly `desired`: starts links for new targets and stops
    /// links whose target is gone. Links already running are left alone.
    fn reconcile(&mut self, desired: &BTreeSet<PeerTarget>) {
        let gone: Vec<PeerTarget> = self
            .links
            .keys()
            .filter(|t| !desired.contains(*t))
            .cloned()
            .collect();
        for t in gone {
            if let Some(running) = self.links.remove(&t) {
                running.cancel.cancel();
                self.ctx.metrics.links_removed.increment(1);
                tracing::info!(peer = %t, "mesh peer removed");
            }
        }
        for t in desired {
            if self.links.contains_key(t) {
                continue;
            }
            let id = LinkId(self.next_id);
            self.next_id += 1;
            let cancel = self.cancel.child_token();
            let is_self = Arc::new(AtomicBool::new(false));
            let (ctx, target, c, flag) =
                (self.ctx.clone(), t.clone(), cancel.clone(), is_self.clone());
            self.tasks.spawn(async move {
                if link::run(ctx, id, target, c).await == LinkExit::SelfConnect {
                    flag.store(true, Ordering::Relaxed);
                }
            });
            self.links.insert(t.clone(), Running { cancel, is_self });
            self.ctx.metrics.links_added.increment(1);
            tracing::info!(peer = %t, url = %t.url, "mesh peer added");
        }
        self.ctx
            .metrics
            .links_configured
            .set(self.links.len() as f64);
    }
}

/// Reconnect delays: short enough that a restarted peer carries traffic again within about a
/// second of accepting connections, jittered so a region's links do not reconnect in step.
fn reconnect_backoff(settings: &MeshSettings) -> BackoffConfig {
    let mut b = BackoffConfig::new();
    b.min_delay = settings.reconnect_min;
    b.max_delay = settings.reconnect_max;
    b.jitter = Jitter::Full;
    b
}

/// The system trust store (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`, as Go does); the
/// baked-in Mozilla roots if the system has none.
fn system_roots() -> ServerVerify {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading system certificates for mesh links");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no system root certificates found; mesh links verify against the built-in Mozilla roots"
        );
        return ServerVerify::WebPki;
    }
    ServerVerify::Roots(Arc::new(roots))
}

fn load_ca_bundle(path: &Path) -> Result<RootCertStore, MeshError> {
    crate::tls::load_root_bundle(path).map_err(|reason| MeshError::CaBundle {
        path: path.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundle_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(load_ca_bundle(&missing).is_err());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello").unwrap();
        let e = load_ca_bundle(&empty).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_ca_bundle(&garbage).unwrap_err().to_string();
        assert!(e.contains("certificate 1"), "{e}");
    }
}
