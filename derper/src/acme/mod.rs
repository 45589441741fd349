//! ACME (RFC 8555) certificates for `--certmode=letsencrypt`: ordered, cached and renewed by one
//! background task owned by the server, and swapped into the live TLS resolver without a restart
//! (established connections keep their session; only new handshakes see the new certificate).
//!
//! - [`challenge`]: the answers the CA checks: HTTP-01 on the `--http-port` listener,
//!   TLS-ALPN-01 on the main listener (`acme-tls/1`).
//! - [`cache`]: `--certdir` files (account, certificate, key), reused across restarts.
//! - [`schedule`]: when to renew and which challenge to answer (pure).
//! - [`http`]: the HTTPS client instant-acme uses (our roots, timeouts, size cap).
//!
//! **Start-up without a cached certificate does not wait for one.** The CA validates by
//! connecting to this relay (TLS-ALPN-01 is answered by the main listener itself), so the
//! listeners must be up first: the relay serves at once, DERP TLS handshakes fail until the
//! first certificate arrives (seconds, normally), and the plain listener, STUN and metrics work
//! throughout. A cached certificate is served at once and renewed when due.
//!
//! **Failures keep the current certificate.** A failed attempt (CA unreachable, an error
//! answer, failed validation) is counted by outcome in `derp_acme_attempts_total`, logged
//! once (repeats of the same outcome are logged at debug until it changes or succeeds) and
//! retried after a jittered, doubling delay from `retry_min` to `retry_max`.

mod cache;
mod challenge;
mod http;
mod schedule;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use derp_proto::backoff::{Backoff, BackoffConfig, Jitter};
use derp_proto::cert::parse_cert_summary;
use derp_proto::io::tls::{ServerVerify, client_config};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

use self::cache::Cache;
pub use self::challenge::Challenges;
use self::http::AcmeHttp;
pub use self::schedule::ChallengePreference;
use crate::defaults;
use crate::metrics::{AcmeOutcome, Metrics};
use crate::tls::{self, CertReloader, TlsError, TlsOptions, TlsSetup};

/// `--certmode=letsencrypt` settings (the `[tls]` ACME keys).
#[derive(Clone)]
#[non_exhaustive]
pub struct AcmeOptions {
    /// `--acme-directory`: the CA's directory URL.
    pub directory: String,
    /// Every name the certificate covers (`--hostname`, a comma list); the first names the
    /// cache files.
    pub hostnames: Vec<String>,
    /// `--acme-email`: contact address given to the CA (expiry warnings).
    pub email: Option<String>,
    /// `--acme-eab-kid` + `--acme-eab-key`: external account binding, for CAs that need one.
    pub eab: Option<ExternalAccount>,
    /// `--acme-ca-file`: PEM roots the CA's HTTPS endpoint must chain to, instead of the
    /// system's (a private CA, or Pebble in tests).
    pub ca_file: Option<PathBuf>,
    /// `--acme-challenge`: which validation to answer.
    pub challenge: ChallengePreference,
    /// First delay after a failed attempt.
    pub retry_min: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// How long one order may take from creation to certificate.
    pub order_timeout: Duration,
}

impl AcmeOptions {
    /// Let's Encrypt production for `hostnames`, every other knob at its default.
    pub fn new(hostnames: Vec<String>) -> Self {
        Self {
            directory: defaults::ACME_DIRECTORY.to_owned(),
            hostnames,
            email: None,
            eab: None,
            ca_file: None,
            challenge: ChallengePreference::Auto,
            retry_min: defaults::ACME_RETRY_MIN,
            retry_max: defaults::ACME_RETRY_MAX,
            order_timeout: defaults::ACME_ORDER_TIMEOUT,
        }
    }
}

impl fmt::Debug for AcmeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeOptions")
            .field("directory", &self.directory)
            .field("hostnames", &self.hostnames)
            .field("email", &self.email)
            .field("eab", &self.eab)
            .field("ca_file", &self.ca_file)
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

/// An external account binding (RFC 8555 7.3.4): the CA's key id and its HMAC key.
#[derive(Clone)]
pub struct ExternalAccount {
    /// `--acme-eab-kid`.
    pub kid: String,
    /// `--acme-eab-key`, base64-decoded.
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The HMAC key is a secret: never printed.
        f.debug_struct("ExternalAccount")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why ACME could not be set up at start-up (issuance failures are retried, not fatal).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeSetupError {
    /// No hostname to order a certificate for.
    #[error("--certmode=letsencrypt needs at least one --hostname")]
    NoHostnames,
    /// `--acme-ca-file` is unusable.
    #[error("--acme-ca-file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The TLS side refused the hostnames or could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why one issuance attempt failed. Each maps to an [`AcmeOutcome`].
#[derive(Debug, thiserror::Error)]
enum IssueError {
    #[error("ACME account at {directory}: {source}")]
    Account {
        directory: String,
        source: instant_acme::Error,
    },
    #[error("ordering a certificate: {0}")]
    Order(instant_acme::Error),
    #[error("{0}")]
    NoChallenge(String),
    #[error("validation failed: {0}")]
    Validation(String),
    #[error("finalizing the order: {0}")]
    Finalize(String),
    #[error("the CA's certificate is unusable: {0}")]
    Certificate(TlsError),
}

impl IssueError {
    fn outcome(&self) -> AcmeOutcome {
        match self {
            Self::Account { .. } => AcmeOutcome::AccountError,
            Self::Order(_) => AcmeOutcome::OrderError,
            Self::NoChallenge(_) | Self::Validation(_) => AcmeOutcome::ValidationFailed,
            Self::Finalize(_) | Self::Certificate(_) => AcmeOutcome::FinalizeError,
        }
    }
}

/// The validity window of a served certificate.
#[derive(Debug, Clone, Copy)]
struct Validity {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Validity {
    fn of(leaf: &CertificateDer<'_>) -> Option<Self> {
        let summary = parse_cert_summary(leaf)?;
        let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        Some(Self {
            not_before: at(summary.not_before),
            not_after: at(summary.not_after),
        })
    }
}

/// The ACME side of a running server: owns the account, the cache and the renewal schedule.
pub(crate) struct Acme {
    opts: AcmeOptions,
    cache: Cache,
    challenges: Arc<Challenges>,
    reloader: CertReloader,
    metrics: Arc<Metrics>,
    http: AcmeHttp,
    /// The certificate served now, if any.
    current: Option<Validity>,
    /// The account, once created or loaded.
    account: Option<Account>,
}

impl fmt::Debug for Acme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acme")
            .field("opts", &self.opts)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// Builds the TLS setup of `letsencrypt` mode (serving the cached certificate, if one fits)
/// and the task state that keeps it issued. Blocking file I/O.
pub(crate) fn prepare(
    tls_opts: &TlsOptions,
    opts: &AcmeOptions,
    server_public_key: &[u8; 32],
    metrics: Arc<Metrics>,
) -> Result<(TlsSetup, Acme), AcmeSetupError> {
    let first = opts.hostnames.first().ok_or(AcmeSetupError::NoHostnames)?;
    let cache = Cache::new(&tls_opts.cert_dir, &opts.directory, first);
    let challenges = Arc::new(Challenges::new(Arc::clone(&metrics)));
    let cached = cache.load_cert();
    let cached_validity = cached
        .as_ref()
        .and_then(|(chain, _, _)| chain.first())
        .and_then(Validity::of);
    let setup = tls::acme_setup(
        &opts.hostnames,
        cached,
        Arc::clone(&challenges),
        server_public_key,
    )?;
    let current = setup.current().and(cached_validity);
    if let Some(v) = current {
        tracing::info!(
            path = %cache.cert_path().display(),
            not_after = %humantime_utc(v.not_after),
            "serving the cached ACME certificate"
        );
        metrics.cert_not_after(v.not_after);
    } else {
        tracing::info!(
            hostnames = ?opts.hostnames,
            directory = %opts.directory,
            "no cached ACME certificate: ordering one; DERP TLS handshakes fail until it is issued"
        );
    }
    let roots = match &opts.ca_file {
        Some(path) => ServerVerify::Roots(Arc::new(load_roots(path)?)),
        None => system_roots(),
    };
    let reloader = setup.reloader();
    Ok((
        setup,
        Acme {
            opts: opts.clone(),
            cache,
            challenges,
            reloader,
            metrics,
            http: AcmeHttp::new(client_config(roots)),
            current,
            account: None,
        },
    ))
}

impl Acme {
    /// The challenge answers the `--http-port` listener serves.
    pub(crate) fn challenges(&self) -> Arc<Challenges> {
        Arc::clone(&self.challenges)
    }

    /// Keeps a certificate issued until `cancel`: orders one when there is none, renews after
    /// 2/3 of its lifetime, retries failures with backoff. `main_port` and `have_http` steer
    /// the challenge choice.
    pub(crate) async fn run(mut self, main_port: u16, have_http: bool, cancel: CancellationToken) {
        let mut backoff_config = BackoffConfig::new();
        backoff_config.min_delay = self.opts.retry_min;
        backoff_config.max_delay = self.opts.retry_max;
        backoff_config.jitter = Jitter::Full;
        let mut backoff = Backoff::new(backoff_config);
        // The next attempt after a failure, until one succeeds.
        let mut retry_in: Option<Duration> = None;
        // The outcome of the last failure: repeats of the same kind are logged at debug (their
        // text differs anyway: tokens, URLs), so a CA that stays down is reported once.
        let mut last_failure: Option<AcmeOutcome> = None;
        loop {
            let wait = match (retry_in, self.current) {
                (Some(delay), _) => delay,
                (None, Some(v)) => {
                    self.metrics
                        .acme_renewal_due(schedule::renew_at(v.not_before, v.not_after));
                    schedule::renew_in(v.not_before, v.not_after, SystemTime::now())
                }
                (None, None) => Duration::ZERO,
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let attempt = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.issue(main_port, have_http) => r,
            };
            // However the order ended, its challenge answers are no longer needed.
            self.challenges.clear();
            match attempt {
                Ok(validity) => {
                    self.metrics.acme_attempt(AcmeOutcome::Issued);
                    self.metrics.cert_not_after(validity.not_after);
                    tracing::info!(
                        hostnames = ?self.opts.hostnames,
                        not_after = %humantime_utc(validity.not_after),
                        renew_after = %humantime_utc(schedule::renew_at(validity.not_before, validity.not_after)),
                        "ACME certificate issued and serving"
                    );
                    self.current = Some(validity);
                    backoff.reset();
                    retry_in = None;
                    last_failure = None;
                }
                Err(e) => {
                    self.metrics.acme_attempt(e.outcome());
                    let delay =
                        backoff.next_delay(std::time::Instant::now(), &mut rand::thread_rng());
                    let message = e.to_string();
                    let serving = match self.current {
                        Some(v) => format!(
                            "keeping the current certificate (expires {})",
                            humantime_utc(v.not_after)
                        ),
                        None => "no certificate yet: DERP TLS handshakes fail".to_owned(),
                    };
                    if last_failure == Some(e.outcome()) {
                        tracing::debug!(error = %message, retry_in = ?delay, attempt = backoff.attempts(), "ACME attempt failed again");
                    } else {
                        tracing::warn!(
                            error = %message,
                            hostnames = ?self.opts.hostnames,
                            directory = %self.opts.directory,
                            retry_in = ?delay,
                            "ACME certificate attempt failed; {serving}"
                        );
                    }
                    last_failure = Some(e.outcome());
                    retry_in = Some(delay);
                }
            }
        }
    }

    /// The account: cached, or created (and cached).
    async fn account(&mut self) -> Result<Account, IssueError> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let fail = |source| IssueError::Account {
            directory: self.opts.directory.clone(),
            source,
        };
        let builder = || Account::builder_with_http(Box::new(self.http.clone()));
        let account = match self.cache.load_account() {
            Some(credentials) => builder()
                .from_credentials(credentials)
                .await
                .map_err(fail)?,
            None => {
                let contact = self.opts.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = self
                    .opts
                    .eab
                    .as_ref()
                    .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder()
                    .create(&new, self.opts.directory.clone(), eab.as_ref())
                    .await
                    .map_err(fail)?;
                if let Err(e) = self.cache.save_account(&credentials) {
                    tracing::warn!(error = %e, "cannot cache the ACME account; a restart creates another");
                }
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// One order, from creation to a served certificate.
    async fn issue(&mut self, main_port: u16, have_http: bool) -> Result<Validity, IssueError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .opts
            .hostnames
            .iter()
            .map(|h| Identifier::Dns(h.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| {
                // A stale cached account (deleted at the CA) is only found out here; forget
                // it so the next attempt starts over.
                self.account = None;
                IssueError::Order(e)
            })?;

        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(IssueError::Order)?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                // Validated recently for this account: nothing to answer.
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(IssueError::Validation(format!(
                        "authorization for {} is {other:?}",
                        authz.identifier()
                    )));
                }
            }
            let name = authz.identifier().to_string();
            let offered: Vec<ChallengeType> =
                authz.challenges.iter().map(|c| c.r#type.clone()).collect();
            let kind = schedule::pick_challenge(
                self.opts.challenge,
                &offered,
                main_port,
                have_http,
            )
            .ok_or_else(|| {
                IssueError::NoChallenge(format!(
                    "the CA offers {offered:?} for {name}, none of which this relay can answer \
                         with --acme-challenge {:?} (HTTP-01 needs --http-port)",
                    self.opts.challenge
                ))
            })?;
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| IssueError::NoChallenge(format!("{kind:?} vanished for {name}")))?;
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeType::Http01 => self
                    .challenges
                    .add_http01(&challenge.token, key_authorization.as_str()),
                _ => self
                    .challenges
                    .add_tls_alpn01(&name, key_authorization.digest().as_ref())
                    .map_err(IssueError::NoChallenge)?,
            }
            challenge.set_ready().await.map_err(IssueError::Order)?;
        }

        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.opts.order_timeout);
        let status = order.poll_ready(&retry).await.map_err(|e| match e {
            instant_acme::Error::Api(problem) => IssueError::Validation(problem.to_string()),
            other => IssueError::Order(other),
        })?;
        if status != OrderStatus::Ready {
            // Collect the CA's reasons from the authorizations.
            let mut reasons = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut authz)) = authorizations.next().await {
                if authz.refresh().await.is_ok() {
                    for c in &authz.challenges {
                        if let Some(problem) = &c.error {
                            reasons.push(format!(
                                "{} {:?}: {problem}",
                                authz.identifier(),
                                c.r#type
                            ));
                        }
                    }
                }
            }
            return Err(IssueError::Validation(if reasons.is_empty() {
                format!("order is {status:?}")
            } else {
                reasons.join("; ")
            }));
        }
        self.challenges.clear();

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IssueError::Finalize(e.to_string()))?;
        let mut params = CertificateParams::new(self.opts.hostnames.clone())
            .map_err(|e| IssueError::Finalize(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| IssueError::Finalize(e.to_string()))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| IssueError::Finalize(e.to_string()))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| IssueError::Finalize(e.to_string()))?;

        let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IssueError::Finalize(format!("certificate chain is not PEM: {e}")))?;
        let validity = chain.first().and_then(Validity::of).ok_or_else(|| {
            IssueError::Finalize("no parsable certificate in the answer".to_owned())
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let origin = self.cache.cert_path().to_owned();
        let signing = tls::load_key(&provider, der, &origin).map_err(IssueError::Certificate)?;
        self.reloader
            .install(chain, signing, &origin)
            .map_err(IssueError::Certificate)?;
        if let Err(e) = self.cache.save_cert(&chain_pem, &key.serialize_pem()) {
            tracing::warn!(error = %e, path = %origin.display(), "cannot cache the new ACME certificate; a restart orders another");
        }
        Ok(validity)
    }
}

/// Roots from a PEM bundle.
fn load_roots(path: &std::path::Path) -> Result<RootCertStore, AcmeSetupError> {
    tls::load_root_bundle(path).map_err(|reason| AcmeSetupError::CaFile {
        path: path.to_owned(),
        reason,
    })
}

/// The system trust store (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`); the built-in Mozilla
/// roots (which include Let's Encrypt's) when the system has none.
fn system_roots() -> ServerVerify {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return ServerVerify::WebPki;
    }
    ServerVerify::Roots(Arc::new(roots))
}

/// RFC 3339 UTC for log lines.
fn humantime_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    match time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{secs}s after the epoch"),
    }
}
