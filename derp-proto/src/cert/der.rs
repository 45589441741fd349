//! A minimal DER reader: just enough of X.690 to walk certificates and PKCS#8 keys.
//!
//! It accepts only the forms those structures use (low tag numbers, definite lengths of up to
//! four octets) and never allocates. Anything else reads as `None`, so a caller can treat
//! malformed input as "not what I am looking for" without panicking.

/// INTEGER.
pub const TAG_INTEGER: u8 = 0x02;
/// BIT STRING.
pub const TAG_BIT_STRING: u8 = 0x03;
/// OCTET STRING.
pub const TAG_OCTET_STRING: u8 = 0x04;
/// OBJECT IDENTIFIER.
pub const TAG_OID: u8 = 0x06;
/// UTF8String.
pub const TAG_UTF8_STRING: u8 = 0x0c;
/// PrintableString.
pub const TAG_PRINTABLE_STRING: u8 = 0x13;
/// T61String (TeletexString).
pub const TAG_T61_STRING: u8 = 0x14;
/// IA5String.
pub const TAG_IA5_STRING: u8 = 0x16;
/// UTCTime.
pub const TAG_UTC_TIME: u8 = 0x17;
/// GeneralizedTime.
pub const TAG_GENERALIZED_TIME: u8 = 0x18;
/// BMPString.
pub const TAG_BMP_STRING: u8 = 0x1e;
/// SEQUENCE (constructed).
pub const TAG_SEQUENCE: u8 = 0x30;
/// SET (constructed).
pub const TAG_SET: u8 = 0x31;
/// Context-specific constructed `[0]`, e.g. a certificate's explicit version.
pub const TAG_EXPLICIT_0: u8 = 0xa0;

/// Longest length field accepted, in octets: 4 GiB is far beyond any certificate or key.
const MAX_LENGTH_OCTETS: usize = 4;

/// A cursor over concatenated DER TLVs.
#[derive(Debug, Clone, Copy)]
pub struct DerReader<'a>(&'a [u8]);

impl<'a> DerReader<'a> {
    /// A reader positioned at the start of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self(input)
    }

    /// Reads one TLV, returning its tag and contents.
    ///
    /// Returns `None` (and leaves the cursor unspecified) on a high tag number, an indefinite
    /// length (BER only), a length field over four octets, or contents running past the input.
    pub fn read(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > MAX_LENGTH_OCTETS {
                return None;
            }
            let (octets, after) = rest.split_at_checked(n)?;
            rest = after;
            octets
                .iter()
                .fold(0usize, |acc, &b| acc << 8 | usize::from(b))
        };
        let (value, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some((tag, value))
    }

    /// Reads one TLV that must carry `tag`, returning its contents.
    pub fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (t, value) = self.read()?;
        (t == tag).then_some(value)
    }

    /// The tag of the next TLV, without consuming it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// Whether every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes not yet read.
    pub fn remaining(&self) -> &'a [u8] {
        self.0
    }
}

/// Parses a DER UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) into Unix
/// seconds. Other tags, lengths, time zones and out-of-range fields yield `None`.
pub fn parse_time(tag: u8, value: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, value.len()) {
        (TAG_UTC_TIME, 13) => {
            let yy = digits(&value[..2])?;
            // RFC 5280 4.1.2.5.1: two-digit years 50..99 are 19xx, 00..49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &value[2..])
        }
        (TAG_GENERALIZED_TIME, 15) => (digits(&value[..4])?, &value[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_and_long_lengths() {
        // SEQUENCE(3){ INTEGER 5 } then OCTET STRING with a 0x81 long-form length of 2.
        let input = [0x30, 0x03, 0x02, 0x01, 0x05, 0x04, 0x81, 0x02, 0xaa, 0xbb];
        let mut r = DerReader::new(&input);
        let seq = r.expect(TAG_SEQUENCE).expect("sequence");
        assert_eq!(DerReader::new(seq).expect(TAG_INTEGER), Some(&[5][..]));
        assert_eq!(r.peek_tag(), Some(TAG_OCTET_STRING));
        assert_eq!(r.read(), Some((TAG_OCTET_STRING, &[0xaa, 0xbb][..])));
        assert!(r.is_empty());
        assert_eq!(r.read(), None);
    }

    #[test]
    fn rejects_forms_certificates_do_not_use() {
        assert_eq!(DerReader::new(&[0x1f, 0x01, 0x00]).read(), None); // high tag number
        assert_eq!(DerReader::new(&[0x30, 0x80, 0, 0]).read(), None); // indefinite length
        assert_eq!(DerReader::new(&[0x04, 0x85, 0, 0, 0, 0, 1, 0]).read(), None); // 5 octets
        assert_eq!(DerReader::new(&[0x04, 0x02, 0]).read(), None); // truncated contents
        assert_eq!(DerReader::new(&[0x04]).read(), None); // no length
        assert_eq!(
            DerReader::new(&[0x02, 0x01, 0x05]).expect(TAG_SEQUENCE),
            None
        );
    }

    #[test]
    fn time_parsing() {
        assert_eq!(parse_time(TAG_UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(
            parse_time(TAG_UTC_TIME, b"491231235959Z"),
            Some(2_524_607_999)
        );
        assert_eq!(
            parse_time(TAG_GENERALIZED_TIME, b"20000229120000Z"),
            Some(951_825_600)
        );
        assert_eq!(parse_time(TAG_GENERALIZED_TIME, b"21000229120000Z"), None); // not leap
        assert_eq!(parse_time(TAG_UTC_TIME, b"700101000000+"), None);
        assert_eq!(parse_time(TAG_UTC_TIME, b"7001010000Z"), None);
        assert_eq!(parse_time(TAG_INTEGER, b"700101000000Z"), None);
    }
}
