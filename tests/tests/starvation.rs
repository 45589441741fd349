//! Clients that stream small valid frames as fast as they can, without reading, must not make
//! the relay drop or delay other people's traffic.
//!
//! A reader working through bytes already buffered never reaches a socket `.await`, so tokio's
//! cooperative budget alone never makes it yield; with as many flooders as worker threads the
//! other connections' readers and writers would wait. The relay gives every frame a fairness
//! point, so an unrelated pair loses nothing.

mod common;

use std::time::Duration;

use derp_proto::{ClientToServer, NodeSecretKey, ServerToClient};

/// Starts `n` flooders against `url`: even ones stream Pings, odd ones 1-byte sends to random
/// keys, 512 frames per write, never reading. Returns their tasks.
async fn flooders(url: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = common::connect(url).await;
        let (reader, mut writer) = client.split();
        tasks.push(tokio::spawn(async move {
            let _never_read = reader;
            let random = NodeSecretKey::generate().public_key();
            loop {
                for _ in 0..512 {
                    if i % 2 == 0 {
                        writer.queue(&ClientToServer::Ping([7; 8]));
                    } else {
                        writer.queue_packet(&random, &[1]).unwrap();
                    }
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
        }));
    }
    tasks
}

/// A canary pair sending `rate` numbered packets per second for `secs` seconds; returns the
/// numbers received.
async fn canary(url: &str, rate: u64, secs: u64) -> (u64, Vec<u32>) {
    let a = common::connect(url).await;
    let b = common::connect(url).await;
    let b_key = b.public_key();
    let (_a_reader, mut a_writer) = a.split();
    let (mut b_reader, _b_writer) = b.split();
    let total = rate * secs;
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        while (got.len() as u64) < total {
            match tokio::time::timeout(Duration::from_secs(3), b_reader.recv()).await {
                Ok(Ok(ServerToClient::RecvPacket { packet, .. })) => {
                    got.push(u32::from_be_bytes(packet[..4].try_into().unwrap()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        got
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for i in 0..total as u32 {
        tick.tick().await;
        let mut p = [0u8; 64];
        p[..4].copy_from_slice(&i.to_be_bytes());
        a_writer.send_packet(&b_key, &p).await.unwrap();
    }
    (total, receiver.await.unwrap())
}

async fn flood_run(flooder_count: usize) {
    let server = common::plain_server().await;
    let url = server.derp_url();
    let flood = flooders(&url, flooder_count).await;
    // Let the flood reach full speed before the canaries start.
    tokio::task::yield_now().await;
    let (slow, fast) = tokio::join!(canary(&url, 200, 2), canary(&url, 1000, 2));
    for t in flood {
        t.abort();
    }
    for (rate, (total, got)) in [(200, slow), (1000, fast)] {
        assert_eq!(
            got.len() as u64,
            total,
            "{flooder_count} flooders: canary at {rate} pkt/s lost {} of {total}",
            total - got.len() as u64
        );
        assert!(got.windows(2).all(|w| w[0] < w[1]), "canary reordered");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flooders_do_not_starve_a_canary_pair() {
    flood_run(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_flooders_do_not_starve_a_canary_pair() {
    flood_run(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_flooders_do_not_starve_a_canary_pair() {
    flood_run(8).await;
}
