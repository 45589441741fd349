//! Go `time.Duration` syntax (`1m30s`, `250ms`, `0`) for flags and the config file.
//!
//! Parsing is exact (integer nanoseconds, no floating point) so that a duration printed by
//! [`format_go_duration`] parses back to the same value.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Parses a Go `time.Duration` string (`1h2m3.5s`, `300ms`, `0`). Negative durations are
/// refused: every duration in this relay is a timeout or a period.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!("duration {s:?} is negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    let mut total_ns: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} is missing a unit (e.g. 2s, 10m)"))?;
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(format!("invalid unit {unit:?} in duration {s:?}")),
        };
        total_ns = total_ns
            .checked_add(scaled(num, unit_ns).ok_or_else(|| format!("invalid duration {s:?}"))?)
            .ok_or_else(|| format!("duration {s:?} is too large"))?;
        rest = tail;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000)
        .map_err(|_| format!("duration {s:?} is too large"))?;
    // The remainder of a division by 10^9 fits in u32.
    let nanos = (total_ns % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// `num` (digits with at most one `.`) times `unit_ns`, truncated to whole nanoseconds as Go
/// does.
fn scaled(num: &str, unit_ns: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(unit_ns)?;
    let mut scale = unit_ns;
    for b in frac.bytes() {
        // Digits beyond nanosecond precision contribute nothing once `scale` reaches 0.
        scale /= 10;
        value = value.checked_add(u128::from(b - b'0') * scale)?;
    }
    Some(value)
}

/// Formats a duration as Go's `time.Duration.String` does (`2s`, `1m30s`, `10m0s`, `250ms`).
pub fn format_go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ns = d.as_nanos();
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", fraction(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", fraction(ns, 1_000_000));
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3_600, secs / 60 % 60, secs % 60);
    let s = fraction(
        u128::from(s) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `value / unit` as a decimal with trailing zeros trimmed.
fn fraction(value: u128, unit: u128) -> String {
    let (int, rem) = (value / unit, value % unit);
    if rem == 0 {
        return int.to_string();
    }
    let width = unit.ilog10() as usize;
    let frac = format!("{rem:0width$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// A [`Duration`] that reads and prints in Go syntax; the type of duration flags, so their
/// `--help` defaults come from [`crate::defaults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl FromStr for GoDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_go_duration(s).map(Self)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_go_duration(self.0))
    }
}

/// Serde helper for `Duration` fields written as Go duration strings
/// (`#[serde(with = "go_duration")]`).
pub(crate) mod go_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_go_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_go_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde helper for a deadline that `0` disables, as Go's `-tcp-write-timeout`: `None` is
/// written as `"0s"`.
pub(crate) mod zero_disables {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        super::go_duration::serialize(&d.unwrap_or(Duration::ZERO), s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::go_duration::deserialize(d).map(|d| (!d.is_zero()).then_some(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse_go_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_go_duration("300ms").unwrap(),
            Duration::from_millis(300)
        );
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5_400)
        );
        assert_eq!(
            parse_go_duration(".5s").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_go_duration("10µs").unwrap(),
            Duration::from_micros(10)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "5", "5x", "-1s", "s", ".s", "1..2s", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn formats_as_go_and_round_trips() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(600), "10m0s"),
            (Duration::from_secs(3_600), "1h0m0s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(10), "10µs"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::new(1, 1), "1.000000001s"),
        ] {
            assert_eq!(format_go_duration(d), text);
            assert_eq!(parse_go_duration(text).unwrap(), d);
        }
    }
}
