//! Microbenchmarks of the per-request hot paths: head parsing and
//! serialisation (bytes/s), route lookup, request rules and the
//! balancer's pick.

use std::{hint::black_box, net::SocketAddr, rc::Rc, sync::Arc, time::Duration};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringway_balancer::{Algorithm, Balancer, HashKey, Outcome, ServerSpec, Tried, UpstreamGroup};
use ringway_benches::{BROWSER_REQUEST, ORIGIN_RESPONSE, WRK_REQUEST};
use ringway_http::{
    forward::domains::DomainSet,
    matching::ValueMatch,
    rules::{
        template::{Template, Vars},
        Action, Condition, EditOp, Effects, HeaderEdit, HeaderRules, NoTrace, Policy, Rule, Test,
    },
    write_upstream_head, ClientInfo, HeadEdits, HttpLimits, ProxyHeaders, RequestHead, RequestId,
    ResponseHead, RouteRules, RouteSpec, RouteTable,
};

fn parse_request(c: &mut Criterion) {
    let limits = HttpLimits::default();
    let mut group = c.benchmark_group("parse_request");
    for (name, input) in [("wrk", WRK_REQUEST), ("browser", BROWSER_REQUEST)] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        let mut head = RequestHead::new();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        group.bench_function(name, |b| {
            b.iter(|| {
                // As on a connection: append what was read, parse, and let
                // the head go before the next read reuses the buffer.
                head.clear();
                buf.reserve(input.len());
                buf.extend_from_slice(black_box(input));
                assert!(head.parse(&mut buf, &limits).unwrap());
                black_box(head.host());
            })
        });
    }
    group.finish();
}

fn parse_response(c: &mut Criterion) {
    let limits = HttpLimits::default();
    let mut group = c.benchmark_group("parse_response");
    group.throughput(Throughput::Bytes(ORIGIN_RESPONSE.len() as u64));
    let mut head = ResponseHead::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    group.bench_function("origin", |b| {
        b.iter(|| {
            head.clear();
            buf.reserve(ORIGIN_RESPONSE.len());
            buf.extend_from_slice(black_box(ORIGIN_RESPONSE));
            assert!(head.parse(&mut buf, &limits).unwrap());
            black_box(head.status());
        })
    });
    group.finish();
}

fn serialize_request(c: &mut Criterion) {
    let limits = HttpLimits::default();
    let mut group = c.benchmark_group("serialize_upstream_head");
    for (name, input) in [("wrk", WRK_REQUEST), ("browser", BROWSER_REQUEST)] {
        let mut head = RequestHead::new();
        assert!(head.parse(&mut BytesMut::from(input), &limits).unwrap());
        let mut out = Vec::with_capacity(4096);
        let headers = ProxyHeaders::default();
        let ip = "192.0.2.10".parse().unwrap();
        write_upstream_head(&mut out, &head, ip, &headers);
        group.throughput(Throughput::Bytes(out.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                write_upstream_head(&mut out, black_box(&head), ip, &headers);
                black_box(out.len());
            })
        });
    }
    group.finish();
}

fn route_lookup(c: &mut Criterion) {
    let mut routes = vec![RouteSpec {
        host: None,
        path_prefix: "/".into(),
        upstream: 0,
    }];
    for i in 0..50 {
        routes.push(RouteSpec {
            host: Some(format!("svc{i}.example.com")),
            path_prefix: format!("/api/v{i}"),
            upstream: i % 4,
        });
        routes.push(RouteSpec {
            host: Some(format!("*.tenant{i}.example.com")),
            path_prefix: "/".into(),
            upstream: i % 4,
        });
    }
    let table = RouteTable::new(&routes).unwrap();
    let mut group = c.benchmark_group("route_lookup");
    group.bench_function("exact_host", |b| {
        b.iter(|| black_box(table.lookup(Some(black_box(b"svc42.example.com:8080")), b"/api/v42/users")))
    });
    group.bench_function("wildcard_host", |b| {
        b.iter(|| black_box(table.lookup(Some(black_box(b"a.tenant7.example.com")), b"/x")))
    });
    group.bench_function("fallback", |b| {
        b.iter(|| black_box(table.lookup(Some(black_box(b"unknown.test")), b"/")))
    });
    group.finish();
}

fn balancer_pick(c: &mut Criterion) {
    // 64 servers, one held down by active health and one ejected by
    // passive health: every pick looks at health.
    let servers: Vec<ServerSpec> = (0..64u16)
        .map(|i| ServerSpec {
            host: None,
            weight: 1 + u32::from(i % 3),
            ..ServerSpec::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
        })
        .collect();
    let tried = Tried::default();
    let mut bench = c.benchmark_group("balancer_pick_64");
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::LeastConn,
        Algorithm::P2cEwma,
        Algorithm::ConsistentHash {
            key: HashKey::ClientIp,
            balance_factor: 0.25,
        },
    ] {
        let name = algorithm.name();
        let group = Arc::new(UpstreamGroup::new("app", servers.clone(), algorithm));
        group.health.set_up(5, false);
        let balancer = Rc::new(Balancer::new(group, 0));
        for _ in 0..3 {
            let lease = balancer.pick_server(9, &tried, 0).expect("server 9");
            lease.finish(Outcome::Failure, 0);
        }
        let mut key = 0u64;
        bench.bench_function(name, |b| {
            b.iter(|| {
                key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let lease = balancer.pick(black_box(key), &tried, 1).expect("a server");
                black_box(lease.addr());
                lease.finish(
                    Outcome::Success {
                        latency: Duration::from_micros(200),
                    },
                    1,
                );
            })
        });
    }
    bench.finish();
}

/// Lookups in a blocklist of one million names, as `dst_domain_file` loads it.
fn domain_lookup(c: &mut Criterion) {
    let mut list = String::with_capacity(32 << 20);
    for i in 0..1_000_000u32 {
        list.push_str(&format!("ad{i}.network{}.test\n", i % 1009));
    }
    list.push_str(".wholesite.test\n");
    let mut set = DomainSet::new();
    assert!(set.extend_from_list(&list).is_empty());
    drop(list);
    let hit = format!("ad500001.network{}.test", 500_001 % 1009);
    let deep_hit = "a.b.c.d.e.wholesite.test";
    let deep_miss = "static.cdn.images.www.example.org";
    let mut group = c.benchmark_group("domain_lookup_1m");
    group.bench_function("exact_hit", |b| b.iter(|| assert!(set.matches(black_box(&hit)))));
    group.bench_function("subtree_hit_6_labels", |b| {
        b.iter(|| assert!(set.matches(black_box(deep_hit))))
    });
    group.bench_function("miss_6_labels", |b| {
        b.iter(|| assert!(!set.matches(black_box(deep_miss))))
    });
    group.finish();
}

/// Twenty rules of every kind that none of them match (so each one is
/// evaluated), as an operator's route might hold: scanners by
/// User-Agent, address ranges, methods, paths, queries, a negation.
fn twenty_rules() -> Policy {
    let net = |s: &str| s.parse().expect("network");
    let deny = || Action::Deny {
        status: 403,
        body: None,
    };
    let rule = |tests: Vec<Test>| Rule {
        name: None,
        when: Condition { tests },
        action: deny(),
    };
    let mut rules = Vec::new();
    for i in 0..4 {
        rules.push(rule(vec![Test::Header {
            name: "User-Agent".into(),
            value: ValueMatch::parse(&format!("~(?i)sqlmap{i}|nikto{i}|masscan{i}")).expect("regex"),
        }]));
        rules.push(rule(vec![Test::Src(vec![
            net(&format!("198.51.{i}.0/24")),
            net("2001:db8::/32"),
        ])]));
        rules.push(rule(vec![
            Test::Method(vec![b"DELETE".as_slice().into()]),
            Test::PathPrefix(vec![format!("/admin{i}").into_bytes().into()]),
        ]));
        rules.push(rule(vec![Test::Query {
            name: format!("debug{i}").into_bytes().into(),
            value: ValueMatch::parse("1").expect("value"),
        }]));
        rules.push(rule(vec![
            Test::PathRegex(regex::bytes::Regex::new(&format!("^/old{i}/(.*)$")).expect("regex")),
            Test::Not(Condition {
                tests: vec![Test::Header {
                    name: "X-Internal".into(),
                    value: ValueMatch::parse("~.").expect("regex"),
                }],
            }),
        ]));
    }
    Policy {
        rules,
        ..Policy::default()
    }
}

/// What a route's rules add per request: the listener's and route's rules
/// run, the route is found, and (with five header edits) the edits made.
fn request_rules(c: &mut Criterion) {
    let limits = HttpLimits::default();
    let mut head = RequestHead::new();
    assert!(head.parse(&mut BytesMut::from(BROWSER_REQUEST), &limits).unwrap());
    let client = ClientInfo::new(
        "192.0.2.10:50000".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    );
    let spec = || RouteSpec {
        host: None,
        path_prefix: "/".into(),
        upstream: 0,
    };
    let plain = RouteTable::new(&[spec()]).unwrap();
    let ruled = RouteTable::new(&[spec()]).unwrap().with_rules(
        Policy::default(),
        vec![RouteRules {
            policy: twenty_rules(),
            ..RouteRules::default()
        }],
    );
    let mut edits_policy = Policy::default();
    let edit = |op, name: &str, value: Option<&str>| {
        HeaderEdit::new(op, name, value.map(|v| Template::parse(v, 0).expect("template"))).expect("edit")
    };
    edits_policy.headers.request = vec![
        edit(EditOp::Set, "X-Request-Id", Some("$request_id")),
        edit(EditOp::Set, "X-Real-IP", Some("$remote_addr")),
        edit(EditOp::Remove, "X-Debug", None),
    ];
    edits_policy.headers.response = vec![
        edit(EditOp::Set, "Strict-Transport-Security", Some("max-age=31536000")),
        edit(EditOp::Remove, "Server", None),
    ];
    let edited = RouteTable::new(&[spec()]).unwrap().with_rules(
        Policy::default(),
        vec![RouteRules {
            policy: edits_policy,
            ..RouteRules::default()
        }],
    );
    let mut group = c.benchmark_group("request_rules");
    group.bench_function("no_rules", |b| {
        b.iter(|| {
            let mut fx = Effects::default();
            black_box(
                plain
                    .decide(black_box(&head), &client, &mut fx, &mut NoTrace)
                    .route,
            )
        })
    });
    group.bench_function("twenty_rules", |b| {
        b.iter(|| {
            let mut fx = Effects::default();
            black_box(
                ruled
                    .decide(black_box(&head), &client, &mut fx, &mut NoTrace)
                    .route,
            )
        })
    });
    let mut edits = HeadEdits::new();
    group.bench_function("five_header_edits", |b| {
        b.iter(|| {
            let mut fx = Effects::default();
            let route = edited
                .decide(black_box(&head), &client, &mut fx, &mut NoTrace)
                .route
                .unwrap();
            let vars = Vars {
                req: &head,
                remote: client.peer,
                request_id: RequestId::next(),
                https: false,
                path: None,
                captures: None,
                in_url: false,
            };
            edits.clear();
            edited.edit_upstream_request(route, &head, &fx, &vars, &mut edits);
            edits.clear();
            HeaderRules::apply(
                &edited.rules(route).unwrap().policy.headers.response,
                &vars,
                &mut edits,
            );
            black_box(edits.added().len())
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    parse_request,
    parse_response,
    serialize_request,
    route_lookup,
    request_rules,
    balancer_pick,
    domain_lookup
);
criterion_main!(benches);
