//! Per-datagram cost of the STUN hot path: `derp_proto::stun` (hand-rolled) against `stun-rs`
//! decoding the same request and encoding an equivalent response.
//!
//! `cargo bench -p stunner --bench stun`. Prints ns per operation and the ratio; the numbers
//! back the "why hand-rolled" note in `derp_proto::stun`. A plain `Instant` harness keeps the
//! workspace free of a benchmark framework dependency; each figure is the best of 5 runs.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use derp_proto::stun::{self, TxId};
use stun_rs::attributes::stun::{Fingerprint, MappedAddress, Software, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    DecoderContextBuilder, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder,
    StunMessageBuilder,
};

const ITERS: u32 = 200_000;

fn best_of<F: FnMut()>(mut f: F) -> Duration {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..ITERS {
                f();
            }
            start.elapsed() / ITERS
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let tx = TxId(*b"0123456789ab");
    let src: SocketAddr = "192.0.2.1:32853".parse().expect("literal address");
    let req = stun::binding_request(tx);

    let mut out = Vec::with_capacity(256);
    let ours_tailscale = best_of(|| {
        out.clear();
        let parsed = stun::parse_binding_request(black_box(&req)).expect("valid request");
        stun::binding_response(&parsed, black_box(src), None, &mut out);
        black_box(&out);
    });

    let standard = {
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(Software::new("bench client").expect("software"))
            .with_attribute(Fingerprint::default())
            .build();
        let mut buf = [0u8; 128];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &msg)
            .expect("encode");
        buf[..n].to_vec()
    };
    let ours_standard = best_of(|| {
        out.clear();
        let parsed = stun::parse_binding_request(black_box(&standard)).expect("valid request");
        stun::binding_response(&parsed, black_box(src), None, &mut out);
        black_box(&out);
    });

    let decoder = MessageDecoderBuilder::default()
        .with_context(DecoderContextBuilder::default().with_validation().build())
        .build();
    let encoder = MessageEncoderBuilder::default().build();
    let mut buf = [0u8; 256];
    let stun_rs_tailscale = best_of(|| {
        let (msg, _) = decoder.decode(black_box(&req)).expect("decode");
        let resp = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(*msg.transaction_id())
            .with_attribute(XorMappedAddress::from(black_box(src)))
            .build();
        black_box(encoder.encode(&mut buf, &resp).expect("encode"));
    });
    let stun_rs_standard = best_of(|| {
        let (msg, _) = decoder.decode(black_box(&standard)).expect("decode");
        let resp = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(*msg.transaction_id())
            .with_attribute(XorMappedAddress::from(black_box(src)))
            .with_attribute(MappedAddress::from(src))
            .with_attribute(Software::new("stunner").expect("software"))
            .with_attribute(Fingerprint::default())
            .build();
        black_box(encoder.encode(&mut buf, &resp).expect("encode"));
    });

    println!("parse + respond, ns per request (best of 5 x {ITERS})");
    println!(
        "{:<32} {:>10} {:>10} {:>8}",
        "request", "ours", "stun-rs", "ratio"
    );
    for (name, ours, theirs) in [
        ("tailscale 40 B", ours_tailscale, stun_rs_tailscale),
        ("standard + FINGERPRINT", ours_standard, stun_rs_standard),
    ] {
        println!(
            "{:<32} {:>10} {:>10} {:>7.1}x",
            name,
            ours.as_nanos(),
            theirs.as_nanos(),
            theirs.as_secs_f64() / ours.as_secs_f64().max(1e-12)
        );
    }
}
