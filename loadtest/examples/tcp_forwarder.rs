//! Physical ceiling for `bench/run.sh` (design.md §7): a bare TCP forwarder and a driver for it,
//! with the topology of a `loadtest pairs` run against a relay but no DERP logic at all.
//!
//! ```text
//! tcp_forwarder serve 127.0.0.1:PORT
//! tcp_forwarder drive 127.0.0.1:PORT PAIRS SIZE DURATION_SECS JSON_FILE
//! ```
//!
//! `serve`: every accepted connection first sends 8 bytes (pair id, side: two big-endian u32);
//! the two sides of a pair are then joined with `copy_bidirectional` (64 KiB buffers), so every
//! byte crosses two loopback TCP connections and one userspace copy, as through a relay.
//!
//! `drive`: 2 × PAIRS connections (TCP_NODELAY, like the relay clients); every connection writes
//! SIZE-byte buffers as fast as the socket takes them (open loop, like `loadtest --max`) and
//! counts what arrives from its partner. After a 0.5 s warm-up, bytes received over DURATION_SECS
//! are reported as a `loadtest`-shaped JSON (`traffic.bytes_received`, `packets_per_sec` =
//! bytes / SIZE, `bits_per_sec`; `bytes_total` counts from the start). No framing, no sequence numbers, no crypto: a ceiling.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Waiting = Arc<Mutex<HashMap<u32, TcpStream>>>;

async fn serve(addr: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    let waiting: Waiting = Arc::default();
    loop {
        let (mut conn, _) = listener.accept().await?;
        let waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            conn.set_nodelay(true).ok();
            let mut hdr = [0u8; 8];
            if conn.read_exact(&mut hdr).await.is_err() {
                return;
            }
            let pair = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let other = waiting.lock().await.remove(&pair);
            match other {
                None => {
                    waiting.lock().await.insert(pair, conn);
                }
                Some(mut other) => {
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut conn, &mut other, 65536, 65536,
                    )
                    .await;
                }
            }
        });
    }
}

async fn drive(
    addr: String,
    pairs: u32,
    size: usize,
    secs: f64,
    json: String,
) -> anyhow::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    for pair in 0..pairs {
        for side in 0..2u32 {
            let mut conn = TcpStream::connect(&addr).await?;
            conn.set_nodelay(true)?;
            let mut hdr = [0u8; 8];
            hdr[..4].copy_from_slice(&pair.to_be_bytes());
            hdr[4..].copy_from_slice(&side.to_be_bytes());
            conn.write_all(&hdr).await?;
            let (mut rd, mut wr) = conn.into_split();
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
            tokio::spawn(async move {
                let buf = vec![0x5au8; size];
                while wr.write_all(&buf).await.is_ok() {}
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (t0, b0) = (Instant::now(), received.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (t1, b1) = (Instant::now(), received.load(Ordering::Relaxed));
    let measured = (t1 - t0).as_secs_f64();
    let bytes = b1 - b0;
    let report = serde_json::json!({
        "scenario": "tcp-forward",
        "target": addr,
        "measured_secs": measured,
        "config": { "pairs": pairs, "size": size },
        "traffic": {
            "bytes_received": bytes,
            // Since the first connection (warm-up included): the denominator for the
            // forwarder's CPU s/GB, whose CPU time bench/run.sh reads over the whole run.
            "bytes_total": b1,
            "packets_per_sec": bytes as f64 / size as f64 / measured,
            "bits_per_sec": 8.0 * bytes as f64 / measured,
        },
    });
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "tcp-forward pairs={pairs} size={size}: {:.1} Mbit/s, {:.0} writes/s",
        8.0 * bytes as f64 / measured / 1e6,
        bytes as f64 / size as f64 / measured
    );
    std::process::exit(0);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr] => serve((*addr).to_owned()).await,
        ["drive", addr, pairs, size, secs, json] => {
            drive(
                (*addr).to_owned(),
                pairs.parse()?,
                size.parse()?,
                secs.parse()?,
                (*json).to_owned(),
            )
            .await
        }
        _ => anyhow::bail!(
            "usage: tcp_forwarder serve ADDR | drive ADDR PAIRS SIZE DURATION_SECS JSON_FILE"
        ),
    }
}
