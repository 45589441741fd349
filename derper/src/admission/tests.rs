//! Admission against a webhook served here: answers, failures, the storm, the cache.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use derp_proto::NodeSecretKey;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;

/// How the test webhook answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    AllowAll,
    DenyAll,
    Garbage,
    ServerError,
    Hang,
}

struct Hook {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    last_auth: Arc<Mutex<Option<String>>>,
    last_body: Arc<Mutex<Option<serde_json::Value>>>,
}

async fn hook(mode: Mode) -> Hook {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mode = Arc::new(Mutex::new(mode));
    let last_auth = Arc::new(Mutex::new(None));
    let last_body = Arc::new(Mutex::new(None));
    let (c, m, a, b) = (
        calls.clone(),
        mode.clone(),
        last_auth.clone(),
        last_body.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (c, m, a, b) = (c.clone(), m.clone(), a.clone(), b.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (c, m, a, b) = (c.clone(), m.clone(), a.clone(), b.clone());
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        *a.lock().unwrap() = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        *b.lock().unwrap() = serde_json::from_slice(&body).ok();
                        let mode = *m.lock().unwrap();
                        let (status, text): (u16, &str) = match mode {
                            Mode::AllowAll => (200, r#"{"Allow":true}"#),
                            Mode::DenyAll => (200, r#"{"Allow":false}"#),
                            Mode::Garbage => (200, "<html>proxy error</html>"),
                            Mode::ServerError => (500, "oops"),
                            Mode::Hang => {
                                std::future::pending::<()>().await;
                                unreachable!()
                            }
                        };
                        let mut r = http::Response::new(Full::new(Bytes::from(text)));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Hook {
        addr,
        calls,
        mode,
        last_auth,
        last_body,
    }
}

fn settings(url: String) -> AdmissionSettings {
    AdmissionSettings {
        verify_client_url: Some(url),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn key() -> NodePublicKey {
    NodeSecretKey::generate().public_key()
}

const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

#[tokio::test]
async fn speaks_derpers_json_and_follows_the_answer() {
    let h = hook(Mode::AllowAll).await;
    let a = Admission::from_settings(&settings(format!("http://{}/verify", h.addr)))
        .unwrap()
        .unwrap();
    let k = key();
    assert_eq!(a.check(&k, SRC).await, Verdict::Admit);
    let body = h.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(body["NodePublic"], format!("nodekey:{}", k.to_hex()));
    assert_eq!(body["Source"], "192.0.2.7");
    assert_eq!(*h.last_auth.lock().unwrap(), None);

    *h.mode.lock().unwrap() = Mode::DenyAll;
    let other = key();
    assert!(matches!(a.check(&other, SRC).await, Verdict::Refuse(_)));
    // Both verdicts are cached: no further calls.
    let calls = h.calls.load(Ordering::SeqCst);
    assert_eq!(a.check(&k, SRC).await, Verdict::Admit);
    assert!(matches!(a.check(&other, SRC).await, Verdict::Refuse(_)));
    assert_eq!(h.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn no_answer_refuses_unless_fail_open_and_is_not_cached() {
    for mode in [Mode::Garbage, Mode::ServerError] {
        let h = hook(mode).await;
        let mut s = settings(format!("http://{}/", h.addr));
        let closed = Admission::from_settings(&s).unwrap().unwrap();
        let k = key();
        let v = closed.check(&k, SRC).await;
        assert!(
            matches!(&v, Verdict::Refuse(why) if why.contains("no answer")),
            "{mode:?}: {v:?}"
        );
        // Not cached: the next connection asks again.
        closed.check(&k, SRC).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 2, "{mode:?}");
        s.fail_open = true;
        let open = Admission::from_settings(&s).unwrap().unwrap();
        assert_eq!(open.check(&k, SRC).await, Verdict::Admit, "{mode:?}");
    }
    // Nothing listening at all.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", dead.local_addr().unwrap());
    drop(dead);
    let a = Admission::from_settings(&settings(url)).unwrap().unwrap();
    assert!(matches!(a.check(&key(), SRC).await, Verdict::Refuse(_)));
}

#[tokio::test]
async fn a_hanging_webhook_costs_one_deadline() {
    let h = hook(Mode::Hang).await;
    let mut s = settings(format!("http://{}/", h.addr));
    s.timeout = Duration::from_millis(300);
    let a = Admission::from_settings(&s).unwrap().unwrap();
    let k = key();
    // Three connections of one key: one question, all three refused at its deadline.
    let (x, y, z) = tokio::join!(a.check(&k, SRC), a.check(&k, SRC), a.check(&k, SRC));
    for v in [x, y, z] {
        assert!(
            matches!(&v, Verdict::Refuse(why) if why.contains("no answer")),
            "{v:?}"
        );
    }
    assert_eq!(h.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reconnect_storm_asks_once_per_key_then_never_within_the_ttl() {
    let h = hook(Mode::AllowAll).await;
    let mut s = settings(format!("http://{}/", h.addr));
    // The deadline counts queueing for one of the 64 call slots: generous, so a loaded CI
    // machine measures the call count, not its own speed.
    s.timeout = Duration::from_secs(120);
    let a = Admission::from_settings(&s).unwrap().unwrap();
    let keys: Vec<NodePublicKey> = (0..10_000).map(|_| key()).collect();
    // Every key arrives twice at once, as clients with two connections (or a retry).
    let mut set = tokio::task::JoinSet::new();
    for k in keys.iter().chain(keys.iter()) {
        let a = a.clone();
        let k = *k;
        set.spawn(async move { a.check(&k, SRC).await });
    }
    while let Some(v) = set.join_next().await {
        assert_eq!(v.unwrap(), Verdict::Admit);
    }
    assert_eq!(h.calls.load(Ordering::SeqCst), 10_000, "one call per key");
    // The same storm again within the positive TTL: answered from the cache.
    for k in &keys {
        assert_eq!(a.check(k, SRC).await, Verdict::Admit);
    }
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        10_000,
        "no calls within the TTL"
    );
}

#[tokio::test]
async fn bearer_token_is_sent() {
    let h = hook(Mode::AllowAll).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let mut s = settings(format!("http://{}/", h.addr));
    s.bearer_token_file = Some(token);
    let a = Admission::from_settings(&s).unwrap().unwrap();
    a.check(&key(), SRC).await;
    assert_eq!(
        h.last_auth.lock().unwrap().as_deref(),
        Some("Bearer s3cret")
    );
    assert!(
        !format!("{a:?}").contains("s3cret"),
        "the token is never printed"
    );
    s.bearer_token_file = Some(dir.path().join("missing"));
    let e = Admission::from_settings(&s).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[tokio::test]
async fn an_asker_that_goes_away_hands_the_question_on() {
    let h = hook(Mode::Hang).await;
    let mut s = settings(format!("http://{}/", h.addr));
    s.timeout = Duration::from_secs(30);
    let a = Admission::from_settings(&s).unwrap().unwrap();
    let k = key();
    // The first connection asks, then its client leaves (the future is dropped).
    let first = tokio::time::timeout(Duration::from_millis(100), a.check(&k, SRC)).await;
    assert!(first.is_err());
    // The question was forgotten: the next connection asks (and gets its answer).
    *h.mode.lock().unwrap() = Mode::AllowAll;
    assert_eq!(a.check(&k, SRC).await, Verdict::Admit);
    assert_eq!(h.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn local_tailscaled_whois_decides() {
    // A LocalAPI stand-in on a unix socket: 200 for one key, 404 for the rest.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tailscaled.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let known = key();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let q = req.uri().to_string();
                        seen.lock().unwrap().push(q.clone());
                        let status = if q.contains(&known.to_hex()) {
                            200
                        } else {
                            404
                        };
                        let mut r = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let s = AdmissionSettings {
        verify_clients: true,
        tailscaled_socket: Some(sock),
        ..Default::default()
    };
    let a = Admission::from_settings(&s).unwrap().unwrap();
    assert_eq!(a.check(&known, SRC).await, Verdict::Admit);
    assert!(matches!(a.check(&key(), SRC).await, Verdict::Refuse(_)));
    let seen = seen.lock().unwrap();
    assert!(
        seen[0].starts_with("/localapi/v0/whois?addr=nodekey:"),
        "{seen:?}"
    );
}
