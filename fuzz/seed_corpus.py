#!/usr/bin/env python3
"""Regenerates the seed files of fuzz/corpus/ from derp-proto/testdata/go-vectors.json and a
few hand-made edge cases. Files the fuzzer adds later (named by their SHA-1) are left alone.

Run from anywhere: python3 fuzz/seed_corpus.py
"""

import json
import struct
import zlib
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
VECTORS = FUZZ.parent / "derp-proto" / "testdata" / "go-vectors.json"
README = FUZZ.parent / "README.md"

MAX_PACKET_SIZE = 64 << 10
MAX_FRAME_LEN = 2 * 32 + MAX_PACKET_SIZE
MAX_CLIENT_INFO_LEN = 256 << 10
MAX_CLIENT_RECV_FRAME_LEN = 1 << 20
MAGIC = bytes.fromhex("44455250f09f9491")
COOKIE = bytes.fromhex("2112a442")
TX = bytes(range(1, 13))


def frame(ty: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BI", ty, len(payload) if length is None else length) + payload


def write(target: str, name: str, data: bytes) -> None:
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def stun_fp(b: bytes) -> bytes:
    return struct.pack(">I", zlib.crc32(b) ^ 0x5354554E)


def stun_attr(ty: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack(">HH", ty, len(value)) + value + b"\0" * pad


def stun_msg(ty: int, attrs: bytes, fingerprint: bool, cookie: bytes = COOKIE) -> bytes:
    length = len(attrs) + (8 if fingerprint else 0)
    b = struct.pack(">HH", ty, length) + cookie + TX + attrs
    if fingerprint:
        b += struct.pack(">HH", 0x8028, 4) + stun_fp(b)
    return b


def main() -> None:
    v = json.loads(VECTORS.read_text())
    key = lambda name: bytes.fromhex(  # noqa: E731
        next(c for c in v["clients"] if c["name"] == name)["public"].split(":")[1]
    )
    c2s_stream, s2c_stream = b"", b""

    # --- Go vectors ---
    for f in v["frames"]:
        raw = bytes.fromhex(f["hex"])
        ty, payload = raw[0], raw[5:]
        name = "go-" + f["name"]
        write("frame_decoder", name, raw)
        if f["direction"] == "c2s":
            c2s_stream += raw
            write("client_messages", name, bytes([ty]) + payload)
            if ty == 0x02:
                write("handshake_server", name, raw)
                write("client_info_open", name, f["plaintext"].encode())
        else:
            s2c_stream += raw
            write("server_messages", name, bytes([ty]) + payload)
            if ty == 0x03:
                write("client_info_open", name, f["plaintext"].encode())
    write("frame_decoder", "go-c2s-stream", c2s_stream)
    write("frame_decoder", "go-s2c-stream", s2c_stream)

    # --- frame_decoder edge cases ---
    fd = {
        "empty": b"",
        "truncated-header": bytes.fromhex("120000"),
        "truncated-payload": frame(0x12, b"pingpong")[:-3],
        "ping-short-payload": frame(0x12, b"ping"),
        "oversized-send-packet": frame(0x04, b"", MAX_FRAME_LEN + 1),
        "max-send-packet-header": frame(0x04, b"\0" * 40, MAX_FRAME_LEN),
        "oversized-client-info": frame(0x02, b"", MAX_CLIENT_INFO_LEN + 1),
        "client-oversized-any": frame(0x7F, b"", MAX_CLIENT_RECV_FRAME_LEN + 1),
        "length-u32-max": frame(0x05, b"", 0xFFFFFFFF),
        "unknown-small-then-ping": frame(0x7F, b"abc") + frame(0x12, b"pingpong"),
        "unknown-huge-then-ping": frame(0xEE, b"\xaa" * 64, 10_000_000) + frame(0x12, b"pingpong"),
        "unknown-just-over-limit": frame(0x30, b"\x00" * 16, MAX_FRAME_LEN + 1),
        "zero-length-frames": frame(0x06, b"") + frame(0x10, b"") + frame(0x14, b""),
    }
    for name, data in fd.items():
        write("frame_decoder", "edge-" + name, data)

    # --- client_messages edge cases (type ‖ payload) ---
    a = key("a")
    cm = {
        "send-packet-short-key": bytes([0x04]) + a[:31],
        "send-packet-empty-packet": bytes([0x04]) + a,
        "send-packet-too-big": bytes([0x04]) + a + b"\0" * (MAX_PACKET_SIZE + 1),
        "forward-packet-one-key": bytes([0x0A]) + a,
        "note-preferred-two-bytes": bytes([0x07, 1, 1]),
        "note-preferred-empty": bytes([0x07]),
        "watch-conns-with-byte": bytes([0x10, 0]),
        "close-peer-short": bytes([0x11]) + a[:31],
        "close-peer-long": bytes([0x11]) + a + b"x",
        "ping-short": bytes([0x12]) + b"1234567",
        "ping-long-ok": bytes([0x12]) + b"\x01" * 1000,
        "ping-too-long": bytes([0x12]) + b"\x01" * 1001,
        "pong-long": bytes([0x13]) + b"\x02" * 100,
        "client-info-again": bytes([0x02]) + a,
        "unknown-type": bytes([0x7F]) + b"hello",
        "server-only-type": bytes([0x05]) + a + b"x",
        "type-only": bytes([0x04]),
    }
    for name, data in cm.items():
        write("client_messages", "edge-" + name, data)

    # --- server_messages edge cases (type ‖ payload) ---
    srv = bytes.fromhex(v["server_public"].split(":")[1])
    sm = {
        "server-key-trailing": bytes([0x01]) + MAGIC + srv + b"future",
        "server-key-wrong-magic": bytes([0x01]) + b"DERPDERP" + srv,
        "server-key-short": bytes([0x01]) + MAGIC + srv[:31],
        "server-key-magic-only": bytes([0x01]) + MAGIC[:5],
        "peer-gone-legacy": bytes([0x08]) + a,
        "peer-gone-reason-unknown": bytes([0x08]) + a + b"\x7f",
        "peer-present-legacy": bytes([0x09]) + a,
        "peer-present-no-flags": bytes([0x09]) + a + bytes(10) + b"\xff\xff\xc0\x00\x02\x01\x00\x50",
        "peer-present-zero-addr": bytes([0x09]) + a + bytes(18) + b"\x0f",
        "peer-present-unspecified-port": bytes([0x09]) + a + bytes(16) + b"\x00\x01\x00",
        "peer-present-short-addr": bytes([0x09]) + a + bytes(17),
        "peer-present-trailing": bytes([0x09]) + a + bytes(19) + b"more",
        "recv-packet-short-key": bytes([0x05]) + a[:31],
        "recv-packet-empty": bytes([0x05]) + a,
        "health": bytes([0x14]) + "región unhealthy \U0001f511".encode(),
        "health-empty": bytes([0x14]),
        "health-not-utf8": bytes([0x14, 0xFF, 0xFE]),
        "restarting": bytes([0x15]) + struct.pack(">II", 5000, 60000),
        "restarting-short": bytes([0x15]) + b"\0" * 7,
        "restarting-trailing": bytes([0x15]) + b"\xff" * 9,
        "ping-short": bytes([0x12]) + b"1234567",
        "ping-long": bytes([0x12]) + b"\x03" * 20,
        "client-only-type": bytes([0x04]) + a,
        "client-info-type": bytes([0x02]),
        "unknown-type": bytes([0x7F]) + b"hello",
        "server-info-garbage": bytes([0x03]) + b"\0" * 40,
        "type-only": bytes([0x06]),
    }
    for name, data in sm.items():
        write("server_messages", "edge-" + name, data)

    # --- handshake_server edge cases ---
    ci = bytes.fromhex(next(f for f in v["frames"] if f["name"] == "client_info")["hex"])
    flipped = bytearray(ci)
    flipped[-1] ^= 1
    hs = {
        "client-info-truncated": ci[:-1],
        "client-info-flipped-tag": bytes(flipped),
        "client-info-too-short": frame(0x02, a + b"\0" * 23),
        "client-info-minimal": frame(0x02, a + b"\0" * 24),
        "client-info-oversized": frame(0x02, b"", MAX_CLIENT_INFO_LEN + 1),
        "ping-first": frame(0x12, b"pingpong"),
        "json-plaintext": b'{"version":2,"CanAckPings":true,"AppName":"fuzz"}',
        "json-bad-mesh-key": b'{"meshKey":"zz","version":2}',
        "empty": b"",
    }
    for name, data in hs.items():
        write("handshake_server", "edge-" + name, data)

    # --- client_info_open edge cases ---
    ji = {
        "regular-client": b'{"version":2,"CanAckPings":true}',
        "lenient-case": b'{"VERSION":2,"canackpings":true,"Extra":[1],"isprober":true}',
        "duplicate-case": b'{"version":2,"VERSION":3}',
        "nulls": b'{"meshKey":null,"version":null,"CanAckPings":null,"AppName":null}',
        "mesh-key-empty": b'{"meshKey":""}',
        "mesh-key-upper": ('{"meshKey":"%s"}' % v["mesh_key"].upper()).encode(),
        "mesh-key-padded": ('{"meshKey":" %s\\n"}' % v["mesh_key"]).encode(),
        "mesh-key-number": b'{"meshKey":1}',
        "version-negative": b'{"version":-1}',
        "version-float": b'{"version":2.0}',
        "version-u32-overflow": b'{"version":4294967296}',
        "version-string": b'{"version":"2"}',
        "flag-string": b'{"CanAckPings":"true"}',
        "app-name": b'{"version":2,"CanAckPings":true,"AppName":"tailscaled \\u00e9\\ud83d\\udd11"}',
        "app-name-lone-surrogate": b'{"AppName":"\\ud800"}',
        "app-name-number": b'{"AppName":7}',
        "token-bucket": b'{"version":2,"TokenBucketBytesPerSecond":1000,"TokenBucketBytesBurst":5000}',
        "array": b"[]",
        "unterminated": b"{",
        "trailing": b'{"version":2} x',
        "nested": b'{"x":' + b"[" * 200 + b"]" * 200 + b"}",
        "not-utf8": b'{"AppName":"\xff"}',
        "empty": b"",
    }
    for name, data in ji.items():
        write("client_info_open", "edge-" + name, data)

    # --- stun_request ---
    sw = stun_attr(0x8022, b"tailnode")
    st = {
        "tailscale": stun_msg(0x0001, sw, True),
        "tailscale-bad-fingerprint": stun_msg(0x0001, sw, True)[:-1] + b"\0",
        "tailscale-extra-attr": stun_msg(0x0001, stun_attr(0x8023, b"x") + sw, True),
        "standard-bare": stun_msg(0x0001, b"", False),
        "standard-fingerprint": stun_msg(0x0001, stun_attr(0x8022, b"client"), True),
        "change-request": stun_msg(0x0001, stun_attr(0x0003, bytes([0, 0, 0, 6])), True),
        "change-request-bad-len": stun_msg(0x0001, stun_attr(0x0003, bytes(3)), False),
        "response-port": stun_msg(0x0001, stun_attr(0x0027, bytes([0xD4, 0x31, 0, 0])), False),
        "response-address": stun_msg(0x0001, stun_attr(0x0002, bytes([0, 1, 0, 80, 10, 0, 0, 1])), False),
        "unknown-required": stun_msg(
            0x0001, b"".join(stun_attr(t, b"") for t in (0x0024, 0x0025, 0x0030, 0x0031, 0x0032)), True
        ),
        "fingerprint-not-last": stun_msg(0x0001, b"", True) + stun_attr(0x8022, b"abcd"),
        "odd-length": struct.pack(">HH", 1, 2) + COOKIE + TX + b"\0\0",
        "overrun": struct.pack(">HH", 1, 8) + COOKIE + TX + bytes.fromhex("8022002874616966"),
        "classic": struct.pack(">HH", 1, 0) + bytes.fromhex("deadbeef") + TX,
        "classic-change": struct.pack(">HH", 1, 8) + bytes.fromhex("deadbeef") + TX
        + stun_attr(0x0003, bytes([0, 0, 0, 4])),
        "binding-response": stun_msg(0x0101, stun_attr(0x0020, bytes.fromhex("0001a147e112a643")), False),
        "not-a-request": stun_msg(0x0111, b"", False),
        "short": bytes(19),
        "top-bits": b"\xc0" + bytes(19),
        "rfc5769-sample": bytes.fromhex(
            "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
            "002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020"
            "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
        ),
    }
    for name, data in st.items():
        write("stun_request", ("go-" if name == "tailscale" else "edge-") + name, data)

    # mesh_datagram: QUIC mesh datagrams (tag 0x01 FORWARD ‖ src ‖ dst ‖ packet).
    md = {
        "forward-hi": b"\x01" + b"\xaa" * 32 + b"\xbb" * 32 + b"hi",
        "forward-empty": b"\x01" + b"\x11" * 64,
        "forward-1280": b"\x01" + b"\x22" * 64 + b"\x5a" * 1280,
        "short-header": b"\x01" + b"\x33" * 40,
        "unknown-tag": b"\x02" + b"\x44" * 64 + b"x",
        "empty": b"",
    }
    for name, data in md.items():
        write("mesh_datagram", name, data)
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in v["frames"]}
    presence_frames(frames)
    stun_response(sw)
    http_head(frames)
    websocket_frames(frames)
    config_file()
    admission_response()


def presence_frames(frames: dict) -> None:
    """Control byte (bits 0-2 bound, bit 3 resync, bits 4-7 window in s) ‖ server frames."""
    a, b, mesh = frames["peer_present_a"], frames["peer_present_b"], frames["peer_present_mesh"]
    gone = frames["peer_gone_disconnected"] + frames["peer_gone_not_here"]
    keepalive, ping = frame(0x06, b""), frame(0x12, b"pingpong")
    pf = {
        # Tailscale's PeerPresent flood, a third key over a bound of 2, then PeerGone.
        "go-flood-over-bound": bytes([0x02]) + a + b + mesh + gone + frames["peer_gone_watcher"],
        # Resync with a 1 s window: reconnect, only a is re-announced, b expires.
        "go-resync": bytes([0x1C]) + a + b + ping + a + keepalive + keepalive,
        # Go's behaviour: a reconnect removes everything, the flood restores it.
        "go-clear-on-break": bytes([0x04]) + a + b + ping + a + b + keepalive,
        "go-whole-stream": bytes([0x07]) + b"".join(frames.values()),
        "edge-bound-zero": bytes([0x00]) + a + b,
        "edge-reannounce-changed": bytes([0x05]) + a + a[:-1] + bytes([a[-1] ^ 0x02]) + a,
        "edge-legacy-short": bytes([0x05]) + frame(0x09, a[5:37]) + frame(0x08, a[5:37]),
    }
    for name, data in pf.items():
        write("presence_frames", name, data)


def stun_response(software: bytes) -> None:
    def xor_v4(ip: bytes, port: int) -> bytes:
        x = bytes(i ^ c for i, c in zip(ip, COOKIE))
        return struct.pack(">BBH", 0, 1, port ^ 0x2112) + x

    def xor_v6(ip: bytes, port: int) -> bytes:
        key = COOKIE + TX
        return struct.pack(">BBH", 0, 2, port ^ 0x2112) + bytes(i ^ k for i, k in zip(ip, key))

    v4 = bytes([192, 0, 2, 1])
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    mapped = bytes(10) + b"\xff\xff" + v4
    sr = {
        "go-tailscale-v4": stun_msg(0x0101, software + stun_attr(0x0020, xor_v4(v4, 41641)), True),
        "go-tailscale-v6": stun_msg(0x0101, software + stun_attr(0x0020, xor_v6(v6, 41641)), True),
        "edge-rfc5769-like": stun_msg(
            0x0101,
            stun_attr(0x8022, b"test vector ") + stun_attr(0x0020, xor_v4(v4, 32853))
            + stun_attr(0x0008, bytes(20)),
            True,
        ),
        "edge-xor-alt": stun_msg(0x0101, stun_attr(0x8020, xor_v4(v4, 3478)), False),
        "edge-mapped-only": stun_msg(0x0101, stun_attr(0x0001, bytes([0, 1, 0x0D, 0x96]) + v4), False),
        "edge-both-xor-wins": stun_msg(
            0x0101,
            stun_attr(0x0001, bytes([0, 1, 0, 80]) + bytes(4)) + stun_attr(0x0020, xor_v4(v4, 1)),
            False,
        ),
        "edge-v4-mapped-v6": stun_msg(0x0101, stun_attr(0x0020, xor_v6(mapped, 443)), False),
        "edge-trailing-bytes": stun_msg(0x0101, stun_attr(0x0020, xor_v4(v4, 9)), False) + b"junk",
        "edge-no-address": stun_msg(0x0101, software, True),
        "edge-short-address": stun_msg(0x0101, stun_attr(0x0020, bytes([0, 1, 0])), False),
        "edge-bad-family": stun_msg(0x0101, stun_attr(0x0020, bytes([0, 3, 0, 1]) + v4), False),
        "edge-overrun": struct.pack(">HH", 0x0101, 12) + COOKIE + TX + stun_attr(0x0020, bytes(8))[:10],
        "edge-error-response": stun_msg(0x0111, stun_attr(0x0009, bytes([0, 0, 4, 20])), False),
        "edge-request": stun_msg(0x0001, software, True),
    }
    for name, data in sr.items():
        write("stun_response", name, data)


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def http_head(frames: dict) -> None:
    """Control byte (bit 0 turns /derp off, bits 1-2 the read size) ‖ the first bytes sent."""
    # Tailscale's derphttp client (Go's net/http writes the headers sorted after Host and
    # User-Agent), with fast start and the ClientInfo frame in the same packet.
    go_derp = (
        "GET /derp HTTP/1.1\r\nHost: derp1.example.com\r\nUser-Agent: Go-http-client/1.1\r\n"
        "Connection: Upgrade\r\nDerp-Fast-Start: 1\r\nUpgrade: DERP\r\n\r\n"
    ).encode()
    go_ws = (
        "GET /derp HTTP/1.1\r\nHost: derp1.example.com\r\nUser-Agent: Go-http-client/1.1\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: derp\r\n"
        "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n" % WS_KEY
    ).encode()

    def req(lines: list[str]) -> bytes:
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    hh = {
        "go-derp-fast-start": bytes([0x06]) + go_derp + frames["client_info"],
        "go-derp-fast-start-small-reads": bytes([0x00]) + go_derp + frames["client_info"],
        "go-derp": bytes([0x02]) + go_derp.replace(b"Derp-Fast-Start: 1\r\n", b""),
        "go-derp-ideal-node": bytes([0x04]) + go_derp.replace(b"Upgrade: DERP", b"Ideal-Node: 1a\r\nUpgrade: DERP"),
        "go-websocket": bytes([0x06]) + go_ws,
        "go-probe": bytes([0x06]) + req(["GET /derp/probe HTTP/1.1", "Host: derp1.example.com"]),
        "go-generate-204": bytes([0x06]) + req(["GET /generate_204 HTTP/1.1", "Host: x", "X-Tailscale-Challenge: abc"]),
        "edge-derp-disabled": bytes([0x07]) + go_derp,
        "edge-no-host": bytes([0x06]) + req(["GET /derp HTTP/1.1", "Upgrade: DERP"]),
        "edge-two-hosts": bytes([0x06]) + req(["GET /derp HTTP/1.1", "Host: a", "host: b", "Upgrade: DERP"]),
        "edge-http10-no-host": bytes([0x06]) + req(["GET /derp?x=1 HTTP/1.0", "Upgrade: derp"]),
        "edge-legacy-websocket": bytes([0x06]) + req(["GET /derp HTTP/1.1", "Host: x", "Upgrade: WebSocket"]),
        "edge-ws-bad-key": bytes([0x06]) + go_ws.replace(WS_KEY.encode(), b"AAAA"),
        "edge-ws-two-keys": bytes([0x06]) + go_ws.replace(b"Upgrade: websocket", b"Sec-WebSocket-Key: %s\r\nUpgrade: websocket" % WS_KEY.encode()),
        "edge-ws-version-8": bytes([0x06]) + go_ws.replace(b"Version: 13", b"Version: 8"),
        "edge-ws-post": bytes([0x06]) + b"POST" + go_ws[3:],
        "edge-ws-no-connection": bytes([0x06]) + go_ws.replace(b"Connection: Upgrade", b"Connection: close"),
        "edge-tls-client-hello": bytes([0x06, 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]),
        "edge-h2-preface": bytes([0x06]) + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "edge-partial": bytes([0x06]) + b"GET /derp HTTP/1.1\r\nHost: x\r\nUpg",
        "edge-too-many-headers": bytes([0x06]) + req(["GET /derp HTTP/1.1", "Host: x", "Upgrade: DERP"] + ["X-%d: y" % i for i in range(70)]),
        # A head just over the 16 KiB cap, complete in one read: must never be upgraded.
        "edge-head-over-cap": bytes([0x06]) + req(["GET /derp HTTP/1.1", "Host: x", "Upgrade: DERP", "X-Pad: " + "a" * (16 * 1024)]) + frames["client_info"],
        "edge-head-over-cap-small-reads": bytes([0x02]) + req(["GET /derp HTTP/1.1", "Host: x", "Upgrade: DERP", "X-Pad: " + "a" * (16 * 1024)]),
        # 16 390 bytes, read 13 at a time: the read that crosses 16 KiB ends at 16 393, after the
        # head; before the fix this head was upgraded.
        "edge-head-over-cap-by-6": bytes([0x00]) + over_cap_by(6) + frames["client_info"],
    }
    for name, data in hh.items():
        write("http_head", name, data)


def over_cap_by(n: int) -> bytes:
    """A complete `Upgrade: DERP` head n bytes longer than the 16 KiB cap."""
    start = b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nX-Pad: "
    pad = 16 * 1024 + n - len(start) - 4
    return start + b"a" * pad + b"\r\n\r\n"


def ws_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A client frame, masked unless mask is empty (RFC 6455 §5.2)."""
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 1 << 16:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def websocket_frames(frames: dict) -> None:
    """Control byte (bits 0-1 how the bytes arrive, bits 2-3 the relay's read size) ‖ frames."""
    ci, ping = frames["client_info"], frames["ping"]
    close = ws_frame(0x8, struct.pack(">H", 1000))
    wf = {
        # Tailscale's wsconn: one binary message per DERP write, then a normal close.
        "go-derp-in-binary": bytes([0x0F]) + ws_frame(0x2, ci) + ws_frame(0x2, ping) + close,
        "go-derp-small-reads": bytes([0x00]) + ws_frame(0x2, ci) + ws_frame(0x2, ping) + close,
        "edge-fragmented": bytes([0x05]) + ws_frame(0x2, ci[:10], fin=False) + ws_frame(0x9, b"hi")
        + ws_frame(0x0, ci[10:20], fin=False) + ws_frame(0x0, ci[20:]) + close,
        "edge-ping-pong": bytes([0x0A]) + ws_frame(0x9, b"ping") + ws_frame(0xA, b"") + ws_frame(0x2, b"x") + close,
        "edge-text": bytes([0x03]) + ws_frame(0x2, b"abc") + ws_frame(0x1, b"hello") + ws_frame(0x2, b"never"),
        "edge-text-not-utf8": bytes([0x03]) + ws_frame(0x1, b"\xff\xfe"),
        "edge-empty-run": bytes([0x03]) + ws_frame(0x2, b"") * 101 + ws_frame(0x2, b"late"),
        "edge-empty-run-reset": bytes([0x03]) + (ws_frame(0x2, b"") * 100 + ws_frame(0x2, b"z")) * 2 + close,
        "edge-unmasked": bytes([0x03]) + ws_frame(0x2, b"abc", mask=b""),
        "edge-rsv": bytes([0x03, 0xC2, 0x83, 0, 0, 0, 0, 1, 2, 3]),
        "edge-len16": bytes([0x03]) + ws_frame(0x2, bytes(range(256)) * 2) + close,
        "edge-len64-huge": bytes([0x03, 0x82, 0xFF]) + struct.pack(">Q", 1 << 40) + bytes(8),
        "edge-continuation-first": bytes([0x03]) + ws_frame(0x0, b"abc"),
        "edge-control-fragmented": bytes([0x03]) + ws_frame(0x9, b"a", fin=False),
        "edge-close-one-byte": bytes([0x03]) + ws_frame(0x8, b"\x03"),
        "edge-close-bad-code": bytes([0x03]) + ws_frame(0x8, struct.pack(">H", 999)),
        "edge-reserved-opcode": bytes([0x03]) + ws_frame(0x3, b"abc"),
        "edge-cut-short": bytes([0x03]) + ws_frame(0x2, b"abcdef")[:-2],
    }
    for name, data in wf.items():
        write("websocket_frames", name, data)


def config_file() -> None:
    """The README's config files, and edge cases of the schema."""
    readme = README.read_text()
    blocks = readme.split("```toml\n")[1:]
    for i, block in enumerate(blocks):
        write("config_file", "readme-%d.toml" % i, block.split("```")[0].encode())
    cf = {
        "empty.toml": b"",
        "dev.toml": b'[listen]\naddr = ":3340"\nstun = false\n',
        "durations.toml": b'[relay]\nkeepalive = "1m30.5s"\nwrite_timeout = "0"\nhandshake_timeout = "1h2m3.000000004s"\n',
        "rate-float.toml": b"[limits]\naccept_connection_limit = 1e-300\naccept_connection_burst = 4294967295\n",
        "rate-nan.toml": b"[limits]\naccept_connection_limit = nan\n",
        "unknown-key.toml": b"[relay]\nqueue_dept = 5\n",
        "wrong-type.toml": b'[relay]\nqueue_depth = "deep"\n',
        "bad-syntax.toml": b"[relay\n",
        "unicode.toml": '[server]\nhome = "blank"\nbootstrap_dns_names = ["ex\u00e4mple.com"]\n'.encode(),
        "dotted-keys.toml": b'listen.addr = "[::1]:443"\ntls.certmode = "letsencrypt"\ntls.hostname = "derp.example.com"\n',
    }
    for name, data in cf.items():
        write("config_file", "edge-" + name, data)


def admission_response() -> None:
    ar = {
        # Headscale's /verify: json.NewEncoder(w).Encode(DERPAdmitClientResponse{...}).
        "headscale-allow": b'{"Allow":true}\n',
        "headscale-deny": b'{"Allow":false}\n',
        "edge-extra-keys": b'{"Allow":true,"Reason":"ok","Nested":{"Allow":false}}',
        "edge-lowercase": b'{"allow":true}',
        "edge-string": b'{"Allow":"true"}',
        "edge-number": b'{"Allow":1}',
        "edge-null": b'{"Allow":null}',
        "edge-missing": b"{}",
        "edge-array": b"[true]",
        "edge-duplicate": b'{"Allow":true,"Allow":false}',
        "edge-bare-true": b"true",
        "edge-trailing": b'{"Allow":true} x',
        "edge-html": b"<html>502 Bad Gateway</html>",
        "edge-empty": b"",
        "edge-not-utf8": b'{"Allow":true,"x":"\xff"}',
    }
    for name, data in ar.items():
        write("admission_response", name, data)


if __name__ == "__main__":
    main()
