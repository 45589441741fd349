//! Certificate facts DERP needs, without a TLS stack: the relay's metacert, `sha256-raw:` pins,
//! and a minimal DER walk.
//!
//! * The *metacert* is a throwaway self-signed certificate a relay appends to every chain. Its
//!   Subject CN is `"derpkey" + hex(server key)` and its serial number is the DERP protocol
//!   version. A client that reads it during a TLS 1.3 handshake (where certificates are
//!   encrypted) learns the server key early and can skip a round trip ("fast start");
//!   [`server_key_from_certs`] reads it.
//! * A DERPNode `CertName` of the form `sha256-raw:<hex>` pins a relay's leaf certificate by the
//!   SHA-256 of its DER ([`pin_cert_name`], [`pin_from_cert_name`]).
//!
//! Certificates are read with a minimal DER walk ([`parse_cert_summary`], [`der`]) rather than
//! a full X.509 crate: DERP needs only the serial number, the subject CN and the validity window,
//! and the walk keeps this crate free of a parser stack (asn1/nom/proc-macros). Signature and
//! name checks belong to the TLS layer (`io::tls` with feature `tokio`, and the relay).
//!
//! Everything here is pure: bytes in, facts out, no clock (validity is returned, not judged).

pub mod der;

use sha2::{Digest, Sha256};

use der::{
    DerReader, TAG_BIT_STRING, TAG_BMP_STRING, TAG_EXPLICIT_0, TAG_IA5_STRING, TAG_INTEGER,
    TAG_OID, TAG_PRINTABLE_STRING, TAG_SEQUENCE, TAG_SET, TAG_T61_STRING, TAG_UTF8_STRING,
    parse_time,
};

/// Subject CN prefix of the relay's metacert (Go: `derpconst.MetaCertCommonNamePrefix`).
pub const METACERT_CN_PREFIX: &str = "derpkey";

/// `CertName` prefix that pins a relay's leaf certificate by the SHA-256 of its DER.
pub const CERT_NAME_PIN_PREFIX: &str = "sha256-raw:";

/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The `CertName` that pins `leaf_der`: `sha256-raw:` + lowercase hex SHA-256 of the DER.
pub fn pin_cert_name(leaf_der: &[u8]) -> String {
    format!(
        "{CERT_NAME_PIN_PREFIX}{}",
        hex::encode(Sha256::digest(leaf_der))
    )
}

/// Parses a DERPNode `CertName` of the form `sha256-raw:<64 lowercase hex>` into the pinned
/// SHA-256.
///
/// Returns `None` for anything else, including uppercase hex: Go compares the pin as a
/// lowercase hex string, so such a pin could never match there either. A `CertName` without the
/// prefix is a DNS name to verify instead.
pub fn pin_from_cert_name(s: &str) -> Option<[u8; 32]> {
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
    Some(pin)
}

/// Learns the relay's DERP public key and protocol version from its metacert.
///
/// Mirrors Go's `derphttp.parseMetaCert`: the first certificate whose CN is `derpkey` followed by
/// a 64-hex key and whose serial number fits in 8 bits decides. A version of 0 means "no fast
/// start" and yields `None`. Callers must only use this under TLS 1.3: in TLS 1.2 certificates
/// travel in the clear and an on-path attacker could substitute the key.
pub fn server_key_from_certs<C: AsRef<[u8]>>(certs: &[C]) -> Option<([u8; 32], u8)> {
    for cert in certs {
        let Some(summary) = parse_cert_summary(cert.as_ref()) else {
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

/// The fields of an X.509 certificate that DERP cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    let mut outer = DerReader::new(der);
    let cert = outer.expect(TAG_SEQUENCE)?;
    if !outer.is_empty() {
        return None;
    }
    let mut cert = DerReader::new(cert);
    let tbs = cert.expect(TAG_SEQUENCE)?;
    cert.expect(TAG_SEQUENCE)?; // signatureAlgorithm
    cert.expect(TAG_BIT_STRING)?; // signatureValue
    if !cert.is_empty() {
        return None;
    }

    let mut tbs = DerReader::new(tbs);
    if tbs.peek_tag() == Some(TAG_EXPLICIT_0) {
        tbs.read()?; // version
    }
    let serial = tbs.expect(TAG_INTEGER)?;
    if serial.is_empty() {
        return None;
    }
    tbs.expect(TAG_SEQUENCE)?; // signature
    tbs.expect(TAG_SEQUENCE)?; // issuer
    let mut validity = DerReader::new(tbs.expect(TAG_SEQUENCE)?);
    let (tag, value) = validity.read()?;
    let not_before = parse_time(tag, value)?;
    let (tag, value) = validity.read()?;
    let not_after = parse_time(tag, value)?;
    if !validity.is_empty() {
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

/// Finds the last CN in an RDNSequence. `Some(None)` means the subject has no CN; `None` means
/// the subject is malformed.
fn common_name(subject: &[u8]) -> Option<Option<String>> {
    let mut cn = None;
    let mut rdns = DerReader::new(subject);
    while !rdns.is_empty() {
        let mut set = DerReader::new(rdns.expect(TAG_SET)?);
        while !set.is_empty() {
            let mut atv = DerReader::new(set.expect(TAG_SEQUENCE)?);
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    /// A P-256 leaf for IP 127.0.0.1 and DNS `derp.test`, valid 2020..2120, made by Go's
    /// crypto/x509 with cmd/derper's template (the same one `io::tls` tests serve).
    const GO_LEAF_B64: &str = "\
MIIBbDCCARGgAwIBAgICMDkwCgYIKoZIzj0EAwIwFDESMBAGA1UEAxMJMTI3LjAu\
MC4xMCAXDTIwMDEwMTAwMDAwMFoYDzIxMjAwMTAxMDAwMDAwWjAUMRIwEAYDVQQD\
EwkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATy2NX+QQZBv2kK\
lF7dpNpmFOS3Ukzv9wjHZAGjRokhcF3Oi9DmnCdIj4bHsZ/AHRiooTuwVklpC9nb\
Mi1kx8cRo1EwTzAOBgNVHQ8BAf8EBAMCBaAwEwYDVR0lBAwwCgYIKwYBBQUHAwEw\
DAYDVR0TAQH/BAIwADAaBgNVHREEEzARgglkZXJwLnRlc3SHBH8AAAEwCgYIKoZI\
zj0EAwIDSQAwRgIhAJPsRY36D3Kuywuc9MOJ8bgpl8xZR0O0LXcdXsq8v3voAiEA\
8GhJ94L2Mbmo6EaN5cJypIre93mh0zGSKeX1rAqPVXk=";
    /// A metacert made by Go with derpserver's `initMetacert` template for server key
    /// `[0, 7, 14, ...]` (byte i = 7*i), "now" = 2026-11-01T12:00:00Z.
    const GO_METACERT_HEX: &str = "3082016330820115a003020102020102300506032b657030523150304e06035504031347646572706b657930303037306531353163323332613331333833663436346435343562363236393730373737653835386339333961613161386166623662646334636264326439301e170d3236313030323132303030305a170d3236313230313132303030305a30523150304e06035504031347646572706b657930303037306531353163323332613331333833663436346435343562363236393730373737653835386339333961613161386166623662646334636264326439302a300506032b6570032100798c688ce90dd861ac83a021387840d6b56d4724b0feb69640867d935894b4dba310300e300c0603551d130101ff04023000300506032b65700341007212da894653eaf1a44bf8b057309e6848f6780792cc43a37c4565a9c6860b791b6c04918af3951638fbc1a4a720f5d9f34d1d32f78afda68d337a4b0f04c604";
    const GO_METACERT_NOT_BEFORE: i64 = 1_790_942_400;
    const GO_METACERT_NOT_AFTER: i64 = 1_796_126_400;

    fn server_key() -> [u8; 32] {
        std::array::from_fn(|i| (i * 7) as u8)
    }

    fn go_leaf() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(GO_LEAF_B64)
            .expect("base64")
    }

    fn go_metacert() -> Vec<u8> {
        hex::decode(GO_METACERT_HEX).expect("hex")
    }

    #[test]
    fn cert_name_parsing() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let pin = pin_from_cert_name(&format!("sha256-raw:{hex64}")).expect("pin parsed");
        assert_eq!(hex::encode(pin), hex64);
        assert_eq!(pin_from_cert_name(hex64), None);
        assert_eq!(pin_from_cert_name("derp.example.com"), None);
        assert_eq!(pin_from_cert_name("sha256-raw:abcd"), None);
        assert_eq!(
            pin_from_cert_name(&format!("sha256-raw:{}", hex64.to_uppercase())),
            None
        );
        assert_eq!(pin_from_cert_name(&format!("sha256-raw:{hex64}0")), None);
        assert_eq!(
            pin_cert_name(b"abc"),
            format!("sha256-raw:{}", hex::encode(Sha256::digest(b"abc")))
        );
        assert_eq!(
            pin_from_cert_name(&pin_cert_name(b"abc")),
            Some(Sha256::digest(b"abc").into())
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
        let mut trailing = meta.clone();
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
}
