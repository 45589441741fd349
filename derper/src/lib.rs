//! A DERP relay server, wire-compatible with Tailscale's `derper`.
//!
//! ```text
//! TCP/TLS accept ─► http: first request read by hand (Upgrade: DERP, fast start, WebSocket),
//!                   everything else to hyper (/derp/probe, /generate_204, /, /robots.txt)
//!                         │
//!                         ▼
//!               Relay::accept(io) ── handshake under a deadline, mesh key check
//!                         │
//!               registry: DashMap<NodePublicKey, connections>, one ConnectionId each
//!                         │
//!     read task: decode, route, try-push into the     write task: drain control → pong →
//!     destination's bounded queue, count every drop   disco → data, one flush per batch
//! ```
//!
//! QUIC (`--quic-port`, mesh peers only) ends in the same `Relay::accept`: the DERP login on a
//! stream, forwarded packets as datagrams ([`quic`]).
//!
//! [`Server::spawn`] runs the listeners (main, port 80, STUN, QUIC, metrics) around a [`Relay`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod acme;
pub mod admin;
pub mod admission;
mod cert_watch;
pub mod config;
pub mod defaults;
pub mod derpmap;
pub mod derpmap_check;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod keyfile;
pub mod limits;
mod listener;
mod log_limit;
pub mod mesh;
pub mod metrics;
pub mod quic;
pub mod relay;
pub mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use derp_proto::NodeSecretKey;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Cli, ServerConfig};
pub use relay::{Relay, RelayConfig};

use crate::config::KeySource;
use crate::http::HttpContext;
use crate::listener::{AcceptLoop, Role, bind_tcp};
use crate::metrics::Metrics;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The key file could not be loaded or created.
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// ACME could not be set up (issuance failures are retried, not fatal).
    #[error(transparent)]
    Acme(#[from] acme::AcmeSetupError),
    /// A listener could not be bound.
    #[error("listen on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The STUN server could not start.
    #[error("stun: {0}")]
    Stun(String),
    /// The mesh settings could not be used.
    #[error("mesh: {0}")]
    Mesh(#[from] mesh::MeshError),
    /// Admission could not be set up.
    #[error(transparent)]
    Admission(#[from] admission::AdmissionError),
    /// The rate config file is unusable.
    #[error(transparent)]
    RateConfig(#[from] limits::RateConfigError),
    /// The QUIC mesh listener could not start.
    #[error("quic: {0}")]
    Quic(#[from] quic::QuicError),
    /// `quic_addr` is set but TLS is not.
    #[error("the QUIC listener needs TLS (it serves the main listener's certificate)")]
    QuicWithoutTls,
}

/// A running server: its addresses, and the way to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    relay: Relay,
    main_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stun_addrs: Vec<SocketAddr>,
    quic_addr: Option<SocketAddr>,
    tls: Option<tls::TlsSetup>,
    /// Manual mode: reloads the certificate files on change and on request.
    cert_watcher: Option<Arc<cert_watch::CertWatcher>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    mesh: Option<mesh::Mesh>,
    rate_config_path: Option<std::path::PathBuf>,
    drain_grace: std::time::Duration,
}

/// The relay process: listeners around a [`Relay`].
#[derive(Debug)]
pub struct Server;

/// Raises the soft open-file limit to the hard limit and returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to / read from a valid rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

impl Server {
    /// Loads the key, binds every listener and starts serving. Metrics handles are built from
    /// whatever recorder is installed at this point (none: metrics are no-ops).
    pub async fn spawn(config: ServerConfig) -> Result<ServerHandle, SpawnError> {
        let secret = match &config.key {
            KeySource::Ephemeral => NodeSecretKey::generate(),
            KeySource::File(path) => keyfile::load_or_create(path)?,
        };
        let metrics = Arc::new(Metrics::new());
        let mut relay_config = RelayConfig::new(secret);
        relay_config.mesh_key = config.mesh_key.clone();
        relay_config.settings = config.relay;
        let admission = admission::Admission::from_settings(&config.admission)?;
        relay_config.admission = admission.clone();
        if let Some(path) = &config.limits.rate_config {
            relay_config.rate = limits::RateConfig::load(path)?;
        }
        let relay = Relay::new(relay_config, metrics.clone());

        let server_key = relay.public_key();
        let (tls, acme) = match (&config.tls, &config.acme) {
            (Some(opts), Some(acme_opts)) if opts.cert_mode == tls::CertMode::LetsEncrypt => {
                let (setup, acme) =
                    acme::prepare(opts, acme_opts, server_key.as_bytes(), metrics.clone())?;
                (Some(setup), Some(acme))
            }
            (Some(opts), _) => (Some(tls::load(opts, server_key.as_bytes())?), None),
            (None, _) => (None, None),
        };
        let cert_watcher = tls
            .as_ref()
            .filter(|t| t.cert_mode() == tls::CertMode::Manual)
            .map(|t| Arc::new(cert_watch::CertWatcher::new(t.reloader(), metrics.clone())));
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));

        let max_conns = config.max_connections.unwrap_or_else(|| {
            let fds = raise_fd_limit();
            usize::try_from(fds.saturating_sub(defaults::FD_RESERVE))
                .unwrap_or(usize::MAX)
                .max(1)
        });
        let limit = Arc::new(Semaphore::new(max_conns.min(Semaphore::MAX_PERMITS)));
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        // If start-up fails after a task was spawned (mesh links, STUN), stop it again.
        let stop_on_error = cancel.clone().drop_guard();
        let main = bind_with_fallback(config.addr)?;
        let main_addr = main.local_addr().map_err(|source| SpawnError::Bind {
            addr: config.addr,
            source,
        })?;
        let mesh = if config.mesh.has_peers() {
            // Answers naming our own listen address are not dialled (the wildcard cannot be
            // matched; those are found by server key instead).
            let exclude = [main_addr]
                .into_iter()
                .filter(|a| !a.ip().is_unspecified())
                .collect();
            Some(mesh::Mesh::start(
                relay.clone(),
                &config.mesh,
                config.mesh_key.clone(),
                exclude,
                tasks.clone(),
                cancel.clone(),
            )?)
        } else {
            None
        };
        let bootstrap_dns = (!config.bootstrap_dns_names.is_empty()).then(|| {
            Arc::new(http::bootstrap_dns::BootstrapDns::new(
                config.bootstrap_dns_names.clone(),
            ))
        });
        let ctx = Arc::new(HttpContext {
            relay: relay.clone(),
            home: config.home.clone(),
            derp_enabled: config.derp_enabled,
            upgrade_response: relay.upgrade_response(),
            acme: acme.as_ref().map(acme::Acme::challenges),
            bootstrap_dns: bootstrap_dns.clone(),
            derp_map: config.derp_map.clone().map(|node| {
                let pin = tls.as_ref().and_then(|t| t.cert_pin.clone());
                Arc::new(derpmap::DerpMapSource::new(
                    node,
                    pin,
                    relay.clone(),
                    mesh.clone(),
                ))
            }),
        });

        let mut http_addr = None;
        let mut loops = vec![AcceptLoop {
            listener: main,
            role: Role::Main,
            tls: acceptor,
            ctx: ctx.clone(),
            limit: limit.clone(),
            metrics: metrics.clone(),
            tcp_keepalive: config.tcp_keepalive,
            tcp_user_timeout: config.tcp_user_timeout,
            accept_rate: config.limits.accept_limit(),
        }];
        if let Some(addr) = config.http_addr {
            let l = bind_with_fallback(addr)?;
            http_addr = l.local_addr().ok();
            loops.push(AcceptLoop {
                listener: l,
                role: Role::Port80,
                tls: None,
                ctx: ctx.clone(),
                limit: limit.clone(),
                metrics: metrics.clone(),
                tcp_keepalive: config.tcp_keepalive,
                tcp_user_timeout: config.tcp_user_timeout,
                accept_rate: None,
            });
        }

        let mut stun_addrs = Vec::new();
        if !config.stun_addrs.is_empty() {
            let stun = stunner::Server::bind(stunner::Config {
                listen: config.stun_addrs.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| SpawnError::Stun(e.to_string()))?;
            stun_addrs = stun.local_addrs();
            let c = cancel.clone();
            tasks.spawn(async move { stun.run(c).await });
        }

        if let Some(a) = admission {
            tasks.spawn(admission::reverify_loop(a, relay.clone(), cancel.clone()));
        }
        if let Some(dns) = bootstrap_dns {
            let c = cancel.clone();
            tasks.spawn(async move { dns.run(c).await });
        }
        let mut quic_addr = None;
        if let Some(addr) = config.quic_addr {
            let Some(setup) = &tls else {
                return Err(SpawnError::QuicWithoutTls);
            };
            let endpoint = quic::bind(addr, &setup.config, relay.secret())?;
            quic_addr = endpoint.local_addr().ok();
            let (relay, t, c) = (relay.clone(), tasks.clone(), cancel.clone());
            tasks.spawn(quic::serve(endpoint, relay, t, c));
        }

        for l in loops {
            let c = cancel.clone();
            let t = tasks.clone();
            tasks.spawn(l.run(c, t));
        }
        // Issuance starts once the listeners are up: the CA validates by connecting to them.
        if let Some(acme) = acme {
            tasks.spawn(acme.run(main_addr.port(), http_addr.is_some(), cancel.clone()));
        }
        if let (Some(watcher), Some(interval)) = (&cert_watcher, config.cert_reload_interval) {
            tasks.spawn(Arc::clone(watcher).run(interval, cancel.clone()));
        }
        stop_on_error.disarm();
        Ok(ServerHandle {
            relay,
            main_addr,
            http_addr,
            stun_addrs,
            quic_addr,
            tls,
            cert_watcher,
            cancel,
            tasks,
            mesh,
            rate_config_path: config.limits.rate_config.clone(),
            drain_grace: config.drain_grace,
        })
    }
}

/// Binds `addr`; if it is the IPv6 wildcard and IPv6 is unavailable, binds IPv4's instead.
fn bind_with_fallback(addr: SocketAddr) -> Result<tokio::net::TcpListener, SpawnError> {
    match bind_tcp(addr) {
        Ok(l) => Ok(l),
        Err(_) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            bind_tcp(v4).map_err(|source| SpawnError::Bind { addr: v4, source })
        }
        Err(source) => Err(SpawnError::Bind { addr, source }),
    }
}

impl ServerHandle {
    /// The relay core.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The main listener's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.main_addr
    }

    /// The port-80 companion listener's address, when TLS is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// STUN socket addresses.
    pub fn stun_addrs(&self) -> &[SocketAddr] {
        &self.stun_addrs
    }

    /// The QUIC mesh listener's address, when `--quic-port` is set.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// The running mesh, when peers are configured.
    pub fn mesh(&self) -> Option<&mesh::Mesh> {
        self.mesh.as_ref()
    }

    /// The TLS setup, when TLS is on.
    pub fn tls(&self) -> Option<&tls::TlsSetup> {
        self.tls.as_ref()
    }

    /// Re-reads manual certificate files now (SIGHUP), whether or not they changed. `None`
    /// when there is nothing to reload (plain HTTP, or `letsencrypt`, which renews itself).
    /// The outcome is logged and counted (`derp_cert_reload_total`); on error the current
    /// certificate stays.
    pub async fn reload_certificate(&self) -> Option<Result<tls::CertInfo, tls::TlsError>> {
        let watcher = Arc::clone(self.cert_watcher.as_ref()?);
        tokio::task::spawn_blocking(move || watcher.check(true))
            .await
            .ok()
            .flatten()
    }

    /// The DERP URL clients use.
    pub fn derp_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let ip = match self.main_addr.ip() {
            ip if ip.is_unspecified() => std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!(
            "{scheme}://{}/derp",
            SocketAddr::new(ip, self.main_addr.port())
        )
    }

    /// Reads `--rate-config` again and applies it to every client without reconnecting them.
    /// A bad file keeps the limit in force and says why. `Ok(None)`: no rate config file.
    pub fn reload_rate_config(
        &self,
    ) -> Result<Option<limits::RateConfig>, limits::RateConfigError> {
        let Some(path) = &self.rate_config_path else {
            return Ok(None);
        };
        let metrics = self.relay.metrics();
        match limits::RateConfig::load(path) {
            Ok(rc) => {
                metrics.rate_config_reloaded.increment(1);
                Ok(Some(self.relay.set_rate_config(rc)))
            }
            Err(e) => {
                metrics.rate_config_reload_failed.increment(1);
                Err(e)
            }
        }
    }

    /// Drains: readiness off, new connections refused, every client told (Health text and
    /// Restarting); then waits until clients have left or `--drain-grace` passes. Does not
    /// close anything: [`ServerHandle::shutdown`] does that. Returns whether every client left.
    pub async fn drain(&self) -> bool {
        let grace = self.drain_grace;
        if self.relay.begin_drain(grace, defaults::RESTART_HINT) {
            self.relay.metrics().draining.set(1.0);
            tracing::info!(
                clients = self.relay.regular_connection_count(),
                grace = %config::format_go_duration(grace),
                "draining: not ready, refusing new connections, clients told to move"
            );
        }
        tokio::time::timeout(grace, self.relay.drained(defaults::DRAIN_POLL))
            .await
            .is_ok()
    }

    /// Stops accepting, sends Restarting to every client, closes all connections and waits for
    /// every task to end.
    pub async fn shutdown(self) {
        if let Some(mesh) = &self.mesh {
            mesh.stop();
        }
        self.cancel.cancel();
        self.relay
            .shutdown(defaults::RESTART_HINT, defaults::SHUTDOWN_GRACE)
            .await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}
