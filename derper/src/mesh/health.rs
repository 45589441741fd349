//! Which of the region's relays this node cannot reach, as the Health problem its clients see
//! (a client here cannot reach peers homed on those relays through this one).

use std::collections::BTreeSet;

/// Peers whose link has failed to connect [`UNREACHABLE_AFTER`] times in a row.
#[derive(Debug, Default)]
pub(crate) struct Unreachable {
    peers: BTreeSet<String>,
}

/// Consecutive failed connects before a peer counts as unreachable: a restarting peer (one
/// or two failures at the reconnect backoff's pace) does not alarm every client.
pub(crate) const UNREACHABLE_AFTER: u32 = 5;

impl Unreachable {
    /// Records that `peer` is unreachable (`true`) or reachable again / gone (`false`).
    /// Returns the new Health text when it changed (`Some(None)`: the problem cleared).
    pub(crate) fn set(&mut self, peer: &str, unreachable: bool) -> Option<Option<String>> {
        let changed = if unreachable {
            self.peers.insert(peer.to_string())
        } else {
            self.peers.remove(peer)
        };
        changed.then(|| self.text())
    }

    /// The peers currently unreachable.
    pub(crate) fn names(&self) -> BTreeSet<String> {
        self.peers.clone()
    }

    fn text(&self) -> Option<String> {
        if self.peers.is_empty() {
            return None;
        }
        let names: Vec<&str> = self.peers.iter().map(String::as_str).collect();
        Some(format!(
            "this relay cannot reach {} of its region's relays ({}); peers connected there may be unreachable through it",
            names.len(),
            names.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_follows_the_set() {
        let mut u = Unreachable::default();
        assert_eq!(u.set("b", false), None, "nothing to clear");
        let t = u.set("b", true).unwrap().unwrap();
        assert!(t.contains("cannot reach 1") && t.contains("(b)"), "{t}");
        assert_eq!(u.set("b", true), None, "unchanged");
        let t = u.set("a", true).unwrap().unwrap();
        assert!(t.contains("cannot reach 2") && t.contains("(a, b)"), "{t}");
        assert!(u.set("a", false).unwrap().is_some());
        assert_eq!(u.set("b", false), Some(None), "cleared");
    }
}
