//! Real NATs for `--netns` runs (Linux, root): network namespaces with nftables masquerade.
//!
//! ```text
//!  peer ns (10.0.0.2) ──veth── router ns (10.0.0.1 | 100.64.x.y) ──veth── world ns (STUN 198.18.0.1)
//!                                  nft masquerade [random]                  routes 100.64.x.y/32
//! ```
//!
//! Each peer gets its own router namespace; the "world" namespace routes between routers and
//! hosts the STUN server. `masquerade` keeps the source port (endpoint-independent mapping) and
//! conntrack only lets replies in (address-and-port-dependent filtering): our `cone`.
//! `masquerade random` picks a new port per destination: `symmetric`. DERP connections stay in
//! the caller's namespace; only the peers' UDP sockets live behind the NATs, which is all hole
//! punching sees. Everything is deleted when the [`Lab`] is dropped.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::nat::{NatGuard, NatKind, NatSocket};

/// Address of the STUN server in the world namespace.
pub const STUN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Datagrams queued between a peer task and its socket.
const QUEUE: usize = 256;

/// A set of namespaces owned by one run.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

impl Lab {
    /// Creates the world namespace. Needs root and `ip`/`nft` on PATH.
    pub async fn new() -> anyhow::Result<Self> {
        let mut lab = Self {
            prefix: format!("lt{}-{}", std::process::id(), rand::random::<u16>()),
            namespaces: Vec::new(),
        };
        let w = lab.world();
        lab.add_ns(&w).await?;
        run(&[
            "ip",
            "-n",
            &w,
            "addr",
            "add",
            &format!("{STUN_IP}/32"),
            "dev",
            "lo",
        ])
        .await?;
        sysctl(&w, "net.ipv4.ip_forward=1").await?;
        Ok(lab)
    }

    fn world(&self) -> String {
        format!("{}-w", self.prefix)
    }

    async fn add_ns(&mut self, name: &str) -> anyhow::Result<()> {
        run(&["ip", "netns", "add", name]).await?;
        self.namespaces.push(name.to_owned());
        run(&["ip", "-n", name, "link", "set", "lo", "up"]).await
    }

    /// Builds peer `i` behind a NAT of `kind` and returns its UDP socket.
    pub async fn peer(&mut self, i: u32, kind: NatKind) -> anyhow::Result<NatSocket> {
        let masq = match kind {
            NatKind::Cone => "masquerade",
            NatKind::Symmetric => "masquerade random",
            k => bail!("--netns supports cone and symmetric NATs, not {k}"),
        };
        let (w, r, p) = (
            self.world(),
            format!("{}-r{i}", self.prefix),
            format!("{}-p{i}", self.prefix),
        );
        let public = Ipv4Addr::new(100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let wan_peer = format!("r{i}");
        self.add_ns(&r).await?;
        self.add_ns(&p).await?;
        run(&[
            "ip", "-n", &p, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns",
            &r,
        ])
        .await?;
        run(&[
            "ip", "-n", &r, "link", "add", "wan0", "type", "veth", "peer", "name", &wan_peer,
            "netns", &w,
        ])
        .await?;
        run(&["ip", "-n", &p, "addr", "add", "10.0.0.2/24", "dev", "eth0"]).await?;
        run(&["ip", "-n", &p, "link", "set", "eth0", "up"]).await?;
        run(&["ip", "-n", &p, "route", "add", "default", "via", "10.0.0.1"]).await?;
        run(&["ip", "-n", &r, "addr", "add", "10.0.0.1/24", "dev", "lan0"]).await?;
        run(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("{public}/32"),
            "dev",
            "wan0",
        ])
        .await?;
        run(&["ip", "-n", &r, "link", "set", "lan0", "up"]).await?;
        run(&["ip", "-n", &r, "link", "set", "wan0", "up"]).await?;
        run(&["ip", "-n", &r, "route", "add", "default", "dev", "wan0"]).await?;
        sysctl(&r, "net.ipv4.ip_forward=1").await?;
        run(&["ip", "-n", &w, "link", "set", &wan_peer, "up"]).await?;
        run(&[
            "ip",
            "-n",
            &w,
            "route",
            "add",
            &format!("{public}/32"),
            "dev",
            &wan_peer,
        ])
        .await?;
        // The router ARPs for every destination on its point-to-point uplink; the world answers.
        sysctl(&w, &format!("net.ipv4.conf.{wan_peer}.proxy_arp=1")).await?;
        let nft = ["ip", "netns", "exec", &r, "nft"];
        run(&[&nft[..], &["add", "table", "ip", "nat"]].concat()).await?;
        run(&[
            &nft[..],
            &[
                "add",
                "chain",
                "ip",
                "nat",
                "post",
                "{ type nat hook postrouting priority 100 ; }",
            ],
        ]
        .concat())
        .await?;
        let rule: Vec<&str> = ["add", "rule", "ip", "nat", "post", "oifname", "wan0"]
            .into_iter()
            .chain(masq.split(' '))
            .collect();
        run(&[&nft[..], &rule].concat()).await?;
        let sock = bind_udp_in(&p, SocketAddr::from(([0, 0, 0, 0], 0))).await?;
        Ok(socket_adapter(sock))
    }

    /// Binds a UDP socket inside the world namespace (for the STUN server).
    pub async fn world_udp(&self, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
        bind_udp_in(&self.world(), addr).await
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace removes its veths and nftables state with it.
        for ns in self.namespaces.iter().rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

async fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .await
        .with_context(|| format!("run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn sysctl(ns: &str, setting: &str) -> anyhow::Result<()> {
    run(&["ip", "netns", "exec", ns, "sysctl", "-q", "-w", setting]).await
}

/// Binds a UDP socket in namespace `ns`: a short-lived thread enters the namespace (only that
/// thread's namespace changes) and the socket stays in it for life.
async fn bind_udp_in(ns: &str, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let path = format!("/var/run/netns/{ns}");
    let std_sock = tokio::task::spawn_blocking(move || -> anyhow::Result<std::net::UdpSocket> {
        // The process's own namespace, to return this pool thread to afterwards.
        let home = File::open("/proc/self/ns/net").context("open own netns")?;
        let f = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns only reads the descriptor, which `f` keeps open for the call; it changes
        // the namespace of this (blocking-pool) thread only...
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let s = std::net::UdpSocket::bind(addr);
        // ...and we switch it back before returning it to the pool.
        // SAFETY: as above; `home` is open for the call.
        let rc = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setns back");
        }
        let s = s.context("bind in namespace")?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .await
    .context("netns thread")??;
    Ok(UdpSocket::from_std(std_sock)?)
}

/// Wraps a real socket in the channel interface the punching code uses.
fn socket_adapter(sock: UdpSocket) -> NatSocket {
    let sock = Arc::new(sock);
    let (out_tx, mut out_rx) = mpsc::channel::<crate::nat::Datagram>(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let mut tasks = JoinSet::new();
    let send = Arc::clone(&sock);
    tasks.spawn(async move {
        while let Some((dst, payload)) = out_rx.recv().await {
            let _ = send.send_to(&payload, dst).await;
        }
    });
    tasks.spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, src)) = sock.recv_from(&mut buf).await {
            if in_tx.try_send((src, buf[..n].to_vec())).is_err() && in_tx.is_closed() {
                break;
            }
        }
    });
    NatSocket {
        tx: out_tx,
        rx: in_rx,
        guard: NatGuard::new(tasks),
    }
}

/// The STUN server's address inside the world namespace.
pub fn stun_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(STUN_IP), port)
}
