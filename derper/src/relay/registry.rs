//! Who is in the region: each key's local connections (duplicate handling), the mesh links
//! that announced it, and who must hear PeerGone when it leaves.
//!
//! No I/O and no `.await` here: every method takes a DashMap shard guard, copies out what it
//! needs, and drops the guard before notifying anyone, so no guard is ever held while another
//! connection's queue is touched.
//!
//! Region presence follows Go derper: a key's entry lives while it has a local connection
//! *or* a forwarder (`clients` and `clientsMesh` in Go, one map here, so a route is one shard
//! read). Local beats remote; among forwarders the first announcer is used until it goes
//! (Go's `multiForwarder`). PeerGone(Disconnected) goes out when the key leaves the *region*
//! — no local connection and no forwarder left — not when it merely moves between nodes
//! (Go's `notePeerGoneFromRegionLocked`).
//!
//! Mesh watchers are told *which* keys changed (each watcher holds a key at most once until
//! its writer takes it), and the writer asks [`Registry::presence`] for the key's state as it
//! encodes the frame. Since the mark always follows the change and the read always follows
//! taking the mark, a watcher's last frame for a key shows its current state, without holding
//! a shard guard while touching a watcher's outbox and whatever the interleaving of
//! registrations, departures and the WatchConns flood.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use derp_proto::NodePublicKey;
use derp_proto::frame::PeerGoneReason;

use super::conn::{Conn, ConnHandle, ConnectionId, Control};
use super::forward::{ForwarderHandle, LinkId};
use crate::metrics::Metrics;

/// Where a packet for a key should go.
#[derive(Debug)]
pub(crate) enum Route {
    /// The key's active local connection.
    Local(ConnHandle),
    /// Another relay of the region holds the key; forward through this link.
    Remote(ForwarderHandle),
    /// The key is connected here, but several times and none is active.
    DupNoActive,
    /// Nobody in the region has that key.
    Unknown,
}

/// Why a connection could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegisterError {
    #[error("key already has {0} connections")]
    TooManyDups(usize),
}

/// Registry bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegistryLimits {
    /// Connections allowed per key (a reconnecting client briefly has two).
    pub(crate) max_conns_per_key: usize,
    /// Distinct receivers remembered per sender for PeerGone.
    pub(crate) max_peer_gone_watchers: usize,
    /// Mesh links that may announce one key (one per other node of the region is plenty).
    pub(crate) max_forwarders_per_key: usize,
    /// Keys a mesh watcher may have pending before it is closed as hopelessly behind.
    pub(crate) mesh_presence_pending_max: usize,
}

/// Keys of the WatchConns flood queued under one lock of the watcher's outbox, so a large
/// region neither takes the lock a million times nor holds it for long.
const FLOOD_CHUNK: usize = 1024;

#[derive(Debug, Default)]
struct KeyEntry {
    /// Every open local connection of this key, oldest first.
    conns: Vec<ConnHandle>,
    /// Index into `conns` of the connection that receives packets.
    active: Option<usize>,
    /// Connections in the order they became active, used to pick the next active one when the
    /// active one leaves. Mirrors Go's `dupClientSet.sendHistory` exactly, quirk included: when
    /// a key goes from one to two connections only the older one is recorded, so with three
    /// silent connections a1, a2, a3 the history is [a1, a3] and a1 follows a3.
    history: Vec<ConnectionId>,
    /// Mesh links that announced this key, first announcer first.
    forwarders: Vec<ForwarderHandle>,
    /// Receivers (key and the connection that got the packet) that must hear PeerGone when
    /// this key leaves the region (Go: `sentTo`).
    peer_gone_watchers: HashMap<NodePublicKey, ConnectionId>,
}

impl KeyEntry {
    fn in_region(&self) -> bool {
        !self.conns.is_empty() || !self.forwarders.is_empty()
    }

    /// Known only through mesh links (Go: counted in `gauge_clients_remote`).
    fn is_remote_only(&self) -> bool {
        self.conns.is_empty() && !self.forwarders.is_empty()
    }

    /// The local connection mesh watchers are told about: the active one, else the newest.
    fn presented(&self) -> Option<&ConnHandle> {
        self.active
            .and_then(|i| self.conns.get(i))
            .or(self.conns.last())
    }
}

/// The set of keys present in the region, as seen from this relay.
#[derive(Debug)]
pub(crate) struct Registry {
    clients: DashMap<NodePublicKey, KeyEntry>,
    /// Mesh watchers (WatchConns senders); small, so a mutex is fine.
    watchers: Mutex<HashMap<ConnectionId, ConnHandle>>,
    dup_keys: AtomicU64,
    /// Keys known only through mesh links.
    remote_only: std::sync::atomic::AtomicI64,
    limits: RegistryLimits,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub(crate) fn new(limits: RegistryLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            clients: DashMap::new(),
            watchers: Mutex::new(HashMap::new()),
            dup_keys: AtomicU64::new(0),
            remote_only: std::sync::atomic::AtomicI64::new(0),
            limits,
            metrics,
        }
    }

    /// Adds a connection; the newest connection of a key becomes its active one.
    pub(crate) fn register(&self, client: &ConnHandle) -> Result<(), RegisterError> {
        {
            let mut entry = self.clients.entry(client.key).or_default();
            if entry.conns.len() >= self.limits.max_conns_per_key {
                return Err(RegisterError::TooManyDups(entry.conns.len()));
            }
            // Connecting here makes a remote key local.
            self.track_remote(entry.is_remote_only(), false);
            match entry.conns.len() {
                0 => {}
                1 => {
                    let first = entry.conns[0].conn_id;
                    entry.history = vec![first];
                }
                _ => {
                    entry.history.push(client.conn_id);
                    trim_history(&mut entry.history, self.limits.max_conns_per_key);
                }
            }
            entry.conns.push(client.clone());
            entry.active = Some(entry.conns.len() - 1);
            if entry.conns.len() > 1 {
                if entry.conns.len() == 2 {
                    self.dup_keys.fetch_add(1, Ordering::Relaxed);
                }
                self.metrics.dup_client_conns.increment(1);
                for c in &entry.conns {
                    c.is_dup.store(true, Ordering::Relaxed);
                }
            }
        }
        self.metrics
            .current_dup_client_keys
            .set(self.dup_keys.load(Ordering::Relaxed) as f64);
        self.presence_changed(client.key);
        Ok(())
    }

    /// Removes a connection. When the key leaves the region with it (no other local
    /// connection, no forwarder), queues PeerGone(Disconnected) to every connection that
    /// received packets from it. Watchers hear PeerGone whenever the key's last *local*
    /// connection closes (unless it is back by the time their writer runs): they track this
    /// node's clients, not the region's. When the key's active connection closes and another
    /// remains, they hear PeerPresent with the one that now represents it.
    pub(crate) fn unregister(&self, client: &ConnHandle) {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client.conn_id);
        let mut notify = Vec::new();
        let mut presented_changed = false;
        if let dashmap::Entry::Occupied(mut occ) = self.clients.entry(client.key) {
            let entry = occ.get_mut();
            let Some(pos) = entry.conns.iter().position(|c| c.conn_id == client.conn_id) else {
                return;
            };
            let was_dup = entry.conns.len() > 1;
            let active_id = entry
                .active
                .and_then(|i| entry.conns.get(i))
                .map(|c| c.conn_id);
            // Watchers know the key by its presented connection: only that one's departure
            // changes what they should hear (the last connection is always the presented one).
            presented_changed = entry.presented().map(|c| c.conn_id) == Some(client.conn_id);
            entry.conns.remove(pos);
            if was_dup && entry.conns.len() <= 1 {
                self.dup_keys.fetch_sub(1, Ordering::Relaxed);
            }
            entry.history.retain(|id| *id != client.conn_id);
            match entry.conns.len() {
                0 => {
                    entry.active = None;
                    entry.history.clear();
                    if !entry.forwarders.is_empty() {
                        // Still in the region through another node: nobody is told.
                        self.track_remote(false, true);
                    } else {
                        let entry = occ.remove();
                        notify.extend(entry.peer_gone_watchers);
                    }
                }
                1 => {
                    // Back to a single connection: it is active.
                    entry.conns[0].is_dup.store(false, Ordering::Relaxed);
                    entry.active = Some(0);
                    entry.history.clear();
                }
                _ if active_id == Some(client.conn_id) => {
                    // The most recent still-connected entry of the history becomes active.
                    let conns = &entry.conns;
                    entry.active = entry
                        .history
                        .iter()
                        .rev()
                        .find_map(|id| conns.iter().position(|c| c.conn_id == *id));
                }
                _ => {
                    entry.active =
                        active_id.and_then(|id| entry.conns.iter().position(|c| c.conn_id == id));
                }
            }
        }
        self.metrics
            .current_dup_client_keys
            .set(self.dup_keys.load(Ordering::Relaxed) as f64);
        self.notify_gone(client.key, notify);
        if presented_changed {
            self.presence_changed(client.key);
        }
    }

    /// Records that `key` is reachable through `fwd` (a mesh link got PeerPresent for it).
    /// Returns false if the key already has the maximum number of forwarders (counted).
    pub(crate) fn add_forwarder(&self, key: NodePublicKey, fwd: ForwarderHandle) -> bool {
        let mut entry = self.clients.entry(key).or_default();
        let id = fwd.link_id();
        if entry.forwarders.iter().any(|f| f.link_id() == id) {
            return true;
        }
        if entry.forwarders.len() >= self.limits.max_forwarders_per_key {
            drop(entry);
            self.metrics.forwarders_dropped.increment(1);
            return false;
        }
        let before = entry.is_remote_only();
        entry.forwarders.push(fwd);
        self.track_remote(before, entry.is_remote_only());
        true
    }

    /// Withdraws `link` as a route to `key` (PeerGone on the link). If that was the key's last
    /// presence in the region, its receivers hear PeerGone(Disconnected).
    pub(crate) fn remove_forwarder(&self, key: &NodePublicKey, link: LinkId) {
        let mut notify = Vec::new();
        if let dashmap::Entry::Occupied(mut occ) = self.clients.entry(*key) {
            let before = occ.get().is_remote_only();
            occ.get_mut().forwarders.retain(|f| f.link_id() != link);
            self.track_remote(before, occ.get().is_remote_only());
            if !occ.get().in_region() {
                notify.extend(occ.remove().peer_gone_watchers);
            }
        }
        self.notify_gone(*key, notify);
    }

    /// Whether `key` is connected here and no mesh link announced it: packets from it cannot
    /// arrive by ForwardPacket from another node.
    pub(crate) fn is_local_only(&self, key: &NodePublicKey) -> bool {
        self.clients
            .get(key)
            .is_some_and(|e| !e.conns.is_empty() && e.forwarders.is_empty())
    }

    /// Keeps `derp_clients_remote` in step with one entry's change.
    fn track_remote(&self, before: bool, after: bool) {
        let delta = i64::from(after) - i64::from(before);
        if delta != 0 {
            let n = self.remote_only.fetch_add(delta, Ordering::Relaxed) + delta;
            self.metrics.clients_remote.set(n as f64);
        }
    }

    /// Keys known only through mesh links.
    #[cfg(test)]
    pub(crate) fn remote_only_count(&self) -> i64 {
        self.remote_only.load(Ordering::Relaxed)
    }

    /// Withdraws every route through `link` (the link broke: Go's MeshConnBroke). Returns how
    /// many keys it was announcing.
    pub(crate) fn remove_link(&self, link: LinkId) -> usize {
        let keys: Vec<NodePublicKey> = self
            .clients
            .iter()
            .filter(|e| e.forwarders.iter().any(|f| f.link_id() == link))
            .map(|e| *e.key())
            .collect();
        for k in &keys {
            self.remove_forwarder(k, link);
        }
        keys.len()
    }

    fn notify_gone(&self, key: NodePublicKey, receivers: Vec<(NodePublicKey, ConnectionId)>) {
        for (dst, conn_id) in receivers {
            if let Some(target) = self.connection(&dst, conn_id)
                && target.enqueue_control(
                    Control::PeerGone(key, PeerGoneReason::DISCONNECTED),
                    &self.metrics,
                )
            {
                self.metrics.peer_gone_disconnected.increment(1);
            }
        }
    }

    fn connection(&self, key: &NodePublicKey, conn_id: ConnectionId) -> Option<ConnHandle> {
        let entry = self.clients.get(key)?;
        entry.conns.iter().find(|c| c.conn_id == conn_id).cloned()
    }

    /// Looks up where a packet for `dst` goes, in one shard read. The returned handle is a
    /// clone; no guard is kept.
    pub(crate) fn route(&self, dst: &NodePublicKey) -> Route {
        let Some(entry) = self.clients.get(dst) else {
            return Route::Unknown;
        };
        if let Some(c) = entry.active.and_then(|i| entry.conns.get(i)) {
            return Route::Local(c.clone());
        }
        if !entry.conns.is_empty() {
            return Route::DupNoActive;
        }
        match entry.forwarders.first() {
            Some(f) => Route::Remote(f.clone()),
            None => Route::Unknown,
        }
    }

    /// Called when a connection whose key has duplicates sends a frame: it becomes active
    /// ("last writer is active", Go's default policy).
    pub(crate) fn note_activity(&self, client: &ConnHandle) {
        if let Some(mut entry) = self.clients.get_mut(&client.key) {
            let Some(i) = entry.conns.iter().position(|c| c.conn_id == client.conn_id) else {
                return;
            };
            if entry.conns.len() < 2 || entry.active == Some(i) {
                return;
            }
            entry.active = Some(i);
            entry.history.push(client.conn_id);
            trim_history(&mut entry.history, self.limits.max_conns_per_key);
        }
    }

    /// Remembers that `receiver` got a packet from `src`, so it hears when `src` leaves the
    /// region. Works for senders held here and for senders another node holds (forwarded
    /// packets). Returns false if `src` is not in the region or its set is full.
    pub(crate) fn add_peer_gone_watcher(&self, src: &NodePublicKey, receiver: &Conn) -> bool {
        let Some(mut entry) = self.clients.get_mut(src) else {
            return false;
        };
        let watchers = &mut entry.peer_gone_watchers;
        if watchers.len() >= self.limits.max_peer_gone_watchers
            && !watchers.contains_key(&receiver.key)
        {
            drop(entry);
            self.metrics.watchers_dropped.increment(1);
            return false;
        }
        watchers.insert(receiver.key, receiver.conn_id);
        true
    }

    /// Subscribes a mesh watcher: it gets PeerPresent for every locally connected key now,
    /// then updates. The flood goes through the watcher's pending presence set like any
    /// update, after the watcher is registered: a key that changes meanwhile is marked by
    /// both, held once, and sent in the state it has when the writer gets to it.
    ///
    /// A connection that is already a watcher is not flooded again: it has every key's state
    /// sent or pending and hears of every change, so a repeated WatchConns would only cost a
    /// walk over the whole region (a peer repeating it could make every 5-byte frame cost
    /// that much).
    pub(crate) fn add_watcher(&self, watcher: &ConnHandle) {
        let already = self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(watcher.conn_id, watcher.clone())
            .is_some();
        if already {
            return;
        }
        let present: Vec<NodePublicKey> = self
            .clients
            .iter()
            .filter(|e| !e.conns.is_empty())
            .map(|e| *e.key())
            .collect();
        for chunk in present.chunks(FLOOD_CHUNK) {
            watcher.enqueue_presence(chunk, self.limits.mesh_presence_pending_max, &self.metrics);
        }
    }

    /// The frame that tells a watcher where `key` stands now: PeerPresent with the address and
    /// flags of its active (else newest) local connection, or PeerGone(Disconnected) if it
    /// has none. Called by a watcher's writer as it encodes the key's frame.
    pub(crate) fn presence(&self, key: &NodePublicKey) -> Control {
        let local = self
            .clients
            .get(key)
            .and_then(|e| e.presented().map(|c| (c.remote, c.flags)));
        match local {
            Some((addr, flags)) => Control::PeerPresent {
                key: *key,
                addr,
                flags,
            },
            None => Control::PeerGone(*key, PeerGoneReason::DISCONNECTED),
        }
    }

    /// Closes every local connection of `key` (mesh ClosePeer). Returns how many were closed.
    pub(crate) fn close_key(&self, key: &NodePublicKey) -> usize {
        let conns: Vec<ConnHandle> = self
            .clients
            .get(key)
            .map(|e| e.conns.clone())
            .unwrap_or_default();
        for c in &conns {
            c.cancel.cancel();
        }
        conns.len()
    }

    /// Queues a control frame to every local connection (Restarting on shutdown).
    pub(crate) fn send_all(&self, control: &Control) {
        let all: Vec<ConnHandle> = self.clients.iter().flat_map(|e| e.conns.clone()).collect();
        for c in all {
            c.enqueue_control(control.clone(), &self.metrics);
        }
    }

    /// Queues a control frame to every local connection that is not a mesh peer (Health).
    pub(crate) fn send_clients(&self, control: &Control) {
        for c in self.regular_connections() {
            c.enqueue_control(control.clone(), &self.metrics);
        }
    }

    /// Every local connection that is not a mesh peer.
    pub(crate) fn regular_connections(&self) -> Vec<ConnHandle> {
        self.clients
            .iter()
            .flat_map(|e| {
                e.conns
                    .iter()
                    .filter(|c| !c.is_mesh)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Tells every watcher that `key`'s local presence changed (called after the change,
    /// with no guard held).
    fn presence_changed(&self, key: NodePublicKey) {
        let watchers: Vec<ConnHandle> = self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for w in watchers {
            w.enqueue_presence(&[key], self.limits.mesh_presence_pending_max, &self.metrics);
        }
    }

    /// Number of distinct keys connected here.
    pub(crate) fn key_count(&self) -> usize {
        self.clients.iter().filter(|e| !e.conns.is_empty()).count()
    }

    /// Checks internal consistency (Go's `ConsistencyCheck`, local and remote halves); used by
    /// tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut dups = 0;
        let mut remote_only = 0;
        for e in self.clients.iter() {
            if e.is_remote_only() {
                remote_only += 1;
            }
            if !e.in_region() {
                return Err(format!(
                    "{:?} has neither connections nor forwarders",
                    e.key()
                ));
            }
            if e.active.is_some_and(|i| i >= e.conns.len()) {
                return Err(format!("{:?} active index out of range", e.key()));
            }
            if e.conns.len() == 1 && e.active != Some(0) {
                return Err(format!("{:?} single connection not active", e.key()));
            }
            if e.conns.is_empty() && (e.active.is_some() || !e.history.is_empty()) {
                return Err(format!("{:?} remote-only entry has local state", e.key()));
            }
            if e.conns.len() > 1 {
                dups += 1;
            }
            let mut links: Vec<LinkId> = e.forwarders.iter().map(|f| f.link_id()).collect();
            links.sort_by_key(|l| l.0);
            links.dedup();
            if links.len() != e.forwarders.len() {
                return Err(format!("{:?} has a forwarder twice", e.key()));
            }
            if e.forwarders.len() > self.limits.max_forwarders_per_key
                || e.conns.len() > self.limits.max_conns_per_key
                || e.peer_gone_watchers.len() > self.limits.max_peer_gone_watchers
            {
                return Err(format!("{:?} over a bound", e.key()));
            }
            for c in &e.conns {
                if c.key != *e.key() {
                    return Err("connection filed under the wrong key".into());
                }
                if c.is_dup.load(Ordering::Relaxed) != (e.conns.len() > 1) {
                    return Err("is_dup flag out of sync".into());
                }
            }
        }
        if remote_only != self.remote_only_count() {
            return Err(format!(
                "remote-only count {} != {remote_only}",
                self.remote_only_count()
            ));
        }
        if dups != self.dup_keys.load(Ordering::Relaxed) {
            return Err(format!(
                "dup key count {} != {}",
                self.dup_keys.load(Ordering::Relaxed),
                dups
            ));
        }
        Ok(())
    }
}

/// Keeps the history bounded: only the most recent entries matter, and a key has at most
/// `max_conns` connections.
fn trim_history(history: &mut Vec<ConnectionId>, max_conns: usize) {
    let cap = 4 * max_conns.max(1);
    if history.len() > cap {
        history.drain(..history.len() - cap / 2);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::Weak;

    use bytes::Bytes;
    use derp_proto::frame::PeerPresentFlags;
    use proptest::prelude::*;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::metrics::PacketKind;
    use crate::relay::conn::{Outgoing, Packet, QueueDepths};
    use crate::relay::forward::{ForwardOutcome, Forwarder};

    fn registry() -> Registry {
        registry_with(Metrics::new(), 1024)
    }

    fn registry_with(metrics: Metrics, mesh_presence_pending_max: usize) -> Registry {
        Registry::new(
            RegistryLimits {
                max_conns_per_key: 4,
                max_peer_gone_watchers: 2,
                max_forwarders_per_key: 3,
                mesh_presence_pending_max,
            },
            Arc::new(metrics),
        )
    }

    fn key(k: u8) -> NodePublicKey {
        NodePublicKey::from_bytes([k; 32])
    }

    fn conn(id: u64, k: u8) -> ConnHandle {
        conn_with(id, k, 1, 64)
    }

    /// A connection of key `k` from port `port` of localhost with a control queue of
    /// `control` frames.
    fn conn_with(id: u64, k: u8, port: u16, control: usize) -> ConnHandle {
        Arc::new(Conn::new(
            ConnectionId(id),
            key(k),
            SocketAddr::from(([127, 0, 0, 1], port)),
            PeerPresentFlags::IS_REGULAR,
            false,
            QueueDepths {
                packets: 4,
                control,
            },
            CancellationToken::new(),
            Weak::new(),
        ))
    }

    /// What a watcher's writer would send now: its queued control frames, and its pending
    /// presence read from `r` as the writer reads it.
    fn frames(r: &Registry, w: &Conn) -> Vec<Control> {
        resolve(r, w.queued())
    }

    fn resolve(r: &Registry, taken: Vec<Outgoing>) -> Vec<Control> {
        taken
            .into_iter()
            .filter_map(|o| match o {
                Outgoing::Control(c) => Some(c),
                Outgoing::Presence(k) => Some(r.presence(&k)),
                _ => None,
            })
            .collect()
    }

    /// A watcher's view of the node: the keys it was last told are present, with address.
    type View = HashMap<NodePublicKey, SocketAddr>;

    fn apply(view: &mut View, frames: Vec<Control>) {
        for f in frames {
            match f {
                Control::PeerPresent { key, addr, .. } => {
                    view.insert(key, addr);
                }
                Control::PeerGone(key, PeerGoneReason::DISCONNECTED) => {
                    view.remove(&key);
                }
                _ => {}
            }
        }
    }

    /// The node as a watcher should see it: every key with a local connection, with the
    /// address of its active (else newest) one.
    fn truth(r: &Registry) -> View {
        r.clients
            .iter()
            .filter_map(|e| e.presented().map(|c| (c.key, c.remote)))
            .collect()
    }

    #[derive(Debug)]
    struct TestLink(u64);

    impl Forwarder for TestLink {
        fn link_id(&self) -> LinkId {
            LinkId(self.0)
        }
        fn forward(&self, _: NodePublicKey, _: NodePublicKey, _: Bytes) -> ForwardOutcome {
            ForwardOutcome::Queued
        }
    }

    fn link(id: u64) -> ForwarderHandle {
        Arc::new(TestLink(id))
    }

    fn active_id(r: &Registry, k: u8) -> Option<u64> {
        match r.route(&key(k)) {
            Route::Local(c) => Some(c.conn_id.0),
            _ => None,
        }
    }

    fn remote_link(r: &Registry, k: u8) -> Option<u64> {
        match r.route(&key(k)) {
            Route::Remote(f) => Some(f.link_id().0),
            _ => None,
        }
    }

    /// PeerGone(Disconnected) frames queued for `c`, by departed key.
    fn gone_frames(c: &Conn) -> Vec<NodePublicKey> {
        c.queued()
            .into_iter()
            .filter_map(|o| match o {
                Outgoing::Control(Control::PeerGone(k, PeerGoneReason::DISCONNECTED)) => Some(k),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn newest_is_active_and_last_writer_wins() {
        let r = registry();
        let (a1, a2) = (conn(1, 1), conn(2, 1));
        r.register(&a1).unwrap();
        r.register(&a2).unwrap();
        assert_eq!(active_id(&r, 1), Some(2));
        r.note_activity(&a1);
        assert_eq!(active_id(&r, 1), Some(1));
        r.unregister(&a1);
        assert_eq!(active_id(&r, 1), Some(2));
        r.check_invariants().unwrap();
        r.unregister(&a2);
        assert!(matches!(r.route(&key(1)), Route::Unknown));
        r.check_invariants().unwrap();
    }

    #[test]
    fn three_silent_connections_follow_go_history() {
        let r = registry();
        let (a1, a2, a3) = (conn(1, 1), conn(2, 1), conn(3, 1));
        for c in [&a1, &a2, &a3] {
            r.register(c).unwrap();
        }
        assert_eq!(active_id(&r, 1), Some(3));
        r.unregister(&a3);
        assert_eq!(active_id(&r, 1), Some(1));
        r.check_invariants().unwrap();
    }

    #[test]
    fn too_many_connections_for_one_key_are_refused() {
        let r = registry();
        for i in 0..4 {
            r.register(&conn(i, 9)).unwrap();
        }
        assert_eq!(r.register(&conn(99, 9)), Err(RegisterError::TooManyDups(4)));
        r.check_invariants().unwrap();
    }

    #[test]
    fn peer_gone_goes_to_receivers_on_last_disconnect_only() {
        let r = registry();
        let (a1, a2, b) = (conn(1, 1), conn(2, 1), conn(3, 2));
        r.register(&a1).unwrap();
        r.register(&a2).unwrap();
        r.register(&b).unwrap();
        assert!(r.add_peer_gone_watcher(&a1.key, &b));
        r.unregister(&a1);
        assert!(gone_frames(&b).is_empty(), "2 -> 1 must not send PeerGone");
        r.unregister(&a2);
        assert_eq!(gone_frames(&b), [a1.key]);
    }

    #[test]
    fn watcher_sets_are_bounded() {
        let r = registry();
        let a = conn(1, 1);
        r.register(&a).unwrap();
        for k in 2..4 {
            let c = conn(u64::from(k), k);
            r.register(&c).unwrap();
            assert!(r.add_peer_gone_watcher(&a.key, &c));
        }
        let extra = conn(10, 10);
        r.register(&extra).unwrap();
        assert!(!r.add_peer_gone_watcher(&a.key, &extra));
    }

    #[test]
    fn local_beats_remote_and_first_announcer_wins() {
        let r = registry();
        assert!(r.add_forwarder(key(1), link(7)));
        assert!(r.add_forwarder(key(1), link(8)));
        assert!(
            r.add_forwarder(key(1), link(7)),
            "re-announcing is idempotent"
        );
        assert_eq!(remote_link(&r, 1), Some(7));
        let a = conn(1, 1);
        r.register(&a).unwrap();
        assert_eq!(active_id(&r, 1), Some(1));
        r.unregister(&a);
        assert_eq!(remote_link(&r, 1), Some(7));
        r.remove_forwarder(&key(1), LinkId(7));
        assert_eq!(remote_link(&r, 1), Some(8));
        r.check_invariants().unwrap();
    }

    #[test]
    fn moving_to_another_node_is_not_leaving_the_region() {
        let r = registry();
        let (a, b) = (conn(1, 1), conn(2, 2));
        r.register(&a).unwrap();
        r.register(&b).unwrap();
        assert!(r.add_peer_gone_watcher(&a.key, &b));
        // a reconnects to another node of the region, which announces it, then leaves here.
        r.add_forwarder(a.key, link(5));
        r.unregister(&a);
        assert!(gone_frames(&b).is_empty());
        assert_eq!(remote_link(&r, 1), Some(5));
        // Then it leaves the region altogether.
        r.remove_forwarder(&a.key, LinkId(5));
        assert_eq!(gone_frames(&b), [a.key]);
        assert!(matches!(r.route(&a.key), Route::Unknown));
        r.check_invariants().unwrap();
    }

    #[test]
    fn remote_only_senders_record_receivers_and_a_broken_link_reports_them_gone() {
        let r = registry();
        let b = conn(2, 2);
        r.register(&b).unwrap();
        r.add_forwarder(key(1), link(5));
        r.add_forwarder(key(3), link(5));
        assert!(
            r.add_peer_gone_watcher(&key(1), &b),
            "a remote sender is recorded"
        );
        assert!(
            !r.add_peer_gone_watcher(&key(9), &b),
            "nobody in the region"
        );
        assert_eq!(r.remove_link(LinkId(5)), 2);
        assert_eq!(gone_frames(&b), [key(1)]);
        r.check_invariants().unwrap();
    }

    #[test]
    fn forwarders_per_key_are_bounded() {
        let r = registry();
        for l in 0..3 {
            assert!(r.add_forwarder(key(1), link(l)));
        }
        assert!(!r.add_forwarder(key(1), link(99)));
        r.check_invariants().unwrap();
    }

    /// Counts allocations per thread, so parallel tests do not disturb each other.
    struct Counting;

    thread_local! {
        static ALLOCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    // SAFETY: delegates to the system allocator; the counter is a thread-local Cell.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { std::alloc::System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    #[test]
    fn route_lookup_and_enqueue_allocate_nothing_once_warm() {
        let r = registry();
        for k in 0..100u8 {
            r.register(&conn(u64::from(k), k)).unwrap();
        }
        let keys: Vec<NodePublicKey> = (0..200u8).map(key).collect();
        let packet = |k: &NodePublicKey| Packet {
            src: *k,
            data: Bytes::from_static(b"wireguard"),
            kind: PacketKind::Other,
            enqueued_at: std::time::Instant::now(),
        };
        // The first packet to a connection grows its lane (an idle connection holds none).
        for k in &keys {
            if let Route::Local(c) = r.route(k) {
                c.enqueue_packet(packet(k), &r.metrics);
            }
        }
        let mut batch: Vec<Outgoing> = Vec::with_capacity(64);
        let before = ALLOCS.with(std::cell::Cell::get);
        let mut local = 0;
        for k in &keys {
            if let Route::Local(c) = r.route(k) {
                local += 1;
                c.enqueue_packet(packet(k), &r.metrics);
                // And the writer taking it (it keeps the lane while the connection is busy).
                assert!(c.take_batch(&mut batch, 64));
                batch.clear();
            }
        }
        assert_eq!(local, 100);
        assert_eq!(
            ALLOCS.with(std::cell::Cell::get) - before,
            0,
            "allocations in route() and enqueue"
        );
    }

    #[test]
    fn watchers_get_present_flood_and_updates() {
        let r = registry();
        let a = conn(1, 1);
        r.register(&a).unwrap();
        let w = conn(2, 2);
        r.register(&w).unwrap();
        r.add_watcher(&w);
        let present = frames(&r, &w)
            .into_iter()
            .filter(|c| matches!(c, Control::PeerPresent { .. }))
            .count();
        assert_eq!(present, 2);
        // WatchConns again on the same connection: no second flood.
        r.add_watcher(&w);
        assert!(frames(&r, &w).is_empty());
        r.unregister(&a);
        let gone: Vec<_> = frames(&r, &w)
            .into_iter()
            .filter_map(|c| match c {
                Control::PeerGone(k, PeerGoneReason::DISCONNECTED) => Some(k),
                _ => None,
            })
            .collect();
        assert_eq!(gone, [a.key]);
    }

    #[test]
    fn a_key_churning_before_the_writer_runs_is_one_frame_with_its_latest_state() {
        let (m, h) = crate::metrics::recorded();
        let r = registry_with(m, 1024);
        let w = conn(1, 1);
        r.register(&w).unwrap();
        r.add_watcher(&w);
        assert_eq!(frames(&r, &w).len(), 1, "the flood: the watcher itself");

        // Key 2 comes and goes 100 times, ending gone: one PeerGone.
        for i in 0..100 {
            let a = conn_with(10 + i, 2, 1000 + i as u16, 64);
            r.register(&a).unwrap();
            r.unregister(&a);
        }
        let f = frames(&r, &w);
        assert!(
            matches!(f[..], [Control::PeerGone(k, PeerGoneReason::DISCONNECTED)] if k == key(2)),
            "{f:?}"
        );

        // Then 100 times more, ending connected from port 2099: one PeerPresent with it.
        for i in 0..100 {
            let a = conn_with(200 + i, 2, 2000 + i as u16, 64);
            r.register(&a).unwrap();
            if i < 99 {
                r.unregister(&a);
            }
        }
        let f = frames(&r, &w);
        assert!(
            matches!(f[..], [Control::PeerPresent { key: k, addr, .. }] if k == key(2) && addr.port() == 2099),
            "{f:?}"
        );
        let updates = |result: &str| {
            crate::metrics::sample(
                &h,
                &format!("derp_mesh_presence_updates_total{{result=\"{result}\"}}"),
            )
        };
        // The flood, then one key per round; everything else coalesced.
        assert_eq!(updates("queued"), 3.0);
        assert_eq!(updates("coalesced"), 199.0 + 198.0);
    }

    /// Before presence had its own set, a watcher's PeerPresent frames shared the bounded
    /// control queue: past its depth they were dropped and the watcher's view stayed wrong.
    #[test]
    fn more_keys_than_a_control_queue_holds_all_reach_the_watcher() {
        let (m, h) = crate::metrics::recorded();
        let r = registry_with(m, 1024);
        // A control queue of 2 frames.
        let w = conn_with(1, 0, 1, 2);
        r.register(&w).unwrap();
        for k in 1..=100u8 {
            r.register(&conn_with(u64::from(k) + 1, k, 1, 64)).unwrap();
        }
        r.add_watcher(&w);
        for k in 101..=200u8 {
            r.register(&conn_with(u64::from(k) + 1, k, 1, 64)).unwrap();
        }
        let mut view = View::new();
        apply(&mut view, frames(&r, &w));
        assert_eq!(view.len(), 201);
        assert_eq!(view, truth(&r));
        assert_eq!(
            crate::metrics::sample(&h, "derp_control_dropped_total"),
            0.0
        );
    }

    #[test]
    fn a_watcher_too_far_behind_is_closed_and_counted_once() {
        let (m, h) = crate::metrics::recorded();
        let r = registry_with(m, 4);
        let w = conn(1, 1);
        r.register(&w).unwrap();
        r.add_watcher(&w);
        for k in 2..=4u8 {
            r.register(&conn(u64::from(k), k)).unwrap();
        }
        // Four keys pending, the cap. A key already pending costs nothing more.
        let again = conn(20, 2);
        r.register(&again).unwrap();
        r.unregister(&again);
        assert!(!w.cancel.is_cancelled());
        // A fifth key: the watcher is hopelessly behind and is closed.
        r.register(&conn(5, 5)).unwrap();
        assert!(w.cancel.is_cancelled());
        assert!(w.queued().is_empty(), "its pending set was given back");
        r.register(&conn(6, 6)).unwrap();
        assert_eq!(
            crate::metrics::sample(
                &h,
                r#"derp_mesh_watchers_closed_total{reason="presence_backlog"}"#
            ),
            1.0
        );
    }

    /// Clients connect and leave on four threads while a watcher subscribes and its "writer"
    /// drains on another: once everyone stops, the watcher's view is the node's.
    #[test]
    fn the_flood_and_concurrent_updates_end_in_the_current_state_of_every_key() {
        let r = registry_with(Metrics::new(), 1 << 16);
        for k in 0..32u8 {
            r.register(&conn_with(u64::from(k), k, 1, 64)).unwrap();
        }
        let w = conn(1000, 200);
        r.register(&w).unwrap();
        let next_id = AtomicU64::new(2000);
        let running = AtomicU64::new(4);
        let mut view = View::new();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let (r, next_id, running) = (&r, &next_id, &running);
                s.spawn(move || {
                    // This thread owns keys k with k % 4 == t, one connection each at most.
                    let mut mine: HashMap<u8, ConnHandle> = HashMap::new();
                    let mut x = u32::from(t) + 1;
                    for _ in 0..3000 {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        let k = ((x >> 16) % 16) as u8 * 4 + t;
                        if let Some(c) = mine.remove(&k) {
                            r.unregister(&c);
                        } else if k >= 32 || x & 0x8000 != 0 {
                            let id = next_id.fetch_add(1, Ordering::Relaxed);
                            let c = conn_with(id, k, (id % 60_000) as u16 + 1, 64);
                            r.register(&c).unwrap();
                            mine.insert(k, c);
                        }
                    }
                    running.fetch_sub(1, Ordering::Release);
                });
            }
            let view = &mut view;
            let (r, w, running) = (&r, &w, &running);
            s.spawn(move || {
                r.add_watcher(w);
                let mut batch = Vec::new();
                while running.load(Ordering::Acquire) > 0 {
                    if w.take_batch(&mut batch, 8) {
                        apply(view, resolve(r, std::mem::take(&mut batch)));
                    } else {
                        std::thread::yield_now();
                    }
                }
            });
        });
        apply(&mut view, frames(&r, &w));
        assert_eq!(view, truth(&r));
        assert!(!w.cancel.is_cancelled());
    }

    #[derive(Debug, Clone)]
    enum Event {
        Connect(u8),
        Disconnect(usize),
        Activity(usize),
        Announce(u8, u64),
        Withdraw(u8, u64),
        LinkBroke(u64),
        Send { from: usize, to: u8 },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0..4u8).prop_map(Event::Connect),
            (0..8usize).prop_map(Event::Disconnect),
            (0..8usize).prop_map(Event::Activity),
            (0..4u8, 0..3u64).prop_map(|(k, l)| Event::Announce(k, l)),
            (0..4u8, 0..3u64).prop_map(|(k, l)| Event::Withdraw(k, l)),
            (0..3u64).prop_map(Event::LinkBroke),
            (0..8usize, 0..4u8).prop_map(|(from, to)| Event::Send { from, to }),
        ]
    }

    proptest! {
        /// Random connects, disconnects, announcements and sends keep the registry consistent,
        /// route as a model says, and send PeerGone exactly when a key leaves the region.
        #[test]
        fn region_presence_matches_a_model(events in proptest::collection::vec(event(), 1..80)) {
            let r = registry();
            let mut open: Vec<ConnHandle> = Vec::new();
            let mut next_id = 100;
            // Model: forwarders per key in announcement order.
            let mut fwd: HashMap<u8, Vec<u64>> = HashMap::new();
            // Model: who received from whom (receiver conn id -> senders), since its last
            // PeerGone for that sender.
            let mut received: HashMap<u64, HashSet<u8>> = HashMap::new();
            let in_region = |open: &[ConnHandle], fwd: &HashMap<u8, Vec<u64>>, k: u8| {
                open.iter().any(|c| c.key == key(k)) || fwd.get(&k).is_some_and(|v| !v.is_empty())
            };
            for ev in events {
                let before: Vec<bool> = (0..4).map(|k| in_region(&open, &fwd, k)).collect();
                match ev {
                    Event::Connect(k) => {
                        let c = conn(next_id, k);
                        next_id += 1;
                        if r.register(&c).is_ok() {
                            open.push(c);
                        }
                    }
                    Event::Disconnect(i) if i < open.len() => {
                        let c = open.remove(i);
                        r.unregister(&c);
                        received.remove(&c.conn_id.0);
                    }
                    Event::Activity(i) if i < open.len() => r.note_activity(&open[i]),
                    Event::Announce(k, l) if r.add_forwarder(key(k), link(l)) => {
                        let v = fwd.entry(k).or_default();
                        if !v.contains(&l) {
                            v.push(l);
                        }
                    }
                    Event::Withdraw(k, l) => {
                        r.remove_forwarder(&key(k), LinkId(l));
                        fwd.entry(k).or_default().retain(|x| *x != l);
                    }
                    Event::LinkBroke(l) => {
                        r.remove_link(LinkId(l));
                        for v in fwd.values_mut() {
                            v.retain(|x| *x != l);
                        }
                    }
                    Event::Send { from, to } if from < open.len() => {
                        // `to` receives a packet from `open[from]`: its writer records it.
                        let sender = open[from].key;
                        if let Route::Local(dst) = r.route(&key(to))
                            && r.add_peer_gone_watcher(&sender, &dst)
                        {
                            let k = sender.as_bytes()[0];
                            // One receiver connection per receiver key is remembered (Go's
                            // `sentTo` maps key to connection number).
                            for c in open.iter().filter(|c| c.key == dst.key) {
                                if let Some(s) = received.get_mut(&c.conn_id.0) {
                                    s.remove(&k);
                                }
                            }
                            received.entry(dst.conn_id.0).or_default().insert(k);
                        }
                    }
                    _ => {}
                }
                prop_assert!(r.check_invariants().is_ok(), "{:?}", r.check_invariants());
                let heard: HashMap<u64, Vec<NodePublicKey>> =
                    open.iter().map(|c| (c.conn_id.0, gone_frames(c))).collect();
                for k in 0..4u8 {
                    let now = in_region(&open, &fwd, k);
                    let route = r.route(&key(k));
                    let local = open.iter().any(|c| c.key == key(k));
                    match (&route, local, fwd.get(&k).and_then(|v| v.first())) {
                        (Route::Local(_) | Route::DupNoActive, true, _) => {}
                        (Route::Remote(f), false, Some(first)) => prop_assert_eq!(f.link_id().0, *first),
                        (Route::Unknown, false, None) => {}
                        other => prop_assert!(false, "key {} routes {:?}", k, other.0),
                    }
                    if before[k as usize] && !now {
                        // Left the region: every receiver that still holds it heard PeerGone.
                        for c in &open {
                            let heard = heard[&c.conn_id.0].contains(&key(k));
                            let expected = received.get_mut(&c.conn_id.0).is_some_and(|s| s.remove(&k));
                            prop_assert_eq!(heard, expected, "receiver {} of key {}", c.conn_id, k);
                        }
                    }
                }
                // Nobody hears PeerGone for a key that is still in the region.
                for gone in heard.values().flatten() {
                    prop_assert!(!in_region(&open, &fwd, gone.as_bytes()[0]));
                }
            }
        }
    }
}
