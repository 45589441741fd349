//! The relay core over in-memory pipes: the reader, the on-demand writer and their deadlines,
//! on paused time where a timer is involved.

use std::collections::HashSet;
use std::time::Duration;

use bytes::BytesMut;
use derp_proto::handshake::{self as proto, ClientInfo};
use derp_proto::io::FramedRead;
use derp_proto::{ClientToServer, FrameDecoder, FrameType, MeshKey, NodePublicKey, NodeSecretKey};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use super::*;

/// The client end of a connection accepted over a duplex pipe.
struct TestClient {
    key: NodePublicKey,
    reader: FramedRead<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
    accept: tokio::task::JoinHandle<Result<(), AcceptError>>,
}

impl TestClient {
    async fn send(&mut self, msg: &ClientToServer) {
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        self.writer.write_all(&out).await.unwrap();
    }
}

fn relay() -> Relay {
    Relay::new(
        RelayConfig::new(NodeSecretKey::generate()),
        Arc::new(Metrics::new()),
    )
}

/// Connects over a pipe of `capacity` bytes and completes the handshake.
async fn connect(relay: &Relay, capacity: usize) -> TestClient {
    connect_as(
        relay,
        capacity,
        &NodeSecretKey::generate(),
        ClientInfo::new(),
    )
    .await
}

/// [`connect`] with the client's key and ClientInfo given.
async fn connect_as(
    relay: &Relay,
    capacity: usize,
    me: &NodeSecretKey,
    client_info: ClientInfo,
) -> TestClient {
    let (server_io, client_io) = tokio::io::duplex(capacity);
    let meta = ConnMeta::new("127.0.0.1:1".parse().unwrap(), TransportKind::Upgrade);
    let accept = tokio::spawn({
        let relay = relay.clone();
        async move { relay.accept(server_io, BytesMut::new(), meta).await }
    });
    let (r, mut writer) = tokio::io::split(client_io);
    let mut reader = FramedRead::new(r, FrameDecoder::client(), BytesMut::new());
    let server_key = proto::read_server_key(&reader.read_frame().await.unwrap()).unwrap();
    let mut out = BytesMut::new();
    proto::write_client_info(&mut out, me, &server_key, &client_info);
    writer.write_all(&out).await.unwrap();
    let info = reader.read_frame().await.unwrap();
    assert_eq!(
        info.ty,
        FrameType::SERVER_INFO,
        "ServerInfo is the second frame"
    );
    TestClient {
        key: me.public_key(),
        reader,
        writer,
        accept,
    }
}

/// Lets every ready task run (paused time does not advance while tasks are runnable).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_has_no_writer_task() {
    let relay = relay();
    let mut c = connect(&relay, 64 * 1024).await;
    settle().await;
    assert_eq!(relay.inner.tasks.len(), 0, "no writer while idle");

    // A Ping spawns a writer for the Pong, which parks again afterwards.
    c.send(&ClientToServer::Ping(*b"pingpong")).await;
    let pong = c.reader.read_frame().await.unwrap();
    assert_eq!(pong.ty, FrameType::PONG);
    assert_eq!(&pong.payload[..], b"pingpong");
    settle().await;
    assert_eq!(
        relay.inner.tasks.len(),
        0,
        "writer ended once the outbox was empty"
    );
}

#[tokio::test(start_paused = true)]
async fn packets_flow_and_the_writer_parks_between_bursts() {
    let relay = relay();
    let mut a = connect(&relay, 64 * 1024).await;
    let mut b = connect(&relay, 64 * 1024).await;
    for round in 0..3u8 {
        for i in 0..10u8 {
            a.send(&ClientToServer::SendPacket {
                dst: b.key,
                packet: Bytes::from(vec![round, i]),
            })
            .await;
        }
        for i in 0..10u8 {
            let f = b.reader.read_frame().await.unwrap();
            assert_eq!(f.ty, FrameType::RECV_PACKET);
            assert_eq!(&f.payload[..32], a.key.as_bytes());
            assert_eq!(&f.payload[32..], &[round, i]);
        }
        settle().await;
        assert_eq!(relay.inner.tasks.len(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_stops_reading_is_cut_at_the_write_deadline() {
    let relay = relay();
    let deadline = relay.inner.config.settings.write_timeout.unwrap();
    let mut a = connect(&relay, 64 * 1024).await;
    // A 4 KiB pipe that nobody reads: the writer blocks once it is full.
    let stalled = connect(&relay, 4096).await;
    let started = tokio::time::Instant::now();
    for _ in 0..64 {
        a.send(&ClientToServer::SendPacket {
            dst: stalled.key,
            packet: Bytes::from(vec![0u8; 1024]),
        })
        .await;
    }
    let ended = tokio::time::timeout(deadline * 3, stalled.accept)
        .await
        .expect("the stalled connection is closed")
        .unwrap();
    assert!(ended.is_ok());
    let took = started.elapsed();
    assert!(
        took >= deadline && took < deadline * 2,
        "closed after {took:?}, deadline {deadline:?}"
    );
    assert_eq!(relay.client_count(), 1, "only the sender is left");
    // The sender was never slowed: it still gets its Pong at once.
    a.send(&ClientToServer::Ping([1; 8])).await;
    assert_eq!(a.reader.read_frame().await.unwrap().ty, FrameType::PONG);
}

#[tokio::test(start_paused = true)]
async fn draining_refuses_new_connections_and_says_restarting() {
    let relay = relay();
    let mut c = connect(&relay, 64 * 1024).await;
    let shutdown = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .shutdown(Duration::from_secs(5), Duration::from_millis(500))
                .await
        }
    });
    // Clients are told in a Health frame (shown by Tailscale clients) and in Restarting.
    let f = c.reader.read_frame().await.unwrap();
    assert_eq!(f.ty, FrameType::HEALTH);
    let text = String::from_utf8(f.payload.to_vec()).unwrap();
    assert!(text.contains("draining"), "{text}");
    let f = c.reader.read_frame().await.unwrap();
    assert_eq!(f.ty, FrameType::RESTARTING);
    assert!(matches!(relay.phase(), Phase::Draining { .. }));
    assert!(!relay.is_ready());
    let (server_io, _client_io) = tokio::io::duplex(1024);
    let meta = ConnMeta::new("127.0.0.1:2".parse().unwrap(), TransportKind::Upgrade);
    assert!(matches!(
        relay.accept(server_io, BytesMut::new(), meta).await,
        Err(AcceptError::Draining)
    ));
    shutdown.await.unwrap();
    assert_eq!(relay.phase(), Phase::Stopped);
    assert!(c.accept.await.unwrap().is_ok());
}

/// A silent connection still hears from the server: KeepAlive every period plus this
/// connection's jitter (under 5 s), so clients never hit their 120 s read timeout.
#[tokio::test(start_paused = true)]
async fn an_idle_client_gets_keepalives_on_the_period() {
    let relay = relay();
    let period = relay.inner.config.settings.keepalive;
    let mut c = connect(&relay, 64 * 1024).await;
    let mut previous = tokio::time::Instant::now();
    for n in 1..=3u32 {
        let f = tokio::time::timeout(period + Duration::from_secs(5), c.reader.read_frame())
            .await
            .expect("a keepalive within period + jitter")
            .unwrap();
        assert_eq!(f.ty, FrameType::KEEP_ALIVE);
        assert!(f.payload.is_empty());
        let now = tokio::time::Instant::now();
        let gap = now - previous;
        assert!(
            gap >= period && gap < period + Duration::from_secs(5),
            "keepalive {n} after {gap:?}"
        );
        previous = now;
    }
    // Between keepalives the connection is idle: no writer task.
    settle().await;
    assert_eq!(relay.inner.tasks.len(), 0);
}

/// A mesh watcher that does not read while clients come and go (its writer is stuck on a full
/// pipe) then hears each key's latest state: a key that churned is a frame or two, not one
/// per event, and nothing is lost.
#[tokio::test(start_paused = true)]
async fn a_watcher_that_falls_behind_still_ends_with_the_latest_state() {
    let mesh_key: MeshKey = "ab".repeat(32).parse().unwrap();
    let mut config = RelayConfig::new(NodeSecretKey::generate());
    config.mesh_key = Some(mesh_key.clone());
    let relay = Relay::new(config, Arc::new(Metrics::new()));
    let mut info = ClientInfo::new();
    info.mesh_key = Some(mesh_key);
    // Room for about one frame: the writer blocks on the flood.
    let mut watcher = connect_as(&relay, 64, &NodeSecretKey::generate(), info).await;
    let mut stay = Vec::new();
    for _ in 0..20 {
        stay.push(connect(&relay, 1024).await);
    }
    watcher.send(&ClientToServer::WatchConns).await;
    settle().await;
    // While the watcher is not reading: 20 more arrive, 10 of the first leave, and one key
    // comes and goes 50 times, ending connected.
    for _ in 0..20 {
        stay.push(connect(&relay, 1024).await);
    }
    for c in stay.drain(..10) {
        drop(c);
    }
    let churner = NodeSecretKey::generate();
    for _ in 0..49 {
        drop(connect_as(&relay, 1024, &churner, ClientInfo::new()).await);
        settle().await;
    }
    let _churner = connect_as(&relay, 1024, &churner, ClientInfo::new()).await;
    settle().await;

    let mut view = HashSet::new();
    let mut churner_frames = 0;
    while let Ok(f) =
        tokio::time::timeout(Duration::from_secs(1), watcher.reader.read_frame()).await
    {
        let f = f.unwrap();
        let msg = derp_proto::ServerToClient::decode(f.ty, f.payload).unwrap();
        match msg {
            derp_proto::ServerToClient::PeerPresent { peer, .. } => {
                churner_frames += usize::from(peer == churner.public_key());
                view.insert(peer);
            }
            derp_proto::ServerToClient::PeerGone { peer, .. } => {
                churner_frames += usize::from(peer == churner.public_key());
                view.remove(&peer);
            }
            _ => {}
        }
    }
    let mut expected: HashSet<NodePublicKey> = stay.iter().map(|c| c.key).collect();
    expected.insert(watcher.key);
    expected.insert(churner.public_key());
    assert_eq!(view, expected);
    // 99 changes; at most one frame in the pipe, one in the writer's hands, one pending.
    assert!(
        churner_frames <= 3,
        "{churner_frames} frames for the churned key"
    );
}

/// An unknown frame type up to `MAX_UNKNOWN_FRAME_LEN` is skipped and counted; one announced
/// longer closes the connection from its header alone, as in Go v1.104, where the relay used
/// to discard whatever length the client announced (4 GiB here) for as long as it liked.
#[tokio::test(start_paused = true)]
async fn an_unknown_frame_over_the_bound_closes_the_connection() {
    use derp_proto::consts::MAX_UNKNOWN_FRAME_LEN;
    use derp_proto::io::ReadFrameError;

    let (metrics, handle) = crate::metrics::recorded();
    let relay = Relay::new(
        RelayConfig::new(NodeSecretKey::generate()),
        Arc::new(metrics),
    );
    let mut c = connect(&relay, 256 * 1024).await;
    c.send(&ClientToServer::Unknown {
        ty: FrameType(0x7f),
        len: MAX_UNKNOWN_FRAME_LEN,
    })
    .await;
    c.send(&ClientToServer::Ping(*b"stillup!")).await;
    let pong = c.reader.read_frame().await.unwrap();
    assert_eq!(pong.ty, FrameType::PONG);
    assert_eq!(&pong.payload[..], b"stillup!");
    let unknown = "derp_unknown_frames_total";
    assert_eq!(crate::metrics::sample(&handle, unknown), 1.0);

    c.writer
        .write_all(&[0x7f, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    // Paused time: if the relay waited for the payload, this timeout would fire instead.
    let end = tokio::time::timeout(Duration::from_secs(1), c.reader.read_frame())
        .await
        .expect("closed without waiting for the payload");
    assert!(matches!(end, Err(ReadFrameError::Closed)), "{end:?}");
    c.accept.await.unwrap().unwrap();
    assert_eq!(
        crate::metrics::sample(&handle, unknown),
        1.0,
        "the refused frame is not counted as skipped"
    );
}

/// `--rate-config` applies backpressure: a sender over its rate is slowed, not dropped; it is
/// told in a Health frame while it is held back, and the line clears once it keeps to the
/// rate. A new limit reaches connected clients without a reconnect.
#[tokio::test(start_paused = true)]
async fn rate_limit_slows_a_sender_without_dropping_and_says_so() {
    let relay = relay();
    let mut a = connect(&relay, 64 * 1024).await;
    let mut b = connect(&relay, 1 << 20).await;
    // 100 kB/s with the smallest burst (one full frame): a 1 000-byte packet every 10 ms.
    relay.set_rate_config(RateConfig {
        bytes_per_sec: 100_000,
        burst_bytes: 0,
    });
    let packets = 400u32;
    let start = tokio::time::Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..packets {
            let mut p = vec![0u8; 1000];
            p[..4].copy_from_slice(&i.to_be_bytes());
            a.send(&ClientToServer::SendPacket {
                dst: b.key,
                packet: p.into(),
            })
            .await;
        }
        a
    });
    let mut health = Vec::new();
    let mut next = 0u32;
    while next < packets {
        let f = b.reader.read_frame().await.unwrap();
        if f.ty == FrameType::RECV_PACKET {
            let n = u32::from_be_bytes(f.payload[32..36].try_into().unwrap());
            assert_eq!(n, next, "every packet, in order");
            next += 1;
        }
    }
    let mut a = sender.await.unwrap();
    // 400 kB at 100 kB/s after a 65 kB burst: at least 3.3 s of (paused) time.
    assert!(
        start.elapsed() >= Duration::from_millis(3300),
        "{:?}",
        start.elapsed()
    );
    // The sender heard about it, and heard it clear once it stopped.
    loop {
        let f = a.reader.read_frame().await.unwrap();
        if f.ty == FrameType::HEALTH {
            let text = String::from_utf8(f.payload.to_vec()).unwrap();
            let cleared = text.is_empty();
            health.push(text);
            if cleared {
                break;
            }
        }
    }
    assert!(
        health[0].contains("limits each client to 100000 bytes/s"),
        "{health:?}"
    );
    assert_eq!(health.last().map(String::as_str), Some(""));
    // Limit off, applied to the live connection: a burst goes through at once.
    relay.set_rate_config(RateConfig::default());
    let t = tokio::time::Instant::now();
    for _ in 0..200 {
        a.send(&ClientToServer::SendPacket {
            dst: b.key,
            packet: vec![1u8; 1000].into(),
        })
        .await;
    }
    let mut got = 0;
    while got < 200 {
        if b.reader.read_frame().await.unwrap().ty == FrameType::RECV_PACKET {
            got += 1;
        }
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
}
