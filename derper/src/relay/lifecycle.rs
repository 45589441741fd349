//! The relay's lifecycle: serving → draining → stopped, as a pure state machine.
//!
//! Draining refuses new connections while existing ones are told to reconnect elsewhere
//! (Restarting) and given until a deadline; readiness turns false as soon as draining
//! starts, so a load balancer stops sending clients first.

use std::time::{Duration, Instant};

/// Where the relay is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Accepting and relaying.
    Serving,
    /// Refusing new connections; existing ones close by `deadline`.
    Draining {
        /// When draining began.
        since: Instant,
        /// When the remaining connections are closed.
        deadline: Instant,
    },
    /// Every connection is closed or being closed.
    Stopped,
}

/// The lifecycle state machine, driven by explicit `now`.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    phase: Phase,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: Phase::Serving,
        }
    }
}

impl Lifecycle {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Starts draining at `now` for `grace`. Returns false if already draining or stopped
    /// (the first deadline stands).
    pub fn begin_drain(&mut self, now: Instant, grace: Duration) -> bool {
        if self.phase != Phase::Serving {
            return false;
        }
        self.phase = Phase::Draining {
            since: now,
            deadline: now + grace,
        };
        true
    }

    /// Marks every connection as closing.
    pub fn stop(&mut self) {
        self.phase = Phase::Stopped;
    }

    /// Whether a new connection may be accepted.
    pub fn accepts_new(&self) -> bool {
        self.phase == Phase::Serving
    }

    /// Whether the drain deadline has passed at `now` (always true once stopped).
    pub fn deadline_passed(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Serving => false,
            Phase::Draining { deadline, .. } => now >= deadline,
            Phase::Stopped => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_draining_stopped() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        assert!(l.accepts_new());
        assert!(!l.deadline_passed(t0));
        assert!(l.begin_drain(t0, Duration::from_secs(30)));
        assert!(!l.accepts_new());
        assert!(
            !l.begin_drain(t0, Duration::from_secs(1)),
            "first deadline stands"
        );
        assert!(!l.deadline_passed(t0 + Duration::from_secs(29)));
        assert!(l.deadline_passed(t0 + Duration::from_secs(30)));
        l.stop();
        assert_eq!(l.phase(), Phase::Stopped);
        assert!(!l.begin_drain(t0, Duration::from_secs(1)));
        assert!(!l.accepts_new());
    }
}
