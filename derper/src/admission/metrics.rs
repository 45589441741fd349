//! Admission counters: every decision by outcome, every backend question by result.

use metrics::{Counter, Gauge, counter, describe_counter, describe_gauge, gauge};

use super::Answer;
use crate::metrics::names;

/// How a connection's admission was decided (label `outcome` of
/// `derp_admission_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
#[non_exhaustive]
pub enum Outcome {
    /// A backend answered allow.
    Allowed,
    /// A backend answered deny.
    Denied,
    /// An unexpired allow from the cache.
    AllowedCached,
    /// An unexpired deny from the cache.
    DeniedCached,
    /// No answer; admitted because fail-open is on.
    FailOpen,
    /// No answer; refused because fail-open is off.
    FailClosed,
    /// A mesh peer (mesh key): not asked.
    MeshPeer,
}

impl Outcome {
    const ALL: [Self; 7] = [
        Self::Allowed,
        Self::Denied,
        Self::AllowedCached,
        Self::DeniedCached,
        Self::FailOpen,
        Self::FailClosed,
        Self::MeshPeer,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::AllowedCached => "allowed_cached",
            Self::DeniedCached => "denied_cached",
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
            Self::MeshPeer => "mesh_peer",
        }
    }
}

/// What one backend question came to (label `result` of `derp_admission_calls_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum CallResult {
    Allow,
    Deny,
    Timeout,
    Unreachable,
    BadStatus,
    BadBody,
}

impl CallResult {
    const ALL: [Self; 6] = [
        Self::Allow,
        Self::Deny,
        Self::Timeout,
        Self::Unreachable,
        Self::BadStatus,
        Self::BadBody,
    ];

    pub(crate) fn of(a: &Answer) -> Self {
        match a {
            Answer::Allow => Self::Allow,
            Answer::Deny => Self::Deny,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::BadStatus => "bad_status",
            Self::BadBody => "bad_body",
        }
    }
}

/// Pre-registered admission handles.
#[derive(Debug)]
pub(crate) struct AdmissionMetrics {
    decisions: [Counter; Outcome::ALL.len()],
    calls: [Counter; CallResult::ALL.len()],
    revoked: Counter,
    cache_entries: Gauge,
    cache_evictions: Counter,
    evicted_seen: std::sync::atomic::AtomicU64,
}

impl AdmissionMetrics {
    pub(crate) fn new() -> Self {
        describe();
        Self {
            decisions: Outcome::ALL
                .map(|o| counter!(names::ADMISSION_DECISIONS_TOTAL, "outcome" => o.as_str())),
            calls: CallResult::ALL
                .map(|r| counter!(names::ADMISSION_CALLS_TOTAL, "result" => r.as_str())),
            revoked: counter!(names::ADMISSION_REVOKED_TOTAL),
            cache_entries: gauge!(names::ADMISSION_CACHE_ENTRIES),
            cache_evictions: counter!(names::ADMISSION_CACHE_EVICTIONS_TOTAL),
            evicted_seen: Default::default(),
        }
    }

    pub(crate) fn decision(&self, o: Outcome) {
        self.decisions[o as usize].increment(1);
    }

    pub(crate) fn call(&self, r: CallResult) {
        self.calls[r as usize].increment(1);
    }

    pub(crate) fn revoked(&self, connections: usize) {
        self.revoked.increment(connections as u64);
    }

    /// Publishes the cache size and the evictions since the last call (`evicted` is the
    /// cache's running total, read under its lock).
    pub(crate) fn cache_entries(&self, len: usize, evicted: u64) {
        self.cache_entries.set(len as f64);
        let before = self
            .evicted_seen
            .swap(evicted, std::sync::atomic::Ordering::Relaxed);
        self.cache_evictions
            .increment(evicted.saturating_sub(before));
    }
}

fn describe() {
    describe_counter!(
        names::ADMISSION_DECISIONS_TOTAL,
        "Admission decisions on connections, by outcome (allowed, denied, allowed_cached, denied_cached, fail_open, fail_closed, mesh_peer)"
    );
    describe_counter!(
        names::ADMISSION_CALLS_TOTAL,
        "Questions to the admission backends (webhook, local tailscaled), by result (allow, deny, timeout, unreachable, bad_status, bad_body)"
    );
    describe_counter!(
        names::ADMISSION_REVOKED_TOTAL,
        "Connections closed because re-verification no longer admitted their key"
    );
    describe_gauge!(
        names::ADMISSION_CACHE_ENTRIES,
        "Keys in the admission decision cache (verdicts and questions in flight)"
    );
    describe_counter!(
        names::ADMISSION_CACHE_EVICTIONS_TOTAL,
        "Unexpired verdicts dropped from the full admission cache"
    );
}
