//! STUN binding requests and responses, without I/O.
//!
//! Mirrors `tailscale.com/net/stun` for the client side and `net/stunserver` for the server side,
//! and goes further than derper by also answering standard STUN clients.
//!
//! # Request flavours
//!
//! [`parse_binding_request`] sorts a datagram into one of three [`RequestKind`]s:
//!
//! - **Tailscale**: a Binding Request with the magic cookie, a SOFTWARE attribute equal to
//!   `tailnode` and a valid FINGERPRINT as its last attribute. Acceptance follows derper exactly
//!   (attributes are walked over the whole datagram, the header length is not checked), so every
//!   request derper answers, we answer, and byte for byte the same way: one XOR-MAPPED-ADDRESS,
//!   32 bytes for IPv4 and 44 for IPv6.
//! - **Standard** (RFC 5389/8489): any other Binding Request with the magic cookie, with or without
//!   FINGERPRINT. Validated strictly (length, padding, FINGERPRINT last and correct). Answered with
//!   XOR-MAPPED-ADDRESS, MAPPED-ADDRESS (for clients that only know the old attribute), SOFTWARE and
//!   FINGERPRINT, plus RESPONSE-ORIGIN and OTHER-ADDRESS in RFC 5780 mode. Unknown
//!   comprehension-required attributes get a 420 error response, as RFC 8489 §6.3.1 requires.
//! - **Classic** (RFC 3489): no magic cookie. Bytes 4..8 are then part of a 128-bit transaction
//!   ID, so there is little to tell STUN from noise: we accept only a Binding Request whose header
//!   length matches the datagram exactly and whose attributes are well formed, and answer with
//!   MAPPED-ADDRESS (plus SOURCE-ADDRESS and CHANGED-ADDRESS in RFC 5780 mode), echoing the
//!   cookie field as RFC 5389 §12.2 asks.
//!
//! # No amplification
//!
//! A response is never larger than [`MAX_AMPLIFICATION`] times its request (QUIC's
//! anti-amplification factor, RFC 9000 §8). The address the client asked about always fits: every
//! request is at least 20 bytes (a 60-byte budget) and the largest mandatory answer, an IPv6
//! XOR-MAPPED-ADDRESS, is 44 bytes. Optional attributes are added in priority order only while the
//! budget allows: FINGERPRINT when the request carried one, OTHER-ADDRESS, RESPONSE-ORIGIN,
//! MAPPED-ADDRESS, FINGERPRINT otherwise, SOFTWARE. Tailscale answers are at most 44 bytes for a
//! 40-byte request. We never send to another IP than the request's source: RESPONSE-ADDRESS (RFC
//! 3489) is refused, and RESPONSE-PORT (RFC 5780, same IP, another port) is honoured only in RFC
//! 5780 mode; it gives a spoofer nothing the spoofed source port did not already give.
//!
//! # Why the codec is hand-rolled
//!
//! `stun-rs` decodes into a `StunMessage` that allocates a vector of attributes and validates
//! strings; its encoder takes a built message. Parse plus respond through `stun-rs` is ~8 times
//! slower than the direct byte checks here on the Tailscale request and ~5 times on a standard
//! one (`cargo bench -p stunner --bench stun`: 157 vs 1325 ns and 428 vs 2169 ns), and the STUN
//! port is an unauthenticated hot path that must cost next to nothing per datagram. `stun-rs` also has no
//! notion of Tailscale's acceptance rules or of the non-standard `0x8020` attribute, and its RFC
//! 5780 attributes sit behind a feature. The unit tests below use `stun-rs` as an independent
//! decoder of everything we emit.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Length of the STUN message header: type (2), length (2), cookie (4), transaction ID (12).
pub const HEADER_LEN: usize = 20;

/// The RFC 5389 magic cookie, `0x2112A442`, at bytes 4..8 of every modern STUN message.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// The SOFTWARE value that marks a Tailscale request (Go: `software`). Eight bytes, so no padding.
pub const TAILSCALE_SOFTWARE: &[u8; 8] = b"tailnode";

/// Length of the request Tailscale clients send and [`binding_request`] builds.
pub const TAILSCALE_REQUEST_LEN: usize = 40;

/// The SOFTWARE value in our responses to standard clients.
pub const SERVER_SOFTWARE: &str = "stunner";

/// A response is at most this many times the length of its request.
///
/// Three is QUIC's anti-amplification factor; the module docs explain why the mandatory answer
/// always fits.
pub const MAX_AMPLIFICATION: usize = 3;

/// Message type of a Binding Request (method 0x001, class request).
pub const BINDING_REQUEST: u16 = 0x0001;
/// Message type of a Binding Success Response.
pub const BINDING_SUCCESS: u16 = 0x0101;
/// Message type of a Binding Error Response.
pub const BINDING_ERROR: u16 = 0x0111;

/// CRC-32 of the message is XORed with this to form FINGERPRINT ("STUN" in ASCII).
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// FINGERPRINT attribute on the wire: type (2), length (2), CRC (4).
const FINGERPRINT_ATTR_LEN: usize = 8;
/// Tailscale's SOFTWARE attribute, header included, as it appears at bytes 20..32 of its request.
const TAILSCALE_SOFTWARE_ATTR: [u8; 12] = [
    0x80, 0x22, 0x00, 0x08, // SOFTWARE, length 8
    b't', b'a', b'i', b'l', b'n', b'o', b'd', b'e',
];
/// Tailscale's FINGERPRINT attribute header, at bytes 32..36 of its request.
const TAILSCALE_FINGERPRINT_HDR: [u8; 4] = [0x80, 0x28, 0x00, 0x04];
/// CHANGE-REQUEST flag bits (RFC 5780 §7.2).
const CHANGE_IP: u32 = 0x04;
const CHANGE_PORT: u32 = 0x02;
/// Reason phrase of the 420 error response (RFC 8489 §14.8).
const UNKNOWN_ATTRIBUTE_REASON: &[u8] = b"Unknown Attribute";
/// How many unknown comprehension-required attribute types a request remembers for its 420
/// answer; more would only make the error response larger.
const MAX_UNKNOWN: usize = 4;

/// A STUN attribute type.
///
/// Types below `0x8000` are comprehension-required: a server that does not understand one must
/// refuse the request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttrType(pub u16);

impl AttrType {
    /// MAPPED-ADDRESS: the reflexive address in the clear (RFC 3489 era).
    pub const MAPPED_ADDRESS: Self = Self(0x0001);
    /// RESPONSE-ADDRESS (RFC 3489, removed by RFC 5389): "answer somewhere else". Never honoured.
    pub const RESPONSE_ADDRESS: Self = Self(0x0002);
    /// CHANGE-REQUEST (RFC 5780 §7.2): 4 bytes of flags, change IP `0x04`, change port `0x02`.
    pub const CHANGE_REQUEST: Self = Self(0x0003);
    /// SOURCE-ADDRESS (RFC 3489): where the response came from; RFC 5780 renamed it
    /// RESPONSE-ORIGIN.
    pub const SOURCE_ADDRESS: Self = Self(0x0004);
    /// CHANGED-ADDRESS (RFC 3489): the alternate address; RFC 5780 renamed it OTHER-ADDRESS.
    pub const CHANGED_ADDRESS: Self = Self(0x0005);
    /// USERNAME.
    pub const USERNAME: Self = Self(0x0006);
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: Self = Self(0x0008);
    /// ERROR-CODE: 2 reserved bytes, class, number, UTF-8 reason.
    pub const ERROR_CODE: Self = Self(0x0009);
    /// UNKNOWN-ATTRIBUTES: a list of 16-bit attribute types.
    pub const UNKNOWN_ATTRIBUTES: Self = Self(0x000a);
    /// REALM.
    pub const REALM: Self = Self(0x0014);
    /// NONCE.
    pub const NONCE: Self = Self(0x0015);
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489).
    pub const MESSAGE_INTEGRITY_SHA256: Self = Self(0x001c);
    /// PASSWORD-ALGORITHM (RFC 8489).
    pub const PASSWORD_ALGORITHM: Self = Self(0x001d);
    /// USERHASH (RFC 8489).
    pub const USERHASH: Self = Self(0x001e);
    /// XOR-MAPPED-ADDRESS: the reflexive address XORed with the cookie and transaction ID.
    pub const XOR_MAPPED_ADDRESS: Self = Self(0x0020);
    /// PADDING (RFC 5780 §7.6): ignored; it only makes a request larger.
    pub const PADDING: Self = Self(0x0026);
    /// RESPONSE-PORT (RFC 5780 §7.5): "answer to this port of my IP"; 2-byte port + 2 padding.
    pub const RESPONSE_PORT: Self = Self(0x0027);
    /// Non-standard XOR-MAPPED-ADDRESS in the comprehension-optional range, which some servers
    /// send and Tailscale clients accept.
    pub const XOR_MAPPED_ADDRESS_ALT: Self = Self(0x8020);
    /// SOFTWARE: UTF-8 description of the sender.
    pub const SOFTWARE: Self = Self(0x8022);
    /// FINGERPRINT: CRC-32 of the message before it, XOR `0x5354554E`; always last.
    pub const FINGERPRINT: Self = Self(0x8028);
    /// RESPONSE-ORIGIN (RFC 5780 §7.3): the address the response was sent from.
    pub const RESPONSE_ORIGIN: Self = Self(0x802b);
    /// OTHER-ADDRESS (RFC 5780 §7.4): the address that differs from the receiving one in both IP
    /// and port.
    pub const OTHER_ADDRESS: Self = Self(0x802c);

    /// Whether a receiver that does not understand this attribute must refuse the message.
    pub const fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::MAPPED_ADDRESS => "MAPPED-ADDRESS",
            Self::RESPONSE_ADDRESS => "RESPONSE-ADDRESS",
            Self::CHANGE_REQUEST => "CHANGE-REQUEST",
            Self::SOURCE_ADDRESS => "SOURCE-ADDRESS",
            Self::CHANGED_ADDRESS => "CHANGED-ADDRESS",
            Self::USERNAME => "USERNAME",
            Self::MESSAGE_INTEGRITY => "MESSAGE-INTEGRITY",
            Self::ERROR_CODE => "ERROR-CODE",
            Self::UNKNOWN_ATTRIBUTES => "UNKNOWN-ATTRIBUTES",
            Self::REALM => "REALM",
            Self::NONCE => "NONCE",
            Self::MESSAGE_INTEGRITY_SHA256 => "MESSAGE-INTEGRITY-SHA256",
            Self::PASSWORD_ALGORITHM => "PASSWORD-ALGORITHM",
            Self::USERHASH => "USERHASH",
            Self::XOR_MAPPED_ADDRESS => "XOR-MAPPED-ADDRESS",
            Self::PADDING => "PADDING",
            Self::RESPONSE_PORT => "RESPONSE-PORT",
            Self::XOR_MAPPED_ADDRESS_ALT => "XOR-MAPPED-ADDRESS(0x8020)",
            Self::SOFTWARE => "SOFTWARE",
            Self::FINGERPRINT => "FINGERPRINT",
            Self::RESPONSE_ORIGIN => "RESPONSE-ORIGIN",
            Self::OTHER_ADDRESS => "OTHER-ADDRESS",
            _ => return None,
        })
    }

    /// Comprehension-required attributes a binding server may receive and safely ignore: those
    /// RFC 8489 defines (we do not authenticate, so credentials are not checked, as RFC 8489 §9
    /// allows for a usage without authentication) and RFC 5780's PADDING. CHANGE-REQUEST and
    /// RESPONSE-PORT are parsed and decided on when answering. RESPONSE-ADDRESS is deliberately
    /// absent: it asks us to send to another host, so it gets a 420.
    const fn is_tolerated(self) -> bool {
        matches!(
            self,
            Self::MAPPED_ADDRESS
                | Self::CHANGE_REQUEST
                | Self::RESPONSE_PORT
                | Self::USERNAME
                | Self::MESSAGE_INTEGRITY
                | Self::ERROR_CODE
                | Self::UNKNOWN_ATTRIBUTES
                | Self::REALM
                | Self::NONCE
                | Self::MESSAGE_INTEGRITY_SHA256
                | Self::PASSWORD_ALGORITHM
                | Self::USERHASH
                | Self::XOR_MAPPED_ADDRESS
                | Self::PADDING
        )
    }
}

impl fmt::Debug for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "AttrType({:#06x})", self.0),
        }
    }
}

/// A 96-bit STUN transaction ID (Go: `stun.TxID`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TxId(pub [u8; 12]);

impl fmt::Debug for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxId({})", hex::encode(self.0))
    }
}

/// Why a datagram is not a request we answer, or not a response we understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Too short, top bits set, no magic cookie (and not a well-formed RFC 3489 request), or
    /// otherwise not STUN at all.
    #[error("not a stun message")]
    NotStun,
    /// A STUN message, but not a Binding Request.
    #[error("stun message type {0:#06x} is not a binding request")]
    NotBindingRequest(u16),
    /// A STUN message, but not a Binding Success Response.
    #[error("stun message type {0:#06x} is not a binding success response")]
    NotSuccessResponse(u16),
    /// The header's message length is not a multiple of 4 or does not match the datagram.
    #[error("stun message length {len} does not fit a datagram of {datagram} bytes")]
    BadLength {
        /// Length from the header (attributes only).
        len: usize,
        /// Length of the datagram, header included.
        datagram: usize,
    },
    /// An attribute header is cut short or its padded value runs past the end of the message.
    #[error("stun attributes overrun the message")]
    AttributeOverrun,
    /// An attribute we need to read has the wrong length or an unknown address family.
    #[error("malformed {0:?} attribute")]
    BadAttribute(AttrType),
    /// Another attribute follows FINGERPRINT.
    #[error("fingerprint is not the last attribute")]
    FingerprintNotLast,
    /// The FINGERPRINT CRC does not match the message.
    #[error("wrong fingerprint")]
    BadFingerprint,
    /// A response carries neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS.
    #[error("stun response has no mapped address")]
    NoMappedAddress,
}

/// Which kind of client sent a Binding Request; decides the shape of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// Tailscale's magicsock request, answered byte-for-byte as derper does.
    Tailscale,
    /// An RFC 5389/8489 request (magic cookie present).
    Standard {
        /// The request ended in a valid FINGERPRINT, so the response gets one too.
        fingerprint: bool,
    },
    /// An RFC 3489 request (no magic cookie).
    Classic,
}

/// The flags of a CHANGE-REQUEST attribute (RFC 5780 §7.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeRequest {
    /// Answer from the alternate IP address.
    pub change_ip: bool,
    /// Answer from the alternate port.
    pub change_port: bool,
}

impl ChangeRequest {
    /// Whether either flag is set, that is, whether the answer must leave from another socket.
    pub const fn is_change(self) -> bool {
        self.change_ip || self.change_port
    }
}

/// A Binding Request we are willing to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BindingRequest {
    /// Which kind of client sent it.
    pub kind: RequestKind,
    /// Transaction ID, echoed in the response.
    pub tx: TxId,
    /// Bytes 4..8 of the header, echoed in the response: the magic cookie, or for an RFC 3489
    /// request the first 4 bytes of its 128-bit transaction ID.
    pub cookie: [u8; 4],
    /// The CHANGE-REQUEST attribute, if present (never set for Tailscale requests, which derper
    /// answers without looking at it).
    pub change_request: Option<ChangeRequest>,
    /// The RESPONSE-PORT attribute (RFC 5780 §7.5), if present in a standard request: answer to
    /// this port of the source IP. Honoured only in RFC 5780 mode, refused with a 420 otherwise.
    pub response_port: Option<u16>,
    /// Datagram length; the response budget is [`MAX_AMPLIFICATION`] times this.
    pub len: usize,
    unknown: UnknownAttrs,
}

impl BindingRequest {
    /// Comprehension-required attribute types we do not understand (at most 4 are kept).
    pub fn unknown_attributes(&self) -> &[u16] {
        self.unknown.as_slice()
    }

    /// Bytes a response to this request may use.
    pub fn response_budget(&self) -> usize {
        self.len.saturating_mul(MAX_AMPLIFICATION)
    }
}

/// A short list of attribute types, kept inline so parsing never allocates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct UnknownAttrs {
    types: [u16; MAX_UNKNOWN],
    len: u8,
}

impl UnknownAttrs {
    fn push(&mut self, ty: u16) {
        let n = usize::from(self.len);
        if n < MAX_UNKNOWN && !self.as_slice().contains(&ty) {
            self.types[n] = ty;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u16] {
        &self.types[..usize::from(self.len).min(MAX_UNKNOWN)]
    }
}

/// The server's RFC 5780 addresses for one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc5780Addrs {
    /// The address the response leaves from (RESPONSE-ORIGIN; SOURCE-ADDRESS for RFC 3489).
    pub response_origin: SocketAddr,
    /// The address differing in both IP and port from the one the request arrived on
    /// (OTHER-ADDRESS; CHANGED-ADDRESS for RFC 3489).
    pub other_address: SocketAddr,
}

/// What [`binding_response`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// A Binding Success Response.
    Success,
    /// A 420 (Unknown Attribute) Binding Error Response: the request has comprehension-required
    /// attributes we do not understand, or asks for a CHANGE-REQUEST without RFC 5780 addresses.
    UnknownAttributes,
    /// Nothing: an RFC 3489 client asked for a change we cannot make, and answering from the same
    /// address would make it misjudge its NAT; or the answer would not fit the budget.
    Drop,
}

/// Reports whether `b` looks like a STUN message: at least a header long, top two bits zero,
/// magic cookie in place (Go: `stun.Is`).
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] & 0xc0 == 0 && b[4..8] == MAGIC_COOKIE
}

/// Parses a datagram as a Binding Request and classifies its sender.
///
/// Never panics and never allocates. [`StunError::NotStun`] means "not STUN at all"; every other
/// error is a STUN message we refuse.
pub fn parse_binding_request(b: &[u8]) -> Result<BindingRequest, StunError> {
    if b.len() < HEADER_LEN || b[0] & 0xc0 != 0 {
        return Err(StunError::NotStun);
    }
    let cookie = [b[4], b[5], b[6], b[7]];
    let tx = tx_id(b);
    if cookie != MAGIC_COOKIE {
        return parse_classic(b, cookie, tx);
    }
    let ty = be16(b, 0);
    if ty != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest(ty));
    }
    if is_tailscale_request(b) {
        return Ok(BindingRequest {
            kind: RequestKind::Tailscale,
            tx,
            cookie,
            change_request: None,
            response_port: None,
            len: b.len(),
            unknown: UnknownAttrs::default(),
        });
    }
    parse_standard(b, tx)
}

/// Appends the answer to `req` to `out`, for a request that came from `source`.
///
/// Pass `rfc5780` only when the server has an alternate address; it then adds RESPONSE-ORIGIN and
/// OTHER-ADDRESS and honours CHANGE-REQUEST and RESPONSE-PORT: the caller sends from the socket
/// the request's [`ChangeRequest`] selects, passes that socket's address as `response_origin`,
/// and sends to [`BindingRequest::response_port`] of the source IP when set. Without `rfc5780`,
/// standard requests asking for either get a 420. An IPv4-mapped IPv6 `source` (a dual-stack
/// socket) is answered as IPv4.
///
/// The appended bytes never exceed [`BindingRequest::response_budget`].
pub fn binding_response(
    req: &BindingRequest,
    source: SocketAddr,
    rfc5780: Option<&Rfc5780Addrs>,
    out: &mut Vec<u8>,
) -> Reply {
    let start = out.len();
    let source = unmap(source);
    let reply = match req.kind {
        RequestKind::Tailscale => {
            write_tailscale_response(req.tx, source, out);
            Reply::Success
        }
        RequestKind::Standard { fingerprint } => {
            // Without RFC 5780 addresses we cannot change address or answer to another port: say
            // so with a 420, which is how RFC 5780 clients learn the server lacks support.
            let change_refused =
                rfc5780.is_none() && req.change_request.is_some_and(ChangeRequest::is_change);
            let port_refused = rfc5780.is_none() && req.response_port.is_some();
            if change_refused || port_refused || !req.unknown.as_slice().is_empty() {
                let mut unknown = req.unknown;
                if change_refused {
                    unknown.push(AttrType::CHANGE_REQUEST.0);
                }
                if port_refused {
                    unknown.push(AttrType::RESPONSE_PORT.0);
                }
                write_unknown_attributes(req, unknown.as_slice(), fingerprint, out);
                Reply::UnknownAttributes
            } else {
                write_standard_response(req, fingerprint, source, rfc5780, out);
                Reply::Success
            }
        }
        RequestKind::Classic => {
            if rfc5780.is_none() && req.change_request.is_some_and(ChangeRequest::is_change) {
                Reply::Drop
            } else {
                write_classic_response(req, source, rfc5780, out);
                Reply::Success
            }
        }
    };
    // Backstop for the amplification rule; the writers above already stay inside the budget.
    if out.len() - start > req.response_budget() {
        out.truncate(start);
        return Reply::Drop;
    }
    reply
}

/// Builds Tailscale's exact 40-byte Binding Request (Go: `stun.Request`).
pub fn binding_request(tx: TxId) -> [u8; TAILSCALE_REQUEST_LEN] {
    let mut b = [0u8; TAILSCALE_REQUEST_LEN];
    b[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    b[2..4].copy_from_slice(&20u16.to_be_bytes());
    b[4..8].copy_from_slice(&MAGIC_COOKIE);
    b[8..20].copy_from_slice(&tx.0);
    b[20..32].copy_from_slice(&TAILSCALE_SOFTWARE_ATTR);
    b[32..36].copy_from_slice(&TAILSCALE_FINGERPRINT_HDR);
    let fp = fingerprint(&b[..32]);
    b[36..40].copy_from_slice(&fp.to_be_bytes());
    b
}

/// Parses a Binding Success Response the way Tailscale clients do (Go: `stun.ParseResponse`).
///
/// The header length is honoured and trailing bytes ignored; XOR-MAPPED-ADDRESS is accepted as
/// `0x0020` or `0x8020`, MAPPED-ADDRESS is the fallback, and IPv4-mapped addresses are unmapped.
/// FINGERPRINT is not checked, as in Go.
pub fn parse_binding_response(b: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    if !is_stun(b) {
        return Err(StunError::NotStun);
    }
    let ty = be16(b, 0);
    if ty != BINDING_SUCCESS {
        return Err(StunError::NotSuccessResponse(ty));
    }
    let tx = tx_id(b);
    let attrs_len = usize::from(be16(b, 2));
    let body = &b[HEADER_LEN..];
    let body = body.get(..attrs_len).ok_or(StunError::AttributeOverrun)?;
    let mut xor = None;
    let mut plain = None;
    for attr in Attrs::new(body) {
        let (ty, value, _) = attr?;
        match ty {
            AttrType::XOR_MAPPED_ADDRESS | AttrType::XOR_MAPPED_ADDRESS_ALT => {
                xor = Some(read_address(ty, value, Some(&tx))?);
            }
            AttrType::MAPPED_ADDRESS => plain = Some(read_address(ty, value, None)?),
            _ => {}
        }
    }
    xor.or(plain)
        .map(|addr| (tx, unmap(addr)))
        .ok_or(StunError::NoMappedAddress)
}

/// Reads an address attribute value (MAPPED-ADDRESS layout, XORed when `xor_tx` is given):
/// reserved byte, family (1 = IPv4, 2 = IPv6), port, address. Extra bytes after the address are
/// ignored, as in Go.
fn read_address(ty: AttrType, v: &[u8], xor_tx: Option<&TxId>) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::BadAttribute(ty));
    }
    let mut port = be16(v, 2);
    let mut key = [0u8; 16];
    if let Some(tx) = xor_tx {
        port ^= 0x2112;
        key[..4].copy_from_slice(&MAGIC_COOKIE);
        key[4..].copy_from_slice(&tx.0);
    }
    let ip = match (v[1], v.get(4..8), v.get(4..20)) {
        (0x01, Some(a), _) => {
            let mut o = [0u8; 4];
            for (i, byte) in o.iter_mut().enumerate() {
                *byte = a[i] ^ key[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, _, Some(a)) => {
            let mut o = [0u8; 16];
            for (i, byte) in o.iter_mut().enumerate() {
                *byte = a[i] ^ key[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(StunError::BadAttribute(ty)),
    };
    Ok(SocketAddr::new(ip, port))
}

/// RFC 3489 request: no cookie, so only the strictest shape counts as STUN.
fn parse_classic(b: &[u8], cookie: [u8; 4], tx: TxId) -> Result<BindingRequest, StunError> {
    let len = usize::from(be16(b, 2));
    if be16(b, 0) != BINDING_REQUEST || len % 4 != 0 || HEADER_LEN + len != b.len() {
        return Err(StunError::NotStun);
    }
    let mut change_request = None;
    for attr in Attrs::new(&b[HEADER_LEN..]) {
        // Malformed attributes in a cookie-less message mean it was never STUN.
        let (ty, value, _) = attr.map_err(|_| StunError::NotStun)?;
        if ty == AttrType::CHANGE_REQUEST {
            change_request = Some(read_change_request(value).ok_or(StunError::NotStun)?);
        }
    }
    Ok(BindingRequest {
        kind: RequestKind::Classic,
        tx,
        cookie,
        change_request,
        response_port: None,
        len: b.len(),
        unknown: UnknownAttrs::default(),
    })
}

/// RFC 5389/8489 request: length, padding and FINGERPRINT checked strictly.
fn parse_standard(b: &[u8], tx: TxId) -> Result<BindingRequest, StunError> {
    let len = usize::from(be16(b, 2));
    if len % 4 != 0 || HEADER_LEN + len != b.len() {
        return Err(StunError::BadLength {
            len,
            datagram: b.len(),
        });
    }
    let mut req = BindingRequest {
        kind: RequestKind::Standard { fingerprint: false },
        tx,
        cookie: MAGIC_COOKIE,
        change_request: None,
        response_port: None,
        len: b.len(),
        unknown: UnknownAttrs::default(),
    };
    let mut fingerprint_seen = false;
    for attr in Attrs::new(&b[HEADER_LEN..]) {
        let (ty, value, offset) = attr?;
        if fingerprint_seen {
            return Err(StunError::FingerprintNotLast);
        }
        match ty {
            AttrType::FINGERPRINT => {
                let got = value
                    .get(..4)
                    .filter(|_| value.len() == 4)
                    .map(|v| be32(v, 0))
                    .ok_or(StunError::BadAttribute(ty))?;
                if got != fingerprint(&b[..HEADER_LEN + offset]) {
                    return Err(StunError::BadFingerprint);
                }
                fingerprint_seen = true;
            }
            AttrType::CHANGE_REQUEST => {
                req.change_request =
                    Some(read_change_request(value).ok_or(StunError::BadAttribute(ty))?);
            }
            AttrType::RESPONSE_PORT => {
                // RFC 5780 says 2 bytes of port then 2 of padding; accept a bare 2-byte value.
                let port = match value {
                    [a, b] | [a, b, _, _] => u16::from_be_bytes([*a, *b]),
                    _ => return Err(StunError::BadAttribute(ty)),
                };
                req.response_port = Some(port);
            }
            ty if ty.is_comprehension_required() && !ty.is_tolerated() => req.unknown.push(ty.0),
            _ => {}
        }
    }
    req.kind = RequestKind::Standard {
        fingerprint: fingerprint_seen,
    };
    Ok(req)
}

fn read_change_request(v: &[u8]) -> Option<ChangeRequest> {
    if v.len() != 4 {
        return None;
    }
    let flags = be32(v, 0);
    Some(ChangeRequest {
        change_ip: flags & CHANGE_IP != 0,
        change_port: flags & CHANGE_PORT != 0,
    })
}

/// Derper's acceptance rule (Go: `stun.ParseBindingRequest`), for a datagram already known to
/// have the cookie and the Binding Request type: attributes walked over the whole datagram,
/// SOFTWARE `tailnode` anywhere, FINGERPRINT last with the CRC of everything before it.
fn is_tailscale_request(b: &[u8]) -> bool {
    // Fast path: the exact layout every Tailscale client sends (one compare and one CRC).
    if b.len() == TAILSCALE_REQUEST_LEN
        && b[20..32] == TAILSCALE_SOFTWARE_ATTR
        && b[32..36] == TAILSCALE_FINGERPRINT_HDR
    {
        return be32(b, 36) == fingerprint(&b[..32]);
    }
    let mut software_ok = false;
    let mut last = None;
    let mut got_fp = None;
    for attr in Attrs::new(&b[HEADER_LEN..]) {
        let Ok((ty, value, _)) = attr else {
            return false;
        };
        last = Some(ty);
        if ty == AttrType::SOFTWARE && value == TAILSCALE_SOFTWARE {
            software_ok = true;
        }
        if ty == AttrType::FINGERPRINT && value.len() == 4 {
            got_fp = Some(be32(value, 0));
        }
    }
    let Some(before_fp) = b.len().checked_sub(FINGERPRINT_ATTR_LEN) else {
        return false;
    };
    software_ok
        && last == Some(AttrType::FINGERPRINT)
        && got_fp == Some(fingerprint(&b[..before_fp]))
}

/// Derper's response: header plus one XOR-MAPPED-ADDRESS, 32 or 44 bytes.
fn write_tailscale_response(tx: TxId, source: SocketAddr, out: &mut Vec<u8>) {
    let attrs = address_attr_len(source);
    write_header(out, BINDING_SUCCESS, attrs, MAGIC_COOKIE, tx);
    write_address(out, AttrType::XOR_MAPPED_ADDRESS, source, Some(&tx));
}

fn write_standard_response(
    req: &BindingRequest,
    fingerprint_requested: bool,
    source: SocketAddr,
    rfc5780: Option<&Rfc5780Addrs>,
    out: &mut Vec<u8>,
) {
    let budget = req.response_budget();
    let software_len = 4 + padded(SERVER_SOFTWARE.len());
    let mut size = HEADER_LEN + address_attr_len(source);
    let mut fits = |extra: usize| {
        let ok = size + extra <= budget;
        if ok {
            size += extra;
        }
        ok
    };
    // Priority order, see the module docs.
    let mut with_fingerprint = fingerprint_requested && fits(FINGERPRINT_ATTR_LEN);
    let other = rfc5780
        .map(|r| unmap(r.other_address))
        .filter(|a| fits(address_attr_len(*a)));
    let origin = rfc5780
        .map(|r| unmap(r.response_origin))
        .filter(|a| fits(address_attr_len(*a)));
    let with_mapped = fits(address_attr_len(source));
    if !with_fingerprint {
        with_fingerprint = fits(FINGERPRINT_ATTR_LEN);
    }
    let with_software = fits(software_len);

    let start = out.len();
    write_header(
        out,
        BINDING_SUCCESS,
        size - HEADER_LEN,
        MAGIC_COOKIE,
        req.tx,
    );
    write_address(out, AttrType::XOR_MAPPED_ADDRESS, source, Some(&req.tx));
    if with_mapped {
        write_address(out, AttrType::MAPPED_ADDRESS, source, None);
    }
    if let Some(origin) = origin {
        write_address(out, AttrType::RESPONSE_ORIGIN, origin, None);
    }
    if let Some(other) = other {
        write_address(out, AttrType::OTHER_ADDRESS, other, None);
    }
    if with_software {
        write_attr(out, AttrType::SOFTWARE, SERVER_SOFTWARE.as_bytes());
    }
    if with_fingerprint {
        write_fingerprint(out, start);
    }
}

fn write_classic_response(
    req: &BindingRequest,
    source: SocketAddr,
    rfc5780: Option<&Rfc5780Addrs>,
    out: &mut Vec<u8>,
) {
    let budget = req.response_budget();
    let mut size = HEADER_LEN + address_attr_len(source);
    let mut fits = |extra: usize| {
        let ok = size + extra <= budget;
        if ok {
            size += extra;
        }
        ok
    };
    let changed = rfc5780
        .map(|r| unmap(r.other_address))
        .filter(|a| fits(address_attr_len(*a)));
    let origin = rfc5780
        .map(|r| unmap(r.response_origin))
        .filter(|a| fits(address_attr_len(*a)));
    write_header(out, BINDING_SUCCESS, size - HEADER_LEN, req.cookie, req.tx);
    write_address(out, AttrType::MAPPED_ADDRESS, source, None);
    if let Some(origin) = origin {
        write_address(out, AttrType::SOURCE_ADDRESS, origin, None);
    }
    if let Some(changed) = changed {
        write_address(out, AttrType::CHANGED_ADDRESS, changed, None);
    }
}

/// 420 error response: ERROR-CODE, UNKNOWN-ATTRIBUTES, FINGERPRINT if the client used one.
fn write_unknown_attributes(
    req: &BindingRequest,
    unknown: &[u16],
    fingerprint_requested: bool,
    out: &mut Vec<u8>,
) {
    let error_len = 4 + padded(4 + UNKNOWN_ATTRIBUTE_REASON.len());
    let unknown_len = 4 + padded(2 * unknown.len());
    let mut size = HEADER_LEN + error_len + unknown_len;
    let with_fingerprint =
        fingerprint_requested && size + FINGERPRINT_ATTR_LEN <= req.response_budget();
    if with_fingerprint {
        size += FINGERPRINT_ATTR_LEN;
    }
    let start = out.len();
    write_header(out, BINDING_ERROR, size - HEADER_LEN, req.cookie, req.tx);
    // ERROR-CODE: 21 reserved bits, class 4, number 20.
    put_u16(out, AttrType::ERROR_CODE.0);
    put_u16(out, (4 + UNKNOWN_ATTRIBUTE_REASON.len()) as u16);
    out.extend_from_slice(&[0, 0, 4, 20]);
    out.extend_from_slice(UNKNOWN_ATTRIBUTE_REASON);
    pad(out, 4 + UNKNOWN_ATTRIBUTE_REASON.len());
    put_u16(out, AttrType::UNKNOWN_ATTRIBUTES.0);
    put_u16(out, (2 * unknown.len()) as u16);
    for ty in unknown {
        put_u16(out, *ty);
    }
    pad(out, 2 * unknown.len());
    if with_fingerprint {
        write_fingerprint(out, start);
    }
}

fn write_header(out: &mut Vec<u8>, ty: u16, attrs_len: usize, cookie: [u8; 4], tx: TxId) {
    put_u16(out, ty);
    // Attribute lengths are bounded by the ~140-byte maximum response, so this cannot truncate.
    put_u16(out, attrs_len as u16);
    out.extend_from_slice(&cookie);
    out.extend_from_slice(&tx.0);
}

/// Bytes an address attribute takes on the wire, header included: 12 for IPv4, 24 for IPv6.
fn address_attr_len(addr: SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 4 + 8,
        SocketAddr::V6(_) => 4 + 20,
    }
}

fn write_address(out: &mut Vec<u8>, ty: AttrType, addr: SocketAddr, xor_tx: Option<&TxId>) {
    let mut key = [0u8; 16];
    let mut port = addr.port();
    if let Some(tx) = xor_tx {
        key[..4].copy_from_slice(&MAGIC_COOKIE);
        key[4..].copy_from_slice(&tx.0);
        port ^= 0x2112;
    }
    put_u16(out, ty.0);
    match addr.ip() {
        IpAddr::V4(ip) => {
            put_u16(out, 8);
            out.extend_from_slice(&[0, 0x01]);
            put_u16(out, port);
            out.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
        IpAddr::V6(ip) => {
            put_u16(out, 20);
            out.extend_from_slice(&[0, 0x02]);
            put_u16(out, port);
            out.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
}

fn write_attr(out: &mut Vec<u8>, ty: AttrType, value: &[u8]) {
    put_u16(out, ty.0);
    put_u16(out, value.len() as u16);
    out.extend_from_slice(value);
    pad(out, value.len());
}

/// Appends FINGERPRINT over the message that starts at `out[start]`, whose header length already
/// counts the FINGERPRINT attribute.
fn write_fingerprint(out: &mut Vec<u8>, start: usize) {
    let crc = fingerprint(&out[start..]);
    put_u16(out, AttrType::FINGERPRINT.0);
    put_u16(out, 4);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn pad(out: &mut Vec<u8>, value_len: usize) {
    out.resize(out.len() + padded(value_len) - value_len, 0);
}

const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Turns `[::ffff:a.b.c.d]:p` (how a dual-stack socket reports IPv4 peers) into `a.b.c.d:p`.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Transaction ID at bytes 8..20; callers have checked `b.len() >= HEADER_LEN`.
fn tx_id(b: &[u8]) -> TxId {
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&b[8..HEADER_LEN]);
    TxId(tx)
}

/// Big-endian u16 at `at`; callers have checked the bounds.
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Big-endian u32 at `at`; callers have checked the bounds.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Walks type-length-value attributes, yielding `(type, value, offset of the attribute header)`.
/// Each value is padded to 4 bytes; a header or padded value that runs past the end is an
/// overrun, after which the walk stops (Go: `foreachAttr`).
struct Attrs<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Attrs<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self {
            rest: body,
            offset: 0,
        }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(AttrType, &'a [u8], usize), StunError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(&[t0, t1, l0, l1]) = self.rest.get(..4) else {
            self.rest = &[];
            return Some(Err(StunError::AttributeOverrun));
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let body = &self.rest[4..];
        let (Some(value), Some(next)) = (body.get(..len), body.get(padded(len)..)) else {
            self.rest = &[];
            return Some(Err(StunError::AttributeOverrun));
        };
        let offset = self.offset;
        self.offset += 4 + padded(len);
        self.rest = next;
        Some(Ok((AttrType(u16::from_be_bytes([t0, t1])), value, offset)))
    }
}

/// STUN FINGERPRINT value of `b`: CRC-32 (IEEE) XOR `0x5354554E`.
fn fingerprint(b: &[u8]) -> u32 {
    crc32(b) ^ FINGERPRINT_XOR
}

/// Table-driven CRC-32 (IEEE 802.3, reflected, as Go's `crc32.ChecksumIEEE`). Hand-rolled so the
/// protocol crate needs no extra dependency for 36 bytes per request.
fn crc32(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in b {
        crc = CRC32_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;
    use stun_rs::attributes::stun::{Fingerprint, MappedAddress, Software, XorMappedAddress};
    use stun_rs::methods::BINDING;
    use stun_rs::{
        DecoderContextBuilder, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder,
        StunMessageBuilder, TransactionId,
    };

    use super::*;

    /// Transaction ID 01 02 .. 0c, used by every golden vector below.
    const TX: TxId = TxId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

    /// Hex with whitespace and `#` comments, for annotated golden vectors.
    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(str::split_whitespace)
            .collect();
        hex::decode(s).unwrap()
    }

    fn v4() -> SocketAddr {
        "192.0.2.1:32853".parse().unwrap()
    }

    fn v6() -> SocketAddr {
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap()
    }

    fn respond(
        req: &BindingRequest,
        src: SocketAddr,
        rfc5780: Option<&Rfc5780Addrs>,
    ) -> (Reply, Vec<u8>) {
        let mut out = Vec::new();
        let reply = binding_response(req, src, rfc5780, &mut out);
        assert!(out.len() <= req.response_budget(), "{} > budget", out.len());
        (reply, out)
    }

    /// Builds a request with the cookie from `attrs`, optionally ending in FINGERPRINT.
    fn request(ty: u16, attrs: &[(u16, &[u8])], with_fingerprint: bool) -> Vec<u8> {
        let mut b = Vec::new();
        put_u16(&mut b, ty);
        put_u16(&mut b, 0);
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&TX.0);
        for (t, v) in attrs {
            write_attr(&mut b, AttrType(*t), v);
        }
        let mut len = b.len() - HEADER_LEN;
        if with_fingerprint {
            len += FINGERPRINT_ATTR_LEN;
        }
        b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        if with_fingerprint {
            write_fingerprint(&mut b, 0);
        }
        b
    }

    /// Attributes of a message we built, as (type, value); panics on malformed input.
    fn attrs(msg: &[u8]) -> Vec<(AttrType, Vec<u8>)> {
        let len = usize::from(be16(msg, 2));
        assert_eq!(HEADER_LEN + len, msg.len(), "header length matches");
        Attrs::new(&msg[HEADER_LEN..])
            .map(|a| a.map(|(t, v, _)| (t, v.to_vec())).unwrap())
            .collect()
    }

    fn attr(msg: &[u8], ty: AttrType) -> Option<Vec<u8>> {
        attrs(msg)
            .into_iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| v)
    }

    fn address(msg: &[u8], ty: AttrType) -> Option<SocketAddr> {
        let tx = tx_id(msg);
        let xor = matches!(ty, AttrType::XOR_MAPPED_ADDRESS).then_some(&tx);
        attr(msg, ty).map(|v| read_address(ty, &v, xor).unwrap())
    }

    /// Decodes with stun-rs, validating FINGERPRINT: an independent reading of what we emit.
    fn stun_rs_decode(msg: &[u8]) -> stun_rs::StunMessage {
        let ctx = DecoderContextBuilder::default().with_validation().build();
        let decoder = MessageDecoderBuilder::default().with_context(ctx).build();
        let (decoded, size) = decoder.decode(msg).unwrap();
        assert_eq!(size, msg.len());
        decoded
    }

    // --- golden vectors, produced by tailscale.com/net/stun v1.102.5 ---

    #[test]
    fn tailscale_request_golden() {
        let want = unhex(
            "0001 0014          # Binding Request, length 20
             2112a442           # magic cookie
             0102030405060708090a0b0c  # transaction ID
             8022 0008 7461696c6e6f6465  # SOFTWARE tailnode
             8028 0004 b32c370f # FINGERPRINT",
        );
        assert_eq!(binding_request(TX).as_slice(), want);
        let req = parse_binding_request(&want).unwrap();
        assert_eq!(req.kind, RequestKind::Tailscale);
        assert_eq!(req.tx, TX);
        assert_eq!(req.change_request, None);
        assert!(is_stun(&want));
    }

    #[test]
    fn tailscale_response_ipv4_golden() {
        let want = unhex(
            "0101 000c          # Binding Success, length 12
             2112a442 0102030405060708090a0b0c
             0020 0008          # XOR-MAPPED-ADDRESS, length 8
             00 01 a147         # reserved, IPv4, port 32853 ^ 0x2112
             e112a643           # 192.0.2.1 ^ cookie",
        );
        let req = parse_binding_request(&binding_request(TX)).unwrap();
        let (reply, out) = respond(&req, v4(), None);
        assert_eq!(reply, Reply::Success);
        assert_eq!(out.len(), 32);
        assert_eq!(out, want);
        // A dual-stack socket reports the same client as ::ffff:192.0.2.1; derper would answer
        // with family 2, we answer with family 1, which Tailscale clients read identically.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:32853".parse().unwrap();
        assert_eq!(respond(&req, mapped, None).1, want);
        // RFC 5780 addresses never change a Tailscale answer.
        let r = Rfc5780Addrs {
            response_origin: "198.51.100.1:3478".parse().unwrap(),
            other_address: "198.51.100.2:3479".parse().unwrap(),
        };
        assert_eq!(respond(&req, v4(), Some(&r)).1, want);
        assert_eq!(parse_binding_response(&want).unwrap(), (TX, v4()));
    }

    #[test]
    fn tailscale_response_ipv6_golden() {
        let want = unhex(
            "0101 0018 2112a442 0102030405060708090a0b0c
             0020 0014 00 02 a147               # XOR-MAPPED-ADDRESS, IPv6
             0113a9fa 1336557c 0517253b 4d5f6d7b # address ^ (cookie ++ txid)",
        );
        let req = parse_binding_request(&binding_request(TX)).unwrap();
        let (_, out) = respond(&req, v6(), None);
        assert_eq!(out.len(), 44);
        assert_eq!(out, want);
        assert_eq!(parse_binding_response(&want).unwrap(), (TX, v6()));
    }

    #[test]
    fn parse_response_accepts_derpers_mapped_ipv4() {
        // What derper sends to an IPv4 client on a dual-stack socket: family 2, ::ffff:192.0.2.1.
        let go = unhex(
            "0101 0018 2112a442 0102030405060708090a0b0c
             0020 0014 0002 a147 2112a442 010203040506f8f7c90a090d",
        );
        assert_eq!(parse_binding_response(&go).unwrap(), (TX, v4()));
    }

    #[test]
    fn parse_response_variants() {
        let base = unhex("0101 000c 2112a442 0102030405060708090a0b0c 0020 0008 0001a147e112a643");
        // 0x8020, the comprehension-optional spelling.
        let mut alt = base.clone();
        alt[20] = 0x80;
        assert_eq!(parse_binding_response(&alt).unwrap(), (TX, v4()));
        // MAPPED-ADDRESS only: the fallback.
        let plain =
            unhex("0101 000c 2112a442 0102030405060708090a0b0c 0001 0008 0001 8055 c0000201");
        assert_eq!(parse_binding_response(&plain).unwrap(), (TX, v4()));
        // XOR wins over MAPPED whatever the order.
        let mut both =
            unhex("0101 0018 2112a442 0102030405060708090a0b0c 0001 0008 0001 0001 0a000001");
        both.extend_from_slice(&base[20..]);
        assert_eq!(parse_binding_response(&both).unwrap(), (TX, v4()));
        // Trailing bytes past the header length are ignored.
        let mut trailing = base.clone();
        trailing.extend_from_slice(&[0xff; 7]);
        assert_eq!(parse_binding_response(&trailing).unwrap(), (TX, v4()));
        // Errors.
        assert_eq!(
            parse_binding_response(&base[..31]),
            Err(StunError::AttributeOverrun)
        );
        let mut req = base.clone();
        req[1] = 0x01 ^ 0x01;
        assert_eq!(
            parse_binding_response(&req),
            Err(StunError::NotSuccessResponse(0x0100))
        );
        let none = unhex("0101 0008 2112a442 0102030405060708090a0b0c 8022 0004 61626364");
        assert_eq!(
            parse_binding_response(&none),
            Err(StunError::NoMappedAddress)
        );
        let mut bad_family = base.clone();
        bad_family[25] = 3;
        assert_eq!(
            parse_binding_response(&bad_family),
            Err(StunError::BadAttribute(AttrType::XOR_MAPPED_ADDRESS))
        );
        assert_eq!(parse_binding_response(&[0u8; 19]), Err(StunError::NotStun));
        assert_eq!(
            parse_binding_response(b"not a stun message at all"),
            Err(StunError::NotStun)
        );
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    // --- derper's acceptance rules ---

    #[test]
    fn tailscale_acceptance_matches_derper() {
        // Derper ignores the header length: so do we, for Tailscale requests.
        let mut odd_len = binding_request(TX);
        odd_len[3] = 0;
        // The CRC covers the header, so recompute it.
        let fp = fingerprint(&odd_len[..32]);
        odd_len[36..].copy_from_slice(&fp.to_be_bytes());
        assert_eq!(
            parse_binding_request(&odd_len).unwrap().kind,
            RequestKind::Tailscale
        );

        // SOFTWARE need not be first, extra attributes are fine, FINGERPRINT must be last.
        let extra = request(
            BINDING_REQUEST,
            &[
                (0x8023, b"ab"),
                (0x8022, b"tailnode"),
                (0x0024, &[0, 0, 0, 1]),
            ],
            true,
        );
        let req = parse_binding_request(&extra).unwrap();
        assert_eq!(req.kind, RequestKind::Tailscale);
        // Tailscale requests never get a 420, whatever else they carry (derper answers them).
        assert_eq!(respond(&req, v4(), None).0, Reply::Success);

        // SOFTWARE "tailnode" without FINGERPRINT is a standard request.
        let no_fp = request(BINDING_REQUEST, &[(0x8022, b"tailnode")], false);
        assert_eq!(
            parse_binding_request(&no_fp).unwrap().kind,
            RequestKind::Standard { fingerprint: false }
        );
    }

    #[test]
    fn bad_fingerprint() {
        let mut b = binding_request(TX);
        b[39] ^= 1;
        assert_eq!(parse_binding_request(&b), Err(StunError::BadFingerprint));
        let mut s = request(BINDING_REQUEST, &[(0x8022, b"other")], true);
        let last = s.len() - 1;
        s[last] ^= 0x80;
        assert_eq!(parse_binding_request(&s), Err(StunError::BadFingerprint));
        let short_fp = request(BINDING_REQUEST, &[(0x8028, &[1, 2])], false);
        assert_eq!(
            parse_binding_request(&short_fp),
            Err(StunError::BadAttribute(AttrType::FINGERPRINT))
        );
    }

    #[test]
    fn fingerprint_not_last() {
        // A valid FINGERPRINT (over a header that counts the attribute after it), then SOFTWARE.
        let mut b = unhex("0001 0010 2112a442 0102030405060708090a0b0c");
        let fp = fingerprint(&b);
        write_attr(&mut b, AttrType::FINGERPRINT, &fp.to_be_bytes());
        write_attr(&mut b, AttrType::SOFTWARE, b"abcd");
        assert_eq!(
            parse_binding_request(&b),
            Err(StunError::FingerprintNotLast)
        );
    }

    #[test]
    fn malformed_requests() {
        let good = binding_request(TX);
        // Truncated anywhere.
        for n in 0..good.len() {
            let r = parse_binding_request(&good[..n]);
            assert!(r.is_err(), "{n} bytes parsed: {r:?}");
        }
        assert_eq!(parse_binding_request(&good[..19]), Err(StunError::NotStun));
        assert_eq!(
            parse_binding_request(&good[..36]),
            Err(StunError::BadLength {
                len: 20,
                datagram: 36
            })
        );
        // Top bits set.
        let mut top = good;
        top[0] |= 0x40;
        assert_eq!(parse_binding_request(&top), Err(StunError::NotStun));
        // Wrong cookie and a length that does not match: not RFC 3489 either.
        let mut cookie = good;
        cookie[4] ^= 0xff;
        cookie[3] = 0x18;
        assert_eq!(parse_binding_request(&cookie), Err(StunError::NotStun));
        // A response, an indication: STUN but not a Binding Request.
        let mut resp = good;
        resp[1] = 0x01;
        resp[0] = 0x01;
        assert_eq!(
            parse_binding_request(&resp),
            Err(StunError::NotBindingRequest(0x0101))
        );
        let mut ind = good;
        ind[1] = 0x11;
        assert_eq!(
            parse_binding_request(&ind),
            Err(StunError::NotBindingRequest(0x0011))
        );
        // Attribute overrun: length says 40 bytes of value.
        let overrun = unhex("0001 0008 2112a442 0102030405060708090a0b0c 8022 0028 74616966");
        assert_eq!(
            parse_binding_request(&overrun),
            Err(StunError::AttributeOverrun)
        );
        // Missing padding on the last attribute.
        let unpadded = unhex("0001 0008 2112a442 0102030405060708090a0b0c 8022 0005 74616966 6e");
        assert!(parse_binding_request(&unpadded).is_err());
        // Cut attribute header.
        let cut = unhex("0001 0004 2112a442 0102030405060708090a0b0c 0000 0000 8022");
        assert!(parse_binding_request(&cut).is_err());
        // Length not a multiple of 4.
        let odd = unhex("0001 0002 2112a442 0102030405060708090a0b0c 0000");
        assert_eq!(
            parse_binding_request(&odd),
            Err(StunError::BadLength {
                len: 2,
                datagram: 22
            })
        );
        // Malformed CHANGE-REQUEST.
        let change = request(BINDING_REQUEST, &[(0x0003, &[0, 0, 6])], false);
        assert_eq!(
            parse_binding_request(&change),
            Err(StunError::BadAttribute(AttrType::CHANGE_REQUEST))
        );
    }

    #[test]
    fn non_stun() {
        for b in [
            &b""[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"TS\xf0\x9f\x92\xac\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f",
            &[0u8; 19],
            &[0xffu8; 64],
            &[0u8; 1500],
        ] {
            assert!(!is_stun(b) || parse_binding_request(b).is_err());
            assert_eq!(parse_binding_request(b), Err(StunError::NotStun), "{b:?}");
        }
        // WireGuard handshake initiation: type 1, three reserved zero bytes, 148 bytes.
        let mut wg = vec![0u8; 148];
        wg[0] = 1;
        assert_eq!(parse_binding_request(&wg), Err(StunError::NotStun));
    }

    // --- standard clients ---

    #[test]
    fn standard_request_without_fingerprint() {
        let b = unhex("0001 0000 2112a442 0102030405060708090a0b0c");
        let req = parse_binding_request(&b).unwrap();
        assert_eq!(req.kind, RequestKind::Standard { fingerprint: false });
        assert_eq!(req.response_budget(), 60);
        let (reply, out) = respond(&req, v4(), None);
        assert_eq!(reply, Reply::Success);
        // 60-byte budget: XOR-MAPPED (32) + MAPPED (44) + FINGERPRINT (52); SOFTWARE would be 64.
        let want_prefix = unhex(
            "0101 0020 2112a442 0102030405060708090a0b0c
             0020 0008 0001 a147 e112a643   # XOR-MAPPED-ADDRESS
             0001 0008 0001 8055 c0000201   # MAPPED-ADDRESS 192.0.2.1:32853
             8028 0004                      # FINGERPRINT",
        );
        assert_eq!(out.len(), 52);
        assert_eq!(out[..48], want_prefix[..]);
        let msg = stun_rs_decode(&out);
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert_eq!(msg.method(), BINDING);
        let xor = msg
            .get::<XorMappedAddress>()
            .unwrap()
            .as_xor_mapped_address()
            .unwrap();
        assert_eq!(*xor.socket_address(), v4());
        let mapped = msg
            .get::<MappedAddress>()
            .unwrap()
            .as_mapped_address()
            .unwrap();
        assert_eq!(*mapped.socket_address(), v4());
        assert!(msg.get::<Fingerprint>().is_some());
        assert_eq!(parse_binding_response(&out).unwrap(), (TX, v4()));

        // IPv6: 60-byte budget holds XOR-MAPPED (44) + FINGERPRINT (52) only.
        let (_, out6) = respond(&req, v6(), None);
        assert_eq!(out6.len(), 52);
        assert_eq!(attrs(&out6).len(), 2);
        assert_eq!(parse_binding_response(&out6).unwrap(), (TX, v6()));
    }

    #[test]
    fn standard_request_with_fingerprint_from_stun_rs() {
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::from(TX.0))
            .with_attribute(Software::new("some client").unwrap())
            .with_attribute(Fingerprint::default())
            .build();
        let mut buf = [0u8; 128];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &msg)
            .unwrap();
        let req = parse_binding_request(&buf[..n]).unwrap();
        assert_eq!(req.kind, RequestKind::Standard { fingerprint: true });
        for src in [v4(), v6()] {
            let (reply, out) = respond(&req, src, None);
            assert_eq!(reply, Reply::Success);
            let decoded = stun_rs_decode(&out);
            let xor = decoded
                .get::<XorMappedAddress>()
                .unwrap()
                .as_xor_mapped_address()
                .unwrap();
            assert_eq!(*xor.socket_address(), src);
            let mapped = decoded
                .get::<MappedAddress>()
                .unwrap()
                .as_mapped_address()
                .unwrap();
            assert_eq!(*mapped.socket_address(), src);
            let sw = decoded.get::<Software>().unwrap().as_software().unwrap();
            assert_eq!(sw.as_str(), SERVER_SOFTWARE);
            assert!(decoded.get::<Fingerprint>().is_some());
            assert_eq!(decoded.transaction_id().as_bytes(), &TX.0);
        }
    }

    #[test]
    fn rfc5769_sample_request_gets_420() {
        // RFC 5769 §2.1: carries PRIORITY (0x0024, ICE, comprehension-required).
        let b = unhex(
            "0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
             8022 0010 5354554e 20746573 7420636c 69656e74  # SOFTWARE: STUN test client
             0024 0004 6e0001ff                             # PRIORITY
             8029 0008 932ff9b1 51263b36                    # ICE-CONTROLLED
             0006 0009 6576746a 3a683676 59202020           # USERNAME
             0008 0014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2  # MESSAGE-INTEGRITY
             8028 0004 e57a3bcf                             # FINGERPRINT",
        );
        let req = parse_binding_request(&b).unwrap();
        assert_eq!(req.kind, RequestKind::Standard { fingerprint: true });
        assert_eq!(req.unknown_attributes(), &[0x0024]);
        let (reply, out) = respond(&req, v4(), None);
        assert_eq!(reply, Reply::UnknownAttributes);
        assert_eq!(be16(&out, 0), BINDING_ERROR);
        let decoded = stun_rs_decode(&out);
        assert_eq!(decoded.class(), MessageClass::ErrorResponse);
        let code = decoded
            .get::<stun_rs::attributes::stun::ErrorCode>()
            .unwrap()
            .as_error_code()
            .unwrap();
        assert_eq!(code.error_code().error_code(), 420);
        let unknown = decoded
            .get::<stun_rs::attributes::stun::UnknownAttributes>()
            .unwrap()
            .as_unknown_attributes()
            .unwrap();
        assert_eq!(unknown.attributes(), &[0x0024]);
    }

    #[test]
    fn response_address_and_port_are_refused() {
        let b = request(
            BINDING_REQUEST,
            &[
                (0x0002, &[0, 1, 0, 80, 10, 0, 0, 1]),
                (0x0027, &[0, 80, 0, 0]),
            ],
            false,
        );
        let req = parse_binding_request(&b).unwrap();
        assert_eq!(req.unknown_attributes(), &[0x0002]);
        assert_eq!(req.response_port, Some(80));
        let (reply, out) = respond(&req, v4(), None);
        assert_eq!(reply, Reply::UnknownAttributes);
        assert_eq!(
            attr(&out, AttrType::UNKNOWN_ATTRIBUTES).unwrap(),
            vec![0, 2, 0, 0x27]
        );
        // RESPONSE-ADDRESS is refused even in RFC 5780 mode.
        let (reply, _) = respond(&req, v4(), Some(&rfc5780()));
        assert_eq!(reply, Reply::UnknownAttributes);
    }

    #[test]
    fn response_port_in_rfc5780_mode() {
        // As coturn's turnutils_stunclient sends it: RESPONSE-PORT and CHANGE-REQUEST.
        let b = request(
            BINDING_REQUEST,
            &[(0x0027, &[0xd4, 0x31, 0, 0]), (0x0003, &[0, 0, 0, 6])],
            false,
        );
        let req = parse_binding_request(&b).unwrap();
        assert_eq!(req.response_port, Some(0xd431));
        assert!(req.unknown_attributes().is_empty());
        let (reply, out) = respond(&req, v4(), Some(&rfc5780()));
        assert_eq!(reply, Reply::Success);
        // The mapped address is still the source, not the response port.
        assert_eq!(parse_binding_response(&out).unwrap(), (TX, v4()));
        let (reply, out) = respond(&req, v4(), None);
        assert_eq!(reply, Reply::UnknownAttributes);
        assert_eq!(
            attr(&out, AttrType::UNKNOWN_ATTRIBUTES).unwrap(),
            vec![0, 3, 0, 0x27]
        );
        let bad = request(BINDING_REQUEST, &[(0x0027, &[1, 2, 3])], false);
        assert_eq!(
            parse_binding_request(&bad),
            Err(StunError::BadAttribute(AttrType::RESPONSE_PORT))
        );
    }

    // --- RFC 5780 ---

    fn rfc5780() -> Rfc5780Addrs {
        Rfc5780Addrs {
            response_origin: "198.51.100.1:3478".parse().unwrap(),
            other_address: "198.51.100.2:3479".parse().unwrap(),
        }
    }

    #[test]
    fn rfc5780_attributes_and_change_request() {
        let b = request(BINDING_REQUEST, &[(0x0003, &[0, 0, 0, 6])], true);
        let req = parse_binding_request(&b).unwrap();
        assert_eq!(
            req.change_request,
            Some(ChangeRequest {
                change_ip: true,
                change_port: true
            })
        );
        let r = rfc5780();
        let (reply, out) = respond(&req, v4(), Some(&r));
        assert_eq!(reply, Reply::Success);
        // Budget 36 * 3 = 108: everything fits (88 bytes).
        let want = unhex(
            "0101 0044 2112a442 0102030405060708090a0b0c
             0020 0008 0001 a147 e112a643   # XOR-MAPPED-ADDRESS
             0001 0008 0001 8055 c0000201   # MAPPED-ADDRESS
             802b 0008 0001 0d96 c6336401   # RESPONSE-ORIGIN 198.51.100.1:3478
             802c 0008 0001 0d97 c6336402   # OTHER-ADDRESS 198.51.100.2:3479
             8022 0007 7374756e6e6572 00    # SOFTWARE stunner
             8028 0004                      # FINGERPRINT",
        );
        assert_eq!(out.len(), 88);
        assert_eq!(out[..84], want[..]);
        stun_rs_decode(&out);
        assert_eq!(
            address(&out, AttrType::OTHER_ADDRESS),
            Some(r.other_address)
        );
        assert_eq!(
            address(&out, AttrType::RESPONSE_ORIGIN),
            Some(r.response_origin)
        );

        // Without RFC 5780 addresses a change cannot be honoured: 420 naming CHANGE-REQUEST.
        let (reply, out) = respond(&req, v4(), None);
        assert_eq!(reply, Reply::UnknownAttributes);
        assert_eq!(
            attr(&out, AttrType::UNKNOWN_ATTRIBUTES).unwrap(),
            vec![0, 3]
        );
        stun_rs_decode(&out);

        // A CHANGE-REQUEST asking for no change is just a Binding Request.
        let b = request(BINDING_REQUEST, &[(0x0003, &[0, 0, 0, 0])], false);
        let req = parse_binding_request(&b).unwrap();
        assert_eq!(req.change_request, Some(ChangeRequest::default()));
        assert_eq!(respond(&req, v4(), None).0, Reply::Success);
    }

    #[test]
    fn rfc5780_minimal_ipv6_request_keeps_other_address() {
        let r = Rfc5780Addrs {
            response_origin: "[2001:db8::1]:3478".parse().unwrap(),
            other_address: "[2001:db8::2]:3479".parse().unwrap(),
        };
        let b = request(BINDING_REQUEST, &[], false);
        let req = parse_binding_request(&b).unwrap();
        let (_, out) = respond(&req, v6(), Some(&r));
        // 60-byte budget: XOR-MAPPED (44) and FINGERPRINT (52); OTHER-ADDRESS (+24) does not fit.
        assert_eq!(out.len(), 52);
        assert_eq!(address(&out, AttrType::OTHER_ADDRESS), None);
        // With a FINGERPRINT (28 bytes, budget 84): XOR (44) + FP (52) + OTHER (76).
        let b = request(BINDING_REQUEST, &[], true);
        let req = parse_binding_request(&b).unwrap();
        let (_, out) = respond(&req, v6(), Some(&r));
        assert_eq!(out.len(), 76);
        assert_eq!(
            address(&out, AttrType::OTHER_ADDRESS),
            Some(r.other_address)
        );
        stun_rs_decode(&out);
    }

    // --- RFC 3489 ---

    #[test]
    fn classic_request() {
        // No cookie: bytes 4..8 are part of the 128-bit transaction ID and are echoed.
        let b = unhex("0001 0000 deadbeef 0102030405060708090a0b0c");
        let req = parse_binding_request(&b).unwrap();
        assert_eq!(req.kind, RequestKind::Classic);
        assert_eq!(req.cookie, [0xde, 0xad, 0xbe, 0xef]);
        let (reply, out) = respond(&req, v4(), None);
        assert_eq!(reply, Reply::Success);
        assert_eq!(
            out,
            unhex("0101 000c deadbeef 0102030405060708090a0b0c 0001 0008 0001 8055 c0000201")
        );
        // Go's parser needs the cookie, so it refuses this; that is fine for RFC 3489 clients.
        assert_eq!(parse_binding_response(&out), Err(StunError::NotStun));

        // With RFC 5780 addresses: SOURCE-ADDRESS and CHANGED-ADDRESS too (56 <= 60).
        let (_, out) = respond(&req, v4(), Some(&rfc5780()));
        assert_eq!(out.len(), 56);
        assert_eq!(
            address(&out, AttrType::CHANGED_ADDRESS),
            Some(rfc5780().other_address)
        );
        assert_eq!(
            address(&out, AttrType::SOURCE_ADDRESS),
            Some(rfc5780().response_origin)
        );

        // CHANGE-REQUEST we cannot honour: no answer rather than a misleading one.
        let b = unhex("0001 0008 deadbeef 0102030405060708090a0b0c 0003 0004 00000004");
        let req = parse_binding_request(&b).unwrap();
        assert_eq!(
            req.change_request,
            Some(ChangeRequest {
                change_ip: true,
                change_port: false
            })
        );
        let (reply, out) = respond(&req, v4(), None);
        assert_eq!(reply, Reply::Drop);
        assert!(out.is_empty());

        // Anything else without a cookie is noise.
        for bad in [
            "0001 0004 deadbeef 0102030405060708090a0b0c", // length mismatch
            "0101 0000 deadbeef 0102030405060708090a0b0c", // not a request
            "0001 0004 deadbeef 0102030405060708090a0b0c 0003 0008", // overrun
            "0001 0008 deadbeef 0102030405060708090a0b0c 0003 0002 0000 0000", // bad change
        ] {
            assert_eq!(
                parse_binding_request(&unhex(bad)),
                Err(StunError::NotStun),
                "{bad}"
            );
        }
    }

    // --- amplification ---

    #[test]
    fn amplification_bound_holds_for_minimal_requests() {
        let r4 = rfc5780();
        let r6 = Rfc5780Addrs {
            response_origin: "[2001:db8::1]:3478".parse().unwrap(),
            other_address: "[2001:db8::2]:3479".parse().unwrap(),
        };
        let requests = [
            unhex("0001 0000 2112a442 0102030405060708090a0b0c"),
            unhex("0001 0000 deadbeef 0102030405060708090a0b0c"),
            request(BINDING_REQUEST, &[(0x0003, &[0, 0, 0, 6])], false),
            request(BINDING_REQUEST, &[(0x0024, &[])], false),
            request(
                BINDING_REQUEST,
                &[
                    (0x0024, &[]),
                    (0x0025, &[]),
                    (0x0002, &[]),
                    (0x0027, &[0, 1, 0, 0]),
                    (0x0030, &[]),
                ],
                true,
            ),
            binding_request(TX).to_vec(),
        ];
        for b in &requests {
            let req = parse_binding_request(b).unwrap();
            for src in [v4(), v6()] {
                for r in [None, Some(&r4), Some(&r6)] {
                    let (reply, out) = respond(&req, src, r);
                    assert!(out.len() <= MAX_AMPLIFICATION * b.len());
                    if reply == Reply::Success {
                        // The mapped address is always there.
                        let m = address(&out, AttrType::XOR_MAPPED_ADDRESS)
                            .or_else(|| address(&out, AttrType::MAPPED_ADDRESS));
                        assert_eq!(m, Some(src));
                    }
                }
            }
        }
    }

    #[test]
    fn response_appends() {
        let req = parse_binding_request(&binding_request(TX)).unwrap();
        let mut out = vec![0xaa; 3];
        binding_response(&req, v4(), None, &mut out);
        assert_eq!(out.len(), 35);
        assert_eq!(parse_binding_response(&out[3..]).unwrap(), (TX, v4()));
    }

    // --- properties ---

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
        ]
    }

    /// Valid requests of every kind, to be perturbed.
    fn seed_requests() -> Vec<Vec<u8>> {
        vec![
            binding_request(TX).to_vec(),
            request(BINDING_REQUEST, &[], false),
            request(BINDING_REQUEST, &[(0x8022, b"x")], true),
            request(BINDING_REQUEST, &[(0x0003, &[0, 0, 0, 6])], true),
            request(BINDING_REQUEST, &[(0x0024, &[1, 2, 3, 4])], true),
            unhex("0001 0008 deadbeef 0102030405060708090a0b0c 0003 0004 00000002"),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..200), src in any_addr()) {
            let _ = is_stun(&b);
            let _ = parse_binding_response(&b);
            if let Ok(req) = parse_binding_request(&b) {
                for r in [None, Some(&rfc5780())] {
                    let mut out = Vec::new();
                    binding_response(&req, src, r, &mut out);
                    prop_assert!(out.len() <= MAX_AMPLIFICATION * b.len());
                }
            }
        }

        #[test]
        fn never_panics_on_perturbed_requests(
            seed in 0usize..6,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
            src in any_addr(),
        ) {
            let mut b = seed_requests()[seed].clone();
            for (at, v) in edits {
                let n = b.len();
                b[at % n] = v;
            }
            // Sometimes truncate, so overruns are exercised.
            if cut % 3 == 0 {
                b.truncate(cut % (b.len() + 1));
            }
            let _ = parse_binding_response(&b);
            if let Ok(req) = parse_binding_request(&b) {
                for r in [None, Some(&rfc5780())] {
                    let mut out = Vec::new();
                    binding_response(&req, src, r, &mut out);
                    prop_assert!(out.len() <= MAX_AMPLIFICATION * b.len());
                    let _ = parse_binding_response(&out);
                }
            }
        }

        #[test]
        fn tailscale_round_trip(tx in any::<[u8; 12]>(), src in any_addr()) {
            let req = parse_binding_request(&binding_request(TxId(tx))).unwrap();
            prop_assert_eq!(req.kind, RequestKind::Tailscale);
            prop_assert_eq!(req.tx, TxId(tx));
            let mut out = Vec::new();
            binding_response(&req, src, None, &mut out);
            let want = unmap(src);
            prop_assert_eq!(out.len(), if want.is_ipv4() { 32 } else { 44 });
            prop_assert_eq!(parse_binding_response(&out).unwrap(), (TxId(tx), want));
        }

        #[test]
        fn standard_round_trip(fp in any::<bool>(), src in any_addr(), five in any::<bool>()) {
            let b = request(BINDING_REQUEST, &[(0x8022, b"prop client")], fp);
            let req = parse_binding_request(&b).unwrap();
            let mut out = Vec::new();
            let r = rfc5780();
            binding_response(&req, src, five.then_some(&r), &mut out);
            stun_rs_decode(&out);
            prop_assert_eq!(parse_binding_response(&out).unwrap(), (TX, unmap(src)));
        }
    }
}
