//! A hostile-input battery against our `derper` binary run as a child process.
//!
//! Every case is one line of a table: what to send and the reaction expected. While the cases
//! run (several at once), a canary pair on each relay sends 200 sequence-numbered packets a
//! second. A case passes only if
//! (a) the relay reacts as the table says within a bound (an HTTP status, a close, or ignoring
//!     the input while still answering Ping on that connection),
//! (b) a fresh client then connects and completes a Ping round trip, and
//! (c) both canaries lost nothing and saw nothing out of order.
//! After all cases, each relay's open descriptors (`/proc/<pid>/fd`) and its connection gauges
//! are back to what they were before the first case.
//!
//! Two relays: `plain` (HTTP, embedded STUN, a mesh key, and `--mesh-with` two fake mesh peers
//! run by this test) and `tls` (manual certificate for the DNS name `localhost`, so SNI is
//! checked).
//!
//! Three lists, all run by one test: [`cases`], [`strict_handshake_cases`] (the strict parsers
//! this battery's first run asked for: each failed before its fix) and
//! [`websocket_close_cases`]. Adding a case is one `case(...)` line.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::hostile::{
    Canary, DerperProcess, RawDerp, RawWs, frame, frame_with, header, insecure_tls, mesh_info,
    metric, open, rand8, repeat, ws_binary, ws_frame, ws_head, ws_header,
};
use derp_proto::frame::PeerGoneReason;
use derp_proto::handshake::{self, ClientInfo, ServerInfo};
use derp_proto::io::{Client, FramedRead};
use derp_proto::{
    ClientToServer, FrameDecoder, FrameType, MeshKey, NodePublicKey, NodeSecretKey, ServerToClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long a relay may take to react to one case.
const BOUND: Duration = Duration::from_secs(2);

/// How long "still open" must last for [`Expect::Held`].
const HELD: Duration = Duration::from_secs(1);

/// How many cases run at once.
const CONCURRENCY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_battery() {
    let Some(env) = Env::start().await else {
        return;
    };
    let mut all = cases();
    all.extend(strict_handshake_cases());
    all.extend(websocket_close_cases());
    run_suite(env, all).await;
}

/// Which relay a case talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum On {
    Plain,
    Tls,
}

/// Who to log in as before [`Act::After`] sends its bytes.
#[derive(Clone, Copy, Debug)]
enum As {
    Regular,
    Mesh,
}

/// The key a hand-made ClientInfo claims.
#[derive(Clone, Copy, Debug)]
enum Key {
    /// A fresh key, the box sealed properly to the server.
    Fresh,
    /// A fresh key, the box sealed to some other server's key.
    SealedToOther,
    /// The all-zero key (the box is noise).
    Zero,
    /// A point of order 8 (the box is noise).
    LowOrder,
    /// The server's own key, the box sealed with the server's own secret (so it opens).
    ServersOwn,
}

type CaseFn = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What a case sends.
enum Act {
    /// Raw bytes on a new TCP connection (to the TLS relay: not wrapped in TLS).
    Raw(Vec<u8>),
    /// Raw bytes, then our write side shut (FIN).
    RawFin(Vec<u8>),
    /// Raw bytes, then an abortive close (RST).
    RawReset(Vec<u8>),
    /// These bytes, then one more byte every interval.
    Trickle(Vec<u8>, Duration),
    /// TLS to the TLS relay with this SNI and ALPN list, then these bytes inside it.
    InTls(&'static str, &'static [&'static [u8]], Vec<u8>),
    /// A ClientHello for `localhost` (never completed) followed by these bytes.
    Hello(Vec<u8>),
    /// The upgrade, ServerKey read, then these bytes in place of ClientInfo.
    Handshake(Vec<u8>),
    /// The upgrade, then a ClientInfo claiming this key with this JSON inside.
    Info(Key, Vec<u8>),
    /// Logged in, then these bytes.
    After(As, Vec<u8>),
    /// This WebSocket upgrade request.
    WsHead(String),
    /// A good WebSocket upgrade (and a DERP login inside if `true`), then these raw bytes.
    WsAfter(bool, Vec<u8>),
    /// One datagram to the embedded STUN server.
    Stun(Vec<u8>),
    /// Anything else: the function checks the reaction itself.
    Custom(CaseFn),
}

/// The reaction a case expects, within [`BOUND`] unless it says otherwise.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// An HTTP response with this status.
    Status(u16),
    /// The relay closes the connection (whatever it wrote first).
    Close,
    /// Not upgraded: the connection ends, at most after a 4xx.
    Rejected,
    /// The input is ignored: the same connection still answers a Ping.
    Alive,
    /// Nothing happens for [`HELD`]: the connection stays open (a slow peer, within its
    /// deadline).
    Held,
    /// Closed after at least the first and at most the second duration (a deadline).
    ClosedBetween(Duration, Duration),
    /// A WebSocket close frame with this code, then the end of the connection.
    WsClose(u16),
    /// No STUN answer; a valid request right after is answered.
    StunSilent,
    /// A STUN answer.
    StunAnswer,
    /// We hung up ourselves: nothing to observe on that connection.
    Nothing,
    /// Checked by the case's function (the text says what).
    Checked(&'static str),
}

impl Expect {
    /// The expected reaction, for the log.
    fn describe(&self) -> String {
        match self {
            Checked(what) => (*what).to_string(),
            other => format!("{other:?}"),
        }
    }
}

struct Case {
    name: &'static str,
    on: On,
    act: Act,
    expect: Expect,
}

fn case(name: &'static str, on: On, act: Act, expect: Expect) -> Case {
    Case {
        name,
        on,
        act,
        expect,
    }
}

use Act::*;
use Expect::*;
use On::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The table. Adding a case is one line.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let http = |s: &str| s.as_bytes().to_vec();
    let hello_fin = || tls_client_hello("localhost", &[b"http/1.1"]);
    vec![
        // ---- deadlines first: they take ~10 s and run beside everything else ----
        case("slowloris_trickled_head_cut_at_head_timeout", Plain, Trickle(http("GET / HTTP/1.1\r\nX-A: "), Duration::from_millis(300)), ClosedBetween(secs(9), secs(13))),
        case("silent_after_server_key_cut_at_handshake_deadline", Plain, Handshake(vec![]), ClosedBetween(secs(9), secs(13))),
        case("tls_truncated_record_cut_at_handshake_timeout", Tls, Raw(vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]), ClosedBetween(secs(9), secs(13))),
        // ---- raw TCP on the plain port ----
        case("raw_binary_garbage", Plain, Raw(b"\x00\x01\x02\x03\xff\xfe\xfdgarbage".to_vec()), Status(400)),
        case("raw_nul_bytes", Plain, Raw(vec![0; 64]), Status(400)),
        case("raw_nul_in_method", Plain, Raw(http("GE\0T / HTTP/1.1\r\nHost: x\r\n\r\n")), Status(400)),
        case("raw_nul_in_path", Plain, Raw(http("GET /de\0rp HTTP/1.1\r\nHost: x\r\n\r\n")), Status(400)),
        case("raw_nul_in_header_value", Plain, Raw(http("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n")), Status(400)),
        case("raw_64k_noise", Plain, Raw(noise(64 << 10)), Status(400)),
        case("raw_derp_frame_without_http", Plain, Raw(frame(0x02, 60, 0)), Status(400)),
        case("raw_ssh_banner", Plain, Raw(http("SSH-2.0-OpenSSH_9.6\r\n")), Status(400)),
        case("raw_proxy_protocol_v1", Plain, Raw(http("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n")), Status(400)),
        case("raw_proxy_protocol_v2", Plain, Raw(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c".to_vec()), Status(400)),
        case("raw_tls_client_hello_on_plain_port", Plain, Raw(hello_fin()), Status(400)),
        case("raw_http2_preface", Plain, Raw(http("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")), Status(400)),
        case("raw_http09_request", Plain, Raw(http("GET /\r\n\r\n")), Status(400)),
        case("raw_half_open_without_bytes", Plain, RawFin(vec![]), Close),
        case("raw_half_open_mid_head", Plain, RawFin(http("GET /derp HTTP/1.1\r\nHo")), Close),
        case("raw_reset_mid_head", Plain, RawReset(http("GET /derp HTTP/1.1\r\nHost: x\r\n")), Nothing),
        case("raw_reset_mid_client_info", Plain, RawReset([common::hostile::UPGRADE, &header(0x02, 200)[..], &[7; 50]].concat()), Nothing),
        case("slowloris_partial_head_is_held", Plain, Raw(http("GET /derp HTTP/1.1\r\nHost:")), Held),
        case("huge_head_without_end", Plain, Raw([http("GET / HTTP/1.1\r\nX-Big: "), vec![b'a'; 20_000]].concat()), Status(431)),
        case("huge_head_complete", Plain, Raw([http("GET / HTTP/1.1\r\nHost: x\r\nX-Big: "), vec![b'a'; 20_000], http("\r\n\r\n")].concat()), Status(431)),
        case("head_with_200_headers", Plain, Raw([http("GET / HTTP/1.1\r\nHost: x\r\n"), repeat(b"X-A: b\r\n", 200), http("\r\n")].concat()), Status(431)),
        case("head_15k_header_value_under_limit", Plain, Raw([http("GET /derp/probe HTTP/1.1\r\nHost: x\r\nX-Big: "), vec![b'a'; 15_000], http("\r\n\r\n")].concat()), Status(200)),
        case("head_of_crlf_only", Plain, Raw(repeat(b"\r\n", 10_000)), Status(431)),
        // ---- HTTP on the plain port ----
        case("http_unknown_method_on_probe", Plain, Raw(http("BREW /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n")), Status(405)),
        case("http_post_on_latency_check", Plain, Raw(http("POST /derp/latency-check HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")), Status(405)),
        case("http_method_with_bad_character", Plain, Raw(http("G@T / HTTP/1.1\r\nHost: x\r\n\r\n")), Status(400)),
        case("http_8k_method", Plain, Raw([vec![b'A'; 8000], http(" /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n")].concat()), Status(405)),
        case("http_path_traversal", Plain, Raw(http("GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")), Status(404)),
        case("http_relative_path", Plain, Raw(http("GET ../derp HTTP/1.1\r\nHost: x\r\n\r\n")), Status(400)),
        case("http_percent_encoded_nul_path", Plain, Raw(http("GET /derp%00 HTTP/1.1\r\nHost: x\r\n\r\n")), Status(404)),
        case("http_absolute_uri_upgrade_is_not_derp", Plain, Raw(http("GET http://evil.example/derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")), Status(426)),
        case("http_derp_without_upgrade", Plain, Raw(http("GET /derp HTTP/1.1\r\nHost: x\r\n\r\n")), Status(426)),
        case("http_derp_upgrade_h2c", Plain, Raw(http("GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")), Status(426)),
        case("http_upgrade_on_wrong_path", Plain, Raw(http("GET /derpx HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")), Status(404)),
        case("http_header_without_colon", Plain, Raw(http("GET / HTTP/1.1\r\nHost x\r\n\r\n")), Status(400)),
        case("http_space_in_header_name", Plain, Raw(http("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")), Status(400)),
        case("http_obsolete_line_folding", Plain, Raw(http("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n")), Status(400)),
        case("http_negative_content_length", Plain, Raw(http("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")), Status(400)),
        case("http_conflicting_content_lengths", Plain, Raw(http("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")), Status(400)),
        case("http_version_3", Plain, Raw(http("GET / HTTP/3.0\r\nHost: x\r\n\r\n")), Status(400)),
        case("http_12k_captive_portal_challenge", Plain, Raw([http("GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: "), vec![b'c'; 12_000], http("\r\n\r\n")].concat()), Status(204)),
        case("http_pipelined_probes", Plain, Raw(repeat(b"GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n", 50)), Status(200)),
        // ---- TLS listener (DNS hostname `localhost`: SNI must match) ----
        case("tls_garbage_instead_of_client_hello", Tls, Raw(noise(512)), Close),
        case("tls_plain_http_on_tls_port", Tls, Raw(http("GET /derp/probe HTTP/1.1\r\nHost: localhost\r\n\r\n")), Close),
        case("tls_truncated_record_then_fin", Tls, RawFin(vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]), Close),
        case("tls_oversized_record", Tls, Raw([&[0x16, 0x03, 0x01, 0xff, 0xff][..], &noise(1024)[..]].concat()), Close),
        case("tls_alert_first", Tls, Raw(vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]), Close),
        case("tls_garbage_after_client_hello", Tls, Hello(noise(256)), Close),
        case("tls_second_client_hello", Tls, Hello(hello_fin()), Close),
        case("tls_wrong_sni", Tls, InTls("wrong.example", &[b"http/1.1"], vec![]), Close),
        case("tls_no_sni", Tls, InTls("127.0.0.1", &[b"http/1.1"], vec![]), Close),
        case("tls_alpn_h2_only", Tls, InTls("localhost", &[b"h2"], vec![]), Close),
        case("tls_sni_in_upper_case_is_accepted", Tls, InTls("LOCALHOST", &[b"http/1.1"], http("GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n")), Status(200)),
        case("tls_then_noise", Tls, InTls("localhost", &[b"http/1.1"], noise(300)), Status(400)),
        case("tls_then_http2_preface", Tls, InTls("localhost", &[b"http/1.1"], http("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")), Status(400)),
        case("tls_then_bad_client_info", Tls, Handshake(frame(0x02, 10, 0)), Close),
        case("tls_login_then_unknown_frame", Tls, After(As::Regular, frame(0x7f, 100, 0)), Alive),
        case("tls_login_then_1mib_send_packet_header", Tls, After(As::Regular, header(0x04, 1 << 20)), Close),
        case("tls_login_then_ping_flood", Tls, After(As::Regular, repeat(&frame(0x12, 8, 1), 20_000)), Alive),
        // ---- WebSocket ----
        case("ws_missing_connection_header", Plain, WsHead(ws_head("").replace("Connection: Upgrade\r\n", "")), Rejected),
        case("ws_post_method", Plain, WsHead(ws_head("").replacen("GET", "POST", 1)), Rejected),
        case("ws_text_message_before_login", Plain, WsAfter(false, ws_frame(true, 0, 0x1, b"hello", true)), Close),
        case("ws_text_message_after_login", Plain, WsAfter(true, ws_frame(true, 0, 0x1, b"hello", true)), Close),
        case("ws_2mib_frame_header", Plain, WsAfter(true, ws_header(0x2, 2 << 20)), Close),
        case("ws_1_5mib_message_in_fragments", Plain, WsAfter(true, [ws_frame(false, 0, 0x2, &vec![0; 512 << 10], true), ws_frame(false, 0, 0x0, &vec![0; 512 << 10], true), ws_frame(true, 0, 0x0, &vec![0; 512 << 10], true)].concat()), Close),
        case("ws_unmasked_client_frame", Plain, WsAfter(true, ws_frame(true, 0, 0x2, &frame(0x12, 8, 0), false)), Close),
        case("ws_reserved_bits", Plain, WsAfter(true, ws_frame(true, 4, 0x2, &frame(0x12, 8, 0), true)), Close),
        case("ws_unknown_opcode", Plain, WsAfter(true, ws_frame(true, 0, 0x3, b"x", true)), Close),
        case("ws_control_frame_over_125_bytes", Plain, WsAfter(true, ws_frame(true, 0, 0x9, &[0; 200], true)), Close),
        case("ws_fragmented_ping", Plain, WsAfter(true, ws_frame(false, 0, 0x9, b"p", true)), Close),
        case("ws_continuation_without_start", Plain, WsAfter(true, ws_frame(true, 0, 0x0, b"x", true)), Close),
        case("ws_client_close", Plain, WsAfter(true, ws_frame(true, 0, 0x8, &1000u16.to_be_bytes(), true)), Close),
        case("ws_derp_frame_split_over_messages", Plain, WsAfter(true, frame(0x12, 8, 3).chunks(3).flat_map(ws_binary).collect()), Alive),
        case("ws_ping_flood", Plain, WsAfter(true, repeat(&ws_frame(true, 0, 0x9, b"ping", true), 2000)), Alive),
        case("ws_fragmented_client_info", Plain, Custom(ws_fragmented_client_info), Checked("logs in; answers Ping")),
        // ---- the DERP handshake ----
        case("hs_send_packet_as_first_frame", Plain, Handshake(frame(0x04, 32, 0)), Close),
        case("hs_ping_as_first_frame", Plain, Handshake(frame(0x12, 8, 0)), Close),
        case("hs_empty_client_info", Plain, Handshake(frame(0x02, 0, 0)), Close),
        case("hs_10_byte_client_info", Plain, Handshake(frame(0x02, 10, 1)), Close),
        case("hs_client_info_without_box", Plain, Handshake(frame(0x02, 56, 1)), Close),
        case("hs_client_info_header_over_256k", Plain, Handshake(header(0x02, (256 << 10) + 1)), Close),
        case("hs_client_info_box_is_noise", Plain, Handshake([header(0x02, 132), NodeSecretKey::generate().public_key().as_bytes().to_vec(), noise(100)].concat()), Close),
        case("hs_box_sealed_to_another_server", Plain, Info(Key::SealedToOther, br#"{"version":2}"#.to_vec()), Close),
        case("hs_zero_key", Plain, Info(Key::Zero, br#"{"version":2}"#.to_vec()), Close),
        case("hs_low_order_key", Plain, Info(Key::LowOrder, br#"{"version":2}"#.to_vec()), Close),
        case("hs_servers_own_key", Plain, Info(Key::ServersOwn, br#"{"version":2}"#.to_vec()), Close),
        case("hs_json_not_json", Plain, Info(Key::Fresh, b"{not json".to_vec()), Close),
        case("hs_json_array", Plain, Info(Key::Fresh, b"[]".to_vec()), Close),
        case("hs_json_empty", Plain, Info(Key::Fresh, vec![]), Close),
        case("hs_json_nested_100k_deep", Plain, Info(Key::Fresh, vec![b'['; 100_000]), Close),
        case("hs_json_mesh_key_number", Plain, Info(Key::Fresh, br#"{"meshKey":5}"#.to_vec()), Close),
        case("hs_json_mesh_key_short", Plain, Info(Key::Fresh, br#"{"meshKey":"abcd"}"#.to_vec()), Close),
        case("hs_json_version_string", Plain, Info(Key::Fresh, br#"{"version":"2"}"#.to_vec()), Close),
        case("hs_json_flag_string", Plain, Info(Key::Fresh, br#"{"CanAckPings":"yes"}"#.to_vec()), Close),
        case("hs_json_app_name_number", Plain, Info(Key::Fresh, br#"{"AppName":7}"#.to_vec()), Close),
        case("hs_json_unknown_fields_ignored", Plain, Info(Key::Fresh, br#"{"version":2,"zzz":[1,2,{"a":null}],"CANACKPINGS":true}"#.to_vec()), Alive),
        case("hs_json_null_fields", Plain, Info(Key::Fresh, br#"{"meshKey":null,"version":null,"AppName":null}"#.to_vec()), Alive),
        case("hs_fast_start_with_garbage_client_info", Plain, Raw([http("GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Fast-Start: 1\r\n\r\n"), frame(0x02, 10, 0)].concat()), Close),
        case("hs_client_info_byte_by_byte", Plain, Custom(client_info_byte_by_byte), Checked("logs in; answers Ping")),
        // ---- frames after the handshake ----
        case("send_packet_31_bytes", Plain, After(As::Regular, frame(0x04, 31, 0)), Close),
        case("send_packet_empty", Plain, After(As::Regular, frame(0x04, 0, 0)), Close),
        case("send_packet_key_only", Plain, After(As::Regular, frame(0x04, 32, 0x33)), Alive),
        case("send_packet_64k_to_unknown", Plain, After(As::Regular, frame(0x04, 32 + 65_536, 0x33)), Alive),
        case("send_packet_64k_plus_1", Plain, After(As::Regular, frame(0x04, 32 + 65_537, 0x33)), Close),
        case("send_packet_1mib_header", Plain, After(As::Regular, header(0x04, 1 << 20)), Close),
        case("send_packet_u32_max_header", Plain, After(As::Regular, header(0x04, u32::MAX)), Close),
        case("send_packets_to_5000_unknown_keys", Plain, After(As::Regular, (0..5000u32).flat_map(|i| send_packet(&key_from(i), b"x")).collect()), Alive),
        case("disco_flood_to_unknown_key", Plain, After(As::Regular, repeat(&send_packet(&key_from(1), &disco_packet()), 2000)), Alive),
        case("send_to_self_is_echoed", Plain, Custom(send_to_self), Checked("the packet comes back from our own key")),
        case("send_to_unknown_is_counted", Plain, Custom(send_to_unknown_counted), Checked("unknown_dest counted; answers Ping")),
        case("forward_packet_without_mesh_key", Plain, After(As::Regular, frame(0x0a, 64 + 10, 0x22)), Close),
        case("forward_packet_10_bytes_without_mesh_key", Plain, After(As::Regular, frame(0x0a, 10, 0x22)), Close),
        case("watch_conns_without_mesh_key", Plain, After(As::Regular, frame(0x10, 0, 0)), Close),
        case("watch_conns_with_payload", Plain, After(As::Regular, frame(0x10, 1, 0)), Close),
        case("close_peer_without_mesh_key", Plain, After(As::Regular, frame(0x11, 32, 0x44)), Close),
        case("close_peer_31_bytes", Plain, After(As::Regular, frame(0x11, 31, 0x44)), Close),
        case("note_preferred_empty", Plain, After(As::Regular, frame(0x07, 0, 0)), Close),
        case("note_preferred_2_bytes", Plain, After(As::Regular, frame(0x07, 2, 1)), Close),
        case("note_preferred_0xff", Plain, After(As::Regular, frame(0x07, 1, 0xff)), Alive),
        case("note_preferred_flapping_10k", Plain, After(As::Regular, repeat(&[frame(0x07, 1, 1), frame(0x07, 1, 0)].concat(), 10_000)), Alive),
        case("ping_empty", Plain, After(As::Regular, frame(0x12, 0, 0)), Close),
        case("ping_7_bytes", Plain, After(As::Regular, frame(0x12, 7, 0)), Close),
        case("ping_9_bytes", Plain, After(As::Regular, frame(0x12, 9, 0)), Alive),
        case("ping_1000_bytes", Plain, After(As::Regular, frame(0x12, 1000, 0)), Alive),
        case("ping_1001_bytes", Plain, After(As::Regular, frame(0x12, 1001, 0)), Close),
        case("ping_flood_100k", Plain, After(As::Regular, repeat(&frame(0x12, 8, 9), 100_000)), Alive),
        case("pong_7_bytes", Plain, After(As::Regular, frame(0x13, 7, 0)), Close),
        case("pong_unsolicited", Plain, After(As::Regular, frame(0x13, 8, 0)), Alive),
        case("pong_64k", Plain, After(As::Regular, frame(0x13, 65_536, 0)), Alive),
        case("client_info_again_after_login", Plain, After(As::Regular, frame(0x02, 100, 0)), Alive),
        case("server_only_frame_types_from_client", Plain, After(As::Regular, [0x01, 0x03, 0x05, 0x06, 0x08, 0x09, 0x14, 0x15].iter().flat_map(|t| frame(*t, 40, 0)).collect()), Alive),
        case("unknown_type_small", Plain, After(As::Regular, frame(0x7f, 10, 0)), Alive),
        case("unknown_type_0xff_empty", Plain, After(As::Regular, frame(0xff, 0, 0)), Alive),
        case("unknown_type_64k_plus_32", Plain, After(As::Regular, frame(0x42, 65_536 + 32, 0)), Alive),
        case("unknown_type_flood_100k", Plain, After(As::Regular, repeat(&frame(0x55, 0, 0), 100_000)), Alive),
        case("frame_header_then_stall", Plain, After(As::Regular, [header(0x04, 1000), vec![0; 100]].concat()), Held),
        case("frame_trickled_byte_by_byte", Plain, Custom(frame_byte_by_byte), Checked("the trickled Ping is answered")),
        case("truncated_frame_then_fin", Plain, Custom(truncated_frame_then_fin), Checked("closed")),
        case("client_that_stops_reading", Plain, Custom(client_stops_reading), Checked("cut at the 2 s write deadline")),
        // ---- STUN (the embedded server) ----
        case("stun_empty_datagram", Plain, Stun(vec![]), StunSilent),
        case("stun_one_byte", Plain, Stun(vec![0]), StunSilent),
        case("stun_19_bytes", Plain, Stun(stun_request()[..19].to_vec()), StunSilent),
        case("stun_wrong_magic_not_a_request", Plain, Stun([&[0x01, 0x11, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef][..], &[1; 12]].concat()), StunSilent),
        case("stun_wrong_magic_classic_request_answered", Plain, Stun([&[0x00, 0x01, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef][..], &[1; 12]].concat()), StunAnswer),
        case("stun_length_beyond_datagram", Plain, Stun(stun_with_len(&stun_request()[..20], 100)), StunSilent),
        case("stun_length_not_multiple_of_4", Plain, Stun([stun_with_len(&stun_request()[..20], 3), vec![0; 3]].concat()), StunSilent),
        case("stun_truncated_attribute", Plain, Stun([stun_with_len(&stun_request()[..20], 8), vec![0x80, 0x22, 0x00, 0x64, 1, 2, 3, 4]].concat()), StunSilent),
        case("stun_binding_response_type", Plain, Stun([&[0x01, 0x01][..], &stun_request()[2..]].concat()), StunSilent),
        case("stun_top_bits_set", Plain, Stun([&[0xc0, 0x01][..], &stun_request()[2..]].concat()), StunSilent),
        case("stun_bad_fingerprint", Plain, Stun({ let mut r = stun_request().to_vec(); r[39] ^= 0xff; r }), StunSilent),
        case("stun_65507_bytes_of_noise", Plain, Stun(noise(65_507)), StunSilent),
        case("stun_huge_request_header_on_noise", Plain, Stun([&stun_with_len(&stun_request()[..20], 65_000)[..], &noise(65_000)[..]].concat()), StunSilent),
        case("stun_request_flood", Plain, Custom(stun_flood), Checked("a request after 2000 is answered")),
        // ---- mesh ----
        case("mesh_wrong_key", Plain, Info(Key::Fresh, format!(r#"{{"meshKey":"{}"}}"#, "cd".repeat(32)).into_bytes()), Close),
        case("mesh_key_not_hex", Plain, Info(Key::Fresh, format!(r#"{{"meshKey":"{}"}}"#, "zz".repeat(32)).into_bytes()), Close),
        case("mesh_watch_conns_twice", Plain, After(As::Mesh, repeat(&frame(0x10, 0, 0), 2)), Alive),
        case("mesh_watch_conns_flood", Plain, After(As::Mesh, repeat(&frame(0x10, 0, 0), 10_000)), Alive),
        case("mesh_peer_floods_presence_frames_inbound", Plain, After(As::Mesh, (0..20_000u32).flat_map(|i| [peer_present(&key_from(i)), frame_with(0x08, &[key_from(i).as_bytes().as_slice(), &[0]].concat())].concat()).collect()), Alive),
        case("mesh_forward_packet_63_bytes", Plain, After(As::Mesh, frame(0x0a, 63, 0)), Close),
        case("mesh_forward_packet_64k_plus_1", Plain, After(As::Mesh, header(0x0a, 64 + 65_537)), Close),
        case("mesh_forward_packet_64k_to_unknown", Plain, After(As::Mesh, forward_packet(&key_from(7), &key_from(8), &vec![0; 65_536])), Alive),
        case("mesh_close_peer_for_unknown_key", Plain, After(As::Mesh, frame(0x11, 32, 0x44)), Alive),
        case("mesh_close_peer_for_itself", Plain, Custom(mesh_close_peer_self), Checked("the mesh connection itself is closed")),
        case("mesh_forward_with_forged_source", Plain, Custom(forged_source), Checked("dropped, forged_src counted; a genuine one gets through")),
        case("mesh_forward_to_unknown_keys", Plain, Custom(forward_to_unknown), Checked("unknown_dest_on_fwd counted; answers Ping")),
        case("mesh_watcher_that_stops_reading", Plain, Custom(mesh_watcher_stops_reading), Checked("cut at the 2 s mesh write deadline")),
        case("mesh_link_peer_floods_presence", Plain, Custom(link_peer_floods_presence), Checked("20 000 routes appear and go; relay serves")),
        case("mesh_link_peer_stops_reading", Plain, Custom(link_peer_stops_reading), Checked("link queue drops are counted; link cut and redialled")),
    ]
}

/// Strict parsers (issue 13): unknown-frame bound, AppName bound, RFC 6455 handshake and close
/// codes, Host required.
#[rustfmt::skip]
fn strict_handshake_cases() -> Vec<Case> {
    vec![
        case("unknown_type_longer_than_64k_plus_32_closes", Plain, After(As::Regular, [header(0x42, 65_536 + 33), vec![0; 65_536 + 33]].concat()), Close),
        case("client_info_with_200k_app_name_refused", Plain, Info(Key::Fresh, format!(r#"{{"version":2,"AppName":"{}"}}"#, "a".repeat(200_000)).into_bytes()), Close),
        case("ws_bad_sec_websocket_key", Plain, WsHead(ws_head("").replace("dGhlIHNhbXBsZSBub25jZQ==", "not-a-key")), Status(400)),
        case("ws_missing_sec_websocket_key", Plain, WsHead(ws_head("").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")), Status(400)),
        case("ws_version_not_13", Plain, WsHead(ws_head("").replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 12")), Status(400)),
        case("ws_text_message_close_code_1003", Plain, WsAfter(true, ws_frame(true, 0, 0x1, b"hello", true)), WsClose(1003)),
        case("ws_empty_message_flood_close_code_1008", Plain, WsAfter(true, repeat(&ws_binary(&[]), 100_000)), WsClose(1008)),
        case("upgrade_without_host", Plain, Raw(b"GET /derp HTTP/1.1\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n".to_vec()), Status(400)),
    ]
}

/// A client's Close is answered with a Close (RFC 6455 §5.5.1).
#[rustfmt::skip]
fn websocket_close_cases() -> Vec<Case> {
    vec![
        case("ws_client_close_is_answered_with_close", Plain, WsAfter(true, ws_frame(true, 0, 0x8, &1000u16.to_be_bytes(), true)), WsClose(1000)),
    ]
}

// ---------------------------------------------------------------------------------------------
// The environment: two relays, their canaries, the fake mesh peers.

struct Env {
    plain: DerperProcess,
    tls: DerperProcess,
    stun: SocketAddr,
    mesh_key: MeshKey,
    canaries: Vec<Canary>,
    flooder: FakePeer,
    staller: FakePeer,
    _dir: tempfile::TempDir,
    _ca: common::mesh::TestCa,
}

impl Env {
    async fn start() -> Option<Arc<Self>> {
        let bin = common::our_derper()?;
        let dir = tempfile::tempdir().unwrap();
        let mesh_key: MeshKey = hex::encode(rand8().repeat(4)).parse().unwrap();
        let psk = dir.path().join("mesh.key");
        std::fs::write(&psk, mesh_key.to_hex()).unwrap();
        let flooder = FakePeer::start(&mesh_key).await;
        let staller = FakePeer::start(&mesh_key).await;
        let stun_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stun: SocketAddr = ([127, 0, 0, 1], stun_port).into();
        // The mesh links' write deadline comes from the file; 2 s so a stalled peer is cut
        // within the case's bound.
        let config = dir.path().join("derper.toml");
        std::fs::write(&config, "[mesh]\nwrite_timeout = \"2s\"\n").unwrap();
        let ports = common::mesh::free_ports(2);
        let (plain_port, tls_port) = (ports[0], ports[1]);
        let args: Vec<String> = [
            "--stun-addr",
            &stun.to_string(),
            "--mesh-psk-file",
            psk.to_str().unwrap(),
            "--mesh-with",
            &format!("{},{}", flooder.url(), staller.url()),
            "--mesh-allow-plain",
            "--mesh-write-timeout",
            "2s",
            "--config-file",
            config.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let plain = DerperProcess::start(
            &bin,
            dir.path(),
            "plain",
            plain_port,
            format!("http://127.0.0.1:{plain_port}/derp"),
            derp_proto::io::tls::ServerVerify::Insecure,
            &args,
        )
        .await;
        let ca = common::mesh::TestCa::new();
        let certs = dir.path().join("certs");
        ca.install_leaf(&certs);
        let args: Vec<String> = [
            "--certmode",
            "manual",
            "--hostname",
            common::mesh::HOSTNAME,
            "--certdir",
            certs.to_str().unwrap(),
            "--http-port",
            "-1",
            "--stun=false",
        ]
        .map(String::from)
        .to_vec();
        let tls = DerperProcess::start(
            &bin,
            dir.path(),
            "tls",
            tls_port,
            common::mesh::node_url(tls_port),
            ca.verify(),
            &args,
        )
        .await;
        let canaries = vec![
            Canary::start("canary(plain)", plain.options()),
            Canary::start("canary(tls)", tls.options()),
        ];
        // Both mesh links up before anything is measured.
        assert!(
            common::eventually(|| async {
                flooder.connected()
                    && staller.connected()
                    && metric(&plain.scrape().await, "derp_mesh_links{state=\"up\"}") == 2.0
            })
            .await,
            "mesh links to the fake peers did not come up:\n{}",
            plain.log()
        );
        Some(Arc::new(Self {
            plain,
            tls,
            stun,
            mesh_key,
            canaries,
            flooder,
            staller,
            _dir: dir,
            _ca: ca,
        }))
    }

    fn relay(&self, on: On) -> &DerperProcess {
        match on {
            Plain => &self.plain,
            Tls => &self.tls,
        }
    }

    /// A stream to `on`'s main port: TLS with the right SNI for the TLS relay.
    async fn stream(&self, on: On) -> std::io::Result<derp_proto::io::BoxStream> {
        match on {
            Plain => open(self.plain.addr, None).await,
            Tls => open(self.tls.addr, Some(common::mesh::HOSTNAME)).await,
        }
    }

    async fn login(&self, on: On, who: As) -> Result<RawDerp, String> {
        let info = match who {
            As::Regular => ClientInfo::new(),
            As::Mesh => mesh_info(&self.mesh_key),
        };
        let io = self.stream(on).await.map_err(|e| format!("connect: {e}"))?;
        RawDerp::login(io, &info)
            .await
            .map_err(|e| format!("login: {e}"))
    }
}

/// Gauges that must be back where they started after the suite.
const GAUGES: &[&str] = &[
    "derp_current_connections",
    "derp_current_home_connections",
    "derp_current_dup_client_keys",
    "derp_clients_remote",
    "derp_mesh_links{state=\"up\"}",
];

async fn run_suite(env: Arc<Env>, cases: Vec<Case>) {
    let started = Instant::now();
    let mut before = Vec::new();
    for relay in [&env.plain, &env.tls] {
        let text = relay.scrape().await;
        let gauges: Vec<f64> = GAUGES.iter().map(|g| metric(&text, g)).collect();
        before.push((relay.fds(), gauges));
    }
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        assert!(seen.insert(*n), "case name {n} is used twice");
    }
    let count = cases.len();
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for c in cases {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let env = env.clone();
        let name = c.name;
        let expect = c.expect.describe();
        tasks.push((
            (name, expect),
            tokio::spawn(async move {
                let _permit = permit;
                let t = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(30), run_case(&env, c))
                    .await
                    .unwrap_or_else(|_| Err("case did not finish within 30 s".into()));
                (r, t.elapsed())
            }),
        ));
    }
    let mut failures = Vec::new();
    for ((name, expect), task) in tasks {
        match task.await {
            Ok((Ok(()), took)) => eprintln!("ok    {name}: {expect} ({took:.1?})"),
            Ok((Err(e), took)) => {
                eprintln!("FAIL  {name} ({took:.1?}): {e}");
                failures.push(format!("{name}: {e}"));
            }
            Err(e) => {
                eprintln!("FAIL  {name}: panicked: {e}");
                failures.push(format!("{name}: panicked: {e}"));
            }
        }
    }
    // Descriptors and gauges back to baseline (the canaries' connections are in both).
    for (relay, (fds, gauges)) in [&env.plain, &env.tls].into_iter().zip(&before) {
        let settled = common::eventually(|| async {
            let text = relay.scrape().await;
            relay.fds().len() == fds.len()
                && GAUGES
                    .iter()
                    .zip(gauges)
                    .all(|(g, v)| metric(&text, g) == *v)
        })
        .await;
        if !settled {
            let text = relay.scrape().await;
            let now: Vec<f64> = GAUGES.iter().map(|g| metric(&text, g)).collect();
            let now_fds = relay.fds();
            let extra: Vec<&String> = now_fds.iter().filter(|f| !fds.contains(f)).collect();
            failures.push(format!(
                "{}: not back to baseline: fds {} → {} (new: {extra:?}); gauges {GAUGES:?} {gauges:?} → {now:?}",
                relay.url,
                fds.len(),
                now_fds.len()
            ));
        }
    }
    for c in &env.canaries {
        if let Err(e) = c.caught_up(BOUND).await {
            failures.push(format!("canary at the end: {e}"));
        }
    }
    eprintln!(
        "{count} cases in {:.1?}; canaries delivered {} packets",
        started.elapsed(),
        env.canaries.iter().map(Canary::received).sum::<u64>()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}\n--- plain relay log ---\n{}\n--- tls relay log ---\n{}",
        failures.len(),
        failures.join("\n"),
        tail(&env.plain.log()),
        tail(&env.tls.log()),
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs one case: the reaction, then a fresh client's Ping, then the canaries.
async fn run_case(env: &Arc<Env>, c: Case) -> Result<(), String> {
    let before: Vec<usize> = env.canaries.iter().map(|c| c.errors().len()).collect();
    react(env, &c)
        .await
        .map_err(|e| format!("reaction ({}): {e}", c.expect.describe()))?;
    fresh_client_pings(env, c.on)
        .await
        .map_err(|e| format!("fresh client afterwards: {e}"))?;
    for (canary, n) in env.canaries.iter().zip(before) {
        canary.caught_up(BOUND).await?;
        if canary.errors().len() != n {
            return Err(format!("canary: {:?}", canary.errors()));
        }
    }
    Ok(())
}

async fn fresh_client_pings(env: &Env, on: On) -> Result<(), String> {
    let relay = env.relay(on);
    let attempt = async {
        let mut c = Client::connect(&relay.options())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        client_ping(&mut c).await
    };
    tokio::time::timeout(BOUND * 2, attempt)
        .await
        .map_err(|_| "no Ping round trip in time".to_string())?
}

async fn client_ping(c: &mut Client) -> Result<(), String> {
    let data = rand8();
    c.send(&ClientToServer::Ping(data))
        .await
        .map_err(|e| format!("send ping: {e}"))?;
    let got = common::recv_until(c, BOUND, |f| *f == ServerToClient::Pong(data)).await;
    got.map(|_| ()).ok_or_else(|| "no pong".to_string())
}

async fn react(env: &Arc<Env>, c: &Case) -> Result<(), String> {
    let relay = env.relay(c.on);
    let io_err = |e: std::io::Error| e.to_string();
    match &c.act {
        Raw(bytes) | RawFin(bytes) | RawReset(bytes) | Trickle(bytes, _) => {
            let mut s = TcpStream::connect(relay.addr).await.map_err(io_err)?;
            s.write_all(bytes).await.map_err(io_err)?;
            match &c.act {
                RawFin(_) => s.shutdown().await.map_err(io_err)?,
                RawReset(_) => {
                    reset(s);
                    return expect_nothing(c.expect);
                }
                Trickle(_, every) => {
                    let (mut r, mut w) = s.into_split();
                    let every = *every;
                    let trickle = tokio::spawn(async move {
                        while w.write_all(b"a").await.is_ok() {
                            tokio::time::sleep(every).await;
                        }
                    });
                    let result = observe(&mut r, c.expect).await;
                    trickle.abort();
                    return result;
                }
                _ => {}
            }
            observe(&mut s, c.expect).await
        }
        InTls(sni, alpn, bytes) => {
            let tcp = TcpStream::connect(relay.addr).await.map_err(io_err)?;
            let name = rustls::pki_types::ServerName::try_from(sni.to_string())
                .map_err(|e| e.to_string())?;
            let connector = tokio_rustls::TlsConnector::from(insecure_tls(alpn));
            let mut s = match tokio::time::timeout(BOUND, connector.connect(name, tcp)).await {
                Err(_) => return Err("TLS handshake neither finished nor failed".into()),
                Ok(Err(e)) => {
                    return match c.expect {
                        Close => Ok(()),
                        _ => Err(format!("TLS handshake failed: {e}")),
                    };
                }
                Ok(Ok(s)) => s,
            };
            if matches!(c.expect, Close) && bytes.is_empty() {
                // rustls reports a server's refusal of the handshake on the first read for TLS
                // 1.3; the connection must end either way.
                return observe(&mut s, Close).await;
            }
            s.write_all(bytes).await.map_err(io_err)?;
            observe(&mut s, c.expect).await
        }
        Hello(bytes) => {
            let mut s = TcpStream::connect(relay.addr).await.map_err(io_err)?;
            let hello = tls_client_hello(common::mesh::HOSTNAME, &[b"http/1.1"]);
            s.write_all(&[hello, bytes.clone()].concat())
                .await
                .map_err(io_err)?;
            observe(&mut s, c.expect).await
        }
        Handshake(bytes) => {
            let io = env.stream(c.on).await.map_err(io_err)?;
            let mut raw = RawDerp::upgrade(io).await.map_err(io_err)?;
            raw.send(bytes).await.map_err(io_err)?;
            derp_reaction(&mut raw, c.expect).await
        }
        Info(key, json) => {
            let io = env.stream(c.on).await.map_err(io_err)?;
            let mut raw = RawDerp::upgrade(io).await.map_err(io_err)?;
            let bytes = match key {
                Key::Fresh => raw.client_info_json(&NodeSecretKey::generate(), json),
                Key::ServersOwn => raw.client_info_json(&relay.secret, json),
                Key::SealedToOther => {
                    let me = NodeSecretKey::generate();
                    let sealed = me.seal_to(&NodeSecretKey::generate().public_key(), json);
                    frame_with(
                        0x02,
                        &[&me.public_key().as_bytes()[..], &sealed[..]].concat(),
                    )
                }
                Key::Zero | Key::LowOrder => {
                    let k: [u8; 32] = match key {
                        Key::Zero => [0; 32],
                        _ => hex::decode(
                            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
                        )
                        .unwrap()
                        .try_into()
                        .unwrap(),
                    };
                    frame_with(0x02, &[&k[..], &noise(24 + 16 + json.len())[..]].concat())
                }
            };
            raw.send(&bytes).await.map_err(io_err)?;
            derp_reaction(&mut raw, c.expect).await
        }
        After(who, bytes) => {
            let mut raw = env.login(c.on, *who).await?;
            raw.send(bytes).await.map_err(io_err)?;
            derp_reaction(&mut raw, c.expect).await
        }
        WsHead(head) => {
            let mut s = TcpStream::connect(relay.addr).await.map_err(io_err)?;
            s.write_all(head.as_bytes()).await.map_err(io_err)?;
            observe(&mut s, c.expect).await
        }
        WsAfter(login, bytes) => {
            let io = env.stream(c.on).await.map_err(io_err)?;
            let mut ws = RawWs::upgrade(io, &ws_head(""))
                .await
                .map_err(|e| format!("not upgraded: {e}"))?;
            if *login {
                ws.login().await.map_err(io_err)?;
            } else {
                ws.server_key().await.map_err(io_err)?;
            }
            ws.io.write_all(bytes).await.map_err(io_err)?;
            match c.expect {
                Close => ws.closed(BOUND).await.map(|_| ()),
                WsClose(code) => match ws.closed(BOUND).await? {
                    Some(got) if got == code => Ok(()),
                    got => Err(format!("close code {got:?}, expected {code}")),
                },
                Alive => ws.ping(BOUND).await,
                other => Err(format!("{other:?} is not a WebSocket reaction")),
            }
        }
        Stun(datagram) => {
            let sock = UdpSocket::bind("127.0.0.1:0").await.map_err(io_err)?;
            sock.send_to(datagram, env.stun).await.map_err(io_err)?;
            let mut buf = vec![0u8; 2048];
            let answer =
                tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
            match c.expect {
                StunSilent => {
                    if answer.is_ok() {
                        return Err("answered".into());
                    }
                    stun_answered(&sock, env.stun).await
                }
                StunAnswer => answer
                    .map(|_| ())
                    .map_err(|_| "no answer within 300 ms".into()),
                other => Err(format!("{other:?} is not a STUN reaction")),
            }
        }
        Custom(f) => f(env.clone()).await,
    }
}

/// Closes with an RST (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized `linger`.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

fn expect_nothing(expect: Expect) -> Result<(), String> {
    match expect {
        Nothing => Ok(()),
        other => Err(format!("{other:?} cannot be observed after we reset")),
    }
}

/// Checks a reaction on a raw byte stream.
async fn observe<S: tokio::io::AsyncRead + Unpin + Send>(
    s: &mut S,
    expect: Expect,
) -> Result<(), String> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Reads until EOF, until `enough` holds for what was read, or until `within`.
    let mut read =
        async |got: &mut Vec<u8>, within: Duration, enough: &(dyn Fn(&[u8]) -> bool + Sync)| {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if enough(got) {
                    return Some(false);
                }
                match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                    Err(_) => return None,
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(true),
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
    let text = |got: &[u8]| String::from_utf8_lossy(&got[..got.len().min(200)]).into_owned();
    match expect {
        Status(code) => {
            read(&mut got, BOUND, &|g| g.windows(2).any(|w| w == b"\r\n")).await;
            let want = format!("HTTP/1.1 {code} ");
            if got.starts_with(want.as_bytes()) {
                Ok(())
            } else {
                Err(format!("expected {want:?}, got {:?}", text(&got)))
            }
        }
        Close => match read(&mut got, BOUND, &|_| false).await {
            Some(_) => Ok(()),
            None => Err(format!(
                "still open after {BOUND:?} (read {:?})",
                text(&got)
            )),
        },
        Rejected => match read(&mut got, BOUND, &|_| false).await {
            Some(_) if got.is_empty() || got.starts_with(b"HTTP/1.1 4") => Ok(()),
            Some(_) => Err(format!("closed, but after {:?}", text(&got))),
            None => Err(format!(
                "still open after {BOUND:?} (read {:?})",
                text(&got)
            )),
        },
        Held => match read(&mut got, HELD, &|_| false).await {
            None => Ok(()),
            Some(_) => Err(format!(
                "closed after {:?} (read {:?})",
                start.elapsed(),
                text(&got)
            )),
        },
        ClosedBetween(min, max) => match read(&mut got, max, &|_| false).await {
            Some(_) if start.elapsed() >= min => Ok(()),
            Some(_) => Err(format!("closed early, after {:?}", start.elapsed())),
            None => Err(format!("still open after {max:?}")),
        },
        other => Err(format!("{other:?} is not a reaction of a raw stream")),
    }
}

/// Checks a reaction on a DERP connection past the upgrade.
async fn derp_reaction(raw: &mut RawDerp, expect: Expect) -> Result<(), String> {
    match expect {
        Close => raw.closed(BOUND).await,
        Alive => raw.ping(BOUND).await,
        Held => match raw.closed(HELD).await {
            Ok(()) => Err("closed".into()),
            Err(_) => Ok(()),
        },
        ClosedBetween(min, max) => {
            let start = Instant::now();
            raw.closed(max).await?;
            if start.elapsed() < min {
                return Err(format!("closed early, after {:?}", start.elapsed()));
            }
            Ok(())
        }
        other => Err(format!("{other:?} is not a DERP reaction")),
    }
}

// ---------------------------------------------------------------------------------------------
// Byte builders.

/// Deterministic noise whose first byte cannot start an HTTP method.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    if let Some(b) = out.first_mut() {
        *b = 0x80;
    }
    out
}

/// A ClientHello as rustls sends it for `sni`, offering `alpn`.
fn tls_client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(insecure_tls(alpn), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A key made from a number (not a valid node anyone holds).
fn key_from(i: u32) -> NodePublicKey {
    let mut k = [0x61u8; 32];
    k[..4].copy_from_slice(&i.to_be_bytes());
    NodePublicKey::from_bytes(k)
}

fn send_packet(dst: &NodePublicKey, packet: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    ClientToServer::SendPacket {
        dst: *dst,
        packet: bytes::Bytes::copy_from_slice(packet),
    }
    .encode(&mut out);
    out.to_vec()
}

fn forward_packet(src: &NodePublicKey, dst: &NodePublicKey, packet: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    ClientToServer::ForwardPacket {
        src: *src,
        dst: *dst,
        packet: bytes::Bytes::copy_from_slice(packet),
    }
    .encode(&mut out);
    out.to_vec()
}

fn peer_present(key: &NodePublicKey) -> Vec<u8> {
    let mut out = BytesMut::new();
    ServerToClient::PeerPresent {
        peer: *key,
        addr: Some(([10, 0, 0, 1], 41641).into()),
        flags: derp_proto::frame::PeerPresentFlags::IS_REGULAR,
    }
    .encode(&mut out);
    out.to_vec()
}

/// A disco-shaped packet (magic, sender key, nonce, a short box).
fn disco_packet() -> Vec<u8> {
    [&derp_proto::disco::MAGIC[..], &[0x11; 32 + 24 + 20]].concat()
}

fn stun_request() -> [u8; 40] {
    derp_proto::stun::binding_request(derp_proto::stun::TxId(
        rand8().repeat(2)[..12].try_into().unwrap(),
    ))
}

/// A STUN header with its length field replaced.
fn stun_with_len(head: &[u8], len: u16) -> Vec<u8> {
    let mut h = head.to_vec();
    h[2..4].copy_from_slice(&len.to_be_bytes());
    h
}

async fn stun_answered(sock: &UdpSocket, to: SocketAddr) -> Result<(), String> {
    let mut buf = vec![0u8; 2048];
    sock.send_to(&stun_request(), to)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
        .await
        .map_err(|_| "a valid request afterwards was not answered".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Custom cases.

type CaseResult = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

fn ws_fragmented_client_info(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        let io = env.stream(Plain).await.map_err(|e| e.to_string())?;
        let mut ws = RawWs::upgrade(io, &ws_head("")).await?;
        let server_key = ws.server_key().await.map_err(|e| e.to_string())?;
        let secret = NodeSecretKey::generate();
        let mut info = BytesMut::new();
        handshake::write_client_info(&mut info, &secret, &server_key, &ClientInfo::new());
        // One message in three frames (binary, continuation, final continuation), with a
        // WebSocket ping between fragments, as RFC 6455 allows.
        let third = info.len() / 3;
        let bytes = [
            ws_frame(false, 0, 0x2, &info[..third], true),
            ws_frame(true, 0, 0x9, b"between", true),
            ws_frame(false, 0, 0x0, &info[third..2 * third], true),
            ws_frame(true, 0, 0x0, &info[2 * third..], true),
        ]
        .concat();
        ws.io.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let f = ws.derp_frame().await.map_err(|e| e.to_string())?;
        handshake::read_server_info(&secret, &server_key, &f).map_err(|e| e.to_string())?;
        ws.ping(BOUND).await
    })
}

fn client_info_byte_by_byte(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        let io = env.stream(Plain).await.map_err(|e| e.to_string())?;
        let mut raw = RawDerp::upgrade(io).await.map_err(|e| e.to_string())?;
        let mut info = BytesMut::new();
        handshake::write_client_info(&mut info, &raw.secret, &raw.server_key, &ClientInfo::new());
        for b in info.iter() {
            raw.send(&[*b]).await.map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        raw.ping(BOUND).await
    })
}

fn send_to_self(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        let mut raw = env.login(Plain, As::Regular).await?;
        let me = raw.secret.public_key();
        raw.send(&send_packet(&me, b"to myself"))
            .await
            .map_err(|e| e.to_string())?;
        let wait = async {
            loop {
                let f = raw.frame().await?;
                if f.ty == FrameType::RECV_PACKET {
                    return Ok::<_, std::io::Error>(f.payload);
                }
            }
        };
        let payload = tokio::time::timeout(BOUND, wait)
            .await
            .map_err(|_| "nothing came back".to_string())?
            .map_err(|e| e.to_string())?;
        if payload[..32] != me.as_bytes()[..] || &payload[32..] != b"to myself" {
            return Err(format!("unexpected packet {payload:?}"));
        }
        raw.ping(BOUND).await
    })
}

/// A counter's growth while `act` runs, read from the plain relay.
async fn counter_grows(env: &Env, series: &str, min: f64) -> Result<(), String> {
    let ok =
        common::eventually(|| async { metric(&env.plain.scrape().await, series) >= min }).await;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{series} = {}, expected at least {min}",
            metric(&env.plain.scrape().await, series)
        ))
    }
}

fn send_to_unknown_counted(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        const SERIES: &str = "derp_packets_dropped_total{reason=\"unknown_dest\",kind=\"other\"}";
        let before = metric(&env.plain.scrape().await, SERIES);
        let mut raw = env.login(Plain, As::Regular).await?;
        raw.send(&send_packet(
            &NodeSecretKey::generate().public_key(),
            b"nobody",
        ))
        .await
        .map_err(|e| e.to_string())?;
        counter_grows(&env, SERIES, before + 1.0).await?;
        raw.ping(BOUND).await
    })
}

fn frame_byte_by_byte(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        let mut raw = env.login(Plain, As::Regular).await?;
        let data = rand8();
        let mut ping = BytesMut::new();
        ClientToServer::Ping(data).encode(&mut ping);
        for b in ping.iter() {
            raw.send(&[*b]).await.map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wait = async {
            loop {
                let f = raw.frame().await?;
                if f.ty == FrameType::PONG && f.payload[..] == data {
                    return Ok::<_, std::io::Error>(());
                }
            }
        };
        tokio::time::timeout(BOUND, wait)
            .await
            .map_err(|_| "no pong for the trickled ping".to_string())?
            .map_err(|e| e.to_string())
    })
}

fn truncated_frame_then_fin(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        let mut raw = env.login(Plain, As::Regular).await?;
        raw.send(&[header(0x04, 100), vec![0; 10]].concat())
            .await
            .map_err(|e| e.to_string())?;
        raw.io.shutdown().await.map_err(|e| e.to_string())?;
        raw.closed(BOUND).await
    })
}

/// Logs in with a small receive buffer, has another client flood it with 60 KB packets, never
/// reads, and checks the relay cuts it (write deadline `deadline`) while everything else goes on.
async fn stalled_receiver(env: &Env, mesh: bool, deadline: Duration) -> Result<(), String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.set_recv_buffer_size(4096).map_err(|e| e.to_string())?;
    let tcp = sock
        .connect(env.plain.addr)
        .await
        .map_err(|e| e.to_string())?;
    let info = if mesh {
        mesh_info(&env.mesh_key)
    } else {
        ClientInfo::new()
    };
    let mut stalled = RawDerp::login(Box::new(tcp), &info)
        .await
        .map_err(|e| e.to_string())?;
    if mesh {
        stalled
            .send(&frame(0x10, 0, 0))
            .await
            .map_err(|e| e.to_string())?;
    }
    let target = stalled.secret.public_key();
    let timeouts = metric(&env.plain.scrape().await, "derp_write_timeouts_total");
    let mut sender = Client::connect(&env.plain.options())
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    // Enough to fill both socket buffers many times over; the relay head-drops the rest.
    let flood = async {
        for _ in 0..400 {
            sender
                .send_packet(&target, &[0x77; 60_000])
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(sender)
    };
    let mut sender = tokio::time::timeout(Duration::from_secs(5), flood)
        .await
        .map_err(|_| "the flooding sender was blocked".to_string())??;
    // Still not reading until the deadline has passed (reading earlier would unblock the
    // relay's writer), plus slack; reading now drains what the buffers held, then the end.
    tokio::time::sleep_until((started + deadline + Duration::from_millis(1500)).into()).await;
    stalled.closed(BOUND).await?;
    // …and it was the write deadline that cut it.
    counter_grows(env, "derp_write_timeouts_total", timeouts + 1.0).await?;
    client_ping(&mut sender).await
}

fn client_stops_reading(env: Arc<Env>) -> CaseResult {
    Box::pin(async move { stalled_receiver(&env, false, Duration::from_secs(2)).await })
}

fn mesh_watcher_stops_reading(env: Arc<Env>) -> CaseResult {
    Box::pin(async move { stalled_receiver(&env, true, Duration::from_secs(2)).await })
}

fn mesh_close_peer_self(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        let mut raw = env.login(Plain, As::Mesh).await?;
        let me = raw.secret.public_key();
        raw.send(&frame_with(0x11, me.as_bytes()))
            .await
            .map_err(|e| e.to_string())?;
        raw.closed(BOUND).await
    })
}

fn forged_source(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        const SERIES: &str = "derp_packets_dropped_total{reason=\"forged_src\",kind=\"other\"}";
        let before = metric(&env.plain.scrape().await, SERIES);
        let mut mesh = env.login(Plain, As::Mesh).await?;
        let mut dst = Client::connect(&env.plain.options())
            .await
            .map_err(|e| e.to_string())?;
        let local = Client::connect(&env.plain.options())
            .await
            .map_err(|e| e.to_string())?;
        let remote = NodeSecretKey::generate().public_key();
        let dst_key = dst.public_key();
        mesh.send(
            &[
                forward_packet(&local.public_key(), &dst_key, b"forged"),
                forward_packet(&remote, &dst_key, b"genuine"),
            ]
            .concat(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let (src, packet) = common::recv_packet(&mut dst).await;
        if (src, &packet[..]) != (remote, &b"genuine"[..]) {
            return Err(format!("received {packet:?} from {src:?}"));
        }
        counter_grows(&env, SERIES, before + 1.0).await?;
        mesh.ping(BOUND).await
    })
}

fn forward_to_unknown(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        const SERIES: &str =
            "derp_packets_dropped_total{reason=\"unknown_dest_on_fwd\",kind=\"other\"}";
        let before = metric(&env.plain.scrape().await, SERIES);
        let mut mesh = env.login(Plain, As::Mesh).await?;
        let frames: Vec<u8> = (0..100u32)
            .flat_map(|i| forward_packet(&key_from(1_000_000 + i), &key_from(2_000_000 + i), b"x"))
            .collect();
        mesh.send(&frames).await.map_err(|e| e.to_string())?;
        counter_grows(&env, SERIES, before + 100.0).await?;
        mesh.ping(BOUND).await
    })
}

fn stun_flood(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        let sock = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..2000 {
            sock.send_to(&stun_request(), env.stun)
                .await
                .map_err(|e| e.to_string())?;
        }
        // Drain what came back, then one more must be answered.
        let mut buf = vec![0u8; 2048];
        while tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf))
            .await
            .is_ok()
        {}
        stun_answered(&sock, env.stun).await
    })
}

fn link_peer_floods_presence(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        const N: u32 = 20_000;
        let base = metric(&env.plain.scrape().await, "derp_clients_remote");
        let keys: Vec<NodePublicKey> = (0..N).map(|i| key_from(3_000_000 + i)).collect();
        env.flooder.command(Command::Present(keys.clone())).await?;
        let all_there = common::eventually(|| async {
            metric(&env.plain.scrape().await, "derp_clients_remote") >= base + f64::from(N)
        })
        .await;
        if !all_there {
            return Err(format!(
                "derp_clients_remote = {} after the flood, expected {}",
                metric(&env.plain.scrape().await, "derp_clients_remote"),
                base + f64::from(N)
            ));
        }
        fresh_client_pings(&env, Plain).await?;
        env.flooder.command(Command::Gone(keys)).await?;
        let all_gone = common::eventually(|| async {
            metric(&env.plain.scrape().await, "derp_clients_remote") <= base
        })
        .await;
        if all_gone {
            Ok(())
        } else {
            Err("the flooded routes did not go".into())
        }
    })
}

fn link_peer_stops_reading(env: Arc<Env>) -> CaseResult {
    Box::pin(async move {
        let scrape = env.plain.scrape().await;
        let dropped = metric_sum(&scrape, "derp_mesh_link_queue_dropped_total");
        let connects = metric_sum_where(&scrape, "derp_mesh_connects_total", "result=\"ok\"");
        let key = key_from(4_000_000);
        env.staller.command(Command::PresentThenStall(key)).await?;
        let routed = common::eventually(|| async {
            metric(&env.plain.scrape().await, "derp_clients_remote") >= 1.0
        })
        .await;
        if !routed {
            return Err("the stalling peer's key was never routed".into());
        }
        let mut sender = Client::connect(&env.plain.options())
            .await
            .map_err(|e| e.to_string())?;
        // More than the link's 8 MiB queue plus the socket buffers.
        let flood = async {
            for _ in 0..300 {
                sender
                    .send_packet(&key, &[0x66; 60_000])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(Duration::from_secs(5), flood)
            .await
            .map_err(|_| "the sender was blocked by a stalled mesh link".to_string())??;
        let ok = common::eventually(|| async {
            let s = env.plain.scrape().await;
            metric_sum(&s, "derp_mesh_link_queue_dropped_total") > dropped
                && metric_sum_where(&s, "derp_mesh_connects_total", "result=\"ok\"") > connects
        })
        .await;
        if !ok {
            let s = env.plain.scrape().await;
            return Err(format!(
                "queue drops {} → {}, link connects {} → {}",
                dropped,
                metric_sum(&s, "derp_mesh_link_queue_dropped_total"),
                connects,
                metric_sum_where(&s, "derp_mesh_connects_total", "result=\"ok\"")
            ));
        }
        client_ping(&mut sender).await
    })
}

/// The sum of every series of `name`.
fn metric_sum(text: &str, name: &str) -> f64 {
    metric_sum_where(text, name, "")
}

/// The sum of the series of `name` whose labels contain `label`.
fn metric_sum_where(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// A fake mesh peer: a DERP server our relay's mesh link dials. It answers Pings, and on
// command floods presence or stops reading.

enum Command {
    /// PeerPresent for each key.
    Present(Vec<NodePublicKey>),
    /// PeerGone for each key.
    Gone(Vec<NodePublicKey>),
    /// PeerPresent for the key, then never read again (the connection is held 10 s).
    PresentThenStall(NodePublicKey),
}

struct FakePeer {
    port: u16,
    /// The command channel of the connection currently up.
    current: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Command>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePeer {
    async fn start(mesh_key: &MeshKey) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        // A small receive buffer, so a peer that stops reading stalls the link quickly.
        sock.set_recv_buffer_size(4096).unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = sock.local_addr().unwrap().port();
        let listener = sock.listen(16).unwrap();
        let current = Arc::new(std::sync::Mutex::new(None));
        let secret = NodeSecretKey::generate();
        let mesh_key = mesh_key.clone();
        let task = tokio::spawn({
            let current = current.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    *current.lock().unwrap() = Some(tx);
                    tokio::spawn(fake_peer_conn(tcp, secret.clone(), mesh_key.clone(), rx));
                }
            }
        });
        Self {
            port,
            current,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/derp", self.port)
    }

    fn connected(&self) -> bool {
        self.current
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }

    async fn command(&self, cmd: Command) -> Result<(), String> {
        let tx = self.current.lock().unwrap().clone();
        match tx {
            Some(tx) => tx
                .send(cmd)
                .await
                .map_err(|_| "fake mesh peer connection is gone".to_string()),
            None => Err("no mesh link to the fake peer".into()),
        }
    }
}

async fn fake_peer_conn(
    mut tcp: TcpStream,
    secret: NodeSecretKey,
    mesh_key: MeshKey,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
) {
    let mut head = BytesMut::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if !matches!(tcp.read_buf(&mut head).await, Ok(n) if n > 0) {
            return;
        }
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let rest = head.split_off(end);
    let mut out = BytesMut::new();
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n",
    );
    handshake::write_server_key(&mut out, &secret.public_key());
    let (r, mut w) = tcp.into_split();
    if w.write_all(&out).await.is_err() {
        return;
    }
    let mut reader = FramedRead::new(r, FrameDecoder::server(), rest);
    let Ok(f) = reader.read_frame().await else {
        return;
    };
    let Ok(hello) = handshake::read_client_info(&secret, &f) else {
        return;
    };
    assert_eq!(hello.info.mesh_key.as_ref(), Some(&mesh_key));
    let mut out = BytesMut::new();
    handshake::write_server_info_to(&mut out, &hello, &ServerInfo::new());
    if w.write_all(&out).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            f = reader.read_frame() => {
                let Ok(f) = f else { return };
                if f.ty == FrameType::PING {
                    let mut out = BytesMut::new();
                    ServerToClient::Pong(f.payload[..8].try_into().unwrap()).encode(&mut out);
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                let mut out = BytesMut::new();
                let stall = match cmd {
                    Command::Present(keys) => {
                        for k in &keys {
                            out.extend_from_slice(&peer_present(k));
                        }
                        false
                    }
                    Command::Gone(keys) => {
                        for k in &keys {
                            ServerToClient::PeerGone { peer: *k, reason: PeerGoneReason::DISCONNECTED }.encode(&mut out);
                        }
                        false
                    }
                    Command::PresentThenStall(k) => {
                        out.extend_from_slice(&peer_present(&k));
                        true
                    }
                };
                if w.write_all(&out).await.is_err() {
                    return;
                }
                if stall {
                    // Never read again; the relay must give up on this link by itself.
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    return;
                }
            }
        }
    }
}
