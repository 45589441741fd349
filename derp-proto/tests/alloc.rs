//! The per-packet path allocates nothing: decoding a frame from the read buffer, turning it into
//! a message, and encoding the RecvPacket header into a reserved write buffer. A counting global
//! allocator (per thread, so parallel tests do not interfere) is the Rust form of Go's
//! `testing.AllocsPerRun`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use derp_proto::frame::encode_recv_packet_header;
use derp_proto::{ClientToServer, FrameDecoder, NodePublicKey};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: delegates to the system allocator; the counter is a thread-local Cell (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn decoding_packets_allocates_nothing_per_frame() {
    const FRAMES: usize = 1000;
    let dst = NodePublicKey::from_bytes([7; 32]);
    let packet = Bytes::from(vec![0xab; 1300]);
    let mut stream = BytesMut::new();
    for _ in 0..FRAMES + 1 {
        ClientToServer::SendPacket {
            dst,
            packet: packet.clone(),
        }
        .encode(&mut stream);
    }
    let mut decoder = FrameDecoder::server();
    // The first split turns the buffer into a shared one (one allocation); then none per frame.
    let first = decoder.decode(&mut stream).unwrap().unwrap();
    drop(first);

    let before = allocs();
    let mut kept = 0usize;
    for _ in 0..FRAMES {
        let raw = decoder.decode(&mut stream).unwrap().unwrap();
        match ClientToServer::decode(raw.ty, raw.payload) {
            Ok(ClientToServer::SendPacket { dst: d, packet: p }) => {
                assert_eq!(d, dst);
                kept += p.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let per_frame = (allocs() - before) as f64 / FRAMES as f64;
    assert_eq!(kept, FRAMES * 1300);
    assert_eq!(per_frame, 0.0, "allocations per decoded frame");
}

#[test]
fn encoding_recv_headers_into_a_reserved_buffer_allocates_nothing() {
    let src = NodePublicKey::from_bytes([1; 32]);
    let packet = [0u8; 1300];
    let mut out = BytesMut::with_capacity(64 * (1300 + 37));
    let before = allocs();
    for _ in 0..64 {
        encode_recv_packet_header(&mut out, &src, packet.len());
        out.extend_from_slice(&packet);
    }
    assert_eq!(allocs() - before, 0);
}
