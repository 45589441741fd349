//! TCP accept loops: connection limit, descriptor exhaustion as back-pressure, socket options,
//! TLS, then the HTTP layer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::defaults;
use crate::http::{self, HttpContext};
use crate::metrics::{HandshakeFailure, Metrics};
use crate::relay::limiter::TokenBucket;

/// Which HTTP behaviour a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Main,
    Port80,
}

pub(crate) struct AcceptLoop {
    pub(crate) listener: TcpListener,
    pub(crate) role: Role,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) ctx: Arc<HttpContext>,
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tcp_keepalive: Duration,
    pub(crate) tcp_user_timeout: Duration,
    /// `--accept-connection-limit`: (connections per second, burst), main listener only.
    pub(crate) accept_rate: Option<(f64, u32)>,
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

fn tune(stream: &TcpStream, keepalive: Duration, user_timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    if !keepalive.is_zero() {
        let _ = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(keepalive));
    }
    if !user_timeout.is_zero() {
        let _ = sock.set_tcp_user_timeout(Some(user_timeout));
    }
}

impl AcceptLoop {
    pub(crate) async fn run(self, cancel: CancellationToken, tasks: TaskTracker) {
        let mut last_fd_log: Option<Instant> = None;
        let mut last_limit_log: Option<Instant> = None;
        let mut last_rate_log: Option<Instant> = None;
        let mut accept_rate = self
            .accept_rate
            .map(|(rate, burst)| TokenBucket::new(rate, burst, Instant::now()));
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.listener.accept() => r,
            };
            let (stream, remote) = match accepted {
                Ok(x) => x,
                Err(e) if is_fd_exhaustion(&e) => {
                    self.metrics.accept_fd_exhausted.increment(1);
                    if last_fd_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "out of file descriptors: pausing accepts; existing clients are unaffected");
                        last_fd_log = Some(Instant::now());
                    }
                    tokio::time::sleep(defaults::ACCEPT_BACKOFF).await;
                    continue;
                }
                Err(e) => {
                    self.metrics.accept_other_errors.increment(1);
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Some(bucket) = &mut accept_rate {
                // As derper: accept and close at once rather than leave connections queued in
                // the kernel, so clients see the refusal and back off.
                if !bucket.allow(Instant::now()) {
                    self.metrics.accept_limit_rejected.increment(1);
                    if last_rate_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!("accept rate limit reached: closing new connections");
                        last_rate_log = Some(Instant::now());
                    }
                    drop(stream);
                    continue;
                }
                self.metrics.accept_limit_accepted.increment(1);
            }
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                // Over the limit: close at once so the client fails fast and retries elsewhere.
                self.metrics.connection_limit_rejections.increment(1);
                if last_limit_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!("connection limit reached: refusing new connections");
                    last_limit_log = Some(Instant::now());
                }
                drop(stream);
                continue;
            };
            tune(&stream, self.tcp_keepalive, self.tcp_user_timeout);
            let ctx = self.ctx.clone();
            let tls = self.tls.clone();
            let role = self.role;
            let metrics = self.metrics.clone();
            tasks.spawn(async move {
                let _permit = permit;
                serve(stream, remote, role, tls, ctx, metrics).await;
            });
        }
    }
}

async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    role: Role,
    tls: Option<TlsAcceptor>,
    ctx: Arc<HttpContext>,
    metrics: Arc<Metrics>,
) {
    match tls {
        Some(acceptor) => {
            // Boxed futures throughout: a task is as large as its largest state, and the TLS
            // handshake's state is ~10 KiB that an established connection must not keep.
            let handshake = Box::pin(tokio::time::timeout(
                defaults::HANDSHAKE_TIMEOUT,
                acceptor.accept(stream),
            ));
            let tls_stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.handshake_failed(HandshakeFailure::Http);
                    tracing::debug!(%remote, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.handshake_failed(HandshakeFailure::Timeout);
                    tracing::debug!(%remote, "tls handshake timed out");
                    return;
                }
            };
            // The TLS stream (~2 KiB with rustls' state) goes on the heap once: futures keep
            // their arguments' slots for their whole life, so passing it by value would leave a
            // dead copy in every future it passes through.
            let tls_stream = Box::new(tls_stream);
            if tls_stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_ACME_TLS_1) {
                // An ACME TLS-ALPN-01 validation: the handshake itself was the answer
                // (RFC 8737 3: the server may close once it completes).
                return;
            }
            match role {
                Role::Main => Box::pin(http::serve_main(tls_stream, remote, ctx)).await,
                Role::Port80 => Box::pin(http::serve_port80(tls_stream, ctx)).await,
            }
        }
        None => match role {
            Role::Main => Box::pin(http::serve_main(stream, remote, ctx)).await,
            Role::Port80 => Box::pin(http::serve_port80(stream, ctx)).await,
        },
    }
}

/// Binds a TCP listener; an unspecified IPv6 address is bound dual-stack, as Go does for `:port`.
pub(crate) fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::http::{HomePage, HttpContext};
    use crate::relay::{ConnMeta, TransportKind};
    use crate::{Relay, RelayConfig};

    /// Every idle connection is one task whose size is its future's largest state: these
    /// bounds keep TLS handshake and HTTP parsing state out of established connections (each
    /// big stage is boxed and freed when it ends).
    #[tokio::test]
    async fn connection_futures_stay_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut _clients = Vec::new();
        for _ in 0..3 {
            _clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let (stream, remote) = l.accept().await.unwrap();
        let relay = Relay::new(
            RelayConfig::new(derp_proto::NodeSecretKey::generate()),
            Arc::new(crate::metrics::Metrics::new()),
        );
        let ctx = Arc::new(HttpContext {
            relay: relay.clone(),
            home: HomePage::Default,
            derp_enabled: true,
            upgrade_response: bytes::Bytes::new(),
            acme: None,
            bootstrap_dns: None,
            derp_map: None,
        });
        let metrics = relay.metrics().clone();
        let accept = relay.accept(
            stream,
            bytes::BytesMut::new(),
            ConnMeta::new(remote, TransportKind::Upgrade),
        );
        assert!(
            size_of_val(&accept) <= 2048,
            "accept: {}",
            size_of_val(&accept)
        );
        drop(accept);
        let (stream, _) = l.accept().await.unwrap();
        let main = crate::http::serve_main(stream, remote, ctx.clone());
        assert!(
            size_of_val(&main) <= 512,
            "serve_main: {}",
            size_of_val(&main)
        );
        drop(main);
        let (stream, _) = l.accept().await.unwrap();
        let task = super::serve(stream, remote, super::Role::Main, None, ctx, metrics);
        assert!(
            size_of_val(&task) <= 512,
            "connection task: {}",
            size_of_val(&task)
        );
    }
}
