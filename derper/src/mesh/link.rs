//! One outbound mesh link: a DERP client, logged in with this relay's key and the mesh key,
//! that watches a peer relay's connections and carries ForwardPacket frames to it.
//!
//! ```text
//! connect ─► self? (same server key: stop, never mesh with ourselves)
//!        └─► WatchConns ─► reader: PeerPresent/PeerGone ─► WatchSet ─► Relay::add/remove_forwarder
//!                        └► writer: LinkForwarder queue ─► ForwardPacket frames (+ Ping/Pong)
//! broken ─► WatchSet::disconnected (MeshConnBroke) + Relay::remove_link ─► backoff ─► connect
//! ```
//!
//! The peer relay is watched exactly as Tailscale's `RunWatchConnectionLoop` does (a broken
//! connection withdraws every route; the next connection's PeerPresent flood restores those
//! still there), with [`WatchSet`] doing the deduplication Go leaves to its callers.
//! Liveness: when nothing arrives for a ping interval the writer sends a Ping; three silent
//! intervals end the connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use derp_proto::backoff::{Backoff, BackoffConfig};
use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{Client, ClientError, ClientReader, ClientWriter, ConnectOptions};
use derp_proto::mesh::{ReconnectPolicy, WatchAction, WatchSet};
use derp_proto::{ClientToServer, MeshKey, NodeSecretKey, ServerToClient};
use tokio_util::sync::CancellationToken;

use super::forwarder::{Forwarded, LinkForwarder};
use super::metrics::{LinkMetrics, MeshMetrics};
use super::target::{DialTarget, PeerTarget};
use crate::relay::{ForwarderHandle, LinkId, Relay};

/// Tunables of every link, from `[mesh]`.
#[derive(Debug, Clone)]
pub(crate) struct LinkSettings {
    /// ForwardPacket frames a link may queue.
    pub(crate) queue_packets: usize,
    /// Bytes a link may queue.
    pub(crate) queue_bytes: usize,
    /// Deadline for each flush to the peer relay.
    pub(crate) write_timeout: Duration,
    /// Silence after which a Ping is sent; three of them end the connection.
    pub(crate) ping_interval: Duration,
    /// Budget for dial, TLS, upgrade and handshake.
    pub(crate) connect_timeout: Duration,
    /// Reconnect delays.
    pub(crate) backoff: BackoffConfig,
    /// Keys one link may announce.
    pub(crate) max_keys: usize,
}

/// What every link shares: the relay, identity, and TLS policy.
#[derive(Debug)]
pub(crate) struct LinkContext {
    pub(crate) relay: Relay,
    pub(crate) secret: NodeSecretKey,
    pub(crate) mesh_key: MeshKey,
    /// How certificates are checked when a target has no pin.
    pub(crate) verify: ServerVerify,
    pub(crate) settings: LinkSettings,
    pub(crate) metrics: MeshMetrics,
    /// Peers this relay cannot reach, reported to clients as a Health problem.
    pub(crate) unreachable: std::sync::Mutex<super::health::Unreachable>,
}

impl LinkContext {
    /// Records whether the peer called `name` is reachable; clients hear when the set changes.
    pub(crate) fn note_reachable(&self, name: &str, reachable: bool) {
        let change = self
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(name, !reachable);
        if let Some(text) = change {
            self.relay
                .set_problem(crate::relay::Problem::MeshUnreachable, text);
        }
    }
}

/// Why a connection of the link ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cancelled")]
    Cancelled,
    #[error("read: {0}")]
    Read(#[source] ClientError),
    #[error("write: {0}")]
    Write(#[source] ClientError),
    #[error("write timed out after {0:?}")]
    WriteTimeout(Duration),
    #[error("peer relay silent for {0:?}")]
    Silent(Duration),
}

/// How a link task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkExit {
    /// Stopped by its owner.
    Cancelled,
    /// The target is this relay.
    SelfConnect,
}

/// Runs one link until `cancel` fires or the target turns out to be this relay.
pub(crate) async fn run(
    ctx: Arc<LinkContext>,
    id: LinkId,
    target: PeerTarget,
    cancel: CancellationToken,
) -> LinkExit {
    let metrics = LinkMetrics::new(&target.name);
    let fwd = Arc::new(LinkForwarder::new(
        id,
        ctx.settings.queue_packets,
        ctx.settings.queue_bytes,
        metrics.clone(),
        ctx.relay.metrics().clone(),
    ));
    let mut link = Link {
        ctx: ctx.clone(),
        id,
        target,
        fwd,
        metrics,
        watch: WatchSet::new(ctx.settings.max_keys, ReconnectPolicy::ClearOnBreak),
    };
    let exit = link.run(&cancel).await;
    link.withdraw_all();
    // A removed (or self) target is no longer a problem of this relay's.
    ctx.note_reachable(&link.target.name, true);
    exit
}

struct Link {
    ctx: Arc<LinkContext>,
    id: LinkId,
    target: PeerTarget,
    fwd: Arc<LinkForwarder>,
    metrics: LinkMetrics,
    watch: WatchSet,
}

impl Link {
    async fn run(&mut self, cancel: &CancellationToken) -> LinkExit {
        let mut backoff = Backoff::new(self.ctx.settings.backoff);
        let mut failures: u32 = 0;
        loop {
            let connected = tokio::select! {
                biased;
                _ = cancel.cancelled() => return LinkExit::Cancelled,
                r = self.connect() => r,
            };
            match connected {
                Err(ClientError::RefusedServerKey(_)) => {
                    self.ctx.metrics.self_links.increment(1);
                    tracing::info!(peer = %self.target, "mesh target is this relay; not meshing with it");
                    return LinkExit::SelfConnect;
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.connects_failed.increment(1);
                    // The first failure of a streak, then every 30th, so a peer that is down
                    // for an hour logs a handful of lines, not thousands.
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(peer = %self.target, url = %self.target.url, failures, error = %e, "mesh link cannot connect");
                    }
                    if failures == super::health::UNREACHABLE_AFTER {
                        self.ctx.note_reachable(&self.target.name, false);
                    }
                }
                Ok(client) => {
                    failures = 0;
                    self.ctx.note_reachable(&self.target.name, true);
                    self.metrics.connects_ok.increment(1);
                    backoff.connected(Instant::now());
                    let server = client.server_key();
                    tracing::info!(peer = %self.target, server_key = %server.short(), "mesh link up");
                    let name: Arc<str> = self.target.name.as_str().into();
                    self.ctx.relay.name_mesh_peer(server, Some(name));
                    self.metrics.up.set(1.0);
                    self.ctx.metrics.links_up.increment(1.0);
                    let end = self.session(client, cancel).await;
                    self.metrics.up.set(0.0);
                    self.ctx.metrics.links_up.decrement(1.0);
                    let withdrawn = self.withdraw_all();
                    self.ctx.relay.name_mesh_peer(server, None);
                    if matches!(end, SessionEnd::Cancelled) {
                        return LinkExit::Cancelled;
                    }
                    tracing::info!(peer = %self.target, server_key = %server.short(), withdrawn, reason = %end, "mesh link down; reconnecting");
                }
            }
            let delay = backoff.next_delay(Instant::now(), &mut rand::thread_rng());
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return LinkExit::Cancelled,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<Client, ClientError> {
        let s = &self.ctx.settings;
        let mut opts = ConnectOptions::new(self.target.url.clone(), self.ctx.secret.clone())
            .with_mesh_key(self.ctx.mesh_key.clone());
        opts.connect_timeout = s.connect_timeout;
        // Detect ourselves by server key before logging in (our own server refuses its own
        // key as a client's).
        opts.refuse_server_key = Some(self.ctx.relay.public_key());
        opts.verify = match self.target.pin {
            Some(pin) => ServerVerify::Pin(pin),
            None => self.ctx.verify.clone(),
        };
        opts.dial_addr = match &self.target.dial {
            None => None,
            Some(DialTarget::Addr(a)) => Some(*a),
            Some(DialTarget::Host(h)) => Some(resolve(h, self.target.host_port().1).await?),
        };
        Client::connect(&opts).await
    }

    /// Runs one connection: WatchConns, then reading presence and writing forwarded packets
    /// until either side fails or the link is cancelled.
    async fn session(&mut self, client: Client, cancel: &CancellationToken) -> SessionEnd {
        let (mut reader, mut writer) = client.split();
        writer.queue(&ClientToServer::WatchConns);
        if let Err(e) = self.flush(&mut writer).await {
            return e;
        }
        for action in self.watch.connected(Instant::now()) {
            self.apply(action);
        }
        self.fwd.set_up();
        let fwd = self.fwd.clone();
        let (write_timeout, ping_interval) = (
            self.ctx.settings.write_timeout,
            self.ctx.settings.ping_interval,
        );
        let end = tokio::select! {
            biased;
            _ = cancel.cancelled() => SessionEnd::Cancelled,
            e = write_loop(&fwd, &mut writer, write_timeout) => e,
            e = self.read_loop(&mut reader, ping_interval) => e,
        };
        self.fwd.set_down();
        end
    }

    async fn flush(&self, writer: &mut ClientWriter) -> Result<(), SessionEnd> {
        flush(writer, self.ctx.settings.write_timeout).await
    }

    async fn read_loop(
        &mut self,
        reader: &mut ClientReader,
        ping_interval: Duration,
    ) -> SessionEnd {
        let mut silent = 0u32;
        loop {
            let msg = match tokio::time::timeout(ping_interval, reader.recv()).await {
                Ok(Ok(msg)) => msg,
                Ok(Err(e)) => return SessionEnd::Read(e),
                Err(_) => {
                    silent += 1;
                    if silent >= 3 {
                        return SessionEnd::Silent(ping_interval * silent);
                    }
                    self.fwd.queue_ping();
                    continue;
                }
            };
            silent = 0;
            match msg {
                ServerToClient::PeerPresent { peer, addr, flags } => {
                    self.metrics.present.increment(1);
                    match self.watch.peer_present(peer, addr, flags) {
                        Ok(Some(action)) => self.apply(action),
                        Ok(None) => {}
                        Err(full) => {
                            self.ctx.metrics.watch_set_full.increment(1);
                            if let Some(suppressed) = crate::log_limit::BAD_CONNECTIONS.allow() {
                                tracing::warn!(peer = %self.target, error = %full, suppressed, "mesh link refused a key");
                            }
                        }
                    }
                }
                ServerToClient::PeerGone { peer, reason } => {
                    self.metrics.gone.increment(1);
                    if let Some(action) = self.watch.peer_gone(peer, reason) {
                        self.apply(action);
                    }
                }
                ServerToClient::Ping(data) => self.fwd.queue_pong(data),
                ServerToClient::Restarting { .. } => {
                    tracing::info!(peer = %self.target, "peer relay is restarting");
                }
                // KeepAlive, Pong, Health, packets addressed to the relay's own key, and
                // frames from newer protocol versions: nothing to do.
                _ => {}
            }
        }
    }

    /// Applies one watch-set decision to the relay's routes.
    fn apply(&self, action: WatchAction) {
        match action {
            WatchAction::Add { peer, .. } => {
                let fwd: ForwarderHandle = self.fwd.clone();
                self.ctx.relay.add_forwarder(peer, fwd);
            }
            WatchAction::Remove { peer, .. } => self.ctx.relay.remove_forwarder(&peer, self.id),
            // Address and flags are not used for routing.
            _ => {}
        }
        self.metrics.keys.set(self.watch.len() as f64);
    }

    /// Withdraws every route through this link (the connection broke or the link stops).
    fn withdraw_all(&mut self) -> usize {
        self.fwd.set_down();
        let actions = self.watch.disconnected();
        let n = actions.len();
        for action in actions {
            self.apply(action);
        }
        // Anything the watch set did not know about (it refused keys when full) goes too.
        self.ctx.relay.remove_link(self.id);
        self.metrics.keys.set(0.0);
        n
    }
}

/// Drains the link's queue into ForwardPacket frames until the connection fails.
async fn write_loop(
    fwd: &LinkForwarder,
    writer: &mut ClientWriter,
    write_timeout: Duration,
) -> SessionEnd {
    /// Flush once this much is encoded, so one batch never builds an unbounded buffer.
    const FLUSH_AT: usize = 256 * 1024;
    let mut spare: VecDeque<Forwarded> = VecDeque::new();
    loop {
        fwd.ready.notified().await;
        loop {
            let mut batch = fwd.take(std::mem::take(&mut spare));
            if batch.is_empty() {
                spare = batch.packets;
                break;
            }
            if let Some(data) = batch.pong {
                writer.queue(&ClientToServer::Pong(data));
            }
            if batch.ping {
                writer.queue(&ClientToServer::Ping(rand::random()));
            }
            let (mut packets, mut bytes) = (0u64, 0u64);
            for Forwarded { src, dst, packet } in batch.packets.drain(..) {
                packets += 1;
                bytes += packet.len() as u64;
                writer.queue(&ClientToServer::ForwardPacket { src, dst, packet });
                if writer.pending() >= FLUSH_AT
                    && let Err(e) = flush(writer, write_timeout).await
                {
                    return e;
                }
            }
            if let Err(e) = flush(writer, write_timeout).await {
                return e;
            }
            fwd.count_sent(packets, bytes);
            spare = batch.packets;
        }
    }
}

async fn flush(writer: &mut ClientWriter, timeout: Duration) -> Result<(), SessionEnd> {
    match tokio::time::timeout(timeout, writer.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SessionEnd::Write(e)),
        Err(_) => Err(SessionEnd::WriteTimeout(timeout)),
    }
}

/// Resolves a `host/dial-host` dial host (name or IP literal) with the URL's port.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ClientError> {
    let dial_err = |source| ClientError::Dial {
        addr: format!("{host}:{port}"),
        source,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(dial_err)?
        .next()
        .ok_or_else(|| {
            dial_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no addresses",
            ))
        })
}
