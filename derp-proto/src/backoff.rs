//! Reconnect backoff as a pure state machine: the caller supplies `now` and the randomness.
//!
//! Tailscale's mesh loop (`derphttp.RunWatchConnectionLoop`) waits a fixed 5 s after every
//! failed connect or broken connection. [`BackoffConfig::go_mesh`] reproduces that exactly; the
//! default ([`BackoffConfig::new`]) grows instead, so that a fleet whose peer is down for a while
//! does not keep hammering it, and adds jitter, so that every relay in a region does not redial a
//! restarted peer in the same instant.
//!
//! The policy:
//!
//! * The *ceiling* of attempt `n` (0-based, counted since the last reset) is
//!   `min(max, min_delay · multiplier^n)`.
//! * [`Jitter::None`] waits exactly the ceiling; [`Jitter::Full`] waits a uniform time in
//!   `[min_delay, ceiling]`; [`Jitter::Decorrelated`] waits a uniform time in
//!   `[min_delay, min(max, 3 · previous delay)]` (the "decorrelated jitter" of the AWS
//!   architecture blog), which spreads clients out even when they all started together.
//! * No delay is ever below `min_delay` or above `max_delay`.
//! * Success resets the sequence, but only once the connection proved stable: call
//!   [`Backoff::connected`] when a connection comes up; the next [`Backoff::next_delay`] starts
//!   over from attempt 0 only if that connection lasted at least `stable_after`. A peer that
//!   accepts and immediately drops us therefore still backs off. [`Backoff::reset`] starts over
//!   unconditionally.

use std::time::{Duration, Instant};

use rand_core::RngCore;

/// How random a [`Backoff`] delay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Always the ceiling: deterministic, as Go's fixed retry interval.
    None,
    /// Uniform in `[min_delay, ceiling]`.
    #[default]
    Full,
    /// Uniform in `[min_delay, min(max_delay, 3 · previous delay)]`.
    Decorrelated,
}

/// The knobs of a [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// The shortest wait, and the ceiling of the first attempt.
    pub min_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Growth of the ceiling per failed attempt; 0 counts as 1 (ignored by
    /// [`Jitter::Decorrelated`]).
    pub multiplier: u32,
    /// How the delay is randomised below the ceiling.
    pub jitter: Jitter,
    /// How long a connection must stay up before its end no longer counts as a failure.
    pub stable_after: Duration,
}

impl BackoffConfig {
    /// 100 ms doubling to 30 s with full jitter; a connection that lasted 10 s resets it.
    ///
    /// 100 ms keeps a relay restart (the common case) almost invisible; 30 s bounds both the
    /// load on a peer that is down and the time to notice it came back. 10 s is the Go client's
    /// connect timeout: a link that outlived a whole connect attempt was not a flap.
    pub fn new() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2,
            jitter: Jitter::Full,
            stable_after: Duration::from_secs(10),
        }
    }

    /// Exactly Go's mesh loop: a fixed 5 s (`retryInterval` in `derphttp/mesh_client.go`).
    pub fn go_mesh() -> Self {
        Self {
            min_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(5),
            multiplier: 1,
            jitter: Jitter::None,
            stable_after: Duration::ZERO,
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Delays between reconnect attempts; see the [module docs](self) for the policy.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    /// Failed attempts since the last reset.
    attempt: u32,
    /// The last delay returned, for [`Jitter::Decorrelated`].
    prev: Duration,
    /// When the current connection came up, if one is up.
    connected_at: Option<Instant>,
}

impl Backoff {
    /// A backoff at attempt 0. A `max_delay` below `min_delay` is raised to `min_delay`.
    pub fn new(mut config: BackoffConfig) -> Self {
        config.max_delay = config.max_delay.max(config.min_delay);
        Self {
            config,
            attempt: 0,
            prev: config.min_delay,
            connected_at: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Records that a connection came up at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// Starts over from attempt 0.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.prev = self.config.min_delay;
        self.connected_at = None;
    }

    /// How long to wait before the next attempt, after a failure (or a connection ending) at
    /// `now`. Counts the failure.
    pub fn next_delay(&mut self, now: Instant, rng: &mut impl RngCore) -> Duration {
        if let Some(up) = self.connected_at.take()
            && now.saturating_duration_since(up) >= self.config.stable_after
        {
            self.reset();
        }
        let BackoffConfig {
            min_delay: min,
            max_delay: max,
            ..
        } = self.config;
        let delay = match self.config.jitter {
            Jitter::None => self.ceiling(),
            Jitter::Full => uniform(rng, min, self.ceiling()),
            Jitter::Decorrelated => uniform(rng, min, self.prev.saturating_mul(3).min(max)),
        };
        self.attempt = self.attempt.saturating_add(1);
        self.prev = delay;
        delay
    }

    /// `min(max_delay, min_delay · multiplier^attempt)`, without overflow; a multiplier below 1
    /// counts as 1, so the ceiling never shrinks below `min_delay`.
    fn ceiling(&self) -> Duration {
        let BackoffConfig {
            min_delay: min,
            max_delay: max,
            multiplier,
            ..
        } = self.config;
        let mut ceiling = min;
        for _ in 0..self.attempt {
            if ceiling >= max {
                break;
            }
            ceiling = ceiling.saturating_mul(multiplier.max(1));
        }
        ceiling.min(max)
    }
}

/// A uniform duration in `[low, high]` (nanosecond resolution); `low` if `high <= low`.
fn uniform(rng: &mut impl RngCore, low: Duration, high: Duration) -> Duration {
    let Some(span) = high.checked_sub(low) else {
        return low;
    };
    // Durations past u64 nanoseconds (584 years) are not reconnect delays; clamp.
    let span = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
    // Multiply-shift maps a 64-bit sample onto [0, span] without modulo bias worth noticing.
    let offset = (u128::from(rng.next_u64()) * (u128::from(span) + 1)) >> 64;
    low + Duration::from_nanos(u64::try_from(offset).unwrap_or(span))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};

    use super::*;

    /// An "RNG" returning the same 64-bit value forever: 0 is the bottom of every range,
    /// `u64::MAX` the top.
    struct Fixed(u64);

    impl RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            (self.0 >> 32) as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            dest.fill(0);
            Ok(())
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(jitter: Jitter) -> BackoffConfig {
        BackoffConfig {
            min_delay: ms(100),
            max_delay: ms(1_000),
            multiplier: 2,
            jitter,
            stable_after: ms(5_000),
        }
    }

    #[test]
    fn exponential_without_jitter_caps_at_max() {
        let now = Instant::now();
        let mut b = Backoff::new(config(Jitter::None));
        let got: Vec<_> = (0..7).map(|_| b.next_delay(now, &mut Fixed(0))).collect();
        assert_eq!(
            got,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1_000),
                ms(1_000),
                ms(1_000)
            ]
        );
        assert_eq!(b.attempts(), 7);
        b.reset();
        assert_eq!(b.next_delay(now, &mut Fixed(0)), ms(100));
    }

    #[test]
    fn full_jitter_spans_min_to_ceiling() {
        let now = Instant::now();
        let mut low = Backoff::new(config(Jitter::Full));
        let mut high = Backoff::new(config(Jitter::Full));
        for ceiling in [100, 200, 400, 800, 1_000, 1_000] {
            assert_eq!(low.next_delay(now, &mut Fixed(0)), ms(100));
            assert_eq!(high.next_delay(now, &mut Fixed(u64::MAX)), ms(ceiling));
        }
        // The middle of the sample range lands in the middle of [min, ceiling].
        let mut mid = Backoff::new(config(Jitter::Full));
        mid.next_delay(now, &mut Fixed(0));
        let d = mid.next_delay(now, &mut Fixed(1 << 63));
        assert!((ms(149)..=ms(151)).contains(&d), "{d:?}");
    }

    #[test]
    fn decorrelated_jitter_grows_from_previous_delay() {
        let now = Instant::now();
        let mut b = Backoff::new(config(Jitter::Decorrelated));
        let top: Vec<_> = (0..4)
            .map(|_| b.next_delay(now, &mut Fixed(u64::MAX)))
            .collect();
        assert_eq!(top, [ms(300), ms(900), ms(1_000), ms(1_000)]);
        // Drawing the minimum pulls the next range back down.
        assert_eq!(b.next_delay(now, &mut Fixed(0)), ms(100));
        assert_eq!(b.next_delay(now, &mut Fixed(u64::MAX)), ms(300));
    }

    #[test]
    fn only_a_stable_connection_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(config(Jitter::None));
        for _ in 0..3 {
            b.next_delay(t0, &mut Fixed(0));
        }
        // Up for 1 s, then dropped: a flap, so the sequence continues.
        b.connected(t0);
        assert_eq!(b.next_delay(t0 + ms(1_000), &mut Fixed(0)), ms(800));
        // Up for 5 s: stable, so it starts over.
        b.connected(t0 + ms(2_000));
        assert_eq!(b.next_delay(t0 + ms(7_000), &mut Fixed(0)), ms(100));
        assert_eq!(b.attempts(), 1);
        // A `connected` is consumed by the failure that follows it.
        assert_eq!(b.next_delay(t0 + ms(60_000), &mut Fixed(0)), ms(200));
    }

    #[test]
    fn go_mesh_is_a_fixed_five_seconds() {
        let now = Instant::now();
        let mut b = Backoff::new(BackoffConfig::go_mesh());
        for _ in 0..10 {
            assert_eq!(
                b.next_delay(now, &mut Fixed(u64::MAX)),
                Duration::from_secs(5)
            );
        }
    }

    #[test]
    fn degenerate_configs_do_not_panic() {
        let now = Instant::now();
        let mut cfg = config(Jitter::Full);
        cfg.max_delay = ms(10); // below min: raised to min
        cfg.multiplier = 0;
        let mut b = Backoff::new(cfg);
        assert_eq!(b.next_delay(now, &mut Fixed(u64::MAX)), ms(100));
        cfg.min_delay = Duration::MAX;
        cfg.max_delay = Duration::MAX;
        cfg.multiplier = u32::MAX;
        let mut b = Backoff::new(cfg);
        for _ in 0..5 {
            assert_eq!(b.next_delay(now, &mut Fixed(u64::MAX)), Duration::MAX);
        }
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(
            min_ms in 0u64..10_000,
            extra_ms in 0u64..100_000,
            multiplier in 0u32..10,
            jitter in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Decorrelated)],
            samples in proptest::collection::vec(any::<u64>(), 1..50),
        ) {
            let cfg = BackoffConfig {
                min_delay: ms(min_ms),
                max_delay: ms(min_ms + extra_ms),
                multiplier,
                jitter,
                stable_after: ms(1),
            };
            let now = Instant::now();
            let mut b = Backoff::new(cfg);
            let mut prev = cfg.min_delay;
            for (i, s) in samples.into_iter().enumerate() {
                let d = b.next_delay(now, &mut Fixed(s));
                prop_assert!(d >= cfg.min_delay && d <= cfg.max_delay, "{d:?} outside bounds");
                if jitter == Jitter::Decorrelated {
                    prop_assert!(d <= (prev * 3).min(cfg.max_delay).max(cfg.min_delay));
                }
                prop_assert_eq!(b.attempts() as usize, i + 1);
                prev = d;
            }
        }
    }
}
