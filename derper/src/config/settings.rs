//! The configuration schema: what `--config-file` accepts and `--print-config` prints.
//!
//! Every section denies unknown keys and fills missing ones from [`crate::defaults`].
//! Durations are Go duration strings (`"2s"`, `"1m30s"`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::duration::{go_duration, zero_disables};
use crate::defaults;

/// Every setting of the relay process, grouped as the config file's sections.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Settings {
    /// `[server]`: identity and what the HTTP side serves.
    pub server: ServerSettings,
    /// `[listen]`: sockets and connection limits.
    pub listen: ListenSettings,
    /// `[tls]`: certificates for the main listener.
    pub tls: TlsSettings,
    /// `[relay]`: the relay core's queues and deadlines.
    pub relay: RelaySettings,
    /// `[mesh]`: the mesh key and outbound peering.
    pub mesh: MeshSettings,
    /// `[admission]`: client verification.
    pub admission: AdmissionSettings,
    /// `[limits]`: accept and per-client rate limits.
    pub limits: LimitsSettings,
    /// `[derp_map]`: this relay's region and node, for the live map at `/derpmap`.
    pub derp_map: DerpMapSettings,
}

/// `[server]`: identity and what the HTTP side serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerSettings {
    /// `-c`: derper's JSON private key file, created with mode 0600 if missing. Unset: a
    /// throwaway key with `--dev`, [`defaults::ROOT_KEY_FILE`] as root, else an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `--derp`: serve `/derp`; false leaves STUN and probes up and answers `/derp` with 404.
    pub derp: bool,
    /// `--home`: empty for the built-in page, `blank`, or an http(s) URL to redirect to.
    pub home: String,
    /// `--drain-grace`: how long a drain (SIGTERM, `POST /admin/drain`) waits for clients to
    /// leave before closing the rest.
    #[serde(with = "go_duration")]
    pub drain_grace: Duration,
    /// `--bootstrap-dns-names`: host names whose addresses `/bootstrap-dns` serves (derper's
    /// DNS fallback for clients whose resolver fails).
    pub bootstrap_dns_names: Vec<String>,
    /// `--log-format`: `text` or `json` (one JSON object per line).
    pub log_format: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            key_file: None,
            derp: defaults::SERVE_DERP,
            home: defaults::HOME_PAGE.into(),
            drain_grace: defaults::DRAIN_GRACE,
            bootstrap_dns_names: Vec::new(),
            log_format: defaults::LOG_FORMAT.into(),
        }
    }
}

/// `[listen]`: sockets and connection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenSettings {
    /// `-a`: main listener (`:port`, `ip:port`, `[ip6]:port`); TLS when the port is 443 or
    /// `tls.certmode` is set (`manual`, or `letsencrypt` written explicitly).
    pub addr: String,
    /// `--http-port`: plain-HTTP companion port when TLS is on; negative disables it.
    pub http_port: i32,
    /// `--stun`: run the STUN server.
    pub stun: bool,
    /// `--stun-port`: STUN UDP port, bound to the host part of `addr`.
    pub stun_port: u16,
    /// `--stun-addr`: STUN listen addresses; when not empty they replace `addr`'s host and
    /// `stun_port`.
    pub stun_addrs: Vec<SocketAddr>,
    /// `--quic-port`: UDP port of the QUIC mesh listener, bound to the host part of `addr`;
    /// off when unset. Needs TLS (it serves the main listener's certificate) and a mesh key
    /// (only mesh peers may use it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic_port: Option<u16>,
    /// `--metrics-addr`: Prometheus listener; off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    /// `--max-connections`: concurrent TCP connections; unset: the open-file limit minus
    /// [`defaults::FD_RESERVE`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// `--tcp-keepalive-time`: TCP keepalive idle time on accepted connections.
    #[serde(with = "go_duration")]
    pub tcp_keepalive_time: Duration,
    /// `--tcp-user-timeout`: `TCP_USER_TIMEOUT` on accepted connections.
    #[serde(with = "go_duration")]
    pub tcp_user_timeout: Duration,
}

impl Default for ListenSettings {
    fn default() -> Self {
        Self {
            addr: defaults::ADDR.into(),
            http_port: defaults::HTTP_PORT,
            stun: defaults::RUN_STUN,
            stun_port: defaults::STUN_PORT,
            stun_addrs: Vec::new(),
            quic_port: None,
            metrics_addr: None,
            max_connections: None,
            tcp_keepalive_time: defaults::TCP_KEEPALIVE_TIME,
            tcp_user_timeout: defaults::TCP_USER_TIMEOUT,
        }
    }
}

/// `[tls]`: certificates for the main listener.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsSettings {
    /// `--certmode`: `manual` (files in `certdir`, self-signed for an IP `hostname`) or
    /// `letsencrypt` (ACME). Unset means Go's default, `letsencrypt`, with Go's rule that TLS
    /// (and so ACME) runs only when the main listener is on port 443; set explicitly,
    /// `letsencrypt` serves TLS on any port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certmode: Option<String>,
    /// `--certdir`: directory of `<hostname>.crt` and `<hostname>.key` (manual) or of the
    /// ACME cache; unset: the user's cache directory joined with
    /// [`defaults::CERT_DIR_IN_CACHE`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certdir: Option<PathBuf>,
    /// `--hostname`: TLS server name; may be an IP literal with `certmode = "manual"`. With
    /// `letsencrypt` a comma-separated list: one certificate covers every name.
    pub hostname: String,
    /// `--cert-reload-interval`: how often manual certificate files are checked for a change
    /// (content hash); `"0s"` (`None`) disables polling (SIGHUP still reloads).
    #[serde(with = "zero_disables")]
    pub reload_interval: Option<Duration>,
    /// `--acme-directory`: the ACME CA's directory URL.
    pub acme_directory: String,
    /// `--acme-email`: contact address registered with the CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_email: Option<String>,
    /// `--acme-eab-kid`: external account binding key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_eab_kid: Option<String>,
    /// `--acme-eab-key` (or `DERPER_ACME_EAB_KEY`): the base64 EAB HMAC key. A secret: never
    /// printed by `--print-config`.
    #[serde(skip_serializing)]
    pub acme_eab_key: Option<String>,
    /// `--acme-ca-file`: PEM roots the CA's HTTPS endpoint must chain to (default: the
    /// system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_ca_file: Option<PathBuf>,
    /// `--acme-challenge`: `auto`, `tls-alpn-01` or `http-01`.
    pub acme_challenge: String,
    /// First delay after a failed ACME attempt (doubling, jittered, up to `acme_retry_max`).
    #[serde(with = "go_duration")]
    pub acme_retry_min: Duration,
    /// Longest delay between ACME attempts.
    #[serde(with = "go_duration")]
    pub acme_retry_max: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            certmode: None,
            certdir: None,
            hostname: defaults::HOSTNAME.into(),
            reload_interval: Some(defaults::CERT_POLL_INTERVAL),
            acme_directory: defaults::ACME_DIRECTORY.into(),
            acme_email: None,
            acme_eab_kid: None,
            acme_eab_key: None,
            acme_ca_file: None,
            acme_challenge: defaults::ACME_CHALLENGE.into(),
            acme_retry_min: defaults::ACME_RETRY_MIN,
            acme_retry_max: defaults::ACME_RETRY_MAX,
        }
    }
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("certmode", &self.certmode)
            .field("certdir", &self.certdir)
            .field("hostname", &self.hostname)
            .field("reload_interval", &self.reload_interval)
            .field("acme_directory", &self.acme_directory)
            .field("acme_email", &self.acme_email)
            .field("acme_eab_kid", &self.acme_eab_kid)
            // The EAB key is a secret.
            .field(
                "acme_eab_key",
                &self.acme_eab_key.as_ref().map(|_| "<secret>"),
            )
            .field("acme_ca_file", &self.acme_ca_file)
            .field("acme_challenge", &self.acme_challenge)
            .field("acme_retry_min", &self.acme_retry_min)
            .field("acme_retry_max", &self.acme_retry_max)
            .finish()
    }
}

impl TlsSettings {
    /// The certificate mode, `letsencrypt` when unset (Go's default).
    pub fn cert_mode(&self) -> &str {
        self.certmode.as_deref().unwrap_or(defaults::CERT_MODE)
    }

    /// The names of `hostname`, split at commas.
    pub fn hostnames(&self) -> Vec<String> {
        self.hostname
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mode = super::parse_cert_mode(self.cert_mode())?;
        let hostnames = self.hostnames();
        if hostnames.is_empty() {
            return Err(invalid("tls.hostname", "is empty (--hostname)"));
        }
        if mode == crate::tls::CertMode::Manual && hostnames.len() > 1 {
            return Err(invalid(
                "tls.hostname",
                "--certmode=manual serves one --hostname; a comma list needs --certmode=letsencrypt",
            ));
        }
        if mode == crate::tls::CertMode::LetsEncrypt {
            if hostnames.len() > defaults::ACME_MAX_HOSTNAMES {
                return Err(invalid(
                    "tls.hostname",
                    format!(
                        "at most {} names per certificate",
                        defaults::ACME_MAX_HOSTNAMES
                    ),
                ));
            }
            for h in &hostnames {
                if h.parse::<std::net::IpAddr>().is_ok() {
                    return Err(invalid(
                        "tls.hostname",
                        format!(
                            "{h:?} is an IP address; --certmode=letsencrypt needs DNS names (use --certmode=manual for a self-signed IP certificate)"
                        ),
                    ));
                }
            }
        }
        if !self.acme_directory.starts_with("https://") {
            return Err(invalid(
                "tls.acme_directory",
                format!(
                    "{:?} is not an https:// URL (--acme-directory)",
                    self.acme_directory
                ),
            ));
        }
        crate::acme::ChallengePreference::parse(&self.acme_challenge)
            .map_err(|e| invalid("tls.acme_challenge", e))?;
        if self.acme_retry_min.is_zero() {
            return Err(invalid("tls.acme_retry_min", "must be more than 0"));
        }
        if self.acme_retry_max < self.acme_retry_min {
            return Err(invalid(
                "tls.acme_retry_max",
                "must not be less than tls.acme_retry_min",
            ));
        }
        match (&self.acme_eab_kid, &self.acme_eab_key) {
            (Some(_), Some(key)) => {
                decode_eab_key(key).map_err(|e| invalid("tls.acme_eab_key", e))?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid(
                    "tls.acme_eab_key",
                    "--acme-eab-kid needs --acme-eab-key (or DERPER_ACME_EAB_KEY)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls.acme_eab_kid",
                    "--acme-eab-key needs --acme-eab-kid",
                ));
            }
        }
        Ok(())
    }
}

/// Decodes an EAB HMAC key: base64url without padding as CAs hand them out (and Go derper
/// reads them), or standard base64.
pub(crate) fn decode_eab_key(key: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let key = key.trim();
    let decoded = URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(key))
        .map_err(|_| "is not base64 (--acme-eab-key)".to_owned())?;
    if decoded.is_empty() {
        return Err("is empty (--acme-eab-key)".to_owned());
    }
    Ok(decoded)
}

/// `[relay]`: every tunable of the relay core ([`RelayConfig`] minus its key material).
///
/// [`RelayConfig`](crate::relay::RelayConfig) embeds it whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RelaySettings {
    /// `--queue-depth`: depth of each client's data and disco queues.
    pub queue_depth: usize,
    /// Depth of each client's control queue (PeerGone, KeepAlive, Restarting); mesh
    /// watchers' presence frames do not use it.
    pub control_queue_depth: usize,
    /// Keys a mesh watcher may have waiting for a PeerPresent/PeerGone frame before it is
    /// closed as hopelessly behind (it reconnects and gets a fresh, complete flood).
    pub mesh_presence_pending_max: usize,
    /// `--tcp-write-timeout`: per-flush write deadline for regular clients; `"0s"` (`None`)
    /// disables it.
    #[serde(with = "zero_disables")]
    pub write_timeout: Option<Duration>,
    /// `--mesh-write-timeout`: per-flush write deadline for mesh peers.
    #[serde(with = "go_duration")]
    pub mesh_write_timeout: Duration,
    /// `--handshake-timeout`: time a client has to complete the handshake.
    #[serde(with = "go_duration")]
    pub handshake_timeout: Duration,
    /// `--keepalive`: KeepAlive frame period before jitter.
    #[serde(with = "go_duration")]
    pub keepalive: Duration,
    /// Connections allowed per key.
    pub max_conns_per_key: usize,
    /// Receivers remembered per sender for PeerGone.
    pub max_peer_gone_watchers: usize,
    /// Mesh links that may announce one key.
    pub max_forwarders_per_key: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            queue_depth: defaults::QUEUE_DEPTH,
            control_queue_depth: defaults::CONTROL_QUEUE_DEPTH,
            mesh_presence_pending_max: defaults::MESH_PRESENCE_PENDING_MAX,
            write_timeout: Some(defaults::WRITE_TIMEOUT),
            mesh_write_timeout: defaults::MESH_WRITE_TIMEOUT,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            keepalive: defaults::KEEPALIVE,
            max_conns_per_key: defaults::MAX_CONNS_PER_KEY,
            max_peer_gone_watchers: defaults::MAX_PEER_GONE_WATCHERS,
            max_forwarders_per_key: defaults::MAX_FORWARDERS_PER_KEY,
        }
    }
}

impl RelaySettings {
    /// Refuses values the relay cannot run with, naming the key.
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("relay.queue_depth", self.queue_depth),
            ("relay.control_queue_depth", self.control_queue_depth),
            (
                "relay.mesh_presence_pending_max",
                self.mesh_presence_pending_max,
            ),
            ("relay.max_conns_per_key", self.max_conns_per_key),
            ("relay.max_peer_gone_watchers", self.max_peer_gone_watchers),
            ("relay.max_forwarders_per_key", self.max_forwarders_per_key),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, value, why) in [
            (
                "relay.handshake_timeout",
                self.handshake_timeout,
                "every handshake would time out",
            ),
            (
                "relay.keepalive",
                self.keepalive,
                "the writer would send KeepAlive frames back to back",
            ),
            (
                "relay.mesh_write_timeout",
                self.mesh_write_timeout,
                "every mesh write would time out; it cannot be disabled",
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(key, format!("must be more than 0 ({why})")));
            }
        }
        Ok(())
    }
}

/// `[mesh]`: the mesh key, the peers this relay links to, and how links behave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MeshSettings {
    /// `--mesh-psk-file`: file holding the 64-hex-digit mesh key; connections presenting it
    /// are mesh peers. Only the path is ever printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psk_file: Option<PathBuf>,
    /// `--mesh-with`: peers to link to, each `host`, `host/dial-host` (derper's syntax) or a
    /// URL, optionally with `#sha256-raw:<hex>` to pin the peer's certificate.
    pub peers: Vec<String>,
    /// `--mesh-allow-plain`: allow `http://` peers (the mesh key is then exposed to anyone
    /// in the path who answers as the peer).
    pub allow_plain: bool,
    /// `--mesh-ca`: CA bundle (PEM) that peer certificates must chain to, instead of the
    /// system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// ForwardPacket frames one link may queue before dropping the oldest.
    pub queue_packets: usize,
    /// Bytes one link may queue before dropping the oldest.
    pub queue_bytes: usize,
    /// Silence on a link after which it sends a Ping; three silent intervals end it.
    #[serde(with = "go_duration")]
    pub ping_interval: Duration,
    /// Budget for dialling a peer (TCP, TLS, upgrade and handshake).
    #[serde(with = "go_duration")]
    pub connect_timeout: Duration,
    /// First reconnect delay after a link breaks.
    #[serde(with = "go_duration")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(with = "go_duration")]
    pub reconnect_max: Duration,
    /// Write deadline on links (the inbound side uses `relay.mesh_write_timeout`).
    #[serde(with = "go_duration")]
    pub write_timeout: Duration,
    /// Keys one link may announce; more are refused and counted.
    pub max_keys_per_link: usize,
    /// How long an `auto://` link tries QUIC before dialling TCP/TLS instead.
    #[serde(with = "go_duration")]
    pub quic_fallback_after: Duration,
    /// How often an `auto://` link running over TCP tries QUIC again.
    #[serde(with = "go_duration")]
    pub quic_retry_interval: Duration,
    /// `[[mesh.dns]]`: names re-resolved on an interval; every address found is a peer
    /// (a Kubernetes headless Service, or SRV records).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<crate::mesh::dns::DnsSource>,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            psk_file: None,
            peers: Vec::new(),
            allow_plain: false,
            ca_file: None,
            queue_packets: defaults::MESH_LINK_QUEUE_PACKETS,
            queue_bytes: defaults::MESH_LINK_QUEUE_BYTES,
            ping_interval: defaults::MESH_PING_INTERVAL,
            connect_timeout: defaults::MESH_CONNECT_TIMEOUT,
            reconnect_min: defaults::MESH_RECONNECT_MIN,
            reconnect_max: defaults::MESH_RECONNECT_MAX,
            write_timeout: defaults::MESH_WRITE_TIMEOUT,
            max_keys_per_link: defaults::MESH_MAX_KEYS_PER_LINK,
            quic_fallback_after: defaults::MESH_QUIC_FALLBACK_AFTER,
            quic_retry_interval: defaults::MESH_QUIC_RETRY_INTERVAL,
            dns: Vec::new(),
        }
    }
}

impl MeshSettings {
    /// Whether outbound links are configured (static peers or DNS sources).
    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty() || !self.dns.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for peer in &self.peers {
            crate::mesh::PeerTarget::parse(peer)
                .map_err(|e| invalid("mesh.peers", e.to_string()))?;
        }
        for source in &self.dns {
            source.validate()?;
        }
        for (key, value) in [
            ("mesh.queue_packets", self.queue_packets),
            ("mesh.queue_bytes", self.queue_bytes),
            ("mesh.max_keys_per_link", self.max_keys_per_link),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        for (key, value) in [
            ("mesh.ping_interval", self.ping_interval),
            ("mesh.connect_timeout", self.connect_timeout),
            ("mesh.reconnect_min", self.reconnect_min),
            ("mesh.write_timeout", self.write_timeout),
            ("mesh.quic_fallback_after", self.quic_fallback_after),
            ("mesh.quic_retry_interval", self.quic_retry_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(invalid(
                "mesh.reconnect_max",
                "must not be less than mesh.reconnect_min",
            ));
        }
        if self.has_peers() && self.psk_file.is_none() {
            return Err(invalid(
                "mesh.peers",
                "--mesh-with and [[mesh.dns]] require --mesh-psk-file (mesh.psk_file)",
            ));
        }
        Ok(())
    }
}

/// `[admission]`: verifying clients before they may connect (mesh peers are exempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdmissionSettings {
    /// `--verify-client-url`: admission webhook asked with derper's JSON
    /// (`tailcfg.DERPAdmitClientRequest`), e.g. Headscale's `/verify`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_client_url: Option<String>,
    /// `--verify-clients`: ask the local tailscaled (LocalAPI whois) whether the node key is
    /// in its tailnet.
    pub verify_clients: bool,
    /// `--socket`: the tailscaled LocalAPI socket; unset: [`defaults::TAILSCALED_SOCKET`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tailscaled_socket: Option<PathBuf>,
    /// `--verify-client-url-fail-open`: admit clients when no backend answers. Off by default
    /// (unlike derper): an outage must not open a private relay to everyone.
    pub fail_open: bool,
    /// `--verify-client-timeout`: deadline for one admission, queueing included.
    #[serde(with = "go_duration")]
    pub timeout: Duration,
    /// `--verify-client-positive-ttl`: how long an allow is reused for reconnects.
    #[serde(with = "go_duration")]
    pub positive_ttl: Duration,
    /// `--verify-client-negative-ttl`: how long a deny is reused.
    #[serde(with = "go_duration")]
    pub negative_ttl: Duration,
    /// `--verify-client-bearer-token-file`: sent as `Authorization: Bearer <token>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// `--verify-client-reverify`: how often connected clients are asked again (a refusal
    /// disconnects them); `"0s"` disables.
    #[serde(with = "zero_disables")]
    pub reverify_interval: Option<Duration>,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            verify_client_url: None,
            verify_clients: false,
            tailscaled_socket: None,
            fail_open: false,
            timeout: defaults::ADMISSION_TIMEOUT,
            positive_ttl: defaults::ADMISSION_POSITIVE_TTL,
            negative_ttl: defaults::ADMISSION_NEGATIVE_TTL,
            bearer_token_file: None,
            reverify_interval: Some(defaults::ADMISSION_REVERIFY_INTERVAL),
        }
    }
}

impl AdmissionSettings {
    /// Whether any backend is configured.
    pub fn enabled(&self) -> bool {
        self.verify_client_url.is_some() || self.verify_clients
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.verify_client_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "admission.verify_client_url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        if let Some(url) = &self.verify_client_url
            && url.parse::<http::Uri>().is_err()
        {
            return Err(invalid(
                "admission.verify_client_url",
                format!("{url:?} is not a valid URL"),
            ));
        }
        for (key, value) in [
            ("admission.timeout", self.timeout),
            ("admission.positive_ttl", self.positive_ttl),
            ("admission.negative_ttl", self.negative_ttl),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        if !self.enabled() {
            for (key, set) in [
                ("admission.fail_open", self.fail_open),
                (
                    "admission.bearer_token_file",
                    self.bearer_token_file.is_some(),
                ),
                (
                    "admission.tailscaled_socket",
                    self.tailscaled_socket.is_some(),
                ),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        "has no effect without admission.verify_client_url (--verify-client-url) or admission.verify_clients (--verify-clients)",
                    ));
                }
            }
        }
        if self.tailscaled_socket.is_some() && !self.verify_clients {
            return Err(invalid(
                "admission.tailscaled_socket",
                "--socket is only used with --verify-clients",
            ));
        }
        Ok(())
    }
}

/// `[limits]`: rate limits on accepting connections and on what each client sends.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsSettings {
    /// `--accept-connection-limit`: new connections accepted per second on the main listener;
    /// more are closed at once (derper's behaviour). Unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_connection_limit: Option<f64>,
    /// `--accept-connection-burst`: connections accepted at once above the rate. Unset: one
    /// second's worth of the rate (derper's default, "unlimited", would make the rate moot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_connection_burst: Option<u32>,
    /// `--rate-config`: derper's JSON rate config (per-client bytes/s and burst), reloaded on
    /// SIGHUP without reconnecting clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_config: Option<PathBuf>,
}

impl LimitsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(rate) = self.accept_connection_limit
            && (rate.is_nan() || rate <= 0.0)
        {
            return Err(invalid(
                "limits.accept_connection_limit",
                "must be a positive number of connections per second",
            ));
        }
        if self.accept_connection_burst == Some(0) {
            return Err(invalid(
                "limits.accept_connection_burst",
                "must be at least 1",
            ));
        }
        if self.accept_connection_burst.is_some() && self.accept_connection_limit.is_none() {
            return Err(invalid(
                "limits.accept_connection_burst",
                "has no effect without limits.accept_connection_limit (--accept-connection-limit)",
            ));
        }
        Ok(())
    }

    /// The accept limit as (connections per second, burst), when one is set.
    pub fn accept_limit(&self) -> Option<(f64, u32)> {
        let rate = self.accept_connection_limit.filter(|r| r.is_finite())?;
        let burst = self
            .accept_connection_burst
            .unwrap_or_else(|| rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
        Some((rate, burst))
    }
}

/// `[derp_map]`: how this relay describes its region and itself at `/derpmap` (served only
/// when `region_id` is set). Peers are described from the mesh membership.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DerpMapSettings {
    /// `--derp-map-region-id`: the region's ID (Tailscale's own use 1–899; 900+ is customary
    /// for self-hosted ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_id: Option<u32>,
    /// `--derp-map-region-code`: short code, e.g. `fra`.
    pub region_code: String,
    /// `--derp-map-region-name`: human name, e.g. `Frankfurt`.
    pub region_name: String,
    /// `--derp-map-node-name`: this node's name; default: `tls.hostname`.
    pub node_name: String,
    /// `--derp-map-ipv4`: the public IPv4 address clients dial.
    pub ipv4: String,
    /// `--derp-map-ipv6`: the public IPv6 address clients dial.
    pub ipv6: String,
}

impl DerpMapSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let set = self.region_id.is_some();
        if !set
            && (!self.region_code.is_empty()
                || !self.region_name.is_empty()
                || !self.node_name.is_empty()
                || !self.ipv4.is_empty()
                || !self.ipv6.is_empty())
        {
            return Err(invalid(
                "derp_map.region_id",
                "must be set for the other derp_map keys to mean anything",
            ));
        }
        if self.region_id == Some(0) {
            return Err(invalid("derp_map.region_id", "must be at least 1"));
        }
        if !self.ipv4.is_empty() && self.ipv4.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(invalid(
                "derp_map.ipv4",
                format!("{:?} is not an IPv4 address", self.ipv4),
            ));
        }
        if !self.ipv6.is_empty() && self.ipv6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid(
                "derp_map.ipv6",
                format!("{:?} is not an IPv6 address", self.ipv6),
            ));
        }
        if set && self.region_code.is_empty() {
            return Err(invalid(
                "derp_map.region_code",
                "is required with derp_map.region_id",
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// Refuses contradictions and keys of features that are not built yet, naming the key.
    /// Reads no files: the mesh key is loaded by [`Settings::into_server_config`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::parse_listen(&self.listen.addr)?;
        if !self.listen.stun && !self.listen.stun_addrs.is_empty() {
            return Err(invalid(
                "listen.stun_addrs",
                "is set but listen.stun (--stun) is false",
            ));
        }
        self.tls.validate()?;
        if self.listen.quic_port == Some(0) {
            return Err(invalid(
                "listen.quic_port",
                "must be a port number (1-65535)",
            ));
        }
        if self.listen.quic_port.is_some() && self.mesh.psk_file.is_none() {
            return Err(invalid(
                "listen.quic_port",
                "only mesh peers may use QUIC: --quic-port needs --mesh-psk-file (mesh.psk_file)",
            ));
        }
        super::parse_home(&self.server.home)?;
        if !matches!(self.server.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                "server.log_format",
                format!("{:?}: use text or json", self.server.log_format),
            ));
        }
        for name in &self.server.bootstrap_dns_names {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(invalid(
                    "server.bootstrap_dns_names",
                    format!("{name:?} is not a host name"),
                ));
            }
        }
        self.relay.validate()?;
        self.mesh.validate()?;
        self.admission.validate()?;
        self.limits.validate()?;
        self.derp_map.validate()
    }

    /// The settings as a config file (TOML, the schema this module accepts).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(ConfigError::Print)
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}
