//! The `pairs` scenario: N pairs of simulated peers exchanging WireGuard-shaped packets.
//!
//! A run has three phases, each with its own deadline so the whole never outlives
//! `setup_timeout + duration + drain + a grace second`:
//!
//! 1. **Setup**, per pair: both peers dial and handshake (in the `mesh` scenario on the relays
//!    [`placement`] picks, then exchanging route probes until each has heard from the other, so
//!    the data phase measures the mesh rather than how fast a relay learns of a client on
//!    another); with a NAT mix, each also learns its mapped address by STUN through its
//!    simulated NAT, sends CallMeMaybe over DERP and disco pings over UDP, and settles on a
//!    direct path (pong received) or the relay.
//! 2. **Data**: from a common start instant, every peer sends to its partner (rate-limited or as
//!    fast as the connection drains) until the common end, over its chosen path.
//! 3. **Drain**: receivers keep counting for a short while so packets in flight are not lost.
//!
//! A pair that fails at setup is reported and left out; a peer that fails during data is
//! reported and the rest carry on. The `mesh` scenario also reports each class of pair
//! ([`PairClass`]: same node, cross node) on its own in [`Report::classes`].

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use derp_proto::io::{Client, ClientReader, ClientWriter};
use derp_proto::{NodePublicKey, NodeSecretKey, ServerToClient};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dial::DialOptions;
use crate::disco::{DiscoKey, DiscoMessage, SharedBox};
use crate::nat::{self, NatKind, NatMix, NatSocket, StunServer};
use crate::payload::{self, DecodePacketError, PacketCodec};
use crate::report::{ClassReport, Report, Traffic};
use crate::stats::{Histogram, Progress, RecvTracker};

/// Packets queued before one flush when sending as fast as possible: enough to amortise the
/// write syscall, few enough that the first packet's latency stays small.
const DEFAULT_BATCH: usize = 32;

/// Options of a `pairs` run.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PairsConfig {
    /// How to reach the relay(s).
    #[serde(skip)]
    pub dial: DialOptions,
    /// Number of pairs.
    pub pairs: u64,
    /// Index of this shard's first pair (worker processes and Job pods use disjoint ranges).
    pub first_pair: u64,
    /// Size of each data packet in bytes.
    pub size: usize,
    /// Packets per second per sending peer; `None` sends as fast as the connection drains.
    pub rate: Option<f64>,
    /// Length of the data phase.
    pub duration: Duration,
    /// Longest time receivers keep counting after senders stop; the drain ends earlier once
    /// every packet sent has arrived.
    pub drain: Duration,
    /// Budget for the whole setup phase (dial, handshake, hole punching of every pair).
    pub setup_timeout: Duration,
    /// Pairs set up at once.
    pub connect_concurrency: usize,
    /// The `mesh` scenario: pairs are placed by [`placement`], some with both peers on one
    /// relay and the rest across two, and the report gives both classes side by side.
    pub cross_relay: bool,
    /// With `cross_relay`: the share of pairs (0 to 1) with both peers on one relay; the rest
    /// are split across two.
    pub same_node_fraction: f64,
    /// Only the first peer of each pair sends (the second only receives).
    pub one_way: bool,
    /// NAT behaviours and their weights; `None` skips STUN and disco (relay only).
    #[serde(serialize_with = "ser_mix")]
    pub nat_mix: Option<NatMix>,
    /// STUN server for mapped-address discovery; `None` starts one in-process.
    pub stun: Option<SocketAddr>,
    /// Real NATs: network namespaces with nftables masquerade (Linux, root; `cone` and
    /// `symmetric` only) instead of the userspace simulator.
    pub netns: bool,
    /// How long hole punching may take per pair before falling back to the relay.
    pub punch_timeout: Duration,
    /// Packets per flush when sending at full speed.
    pub batch: usize,
    /// At full speed, most packets a sender keeps in flight (sent, not yet received by its
    /// partner). `None` is open loop: the relay is overloaded and drops, which measures its
    /// overload behaviour; a window measures the peak it sustains with bounded queueing.
    pub window: Option<u64>,
    /// Print live progress to stderr once a second.
    pub progress: bool,
    /// Deliberate damage for testing the integrity checks.
    pub faults: Faults,
}

fn ser_mix<S: serde::Serializer>(m: &Option<NatMix>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.as_ref().map(|m| format!("{m:?}")).unwrap_or_default())
}

/// Sender-side damage, so tests can prove the receiver notices it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[non_exhaustive]
pub struct Faults {
    /// Flip a byte in every Nth data packet after sealing.
    pub corrupt_every: Option<u64>,
    /// Skip sending every Nth data packet (counted as sent).
    pub drop_every: Option<u64>,
    /// Send every Nth data packet twice (counted once).
    pub duplicate_every: Option<u64>,
}

impl PairsConfig {
    /// Defaults: 1 pair, 1 280-byte packets at 100 packets/s for 5 s, relay only.
    pub fn new(dial: DialOptions) -> Self {
        Self {
            dial,
            pairs: 1,
            first_pair: 0,
            size: 1_280,
            rate: Some(100.0),
            duration: Duration::from_secs(5),
            drain: Duration::from_secs(2),
            setup_timeout: Duration::from_secs(30),
            connect_concurrency: 256,
            cross_relay: false,
            same_node_fraction: 0.5,
            one_way: false,
            nat_mix: None,
            stun: None,
            netns: false,
            punch_timeout: Duration::from_secs(3),
            batch: DEFAULT_BATCH,
            window: None,
            progress: false,
            faults: Faults::default(),
        }
    }
}

/// Where a pair's two peers sit relative to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PairClass {
    /// Both on one relay: the packet never leaves it.
    SameNode,
    /// On two relays of a region: every packet crosses a mesh link.
    CrossNode,
}

impl PairClass {
    /// The class's key in [`Report::classes`].
    pub fn name(self) -> &'static str {
        match self {
            Self::SameNode => "same_node",
            Self::CrossNode => "cross_node",
        }
    }
}

/// A pair's class and the relay (index into the URL list) of each of its two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Placement {
    /// Same node or across nodes.
    pub class: PairClass,
    /// Relay index of the first and the second peer.
    pub relays: [usize; 2],
}

/// Places pair number `pair` on `relays` relays.
///
/// Without `cross_relay` (the `pairs` scenario) pair `k` sits on relay `k mod relays`, as
/// always. With it (the `mesh` scenario), pair `k` is same-node when `⌊(k+1)·f⌋ > ⌊k·f⌋` for
/// `f = same_node_fraction`, so any run of consecutive pairs, and so every shard, holds the
/// fraction to within one pair and the two classes interleave. Each class then goes round the
/// relays by its own count: the `j`th same-node pair on relay `j mod relays`, the `j`th
/// cross-node pair on `j` and `j + 1` (mod `relays`). Every relay carries an equal share of each
/// class (to within one pair), so the classes meet equal load.
pub fn placement(
    pair: u64,
    relays: usize,
    cross_relay: bool,
    same_node_fraction: f64,
) -> Placement {
    let n = relays.max(1) as u64;
    if !cross_relay {
        let r = (pair % n) as usize;
        return Placement {
            class: PairClass::SameNode,
            relays: [r, r],
        };
    }
    let f = same_node_fraction.clamp(0.0, 1.0);
    // Same-node pairs among 0..k; monotone in k, so the per-pair test below telescopes to an
    // exact count over any range.
    let same_before = |k: u64| (k as f64 * f).floor() as u64;
    let before = same_before(pair);
    if same_before(pair + 1) > before {
        let r = (before % n) as usize;
        Placement {
            class: PairClass::SameNode,
            relays: [r, r],
        }
    } else {
        let j = pair - before;
        Placement {
            class: PairClass::CrossNode,
            relays: [(j % n) as usize, ((j + 1) % n) as usize],
        }
    }
}

/// A peer ready for the data phase.
struct ReadyPeer {
    name: String,
    class: PairClass,
    client: Client,
    partner: NodePublicKey,
    codec: PacketCodec,
    nat: Option<(NatKind, NatSocket)>,
    /// Confirmed direct path to the partner.
    direct: Option<SocketAddr>,
    initiator: bool,
    /// The direction this peer sends on (its partner's receiver counts into it).
    tx_flow: Arc<Flow>,
    /// The direction this peer receives on.
    rx_flow: Arc<Flow>,
}

/// Delivery count of one direction, shared by its sender and receiver (same process), so a
/// windowed sender knows how many of its packets are still in flight.
#[derive(Debug, Default)]
struct Flow {
    /// Data packets the sender has written (or deliberately skipped), owned by the sender.
    sent: AtomicU64,
    /// Data packets that passed their checks, counted by the receiver, owned by the receiver.
    received: AtomicU64,
    /// Highest sequence number the receiver has seen, owned by the receiver. A relay delivers
    /// a flow in order, so every lower number has arrived or was dropped: the windowed sender
    /// counts in flight from here, not from `received`, or each drop would shrink its window
    /// for good (a lossy relay would then look faster per packet and slower overall).
    highest: AtomicU64,
    notify: tokio::sync::Notify,
}

impl Flow {
    fn complete(&self) -> bool {
        self.received.load(Ordering::Relaxed) >= self.sent.load(Ordering::Relaxed)
    }
}

/// How long a windowed sender waits for deliveries before assuming the in-flight packets were
/// dropped and sending anyway.
const WINDOW_WAIT: Duration = Duration::from_millis(5);

/// Runs the scenario and returns a finalized (not yet judged) report.
pub async fn run_pairs(cfg: &PairsConfig) -> anyhow::Result<Report> {
    if cfg.dial.urls.is_empty() {
        bail!("no relay URL");
    }
    if cfg.size > derp_proto::consts::MAX_PACKET_SIZE {
        bail!("packet size {} exceeds 64 KiB", cfg.size);
    }
    if cfg.cross_relay && cfg.dial.urls.len() < 2 {
        bail!(
            "the mesh scenario needs at least two relays (got {})",
            cfg.dial.urls.len()
        );
    }
    let scenario = if cfg.cross_relay { "mesh" } else { "pairs" };
    let mut report = Report::new(scenario, &cfg.dial.urls.join(","));
    report.config = serde_json::to_value(cfg)?;
    report.peers.requested = 2 * cfg.pairs;
    let epoch = Instant::now();
    let progress = Arc::new(Progress::default());
    let _printer = cfg
        .progress
        .then(|| crate::spawn_progress(Arc::clone(&progress), epoch));

    // Real NATs, when asked for; dropped (namespaces deleted) when the run ends.
    let lab = match (cfg.netns, &cfg.nat_mix) {
        (true, Some(_)) => Some(Arc::new(tokio::sync::Mutex::new(new_lab().await?))),
        (true, None) => bail!("--netns needs --nat-mix"),
        _ => None,
    };
    // An in-process STUN server when a NAT mix needs one and none was given.
    let local_stun = match (&cfg.nat_mix, cfg.stun, &lab) {
        (Some(_), None, None) => Some(StunServer::spawn([127, 0, 0, 1].into()).await?),
        (Some(_), None, Some(lab)) => Some(lab_stun(lab).await?),
        _ => None,
    };
    let stun_addr = cfg.stun.or(local_stun.as_ref().map(|s| s.addr));

    // Phase 1: setup.
    let ready = setup_all(cfg, stun_addr, lab.as_ref(), &progress, &mut report).await;
    report.peers.connected = progress.connected.load(Ordering::Relaxed);

    // Phase 2 and 3: data and drain, from a common start. Counters live outside the tasks,
    // so a task aborted at the hard deadline still has its packets counted.
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + cfg.duration;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut receivers = Vec::with_capacity(ready.len());
    let mut flows = Vec::with_capacity(ready.len());
    // Per class (mesh scenario only): pairs, then each peer's sending flow and receiver.
    let mut classes: BTreeMap<PairClass, ClassTally> = BTreeMap::new();
    for p in ready {
        report.paths.direct += u64::from(p.direct.is_some());
        report.paths.relayed += u64::from(p.direct.is_none());
        if let Some((kind, _)) = &p.nat {
            let e = report.nat.entry(kind.name().to_owned()).or_default();
            e.peers += 1;
            e.direct += u64::from(p.direct.is_some());
        }
        flows.push(Arc::clone(&p.tx_flow));
        let rx = Arc::new(Mutex::new(Receiver::new(p.codec.clone())));
        receivers.push(Arc::clone(&rx));
        if cfg.cross_relay {
            let c = classes.entry(p.class).or_default();
            c.pairs += u64::from(p.initiator);
            c.flows.push(Arc::clone(&p.tx_flow));
            c.receivers.push(Arc::clone(&rx));
        }
        spawn_peer(&mut tasks, cfg, p, rx, epoch, start, end, &stop, &progress);
    }
    // Drain: until every packet sent has arrived, or --drain after the end, whichever is first.
    tokio::time::sleep_until(end).await;
    let drain_limit = end + cfg.drain;
    while Instant::now() < drain_limit && !flows.iter().all(|f| f.complete()) {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    stop.cancel();
    let hard = Instant::now() + JOIN_GRACE;
    loop {
        match tokio::time::timeout_at(hard, tasks.join_next()).await {
            Ok(Some(Ok(Some((peer, stage, e))))) => report.push_error(peer, stage, e),
            Ok(Some(Ok(None))) => {}
            Ok(Some(Err(e))) => report.push_error("task", "data", e),
            Ok(None) => break,
            Err(_) => {
                // Slow to notice the stop (an overloaded machine), not failed: their counts live
                // outside the tasks and are kept, so this is noted, not judged.
                let left = tasks.len() as u64;
                tasks.abort_all();
                report.extra.insert("aborted_tasks".into(), left.into());
                break;
            }
        }
    }
    tally(
        &flows,
        &receivers,
        &mut report.traffic,
        &mut report.latency_us.histogram,
    );
    if receivers.len() <= crate::report::MAX_FLOWS_RECORDED {
        report.extra.insert(
            crate::report::FLOW_RECEIVED_KEY.into(),
            flow_received(&receivers).into(),
        );
    }
    for (class, c) in &classes {
        let mut figures = ClassReport {
            pairs: c.pairs,
            ..ClassReport::default()
        };
        tally(
            &c.flows,
            &c.receivers,
            &mut figures.traffic,
            &mut figures.latency_us.histogram,
        );
        report.classes.insert(class.name().to_owned(), figures);
    }
    if let Some(cross) = report.classes.get(PairClass::CrossNode.name())
        && cross.traffic.sent > 0
        && cross.traffic.received == 0
    {
        report.push_error(
            "all pairs",
            "mesh",
            "no packet crossed between relays: are they meshed (same --mesh-psk-file, --mesh-with)?",
        );
    }
    report.measured_secs = cfg.duration.as_secs_f64();
    report.peers.failed = report
        .peers
        .requested
        .saturating_sub(report.peers.connected)
        .max(report.errors_total.min(report.peers.requested));
    report.finalize();
    Ok(report)
}

/// One class's share of the data phase: its pairs, and its peers' flows and receivers.
#[derive(Default)]
struct ClassTally {
    pairs: u64,
    flows: Vec<Arc<Flow>>,
    receivers: Vec<Arc<Mutex<Receiver>>>,
}

/// Adds the flows' sent counts and the receivers' counts and latencies into `t` and `hist`.
fn tally(
    flows: &[Arc<Flow>],
    receivers: &[Arc<Mutex<Receiver>>],
    t: &mut Traffic,
    hist: &mut Histogram,
) {
    for f in flows {
        t.sent += f.sent.load(Ordering::Relaxed);
    }
    for rx in receivers {
        // A poisoned lock means a task panicked mid-update; its counts are still the best data.
        let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        t.received += rx.tracker.unique;
        t.reordered += rx.tracker.reordered;
        t.duplicated += rx.tracker.duplicated;
        t.corrupted += rx.corrupted;
        t.foreign += rx.foreign;
        t.handshakes += rx.handshakes;
        t.bytes_received += rx.bytes;
        hist.merge(&rx.latency_us);
    }
}

/// Packets each receiver (one per flow) counted, for the report's fairness figures.
fn flow_received(receivers: &[Arc<Mutex<Receiver>>]) -> Vec<u64> {
    receivers
        .iter()
        .map(|rx| {
            rx.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .tracker
                .unique
        })
        .collect()
}

/// Where a peer's NAT comes from: the userspace simulator, or real namespaces.
type SharedLab = Arc<tokio::sync::Mutex<Lab>>;

#[cfg(target_os = "linux")]
use crate::netns::Lab;

/// Stand-in so non-Linux builds compile; `--netns` fails there.
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub struct Lab;

#[cfg(target_os = "linux")]
async fn new_lab() -> anyhow::Result<Lab> {
    Lab::new().await.context("--netns (needs root, ip and nft)")
}

#[cfg(not(target_os = "linux"))]
async fn new_lab() -> anyhow::Result<Lab> {
    bail!("--netns needs Linux")
}

#[cfg(target_os = "linux")]
async fn lab_stun(lab: &SharedLab) -> anyhow::Result<StunServer> {
    let sock = lab
        .lock()
        .await
        .world_udp(crate::netns::stun_addr(3_478))
        .await?;
    StunServer::from_socket(sock)
}

#[cfg(not(target_os = "linux"))]
async fn lab_stun(_: &SharedLab) -> anyhow::Result<StunServer> {
    bail!("--netns needs Linux")
}

async fn nat_for(lab: Option<&SharedLab>, kind: NatKind, i: u64) -> anyhow::Result<NatSocket> {
    match lab {
        #[cfg(target_os = "linux")]
        Some(lab) => lab.lock().await.peer(i as u32, kind).await,
        #[cfg(not(target_os = "linux"))]
        Some(_) => bail!("--netns needs Linux"),
        None => nat::spawn(kind, nat::public_ip(i)).await,
    }
}

async fn setup_all(
    cfg: &PairsConfig,
    stun: Option<SocketAddr>,
    lab: Option<&SharedLab>,
    progress: &Arc<Progress>,
    report: &mut Report,
) -> Vec<ReadyPeer> {
    let deadline = Instant::now() + cfg.setup_timeout;
    let sem = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for k in 0..cfg.pairs {
        let pair = cfg.first_pair + k;
        let cfg = cfg.clone();
        let sem = Arc::clone(&sem);
        let progress = Arc::clone(progress);
        let lab = lab.cloned();
        set.spawn(async move {
            // The semaphore is never closed, so acquire only fails if it were; then go anyway.
            let _permit = sem.acquire_owned().await.ok();
            setup_pair(&cfg, pair, stun, lab.as_ref(), &progress).await
        });
    }
    let mut ready = Vec::with_capacity(2 * cfg.pairs as usize);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(Ok(peers)))) => ready.extend(peers),
            Ok(Some(Ok(Err(errs)))) => {
                for (peer, stage, e) in errs {
                    Progress::add(&progress.errors, 1);
                    report.push_error(peer, stage, format!("{e:#}"));
                }
            }
            Ok(Some(Err(e))) => report.push_error("setup task", "connect", e),
            Ok(None) => break,
            Err(_) => {
                let left = set.len();
                set.abort_all();
                for _ in 0..left {
                    report.push_error(
                        "pair",
                        "setup",
                        format!("setup not finished within {:?}", cfg.setup_timeout),
                    );
                }
                break;
            }
        }
    }
    ready
}

type SetupErrors = Vec<(String, &'static str, anyhow::Error)>;

async fn setup_pair(
    cfg: &PairsConfig,
    pair: u64,
    stun: Option<SocketAddr>,
    lab: Option<&SharedLab>,
    progress: &Progress,
) -> Result<[ReadyPeer; 2], SetupErrors> {
    let names = [format!("pair {pair} a"), format!("pair {pair} b")];
    let keys = [NodeSecretKey::generate(), NodeSecretKey::generate()];
    let pubs = [keys[0].public_key(), keys[1].public_key()];
    let place = placement(
        pair,
        cfg.dial.urls.len(),
        cfg.cross_relay,
        cfg.same_node_fraction,
    );
    let (ca, cb) = tokio::join!(
        cfg.dial.connect(keys[0].clone(), 2 * pair, place.relays[0]),
        cfg.dial
            .connect(keys[1].clone(), 2 * pair + 1, place.relays[1]),
    );
    let mut errs: SetupErrors = Vec::new();
    for r in [&ca, &cb] {
        if r.is_ok() {
            Progress::add(&progress.connected, 1);
        }
    }
    let (mut ca, mut cb) = match (ca, cb) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            if let Err(e) = a {
                errs.push((names[0].clone(), "connect", e));
            }
            if let Err(e) = b {
                errs.push((names[1].clone(), "connect", e));
            }
            return Err(errs);
        }
    };
    if cfg.cross_relay {
        // Measure the mesh, not how fast a node learns of a new client on another: both
        // classes start the data phase with a route that has carried a packet each way.
        let seen = confirm_route(&mut ca, &mut cb, ROUTE_TIMEOUT).await;
        match seen {
            Ok([true, true]) => {}
            Ok(seen) => {
                for (i, ok) in seen.into_iter().enumerate() {
                    if !ok {
                        errs.push((
                            names[i].clone(),
                            "route",
                            anyhow::anyhow!(
                                "nothing from its partner ({}) within {ROUTE_TIMEOUT:?}: are \
                                 the relays meshed (same --mesh-psk-file, --mesh-with)?",
                                place.class.name()
                            ),
                        ));
                    }
                }
                return Err(errs);
            }
            Err((i, e)) => {
                errs.push((names[i].clone(), "route", e));
                return Err(errs);
            }
        }
    }
    let key: [u8; 32] = rand::random();
    let codec = PacketCodec::new(pair as u32, key);
    let mut nats = [None, None];
    let mut direct = [None, None];
    if let (Some(mix), Some(stun)) = (&cfg.nat_mix, stun) {
        let kinds = [mix.pick(2 * pair), mix.pick(2 * pair + 1)];
        let (na, nb) = tokio::join!(
            nat_for(lab, kinds[0], 2 * pair),
            nat_for(lab, kinds[1], 2 * pair + 1),
        );
        let (mut na, mut nb) = match (na, nb) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                for (i, r) in [a.err(), b.err()].into_iter().enumerate() {
                    if let Some(e) = r {
                        errs.push((names[i].clone(), "nat", e));
                    }
                }
                return Err(errs);
            }
        };
        let disco = [DiscoKey::generate(), DiscoKey::generate()];
        let boxes = [
            disco[0].shared(&disco[1].public()),
            disco[1].shared(&disco[0].public()),
        ];
        let mut sig_a = DerpSignal {
            client: &mut ca,
            partner: pubs[1],
        };
        let mut sig_b = DerpSignal {
            client: &mut cb,
            partner: pubs[0],
        };
        let (da, db) = tokio::join!(
            punch(
                &mut sig_a,
                &mut na,
                pubs[0],
                &boxes[0],
                stun,
                cfg.punch_timeout
            ),
            punch(
                &mut sig_b,
                &mut nb,
                pubs[1],
                &boxes[1],
                stun,
                cfg.punch_timeout
            ),
        );
        for (i, r) in [da, db].into_iter().enumerate() {
            match r {
                Ok(d) => direct[i] = d,
                Err(e) => errs.push((names[i].clone(), "punch", e)),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        nats = [Some((kinds[0], na)), Some((kinds[1], nb))];
    }
    let [na, nb] = nats;
    let flows = [Arc::new(Flow::default()), Arc::new(Flow::default())];
    let [na_name, nb_name] = names;
    Ok([
        ReadyPeer {
            name: na_name,
            class: place.class,
            client: ca,
            partner: pubs[1],
            codec: codec.clone(),
            nat: na,
            direct: direct[0],
            initiator: true,
            tx_flow: Arc::clone(&flows[0]),
            rx_flow: Arc::clone(&flows[1]),
        },
        ReadyPeer {
            name: nb_name,
            class: place.class,
            client: cb,
            partner: pubs[0],
            codec,
            nat: nb,
            direct: direct[1],
            initiator: false,
            tx_flow: Arc::clone(&flows[1]),
            rx_flow: Arc::clone(&flows[0]),
        },
    ])
}

/// How often a route probe is resent while the partner's relay may not yet know of us.
const ROUTE_PROBE_EVERY: Duration = Duration::from_millis(50);
/// Longest a pair waits for a route probe each way before it is reported at stage `route`.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);

/// A route probe: disco-shaped (magic and a header of zeros) so that a late copy is skipped by
/// the data receiver and fails to open in hole punching.
fn route_probe() -> Vec<u8> {
    let mut p = vec![0u8; derp_proto::disco::HEADER_LEN + 5];
    p[..derp_proto::disco::MAGIC.len()].copy_from_slice(&derp_proto::disco::MAGIC);
    let n = p.len();
    p[n - 5..].copy_from_slice(b"route");
    p
}

/// Sends route probes between `a` and `b` both ways until each has received one from the
/// other, or `timeout`; returns which of `[a, b]` heard from its partner, or the side that
/// failed and why.
async fn confirm_route(
    a: &mut Client,
    b: &mut Client,
    timeout: Duration,
) -> Result<[bool; 2], (usize, anyhow::Error)> {
    let probe = route_probe();
    let (ka, kb) = (a.public_key(), b.public_key());
    let is_probe = |m: ServerToClient, from: NodePublicKey| matches!(m, ServerToClient::RecvPacket { src, packet } if src == from && packet == probe);
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(ROUTE_PROBE_EVERY);
    let side = |i: usize| move |e: derp_proto::io::ClientError| (i, anyhow::Error::from(e));
    let mut seen = [false, false];
    while seen != [true, true] {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => {
                if !seen[1] {
                    a.send_packet(&kb, &probe).await.map_err(side(0))?;
                }
                if !seen[0] {
                    b.send_packet(&ka, &probe).await.map_err(side(1))?;
                }
            }
            m = a.recv() => seen[0] |= is_probe(m.map_err(side(0))?, kb),
            m = b.recv() => seen[1] |= is_probe(m.map_err(side(1))?, ka),
        }
    }
    Ok(seen)
}

/// How often CallMeMaybe is resent over DERP while punching (it may race the partner's login).
const CALL_ME_MAYBE_EVERY: Duration = Duration::from_millis(250);
/// How often each candidate is pinged while punching.
const PING_EVERY: Duration = Duration::from_millis(100);

/// Discovers our mapped address and tries to punch a direct path to `partner`.
///
/// Returns the confirmed direct address, or `None` to fall back to the relay. Ends as soon as
/// we both hold a pong (our path works) and have answered one of the partner's pings (so the
/// partner's path works too), or at the punch deadline.
pub async fn punch(
    signal: &mut impl Signal,
    sock: &mut NatSocket,
    me: NodePublicKey,
    disco: &SharedBox,
    stun: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<Option<SocketAddr>> {
    let deadline = Instant::now() + timeout;
    let mapped = nat::stun_mapped(sock, stun, 3, Duration::from_millis(300)).await?;
    let cmm = disco.seal(&DiscoMessage::CallMeMaybe(vec![mapped]));
    let mut candidates: Vec<SocketAddr> = Vec::new();
    let mut txids: HashSet<[u8; 12]> = HashSet::new();
    let mut confirmed = None;
    let mut answered = false;
    let mut cmm_tick = tokio::time::interval(CALL_ME_MAYBE_EVERY);
    let mut ping_tick = tokio::time::interval(PING_EVERY);
    while !(confirmed.is_some() && answered) {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            _ = cmm_tick.tick(), if confirmed.is_none() => {
                signal.send(&cmm).await.context("send CallMeMaybe")?;
            }
            _ = ping_tick.tick(), if confirmed.is_none() => {
                for c in &candidates {
                    let txid: [u8; 12] = rand::random();
                    txids.insert(txid);
                    let ping = disco.seal(&DiscoMessage::Ping { txid, node_key: me });
                    sock.tx.send((*c, ping)).await.context("NAT gone")?;
                }
            }
            m = signal.recv() => {
                if let Some(DiscoMessage::CallMeMaybe(eps)) = disco.open(&m.context("DERP recv")?) {
                    for ep in eps {
                        if !candidates.contains(&ep) {
                            candidates.push(ep);
                        }
                    }
                }
            }
            d = sock.rx.recv() => {
                let Some((src, payload)) = d else { bail!("NAT gone") };
                match disco.open(&payload) {
                    Some(DiscoMessage::Ping { txid, .. }) => {
                        let pong = disco.seal(&DiscoMessage::Pong { txid, src });
                        sock.tx.send((src, pong)).await.context("NAT gone")?;
                        answered = true;
                        // Tailscale pings a ping's source too: it may be a mapping we did not
                        // hear of (the partner's NAT picked a new port for us).
                        if !candidates.contains(&src) {
                            candidates.push(src);
                        }
                    }
                    Some(DiscoMessage::Pong { txid, .. }) if txids.contains(&txid) => {
                        confirmed = Some(src);
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(confirmed)
}

/// The relay path between two peers, used for CallMeMaybe: a DERP client in real runs, a
/// channel in tests.
pub trait Signal {
    /// Sends a disco packet to the partner through the relay.
    fn send(&mut self, packet: &[u8]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Receives the next packet the partner sent through the relay (cancel-safe).
    fn recv(&mut self) -> impl Future<Output = anyhow::Result<Bytes>> + Send;
}

/// A DERP client talking to one partner.
#[derive(Debug)]
pub struct DerpSignal<'a> {
    /// The connection.
    pub client: &'a mut Client,
    /// The partner's node key.
    pub partner: NodePublicKey,
}

impl Signal for DerpSignal<'_> {
    async fn send(&mut self, packet: &[u8]) -> anyhow::Result<()> {
        Ok(self.client.send_packet(&self.partner, packet).await?)
    }

    async fn recv(&mut self) -> anyhow::Result<Bytes> {
        loop {
            if let ServerToClient::RecvPacket { src, packet } = self.client.recv().await?
                && src == self.partner
            {
                return Ok(packet);
            }
        }
    }
}

/// What one peer's task hands back: its error, if any, as (peer, stage, message).
type PeerOutcome = Option<(String, &'static str, String)>;

/// How often the drain checks whether every flow is complete.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How long tasks get to notice the stop before they are aborted.
const JOIN_GRACE: Duration = Duration::from_secs(1);

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn spawn_peer(
    tasks: &mut JoinSet<PeerOutcome>,
    cfg: &PairsConfig,
    p: ReadyPeer,
    rx: Arc<Mutex<Receiver>>,
    epoch: Instant,
    start: Instant,
    end: Instant,
    stop: &CancellationToken,
    progress: &Arc<Progress>,
) {
    let (reader, writer) = p.client.split();
    let (udp_tx, udp_rx) = match p.nat {
        Some((_, NatSocket { tx, rx, guard })) => (Some(tx), Some((rx, guard))),
        None => (None, None),
    };
    let sends = !cfg.one_way || p.initiator;
    let sender = Sender {
        name: p.name.clone(),
        writer,
        udp: p.direct.zip(udp_tx),
        partner: p.partner,
        codec: p.codec.clone(),
        initiator: p.initiator,
        size: cfg.size,
        rate: cfg.rate,
        batch: cfg.batch.max(1),
        faults: cfg.faults,
        progress: Arc::clone(progress),
        window: cfg.window.filter(|_| cfg.rate.is_none()),
        flow: p.tx_flow,
    };
    let stop_send = stop.clone();
    tasks.spawn(async move {
        if sends {
            sender.run(epoch, start, end).await
        } else {
            // Keep the writer (and so the connection's write half) open until the run ends.
            stop_send.cancelled().await;
            drop(sender);
            None
        }
    });
    let progress = Arc::clone(progress);
    let name = p.name;
    let partner = p.partner;
    let flow = p.rx_flow;
    let stop = stop.clone();
    tasks.spawn(async move {
        recv_loop(&rx, reader, udp_rx, partner, epoch, &stop, &progress, &flow)
            .await
            .err()
            .map(|e| (name, "recv", format!("{e:#}")))
    });
}

/// The sending half of a peer in the data phase.
struct Sender {
    name: String,
    writer: ClientWriter,
    /// Direct path: partner's address and the NAT's outbound queue.
    udp: Option<(SocketAddr, mpsc::Sender<nat::Datagram>)>,
    partner: NodePublicKey,
    codec: PacketCodec,
    initiator: bool,
    size: usize,
    rate: Option<f64>,
    batch: usize,
    faults: Faults,
    progress: Arc<Progress>,
    window: Option<u64>,
    flow: Arc<Flow>,
}

impl Sender {
    async fn run(mut self, epoch: Instant, start: Instant, end: Instant) -> PeerOutcome {
        tokio::time::sleep_until(start).await;
        self.send_loop(epoch, start, end)
            .await
            .err()
            .map(|e| (self.name.clone(), "send", format!("{e:#}")))
    }

    async fn send_loop(
        &mut self,
        epoch: Instant,
        start: Instant,
        end: Instant,
    ) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(self.size);
        // WireGuard opens with a handshake: the initiator's 148-byte message, the responder's
        // 92-byte answer. They are counted apart from data.
        let (ty, len) = if self.initiator {
            (payload::TYPE_INITIATION, payload::INITIATION_LEN)
        } else {
            (payload::TYPE_RESPONSE, payload::RESPONSE_LEN)
        };
        self.codec.encode(ty, 0, nanos(epoch), len, &mut buf);
        self.emit(&buf).await?;
        self.flush(end).await?;
        let mut seq: u64 = 0;
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            let n = match self.rate {
                Some(rate) => {
                    let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
                    let n = due.saturating_sub(seq).min(self.batch as u64 * 8);
                    if n == 0 {
                        let next = start + Duration::from_secs_f64((seq as f64) / rate);
                        tokio::time::sleep_until(next.min(end)).await;
                        continue;
                    }
                    n
                }
                None => {
                    if let Some(w) = self.window {
                        wait_for_window(&self.flow, seq, w, self.batch as u64).await;
                    }
                    self.batch as u64
                }
            };
            for _ in 0..n {
                seq += 1;
                let f = self.faults;
                if f.drop_every.is_some_and(|k| seq.is_multiple_of(k)) {
                    continue;
                }
                self.codec
                    .encode(payload::TYPE_DATA, seq, nanos(epoch), self.size, &mut buf);
                if f.corrupt_every.is_some_and(|k| seq.is_multiple_of(k)) {
                    let i = buf.len() - 1;
                    buf[i] ^= 0x01;
                }
                self.emit(&buf).await?;
                if f.duplicate_every.is_some_and(|k| seq.is_multiple_of(k)) {
                    self.emit(&buf).await?;
                }
            }
            // Counted before the flush: a packet handed to a failing connection is lost.
            self.flow.sent.fetch_add(n, Ordering::Relaxed);
            Progress::add(&self.progress.sent, n);
            self.flush(end).await?;
        }
    }

    async fn emit(&mut self, packet: &[u8]) -> anyhow::Result<()> {
        match &self.udp {
            Some((addr, tx)) => {
                // A full NAT queue is a dropped datagram, as on a real path.
                let _ = tx.try_send((*addr, packet.to_vec()));
                Ok(())
            }
            None => Ok(self.writer.queue_packet(&self.partner, packet)?),
        }
    }

    async fn flush(&mut self, end: Instant) -> anyhow::Result<()> {
        if self.writer.pending() == 0 {
            return Ok(());
        }
        // A stalled relay must not hold us past the data phase (plus a second for the last
        // flush); the run's hard deadline is built on this.
        match tokio::time::timeout_at(end + Duration::from_secs(1), self.writer.flush()).await {
            Ok(r) => Ok(r.context("flush")?),
            Err(_) => bail!("write stalled past the end of the data phase"),
        }
    }
}

/// Waits until fewer than `window - batch` packets are in flight (sent after the highest one
/// delivered), or [`WINDOW_WAIT`] passes without a delivery (the tail was dropped; waiting
/// longer would stall for good).
async fn wait_for_window(flow: &Flow, seq: u64, window: u64, batch: u64) {
    loop {
        let in_flight = seq.saturating_sub(flow.highest.load(Ordering::Relaxed));
        if in_flight + batch <= window {
            return;
        }
        if tokio::time::timeout(WINDOW_WAIT, flow.notify.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Receive-side accounting for one peer: pure, so tests can feed it packets directly.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Receiver {
    codec: PacketCodec,
    /// Order, loss and duplication of data packets.
    pub tracker: RecvTracker,
    /// One-way latency of data packets in microseconds.
    pub latency_us: Histogram,
    /// Packets that failed authentication or whose filler was changed.
    pub corrupted: u64,
    /// Packets that were not ours at all (wrong pair, too short, unknown type).
    pub foreign: u64,
    /// Handshake-shaped messages received.
    pub handshakes: u64,
    /// Bytes of data packets that passed their checks.
    pub bytes: u64,
}

impl Receiver {
    /// A receiver for packets sealed with `codec`.
    pub fn new(codec: PacketCodec) -> Self {
        Self {
            codec,
            tracker: RecvTracker::default(),
            latency_us: Histogram::default(),
            corrupted: 0,
            foreign: 0,
            handshakes: 0,
            bytes: 0,
        }
    }

    /// Accounts for one packet that arrived at `now_ns` (nanoseconds since the run's epoch).
    /// Returns whether it was a data packet that passed its checks.
    pub fn on_packet(&mut self, packet: &[u8], now_ns: u64) -> bool {
        if derp_proto::disco::looks_like_disco(packet) {
            // Late disco from punching; not data.
            return false;
        }
        if payload::peek_pair(packet) != Some(self.codec.pair()) {
            self.foreign += 1;
            return false;
        }
        match self.codec.decode(packet) {
            Ok(d) if d.ty == payload::TYPE_DATA => {
                self.tracker.on_packet(d.seq);
                self.latency_us
                    .record(now_ns.saturating_sub(d.sent_ns) / 1_000);
                self.bytes += packet.len() as u64;
                true
            }
            Ok(_) => {
                self.handshakes += 1;
                false
            }
            Err(DecodePacketError::Corrupted) => {
                self.corrupted += 1;
                false
            }
            Err(_) => {
                self.foreign += 1;
                false
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn recv_loop(
    rx: &Mutex<Receiver>,
    mut reader: ClientReader,
    mut udp: Option<(mpsc::Receiver<nat::Datagram>, nat::NatGuard)>,
    partner: NodePublicKey,
    epoch: Instant,
    stop: &CancellationToken,
    progress: &Progress,
    flow: &Flow,
) -> anyhow::Result<()> {
    // The lock is only ever contended by the final tally, after this task has stopped.
    let count = |packet: &[u8]| {
        let mut rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let data = rx.on_packet(packet, nanos(epoch));
        flow.highest
            .fetch_max(rx.tracker.highest(), Ordering::Relaxed);
        data
    };
    let delivered = || {
        Progress::add(&progress.received, 1);
        flow.received.fetch_add(1, Ordering::Relaxed);
        flow.notify.notify_one();
    };
    loop {
        let udp_recv = async {
            match udp.as_mut() {
                Some((r, _)) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = reader.recv() => match m.context("DERP recv")? {
                ServerToClient::RecvPacket { src, packet }
                    if src == partner && count(&packet) =>
                {
                    delivered();
                }
                ServerToClient::RecvPacket { src, .. } if src != partner => {
                    rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).foreign += 1;
                }
                _ => {}
            },
            d = udp_recv => match d {
                Some((_, packet)) => {
                    if count(&packet) {
                        delivered();
                    }
                }
                None => udp = None,
            },
        }
    }
}

fn nanos(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::TYPE_DATA;

    /// Two ends of an in-memory relay.
    struct ChanSignal {
        tx: mpsc::Sender<Bytes>,
        rx: mpsc::Receiver<Bytes>,
    }

    impl Signal for ChanSignal {
        async fn send(&mut self, packet: &[u8]) -> anyhow::Result<()> {
            Ok(self.tx.send(Bytes::copy_from_slice(packet)).await?)
        }
        async fn recv(&mut self) -> anyhow::Result<Bytes> {
            self.rx.recv().await.context("closed")
        }
    }

    fn signal_pair() -> (ChanSignal, ChanSignal) {
        let (t1, r1) = mpsc::channel(64);
        let (t2, r2) = mpsc::channel(64);
        (ChanSignal { tx: t1, rx: r2 }, ChanSignal { tx: t2, rx: r1 })
    }

    /// Punches between NATs of kinds `a` and `b`; returns whether each side went direct.
    async fn punch_between(a: NatKind, b: NatKind, n: u64) -> (bool, bool) {
        let stun = StunServer::spawn([127, 0, 0, 1].into()).await.unwrap();
        let mut na = nat::spawn(a, nat::public_ip(1_000 + 2 * n)).await.unwrap();
        let mut nb = nat::spawn(b, nat::public_ip(1_001 + 2 * n)).await.unwrap();
        let (da, db) = (DiscoKey::generate(), DiscoKey::generate());
        let (ba, bb) = (da.shared(&db.public()), db.shared(&da.public()));
        let (mut sa, mut sb) = signal_pair();
        let ka = NodeSecretKey::generate().public_key();
        let kb = NodeSecretKey::generate().public_key();
        let t = Duration::from_millis(1_500);
        let (ra, rb) = tokio::join!(
            punch(&mut sa, &mut na, ka, &ba, stun.addr, t),
            punch(&mut sb, &mut nb, kb, &bb, stun.addr, t),
        );
        (ra.unwrap().is_some(), rb.unwrap().is_some())
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_packets_do_not_shrink_the_window() {
        // 10 sent; only 10 arrived (1-9 dropped by the relay, which delivers in order).
        let flow = Flow::default();
        flow.received.store(1, Ordering::Relaxed);
        flow.highest.store(10, Ordering::Relaxed);
        let t0 = Instant::now();
        wait_for_window(&flow, 10, 4, 1).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "nothing is in flight");

        // 3 more sent, none delivered: with a window of 4 and a batch of 2 the sender waits,
        // and gives up on them after WINDOW_WAIT without a delivery.
        wait_for_window(&flow, 13, 4, 2).await;
        assert_eq!(t0.elapsed(), WINDOW_WAIT);
    }

    #[tokio::test]
    async fn cone_pairs_punch() {
        use NatKind::{Cone, FullCone, Restricted};
        for (i, (a, b)) in [(Cone, Cone), (Cone, Restricted), (FullCone, Cone)]
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                punch_between(a, b, i as u64).await,
                (true, true),
                "{a} - {b}"
            );
        }
    }

    #[tokio::test]
    async fn symmetric_pairs_fall_back() {
        use NatKind::{Cone, Symmetric};
        for (i, (a, b)) in [(Symmetric, Symmetric), (Symmetric, Cone), (Cone, Symmetric)]
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                punch_between(a, b, 10 + i as u64).await,
                (false, false),
                "{a} - {b}"
            );
        }
    }

    #[tokio::test]
    async fn symmetric_punches_to_full_cone_and_address_restricted() {
        // As with real NATs: these filters accept the symmetric side's new mapping (a full
        // cone from anyone, an address-restricted one from an IP it already pinged), and
        // pinging the source of that ping opens the way back.
        for (i, k) in [NatKind::FullCone, NatKind::Restricted]
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                punch_between(NatKind::Symmetric, k, 20 + i as u64).await,
                (true, true),
                "symmetric - {k}"
            );
        }
    }

    #[test]
    fn pairs_scenario_places_each_pair_on_one_relay_round_robin() {
        for k in 0..10 {
            let p = placement(k, 3, false, 0.5);
            assert_eq!(p.class, PairClass::SameNode);
            assert_eq!(p.relays, [(k % 3) as usize; 2]);
        }
    }

    #[test]
    fn mesh_placement_splits_classes_by_fraction_and_spreads_each_over_the_relays() {
        for relays in 2..=4usize {
            for f in [0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0] {
                let pairs = 120u64;
                let placed: Vec<_> = (0..pairs).map(|k| placement(k, relays, true, f)).collect();
                let same = placed
                    .iter()
                    .filter(|p| p.class == PairClass::SameNode)
                    .count() as u64;
                assert_eq!(
                    same,
                    (pairs as f64 * f).floor() as u64,
                    "{relays} relays, f {f}"
                );
                // Peers per relay and class: equal to within one pair's worth.
                for class in [PairClass::SameNode, PairClass::CrossNode] {
                    let mut per_relay = vec![0u64; relays];
                    for p in placed.iter().filter(|p| p.class == class) {
                        if class == PairClass::SameNode {
                            assert_eq!(p.relays[0], p.relays[1]);
                        } else {
                            assert_ne!(p.relays[0], p.relays[1]);
                        }
                        for r in p.relays {
                            per_relay[r] += 1;
                        }
                    }
                    let (lo, hi) = (per_relay.iter().min(), per_relay.iter().max());
                    assert!(
                        hi.unwrap() - lo.unwrap() <= 2,
                        "{class:?} over {relays} relays at f {f}: {per_relay:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn mesh_placement_is_the_same_whatever_the_sharding() {
        // Shards place by global pair index, so every shard holds the fraction to within one
        // pair and the shards together are exactly the single-process run.
        let f = 0.3;
        let whole: Vec<_> = (0..100).map(|k| placement(k, 2, true, f)).collect();
        let mut same_total = 0;
        for (start, end) in [(0u64, 33u64), (33, 66), (66, 100)] {
            let shard: Vec<_> = (start..end).map(|k| placement(k, 2, true, f)).collect();
            assert_eq!(shard[..], whole[start as usize..end as usize]);
            let same = shard
                .iter()
                .filter(|p| p.class == PairClass::SameNode)
                .count();
            let expected = (end - start) as f64 * f;
            assert!(
                (same as f64 - expected).abs() <= 1.0,
                "{same} vs {expected}"
            );
            same_total += same;
        }
        assert_eq!(same_total, 30);
        // Half and half alternates, so the classes meet the same moment of the run.
        let classes: Vec<_> = (0..4).map(|k| placement(k, 2, true, 0.5).class).collect();
        assert_eq!(
            classes,
            [
                PairClass::CrossNode,
                PairClass::SameNode,
                PairClass::CrossNode,
                PairClass::SameNode
            ]
        );
    }

    #[test]
    fn route_probes_are_ignored_by_the_data_receiver() {
        let probe = route_probe();
        assert!(derp_proto::disco::looks_like_disco(&probe));
        let mut rx = Receiver::new(PacketCodec::new(1, [2; 32]));
        assert!(!rx.on_packet(&probe, 0));
        assert_eq!((rx.foreign, rx.corrupted, rx.tracker.unique), (0, 0, 0));
    }

    #[test]
    fn receiver_catches_corruption_loss_duplication_and_reordering() {
        let codec = PacketCodec::new(3, [1; 32]);
        let mut rx = Receiver::new(codec.clone());
        let mut p = Vec::new();
        for seq in [1u64, 2, 4, 3, 3] {
            codec.encode(TYPE_DATA, seq, 1_000, 200, &mut p);
            assert!(rx.on_packet(&p, 51_000));
        }
        codec.encode(TYPE_DATA, 6, 1_000, 200, &mut p);
        p[100] ^= 0x40;
        assert!(!rx.on_packet(&p, 2_000));
        // Another pair's packet is foreign, not corrupt.
        PacketCodec::new(4, [1; 32]).encode(TYPE_DATA, 7, 1_000, 200, &mut p);
        assert!(!rx.on_packet(&p, 2_000));
        assert_eq!(rx.tracker.unique, 4, "seq 5 dropped and 6 corrupted");
        assert_eq!(rx.tracker.reordered, 1);
        assert_eq!(rx.tracker.duplicated, 1);
        assert_eq!(rx.corrupted, 1);
        assert_eq!(rx.foreign, 1);
        assert_eq!(rx.latency_us.max, 50);
    }
}
