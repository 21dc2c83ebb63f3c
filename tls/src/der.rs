//! Just enough DER to read what the configuration checks and the logs show
//! from a certificate: its validity period and its subject's name. rustls
//! and webpki verify certificates; this module only reads them, and gives
//! up (`None`) on anything unexpected.

/// One tag-length-value element: its tag, its contents and what follows.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0]`, explicit: the version of a v3 certificate.
const VERSION: u8 = 0xa0;

/// The fields of `tbsCertificate` up to `subject`.
struct Tbs<'a> {
    validity: &'a [u8],
    subject: &'a [u8],
}

fn tbs(cert_der: &[u8]) -> Option<Tbs<'_>> {
    let (tag, cert, _) = element(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut fields, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, rest) = element(fields)?;
    if tag == VERSION {
        fields = rest;
        let (_serial, _, rest) = element(fields)?;
        fields = rest;
    } else {
        fields = rest;
    }
    let (_signature, _, rest) = element(fields)?;
    let (_issuer, _, rest) = element(rest)?;
    let (tag, validity, rest) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, subject, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    Some(Tbs { validity, subject })
}

/// Whether `bytes` are exactly one DER SEQUENCE (an OCSP response is one).
pub(crate) fn is_one_sequence(bytes: &[u8]) -> bool {
    matches!(element(bytes), Some((SEQUENCE, _, rest)) if rest.is_empty())
}

/// When the certificate stops being valid, in seconds since the Unix epoch.
pub(crate) fn not_after(cert_der: &[u8]) -> Option<i64> {
    let validity = tbs(cert_der)?.validity;
    let (_, _, rest) = element(validity)?;
    let (tag, time, _) = element(rest)?;
    parse_time(tag, time)
}

fn parse_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let (year, rest) = match tag {
        UTC_TIME => {
            let yy = digits(text.get(..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        GENERALIZED_TIME => (digits(text.get(..4)?)?, &text[4..]),
        _ => return None,
    };
    let month = digits(rest.get(0..2)?)?;
    let day = digits(rest.get(2..4)?)?;
    let hour = digits(rest.get(4..6)?)?;
    let minute = digits(rest.get(6..8)?)?;
    let second = digits(rest.get(8..10)?)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The certificate's subject as an RFC 4514 string (`CN=a,O=b`), with the
/// common attribute types named and others as dotted OIDs.
pub(crate) fn subject(cert_der: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = tbs(cert_der)?.subject;
    while !rest.is_empty() {
        let (tag, set, after) = element(rest)?;
        if tag != SET {
            return None;
        }
        let mut parts = Vec::new();
        let mut attrs = set;
        while !attrs.is_empty() {
            let (tag, attr, next) = element(attrs)?;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = element(attr)?;
            if tag != OID {
                return None;
            }
            let (_, value, _) = element(value)?;
            let mut part = attribute_name(oid);
            part.push('=');
            escape_into(&mut part, &String::from_utf8_lossy(value));
            parts.push(part);
            attrs = next;
        }
        rdns.push(parts.join("+"));
        rest = after;
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn attribute_name(oid: &[u8]) -> String {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return dotted(oid),
    };
    short.to_owned()
}

fn dotted(oid: &[u8]) -> String {
    let mut out = String::new();
    let mut value: u64 = 0;
    let mut first = true;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if first {
                let (a, b) = if value < 80 {
                    (value / 40, value % 40)
                } else {
                    (2, value - 80)
                };
                out.push_str(&format!("{a}.{b}"));
                first = false;
            } else {
                out.push_str(&format!(".{value}"));
            }
            value = 0;
        }
    }
    out
}

/// Escapes the characters RFC 4514 reserves in attribute values.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let reserved = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if reserved {
            out.push('\\');
        }
        if c.is_control() {
            out.push_str(&format!("\\{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            parse_time(GENERALIZED_TIME, b"20261206000000Z"),
            Some(1_796_515_200)
        );
        assert_eq!(parse_time(UTC_TIME, b"9913"), None);
    }

    #[test]
    fn reads_validity_and_subject_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client, one");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Ring");
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der();
        assert_eq!(not_after(der), Some(days_from_civil(2031, 5, 17) * 86_400));
        let subject = subject(der).expect("subject");
        assert!(
            subject == "O=Ring,CN=client\\, one" || subject == "CN=client\\, one,O=Ring",
            "{subject}"
        );
    }

    #[test]
    fn gives_up_on_garbage() {
        assert_eq!(not_after(b"\x30\x03\x02\x01"), None);
        assert_eq!(subject(&[]), None);
        assert_eq!(dotted(&[0x2b, 0x06, 0x01]), "1.3.6.1");
    }
}
