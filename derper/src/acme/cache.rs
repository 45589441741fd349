//! What `--certdir` keeps for `letsencrypt` mode, so a restart reuses the account and the
//! certificate instead of ordering again (Let's Encrypt limits duplicate certificates to 5 a
//! week):
//!
//! * `acme-account-<hash>.json`: the ACME account (its URL and P-256 key, as instant-acme
//!   serialises it), one file per directory URL (`<hash>`: 16 hex digits of its SHA-256), so
//!   switching between staging and production never reuses the wrong account. Mode 0600.
//! * `<name>.acme.crt`: the certificate chain (PEM, leaf first) as the CA sent it, and
//!   `<name>.acme.key`: its private key (PKCS#8 PEM, mode 0600), where `<name>` is the first
//!   hostname with the same character filter as manual mode's files. Written key first, each
//!   through a temporary file and a rename, so a crash never leaves a half-written file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use crate::tls::{create_private_dir, write_file};

/// The cache files of one relay's ACME state.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
    account: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A cached certificate chain (leaf first) and its key.
pub(crate) type CachedCert = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    PathBuf,
);

impl Cache {
    /// The files for `directory_url` and `first_hostname` below `dir`.
    pub(crate) fn new(dir: &Path, directory_url: &str, first_hostname: &str) -> Self {
        let stem: String = first_hostname
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .collect();
        let hash = hex::encode(Sha256::digest(directory_url.as_bytes()));
        Self {
            dir: dir.to_owned(),
            account: dir.join(format!("acme-account-{}.json", &hash[..16])),
            cert: dir.join(format!("{stem}.acme.crt")),
            key: dir.join(format!("{stem}.acme.key")),
        }
    }

    /// The certificate file (for messages).
    pub(crate) fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The saved account, if there is a readable one. A damaged file is reported and ignored
    /// (a new account is made and replaces it).
    pub(crate) fn load_account(&self) -> Option<AccountCredentials> {
        let text = match fs::read(&self.account) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.account.display(), error = %e, "cannot read the ACME account; creating a new one");
                return None;
            }
        };
        match serde_json::from_slice(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %self.account.display(), error = %e, "damaged ACME account file; creating a new one");
                None
            }
        }
    }

    /// Saves the account (mode 0600: it holds the account's private key).
    pub(crate) fn save_account(&self, credentials: &AccountCredentials) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(credentials).map_err(io::Error::other)?;
        self.write_atomic(&self.account, &json, 0o600)
    }

    /// The cached certificate and key, if both files exist and parse. Whether they still fit
    /// the configuration (hostnames, key match) is checked by the TLS side.
    pub(crate) fn load_cert(&self) -> Option<CachedCert> {
        let cert_pem = fs::read(&self.cert).ok()?;
        let key_pem = fs::read(&self.key).ok()?;
        let chain = match rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(chain) if !chain.is_empty() => chain,
            _ => {
                tracing::warn!(path = %self.cert.display(), "damaged cached ACME certificate; ordering a new one");
                return None;
            }
        };
        match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
            Ok(Some(key)) => Some((chain, key, self.cert.clone())),
            _ => {
                tracing::warn!(path = %self.key.display(), "damaged cached ACME key; ordering a new certificate");
                None
            }
        }
    }

    /// Saves a new certificate chain (PEM) and its key (PEM).
    pub(crate) fn save_cert(&self, chain_pem: &str, key_pem: &str) -> io::Result<()> {
        self.write_atomic(&self.key, key_pem.as_bytes(), 0o600)?;
        self.write_atomic(&self.cert, chain_pem.as_bytes(), 0o644)
    }

    fn write_atomic(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // A leftover temporary file may have another mode; start from scratch.
        let _ = fs::remove_file(&tmp);
        write_file(&tmp, data, mode)?;
        fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let cache = Cache::new(&dir, "https://acme.test/dir", "derp_1.example.com");
        assert_eq!(cache.cert_path(), dir.join("derp1.example.com.acme.crt"));
        assert!(cache.load_cert().is_none());
        assert!(cache.load_account().is_none());

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["derp.example.com".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        cache.save_cert(&cert.pem(), &key.serialize_pem()).unwrap();
        let (chain, _key, path) = cache.load_cert().expect("cached");
        assert_eq!(chain, vec![cert.der().clone()]);
        assert_eq!(path, cache.cert_path());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.join("derp1.example.com.acme.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Another directory URL is another account file.
        let other = Cache::new(&dir, "https://other.test/dir", "derp.example.com");
        assert_ne!(other.account, cache.account);

        fs::write(&cache.account, "{ not json").unwrap();
        assert!(cache.load_account().is_none(), "damaged file ignored");
        fs::write(cache.cert_path(), "garbage").unwrap();
        assert!(cache.load_cert().is_none(), "damaged certificate ignored");
    }
}
