//! Who is connected: connections by node key, duplicate handling, PeerGone bookkeeping and
//! watchers.
//!
//! No I/O and no `.await` here: every method takes a DashMap shard guard, copies out what it
//! needs, and drops the guard before notifying anyone, so no guard is ever held while another
//! connection's queue is touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use derp_proto::NodePublicKey;
use derp_proto::frame::PeerGoneReason;

use super::queue::{ClientHandle, ConnectionId, Control};
use crate::metrics::Metrics;

/// Where a packet for a key should go.
#[derive(Debug)]
pub(crate) enum Route {
    /// The key's active local connection.
    Local(ClientHandle),
    /// The key is connected, but several times and none is active.
    DupNoActive,
    /// Nobody here has that key.
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
}

#[derive(Debug, Default)]
struct KeyEntry {
    /// Every open connection of this key, oldest first.
    conns: Vec<ClientHandle>,
    /// Index into `conns` of the connection that receives packets.
    active: Option<usize>,
    /// Connections in the order they became active, used to pick the next active one when the
    /// active one leaves. Mirrors Go's `dupClientSet.sendHistory` exactly, quirk included: when
    /// a key goes from one to two connections only the older one is recorded, so with three
    /// silent connections a1, a2, a3 the history is [a1, a3] and a1 follows a3.
    history: Vec<ConnectionId>,
    /// Receivers (key and the connection that got the packet) that must hear PeerGone when
    /// this key's last connection closes (Go: `sentTo`).
    peer_gone_watchers: HashMap<NodePublicKey, ConnectionId>,
}

/// The set of connected clients.
#[derive(Debug)]
pub(crate) struct Registry {
    clients: DashMap<NodePublicKey, KeyEntry>,
    /// Mesh watchers (WatchConns senders); small, so a mutex is fine.
    watchers: Mutex<HashMap<ConnectionId, ClientHandle>>,
    dup_keys: AtomicU64,
    limits: RegistryLimits,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub(crate) fn new(limits: RegistryLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            clients: DashMap::new(),
            watchers: Mutex::new(HashMap::new()),
            dup_keys: AtomicU64::new(0),
            limits,
            metrics,
        }
    }

    /// Adds a connection; the newest connection of a key becomes its active one.
    pub(crate) fn register(&self, client: &ClientHandle) -> Result<(), RegisterError> {
        {
            let mut entry = self.clients.entry(client.key).or_default();
            if entry.conns.len() >= self.limits.max_conns_per_key {
                return Err(RegisterError::TooManyDups(entry.conns.len()));
            }
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
        self.broadcast(Control::PeerPresent {
            key: client.key,
            addr: client.remote,
            flags: client.flags,
        });
        Ok(())
    }

    /// Removes a connection. On the key's last connection, queues PeerGone(Disconnected) to
    /// every connection that received packets from it, and to watchers.
    pub(crate) fn unregister(&self, client: &ClientHandle) {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client.conn_id);
        let mut notify = Vec::new();
        let mut gone = false;
        if let dashmap::Entry::Occupied(mut occ) = self.clients.entry(client.key) {
            let entry = occ.get_mut();
            let Some(pos) = entry.conns.iter().position(|c| c.conn_id == client.conn_id) else {
                return;
            };
            let was_dup = entry.conns.len() > 1;
            entry.conns.remove(pos);
            if was_dup && entry.conns.len() <= 1 {
                self.dup_keys.fetch_sub(1, Ordering::Relaxed);
            }
            if entry.conns.is_empty() {
                let entry = occ.remove();
                notify.extend(entry.peer_gone_watchers);
                gone = true;
            } else {
                let was_active = entry.active == Some(pos);
                let active_id = entry
                    .active
                    .and_then(|i| entry.conns_id_before_removal(i, pos));
                entry.history.retain(|id| *id != client.conn_id);
                if entry.conns.len() == 1 {
                    // Back to a single connection: it is active.
                    entry.conns[0].is_dup.store(false, Ordering::Relaxed);
                    entry.active = Some(0);
                    entry.history.clear();
                } else if was_active {
                    // The most recent still-connected entry of the history becomes active.
                    let conns = &entry.conns;
                    entry.active = entry
                        .history
                        .iter()
                        .rev()
                        .find_map(|id| conns.iter().position(|c| c.conn_id == *id));
                } else {
                    entry.active =
                        active_id.and_then(|id| entry.conns.iter().position(|c| c.conn_id == id));
                }
            }
        }
        self.metrics
            .current_dup_client_keys
            .set(self.dup_keys.load(Ordering::Relaxed) as f64);
        if !gone {
            return;
        }
        for (dst, conn_id) in notify {
            if let Some(target) = self.connection(&dst, conn_id)
                && target.enqueue_control(
                    Control::PeerGone(client.key, PeerGoneReason::DISCONNECTED),
                    &self.metrics,
                )
            {
                self.metrics.peer_gone_disconnected.increment(1);
            }
        }
        self.broadcast(Control::PeerGone(client.key, PeerGoneReason::DISCONNECTED));
    }

    fn connection(&self, key: &NodePublicKey, conn_id: ConnectionId) -> Option<ClientHandle> {
        let entry = self.clients.get(key)?;
        entry.conns.iter().find(|c| c.conn_id == conn_id).cloned()
    }

    /// Looks up where a packet for `dst` goes. The returned handle is a clone; no guard is kept.
    pub(crate) fn route(&self, dst: &NodePublicKey) -> Route {
        match self.clients.get(dst) {
            None => Route::Unknown,
            Some(entry) => match entry.active.and_then(|i| entry.conns.get(i)) {
                Some(c) => Route::Local(c.clone()),
                None => Route::DupNoActive,
            },
        }
    }

    /// Called when a connection whose key has duplicates sends a frame: it becomes active
    /// ("last writer is active", Go's default policy).
    pub(crate) fn note_activity(&self, client: &ClientHandle) {
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

    /// Remembers that `receiver` got a packet from `src`, so it hears when `src` leaves.
    /// Returns false if `src` is not connected (nothing to remember) or its set is full.
    pub(crate) fn add_peer_gone_watcher(
        &self,
        src: &NodePublicKey,
        receiver: &ClientHandle,
    ) -> bool {
        let Some(mut entry) = self.clients.get_mut(src) else {
            return false;
        };
        let watchers = &mut entry.peer_gone_watchers;
        if watchers.len() >= self.limits.max_peer_gone_watchers
            && !watchers.contains_key(&receiver.key)
        {
            self.metrics.watchers_dropped.increment(1);
            return false;
        }
        watchers.insert(receiver.key, receiver.conn_id);
        true
    }

    /// Subscribes a mesh watcher: it gets PeerPresent for every connected key now, then updates.
    pub(crate) fn add_watcher(&self, watcher: &ClientHandle) {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(watcher.conn_id, watcher.clone());
        let present: Vec<Control> = self
            .clients
            .iter()
            .filter_map(|e| {
                let c = e.active.and_then(|i| e.conns.get(i))?;
                Some(Control::PeerPresent {
                    key: c.key,
                    addr: c.remote,
                    flags: c.flags,
                })
            })
            .collect();
        for p in present {
            watcher.enqueue_control(p, &self.metrics);
        }
    }

    /// Closes every connection of `key` (mesh ClosePeer). Returns how many were closed.
    pub(crate) fn close_key(&self, key: &NodePublicKey) -> usize {
        let conns: Vec<ClientHandle> = self
            .clients
            .get(key)
            .map(|e| e.conns.clone())
            .unwrap_or_default();
        for c in &conns {
            c.cancel.cancel();
        }
        conns.len()
    }

    /// Queues a control frame to every connection (used for Restarting on shutdown).
    pub(crate) fn send_all(&self, control: &Control) {
        let all: Vec<ClientHandle> = self.clients.iter().flat_map(|e| e.conns.clone()).collect();
        for c in all {
            c.enqueue_control(control.clone(), &self.metrics);
        }
    }

    fn broadcast(&self, control: Control) {
        let watchers: Vec<ClientHandle> = self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for w in watchers {
            w.enqueue_control(control.clone(), &self.metrics);
        }
    }

    /// Number of distinct keys connected.
    pub(crate) fn key_count(&self) -> usize {
        self.clients.len()
    }

    /// Checks internal consistency; used by tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut dups = 0;
        for e in self.clients.iter() {
            if e.conns.is_empty() {
                return Err(format!("{:?} has an empty set", e.key()));
            }
            if e.active.is_some_and(|i| i >= e.conns.len()) {
                return Err(format!("{:?} active index out of range", e.key()));
            }
            if e.conns.len() > 1 {
                dups += 1;
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

impl KeyEntry {
    /// The id of the connection at index `i` as it was before index `removed` was taken out.
    fn conns_id_before_removal(&self, i: usize, removed: usize) -> Option<ConnectionId> {
        let i = if i > removed { i - 1 } else { i };
        self.conns.get(i).map(|c| c.conn_id)
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
    use derp_proto::frame::PeerPresentFlags;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::server::queue::{ClientShared, QueueDepths};

    fn registry() -> Registry {
        Registry::new(
            RegistryLimits {
                max_conns_per_key: 4,
                max_peer_gone_watchers: 2,
            },
            Arc::new(Metrics::new()),
        )
    }

    fn conn(id: u64, key: u8) -> ClientHandle {
        Arc::new(ClientShared::new(
            ConnectionId(id),
            NodePublicKey::from_bytes([key; 32]),
            "127.0.0.1:1".parse().unwrap(),
            PeerPresentFlags::IS_REGULAR,
            false,
            QueueDepths {
                packets: 4,
                control: 4,
            },
            CancellationToken::new(),
        ))
    }

    fn active_id(r: &Registry, key: u8) -> Option<u64> {
        match r.route(&NodePublicKey::from_bytes([key; 32])) {
            Route::Local(c) => Some(c.conn_id.0),
            _ => None,
        }
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
        assert!(matches!(
            r.route(&NodePublicKey::from_bytes([1; 32])),
            Route::Unknown
        ));
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
        assert!(b.pop_control().is_none(), "2 -> 1 must not send PeerGone");
        r.unregister(&a2);
        match b.pop_control() {
            Some(Control::PeerGone(k, reason)) => {
                assert_eq!(k, a1.key);
                assert_eq!(reason, PeerGoneReason::DISCONNECTED);
            }
            other => panic!("expected PeerGone, got {other:?}"),
        }
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
    fn route_lookup_and_enqueue_allocate_nothing() {
        let r = registry();
        for k in 0..100u8 {
            r.register(&conn(u64::from(k), k)).unwrap();
        }
        let keys: Vec<NodePublicKey> = (0..200u8)
            .map(|k| NodePublicKey::from_bytes([k; 32]))
            .collect();
        let before = ALLOCS.with(std::cell::Cell::get);
        let mut local = 0;
        for k in &keys {
            if let Route::Local(c) = r.route(k) {
                local += 1;
                // Queueing and dequeueing a packet costs nothing either.
                c.enqueue_packet(
                    crate::server::queue::Packet {
                        src: *k,
                        data: bytes::Bytes::from_static(b"wireguard"),
                        enqueued_at: std::time::Instant::now(),
                    },
                    &r.metrics,
                );
                assert!(c.pop_data().is_some());
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
        let mut present = 0;
        while let Some(c) = w.pop_control() {
            assert!(matches!(c, Control::PeerPresent { .. }));
            present += 1;
        }
        assert_eq!(present, 2);
        r.unregister(&a);
        assert!(matches!(w.pop_control(), Some(Control::PeerGone(k, _)) if k == a.key));
    }
}
