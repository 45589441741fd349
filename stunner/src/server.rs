//! Socket setup and the receive loops: the only code in the STUN path that touches the network.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use derp_proto::stun::{self, Reply, Rfc5780Addrs, StunError};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Tally};
use crate::{Config, defaults};

/// Pause after a failed receive call, so a persistent error cannot spin a core. Go's stunserver
/// sleeps a whole second; a short pause is enough to stop spinning and keeps draining a queue
/// that a transient error (say ENOBUFS) interrupted.
const READ_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Batches a batched loop drains before it returns to its `select!`, where cancellation is
/// checked first: bounds how long a flood can delay shutdown.
#[cfg(target_os = "linux")]
const DRAIN_ROUNDS: usize = 8;

/// Capacity reserved for each response buffer; the largest response we build is ~140 bytes.
const RESPONSE_CAPACITY: usize = 256;

/// Why [`Server::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// `Config::listen` is empty.
    #[error("no listen address configured")]
    NoListenAddress,
    /// `Config::batch` is 0 or above [`defaults::MAX_BATCH`].
    #[error("batch size {0} is outside 1..={max}", max = defaults::MAX_BATCH)]
    BadBatch(usize),
    /// RFC 5780 mode needs one listen address and an alternate of the same family that differs
    /// in IP and port, neither unspecified.
    #[error("invalid rfc 5780 configuration: {0}")]
    Rfc5780(&'static str),
    /// A socket could not be created, configured or bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A STUN server with its sockets bound, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct Server {
    /// Static after bind; each endpoint moves into its own receive loop on `run`.
    endpoints: Vec<Endpoint>,
    /// Shared read-only by every loop.
    shared: Arc<Shared>,
}

/// One bound socket.
#[derive(Debug)]
struct Endpoint {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    /// Position in the RFC 5780 square, `(ip, port)` with 0 = primary and 1 = alternate; `None`
    /// outside RFC 5780 mode.
    slot: Option<(usize, usize)>,
}

/// Read-only state every loop needs.
#[derive(Debug)]
struct Shared {
    metrics: Metrics,
    batch: usize,
    rfc5780: Option<Square>,
}

/// The four RFC 5780 addresses, indexed `[ip][port]`, and the socket that answers from each.
#[derive(Debug)]
struct Square {
    addrs: [[SocketAddr; 2]; 2],
    senders: [[Arc<UdpSocket>; 2]; 2],
}

impl Server {
    /// Binds every socket `config` asks for; fails if any bind fails.
    ///
    /// Metric handles are resolved here, so install a metrics recorder first.
    pub async fn bind(config: Config) -> Result<Self, BindError> {
        crate::metrics::describe();
        Self::bind_with(config, Metrics::new()).await
    }

    /// [`bind`](Self::bind) with given metric handles (tests use a local recorder).
    async fn bind_with(config: Config, metrics: Metrics) -> Result<Self, BindError> {
        if config.listen.is_empty() {
            return Err(BindError::NoListenAddress);
        }
        if config.batch == 0 || config.batch > defaults::MAX_BATCH {
            return Err(BindError::BadBatch(config.batch));
        }
        let per_addr = config.sockets_per_addr.max(1);
        let mut endpoints = Vec::new();
        let rfc5780 = match config.other_address {
            None => {
                for &addr in &config.listen {
                    let v6_only = addr.is_ipv6()
                        && addr.ip().is_unspecified()
                        && config
                            .listen
                            .iter()
                            .any(|a| a.is_ipv4() && a.port() == addr.port());
                    for (socket, local) in bind_group(addr, per_addr, v6_only)? {
                        endpoints.push(Endpoint {
                            socket: Arc::new(socket),
                            local,
                            slot: None,
                        });
                    }
                }
                None
            }
            Some(other) => Some(bind_square(&config, other, per_addr, &mut endpoints)?),
        };
        for ep in &endpoints {
            tracing::info!(addr = %ep.local, "STUN listening");
        }
        Ok(Self {
            endpoints,
            shared: Arc::new(Shared {
                metrics,
                batch: config.batch,
                rfc5780,
            }),
        })
    }

    /// The bound addresses, without repeats (sockets sharing a port with `SO_REUSEPORT` appear
    /// once). In RFC 5780 mode: primary, primary IP with alternate port, alternate IP with
    /// primary port, alternate.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for ep in &self.endpoints {
            if !addrs.contains(&ep.local) {
                addrs.push(ep.local);
            }
        }
        addrs
    }

    /// Serves until `cancel` fires, one receive loop per socket; returns once every loop ended.
    pub async fn run(self, cancel: CancellationToken) {
        let mut loops = JoinSet::new();
        for ep in self.endpoints {
            loops.spawn(serve(ep, self.shared.clone(), cancel.clone()));
        }
        while let Some(res) = loops.join_next().await {
            if let Err(e) = res {
                tracing::error!(error = %e, "STUN receive loop failed");
            }
        }
    }

    /// [`run`](Self::run) on a new task.
    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(cancel))
    }
}

/// Binds the RFC 5780 square: primary and alternate IP, each on primary and alternate port.
fn bind_square(
    config: &Config,
    other: SocketAddr,
    per_addr: usize,
    endpoints: &mut Vec<Endpoint>,
) -> Result<Square, BindError> {
    let [primary] = config.listen[..] else {
        return Err(BindError::Rfc5780("needs exactly one listen address"));
    };
    if primary.is_ipv4() != other.is_ipv4() {
        return Err(BindError::Rfc5780("addresses must share a family"));
    }
    if primary.ip().is_unspecified() || other.ip().is_unspecified() {
        return Err(BindError::Rfc5780(
            "addresses must be specific, RESPONSE-ORIGIN names them",
        ));
    }
    if primary.ip() == other.ip() {
        return Err(BindError::Rfc5780("addresses must differ in IP"));
    }
    if primary.port() == other.port() && primary.port() != 0 {
        return Err(BindError::Rfc5780("addresses must differ in port"));
    }
    let mut bind = |ip_idx: usize, port_idx: usize, addr: SocketAddr| {
        let group = bind_group(addr, per_addr, false)?;
        let mut first = None;
        for (socket, local) in group {
            let socket = Arc::new(socket);
            first.get_or_insert_with(|| (socket.clone(), local));
            endpoints.push(Endpoint {
                socket,
                local,
                slot: Some((ip_idx, port_idx)),
            });
        }
        // bind_group returns at least one socket or an error.
        first.ok_or(BindError::Rfc5780("no socket bound"))
    };
    // Bind order matters with port 0: the primary IP's sockets pick the two ports, then the
    // alternate IP reuses them.
    let (s00, a00) = bind(0, 0, primary)?;
    let (s01, a01) = bind(0, 1, SocketAddr::new(primary.ip(), other.port()))?;
    let (s10, a10) = bind(1, 0, SocketAddr::new(other.ip(), a00.port()))?;
    let (s11, a11) = bind(1, 1, SocketAddr::new(other.ip(), a01.port()))?;
    Ok(Square {
        addrs: [[a00, a01], [a10, a11]],
        senders: [[s00, s01], [s10, s11]],
    })
}

/// Binds `n` sockets to `addr` (the first picks the port if it is 0), sharing it with
/// `SO_REUSEPORT` when `n > 1`.
fn bind_group(
    addr: SocketAddr,
    n: usize,
    v6_only: bool,
) -> Result<Vec<(UdpSocket, SocketAddr)>, BindError> {
    let mut out: Vec<(UdpSocket, SocketAddr)> = Vec::with_capacity(n);
    let mut target = addr;
    for _ in 0..n {
        let err = |source| BindError::Bind {
            addr: target,
            source,
        };
        let socket = Socket::new(
            Domain::for_address(target),
            Type::DGRAM,
            Some(Protocol::UDP),
        )
        .map_err(err)?;
        if target.is_ipv6() && target.ip().is_unspecified() {
            // Explicit, not the sysctl default: `[::]` means dual-stack unless an IPv4 socket
            // on the same port was asked for too.
            socket.set_only_v6(v6_only).map_err(err)?;
        }
        if n > 1 {
            socket.set_reuse_port(true).map_err(err)?;
        }
        // Best effort: the kernel clamps to its maximum, and a smaller buffer still works.
        let _ = socket.set_recv_buffer_size(defaults::SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(defaults::SOCKET_BUFFER);
        socket.set_nonblocking(true).map_err(err)?;
        socket.bind(&target.into()).map_err(err)?;
        let std_socket: std::net::UdpSocket = socket.into();
        let local = std_socket.local_addr().map_err(err)?;
        let socket = UdpSocket::from_std(std_socket).map_err(err)?;
        target = local;
        out.push((socket, local));
    }
    Ok(out)
}

/// One socket's receive loop.
async fn serve(ep: Endpoint, shared: Arc<Shared>, cancel: CancellationToken) {
    #[cfg(target_os = "linux")]
    if shared.batch > 1 {
        return batched::run(ep, shared, cancel).await;
    }
    simple_loop(ep, shared, cancel).await;
}

/// What to do with one datagram after [`handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Nothing to send; already counted.
    Nothing,
    /// Send the response from the socket that received the request. `success` tells a success
    /// response from an error response, for the metrics.
    Here { success: bool },
    /// RFC 5780: send the response from socket `from` of the square (CHANGE-REQUEST) to `dst`
    /// (the source, or another port of it for RESPONSE-PORT).
    Elsewhere {
        from: (usize, usize),
        dst: SocketAddr,
        success: bool,
    },
}

/// Parses one datagram and writes the answer, if any, into `out`; counts everything but the
/// send's outcome.
fn handle(
    shared: &Shared,
    slot: Option<(usize, usize)>,
    pkt: &[u8],
    src: SocketAddr,
    out: &mut Vec<u8>,
    t: &mut Tally,
) -> Action {
    let req = match stun::parse_binding_request(pkt) {
        Ok(req) => req,
        Err(StunError::NotStun) => {
            t.not_stun += 1;
            return Action::Nothing;
        }
        Err(_) => {
            t.bad_request += 1;
            return Action::Nothing;
        }
    };
    if src.ip().to_canonical().is_ipv4() {
        t.ipv4 += 1;
    } else {
        t.ipv6 += 1;
    }
    let (from, rfc5780) = match (&shared.rfc5780, slot) {
        (Some(square), Some((ip, port))) => {
            let change = req.change_request.unwrap_or_default();
            let from = (
                ip ^ usize::from(change.change_ip),
                port ^ usize::from(change.change_port),
            );
            let addrs = Rfc5780Addrs {
                response_origin: square.addrs[from.0][from.1],
                other_address: square.addrs[ip ^ 1][port ^ 1],
            };
            (Some(from), Some(addrs))
        }
        _ => (None, None),
    };
    let success = match stun::binding_response(&req, src, rfc5780.as_ref(), out) {
        Reply::Success => true,
        // Errors go back where the request came from.
        Reply::UnknownAttributes => return Action::Here { success: false },
        _ => {
            t.bad_request += 1;
            return Action::Nothing;
        }
    };
    let dst = match (rfc5780, req.response_port) {
        (Some(_), Some(port)) => SocketAddr::new(src.ip(), port),
        _ => src,
    };
    match from {
        Some(from) if Some(from) != slot || dst != src => Action::Elsewhere { from, dst, success },
        _ => Action::Here { success },
    }
}

/// Counts a response handed to the kernel (or not).
fn count_sent(t: &mut Tally, success: bool, sent: bool) {
    match (sent, success) {
        (false, _) => t.write_error += 1,
        (true, true) => t.success += 1,
        (true, false) => t.bad_request += 1,
    }
}

/// Sends an RFC 5780 answer from socket `from` of the square. Never waits: it may be another
/// loop's socket, and a full send buffer just costs this one response.
fn send_elsewhere(shared: &Shared, from: (usize, usize), out: &[u8], dst: SocketAddr) -> bool {
    let Some(square) = &shared.rfc5780 else {
        return false;
    };
    square.senders[from.0][from.1].try_send_to(out, dst).is_ok()
}

/// Logs the 1st, 2nd, 4th, 8th, … error of a kind per loop: visible, never a flood.
fn log_error(kind: &str, count: &mut u64, local: SocketAddr, e: &io::Error) {
    *count += 1;
    if count.is_power_of_two() {
        tracing::warn!(%local, error = %e, count = *count, "STUN {kind} error");
    }
}

/// The portable loop: one `recv_from` and one `send_to` per datagram, like Go's stunserver.
async fn simple_loop(ep: Endpoint, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut buf = vec![0u8; defaults::RECV_BUFFER];
    let mut out = Vec::with_capacity(RESPONSE_CAPACITY);
    let mut tally = Tally::default();
    let (mut read_errors, mut write_errors) = (0, 0);
    loop {
        let received = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            r = ep.socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, src)) => {
                out.clear();
                match handle(&shared, ep.slot, &buf[..n], src, &mut out, &mut tally) {
                    Action::Nothing => {}
                    Action::Here { success } => {
                        let sent = tokio::select! {
                            biased;
                            () = cancel.cancelled() => break,
                            r = ep.socket.send_to(&out, src) => r,
                        };
                        if let Err(e) = &sent {
                            log_error("write", &mut write_errors, ep.local, e);
                        }
                        count_sent(&mut tally, success, sent.is_ok());
                    }
                    Action::Elsewhere { from, dst, success } => {
                        let sent = send_elsewhere(&shared, from, &out, dst);
                        count_sent(&mut tally, success, sent);
                    }
                }
            }
            Err(e) => {
                tally.read_error += 1;
                log_error("read", &mut read_errors, ep.local, &e);
                shared.metrics.flush(&mut tally);
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(READ_ERROR_BACKOFF) => {}
                }
            }
        }
        shared.metrics.flush(&mut tally);
    }
    shared.metrics.flush(&mut tally);
}

#[cfg(target_os = "linux")]
mod batched {
    //! The Linux loop: `recvmmsg` up to a batch, answer into a send batch, one `sendmmsg`.

    use std::io;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    use tokio::io::Interest;
    use tokio_util::sync::CancellationToken;

    use super::{
        Action, DRAIN_ROUNDS, Endpoint, READ_ERROR_BACKOFF, RESPONSE_CAPACITY, Shared, count_sent,
        handle, log_error, send_elsewhere,
    };
    use crate::defaults::{self, MAX_BATCH};
    use crate::metrics::Tally;
    use crate::sys::{RecvBatch, SendBatch};

    pub(super) async fn run(ep: Endpoint, shared: Arc<Shared>, cancel: CancellationToken) {
        let fd = ep.socket.as_raw_fd();
        let mut rx = RecvBatch::new(shared.batch, defaults::RECV_SLOT);
        let mut tx = SendBatch::new(shared.batch, RESPONSE_CAPACITY);
        // Whether response `i` of `tx` is a success response (else an error response).
        let mut success = [false; MAX_BATCH];
        let mut tally = Tally::default();
        let (mut read_errors, mut write_errors) = (0, 0);
        'serve: loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break 'serve,
                r = ep.socket.readable() => if let Err(e) = r {
                    // Only fails when the runtime's I/O driver is gone: nothing left to serve.
                    tracing::error!(local = %ep.local, error = %e, "STUN socket unusable");
                    break 'serve;
                },
            }
            for _ in 0..DRAIN_ROUNDS {
                let n = match ep.socket.try_io(Interest::READABLE, || rx.recv(fd)) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tally.read_error += 1;
                        log_error("read", &mut read_errors, ep.local, &e);
                        shared.metrics.flush(&mut tally);
                        tokio::select! {
                            () = cancel.cancelled() => break 'serve,
                            () = tokio::time::sleep(READ_ERROR_BACKOFF) => {}
                        }
                        break;
                    }
                };
                tx.clear();
                for i in 0..n {
                    let (pkt, src, truncated) = rx.datagram(i);
                    let Some(src) = src else {
                        // Not an IP sender; cannot happen on a UDP socket.
                        tally.not_stun += 1;
                        continue;
                    };
                    if truncated {
                        // Longer than a receive slot: no request we answer is that large.
                        if derp_proto::stun::is_stun(pkt) {
                            tally.bad_request += 1;
                        } else {
                            tally.not_stun += 1;
                        }
                        continue;
                    }
                    let Some(out) = tx.next_buf() else {
                        // The send batch has as many slots as the receive batch.
                        break;
                    };
                    match handle(&shared, ep.slot, pkt, src, out, &mut tally) {
                        Action::Nothing => {}
                        Action::Here { success: ok } => {
                            success[tx.len()] = ok;
                            tx.commit(rx.raw_addr(i));
                        }
                        Action::Elsewhere {
                            from,
                            dst,
                            success: ok,
                        } => {
                            let sent = send_elsewhere(&shared, from, out, dst);
                            count_sent(&mut tally, ok, sent);
                        }
                    }
                }
                if !send_all(&ep, &tx, &success, &mut tally, &mut write_errors, &cancel).await {
                    break 'serve;
                }
                shared.metrics.flush(&mut tally);
                if n < rx_capacity(&shared) {
                    // Short batch: the queue is probably empty; let readiness say when not.
                    break;
                }
            }
        }
        shared.metrics.flush(&mut tally);
    }

    fn rx_capacity(shared: &Shared) -> usize {
        shared.batch.clamp(1, MAX_BATCH)
    }

    /// Sends every response in `tx`, waiting for writability when the send buffer is full (the
    /// same back-pressure Go's blocking write gives). A response the kernel rejects is counted
    /// and skipped. Returns `false` if cancelled.
    async fn send_all(
        ep: &Endpoint,
        tx: &SendBatch,
        success: &[bool],
        t: &mut Tally,
        write_errors: &mut u64,
        cancel: &CancellationToken,
    ) -> bool {
        let fd = ep.socket.as_raw_fd();
        let mut sent = 0;
        while sent < tx.len() {
            match ep.socket.try_io(Interest::WRITABLE, || tx.send(fd, sent)) {
                Ok(k) if k > 0 => {
                    for ok in &success[sent..sent + k] {
                        count_sent(t, *ok, true);
                    }
                    sent += k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return false,
                        r = ep.socket.writable() => if let Err(e) = r {
                            log_error("write", write_errors, ep.local, &e);
                            for _ in sent..tx.len() {
                                t.write_error += 1;
                            }
                            return true;
                        },
                    }
                }
                Ok(_) => {
                    // sendmmsg sent nothing without an error: skip one so we cannot spin.
                    t.write_error += 1;
                    sent += 1;
                }
                Err(e) => {
                    // The first pending response failed (e.g. EHOSTUNREACH): skip it.
                    log_error("write", write_errors, ep.local, &e);
                    t.write_error += 1;
                    sent += 1;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use derp_proto::stun::TxId;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;

    /// Counter values by `name{label=value}`.
    fn counters(snapshotter: &Snapshotter) -> HashMap<String, u64> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let DebugValue::Counter(n) = value else {
                    return None;
                };
                let key = key.key();
                let labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                Some((format!("{}{{{}}}", key.name(), labels.join(",")), n))
            })
            .collect()
    }

    #[tokio::test]
    async fn every_datagram_is_counted_once() {
        for batch in [1, defaults::BATCH] {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            let metrics = metrics::with_local_recorder(&recorder, Metrics::new);
            let config = Config {
                listen: vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
                batch,
                ..Default::default()
            };
            let server = Server::bind_with(config, metrics).await.unwrap();
            let addrs = server.local_addrs();
            let cancel = CancellationToken::new();
            let task = server.spawn(cancel.clone());

            let v4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let v6 = UdpSocket::bind("[::1]:0").await.unwrap();
            let good = stun::binding_request(TxId([7; 12]));
            let mut bad_fingerprint = good;
            bad_fingerprint[39] ^= 1;
            // A standard request with CHANGE-REQUEST: answered with a 420, so bad_request.
            let mut change = vec![0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42];
            change.extend_from_slice(&[9; 12]);
            change.extend_from_slice(&[0, 3, 0, 4, 0, 0, 0, 6]);
            v4.send_to(&good, addrs[0]).await.unwrap();
            v6.send_to(&good, addrs[1]).await.unwrap();
            v4.send_to(b"definitely not stun", addrs[0]).await.unwrap();
            v4.send_to(&bad_fingerprint, addrs[0]).await.unwrap();
            v4.send_to(&change, addrs[0]).await.unwrap();
            let mut buf = [0u8; 256];
            for sock in [&v4, &v6, &v4] {
                tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
            }

            let want: HashMap<String, u64> = [
                ("stun_requests_total{disposition=success}", 2),
                ("stun_requests_total{disposition=not_stun}", 1),
                ("stun_requests_total{disposition=bad_request}", 2),
                ("stun_requests_by_family_total{family=ipv4}", 2),
                ("stun_requests_by_family_total{family=ipv6}", 1),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            // The loop flushes its tally right after sending; poll briefly for the last flush.
            let mut got = HashMap::new();
            for _ in 0..100 {
                got = counters(&snapshotter);
                got.retain(|_, v| *v != 0);
                if got == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(got, want, "batch {batch}");
            cancel.cancel();
            task.await.unwrap();
        }
    }
}
