//! The command line, named and spelled as Go derper's so existing unit files work, and its
//! merge with the config file: defaults < file < flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

use super::duration::GoDuration;
use super::file::ConfigFile;
use super::settings::{Settings, TlsSettings};
use super::{ConfigError, ServerConfig};
use crate::defaults;

/// A DERP relay server, wire-compatible with Tailscale's derper.
///
/// Flags are named as derper's and accept Go's single-dash spelling (`-hostname=x`). Flags
/// given on the command line override the --config-file, which overrides the defaults.
#[derive(Debug, Parser)]
#[command(name = "derper", version, about, long_about = None)]
pub struct Cli {
    /// TOML config file; see the README. Flags given on the command line override it.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Print the merged configuration (defaults, --config-file, flags) as a config file and
    /// exit without binding anything.
    #[arg(long)]
    pub print_config: bool,
    /// Development mode: random key, plain HTTP on 127.0.0.1:3340, STUN on 127.0.0.1:3478.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub dev: bool,
    /// Main listen address (`:port`, `ip:port`, `[ip6]:port`). TLS when the port is 443,
    /// --certmode=manual, or --certmode=letsencrypt given explicitly.
    #[arg(short = 'a', long = "a", default_value = defaults::ADDR)]
    pub addr: String,
    /// Plain-HTTP port served alongside TLS (captive-portal checks, redirects); -1 disables.
    #[arg(long, default_value_t = defaults::HTTP_PORT, allow_negative_numbers = true)]
    pub http_port: i32,
    /// Run the STUN server.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = defaults::RUN_STUN, default_missing_value = "true")]
    pub stun: bool,
    /// UDP port of the STUN server, bound to the host part of -a.
    #[arg(long, default_value_t = defaults::STUN_PORT)]
    pub stun_port: u16,
    /// STUN listen address (`ip:port`); repeatable; overrides the -a host and --stun-port.
    #[arg(long = "stun-addr")]
    pub stun_addr: Vec<SocketAddr>,
    /// UDP port of the QUIC mesh listener, bound to the host part of -a; off when not set.
    /// Only mesh peers (with the mesh key) may use it; needs TLS.
    #[arg(long)]
    pub quic_port: Option<u16>,
    /// Run the DERP relay; false leaves STUN and probes up and answers /derp with 404.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = defaults::SERVE_DERP, default_missing_value = "true")]
    pub derp: bool,
    /// Private key file (`{"PrivateKey": "privkey:…"}`), created with mode 0600 if missing.
    #[arg(short = 'c', long = "c")]
    pub config_path: Option<PathBuf>,
    /// Certificate mode: `manual` (files in --certdir; self-signed for an IP --hostname) or
    /// `letsencrypt` (ACME). Default letsencrypt, served only on port 443 as Go does; given
    /// explicitly, letsencrypt serves TLS on any port.
    #[arg(long)]
    pub certmode: Option<String>,
    /// Directory of `<hostname>.crt` and `<hostname>.key` (manual) or of the ACME cache
    /// (account, certificate, key).
    #[arg(long)]
    pub certdir: Option<PathBuf>,
    /// TLS server name; may be an IP literal with --certmode=manual. With letsencrypt, a
    /// comma list of names for one certificate.
    #[arg(long, default_value = defaults::HOSTNAME)]
    pub hostname: String,
    /// How often manual certificate files are checked for a change (Go duration; 0 disables,
    /// SIGHUP still reloads).
    #[arg(long, default_value_t = GoDuration(defaults::CERT_POLL_INTERVAL))]
    pub cert_reload_interval: GoDuration,
    /// ACME directory URL (default: Let's Encrypt production).
    #[arg(long, default_value = defaults::ACME_DIRECTORY)]
    pub acme_directory: String,
    /// Contact e-mail registered with the ACME CA.
    #[arg(long)]
    pub acme_email: Option<String>,
    /// ACME external account binding: key id.
    #[arg(long)]
    pub acme_eab_kid: Option<String>,
    /// ACME external account binding: HMAC key (base64). Prefer the environment variable:
    /// command lines are visible to every user.
    #[arg(long, env = "DERPER_ACME_EAB_KEY", hide_env_values = true)]
    pub acme_eab_key: Option<String>,
    /// PEM roots that the ACME CA's HTTPS endpoint must chain to (default: system roots).
    #[arg(long)]
    pub acme_ca_file: Option<PathBuf>,
    /// ACME challenge to answer: auto (TLS-ALPN-01 on :443, else HTTP-01 on --http-port),
    /// tls-alpn-01 or http-01.
    #[arg(long, default_value = defaults::ACME_CHALLENGE)]
    pub acme_challenge: String,
    /// Home page: empty for the built-in page, `blank`, or an http(s) URL to redirect to.
    #[arg(long, default_value = defaults::HOME_PAGE)]
    pub home: String,
    /// File holding the 64-hex-digit mesh key; connections presenting it are mesh peers.
    #[arg(long)]
    pub mesh_psk_file: Option<PathBuf>,
    /// Peers to mesh with: comma list of `host`, `host/dial-host` or URLs
    /// (`https://name:8443/derp`), each optionally `#sha256-raw:<hex>` to pin its certificate.
    #[arg(long)]
    pub mesh_with: Option<String>,
    /// CA bundle (PEM) that mesh peers' certificates must chain to; default: system roots.
    #[arg(long)]
    pub mesh_ca: Option<PathBuf>,
    /// Allow `http://` mesh peers. The mesh key then crosses the network readable by anyone
    /// in the path who answers as the peer.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub mesh_allow_plain: bool,
    /// Per-flush write deadline for regular clients (Go duration, `0` disables).
    #[arg(long, default_value_t = GoDuration(defaults::WRITE_TIMEOUT))]
    pub tcp_write_timeout: GoDuration,
    /// Per-flush write deadline for mesh peers (Go duration).
    #[arg(long, default_value_t = GoDuration(defaults::MESH_WRITE_TIMEOUT))]
    pub mesh_write_timeout: GoDuration,
    /// Time a client has to complete the DERP handshake (Go duration).
    #[arg(long, default_value_t = GoDuration(defaults::HANDSHAKE_TIMEOUT))]
    pub handshake_timeout: GoDuration,
    /// Period of KeepAlive frames to clients, before jitter (Go duration).
    #[arg(long, default_value_t = GoDuration(defaults::KEEPALIVE))]
    pub keepalive: GoDuration,
    /// TCP keepalive idle time on accepted connections.
    #[arg(long, default_value_t = GoDuration(defaults::TCP_KEEPALIVE_TIME))]
    pub tcp_keepalive_time: GoDuration,
    /// TCP_USER_TIMEOUT on accepted connections.
    #[arg(long, default_value_t = GoDuration(defaults::TCP_USER_TIMEOUT))]
    pub tcp_user_timeout: GoDuration,

    /// Prometheus metrics listen address (e.g. 127.0.0.1:9464); off when not set.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Depth of each client's data and disco queues.
    #[arg(long, default_value_t = defaults::QUEUE_DEPTH)]
    pub queue_depth: usize,
    /// Maximum concurrent TCP connections; default: the open-file limit minus a reserve.
    #[arg(long)]
    pub max_connections: Option<usize>,

    /// Admit only node keys the local tailscaled knows (LocalAPI whois over --socket).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub verify_clients: bool,
    /// tailscaled's LocalAPI socket for --verify-clients.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Admission webhook (derper's JSON, e.g. Headscale's `/verify`) asked before a client
    /// may connect.
    #[arg(long)]
    pub verify_client_url: Option<String>,
    /// Admit clients when the admission backend gives no answer (default: refuse them).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub verify_client_url_fail_open: bool,
    /// Deadline for admitting one connection (Go duration).
    #[arg(long, default_value_t = GoDuration(defaults::ADMISSION_TIMEOUT))]
    pub verify_client_timeout: GoDuration,
    /// How long an admission is reused for reconnects of the same key (Go duration).
    #[arg(long, default_value_t = GoDuration(defaults::ADMISSION_POSITIVE_TTL))]
    pub verify_client_positive_ttl: GoDuration,
    /// How long a refusal is reused (Go duration).
    #[arg(long, default_value_t = GoDuration(defaults::ADMISSION_NEGATIVE_TTL))]
    pub verify_client_negative_ttl: GoDuration,
    /// File holding a token sent to the webhook as `Authorization: Bearer <token>`.
    #[arg(long)]
    pub verify_client_bearer_token_file: Option<PathBuf>,
    /// How often connected clients are verified again; refused keys are disconnected
    /// (Go duration, `0` disables).
    #[arg(long, default_value_t = GoDuration(defaults::ADMISSION_REVERIFY_INTERVAL))]
    pub verify_client_reverify: GoDuration,

    /// New connections accepted per second on the main listener; more are closed at once.
    #[arg(long)]
    pub accept_connection_limit: Option<f64>,
    /// Connections accepted at once above --accept-connection-limit (default: one second's
    /// worth).
    #[arg(long)]
    pub accept_connection_burst: Option<u32>,
    /// derper's JSON rate config (`PerClientRateLimitBytesPerSec`, `PerClientRateBurstBytes`),
    /// reloaded on SIGHUP.
    #[arg(long)]
    pub rate_config: Option<PathBuf>,
    /// How long a drain (SIGTERM, POST /admin/drain) waits for clients to leave (Go duration).
    #[arg(long, default_value_t = GoDuration(defaults::DRAIN_GRACE))]
    pub drain_grace: GoDuration,
    /// Comma list of host names whose addresses /bootstrap-dns serves.
    #[arg(long)]
    pub bootstrap_dns_names: Option<String>,
    /// Region ID for the live DERP map at /derpmap (served only when set).
    #[arg(long)]
    pub derp_map_region_id: Option<u32>,
    /// Region code for /derpmap, e.g. `fra`.
    #[arg(long)]
    pub derp_map_region_code: Option<String>,
    /// Region name for /derpmap, e.g. `Frankfurt`.
    #[arg(long)]
    pub derp_map_region_name: Option<String>,
    /// This node's name in /derpmap (default: --hostname).
    #[arg(long)]
    pub derp_map_node_name: Option<String>,
    /// This node's public IPv4 address in /derpmap.
    #[arg(long)]
    pub derp_map_ipv4: Option<String>,
    /// This node's public IPv6 address in /derpmap.
    #[arg(long)]
    pub derp_map_ipv6: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = defaults::LOG_FORMAT)]
    pub log_format: String,

    // Flags Go derper has that this relay does not implement yet. They are parsed so an existing
    // unit file gets a clear refusal instead of "unknown flag".
    #[arg(long, hide = true)]
    pub unpublished_bootstrap_dns_names: Option<String>,
    #[arg(long, hide = true)]
    pub secrets_url: Option<String>,
    #[arg(long, hide = true)]
    pub secrets_path_prefix: Option<String>,
    #[arg(long, hide = true)]
    pub secrets_cache_dir: Option<String>,
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

/// The parsed command line, knowing which flags the operator wrote (and so override the
/// config file) and which only carry clap's default.
#[derive(Debug)]
pub struct CommandLine {
    cli: Cli,
    matches: ArgMatches,
}

impl CommandLine {
    /// Parses `args` (program name first), accepting Go's single-dash spelling.
    pub fn try_parse_from<I: IntoIterator<Item = String>>(args: I) -> Result<Self, clap::Error> {
        let matches = Cli::command().try_get_matches_from(normalize_go_flags(args))?;
        let cli = Cli::from_arg_matches(&matches)?;
        Ok(Self { cli, matches })
    }

    /// The flags, defaults included.
    pub fn cli(&self) -> &Cli {
        &self.cli
    }

    /// `--print-config` was given.
    pub fn print_config(&self) -> bool {
        self.cli.print_config
    }

    /// Defaults, overlaid with the config file, overlaid with the flags given; validated.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.cli.refuse_unbuilt()?;
        let mut settings = match &self.cli.config_file {
            None => Settings::default(),
            Some(path) => {
                let file = ConfigFile::load(path)?;
                if self.cli.dev && file.sets_tls {
                    return Err(ConfigError::Invalid {
                        key: "tls",
                        reason: format!(
                            "--dev serves plain HTTP with a throwaway key, but {} sets [tls]; \
                             drop --dev or the [tls] section",
                            path.display()
                        ),
                    });
                }
                file.settings
            }
        };
        self.overlay(&mut settings);
        if self.cli.dev && settings.listen.addr == defaults::ADDR {
            settings.listen.addr = defaults::DEV_ADDR.into();
        }
        if settings.tls.certdir.is_none() {
            settings.tls.certdir = Some(super::default_cert_dir());
        }
        settings.validate()?;
        Ok(settings)
    }

    /// The merged configuration as a config file, for `--print-config`. With `--dev` and no
    /// TLS settings the `[tls]` section is left out, so the output can be fed back with
    /// `--dev`. Secrets are not read: the mesh key appears as its file's path.
    pub fn render_config(&self) -> Result<String, ConfigError> {
        let settings = self.settings()?;
        let mut table = toml::Table::try_from(&settings).map_err(ConfigError::Print)?;
        let tls_is_default = settings.tls
            == TlsSettings {
                certdir: settings.tls.certdir.clone(),
                ..Default::default()
            };
        if self.cli.dev && tls_is_default {
            table.remove("tls");
        }
        toml::to_string_pretty(&table).map_err(ConfigError::Print)
    }

    /// Merges, validates and builds the [`ServerConfig`] (reading the mesh key file).
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        self.settings()?.into_server_config(self.cli.dev)
    }

    /// Whether flag `id` (its field name) was written on the command line rather than
    /// defaulted.
    fn given(&self, id: &str) -> bool {
        matches!(
            self.matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    }

    /// Writes the flags the operator gave over `s`.
    fn overlay(&self, s: &mut Settings) {
        let c = &self.cli;
        if let Some(path) = &c.config_path {
            s.server.key_file = Some(path.clone());
        }
        if self.given("derp") {
            s.server.derp = c.derp;
        }
        if self.given("home") {
            s.server.home = c.home.clone();
        }
        if self.given("addr") {
            s.listen.addr = c.addr.clone();
        }
        if self.given("http_port") {
            s.listen.http_port = c.http_port;
        }
        if self.given("stun") {
            s.listen.stun = c.stun;
        }
        if self.given("stun_port") {
            s.listen.stun_port = c.stun_port;
        }
        if !c.stun_addr.is_empty() {
            s.listen.stun_addrs = c.stun_addr.clone();
        }
        if let Some(port) = c.quic_port {
            s.listen.quic_port = Some(port);
        }
        if let Some(addr) = c.metrics_addr {
            s.listen.metrics_addr = Some(addr);
        }
        if let Some(n) = c.max_connections {
            s.listen.max_connections = Some(n);
        }
        if self.given("tcp_keepalive_time") {
            s.listen.tcp_keepalive_time = c.tcp_keepalive_time.0;
        }
        if self.given("tcp_user_timeout") {
            s.listen.tcp_user_timeout = c.tcp_user_timeout.0;
        }
        if let Some(mode) = &c.certmode {
            s.tls.certmode = Some(mode.clone());
        }
        if self.given("cert_reload_interval") {
            let d = c.cert_reload_interval.0;
            s.tls.reload_interval = (!d.is_zero()).then_some(d);
        }
        if self.given("acme_directory") {
            s.tls.acme_directory = c.acme_directory.clone();
        }
        if let Some(email) = &c.acme_email {
            s.tls.acme_email = Some(email.clone());
        }
        if let Some(kid) = &c.acme_eab_kid {
            s.tls.acme_eab_kid = Some(kid.clone());
        }
        if let Some(key) = &c.acme_eab_key {
            s.tls.acme_eab_key = Some(key.clone());
        }
        if let Some(path) = &c.acme_ca_file {
            s.tls.acme_ca_file = Some(path.clone());
        }
        if self.given("acme_challenge") {
            s.tls.acme_challenge = c.acme_challenge.clone();
        }
        if let Some(dir) = &c.certdir {
            s.tls.certdir = Some(dir.clone());
        }
        if self.given("hostname") {
            s.tls.hostname = c.hostname.clone();
        }
        if self.given("queue_depth") {
            s.relay.queue_depth = c.queue_depth;
        }
        if self.given("tcp_write_timeout") {
            let d = c.tcp_write_timeout.0;
            s.relay.write_timeout = (!d.is_zero()).then_some(d);
        }
        if self.given("mesh_write_timeout") {
            s.relay.mesh_write_timeout = c.mesh_write_timeout.0;
        }
        if self.given("handshake_timeout") {
            s.relay.handshake_timeout = c.handshake_timeout.0;
        }
        if self.given("keepalive") {
            s.relay.keepalive = c.keepalive.0;
        }
        if let Some(path) = &c.mesh_psk_file {
            s.mesh.psk_file = Some(path.clone());
        }
        if let Some(list) = &c.mesh_with {
            s.mesh.peers = list.split(',').map(str::to_string).collect();
        }
        if let Some(path) = &c.mesh_ca {
            s.mesh.ca_file = Some(path.clone());
        }
        if self.given("mesh_allow_plain") {
            s.mesh.allow_plain = c.mesh_allow_plain;
        }
        if let Some(rate) = c.accept_connection_limit {
            s.limits.accept_connection_limit = Some(rate);
        }
        if let Some(burst) = c.accept_connection_burst {
            s.limits.accept_connection_burst = Some(burst);
        }
        if let Some(path) = &c.rate_config {
            s.limits.rate_config = Some(path.clone());
        }
        if self.given("drain_grace") {
            s.server.drain_grace = c.drain_grace.0;
        }
        if let Some(names) = &c.bootstrap_dns_names {
            s.server.bootstrap_dns_names = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
        }
        if self.given("log_format") {
            s.server.log_format = c.log_format.clone();
        }
        if let Some(id) = c.derp_map_region_id {
            s.derp_map.region_id = Some(id);
        }
        for (flag, key) in [
            (&c.derp_map_region_code, &mut s.derp_map.region_code),
            (&c.derp_map_region_name, &mut s.derp_map.region_name),
            (&c.derp_map_node_name, &mut s.derp_map.node_name),
            (&c.derp_map_ipv4, &mut s.derp_map.ipv4),
            (&c.derp_map_ipv6, &mut s.derp_map.ipv6),
        ] {
            if let Some(v) = flag {
                *key = v.clone();
            }
        }
        if let Some(url) = &c.verify_client_url {
            s.admission.verify_client_url = Some(url.clone());
        }
        if self.given("verify_clients") {
            s.admission.verify_clients = c.verify_clients;
        }
        if let Some(path) = &c.socket {
            s.admission.tailscaled_socket = Some(path.clone());
        }
        if self.given("verify_client_url_fail_open") {
            s.admission.fail_open = c.verify_client_url_fail_open;
        }
        if self.given("verify_client_timeout") {
            s.admission.timeout = c.verify_client_timeout.0;
        }
        if self.given("verify_client_positive_ttl") {
            s.admission.positive_ttl = c.verify_client_positive_ttl.0;
        }
        if self.given("verify_client_negative_ttl") {
            s.admission.negative_ttl = c.verify_client_negative_ttl.0;
        }
        if let Some(path) = &c.verify_client_bearer_token_file {
            s.admission.bearer_token_file = Some(path.clone());
        }
        if self.given("verify_client_reverify") {
            let d = c.verify_client_reverify.0;
            s.admission.reverify_interval = (!d.is_zero()).then_some(d);
        }
    }
}

impl Cli {
    /// Refuses flags Go derper has and this relay does not implement yet, so an existing unit
    /// file fails clearly instead of running without them.
    fn refuse_unbuilt(&self) -> Result<(), ConfigError> {
        let unsupported = |set: bool, flag: &'static str, hint: &'static str| {
            if set {
                Err(ConfigError::Unsupported { flag, hint })
            } else {
                Ok(())
            }
        };
        unsupported(
            self.unpublished_bootstrap_dns_names.is_some(),
            "--unpublished-bootstrap-dns-names",
            "list the names in --bootstrap-dns-names",
        )?;
        unsupported(
            self.secrets_url.is_some()
                || self.secrets_path_prefix.is_some()
                || self.secrets_cache_dir.is_some(),
            "--secrets-url",
            "use --mesh-psk-file",
        )?;
        unsupported(
            self.acme_ip_certs,
            "--acme-ip-certs",
            "ACME certificates cover DNS names; use --certmode=manual for an IP address",
        )?;
        unsupported(self.ace, "--ace", "the CONNECT proxy is not offered")
    }
}
