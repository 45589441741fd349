//! Counters and a mergeable latency histogram.
//!
//! Everything here is plain data owned by one task and merged at the end, so the hot path takes
//! no locks; live progress uses the few atomics in [`Progress`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two: 16 gives at most 6.25 % relative error per recorded value.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;

/// A log-linear histogram of microsecond values that merges exactly across shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Number of recorded values.
    pub count: u64,
    /// Sum of recorded values (for the mean).
    pub sum: u64,
    /// Smallest recorded value.
    pub min: u64,
    /// Largest recorded value.
    pub max: u64,
    /// Bucket index → count; see [`Histogram::bucket_bounds`].
    pub buckets: BTreeMap<u32, u64>,
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        *self.buckets.entry(bucket_of(v)).or_default() += 1;
    }

    /// Adds all of `other`'s values.
    pub fn merge(&mut self, other: &Self) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        for (b, c) in &other.buckets {
            *self.buckets.entry(*b).or_default() += c;
        }
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket holding it, clamped to
    /// the observed maximum, so a reported p99 is never optimistic.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in &self.buckets {
            seen += c;
            if seen >= rank {
                return Self::bucket_bounds(*b).1.min(self.max).max(self.min);
            }
        }
        self.max
    }

    /// Mean of recorded values.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Inclusive value range of bucket `b`.
    pub fn bucket_bounds(b: u32) -> (u64, u64) {
        let b = u64::from(b);
        if b < SUB {
            return (b, b);
        }
        let shift = b / SUB - 1;
        let low = (SUB + b % SUB) << shift;
        (low, low + (1 << shift) - 1)
    }
}

fn bucket_of(v: u64) -> u32 {
    if v < SUB {
        return v as u32;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    // (shift + 1) groups of SUB below, then the top SUB_BITS below the leading one.
    ((u64::from(shift) + 1) * SUB + ((v >> shift) & (SUB - 1))) as u32
}

/// Width of the duplicate-detection window, in sequence numbers.
///
/// A packet arriving more than this far behind the newest is counted as reordered but cannot be
/// checked for duplication; at 100 k packets/s per direction that is 40 ms of reordering.
const WINDOW: u64 = 4_096;
const WORDS: usize = (WINDOW / 64) as usize;

/// Per-direction receive accounting: what arrived, in what order, and how late.
#[derive(Debug, Clone)]
pub struct RecvTracker {
    /// Highest sequence number seen plus one (0: nothing yet).
    next: u64,
    /// Bit `s % WINDOW` is set when `s` (within `WINDOW` of the newest) arrived.
    seen: [u64; WORDS],
    /// Distinct data packets received.
    pub unique: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Packets received more than once.
    pub duplicated: u64,
}

impl Default for RecvTracker {
    fn default() -> Self {
        Self {
            next: 0,
            seen: [0; WORDS],
            unique: 0,
            reordered: 0,
            duplicated: 0,
        }
    }
}

impl RecvTracker {
    /// Highest sequence number received (0: none yet; data sequence numbers start at 1).
    pub fn highest(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Accounts for data packet `seq`.
    pub fn on_packet(&mut self, seq: u64) {
        if seq >= self.next {
            // Clear the slots of sequence numbers skipped over: they are now the window's past.
            let skipped = (seq - self.next).min(WINDOW);
            for s in self.next..self.next + skipped {
                self.clear(s);
            }
            self.next = seq + 1;
            self.set(seq);
            self.unique += 1;
        } else if self.next - seq > WINDOW {
            self.reordered += 1;
            self.unique += 1;
        } else if self.is_set(seq) {
            self.duplicated += 1;
        } else {
            self.set(seq);
            self.reordered += 1;
            self.unique += 1;
        }
    }

    fn slot(s: u64) -> (usize, u64) {
        let i = s % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }
    fn set(&mut self, s: u64) {
        let (w, m) = Self::slot(s);
        self.seen[w] |= m;
    }
    fn clear(&mut self, s: u64) {
        let (w, m) = Self::slot(s);
        self.seen[w] &= !m;
    }
    fn is_set(&self, s: u64) -> bool {
        let (w, m) = Self::slot(s);
        self.seen[w] & m != 0
    }
}

/// Live counters shared by all peers of a run, read by the progress printer.
#[derive(Debug, Default)]
pub struct Progress {
    /// Peers with an established DERP connection.
    pub connected: AtomicU64,
    /// Data packets sent.
    pub sent: AtomicU64,
    /// Data packets received that passed their checks.
    pub received: AtomicU64,
    /// Peer errors so far.
    pub errors: AtomicU64,
}

impl Progress {
    /// Adds `n` to a counter; relaxed because the printer only needs eventual values.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_tightly() {
        for v in (0..5_000u64).chain([1 << 20, (1 << 33) + 12_345, u64::MAX >> 2]) {
            let (lo, hi) = Histogram::bucket_bounds(bucket_of(v));
            assert!(lo <= v && v <= hi, "{v} not in [{lo}, {hi}]");
            assert!((hi - lo) as f64 <= v as f64 / 15.0 + 1.0);
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 1..=1_000 {
            if v % 2 == 0 { a.record(v) } else { b.record(v) }
        }
        a.merge(&b);
        assert_eq!(a.count, 1_000);
        assert_eq!((a.min, a.max), (1, 1_000));
        let p50 = a.quantile(0.5);
        assert!((500..=535).contains(&p50), "{p50}");
        assert_eq!(a.quantile(1.0), 1_000);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }

    #[test]
    fn tracker_counts_reorder_and_duplicates() {
        let mut t = RecvTracker::default();
        for s in [0, 1, 3, 2, 2, 5, 0] {
            t.on_packet(s);
        }
        assert_eq!(t.unique, 5);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.duplicated, 2);
        // Far jump clears the window, so an old sequence number is reorder, not duplicate.
        t.on_packet(100_000);
        t.on_packet(99_999);
        assert_eq!((t.unique, t.reordered, t.duplicated), (7, 2, 2));
    }
}
