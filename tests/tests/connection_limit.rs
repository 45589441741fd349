//! `--max-connections` refuses extra connections at accept while existing clients go on.
//!
//! Its own test binary: `fd_exhaustion.rs` lowers the process's descriptor limit, which would
//! break any test running beside it in the same process.

mod common;

#[tokio::test]
async fn connection_limit_refuses_extra_connections() {
    let mut config = derper::ServerConfig::plain("127.0.0.1:0".parse().unwrap());
    config.max_connections = Some(2);
    let server = derper::Server::spawn(config).await.unwrap();
    let url = server.derp_url();
    let mut a = common::connect(&url).await;
    let mut b = common::connect(&url).await;
    let third = derp_proto::io::Client::connect(&common::options(
        &url,
        derp_proto::io::tls::ServerVerify::Insecure,
        derp_proto::io::Transport::Upgrade,
    ))
    .await;
    assert!(third.is_err(), "a third connection must be refused");
    a.send_packet(&b.public_key(), b"ok").await.unwrap();
    assert_eq!(common::recv_packet(&mut b).await.1, b"ok");
}
