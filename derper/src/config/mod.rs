//! Command line (named and spelled as Go derper's, so existing unit files work) and the typed
//! configuration built from it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use derp_proto::MeshKey;

use crate::defaults;
use crate::http::HomePage;
use crate::tls::{CertMode, TlsOptions};

/// A DERP relay server, wire-compatible with Tailscale's derper.
///
/// Flags are named as derper's and accept Go's single-dash spelling (`-hostname=x`).
#[derive(Debug, Parser)]
#[command(name = "derper", version, about, long_about = None)]
pub struct Cli {
    /// Development mode: random key, plain HTTP on 127.0.0.1:3340, STUN on 127.0.0.1:3478.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub dev: bool,
    /// Main listen address (`:port`, `ip:port`, `[ip6]:port`). TLS when the port is 443 or
    /// --certmode=manual.
    #[arg(short = 'a', long = "a", default_value = ":443")]
    pub addr: String,
    /// Plain-HTTP port served alongside TLS (captive-portal checks, redirects); -1 disables.
    #[arg(long, default_value_t = 80, allow_negative_numbers = true)]
    pub http_port: i32,
    /// Run the STUN server.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub stun: bool,
    /// UDP port of the STUN server, bound to the host part of -a.
    #[arg(long, default_value_t = defaults::STUN_PORT)]
    pub stun_port: u16,
    /// STUN listen address (`ip:port`); repeatable; overrides the -a host and --stun-port.
    #[arg(long = "stun-addr")]
    pub stun_addr: Vec<SocketAddr>,
    /// Run the DERP relay; false leaves STUN and probes up and answers /derp with 404.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub derp: bool,
    /// Private key file (`{"PrivateKey": "privkey:…"}`), created with mode 0600 if missing.
    #[arg(short = 'c', long = "c")]
    pub config_path: Option<PathBuf>,
    /// Certificate mode: `manual` (files in --certdir; self-signed for an IP --hostname).
    #[arg(long, default_value = "letsencrypt")]
    pub certmode: String,
    /// Directory of `<hostname>.crt` and `<hostname>.key`.
    #[arg(long)]
    pub certdir: Option<PathBuf>,
    /// TLS server name; may be an IP literal with --certmode=manual.
    #[arg(long, default_value = "derp.tailscale.com")]
    pub hostname: String,
    /// Home page: empty for the built-in page, `blank`, or an http(s) URL to redirect to.
    #[arg(long, default_value = "")]
    pub home: String,
    /// File holding the 64-hex-digit mesh key; connections presenting it are mesh peers.
    #[arg(long)]
    pub mesh_psk_file: Option<PathBuf>,
    /// Per-flush write deadline for regular clients (Go duration, `0` disables).
    #[arg(long, default_value = "2s", value_parser = parse_go_duration)]
    pub tcp_write_timeout: Duration,
    /// TCP keepalive idle time on accepted connections.
    #[arg(long, default_value = "10m", value_parser = parse_go_duration)]
    pub tcp_keepalive_time: Duration,
    /// TCP_USER_TIMEOUT on accepted connections.
    #[arg(long, default_value = "15s", value_parser = parse_go_duration)]
    pub tcp_user_timeout: Duration,

    /// Prometheus metrics listen address (e.g. 127.0.0.1:9464); off when not set.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Depth of each client's data and disco queues.
    #[arg(long, default_value_t = defaults::QUEUE_DEPTH)]
    pub queue_depth: usize,
    /// Maximum concurrent TCP connections; default: the open-file limit minus a reserve.
    #[arg(long)]
    pub max_connections: Option<usize>,

    // Flags Go derper has that this relay does not implement yet. They are parsed so an existing
    // unit file gets a clear refusal instead of "unknown flag".
    #[arg(long, hide = true)]
    pub mesh_with: Option<String>,
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub verify_clients: bool,
    #[arg(long, hide = true)]
    pub verify_client_url: Option<String>,
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub verify_client_url_fail_open: bool,
    #[arg(long, hide = true)]
    pub socket: Option<String>,
    #[arg(long, hide = true)]
    pub bootstrap_dns_names: Option<String>,
    #[arg(long, hide = true)]
    pub unpublished_bootstrap_dns_names: Option<String>,
    #[arg(long, hide = true)]
    pub accept_connection_limit: Option<String>,
    #[arg(long, hide = true)]
    pub accept_connection_burst: Option<String>,
    #[arg(long, hide = true)]
    pub rate_config: Option<String>,
    #[arg(long, hide = true)]
    pub secrets_url: Option<String>,
    #[arg(long, hide = true)]
    pub secrets_path_prefix: Option<String>,
    #[arg(long, hide = true)]
    pub secrets_cache_dir: Option<String>,
    #[arg(long, hide = true)]
    pub acme_email: Option<String>,
    #[arg(long, hide = true)]
    pub acme_eab_kid: Option<String>,
    #[arg(long, hide = true)]
    pub acme_eab_key: Option<String>,
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub acme_ip_certs: bool,
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub ace: bool,
}

/// Rewrites Go-style `-name[=value]` flags to `--name[=value]` so clap accepts both spellings.
/// One-letter flags (`-a`, `-c`) and negative numbers are left alone.
pub fn normalize_go_flags<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut expect_value = false;
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 || expect_value {
                expect_value = false;
                return a;
            }
            let is_go_long = a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && !a.as_bytes()[1].is_ascii_digit()
                && a.as_bytes()[2] != b'=';
            // `-a` and `-c` take the next argument as their value, whatever it looks like.
            expect_value = a == "-a" || a == "-c";
            if is_go_long { format!("-{a}") } else { a }
        })
        .collect()
}

/// Parses a Go `time.Duration` string (`1h2m3.5s`, `300ms`, `0`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} is missing a unit (e.g. 2s, 10m)"))?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid unit {unit:?} in duration {s:?}")),
        };
        total += value * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

/// Why the command line does not describe a runnable server.
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
    /// `-a` did not parse.
    #[error("invalid listen address -a {0:?}: expected :port, ip:port or [ip6]:port")]
    BadAddr(String),
    /// `--certmode` is unknown.
    #[error("unknown --certmode {0:?}: use manual (letsencrypt and gcp are not supported yet)")]
    BadCertMode(String),
    /// `--home` is invalid.
    #[error("{0}")]
    BadHome(String),
    /// No key file and not root.
    #[error("-c <key file> is required (or run with --dev for a throwaway key)")]
    MissingKeyFile,
    /// The mesh key file could not be read or parsed.
    #[error("mesh key file {path}: {reason}")]
    MeshKey {
        /// File.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// `--queue-depth` is zero.
    #[error("--queue-depth must be at least 1")]
    ZeroQueueDepth,
}

/// Where the server's private key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A throwaway key (dev mode).
    Ephemeral,
    /// derper's JSON key file, created if missing.
    File(PathBuf),
}

/// A validated, typed configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Private key source.
    pub key: KeySource,
    /// Main listener.
    pub addr: SocketAddr,
    /// TLS on the main listener, if any.
    pub tls: Option<TlsOptions>,
    /// Port-80 companion listener (only with TLS).
    pub http_addr: Option<SocketAddr>,
    /// STUN listen addresses (empty: no STUN).
    pub stun_addrs: Vec<SocketAddr>,
    /// Whether `/derp` is served.
    pub derp_enabled: bool,
    /// Home page behaviour.
    pub home: HomePage,
    /// Mesh pre-shared key.
    pub mesh_key: Option<MeshKey>,
    /// Prometheus listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Per-client queue depth.
    pub queue_depth: usize,
    /// Regular clients' write deadline (`None`: no deadline).
    pub write_timeout: Option<Duration>,
    /// Connection limit (`None`: derived from the open-file limit).
    pub max_connections: Option<usize>,
    /// TCP keepalive idle time.
    pub tcp_keepalive: Duration,
    /// TCP_USER_TIMEOUT.
    pub tcp_user_timeout: Duration,
}

impl ServerConfig {
    /// A plain-HTTP configuration on `addr` with an ephemeral key and no STUN, for tests and
    /// embedding.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            key: KeySource::Ephemeral,
            addr,
            tls: None,
            http_addr: None,
            stun_addrs: Vec::new(),
            derp_enabled: true,
            home: HomePage::Default,
            mesh_key: None,
            metrics_addr: None,
            queue_depth: defaults::QUEUE_DEPTH,
            write_timeout: Some(defaults::WRITE_TIMEOUT),
            max_connections: None,
            tcp_keepalive: Duration::from_secs(600),
            tcp_user_timeout: Duration::from_secs(15),
        }
    }
}

fn parse_listen(addr: &str) -> Result<SocketAddr, ConfigError> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| ConfigError::BadAddr(addr.into()))?;
        return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    addr.parse().map_err(|_| ConfigError::BadAddr(addr.into()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Cli {
    /// Checks the flags and builds a [`ServerConfig`].
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let unsupported = |set: bool, flag: &'static str, hint: &'static str| {
            if set {
                Err(ConfigError::Unsupported { flag, hint })
            } else {
                Ok(())
            }
        };
        unsupported(
            self.mesh_with.is_some(),
            "--mesh-with",
            "outbound mesh peering is planned; inbound mesh peers work with --mesh-psk-file",
        )?;
        unsupported(
            self.verify_clients,
            "--verify-clients",
            "client admission is planned",
        )?;
        unsupported(
            self.verify_client_url.is_some(),
            "--verify-client-url",
            "client admission is planned",
        )?;
        unsupported(
            self.socket.is_some(),
            "--socket",
            "only used with --verify-clients",
        )?;
        unsupported(
            self.bootstrap_dns_names.is_some() || self.unpublished_bootstrap_dns_names.is_some(),
            "--bootstrap-dns-names",
            "bootstrap DNS is not served",
        )?;
        unsupported(
            self.accept_connection_limit.is_some() || self.accept_connection_burst.is_some(),
            "--accept-connection-limit",
            "use --max-connections",
        )?;
        unsupported(
            self.rate_config.is_some(),
            "--rate-config",
            "per-client rate limits are planned",
        )?;
        unsupported(
            self.secrets_url.is_some()
                || self.secrets_path_prefix.is_some()
                || self.secrets_cache_dir.is_some(),
            "--secrets-url",
            "use --mesh-psk-file",
        )?;
        unsupported(
            self.acme_email.is_some()
                || self.acme_eab_kid.is_some()
                || self.acme_eab_key.is_some()
                || self.acme_ip_certs,
            "--acme-*",
            "ACME is planned; use --certmode=manual",
        )?;
        unsupported(self.ace, "--ace", "the CONNECT proxy is not offered")?;
        if self.queue_depth == 0 {
            return Err(ConfigError::ZeroQueueDepth);
        }

        let addr_str = if self.dev && self.addr == ":443" {
            defaults::DEV_ADDR.to_string()
        } else {
            self.addr.clone()
        };
        let addr = parse_listen(&addr_str)?;
        let cert_mode = match self.certmode.as_str() {
            "manual" => CertMode::Manual,
            "letsencrypt" => CertMode::LetsEncrypt,
            other => return Err(ConfigError::BadCertMode(other.into())),
        };
        let serve_tls = cert_mode == CertMode::Manual || (addr.port() == 443 && !self.dev);
        let tls = serve_tls.then(|| TlsOptions {
            cert_mode,
            cert_dir: self.certdir.clone().unwrap_or_else(default_cert_dir),
            hostname: self.hostname.clone(),
        });
        let http_addr = (tls.is_some() && self.http_port >= 0)
            .then(|| u16::try_from(self.http_port).ok())
            .flatten()
            .map(|p| SocketAddr::new(addr.ip(), p));
        let stun_addrs = if !self.stun {
            Vec::new()
        } else if !self.stun_addr.is_empty() {
            self.stun_addr.clone()
        } else {
            vec![SocketAddr::new(addr.ip(), self.stun_port)]
        };
        let key = match (&self.config_path, self.dev) {
            (Some(p), _) => KeySource::File(p.clone()),
            (None, true) => KeySource::Ephemeral,
            (None, false) if is_root() => {
                KeySource::File(PathBuf::from("/var/lib/derper/derper.key"))
            }
            (None, false) => return Err(ConfigError::MissingKeyFile),
        };
        let mesh_key = match &self.mesh_psk_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::MeshKey {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Some(text.parse().map_err(|_| ConfigError::MeshKey {
                    path: path.clone(),
                    reason: "must contain exactly 64 hex digits".into(),
                })?)
            }
        };
        Ok(ServerConfig {
            key,
            addr,
            tls,
            http_addr,
            stun_addrs,
            derp_enabled: self.derp,
            home: HomePage::parse(&self.home).map_err(ConfigError::BadHome)?,
            mesh_key,
            metrics_addr: self.metrics_addr,
            queue_depth: self.queue_depth,
            write_timeout: (!self.tcp_write_timeout.is_zero()).then_some(self.tcp_write_timeout),
            max_connections: self.max_connections,
            tcp_keepalive: self.tcp_keepalive_time,
            tcp_user_timeout: self.tcp_user_timeout,
        })
    }
}

fn default_cert_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tailscale").join("derper-certs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = normalize_go_flags(
            std::iter::once("derper")
                .chain(args.iter().copied())
                .map(String::from),
        );
        Cli::try_parse_from(argv)
    }

    #[test]
    fn accepts_go_spelling() {
        let c = cli(&[
            "-hostname=127.0.0.1",
            "-certmode",
            "manual",
            "-a",
            ":8443",
            "-c",
            "/tmp/k",
            "-stun=false",
            "-http-port=-1",
        ])
        .unwrap();
        assert_eq!(c.hostname, "127.0.0.1");
        assert_eq!(c.certmode, "manual");
        assert_eq!(c.addr, ":8443");
        assert!(!c.stun);
        assert_eq!(c.http_port, -1);
        let cfg = c.into_config().unwrap();
        assert!(cfg.tls.is_some());
        assert!(cfg.stun_addrs.is_empty());
        assert!(cfg.http_addr.is_none());
    }

    #[test]
    fn dev_defaults_to_loopback_plain_http_and_stun() {
        let cfg = cli(&["--dev"]).unwrap().into_config().unwrap();
        assert_eq!(cfg.addr, "127.0.0.1:3340".parse().unwrap());
        assert!(cfg.tls.is_none());
        assert_eq!(cfg.stun_addrs, vec!["127.0.0.1:3478".parse().unwrap()]);
        assert!(matches!(cfg.key, KeySource::Ephemeral));
    }

    #[test]
    fn unbuilt_features_are_refused() {
        let err = cli(&["-dev", "-mesh-with=a,b"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("--mesh-with"));
        let err = cli(&["-dev", "-verify-clients"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("--verify-clients"));
        assert!(cli(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5x").is_err());
    }

    #[test]
    fn plain_port_serves_plain_http() {
        let cfg = cli(&["-a", "127.0.0.1:8080", "-c", "/tmp/k"])
            .unwrap()
            .into_config()
            .unwrap();
        assert!(cfg.tls.is_none());
        assert_eq!(cfg.stun_addrs, vec!["127.0.0.1:3478".parse().unwrap()]);
    }
}
