//! Token buckets driven by an explicit `now`, so limits are tested without a clock.
//!
//! Used for PeerGone(NotHere) replies, per-client byte limits (`--rate-config`) and the accept
//! rate limit (`--accept-connection-limit`).

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate_per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket as of `now`.
    pub(crate) fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Self {
        Self::with_burst(rate_per_sec, f64::from(burst), now)
    }

    /// A full bucket of `burst` tokens (at least one) refilled at `rate_per_sec`, as of `now`.
    pub(crate) fn with_burst(rate_per_sec: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            tokens: burst,
            burst,
            rate_per_sec: rate_per_sec.max(0.0),
            last: now,
        }
    }

    /// Takes `n` tokens if there are that many at `now`.
    pub(crate) fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes one token if there is one at `now`.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        self.try_take(1.0, now)
    }

    /// Takes `n` tokens at `now`, going into debt if there are fewer, and returns how long
    /// the caller must wait before acting (zero when the tokens were there). Like Go's
    /// `rate.Limiter.ReserveN`: a reader that waits this long before reading on keeps to the
    /// rate however large its frames.
    pub(crate) fn reserve(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 || self.rate_per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-self.tokens / self.rate_per_sec)
    }

    fn refill(&mut self, now: Instant) {
        // A `now` earlier than the last one (callers on several threads) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        self.last = self.last.max(now);
    }
}

/// PeerGone(NotHere) replies per sender: one per second, burst of three (Go derper).
pub(crate) fn not_here_limiter(now: Instant) -> TokenBucket {
    TokenBucket::new(1.0, 3, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_paces_bytes_to_the_rate() {
        let t0 = Instant::now();
        // 1 000 bytes/s, 2 000 bytes of burst.
        let mut b = TokenBucket::new(1000.0, 2000, t0);
        assert_eq!(b.reserve(1500.0, t0), Duration::ZERO);
        assert_eq!(b.reserve(500.0, t0), Duration::ZERO);
        // In debt by 1 000 bytes: one second to wait.
        assert_eq!(b.reserve(1000.0, t0), Duration::from_secs(1));
        // After waiting it, the next 500 bytes wait half a second more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.reserve(500.0, t1), Duration::from_millis(500));
        // Idle for long: back to a full burst, never more.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(b.reserve(2000.0, t2), Duration::ZERO);
        assert!(b.reserve(1.0, t2) > Duration::ZERO);
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = not_here_limiter(t0);
        assert!(b.allow(t0));
        assert!(b.allow(t0));
        assert!(b.allow(t0));
        assert!(!b.allow(t0));
        assert!(!b.allow(t0 + Duration::from_millis(999)));
        assert!(b.allow(t0 + Duration::from_millis(1000)));
        assert!(!b.allow(t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn never_saves_more_than_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 2, t0);
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_take(2.0, later));
        assert!(!b.allow(later));
        assert!(b.allow(later + Duration::from_millis(100)));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1.0, 1, t0);
        assert!(b.allow(t0));
        assert!(!b.allow(t0 - Duration::from_secs(5)));
        assert!(!b.allow(t0 + Duration::from_millis(500)));
        assert!(b.allow(t0 + Duration::from_secs(1)));
    }
}
