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
//! membership sources (DNS) currently report; [`Mesh::reconcile`] starts links for new targets
//! and stops links for targets that went away. A target that turns out to be this relay
//! (same server key) is kept as a stopped entry so it is not dialled again.
//!
//! Security: the mesh key travels inside ClientInfo, sealed to whatever key the server
//! presents. Over plain HTTP anyone in the path who answers as the peer learns the key, so
//! links are TLS by default, verified against the system roots, a `--mesh-ca` bundle, or a
//! per-peer `sha256-raw:` pin; plain links need `--mesh-allow-plain`.

pub mod target;

mod forwarder;
mod link;
mod metrics;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use derp_proto::MeshKey;
use derp_proto::backoff::{BackoffConfig, Jitter};
use derp_proto::io::tls::ServerVerify;
use rustls::RootCertStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::link::{LinkContext, LinkExit, LinkSettings};
use self::metrics::MeshMetrics;
pub use self::target::{DialTarget, PeerTarget, TargetError};
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
    /// The CA bundle could not be used.
    #[error("mesh CA bundle {path}: {reason}")]
    CaBundle {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The running mesh: owns every link task.
#[derive(Debug)]
pub struct Mesh {
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
    /// Checks the settings and builds the mesh for `relay` (no links yet; see
    /// [`Mesh::reconcile`]). Returns the static targets too.
    pub fn new(
        relay: Relay,
        settings: &MeshSettings,
        mesh_key: Option<MeshKey>,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Result<(Self, BTreeSet<PeerTarget>), MeshError> {
        let targets = settings
            .peers
            .iter()
            .map(|p| PeerTarget::parse(p))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let mesh_key = match mesh_key {
            Some(k) => k,
            None if targets.is_empty() => MeshKey::from_bytes([0; 32]),
            None => return Err(MeshError::NoMeshKey),
        };
        for t in &targets {
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
            },
            metrics: MeshMetrics::new(),
        });
        Ok((
            Self {
                ctx,
                links: HashMap::new(),
                next_id: 1,
                tasks,
                cancel,
            },
            targets,
        ))
    }

    /// Makes the running links exactly `desired`: starts links for new targets and stops
    /// links whose target is gone. Links already running are left alone.
    pub fn reconcile(&mut self, desired: &BTreeSet<PeerTarget>) {
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

    /// Targets with a link (including ones found to be this relay).
    pub fn targets(&self) -> impl Iterator<Item = &PeerTarget> {
        self.links.keys()
    }

    /// Targets found to be this relay (their links stopped after the first connect).
    pub fn self_targets(&self) -> Vec<&PeerTarget> {
        self.links
            .iter()
            .filter(|(_, r)| r.is_self.load(Ordering::Relaxed))
            .map(|(t, _)| t)
            .collect()
    }

    /// Stops every link.
    pub fn stop(&mut self) {
        for (_, running) in self.links.drain() {
            running.cancel.cancel();
        }
        self.ctx.metrics.links_configured.set(0.0);
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
    let fail = |reason: String| MeshError::CaBundle {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("no CERTIFICATE blocks".into()));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| fail(format!("certificate {}: {e}", i + 1)))?;
    }
    Ok(roots)
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
