//! HTTP dates (RFC 9110 section 5.6.7): the three formats a recipient must
//! accept (IMF-fixdate, the obsolete RFC 850 and asctime forms), read as
//! seconds since the Unix epoch, and IMF-fixdate written.

use chrono::{DateTime, NaiveDateTime, Utc};

/// Seconds since the epoch of an HTTP date, or `None` when it does not
/// parse (callers then follow the RFC: an invalid `Expires` means already
/// expired, an invalid `Date` is ignored).
pub fn parse(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT, exactly (chrono would
    // take a one-digit hour and extra spaces, which the RFC does not).
    // The day's name is not checked against the date (as other caches
    // do): only the date counts.
    if text.len() == 29 {
        let (day, date) = text.split_at(5);
        if !(day.ends_with(", ") && day[..3].bytes().all(|b| b.is_ascii_alphabetic())) {
            return None;
        }
        return NaiveDateTime::parse_from_str(date, "%d %b %Y %H:%M:%S GMT")
            .ok()
            .map(|t| t.and_utc().timestamp());
    }
    // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT; a two-digit year more than
    // 50 years ahead is in the past century (RFC 9110 section 5.6.7).
    if let Some((_, rest)) = text.split_once(", ") {
        if let Ok(t) = NaiveDateTime::parse_from_str(rest, "%d-%b-%y %H:%M:%S GMT") {
            let mut secs = t.and_utc().timestamp();
            if secs > Utc::now().timestamp() + 50 * 365 * 86_400 {
                secs -= 100 * 365 * 86_400 + 25 * 86_400;
            }
            return Some(secs);
        }
    }
    // asctime: Sun Nov  6 08:49:37 1994
    let (day, date) = text.split_once(' ')?;
    if day.len() != 3 || !day.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let squeezed = date.split_whitespace().collect::<Vec<_>>().join(" ");
    NaiveDateTime::parse_from_str(&squeezed, "%b %e %H:%M:%S %Y")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// `secs` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn format(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_formats_read_as_one_moment() {
        let expected = Some(784_111_777);
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), expected);
        // A wrong day name does not undo the date.
        assert_eq!(parse(b"Mon, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(parse(b"Thu Nov  6 08:49:37 1994"), expected);
        assert_eq!(format(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn what_is_not_a_date_is_none() {
        for bad in [
            &b"Thu, 18  Aug  2050 02:01:18 GMT"[..],
            b"Thu, 18 Aug 2050 2:01:18 GMT",
            &b"0"[..],
            b"-1",
            b"",
            b"Sun, 06 Nov 1994 08:49:37 PST",
            b"tomorrow",
            b"\xff",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
