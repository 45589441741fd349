//! `derper`: parse flags and the config file, set up logging and metrics, run the server until
//! a signal.
//!
//! Signals: SIGTERM drains (readiness off, clients told, wait up to `--drain-grace`), then
//! exits 0; a second SIGTERM, or SIGINT, stops at once. SIGHUP reloads the certificate and
//! `--rate-config`. `POST /admin/drain` on the metrics listener drains like SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use derper::Server;
use derper::config::CommandLine;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("derp-map") {
        return derp_map_command(&args[2..]);
    }
    let cmd = CommandLine::try_parse_from(args).unwrap_or_else(|e| e.exit());
    if cmd.print_config() {
        // Nothing is bound and no secret is read: the merged settings, as a config file.
        return match cmd.render_config() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("derper: {e}");
                return ExitCode::from(2);
            }
        };
    }
    let json_logs = match cmd.settings() {
        Ok(s) => s.server.log_format == "json",
        Err(e) => {
            eprintln!("derper: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let config = match cmd.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("derper: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("derper: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded runtime every command runs on; on failure, says why and gives the exit
/// code.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("derper: starting runtime: {e}");
            ExitCode::FAILURE
        })
}

/// `derper derp-map check FILE|URL …`: exit 0 when every node passed, 1 when one failed, 2 on
/// bad usage or an unreadable map.
fn derp_map_command(rest: &[String]) -> ExitCode {
    use clap::Parser as _;
    if rest.first().map(String::as_str) != Some("check") {
        eprintln!("usage: derper derp-map check FILE|URL [--plain] [--no-stun] [--timeout 5s]");
        return ExitCode::from(2);
    }
    let args = derper::derpmap_check::CheckArgs::try_parse_from(
        std::iter::once("derper derp-map check".to_string()).chain(rest[1..].iter().cloned()),
    )
    .unwrap_or_else(|e| e.exit());
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(derper::derpmap_check::run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("derper derp-map check: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: derper::ServerConfig) -> anyhow::Result<()> {
    let prometheus = match config.metrics_addr {
        Some(_) => Some(
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .context("installing the metrics recorder")?,
        ),
        None => None,
    };
    let metrics_addr = config.metrics_addr;
    let fds = derper::raise_fd_limit();
    let handle = Server::spawn(config).await?;
    tracing::info!(
        addr = %handle.local_addr(),
        key = %handle.relay().public_key(),
        tls = handle.tls().is_some(),
        stun = ?handle.stun_addrs(),
        open_files = fds,
        "derper listening"
    );
    if let Some(http) = handle.http_addr() {
        tracing::info!(addr = %http, "plain HTTP listener (captive-portal checks, redirects)");
    }
    if let Some(quic) = handle.quic_addr() {
        tracing::info!(addr = %quic, "QUIC mesh listener (mesh peers only)");
    }
    if let Some(tls) = handle.tls() {
        if let Some(pin) = &tls.cert_pin {
            tracing::info!(cert_name = %pin, "self-signed certificate; pin it in the DERP map");
        }
        if let Some(node) = tls.derp_node_hint() {
            tracing::info!("DERP node for your map: {node}");
        }
    }

    // The admin listener outlives the drain (probes and scrapes keep working until exit).
    let admin_tasks = TaskTracker::new();
    let admin_cancel = CancellationToken::new();
    let drain_requested = Arc::new(tokio::sync::Notify::new());
    if let Some(addr) = metrics_addr {
        let ctx = derper::admin::AdminContext {
            prometheus,
            relay: handle.relay().clone(),
            drain: drain_requested.clone(),
        };
        let bound = derper::admin::spawn(addr, ctx, &admin_tasks, admin_cancel.clone())
            .await
            .with_context(|| format!("starting metrics listener on {addr}"))?;
        tracing::info!(addr = %bound, "metrics and admin listener (/metrics, /healthz, /readyz, POST /admin/drain)");
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let drain = loop {
        tokio::select! {
            _ = term.recv() => break true,
            _ = drain_requested.notified() => break true,
            _ = int.recv() => break false,
            _ = hup.recv() => reload(&handle).await,
        }
    };
    if drain {
        let drained = handle.drain();
        tokio::pin!(drained);
        loop {
            tokio::select! {
                all_left = &mut drained => {
                    if all_left {
                        tracing::info!("drain complete: every client left");
                    } else {
                        tracing::info!(remaining = handle.relay().regular_connection_count(), "drain grace over: closing the remaining connections");
                    }
                    break;
                }
                _ = term.recv() => {
                    tracing::info!("second signal: stopping now");
                    break;
                }
                _ = int.recv() => {
                    tracing::info!("interrupted: stopping now");
                    break;
                }
                _ = hup.recv() => reload(&handle).await,
            }
        }
    } else {
        tracing::info!("interrupted: telling clients we are restarting");
    }
    handle.shutdown().await;
    admin_cancel.cancel();
    admin_tasks.close();
    admin_tasks.wait().await;
    Ok(())
}

/// SIGHUP: the certificate and the rate config, each keeping its current state on error.
async fn reload(handle: &derper::ServerHandle) {
    // Manual certificates are re-read now; the server logs and counts the outcome
    // (`derp_cert_reload_total`). `letsencrypt` renews by itself and has nothing to reload.
    let _ = handle.reload_certificate().await;
    match handle.reload_rate_config() {
        Ok(Some(rc)) => tracing::info!(
            bytes_per_sec = rc.bytes_per_sec,
            burst_bytes = rc.burst_bytes,
            "rate config applied"
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "rate config reload failed; keeping the current limit")
        }
    }
}
