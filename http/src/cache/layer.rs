//! The cache at each phase of an exchange, for a mode's hooks to call: the
//! lookup before a request is routed to a server (a hit answers it, a
//! stale entry is revalidated, a miss is fetched by one request while the
//! others on the worker wait for it), the validators on the upstream
//! request, what the upstream's response does to the store (stored as it
//! streams, a 304 that refreshes the stored one, a 5xx that a stale one
//! stands in for, an unsafe method's invalidations), and the fields a
//! stored response is sent with (`Age`, `X-Cache`, `Content-Range`).
//!
//! Concurrent misses for one key are coalesced per worker: one request
//! goes to the upstream, the others on the same worker wait (up to
//! `lock_timeout`) for it to be stored, then are answered from the store.
//! Workers do not wait for each other.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use hashbrown::{HashMap, HashSet};

use super::{
    control::{RequestDirectives, ResponseDirectives},
    date,
    freshness::{current_age, lifetime, storable, verdict, AgeInputs, Stored, Times, Verdict},
    store::{field_value, key_host, key_into, Object, SecondaryKey, Store},
};
use crate::{
    body::Observed,
    edits::HeadEdits,
    head::{list_elements, listed_in_connection, HeaderKind, Method, RequestHead, ResponseHead},
    held::{FileBody, HeldBody},
    hooks::{BodyPlan, HeldResponse},
    metrics::Counter,
    reply::LocalReply,
};

/// How a request was served, as `X-Cache` and the access log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the store, fresh (or a stale one the request accepted).
    Hit,
    /// From the upstream (stored if it could be).
    Miss,
    /// From the store, after the upstream said it is still current (304).
    Revalidated,
    /// From the store, stale: `stale-if-error`, `stale-while-revalidate`,
    /// or `max-stale`.
    Stale,
    /// Not looked up: not a cacheable request (a method other than GET
    /// and HEAD, a body).
    Bypass,
}

impl CacheStatus {
    /// Its name in `X-Cache` and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// A worker's counts for one cache, summed over workers when scraped.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Answered from the store, fresh.
    pub hits: Counter,
    /// Sent to the upstream.
    pub misses: Counter,
    /// Answered from the store after a 304.
    pub revalidated: Counter,
    /// Answered from the store, stale.
    pub stale: Counter,
    /// Stored after a miss or a refresh.
    pub fills: Counter,
    /// Requests that waited for another one fetching their key.
    pub coalesced: Counter,
    /// Keys dropped by unsafe methods.
    pub invalidations: Counter,
    /// Refreshes run in the background, for responses answered stale
    /// within `stale-while-revalidate`.
    pub refreshes: Counter,
}

/// Where a lookup leaves the request.
#[derive(Debug)]
pub enum Lookup {
    /// Answer with this stored response.
    Held(Box<HeldResponse>),
    /// Answer with this (a 504 to `only-if-cached` on a miss).
    Reply(LocalReply),
    /// Send it to the upstream (a miss, a revalidation, a bypass).
    Forward,
}

/// Keys being fetched on this worker, each with the requests waiting for it.
type Pending = Rc<RefCell<HashMap<Box<[u8]>, Rc<Waiters>>>>;

#[derive(Debug, Default)]
struct Waiters {
    done: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

/// Keys being refreshed in the background on this worker.
type Refreshing = Rc<RefCell<HashSet<Box<[u8]>>>>;

/// Held by a background refresh while it runs: one per key and worker.
pub struct RefreshSlot {
    refreshing: Refreshing,
    key: Box<[u8]>,
}

impl std::fmt::Debug for RefreshSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshSlot").finish_non_exhaustive()
    }
}

impl Drop for RefreshSlot {
    fn drop(&mut self) {
        self.refreshing.borrow_mut().remove(&self.key);
    }
}

/// Held by the request fetching a key: dropping it (the response is
/// stored, or the exchange ended otherwise) lets the waiting ones go.
struct Leader {
    pending: Pending,
    key: Box<[u8]>,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").finish_non_exhaustive()
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(waiters) = self.pending.borrow_mut().remove(&self.key) {
            waiters.done.set(true);
            for waker in waiters.wakers.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }
}

struct Wait(Rc<Waiters>);

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.done.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.0.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// What a request's exchange knows of the cache.
#[derive(Debug, Default)]
pub struct CacheCtx {
    /// The cache's index among the mode's caches; `None`: not cached.
    cache: Option<usize>,
    status: Option<CacheStatus>,
    key: Option<Box<[u8]>>,
    /// The stored response being revalidated.
    stored: Option<Arc<Object>>,
    /// The stored one may answer if the upstream fails.
    on_error: bool,
    /// The request changes state: a success invalidates.
    unsafe_method: bool,
    /// The proxy's own refresh: counted apart, answered without a body.
    background: bool,
    /// When the request went (seconds since the epoch).
    request_time: i64,
    /// The age sent with a stored response.
    age: u64,
    /// `Content-Range` for a 206 or 416 from the store: start, end
    /// (exclusive), whole length; a 416 has `start == end == 0`.
    range: Option<(u64, u64, u64)>,
    /// The response being stored as it streams.
    filling: Option<Box<Filling>>,
    leader: Option<Leader>,
    /// The `Set-Cookie` fields of the 304 that revalidated the stored
    /// response: for this client, never stored for others.
    set_cookies: Vec<Bytes>,
}

impl CacheCtx {
    /// How the request was served, once known.
    pub fn status(&self) -> Option<CacheStatus> {
        self.status
    }

    /// The index of the cache the request uses, if any.
    pub fn cache(&self) -> Option<usize> {
        self.cache
    }
}

/// A response being stored: everything but its body.
#[derive(Debug)]
struct Filling {
    head: Bytes,
    status: u16,
    vary: SecondaryKey,
    directives: ResponseDirectives,
    lifetime: u64,
    age: AgeInputs,
    etag: Option<Bytes>,
    last_modified: Option<(Bytes, Option<i64>)>,
    /// The disk tier's temporary file the body streams into, removed if
    /// the fill does not complete.
    tmp: Option<std::path::PathBuf>,
}

impl Drop for Filling {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// One cache, on one worker: the shared store, this worker's fetches in
/// flight and counters.
#[derive(Debug)]
pub struct CacheLayer {
    store: Arc<Store>,
    pending: Pending,
    refreshing: Refreshing,
    key: RefCell<Vec<u8>>,
    counters: Arc<CacheCounters>,
}

/// What a revalidated stored response answers: the request, or, for a
/// background refresh, nobody (a 304, so that no body is read and
/// dropped).
fn revalidated_answer(mut held: HeldResponse, cx: &CacheCtx) -> HeldResponse {
    if cx.background {
        held.status = Some(304);
        held.range = None;
    }
    held
}

/// Seconds since the epoch, now.
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl CacheLayer {
    /// The layer over `store` for one worker, counting in `counters`.
    pub fn new(store: Arc<Store>, counters: Arc<CacheCounters>) -> Self {
        Self {
            store,
            pending: Rc::default(),
            refreshing: Rc::default(),
            key: RefCell::new(Vec::with_capacity(256)),
            counters,
        }
    }

    /// The shared store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// This worker's counters.
    pub fn counters(&self) -> &Arc<CacheCounters> {
        &self.counters
    }

    /// Looks `req` up (for `host` over https or not, and the `target` the
    /// upstream is asked for, after any rewrite): answers it from the
    /// store when a stored response may, else says it goes to the
    /// upstream, as the one fetching the key or after waiting for the
    /// request that does. `index` names this cache in `cx`. A `background`
    /// request is the proxy's own refresh of a stale response: it goes to
    /// the upstream to revalidate it, and is not counted.
    pub async fn lookup(
        &self,
        index: usize,
        req: &RequestHead,
        (https, host, target): (bool, &[u8], &[u8]),
        background: bool,
        cx: &mut CacheCtx,
    ) -> Lookup {
        cx.cache = Some(index);
        cx.request_time = now_secs();
        cx.background = background;
        let method = req.method();
        let plain = req.body() == crate::head::BodyFraming::None && req.upgrade().is_none();
        if !matches!(method, Method::Get | Method::Head) || !plain {
            cx.unsafe_method = !matches!(
                method,
                Method::Get | Method::Head | Method::Options | Method::Trace
            );
            if cx.unsafe_method {
                let mut key = Vec::new();
                key_into(&mut key, https, host, target);
                cx.key = Some(key.into());
            }
            cx.status = Some(CacheStatus::Bypass);
            return Lookup::Forward;
        }
        let directives = RequestDirectives::parse(fields(req, "cache-control"));
        let pragma_no_cache = req.header("cache-control").is_none()
            && fields(req, "pragma").any(|v| list_elements(v).any(|t| t.eq_ignore_ascii_case(b"no-cache")));
        let mut waited = false;
        loop {
            let found = {
                let mut key = self.key.borrow_mut();
                key_into(&mut key, https, host, target);
                self.store
                    .get(&key)
                    .and_then(|variants| variants.iter().rev().find(|o| o.matches(req)).cloned())
            };
            // A disk tier's file is opened now: one that is gone (removed
            // by hand, or evicted meanwhile) makes this a miss, not an
            // error once the answer has begun.
            let (found, opened) = match found.as_ref().map(|o| &o.body) {
                Some(HeldBody::File(file)) => match file.opened() {
                    Ok(opened) => (found, opened),
                    Err(_) => {
                        self.store.remove(&self.key.borrow());
                        (None, None)
                    }
                },
                _ => (found, None),
            };
            let with_file = |mut held: HeldResponse| {
                if let Some(opened) = opened {
                    held.body = HeldBody::File(Arc::new(opened));
                }
                Box::new(held)
            };
            if let Some(object) = found {
                let age = current_age(&object.age, cx.request_time);
                let v = match verdict(
                    &directives,
                    &object.directives,
                    object.lifetime,
                    age,
                    pragma_no_cache,
                ) {
                    // A refresh that finds it fresh again (another worker
                    // refreshed it) has nothing to do.
                    Verdict::Fresh if background => return Lookup::Reply(LocalReply::status(204)),
                    _ if background => Verdict::Revalidate { on_error: false },
                    v => v,
                };
                match v {
                    Verdict::Fresh => {
                        self.counters.hits.add(1);
                        return Lookup::Held(with_file(self.hit(req, &object, age, CacheStatus::Hit, cx)));
                    }
                    // Within stale-while-revalidate the stale response
                    // answers at once (no request waits for the origin),
                    // and the first such request on this worker starts a
                    // refresh in the background.
                    Verdict::Stale | Verdict::StaleWhileRevalidate => {
                        self.counters.stale.add(1);
                        let mut held = self.hit(req, &object, age, CacheStatus::Stale, cx);
                        if v == Verdict::StaleWhileRevalidate {
                            held.refresh = self.refresh_slot();
                        }
                        return Lookup::Held(with_file(held));
                    }
                    Verdict::Revalidate { on_error } => {
                        if directives.only_if_cached {
                            return Lookup::Reply(LocalReply::status(504));
                        }
                        cx.on_error = on_error;
                        cx.stored = Some(object);
                        cx.key = Some(self.key.borrow().as_slice().into());
                        cx.status = Some(CacheStatus::Miss);
                        self.count_forward(background);
                        return Lookup::Forward;
                    }
                }
            }
            if directives.only_if_cached {
                return Lookup::Reply(LocalReply::status(504));
            }
            let key: Box<[u8]> = self.key.borrow().as_slice().into();
            let fetching = self.pending.borrow().get(&key).cloned();
            match fetching {
                // Another request on this worker fetches it: wait for it,
                // then look again (once).
                Some(waiters) if !waited && method == Method::Get => {
                    waited = true;
                    if !background {
                        self.counters.coalesced.add(1);
                    }
                    let timeout = self.store.settings().lock_timeout;
                    // Boxed: a timer is large, and only a coalesced miss waits.
                    let _ = Box::pin(monoio::time::timeout(timeout, Wait(waiters))).await;
                    continue;
                }
                Some(_) => {}
                None if method == Method::Get => {
                    self.pending.borrow_mut().insert(key.clone(), Rc::default());
                    cx.leader = Some(Leader {
                        pending: Rc::clone(&self.pending),
                        key: key.clone(),
                    });
                }
                None => {}
            }
            cx.key = Some(key);
            cx.status = Some(CacheStatus::Miss);
            self.count_forward(background);
            return Lookup::Forward;
        }
    }

    /// Counts a request sent to the upstream: a client's miss, or a
    /// background refresh.
    fn count_forward(&self, background: bool) {
        match background {
            true => self.counters.refreshes.add(1),
            false => self.counters.misses.add(1),
        }
    }

    /// Counts a request counted as a miss as answered from the store
    /// after all (`answered`: revalidated, stale); a background refresh
    /// counted neither.
    fn recount(&self, cx: &CacheCtx, answered: &Counter) {
        if !cx.background {
            answered.add(1);
            self.counters.misses.sub(1);
        }
    }

    /// A slot for refreshing the key in `self.key` in the background,
    /// unless a refresh of it already runs on this worker.
    fn refresh_slot(&self) -> Option<RefreshSlot> {
        if self.refreshing.borrow().contains(self.key.borrow().as_slice()) {
            return None;
        }
        let key: Box<[u8]> = self.key.borrow().as_slice().into();
        self.refreshing.borrow_mut().insert(key.clone());
        Some(RefreshSlot {
            refreshing: Rc::clone(&self.refreshing),
            key,
        })
    }

    /// The stored `object` as the answer to `req`: whole, a 304 when the
    /// request's validators match it, or the range it asked for.
    fn hit(
        &self,
        req: &RequestHead,
        object: &Object,
        age: u64,
        status: CacheStatus,
        cx: &mut CacheCtx,
    ) -> HeldResponse {
        cx.status = Some(status);
        cx.age = age;
        cx.range = None;
        let mut held = HeldResponse {
            head: object.head.clone(),
            body: object.body.clone(),
            status: None,
            range: None,
            refresh: None,
        };
        if object.status != 200 {
            return held;
        }
        if not_modified(req, object) {
            held.status = Some(304);
            return held;
        }
        if req.method() != Method::Get {
            return held;
        }
        let len = object.body.len();
        match requested_range(req, object, len) {
            Some(Some((start, end))) => {
                held.status = Some(206);
                held.range = Some((start, end));
                cx.range = Some((start, end, len));
            }
            Some(None) => {
                held.status = Some(416);
                held.range = Some((0, 0));
                cx.range = Some((0, 0, len));
            }
            None => {}
        }
        held
    }

    /// Edits the request sent upstream: a revalidation carries the stored
    /// response's validators; the request fetching a key asks for the
    /// whole response, so that it can be stored (the client's own
    /// validators go along: a 304 for them passes through, unstored).
    pub fn upstream_request(&self, edits: &mut HeadEdits, cx: &CacheCtx) {
        if cx.status != Some(CacheStatus::Miss) {
            return;
        }
        if cx.leader.is_some() || cx.stored.is_some() {
            for name in ["if-range", "range"] {
                let _ = edits.remove(name);
            }
        }
        if let Some(stored) = &cx.stored {
            for name in ["if-none-match", "if-modified-since"] {
                let _ = edits.remove(name);
            }
            if let Some(etag) = &stored.etag {
                let _ = edits.append("If-None-Match", etag);
            }
            if let Some((value, _)) = &stored.last_modified {
                let _ = edits.append("If-Modified-Since", value);
            }
        }
    }

    /// Decides what the upstream's response does: refreshes a stored one
    /// (a 304) or is replaced by a stale one (a 5xx `stale-if-error`
    /// allows), is stored as it streams, invalidates (after an unsafe
    /// method), or passes. For a held response being sent, adds its
    /// fields.
    pub fn response(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        edits: &mut HeadEdits,
        cx: &mut CacheCtx,
    ) -> BodyPlan {
        let plan = self.decide(req, resp, edits, cx);
        if !matches!(plan, BodyPlan::Observe { .. }) {
            // Nothing will be stored: the requests waiting for this one
            // go to the upstream themselves, now.
            cx.leader = None;
        }
        plan
    }

    fn decide(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        edits: &mut HeadEdits,
        cx: &mut CacheCtx,
    ) -> BodyPlan {
        let x_cache = self.store.settings().x_cache;
        match cx.status {
            None => return BodyPlan::Pass,
            Some(CacheStatus::Hit | CacheStatus::Revalidated | CacheStatus::Stale) => {
                self.held_fields(edits, cx);
                return BodyPlan::Pass;
            }
            Some(CacheStatus::Bypass) => {
                if cx.unsafe_method && (200..400).contains(&resp.status()) {
                    self.invalidate(req, resp, cx);
                }
                if x_cache {
                    let _ = edits.append("X-Cache", b"BYPASS");
                }
                return BodyPlan::Pass;
            }
            Some(CacheStatus::Miss) => {}
        }
        let now = now_secs();
        let status = resp.status();
        if let Some(stored) = cx.stored.clone() {
            if status == 304 {
                let settings = self.store.settings();
                if !settings.store_set_cookie && !cx.background {
                    cx.set_cookies = fields_of(resp, "set-cookie")
                        .map(Bytes::copy_from_slice)
                        .collect();
                }
                let Some(refreshed) = refresh(&stored, resp, settings.store_set_cookie, cx.request_time, now)
                else {
                    // A merged head that does not parse: the stored one
                    // answers, unchanged, and stays.
                    self.recount(cx, &self.counters.revalidated);
                    let held = self.hit(req, &stored, 0, CacheStatus::Revalidated, cx);
                    return BodyPlan::Replace(Box::new(revalidated_answer(held, cx)));
                };
                let refreshed = Arc::new(refreshed);
                if let Some(key) = &cx.key {
                    // A 304 may withdraw the permission to share it.
                    if refreshed.directives.private || refreshed.directives.no_store {
                        self.store.remove(key);
                    } else {
                        self.store.insert(key, Arc::clone(&refreshed));
                    }
                }
                self.recount(cx, &self.counters.revalidated);
                let age = current_age(&refreshed.age, now);
                let held = self.hit(req, &refreshed, age, CacheStatus::Revalidated, cx);
                return BodyPlan::Replace(Box::new(revalidated_answer(held, cx)));
            }
            if status >= 500 && cx.on_error {
                self.recount(cx, &self.counters.stale);
                let age = current_age(&stored.age, now);
                let held = self.hit(req, &stored, age, CacheStatus::Stale, cx);
                return BodyPlan::Replace(Box::new(held));
            }
        }
        if x_cache {
            let _ = edits.append("X-Cache", b"MISS");
        }
        if req.method() != Method::Get {
            return BodyPlan::Pass;
        }
        let settings = self.store.settings();
        let (resp_directives, targeted) = directives_of(resp);
        let req_directives = RequestDirectives::parse(fields(req, "cache-control"));
        let vary_names: Vec<Box<str>> = fields_of(resp, "vary")
            .flat_map(list_elements)
            .map(|name| {
                String::from_utf8_lossy(name)
                    .to_ascii_lowercase()
                    .into_boxed_str()
            })
            .collect();
        let facts = Stored {
            method: req.method_bytes(),
            status,
            authorization: req.header("authorization").is_some(),
            expires: !targeted && resp.header("expires").is_some(),
            set_cookie: resp.header("set-cookie").is_some(),
            vary_any: vary_names.iter().any(|n| &**n == "*"),
        };
        let set_cookie_ok = settings.store_set_cookie;
        if storable(&facts, &req_directives, &resp_directives, set_cookie_ok).is_err() {
            return BodyPlan::Pass;
        }
        if resp.content_length().is_some_and(|n| n > settings.max_object) {
            return BodyPlan::Pass;
        }
        let times = Times {
            date: resp.header("date").and_then(date::parse),
            expires: expires_of(resp, targeted),
            last_modified: resp.header("last-modified").and_then(date::parse),
            response_time: now,
        };
        let lifetime = lifetime(status, &resp_directives, &times);
        // Stored only where it can ever answer without the upstream, or
        // be revalidated cheaply.
        let validators = resp.header("etag").is_some() || resp.header("last-modified").is_some();
        if lifetime == 0 && !validators && resp_directives.stale_if_error.is_none() {
            return BodyPlan::Pass;
        }
        let vary = vary_names
            .into_iter()
            .map(|name| {
                let value = field_value(req, &name).map(Into::into);
                (name, value)
            })
            .collect();
        // With a disk tier the body streams into a file of it.
        let (file, tmp) = match self.store.disk().map(super::disk::Disk::create) {
            None => (None, None),
            Some(Ok((file, tmp))) => (Some(file), Some(tmp)),
            Some(Err(e)) => {
                crate::held::note_disk_error(&e);
                return BodyPlan::Pass;
            }
        };
        cx.filling = Some(Box::new(Filling {
            tmp,
            head: stored_head(resp),
            status,
            vary,
            directives: resp_directives,
            lifetime,
            age: AgeInputs {
                age: age_of(resp),
                date: times.date,
                request_time: cx.request_time,
                response_time: now,
            },
            etag: resp.header("etag").map(Bytes::copy_from_slice),
            last_modified: resp
                .header("last-modified")
                .map(|v| (Bytes::copy_from_slice(v), times.last_modified)),
        }));
        BodyPlan::Observe {
            max: settings.max_object,
            file,
        }
    }

    /// Stores the response whose body came through whole.
    pub fn observed(&self, body: Observed, cx: &mut CacheCtx) {
        let (Some(mut filling), Some(key)) = (cx.filling.take(), cx.key.as_ref()) else {
            return;
        };
        let mut parsed = ResponseHead::new();
        if parsed.parse_stored(&filling.head, &merge_limits()).is_err() {
            return;
        }
        let body = match body {
            Observed::Memory(bytes) => HeldBody::keep(bytes),
            Observed::File(mut file, len) => {
                let (Some(disk), Some(tmp)) = (self.store.disk(), filling.tmp.take()) else {
                    return;
                };
                let meta = super::disk::Meta {
                    key: key.to_vec(),
                    vary: filling.vary.clone(),
                    request_time: filling.age.request_time,
                    response_time: filling.age.response_time,
                    age: filling.age.age,
                };
                match disk.commit(&mut file, &tmp, len, &filling.head, &meta) {
                    Ok(path) => HeldBody::File(Arc::new(FileBody::on_disk(len, path))),
                    Err(e) => {
                        crate::held::note_disk_error(&e);
                        return;
                    }
                }
            }
        };
        let Filling {
            status,
            ref vary,
            ref directives,
            lifetime,
            age,
            ref etag,
            ref last_modified,
            ..
        } = *filling;
        let object = Object {
            head: Arc::new(parsed),
            body,
            status,
            vary: vary.clone(),
            directives: directives.clone(),
            lifetime,
            age,
            etag: etag.clone(),
            last_modified: last_modified.clone(),
        };
        if self.store.insert(key, Arc::new(object)) {
            self.counters.fills.add(1);
        }
        // The waiting requests can be answered from the store now.
        cx.leader = None;
    }

    /// A stale stored response for a request whose upstream failed, where
    /// `stale-if-error` allows it.
    pub fn fallback(&self, req: &RequestHead, cx: &mut CacheCtx) -> Option<HeldResponse> {
        if !cx.on_error {
            return None;
        }
        let stored = cx.stored.clone()?;
        self.recount(cx, &self.counters.stale);
        let age = current_age(&stored.age, now_secs());
        Some(self.hit(req, &stored, age, CacheStatus::Stale, cx))
    }

    /// The fields a held response is sent with.
    fn held_fields(&self, edits: &mut HeadEdits, cx: &CacheCtx) {
        for cookie in &cx.set_cookies {
            let _ = edits.append("Set-Cookie", cookie);
        }
        let _ = edits.remove("age");
        let _ = edits.append_with("Age", |out| {
            out.extend_from_slice(itoa::Buffer::new().format(cx.age).as_bytes());
        });
        if let Some((start, end, len)) = cx.range {
            let _ = edits.remove("content-range");
            let _ = edits.append_with("Content-Range", |out| {
                let mut n = itoa::Buffer::new();
                if start == end {
                    out.extend_from_slice(b"bytes */");
                } else {
                    out.extend_from_slice(b"bytes ");
                    out.extend_from_slice(n.format(start).as_bytes());
                    out.push(b'-');
                    out.extend_from_slice(n.format(end - 1).as_bytes());
                    out.push(b'/');
                }
                out.extend_from_slice(n.format(len).as_bytes());
            });
        }
        if self.store.settings().x_cache {
            if let Some(status) = cx.status {
                let _ = edits.append("X-Cache", status.as_str().as_bytes());
            }
        }
    }

    /// After an unsafe method succeeded: drops the stored responses of its
    /// target, and of `Location` and `Content-Location` on the same host
    /// (RFC 9111 section 4.4).
    fn invalidate(&self, req: &RequestHead, resp: &ResponseHead, cx: &CacheCtx) {
        let Some(key) = &cx.key else { return };
        let mut dropped = u64::from(self.store.remove(key));
        let (https, host) = key_host(key);
        let mut other = Vec::new();
        for name in ["location", "content-location"] {
            let Some(value) = resp.header(name) else { continue };
            if let Some(path) = same_host_path(value, host, req) {
                key_into(&mut other, https, host, path);
                dropped += u64::from(self.store.remove(&other));
            }
        }
        self.counters.invalidations.add(dropped);
    }
}

/// The response's caching directives for this cache, and whether they
/// came from `CDN-Cache-Control` (RFC 9213): a targeted field, when
/// present, is used instead of `Cache-Control` and `Expires`.
fn directives_of(resp: &ResponseHead) -> (ResponseDirectives, bool) {
    if resp.header("cdn-cache-control").is_some()
        && super::control::valid_targeted(fields_of(resp, "cdn-cache-control"))
    {
        return (
            ResponseDirectives::parse(fields_of(resp, "cdn-cache-control")),
            true,
        );
    }
    (ResponseDirectives::parse(fields_of(resp, "cache-control")), false)
}

/// `Expires` for the freshness computation: `Some(None)` (expired) when it
/// is not one valid date on one line; `None` when absent or overridden by
/// a targeted field.
fn expires_of(resp: &ResponseHead, targeted: bool) -> Option<Option<i64>> {
    if targeted {
        return None;
    }
    let mut lines = fields_of(resp, "expires");
    let first = lines.next()?;
    Some(if lines.next().is_some() {
        None
    } else {
        date::parse(first)
    })
}

/// The response's `Age` (RFC 9111 section 5.1): the first element of its
/// first line when that is a non-negative integer (capped at 2^31), else
/// none.
fn age_of(resp: &ResponseHead) -> u64 {
    let Some(value) = resp.header("age") else { return 0 };
    let first = value
        .split(|&b| b == b',' || b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    std::str::from_utf8(first)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(u64::MAX)
        .min(super::control::MAX_DELTA)
}

/// The values of the fields named `name` among `headers`.
fn named<'a>(
    headers: impl Iterator<Item = crate::head::HeaderField<'a>> + 'a,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .filter(move |h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value)
}

/// The request's fields named `name`.
fn fields<'a>(req: &'a RequestHead, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    named(req.headers(), name)
}

/// The response's fields named `name`.
fn fields_of<'a>(resp: &'a ResponseHead, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    named(resp.headers(), name)
}

/// The path of a `Location` or `Content-Location` value on `host`: a
/// path, or an absolute URL naming the same host.
fn same_host_path<'a>(value: &'a [u8], host: &[u8], _req: &RequestHead) -> Option<&'a [u8]> {
    let value = value.trim_ascii();
    if value.starts_with(b"/") && !value.starts_with(b"//") {
        return Some(value);
    }
    let rest = value
        .strip_prefix(b"http://")
        .or_else(|| value.strip_prefix(b"https://"))?;
    let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    let authority = &rest[..slash];
    let authority = authority.strip_suffix(b":80").unwrap_or(authority);
    authority.eq_ignore_ascii_case(host).then(|| {
        if slash == rest.len() {
            &b"/"[..]
        } else {
            &rest[slash..]
        }
    })
}

/// A copy of the response head to store: the upstream's, without the
/// fields that describe one connection or one transfer.
fn stored_head(resp: &ResponseHead) -> Bytes {
    let mut out = BytesMut::with_capacity(resp.raw().len());
    let raw = resp.raw();
    let line_end = raw.iter().position(|&b| b == b'\n').map_or(raw.len(), |i| i + 1);
    out.extend_from_slice(&raw[..line_end]);
    let names_fields = resp.connection_tokens().names_fields;
    for field in resp.headers() {
        let listed = names_fields
            && field.kind == HeaderKind::Other
            && listed_in_connection(resp.headers(), field.name);
        if field.kind.is_hop_by_hop() || field.kind == HeaderKind::ContentLength || listed {
            continue;
        }
        out.extend_from_slice(field.name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(field.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// The stored response updated by a 304 (RFC 9111 section 3.2): the 304's
/// fields replace those of the same name, except the ones that describe
/// the body (and `Set-Cookie`, unless cookies may be stored); its times
/// are the 304's. `None` when the merged head would not parse.
fn refresh(
    stored: &Object,
    resp: &ResponseHead,
    cookies: bool,
    request_time: i64,
    now: i64,
) -> Option<Object> {
    const KEPT: [&[u8]; 4] = [
        b"content-length",
        b"content-encoding",
        b"content-range",
        b"content-type",
    ];
    let mut head = BytesMut::with_capacity(stored.head.raw().len() + resp.raw().len());
    let parsed = &stored.head;
    let limits = merge_limits();
    let taken = |name: &[u8]| {
        !KEPT.iter().any(|k| k.eq_ignore_ascii_case(name))
            && (cookies || !name.eq_ignore_ascii_case(b"set-cookie"))
    };
    let updated = |name: &[u8]| taken(name) && resp.headers().any(|f| f.name.eq_ignore_ascii_case(name));
    let raw = parsed.raw();
    let line_end = raw.iter().position(|&b| b == b'\n').map_or(raw.len(), |i| i + 1);
    head.extend_from_slice(&raw[..line_end]);
    for field in parsed.headers() {
        if !updated(field.name) {
            push_field(&mut head, field.name, field.value);
        }
    }
    let names_fields = resp.connection_tokens().names_fields;
    for field in resp.headers() {
        let framing = field.kind.is_hop_by_hop()
            || field.kind == HeaderKind::ContentLength
            || (names_fields
                && field.kind == HeaderKind::Other
                && listed_in_connection(resp.headers(), field.name));
        if !framing && taken(field.name) {
            push_field(&mut head, field.name, field.value);
        }
    }
    head.extend_from_slice(b"\r\n");
    let head = head.freeze();
    let mut fresh = ResponseHead::new();
    fresh.parse_stored(&head, &limits).ok()?;
    let (directives, targeted) = directives_of(&fresh);
    let times = Times {
        date: fresh.header("date").and_then(date::parse),
        expires: expires_of(&fresh, targeted),
        last_modified: fresh.header("last-modified").and_then(date::parse),
        response_time: now,
    };
    let etag = fresh.header("etag").map(|v| head.slice_ref(v));
    let last_modified = fresh
        .header("last-modified")
        .map(|v| (head.slice_ref(v), times.last_modified));
    let head = Arc::new(fresh);
    let age = age_of(resp);
    Some(Object {
        lifetime: lifetime(stored.status, &directives, &times),
        directives,
        age: AgeInputs {
            age,
            // The stored Date is the old response's: without one of its
            // own the 304's age is its transit only.
            date: resp.header("date").and(times.date),
            request_time,
            response_time: now,
        },
        etag,
        last_modified,
        status: stored.status,
        vary: stored.vary.clone(),
        body: stored.body.clone(),
        head,
    })
}

/// A response read back from the disk tier, as a stored object; `None`
/// when its head does not parse.
pub(crate) fn object_from_disk(loaded: super::disk::Loaded) -> Option<Object> {
    let super::disk::Loaded {
        meta,
        head,
        body_len,
        path,
    } = loaded;
    let head = Bytes::from(head);
    let mut parsed = ResponseHead::new();
    parsed.parse_stored(&head, &merge_limits()).ok()?;
    let (directives, targeted) = directives_of(&parsed);
    let times = Times {
        date: parsed.header("date").and_then(date::parse),
        expires: expires_of(&parsed, targeted),
        last_modified: parsed.header("last-modified").and_then(date::parse),
        response_time: meta.response_time,
    };
    let etag = parsed.header("etag").map(|v| head.slice_ref(v));
    let last_modified = parsed
        .header("last-modified")
        .map(|v| (head.slice_ref(v), times.last_modified));
    Some(Object {
        status: parsed.status(),
        lifetime: lifetime(parsed.status(), &directives, &times),
        directives,
        age: AgeInputs {
            age: meta.age,
            date: times.date,
            request_time: meta.request_time,
            response_time: meta.response_time,
        },
        etag,
        last_modified,
        vary: meta.vary,
        body: HeldBody::File(Arc::new(FileBody::on_disk(body_len, path))),
        head: Arc::new(parsed),
    })
}

/// Limits for parsing heads the cache made itself: the merge of two heads
/// that each passed the listener's limits.
fn merge_limits() -> crate::limits::HttpLimits {
    crate::limits::HttpLimits {
        max_headers: crate::MAX_HEADERS_CAP,
        max_header_bytes: usize::MAX,
        ..crate::limits::HttpLimits::default()
    }
}

fn push_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether the request's validators say the client's copy is current
/// (RFC 9110 section 13.1: `If-None-Match` by weak comparison, else
/// `If-Modified-Since` against `Last-Modified`).
fn not_modified(req: &RequestHead, object: &Object) -> bool {
    if let Some(list) = req.header("if-none-match") {
        let Some(etag) = &object.etag else { return false };
        let opaque = |tag: &[u8]| tag.strip_prefix(b"W/").unwrap_or(tag).to_vec();
        let ours = opaque(etag.trim_ascii());
        return list_elements(list).any(|tag| tag == b"*" || opaque(tag) == ours);
    }
    let Some(since) = req.header("if-modified-since").and_then(date::parse) else {
        return false;
    };
    object
        .last_modified
        .as_ref()
        .and_then(|(_, t)| *t)
        .is_some_and(|modified| modified <= since)
}

/// The single byte range a GET asks for (RFC 9110 section 14): `None`
/// when it asks for none this answers (no `Range`, several ranges, an
/// `If-Range` that does not match, another unit); `Some(None)` when it
/// cannot be satisfied; else `start..end`.
fn requested_range(req: &RequestHead, object: &Object, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = req.header("range")?.trim_ascii();
    if let Some(validator) = req.header("if-range") {
        let validator = validator.trim_ascii();
        let matches = if validator.starts_with(b"\"") {
            object.etag.as_deref().map(<[u8]>::trim_ascii) == Some(validator)
        } else {
            let last = object.last_modified.as_ref().map(|(raw, _)| raw.trim_ascii());
            last == Some(validator)
        };
        if !matches {
            return None;
        }
    }
    let set = spec.strip_prefix(b"bytes=")?;
    if set.contains(&b',') {
        return None;
    }
    let set = std::str::from_utf8(set).ok()?.trim();
    let (first, last) = set.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let range = if first.trim().is_empty() {
        let suffix = number(last)?;
        if suffix == 0 || len == 0 {
            return Some(None);
        }
        (len.saturating_sub(suffix), len)
    } else {
        let start = number(first)?;
        let end = if last.trim().is_empty() {
            len
        } else {
            number(last)?.saturating_add(1).min(len)
        };
        if !last.trim().is_empty() && number(last)? < start {
            return None;
        }
        if start >= len {
            return Some(None);
        }
        (start, end)
    };
    Some(Some(range))
}

/// The caches a mode's routes or listeners use, on one worker, by index.
pub type CacheLayers = Rc<[CacheLayer]>;
