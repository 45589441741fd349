//! Pure decisions of the ACME task: when to renew, and which challenge to answer.

use std::time::{Duration, SystemTime};

use instant_acme::ChallengeType;

use crate::defaults;

/// Which challenge type the relay answers (`--acme-challenge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChallengePreference {
    /// TLS-ALPN-01 when the main listener is on port 443 (where CAs connect), else HTTP-01
    /// when `--http-port` is served, else TLS-ALPN-01 (for a port forwarded from 443).
    Auto,
    /// Always TLS-ALPN-01 on the main listener.
    TlsAlpn01,
    /// Always HTTP-01 on the `--http-port` listener.
    Http01,
}

impl ChallengePreference {
    /// Parses `auto`, `tls-alpn-01` or `http-01`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            "http-01" => Ok(Self::Http01),
            other => Err(format!(
                "unknown ACME challenge {other:?}: use auto, tls-alpn-01 or http-01"
            )),
        }
    }
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal: after
/// [`defaults::ACME_RENEW_NUMERATOR`] / [`defaults::ACME_RENEW_DENOMINATOR`] of its lifetime.
pub(crate) fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let elapsed = lifetime * defaults::ACME_RENEW_NUMERATOR / defaults::ACME_RENEW_DENOMINATOR;
    // A reversed window (not_after first) is due at its not_after, i.e. long ago.
    (not_before + elapsed).min(not_after)
}

/// How long after `now` renewal is due (zero when it is).
pub(crate) fn renew_in(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    renew_at(not_before, not_after)
        .duration_since(now)
        .unwrap_or_default()
}

/// The challenge to answer among those the CA `offered`, or `None` when none fits.
pub(crate) fn pick_challenge(
    preference: ChallengePreference,
    offered: &[ChallengeType],
    main_port: u16,
    have_http: bool,
) -> Option<ChallengeType> {
    let has = |t: &ChallengeType| offered.contains(t);
    let alpn = has(&ChallengeType::TlsAlpn01).then_some(ChallengeType::TlsAlpn01);
    let http = (have_http && has(&ChallengeType::Http01)).then_some(ChallengeType::Http01);
    match preference {
        ChallengePreference::TlsAlpn01 => alpn,
        ChallengePreference::Http01 => http,
        ChallengePreference::Auto if main_port == 443 => alpn.or(http),
        ChallengePreference::Auto => http.or(alpn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::UNIX_EPOCH;

    #[test]
    fn renews_after_two_thirds() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(90 * 86_400);
        assert_eq!(
            renew_at(start, end),
            start + Duration::from_secs(60 * 86_400)
        );
        assert_eq!(
            renew_in(start, end, start + Duration::from_secs(59 * 86_400)),
            Duration::from_secs(86_400)
        );
        assert_eq!(renew_in(start, end, end), Duration::ZERO, "overdue: now");
        // A nonsensical window (end before start) renews at once.
        assert_eq!(renew_in(end, start, start), Duration::ZERO);
    }

    #[test]
    fn challenge_choice() {
        use ChallengePreference::*;
        use ChallengeType::{Dns01, Http01 as H, TlsAlpn01 as T};
        let all = [H, Dns01, T];
        assert_eq!(pick_challenge(Auto, &all, 443, true), Some(T));
        assert_eq!(pick_challenge(Auto, &all, 8443, true), Some(H));
        assert_eq!(pick_challenge(Auto, &all, 8443, false), Some(T));
        assert_eq!(pick_challenge(Auto, &[H], 443, true), Some(H));
        assert_eq!(pick_challenge(Auto, &[Dns01], 443, true), None);
        assert_eq!(pick_challenge(Http01, &all, 443, true), Some(H));
        assert_eq!(pick_challenge(Http01, &all, 443, false), None);
        assert_eq!(pick_challenge(TlsAlpn01, &[H], 8443, true), None);
        assert!(ChallengePreference::parse("dns-01").is_err());
        assert_eq!(ChallengePreference::parse("http-01"), Ok(Http01));
    }
}
