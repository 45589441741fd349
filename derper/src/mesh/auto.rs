//! Transport choice of an `auto://` link: QUIC first; TCP/TLS when QUIC does not come up
//! (UDP blocked looks like silence, so the attempt is bounded by `mesh.quic_fallback_after`);
//! QUIC again every `mesh.quic_retry_interval` while on TCP. Pure: driven by `now`.

use std::time::{Duration, Instant};

use super::target::LinkTransport;

/// Where an `auto://` link stands.
#[derive(Debug, Clone)]
pub(crate) struct AutoTransport {
    retry_interval: Duration,
    /// When QUIC last failed; `None` while QUIC is believed to work.
    quic_failed_at: Option<Instant>,
}

impl AutoTransport {
    pub(crate) fn new(retry_interval: Duration) -> Self {
        Self {
            retry_interval,
            quic_failed_at: None,
        }
    }

    /// The transport to dial at `now`.
    pub(crate) fn choose(&self, now: Instant) -> LinkTransport {
        match self.probe_at() {
            Some(at) if now < at => LinkTransport::Tcp,
            _ => LinkTransport::Quic,
        }
    }

    /// A QUIC attempt failed at `now`: use TCP until the retry interval has passed.
    pub(crate) fn quic_failed(&mut self, now: Instant) {
        self.quic_failed_at = Some(now);
    }

    /// QUIC came up: prefer it again.
    pub(crate) fn quic_up(&mut self) {
        self.quic_failed_at = None;
    }

    /// While the link runs over TCP: when to try QUIC again (`None`: QUIC is not known to
    /// have failed).
    pub(crate) fn probe_at(&self) -> Option<Instant> {
        self.quic_failed_at.map(|t| t + self.retry_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_first_tcp_after_a_failure_quic_again_after_the_interval() {
        let t0 = Instant::now();
        let retry = Duration::from_secs(60);
        let mut a = AutoTransport::new(retry);
        assert_eq!(a.choose(t0), LinkTransport::Quic);
        assert_eq!(a.probe_at(), None);

        a.quic_failed(t0);
        assert_eq!(a.choose(t0), LinkTransport::Tcp);
        assert_eq!(
            a.choose(t0 + retry - Duration::from_millis(1)),
            LinkTransport::Tcp
        );
        assert_eq!(a.probe_at(), Some(t0 + retry));
        assert_eq!(a.choose(t0 + retry), LinkTransport::Quic);

        // A failed probe pushes the next one a full interval out.
        a.quic_failed(t0 + retry);
        assert_eq!(
            a.choose(t0 + retry + Duration::from_secs(1)),
            LinkTransport::Tcp
        );
        assert_eq!(a.probe_at(), Some(t0 + 2 * retry));

        a.quic_up();
        assert_eq!(a.choose(t0 + retry), LinkTransport::Quic);
        assert_eq!(a.probe_at(), None);
    }
}
