//! Fault injection against our `derper` binary: a mesh peer frozen with SIGSTOP (and thawed),
//! and a key file on a read-only filesystem. In each, the relay keeps serving everyone else
//! and says clearly what happened. (A peer killed with -9: `mesh_process.rs`; descriptors
//! exhausted: `fd_exhaustion.rs`; a webhook that hangs and a garbage rate file:
//! `operator.rs`; a client that stops reading: `slow_client.rs` and `hostile.rs`.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::hostile::{Canary, DerperProcess};
use derp_proto::io::Client;
use derp_proto::io::tls::ServerVerify;
use derp_proto::{NodeSecretKey, ServerToClient};

async fn start(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    args: &[&str],
) -> Option<DerperProcess> {
    DerperProcess::plain(dir, name, port, args).await
}

fn signal(p: &DerperProcess, sig: i32) {
    // SAFETY: kill(2) on a child we started.
    assert_eq!(unsafe { libc::kill(p.pid() as i32, sig) }, 0);
}

/// Whether a packet from `from` reaches `to` within `wait`.
async fn delivered(from: &mut Client, to: &mut Client, wait: Duration) -> bool {
    from.send_packet(&to.public_key(), b"fault").await.unwrap();
    tokio::time::timeout(wait, async {
        loop {
            if let ServerToClient::RecvPacket { src, .. } = to.recv().await.unwrap()
                && src == from.public_key()
            {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_mesh_peer_costs_local_clients_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.psk"), "6b".repeat(32)).unwrap();
    let (pa, pb) = (common::free_port(), common::free_port());
    let psk = dir.path().join("mesh.psk");
    let psk = psk.to_str().unwrap();
    let url = |p: u16| format!("http://127.0.0.1:{p}/derp");
    let mesh = |peer: u16| -> Vec<String> {
        [
            "--mesh-psk-file",
            psk,
            "--mesh-allow-plain",
            "--mesh-with",
            &url(peer),
        ]
        .map(String::from)
        .to_vec()
    };
    let a_args = mesh(pb);
    let b_args = mesh(pa);
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let Some(a) = start(dir.path(), "a", pa, &a_args).await else {
        return;
    };
    let Some(b) = start(dir.path(), "b", pb, &b_args).await else {
        return;
    };
    let canary = Canary::start("a-local", a.options());
    let mut on_a = Client::connect(&a.options()).await.unwrap();
    let mut on_b = Client::connect(&b.options()).await.unwrap();
    // Cross-node works once the links are up.
    let mut up = false;
    for _ in 0..50 {
        if delivered(&mut on_a, &mut on_b, Duration::from_millis(100)).await {
            up = true;
            break;
        }
    }
    assert!(up, "no cross-node delivery before the fault");

    // Freeze b: its socket buffers fill, a's link to it stalls.
    signal(&b, libc::SIGSTOP);
    // 24 MB towards the frozen node: more than its socket buffers and a's link queue (8 MiB)
    // hold, so a must drop (counted), never block.
    for _ in 0..20_000 {
        on_a.send_packet(&on_b.public_key(), &[0u8; 1200])
            .await
            .unwrap();
    }
    // A debug build on a loaded machine takes a while to read 24 MB; poll up to 30 s.
    let mut dropped = false;
    for _ in 0..300 {
        let m = a.scrape().await;
        if common::hostile::metric(
            &m,
            r#"derp_packets_dropped_total{reason="queue_head",kind="other"}"#,
        ) > 0.0
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a still admits new clients and relays between its own clients at once.
    let mut x = Client::connect(&a.options())
        .await
        .expect("fresh client on a");
    let mut y = Client::connect(&a.options())
        .await
        .expect("fresh client on a");
    assert!(delivered(&mut x, &mut y, Duration::from_secs(2)).await);

    assert!(dropped, "{}", a.scrape().await);
    // Thaw: cross-node traffic resumes.
    signal(&b, libc::SIGCONT);
    let mut resumed = false;
    for _ in 0..150 {
        if delivered(&mut on_a, &mut on_b, Duration::from_millis(100)).await {
            resumed = true;
            break;
        }
    }
    assert!(
        resumed,
        "cross-node traffic did not resume:\n{}\n{}",
        a.log(),
        b.log()
    );
    canary
        .caught_up(Duration::from_secs(5))
        .await
        .expect("the canary on a lost nothing while b was frozen");
    assert!(canary.received() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_on_a_read_only_filesystem() {
    let Some(bin) = common::our_derper() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    // A tmpfs we can remount read-only (root does not care about directory modes).
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "mounting a tmpfs needs root; CI runs as root"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (not root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(ro.clone());
    let existing = ro.join("existing.key");
    std::fs::write(
        &existing,
        format!(
            "{{\"PrivateKey\": \"{}\"}}",
            NodeSecretKey::generate().to_text()
        ),
    )
    .unwrap();
    assert!(
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&ro)
            .status()
            .unwrap()
            .success()
    );

    // A key that does not exist yet cannot be created: a clear start-up error naming the file.
    let missing = ro.join("derper.key");
    let out = Command::new(&bin)
        .args(["-a", "127.0.0.1:0", "--stun=false", "-c"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(err.to_lowercase().contains("read-only"), "{err}");

    // An existing key on a read-only filesystem is all a relay needs.
    let port = common::free_port();
    let mut relay = Command::new(&bin)
        .args(["-a", &format!("127.0.0.1:{port}"), "--stun=false", "-c"])
        .arg(&existing)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(common::wait_for_port(port).await);
    let c = Client::connect(&common::options(
        &format!("http://127.0.0.1:{port}/derp"),
        ServerVerify::Insecure,
        derp_proto::io::Transport::Upgrade,
    ))
    .await;
    relay.kill().unwrap();
    relay.wait().unwrap();
    c.expect("relay with a key on a read-only filesystem serves");
}
