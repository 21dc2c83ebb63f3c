//! The real `ringway` binary as a forward proxy, driven by curl: plain
//! HTTP, HTTPS through CONNECT to an in-test TLS origin, proxy
//! authentication, denials, `acl explain`, a million-name blocklist, and
//! the no-argument default. Every destination is on 127.0.0.0/8, reached
//! through the configuration's static DNS hosts.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::Duration,
};

use base64::Engine as _;
use ringway_tests::{Origin, Reply};

mod common;
use common::{temp_file, Running, BIN};

/// A TLS origin for `allowed.test` on 127.0.0.1; returns its address and
/// the path of its certificate (the CA curl trusts).
fn tls_origin() -> (SocketAddr, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["allowed.test".to_owned()]).expect("certificate");
    let cert_pem = temp_file("origin-cert.pem", &cert.cert.pem());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).expect("tls");
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nover tls!");
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (addr, cert_pem)
}

fn sha_entry(user: &str, password: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(password.as_bytes());
    format!(
        "{user}:{{SHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// A configuration with a forward listener on a free port, its ACL, auth
/// and static DNS; `extra_rules` go before the allow rule.
fn forward_config(name: &str, auth: bool, extra: &str) -> PathBuf {
    let htpasswd = temp_file(
        &format!("{name}.htpasswd"),
        &format!("{}\n", sha_entry("alice", "wonder")),
    );
    let auth_keys = if auth {
        format!(
            "auth = \"staff\"\n\n[auth.staff]\ntype = \"basic\"\nhtpasswd = \"{}\"\nrealm = \"ringway\"\n",
            htpasswd.display()
        )
    } else {
        String::new()
    };
    let config = format!(
        r#"[runtime]
workers = 1
pin_cpus = false

[dns]
hosts = {{ "allowed.test" = "127.0.0.1", "blocked.test" = "127.0.0.1", "internal.test" = "127.0.0.2" }}
cache_ttl = "60s"
servers = ["127.0.0.1:9"]
timeout = "200ms"

[acl.corp]
default = "deny"
block_private = true
private_allow = ["127.0.0.1/32"]
connect_ports = [443, "1025-65535"]

[[acl.corp.rule]]
name = "no blocked"
action = "deny"
dst_domain = ["blocked.test"]
{extra}
[[acl.corp.rule]]
action = "allow"
src = ["127.0.0.0/8"]

[[listener]]
name = "outbound"
listen = "127.0.0.1:0"
mode = "forward"
acl = "corp"
{auth_keys}"#
    );
    temp_file(&format!("{name}.toml"), &config)
}

/// curl through `proxy`; returns (exit status, body, http_code, http_connect).
fn curl_via(proxy: &Running, extra: &[&str], url: &str) -> (i32, String, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-x", &format!("http://{}", proxy.addr)])
        .args(extra)
        .args(["-w", "\n%{http_code} %{http_connect}", url])
        .stderr(Stdio::null())
        .output()
        .expect("curl is installed (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, codes) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, connect) = codes.split_once(' ').unwrap_or((codes, ""));
    (
        out.status.code().unwrap_or(-1),
        body.to_owned(),
        code.to_owned(),
        connect.to_owned(),
    )
}

/// Sends `CONNECT target` straight to `proxy`; returns the response head.
fn raw_connect(proxy: &Running, target: &str, extra: &str) -> String {
    let mut c = TcpStream::connect(proxy.addr).expect("connect to the proxy");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n").as_bytes())
        .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).expect("read") == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// `ringway acl explain` of `targets` on the listener "outbound" of
/// `config`: one report per target.
fn explain(config: &std::path::Path, targets: &[&str]) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["acl", "explain", "--config"])
        .arg(config)
        .args(["--listener", "outbound"])
        .args(targets)
        .output()
        .expect("run");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let reports: Vec<String> = text.split("\n\n").map(str::to_owned).collect();
    assert_eq!(reports.len(), targets.len(), "{text}");
    // Scriptable: 0 when every request would go through, 1 when one is
    // refused.
    let refused = reports.iter().any(|r| !r.contains("decision: ALLOW"));
    assert_eq!(
        out.status.code(),
        Some(i32::from(refused)),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    reports
}

#[test]
fn curl_through_the_forward_proxy_http_https_auth_and_denials() {
    let (tls, cert) = tls_origin();
    let origin = Origin::start(|req| Reply::ok(format!("plain {}", req.target)));
    let config = forward_config("curl", true, "");
    let proxy = Running::start(&["run", "--config", config.to_str().unwrap()]);
    let creds = ["--proxy-user", "alice:wonder"];

    // HTTPS through CONNECT, TLS end to end to the origin.
    let cacert = cert.to_str().unwrap();
    let url = format!("https://allowed.test:{}/secure", tls.port());
    let (status, body, _, connect) = curl_via(&proxy, &[&creds[..], &["--cacert", cacert]].concat(), &url);
    assert_eq!((status, body.as_str(), connect.as_str()), (0, "over tls!", "200"));

    // Plain HTTP.
    let url = format!("http://allowed.test:{}/page", origin.addr().port());
    let (status, body, code, _) = curl_via(&proxy, &creds, &url);
    assert_eq!((status, body.as_str(), code.as_str()), (0, "plain /page", "200"));
    assert!(origin
        .seen()
        .iter()
        .all(|s| s.header("proxy-authorization").is_none()));

    // No credentials, or a wrong password: 407, for CONNECT and plain
    // HTTP alike.
    let (_, _, code, _) = curl_via(&proxy, &[], &url);
    assert_eq!(code, "407");
    let (_, _, code, _) = curl_via(&proxy, &["--proxy-user", "alice:wrong"], &url);
    assert_eq!(code, "407");
    let tls_url = format!("https://allowed.test:{}/", tls.port());
    let (_, _, _, connect) = curl_via(&proxy, &["--cacert", cacert], &tls_url);
    assert_eq!(connect, "407");

    // A denied site and a denied CONNECT port.
    let blocked = format!("http://blocked.test:{}/", origin.addr().port());
    let (_, body, code, _) = curl_via(&proxy, &creds, &blocked);
    assert_eq!(code, "403");
    assert!(
        body.contains("outbound") && body.contains("rule 1 (no blocked)"),
        "{body}"
    );
    let (_, _, _, connect) = curl_via(&proxy, &creds, "https://allowed.test:22/");
    assert_eq!(connect, "403");
    let auth = format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode("alice:wonder")
    );
    let head = raw_connect(&proxy, "allowed.test:22", &auth);
    assert!(
        head.starts_with("HTTP/1.1 403")
            && head.contains("X-Ringway-Denied: listener=outbound; connect_ports"),
        "{head}"
    );
    // A private destination after resolution.
    let (_, body, code, _) = curl_via(&proxy, &creds, "http://internal.test:8080/");
    assert_eq!(code, "403");
    assert!(body.contains("block_private"), "{body}");
}

#[test]
fn acl_explain_prints_the_decision_the_rule_and_the_addresses() {
    let config = forward_config("explain", false, "");
    let out = explain(
        &config,
        &[
            "http://blocked.test/x",
            "internal.test:443",
            "allowed.test:8443",
            "allowed.test:22",
            "HTTP://Blocked.TEST./y",
        ],
    );
    let expected: [(usize, &str); 8] = [
        (
            0,
            "decision: DENY (403): denied by rule 1 (no blocked) of acl \"corp\"",
        ),
        (1, "request:  CONNECT internal.test:443"),
        (1, "address:  127.0.0.2 blocked"),
        (
            1,
            "decision: DENY (403): destination address 127.0.0.2 is private",
        ),
        (2, "address:  127.0.0.1 permitted"),
        (2, "decision: ALLOW by rule 2; connects to 127.0.0.1:8443"),
        (3, "CONNECT to a port not in connect_ports"),
        // Case and a trailing dot do not get a name past its rule.
        (
            4,
            "decision: DENY (403): denied by rule 1 (no blocked) of acl \"corp\"",
        ),
    ];
    for (target, line) in expected {
        assert!(
            out[target].contains(line),
            "{line:?} missing from:\n{}",
            out[target]
        );
    }
}

#[test]
fn a_million_domain_blocklist_loads_and_matches() {
    let mut list = String::with_capacity(32 << 20);
    list.push_str("# generated by the test: one million names\n");
    for i in 0..1_000_000u32 {
        if i % 10 == 0 {
            list.push_str(&format!("0.0.0.0 host{i}.tracker{}.test\n", i % 997));
        } else {
            list.push_str(&format!("ad{i}.network{}.test\n", i % 1009));
        }
    }
    list.push_str(".wholesite.test\n");
    let file = temp_file("million.txt", &list);
    drop(list);
    let rule = format!(
        "\n[[acl.corp.rule]]\nname = \"blocklist\"\naction = \"deny\"\ndst_domain_file = \"{}\"\n",
        file.display()
    );
    let config = forward_config("million", false, &rule);
    let listed = format!("ad500001.network{}.test:443", 500_001 % 1009);
    let hosts_line = format!("host999990.tracker{}.test:443", 999_990 % 997);
    let below_exact = format!("x.{listed}");
    // One run loads the list once and explains every target.
    let targets = [
        listed.as_str(),
        hosts_line.as_str(),
        "deep.sub.wholesite.test:443",
        below_exact.as_str(),
        "ad1000001.network0.test:443",
    ];
    let reports = explain(&config, &targets);
    for (report, target) in reports[..3].iter().zip(targets) {
        assert!(report.contains("rule 2 (blocklist)"), "{target}: {report}");
    }
    // Exact entries do not cover subdomains; unlisted names pass the list.
    for report in &reports[3..] {
        assert!(!report.contains("blocklist"), "{report}");
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn no_arguments_runs_the_safe_forward_proxy_on_3128() {
    if TcpStream::connect("127.0.0.1:3128").is_ok() || TcpListener::bind("127.0.0.1:3128").is_err() {
        eprintln!("127.0.0.1:3128 is taken here; skipping");
        return;
    }
    let proxy = Running::start(&[]);
    assert_eq!(proxy.addr, "127.0.0.1:3128".parse().unwrap());
    let origin = Origin::start(|_| Reply::ok("should not be reached"));
    // Loopback destinations are private: the built-in policy refuses them.
    let (_, body, code, _) = curl_via(
        &proxy,
        &[],
        &format!("http://127.0.0.1:{}/", origin.addr().port()),
    );
    assert_eq!(code, "403");
    assert!(body.contains("block_private"), "{body}");
    let (_, _, _, connect) = curl_via(&proxy, &[], "https://127.0.0.1:8443/");
    assert_eq!(connect, "403");
    // Refused for its port before its (private) address is looked at.
    let head = raw_connect(&proxy, "127.0.0.1:8443", "");
    assert!(
        head.contains("X-Ringway-Denied: listener=outbound; connect_ports"),
        "{head}"
    );
    assert_eq!(origin.connections(), 0);
}

#[test]
fn forward_with_an_acl_file_enforces_it_and_locates_its_errors() {
    let origin = Origin::start(|_| Reply::ok("reached"));
    let acl = temp_file(
        "quick-acl.toml",
        "default = \"allow\"\nprivate_allow = [\"127.0.0.1/32\"]\n\n[[rule]]\nname = \"no ads\"\naction = \"deny\"\ndst_domain = [\".ads.test\"]\n",
    );
    let proxy = Running::start(&[
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--acl-file",
        acl.to_str().unwrap(),
        "--workers",
        "1",
        "--no-pin",
    ]);
    // The file's private_allow admits 127.0.0.1, which the built-in policy
    // would refuse...
    let (_, body, code, _) = curl_via(
        &proxy,
        &[],
        &format!("http://127.0.0.1:{}/", origin.addr().port()),
    );
    assert_eq!((code.as_str(), body.as_str()), ("200", "reached"));
    // ...and its rule denies before any name is resolved.
    let (_, body, code, _) = curl_via(&proxy, &[], "http://banner.ads.test/");
    assert_eq!(code, "403");
    assert!(body.contains("rule 1 (no ads)"), "{body}");
    drop(proxy);

    let bad = temp_file(
        "quick-acl-bad.toml",
        "default = \"allow\"\n\n[[rule]]\naction = \"maybe\"\n",
    );
    let out = Command::new(BIN)
        .args(["forward", "--listen", "127.0.0.1:0", "--acl-file"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4: rule[0].action: unknown action", bad.display())),
        "{stderr}"
    );
    let _ = std::fs::remove_file(acl);
    let _ = std::fs::remove_file(bad);
}

#[test]
fn acl_explain_is_scriptable_reads_https_urls_and_asks_for_credentials() {
    let config = forward_config("explain-exit", false, "");
    // An https:// URL is what a browser sends through the proxy as a
    // CONNECT to its host.
    let reports = explain(&config, &["https://allowed.test:8443/path"]);
    assert!(
        reports[0].contains("CONNECT https://allowed.test:8443/path"),
        "{}",
        reports[0]
    );
    assert!(
        reports[0].contains("to:       allowed.test port 8443"),
        "{}",
        reports[0]
    );
    let run = |config: &std::path::Path, args: &[&str]| {
        let out = Command::new(BIN)
            .args(["acl", "explain", "--config"])
            .arg(config)
            .args(["--listener", "outbound"])
            .args(args)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // One target the proxy cannot read does not stop the others: 2.
    let (code, text) = run(&config, &["bad target", "http://allowed.test/"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("decision: ALLOW"), "{text}");
    // A listener with auth answers 407 first, unless explained as a user.
    let with_auth = forward_config("explain-auth", true, "");
    let (code, text) = run(&with_auth, &["http://allowed.test/"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("407 proxy authentication required"), "{text}");
    let (code, text) = run(&with_auth, &["--user", "alice", "http://allowed.test/"]);
    assert_eq!(code, Some(0), "{text}");
}
