//! Client admission: whether a node key may use this relay, asked of an admission webhook
//! (derper's `--verify-client-url`, e.g. Headscale's `/verify`) and/or the local tailscaled
//! (`--verify-clients`), with a decision cache in front and periodic re-verification behind.
//!
//! ```text
//! Relay::accept ─► admit (mesh key? bypass) ─► Admission::check ─► cache hit: done
//!                                                   │ miss: one question per key in flight,
//!                                                   ▼ at most ADMISSION_MAX_IN_FLIGHT overall
//!                                   tailscaled LocalAPI whois ─► webhook POST
//! reverify task (every reverify_interval): every connected key asked again, a refusal closes it
//! ```
//!
//! No answer (timeout, unreachable, a non-200 status, a body that is not the JSON) is not
//! cached, and admits only with `fail_open`. The default is closed: an unreachable webhook
//! must not turn a private relay into an open one for whoever connects meanwhile.

mod cache;
mod localapi;
mod metrics;
pub(crate) mod webhook;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use derp_proto::NodePublicKey;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use self::cache::{DecisionCache, Lookup};
use self::localapi::LocalTailscaled;
pub use self::metrics::Outcome;
use self::metrics::{AdmissionMetrics, CallResult};
use self::webhook::Webhook;
use crate::config::AdmissionSettings;
use crate::defaults;
use crate::relay::Relay;

/// What a backend answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Allow,
    Deny,
}

/// Why a backend gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered HTTP {0}")]
    BadStatus(u16),
    #[error("unreadable answer: {0}")]
    BadBody(String),
}

impl CallError {
    fn result(&self) -> CallResult {
        match self {
            Self::Timeout(_) => CallResult::Timeout,
            Self::Unreachable(_) => CallResult::Unreachable,
            Self::BadStatus(_) => CallResult::BadStatus,
            Self::BadBody(_) => CallResult::BadBody,
        }
    }
}

/// The outcome of one question, shared with every connection of the key that waited for it.
type Shared = Option<Result<Answer, CallError>>;

/// The verdict on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// May connect.
    Admit,
    /// Refused, and why (for the log line).
    Refuse(String),
}

/// Why admission could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The bearer token file could not be read.
    #[error("admission bearer token file {path}: {source}")]
    TokenFile {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The webhook client could not be built.
    #[error("admission webhook: {0}")]
    Webhook(String),
}

/// Admission control: backends, cache, limits and counters. Shared by every connection.
pub struct Admission {
    local: Option<LocalTailscaled>,
    webhook: Option<Webhook>,
    fail_open: bool,
    timeout: Duration,
    reverify_interval: Option<Duration>,
    cache: Mutex<DecisionCache<NodePublicKey, watch::Receiver<Shared>>>,
    in_flight: Semaphore,
    metrics: AdmissionMetrics,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("local", &self.local)
            .field("webhook", &self.webhook)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Builds admission from its settings; `None` when no backend is configured.
    pub fn from_settings(s: &AdmissionSettings) -> Result<Option<Arc<Self>>, AdmissionError> {
        if s.verify_client_url.is_none() && !s.verify_clients {
            return Ok(None);
        }
        let token = match &s.bearer_token_file {
            None => None,
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| AdmissionError::TokenFile {
                        path: path.clone(),
                        source,
                    })?;
                crate::keyfile::warn_if_readable_by_others(path, "admission bearer token");
                Some(text.trim().to_string())
            }
        };
        let webhook = s
            .verify_client_url
            .as_deref()
            .map(|url| Webhook::new(url, token.as_deref()))
            .transpose()
            .map_err(AdmissionError::Webhook)?;
        let local = s
            .verify_clients
            .then(|| LocalTailscaled::new(s.tailscaled_socket.clone()));
        Ok(Some(Arc::new(Self {
            local,
            webhook,
            fail_open: s.fail_open,
            timeout: s.timeout,
            reverify_interval: s.reverify_interval,
            cache: Mutex::new(DecisionCache::new(
                defaults::ADMISSION_CACHE_MAX_ENTRIES,
                s.positive_ttl,
                s.negative_ttl,
            )),
            in_flight: Semaphore::new(defaults::ADMISSION_MAX_IN_FLIGHT),
            metrics: AdmissionMetrics::new(),
        })))
    }

    /// Counts a mesh peer that skipped admission.
    pub(crate) fn note_mesh_bypass(&self) {
        self.metrics.decision(Outcome::MeshPeer);
    }

    /// Decides whether `key`, connecting from `source`, may connect: from the cache, by
    /// waiting for a question already in flight for the key, or by asking. Never takes longer
    /// than the configured timeout.
    pub async fn check(&self, key: &NodePublicKey, source: IpAddr) -> Verdict {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let (tx, rx) = watch::channel::<Shared>(None);
            let lookup = self.lock_cache().lookup(key, Instant::now(), || rx.clone());
            match lookup {
                Lookup::Cached(allow) => {
                    return self.verdict(
                        if allow {
                            Outcome::AllowedCached
                        } else {
                            Outcome::DeniedCached
                        },
                        key,
                        source,
                        None,
                    );
                }
                Lookup::InFlight(mut waiting) => {
                    match tokio::time::timeout_at(deadline, waiting.wait_for(Option::is_some)).await
                    {
                        Ok(Ok(shared)) => {
                            let shared = shared.clone();
                            return self.conclude(shared, key, source);
                        }
                        // The asker went away without an answer (its client left): ask again.
                        Ok(Err(_)) => continue,
                        Err(_) => {
                            let e = CallError::Timeout(self.timeout);
                            return self.conclude(Some(Err(e)), key, source);
                        }
                    }
                }
                Lookup::Ask { recorded } => {
                    let mut guard = Unsettled {
                        admission: self,
                        key,
                        armed: recorded,
                    };
                    let result = self.ask_until(key, source, deadline).await;
                    guard.armed = false;
                    let verdict = match &result {
                        Ok(Answer::Allow) => Some(true),
                        Ok(Answer::Deny) => Some(false),
                        Err(_) => None,
                    };
                    if recorded {
                        let mut cache = self.lock_cache();
                        cache.settle(key, verdict, Instant::now());
                        self.metrics.cache_entries(cache.len(), cache.evicted());
                    }
                    tx.send_replace(Some(result.clone()));
                    return self.conclude(Some(result), key, source);
                }
            }
        }
    }

    /// Asks the backends again for a connected client, bypassing and refreshing the cache.
    /// `Some(false)` means the key is no longer allowed; `None` means no answer (the client
    /// stays: a webhook outage must not disconnect everyone).
    pub(crate) async fn reverify(&self, key: &NodePublicKey, source: IpAddr) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let verdict = match self.ask_until(key, source, deadline).await {
            Ok(a) => Some(a == Answer::Allow),
            Err(_) => None,
        };
        if verdict.is_some() {
            let mut cache = self.lock_cache();
            cache.settle(key, verdict, Instant::now());
            self.metrics.cache_entries(cache.len(), cache.evicted());
        }
        verdict
    }

    /// How often connected clients are asked again (`None`: never).
    pub fn reverify_interval(&self) -> Option<Duration> {
        self.reverify_interval
    }

    /// One question to every backend (local tailscaled first, as derper), under the
    /// in-flight limit and `deadline`. Counts each backend's result.
    async fn ask_until(
        &self,
        key: &NodePublicKey,
        source: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, CallError> {
        let timeout = self.timeout;
        let work = async {
            // The semaphore is never closed.
            let _permit = self.in_flight.acquire().await;
            if let Some(local) = &self.local {
                let r = local.ask(key).await;
                self.metrics
                    .call(r.as_ref().map_or_else(CallError::result, CallResult::of));
                if r? == Answer::Deny {
                    return Ok(Answer::Deny);
                }
            }
            if let Some(hook) = &self.webhook {
                let r = hook.ask(key, source).await;
                self.metrics
                    .call(r.as_ref().map_or_else(CallError::result, CallResult::of));
                return r;
            }
            Ok(Answer::Allow)
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => {
                self.metrics.call(CallResult::Timeout);
                Err(CallError::Timeout(timeout))
            }
        }
    }

    fn conclude(&self, shared: Shared, key: &NodePublicKey, source: IpAddr) -> Verdict {
        match shared {
            Some(Ok(Answer::Allow)) => self.verdict(Outcome::Allowed, key, source, None),
            Some(Ok(Answer::Deny)) => self.verdict(Outcome::Denied, key, source, None),
            Some(Err(e)) => {
                let outcome = if self.fail_open {
                    Outcome::FailOpen
                } else {
                    Outcome::FailClosed
                };
                self.verdict(outcome, key, source, Some(&e))
            }
            // `wait_for(Option::is_some)` never yields None.
            None => self.verdict(Outcome::FailClosed, key, source, None),
        }
    }

    fn verdict(
        &self,
        outcome: Outcome,
        key: &NodePublicKey,
        source: IpAddr,
        error: Option<&CallError>,
    ) -> Verdict {
        self.metrics.decision(outcome);
        if let Some(e) = error
            && let Some(suppressed) = crate::log_limit::ADMISSION.allow()
        {
            tracing::warn!(key = %key.short(), %source, error = %e, fail_open = self.fail_open, suppressed, "admission backend gave no answer");
        }
        match outcome {
            Outcome::Allowed | Outcome::AllowedCached | Outcome::FailOpen | Outcome::MeshPeer => {
                Verdict::Admit
            }
            Outcome::Denied | Outcome::DeniedCached => {
                Verdict::Refuse(format!("client {} from {source} not allowed", key.short()))
            }
            Outcome::FailClosed => Verdict::Refuse(format!(
                "client {} from {source}: admission gave no answer and fail-open is off",
                key.short()
            )),
        }
    }

    fn lock_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, DecisionCache<NodePublicKey, watch::Receiver<Shared>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forgets a recorded question if its asker is dropped before it settles (the connection
/// went away mid-question), so waiters and later callers ask again instead of waiting for
/// an answer that will never come.
struct Unsettled<'a> {
    admission: &'a Admission,
    key: &'a NodePublicKey,
    armed: bool,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.admission
                .lock_cache()
                .settle(self.key, None, Instant::now());
        }
    }
}

/// Asks about every connected client again every `interval` and closes the connections of
/// keys that are no longer allowed. Runs until `cancel`.
pub async fn reverify_loop(admission: Arc<Admission>, relay: Relay, cancel: CancellationToken) {
    let Some(interval) = admission.reverify_interval else {
        return;
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let clients = relay.regular_clients();
        // Questions go out concurrently, bounded by the in-flight limit inside `reverify`.
        let mut asks = tokio::task::JoinSet::new();
        for (key, source) in clients {
            let a = admission.clone();
            asks.spawn(async move { (key, source, a.reverify(&key, source).await) });
        }
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                n = asks.join_next() => n,
            };
            let Some(done) = next else { break };
            if let Ok((key, source, Some(false))) = done {
                let closed = relay.close_client(&key);
                admission.metrics.revoked(closed);
                tracing::info!(key = %key.short(), %source, closed, "client no longer admitted; disconnected");
            }
        }
    }
}

#[cfg(test)]
mod tests;
