//! Frame decode and encode cost by payload size: `cargo bench -p derp-proto --bench codec`.
//!
//! A plain `Instant` harness (best of 5 runs) keeps the workspace free of a benchmark framework.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use derp_proto::frame::encode_recv_packet_header;
use derp_proto::{ClientToServer, FrameDecoder, NodePublicKey};

const FRAMES: usize = 20_000;

fn best_of(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    let dst = NodePublicKey::from_bytes([7; 32]);
    println!(
        "{:>8} {:>14} {:>14}",
        "bytes", "decode ns/frm", "encode ns/frm"
    );
    for size in [0usize, 100, 1300, 65_536] {
        let packet = Bytes::from(vec![0xab; size]);
        let mut stream = BytesMut::new();
        for _ in 0..FRAMES {
            ClientToServer::SendPacket {
                dst,
                packet: packet.clone(),
            }
            .encode(&mut stream);
        }
        let decode = best_of(5, || {
            let mut buf = stream.clone();
            let mut dec = FrameDecoder::server();
            let start = Instant::now();
            while let Ok(Some(raw)) = dec.decode(&mut buf) {
                black_box(ClientToServer::decode(raw.ty, raw.payload).ok());
            }
            start.elapsed()
        });
        let mut out = BytesMut::with_capacity(FRAMES.min(64) * (size + 37));
        let encode = best_of(5, || {
            let start = Instant::now();
            for i in 0..FRAMES {
                if i % 64 == 0 {
                    out.clear();
                }
                encode_recv_packet_header(&mut out, &dst, packet.len());
                out.extend_from_slice(&packet);
            }
            black_box(&out);
            start.elapsed()
        });
        println!(
            "{size:>8} {:>14.1} {:>14.1}",
            decode.as_nanos() as f64 / FRAMES as f64,
            encode.as_nanos() as f64 / FRAMES as f64
        );
    }
}
