//! Evaluation of compiled rules, without sockets.

use std::sync::Arc;

use super::*;
use crate::head::parsed;

fn client() -> ClientInfo {
    ClientInfo::new("10.1.2.3:5000".parse().unwrap(), "127.0.0.1:80".parse().unwrap())
}

fn rule(tests: Vec<Test>, action: Action) -> Rule {
    Rule {
        name: None,
        when: Condition { tests },
        action,
    }
}

fn deny(status: u16) -> Action {
    Action::Deny { status, body: None }
}

/// Evaluates `policy` on `request` from [`client`].
fn evaluate(policy: &Policy, request: &str) -> (Verdict, Effects) {
    let req = parsed(request);
    let client = client();
    let mut fx = Effects::default();
    let verdict = with_canonical(req.target(), |path, query, raw_query| {
        let facts = Facts {
            req: &req,
            client: &client,
            path,
            query,
            raw_query,
        };
        policy.evaluate(&facts, &mut fx, &mut NoTrace)
    });
    (verdict, fx)
}

/// Evaluates `policy` on `request`: the status of the answer (0: goes on)
/// and the rewritten target.
fn run(policy: &Policy, request: &str) -> (u16, Option<String>) {
    let (verdict, fx) = evaluate(policy, request);
    let status = match verdict {
        Verdict::Reply(r) => r.status,
        _ => 0,
    };
    (status, fx.rewrite.map(|t| String::from_utf8(t).unwrap()))
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\n\r\n")
}

#[test]
fn the_first_terminal_action_ends_the_list_and_allow_stops_it() {
    let policy = Policy {
        rules: vec![
            rule(
                vec![Test::PathPrefix(vec![b"/open".as_slice().into()])],
                Action::Allow,
            ),
            rule(vec![], deny(403)),
            rule(vec![], deny(451)),
        ],
        ..Policy::default()
    };
    assert_eq!(run(&policy, &get("/open/x")).0, 0);
    assert_eq!(run(&policy, &get("/closed")).0, 403);
}

#[test]
fn matchers_read_the_request() {
    let net = |s: &str| s.parse().unwrap();
    let cases: Vec<(Test, &str, bool)> = vec![
        (Test::Src(vec![net("10.0.0.0/8")]), "/", true),
        (Test::Src(vec![net("192.168.0.0/16")]), "/", false),
        (Test::Method(vec![b"GET".as_slice().into()]), "/", true),
        (Test::Method(vec![b"get".as_slice().into()]), "/", false),
        (
            Test::PathRegex(regex::bytes::Regex::new("^/a/[0-9]+$").unwrap()),
            "/a/%31%32",
            true,
        ),
        (
            Test::Query {
                name: b"id".as_slice().into(),
                value: ValueMatch::parse("~^[0-9]+$").unwrap(),
            },
            "/?x=1&id=42",
            true,
        ),
        (
            Test::Query {
                name: b"id".as_slice().into(),
                value: ValueMatch::parse("42").unwrap(),
            },
            "/?xid=42",
            false,
        ),
        (
            Test::Header {
                name: "user-agent".into(),
                value: ValueMatch::parse("curl/8").unwrap(),
            },
            "/",
            true,
        ),
        (Test::Sni(vec!["*.example.com".into()]), "/", false),
        (
            Test::Not(Condition {
                tests: vec![Test::Src(vec![net("10.0.0.0/8")])],
            }),
            "/",
            false,
        ),
    ];
    for (test, target, want) in cases {
        let shown = test.to_string();
        let policy = Policy {
            rules: vec![rule(vec![test], deny(403))],
            ..Policy::default()
        };
        assert_eq!(run(&policy, &get(target)).0 == 403, want, "{shown} on {target}");
    }
}

#[test]
fn rewrites_chain_keep_the_query_and_redirects_read_captures() {
    let rewrite = |re: &str, to: &str| Action::Rewrite {
        path_regex: regex::bytes::Regex::new(re).unwrap(),
        to: template::Template::parse(to, 1).unwrap(),
    };
    let policy = Policy {
        rules: vec![
            rule(vec![], rewrite("^/api/v1/(.*)$", "/v2/$1")),
            rule(vec![], rewrite("^/v2/(.*)$", "/internal/$1")),
            rule(vec![], rewrite("^/nomatch/(.*)$", "/x/$1")),
        ],
        ..Policy::default()
    };
    assert_eq!(
        run(&policy, &get("/api/v1/users?p=2")),
        (0, Some("/internal/users?p=2".into()))
    );
    assert_eq!(run(&policy, &get("/other")), (0, None));
    // A rewrite whose target names a query replaces the client's.
    let policy = Policy {
        rules: vec![rule(vec![], rewrite("^/s/(.*)$", "/search?q=$1"))],
        ..Policy::default()
    };
    assert_eq!(
        run(&policy, &get("/s/cats?x=1")).1.as_deref(),
        Some("/search?q=cats")
    );
}

#[test]
fn rules_after_a_rewrite_read_the_new_path() {
    let rewrite = |re: &str, to: &str, groups| Action::Rewrite {
        path_regex: regex::bytes::Regex::new(re).unwrap(),
        to: template::Template::parse(to, groups).unwrap(),
    };
    let policy = Policy {
        rules: vec![
            rule(vec![], rewrite("^/legacy/(.*)$", "/admin/$1", 1)),
            rule(
                vec![Test::PathPrefix(vec![b"/admin".as_slice().into()])],
                deny(403),
            ),
        ],
        ..Policy::default()
    };
    assert_eq!(run(&policy, &get("/legacy/x")).0, 403);
    assert_eq!(run(&policy, &get("/other")).0, 0);
}

#[test]
fn a_rewrite_encodes_header_values_and_never_fails_open() {
    let rewrite = |to: &str| Policy {
        rules: vec![rule(
            vec![],
            Action::Rewrite {
                path_regex: regex::bytes::Regex::new("^/(.*)$").unwrap(),
                to: template::Template::parse(to, 1).unwrap(),
            },
        )],
        ..Policy::default()
    };
    let with = |tenant: &str| format!("GET /secret HTTP/1.1\r\nHost: h\r\nX-Tenant: {tenant}\r\n\r\n");
    let tenants = rewrite("/tenants/$http_x_tenant/$1");
    assert_eq!(
        run(&tenants, &with("a b")).1.as_deref(),
        Some("/tenants/a%20b/secret")
    );
    assert_eq!(
        run(&tenants, &with("../other")).1.as_deref(),
        Some("/tenants/..%2Fother/secret")
    );
    // A target that cannot be sent is a 400, not the request as it came.
    assert_eq!(run(&rewrite("$http_x_tenant$1"), &with("abc")).0, 400);
}

#[test]
fn a_routes_header_edits_win_over_its_listeners() {
    let edit = |op, name: &str, value: Option<&str>| {
        HeaderEdit::new(op, name, value.map(|v| template::Template::parse(v, 0).unwrap())).unwrap()
    };
    let listener = [
        edit(EditOp::Set, "X-Frame-Options", Some("SAMEORIGIN")),
        edit(EditOp::Set, "Strict-Transport-Security", Some("max-age=1")),
        edit(EditOp::Append, "X-Tag", Some("a")),
    ];
    let route = [
        edit(EditOp::Set, "x-frame-options", Some("DENY")),
        edit(EditOp::Remove, "Strict-Transport-Security", None),
        edit(EditOp::Append, "X-Tag", Some("b")),
    ];
    let merged = HeaderRules::merged(&listener, &route);
    let shown: Vec<(EditOp, &str)> = merged.iter().map(|e| (e.op(), e.name())).collect();
    assert_eq!(
        shown,
        [
            (EditOp::Append, "X-Tag"),
            (EditOp::Set, "x-frame-options"),
            (EditOp::Remove, "Strict-Transport-Security"),
            (EditOp::Append, "X-Tag"),
        ]
    );
    let req = parsed(&get("/"));
    let mut edits = HeadEdits::new();
    let vars = template::Vars {
        req: &req,
        remote: client().peer,
        request_id: crate::request_id::RequestId::default(),
        https: false,
        path: None,
        captures: None,
        in_url: false,
    };
    HeaderRules::apply(&merged, &vars, &mut edits);
    assert_eq!(
        edits.added(),
        b"X-Tag: a\r\nx-frame-options: DENY\r\nX-Tag: b\r\n"
    );
    assert!(edits.removes(b"strict-transport-security") && edits.removes(b"X-Frame-Options"));
}

#[test]
fn a_rate_limit_answers_429_with_retry_after() {
    let table = Arc::new(RateTable::new(ratelimit::Rate::parse("1/m").unwrap(), 2, 64));
    let policy = Policy {
        rules: vec![rule(
            vec![],
            Action::RateLimit {
                table,
                key: RateKey::ClientIp,
            },
        )],
        ..Policy::default()
    };
    assert_eq!(run(&policy, &get("/")).0, 0);
    assert_eq!(run(&policy, &get("/")).0, 0);
    let Verdict::Reply(reply) = evaluate(&policy, &get("/")).0 else {
        panic!("over the limit")
    };
    assert_eq!(reply.status, 429);
    let retry: u64 = reply
        .headers
        .trim_end()
        .strip_prefix("Retry-After: ")
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
}

#[test]
fn targets_that_are_already_canonical_are_read_in_place() {
    for (target, canonical) in [
        ("/a/b?x=1", true),
        ("/a/.b", true),
        ("/a/./b", false),
        ("/a//b", false),
        ("/a/..", false),
        ("/%61", false),
        ("/a/b/", true),
        ("/a/..b", true),
        ("/a/.?x", false),
        ("/a\\b", false),
        ("/a#b", false),
        ("/a/..;x/b", false),
        ("/a/..x", true),
        ("/a?x=/../%2e", false),
        ("/a?x=/../", true),
        ("/", true),
        ("*", false),
    ] {
        assert_eq!(is_canonical(target.as_bytes()), canonical, "{target}");
    }
    with_canonical(b"/a/../b?x=%61", |path, query, raw| {
        assert_eq!((path, query, raw), (&b"/b"[..], &b"x=a"[..], &b"x=%61"[..]));
    });
}

#[test]
fn sni_matches_the_name_the_client_asked_for() {
    let policy = Policy {
        rules: vec![rule(
            vec![Test::Sni(vec![
                "admin.example.com".into(),
                "*.internal.test".into(),
            ])],
            deny(421),
        )],
        ..Policy::default()
    };
    let req = parsed(&get("/"));
    let status = |sni: Option<&str>| {
        let mut client = client();
        client.tls = sni.map(|name| {
            std::rc::Rc::new(ringway_tls::TlsInfo {
                sni: Some(name.into()),
                client_subject: None,
                alpn: None,
                version: "TLSv1.3",
            })
        });
        let facts = Facts {
            req: &req,
            client: &client,
            path: b"/",
            query: b"",
            raw_query: b"",
        };
        match policy.evaluate(&facts, &mut Effects::default(), &mut NoTrace) {
            Verdict::Reply(r) => r.status,
            _ => 0,
        }
    };
    assert_eq!(status(Some("admin.example.com")), 421);
    assert_eq!(status(Some("a.b.internal.test")), 421);
    assert_eq!(status(Some("internal.test")), 0, "*. needs a subdomain");
    assert_eq!(status(Some("www.example.com")), 0);
    assert_eq!(status(None), 0, "a plain connection has no server name");
}
