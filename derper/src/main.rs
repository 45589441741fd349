//! `derper`: parse flags and the config file, set up logging and metrics, run the server until
//! a signal.

use std::process::ExitCode;

use anyhow::Context as _;
use derper::Server;
use derper::config::CommandLine;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cmd = CommandLine::try_parse_from(std::env::args()).unwrap_or_else(|e| e.exit());
    if cmd.print_config() {
        // Nothing is bound and no secret is read: the merged settings, as a config file.
        return match cmd.render_config() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("derper: {e}");
                ExitCode::from(2)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match cmd.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("derper: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("derper: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("derper: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: derper::ServerConfig) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("starting metrics listener on {addr}"))?;
    }
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
    if let Some(tls) = handle.tls() {
        if let Some(pin) = &tls.cert_pin {
            tracing::info!(cert_name = %pin, "self-signed certificate; pin it in the DERP map");
        }
        if let Some(node) = tls.derp_node_hint() {
            tracing::info!("DERP node for your map: {node}");
        }
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // Manual certificates: re-read now (logged and counted by the server).
                let _ = handle.reload_certificate().await;
            }
        }
    }
    tracing::info!("shutting down: telling clients we are restarting");
    handle.shutdown().await;
    Ok(())
}
