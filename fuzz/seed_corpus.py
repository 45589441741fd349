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


if __name__ == "__main__":
    main()
