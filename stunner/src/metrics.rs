//! STUN metrics, named after Go's `net/stunserver` expvars (`stun.counter_requests{disposition}`
//! and `stun.counter_addrfamily{family}`) in Prometheus style.
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `stun_requests_total` | `disposition=success` | success responses sent |
//! | | `disposition=not_stun` | datagrams that are not STUN at all |
//! | | `disposition=bad_request` | STUN we refuse: malformed, not a Binding Request, bad FINGERPRINT, answered with a 420 error, or dropped by the amplification rule |
//! | | `disposition=read_error` | failed receive calls (not datagrams) |
//! | | `disposition=write_error` | responses the kernel refused to send |
//! | `stun_requests_by_family_total` | `family=ipv4\|ipv6` | Binding Requests we accepted, by the client's address family (IPv4-mapped IPv6 counts as IPv4) |
//!
//! Every received datagram lands in exactly one disposition other than `read_error`. The
//! handles are resolved against the global recorder when [`Metrics::new`] runs (in
//! [`crate::Server::bind`]), so install the exporter before binding.

use metrics::{Counter, Unit, counter, describe_counter};

/// Name of the per-disposition request counter.
pub const REQUESTS_TOTAL: &str = "stun_requests_total";
/// Name of the per-address-family request counter.
pub const REQUESTS_BY_FAMILY_TOTAL: &str = "stun_requests_by_family_total";

/// Registers the help text of every STUN metric with the global recorder. Idempotent.
pub fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "STUN datagrams by outcome: success, not_stun, bad_request, read_error, write_error"
    );
    describe_counter!(
        REQUESTS_BY_FAMILY_TOTAL,
        Unit::Count,
        "Accepted STUN binding requests by client address family (ipv4, ipv6)"
    );
}

/// Pre-registered counter handles, so the receive loop never looks a metric up by name.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `stun_requests_total{disposition="success"}`: success responses handed to the kernel.
    pub success: Counter,
    /// `stun_requests_total{disposition="not_stun"}`: datagrams that are not STUN.
    pub not_stun: Counter,
    /// `stun_requests_total{disposition="bad_request"}`: STUN messages refused or answered with
    /// an error.
    pub bad_request: Counter,
    /// `stun_requests_total{disposition="read_error"}`: receive calls that failed.
    pub read_error: Counter,
    /// `stun_requests_total{disposition="write_error"}`: responses that failed to send.
    pub write_error: Counter,
    /// `stun_requests_by_family_total{family="ipv4"}`: accepted requests from IPv4 clients.
    pub ipv4: Counter,
    /// `stun_requests_by_family_total{family="ipv6"}`: accepted requests from IPv6 clients.
    pub ipv6: Counter,
}

impl Metrics {
    /// Resolves every handle against the current global recorder.
    pub fn new() -> Self {
        let disposition = |d: &'static str| counter!(REQUESTS_TOTAL, "disposition" => d);
        let family = |f: &'static str| counter!(REQUESTS_BY_FAMILY_TOTAL, "family" => f);
        Self {
            success: disposition("success"),
            not_stun: disposition("not_stun"),
            bad_request: disposition("bad_request"),
            read_error: disposition("read_error"),
            write_error: disposition("write_error"),
            ipv4: family("ipv4"),
            ipv6: family("ipv6"),
        }
    }

    /// Adds a loop's local tally and clears it; one atomic add per non-zero field per batch
    /// instead of one per datagram.
    pub(crate) fn flush(&self, t: &mut Tally) {
        for (counter, n) in [
            (&self.success, t.success),
            (&self.not_stun, t.not_stun),
            (&self.bad_request, t.bad_request),
            (&self.read_error, t.read_error),
            (&self.write_error, t.write_error),
            (&self.ipv4, t.ipv4),
            (&self.ipv6, t.ipv6),
        ] {
            if n != 0 {
                counter.increment(n);
            }
        }
        *t = Tally::default();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts kept by one receive loop between flushes. Owned by that loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) success: u64,
    pub(crate) not_stun: u64,
    pub(crate) bad_request: u64,
    pub(crate) read_error: u64,
    pub(crate) write_error: u64,
    pub(crate) ipv4: u64,
    pub(crate) ipv6: u64,
}
