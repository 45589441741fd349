//! `loadtest`: drive a DERP relay fleet with simulated peers and judge the result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use derp_proto::io::Transport;
use loadtest::burst::{BurstConfig, run_burst};
use loadtest::derpmap::DerpMap;
use loadtest::flood::{FloodConfig, run_flood};
use loadtest::idle::{IdleConfig, run_idle};
use loadtest::nat::NatMix;
use loadtest::pairs::{Faults, PairsConfig, run_pairs};
use loadtest::probe::{ProbeConfig, run_probe};
use loadtest::storm::{StormConfig, run_storm};
use loadtest::{DialOptions, Report, Thresholds, dial};

/// Load generator for DERP relay fleets (ours or Tailscale's).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N pairs of peers exchanging checked WireGuard-shaped packets, with optional NAT
    /// simulation and hole punching.
    Pairs(PairsArgs),
    /// Like `pairs`, but the two peers of each pair sit on different relays (needs meshing).
    Mesh(PairsArgs),
    /// Hold N idle connections; report server memory per connection with --server-pid.
    Idle(IdleArgs),
    /// M clients connect, then all reconnect at once, R rounds.
    Storm(StormArgs),
    /// Bursts of N SendPackets in one write to one receiver; loss per burst.
    Burst(BurstArgs),
    /// Clients streaming small frames without reading, against a canary pair; canary loss and
    /// latency.
    Flood(FloodArgs),
    /// Check every node of a DERP map: handshake, relay round trip, STUN, mesh.
    Probe(ProbeArgs),
    /// Merge shard JSON reports into one.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
struct DialArgs {
    /// Relay URL, e.g. http://127.0.0.1:3340/derp (repeat or comma-separate for several).
    #[arg(
        long = "url",
        required_unless_present = "derp_map",
        value_delimiter = ','
    )]
    urls: Vec<String>,
    /// Use every DERP node of this DERP map JSON instead of --url.
    #[arg(long, conflicts_with = "urls")]
    derp_map: Option<PathBuf>,
    /// With --derp-map: dial http:// instead of TLS (loopback fleets).
    #[arg(long, requires = "derp_map")]
    plain: bool,
    /// `upgrade` (native clients) or `websocket` (browser clients).
    #[arg(long, default_value = "upgrade")]
    transport: String,
    /// Certificate check: `webpki`, `insecure` or `sha256-raw:<hex>`.
    #[arg(long, default_value = "webpki")]
    verify: String,
    /// Shorthand for --verify insecure.
    #[arg(long)]
    insecure: bool,
    /// Local source addresses, round robin: `127.0.0.1-127.0.0.16,::1`.
    #[arg(long)]
    source_ips: Option<String>,
    /// Budget for one connection (dial, TLS, upgrade, handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// Write the JSON report here (`-`: to stdout, with the summary on stderr), and the latency
    /// histogram as SVG next to it (same name, `.svg`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Live progress on stderr.
    #[arg(long)]
    progress: bool,
    /// Fail when p99 latency exceeds this (e.g. 20ms).
    #[arg(long, value_parser = parse_duration)]
    max_p99: Option<Duration>,
    /// Fail when loss exceeds this ratio (0.01 or 1%).
    #[arg(long, value_parser = parse_ratio)]
    max_loss: Option<f64>,
    /// Fail when fewer peers than this ratio went direct.
    #[arg(long, value_parser = parse_ratio)]
    min_direct_ratio: Option<f64>,
    /// Fail when more peers than this had errors.
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
    /// Fail below this many received packets per second.
    #[arg(long)]
    min_pps: Option<f64>,
}

#[derive(Debug, Args)]
struct ShardArgs {
    /// Spread the run over this many worker processes on this machine (each under the
    /// 20 000 open-file cap).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// This process's shard (Kubernetes: $JOB_COMPLETION_INDEX).
    #[arg(long, env = "JOB_COMPLETION_INDEX", default_value_t = 0)]
    shard_index: u32,
    /// Total shards; each takes its slice of the pairs/connections.
    #[arg(long, env = "LOADTEST_SHARDS", default_value_t = 1)]
    shard_count: u32,
}

#[derive(Debug, Args)]
struct PairsArgs {
    #[command(flatten)]
    dial: DialArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// Pairs of peers (over all shards).
    #[arg(long, default_value_t = 10)]
    pairs: u64,
    /// Data packet size in bytes (WireGuard transport message size).
    #[arg(long, default_value_t = 1_280)]
    size: usize,
    /// Packets per second per sending peer.
    #[arg(long, default_value_t = 100.0, conflicts_with = "max")]
    rate: f64,
    /// Send as fast as the connection drains instead of --rate.
    #[arg(long)]
    max: bool,
    /// Length of the data phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Receivers keep counting at most this long after senders stop (less once every packet
    /// sent has arrived).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    /// Budget for setting up all pairs.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    setup_timeout: Duration,
    /// Simulated NATs, e.g. `cone=70,symmetric=30` (kinds: none, full-cone, restricted, cone =
    /// port-restricted, symmetric). Without it, all data is relayed and no STUN/disco is done.
    #[arg(long)]
    nat_mix: Option<NatMix>,
    /// STUN server for NAT discovery (default: one in-process on 127.0.0.1).
    #[arg(long)]
    stun: Option<SocketAddr>,
    /// Real NATs from network namespaces and nftables (Linux, root; cone and symmetric).
    #[arg(long)]
    netns: bool,
    /// Hole-punching budget per pair.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    punch_timeout: Duration,
    /// Only the first peer of each pair sends.
    #[arg(long)]
    one_way: bool,
    /// `mesh` only: share of pairs with both peers on one relay (0 to 1, or a percentage); the
    /// rest straddle two relays, and the report shows both classes side by side.
    #[arg(long, default_value = "0.5", value_parser = parse_ratio)]
    same_node_fraction: f64,
    /// Packets per flush at full speed.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// With --max: most packets each sender keeps in flight (closed loop, measures the peak the
    /// relay sustains); without it, --max overloads the relay (open loop).
    #[arg(long, requires = "max")]
    window: Option<u64>,
    /// Test hook: damage every Nth packet (`corrupt=N,drop=M,dup=K`).
    #[arg(long, hide = true)]
    inject: Option<String>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    dial: DialArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// Connections to hold (over all shards).
    #[arg(long, default_value_t = 1_000)]
    conns: u64,
    /// How long to hold them.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Local server process whose RSS to measure.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Budget for connecting all of them.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    setup_timeout: Duration,
}

#[derive(Debug, Args)]
struct StormArgs {
    #[command(flatten)]
    dial: DialArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// Clients (over all shards).
    #[arg(long, default_value_t = 1_000)]
    clients: u64,
    /// Reconnect rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Budget per round.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    round_timeout: Duration,
}

#[derive(Debug, Args)]
struct BurstArgs {
    #[command(flatten)]
    dial: DialArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// SendPacket frames per burst, written with one write().
    #[arg(long, default_value_t = 64)]
    burst: u64,
    /// Bursts to send.
    #[arg(long, default_value_t = 20)]
    bursts: u64,
    /// Packet size in bytes.
    #[arg(long, default_value_t = 1_200)]
    size: usize,
    /// Longest wait for a burst to arrive before sending the next.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    burst_timeout: Duration,
    /// Budget for connecting both peers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    setup_timeout: Duration,
}

#[derive(Debug, Args)]
struct FloodArgs {
    #[command(flatten)]
    dial: DialArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Flooding clients (half Pings, half 1-byte SendPackets to random keys; never reading).
    #[arg(long, default_value_t = 4)]
    flooders: u64,
    /// Frames per flooder write.
    #[arg(long, default_value_t = 512)]
    frames_per_write: usize,
    /// Canary packets per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Canary packet size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// How long the canary sends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Flooding before the canary starts.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    warmup: Duration,
    /// The canary receiver keeps counting at most this long after the canary stops.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    drain: Duration,
    /// Budget for connecting everyone.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    setup_timeout: Duration,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// DERP map JSON file.
    #[arg(long)]
    derp_map: PathBuf,
    /// Dial `http://` instead of TLS (loopback fleets).
    #[arg(long)]
    plain: bool,
    /// Skip STUN.
    #[arg(long)]
    no_stun: bool,
    /// Budget per step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// Shard reports.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command; `Ok(pass)` decides the exit code.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let (report, out) = match cli.command {
        Command::Pairs(a) | Command::Mesh(a) if a.shard.workers > 1 => {
            (loadtest_workers(&a.shard).await?, a.out)
        }
        Command::Idle(a) if a.shard.workers > 1 => (loadtest_workers(&a.shard).await?, a.out),
        Command::Storm(a) if a.shard.workers > 1 => (loadtest_workers(&a.shard).await?, a.out),
        Command::Pairs(a) => pairs(a, false).await?,
        Command::Mesh(a) => pairs(a, true).await?,
        Command::Idle(a) => {
            let (start, n) = slice(a.conns, &a.shard);
            let mut c = IdleConfig::new(dial_options(&a.dial)?);
            c.conns = n;
            c.first_conn = start;
            c.hold = a.hold;
            c.server_pid = a.server_pid;
            c.setup_timeout = a.setup_timeout;
            c.connect_concurrency = a.dial.connect_concurrency;
            (run_idle(&c).await?, a.out)
        }
        Command::Storm(a) => {
            let (start, n) = slice(a.clients, &a.shard);
            let mut c = StormConfig::new(dial_options(&a.dial)?);
            c.clients = n;
            c.first_client = start;
            c.rounds = a.rounds;
            c.round_timeout = a.round_timeout;
            (run_storm(&c).await?, a.out)
        }
        Command::Burst(a) => {
            let mut c = BurstConfig::new(dial_options(&a.dial)?);
            c.burst = a.burst;
            c.bursts = a.bursts;
            c.size = a.size;
            c.burst_timeout = a.burst_timeout;
            c.setup_timeout = a.setup_timeout;
            (run_burst(&c).await?, a.out)
        }
        Command::Flood(a) => {
            let mut c = FloodConfig::new(dial_options(&a.dial)?);
            c.flooders = a.flooders;
            c.frames_per_write = a.frames_per_write;
            c.rate = a.rate;
            c.size = a.size;
            c.duration = a.duration;
            c.warmup = a.warmup;
            c.drain = a.drain;
            c.setup_timeout = a.setup_timeout;
            (run_flood(&c).await?, a.out)
        }
        Command::Probe(a) => {
            let json = std::fs::read_to_string(&a.derp_map)
                .with_context(|| format!("read {}", a.derp_map.display()))?;
            let map = DerpMap::parse(&json)?;
            let mut c = ProbeConfig::default();
            c.timeout = a.timeout;
            c.plain = a.plain;
            c.no_stun = a.no_stun;
            (
                run_probe(&map, &c, &a.derp_map.display().to_string()).await,
                a.out,
            )
        }
        Command::Merge(a) => {
            let mut m = Report::default();
            for f in &a.files {
                let s =
                    std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
                let r: Report =
                    serde_json::from_str(&s).with_context(|| format!("parse {}", f.display()))?;
                m.merge(&r);
            }
            m.finalize();
            (m, a.out)
        }
    };
    finish(report, &out)
}

fn finish(mut report: Report, out: &OutputArgs) -> anyhow::Result<bool> {
    let mut th = Thresholds::default();
    th.max_p99 = out.max_p99;
    th.max_loss = out.max_loss;
    th.min_direct_ratio = out.min_direct_ratio;
    th.max_errors = out.max_errors;
    th.min_pps = out.min_pps;
    report.judge(&th);
    let json = serde_json::to_string_pretty(&report)?;
    match &out.json {
        // `--json -`: the report is the only thing on stdout (Kubernetes pod logs), the
        // summary goes to stderr.
        Some(path) if path.as_os_str() == "-" => {
            println!("{json}");
            eprint!("{}", report.summary());
        }
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
            if let Some(svg) = loadtest::svg::latency_svg(&report) {
                let svg_path = path.with_extension("svg");
                std::fs::write(&svg_path, svg)
                    .with_context(|| format!("write {}", svg_path.display()))?;
            }
            print!("{}", report.summary());
        }
        None => print!("{}", report.summary()),
    }
    Ok(report.verdict.pass)
}

async fn pairs(a: PairsArgs, cross: bool) -> anyhow::Result<(Report, OutputArgs)> {
    let (start, n) = slice(a.pairs, &a.shard);
    let mut c = PairsConfig::new(dial_options(&a.dial)?);
    c.pairs = n;
    c.first_pair = start;
    c.size = a.size;
    c.rate = (!a.max).then_some(a.rate);
    c.duration = a.duration;
    c.drain = a.drain;
    c.setup_timeout = a.setup_timeout;
    c.connect_concurrency = a.dial.connect_concurrency;
    c.cross_relay = cross;
    if !(0.0..=1.0).contains(&a.same_node_fraction) {
        bail!(
            "--same-node-fraction {} is not between 0 and 1",
            a.same_node_fraction
        );
    }
    c.same_node_fraction = a.same_node_fraction;
    c.one_way = a.one_way;
    c.nat_mix = a.nat_mix;
    c.stun = a.stun;
    c.netns = a.netns;
    c.punch_timeout = a.punch_timeout;
    c.batch = a.batch;
    c.window = a.window;
    c.progress = a.out.progress;
    if let Some(spec) = &a.inject {
        c.faults = parse_faults(spec)?;
    }
    Ok((run_pairs(&c).await?, a.out))
}

/// This shard's `(first index, count)` of `total` items.
fn slice(total: u64, s: &ShardArgs) -> (u64, u64) {
    let n = u64::from(s.shard_count.max(1));
    let i = u64::from(s.shard_index).min(n - 1);
    let start = total * i / n;
    (start, total * (i + 1) / n - start)
}

/// Re-runs this command line in `workers` child processes, each a sub-shard, and merges their
/// JSON reports. Children that outlive the run's own deadlines are killed.
async fn loadtest_workers(shard: &ShardArgs) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = std::env::temp_dir().join(format!("loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let args = strip_args(std::env::args().skip(1).collect());
    let w = shard.workers;
    let mut children = Vec::new();
    for k in 0..w {
        let path = dir.join(format!("shard-{k}.json"));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&args)
            .arg("--workers=1")
            .arg(format!("--shard-index={}", shard.shard_index * w + k))
            .arg(format!("--shard-count={}", shard.shard_count.max(1) * w))
            .arg(format!("--json={}", path.display()))
            // Children judge nothing: thresholds apply to the merged report.
            .arg("--max-errors=18446744073709551615")
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("LOADTEST_SHARDS")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        children.push((path, cmd.spawn().context("spawn worker")?));
    }
    let mut merged = Report::default();
    for (k, (path, mut child)) in children.into_iter().enumerate() {
        let status = child.wait().await?;
        match std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str::<Report>(&s).ok())
        {
            Some(r) => merged.merge(&r),
            None => {
                merged.push_error(
                    format!("worker {k}"),
                    "worker",
                    format!("no report ({status})"),
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    merged.finalize();
    Ok(merged)
}

/// Drops the options that the parent sets per worker.
fn strip_args(args: Vec<String>) -> Vec<String> {
    const PER_WORKER: [&str; 6] = [
        "--workers",
        "--shard-index",
        "--shard-count",
        "--json",
        "--max-errors",
        "--progress",
    ];
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if let Some(flag) = PER_WORKER
            .iter()
            .find(|f| a == **f || a.starts_with(&format!("{f}=")))
        {
            skip_next = a == *flag && *flag != "--progress";
            continue;
        }
        out.push(a);
    }
    out
}

fn dial_options(a: &DialArgs) -> anyhow::Result<DialOptions> {
    let mut d = match &a.derp_map {
        Some(path) => {
            let json = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            DialOptions::from_derp_map(&DerpMap::parse(&json)?, a.plain)?
        }
        None => {
            let mut d = DialOptions::new(a.urls.first().cloned().unwrap_or_default());
            d.urls = a.urls.clone();
            d
        }
    };
    d.transport = match a.transport.as_str() {
        "upgrade" => Transport::Upgrade,
        "websocket" | "ws" => Transport::WebSocket,
        t => bail!("--transport {t:?}: expected upgrade or websocket"),
    };
    d.verify = dial::parse_verify(if a.insecure { "insecure" } else { &a.verify })?;
    d.connect_timeout = a.connect_timeout;
    if let Some(s) = &a.source_ips {
        d.source_ips = dial::parse_source_ips(s)?;
    }
    Ok(d)
}

fn parse_faults(spec: &str) -> anyhow::Result<Faults> {
    let mut f = Faults::default();
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').context("expected kind=N")?;
        let n: u64 = v.parse()?;
        match k {
            "corrupt" => f.corrupt_every = Some(n),
            "drop" => f.drop_every = Some(n),
            "dup" => f.duplicate_every = Some(n),
            _ => bail!("unknown fault {k:?}"),
        }
    }
    Ok(f)
}

/// `10s`, `500ms`, `2m`, `1h`, `250us`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" => v * 60.0,
        "h" => v * 3_600.0,
        _ => return Err(format!("bad duration unit in {s:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// `0.01` or `1%`.
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("bad ratio {s:?}"))
}
