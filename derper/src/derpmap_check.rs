//! `derper derp-map check FILE|URL`: checks a DERP map before a rollout. Every node is dialled
//! as a client would (TLS verified against its `CertName` pin or `HostName`), a packet is
//! relayed between two clients on it, its STUN port is asked for our address, and in a region
//! of several nodes a packet crosses from each node to the next (mesh). The work is
//! `loadtest probe`'s; this wraps it for operators with a per-node report and an exit code.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Limited};

/// `derper derp-map check`.
#[derive(Debug, Parser)]
#[command(
    name = "derper derp-map check",
    about = "Check every node of a DERP map: DERP login, relay round trip, STUN, mesh"
)]
pub struct CheckArgs {
    /// A DERP map JSON file, or an http(s):// URL serving one (a relay's /derpmap).
    pub source: String,
    /// Dial nodes over plain HTTP instead of TLS (loopback test fleets).
    #[arg(long)]
    pub plain: bool,
    /// Skip the STUN checks.
    #[arg(long)]
    pub no_stun: bool,
    /// Budget per step (connect, round trip, STUN), Go duration.
    #[arg(long, default_value = "5s")]
    pub timeout: crate::config::GoDuration,
}

/// Largest map read from a file or URL.
const MAX_MAP: usize = 4 << 20;

/// Runs the check; `Ok(true)` when every node passed.
pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let text = load(&args.source).await?;
    let map = loadtest::derpmap::DerpMap::parse(&text)
        .with_context(|| format!("{}: not a DERP map", args.source))?;
    let mut cfg = loadtest::probe::ProbeConfig::default();
    cfg.timeout = args.timeout.0;
    cfg.plain = args.plain;
    cfg.no_stun = args.no_stun;
    let report = loadtest::probe::run_probe(&map, &cfg, &args.source).await;
    let nodes: Vec<loadtest::probe::NodeResult> = report
        .extra
        .get("probe")
        .cloned()
        .map(serde_json::from_value)
        .transpose()?
        .unwrap_or_default();
    if nodes.is_empty() {
        anyhow::bail!("{}: the map has no nodes", args.source);
    }
    let ms =
        |us: Option<u64>| us.map_or("-".to_string(), |u| format!("{:.1} ms", u as f64 / 1000.0));
    let mut ok = true;
    for n in &nodes {
        let verdict = if n.failures.is_empty() { "ok" } else { "FAIL" };
        ok &= n.failures.is_empty();
        println!(
            "{verdict:4} region {} node {} {}: connect {}, relay rtt {}, stun {}{}",
            n.region,
            n.node,
            n.url,
            ms(n.connect_us),
            ms(n.rtt_us),
            ms(n.stun_us),
            match n.mesh_ok {
                Some(true) => ", mesh ok",
                Some(false) => ", mesh FAILED",
                None => "",
            }
        );
        for f in &n.failures {
            println!("       {f}");
        }
    }
    let failed = nodes.iter().filter(|n| !n.failures.is_empty()).count();
    println!("{} nodes checked, {} failed", nodes.len(), failed);
    Ok(ok)
}

/// Reads the map from a file or fetches it from a URL (system roots for https).
async fn load(source: &str) -> anyhow::Result<String> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        let bytes = std::fs::read(source).with_context(|| format!("reading {source}"))?;
        anyhow::ensure!(bytes.len() <= MAX_MAP, "{source}: larger than 4 MiB");
        return String::from_utf8(bytes).with_context(|| format!("{source}: not UTF-8"));
    }
    let uri: http::Uri = source
        .parse()
        .with_context(|| format!("{source}: not a URL"))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .context("loading system root certificates")?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(connector);
    let fetch = async {
        let res = client.get(uri).await?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_MAP)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_bytes();
        anyhow::ensure!(status.is_success(), "answered {status}");
        Ok::<_, anyhow::Error>(String::from_utf8(body.to_vec())?)
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 10 s"))?
        .with_context(|| format!("fetching {source}"))
}
