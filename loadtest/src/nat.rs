//! A userspace NAT between a simulated peer and the (loopback) world, and a tiny STUN server.
//!
//! Each peer talks through a [`NatSocket`]: datagrams go to a NAT task, which picks an external
//! UDP socket by the mapping rule and drops inbound datagrams by the filtering rule (RFC 4787
//! terms). Every NAT gets its own loopback "public" address, so address-restricted filtering is
//! meaningful. Hole punching then succeeds or fails by the same rules as with real NATs:
//!
//! | kind                        | mapping               | filtering                  |
//! |-----------------------------|-----------------------|----------------------------|
//! | `none`, `full-cone`         | endpoint-independent  | endpoint-independent       |
//! | `restricted`                | endpoint-independent  | address-dependent          |
//! | `cone` (`port-restricted`)  | endpoint-independent  | address-and-port-dependent |
//! | `symmetric`                 | address-and-port-dep. | address-and-port-dependent |
//!
//! `cone` is what Linux `masquerade` does (and most home routers): hole punching works between
//! two of them, and fails against `symmetric`. Only a `full-cone` accepts a symmetric peer.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use derp_proto::stun;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Datagrams queued between a peer and its NAT in each direction; beyond this, the NAT drops,
/// as a real one would when its buffers are full.
const NAT_QUEUE: usize = 256;

/// Largest datagram the simulator carries.
const MAX_DATAGRAM: usize = 65_535;

/// A datagram with its peer address: destination outbound, source inbound.
pub type Datagram = (SocketAddr, Vec<u8>);

/// NAT behaviour of one simulated peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NatKind {
    /// No NAT: a public address (behaves like `full-cone`).
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    Restricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (port-restricted
    /// cone; Linux `masquerade`).
    Cone,
    /// Address-and-port-dependent mapping and filtering.
    Symmetric,
}

impl NatKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::FullCone => "full-cone",
            Self::Restricted => "restricted",
            Self::Cone => "cone",
            Self::Symmetric => "symmetric",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NatKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "none" | "public" => Self::None,
            "full-cone" => Self::FullCone,
            "restricted" | "address-restricted" => Self::Restricted,
            "cone" | "port-restricted" => Self::Cone,
            "symmetric" => Self::Symmetric,
            _ => {
                bail!("unknown NAT kind {s:?} (none, full-cone, restricted, cone, symmetric)")
            }
        })
    }
}

/// Weighted NAT kinds, e.g. `cone=70,symmetric=30`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatMix(Vec<(NatKind, u32)>);

impl FromStr for NatMix {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut v = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, w) = part.split_once('=').unwrap_or((part, "1"));
            let w: u32 = w
                .trim()
                .parse()
                .with_context(|| format!("weight in {part:?}"))?;
            v.push((k.trim().parse()?, w));
        }
        if v.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
            bail!("NAT mix {s:?} has no positive weight");
        }
        Ok(Self(v))
    }
}

impl NatMix {
    /// The kind for peer number `i`: a deterministic spread that hits the weights exactly over
    /// every whole multiple of the total weight, so small runs get the mix asked for.
    pub fn pick(&self, i: u64) -> NatKind {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        // Multiplying by a large odd constant permutes residues, so kinds interleave instead of
        // coming in blocks, and the two peers of a pair (2k, 2k+1) usually differ.
        let mut r = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % total;
        if total.is_power_of_two() || total < 2 {
            r = i % total.max(1);
        }
        for (k, w) in &self.0 {
            if r < u64::from(*w) {
                return *k;
            }
            r -= u64::from(*w);
        }
        NatKind::None
    }
}

/// A peer's view of its UDP socket behind a simulated NAT.
#[derive(Debug)]
pub struct NatSocket {
    /// Datagrams to send: (destination, payload).
    pub tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    /// Datagrams received: (source as the peer sees it, payload).
    pub rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    /// Keeps the NAT running; dropping it stops the NAT.
    pub guard: NatGuard,
}

/// Owns a NAT's task and socket readers; they are aborted when this is dropped.
#[derive(Debug)]
pub struct NatGuard(#[allow(dead_code)] JoinSet<()>);

impl NatGuard {
    /// Takes ownership of the tasks behind a socket.
    pub(crate) fn new(tasks: JoinSet<()>) -> Self {
        Self(tasks)
    }
}

/// Starts a NAT of `kind` whose external sockets bind to `public_ip`.
pub async fn spawn(kind: NatKind, public_ip: IpAddr) -> anyhow::Result<NatSocket> {
    let (out_tx, out_rx) = mpsc::channel(NAT_QUEUE);
    let (in_tx, in_rx) = mpsc::channel(NAT_QUEUE);
    let (ext_tx, ext_rx) = mpsc::channel(NAT_QUEUE);
    let mut tasks = JoinSet::new();
    let mut nat = Nat {
        kind,
        public_ip,
        mappings: Vec::new(),
        by_dst: HashMap::new(),
        ext_tx,
    };
    if kind != NatKind::Symmetric {
        nat.new_mapping(&mut tasks).await?;
    }
    tasks.spawn(nat.run(out_rx, ext_rx, in_tx));
    Ok(NatSocket {
        tx: out_tx,
        rx: in_rx,
        guard: NatGuard(tasks),
    })
}

/// State owned by the NAT task.
struct Nat {
    kind: NatKind,
    public_ip: IpAddr,
    /// One per external port; `allowed` holds the remotes this mapping has sent to.
    mappings: Vec<Mapping>,
    /// Symmetric only: destination → mapping index.
    by_dst: HashMap<SocketAddr, usize>,
    /// Handed to each socket reader.
    ext_tx: mpsc::Sender<(usize, SocketAddr, Vec<u8>)>,
}

struct Mapping {
    socket: Arc<UdpSocket>,
    allowed_addrs: HashSet<SocketAddr>,
    allowed_ips: HashSet<IpAddr>,
}

impl Nat {
    async fn new_mapping(&mut self, tasks: &mut JoinSet<()>) -> anyhow::Result<usize> {
        let socket = Arc::new(
            UdpSocket::bind((self.public_ip, 0))
                .await
                .with_context(|| format!("bind NAT socket on {}", self.public_ip))?,
        );
        let idx = self.mappings.len();
        let reader = Arc::clone(&socket);
        let ext_tx = self.ext_tx.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, src)) = reader.recv_from(&mut buf).await {
                if ext_tx.send((idx, src, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        });
        self.mappings.push(Mapping {
            socket,
            allowed_addrs: HashSet::new(),
            allowed_ips: HashSet::new(),
        });
        Ok(idx)
    }

    async fn run(
        mut self,
        mut out_rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
        mut ext_rx: mpsc::Receiver<(usize, SocketAddr, Vec<u8>)>,
        in_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ) {
        // Readers of mappings created later live here, so they die with the NAT.
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                out = out_rx.recv() => {
                    let Some((dst, payload)) = out else { return };
                    let idx = match self.kind {
                        NatKind::Symmetric => match self.by_dst.get(&dst) {
                            Some(i) => *i,
                            None => match self.new_mapping(&mut tasks).await {
                                Ok(i) => {
                                    self.by_dst.insert(dst, i);
                                    i
                                }
                                Err(_) => continue,
                            },
                        },
                        _ => 0,
                    };
                    let Some(m) = self.mappings.get_mut(idx) else { continue };
                    m.allowed_addrs.insert(dst);
                    m.allowed_ips.insert(dst.ip());
                    // A failed send is a lost datagram, as on a real network.
                    let _ = m.socket.send_to(&payload, dst).await;
                }
                inb = ext_rx.recv() => {
                    let Some((idx, src, payload)) = inb else { return };
                    let Some(m) = self.mappings.get(idx) else { continue };
                    let pass = match self.kind {
                        NatKind::None | NatKind::FullCone => true,
                        NatKind::Restricted => m.allowed_ips.contains(&src.ip()),
                        NatKind::Cone | NatKind::Symmetric => {
                            m.allowed_addrs.contains(&src)
                        }
                    };
                    // A full peer queue drops, like a full socket buffer.
                    if pass && in_tx.try_send((src, payload)).is_err() && in_tx.is_closed() {
                        return;
                    }
                }
            }
        }
    }
}

/// The loopback "public" address for NAT number `i`: 127.64.0.0/10 leaves 127.0.0.0/16 to
/// servers and worker source addresses. Every address in 127.0.0.0/8 is a host address, so
/// none needs skipping.
pub fn public_ip(i: u64) -> IpAddr {
    let i = i % (1 << 22);
    IpAddr::V4(Ipv4Addr::new(
        127,
        64 + (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
    ))
}

/// Asks `server` for our mapped address through `sock`, retrying; ignores other datagrams.
pub async fn stun_mapped(
    sock: &mut NatSocket,
    server: SocketAddr,
    attempts: u32,
    per_try: std::time::Duration,
) -> anyhow::Result<SocketAddr> {
    for _ in 0..attempts {
        let tx = stun::TxId(rand::random());
        sock.tx
            .send((server, stun::binding_request(tx).to_vec()))
            .await
            .context("NAT gone")?;
        let deadline = tokio::time::Instant::now() + per_try;
        loop {
            let Ok(got) = tokio::time::timeout_at(deadline, sock.rx.recv()).await else {
                break;
            };
            let Some((_, payload)) = got else {
                bail!("NAT gone")
            };
            if let Ok((rtx, addr)) = stun::parse_binding_response(&payload)
                && rtx == tx
            {
                return Ok(addr);
            }
        }
    }
    bail!("no STUN answer from {server} after {attempts} tries")
}

/// A minimal STUN responder for runs without a relay-side STUN port.
#[derive(Debug)]
pub struct StunServer {
    /// Where it listens.
    pub addr: SocketAddr,
    _task: JoinSet<()>,
}

impl StunServer {
    /// Binds on `ip` (port 0) and answers Tailscale binding requests until dropped.
    pub async fn spawn(ip: IpAddr) -> anyhow::Result<Self> {
        Self::from_socket(UdpSocket::bind((ip, 0)).await.context("bind STUN")?)
    }

    /// Answers Tailscale binding requests on `sock` until dropped.
    pub fn from_socket(sock: UdpSocket) -> anyhow::Result<Self> {
        let addr = sock.local_addr()?;
        let mut task = JoinSet::new();
        task.spawn(async move {
            let mut buf = vec![0u8; 1_500];
            let mut out = Vec::with_capacity(128);
            while let Ok((n, src)) = sock.recv_from(&mut buf).await {
                let Ok(req) = stun::parse_binding_request(&buf[..n]) else {
                    continue;
                };
                out.clear();
                if !matches!(
                    stun::binding_response(&req, src, None, &mut out),
                    stun::Reply::Drop
                ) {
                    let _ = sock.send_to(&out, src).await;
                }
            }
        });
        Ok(Self { addr, _task: task })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn mix_parses_and_hits_weights() {
        let m: NatMix = "cone=70,symmetric=30".parse().unwrap();
        let sym = (0..1_000)
            .filter(|i| m.pick(*i) == NatKind::Symmetric)
            .count();
        assert!((250..=350).contains(&sym), "{sym}");
        assert!("cone=0".parse::<NatMix>().is_err());
        assert!("bogus=1".parse::<NatMix>().is_err());
    }

    async fn mapped(kind: NatKind, i: u64, stun: &StunServer) -> (NatSocket, SocketAddr) {
        let mut s = spawn(kind, public_ip(i)).await.unwrap();
        let a = stun_mapped(&mut s, stun.addr, 3, Duration::from_millis(500))
            .await
            .unwrap();
        (s, a)
    }

    #[tokio::test]
    async fn stun_sees_the_translated_address() {
        let stun = StunServer::spawn([127, 0, 0, 1].into()).await.unwrap();
        let (_s, a) = mapped(NatKind::Cone, 1, &stun).await;
        assert_eq!(a.ip(), public_ip(1));
    }

    #[tokio::test]
    async fn filtering_rules() {
        let stun = StunServer::spawn([127, 0, 0, 1].into()).await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for (kind, open) in [
            (NatKind::FullCone, true),
            (NatKind::Restricted, true), // the stranger shares the STUN server's IP
            (NatKind::Cone, false),
            (NatKind::Symmetric, false),
        ] {
            let (mut s, a) = mapped(kind, 10 + kind as u64, &stun).await;
            stranger.send_to(b"hello", a).await.unwrap();
            let got = tokio::time::timeout(Duration::from_millis(200), s.rx.recv()).await;
            assert_eq!(got.is_ok(), open, "{kind}");
        }
    }

    #[tokio::test]
    async fn symmetric_maps_per_destination() {
        let stun = StunServer::spawn([127, 0, 0, 1].into()).await.unwrap();
        let stun2 = StunServer::spawn([127, 0, 0, 2].into()).await.unwrap();
        let (mut s, a) = mapped(NatKind::Symmetric, 20, &stun).await;
        let b = stun_mapped(&mut s, stun2.addr, 3, Duration::from_millis(500))
            .await
            .unwrap();
        assert_ne!(a, b);
        let (mut c, a) = mapped(NatKind::Cone, 21, &stun).await;
        let b = stun_mapped(&mut c, stun2.addr, 3, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(a, b);
    }
}
