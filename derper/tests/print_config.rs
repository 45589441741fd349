//! `derper --print-config` from the built binary: it prints a config file that the binary
//! accepts back unchanged, and refuses bad files naming the key.

use std::process::{Command, Output};

fn derper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_derper"))
        .args(args)
        .output()
        .expect("run derper")
}

#[test]
fn print_config_round_trips_through_the_binary() {
    let first = derper(&[
        "-dev",
        "-keepalive=45s",
        "--queue-depth",
        "64",
        "--print-config",
    ]);
    assert!(first.status.success(), "{first:?}");
    let printed = String::from_utf8(first.stdout).expect("utf-8");
    assert!(printed.contains("keepalive = \"45s\""), "{printed}");
    assert!(printed.contains("queue_depth = 64"), "{printed}");
    assert!(printed.contains("addr = \"127.0.0.1:3340\""), "{printed}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("derper.toml");
    std::fs::write(&path, &printed).expect("write config");
    let path = path.to_str().expect("utf-8 path");
    let second = derper(&["--dev", "--config-file", path, "--print-config"]);
    assert!(second.status.success(), "{second:?}");
    assert_eq!(String::from_utf8_lossy(&second.stdout), printed);
}

#[test]
fn bad_config_file_is_a_start_up_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("derper.toml");
    std::fs::write(&path, "[relay]\nkeepalive = \"60s\"\nqueue_dpth = 3\n").expect("write");
    let out = derper(&["--dev", "--config-file", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`relay.queue_dpth`"), "{stderr}");
    assert!(stderr.contains("derper.toml"), "{stderr}");
}
