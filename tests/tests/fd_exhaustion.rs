//! Running out of file descriptors at accept is back-pressure, not a failure: existing clients
//! go on, the event is counted, and accepts resume once descriptors are free. This test binary
//! lowers its own open-file limit, so it runs in its own process.

mod common;

fn set_nofile(soft: u64) {
    let mut lim = libc_rlimit();
    lim.0 = soft;
    // SAFETY: setrlimit reads a valid struct we own.
    let rc = unsafe {
        libc::setrlimit(
            libc::RLIMIT_NOFILE,
            &libc::rlimit {
                rlim_cur: lim.0,
                rlim_max: lim.1,
            },
        )
    };
    assert_eq!(rc, 0);
}

fn libc_rlimit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_survives_descriptor_exhaustion() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let mut config = derper::ServerConfig::plain("127.0.0.1:0".parse().unwrap());
    config.max_connections = Some(10_000);
    let server = derper::Server::spawn(config).await.unwrap();
    let url = server.derp_url();
    let mut a = common::connect(&url).await;
    let mut b = common::connect(&url).await;

    // Leave room for only a few more descriptors, then open raw connections until the server
    // can no longer accept (each costs one descriptor here and one in the server: same process).
    let (orig_soft, _) = libc_rlimit();
    set_nofile(open_fds() + 12);
    let mut hogs = Vec::new();
    for _ in 0..40 {
        match tokio::net::TcpStream::connect(server.local_addr()).await {
            Ok(s) => hogs.push(s),
            Err(_) => break,
        }
    }
    let counted = || {
        recorder.render().lines().any(|l| {
            l.starts_with("derp_accept_errors_total{reason=\"fd_exhausted\"}") && !l.ends_with(" 0")
        })
    };
    assert!(
        common::eventually(|| std::future::ready(counted())).await,
        "no fd exhaustion counted:\n{}",
        recorder.render()
    );

    // Existing clients are unaffected.
    a.send_packet(&b.public_key(), b"still relaying")
        .await
        .unwrap();
    assert_eq!(common::recv_packet(&mut b).await.1, b"still relaying");

    // Free descriptors: accepts resume.
    drop(hogs);
    set_nofile(orig_soft);
    // The accept loop retries on its own; the handshake completes once it does.
    let mut c = common::connect(&url).await;
    c.send_packet(&a.public_key(), b"new client").await.unwrap();
    assert_eq!(common::recv_packet(&mut a).await.1, b"new client");
}
