//! The Prometheus endpoint shows the relay's counters moving.

mod common;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    drop(listener);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(metrics_addr)
        .install()
        .unwrap();
    let server = common::plain_server().await;
    let url = server.derp_url();
    let mut a = common::connect(&url).await;
    let mut b = common::connect(&url).await;
    for _ in 0..10 {
        a.send_packet(&b.public_key(), &[9u8; 100]).await.unwrap();
        common::recv_packet(&mut b).await;
    }
    let nobody = derp_proto::NodeSecretKey::generate().public_key();
    a.send_packet(&nobody, b"x").await.unwrap();
    a.send(&derp_proto::ClientToServer::NotePreferred(true))
        .await
        .unwrap();
    b.send(&derp_proto::ClientToServer::NotePreferred(false))
        .await
        .unwrap();
    assert!(
        common::eventually(|| async {
            value(
                &common::hostile::scrape(metrics_addr).await,
                "derp_current_home_connections",
            ) == 1.0
        })
        .await
    );
    let text = common::hostile::scrape(metrics_addr).await;
    assert_eq!(value(&text, "derp_accepts_total"), 2.0, "{text}");
    assert_eq!(value(&text, "derp_current_connections"), 2.0, "{text}");
    assert_eq!(value(&text, "derp_packets_sent_total"), 10.0, "{text}");
    assert_eq!(value(&text, "derp_bytes_sent_total"), 1000.0, "{text}");
    assert_eq!(
        value(&text, "derp_packets_received_total{kind=\"other\"}"),
        11.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "derp_packets_dropped_total{reason=\"unknown_dest\",kind=\"other\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(text.contains("# HELP derp_packets_dropped_total"), "{text}");
    assert_eq!(value(&text, "derp_current_home_connections"), 1.0, "{text}");
    drop(a);
    assert!(
        common::eventually(|| async {
            value(
                &common::hostile::scrape(metrics_addr).await,
                "derp_current_connections",
            ) == 1.0
        })
        .await
    );
    let text = common::hostile::scrape(metrics_addr).await;
    assert_eq!(value(&text, "derp_current_connections"), 1.0, "{text}");
    assert_eq!(value(&text, "derp_current_home_connections"), 0.0, "{text}");
}
