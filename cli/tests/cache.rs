//! The HTTP cache behind the real binary, against origins that count the
//! requests they see: hits never reach the origin; revalidation sends the
//! stored validators and a 304 refreshes the stored head; `Vary` splits;
//! unsafe methods invalidate; private responses and responses to
//! `Authorization` are never served to another client; concurrent misses
//! become one origin request; conditional and range requests are answered
//! from the store; `stale-if-error` stands in for a failing origin; and
//! the access log says how each request was served.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use common::{temp_file, Running};
use ringway_tests::{client::Response, Origin, Reply, Seen, TestClient};

/// A reverse proxy in front of `origin` whose one route uses a cache with
/// `X-Cache`; `cache` adds keys to `[cache.main]`.
fn proxy(origin: SocketAddr, workers: usize, cache: &str) -> Running {
    proxy_with(origin, workers, cache, "")
}

/// The same, with more tables at the end of the file.
fn proxy_with(origin: SocketAddr, workers: usize, cache: &str, tables: &str) -> Running {
    let file = temp_file(
        "cache.toml",
        &format!(
            "[runtime]\nworkers = {workers}\npin_cpus = false\n\n\
             [log]\naccess_log = {{ path = \"-\", format = \"$request_method $request_uri $status $upstream_cache_status\" }}\n\n\
             [cache.main]\nmemory = \"16MiB\"\nmax_object = \"1MiB\"\nx_cache = true\n{cache}\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
             [[listener.route]]\nupstream = \"app\"\ncache = \"main\"\n\n{tables}"
        ),
    );
    Running::start(&["run", file.to_str().expect("path")])
}

/// An origin answering every request with `head` (fields, each ending in
/// CRLF) and a body naming how many requests it had seen.
fn counting_origin(head: &'static str) -> (Origin, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let origin = Origin::start(move |_| {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!("response {n}");
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\n{head}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    (origin, count)
}

/// Waits until `path` is stored: a response is stored once its last byte
/// went to the client, so a request on another worker right after it may
/// still miss. `only-if-cached` asks without reaching the origin (it
/// counts as a hit when it finds it).
fn wait_stored(addr: SocketAddr, path: &str) {
    let stored = ringway_tests::eventually(Duration::from_secs(10), || {
        get(addr, path, "Cache-Control: only-if-cached\r\n").status == 200
    });
    assert!(stored, "{path} was stored");
}

fn get(addr: SocketAddr, path: &str, headers: &str) -> Response {
    request(addr, "GET", path, headers)
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Response {
    let mut client = TestClient::connect(addr);
    client.send(format!("{method} {path} HTTP/1.1\r\nHost: site.test\r\n{headers}\r\n").as_bytes());
    client.read_response(method == "HEAD").expect("a response")
}

#[test]
fn fresh_responses_are_served_from_the_store_without_the_origin() {
    let (origin, count) = counting_origin("Cache-Control: max-age=60\r\nContent-Type: text/plain\r\n");
    let proxy = proxy(origin.addr(), 2, "");
    let first = get(proxy.addr, "/a", "");
    assert_eq!(first.text(), "response 1");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    wait_stored(proxy.addr, "/a");
    for _ in 0..5 {
        let hit = get(proxy.addr, "/a", "");
        assert_eq!(hit.status, 200);
        assert_eq!(hit.text(), "response 1");
        assert_eq!(hit.header("x-cache"), Some("HIT"));
        assert_eq!(hit.header("content-type"), Some("text/plain"));
        let age: u64 = hit.header("age").expect("Age").parse().expect("a number");
        assert!(age < 60);
    }
    // HEAD is answered from the stored GET, without a body.
    let head = request(proxy.addr, "HEAD", "/a", "");
    assert_eq!(head.header("x-cache"), Some("HIT"));
    assert_eq!(head.header("content-length"), Some("10"));
    assert!(head.body.is_empty());
    // Another target is another key.
    assert_eq!(get(proxy.addr, "/b", "").text(), "response 2");
    assert_eq!(count.load(Ordering::SeqCst), 2, "hits never reach the origin");
    // The access log says which was which.
    proxy.wait_for_log("GET /b 200 MISS");
    proxy.wait_for_log("GET /a 200 HIT");
    proxy.wait_for_log("HEAD /a 200 HIT");
}

#[test]
fn revalidation_sends_the_validators_and_a_304_refreshes_the_stored_head() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let origin = Origin::start(move |req: &Seen| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            return Reply::Bytes(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: \"v1\"\r\n\
                  Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\nX-Version: old\r\n\
                  Content-Length: 4\r\n\r\nbody"
                    .to_vec(),
            );
        }
        // Only the stored validators make it current.
        if req.header("if-none-match") == Some("\"v1\"")
            && req.header("if-modified-since") == Some("Tue, 01 Dec 2026 10:00:00 GMT")
        {
            return Reply::Bytes(
                b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=60\r\nETag: \"v1\"\r\nX-Version: new\r\n\
                  Set-Cookie: session=first-client\r\n\r\n"
                    .to_vec(),
            );
        }
        Reply::ok("validators missing")
    });
    let proxy = proxy(origin.addr(), 1, "");
    assert_eq!(get(proxy.addr, "/r", "").text(), "body");
    // Stale at once: revalidated, answered from the store with the 304's
    // fields.
    let second = get(proxy.addr, "/r", "");
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "body");
    assert_eq!(second.header("x-cache"), Some("REVALIDATED"));
    assert_eq!(second.header("x-version"), Some("new"));
    assert_eq!(
        second.header("set-cookie"),
        Some("session=first-client"),
        "the 304's cookie reaches the client it answered"
    );
    // The 304's max-age now applies: a plain hit.
    let third = get(proxy.addr, "/r", "");
    assert_eq!(third.header("x-cache"), Some("HIT"));
    assert_eq!(third.header("x-version"), Some("new"));
    assert_eq!(third.text(), "body");
    assert_eq!(
        third.header("set-cookie"),
        None,
        "a 304's cookie is not stored for others"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[test]
fn vary_keeps_one_variant_per_value_of_the_named_fields() {
    let origin = Origin::start(|req: &Seen| {
        let lang = req.header("accept-language").unwrap_or("none").to_owned();
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nVary: Accept-Language\r\nContent-Length: {}\r\n\r\n{lang}",
                lang.len()
            )
            .into_bytes(),
        )
    });
    let proxy = proxy(origin.addr(), 1, "");
    for _ in 0..2 {
        assert_eq!(get(proxy.addr, "/v", "Accept-Language: en\r\n").text(), "en");
        assert_eq!(get(proxy.addr, "/v", "Accept-Language: fr\r\n").text(), "fr");
        assert_eq!(get(proxy.addr, "/v", "").text(), "none");
    }
    assert_eq!(origin.seen().len(), 3, "one origin request per variant");
    assert_eq!(
        get(proxy.addr, "/v", "Accept-Language:  fr \r\n").header("x-cache"),
        Some("HIT"),
        "values compared without surrounding spaces"
    );
}

#[test]
fn unsafe_methods_invalidate_their_target_and_its_location() {
    let origin = Origin::start(|req: &Seen| {
        if req.method == "POST" {
            return Reply::Bytes(
                b"HTTP/1.1 201 Created\r\nLocation: /items/2\r\nContent-Length: 0\r\n\r\n".to_vec(),
            );
        }
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{}",
                req.target.len(),
                req.target
            )
            .into_bytes(),
        )
    });
    let proxy = proxy(origin.addr(), 1, "");
    get(proxy.addr, "/items", "");
    get(proxy.addr, "/items/2", "");
    assert_eq!(get(proxy.addr, "/items", "").header("x-cache"), Some("HIT"));
    let created = request(proxy.addr, "POST", "/items", "Content-Length: 0\r\n");
    assert_eq!(created.status, 201);
    assert_eq!(get(proxy.addr, "/items", "").header("x-cache"), Some("MISS"));
    assert_eq!(get(proxy.addr, "/items/2", "").header("x-cache"), Some("MISS"));
    // A failed unsafe request invalidates nothing.
    assert_eq!(origin.seen().len(), 5);
}

#[test]
fn private_responses_and_answers_to_authorization_are_never_shared() {
    let origin = Origin::start(|req: &Seen| {
        let body = format!("for {}", req.header("authorization").unwrap_or("anyone"));
        let cc = if req.target == "/private" {
            "private, max-age=60"
        } else {
            "max-age=60"
        };
        let cookie = if req.target == "/cookie" {
            "Set-Cookie: session=alice\r\n"
        } else {
            ""
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\n{cookie}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let proxy = proxy(origin.addr(), 1, "");
    assert_eq!(get(proxy.addr, "/private", "").header("x-cache"), Some("MISS"));
    assert_eq!(get(proxy.addr, "/private", "").header("x-cache"), Some("MISS"));
    let alice = get(proxy.addr, "/auth", "Authorization: Basic YWxpY2U6cHc=\r\n");
    assert_eq!(alice.text(), "for Basic YWxpY2U6cHc=");
    let anyone = get(proxy.addr, "/auth", "");
    assert_eq!(anyone.text(), "for anyone", "alice's answer is not anyone's");
    assert_eq!(
        get(proxy.addr, "/cookie", "").header("set-cookie"),
        Some("session=alice")
    );
    let other = get(proxy.addr, "/cookie", "");
    assert_eq!(other.header("x-cache"), Some("MISS"), "a session is not shared");
    assert_eq!(origin.seen().len(), 6);
}

#[test]
fn a_hundred_concurrent_misses_become_one_origin_request() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let origin = Origin::start(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        // Slow enough that every client asks before it answers.
        thread::sleep(Duration::from_millis(500));
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 6\r\n\r\nshared".to_vec(),
        )
    });
    // Coalescing is per worker: one worker, one origin request.
    let proxy = proxy(origin.addr(), 1, "");
    let addr = proxy.addr;
    let clients: Vec<_> = (0..100)
        .map(|_| thread::spawn(move || get(addr, "/popular", "")))
        .collect();
    for client in clients {
        let response = client.join().expect("client");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "shared");
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn conditional_and_range_requests_are_answered_from_the_store() {
    let (origin, count) = counting_origin(
        "Cache-Control: max-age=60\r\nETag: \"abc\"\r\nLast-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n",
    );
    let proxy = proxy(origin.addr(), 1, "");
    assert_eq!(get(proxy.addr, "/c", "").text(), "response 1");
    let not_modified = get(proxy.addr, "/c", "If-None-Match: \"x\", W/\"abc\"\r\n");
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some("\"abc\""));
    let since = get(
        proxy.addr,
        "/c",
        "If-Modified-Since: Wed, 02 Dec 2026 10:00:00 GMT\r\n",
    );
    assert_eq!(since.status, 304);
    assert_eq!(get(proxy.addr, "/c", "If-None-Match: \"other\"\r\n").status, 200);
    let part = get(proxy.addr, "/c", "Range: bytes=2-5\r\n");
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), "spon");
    assert_eq!(part.header("content-range"), Some("bytes 2-5/10"));
    let suffix = get(proxy.addr, "/c", "Range: bytes=-3\r\n");
    assert_eq!(suffix.text(), "e 1");
    let outside = get(proxy.addr, "/c", "Range: bytes=50-\r\n");
    assert_eq!(outside.status, 416);
    assert_eq!(outside.header("content-range"), Some("bytes */10"));
    // An If-Range that no longer matches gets the whole response.
    let changed = get(proxy.addr, "/c", "Range: bytes=0-1\r\nIf-Range: \"old\"\r\n");
    assert_eq!(changed.status, 200);
    assert_eq!(changed.text(), "response 1");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn a_stale_response_stands_in_for_a_failing_origin_where_stale_if_error_allows() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let origin = Origin::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Bytes(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-if-error=600\r\nContent-Length: 5\r\n\r\nsaved"
                    .to_vec(),
            )
        } else {
            Reply::Bytes(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_vec())
        }
    });
    let proxy = proxy(origin.addr(), 1, "");
    assert_eq!(get(proxy.addr, "/s", "").text(), "saved");
    let stale = get(proxy.addr, "/s", "");
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "saved");
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    // With the origin gone altogether, too.
    origin.kill();
    let gone = get(proxy.addr, "/s", "");
    assert_eq!((gone.status, gone.text().as_str()), (200, "saved"));
}

#[test]
fn only_if_cached_is_a_504_on_a_miss_and_large_objects_pass_through() {
    let origin = Origin::start(|req: &Seen| {
        let body = if req.target == "/large" {
            "x".repeat(2 << 20)
        } else {
            "small".to_owned()
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let proxy = proxy(origin.addr(), 1, "");
    assert_eq!(
        get(proxy.addr, "/small", "Cache-Control: only-if-cached\r\n").status,
        504
    );
    assert_eq!(get(proxy.addr, "/small", "").status, 200);
    assert_eq!(
        get(proxy.addr, "/small", "Cache-Control: only-if-cached\r\n").status,
        200
    );
    // Over max_object (1 MiB): relayed whole, never stored.
    for _ in 0..2 {
        let large = get(proxy.addr, "/large", "");
        assert_eq!(large.body.len(), 2 << 20);
        assert_eq!(large.header("x-cache"), Some("MISS"));
    }
    assert_eq!(origin.seen().len(), 3);
}

#[test]
fn chunked_responses_are_stored_whole_and_served_with_a_length() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let origin = Origin::start(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let proxy = proxy(origin.addr(), 1, "");
    let first = get(proxy.addr, "/chunked", "");
    assert_eq!(first.text(), "hello world");
    let hit = get(proxy.addr, "/chunked", "");
    assert_eq!(hit.text(), "hello world");
    assert_eq!(hit.header("content-length"), Some("11"));
    assert!(hit.header("transfer-encoding").is_none());
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn a_route_naming_an_unknown_cache_is_a_config_error() {
    let file = temp_file(
        "cache-bad.toml",
        "[cache.main]\nmemory = \"1MiB\"\nmax_object = \"2MiB\"\nlock_timeout = \"0s\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
         [[listener.route]]\nupstream = \"app\"\ncache = \"other\"\n",
    );
    let out = std::process::Command::new(common::BIN)
        .args(["check", file.to_str().expect("path")])
        .output()
        .expect("run check");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(errors.contains(":3: cache.main.max_object:"), "{errors}");
    assert!(
        errors.contains(":4: cache.main.lock_timeout: must be greater than zero"),
        "{errors}"
    );
    assert!(
        errors.contains(":17: listener[0].route[0].cache: no [cache.other] is configured"),
        "{errors}"
    );
    // One cache for reverse routes and a forward listener, two disk tiers
    // in one directory, and a disk tier's index without room, are refused.
    let dir = std::env::temp_dir().display().to_string();
    let file = temp_file(
        "cache-shared.toml",
        &format!(
            "[cache.main]\ndisk = {{ path = \"{dir}\", size = \"1GiB\" }}\n\n\
             [cache.other]\ndisk = {{ path = \"{dir}\", size = \"1GiB\" }}\nmemory = \"64KiB\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
             [[listener.route]]\nupstream = \"app\"\ncache = \"main\"\n\n\
             [[listener]]\nname = \"out\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\ncache = \"main\"\n"
        ),
    );
    let out = std::process::Command::new(common::BIN)
        .args(["check", file.to_str().expect("path")])
        .output()
        .expect("run check");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        errors.contains(":5: cache.other.disk.path: [cache.main] keeps its files there already"),
        "{errors}"
    );
    assert!(
        errors.contains("listener[1].cache: [cache.main] serves reverse routes too"),
        "{errors}"
    );
    assert!(
        errors.contains(":6: cache.other.memory: with a disk tier, memory holds the heads and keys"),
        "{errors}"
    );
}

#[test]
fn the_admin_listener_counts_hits_misses_and_what_the_store_holds() {
    let (origin, _) = counting_origin("Cache-Control: max-age=60\r\n");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let proxy = proxy_with(origin.addr(), 2, "", &format!("[admin]\nlisten = \"{admin}\"\n"));
    get(proxy.addr, "/m", "");
    wait_stored(proxy.addr, "/m");
    get(proxy.addr, "/m", "");
    let metrics = get(admin, "/metrics", "").text();
    for line in [
        "ringway_cache_hits_total{cache=\"main\"} 2",
        "ringway_cache_misses_total{cache=\"main\"} 1",
        "ringway_cache_fills_total{cache=\"main\"} 1",
        "ringway_cache_objects{cache=\"main\"} 1",
        "ringway_cache_evictions_total{cache=\"main\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    // Purged by URL: the next request goes to the origin.
    let purged = request(
        admin,
        "POST",
        "/purge?url=http%3A%2F%2Fsite.test%2Fm",
        "Content-Length: 0\r\n",
    );
    assert_eq!(
        (purged.status, purged.text().as_str()),
        (200, "purged from main\n")
    );
    let again = request(
        admin,
        "POST",
        "/purge?url=http://site.test/m",
        "Content-Length: 0\r\n",
    );
    assert_eq!(again.status, 404);
    assert_eq!(
        request(admin, "POST", "/purge?url=/m", "Content-Length: 0\r\n").status,
        400
    );
    assert_eq!(get(admin, "/purge?url=http://site.test/m", "").status, 405);
    assert_eq!(get(proxy.addr, "/m", "").header("x-cache"), Some("MISS"));
}

#[test]
fn long_bodies_are_served_from_the_store_whole_and_in_ranges() {
    // Long enough to be kept in a file and sent with sendfile.
    let body: String = (0..300_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let served = body.clone();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let origin = Origin::start(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{served}",
                served.len()
            )
            .into_bytes(),
        )
    });
    let proxy = proxy(origin.addr(), 1, "");
    assert_eq!(get(proxy.addr, "/long", "").text(), body);
    // Several hits on one connection: each one whole, in order.
    let mut client = TestClient::connect(proxy.addr);
    for _ in 0..3 {
        client.send(b"GET /long HTTP/1.1\r\nHost: site.test\r\n\r\n");
        let hit = client.read_response(false).expect("a response");
        assert_eq!(hit.header("x-cache"), Some("HIT"));
        assert_eq!(hit.text(), body);
    }
    let part = get(proxy.addr, "/long", "Range: bytes=100000-100009\r\n");
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), &body[100_000..100_010]);
    let tail = get(proxy.addr, "/long", "Range: bytes=-5\r\n");
    assert_eq!(tail.text(), &body[body.len() - 5..]);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn forward_listeners_cache_plain_http_after_their_acl_allows_it() {
    let (origin, count) = counting_origin("Cache-Control: max-age=60\r\n");
    let port = origin.addr().port();
    // Two forward listeners share the cache; the second one's ACL refuses
    // the destination the first one stored.
    let file = temp_file(
        "cache-forward.toml",
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [dns]\nhosts = { \"allowed.test\" = \"127.0.0.1\" }\nservers = [\"127.0.0.1:9\"]\ntimeout = \"200ms\"\n\n\
         [cache.main]\nmemory = \"16MiB\"\nx_cache = true\n\n\
         [acl.open]\ndefault = \"deny\"\nprivate_allow = [\"127.0.0.1/32\"]\n\n\
         [[acl.open.rule]]\naction = \"allow\"\nsrc = [\"127.0.0.0/8\"]\n\n\
         [acl.closed]\ndefault = \"deny\"\nprivate_allow = [\"127.0.0.1/32\"]\n\n\
         [[listener]]\nname = \"open\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\nacl = \"open\"\ncache = \"main\"\n\n\
         [[listener]]\nname = \"closed\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\nacl = \"closed\"\ncache = \"main\"\n",
    );
    let open = Running::start(&["run", file.to_str().expect("path")]);
    let closed = open.wait_for_log("listener \"closed\"");
    let closed: SocketAddr = closed
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("the closed listener's address");
    let url = format!("http://allowed.test:{port}/f");
    let first = get(open.addr, &url, "");
    assert_eq!(
        (first.text().as_str(), first.header("x-cache")),
        ("response 1", Some("MISS"))
    );
    let hit = get(open.addr, &format!("http://ALLOWED.test:{port}/f"), "");
    assert_eq!(
        (hit.text().as_str(), hit.header("x-cache")),
        ("response 1", Some("HIT"))
    );
    let refused = get(closed, &url, "");
    assert_eq!(refused.status, 403, "the ACL comes first, cached or not");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn within_stale_while_revalidate_the_stale_response_answers_at_once_and_is_refreshed_behind_it() {
    // The origin holds every revalidation until the test lets it go: a
    // stale answer that waited for it would never come.
    let released = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let (seen, held) = (Arc::clone(&count), Arc::clone(&released));
    let origin = Origin::start(move |req: &Seen| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::Bytes(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-while-revalidate=600\r\n\
                  ETag: \"s1\"\r\nContent-Length: 3\r\n\r\nold"
                    .to_vec(),
            );
        }
        ringway_tests::eventually(Duration::from_secs(20), || held.load(Ordering::SeqCst));
        if req.header("if-none-match") == Some("\"s1\"") {
            Reply::Bytes(
                b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=600\r\nETag: \"s1\"\r\n\r\n".to_vec(),
            )
        } else {
            Reply::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwrong".to_vec())
        }
    });
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let proxy = proxy_with(origin.addr(), 1, "", &format!("[admin]\nlisten = \"{admin}\"\n"));
    assert_eq!(get(proxy.addr, "/swr", "").text(), "old");
    for _ in 0..3 {
        let stale = get(proxy.addr, "/swr", "");
        assert_eq!(stale.header("x-cache"), Some("STALE"));
        assert_eq!(stale.text(), "old");
    }
    // The first stale answer started one refresh, with the stored
    // validator; the others found it running.
    let asked = ringway_tests::eventually(Duration::from_secs(10), || count.load(Ordering::SeqCst) == 2);
    assert!(asked, "a refresh reached the origin");
    released.store(true, Ordering::SeqCst);
    // Its 304 makes the stored response fresh again.
    let fresh = ringway_tests::eventually(Duration::from_secs(10), || {
        get(proxy.addr, "/swr", "").header("x-cache") == Some("HIT")
    });
    assert!(fresh, "the refresh's 304 made it fresh");
    let hit = get(proxy.addr, "/swr", "");
    assert_eq!(
        (hit.text().as_str(), hit.header("cache-control")),
        ("old", Some("max-age=600"))
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "one refresh for three stale answers"
    );
    // Only the clients' requests are logged (the refresh, written before
    // the hit, would be a REVALIDATED line).
    proxy.wait_for_log("GET /swr 200 HIT");
    assert_eq!(proxy.log_lines("REVALIDATED"), Vec::<String>::new());
    // Counted apart from the clients' requests: one miss, one refresh,
    // no client revalidation.
    let metrics = get(admin, "/metrics", "").text();
    for line in [
        "ringway_cache_misses_total{cache=\"main\"} 1",
        "ringway_cache_refreshes_total{cache=\"main\"} 1",
        "ringway_cache_revalidated_total{cache=\"main\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[test]
fn a_refresh_answered_with_a_new_response_stores_it_in_the_disk_tier() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let origin = Origin::start(move |_: &Seen| {
        let (cc, body) = match seen.fetch_add(1, Ordering::SeqCst) {
            0 => ("max-age=0, stale-while-revalidate=600", "old"),
            _ => ("max-age=600", "new"),
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\nETag: \"{body}\"\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let dir = disk_dir("refresh");
    let proxy = proxy(origin.addr(), 1, &disk_keys(&dir));
    assert_eq!(get(proxy.addr, "/r", "").text(), "old");
    // Stored (stale at once): `max-stale` takes it without a refresh.
    let stored = ringway_tests::eventually(Duration::from_secs(10), || {
        get(proxy.addr, "/r", "Cache-Control: only-if-cached, max-stale\r\n").status == 200
    });
    assert!(stored, "/r was stored");
    // A HEAD from an HTTP/1.0 client starts it: the refresh is a GET, in
    // the client's version.
    let mut client = TestClient::connect(proxy.addr);
    client.send(b"HEAD /r HTTP/1.0\r\nHost: site.test\r\n\r\n");
    let stale = client.read_response(true).expect("a response");
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    let fresh = ringway_tests::eventually(Duration::from_secs(10), || {
        let hit = get(proxy.addr, "/r", "");
        hit.header("x-cache") == Some("HIT") && hit.text() == "new"
    });
    assert!(fresh, "the refresh's new response was stored");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory for one test's disk tier.
fn disk_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringway-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `[cache.main]` keys for a disk tier at `dir`.
fn disk_keys(dir: &std::path::Path) -> String {
    format!("disk = {{ path = \"{}\", size = \"64MiB\" }}\n", dir.display())
}

#[test]
fn the_disk_tier_survives_a_restart() {
    let (origin, count) = counting_origin("Cache-Control: max-age=600\r\n");
    let dir = disk_dir("disk-restart");
    let long = format!("/long?{}", "x".repeat(10));
    let first = proxy(origin.addr(), 1, &disk_keys(&dir));
    assert_eq!(get(first.addr, "/a", "").text(), "response 1");
    assert_eq!(get(first.addr, &long, "").text(), "response 2");
    wait_stored(first.addr, "/a");
    wait_stored(first.addr, &long);
    let files = || {
        std::fs::read_dir(&dir)
            .expect("the disk tier's directory")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "rwc"))
            })
            .count()
    };
    assert_eq!(files(), 2, "one file per stored response");
    first.signal("TERM");
    assert!(first.wait().success());
    // A new process reads them back: hits, without the origin.
    let second = proxy(origin.addr(), 1, &disk_keys(&dir));
    second.wait_for_log("2 stored responses read back");
    let hit = get(second.addr, "/a", "");
    assert_eq!(
        (hit.text().as_str(), hit.header("x-cache")),
        ("response 1", Some("HIT"))
    );
    assert_eq!(get(second.addr, &long, "").text(), "response 2");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // An invalidation removes the file too.
    request(second.addr, "DELETE", "/a", "");
    assert_eq!(files(), 1);
    // A file removed by hand makes its response a miss, answered whole.
    for entry in std::fs::read_dir(&dir).expect("dir") {
        let _ = std::fs::remove_file(entry.expect("entry").path());
    }
    let refetched = get(second.addr, &long, "");
    assert_eq!(refetched.status, 200);
    assert_eq!(refetched.header("x-cache"), Some("MISS"));
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "the DELETE and the refetch reached the origin"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_passes_responses_through_with_a_log_line() {
    let body = "y".repeat(100_000);
    let served = body.clone();
    let origin = Origin::start(move |req: &Seen| {
        let body = if req.target == "/small" {
            "small"
        } else {
            served.as_str()
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let dir = disk_dir("disk-full");
    let file = temp_file(
        "cache-full.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n\
             [cache.main]\nx_cache = true\n{}\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
             [[listener.route]]\nupstream = \"app\"\ncache = \"main\"\n",
            disk_keys(&dir),
            origin.addr()
        ),
    );
    // Files may not grow past 32 KiB (ulimit -f counts 512-byte blocks),
    // as on a disk that is full; the signal a write past it raises is
    // ignored, so the write fails (EFBIG) instead.
    let mut command = std::process::Command::new("sh");
    command.args([
        "-c",
        &format!(
            "trap '' XFSZ; ulimit -f 64; exec {} run {}",
            common::BIN,
            file.display()
        ),
    ]);
    let proxy = Running::spawn(command);
    for _ in 0..2 {
        let large = get(proxy.addr, "/large", "");
        assert_eq!(large.body.len(), body.len(), "relayed whole");
        assert_eq!(large.header("x-cache"), Some("MISS"), "not stored");
    }
    proxy.wait_for_log("cache disk: ");
    // What fits is still stored.
    get(proxy.addr, "/small", "");
    wait_stored(proxy.addr, "/small");
    assert_eq!(get(proxy.addr, "/small", "").header("x-cache"), Some("HIT"));
    assert_eq!(origin.seen().len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}
