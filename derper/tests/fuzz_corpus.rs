//! Replays the committed fuzz corpus of the derper-side targets through `derper::fuzzing`, so
//! every `cargo test` re-runs every input the fuzzers were seeded with or found. The
//! protocol crate's targets are replayed by `derp-proto/tests/fuzz_corpus.rs`, which also
//! checks that every corpus directory has a target.

use std::fs;
use std::path::{Path, PathBuf};

use derper::fuzzing;

/// A harness: takes any bytes, panics only on a broken invariant.
type Harness = fn(&[u8]);

/// Every derper-side fuzz target and the harness it calls.
const TARGETS: [(&str, Harness); 4] = [
    ("http_head", fuzzing::http_head),
    ("websocket_frames", fuzzing::websocket_frames),
    ("config_file", fuzzing::config_file),
    ("admission_response", fuzzing::admission_response),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn replay(target: &str) {
    let harness = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap();
    let dir = fuzz_dir().join("corpus").join(target);
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: empty corpus", dir.display());
    for path in inputs {
        let data = fs::read(&path).unwrap();
        // Name the input in the failure, then let the harness's own panic message follow.
        let result = std::panic::catch_unwind(|| harness(&data));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn http_head() {
    replay("http_head");
}

#[test]
fn websocket_frames() {
    replay("websocket_frames");
}

#[test]
fn config_file() {
    replay("config_file");
}

#[test]
fn admission_response() {
    replay("admission_response");
}

/// Each target here has its file in `fuzz/fuzz_targets/` calling this crate's harness.
#[test]
fn targets_call_derper() {
    let fuzz = fuzz_dir();
    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        let target = fs::read_to_string(fuzz.join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{name}.rs: {e}"));
        assert!(
            target.contains(&format!("derper::fuzzing::{name}(data)")),
            "fuzz_targets/{name}.rs must call derper::fuzzing::{name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} not in Cargo.toml"
        );
    }
}
