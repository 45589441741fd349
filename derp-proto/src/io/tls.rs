//! TLS for DERP clients (our client, mesh peers and the load generator).
//!
//! Two things live here:
//!
//! * [`client_config`] builds a rustls [`ClientConfig`] that checks a relay's certificate the
//!   way Tailscale's clients do (`net/tlsdial`): WebPKI roots, a `sha256-raw:` pin taken from a
//!   DERPNode's `CertName`, or (tests only) nothing at all. No ALPN is offered, as Tailscale's
//!   DERP client offers none.
//! * [`server_key_from_certs`] reads the relay's *metacert*: a throwaway self-signed certificate
//!   the relay appends to every chain, whose Subject CN is `"derpkey" + hex(server key)` and whose
//!   serial number is the DERP protocol version. Learning the key during the TLS handshake lets a
//!   client skip a round trip ("fast start"). Only trust it under TLS 1.3, where certificates are
//!   encrypted; [`server_key_from_connection`] does that check.
//!
//! Certificates are read with a minimal DER walk ([`parse_cert_summary`]) rather than a full
//! X.509 crate: we need only the serial number, the subject CN and the validity window, and the
//! walk keeps this crate free of a parser stack (asn1/nom/proc-macros) it would otherwise pull in.
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

/// Subject CN prefix of the relay's metacert (Go: `derpconst.MetaCertCommonNamePrefix`).
pub const METACERT_CN_PREFIX: &str = "derpkey";

/// `CertName` prefix that pins a relay's leaf certificate by the SHA-256 of its DER.
pub const CERT_NAME_PIN_PREFIX: &str = "sha256-raw:";

/// How a client checks the relay's certificate chain.
#[derive(Clone, PartialEq, Eq)]
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
}

impl fmt::Debug for ServerVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WebPki => f.write_str("WebPki"),
            Self::Insecure => f.write_str("Insecure"),
            Self::Pin(pin) => write!(f, "Pin({CERT_NAME_PIN_PREFIX}{})", hex::encode(pin)),
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
        let hex_pin = s.strip_prefix(CERT_NAME_PIN_PREFIX)?;
        if hex_pin.len() != 64
            || !hex_pin
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut pin = [0u8; 32];
        hex::decode_to_slice(hex_pin, &mut pin).ok()?;
        Some(Self::Pin(pin))
    }
}

/// The `CertName` that pins `leaf_der`: `sha256-raw:` + lowercase hex SHA-256 of the DER.
pub fn pin_cert_name(leaf_der: &[u8]) -> String {
    format!(
        "{CERT_NAME_PIN_PREFIX}{}",
        hex::encode(Sha256::digest(leaf_der))
    )
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

/// Learns the relay's DERP public key and protocol version from its metacert.
///
/// Mirrors Go's `derphttp.parseMetaCert`: the first certificate whose CN is `derpkey` followed by
/// a 64-hex key and whose serial number fits in 8 bits decides. A version of 0 means "no fast
/// start" and yields `None`. Callers must only use this under TLS 1.3 (see
/// [`server_key_from_connection`]): in TLS 1.2 certificates travel in the clear.
pub fn server_key_from_certs(certs: &[CertificateDer<'_>]) -> Option<([u8; 32], u8)> {
    for cert in certs {
        let Some(summary) = parse_cert_summary(cert) else {
            continue;
        };
        let Some(key_hex) = summary
            .common_name
            .as_deref()
            .and_then(|cn| cn.strip_prefix(METACERT_CN_PREFIX))
        else {
            continue;
        };
        let mut key = [0u8; 32];
        if key_hex.len() != 64 || hex::decode_to_slice(key_hex, &mut key).is_err() {
            continue;
        }
        let Some(version) = small_serial(&summary.serial) else {
            continue;
        };
        return (version != 0).then_some((key, version));
    }
    None
}

/// [`server_key_from_certs`] on an established connection, only if it negotiated TLS 1.3.
pub fn server_key_from_connection(conn: &CommonState) -> Option<([u8; 32], u8)> {
    if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        return None;
    }
    server_key_from_certs(conn.peer_certificates()?)
}

/// The fields of an X.509 certificate that DERP cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Content octets of the serial number INTEGER (big-endian two's complement).
    pub serial: Vec<u8>,
    /// The subject's last CommonName attribute (Go's `Subject.CommonName`), if any.
    pub common_name: Option<String>,
    /// Start of the validity window, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of the validity window (inclusive), seconds since the Unix epoch.
    pub not_after: i64,
}

/// Walks a DER certificate just far enough to read serial, subject CN and validity.
///
/// Returns `None` if the outer structure is not a well-formed certificate or a CN uses a string
/// type Go's `x509.ParseCertificate` also rejects. It does not check signatures.
pub fn parse_cert_summary(der: &[u8]) -> Option<CertSummary> {
    let mut outer = Der(der);
    let cert = outer.expect(TAG_SEQUENCE)?;
    if !outer.0.is_empty() {
        return None;
    }
    let mut cert = Der(cert);
    let tbs = cert.expect(TAG_SEQUENCE)?;
    cert.expect(TAG_SEQUENCE)?; // signatureAlgorithm
    cert.expect(TAG_BIT_STRING)?; // signatureValue
    if !cert.0.is_empty() {
        return None;
    }

    let mut tbs = Der(tbs);
    if tbs.peek_tag() == Some(TAG_EXPLICIT_0) {
        tbs.read()?; // version
    }
    let serial = tbs.expect(TAG_INTEGER)?;
    if serial.is_empty() {
        return None;
    }
    tbs.expect(TAG_SEQUENCE)?; // signature
    tbs.expect(TAG_SEQUENCE)?; // issuer
    let mut validity = Der(tbs.expect(TAG_SEQUENCE)?);
    let not_before = parse_time(validity.read()?)?;
    let not_after = parse_time(validity.read()?)?;
    if !validity.0.is_empty() {
        return None;
    }
    let subject = tbs.expect(TAG_SEQUENCE)?;
    tbs.expect(TAG_SEQUENCE)?; // subjectPublicKeyInfo

    Some(CertSummary {
        serial: serial.to_vec(),
        common_name: common_name(subject)?,
        not_before,
        not_after,
    })
}

/// A serial number as a DERP protocol version: non-negative and at most 8 bits wide
/// (Go: `SerialNumber.BitLen() <= 8`).
fn small_serial(serial: &[u8]) -> Option<u8> {
    if serial.first()? & 0x80 != 0 {
        return None; // negative
    }
    let first_nonzero = serial.iter().position(|&b| b != 0);
    match first_nonzero.map(|i| &serial[i..]) {
        None => Some(0),
        Some([v]) => Some(*v),
        Some(_) => None,
    }
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

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_T61_STRING: u8 = 0x14;
const TAG_IA5_STRING: u8 = 0x16;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_BMP_STRING: u8 = 0x1e;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_EXPLICIT_0: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// A cursor over concatenated DER TLVs.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// Reads one TLV, returning its tag and contents. Only the forms certificates use are
    /// accepted: low tag numbers and definite lengths of up to four octets.
    fn read(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None; // indefinite length (BER only) or larger than any certificate
            }
            let (octets, after) = rest.split_at_checked(n)?;
            rest = after;
            octets
                .iter()
                .fold(0usize, |acc, &b| acc << 8 | usize::from(b))
        };
        let (value, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some((tag, value))
    }

    /// Reads one TLV that must carry `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (t, value) = self.read()?;
        (t == tag).then_some(value)
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }
}

/// Finds the last CN in an RDNSequence. `Some(None)` means the subject has no CN; `None` means
/// the subject is malformed.
fn common_name(subject: &[u8]) -> Option<Option<String>> {
    let mut cn = None;
    let mut rdns = Der(subject);
    while !rdns.0.is_empty() {
        let mut set = Der(rdns.expect(TAG_SET)?);
        while !set.0.is_empty() {
            let mut atv = Der(set.expect(TAG_SEQUENCE)?);
            let oid = atv.expect(TAG_OID)?;
            let (tag, value) = atv.read()?;
            if oid == OID_COMMON_NAME {
                cn = Some(decode_string(tag, value)?);
            }
        }
    }
    Some(cn)
}

/// Decodes the directory string types Go's x509 parser accepts.
fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        TAG_UTF8_STRING => String::from_utf8(value.to_vec()).ok(),
        TAG_PRINTABLE_STRING | TAG_IA5_STRING => value
            .is_ascii()
            .then(|| String::from_utf8_lossy(value).into_owned()),
        // Go treats T61String as Latin-1-ish bytes; map each byte to the same code point.
        TAG_T61_STRING => Some(value.iter().map(|&b| char::from(b)).collect()),
        TAG_BMP_STRING => {
            if !value.len().is_multiple_of(2) {
                return None;
            }
            let units = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// Parses a DER UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) into Unix
/// seconds.
fn parse_time((tag, value): (u8, &[u8])) -> Option<i64> {
    let (year, rest) = match (tag, value.len()) {
        (TAG_UTC_TIME, 13) => {
            let yy = digits(&value[..2])?;
            // RFC 5280 4.1.2.5.1: two-digit years 50..99 are 19xx, 00..49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &value[2..])
        }
        (TAG_GENERALIZED_TIME, 15) => (digits(&value[..4])?, &value[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    const GO_METACERT_NOT_BEFORE: i64 = 1_790_942_400;
    const GO_METACERT_NOT_AFTER: i64 = 1_796_126_400;

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

    #[test]
    fn parses_go_metacert() {
        let meta = go_metacert();
        let s = parse_cert_summary(&meta).expect("go metacert parses");
        assert_eq!(s.serial, vec![2]);
        assert_eq!(
            s.common_name.as_deref(),
            Some(format!("derpkey{}", hex::encode(server_key())).as_str())
        );
        assert_eq!(s.not_before, GO_METACERT_NOT_BEFORE);
        assert_eq!(s.not_after, GO_METACERT_NOT_AFTER);
        assert_eq!(
            server_key_from_certs(&[go_leaf(), meta]),
            Some((server_key(), 2))
        );
    }

    #[test]
    fn parses_go_leaf_with_generalized_time() {
        let s = parse_cert_summary(&go_leaf()).expect("leaf parses");
        assert_eq!(s.serial, vec![0x30, 0x39]); // 12345
        assert_eq!(s.common_name.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.not_before, 1_577_836_800); // 2020-01-01 (UTCTime)
        assert_eq!(s.not_after, 4_733_510_400); // 2120-01-01 (GeneralizedTime)
        assert_eq!(server_key_from_certs(&[go_leaf()]), None);
    }

    #[test]
    fn rejects_malformed_der() {
        let meta = go_metacert();
        for cut in [0, 1, 2, 10, meta.len() / 2, meta.len() - 1] {
            assert_eq!(parse_cert_summary(&meta[..cut]), None, "truncated at {cut}");
        }
        let mut trailing = meta.to_vec();
        trailing.push(0);
        assert_eq!(parse_cert_summary(&trailing), None);
        assert_eq!(parse_cert_summary(&[0x30, 0x80, 0, 0]), None); // BER indefinite length
    }

    #[test]
    fn serial_to_version() {
        assert_eq!(small_serial(&[2]), Some(2));
        assert_eq!(small_serial(&[0, 0xff]), Some(255));
        assert_eq!(small_serial(&[0]), Some(0));
        assert_eq!(small_serial(&[1, 0]), None);
        assert_eq!(small_serial(&[0xfe]), None); // -2
        assert_eq!(small_serial(&[]), None);
    }

    #[test]
    fn time_parsing() {
        assert_eq!(parse_time((TAG_UTC_TIME, b"700101000000Z")), Some(0));
        assert_eq!(
            parse_time((TAG_UTC_TIME, b"491231235959Z")),
            Some(2_524_607_999)
        );
        assert_eq!(
            parse_time((TAG_GENERALIZED_TIME, b"20000229120000Z")),
            Some(951_825_600)
        );
        assert_eq!(parse_time((TAG_GENERALIZED_TIME, b"21000229120000Z")), None); // not leap
        assert_eq!(parse_time((TAG_UTC_TIME, b"700101000000+")), None);
        assert_eq!(parse_time((TAG_UTC_TIME, b"7001010000Z")), None);
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
