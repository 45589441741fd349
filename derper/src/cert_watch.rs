//! Manual certificates reloaded when their files change and on SIGHUP, without dropping
//! connections (a reload only changes what new handshakes get).
//!
//! Change detection polls a SHA-256 of both files' contents on an interval rather than using
//! inotify: a Kubernetes Secret volume replaces its files by swapping a directory symlink, which
//! watching the files themselves misses, and mtimes may not move. A bad new pair (garbage, key
//! and certificate that do not match, wrong name, a half-written file) keeps the current
//! certificate; it is counted in `derp_cert_reload_total{outcome="failed"}` and logged once per
//! distinct content, so a file left broken is not reported every interval.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::metrics::{CertReloadOutcome, Metrics};
use crate::tls::{CertInfo, CertReloader, TlsError};

/// Watches the files of a [`CertReloader`].
#[derive(Debug)]
pub(crate) struct CertWatcher {
    reloader: CertReloader,
    metrics: Arc<Metrics>,
    /// Guarded so a poll and a SIGHUP never reload at once.
    state: Mutex<WatchState>,
}

/// What the watcher has seen of the files' contents.
#[derive(Debug, Default)]
struct WatchState {
    /// Fingerprint of the content being served.
    served: Option<[u8; 32]>,
    /// Fingerprint of the last content refused, so it is reported once.
    refused: Option<[u8; 32]>,
}

impl CertWatcher {
    /// A watcher whose baseline is the files as they are now (what start-up loaded).
    pub(crate) fn new(reloader: CertReloader, metrics: Arc<Metrics>) -> Self {
        let served = reloader.paths().map(|(c, k)| fingerprint(c, k));
        if let Some(info) = reloader.current() {
            metrics.cert_not_after(info.not_after);
        }
        Self {
            reloader,
            metrics,
            state: Mutex::new(WatchState {
                served,
                refused: None,
            }),
        }
    }

    /// Reloads if the files changed since the last check, or always when `force` (SIGHUP).
    /// `None` when nothing changed. Blocking file I/O: call it from `spawn_blocking`.
    pub(crate) fn check(&self, force: bool) -> Option<Result<CertInfo, TlsError>> {
        let (cert, key) = self.reloader.paths()?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = fingerprint(cert, key);
        if !force && (Some(now) == state.served || Some(now) == state.refused) {
            return None;
        }
        let result = self.reloader.reload();
        match &result {
            Ok(info) => {
                state.served = Some(now);
                state.refused = None;
                self.metrics.cert_reload(CertReloadOutcome::Reloaded);
                self.metrics.cert_not_after(info.not_after);
                tracing::info!(
                    cert = %cert.display(),
                    sha256 = %info.leaf_sha256_hex,
                    trigger = if force { "sighup" } else { "file change" },
                    "certificate reloaded; new handshakes get it"
                );
            }
            Err(e) => {
                if force || Some(now) != state.refused {
                    self.metrics.cert_reload(CertReloadOutcome::Failed);
                    tracing::error!(
                        error = %e,
                        trigger = if force { "sighup" } else { "file change" },
                        "certificate reload refused; keeping the current certificate"
                    );
                }
                state.refused = Some(now);
            }
        }
        Some(result)
    }

    /// Checks the files every `interval` until `cancel`.
    pub(crate) async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and start-up just loaded the files.
        tick.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = Arc::clone(&self);
            // A panic in the blocking check is a bug, not a reason to stop watching.
            let _ = tokio::task::spawn_blocking(move || me.check(false)).await;
        }
    }
}

/// SHA-256 over both files (length-prefixed); an unreadable file hashes as its error kind, so
/// a file that disappears and comes back unchanged is not a change.
fn fingerprint(cert: &Path, key: &Path) -> [u8; 32] {
    let mut hash = Sha256::new();
    for path in [cert, key] {
        match fs::read(path) {
            Ok(bytes) => {
                hash.update((bytes.len() as u64).to_be_bytes());
                hash.update(&bytes);
            }
            Err(e) => {
                hash.update(u64::MAX.to_be_bytes());
                hash.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tls::{CertMode, TlsOptions, load};

    fn write_pair(dir: &Path, name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        hex::encode(Sha256::digest(cert.der()))
    }

    #[test]
    fn reloads_changes_and_reports_bad_content_once() {
        let tmp = tempfile::tempdir().unwrap();
        let first = write_pair(tmp.path(), "derp.test");
        let opts = TlsOptions {
            cert_mode: CertMode::Manual,
            cert_dir: tmp.path().to_owned(),
            hostname: "derp.test".into(),
        };
        let setup = load(&opts, &[1; 32]).unwrap();
        let watcher = CertWatcher::new(setup.reloader(), Arc::new(Metrics::new()));
        assert!(watcher.check(false).is_none(), "unchanged");

        let second = write_pair(tmp.path(), "derp.test");
        let info = watcher.check(false).expect("changed").expect("good pair");
        assert_eq!(info.leaf_sha256_hex, second);
        assert_ne!(first, second);
        assert!(
            watcher.check(false).is_none(),
            "served content is the baseline"
        );

        fs::write(tmp.path().join("derp.test.crt"), "garbage").unwrap();
        assert!(watcher.check(false).expect("changed").is_err());
        assert!(
            watcher.check(false).is_none(),
            "refused content is not retried"
        );
        assert_eq!(setup.current().unwrap().leaf_sha256_hex, second, "old kept");
        // SIGHUP retries even unchanged bad content.
        assert!(watcher.check(true).expect("forced").is_err());

        let third = write_pair(tmp.path(), "derp.test");
        let info = watcher.check(false).expect("changed").expect("good pair");
        assert_eq!(info.leaf_sha256_hex, third);
    }
}
