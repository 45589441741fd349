//! derper's private key file: `{"PrivateKey": "privkey:<hex>"}`.

use std::io::Write;
use std::path::{Path, PathBuf};

use derp_proto::NodeSecretKey;
use serde::{Deserialize, Serialize};

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file exists but could not be read.
    #[error("reading key file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but does not hold a valid key. It is never silently replaced.
    #[error("key file {path} is not valid ({reason}); fix or remove it")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A new key could not be written.
    #[error("writing key file {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct KeyFileJson {
    #[serde(rename = "PrivateKey")]
    private_key: String,
}

/// Loads the key at `path`, creating it (mode 0600, atomically, parent directories too) if the
/// file does not exist.
pub fn load_or_create(path: &Path) -> Result<NodeSecretKey, KeyFileError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            warn_if_readable_by_others(path, "server key");
            parse(path, &bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(source) => Err(KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Why a secret file is exposed, if it is: readable or writable by the group or by others.
/// `None` when only the owner has access (or the mode cannot be read).
pub fn exposure(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0)
        .then(|| format!("mode {mode:04o} lets users other than its owner read it; chmod 600 it"))
}

/// Logs (once, at start-up) a secret file that users other than its owner can read. The
/// relay still starts: refusing would break existing deployments, as Go's derper does not
/// check either.
pub fn warn_if_readable_by_others(path: &Path, what: &str) {
    if let Some(why) = exposure(path) {
        tracing::warn!(path = %path.display(), "{what} file is exposed: {why}");
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<NodeSecretKey, KeyFileError> {
    let invalid = |reason: String| KeyFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let json: KeyFileJson = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    json.private_key
        .parse()
        .map_err(|e: derp_proto::key::KeyParseError| invalid(e.to_string()))
}

fn create(path: &Path) -> Result<NodeSecretKey, KeyFileError> {
    let write_err = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let key = NodeSecretKey::generate();
    // Tab-indented like Go's json.MarshalIndent output.
    let body = format!("{{\n\t\"PrivateKey\": \"{}\"\n}}", key.to_text());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("derper.key"),
        std::process::id()
    ));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        f.write_all(body.as_bytes()).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
    }
    // Rename is atomic: a crash leaves either no key file or a complete one.
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_err(e)
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_then_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/derper.key");
        let k1 = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"PrivateKey\": \"privkey:"));
        let k2 = load_or_create(&path).unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
    }

    #[test]
    fn invalid_file_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("derper.key");
        std::fs::write(&path, b"{\"PrivateKey\": \"nope\"}").unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("not valid"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"PrivateKey\": \"nope\"}");
    }

    #[test]
    fn reads_go_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("derper.key");
        let hex = "58".repeat(32);
        std::fs::write(
            &path,
            format!("{{\n\t\"PrivateKey\": \"privkey:{hex}\"\n}}"),
        )
        .unwrap();
        let k = load_or_create(&path).unwrap();
        assert_eq!(k.to_text(), format!("privkey:{hex}"));
    }

    #[test]
    fn group_or_world_access_is_reported() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("derper.key");
        load_or_create(&path).unwrap();
        assert_eq!(exposure(&path), None, "created files are 0600");
        for (mode, exposed) in [
            (0o600, false),
            (0o400, false),
            (0o640, true),
            (0o644, true),
            (0o602, true),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = exposure(&path);
            assert_eq!(got.is_some(), exposed, "{mode:o}: {got:?}");
            if let Some(why) = got {
                assert!(why.contains(&format!("{mode:04o}")), "{why}");
            }
        }
        assert_eq!(exposure(&dir.path().join("missing")), None);
    }
}
