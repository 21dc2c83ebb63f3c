//! Wall-clock time for log lines, in UTC: the three spellings the formats
//! use (`06/Dec/2026:07:50:39 +0000`, `2026-12-06T07:50:39+00:00`, and
//! seconds with milliseconds since the epoch).
//! Each worker keeps the text of the current second and formats it again
//! only when the second changes, as nginx caches its time strings.

use std::{
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

/// A moment, to the millisecond, since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// Whole seconds.
    pub secs: i64,
    /// Milliseconds past them.
    pub millis: u32,
}

impl Moment {
    /// Now, by the system clock.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Self {
                secs: d.as_secs() as i64,
                millis: d.subsec_millis(),
            },
            // A clock before 1970: log the epoch rather than fail.
            Err(_) => Self { secs: 0, millis: 0 },
        }
    }
}

/// The text of one second in each spelling, kept until the second
/// changes.
#[derive(Debug, Default)]
pub struct TimeCache {
    secs: Option<i64>,
    /// `06/Dec/2026:07:50:39 +0000` (nginx's `$time_local`, in UTC).
    local: Vec<u8>,
    /// `2026-12-06T07:50:39+00:00` (`$time_iso8601`).
    iso: Vec<u8>,
}

impl TimeCache {
    /// The texts of `at`'s second: (`$time_local`, `$time_iso8601`).
    pub fn texts(&mut self, at: Moment) -> (&[u8], &[u8]) {
        if self.secs != Some(at.secs) {
            let utc = chrono::DateTime::from_timestamp(at.secs, 0).unwrap_or_default();
            self.local.clear();
            let _ = write!(self.local, "{}", utc.format("%d/%b/%Y:%H:%M:%S +0000"));
            self.iso.clear();
            let _ = write!(self.iso, "{}", utc.format("%Y-%m-%dT%H:%M:%S+00:00"));
            self.secs = Some(at.secs);
        }
        (&self.local, &self.iso)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(secs: i64) -> (String, String) {
        let mut cache = TimeCache::default();
        let (local, iso) = cache.texts(Moment { secs, millis: 0 });
        (
            String::from_utf8_lossy(local).into_owned(),
            String::from_utf8_lossy(iso).into_owned(),
        )
    }

    #[test]
    fn dates_match_known_moments() {
        assert_eq!(
            texts(0),
            (
                "01/Jan/1970:00:00:00 +0000".into(),
                "1970-01-01T00:00:00+00:00".into()
            )
        );
        // `date -u -d @1796543439`
        assert_eq!(texts(1_796_543_439).0, "06/Dec/2026:07:50:39 +0000");
        // A leap day, and the last second of a year.
        assert_eq!(texts(951_782_400).1, "2000-02-29T00:00:00+00:00");
        assert_eq!(texts(1_735_689_599).1, "2024-12-31T23:59:59+00:00");
    }

    #[test]
    fn the_cache_formats_again_when_the_second_changes() {
        let mut cache = TimeCache::default();
        let first = cache.texts(Moment { secs: 60, millis: 1 }).0.to_vec();
        assert_eq!(
            cache
                .texts(Moment {
                    secs: 60,
                    millis: 999
                })
                .0,
            &first[..]
        );
        assert_eq!(
            cache.texts(Moment { secs: 61, millis: 0 }).0,
            b"01/Jan/1970:00:01:01 +0000"
        );
    }
}
