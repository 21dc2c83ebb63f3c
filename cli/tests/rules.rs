//! Request rules through the real wiring: proxies started from TOML by the
//! factory the binary uses, in front of loopback origins that record what
//! reached them. Each matcher and action, their order, captures, header
//! edits, CORS, rate limits and error pages.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{temp_file, Running, BIN};

use ringway::{config, factory};
use ringway_tests::{eventually, refused_addr, Origin, Reply, Response, TestClient};

/// A reverse proxy on an ephemeral port with `listener` (keys and tables
/// after the listener's address) and an upstream `app` at `origin`.
fn proxy(origin: &str, listener: &str) -> factory::Running {
    let source = format!(
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n{listener}\n"
    );
    let config = config::parse(Path::new("rules.toml"), &source).unwrap_or_else(|e| panic!("{e}\n{source}"));
    factory::start(&config).expect("the proxy starts")
}

fn request(client: &mut TestClient, head: &str) -> Response {
    client.send(format!("{head}\r\n\r\n").as_bytes());
    client.response()
}

fn get(client: &mut TestClient, path: &str, extra: &str) -> Response {
    request(client, &format!("GET {path} HTTP/1.1\r\nHost: site.test{extra}"))
}

/// What the origin saw last.
fn last_seen(origin: &Origin) -> ringway_tests::Seen {
    origin.seen().pop().expect("the origin saw a request")
}

const MATCHERS: &str = r#"
[[listener.rule]]
name = "old api"
rewrite = { path_regex = "^/v1/(.*)$", to = "/api/$1" }

[[listener.rule]]
name = "scanners"
when = { header = { "User-Agent" = "~(?i)sqlmap|nikto" } }
deny = 403

[[listener.route]]
path_prefix = "/api"
upstream = "app"
strip_prefix = true

[[listener.route.rule]]
name = "admin only from elsewhere"
when = { src = ["127.0.0.0/8"], path_prefix = "/api/admin" }
deny = { status = 403, body = "no admin from here\n" }

[[listener.route.rule]]
when = { method = ["DELETE", "PURGE"] }
deny = 405

[[listener.route.rule]]
when = { query = { debug = "1" } }
return = { status = 200, body = "debug is off", content_type = "text/plain" }

[[listener.route.rule]]
when = { path_prefix = "/api/first" }
deny = 451

[[listener.route.rule]]
when = { path_prefix = "/api/first" }
return = { status = 200, body = "second" }

[[listener.route.rule]]
when = { not = { header = { "X-Tenant" = "~." } }, path_prefix = "/api/tenant" }
deny = 400

[[listener.route.rule]]
rewrite = { path_regex = "^/api/v1/(.*)$", to = "/v2/$1" }

[[listener.route]]
path_prefix = "/old"
upstream = "app"

[[listener.route.rule]]
when = { path_regex = "^/old/(\\w+)/(.*)$" }
redirect = { to = "https://new.example.com/$2/$1$is_args$query", status = 301 }

[[listener.route]]
path_prefix = "/"
upstream = "app"
upstream_host = "internal.test"
"#;

#[test]
fn each_matcher_and_action_in_order() {
    let origin = Origin::start(|seen| Reply::ok(seen.target.clone()));
    let running = proxy(&origin.addr().to_string(), MATCHERS);
    let mut c = TestClient::connect(running.local_addrs()[0]);

    // Header regex at the listener, before any route.
    let r = get(&mut c, "/anything", "\r\nUser-Agent: Mozilla/5.0 SQLMap");
    assert_eq!(r.status, 403);
    // Source network and path prefix; the path is read canonically.
    for path in [
        "/api/admin/x",
        "/api/%61dmin/x",
        "/api/x/../admin",
        "/api//admin",
        "//api//admin",
        "/api/x\\..\\admin",
        "/api/x%2F..%2Fadmin",
        "/api/x/..;/admin",
        "/v1/admin",
    ] {
        let r = get(&mut TestClient::connect(running.local_addrs()[0]), path, "");
        assert_eq!(
            (r.status, r.text().as_str()),
            (403, "no admin from here\n"),
            "{path}"
        );
    }
    // A fragment in a request target is refused (servers disagree on it).
    assert_eq!(
        get(
            &mut TestClient::connect(running.local_addrs()[0]),
            "/api/admin#/../x",
            ""
        )
        .status,
        400
    );
    // Method.
    let r = request(&mut c, "DELETE /api/users HTTP/1.1\r\nHost: site.test");
    assert_eq!(r.status, 405);
    // Query parameter.
    let r = get(&mut c, "/api/users?x=2&debug=1", "");
    assert_eq!((r.status, r.text().as_str()), (200, "debug is off"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // The first terminal action ends the list.
    assert_eq!(get(&mut c, "/api/first", "").status, 451);
    // Negation: a missing header (a 400 closes the connection).
    assert_eq!(get(&mut c, "/api/tenant", "").status, 400);
    let mut c = TestClient::connect(running.local_addrs()[0]);
    assert_eq!(get(&mut c, "/api/tenant", "\r\nX-Tenant: t1").status, 200);
    // Rewrite with a capture; the query follows.
    let r = get(&mut c, "/api/v1/users?page=2", "");
    assert_eq!((r.status, r.text().as_str()), (200, "/v2/users?page=2"));
    // A listener's rewrite routes by the new path (and that route strips it).
    assert_eq!(get(&mut c, "/v1/users", "").text(), "/users");
    // Prefix stripped.
    assert_eq!(get(&mut c, "/api/users?x=1", "").text(), "/users?x=1");
    assert_eq!(get(&mut c, "/api", "").text(), "/");
    // Redirect with captures and the query.
    let r = get(&mut c, "/old/docs/a/b?x=1", "");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://new.example.com/a/b/docs?x=1"));
    let r = get(&mut c, "/old/docs/a", "");
    assert_eq!(r.header("location"), Some("https://new.example.com/a/docs"));
    // A route that sets the upstream Host; the path goes as it came.
    let r = get(&mut c, "/plain/%7Euser", "");
    assert_eq!(r.text(), "/plain/%7Euser");
    assert_eq!(last_seen(&origin).header("host"), Some("internal.test"));
    // Nothing else reached the origin.
    let targets: Vec<String> = origin.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(
        targets,
        [
            "/tenant",
            "/v2/users?page=2",
            "/users",
            "/users?x=1",
            "/",
            "/plain/%7Euser"
        ],
        "refused requests never reach the origin"
    );
}

const HEADERS: &str = r#"
[listener.headers]
request_set = { "X-Request-Id" = "$request_id", "X-Client" = "$remote_addr via $scheme" }
response_set = { "Strict-Transport-Security" = "max-age=31536000", "X-Frame-Options" = "SAMEORIGIN" }

[[listener.route]]
upstream = "app"

[[listener.route.rule]]
when = { path_prefix = "/denied" }
deny = 403

[listener.route.headers]
request_remove = ["X-Debug"]
request_append = { "X-Route" = "main" }
response_remove = ["Server", "X-Powered-By"]
response_set = { "X-Frame-Options" = "DENY" }
"#;

#[test]
fn header_edits_on_requests_and_responses() {
    let origin = Origin::start(|_| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nServer: origin/1.0\r\nX-Powered-By: php\r\nX-Frame-Options: SAMEORIGIN\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        )
    });
    let running = proxy(&origin.addr().to_string(), HEADERS);
    let mut c = TestClient::connect(running.local_addrs()[0]);
    let r = get(&mut c, "/", "\r\nX-Debug: 1\r\nX-Request-Id: forged");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let frames = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-frame-options"))
        .count();
    assert_eq!(
        frames, 1,
        "set replaces the origin's field, and the route's the listener's"
    );
    assert!(r.header("x-powered-by").is_none());
    assert!(r.header("server").is_none());
    let seen = last_seen(&origin);
    let id = seen.header("x-request-id").expect("a request id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let ids = seen
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
        .count();
    assert_eq!(ids, 1, "the client's own is replaced");
    assert_eq!(seen.header("x-client"), Some("127.0.0.1 via http"));
    assert_eq!(seen.header("x-route"), Some("main"));
    assert!(seen.header("x-debug").is_none());
    // The proxy's own answers get the response edits too.
    let r = get(&mut c, "/denied", "");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000"));
    assert!(r.header("server").is_none(), "no Server on a refusal either");
    get(&mut c, "/", "");
    let next = last_seen(&origin);
    assert_ne!(next.header("x-request-id"), Some(id), "one ID per request");
}

const CORS: &str = r#"
[[listener.route]]
upstream = "app"

[[listener.route.rule]]
when = { path_prefix = "/denied" }
deny = 403

[[listener.route.rule]]
when = { path_prefix = "/limited" }
rate_limit = { rate = "1/m", burst = 1 }

[listener.route.headers]
cors = { allow_origins = ["https://app.example.com"], allow_methods = ["GET", "POST", "PUT"], allow_headers = ["Content-Type", "X-Token"], allow_credentials = true, max_age = "10m" }
"#;

#[test]
fn cors_preflights_and_responses() {
    let origin = Origin::start(|_| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        )
    });
    let running = proxy(&origin.addr().to_string(), CORS);
    let mut c = TestClient::connect(running.local_addrs()[0]);
    let preflight = |c: &mut TestClient, origin: &str, method: &str| {
        request(
            c,
            &format!(
                "OPTIONS /x HTTP/1.1\r\nHost: site.test\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: content-type,x-token"
            ),
        )
    };
    let r = preflight(&mut c, "https://app.example.com", "PUT");
    assert_eq!(r.status, 204);
    assert!(
        r.header("content-length").is_none() && r.body.is_empty(),
        "a 204 has no body nor length"
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, PUT"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, x-token")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(r.header("vary").unwrap_or_default().contains("Origin"));
    assert_eq!(preflight(&mut c, "https://evil.example.com", "PUT").status, 403);
    assert_eq!(preflight(&mut c, "https://app.example.com", "DELETE").status, 403);
    assert!(origin.seen().is_empty(), "preflights are answered by the proxy");

    // A simple request from the allowed origin: named, never `*`, with credentials.
    let r = get(&mut c, "/x", "\r\nOrigin: https://app.example.com");
    assert_eq!(r.status, 200);
    let acao: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("access-control-allow-origin"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(acao, ["https://app.example.com"], "the origin's `*` is replaced");
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    // Another origin gets no CORS fields, and the answer still varies.
    let r = get(&mut c, "/x", "\r\nOrigin: https://evil.example.com");
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(r.header("vary"), Some("Origin"));
    // The proxy's own answers carry the fields too, so that a script can
    // read the status.
    let r = get(&mut c, "/denied", "\r\nOrigin: https://app.example.com");
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // Preflights are answered before the route's rules: they spend no
    // token of the rate limit.
    for _ in 0..3 {
        let r = request(
            &mut c,
            "OPTIONS /limited HTTP/1.1\r\nHost: site.test\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: GET",
        );
        assert_eq!(r.status, 204);
    }
    assert_eq!(
        get(&mut c, "/limited", "\r\nOrigin: https://app.example.com").status,
        200
    );
    let r = get(&mut c, "/limited", "\r\nOrigin: https://app.example.com");
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // A plain OPTIONS (no preflight fields) goes to the origin.
    let r = request(&mut c, "OPTIONS /x HTTP/1.1\r\nHost: site.test");
    assert_eq!(r.status, 200);
    assert_eq!(origin.seen().len(), 4);
}

#[test]
fn a_rate_limit_lets_the_burst_through_then_answers_429_then_recovers() {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let running = proxy(
        &origin.addr().to_string(),
        r#"
[[listener.route]]
upstream = "app"

[[listener.route.rule]]
when = { path_prefix = "/limited" }
rate_limit = { rate = "3/m", burst = 3, key = "client_ip" }

[[listener.route.rule]]
when = { path_prefix = "/fast" }
rate_limit = { rate = "4/s", burst = 1 }

[[listener.route.rule]]
when = { path_prefix = "/by-key" }
rate_limit = { rate = "1/m", burst = 1, key = "header:X-Api-Key" }
"#,
    );
    let addr = running.local_addrs()[0];
    let mut c = TestClient::connect(addr);
    for i in 0..3 {
        assert_eq!(
            get(&mut c, "/limited", "").status,
            200,
            "request {i} of the burst"
        );
    }
    let r = get(&mut c, "/limited", "");
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    // A token every 20 s: no clock in the test can make this flaky.
    assert!((19..=20).contains(&retry), "{retry}");
    // Other paths are not limited; the connection stays usable.
    assert_eq!(get(&mut c, "/free", "").status, 200);
    // Tokens come back at the rate: a fast limit is driven over, then
    // lets a request through again.
    let over = (0..100).any(|_| get(&mut c, "/fast", "").status == 429);
    assert!(over, "4/s with a burst of 1 never answered 429");
    assert!(eventually(Duration::from_secs(5), || get(
        &mut TestClient::connect(addr),
        "/fast",
        ""
    )
    .status
        == 200));
    // By header: each key has its own bucket.
    assert_eq!(get(&mut c, "/by-key", "\r\nX-Api-Key: a").status, 200);
    assert_eq!(get(&mut c, "/by-key", "\r\nX-Api-Key: a").status, 429);
    assert_eq!(get(&mut c, "/by-key", "\r\nX-Api-Key: b").status, 200);
}

#[test]
fn error_pages_dress_the_proxys_own_answers() {
    let dir = std::env::temp_dir().join(format!("ringway-rules-pages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in [
        ("502.html", "<h1>upstream down</h1>"),
        ("403.html", "<h1>not for you</h1>"),
        ("429.json", "{\"error\":\"slow down\"}"),
        ("404.html", "<h1>nothing here</h1>"),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let d = dir.display();
    let listener = format!(
        r#"
[listener.headers]
error_pages = {{ 404 = "{d}/404.html" }}

[[listener.route]]
path_prefix = "/app"
upstream = "app"

[[listener.route.rule]]
when = {{ path_prefix = "/app/secret" }}
deny = 403

[[listener.route.rule]]
when = {{ path_prefix = "/app/custom" }}
deny = {{ status = 403, body = "its own body" }}

[[listener.route.rule]]
when = {{ path_prefix = "/app/limited" }}
rate_limit = {{ rate = "1/m", burst = 1 }}

[listener.route.headers]
error_pages = {{ 502 = "{d}/502.html", 403 = "{d}/403.html", 429 = "{d}/429.json" }}
"#
    );
    let running = proxy(&refused_addr().to_string(), &listener);
    let mut c = TestClient::connect(running.local_addrs()[0]);
    let r = get(&mut c, "/app/x", "");
    assert_eq!((r.status, r.text().as_str()), (502, "<h1>upstream down</h1>"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let mut c = TestClient::connect(running.local_addrs()[0]);
    let r = get(&mut c, "/app/secret", "");
    assert_eq!((r.status, r.text().as_str()), (403, "<h1>not for you</h1>"));
    let r = get(&mut c, "/app/custom", "");
    assert_eq!(
        (r.status, r.text().as_str()),
        (403, "its own body"),
        "a rule's own body is kept"
    );
    let r = get(&mut c, "/app/limited", "");
    assert_eq!(r.status, 502);
    let mut c = TestClient::connect(running.local_addrs()[0]);
    let r = get(&mut c, "/app/limited", "");
    assert_eq!((r.status, r.text().as_str()), (429, "{\"error\":\"slow down\"}"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.header("retry-after").is_some(),
        "the page keeps the answer's fields"
    );
    // No route: the listener's page.
    let r = get(&mut c, "/nowhere", "");
    assert_eq!((r.status, r.text().as_str()), (404, "<h1>nothing here</h1>"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_forward_listener_edits_headers_and_matches_them_in_its_acl() {
    let origin = Origin::start(|_| {
        Reply::Bytes(b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let page = temp_file("denied.html", "<p>{listener} refused {host} ({rule})</p>");
    let source = format!(
        r#"
[runtime]
workers = 1
pin_cpus = false

[acl.lab]
default = "allow"
block_private = true
private_allow = ["127.0.0.1/32"]

[[acl.lab.rule]]
name = "bots"
action = "deny"
header = {{ "User-Agent" = "~(?i)badbot" }}

[[listener]]
name = "outbound"
listen = "127.0.0.1:0"
mode = "forward"
acl = "lab"

[listener.headers]
request_remove = ["User-Agent", "Referer"]
request_set = {{ "X-Filter" = "ringway" }}
response_remove = ["Server"]
error_pages = {{ 403 = "{}" }}
"#,
        page.display()
    );
    let config = config::parse(Path::new("forward.toml"), &source).unwrap_or_else(|e| panic!("{e}"));
    let running = factory::start(&config).expect("starts");
    let mut c = TestClient::connect(running.local_addrs()[0]);
    let target = origin.addr();
    let r = request(
        &mut c,
        &format!("GET http://{target}/p HTTP/1.1\r\nHost: {target}\r\nUser-Agent: secret-browser\r\nReferer: http://intranet/"),
    );
    assert_eq!(r.status, 200);
    assert!(r.header("server").is_none());
    let seen = last_seen(&origin);
    assert!(seen.header("user-agent").is_none() && seen.header("referer").is_none());
    assert_eq!(seen.header("x-filter"), Some("ringway"));
    // The ACL reads the header as the client sent it, before any edit.
    let r = request(
        &mut c,
        &format!("GET http://{target}/p HTTP/1.1\r\nHost: {target}\r\nUser-Agent: Mozilla BadBot/2"),
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "<p>outbound refused 127.0.0.1 (rule 1 (bots))</p>");
    assert_eq!(origin.seen().len(), 1);
    let _ = std::fs::remove_file(page);
}

/// The errors a user sees, by key and line.
fn errors(listener: &str) -> String {
    let source = format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n{listener}\n"
    );
    match config::parse_offline(Path::new("bad.toml"), &source) {
        Ok(_) => panic!("accepted:\n{source}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_rules_are_config_errors_with_file_line_and_key() {
    let route = "[[listener.route]]\nupstream = \"app\"\n\n[[listener.route.rule]]\n";
    let cases = [
        (
            format!("{route}when = {{ path_regex = \"^/(a\" }}\ndeny = 403"),
            "bad.toml:11: listener[0].route[0].rule[0].when.path_regex: invalid regular expression \"^/(a\"",
        ),
        (
            format!("{route}when = {{ path_regex = \"^/(a)/(b)\" }}\nredirect = {{ to = \"/x/$3\" }}"),
            "listener[0].route[0].rule[0].redirect.to: $3 in \"/x/$3\", but the rule has 2 capture groups",
        ),
        (
            format!("{route}redirect = {{ to = \"/x\", status = 200 }}"),
            "listener[0].route[0].rule[0].redirect.status: 200 is not a status a redirect can have",
        ),
        (
            format!("{route}redirect = {{ to = \"https://$hots/\" }}"),
            "listener[0].route[0].rule[0].redirect.to: unknown variable $hots",
        ),
        (
            format!("{route}deny = 403\nreturn = {{ status = 200 }}"),
            "listener[0].route[0].rule[0]: a rule needs exactly one action",
        ),
        (
            format!("{route}rate_limit = {{ rate = \"fast\" }}"),
            "listener[0].route[0].rule[0].rate_limit.rate: invalid rate \"fast\"",
        ),
        (
            format!("{route}when = {{ method = \"get\" }}\ndeny = 403"),
            "listener[0].route[0].rule[0].when.method: methods are case-sensitive: \"get\" never matches \"GET\"",
        ),
        (
            format!("{route}when = {{ src = [] }}\ndeny = 403"),
            "listener[0].route[0].rule[0].when.src: an empty list matches nothing",
        ),
        (
            format!("{route}rate_limit = {{ rate = \"1/2500h\" }}"),
            "listener[0].route[0].rule[0].rate_limit: \"1/2500h\" with burst 1: a bucket would take longer than 30 days to refill",
        ),
        (
            "[[listener.route]]\nupstream = \"app\"\n\n[listener.route.headers]\nrequest_set = { \"X-Forwarded-For\" = \"1.2.3.4\" }".to_owned(),
            "is written by the proxy",
        ),
        (
            "[[listener.route]]\nupstream = \"app\"\n\n[listener.route.headers]\nrequest_remove = [\"Host\"]".to_owned(),
            "Host cannot be removed",
        ),
        (
            "[[listener.route]]\nupstream = \"app\"\nupstream_host = \"a.test\"\n\n[listener.route.headers]\nrequest_set = { \"host\" = \"b.test\" }".to_owned(),
            "listener[0].route[0].upstream_host: set the Host either with upstream_host or with request_set, not both",
        ),
        (
            format!("{route}return = {{ status = 204, body = \"x\" }}"),
            "listener[0].route[0].rule[0].return.body: a 204 response has no body",
        ),
        (
            "[[listener.route]]\nupstream = \"app\"\n\n[listener.route.headers]\ncors = { allow_origins = [\"https://app.example.com/\"] }".to_owned(),
            "listener[0].route[0].headers.cors.allow_origins[0]: \"https://app.example.com/\" is not an origin",
        ),
        (
            "[[listener.route]]\nupstream = \"app\"\n\n[listener.route.headers]\ncors = { allow_origins = [\"*\"], allow_credentials = true }".to_owned(),
            "cannot go with allow_credentials",
        ),
        (
            "[[listener.route]]\nupstream = \"app\"\n\n[listener.route.headers]\nrequest_set = { \"Content-Length\" = \"1\" }".to_owned(),
            "listener[0].route[0].headers.request_set.Content-Length: \"Content-Length\": framing fields are the proxy's to write",
        ),
        (
            "[[listener.route]]\nupstream = \"app\"\n\n[listener.route.headers]\nerror_pages = { 200 = \"x.html\" }".to_owned(),
            "listener[0].route[0].headers.error_pages.200: \"200\" is not an error status",
        ),
    ];
    for (listener, want) in cases {
        let got = errors(&listener);
        assert!(got.contains(want), "want {want:?}\ngot {got}");
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `ringway route explain` with `args`: exit code and output.
fn explain(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["route", "explain", "--config"])
        .arg(config)
        .args(["--listener", "web"])
        .args(args)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn route_explain_on_every_example() {
    let mut reverse = 0;
    for entry in std::fs::read_dir(examples_dir()).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let (code, stdout, stderr) = explain(&path, &["http://www.example.com/api/v1/users?page=2"]);
        if stderr.contains("no listener named \"web\"") || stderr.contains("is not a reverse listener") {
            assert_eq!(code, 2, "{}", path.display());
            continue;
        }
        assert!(matches!(code, 0 | 1), "{}: {code} {stderr}", path.display());
        assert!(stdout.contains("\nresult: "), "{}: {stdout}", path.display());
        reverse += 1;
    }
    assert!(
        reverse >= 3,
        "minimal, reverse and rules have a reverse listener \"web\""
    );

    let rules = examples_dir().join("rules.toml");
    let (code, out, _) = explain(&rules, &["http://www.example.com/api/v1/users?page=2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rule 3 (v1 is v2 now)"), "{out}");
    assert!(
        out.contains("result: forwarded to upstream \"api\" (127.0.0.1:9100) as GET /v2/users?page=2"),
        "{out}"
    );
    assert!(out.contains("+ X-Real-IP: 127.0.0.1"), "{out}");
    let (code, out, _) = explain(&rules, &["http://www.example.com/blog/hello?x=1"]);
    assert_eq!(code, 1, "a redirect is not forwarded");
    assert!(
        out.contains("Location: https://blog.example.com/hello?x=1"),
        "{out}"
    );
    let (code, out, _) = explain(&rules, &["--src", "198.51.100.7", "http://www.example.com/"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("rule 2 (blocked range): when src 198.51.100.0/24 -> deny 403: MATCH"),
        "{out}"
    );
    let (code, out, _) = explain(
        &rules,
        &["-H", "User-Agent: sqlmap/1.7", "http://www.example.com/"],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("result: answered by the proxy: 403 Forbidden"),
        "{out}"
    );
    let (code, out, _) = explain(
        &rules,
        &["--src", "192.0.2.1", "http://www.example.com/api/%69nternal/x"],
    );
    assert_eq!(code, 1, "the canonical path is matched: {out}");
    let (code, out, _) = explain(&rules, &["http://www.example.com/api/x#frag"]);
    assert_eq!(code, 1, "a fragment is refused, as the proxy refuses it: {out}");
    assert!(out.contains("400 Bad Request"), "{out}");
    let (code, _, stderr) = explain(&rules, &["ftp://x/"]);
    assert_eq!(code, 2, "an unusable URL is not a refusal");
    assert!(stderr.contains("expected an http:// or https:// URL"), "{stderr}");
}

#[test]
fn the_request_id_reaches_the_upstream_and_the_access_log() {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let config = temp_file(
        "request-id.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n\
             [log]\naccess_log = {{ format = \"$request_uri request_id=$request_id\" }}\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[listener.route]]\nupstream = \"app\"\n\n\
             [listener.route.headers]\nrequest_set = {{ \"X-Request-Id\" = \"$request_id\" }}\n",
            origin.addr()
        ),
    );
    let running = Running::start(&["run", "--config", config.to_str().expect("path")]);
    let mut c = TestClient::connect(running.addr);
    assert_eq!(get(&mut c, "/logged", "").status, 200);
    let id = last_seen(&origin)
        .header("x-request-id")
        .expect("an id")
        .to_owned();
    let line = running.wait_for_log(&format!("request_id={id}"));
    assert_eq!(line, format!("/logged request_id={id}"));
    let _ = std::fs::remove_file(config);
}
