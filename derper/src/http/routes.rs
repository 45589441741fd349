//! Plain HTTP endpoints, served by hyper: probes, the captive-portal check, robots, home page.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

/// What the home page shows (derper's `--home`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomePage {
    /// The built-in page.
    Default,
    /// An empty 200 page.
    Blank,
    /// A 302 redirect to this URL.
    Redirect(String),
}

impl HomePage {
    /// Parses derper's `--home` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" => Ok(Self::Default),
            "blank" => Ok(Self::Blank),
            s if s.starts_with("http://") || s.starts_with("https://") => {
                Ok(Self::Redirect(s.to_string()))
            }
            other => Err(format!(
                "--home must be empty, \"blank\" or an http(s) URL, not {other:?}"
            )),
        }
    }
}

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The main DERP listener.
    Main,
    /// The plain-HTTP port that accompanies TLS: captive-portal checks, else redirect.
    Port80,
}

pub(crate) type Body = Full<Bytes>;

/// The default home page: says what the endpoint is for and names no software or version,
/// so a scanner learns nothing it could match against a vulnerability list.
const HOME_HTML: &str = "<!doctype html>\n<html><head><title>DERP</title></head><body>\n<p>This is a DERP relay. It relays encrypted packets between nodes that cannot reach each other directly.</p>\n</body></html>\n";

/// A `200` JSON answer that no cache keeps.
pub(crate) fn json(body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn browser_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; block-all-mixed-content; object-src 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// Whether a captive-portal challenge may be echoed: at most 64 characters of `[A-Za-z0-9._:-]`.
fn valid_challenge(c: &[u8]) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn generate_204<B>(req: &Request<B>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    if let Some(c) = req.headers().get("X-Tailscale-Challenge")
        && valid_challenge(c.as_bytes())
    {
        let mut v = b"response ".to_vec();
        v.extend_from_slice(c.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            r.headers_mut().insert("X-Tailscale-Response", v);
        }
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate, no-transform, max-age=0"),
    );
    r
}

/// Answers one request that is not a DERP upgrade.
pub(crate) fn respond<B>(
    req: &Request<B>,
    listener: Listener,
    home: &HomePage,
    derp_enabled: bool,
) -> Response<Body> {
    let path = req.uri().path();
    if path == "/generate_204" {
        return generate_204(req);
    }
    if listener == Listener::Port80 {
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let target = format!(
                "https://{host}{}",
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            let mut r = text(StatusCode::FOUND, "");
            if let Ok(v) = HeaderValue::from_str(&target) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        return text(StatusCode::BAD_REQUEST, "Use HTTPS\n");
    }
    match path {
        "/derp/probe" | "/derp/latency-check" => {
            if matches!(*req.method(), Method::GET | Method::HEAD) {
                let mut r = Response::new(Full::new(Bytes::new()));
                r.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                r
            } else {
                text(StatusCode::METHOD_NOT_ALLOWED, "bogus probe method\n")
            }
        }
        "/derp" => {
            if derp_enabled {
                text(
                    StatusCode::UPGRADE_REQUIRED,
                    "DERP requires connection upgrade\n",
                )
            } else {
                text(StatusCode::NOT_FOUND, "derp server disabled\n")
            }
        }
        "/robots.txt" => {
            let mut r = text(StatusCode::OK, "User-agent: *\nDisallow: /\n");
            browser_headers(&mut r);
            r
        }
        "/" => {
            let mut r = match home {
                HomePage::Default => {
                    let mut r = Response::new(Full::new(Bytes::from_static(HOME_HTML.as_bytes())));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    r
                }
                HomePage::Blank => text(StatusCode::OK, ""),
                HomePage::Redirect(url) => {
                    let mut r = text(StatusCode::FOUND, "");
                    if let Ok(v) = HeaderValue::from_str(url) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r
                }
            };
            browser_headers(&mut r);
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Adapts [`respond`] to hyper's service signature.
pub(crate) async fn service<B>(
    req: Request<B>,
    listener: Listener,
    home: &HomePage,
    derp_enabled: bool,
) -> Result<Response<Body>, Infallible> {
    Ok(respond(&req, listener, home, derp_enabled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    #[test]
    fn challenge_is_echoed_only_when_valid() {
        let req = Request::builder()
            .uri("/generate_204")
            .header("X-Tailscale-Challenge", "ts_127.0.0.1")
            .body(())
            .unwrap();
        let r = respond(&req, Listener::Main, &HomePage::Default, true);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["X-Tailscale-Response"], "response ts_127.0.0.1");
        let bad = Request::builder()
            .uri("/generate_204")
            .header("X-Tailscale-Challenge", "a b")
            .body(())
            .unwrap();
        let r = respond(&bad, Listener::Main, &HomePage::Default, true);
        assert!(r.headers().get("X-Tailscale-Response").is_none());
        let long = "a".repeat(65);
        let bad = Request::builder()
            .uri("/generate_204")
            .header("X-Tailscale-Challenge", long.as_str())
            .body(())
            .unwrap();
        assert!(
            respond(&bad, Listener::Port80, &HomePage::Default, true)
                .headers()
                .get("X-Tailscale-Response")
                .is_none()
        );
    }

    #[test]
    fn probes_and_derp_without_upgrade() {
        let r = respond(
            &get("/derp/probe"),
            Listener::Main,
            &HomePage::Default,
            true,
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let post = Request::builder()
            .method("POST")
            .uri("/derp/latency-check")
            .body(())
            .unwrap();
        assert_eq!(
            respond(&post, Listener::Main, &HomePage::Default, true).status(),
            405
        );
        assert_eq!(
            respond(&get("/derp"), Listener::Main, &HomePage::Default, true).status(),
            426
        );
        assert_eq!(
            respond(&get("/derp"), Listener::Main, &HomePage::Default, false).status(),
            404
        );
    }

    #[test]
    fn port80_redirects() {
        let req = Request::builder()
            .uri("/x?y=1")
            .header("Host", "derp.example")
            .body(())
            .unwrap();
        let r = respond(&req, Listener::Port80, &HomePage::Default, true);
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()["location"], "https://derp.example/x?y=1");
    }

    #[test]
    fn home_page_modes() {
        assert_eq!(HomePage::parse("blank").unwrap(), HomePage::Blank);
        assert!(HomePage::parse("ftp://x").is_err());
        let r = respond(
            &get("/"),
            Listener::Main,
            &HomePage::Redirect("https://example.com".into()),
            true,
        );
        assert_eq!(r.status(), StatusCode::FOUND);
    }
}
