//! Mesh faults with real processes: `kill -9` a node of a meshed region of our `derper`
//! binaries (configured with the same flags an operator writes) and restart it; traffic
//! between surviving clients never stops, and cross-node traffic resumes once the node is back.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn start_node(bin: &Path, dir: &Path, name: &str, port: u16, peers: &str) -> Node {
    let psk = dir.join("mesh.psk");
    let child = Command::new(bin)
        .args(["-a", &format!("127.0.0.1:{port}"), "--stun=false"])
        .arg("-c")
        .arg(dir.join(format!("{name}.key")))
        .arg("--mesh-psk-file")
        .arg(&psk)
        .args(["--mesh-with", peers, "--mesh-allow-plain"])
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
async fn kill_9_and_restart_a_node() {
    let Some(bin) = common::our_derper() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.psk"), "5a".repeat(32)).unwrap();
    let ports = [
        common::free_port(),
        common::free_port(),
        common::free_port(),
    ];
    let peers = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/derp"))
        .collect::<Vec<_>>()
        .join(",");
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/derp"))
        .collect();
    let mut nodes: Vec<Node> = ["n0", "n1", "n2"]
        .iter()
        .zip(ports)
        .map(|(name, port)| start_node(&bin, dir.path(), name, port, &peers))
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
    nodes[2] = start_node(&bin, dir.path(), "n2", ports[2], &peers);
    assert!(common::wait_for_port(ports[2]).await);
    let accepting = Instant::now();
    let mut c = common::connect(&urls[2]).await;
    let from_a = until_delivered(&mut a, &mut c).await;
    let to_b = until_delivered(&mut c, &mut b).await;
    eprintln!(
        "restarted node: A→C flowed {:?} after it accepted connections; C→B after a further {to_b:?}",
        accepting.elapsed() - to_b,
    );
    let _ = from_a;
}
