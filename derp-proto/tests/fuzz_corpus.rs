//! Replays the committed fuzz corpus through the harnesses, so every `cargo test` re-runs every
//! input the fuzzers were seeded with or found (rustls: `test_read_fuzz_corpus`).
//!
//! The corpus lives in `fuzz/corpus/<target>/`, one directory per target in
//! `fuzz/fuzz_targets/`; a crash input committed there stays fixed. Targets whose harness is in
//! `derper::fuzzing` are replayed by `derper/tests/fuzz_corpus.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use derp_proto::fuzzing;

/// A harness: takes any bytes, panics only on a broken invariant.
type Harness = fn(&[u8]);

/// Every fuzz target and the harness it calls.
const TARGETS: [(&str, Harness); 9] = [
    ("frame_decoder", fuzzing::frame_decoder),
    ("client_messages", fuzzing::client_messages),
    ("server_messages", fuzzing::server_messages),
    ("handshake_server", fuzzing::handshake_server),
    ("client_info_open", fuzzing::client_info_open),
    ("stun_request", fuzzing::stun_request),
    ("mesh_datagram", fuzzing::mesh_datagram),
    ("presence_frames", fuzzing::presence_frames),
    ("stun_response", fuzzing::stun_response),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let harness = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap();
    let dir = fuzz_dir().join("corpus").join(target);
    let inputs = files(&dir);
    assert!(!inputs.is_empty(), "{}: empty corpus", dir.display());
    for path in inputs {
        let data = fs::read(&path).unwrap();
        // Name the input in the failure, then let the harness's own panic message follow.
        let result = std::panic::catch_unwind(|| harness(&data));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn frame_decoder() {
    replay("frame_decoder");
}

#[test]
fn client_messages() {
    replay("client_messages");
}

#[test]
fn server_messages() {
    replay("server_messages");
}

#[test]
fn handshake_server() {
    replay("handshake_server");
}

#[test]
fn client_info_open() {
    replay("client_info_open");
}

#[test]
fn stun_request() {
    replay("stun_request");
}

#[test]
fn mesh_datagram() {
    replay("mesh_datagram");
}

#[test]
fn presence_frames() {
    replay("presence_frames");
}

#[test]
fn stun_response() {
    replay("stun_response");
}

/// Every corpus directory has a target in `fuzz/` and the other way round; each target calls
/// the harness of its name, here or in `derper::fuzzing` (whose replay test checks its own).
#[test]
fn targets_and_corpus_match() {
    let fuzz = fuzz_dir();
    let mut corpus: Vec<String> = fs::read_dir(fuzz.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    corpus.sort();
    let mut targets: Vec<String> = files(&fuzz.join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    targets.sort();
    assert_eq!(
        corpus, targets,
        "fuzz/corpus/ directories and fuzz/fuzz_targets/ files"
    );
    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for name in &targets {
        let target = fs::read_to_string(fuzz.join(format!("fuzz_targets/{name}.rs"))).unwrap();
        let ours = TARGETS.iter().any(|(n, _)| n == name);
        let crate_name = if ours { "derp_proto" } else { "derper" };
        assert!(
            target.contains(&format!("{crate_name}::fuzzing::{name}(data)")),
            "fuzz_targets/{name}.rs must call {crate_name}::fuzzing::{name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} not in Cargo.toml"
        );
    }
    for (name, _) in TARGETS {
        assert!(
            targets.iter().any(|t| t == name),
            "no fuzz target for {name}"
        );
    }
}
