//! RFC 9111's rules for a shared cache, as pure functions of what the heads
//! say and of the clock: may a response be stored (section 3, with 3.5 on
//! `Authorization`), how long it stays fresh (4.2.1, heuristics in 4.2.2),
//! how old it is (4.2.3), and whether a stored one may answer a request now
//! (4.2.4 and 5.2.1, with RFC 5861's `stale-while-revalidate` and
//! `stale-if-error`).

use super::control::{RequestDirectives, ResponseDirectives};

/// Statuses a cache may keep without explicit freshness (RFC 9110 section
/// 15.1: heuristically cacheable), and so understood by this cache. 206 is
/// not among those stored: ranges are served from a complete 200.
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The longest a heuristic freshness may be (Squid and Varnish use hours
/// to a day; the RFC leaves it to the cache).
pub const MAX_HEURISTIC: u64 = 24 * 3600;

/// What the cache knows of a response when it decides to store it.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// The request's method.
    pub method: &'a [u8],
    /// The response's status.
    pub status: u16,
    /// The request carried `Authorization`.
    pub authorization: bool,
    /// The response carries `Expires` (valid or not).
    pub expires: bool,
    /// The response carries `Set-Cookie`.
    pub set_cookie: bool,
    /// The response's `Vary` lists `*`.
    pub vary_any: bool,
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Only GET and HEAD are cached.
    Method,
    /// A status this cache does not keep (206, 1xx, a status without
    /// explicit freshness that is not heuristically cacheable).
    Status,
    /// `no-store` in the request or the response.
    NoStore,
    /// `private`: for the client's own cache only.
    Private,
    /// The request had `Authorization`, and the response did not allow
    /// sharing it (`public`, `s-maxage` or `must-revalidate`).
    Authorization,
    /// `Set-Cookie`, which would hand one client's session to others
    /// (unless the cache is configured to store such responses).
    SetCookie,
    /// `Vary: *` never matches a later request.
    VaryAny,
}

/// Whether a shared cache may store the response (RFC 9111 section 3).
pub fn storable(
    r: &Stored<'_>,
    req: &RequestDirectives,
    resp: &ResponseDirectives,
    store_set_cookie: bool,
) -> Result<(), NotStored> {
    if r.method != b"GET" && r.method != b"HEAD" {
        return Err(NotStored::Method);
    }
    let understood = HEURISTIC.contains(&r.status)
        || ((200..600).contains(&r.status) && r.status != 206 && r.status != 304);
    if !understood {
        return Err(NotStored::Status);
    }
    // must-understand lets a cache that understands the status ignore
    // no-store (RFC 9111 section 5.2.2.3).
    let no_store = resp.no_store && !(resp.must_understand && HEURISTIC.contains(&r.status));
    if req.no_store || no_store {
        return Err(NotStored::NoStore);
    }
    if resp.private {
        return Err(NotStored::Private);
    }
    if r.authorization && !(resp.public || resp.s_maxage.is_some() || resp.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if r.set_cookie && !store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if r.vary_any {
        return Err(NotStored::VaryAny);
    }
    let explicit = resp.s_maxage.is_some() || resp.max_age.is_some() || r.expires || resp.public;
    if !explicit && !HEURISTIC.contains(&r.status) {
        return Err(NotStored::Status);
    }
    Ok(())
}

/// The times a freshness lifetime is computed from, in seconds since the
/// epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    /// `Date`, if valid.
    pub date: Option<i64>,
    /// `Expires`: `Some(None)` when present but invalid (already expired).
    pub expires: Option<Option<i64>>,
    /// `Last-Modified`, if valid.
    pub last_modified: Option<i64>,
    /// When the response was received.
    pub response_time: i64,
}

/// How long the response stays fresh for a shared cache (RFC 9111 section
/// 4.2.1): `s-maxage`, else `max-age`, else `Expires` less `Date`, else a
/// tenth of the time since `Last-Modified` for a heuristically cacheable
/// status, at most [`MAX_HEURISTIC`].
pub fn lifetime(status: u16, resp: &ResponseDirectives, t: &Times) -> u64 {
    if let Some(s) = resp.s_maxage {
        return s;
    }
    if let Some(m) = resp.max_age {
        return m;
    }
    let date = t.date.unwrap_or(t.response_time);
    match t.expires {
        Some(Some(expires)) => return expires.saturating_sub(date).max(0) as u64,
        Some(None) => return 0,
        None => {}
    }
    match t.last_modified {
        Some(modified) if HEURISTIC.contains(&status) && modified < date => {
            (((date - modified) / 10) as u64).min(MAX_HEURISTIC)
        }
        _ => 0,
    }
}

/// The clock readings the current age is computed from (RFC 9111 section
/// 4.2.3), in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgeInputs {
    /// The response's `Age`, if any.
    pub age: u64,
    /// Its `Date`, if valid.
    pub date: Option<i64>,
    /// When the request that brought it was sent.
    pub request_time: i64,
    /// When the response was received.
    pub response_time: i64,
}

/// The response's current age at `now` (RFC 9111 section 4.2.3).
pub fn current_age(a: &AgeInputs, now: i64) -> u64 {
    let apparent = a.date.map_or(0, |date| (a.response_time - date).max(0) as u64);
    let delay = (a.response_time - a.request_time).max(0) as u64;
    let corrected_age = a.age.saturating_add(delay);
    let initial = apparent.max(corrected_age);
    initial.saturating_add((now - a.response_time).max(0) as u64)
}

/// How a stored response may answer a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It is fresh enough: answer with it.
    Fresh,
    /// It is stale, but the request accepts it (`max-stale`): answer with it.
    Stale,
    /// It is stale within `stale-while-revalidate`: answer with it, and
    /// revalidate it in the background.
    StaleWhileRevalidate,
    /// Ask the origin first (a conditional request when it has
    /// validators). `on_error`: a 5xx or no answer may still be answered
    /// with it (`stale-if-error`).
    Revalidate {
        /// Whether the stored response may answer if the origin fails.
        on_error: bool,
    },
}

/// Whether the stored response (`resp`, `lifetime` and current `age`) may
/// answer a request with directives `req` (RFC 9111 sections 4.2.4 and
/// 5.2.1; RFC 5861). `pragma_no_cache`: the request has `Pragma: no-cache`
/// and no `Cache-Control`.
pub fn verdict(
    req: &RequestDirectives,
    resp: &ResponseDirectives,
    lifetime: u64,
    age: u64,
    pragma_no_cache: bool,
) -> Verdict {
    let staleness = age.saturating_sub(lifetime);
    let stale_ok = !resp.forbids_stale();
    let on_error = stale_ok
        && req
            .stale_if_error
            .or(resp.stale_if_error)
            .is_some_and(|window| staleness <= window);
    if resp.no_cache || req.no_cache || pragma_no_cache {
        return Verdict::Revalidate { on_error };
    }
    let fresh = age < lifetime;
    let young_enough = req.max_age.is_none_or(|max| age <= max);
    let lasting = req
        .min_fresh
        .is_none_or(|min| lifetime.saturating_sub(age) >= min);
    if fresh && young_enough && lasting {
        return Verdict::Fresh;
    }
    if !fresh && stale_ok && young_enough {
        if let Some(max_stale) = req.max_stale {
            if max_stale.is_none_or(|max| staleness <= max) {
                return Verdict::Stale;
            }
        }
        if resp
            .stale_while_revalidate
            .is_some_and(|window| staleness <= window)
            && req.min_fresh.is_none()
        {
            return Verdict::StaleWhileRevalidate;
        }
    }
    Verdict::Revalidate { on_error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(cc: &str) -> ResponseDirectives {
        ResponseDirectives::parse([cc.as_bytes()])
    }

    fn req(cc: &str) -> RequestDirectives {
        RequestDirectives::parse([cc.as_bytes()])
    }

    fn stored(status: u16) -> Stored<'static> {
        Stored {
            method: b"GET",
            status,
            authorization: false,
            expires: false,
            set_cookie: false,
            vary_any: false,
        }
    }

    #[test]
    fn what_a_shared_cache_may_store() {
        let none = RequestDirectives::default();
        assert_eq!(
            storable(&stored(200), &none, &resp(""), false),
            Ok(()),
            "heuristically cacheable"
        );
        assert_eq!(
            storable(&stored(302), &none, &resp(""), false),
            Err(NotStored::Status)
        );
        assert_eq!(storable(&stored(302), &none, &resp("max-age=60"), false), Ok(()));
        assert_eq!(
            storable(&stored(206), &none, &resp("max-age=60"), false),
            Err(NotStored::Status)
        );
        assert_eq!(
            storable(&stored(200), &none, &resp("no-store"), false),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            storable(&stored(200), &none, &resp("no-store, must-understand"), false),
            Ok(())
        );
        assert_eq!(
            storable(&stored(200), &req("no-store"), &resp(""), false),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            storable(&stored(200), &none, &resp("private, max-age=60"), false),
            Err(NotStored::Private)
        );
        let post = Stored {
            method: b"POST",
            ..stored(200)
        };
        assert_eq!(
            storable(&post, &none, &resp("max-age=60"), false),
            Err(NotStored::Method)
        );
        let cookie = Stored {
            set_cookie: true,
            ..stored(200)
        };
        assert_eq!(
            storable(&cookie, &none, &resp("max-age=60"), false),
            Err(NotStored::SetCookie)
        );
        assert_eq!(storable(&cookie, &none, &resp("max-age=60"), true), Ok(()));
        let vary = Stored {
            vary_any: true,
            ..stored(200)
        };
        assert_eq!(
            storable(&vary, &none, &resp("max-age=60"), false),
            Err(NotStored::VaryAny)
        );
    }

    #[test]
    fn an_authorized_request_s_response_is_shared_only_where_it_says_so() {
        let none = RequestDirectives::default();
        let auth = Stored {
            authorization: true,
            ..stored(200)
        };
        assert_eq!(
            storable(&auth, &none, &resp("max-age=60"), false),
            Err(NotStored::Authorization)
        );
        for allows in ["public", "s-maxage=60", "must-revalidate, max-age=60"] {
            assert_eq!(storable(&auth, &none, &resp(allows), false), Ok(()), "{allows}");
        }
    }

    #[test]
    fn lifetimes_follow_the_rfc_s_order() {
        let t = Times {
            date: Some(1_000),
            expires: Some(Some(1_300)),
            last_modified: Some(0),
            response_time: 1_000,
        };
        assert_eq!(lifetime(200, &resp("s-maxage=5, max-age=60"), &t), 5);
        assert_eq!(lifetime(200, &resp("max-age=60"), &t), 60);
        assert_eq!(lifetime(200, &resp(""), &t), 300, "Expires less Date");
        let invalid = Times {
            expires: Some(None),
            ..t
        };
        assert_eq!(
            lifetime(200, &resp(""), &invalid),
            0,
            "an invalid Expires has expired"
        );
        let heuristic = Times { expires: None, ..t };
        assert_eq!(
            lifetime(200, &resp(""), &heuristic),
            100,
            "a tenth of Date less Last-Modified"
        );
        assert_eq!(
            lifetime(302, &resp(""), &heuristic),
            0,
            "not heuristically cacheable"
        );
        let old = Times {
            date: Some(100 * 86_400),
            last_modified: Some(0),
            expires: None,
            response_time: 0,
        };
        assert_eq!(lifetime(200, &resp(""), &old), MAX_HEURISTIC);
    }

    #[test]
    fn ages_count_the_trip_and_the_time_in_store() {
        let a = AgeInputs {
            age: 10,
            date: Some(995),
            request_time: 998,
            response_time: 1_000,
        };
        // Age 10 plus a 2 s trip beats the 5 s apparent age; then 30 s kept.
        assert_eq!(current_age(&a, 1_030), 42);
        let clock_ahead = AgeInputs {
            date: Some(1_100),
            ..a
        };
        assert_eq!(
            current_age(&clock_ahead, 1_000),
            12,
            "a Date in the future is no age"
        );
    }

    #[test]
    fn stored_responses_answer_while_fresh_and_stale_ones_as_allowed() {
        let none = RequestDirectives::default();
        assert_eq!(verdict(&none, &resp("max-age=60"), 60, 10, false), Verdict::Fresh);
        assert_eq!(
            verdict(&none, &resp("max-age=60"), 60, 60, false),
            Verdict::Revalidate { on_error: false }
        );
        assert_eq!(
            verdict(&req("max-age=5"), &resp(""), 60, 10, false),
            Verdict::Revalidate { on_error: false }
        );
        assert_eq!(
            verdict(&req("min-fresh=55"), &resp(""), 60, 10, false),
            Verdict::Revalidate { on_error: false }
        );
        assert_eq!(
            verdict(&req("no-cache"), &resp(""), 60, 10, false),
            Verdict::Revalidate { on_error: false }
        );
        assert_eq!(
            verdict(&none, &resp("no-cache"), 60, 10, false),
            Verdict::Revalidate { on_error: false }
        );
        assert_eq!(
            verdict(&none, &resp(""), 60, 10, true),
            Verdict::Revalidate { on_error: false },
            "Pragma"
        );
        // Stale: max-stale, within its bound or any.
        assert_eq!(
            verdict(&req("max-stale=30"), &resp(""), 60, 80, false),
            Verdict::Stale
        );
        assert_eq!(
            verdict(&req("max-stale=10"), &resp(""), 60, 80, false),
            Verdict::Revalidate { on_error: false }
        );
        assert_eq!(
            verdict(&req("max-stale"), &resp(""), 60, 9_999, false),
            Verdict::Stale
        );
        // ...but never past must-revalidate, proxy-revalidate or s-maxage.
        for strict in ["must-revalidate", "proxy-revalidate", "s-maxage=60"] {
            assert_eq!(
                verdict(&req("max-stale"), &resp(strict), 60, 80, false),
                Verdict::Revalidate { on_error: false },
                "{strict}"
            );
        }
        // RFC 5861.
        assert_eq!(
            verdict(&none, &resp("stale-while-revalidate=30"), 60, 80, false),
            Verdict::StaleWhileRevalidate
        );
        assert_eq!(
            verdict(&none, &resp("stale-while-revalidate=10"), 60, 80, false),
            Verdict::Revalidate { on_error: false }
        );
        assert_eq!(
            verdict(&none, &resp("stale-if-error=30"), 60, 80, false),
            Verdict::Revalidate { on_error: true }
        );
        assert_eq!(
            verdict(
                &req("stale-if-error=5"),
                &resp("stale-if-error=30"),
                60,
                80,
                false
            ),
            Verdict::Revalidate { on_error: false },
            "the request's is stricter"
        );
        assert_eq!(
            verdict(&none, &resp("stale-if-error=30, must-revalidate"), 60, 80, false),
            Verdict::Revalidate { on_error: false }
        );
    }
}
