//! `stunner`: the standalone STUN server.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// STUN binding responder for Tailscale and standard STUN clients.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on; repeat for several. `[::]` is dual-stack.
    #[arg(long = "listen", value_name = "ADDR", default_value = "[::]:3478")]
    listen: Vec<SocketAddr>,
    /// RFC 5780 mode: the alternate address (different IP and port from the single --listen
    /// address). Adds OTHER-ADDRESS/RESPONSE-ORIGIN and honours CHANGE-REQUEST.
    #[arg(long, value_name = "ADDR")]
    other_addr: Option<SocketAddr>,
    /// Sockets per address sharing the port with SO_REUSEPORT, one receive loop each.
    #[arg(long, default_value_t = 1)]
    sockets_per_addr: usize,
    /// Datagrams per recvmmsg/sendmmsg call; 1 for the plain one-at-a-time loop.
    #[arg(long, default_value_t = stunner::defaults::BATCH)]
    batch: usize,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // Before anything is printed: a supervisor that reads "listening on" and then sends SIGTERM
    // must find the handler in place.
    let shutdown = shutdown_signal()?;

    if let Some(addr) = cli.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("metrics exporter on {addr}"))?;
    }

    let server = stunner::Server::bind(stunner::Config {
        listen: cli.listen,
        other_address: cli.other_addr,
        sockets_per_addr: cli.sockets_per_addr,
        batch: cli.batch,
    })
    .await
    .context("starting STUN server")?;

    // One line per bound address on stdout, so scripts and tests can find port-0 listeners.
    {
        let mut stdout = std::io::stdout().lock();
        for addr in server.local_addrs() {
            writeln!(stdout, "listening on {addr}")?;
        }
        stdout.flush()?;
    }

    let cancel = CancellationToken::new();
    let task = server.spawn(cancel.clone());
    shutdown.await;
    tracing::info!("shutting down");
    cancel.cancel();
    task.await.context("STUN server task")?;
    Ok(())
}

/// Registers the handlers now and returns a future that resolves on SIGINT or SIGTERM.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
