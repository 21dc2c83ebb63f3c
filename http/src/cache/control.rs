//! `Cache-Control` (RFC 9111 section 5.2, and RFC 5861's two stale
//! directives), read from every field line of a head, for requests and for
//! responses. Directive names are case-insensitive; arguments are tokens or
//! quoted strings; the first occurrence of a directive counts.

/// A delta-seconds value past this is this (RFC 9111 section 1.2.2).
pub const MAX_DELTA: u64 = 2_147_483_648;

/// What a response's `Cache-Control` says to a shared cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage` (shared caches only; it also implies
    /// `proxy-revalidate`).
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`, with or without field names: a stored response is used
    /// only once revalidated (the qualified form is read as the plain one,
    /// which is what it asks and more).
    pub no_cache: bool,
    /// `private`, with or without field names (the qualified form is read
    /// as the plain one: nothing is stored).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand` (with `no-store`: store only statuses this cache
    /// understands).
    pub must_understand: bool,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<u64>,
}

/// What a request's `Cache-Control` asks of a cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `max-age`: no response older than this.
    pub max_age: Option<u64>,
    /// `max-stale`: a stale response will do, by at most this much
    /// (`Some(None)`: by any amount).
    pub max_stale: Option<Option<u64>>,
    /// `min-fresh`: fresh for at least this much longer.
    pub min_fresh: Option<u64>,
    /// `no-cache`: revalidate whatever is stored.
    pub no_cache: bool,
    /// `no-store`: store neither this request nor its response.
    pub no_store: bool,
    /// `only-if-cached`: a stored response, or 504.
    pub only_if_cached: bool,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<u64>,
}

/// Each directive of the field lines, as (lowercased name, argument).
fn directives<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for line in lines {
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let mut rest = text;
        while !rest.is_empty() {
            let (item, after) = split_item(rest);
            rest = after;
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.split_once('=') {
                Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
                None => (item, None),
            };
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    out
}

/// The first comma-separated item of `text` (commas inside a quoted
/// string do not count), and what follows it.
fn split_item(text: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => return (&text[..i], &text[i + 1..]),
            _ => {}
        }
    }
    (text, "")
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        None => value.to_owned(),
    }
}

/// A delta-seconds argument: digits only; too large is [`MAX_DELTA`]; a
/// missing or malformed one is 0 (the response is then stale, the safe
/// reading of a directive that cannot be read).
fn delta(value: Option<&String>) -> u64 {
    match value {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA))
        }
        _ => 0,
    }
}

/// Whether a targeted cache-control field (`CDN-Cache-Control`, RFC 9213)
/// is a valid Structured Field Dictionary (RFC 8941) whose freshness
/// directives are integers; an invalid one is ignored as a whole.
pub fn valid_targeted<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> bool {
    lines.into_iter().all(|line| {
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        text.split(',').all(|member| {
            let member = member.trim_matches([' ', '\t']);
            let mut parts = member.split(';');
            let item = parts.next().unwrap_or_default();
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            let numeric = matches!(
                key,
                "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
            );
            sf_key(key)
                && match value {
                    None => !numeric,
                    Some(v) if numeric => sf_integer(v),
                    Some(v) => sf_bare_item(v),
                }
                && parts.all(|param| match param.split_once('=') {
                    Some((k, v)) => sf_key(k) && sf_bare_item(v),
                    None => sf_key(param),
                })
        })
    })
}

/// An RFC 8941 key: a lowercase letter or `*`, then lowercase letters,
/// digits, `_`, `-`, `.`, `*`.
fn sf_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))
}

fn sf_integer(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value);
    (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// An RFC 8941 bare item: integer, decimal, string, token, byte sequence
/// or boolean.
fn sf_bare_item(value: &str) -> bool {
    if sf_integer(value) || matches!(value, "?0" | "?1") {
        return true;
    }
    if let Some((int, frac)) = value.split_once('.') {
        return sf_integer(int) && (1..=3).contains(&frac.len()) && frac.bytes().all(|b| b.is_ascii_digit());
    }
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        return inner.bytes().all(|b| (0x20..0x7f).contains(&b));
    }
    if let Some(inner) = value.strip_prefix(':').and_then(|v| v.strip_suffix(':')) {
        return inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    }
    let mut bytes = value.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
}

impl ResponseDirectives {
    /// The directives of `lines` (a response's `Cache-Control` lines).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(lines) {
            match name.as_str() {
                "max-age" if d.max_age.is_none() => d.max_age = Some(delta(value.as_ref())),
                "s-maxage" if d.s_maxage.is_none() => d.s_maxage = Some(delta(value.as_ref())),
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "must-understand" => d.must_understand = true,
                "stale-while-revalidate" if d.stale_while_revalidate.is_none() => {
                    d.stale_while_revalidate = Some(delta(value.as_ref()));
                }
                "stale-if-error" if d.stale_if_error.is_none() => {
                    d.stale_if_error = Some(delta(value.as_ref()))
                }
                _ => {}
            }
        }
        d
    }

    /// Whether a stale copy must not be used without revalidating, even
    /// where a request or RFC 5861 would allow it (`must-revalidate`, and
    /// for a shared cache `proxy-revalidate` and `s-maxage`).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

impl RequestDirectives {
    /// The directives of `lines` (a request's `Cache-Control` lines).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(lines) {
            match name.as_str() {
                "max-age" if d.max_age.is_none() => d.max_age = Some(delta(value.as_ref())),
                "max-stale" if d.max_stale.is_none() => {
                    d.max_stale = Some(value.as_ref().map(|v| delta(Some(v))));
                }
                "min-fresh" if d.min_fresh.is_none() => d.min_fresh = Some(delta(value.as_ref())),
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "stale-if-error" if d.stale_if_error.is_none() => {
                    d.stale_if_error = Some(delta(value.as_ref()))
                }
                _ => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(lines: &[&str]) -> ResponseDirectives {
        ResponseDirectives::parse(lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn response_directives_across_lines_and_cases() {
        let d = response(&[
            "Max-Age=60, no-cache=\"Set-Cookie, X-Foo\"",
            "S-MAXAGE=120,  must-revalidate",
        ]);
        assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(120)));
        assert!(d.no_cache && d.must_revalidate && !d.private && d.forbids_stale());
        let d = response(&["private=\"a,b\", stale-while-revalidate=30, stale-if-error=600, public"]);
        assert!(d.private && d.public);
        assert_eq!(
            (d.stale_while_revalidate, d.stale_if_error),
            (Some(30), Some(600))
        );
    }

    #[test]
    fn the_first_of_two_values_counts_and_bad_values_are_stale() {
        assert_eq!(response(&["max-age=10, max-age=99"]).max_age, Some(10));
        assert_eq!(response(&["max-age=10", "max-age=99"]).max_age, Some(10));
        for bad in ["max-age=", "max-age=-1", "max-age=1.5", "max-age=abc", "max-age"] {
            assert_eq!(response(&[bad]).max_age, Some(0), "{bad}");
        }
        assert_eq!(
            response(&["max-age=\"30\""]).max_age,
            Some(30),
            "quoted is read too"
        );
        assert_eq!(
            response(&["max-age=99999999999999999999"]).max_age,
            Some(MAX_DELTA)
        );
    }

    #[test]
    fn request_directives() {
        let d = RequestDirectives::parse([&b"max-stale, min-fresh=5, only-if-cached"[..]]);
        assert_eq!((d.max_stale, d.min_fresh), (Some(None), Some(5)));
        assert!(d.only_if_cached && !d.no_cache);
        let d = RequestDirectives::parse([&b"max-stale=30, no-cache, no-store, max-age=0"[..]]);
        assert_eq!((d.max_stale, d.max_age), (Some(Some(30)), Some(0)));
        assert!(d.no_cache && d.no_store);
    }

    #[test]
    fn targeted_fields_must_be_structured_dictionaries() {
        let valid = |v: &str| valid_targeted([v.as_bytes()]);
        assert!(valid("max-age=600"));
        assert!(valid("max-age=600, private, stale-if-error=30"));
        assert!(valid("no-store;foo=\"bar\", x=?1, y=1.5, z=tok/en"));
        assert!(!valid("max-age=10000, &&&&&"), "not a key");
        assert!(!valid("max-age=\"10000\""), "a string where an integer must be");
        assert!(!valid("MAX-AGE=60"), "keys are lowercase");
        assert!(!valid("max-age"), "max-age needs its integer");
    }
}
