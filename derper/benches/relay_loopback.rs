//! End-to-end relay cost by message size through an in-process server over loopback TCP, as Go's
//! `BenchmarkSendRecv`: `cargo bench -p derper --bench relay_loopback`.
//!
//! One sender, one receiver, a window of packets in flight; prints packets/s and Mbit/s. For
//! side-by-side numbers against Tailscale's derper use `bench/run.sh` (same tool for both).

use std::time::{Duration, Instant};

use derp_proto::io::tls::ServerVerify;
use derp_proto::io::{Client, ConnectOptions};
use derp_proto::{NodeSecretKey, ServerToClient};
use derper::{Server, ServerConfig};

const PACKETS: usize = 100_000;
/// Packets in flight; below the relay's per-client queue depth (32) so nothing is dropped and
/// the receiver's count is exact.
const WINDOW: usize = 24;

async fn client(url: &str) -> Client {
    let mut o = ConnectOptions::new(url, NodeSecretKey::generate());
    o.verify = ServerVerify::Insecure;
    Client::connect(&o).await.expect("connect")
}

async fn run(url: &str, size: usize) -> Duration {
    let a = client(url).await;
    let b = client(url).await;
    let b_key = b.public_key();
    let (_ar, mut aw) = a.split();
    let (mut br, _bw) = b.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(WINDOW);
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        while got < PACKETS {
            match br.recv().await {
                Ok(ServerToClient::RecvPacket { .. }) => {
                    got += 1;
                    let _ = rx.try_recv();
                }
                Ok(_) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    });
    let packet = vec![0x42; size];
    let start = Instant::now();
    let mut sent = 0;
    while sent < PACKETS {
        // Keep at most WINDOW packets in flight so the relay never drops for queue space.
        let burst = (WINDOW / 3).min(PACKETS - sent);
        for _ in 0..burst {
            if tx.send(()).await.is_err() {
                break;
            }
            aw.queue_packet(&b_key, &packet).expect("queue");
        }
        aw.flush().await.expect("flush");
        sent += burst;
    }
    receiver.await.expect("receiver");
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = Server::spawn(ServerConfig::plain("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("spawn");
        let url = server.derp_url();
        println!("{:>8} {:>12} {:>10}", "bytes", "packets/s", "Mbit/s");
        for size in [100usize, 1300, 16_384] {
            let took = run(&url, size).await;
            let pps = PACKETS as f64 / took.as_secs_f64();
            println!(
                "{size:>8} {pps:>12.0} {:>10.1}",
                pps * size as f64 * 8.0 / 1e6
            );
        }
        server.shutdown().await;
    });
}
