//! The mesh watcher's view of a peer relay, as a pure state machine.
//!
//! A relay in a mesh keeps one outbound DERP connection to every other relay and sends
//! WatchConns on it. The peer answers with a PeerPresent for every client connected to it, then
//! PeerPresent/PeerGone as clients come and go. The watcher turns that stream into forwarding
//! entries ("packets for key K go to peer relay R"). [`WatchSet`] is the bookkeeping: feed it the
//! connection's events and it returns the [`WatchAction`]s to apply, deduplicated and bounded.
//!
//! # Semantics, compared with Go
//!
//! Tailscale's `derphttp.RunWatchConnectionLoop` (derp/derphttp/mesh_client.go) keeps a
//! `present` set and:
//!
//! * on PeerPresent calls `add` and inserts the key, *even if it was already present*;
//! * on PeerGone calls `remove` and deletes the key, *even if it was never present*;
//! * when `Recv` fails, and again when the first frame of a new connection arrives (a new
//!   `connGen`), calls `clear`: `remove` with reason `PeerGoneReasonMeshConnBroke` for every key
//!   in the set, then empties it. Peers still connected over there are re-announced by the
//!   PeerPresent flood the server sends to every new watcher.
//!
//! Go's doc comment asks callers to "do their own accounting and dup suppression"; this type is
//! that accounting. With [`ReconnectPolicy::ClearOnBreak`] (the default) it does exactly what Go
//! does, except that it never reports an Add for a key it already holds (a re-announcement with
//! a different address or flags is an [`WatchAction::Update`]) and never reports a Remove for a
//! key it does not hold.
//!
//! [`ReconnectPolicy::Resync`] is an extension: on [`WatchSet::disconnected`] nothing is removed;
//! on [`WatchSet::connected`] every held key becomes *stale*, and a key that the new connection
//! does not re-announce within the sync window is removed (reason
//! [`PeerGoneReason::MESH_CONN_BROKE`]) when [`WatchSet::handle_timeout`] runs at or after
//! [`WatchSet::poll_timeout`]. This saves a Remove/Add pair per peer on every reconnect at the
//! cost of keeping routes to a dead link for up to one window after reconnecting (during the
//! disconnection itself those packets could not be forwarded either way).
//!
//! # Bounds
//!
//! The set holds at most `max_peers` keys, stale ones included. A PeerPresent for a new key when
//! the set is full is refused with [`WatchSetFull`]; the caller counts it. The set never grows
//! past the bound, and every method does work proportional to the set, never more.
//!
//! Everything here is pure: no clock (the caller passes `now`) and no IO.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::frame::{PeerGoneReason, PeerPresentFlags};
use crate::key::NodePublicKey;

/// What the caller applies to its forwarding table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchAction {
    /// `peer` is now reachable through this link.
    Add {
        /// The peer.
        peer: NodePublicKey,
        /// Its address as the peer relay reported it.
        addr: Option<SocketAddr>,
        /// Its PeerPresent flags.
        flags: PeerPresentFlags,
    },
    /// `peer`, already held, was re-announced with a different address or flags.
    Update {
        /// The peer.
        peer: NodePublicKey,
        /// Its new address.
        addr: Option<SocketAddr>,
        /// Its new flags.
        flags: PeerPresentFlags,
    },
    /// `peer` is no longer reachable through this link.
    Remove {
        /// The peer.
        peer: NodePublicKey,
        /// The PeerGone reason, or [`PeerGoneReason::MESH_CONN_BROKE`] when the link broke.
        reason: PeerGoneReason,
    },
}

/// What happens to the set when the link reconnects; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReconnectPolicy {
    /// Go's behaviour: remove everything when the link breaks.
    #[default]
    ClearOnBreak,
    /// Keep entries across a break; remove those not re-announced within `window` of the
    /// reconnect.
    Resync {
        /// How long the new connection has to re-announce a held key.
        window: Duration,
    },
}

/// A PeerPresent for a new key was refused because the set holds `max_peers` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("mesh watch set is full ({max_peers} peers); dropped PeerPresent for {peer:?}")]
#[non_exhaustive]
pub struct WatchSetFull {
    /// The refused peer.
    pub peer: NodePublicKey,
    /// The bound that was hit.
    pub max_peers: usize,
}

/// The peers one mesh link has announced as present; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct WatchSet {
    // Static after construction.
    max_peers: usize,
    policy: ReconnectPolicy,

    // Owned by the link's reader.
    peers: HashMap<NodePublicKey, Held>,
    /// Stale entries in `peers` ([`ReconnectPolicy::Resync`] only).
    stale: usize,
    /// When stale entries are removed ([`ReconnectPolicy::Resync`] only).
    resync_deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    addr: Option<SocketAddr>,
    flags: PeerPresentFlags,
    /// Held from before the last reconnect and not re-announced since.
    stale: bool,
}

impl WatchSet {
    /// An empty set holding at most `max_peers` keys.
    pub fn new(max_peers: usize, policy: ReconnectPolicy) -> Self {
        Self {
            max_peers,
            policy,
            peers: HashMap::new(),
            stale: 0,
            resync_deadline: None,
        }
    }

    /// A new connection to the peer relay is up (Go: a new `connGen`).
    ///
    /// With [`ReconnectPolicy::ClearOnBreak`] removes every held key; with
    /// [`ReconnectPolicy::Resync`] marks them stale and starts the sync window at `now`.
    pub fn connected(&mut self, now: Instant) -> Vec<WatchAction> {
        match self.policy {
            ReconnectPolicy::ClearOnBreak => self.clear(),
            ReconnectPolicy::Resync { window } => {
                for held in self.peers.values_mut() {
                    held.stale = true;
                }
                self.stale = self.peers.len();
                self.resync_deadline = (self.stale > 0).then(|| now + window);
                Vec::new()
            }
        }
    }

    /// The connection broke (Go: `Recv` failed).
    ///
    /// With [`ReconnectPolicy::ClearOnBreak`] removes every held key; with
    /// [`ReconnectPolicy::Resync`] keeps them until the next connection's window ends.
    pub fn disconnected(&mut self) -> Vec<WatchAction> {
        match self.policy {
            ReconnectPolicy::ClearOnBreak => self.clear(),
            ReconnectPolicy::Resync { .. } => Vec::new(),
        }
    }

    /// The peer relay sent PeerPresent for `peer`.
    ///
    /// Returns `Add` for a new key, `Update` for a held key whose address or flags changed, and
    /// nothing for a plain re-announcement; in every case a stale key becomes fresh.
    pub fn peer_present(
        &mut self,
        peer: NodePublicKey,
        addr: Option<SocketAddr>,
        flags: PeerPresentFlags,
    ) -> Result<Option<WatchAction>, WatchSetFull> {
        let len = self.peers.len();
        match self.peers.entry(peer) {
            Entry::Occupied(mut e) => {
                let held = e.get_mut();
                if held.stale {
                    held.stale = false;
                    self.stale -= 1;
                    if self.stale == 0 {
                        self.resync_deadline = None;
                    }
                }
                if held.addr == addr && held.flags == flags {
                    return Ok(None);
                }
                held.addr = addr;
                held.flags = flags;
                Ok(Some(WatchAction::Update { peer, addr, flags }))
            }
            Entry::Vacant(_) if len >= self.max_peers => Err(WatchSetFull {
                peer,
                max_peers: self.max_peers,
            }),
            Entry::Vacant(e) => {
                e.insert(Held {
                    addr,
                    flags,
                    stale: false,
                });
                Ok(Some(WatchAction::Add { peer, addr, flags }))
            }
        }
    }

    /// The peer relay sent PeerGone for `peer`. Returns `Remove` if the key was held.
    pub fn peer_gone(
        &mut self,
        peer: NodePublicKey,
        reason: PeerGoneReason,
    ) -> Option<WatchAction> {
        let held = self.peers.remove(&peer)?;
        if held.stale {
            self.stale -= 1;
            if self.stale == 0 {
                self.resync_deadline = None;
            }
        }
        Some(WatchAction::Remove { peer, reason })
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work to do, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.resync_deadline
    }

    /// Removes stale keys once the sync window has ended at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<WatchAction> {
        match self.resync_deadline {
            Some(deadline) if now >= deadline => {}
            _ => return Vec::new(),
        }
        self.resync_deadline = None;
        self.stale = 0;
        let mut actions = Vec::new();
        self.peers.retain(|&peer, held| {
            if held.stale {
                actions.push(WatchAction::Remove {
                    peer,
                    reason: PeerGoneReason::MESH_CONN_BROKE,
                });
            }
            !held.stale
        });
        actions
    }

    /// Keys held, stale ones included.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The bound on [`len`](Self::len).
    pub fn max_peers(&self) -> usize {
        self.max_peers
    }

    /// Whether `peer` is held.
    pub fn contains(&self, peer: &NodePublicKey) -> bool {
        self.peers.contains_key(peer)
    }

    /// Held keys that the current connection has not re-announced yet.
    pub fn stale_len(&self) -> usize {
        self.stale
    }

    /// Removes every key with reason [`PeerGoneReason::MESH_CONN_BROKE`] (Go's `clear`).
    fn clear(&mut self) -> Vec<WatchAction> {
        self.stale = 0;
        self.resync_deadline = None;
        self.peers
            .drain()
            .map(|(peer, _)| WatchAction::Remove {
                peer,
                reason: PeerGoneReason::MESH_CONN_BROKE,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    fn key(n: u8) -> NodePublicKey {
        NodePublicKey::from_bytes([n; 32])
    }

    fn addr(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    const REGULAR: PeerPresentFlags = PeerPresentFlags::IS_REGULAR;
    const GONE: PeerGoneReason = PeerGoneReason::DISCONNECTED;
    const BROKE: PeerGoneReason = PeerGoneReason::MESH_CONN_BROKE;

    fn removed(actions: &[WatchAction]) -> HashSet<NodePublicKey> {
        actions
            .iter()
            .map(|a| match a {
                WatchAction::Remove { peer, reason } => {
                    assert_eq!(*reason, BROKE);
                    *peer
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn present_and_gone_are_deduplicated() {
        let mut s = WatchSet::new(10, ReconnectPolicy::ClearOnBreak);
        assert_eq!(
            s.peer_present(key(1), addr(1), REGULAR),
            Ok(Some(WatchAction::Add {
                peer: key(1),
                addr: addr(1),
                flags: REGULAR
            }))
        );
        // Go would call `add` again here; we report nothing.
        assert_eq!(s.peer_present(key(1), addr(1), REGULAR), Ok(None));
        assert_eq!(
            s.peer_present(key(1), addr(2), REGULAR),
            Ok(Some(WatchAction::Update {
                peer: key(1),
                addr: addr(2),
                flags: REGULAR
            }))
        );
        assert_eq!(
            s.peer_gone(key(1), GONE),
            Some(WatchAction::Remove {
                peer: key(1),
                reason: GONE
            })
        );
        // Go would call `remove` for a key it never had; we report nothing.
        assert_eq!(s.peer_gone(key(1), GONE), None);
        assert_eq!(s.peer_gone(key(2), PeerGoneReason::NOT_HERE), None);
        assert!(s.is_empty());
    }

    #[test]
    fn clear_on_break_matches_go() {
        let t0 = Instant::now();
        let mut s = WatchSet::new(10, ReconnectPolicy::ClearOnBreak);
        assert!(s.connected(t0).is_empty());
        for n in 1..=3 {
            s.peer_present(key(n), addr(n.into()), REGULAR)
                .expect("room");
        }
        // Recv failed: everything goes, with MeshConnBroke.
        assert_eq!(
            removed(&s.disconnected()),
            HashSet::from([key(1), key(2), key(3)])
        );
        assert!(s.is_empty());
        assert!(s.disconnected().is_empty(), "nothing left to clear");
        // The new connection's flood re-adds whoever is still there.
        assert!(s.connected(t0).is_empty());
        assert!(matches!(
            s.peer_present(key(2), addr(2), REGULAR),
            Ok(Some(WatchAction::Add { .. }))
        ));
        // A new connection without a reported break (Go: connGen changed) also clears.
        assert_eq!(removed(&s.connected(t0)), HashSet::from([key(2)]));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn resync_removes_only_keys_not_reannounced_in_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(2);
        let mut s = WatchSet::new(10, ReconnectPolicy::Resync { window });
        s.connected(t0);
        assert_eq!(s.poll_timeout(), None, "nothing to resync on first connect");
        for n in 1..=3 {
            s.peer_present(key(n), addr(n.into()), REGULAR)
                .expect("room");
        }
        assert!(s.disconnected().is_empty());
        assert_eq!(s.len(), 3);

        let t1 = t0 + Duration::from_secs(10);
        assert!(s.connected(t1).is_empty());
        assert_eq!(s.stale_len(), 3);
        assert_eq!(s.poll_timeout(), Some(t1 + window));
        // Re-announced unchanged: no action, no longer stale.
        assert_eq!(s.peer_present(key(1), addr(1), REGULAR), Ok(None));
        // Re-announced from elsewhere: an update.
        assert!(matches!(
            s.peer_present(key(2), addr(9), REGULAR),
            Ok(Some(WatchAction::Update { .. }))
        ));
        assert_eq!(s.stale_len(), 1);
        // Too early: nothing happens.
        assert!(
            s.handle_timeout(t1 + window - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(
            removed(&s.handle_timeout(t1 + window)),
            HashSet::from([key(3)])
        );
        assert_eq!(s.poll_timeout(), None);
        assert!(s.contains(&key(1)) && s.contains(&key(2)) && !s.contains(&key(3)));
        assert!(s.handle_timeout(t1 + 2 * window).is_empty());
    }

    #[test]
    fn resync_window_closes_early_when_everything_is_back() {
        let t0 = Instant::now();
        let mut s = WatchSet::new(
            10,
            ReconnectPolicy::Resync {
                window: Duration::from_secs(2),
            },
        );
        s.peer_present(key(1), addr(1), REGULAR).expect("room");
        s.peer_present(key(2), addr(2), REGULAR).expect("room");
        s.connected(t0);
        s.peer_present(key(1), addr(1), REGULAR).expect("held");
        assert!(s.poll_timeout().is_some());
        // A stale key going away also counts as resolved.
        assert!(s.peer_gone(key(2), GONE).is_some());
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.stale_len(), 0);
    }

    #[test]
    fn full_set_refuses_new_keys_only() {
        let mut s = WatchSet::new(2, ReconnectPolicy::ClearOnBreak);
        s.peer_present(key(1), addr(1), REGULAR).expect("room");
        s.peer_present(key(2), addr(2), REGULAR).expect("room");
        assert_eq!(
            s.peer_present(key(3), addr(3), REGULAR),
            Err(WatchSetFull {
                peer: key(3),
                max_peers: 2
            })
        );
        // Held keys can still be refreshed and updated.
        assert_eq!(s.peer_present(key(1), addr(1), REGULAR), Ok(None));
        assert!(
            s.peer_present(key(2), addr(5), REGULAR)
                .expect("held")
                .is_some()
        );
        s.peer_gone(key(1), GONE);
        assert!(
            s.peer_present(key(3), addr(3), REGULAR)
                .expect("room")
                .is_some()
        );
        assert_eq!(s.len(), 2);
    }

    #[derive(Debug, Clone)]
    enum Event {
        Connected,
        Disconnected,
        Present(u8, u16, u8),
        Gone(u8),
        Advance(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            1 => Just(Event::Connected),
            1 => Just(Event::Disconnected),
            6 => (0u8..8, 0u16..2, 0u8..2).prop_map(|(k, p, f)| Event::Present(k, p, f)),
            3 => (0u8..8).prop_map(Event::Gone),
            2 => (0u64..3_000).prop_map(Event::Advance),
        ]
    }

    fn policy() -> impl Strategy<Value = ReconnectPolicy> {
        prop_oneof![
            Just(ReconnectPolicy::ClearOnBreak),
            (0u64..2_000).prop_map(|ms| ReconnectPolicy::Resync {
                window: Duration::from_millis(ms)
            }),
        ]
    }

    proptest! {
        /// Replays the actions into a model forwarding table and checks, after every event:
        /// actions are consistent (no Add for a held key, no Update/Remove for an absent one),
        /// the table equals the set, the bound holds, and the keys held are exactly those
        /// announced and not removed since the last connect, plus (Resync only) stale keys
        /// while a window is open.
        #[test]
        fn actions_track_the_set(
            policy in policy(),
            max_peers in 0usize..6,
            events in proptest::collection::vec(event(), 0..80),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut set = WatchSet::new(max_peers, policy);
            let mut table: HashMap<NodePublicKey, (Option<SocketAddr>, PeerPresentFlags)> =
                HashMap::new();
            // Keys announced (and accepted) since the last connect and not gone since.
            let mut fresh: HashSet<NodePublicKey> = HashSet::new();

            for ev in events {
                let actions: Vec<WatchAction> = match ev {
                    Event::Connected => {
                        fresh.clear();
                        set.connected(now)
                    }
                    Event::Disconnected => {
                        if policy == ReconnectPolicy::ClearOnBreak {
                            fresh.clear();
                        }
                        set.disconnected()
                    }
                    Event::Present(k, port, f) => {
                        let was_held = set.contains(&key(k));
                        match set.peer_present(key(k), addr(port), PeerPresentFlags(f)) {
                            Ok(a) => {
                                fresh.insert(key(k));
                                a.into_iter().collect()
                            }
                            Err(full) => {
                                prop_assert!(!was_held);
                                prop_assert_eq!(set.len(), max_peers);
                                prop_assert_eq!(full.peer, key(k));
                                Vec::new()
                            }
                        }
                    }
                    Event::Gone(k) => {
                        fresh.remove(&key(k));
                        set.peer_gone(key(k), GONE).into_iter().collect()
                    }
                    Event::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        let due = set.poll_timeout().is_some_and(|t| t <= now);
                        let actions = set.handle_timeout(now);
                        if due {
                            prop_assert_eq!(set.stale_len(), 0);
                        } else {
                            prop_assert!(actions.is_empty());
                        }
                        actions
                    }
                };
                for action in actions {
                    match action {
                        WatchAction::Add { peer, addr, flags } => {
                            prop_assert!(table.insert(peer, (addr, flags)).is_none(), "duplicate Add");
                        }
                        WatchAction::Update { peer, addr, flags } => {
                            let old = table.insert(peer, (addr, flags));
                            prop_assert!(old.is_some(), "Update of absent key");
                            prop_assert_ne!(old, Some((addr, flags)), "Update without change");
                        }
                        WatchAction::Remove { peer, .. } => {
                            prop_assert!(table.remove(&peer).is_some(), "Remove of absent key");
                        }
                    }
                }
                prop_assert!(set.len() <= max_peers);
                prop_assert_eq!(set.len(), table.len());
                let held: HashSet<NodePublicKey> =
                    table.keys().copied().filter(|k| set.contains(k)).collect();
                prop_assert_eq!(held.len(), table.len(), "set and table differ");
                // Fresh keys are exactly the held keys that are not stale.
                prop_assert!(fresh.iter().all(|k| table.contains_key(k)));
                prop_assert_eq!(table.len() - fresh.len(), set.stale_len());
                match policy {
                    ReconnectPolicy::ClearOnBreak => prop_assert_eq!(set.stale_len(), 0),
                    ReconnectPolicy::Resync { .. } => prop_assert_eq!(
                        set.poll_timeout().is_some(),
                        set.stale_len() > 0
                    ),
                }
            }
        }
    }
}
