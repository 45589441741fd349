//! Abuse limits an operator sets: derper's `--rate-config` file (per-client receive rate),
//! reloaded on SIGHUP, and the accept-rate limit on the main listener.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest frame a client can usefully send (a full SendPacket: 64 KiB plus a key). Charged
/// per frame at most, and the smallest burst allowed, as derper's `minRateLimitTokenBucketSize`:
/// a burst below it could never admit a full frame.
pub const MIN_RATE_BURST: u64 = derp_proto::consts::MAX_PACKET_SIZE as u64 + 32;

/// derper's `RateConfig` JSON: `{"PerClientRateLimitBytesPerSec": N, "PerClientRateBurstBytes": N}`.
/// A zero (or missing) rate turns limiting off. Mesh peers are never limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained bytes per second each client may send; 0 disables.
    #[serde(rename = "PerClientRateLimitBytesPerSec", default)]
    pub bytes_per_sec: u64,
    /// Bucket depth in bytes; raised to [`MIN_RATE_BURST`].
    #[serde(rename = "PerClientRateBurstBytes", default)]
    pub burst_bytes: u64,
}

/// Why a rate config file was not applied.
#[derive(Debug, thiserror::Error)]
#[error("rate config {}: {reason}", .path.display())]
pub struct RateConfigError {
    /// File.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl RateConfig {
    /// Reads and parses the file at `path`. Unknown keys are refused (a typo must not silently
    /// leave a relay unlimited).
    pub fn load(path: &Path) -> Result<Self, RateConfigError> {
        let err = |reason: String| RateConfigError {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        if text.len() > 64 * 1024 {
            return Err(err("larger than 64 KiB: not a rate config".into()));
        }
        serde_json::from_slice(&text).map_err(|e| err(format!("not derper's RateConfig JSON: {e}")))
    }

    /// What is applied: limiting off when the rate is 0, else the burst raised to
    /// [`MIN_RATE_BURST`] (derper's `UpdateRateLimits`).
    pub fn applied(self) -> Self {
        if self.bytes_per_sec == 0 {
            Self::default()
        } else {
            Self {
                bytes_per_sec: self.bytes_per_sec,
                burst_bytes: self.burst_bytes.max(MIN_RATE_BURST),
            }
        }
    }

    /// Whether clients are limited.
    pub fn is_enabled(&self) -> bool {
        self.bytes_per_sec > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_derpers_json_and_applies_its_floor() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rate.json");
        std::fs::write(
            &p,
            r#"{"PerClientRateLimitBytesPerSec": 1000, "PerClientRateBurstBytes": 10}"#,
        )
        .unwrap();
        let rc = RateConfig::load(&p).unwrap();
        assert_eq!(rc.bytes_per_sec, 1000);
        assert_eq!(rc.applied().burst_bytes, MIN_RATE_BURST);
        std::fs::write(&p, "{}").unwrap();
        assert!(!RateConfig::load(&p).unwrap().applied().is_enabled());
        for bad in [
            "garbage",
            r#"{"PerClientRateLimit": 5}"#,
            r#"{"PerClientRateLimitBytesPerSec": -1}"#,
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = RateConfig::load(&p).unwrap_err();
            assert!(e.to_string().contains("rate.json"), "{e}");
        }
        assert!(RateConfig::load(&dir.path().join("missing.json")).is_err());
    }
}
