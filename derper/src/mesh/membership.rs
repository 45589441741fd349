//! The set of mesh peers a membership source has found, as a pure state machine.
//!
//! A source (DNS today) hands every answer to [`Membership::update`], which decides what the
//! region's peer set becomes. The rules are the ones an operator expects of a mesh that must not
//! flap:
//!
//! - an answer is deduplicated and sorted, so the same records in another order change nothing;
//! - a failed lookup (NXDOMAIN, timeout, SERVFAIL…) or an answer without a usable address
//!   **keeps the current set**: a DNS blip must not tear a region apart;
//! - unusable addresses (unspecified, multicast, broadcast, port 0) are dropped;
//! - more than `max_peers` addresses are cut to the first `max_peers` in sorted order, so every
//!   relay that sees the same answer keeps the same peers;
//! - our own addresses (`excluding`) are left out silently: finding yourself is normal.
//!
//! Everything unusual is reported as an [`Anomaly`] for the caller to count and log; `repeated`
//! says whether the previous update reported the same one, so logs say it once.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResolveFailure {
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// No answer within the timeout.
    Timeout,
    /// The server answered with an error code (SERVFAIL, REFUSED…), here as its number.
    ServerError {
        /// The DNS response code.
        rcode: u16,
    },
    /// The server could not be reached or the answer could not be used (I/O, malformed).
    Transport,
}

impl fmt::Display for ResolveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NxDomain => f.write_str("NXDOMAIN"),
            Self::Timeout => f.write_str("timeout"),
            Self::ServerError { rcode } => write!(f, "server error (rcode {rcode})"),
            Self::Transport => f.write_str("transport error"),
        }
    }
}

/// Something unusual about one answer, worth a counter and a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Anomaly {
    /// The lookup failed; the set was kept.
    Failed(ResolveFailure),
    /// The answer held no usable address; the set was kept.
    Empty {
        /// Addresses dropped as unusable (unspecified, multicast, broadcast, port 0).
        unusable: usize,
    },
    /// The answer was used, but not all of it.
    Trimmed {
        /// Addresses dropped as unusable.
        unusable: usize,
        /// Usable addresses beyond `max_peers`, cut from the end of the sorted answer.
        truncated: usize,
    },
}

impl Anomaly {
    /// Whether the answer was thrown away and the set kept.
    pub fn kept_set(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::Empty { .. })
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(why) => write!(f, "lookup failed ({why}); keeping the current peers"),
            Self::Empty { unusable: 0 } => f.write_str("empty answer; keeping the current peers"),
            Self::Empty { unusable } => write!(
                f,
                "no usable address ({unusable} unusable dropped); keeping the current peers"
            ),
            Self::Trimmed {
                unusable,
                truncated,
            } => write!(
                f,
                "answer trimmed: {unusable} unusable addresses dropped, {truncated} beyond max_peers cut"
            ),
        }
    }
}

/// What one update did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipChange {
    /// Peers that joined, sorted.
    pub added: Vec<SocketAddr>,
    /// Peers that left, sorted.
    pub removed: Vec<SocketAddr>,
    /// What was unusual about this answer, if anything.
    pub note: Option<Anomaly>,
    /// The previous update reported the same `note` (log it once, count it every time).
    pub repeated: bool,
    /// The previous update had a note and this one has none: answers are clean again.
    pub recovered: bool,
}

impl MembershipChange {
    /// Whether the set changed.
    pub fn is_change(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty()
    }
}

/// The current peer set of one membership source, and the rules that change it.
#[derive(Debug, Clone)]
pub struct Membership {
    max_peers: usize,
    exclude: HashSet<SocketAddr>,
    current: BTreeSet<SocketAddr>,
    /// The note of the previous update, for `repeated` and `recovered`.
    last_note: Option<Anomaly>,
    /// When an answer was last used.
    last_used: Option<Instant>,
}

impl Membership {
    /// An empty set that will hold at most `max_peers` peers.
    pub fn new(max_peers: usize) -> Self {
        Self {
            max_peers,
            exclude: HashSet::new(),
            current: BTreeSet::new(),
            last_note: None,
            last_used: None,
        }
    }

    /// Leaves `addrs` (our own listen addresses) out of every answer, without an anomaly.
    pub fn excluding(mut self, addrs: HashSet<SocketAddr>) -> Self {
        self.exclude = addrs;
        self
    }

    /// The current peers, sorted.
    pub fn current(&self) -> &BTreeSet<SocketAddr> {
        &self.current
    }

    /// When an answer was last used (`None` until the first usable answer). A set kept across
    /// failures is as old as this.
    pub fn last_used(&self) -> Option<Instant> {
        self.last_used
    }

    /// Applies one lookup result.
    pub fn update(
        &mut self,
        answer: Result<Vec<SocketAddr>, ResolveFailure>,
        now: Instant,
    ) -> MembershipChange {
        let (next, note) = match answer {
            Err(why) => (None, Some(Anomaly::Failed(why))),
            Ok(addrs) => self.filter(addrs),
        };
        let mut change = MembershipChange {
            repeated: note.is_some() && note == self.last_note,
            recovered: note.is_none() && self.last_note.is_some(),
            note,
            ..MembershipChange::default()
        };
        self.last_note = note;
        if let Some(next) = next {
            change.added = next.difference(&self.current).copied().collect();
            change.removed = self.current.difference(&next).copied().collect();
            self.current = next;
            self.last_used = Some(now);
        }
        change
    }

    /// The set an answer makes (`None`: keep the current one) and its anomaly.
    fn filter(&self, addrs: Vec<SocketAddr>) -> (Option<BTreeSet<SocketAddr>>, Option<Anomaly>) {
        let mut unusable = 0;
        let mut usable = BTreeSet::new();
        for addr in addrs {
            if is_usable(addr) {
                usable.insert(addr);
            } else {
                unusable += 1;
            }
        }
        if usable.is_empty() {
            return (None, Some(Anomaly::Empty { unusable }));
        }
        // Exclusion comes after the emptiness check: an answer that names only us is a region
        // of one, a real (empty) peer set, not a blip.
        let peers: BTreeSet<SocketAddr> = usable
            .into_iter()
            .filter(|a| !self.exclude.contains(a))
            .collect();
        let truncated = peers.len().saturating_sub(self.max_peers);
        let peers: BTreeSet<SocketAddr> = peers.into_iter().take(self.max_peers).collect();
        let note = (unusable > 0 || truncated > 0).then_some(Anomaly::Trimmed {
            unusable,
            truncated,
        });
        (Some(peers), note)
    }
}

/// Whether a peer could be dialled at `addr`.
fn is_usable(addr: SocketAddr) -> bool {
    let ip_ok = match addr.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip == Ipv4Addr::BROADCAST),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    };
    ip_ok && addr.port() != 0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| addr(s)).collect()
    }

    fn set(m: &Membership) -> Vec<SocketAddr> {
        m.current().iter().copied().collect()
    }

    #[test]
    fn first_answer_adds_everything_sorted_and_deduplicated() {
        let mut m = Membership::new(10);
        let c = m.update(
            Ok(addrs(&[
                "10.0.0.3:443",
                "10.0.0.1:443",
                "10.0.0.3:443",
                "[fd00::1]:443",
            ])),
            Instant::now(),
        );
        assert_eq!(
            c.added,
            addrs(&["10.0.0.1:443", "10.0.0.3:443", "[fd00::1]:443"])
        );
        assert!(c.removed.is_empty());
        assert_eq!(c.note, None);
        assert_eq!(set(&m), c.added);
    }

    #[test]
    fn same_records_in_another_order_change_nothing() {
        let mut m = Membership::new(10);
        let now = Instant::now();
        m.update(Ok(addrs(&["10.0.0.1:443", "10.0.0.2:443"])), now);
        let c = m.update(Ok(addrs(&["10.0.0.2:443", "10.0.0.1:443"])), now);
        assert!(!c.is_change());
        assert_eq!(c.note, None);
    }

    #[test]
    fn a_peer_joins_and_another_leaves() {
        let mut m = Membership::new(10);
        let now = Instant::now();
        m.update(Ok(addrs(&["10.0.0.1:443", "10.0.0.2:443"])), now);
        let c = m.update(Ok(addrs(&["10.0.0.2:443", "10.0.0.3:443"])), now);
        assert_eq!(c.added, addrs(&["10.0.0.3:443"]));
        assert_eq!(c.removed, addrs(&["10.0.0.1:443"]));
        assert_eq!(set(&m), addrs(&["10.0.0.2:443", "10.0.0.3:443"]));
    }

    #[test]
    fn failures_and_empty_answers_keep_the_set() {
        let mut m = Membership::new(10);
        let t0 = Instant::now();
        m.update(Ok(addrs(&["10.0.0.1:443", "10.0.0.2:443"])), t0);
        let before = set(&m);
        for (answer, note) in [
            (
                Err(ResolveFailure::NxDomain),
                Anomaly::Failed(ResolveFailure::NxDomain),
            ),
            (
                Err(ResolveFailure::Timeout),
                Anomaly::Failed(ResolveFailure::Timeout),
            ),
            (
                Err(ResolveFailure::ServerError { rcode: 2 }),
                Anomaly::Failed(ResolveFailure::ServerError { rcode: 2 }),
            ),
            (Ok(vec![]), Anomaly::Empty { unusable: 0 }),
            (
                Ok(addrs(&["0.0.0.0:443", "224.0.0.1:443", "10.0.0.9:0"])),
                Anomaly::Empty { unusable: 3 },
            ),
        ] {
            let c = m.update(answer, t0 + std::time::Duration::from_secs(1));
            assert!(!c.is_change(), "{note}");
            assert_eq!(c.note, Some(note));
            assert!(note.kept_set());
            assert_eq!(set(&m), before);
        }
        assert_eq!(
            m.last_used(),
            Some(t0),
            "a kept set is as old as its answer"
        );
    }

    #[test]
    fn the_same_anomaly_is_marked_repeated_and_recovery_is_marked() {
        let mut m = Membership::new(10);
        let now = Instant::now();
        let first = m.update(Err(ResolveFailure::Timeout), now);
        assert!(!first.repeated);
        let again = m.update(Err(ResolveFailure::Timeout), now);
        assert!(again.repeated);
        let other = m.update(Err(ResolveFailure::NxDomain), now);
        assert!(!other.repeated, "a different anomaly is new");
        let ok = m.update(Ok(addrs(&["10.0.0.1:443"])), now);
        assert!(ok.recovered && !ok.repeated);
        let ok = m.update(Ok(addrs(&["10.0.0.1:443"])), now);
        assert!(!ok.recovered);
    }

    #[test]
    fn unusable_addresses_are_dropped_and_reported() {
        let mut m = Membership::new(10);
        let c = m.update(
            Ok(addrs(&[
                "10.0.0.1:443",
                "0.0.0.0:443",
                "[::]:443",
                "255.255.255.255:443",
                "239.1.2.3:443",
                "[ff02::1]:443",
                "10.0.0.2:0",
            ])),
            Instant::now(),
        );
        assert_eq!(c.added, addrs(&["10.0.0.1:443"]));
        assert_eq!(
            c.note,
            Some(Anomaly::Trimmed {
                unusable: 6,
                truncated: 0
            })
        );
    }

    #[test]
    fn a_huge_answer_keeps_the_first_max_peers_in_sorted_order() {
        let mut m = Membership::new(3);
        let mut answer: Vec<SocketAddr> = (1..=200u8)
            .rev()
            .map(|i| SocketAddr::from(([10, 0, 0, i], 443)))
            .collect();
        answer.push(addr("10.0.0.1:443"));
        let c = m.update(Ok(answer), Instant::now());
        assert_eq!(
            c.added,
            addrs(&["10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"])
        );
        assert_eq!(
            c.note,
            Some(Anomaly::Trimmed {
                unusable: 0,
                truncated: 197
            })
        );
    }

    #[test]
    fn own_addresses_are_left_out_silently_and_alone_is_a_real_answer() {
        let me = addr("10.0.0.1:443");
        let mut m = Membership::new(10).excluding(HashSet::from([me]));
        let now = Instant::now();
        let c = m.update(Ok(addrs(&["10.0.0.1:443", "10.0.0.2:443"])), now);
        assert_eq!(c.added, addrs(&["10.0.0.2:443"]));
        assert_eq!(c.note, None);
        // Only we are left in the region: the peer really went, so the set empties.
        let c = m.update(Ok(vec![me]), now);
        assert_eq!(c.removed, addrs(&["10.0.0.2:443"]));
        assert_eq!(c.note, None);
        assert!(m.current().is_empty());
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        // A small space so answers overlap, with unusable addresses mixed in.
        (
            prop_oneof![
                (0u8..16).prop_map(|i| IpAddr::from([10, 0, 0, i])),
                Just(IpAddr::from([0, 0, 0, 0])),
                Just(IpAddr::from([224, 0, 0, 1])),
                (0u16..4).prop_map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i])),
            ],
            prop_oneof![Just(0u16), Just(443), Just(8443)],
        )
            .prop_map(|(ip, port)| SocketAddr::new(ip, port))
    }

    fn any_answer() -> impl Strategy<Value = Result<Vec<SocketAddr>, ResolveFailure>> {
        prop_oneof![
            3 => prop::collection::vec(any_addr(), 0..40).prop_map(Ok),
            1 => prop_oneof![
                Just(ResolveFailure::NxDomain),
                Just(ResolveFailure::Timeout),
                Just(ResolveFailure::ServerError { rcode: 2 }),
                Just(ResolveFailure::Transport),
            ]
            .prop_map(Err),
        ]
    }

    proptest! {
        #[test]
        fn the_set_is_bounded_and_failures_never_change_it(
            max_peers in 1usize..8,
            answers in prop::collection::vec(any_answer(), 1..30),
        ) {
            let mut m = Membership::new(max_peers);
            let now = Instant::now();
            for answer in answers {
                let before = m.current().clone();
                let failed = answer.is_err();
                let c = m.update(answer, now);
                prop_assert!(m.current().len() <= max_peers);
                prop_assert!(m.current().iter().all(|a| is_usable(*a)));
                if failed || c.note.is_some_and(|n| n.kept_set()) {
                    prop_assert_eq!(m.current(), &before);
                    prop_assert!(!c.is_change());
                }
                // added/removed describe exactly the difference.
                let mut replayed = before;
                for a in &c.removed {
                    prop_assert!(replayed.remove(a));
                }
                for a in &c.added {
                    prop_assert!(replayed.insert(*a));
                }
                prop_assert_eq!(&replayed, m.current());
            }
        }
    }
}
