//! The answers the CA checks while it validates an order: HTTP-01 key authorizations (served on
//! the `--http-port` listener) and TLS-ALPN-01 certificates (served to `acme-tls/1` handshakes
//! on the main listener). Filled by the issuing task, read by the listeners.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::defaults;
use crate::metrics::{AcmeChallengeKind, Metrics};

/// Where HTTP-01 answers live (RFC 8555 8.3).
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The pending challenge answers of the current order. At most one order runs at a time and it
/// has one challenge per hostname, so both maps hold at most
/// [`defaults::ACME_MAX_HOSTNAMES`] entries; they are emptied when the order ends.
#[derive(Debug)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: lowercase hostname → validation certificate.
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    provider: Arc<CryptoProvider>,
    metrics: Arc<Metrics>,
}

impl Challenges {
    /// An empty set.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            http01: Mutex::default(),
            tls_alpn01: Mutex::default(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            metrics,
        }
    }

    /// Answers `token` with `key_authorization` on the HTTP-01 path until [`Self::clear`].
    pub(crate) fn add_http01(&self, token: &str, key_authorization: &str) {
        let mut map = self.http01.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() < defaults::ACME_MAX_HOSTNAMES {
            map.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    /// Builds and serves the TLS-ALPN-01 certificate for `hostname` (RFC 8737 3: self-signed,
    /// the name as its only SAN, the critical `acmeIdentifier` extension holding
    /// `digest` = SHA-256 of the key authorization) until [`Self::clear`].
    pub(crate) fn add_tls_alpn01(&self, hostname: &str, digest: &[u8]) -> Result<(), String> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(vec![hostname.to_owned()]).map_err(|e| e.to_string())?;
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = self
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| e.to_string())?;
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        let mut map = self
            .tls_alpn01
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() < defaults::ACME_MAX_HOSTNAMES {
            map.insert(hostname.to_ascii_lowercase(), certified);
        }
        Ok(())
    }

    /// Forgets every answer (the order ended, however it ended).
    pub(crate) fn clear(&self) {
        self.http01
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.tls_alpn01
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The validation certificate for an `acme-tls/1` handshake with this SNI.
    pub(crate) fn tls_alpn01(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let found = self
            .tls_alpn01
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sni.to_ascii_lowercase())
            .cloned();
        match &found {
            Some(_) => self
                .metrics
                .acme_challenge_served(AcmeChallengeKind::TlsAlpn01),
            None => tracing::debug!(
                sni,
                "acme-tls/1 handshake for a name with no pending challenge"
            ),
        }
        found
    }

    /// The HTTP-01 answer for a request path, or `None` when the path is not an HTTP-01 one
    /// (other routes then answer it). An unknown token is a 404.
    pub(crate) fn http01_response(&self, path: &str) -> Option<Response<Full<Bytes>>> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        let answer = self
            .http01
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned();
        let (status, body) = match answer {
            Some(key_authorization) => {
                self.metrics
                    .acme_challenge_served(AcmeChallengeKind::Http01);
                (StatusCode::OK, Bytes::from(key_authorization))
            }
            None => (
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"no such challenge\n"),
            ),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use derp_proto::cert::der::{DerReader, TAG_OCTET_STRING};
    use http_body_util::BodyExt as _;

    fn challenges() -> Challenges {
        Challenges::new(Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn http01_answers_known_tokens_only() {
        let c = challenges();
        assert!(c.http01_response("/derp").is_none(), "not ours");
        c.add_http01("tok", "tok.thumb");
        let r = c
            .http01_response("/.well-known/acme-challenge/tok")
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"tok.thumb");
        let r = c
            .http01_response("/.well-known/acme-challenge/other")
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        c.clear();
        let r = c
            .http01_response("/.well-known/acme-challenge/tok")
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn tls_alpn01_certificate_carries_the_digest() {
        let c = challenges();
        let digest = [7u8; 32];
        c.add_tls_alpn01("Derp.Example.com", &digest).unwrap();
        let key = c
            .tls_alpn01("derp.example.COM")
            .expect("case-insensitive SNI");
        assert!(c.tls_alpn01("other.example.com").is_none());
        let der = key.cert[0].as_ref();
        // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, OCTET STRING { OCTET STRING(32) }.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("extension present");
        let rest = &der[at + oid.len()..];
        assert_eq!(&rest[..3], &[0x01, 0x01, 0xff], "critical");
        let outer = DerReader::new(&rest[3..]).expect(TAG_OCTET_STRING).unwrap();
        let inner = DerReader::new(outer).expect(TAG_OCTET_STRING).unwrap();
        assert_eq!(inner, digest);
        c.clear();
        assert!(c.tls_alpn01("derp.example.com").is_none());
    }
}
