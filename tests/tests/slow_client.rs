//! A client that stops reading must not slow anyone else; its drops are counted.

mod common;

use std::time::Duration;

use derp_proto::NodeSecretKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_does_not_delay_others() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("install recorder");
    let server = common::plain_server().await;
    let url = server.derp_url();

    // The stalled client: handshakes, then never reads again.
    let stalled = common::connect(&url).await;
    let stalled_key = stalled.public_key();
    let (_stalled_reader, _stalled_writer) = stalled.split();

    let mut flooder = common::connect(&url).await;
    let mut a = common::connect(&url).await;
    let mut b = common::connect(&url).await;

    // Fill the stalled client's socket buffers and queue: 64 MiB of 64 KiB packets.
    let big = vec![7u8; 65_536];
    let flood = tokio::spawn(async move {
        for _ in 0..1024 {
            if flooder.send_packet(&stalled_key, &big).await.is_err() {
                break;
            }
        }
        flooder
    });

    // Meanwhile a and b exchange 500 packets with every one delivered, in order.
    for i in 0u32..500 {
        a.send_packet(&b.public_key(), &i.to_be_bytes())
            .await
            .unwrap();
        let (src, p) = common::recv_packet(&mut b).await;
        assert_eq!(src, a.public_key());
        assert_eq!(p, i.to_be_bytes());
    }
    let _flooder = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .unwrap()
        .unwrap();

    // The stalled client's excess was dropped and counted as queue head drops (the write
    // deadline itself is covered with paused time in the relay's unit tests).
    let text = recorder.render();
    let dropped: f64 = text
        .lines()
        .filter(|l| l.starts_with("derp_packets_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dropped > 0.0, "no drops counted:\n{text}");
    let _ = NodeSecretKey::generate();
}
