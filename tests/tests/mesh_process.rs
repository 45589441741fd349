//! Mesh faults with real processes: `kill -9` a node of a meshed region of our `derper`
//! binaries (configured with the same flags an operator writes) and restart it; traffic
//! between surviving clients never stops, and cross-node traffic resumes once the node is back.
//! Runs over TCP (plain HTTP links) and over QUIC (`--quic-port`, `quic://` peers, TLS with a
//! test CA passed as `--mesh-ca`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mesh::{OurLink, OurRegion};
use derp_proto::ServerToClient;
use derp_proto::io::Client;

struct Node {
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(bin: &Path, net: &OurRegion, dir: &Path, name: &str, port: u16, peers: &str) -> Node {
    let mut cmd = Command::new(bin);
    cmd.args(["-a", &format!("127.0.0.1:{port}"), "--stun=false"])
        .arg("-c")
        .arg(dir.join(format!("{name}.key")))
        .arg("--mesh-psk-file")
        .arg(&net.region.psk_file)
        .args(["--mesh-with", peers]);
    match net.link {
        OurLink::Tcp => {
            cmd.arg("--mesh-allow-plain");
        }
        OurLink::Quic => {
            let certs = dir.join(format!("{name}-certs"));
            net.region.ca.install_leaf(&certs);
            cmd.args(["--certmode", "manual", "--hostname", common::mesh::HOSTNAME])
                .args(["--http-port", "-1", "--quic-port", &port.to_string()])
                .arg("--certdir")
                .arg(&certs)
                .arg("--mesh-ca")
                .arg(&net.region.ca.ca_pem);
        }
    }
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start derper");
    Node { child }
}

/// Sends probes from `from` to `to` until one arrives; returns how long that took.
async fn until_delivered(from: &mut Client, to: &mut Client) -> Duration {
    let start = Instant::now();
    loop {
        from.send_packet(&to.public_key(), b"probe")
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_millis(10), async {
            loop {
                if let ServerToClient::RecvPacket { src, .. } = to.recv().await.expect("recv")
                    && src == from.public_key()
                {
                    return;
                }
            }
        })
        .await;
        if got.is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no delivery in 15 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_a_node_over_tcp() {
    kill_9_and_restart_a_node(OurLink::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_a_node_over_quic() {
    kill_9_and_restart_a_node(OurLink::Quic).await;
}

async fn kill_9_and_restart_a_node(link: OurLink) {
    let Some(bin) = common::our_derper() else {
        return;
    };
    let net = OurRegion::new(link);
    let dir = tempfile::tempdir().unwrap();
    let ports = [
        common::free_port(),
        common::free_port(),
        common::free_port(),
    ];
    let peers = ports
        .iter()
        .map(|p| net.entry(*p))
        .collect::<Vec<_>>()
        .join(",");
    let urls: Vec<String> = ports.iter().map(|p| net.url(*p)).collect();
    let mut nodes: Vec<Node> = ["n0", "n1", "n2"]
        .iter()
        .zip(ports)
        .map(|(name, port)| start_node(&bin, &net, dir.path(), name, port, &peers))
        .collect();
    for p in ports {
        assert!(common::wait_for_port(p).await, "node on {p} did not start");
    }
    let mut a = common::connect(&urls[0]).await;
    let mut b = common::connect(&urls[1]).await;
    let mut c = common::connect(&urls[2]).await;
    until_delivered(&mut a, &mut b).await;
    until_delivered(&mut a, &mut c).await;

    // kill -9 node 2: its links vanish without a goodbye.
    let killed = &mut nodes[2].child;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(killed.id() as i32, libc::SIGKILL) }, 0);
    killed.wait().unwrap();
    drop(c);
    // Clients on the surviving nodes keep talking throughout.
    for i in 0..50u8 {
        a.send_packet(&b.public_key(), &[i]).await.unwrap();
        loop {
            let (src, data) = common::recv_packet(&mut b).await;
            if src == a.public_key() && data == [i] {
                break;
            }
        }
    }

    // Restart it (same key file, same flags) and measure how soon cross-node traffic flows.
    nodes[2] = start_node(&bin, &net, dir.path(), "n2", ports[2], &peers);
    assert!(common::wait_for_port(ports[2]).await);
    let accepting = Instant::now();
    let mut c = common::connect(&urls[2]).await;
    let from_a = until_delivered(&mut a, &mut c).await;
    let to_b = until_delivered(&mut c, &mut b).await;
    eprintln!(
        "{link:?}: restarted node: A→C flowed {:?} after it accepted connections; C→B after a further {to_b:?}",
        accepting.elapsed() - to_b,
    );
    let _ = from_a;
}
