//! The decision cache: one verdict per key for a while, and at most one question in flight
//! per key, as a pure structure driven by `now`.
//!
//! A reconnect storm after a restart brings every client back within seconds; without this,
//! each connection would ask the webhook again. With it, concurrent connections of one key
//! share one question ([`Lookup::InFlight`] hands out the pending token the asker left), and
//! reconnects within the TTL ask nothing. Errors are not cached: a broken webhook is asked
//! again by the next connection (still one question per key at a time).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What the cache knows about a key.
#[derive(Debug)]
pub(crate) enum Lookup<P> {
    /// A verdict that has not expired: `true` admits.
    Cached(bool),
    /// Somebody is asking already; wait on the token they left.
    InFlight(P),
    /// Nobody knows: the caller must ask, and then [`DecisionCache::settle`] the key. The
    /// caller's token was recorded unless the cache was full (`recorded` false), in which
    /// case concurrent callers of the same key ask too.
    Ask {
        /// Whether later callers will wait on this question.
        recorded: bool,
    },
}

#[derive(Debug)]
enum Entry<P> {
    Decided { allow: bool, expires: Instant },
    Pending(P),
}

/// Verdicts by key with positive and negative TTLs, bounded in entries.
#[derive(Debug)]
pub(crate) struct DecisionCache<K, P> {
    entries: HashMap<K, Entry<P>>,
    capacity: usize,
    positive_ttl: Duration,
    negative_ttl: Duration,
    /// Verdicts thrown out early to make room (not expired ones).
    evicted: u64,
}

impl<K: Eq + Hash + Clone, P: Clone> DecisionCache<K, P> {
    /// An empty cache of at most `capacity` keys.
    pub(crate) fn new(capacity: usize, positive_ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            positive_ttl,
            negative_ttl,
            evicted: 0,
        }
    }

    /// Looks `key` up at `now`; on [`Lookup::Ask`] records `pending` so that callers of the
    /// same key wait for this question.
    pub(crate) fn lookup(
        &mut self,
        key: &K,
        now: Instant,
        pending: impl FnOnce() -> P,
    ) -> Lookup<P> {
        match self.entries.get(key) {
            Some(Entry::Decided { allow, expires }) if *expires > now => {
                return Lookup::Cached(*allow);
            }
            Some(Entry::Pending(p)) => return Lookup::InFlight(p.clone()),
            Some(Entry::Decided { .. }) | None => {}
        }
        if !self.entries.contains_key(key) && !self.make_room(now) {
            return Lookup::Ask { recorded: false };
        }
        self.entries.insert(key.clone(), Entry::Pending(pending()));
        Lookup::Ask { recorded: true }
    }

    /// Records the answer to a question about `key`: `Some(allow)` is cached for the positive
    /// or negative TTL, `None` (no answer: timeout, error) forgets the question so the next
    /// caller asks again.
    pub(crate) fn settle(&mut self, key: &K, verdict: Option<bool>, now: Instant) {
        match verdict {
            Some(allow) => {
                let ttl = if allow {
                    self.positive_ttl
                } else {
                    self.negative_ttl
                };
                if !self.entries.contains_key(key) && !self.make_room(now) {
                    return;
                }
                self.entries.insert(
                    key.clone(),
                    Entry::Decided {
                        allow,
                        expires: now + ttl,
                    },
                );
            }
            None => {
                if matches!(self.entries.get(key), Some(Entry::Pending(_))) {
                    self.entries.remove(key);
                }
            }
        }
    }

    /// Keys known (decided or pending).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Unexpired verdicts thrown out to make room so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Makes room for one more entry: drops expired verdicts, then (still full) any one
    /// verdict. Pending questions are never dropped. False if every entry is pending.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.entries.len() < self.capacity {
            return true;
        }
        self.entries
            .retain(|_, e| !matches!(e, Entry::Decided { expires, .. } if *expires <= now));
        if self.entries.len() < self.capacity {
            return true;
        }
        let victim = self
            .entries
            .iter()
            .find(|(_, e)| matches!(e, Entry::Decided { .. }))
            .map(|(k, _)| k.clone());
        match victim {
            Some(k) => {
                self.entries.remove(&k);
                self.evicted += 1;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POS: Duration = Duration::from_secs(60);
    const NEG: Duration = Duration::from_secs(10);

    fn cache(cap: usize) -> DecisionCache<u32, u8> {
        DecisionCache::new(cap, POS, NEG)
    }

    #[test]
    fn one_question_per_key_then_cached_for_its_ttl() {
        let t0 = Instant::now();
        let mut c = cache(16);
        assert!(matches!(
            c.lookup(&1, t0, || 7),
            Lookup::Ask { recorded: true }
        ));
        // Concurrent connections of the same key wait for the first question.
        assert!(matches!(c.lookup(&1, t0, || 8), Lookup::InFlight(7)));
        assert!(matches!(c.lookup(&2, t0, || 9), Lookup::Ask { .. }));
        c.settle(&1, Some(true), t0);
        c.settle(&2, Some(false), t0);
        assert!(matches!(
            c.lookup(&1, t0 + POS - Duration::from_millis(1), || 0),
            Lookup::Cached(true)
        ));
        assert!(matches!(
            c.lookup(&2, t0 + NEG - Duration::from_millis(1), || 0),
            Lookup::Cached(false)
        ));
        // Expired: ask again.
        assert!(matches!(
            c.lookup(&2, t0 + NEG, || 0),
            Lookup::Ask { recorded: true }
        ));
        assert!(matches!(
            c.lookup(&1, t0 + POS, || 0),
            Lookup::Ask { recorded: true }
        ));
    }

    #[test]
    fn errors_are_not_cached() {
        let t0 = Instant::now();
        let mut c = cache(16);
        assert!(matches!(c.lookup(&1, t0, || 1), Lookup::Ask { .. }));
        c.settle(&1, None, t0);
        assert!(matches!(
            c.lookup(&1, t0, || 2),
            Lookup::Ask { recorded: true }
        ));
        // A late error must not erase a verdict that arrived meanwhile.
        c.settle(&1, Some(true), t0);
        c.settle(&1, None, t0);
        assert!(matches!(c.lookup(&1, t0, || 3), Lookup::Cached(true)));
    }

    #[test]
    fn bounded_expired_first_then_any_verdict_never_pending() {
        let t0 = Instant::now();
        let mut c = cache(2);
        assert!(matches!(c.lookup(&1, t0, || 1), Lookup::Ask { .. }));
        c.settle(&1, Some(false), t0);
        assert!(matches!(c.lookup(&2, t0, || 2), Lookup::Ask { .. }));
        // Full: key 1's verdict has expired by then, so it makes room and nothing is evicted.
        assert!(matches!(
            c.lookup(&3, t0 + NEG, || 3),
            Lookup::Ask { recorded: true }
        ));
        assert_eq!(c.len(), 2);
        assert_eq!(c.evicted(), 0);
        // Full of pending questions: the new key asks without being recorded.
        assert!(matches!(
            c.lookup(&4, t0 + NEG, || 4),
            Lookup::Ask { recorded: false }
        ));
        assert!(matches!(
            c.lookup(&4, t0 + NEG, || 4),
            Lookup::Ask { recorded: false }
        ));
        // A verdict for an unrecorded key is dropped rather than evicting a question.
        c.settle(&4, Some(true), t0 + NEG);
        assert_eq!(c.len(), 2);
        // Once a question settles, a fresh verdict may be evicted for a newcomer.
        c.settle(&2, Some(true), t0 + NEG);
        assert!(matches!(
            c.lookup(&5, t0 + NEG, || 5),
            Lookup::Ask { recorded: true }
        ));
        assert_eq!(c.evicted(), 1);
        assert!(c.len() <= 2);
    }
}
