//! Rate limits for log lines that peers can trigger at will (bad handshakes, protocol errors),
//! so a flood of bad input cannot flood the log. Every event is still counted in metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Log lines allowed per second per limiter before lines are suppressed.
const LINES_PER_SECOND: u64 = 20;

/// A per-second budget of log lines.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    /// The second (Unix time) the current budget belongs to.
    second: AtomicU64,
    /// Lines logged in that second.
    used: AtomicU64,
    /// Lines suppressed since the last line that was let through.
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) const fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns `Some(n)` if a line may be logged now, where `n` lines were suppressed before
    /// it; `None` if this line should be dropped.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Lines about connections that failed or broke the protocol.
pub(crate) static BAD_CONNECTIONS: LogLimiter = LogLimiter::new();

/// Lines about mesh watchers closed because they fell too far behind (clients churning faster
/// than a watcher reads can trigger these).
pub(crate) static SLOW_WATCHERS: LogLimiter = LogLimiter::new();

/// Lines about admission backends giving no answer (a hanging webhook under a reconnect storm
/// would otherwise log once per connection) and about refused clients.
pub(crate) static ADMISSION: LogLimiter = LogLimiter::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_then_suppression_count() {
        let l = LogLimiter::new();
        let allowed = (0..100).filter(|_| l.allow().is_some()).count();
        // A second boundary during the loop can grant one more budget.
        assert!((20..=40).contains(&allowed), "{allowed}");
    }
}
