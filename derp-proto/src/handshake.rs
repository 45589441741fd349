//! The login exchange: ServerKey, then ClientInfo and ServerInfo sealed with NaCl box.
//!
//! Both sides are plain functions over frames and buffers; the caller owns the socket and the
//! deadlines.

use bytes::BufMut;
use serde::Serialize;
use serde_json::Value;

use crate::consts::{
    KEY_LEN, MAGIC, MAX_APP_NAME_LEN, MAX_CLIENT_INFO_LEN, MIN_CLIENT_INFO_LEN, NONCE_LEN,
    PROTOCOL_VERSION,
};
use crate::error::HandshakeError;
use crate::frame::{FrameType, RawFrame, write_frame_header};
use crate::key::{MeshKey, NodePublicKey, NodeSecretKey, SharedBox};

/// What a client tells the server about itself, sealed inside ClientInfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The mesh pre-shared key, for mesh peers and privileged tools.
    pub mesh_key: Option<MeshKey>,
    /// The client's protocol version (2 today; 0 if absent).
    pub version: u32,
    /// Whether the client answers server Pings (informational).
    pub can_ack_pings: bool,
    /// Set by probers; reported in PeerPresent flags.
    pub is_prober: bool,
    /// Opaque application label (since Tailscale v1.102): at most [`MAX_APP_NAME_LEN`] bytes of
    /// printable ASCII ([`valid_app_name`]); never empty (an empty `AppName` reads as `None`, as
    /// Go omits it).
    pub app_name: Option<String>,
}

/// Field order and omission rules match Go's `derp.ClientInfo`, so our JSON is byte-identical.
#[derive(Serialize)]
struct ClientInfoJson<'a> {
    #[serde(rename = "meshKey", skip_serializing_if = "Option::is_none")]
    mesh_key: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    version: u32,
    #[serde(rename = "CanAckPings")]
    can_ack_pings: bool,
    #[serde(rename = "IsProber", skip_serializing_if = "is_false")]
    is_prober: bool,
    #[serde(rename = "AppName", skip_serializing_if = "Option::is_none")]
    app_name: Option<&'a str>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// Looks a field up the way Go's `encoding/json` does: exact name first, then case-insensitively.
fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// Whether `name` may be sent as `AppName`: at most [`MAX_APP_NAME_LEN`] bytes, each printable
/// ASCII (`' '..='~'`); the empty string is valid (Go: `ValidAppName`).
pub fn valid_app_name(name: &str) -> bool {
    name.len() <= MAX_APP_NAME_LEN && name.bytes().all(|b| (b' '..=b'~').contains(&b))
}

fn json_err(what: &'static str, msg: &str) -> HandshakeError {
    HandshakeError::Json {
        what,
        source: <serde_json::Error as serde::de::Error>::custom(msg),
    }
}

impl ClientInfo {
    /// The info a regular client sends: version 2, answers pings.
    pub fn new() -> Self {
        Self {
            version: PROTOCOL_VERSION,
            can_ack_pings: true,
            ..Self::default()
        }
    }

    /// Serialises as Go does.
    pub fn to_json(&self) -> Vec<u8> {
        let json = ClientInfoJson {
            mesh_key: self.mesh_key.as_ref().map(MeshKey::to_hex),
            version: self.version,
            can_ack_pings: self.can_ack_pings,
            is_prober: self.is_prober,
            app_name: self.app_name.as_deref(),
        };
        serde_json::to_vec(&json).unwrap_or_default()
    }

    /// Parses leniently as Go does: names match case-insensitively and unknown fields are
    /// ignored (newer clients may add some; the 256 KiB frame cap bounds them and nothing of them
    /// is kept). The fields that are kept are bounded as Go bounds them: a present `meshKey` must
    /// be exactly 64 hex digits (Go ≥ v1.86) and `AppName` must pass [`valid_app_name`] (Go
    /// v1.104 `recvClientKey`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, HandshakeError> {
        const WHAT: &str = "client info";
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|source| HandshakeError::Json { what: WHAT, source })?;
        let Value::Object(obj) = value else {
            return Err(json_err(WHAT, "not an object"));
        };
        let mesh_key = match field(&obj, "meshKey") {
            None | Some(Value::Null) => None,
            // Exactly 64 hex digits, as Go ≥ v1.86 requires (no surrounding whitespace).
            Some(Value::String(s)) if s.trim() == s => {
                Some(s.parse().map_err(|_| HandshakeError::BadMeshKey)?)
            }
            Some(_) => return Err(HandshakeError::BadMeshKey),
        };
        let version = match field(&obj, "version") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| json_err(WHAT, "version is not an integer"))?,
        };
        let flag = |name: &str| match field(&obj, name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(json_err(WHAT, "flag is not a boolean")),
        };
        let app_name = match field(&obj, "AppName") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !valid_app_name(s) => {
                return Err(HandshakeError::InvalidAppName {
                    start: s.chars().take(40).collect(),
                    len: s.len(),
                });
            }
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(json_err(WHAT, "AppName is not a string")),
        };
        Ok(Self {
            mesh_key,
            version,
            can_ack_pings: flag("CanAckPings")?,
            is_prober: flag("IsProber")?,
            app_name,
        })
    }
}

/// What a server tells the client, sealed inside ServerInfo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// Server protocol version.
    pub version: u32,
    /// If non-zero, the client rate-limits its own sends to this many bytes per second.
    #[serde(rename = "TokenBucketBytesPerSecond", skip_serializing_if = "is_zero")]
    pub token_bucket_bytes_per_second: u32,
    /// Bucket depth for the above.
    #[serde(rename = "TokenBucketBytesBurst", skip_serializing_if = "is_zero")]
    pub token_bucket_bytes_burst: u32,
}

impl ServerInfo {
    /// What current servers send: `{"version":2}`.
    pub fn new() -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ..Self::default()
        }
    }

    /// Parses leniently, ignoring unknown fields.
    pub fn from_json(bytes: &[u8]) -> Result<Self, HandshakeError> {
        const WHAT: &str = "server info";
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|source| HandshakeError::Json { what: WHAT, source })?;
        let Value::Object(obj) = value else {
            return Err(json_err(WHAT, "not an object"));
        };
        let num = |name: &str| {
            field(&obj, name)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0)
        };
        Ok(Self {
            version: num("version"),
            token_bucket_bytes_per_second: num("TokenBucketBytesPerSecond"),
            token_bucket_bytes_burst: num("TokenBucketBytesBurst"),
        })
    }
}

/// Writes the ServerKey frame (45 bytes) that opens every connection.
pub fn write_server_key(buf: &mut impl BufMut, server_key: &NodePublicKey) {
    write_frame_header(buf, FrameType::SERVER_KEY, MAGIC.len() + KEY_LEN);
    buf.put_slice(&MAGIC);
    buf.put_slice(server_key.as_bytes());
}

/// A ClientInfo the server opened and parsed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientHello {
    /// The key the client proved it holds.
    pub client_key: NodePublicKey,
    /// What it said about itself.
    pub info: ClientInfo,
    /// The box shared with the client, reused to seal ServerInfo without a second X25519.
    pub shared: SharedBox,
}

/// Server side: opens and checks the client's first frame (Go: `recvClientKey`).
pub fn read_client_info(
    server: &NodeSecretKey,
    frame: &RawFrame,
) -> Result<ClientHello, HandshakeError> {
    if frame.ty != FrameType::CLIENT_INFO {
        return Err(HandshakeError::UnexpectedFrame {
            expected: FrameType::CLIENT_INFO,
            got: frame.ty,
        });
    }
    let len = frame.payload.len();
    if !(MIN_CLIENT_INFO_LEN..=MAX_CLIENT_INFO_LEN).contains(&len) {
        return Err(HandshakeError::BadLength { ty: frame.ty, len });
    }
    let client_key = NodePublicKey::from_slice(&frame.payload)
        .ok_or(HandshakeError::BadLength { ty: frame.ty, len })?;
    // Checked before any X25519: a small-order key would open a box sealed with the all-zero
    // secret, and the server's own key would let a client speak as the server.
    if client_key.is_small_order() {
        return Err(HandshakeError::WeakClientKey("small-order point"));
    }
    if client_key == server.public_key() {
        return Err(HandshakeError::WeakClientKey("the server's own key"));
    }
    let shared = server.shared_box(&client_key);
    let json = shared
        .open(&frame.payload[KEY_LEN..])
        .ok_or(HandshakeError::BoxOpen)?;
    let info = ClientInfo::from_json(&json)?;
    Ok(ClientHello {
        client_key,
        info,
        shared,
    })
}

/// Server side: writes the ServerInfo frame sealed to `client`.
pub fn write_server_info(
    buf: &mut impl BufMut,
    server: &NodeSecretKey,
    client: &NodePublicKey,
    info: &ServerInfo,
) {
    let json = serde_json::to_vec(info).unwrap_or_default();
    let sealed = server.seal_to(client, &json);
    write_frame_header(buf, FrameType::SERVER_INFO, sealed.len());
    buf.put_slice(&sealed);
}

/// Server side: writes the ServerInfo frame sealed with the box opened in [`read_client_info`].
pub fn write_server_info_to(buf: &mut impl BufMut, hello: &ClientHello, info: &ServerInfo) {
    let json = serde_json::to_vec(info).unwrap_or_default();
    let sealed = hello.shared.seal(&json);
    write_frame_header(buf, FrameType::SERVER_INFO, sealed.len());
    buf.put_slice(&sealed);
}

/// Client side: checks the ServerKey frame and returns the server's key.
pub fn read_server_key(frame: &RawFrame) -> Result<NodePublicKey, HandshakeError> {
    if frame.ty != FrameType::SERVER_KEY {
        return Err(HandshakeError::UnexpectedFrame {
            expected: FrameType::SERVER_KEY,
            got: frame.ty,
        });
    }
    if frame.payload.len() < MAGIC.len() + KEY_LEN {
        return Err(HandshakeError::BadLength {
            ty: frame.ty,
            len: frame.payload.len(),
        });
    }
    if frame.payload[..MAGIC.len()] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    NodePublicKey::from_slice(&frame.payload[MAGIC.len()..]).ok_or(HandshakeError::BadLength {
        ty: frame.ty,
        len: frame.payload.len(),
    })
}

/// Client side: writes ClientInfo sealed to `server_key`.
pub fn write_client_info(
    buf: &mut impl BufMut,
    client: &NodeSecretKey,
    server_key: &NodePublicKey,
    info: &ClientInfo,
) {
    write_client_info_with(
        buf,
        &client.public_key(),
        &client.shared_box(server_key),
        info,
    );
}

/// Client side: writes ClientInfo sealed with `shared`, the box between `client` and the
/// server's key, so [`read_server_info_with`] opens ServerInfo without a second X25519.
pub fn write_client_info_with(
    buf: &mut impl BufMut,
    client: &NodePublicKey,
    shared: &SharedBox,
    info: &ClientInfo,
) {
    let sealed = shared.seal(&info.to_json());
    write_frame_header(buf, FrameType::CLIENT_INFO, KEY_LEN + sealed.len());
    buf.put_slice(client.as_bytes());
    buf.put_slice(&sealed);
}

/// Client side: opens the ServerInfo frame.
pub fn read_server_info(
    client: &NodeSecretKey,
    server_key: &NodePublicKey,
    frame: &RawFrame,
) -> Result<ServerInfo, HandshakeError> {
    read_server_info_with(&client.shared_box(server_key), frame)
}

/// Client side: opens the ServerInfo frame with the box ClientInfo was sealed with.
pub fn read_server_info_with(
    shared: &SharedBox,
    frame: &RawFrame,
) -> Result<ServerInfo, HandshakeError> {
    if frame.ty != FrameType::SERVER_INFO {
        return Err(HandshakeError::UnexpectedFrame {
            expected: FrameType::SERVER_INFO,
            got: frame.ty,
        });
    }
    let len = frame.payload.len();
    if !(NONCE_LEN..=crate::consts::MAX_SERVER_INFO_LEN).contains(&len) {
        return Err(HandshakeError::BadLength { ty: frame.ty, len });
    }
    let json = shared.open(&frame.payload).ok_or(HandshakeError::BoxOpen)?;
    ServerInfo::from_json(&json)
}

#[cfg(test)]
mod tests {

    /// A client claiming the all-zero key (or any small-order point) with a box sealed under
    /// the all-zero secret is refused before the box is opened; so is a client claiming the
    /// server's own key.
    #[test]
    fn weak_client_keys_are_refused() {
        let server = NodeSecretKey::generate();
        let attacker = NodeSecretKey::generate();
        let claim = |key: NodePublicKey| {
            // With the all-zero key the shared secret is all zeros whatever the secrets, so any
            // secret seals a box that the server's box for that key opens. (For the other
            // small-order points it depends on both scalars, so it works only sometimes.)
            let sealed = attacker.seal_to(&key, &ClientInfo::new().to_json());
            if key.as_bytes() == &[0; 32] {
                assert!(
                    server.shared_box(&key).open(&sealed).is_some(),
                    "the attack is real"
                );
            }
            let mut payload = key.as_bytes().to_vec();
            payload.extend_from_slice(&sealed);
            let mut buf = BytesMut::new();
            write_frame_header(&mut buf, FrameType::CLIENT_INFO, payload.len());
            buf.extend_from_slice(&payload);
            let frame = FrameDecoder::server().decode(&mut buf).unwrap().unwrap();
            read_client_info(&server, &frame)
        };
        for key in [
            NodePublicKey::from_bytes([0; 32]),
            NodePublicKey::from_bytes({
                let mut k = [0; 32];
                k[0] = 1;
                k
            }),
            server.public_key(),
        ] {
            assert!(
                matches!(claim(key), Err(HandshakeError::WeakClientKey(_))),
                "{key:?} accepted"
            );
        }
    }
    use bytes::BytesMut;

    use super::*;
    use crate::frame::FrameDecoder;

    fn decode_one(decoder: &mut FrameDecoder, buf: &mut BytesMut) -> RawFrame {
        decoder.decode(buf).unwrap().unwrap()
    }

    #[test]
    fn full_handshake_in_memory() {
        let server = NodeSecretKey::from_bytes([3; 32]);
        let client = NodeSecretKey::from_bytes([4; 32]);

        let mut s2c = BytesMut::new();
        write_server_key(&mut s2c, &server.public_key());
        assert_eq!(s2c.len(), 45);
        assert_eq!(&s2c[..5], &[0x01, 0, 0, 0, 0x28]);

        let mut cdec = FrameDecoder::client();
        let learnt = read_server_key(&decode_one(&mut cdec, &mut s2c)).unwrap();
        assert_eq!(learnt, server.public_key());

        let mut c2s = BytesMut::new();
        write_client_info(&mut c2s, &client, &learnt, &ClientInfo::new());
        let mut sdec = FrameDecoder::server();
        let hello = read_client_info(&server, &decode_one(&mut sdec, &mut c2s)).unwrap();
        assert_eq!(hello.client_key, client.public_key());
        assert_eq!(hello.info, ClientInfo::new());

        write_server_info(&mut s2c, &server, &hello.client_key, &ServerInfo::new());
        let info = read_server_info(&client, &learnt, &decode_one(&mut cdec, &mut s2c)).unwrap();
        assert_eq!(info.version, 2);
    }

    #[test]
    fn client_info_json_matches_go() {
        assert_eq!(
            ClientInfo::new().to_json(),
            br#"{"version":2,"CanAckPings":true}"#
        );
        let mesh = ClientInfo {
            mesh_key: Some(MeshKey::from_bytes([0xab; 32])),
            ..ClientInfo::new()
        };
        let json = String::from_utf8(mesh.to_json()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"meshKey":"{}","version":2,"CanAckPings":true}}"#,
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn client_info_parses_leniently() {
        let info = ClientInfo::from_json(
            br#"{"VERSION":2,"canackpings":true,"Extra":[1],"isprober":true}"#,
        )
        .unwrap();
        assert_eq!(info.version, 2);
        assert!(info.can_ack_pings && info.is_prober);
        assert!(matches!(
            ClientInfo::from_json(br#"{"meshKey":""}"#),
            Err(HandshakeError::BadMeshKey)
        ));
        let padded = format!(r#"{{"meshKey":" {} "}}"#, "ab".repeat(32));
        assert!(matches!(
            ClientInfo::from_json(padded.as_bytes()),
            Err(HandshakeError::BadMeshKey)
        ));
        assert!(ClientInfo::from_json(b"[]").is_err());
        assert!(ClientInfo::from_json(b"{").is_err());
    }

    /// `AppName` follows Go's `ValidAppName`: up to 32 bytes of printable ASCII, anything else
    /// refuses the client with a reason; the other fields real clients send still parse.
    #[test]
    fn app_name_is_bounded_as_go_bounds_it() {
        let parse = |name: &str| {
            let json = serde_json::json!({"version": 2, "CanAckPings": true, "AppName": name});
            ClientInfo::from_json(json.to_string().as_bytes())
        };
        let longest = "~".repeat(MAX_APP_NAME_LEN);
        for ok in ["tailscaled", " a b ", longest.as_str()] {
            assert_eq!(parse(ok).unwrap().app_name.as_deref(), Some(ok));
        }
        // Empty is valid and means none, as Go omits it.
        assert_eq!(parse("").unwrap().app_name, None);
        assert!(valid_app_name(""));

        let huge = "A".repeat(200_000);
        let too_long = "a".repeat(MAX_APP_NAME_LEN + 1);
        for bad in [
            huge.as_str(),
            too_long.as_str(),
            "tab\there",
            "nl\n",
            "del\u{7f}",
            "caf\u{e9}",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                matches!(&err, HandshakeError::InvalidAppName { len, .. } if *len == bad.len()),
                "{bad:?}: {err:?}"
            );
        }
        // The error keeps only the start of a huge name, and says why.
        let msg = parse(&huge).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "invalid AppName {:?} (200000 bytes): must be at most 32 bytes of printable ASCII",
                "A".repeat(40)
            )
        );
        assert!(ClientInfo::from_json(br#"{"AppName":7}"#).is_err());

        // What Tailscale clients send, mesh key and unknown future fields included.
        let json = format!(
            r#"{{"meshKey":"{}","version":2,"CanAckPings":true,"IsProber":true,"AppName":"derpprobe","FutureField":{{"x":[1,2]}}}}"#,
            "ab".repeat(32)
        );
        let info = ClientInfo::from_json(json.as_bytes()).unwrap();
        assert_eq!(info.mesh_key, Some(MeshKey::from_bytes([0xab; 32])));
        assert!(info.can_ack_pings && info.is_prober);
        assert_eq!(info.app_name.as_deref(), Some("derpprobe"));
    }

    #[test]
    fn wrong_key_or_frame_is_rejected() {
        let server = NodeSecretKey::from_bytes([3; 32]);
        let other = NodeSecretKey::from_bytes([5; 32]);
        let client = NodeSecretKey::from_bytes([4; 32]);
        let mut c2s = BytesMut::new();
        write_client_info(&mut c2s, &client, &other.public_key(), &ClientInfo::new());
        let frame = FrameDecoder::server().decode(&mut c2s).unwrap().unwrap();
        assert!(matches!(
            read_client_info(&server, &frame),
            Err(HandshakeError::BoxOpen)
        ));
        let ping = RawFrame {
            ty: FrameType::PING,
            payload: bytes::Bytes::from_static(&[0; 8]),
        };
        assert!(matches!(
            read_client_info(&server, &ping),
            Err(HandshakeError::UnexpectedFrame { .. })
        ));
        let short = RawFrame {
            ty: FrameType::CLIENT_INFO,
            payload: bytes::Bytes::from_static(&[0; 40]),
        };
        assert!(matches!(
            read_client_info(&server, &short),
            Err(HandshakeError::BadLength { .. })
        ));
    }
}
