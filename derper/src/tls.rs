//! TLS for the relay's main listener: where the certificate comes from (`--certmode`), the DERP
//! metacert appended to every chain, the SNI policy, and certificate reload.
//!
//! This mirrors Tailscale's `cmd/derper/cert.go` (manual mode) and
//! `derp/derpserver.initMetacert`:
//!
//! * `manual` mode reads `<certdir>/<name>.crt` (PEM chain) and `<certdir>/<name>.key`, where
//!   `<name>` is `--hostname` with every character outside `[A-Za-z0-9.-]` removed. The leaf must
//!   be valid for `--hostname`.
//! * If `--hostname` is an IP literal and either file is missing, an ECDSA P-256 self-signed
//!   certificate (1 year, CN and IP SAN = the IP) is generated and written there in the same
//!   format Go writes (PEM `CERTIFICATE` 0644, SEC1 `EC PRIVATE KEY` 0600, directory 0700), so a
//!   certdir can move between the Go and Rust relays. Clients then pin it with
//!   `CertName: "sha256-raw:<hex>"`.
//! * With a DNS `--hostname`, a ClientHello whose SNI is not that hostname (including no SNI) is
//!   refused, as Go's `manualCertManager.getCertificate` does; with an IP hostname any SNI is
//!   served.
//! * Every chain ends with the metacert (see [`derp_proto::cert::server_key_from_certs`]).
//! * `letsencrypt` mode gets its certificate from [`crate::acme`], which builds the same
//!   resolver through [`acme_setup`] and swaps each new certificate in with
//!   [`CertReloader::install`]; its resolver also answers TLS-ALPN-01 (`acme-tls/1`)
//!   handshakes from the CA.
//!
//! Swapping a certificate only changes what new handshakes get: established connections keep
//! the session they negotiated and are never dropped.
//!
//! The ring provider is passed explicitly; the process-wide default is never consulted.

use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use derp_proto::cert::der::{DerReader, TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE};
use derp_proto::cert::{METACERT_CN_PREFIX, parse_cert_summary, pin_cert_name};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{CertificateError, InconsistentKeys, ServerConfig};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// DERP protocol version announced in the metacert's serial number (Go: `derp.ProtocolVersion`).
const DERP_PROTOCOL_VERSION: u8 = 2;

/// Half-width of the metacert's validity window around start-up. Go uses ±30 days; Windows
/// clients need both bounds set.
const METACERT_HALF_LIFETIME: time::Duration = time::Duration::days(30);

/// The only ALPN protocol offered for service, as Go's manual mode does. DERP clients send no
/// ALPN.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737); offered only in
/// `letsencrypt` mode, and a connection that negotiates it is closed after the handshake.
pub const ALPN_ACME_TLS_1: &[u8] = b"acme-tls/1";

/// How the relay gets its certificate (derper's `--certmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertMode {
    /// Load `<certdir>/<name>.crt` and `.key`; self-sign for IP hostnames when missing.
    Manual,
    /// ACME (Let's Encrypt or another CA): set up by [`crate::acme`], not by [`load`].
    LetsEncrypt,
}

/// Inputs of [`load`].
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Certificate source.
    pub cert_mode: CertMode,
    /// `--certdir`: where `<name>.crt` and `<name>.key` live (created if self-signing).
    pub cert_dir: PathBuf,
    /// `--hostname`: a DNS name or an IP literal.
    pub hostname: String,
}

/// A ready TLS server configuration plus facts about the certificate served at start-up
/// ([`TlsSetup::current`] describes the one served now, after reloads and renewals).
#[derive(Debug)]
pub struct TlsSetup {
    /// Config for the main listener (TLS 1.2+, ALPN `http/1.1`, SNI policy, metacert).
    pub config: Arc<ServerConfig>,
    /// `sha256-raw:<hex>` for DERPMap `CertName` when `--hostname` is an IP literal (Go logs the
    /// same pin in that case, whether or not it generated the certificate); `None` otherwise.
    pub cert_pin: Option<String>,
    /// Lowercase hex SHA-256 of the leaf certificate's DER; empty in `letsencrypt` mode when
    /// no certificate was cached yet.
    pub leaf_sha256_hex: String,
    /// End of the leaf's validity window ([`UNIX_EPOCH`] when there is no certificate yet).
    pub not_after: SystemTime,
    /// Whether this load generated and wrote a self-signed certificate.
    pub generated: bool,
    reloader: CertReloader,
}

impl TlsSetup {
    /// A handle that re-reads the certificate files (e.g. on SIGHUP) and swaps them into
    /// [`TlsSetup::config`] without restarting the listener.
    pub fn reloader(&self) -> CertReloader {
        self.reloader.clone()
    }

    /// The certificate mode this setup serves.
    pub fn cert_mode(&self) -> CertMode {
        match self.reloader.inner.paths {
            Some(_) => CertMode::Manual,
            None => CertMode::LetsEncrypt,
        }
    }

    /// Facts about the certificate new handshakes get now; `None` while `letsencrypt` mode
    /// waits for its first certificate.
    pub fn current(&self) -> Option<CertInfo> {
        self.reloader.current()
    }

    /// The DERPNode JSON Go's derper logs for IP hostnames, for pasting into a DERPMap.
    pub fn derp_node_hint(&self) -> Option<String> {
        let pin = self.cert_pin.as_deref()?;
        let host = self.reloader.inner.hosts.first()?.name.as_str();
        // The hostname is an IP literal here, so it needs no JSON escaping.
        Some(format!(
            r#"{{"Name":"custom","RegionID":900,"HostName":"{host}","CertName":"{pin}"}}"#
        ))
    }
}

/// Facts about a (re)loaded certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// See [`TlsSetup::cert_pin`].
    pub cert_pin: Option<String>,
    /// See [`TlsSetup::leaf_sha256_hex`].
    pub leaf_sha256_hex: String,
    /// See [`TlsSetup::not_after`].
    pub not_after: SystemTime,
}

/// Re-reads manual certificate files into a running [`TlsSetup::config`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CertReloader {
    inner: Arc<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    /// The manual files; `None` in `letsencrypt` mode, where [`crate::acme`] installs
    /// certificates instead.
    paths: Option<ManualPaths>,
    /// Names every certificate must cover: `--hostname` (manual), every ACME hostname.
    hosts: Vec<Host>,
    provider: Arc<CryptoProvider>,
    metacert: CertificateDer<'static>,
    resolver: Arc<SniResolver>,
}

impl CertReloader {
    /// Re-reads `<name>.crt` and `<name>.key`, checks them as [`load`] does and, if they are
    /// good, serves them to new handshakes. On error the current certificate stays in use.
    /// Never generates a certificate. Does blocking file I/O: call it from `spawn_blocking`.
    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let state = &*self.inner;
        let paths = state.paths.as_ref().ok_or(TlsError::NotManual)?;
        let loaded = read_key_pair(paths, &state.provider)?;
        let info = check_leaf_all(&loaded.chain, &state.hosts, &paths.cert)?;
        state.resolver.set(certified_key(loaded, &state.metacert));
        Ok(info)
    }

    /// The certificate and key files this reloader reads (`None` in `letsencrypt` mode).
    pub fn paths(&self) -> Option<(&Path, &Path)> {
        self.inner
            .paths
            .as_ref()
            .map(|p| (p.cert.as_path(), p.key.as_path()))
    }

    /// Checks a certificate chain (leaf first) and its key as a reload does and serves them to
    /// new handshakes; `origin` names where they came from in errors.
    pub(crate) fn install(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: Arc<dyn SigningKey>,
        origin: &Path,
    ) -> Result<CertInfo, TlsError> {
        let state = &*self.inner;
        let info = check_leaf_all(&chain, &state.hosts, origin)?;
        state
            .resolver
            .set(certified_key(Loaded { chain, key }, &state.metacert));
        Ok(info)
    }

    /// Facts about the certificate served now.
    pub fn current(&self) -> Option<CertInfo> {
        let key = self.inner.resolver.current()?;
        let leaf = key.cert.first()?;
        let summary = parse_cert_summary(leaf)?;
        Some(CertInfo {
            cert_pin: self
                .inner
                .hosts
                .first()
                .and_then(|h| h.ip)
                .map(|_| pin_cert_name(leaf)),
            leaf_sha256_hex: hex::encode(Sha256::digest(leaf)),
            not_after: unix_to_system_time(summary.not_after),
        })
    }
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The cert mode is not served by this function (`letsencrypt` is set up by
    /// [`crate::acme`]).
    #[error("--certmode={0} is not handled here")]
    UnsupportedCertMode(&'static str),
    /// A reload was asked of a certificate that does not come from files.
    #[error(
        "--certmode=letsencrypt renews its certificate itself; only manual certificates are reloaded"
    )]
    NotManual,
    /// `--certdir` is empty.
    #[error("missing required --certdir")]
    MissingCertDir,
    /// `--hostname` is neither an IP literal nor a valid DNS name.
    #[error("invalid --hostname {hostname:?}: {reason}")]
    InvalidHostname {
        /// The rejected hostname.
        hostname: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A manual certificate or key file does not exist.
    #[error(
        "{path} does not exist; --certmode=manual needs a PEM certificate chain in \
         <certdir>/<name>.crt and its key in <certdir>/<name>.key (a self-signed pair is \
         generated only when --hostname is an IP address)"
    )]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not valid PEM.
    #[error("parsing PEM in {path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM error.
        source: io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("no CERTIFICATE PEM block in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PKCS#8, PKCS#1 or SEC1 private key.
    #[error("no private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY PEM block) in {path}")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key's algorithm is not supported by the ring provider.
    #[error("unsupported private key in {path}: {source}")]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The private key is not the leaf certificate's key.
    #[error("private key {key} does not match certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate is not well-formed X.509.
    #[error("cannot parse the certificate in {path}: {source}")]
    InvalidCert {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The leaf certificate does not cover `--hostname`.
    #[error("certificate {path} is not valid for hostname {hostname:?}: {source}")]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// `--hostname`.
        hostname: String,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// Generating the self-signed IP certificate failed.
    #[error("generating a self-signed certificate for {hostname}: {reason}")]
    Generate {
        /// `--hostname`.
        hostname: String,
        /// What failed.
        reason: String,
    },
    /// The certificate directory could not be created.
    #[error("creating certificate directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A generated certificate or key could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Building the metacert failed.
    #[error("creating the DERP metacert: {0}")]
    Metacert(rcgen::Error),
    /// rustls refused the configuration.
    #[error("building the TLS server config: {0}")]
    Config(rustls::Error),
}

/// Builds the main listener's TLS config for `opts`, announcing `server_public_key` (the relay's
/// DERP key) in the metacert. May create `cert_dir` and write a self-signed pair (see the module
/// docs). Does blocking file I/O.
pub fn load(opts: &TlsOptions, server_public_key: &[u8; 32]) -> Result<TlsSetup, TlsError> {
    match opts.cert_mode {
        CertMode::Manual => {}
        CertMode::LetsEncrypt => return Err(TlsError::UnsupportedCertMode("letsencrypt")),
    }
    let provider = Arc::new(server_provider());
    if opts.cert_dir.as_os_str().is_empty() {
        return Err(TlsError::MissingCertDir);
    }
    let host = Host::parse(&opts.hostname)?;
    let paths = ManualPaths::new(&opts.cert_dir, &opts.hostname);

    // Like Go, self-sign only when a file is missing (not when one is unreadable or bad), and
    // then load what was written, so the files on disk are exactly what is served.
    let (loaded, generated) = match (read_key_pair(&paths, &provider), host.ip) {
        (Err(TlsError::NotFound { .. }), Some(ip)) => {
            write_self_signed_ip(&paths, &host.name, ip)?;
            (read_key_pair(&paths, &provider)?, true)
        }
        (result, _) => (result?, false),
    };
    let info = check_leaf(&loaded.chain, &host, &paths.cert)?;
    let metacert = build_metacert(server_public_key)?;
    let resolver = Arc::new(SniResolver {
        required_sni: host
            .ip
            .is_none()
            .then(|| host.name.clone())
            .into_iter()
            .collect(),
        current: RwLock::new(Some(certified_key(loaded, &metacert))),
        alpn_challenges: None,
    });
    let setup = TlsSetup {
        config: server_config(&provider, &resolver)?,
        cert_pin: info.cert_pin,
        leaf_sha256_hex: info.leaf_sha256_hex,
        not_after: info.not_after,
        generated,
        reloader: CertReloader {
            inner: Arc::new(ReloadState {
                paths: Some(paths),
                hosts: vec![host],
                provider,
                metacert,
                resolver,
            }),
        },
    };
    if let Some(hint) = setup.derp_node_hint() {
        tracing::info!(
            hostname = %opts.hostname,
            generated,
            "using a self-signed certificate for an IP address; configure it in the DERPMap \
             using: {hint}"
        );
    }
    Ok(setup)
}

/// The TLS setup of `letsencrypt` mode: SNI must be one of `hostnames`, `acme-tls/1`
/// handshakes are answered from `challenges`, and `cached` (a chain from an earlier run, leaf
/// first, with its key) is served until [`CertReloader::install`] brings a new one. Without
/// `cached` every DERP handshake fails until then.
pub(crate) fn acme_setup(
    hostnames: &[String],
    cached: Option<(
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        PathBuf,
    )>,
    challenges: Arc<crate::acme::Challenges>,
    server_public_key: &[u8; 32],
) -> Result<TlsSetup, TlsError> {
    let provider = Arc::new(server_provider());
    let hosts = hostnames
        .iter()
        .map(|h| Host::parse(h))
        .collect::<Result<Vec<_>, _>>()?;
    let metacert = build_metacert(server_public_key)?;
    let resolver = Arc::new(SniResolver {
        required_sni: hosts.iter().map(|h| h.name.clone()).collect(),
        current: RwLock::new(None),
        alpn_challenges: Some(challenges),
    });
    let reloader = CertReloader {
        inner: Arc::new(ReloadState {
            paths: None,
            hosts,
            provider: Arc::clone(&provider),
            metacert,
            resolver: Arc::clone(&resolver),
        }),
    };
    let mut info = None;
    if let Some((chain, key, path)) = cached {
        // A cached pair that no longer fits (hostnames changed, damaged file) is not served;
        // a new certificate is ordered instead.
        match load_key(&provider, key, &path).and_then(|key| reloader.install(chain, key, &path)) {
            Ok(i) => info = Some(i),
            Err(e) => tracing::warn!(error = %e, "not serving the cached ACME certificate"),
        }
    }
    let mut config = (*server_config(&provider, &resolver)?).clone();
    config.alpn_protocols.push(ALPN_ACME_TLS_1.to_vec());
    Ok(TlsSetup {
        config: Arc::new(config),
        cert_pin: None,
        leaf_sha256_hex: info
            .as_ref()
            .map(|i| i.leaf_sha256_hex.clone())
            .unwrap_or_default(),
        not_after: info.map_or(UNIX_EPOCH, |i| i.not_after),
        generated: false,
        reloader,
    })
}

/// The ring provider with its cipher suites in Go's server order: Go's `crypto/tls` server
/// picks from its own list (AES-128-GCM, then AES-256-GCM, then ChaCha20 on machines with
/// AES hardware), not the client's. Tailscale clients get the same suite from us as from
/// derper, and a client that lists AES-256 first (rustls does) no longer makes both ends pay
/// for SHA-384: in a TLS connect storm the SHA-512 block function was 6.5 % of our CPU.
fn server_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |suite: &rustls::SupportedCipherSuite| {
        use rustls::CipherSuite as C;
        let bulk = match suite.suite() {
            C::TLS13_AES_128_GCM_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            C::TLS13_AES_256_GCM_SHA384
            | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        };
        (suite.tls13().is_none(), bulk)
    };
    provider.cipher_suites.sort_by_key(rank);
    provider
}

/// The main listener's config around `resolver`: TLS 1.2+, ALPN `http/1.1`, the server's
/// cipher-suite order (see [`server_provider`]).
fn server_config(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<SniResolver>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Loads a private key with the ring provider; `path` names it in errors.
pub(crate) fn load_key(
    provider: &CryptoProvider,
    key: PrivateKeyDer<'static>,
    path: &Path,
) -> Result<Arc<dyn SigningKey>, TlsError> {
    provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: path.to_owned(),
            source,
        })
}

/// `--hostname` parsed once.
#[derive(Debug)]
struct Host {
    name: String,
    ip: Option<IpAddr>,
    server_name: ServerName<'static>,
}

impl Host {
    fn parse(hostname: &str) -> Result<Self, TlsError> {
        let invalid = |reason: String| TlsError::InvalidHostname {
            hostname: hostname.to_owned(),
            reason,
        };
        if hostname.is_empty() {
            return Err(invalid("empty".to_owned()));
        }
        let ip = hostname.parse::<IpAddr>().ok();
        let server_name = match ip {
            Some(ip) => ServerName::IpAddress(ip.into()),
            None => {
                ServerName::try_from(hostname.to_owned()).map_err(|e| invalid(e.to_string()))?
            }
        };
        Ok(Self {
            name: hostname.to_owned(),
            ip,
            server_name,
        })
    }
}

/// `<certdir>/<name>.crt` and `.key`.
#[derive(Debug)]
struct ManualPaths {
    cert: PathBuf,
    key: PathBuf,
}

impl ManualPaths {
    fn new(cert_dir: &Path, hostname: &str) -> Self {
        // Go: regexp `[^a-zA-Z0-9-\.]` replaced by "" (so "::1" becomes "1").
        let stem: String = hostname
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .collect();
        Self {
            cert: cert_dir.join(format!("{stem}.crt")),
            key: cert_dir.join(format!("{stem}.key")),
        }
    }
}

/// A certificate chain (leaf first) with its private key.
struct Loaded {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::NotFound {
            path: path.to_owned(),
        },
        _ => TlsError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// Reads and pairs the manual files, as Go's `tls.LoadX509KeyPair` does (certificate file first).
fn read_key_pair(paths: &ManualPaths, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let cert_pem = read_file(&paths.cert)?;
    let key_pem = read_file(&paths.key)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: paths.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: paths.cert.clone(),
        });
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Pem {
            path: paths.key.clone(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: paths.key.clone(),
        })?;
    let key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::UnsupportedKey {
            path: paths.key.clone(),
            source,
        })?;
    match CertifiedKey::new(chain.clone(), Arc::clone(&key)).keys_match() {
        // `Unknown`: the key cannot report its public half, so there is nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            });
        }
        Err(source) => {
            return Err(TlsError::InvalidCert {
                path: paths.cert.clone(),
                source,
            });
        }
    }
    Ok(Loaded { chain, key })
}

/// [`check_leaf`] for every name; the description is the first's.
fn check_leaf_all(
    chain: &[CertificateDer<'static>],
    hosts: &[Host],
    path: &Path,
) -> Result<CertInfo, TlsError> {
    let mut info = None;
    for host in hosts {
        let checked = check_leaf(chain, host, path)?;
        info.get_or_insert(checked);
    }
    info.ok_or_else(|| TlsError::InvalidHostname {
        hostname: String::new(),
        reason: "no hostname configured".to_owned(),
    })
}

/// Checks the leaf covers `--hostname` (DNS or IP SANs, like Go's `VerifyHostname`) and
/// describes it. An expired leaf is served anyway, as Go does, but logged.
fn check_leaf(
    chain: &[CertificateDer<'static>],
    host: &Host,
    path: &Path,
) -> Result<CertInfo, TlsError> {
    let invalid = |source: rustls::Error| TlsError::InvalidCert {
        path: path.to_owned(),
        source,
    };
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: path.to_owned(),
    })?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(invalid)?;
    rustls::client::verify_server_name(&parsed, &host.server_name).map_err(|source| {
        TlsError::NameMismatch {
            path: path.to_owned(),
            hostname: host.name.clone(),
            source,
        }
    })?;
    let summary =
        parse_cert_summary(leaf).ok_or_else(|| invalid(CertificateError::BadEncoding.into()))?;
    let not_after = unix_to_system_time(summary.not_after);
    if not_after < SystemTime::now() {
        tracing::warn!(path = %path.display(), "TLS certificate has expired");
    }
    Ok(CertInfo {
        cert_pin: host.ip.map(|_| pin_cert_name(leaf)),
        leaf_sha256_hex: hex::encode(Sha256::digest(leaf)),
        not_after,
    })
}

fn unix_to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// The served chain: leaf, intermediates, then the metacert last (where Go puts it).
fn certified_key(loaded: Loaded, metacert: &CertificateDer<'static>) -> Arc<CertifiedKey> {
    let mut chain = loaded.chain;
    chain.push(metacert.clone());
    Arc::new(CertifiedKey::new(chain, loaded.key))
}

/// Serves the current certificate, enforcing the SNI rule, and answers ACME's TLS-ALPN-01.
#[derive(Debug)]
struct SniResolver {
    /// DNS names SNI must equal one of; empty for IP hostnames (any SNI, or none, is served).
    required_sni: Vec<String>,
    /// The certificate new handshakes get; `None` until `letsencrypt` mode has one.
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// `letsencrypt` mode: validation certificates for `acme-tls/1` handshakes.
    alpn_challenges: Option<Arc<crate::acme::Challenges>>,
}

impl SniResolver {
    fn set(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means another thread panicked mid-swap of an Arc; the value is
        // still a complete key, so keep going.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        if let Some(challenges) = &self.alpn_challenges {
            // RFC 8737 3: the validator offers exactly `acme-tls/1`; such a handshake gets the
            // validation certificate for its SNI, or nothing.
            let mut alpn = client_hello.alpn().into_iter().flatten();
            if alpn.next() == Some(ALPN_ACME_TLS_1) && alpn.next().is_none() {
                return challenges.tls_alpn01(sni?);
            }
        }
        if !self.required_sni.is_empty() {
            // rustls lowercases SNI; DNS names compare case-insensitively.
            let matches = sni.is_some_and(|sni| {
                self.required_sni
                    .iter()
                    .any(|want| sni.eq_ignore_ascii_case(want))
            });
            if !matches {
                tracing::debug!(
                    sni = sni.unwrap_or(""),
                    "TLS handshake refused: SNI does not match --hostname"
                );
                return None;
            }
        }
        self.current()
    }
}

/// `basicConstraints` (critical) with an empty SEQUENCE: CA false, exactly what Go emits for
/// `BasicConstraintsValid: true` (rcgen's `ExplicitNoCa` would also add a key identifier).
fn basic_constraints_not_ca() -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
}

/// A subject with one CN, as PrintableString when possible (as Go's `pkix` does).
fn subject_cn(cn: &str) -> DistinguishedName {
    let value = match rcgen::PrintableString::try_from(cn) {
        Ok(printable) => DnValue::PrintableString(printable),
        Err(_) => DnValue::Utf8String(cn.to_owned()),
    };
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, value);
    dn
}

/// The self-signed Ed25519 metacert of `derpserver.initMetacert`.
fn build_metacert(server_public_key: &[u8; 32]) -> Result<CertificateDer<'static>, TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(TlsError::Metacert)?;
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from_slice(&[DERP_PROTOCOL_VERSION]));
    params.distinguished_name = subject_cn(&format!(
        "{METACERT_CN_PREFIX}{}",
        hex::encode(server_public_key)
    ));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - METACERT_HALF_LIFETIME;
    params.not_after = now + METACERT_HALF_LIFETIME;
    // macOS requires BasicConstraints when subject == issuer (golang/go#51759).
    params.custom_extensions = vec![basic_constraints_not_ca()];
    let cert = params.self_signed(&key).map_err(TlsError::Metacert)?;
    Ok(cert.der().clone())
}

/// Generates and writes the self-signed IP certificate of Go's `createSelfSignedIPCert`.
fn write_self_signed_ip(paths: &ManualPaths, hostname: &str, ip: IpAddr) -> Result<(), TlsError> {
    let fail = |reason: String| TlsError::Generate {
        hostname: hostname.to_owned(),
        reason,
    };
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
    let mut params = CertificateParams::default();
    // Go: random serial below 2^128; rcgen strips leading zeros and keeps it positive.
    params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
    params.distinguished_name = subject_cn(hostname);
    let now = OffsetDateTime::now_utc();
    params.not_before = now;
    // Go: now.AddDate(1, 0, 0) ("a bit over that is rejected by macOS"); Feb 29 rolls to Mar 1.
    params.not_after = now
        .replace_year(now.year() + 1)
        .or_else(|_| (now + time::Duration::DAY).replace_year(now.year() + 1))
        .map_err(|e| fail(e.to_string()))?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.custom_extensions = vec![basic_constraints_not_ca()];
    params.subject_alt_names = vec![SanType::IpAddress(ip)];
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let sec1 = p256_sec1_from_pkcs8(key.serialized_der(), key.public_key_raw())
        .ok_or_else(|| fail("unexpected PKCS#8 layout for the P-256 key".to_owned()))?;

    let dir = paths.cert.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(|source| TlsError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    write_file(
        &paths.cert,
        pem("CERTIFICATE", cert.der()).as_bytes(),
        0o644,
    )
    .map_err(|source| TlsError::Write {
        path: paths.cert.clone(),
        source,
    })?;
    write_file(&paths.key, pem("EC PRIVATE KEY", &sec1).as_bytes(), 0o600).map_err(|source| {
        TlsError::Write {
            path: paths.key.clone(),
            source,
        }
    })?;
    Ok(())
}

/// `os.MkdirAll(dir, 0700)`: existing directories keep their mode.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// `os.WriteFile(path, data, mode)`: the mode applies (minus umask) only to new files.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)?.write_all(data)
}

/// PEM exactly as Go's `pem.EncodeToMemory` writes it: 64-column base64, LF line endings.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for (i, c) in b64.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    out.push_str(&format!("\n-----END {label}-----\n"));
    out
}

/// Re-encodes ring's PKCS#8 P-256 key as the SEC1 `ECPrivateKey` that Go's
/// `x509.MarshalECPrivateKey` writes (version 1, 32-byte scalar, named-curve parameters, public
/// point). Go can only read SEC1 keys that carry the curve parameters, which ring's embedded
/// `ECPrivateKey` omits, hence the rebuild rather than a copy.
fn p256_sec1_from_pkcs8(pkcs8: &[u8], public_point: &[u8]) -> Option<Vec<u8>> {
    // PrivateKeyInfo ::= SEQUENCE { version, algorithm SEQUENCE, privateKey OCTET STRING }
    let mut info = DerReader::new(DerReader::new(pkcs8).expect(TAG_SEQUENCE)?);
    info.expect(TAG_INTEGER)?;
    info.expect(TAG_SEQUENCE)?;
    let ec_private_key = info.expect(TAG_OCTET_STRING)?;
    // ECPrivateKey ::= SEQUENCE { version INTEGER, privateKey OCTET STRING, ... }
    let mut ec = DerReader::new(DerReader::new(ec_private_key).expect(TAG_SEQUENCE)?);
    ec.expect(TAG_INTEGER)?;
    let scalar = ec.expect(TAG_OCTET_STRING)?;
    if scalar.len() != 32 || public_point.len() != 65 || public_point[0] != 0x04 {
        return None;
    }
    let mut out = Vec::with_capacity(121);
    // SEQUENCE (119 bytes) { INTEGER 1, OCTET STRING (32) scalar,
    out.extend_from_slice(&[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
    out.extend_from_slice(scalar);
    //   [0] OID prime256v1 (1.2.840.10045.3.1.7),
    out.extend_from_slice(&[
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ]);
    //   [1] BIT STRING (65 bytes, no unused bits) uncompressed point }
    out.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
    out.extend_from_slice(public_point);
    Some(out)
}

/// Trust roots from a PEM bundle (the mesh's `--mesh-ca`, ACME's `--acme-ca-file`). The error
/// says what is wrong; callers add the file and the flag.
pub(crate) fn load_root_bundle(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = fs::read(path).map_err(|e| e.to_string())?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE blocks".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {}: {e}", i + 1))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    use derp_proto::io::tls::{ServerVerify, client_config, server_key_from_connection};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Go-written pair (cmd/derper's self-signed template, plus DNS SAN `derp.test`, valid
    /// 2020..2120): a certdir migrated from the Go relay must load unchanged.
    const GO_CRT: &str = include_str!("../tests/data/127.0.0.1.crt");
    const GO_KEY: &str = include_str!("../tests/data/127.0.0.1.key");

    fn server_key() -> [u8; 32] {
        std::array::from_fn(|i| (i * 3 + 1) as u8)
    }

    fn opts(dir: &Path, hostname: &str) -> TlsOptions {
        TlsOptions {
            cert_mode: CertMode::Manual,
            cert_dir: dir.to_owned(),
            hostname: hostname.to_owned(),
        }
    }

    fn pin_bytes(setup: &TlsSetup) -> [u8; 32] {
        let mut pin = [0u8; 32];
        hex::decode_to_slice(&setup.leaf_sha256_hex, &mut pin).expect("hex");
        pin
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    /// Writes an rcgen cert for `san` (PKCS#8 key) as `<dir>/<file>.crt/.key`.
    fn write_dns_cert(dir: &Path, file: &str, san: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![san.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        fs::write(dir.join(format!("{file}.crt")), cert.pem()).expect("write crt");
        fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write key");
        cert.der().clone()
    }

    /// What a client saw in a handshake.
    #[derive(Debug)]
    struct Seen {
        chain: Vec<CertificateDer<'static>>,
        learned: Option<([u8; 32], u8)>,
        alpn: Option<Vec<u8>>,
        suite: Option<rustls::CipherSuite>,
    }

    /// Serves one connection with `config` and dials it as `name` with `verify`.
    async fn handshake(
        config: Arc<ServerConfig>,
        verify: ServerVerify,
        name: &str,
    ) -> io::Result<(Vec<CertificateDer<'static>>, Option<([u8; 32], u8)>)> {
        let seen = handshake_with(config, client_config(verify), name).await?;
        assert_eq!(seen.alpn, None, "DERP clients send no ALPN");
        Ok((seen.chain, seen.learned))
    }

    async fn handshake_with(
        config: Arc<ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> io::Result<Seen> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            tls.write_all(b"ok").await?;
            tls.shutdown().await
        });
        let connector = tokio_rustls::TlsConnector::from(client);
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from(name.to_owned()).expect("name");
        let result = async {
            let mut tls = connector.connect(server_name, tcp).await?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            let conn = tls.get_ref().1;
            Ok(Seen {
                chain: conn.peer_certificates().unwrap_or_default().to_vec(),
                learned: server_key_from_connection(conn),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
            })
        }
        .await;
        drop(server); // it finishes by itself once the client is gone
        result
    }

    #[tokio::test]
    async fn server_picks_aes_128_like_go_whatever_the_client_prefers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let setup = load(&opts(tmp.path(), "127.0.0.1"), &server_key()).expect("load");
        // rustls clients (loadtest, our mesh links) list AES-256 first.
        let client = client_config(ServerVerify::Insecure);
        assert_eq!(
            client.crypto_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let seen = handshake_with(setup.config.clone(), client, "127.0.0.1")
            .await
            .expect("handshake");
        assert_eq!(
            seen.suite,
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        // TLS 1.2 suites keep the same preference behind every TLS 1.3 one.
        let order: Vec<_> = server_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(order[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(
            order[3],
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
    }

    #[tokio::test]
    async fn alpn_is_http11_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let setup = load(&opts(tmp.path(), "127.0.0.1"), &server_key()).expect("load");
        let mut browser = (*client_config(ServerVerify::Insecure)).clone();
        browser.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let seen = handshake_with(setup.config.clone(), Arc::new(browser.clone()), "127.0.0.1")
            .await
            .expect("browser-like client");
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
        // Like Go, a client offering only protocols we lack is refused.
        browser.alpn_protocols = vec![b"h2".to_vec()];
        handshake_with(setup.config.clone(), Arc::new(browser), "127.0.0.1")
            .await
            .expect_err("h2-only client");
    }

    #[test]
    fn generates_self_signed_ip_cert_like_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("certs");
        let setup = load(&opts(&dir, "127.0.0.1"), &server_key()).expect("load");
        assert!(setup.generated);

        let crt = fs::read_to_string(dir.join("127.0.0.1.crt")).expect("crt");
        let key = fs::read_to_string(dir.join("127.0.0.1.key")).expect("key");
        assert!(crt.starts_with("-----BEGIN CERTIFICATE-----\n"), "{crt}");
        assert!(
            key.starts_with("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI"),
            "{key}"
        );
        assert!(crt.lines().all(|l| l.len() <= 64));
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join("127.0.0.1.key")), 0o600);
            assert_eq!(mode(&dir.join("127.0.0.1.crt")) & 0o600, 0o600);
        }

        let der = rustls_pemfile::certs(&mut crt.as_bytes())
            .next()
            .expect("one cert")
            .expect("pem");
        let want_pin = format!("sha256-raw:{}", hex::encode(Sha256::digest(&der)));
        assert_eq!(setup.cert_pin.as_deref(), Some(want_pin.as_str()));
        assert_eq!(setup.leaf_sha256_hex, want_pin["sha256-raw:".len()..]);
        let summary = parse_cert_summary(&der).expect("summary");
        assert_eq!(summary.common_name.as_deref(), Some("127.0.0.1"));
        let lifetime = summary.not_after - summary.not_before;
        assert!(
            (365 * 86_400..=366 * 86_400).contains(&lifetime),
            "{lifetime}"
        );
        assert_eq!(setup.not_after, unix_to_system_time(summary.not_after));
        let hint = setup.derp_node_hint().expect("hint");
        assert!(
            hint.contains(&want_pin) && hint.contains(r#""HostName":"127.0.0.1""#),
            "{hint}"
        );

        // Second start: reuses the files.
        let again = load(&opts(&dir, "127.0.0.1"), &server_key()).expect("reload");
        assert!(!again.generated);
        assert_eq!(again.cert_pin, setup.cert_pin);
    }

    #[test]
    fn loads_go_written_pair() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("127.0.0.1.crt"), GO_CRT).expect("crt");
        fs::write(tmp.path().join("127.0.0.1.key"), GO_KEY).expect("key");
        let setup = load(&opts(tmp.path(), "127.0.0.1"), &server_key()).expect("load");
        assert!(!setup.generated);
        let der = rustls_pemfile::certs(&mut GO_CRT.as_bytes())
            .next()
            .expect("cert")
            .expect("pem");
        assert_eq!(setup.cert_pin, Some(pin_cert_name(&der)));
        // The same files also serve the DNS name in their SAN.
        fs::write(tmp.path().join("derp.test.crt"), GO_CRT).expect("crt");
        fs::write(tmp.path().join("derp.test.key"), GO_KEY).expect("key");
        let dns = load(&opts(tmp.path(), "derp.test"), &server_key()).expect("dns load");
        assert_eq!(dns.cert_pin, None);
        assert_eq!(dns.leaf_sha256_hex, setup.leaf_sha256_hex);
    }

    #[test]
    fn sec1_matches_go_layout() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let sec1 = p256_sec1_from_pkcs8(key.serialized_der(), key.public_key_raw()).expect("sec1");
        assert_eq!(sec1.len(), 121);
        // Go's fixture key has the identical framing around its scalar and point.
        let go = rustls_pemfile::private_key(&mut GO_KEY.as_bytes())
            .expect("pem")
            .expect("key");
        let go = go.secret_der();
        assert_eq!(go.len(), 121);
        assert_eq!(go[..7], sec1[..7]);
        assert_eq!(go[39..56], sec1[39..56]);
    }

    #[test]
    fn metacert_fields() {
        let der = build_metacert(&server_key()).expect("metacert");
        let summary = parse_cert_summary(&der).expect("parse");
        assert_eq!(summary.serial, vec![2]);
        assert_eq!(
            summary.common_name,
            Some(format!("derpkey{}", hex::encode(server_key())))
        );
        assert_eq!(summary.not_after - summary.not_before, 60 * 86_400);
        assert!(derp_proto::cert::server_key_from_certs(&[der]) == Some((server_key(), 2)));
    }

    #[test]
    fn pem_wraps_at_64_columns() {
        let out = pem("X", &[0u8; 100]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "-----BEGIN X-----");
        // 100 bytes are 136 base64 characters: 64 + 64 + 8.
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2].len(), 64);
        assert_eq!(lines[3].len(), 8);
        assert_eq!(lines[4], "-----END X-----");
        assert!(out.ends_with("-----END X-----\n"));
    }

    #[test]
    fn file_names_drop_unsafe_characters() {
        let p = ManualPaths::new(Path::new("/d"), "derp_1.example.com");
        assert_eq!(p.cert, Path::new("/d/derp1.example.com.crt"));
        let p = ManualPaths::new(Path::new("/d"), "::1");
        assert_eq!(p.key, Path::new("/d/1.key"));
    }

    #[test]
    fn clear_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();

        let err = load(&opts(dir, "derp.example.com"), &server_key()).expect_err("missing");
        assert!(matches!(err, TlsError::NotFound { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("derp.example.com.crt does not exist"),
            "{err}"
        );
        assert!(
            !dir.join("derp.example.com.key").exists(),
            "never self-signs a DNS name"
        );

        write_dns_cert(dir, "derp.example.com", "other.example.com");
        let err = load(&opts(dir, "derp.example.com"), &server_key()).expect_err("wrong name");
        assert!(matches!(err, TlsError::NameMismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("derp.example.com.crt is not valid for hostname"),
            "{err}"
        );

        // Key from another pair.
        let other = dir.join("o");
        fs::create_dir(&other).expect("mkdir");
        write_dns_cert(&other, "derp.example.com", "derp.example.com");
        write_dns_cert(dir, "derp.example.com", "derp.example.com");
        fs::copy(
            other.join("derp.example.com.key"),
            dir.join("derp.example.com.key"),
        )
        .expect("cp");
        let err = load(&opts(dir, "derp.example.com"), &server_key()).expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

        fs::write(dir.join("derp.example.com.crt"), "not a certificate").expect("write");
        let err = load(&opts(dir, "derp.example.com"), &server_key()).expect_err("garbage");
        assert!(
            err.to_string().contains("no CERTIFICATE PEM block in"),
            "{err}"
        );

        fs::write(
            dir.join("derp.example.com.crt"),
            GO_CRT.replace("MIIB", "M!IB"),
        )
        .expect("w");
        let err = load(&opts(dir, "derp.example.com"), &server_key()).expect_err("bad pem");
        assert!(err.to_string().contains("derp.example.com.crt"), "{err}");

        // An existing but unusable file for an IP hostname is an error, not a regeneration.
        fs::write(dir.join("127.0.0.1.crt"), "junk").expect("write");
        fs::write(dir.join("127.0.0.1.key"), "junk").expect("write");
        let err = load(&opts(dir, "127.0.0.1"), &server_key()).expect_err("junk ip");
        assert!(err.to_string().contains("127.0.0.1.crt"), "{err}");

        let mut le = opts(dir, "derp.example.com");
        le.cert_mode = CertMode::LetsEncrypt;
        assert!(matches!(
            load(&le, &server_key()),
            Err(TlsError::UnsupportedCertMode(_))
        ));
        assert!(matches!(
            load(&opts(Path::new(""), "1.2.3.4"), &server_key()),
            Err(TlsError::MissingCertDir)
        ));
    }

    #[tokio::test]
    async fn loopback_pinned_handshake() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let setup = load(&opts(tmp.path(), "127.0.0.1"), &server_key()).expect("load");
        let pin = pin_bytes(&setup);

        let (chain, learned) = handshake(setup.config.clone(), ServerVerify::Pin(pin), "127.0.0.1")
            .await
            .expect("pinned handshake");
        assert_eq!(learned, Some((server_key(), 2)));
        assert_eq!(chain.len(), 2, "leaf then metacert");
        assert_eq!(
            hex::encode(Sha256::digest(&chain[0])),
            setup.leaf_sha256_hex
        );

        let mut wrong = pin;
        wrong[31] ^= 0x80;
        handshake(setup.config.clone(), ServerVerify::Pin(wrong), "127.0.0.1")
            .await
            .expect_err("wrong pin");

        // IP hostnames accept any SNI.
        let (_, learned) = handshake(
            setup.config.clone(),
            ServerVerify::Insecure,
            "whatever.test",
        )
        .await
        .expect("insecure");
        assert_eq!(learned, Some((server_key(), 2)));
    }

    #[tokio::test]
    async fn sni_must_match_dns_hostname() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write_dns_cert(tmp.path(), "derp.example.com", "derp.example.com");
        let setup = load(&opts(tmp.path(), "derp.example.com"), &server_key()).expect("load");
        assert_eq!(setup.cert_pin, None);

        let pin = ServerVerify::Pin(pin_bytes(&setup));
        handshake(setup.config.clone(), pin.clone(), "derp.example.com")
            .await
            .expect("matching SNI");
        handshake(setup.config.clone(), pin, "DERP.Example.com")
            .await
            .expect("SNI is case-insensitive");
        let err = handshake(
            setup.config.clone(),
            ServerVerify::Insecure,
            "other.example.com",
        )
        .await
        .expect_err("SNI mismatch");
        assert!(err.to_string().contains("alert"), "{err}");
        // No SNI (dialing by IP) is refused too, as Go's manual mode does.
        handshake(setup.config.clone(), ServerVerify::Insecure, "127.0.0.1")
            .await
            .expect_err("no SNI");
    }

    #[tokio::test]
    async fn reload_swaps_certificate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = write_dns_cert(tmp.path(), "derp.example.com", "derp.example.com");
        let setup = load(&opts(tmp.path(), "derp.example.com"), &server_key()).expect("load");
        let reloader = setup.reloader();

        // A bad file on reload keeps the old certificate.
        fs::write(tmp.path().join("derp.example.com.crt"), "junk").expect("write");
        reloader.reload().expect_err("junk");
        let (chain, _) = handshake(
            setup.config.clone(),
            ServerVerify::Insecure,
            "derp.example.com",
        )
        .await
        .expect("old cert still served");
        assert_eq!(chain[0], first);

        let second = write_dns_cert(tmp.path(), "derp.example.com", "derp.example.com");
        let info = reloader.reload().expect("reload");
        assert_eq!(info.leaf_sha256_hex, hex::encode(Sha256::digest(&second)));
        let (chain, learned) = handshake(
            setup.config.clone(),
            ServerVerify::Pin(Sha256::digest(&second).into()),
            "derp.example.com",
        )
        .await
        .expect("new cert served");
        assert_eq!(chain[0], second);
        assert_eq!(
            learned,
            Some((server_key(), 2)),
            "metacert kept across reloads"
        );
    }
}
