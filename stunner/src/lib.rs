//! A STUN binding responder: Tailscale's requests answered exactly as derper does, standard
//! RFC 8489/5389 and RFC 3489 clients answered too, and RFC 5780 behaviour discovery when an
//! alternate address is configured.
//!
//! Parsing and response building live in [`derp_proto::stun`]; this crate owns the sockets. Each
//! bound UDP socket gets one receive loop that reuses its buffers, batches with
//! `recvmmsg`/`sendmmsg` on Linux, counts every datagram in [`metrics`], and never lets one bad
//! datagram or failed send stop the loop.
//!
//! ```no_run
//! # async fn example() -> Result<(), stunner::BindError> {
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let server = stunner::Server::bind(stunner::Config {
//!     listen: vec!["127.0.0.1:3478".parse().unwrap()],
//!     ..Default::default()
//! })
//! .await?;
//! println!("STUN on {:?}", server.local_addrs());
//! let task = server.spawn(cancel.clone());
//! // ... later:
//! cancel.cancel();
//! task.await.ok();
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::net::SocketAddr;

pub mod metrics;
mod server;
#[cfg(target_os = "linux")]
mod sys;

pub use server::{BindError, Server};

/// Defaults, each with the reason for its number.
pub mod defaults {
    /// The IANA STUN port, and the port Tailscale clients use when a DERP map says `STUNPort: 0`.
    pub const PORT: u16 = 3478;

    /// Datagrams per `recvmmsg`/`sendmmsg` call. 32 × [`RECV_SLOT`] is the 64 KiB of receive
    /// memory a socket loop reuses. Measured on loopback (`bench/stun/run.sh`, results in
    /// `bench/results/stun-*.md`), the batched loop spends ~25 % less server CPU per response
    /// than the one-datagram loop (`batch = 1`).
    pub const BATCH: usize = 32;

    /// Upper bound for [`crate::Config::batch`], so the per-call arrays can live on the stack.
    pub const MAX_BATCH: usize = 64;

    /// Bytes per receive slot in batched mode. Every request we answer is far smaller (Tailscale
    /// sends 40 bytes; RFC 5780 PADDING tops out at a path MTU of 1500); a larger datagram
    /// arrives truncated and is counted as `bad_request`.
    pub const RECV_SLOT: usize = 2048;

    /// Receive buffer of the single-datagram loop: any UDP datagram fits, as in Go's stunserver.
    pub const RECV_BUFFER: usize = 64 * 1024;

    /// Kernel socket buffer we ask for (SO_RCVBUF/SO_SNDBUF), so bursts from many clients queue
    /// instead of dropping; the kernel caps it at `net.core.rmem_max`.
    pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
}

/// What to listen on and how.
///
/// Deliberately not `#[non_exhaustive]`: callers build it with a struct literal and
/// `..Default::default()`, so new fields with defaults stay source-compatible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Addresses to bind, one or more sockets each. `[::]:PORT` is dual-stack (IPv4 clients are
    /// seen as `::ffff:a.b.c.d` and answered in the IPv4 family) unless the list also holds an
    /// IPv4 address on the same port. Port 0 picks a free port. Default `[::]:3478`.
    pub listen: Vec<SocketAddr>,
    /// RFC 5780 mode: the alternate address, differing from the single `listen` address in both
    /// IP and port. The server then binds all four combinations (primary/alternate IP ×
    /// primary/alternate port), adds RESPONSE-ORIGIN and OTHER-ADDRESS to standard answers, and
    /// honours CHANGE-REQUEST by answering from the matching socket. Off when `None`.
    pub other_address: Option<SocketAddr>,
    /// Sockets per address, sharing the port with `SO_REUSEPORT` so the kernel spreads clients
    /// over several receive loops. 0 is treated as 1.
    pub sockets_per_addr: usize,
    /// Datagrams per `recvmmsg`/`sendmmsg` call, at most [`defaults::MAX_BATCH`]. 1 selects the
    /// plain one-datagram loop (always used off Linux).
    pub batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from((
                std::net::Ipv6Addr::UNSPECIFIED,
                defaults::PORT,
            ))],
            other_address: None,
            sockets_per_addr: 1,
            batch: defaults::BATCH,
        }
    }
}
