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
            let tls_stream =
                match tokio::time::timeout(defaults::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                    .await
                {
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
            match role {
                Role::Main => http::serve_main(tls_stream, remote, ctx).await,
                Role::Port80 => http::serve_port80(tls_stream, ctx).await,
            }
        }
        None => match role {
            Role::Main => http::serve_main(stream, remote, ctx).await,
            Role::Port80 => http::serve_port80(stream, ctx).await,
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
