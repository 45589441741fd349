//! `stunner::Server` over real loopback sockets: Tailscale requests (IPv4, IPv6, dual-stack),
//! standard requests decoded by `stun-rs` as an independent client, RFC 5780 mode on 127.0.0.1 +
//! 127.0.0.2, and robustness against garbage.

use std::net::SocketAddr;
use std::time::Duration;

use derp_proto::stun::{self, TxId};
use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin, ResponsePort,
};
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MappedAddress, Software, UnknownAttributes, XorMappedAddress,
};
use stun_rs::methods::BINDING;
use stun_rs::{
    DecoderContextBuilder, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder,
    StunAttribute, StunMessage, StunMessageBuilder, TransactionId,
};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

/// A running server that stops when dropped.
struct Running {
    addrs: Vec<SocketAddr>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(config: stunner::Config) -> Self {
        let server = stunner::Server::bind(config).await.expect("bind");
        let addrs = server.local_addrs();
        let cancel = CancellationToken::new();
        let task = Some(server.spawn(cancel.clone()));
        Self {
            addrs,
            cancel,
            task,
        }
    }

    async fn listen(addrs: &[&str], batch: usize) -> Self {
        Self::start(stunner::Config {
            listen: addrs.iter().map(|a| a.parse().expect("addr")).collect(),
            batch,
            ..Default::default()
        })
        .await
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            timeout(WAIT, task)
                .await
                .expect("server stops on cancel")
                .expect("server task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn client(bind: &str) -> (UdpSocket, SocketAddr) {
    let sock = UdpSocket::bind(bind).await.expect("client bind");
    let local = sock.local_addr().expect("local addr");
    (sock, local)
}

async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("response within 5 s")
        .expect("recv");
    buf.truncate(n);
    (buf, from)
}

async fn expect_silence(sock: &UdpSocket) {
    let mut buf = [0u8; 2048];
    let r = timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
    assert!(
        r.is_err(),
        "unexpected answer: {:02x?}",
        r.map(|x| x.map(|(n, _)| buf[..n].to_vec()))
    );
}

/// A Tailscale round trip: exact request, response parsed by our client code.
async fn tailscale_round_trip(sock: &UdpSocket, local: SocketAddr, server: SocketAddr, tx: u8) {
    let tx = TxId([tx; 12]);
    sock.send_to(&stun::binding_request(tx), server)
        .await
        .expect("send");
    let (resp, from) = recv(sock).await;
    assert_eq!(from, server);
    let want_len = if local.ip().to_canonical().is_ipv4() {
        32
    } else {
        44
    };
    assert_eq!(resp.len(), want_len, "{resp:02x?}");
    let (got_tx, mapped) = stun::parse_binding_response(&resp).expect("parse response");
    assert_eq!(got_tx, tx);
    assert_eq!(mapped, local);
}

fn encode(msg: &StunMessage) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, msg)
        .expect("encode");
    buf[..n].to_vec()
}

fn decode(b: &[u8]) -> StunMessage {
    let ctx = DecoderContextBuilder::default().with_validation().build();
    MessageDecoderBuilder::default()
        .with_context(ctx)
        .build()
        .decode(b)
        .expect("stun-rs decodes the response")
        .0
}

fn standard_request(attrs: Vec<StunAttribute>) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::default());
    for a in attrs {
        b = b.with_attribute(a);
    }
    encode(&b.with_attribute(Fingerprint::default()).build())
}

fn xor_mapped(msg: &StunMessage) -> SocketAddr {
    *msg.get::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .as_xor_mapped_address()
        .expect("xor")
        .socket_address()
}

fn other_address(msg: &StunMessage) -> Option<SocketAddr> {
    msg.get::<OtherAddress>()
        .map(|a| *a.as_other_address().expect("other").socket_address())
}

fn response_origin(msg: &StunMessage) -> Option<SocketAddr> {
    msg.get::<ResponseOrigin>()
        .map(|a| *a.as_response_origin().expect("origin").socket_address())
}

#[tokio::test]
async fn tailscale_ipv4_and_ipv6() {
    for batch in [1, 32] {
        let server = Running::listen(&["127.0.0.1:0", "[::1]:0"], batch).await;
        assert_eq!(server.addrs.len(), 2);
        let (v4, v4_local) = client("127.0.0.1:0").await;
        let (v6, v6_local) = client("[::1]:0").await;
        for i in 0..3 {
            tailscale_round_trip(&v4, v4_local, server.addrs[0], i).await;
            tailscale_round_trip(&v6, v6_local, server.addrs[1], i).await;
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn dual_stack_answers_ipv4_in_ipv4_family() {
    let server = Running::listen(&["[::]:0"], stunner::defaults::BATCH).await;
    let port = server.addrs[0].port();
    let (v4, v4_local) = client("127.0.0.1:0").await;
    // Seen by the server as ::ffff:127.0.0.1; answered as family 1, 32 bytes.
    tailscale_round_trip(&v4, v4_local, SocketAddr::from(([127, 0, 0, 1], port)), 7).await;
    let (v6, v6_local) = client("[::1]:0").await;
    tailscale_round_trip(
        &v6,
        v6_local,
        SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port)),
        8,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn standard_client() {
    let server = Running::listen(&["127.0.0.1:0", "[::1]:0"], stunner::defaults::BATCH).await;
    for (bind, addr) in [
        ("127.0.0.1:0", server.addrs[0]),
        ("[::1]:0", server.addrs[1]),
    ] {
        let (sock, local) = client(bind).await;
        let req = standard_request(vec![Software::new("derp-tests").expect("software").into()]);
        sock.send_to(&req, addr).await.expect("send");
        let (resp, _) = recv(&sock).await;
        assert!(resp.len() <= 3 * req.len());
        let msg = decode(&resp);
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert_eq!(xor_mapped(&msg), local);
        let mapped = *msg
            .get::<MappedAddress>()
            .expect("MAPPED-ADDRESS")
            .as_mapped_address()
            .expect("mapped")
            .socket_address();
        assert_eq!(mapped, local);
        let software = msg.get::<Software>().expect("SOFTWARE");
        assert_eq!(
            software.as_software().expect("software").as_str(),
            stun::SERVER_SOFTWARE
        );
        assert!(msg.get::<Fingerprint>().is_some());
        assert_eq!(
            other_address(&msg),
            None,
            "no RFC 5780 attributes by default"
        );

        // Asking for a change without RFC 5780 mode: 420 naming CHANGE-REQUEST.
        let req = standard_request(vec![
            ChangeRequest::new(Some(
                ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort,
            ))
            .into(),
        ]);
        sock.send_to(&req, addr).await.expect("send");
        let (resp, _) = recv(&sock).await;
        let msg = decode(&resp);
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        let code = msg.get::<ErrorCode>().expect("ERROR-CODE");
        assert_eq!(
            code.as_error_code()
                .expect("code")
                .error_code()
                .error_code(),
            420
        );
        let unknown = msg.get::<UnknownAttributes>().expect("UNKNOWN-ATTRIBUTES");
        assert_eq!(
            unknown.as_unknown_attributes().expect("list").attributes(),
            &[0x0003]
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn rfc5780_mode() {
    let server = Running::start(stunner::Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        other_address: Some("127.0.0.2:0".parse().expect("addr")),
        ..Default::default()
    })
    .await;
    let [primary, primary_alt_port, alt_ip, other] = server.addrs[..] else {
        panic!("four addresses in RFC 5780 mode: {:?}", server.addrs);
    };
    assert_eq!(primary.ip(), primary_alt_port.ip());
    assert_eq!(alt_ip.ip(), other.ip());
    assert_eq!(primary.port(), alt_ip.port());
    assert_eq!(primary_alt_port.port(), other.port());
    assert_ne!(primary.ip(), other.ip());
    assert_ne!(primary.port(), other.port());

    let (sock, local) = client("127.0.0.1:0").await;
    let ask = |flags: Option<ChangeRequest>| {
        standard_request(flags.into_iter().map(StunAttribute::from).collect())
    };

    // No change: answered from the primary, which RESPONSE-ORIGIN names; OTHER-ADDRESS is the
    // address differing in both IP and port.
    sock.send_to(&ask(None), primary).await.expect("send");
    let (resp, from) = recv(&sock).await;
    let msg = decode(&resp);
    assert_eq!(from, primary);
    assert_eq!(xor_mapped(&msg), local);
    assert_eq!(other_address(&msg), Some(other));
    assert_eq!(response_origin(&msg), Some(primary));

    // Each CHANGE-REQUEST is answered from the socket it names.
    for (flags, want_from) in [
        (
            ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort,
            other,
        ),
        (ChangeRequestFlags::ChangePort.into(), primary_alt_port),
        (ChangeRequestFlags::ChangeIp.into(), alt_ip),
    ] {
        sock.send_to(&ask(Some(ChangeRequest::new(Some(flags)))), primary)
            .await
            .expect("send");
        let (resp, from) = recv(&sock).await;
        let msg = decode(&resp);
        assert_eq!(from, want_from, "flags {flags:?}");
        assert_eq!(response_origin(&msg), Some(want_from));
        assert_eq!(other_address(&msg), Some(other));
        assert_eq!(xor_mapped(&msg), local);
    }

    // A request to the alternate address names the primary as OTHER-ADDRESS.
    sock.send_to(&ask(None), other).await.expect("send");
    let (resp, from) = recv(&sock).await;
    assert_eq!(from, other);
    assert_eq!(other_address(&decode(&resp)), Some(primary));

    // RESPONSE-PORT: the answer goes to another port of the same IP.
    let (sock2, local2) = client("127.0.0.1:0").await;
    let req = standard_request(vec![ResponsePort::from(local2.port()).into()]);
    sock.send_to(&req, primary).await.expect("send");
    let (resp, from) = recv(&sock2).await;
    assert_eq!(from, primary);
    assert_eq!(
        xor_mapped(&decode(&resp)),
        local,
        "mapped is the request's source"
    );
    expect_silence(&sock).await;

    // Tailscale requests are answered exactly as without RFC 5780.
    tailscale_round_trip(&sock, local, primary, 9).await;
    server.stop().await;
}

#[tokio::test]
async fn garbage_never_stops_the_loop() {
    for batch in [1, 32] {
        let server = Running::listen(&["127.0.0.1:0"], batch).await;
        let addr = server.addrs[0];
        let (sock, local) = client("127.0.0.1:0").await;
        let good = stun::binding_request(TxId([1; 12]));
        let mut bad_fp = good;
        bad_fp[39] ^= 1;
        let mut junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 19],
            vec![0xff; 1500],
            vec![0; 4000], // larger than a batched receive slot
            bad_fp.to_vec(),
            good[..39].to_vec(),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ];
        let mut x: u32 = 0x1234_5678;
        for len in 0..200usize {
            let mut d = good.to_vec();
            d.resize(20 + len % 60, 0);
            for b in &mut d[20..] {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            junk.push(d);
        }
        for d in &junk {
            sock.send_to(d, addr).await.expect("send junk");
        }
        // None of that was answered ...
        tailscale_round_trip(&sock, local, addr, 2).await;
        expect_silence(&sock).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn reuseport_sockets_share_the_port() {
    let server = Running::start(stunner::Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        sockets_per_addr: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(server.addrs.len(), 1);
    for i in 0..16 {
        let (sock, local) = client("127.0.0.1:0").await;
        tailscale_round_trip(&sock, local, server.addrs[0], i).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn bind_errors() {
    let err = stunner::Server::bind(stunner::Config {
        listen: vec![],
        ..Default::default()
    })
    .await
    .expect_err("empty listen list");
    assert!(matches!(err, stunner::BindError::NoListenAddress));
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let err = stunner::Server::bind(stunner::Config {
        listen: vec![taken.local_addr().expect("addr")],
        ..Default::default()
    })
    .await
    .expect_err("port in use");
    assert!(matches!(err, stunner::BindError::Bind { .. }), "{err}");
    let err = stunner::Server::bind(stunner::Config {
        listen: vec!["0.0.0.0:0".parse().expect("addr")],
        other_address: Some("127.0.0.2:0".parse().expect("addr")),
        ..Default::default()
    })
    .await
    .expect_err("wildcard in RFC 5780 mode");
    assert!(matches!(err, stunner::BindError::Rfc5780(_)), "{err}");
}
