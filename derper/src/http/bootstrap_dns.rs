//! `/bootstrap-dns`: derper's DNS fallback. Clients whose own resolver fails ask a relay they
//! can reach by IP for the addresses of the names they need (the control server, other
//! relays); the relay answers from its own resolver, refreshed in the background.
//!
//! The answer is derper's JSON: `{"name": ["ip", …], …}`; `?q=name` returns just that name
//! (only names configured here: the relay is not an open resolver).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::RwLock;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::defaults;

/// The names served and their last good addresses.
#[derive(Debug)]
pub struct BootstrapDns {
    names: Vec<String>,
    answers: RwLock<BTreeMap<String, Vec<IpAddr>>>,
}

impl BootstrapDns {
    /// Serves `names` (none resolved yet).
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            answers: RwLock::new(BTreeMap::new()),
        }
    }

    /// Resolves every name once. A failed lookup keeps the name's previous addresses, so a
    /// resolver hiccup does not empty the fallback clients rely on.
    pub async fn refresh(&self) {
        for name in &self.names {
            match tokio::net::lookup_host((name.as_str(), 0)).await {
                Ok(addrs) => {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    if !ips.is_empty() {
                        self.answers
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name.clone(), ips);
                    }
                }
                Err(e) => {
                    tracing::debug!(%name, error = %e, "bootstrap DNS lookup failed; keeping the last answer")
                }
            }
        }
    }

    /// Refreshes every [`defaults::BOOTSTRAP_DNS_REFRESH`] until `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(defaults::BOOTSTRAP_DNS_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.refresh().await,
            }
        }
    }

    /// The JSON answer for a request with query string `query`.
    pub fn answer(&self, query: Option<&str>) -> Bytes {
        let answers = self.answers.read().unwrap_or_else(|e| e.into_inner());
        let wanted = query.and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("q="))
                .map(str::to_string)
        });
        let body = match wanted {
            Some(name) => {
                let one: BTreeMap<&str, &Vec<IpAddr>> = answers
                    .get_key_value(&name)
                    .map(|(k, v)| (k.as_str(), v))
                    .into_iter()
                    .collect();
                serde_json::to_vec(&one)
            }
            None => serde_json::to_vec(&*answers),
        };
        Bytes::from(body.unwrap_or_else(|_| b"{}".to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_names_it_resolved_and_only_those() {
        let b = BootstrapDns::new(vec!["localhost".into(), "no-such-name.invalid".into()]);
        b.refresh().await;
        let all: BTreeMap<String, Vec<IpAddr>> = serde_json::from_slice(&b.answer(None)).unwrap();
        assert!(
            all["localhost"].iter().any(|ip| ip.is_loopback()),
            "{all:?}"
        );
        assert!(!all.contains_key("no-such-name.invalid"));
        let one: BTreeMap<String, Vec<IpAddr>> =
            serde_json::from_slice(&b.answer(Some("q=localhost"))).unwrap();
        assert_eq!(one.len(), 1);
        // Not an open resolver: a name it does not serve gets nothing.
        assert_eq!(&b.answer(Some("q=example.com"))[..], b"{}");
    }
}
