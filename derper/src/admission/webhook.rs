//! The admission webhook: derper's `--verify-client-url` protocol.
//!
//! One `POST` per question with `tailcfg.DERPAdmitClientRequest` as JSON
//! (`{"NodePublic":"nodekey:<hex>","Source":"<ip>"}`); a `200` answer carries
//! `tailcfg.DERPAdmitClientResponse` (`{"Allow":true}`). Headscale's `/verify` speaks exactly
//! this. Anything else (no connection, a deadline, another status, a body that is not that
//! JSON) is no answer, and the caller's fail-open policy decides.

use std::net::IpAddr;

use bytes::Bytes;
use derp_proto::NodePublicKey;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::{Answer, CallError};
use crate::defaults;

/// `tailcfg.DERPAdmitClientRequest`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct AdmitRequest {
    node_public: String,
    source: IpAddr,
}

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client for one admission URL, keeping connections to it alive between questions.
#[derive(Clone)]
pub(crate) struct Webhook {
    url: http::Uri,
    bearer: Option<HeaderValue>,
    client: Client<HttpsConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bearer token is a secret: never printed.
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("bearer", &self.bearer.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// A client for `url` (http or https; https is verified against the system roots),
    /// sending `Authorization: Bearer <token>` when a token is given.
    pub(crate) fn new(url: &str, bearer_token: Option<&str>) -> Result<Self, String> {
        let url: http::Uri = url
            .parse()
            .map_err(|e| format!("verify client URL {url:?}: {e}"))?;
        let bearer = bearer_token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| {
                        "bearer token holds characters not allowed in a header".to_string()
                    })
            })
            .transpose()?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("loading system root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(defaults::ADMISSION_IDLE_CONNECTION)
            .pool_max_idle_per_host(defaults::ADMISSION_MAX_IN_FLIGHT)
            .build(connector);
        Ok(Self {
            url,
            bearer,
            client,
        })
    }

    /// Asks whether `key`, connecting from `source`, may connect. The caller bounds the time.
    pub(crate) async fn ask(
        &self,
        key: &NodePublicKey,
        source: IpAddr,
    ) -> Result<Answer, CallError> {
        let body = serde_json::to_vec(&AdmitRequest {
            node_public: format!("nodekey:{}", key.to_hex()),
            source,
        })
        .map_err(|e| CallError::BadBody(e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        if let Some(b) = &self.bearer {
            req.headers_mut().insert(header::AUTHORIZATION, b.clone());
        }
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| CallError::Unreachable(error_chain(&e)))?;
        let status = res.status();
        // Read at most what derper reads; a bigger body is not an answer.
        let body = Limited::new(res.into_body(), defaults::ADMISSION_MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| CallError::BadBody(format!("reading the answer: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(CallError::BadStatus(status.as_u16()));
        }
        parse_answer(&body)
    }
}

/// Reads a `200` answer's body: `tailcfg.DERPAdmitClientResponse`, a JSON object whose `Allow`
/// is a boolean. Other keys are ignored and a repeated key counts once, its last value, as in
/// Go's `encoding/json`; any other shape (an array, a string `"true"`, no `Allow`) is no answer.
/// Not a derived `Deserialize`: serde would also read `[true]`, a sequence, as the struct.
pub(crate) fn parse_answer(body: &[u8]) -> Result<Answer, CallError> {
    let bad = |why: String| {
        CallError::BadBody(format!(
            "not a DERPAdmitClientResponse ({why}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(64)])
        ))
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let Some(object) = value.as_object() else {
        return Err(bad("not a JSON object".into()));
    };
    match object.get("Allow") {
        Some(serde_json::Value::Bool(true)) => Ok(Answer::Allow),
        Some(serde_json::Value::Bool(false)) => Ok(Answer::Deny),
        Some(_) => Err(bad("Allow is not a boolean".into())),
        None => Err(bad("no Allow".into())),
    }
}

/// An error and its causes on one line (hyper's top-level message alone says little).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headscale's answers, and the shapes that are no answer. `[true]` was an Allow while the
    /// body went through a derived `Deserialize`, which also reads a struct from a sequence.
    #[test]
    fn only_an_object_with_a_boolean_allow_answers() {
        assert_eq!(
            parse_answer(b"{\"Allow\":true}\n").ok(),
            Some(Answer::Allow)
        );
        assert_eq!(
            parse_answer(b"{\"Allow\":false}\n").ok(),
            Some(Answer::Deny)
        );
        assert_eq!(
            parse_answer(br#"{"Reason":"x","Allow":false,"Allow":true}"#).ok(),
            Some(Answer::Allow),
            "the last of a repeated key counts, as in Go"
        );
        for body in [
            &b"[true]"[..],
            b"true",
            b"{}",
            br#"{"Allow":"true"}"#,
            br#"{"Allow":1}"#,
            br#"{"Allow":null}"#,
            br#"{"Allow":true} x"#,
            b"",
        ] {
            assert!(
                matches!(parse_answer(body), Err(CallError::BadBody(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
