//! TLS for DERP clients (our client, mesh peers and the load generator).
//!
//! Two things live here:
//!
//! * [`client_config`] builds a rustls [`ClientConfig`] that checks a relay's certificate the
//!   way Tailscale's clients do (`net/tlsdial`): WebPKI roots, a `sha256-raw:` pin taken from a
//!   DERPNode's `CertName`, or (tests only) nothing at all. No ALPN is offered, as Tailscale's
//!   DERP client offers none.
//! * [`server_key_from_connection`] reads the relay's *metacert* (see [`crate::cert`]) from an
//!   established connection, only under TLS 1.3, where certificates are encrypted.
//!
//! The pure certificate code (metacert parsing, `sha256-raw:` pins, the DER walk) lives in
//! [`crate::cert`], outside this feature; it is re-exported here for existing callers.
//! Name checks reuse rustls' own webpki.
//!
//! Every config is built with the ring provider passed explicitly, never the process default.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, OtherError,
    ProtocolVersion, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::cert::pin_from_cert_name;
#[doc(no_inline)]
pub use crate::cert::{
    CERT_NAME_PIN_PREFIX, CertSummary, METACERT_CN_PREFIX, parse_cert_summary, pin_cert_name,
    server_key_from_certs,
};

/// How a client checks the relay's certificate chain.
#[derive(Clone)]
pub enum ServerVerify {
    /// Normal WebPKI verification against the Mozilla roots in `webpki-roots` (which include
    /// Let's Encrypt, the roots Tailscale's clients bake in).
    WebPki,
    /// Accept any certificate. The handshake signature is still checked against the presented
    /// leaf, as Go's `InsecureSkipVerify` does. For tests and benchmarks only.
    Insecure,
    /// `sha256-raw:` pinning, with the exact semantics of Tailscale's
    /// `tlsdial.SetConfigExpectedCertHash`: certificates whose CN starts with `derpkey` are
    /// ignored, exactly one other certificate must be presented, its SHA-256 must equal the pin,
    /// it must be valid for the dialed name and the current time lies in its validity window.
    Pin([u8; 32]),
    /// Normal WebPKI verification against these roots instead of the baked-in Mozilla set:
    /// the system trust store or an operator's CA bundle (mesh links).
    Roots(Arc<RootCertStore>),
}

impl PartialEq for ServerVerify {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::WebPki, Self::WebPki) | (Self::Insecure, Self::Insecure) => true,
            (Self::Pin(a), Self::Pin(b)) => a == b,
            // Root stores have no equality; the same store is the same policy.
            (Self::Roots(a), Self::Roots(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for ServerVerify {}

impl fmt::Debug for ServerVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WebPki => f.write_str("WebPki"),
            Self::Insecure => f.write_str("Insecure"),
            Self::Pin(pin) => write!(f, "Pin({CERT_NAME_PIN_PREFIX}{})", hex::encode(pin)),
            Self::Roots(roots) => write!(f, "Roots({} certificates)", roots.len()),
        }
    }
}

impl ServerVerify {
    /// Parses a DERPNode `CertName` of the form `sha256-raw:<64 lowercase hex>`.
    ///
    /// Returns `None` for anything else, including uppercase hex: Go compares the pin as a
    /// lowercase hex string, so such a pin could never match there either. A `CertName`
    /// without the prefix is a DNS name to verify instead (not supported by [`ServerVerify`]).
    pub fn from_cert_name(s: &str) -> Option<Self> {
        pin_from_cert_name(s).map(Self::Pin)
    }
}

/// Builds a client config for dialing a relay: TLS 1.2 and 1.3, no ALPN, ring provider.
///
/// SNI follows the `ServerName` given to the connector; rustls sends none for IP addresses, as
/// Go does.
pub fn client_config(verify: ServerVerify) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // Only fails if the provider has no cipher suite for a requested version; ring's
        // default provider has suites for both.
        .expect("ring provider supports TLS 1.2 and 1.3");
    let config = match verify {
        ServerVerify::WebPki => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerVerify::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        ServerVerify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(InsecureVerifier { algs }))
            .with_no_client_auth(),
        ServerVerify::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, algs }))
            .with_no_client_auth(),
    };
    // alpn_protocols stays empty: Tailscale's DERP client sends no ALPN and the relay's
    // `/derp` upgrade must work without it.
    Arc::new(config)
}

/// [`server_key_from_certs`] on an established connection, only if it negotiated TLS 1.3.
pub fn server_key_from_connection(conn: &CommonState) -> Option<([u8; 32], u8)> {
    if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        return None;
    }
    server_key_from_certs(conn.peer_certificates()?)
}

/// Verifier for [`ServerVerify::Insecure`].
#[derive(Debug)]
struct InsecureVerifier {
    algs: WebPkiSupportedAlgorithms,
}

/// The handshake-signature half of [`ServerCertVerifier`], which every verifier here does the same
/// way: with the ring provider's algorithms in `self.algs`. Only certificate checks differ.
macro_rules! signature_checks_from_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    signature_checks_from_provider!();
}

/// Verifier for [`ServerVerify::Pin`], mirroring `tlsdial.SetConfigExpectedCertHash`.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

/// Why a pinned chain was refused; surfaces as `CertificateError::Other`.
#[derive(thiserror::Error)]
enum PinError {
    #[error("unparsable certificate presented")]
    Unparsable,
    #[error("unexpected multiple certs presented")]
    MultipleCerts,
    #[error("cert hash does not match expected cert hash")]
    HashMismatch,
    #[error("expected cert not presented")]
    NotPresented,
}

// rustls prints `CertificateError::Other` with `{:?}`, so Debug shows the readable message.
impl fmt::Debug for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<PinError> for rustls::Error {
    fn from(e: PinError) -> Self {
        Self::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let mut saw_good_cert = false;
        for cert in std::iter::once(end_entity).chain(intermediates) {
            // Go's TLS client parses every presented certificate and aborts on any error.
            let summary = parse_cert_summary(cert).ok_or(PinError::Unparsable)?;
            if summary
                .common_name
                .as_deref()
                .is_some_and(|cn| cn.starts_with(METACERT_CN_PREFIX))
            {
                continue;
            }
            if saw_good_cert {
                return Err(PinError::MultipleCerts.into());
            }
            // Not constant-time on purpose: the pin and the certificate are both public.
            if Sha256::digest(cert.as_ref()).as_slice() != self.pin {
                return Err(PinError::HashMismatch.into());
            }
            // Go skips the name check only when the dialed name is empty, which a rustls
            // ServerName never is; IP names are checked against IP SANs, as Go does.
            let parsed = ParsedCertificate::try_from(cert)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            if now > summary.not_after {
                return Err(CertificateError::Expired.into());
            }
            if now < summary.not_before {
                return Err(CertificateError::NotValidYet.into());
            }
            saw_good_cert = true;
        }
        if !saw_good_cert {
            return Err(PinError::NotPresented.into());
        }
        Ok(ServerCertVerified::assertion())
    }

    signature_checks_from_provider!();
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A P-256 leaf for IP 127.0.0.1 and DNS `derp.test`, valid 2020..2120, made by Go's
    /// crypto/x509 with cmd/derper's template (see the report of the commit adding this).
    const GO_LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBbDCCARGgAwIBAgICMDkwCgYIKoZIzj0EAwIwFDESMBAGA1UEAxMJMTI3LjAu
MC4xMCAXDTIwMDEwMTAwMDAwMFoYDzIxMjAwMTAxMDAwMDAwWjAUMRIwEAYDVQQD
EwkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATy2NX+QQZBv2kK
lF7dpNpmFOS3Ukzv9wjHZAGjRokhcF3Oi9DmnCdIj4bHsZ/AHRiooTuwVklpC9nb
Mi1kx8cRo1EwTzAOBgNVHQ8BAf8EBAMCBaAwEwYDVR0lBAwwCgYIKwYBBQUHAwEw
DAYDVR0TAQH/BAIwADAaBgNVHREEEzARgglkZXJwLnRlc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSQAwRgIhAJPsRY36D3Kuywuc9MOJ8bgpl8xZR0O0LXcdXsq8v3voAiEA
8GhJ94L2Mbmo6EaN5cJypIre93mh0zGSKeX1rAqPVXk=
-----END CERTIFICATE-----
";
    /// The leaf's key, SEC1 `EC PRIVATE KEY` as Go's `x509.MarshalECPrivateKey` writes it.
    const GO_LEAF_KEY_PEM: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIEiEwd6k3CXUz+yDnv3y6TR4V+8DVeLNyhW1waoEvg7ZoAoGCCqGSM49
AwEHoUQDQgAE8tjV/kEGQb9pCpRe3aTaZhTkt1JM7/cIx2QBo0aJIXBdzovQ5pwn
SI+Gx7GfwB0YqKE7sFZJaQvZ2zItZMfHEQ==
-----END EC PRIVATE KEY-----
";
    /// A metacert made by Go with derpserver's `initMetacert` template for server key
    /// `[0, 7, 14, ...]` (byte i = 7*i), "now" = 2026-11-01T12:00:00Z.
    const GO_METACERT_HEX: &str = "3082016330820115a003020102020102300506032b657030523150304e06035504031347646572706b657930303037306531353163323332613331333833663436346435343562363236393730373737653835386339333961613161386166623662646334636264326439301e170d3236313030323132303030305a170d3236313230313132303030305a30523150304e06035504031347646572706b657930303037306531353163323332613331333833663436346435343562363236393730373737653835386339333961613161386166623662646334636264326439302a300506032b6570032100798c688ce90dd861ac83a021387840d6b56d4724b0feb69640867d935894b4dba310300e300c0603551d130101ff04023000300506032b65700341007212da894653eaf1a44bf8b057309e6848f6780792cc43a37c4565a9c6860b791b6c04918af3951638fbc1a4a720f5d9f34d1d32f78afda68d337a4b0f04c604";

    fn server_key() -> [u8; 32] {
        std::array::from_fn(|i| (i * 7) as u8)
    }

    fn go_leaf() -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(GO_LEAF_PEM.as_bytes()).expect("leaf pem")
    }

    fn go_metacert() -> CertificateDer<'static> {
        CertificateDer::from(hex::decode(GO_METACERT_HEX).expect("hex"))
    }

    fn pin_of(der: &[u8]) -> [u8; 32] {
        Sha256::digest(der).into()
    }

    #[test]
    fn cert_name_parsing() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let Some(ServerVerify::Pin(pin)) =
            ServerVerify::from_cert_name(&format!("sha256-raw:{hex64}"))
        else {
            panic!("pin not parsed");
        };
        assert_eq!(hex::encode(pin), hex64);
        assert_eq!(ServerVerify::from_cert_name(hex64), None);
        assert_eq!(ServerVerify::from_cert_name("derp.example.com"), None);
        assert_eq!(ServerVerify::from_cert_name("sha256-raw:abcd"), None);
        assert_eq!(
            ServerVerify::from_cert_name(&format!("sha256-raw:{}", hex64.to_uppercase())),
            None
        );
        assert_eq!(
            ServerVerify::from_cert_name(&format!("sha256-raw:{hex64}0")),
            None
        );
        assert_eq!(
            pin_cert_name(b"abc"),
            format!("sha256-raw:{}", hex::encode(Sha256::digest(b"abc")))
        );
    }

    /// Serves `chain` (leaf key = Go's) once on loopback and dials it with `verify`.
    async fn handshake(
        chain: Vec<CertificateDer<'static>>,
        verify: ServerVerify,
        name: &str,
        tls13: bool,
    ) -> Result<Option<([u8; 32], u8)>, std::io::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls13 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS12]
        };
        let key = PrivateKeyDer::from_pem_slice(GO_LEAF_KEY_PEM.as_bytes()).expect("key pem");
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            tls.write_all(b"ok").await?;
            tls.shutdown().await
        });
        let connector = tokio_rustls::TlsConnector::from(client_config(verify));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from(name.to_owned()).expect("server name");
        let result = async {
            let mut tls = connector.connect(server_name, tcp).await?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ok");
            assert_eq!(tls.get_ref().1.alpn_protocol(), None);
            Ok(server_key_from_connection(tls.get_ref().1))
        }
        .await;
        drop(srv); // the server task ends on its own once the client is gone
        result
    }

    #[tokio::test]
    async fn pinned_handshake_learns_server_key() {
        let chain = vec![go_leaf(), go_metacert()];
        let pin = ServerVerify::Pin(pin_of(&go_leaf()));
        for name in ["127.0.0.1", "derp.test"] {
            let got = handshake(chain.clone(), pin.clone(), name, true)
                .await
                .expect(name);
            assert_eq!(got, Some((server_key(), 2)), "{name}");
        }
        // Under TLS 1.2 the metacert is not trusted for fast start, but pinning still works.
        let got = handshake(chain.clone(), pin.clone(), "127.0.0.1", false)
            .await
            .expect("tls12");
        assert_eq!(got, None);
        // Without a metacert, pinning still works (a middlebox may strip it).
        handshake(vec![go_leaf()], pin, "derp.test", true)
            .await
            .expect("no metacert");
    }

    #[tokio::test]
    async fn pin_failures() {
        let chain = vec![go_leaf(), go_metacert()];
        let mut wrong = pin_of(&go_leaf());
        wrong[0] ^= 1;
        let err = handshake(chain.clone(), ServerVerify::Pin(wrong), "127.0.0.1", true)
            .await
            .expect_err("wrong pin");
        assert!(err.to_string().contains("hash does not match"), "{err}");

        let pin = ServerVerify::Pin(pin_of(&go_leaf()));
        let err = handshake(chain.clone(), pin.clone(), "other.test", true)
            .await
            .expect_err("wrong name");
        assert!(err.to_string().contains("not valid for"), "{err}");

        // Two non-meta certs: Go requires exactly one.
        let err = handshake(
            vec![go_leaf(), go_leaf(), go_metacert()],
            pin,
            "127.0.0.1",
            true,
        )
        .await
        .expect_err("two leaves");
        assert!(err.to_string().contains("multiple certs"), "{err}");
    }

    #[tokio::test]
    async fn insecure_and_webpki() {
        let chain = vec![go_leaf(), go_metacert()];
        let got = handshake(
            chain.clone(),
            ServerVerify::Insecure,
            "elsewhere.test",
            true,
        )
        .await
        .expect("insecure accepts anything");
        assert_eq!(got, Some((server_key(), 2)));
        handshake(chain, ServerVerify::WebPki, "derp.test", true)
            .await
            .expect_err("self-signed is not WebPKI-valid");
    }
}
