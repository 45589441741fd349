//! Configuration: one typed [`Settings`] tree (defaults < `--config-file` < flags) and the
//! validated [`ServerConfig`] the server runs with.
//!
//! - [`cli`]: the command line, spelled as Go derper's, and the merge.
//! - [`file`]: reading the TOML config file with errors that name the key.
//! - [`settings`]: the schema, its defaults (from [`crate::defaults`]) and its checks.
//! - [`duration`]: Go duration syntax for flags and the file.

mod cli;
mod duration;
mod file;
mod settings;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use derp_proto::MeshKey;

pub use self::cli::{Cli, CommandLine, normalize_go_flags};
pub(crate) use self::duration::go_duration;
pub use self::duration::{GoDuration, format_go_duration, parse_go_duration};
pub(crate) use self::file::ConfigFile;
pub use self::settings::{
    AdmissionSettings, DerpMapSettings, LimitsSettings, ListenSettings, MeshSettings,
    RelaySettings, ServerSettings, Settings, TlsSettings,
};
use crate::acme::{AcmeOptions, ChallengePreference, ExternalAccount};
use crate::defaults;
use crate::http::HomePage;
use crate::tls::{CertMode, TlsOptions};

/// Why the command line and config file do not describe a runnable server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A flag that Go derper has and this relay does not implement yet.
    #[error("{flag} is not supported yet by this relay ({hint})")]
    Unsupported {
        /// The flag as the operator wrote it.
        flag: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A config file key names a feature that is not built yet.
    #[error("config key `{key}`: {feature} is not implemented yet; {hint}")]
    NotImplemented {
        /// Dotted key, e.g. `mesh.peers`.
        key: &'static str,
        /// The missing feature.
        feature: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A setting (from the file or its flag) has a value the relay cannot run with, or
    /// contradicts another.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `relay.queue_depth`.
        key: &'static str,
        /// What is wrong and, where there is one, the flag that sets it.
        reason: String,
    },
    /// The config file could not be read.
    #[error("config file {}: {source}", .path.display())]
    ReadFile {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The config file is not TOML, has an unknown key or a value of the wrong type.
    #[error(
        "config file {}, line {line}, column {column}{}: {message}",
        .path.display(),
        .key.as_ref().map(|k| format!(", key `{k}`")).unwrap_or_default()
    )]
    ParseFile {
        /// File.
        path: PathBuf,
        /// Dotted key the error is about, when it is about one.
        key: Option<String>,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// The merged settings could not be written as TOML (`--print-config`).
    #[error("printing the configuration: {0}")]
    Print(#[source] toml::ser::Error),
    /// No key file and not root.
    #[error("-c <key file> (server.key_file) is required (or run with --dev for a throwaway key)")]
    MissingKeyFile,
    /// The mesh key file could not be read or parsed.
    #[error("mesh key file {path}: {reason}")]
    MeshKey {
        /// File.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Where the server's private key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A throwaway key (dev mode).
    Ephemeral,
    /// derper's JSON key file, created if missing.
    File(PathBuf),
}

/// A validated, typed configuration: what [`crate::Server::spawn`] runs with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Private key source.
    pub key: KeySource,
    /// Main listener.
    pub addr: SocketAddr,
    /// TLS on the main listener, if any.
    pub tls: Option<TlsOptions>,
    /// ACME settings, when `tls` is in `letsencrypt` mode.
    pub acme: Option<AcmeOptions>,
    /// How often manual certificate files are checked for a change (`None`: only SIGHUP).
    pub cert_reload_interval: Option<Duration>,
    /// Port-80 companion listener (only with TLS).
    pub http_addr: Option<SocketAddr>,
    /// STUN listen addresses (empty: no STUN).
    pub stun_addrs: Vec<SocketAddr>,
    /// QUIC mesh listener (UDP), serving the main listener's certificate; needs `tls`.
    pub quic_addr: Option<SocketAddr>,
    /// Whether `/derp` is served.
    pub derp_enabled: bool,
    /// Home page behaviour.
    pub home: HomePage,
    /// Mesh pre-shared key.
    pub mesh_key: Option<MeshKey>,
    /// Outbound mesh: peers and link tunables (the key is `mesh_key`).
    pub mesh: MeshSettings,
    /// Prometheus listener.
    pub metrics_addr: Option<SocketAddr>,
    /// The relay core's queues and deadlines; [`crate::RelayConfig`] embeds them whole.
    pub relay: RelaySettings,
    /// Connection limit (`None`: derived from the open-file limit).
    pub max_connections: Option<usize>,
    /// TCP keepalive idle time.
    pub tcp_keepalive: Duration,
    /// TCP_USER_TIMEOUT.
    pub tcp_user_timeout: Duration,
    /// Client admission (webhook, local tailscaled).
    pub admission: AdmissionSettings,
    /// Accept-rate and per-client rate limits.
    pub limits: LimitsSettings,
    /// How long a drain waits for clients to leave.
    pub drain_grace: Duration,
    /// Names `/bootstrap-dns` serves.
    pub bootstrap_dns_names: Vec<String>,
    /// The live map's region and node (`/derpmap`); `None` when no region is configured.
    pub derp_map: Option<crate::derpmap::NodeConfig>,
}

impl ServerConfig {
    /// A plain-HTTP configuration on `addr` with an ephemeral key, no STUN and default
    /// settings otherwise, for tests and embedding.
    pub fn plain(addr: SocketAddr) -> Self {
        let defaults = Settings::default();
        Self {
            key: KeySource::Ephemeral,
            addr,
            tls: None,
            acme: None,
            cert_reload_interval: defaults.tls.reload_interval,
            http_addr: None,
            stun_addrs: Vec::new(),
            quic_addr: None,
            derp_enabled: defaults.server.derp,
            home: HomePage::Default,
            mesh_key: None,
            mesh: MeshSettings::default(),
            metrics_addr: None,
            relay: defaults.relay,
            max_connections: None,
            tcp_keepalive: defaults.listen.tcp_keepalive_time,
            tcp_user_timeout: defaults.listen.tcp_user_timeout,
            admission: defaults.admission,
            limits: defaults.limits,
            drain_grace: defaults.server.drain_grace,
            bootstrap_dns_names: Vec::new(),
            derp_map: None,
        }
    }
}

impl Settings {
    /// Validates and resolves the settings into a [`ServerConfig`]: derives TLS, the
    /// companion and STUN addresses and the key source (`dev` allows a throwaway key and
    /// plain HTTP on port 443), and reads the mesh key file.
    pub fn into_server_config(self, dev: bool) -> Result<ServerConfig, ConfigError> {
        self.validate()?;
        let Self {
            server,
            listen,
            tls,
            relay,
            mesh,
            admission,
            limits,
            derp_map,
        } = self;
        let addr = parse_listen(&listen.addr)?;
        let cert_mode = parse_cert_mode(tls.cert_mode())?;
        // Go serves TLS only on :443 unless the mode is manual. An explicit
        // `--certmode=letsencrypt` means ACME on whatever port is given (a port forwarded from
        // 443, or HTTP-01 on --http-port); only the implicit default keeps Go's rule, so
        // `derper -a :8080` behind a proxy stays plain HTTP as before.
        let serve_tls = match cert_mode {
            CertMode::Manual => true,
            CertMode::LetsEncrypt => tls.certmode.is_some() || (addr.port() == 443 && !dev),
        };
        let hostnames = tls.hostnames();
        let cert_reload_interval = tls.reload_interval;
        let acme = (serve_tls && cert_mode == CertMode::LetsEncrypt)
            .then(|| acme_options(&tls, hostnames.clone()))
            .transpose()?;
        let tls_options = serve_tls.then(|| TlsOptions {
            cert_mode,
            cert_dir: tls.certdir.clone().unwrap_or_else(default_cert_dir),
            hostname: match cert_mode {
                CertMode::Manual => tls.hostname.clone(),
                CertMode::LetsEncrypt => hostnames.first().cloned().unwrap_or_default(),
            },
        });
        let http_addr = (tls_options.is_some() && listen.http_port >= 0)
            .then(|| u16::try_from(listen.http_port).ok())
            .flatten()
            .map(|p| SocketAddr::new(addr.ip(), p));
        if let Some(acme) = &acme
            && acme.challenge == ChallengePreference::Http01
            && http_addr.is_none()
        {
            return Err(ConfigError::Invalid {
                key: "tls.acme_challenge",
                reason: "http-01 is answered on the --http-port listener, which is disabled".into(),
            });
        }
        let tls = tls_options;
        let stun_addrs = if !listen.stun {
            Vec::new()
        } else if !listen.stun_addrs.is_empty() {
            listen.stun_addrs
        } else {
            vec![SocketAddr::new(addr.ip(), listen.stun_port)]
        };
        let quic_addr = listen.quic_port.map(|p| SocketAddr::new(addr.ip(), p));
        if quic_addr.is_some() && tls.is_none() {
            return Err(ConfigError::Invalid {
                key: "listen.quic_port",
                reason: "QUIC always uses TLS: --quic-port needs the main listener's TLS \
                         (--certmode manual or port 443)"
                    .into(),
            });
        }
        let key = match (server.key_file, dev) {
            (Some(p), _) => KeySource::File(p),
            (None, true) => KeySource::Ephemeral,
            (None, false) if is_root() => KeySource::File(PathBuf::from(defaults::ROOT_KEY_FILE)),
            (None, false) => return Err(ConfigError::MissingKeyFile),
        };
        let derp_map_node = derp_map
            .region_id
            .map(|region_id| crate::derpmap::NodeConfig {
                region_id,
                region_code: derp_map.region_code.clone(),
                region_name: derp_map.region_name.clone(),
                node_name: if derp_map.node_name.is_empty() {
                    tls.as_ref()
                        .map_or_else(|| addr.ip().to_string(), |t| t.hostname.clone())
                } else {
                    derp_map.node_name.clone()
                },
                host_name: tls
                    .as_ref()
                    .map_or_else(|| addr.ip().to_string(), |t| t.hostname.clone()),
                ipv4: derp_map.ipv4.clone(),
                ipv6: derp_map.ipv6.clone(),
                derp_port: addr.port(),
                stun_port: if listen.stun { listen.stun_port } else { 0 },
                plain: tls.is_none(),
                can_port80: tls.is_some() && listen.http_port == 80,
            });
        let mesh_key = match &mesh.psk_file {
            None => None,
            Some(path) => Some(read_mesh_key(path)?),
        };
        Ok(ServerConfig {
            key,
            addr,
            tls,
            acme,
            cert_reload_interval,
            http_addr,
            stun_addrs,
            quic_addr,
            derp_enabled: server.derp,
            home: parse_home(&server.home)?,
            mesh_key,
            mesh,
            metrics_addr: listen.metrics_addr,
            relay,
            max_connections: listen.max_connections,
            tcp_keepalive: listen.tcp_keepalive_time,
            tcp_user_timeout: listen.tcp_user_timeout,
            admission,
            limits,
            drain_grace: server.drain_grace,
            bootstrap_dns_names: server.bootstrap_dns_names,
            derp_map: derp_map_node,
        })
    }
}

/// The ACME options of validated `[tls]` settings.
fn acme_options(tls: &TlsSettings, hostnames: Vec<String>) -> Result<AcmeOptions, ConfigError> {
    let mut opts = AcmeOptions::new(hostnames);
    opts.directory = tls.acme_directory.clone();
    opts.email = tls.acme_email.clone();
    opts.ca_file = tls.acme_ca_file.clone();
    opts.retry_min = tls.acme_retry_min;
    opts.retry_max = tls.acme_retry_max;
    opts.challenge =
        ChallengePreference::parse(&tls.acme_challenge).map_err(|reason| ConfigError::Invalid {
            key: "tls.acme_challenge",
            reason,
        })?;
    if let (Some(kid), Some(key)) = (&tls.acme_eab_kid, &tls.acme_eab_key) {
        opts.eab = Some(ExternalAccount {
            kid: kid.clone(),
            hmac_key: settings::decode_eab_key(key).map_err(|reason| ConfigError::Invalid {
                key: "tls.acme_eab_key",
                reason,
            })?,
        });
    }
    Ok(opts)
}

fn read_mesh_key(path: &std::path::Path) -> Result<MeshKey, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::MeshKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    crate::keyfile::warn_if_readable_by_others(path, "mesh key");
    text.parse().map_err(|_| ConfigError::MeshKey {
        path: path.to_path_buf(),
        reason: "must contain exactly 64 hex digits".into(),
    })
}

fn parse_listen(addr: &str) -> Result<SocketAddr, ConfigError> {
    let bad = || ConfigError::Invalid {
        key: "listen.addr",
        reason: format!(
            "invalid listen address (-a) {addr:?}: expected :port, ip:port or [ip6]:port"
        ),
    };
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    addr.parse().map_err(|_| bad())
}

fn parse_cert_mode(mode: &str) -> Result<CertMode, ConfigError> {
    match mode {
        "manual" => Ok(CertMode::Manual),
        "letsencrypt" => Ok(CertMode::LetsEncrypt),
        other => Err(ConfigError::Invalid {
            key: "tls.certmode",
            reason: format!(
                "unknown --certmode {other:?}: use manual or letsencrypt (gcp is not supported)"
            ),
        }),
    }
}

fn parse_home(home: &str) -> Result<HomePage, ConfigError> {
    HomePage::parse(home).map_err(|reason| ConfigError::Invalid {
        key: "server.home",
        reason,
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn default_cert_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join(defaults::CERT_DIR_IN_CACHE)
}

#[cfg(test)]
mod tests;
