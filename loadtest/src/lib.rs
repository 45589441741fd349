//! Load generator for DERP relay fleets.
//!
//! `loadtest` drives any DERP server, ours or Tailscale's, through `derp-proto`'s client only, so
//! the same workload gives side-by-side numbers. Scenarios:
//!
//! - [`pairs`]: N pairs of simulated peers, optionally behind simulated NATs that decide whether
//!   hole punching succeeds, exchanging checked WireGuard-shaped packets;
//! - [`idle`]: hold N connections and measure the server's memory per connection;
//! - [`storm`]: M clients reconnecting at once;
//! - [`probe`]: check every node of a DERP map;
//! - [`burst`]: bursts of N SendPackets in one write to a receiver that keeps up;
//! - [`flood`]: clients streaming small frames without reading, against a canary pair;
//! - `mesh`: [`pairs`] spread over the relays of a region, some with both peers on one relay and
//!   the rest across two, reported per class side by side.
//!
//! Each produces a [`report::Report`] that prints, serialises to JSON (with a latency histogram
//! SVG next to it), merges across worker processes and Kubernetes Job pods, and is judged
//! against CI thresholds.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod burst;
pub mod derpmap;
pub mod dial;
pub mod disco;
pub mod flood;
pub mod idle;
pub mod nat;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod pairs;
pub mod payload;
pub mod probe;
pub mod report;
pub mod stats;
pub mod storm;
pub mod svg;

use std::sync::Arc;
use std::time::Duration;

pub use dial::DialOptions;
pub use pairs::{PairsConfig, run_pairs};
pub use report::{Report, Thresholds};
use stats::Progress;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Prints one progress line a second to stderr until the returned handle is dropped (it aborts
/// the printer, so a finished run never waits on it).
pub fn spawn_progress(progress: Arc<Progress>, epoch: Instant) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let (mut last_sent, mut last_recv) = (0, 0);
        loop {
            tick.tick().await;
            let sent = Progress::read(&progress.sent);
            let recv = Progress::read(&progress.received);
            eprintln!(
                "[{:>5.1}s] connected {:>6}  sent {:>9}/s  received {:>9}/s  errors {}",
                epoch.elapsed().as_secs_f64(),
                Progress::read(&progress.connected),
                sent - last_sent,
                recv - last_recv,
                Progress::read(&progress.errors),
            );
            (last_sent, last_recv) = (sent, recv);
        }
    }))
}

/// A task handle that aborts the task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
