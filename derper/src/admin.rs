//! The admin listener (`--metrics-addr`): Prometheus `/metrics`, `/healthz`, `/readyz`, and
//! `POST /admin/drain`. Kept off the public listener: it is for the operator's network
//! (kubelet probes, Prometheus), never for clients.
//!
//! - `/healthz`: `200` while the process runs, draining included (a liveness probe must not
//!   kill a relay that is draining on purpose).
//! - `/readyz`: `200` while serving, `503` from the moment a drain starts, so a load balancer
//!   stops sending new clients before connections are closed.
//! - `POST /admin/drain`: starts the same drain as SIGTERM; `202`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::defaults;
use crate::relay::Relay;

/// What the admin endpoints act on.
#[derive(Debug, Clone)]
pub struct AdminContext {
    /// Renders `/metrics`; `None` answers 404 there.
    pub prometheus: Option<PrometheusHandle>,
    /// The relay whose readiness `/readyz` reports.
    pub relay: Relay,
    /// Notified by `POST /admin/drain`; whoever owns the process drains it.
    pub drain: Arc<Notify>,
}

/// Binds `addr` and serves the admin endpoints until `cancel`. Returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    ctx: AdminContext,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let ctx = Arc::new(ctx);
    if let Some(handle) = ctx.prometheus.clone() {
        // Without the exporter's own listener, its upkeep (histogram buckets) is ours to run.
        let c = cancel.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(defaults::METRICS_UPKEEP);
            loop {
                tokio::select! {
                    _ = c.cancelled() => return,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
    }
    let t = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(defaults::ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let ctx = ctx.clone();
            let c = cancel.clone();
            t.spawn(async move {
                let svc = service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &ctx)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(defaults::HTTP_HEAD_TIMEOUT)
                    .max_buf_size(defaults::MAX_HTTP_HEAD)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = c.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
    });
    Ok(local)
}

fn respond<B>(req: &Request<B>, ctx: &AdminContext) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => match &ctx.prometheus {
            Some(h) => {
                let mut r = Response::new(Full::new(Bytes::from(h.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "metrics are not recorded\n"),
        },
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if ctx.relay.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
        }
        (&Method::POST, "/admin/drain") => {
            ctx.drain.notify_one();
            text(StatusCode::ACCEPTED, "draining\n")
        }
        (_, "/admin/drain") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
