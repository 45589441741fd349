//! Bursts that arrive in one read reach a receiver that keeps up, with no loss.
//!
//! Real WireGuard-over-TCP bulk traffic arrives as many SendPacket frames per read. The relay
//! must not head-drop them just because the destination's writer had no chance to run while
//! the sender's reader worked through its buffer.

mod common;

use std::time::Duration;

use derp_proto::ServerToClient;

/// Sends `bursts` bursts of `per_burst` packets of `size` bytes, each burst queued and
/// flushed as one write, and returns how many the receiver got.
async fn burst_delivery(per_burst: usize, size: usize, bursts: usize) -> usize {
    let server = common::plain_server().await;
    let url = server.derp_url();
    let a = common::connect(&url).await;
    let b = common::connect(&url).await;
    let b_key = b.public_key();
    let (_a_reader, mut a_writer) = a.split();
    let (mut b_reader, _b_writer) = b.split();

    let expected = per_burst * bursts;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let receiver = tokio::spawn(async move {
        let mut got = 0usize;
        while got < expected {
            match tokio::time::timeout(Duration::from_secs(2), b_reader.recv()).await {
                Ok(Ok(ServerToClient::RecvPacket { packet, .. })) => {
                    assert_eq!(packet.len(), size);
                    got += 1;
                    let _ = progress_tx.send(got);
                }
                Ok(Ok(_)) => {}
                // Nothing for two seconds: whatever was lost is lost.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        got
    });
    let packet = vec![0x42u8; size];
    for burst in 1..=bursts {
        for _ in 0..per_burst {
            a_writer.queue_packet(&b_key, &packet).unwrap();
        }
        a_writer.flush().await.unwrap();
        // Send the next burst once this one arrived, as a window-limited sender would (or
        // once the receiver gave up waiting, if packets were lost).
        let _ = progress.wait_for(|got| *got >= burst * per_burst).await;
    }
    let got = receiver.await.unwrap();
    server.shutdown().await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_eight_queue_depths_lose_nothing_1200_bytes() {
    // 8 × the default queue depth (32) in one write.
    let got = burst_delivery(256, 1200, 10).await;
    assert_eq!(got, 2560, "packets lost from bursts of 256 × 1200 B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_eight_queue_depths_lose_nothing_100_bytes() {
    let got = burst_delivery(256, 100, 10).await;
    assert_eq!(got, 2560, "packets lost from bursts of 256 × 100 B");
}
