use std::{net::SocketAddr, rc::Rc, time::Duration};

use super::*;
use crate::head::parsed;

const AT: Moment = Moment {
    secs: 1_796_543_439,
    millis: 7,
};

fn client() -> ClientInfo {
    let peer: SocketAddr = "127.0.0.9:41000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    ClientInfo::new(peer, local)
}

fn entry<'a>(client: &'a ClientInfo, req: &'a RequestHead) -> Entry<'a> {
    Entry {
        event: Event::Request,
        listener: "web",
        client,
        req: Some(req),
        status: 200,
        bytes_in: 120,
        bytes_out: 345,
        body_out: 5,
        upstream: Some("127.0.0.2:9000".parse().unwrap()),
        upstream_time: Some(Duration::from_millis(12)),
        total: Duration::from_millis(15),
        content_type: b"text/plain",
        facts: LogFacts::default(),
    }
}

fn line(format: &str, entry: &Entry<'_>) -> String {
    let format = LogFormat::parse(format).unwrap();
    let mut out = Vec::new();
    format.write(entry, AT, &mut TimeCache::default(), &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn combined_is_nginx_s_line() {
    let req = parsed(
        "GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nUser-Agent: curl/8\r\nReferer: http://r.test/\r\n\r\n",
    );
    let client = client();
    assert_eq!(
        line("combined", &entry(&client, &req)),
        "127.0.0.9 - - [06/Dec/2026:07:50:39 +0000] \"GET /a?b=1 HTTP/1.1\" 200 5 \"http://r.test/\" \"curl/8\"\n"
    );
}

#[test]
fn squid_is_squid_s_native_line() {
    let req = parsed("GET http://x.test/a HTTP/1.1\r\nHost: x.test\r\n\r\n");
    let client = client();
    let mut e = entry(&client, &req);
    e.facts.user = Some("alice");
    assert_eq!(
        line("squid", &e),
        "1796543439.007     15 127.0.0.9 TCP_MISS/200 345 GET http://x.test/a alice HIER_DIRECT/127.0.0.2 text/plain\n"
    );
    e.facts.acl = Some(AclFact {
        allowed: false,
        rule: RuleName::Rule(2, Some("ads")),
    });
    e.upstream = None;
    e.status = 403;
    e.content_type = b"";
    assert!(line("squid", &e).contains(" TCP_DENIED/403 345 GET http://x.test/a alice HIER_NONE/- -\n"));
}

#[test]
fn json_lines_parse_and_name_every_field() {
    let req = parsed("CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\nUser-Agent: a\"b\\c\r\n\r\n");
    let mut client = client();
    client.tls = Some(Rc::new(ringway_tls::TlsInfo {
        sni: Some("proxy.test".into()),
        client_subject: None,
        alpn: None,
        version: "TLSv1.3",
    }));
    let mut e = entry(&client, &req);
    e.event = Event::Tunnel;
    e.facts.acl = Some(AclFact {
        allowed: true,
        rule: RuleName::Default,
    });
    let text = line("json", &e);
    assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "{text}");
    for field in [
        "\"time\":\"2026-12-06T07:50:39+00:00\"",
        "\"event\":\"tunnel\"",
        "\"client\":\"127.0.0.9:41000\"",
        "\"method\":\"CONNECT\"",
        "\"target\":\"x.test:443\"",
        "\"host\":\"x.test:443\"",
        "\"bytes_in\":120",
        "\"upstream\":\"127.0.0.2:9000\"",
        "\"upstream_time\":0.012",
        "\"request_time\":0.015",
        "\"user_agent\":\"a\\\"b\\\\c\"",
        "\"referer\":null",
        "\"acl\":\"allow\",\"rule\":\"default\"",
        "\"tls\":\"TLSv1.3\"",
        "\"sni\":\"proxy.test\"",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
}

#[test]
fn rule_labels_read_as_everywhere_else_and_names_are_escaped_for_their_format() {
    let req = parsed("GET / HTTP/1.1\r\nHost: x.test\r\n\r\n");
    let client = client();
    let mut e = entry(&client, &req);
    for (rule, shown) in [
        (RuleName::Rule(0, None), "rule 1".to_owned()),
        (RuleName::Default, "default".to_owned()),
        (
            RuleName::Rule(2, Some("ads \"x\"")),
            RuleName::Rule(2, Some("ads \"x\"")).to_string(),
        ),
    ] {
        e.facts.acl = Some(AclFact { allowed: false, rule });
        assert_eq!(
            line("$acl_rule", &e),
            format!("{}\n", shown.replace('"', "\\x22"))
        );
        let json = line("json", &e);
        assert!(
            json.contains(&format!("\"rule\":\"{}\"", shown.replace('"', "\\\""))),
            "{json}"
        );
    }
}

#[test]
fn templates_take_nginx_s_variables_and_escape_values() {
    let req = parsed("GET / HTTP/1.1\r\nHost: x.test\r\nX-Api-Key: k\t\"\r\n\r\n");
    let client = client();
    let e = entry(&client, &req);
    assert_eq!(
        line("$remote_addr $status $upstream_addr $request_time", &e),
        "127.0.0.9 200 127.0.0.2:9000 0.015\n"
    );
    assert_eq!(line("${host}|$http_x_api_key|$$", &e), "x.test|k\\x09\\x22|$\n");
}

#[test]
fn a_header_cannot_forge_a_line() {
    // httparse refuses a bare newline in a value; a non-ASCII byte or a
    // quote must still be escaped so the fields stay where they are.
    let req = parsed("GET / HTTP/1.1\r\nHost: x.test\r\nUser-Agent: a\" 200 9 \"\u{e9}\r\n\r\n");
    let client = client();
    let text = line("combined", &entry(&client, &req));
    assert!(text.ends_with("\"a\\x22 200 9 \\x22\\xC3\\xA9\"\n"), "{text}");
}

#[test]
fn refused_heads_and_rejected_connections_have_lines_too() {
    let empty = RequestHead::new();
    let client = client();
    let mut e = entry(&client, &empty);
    e.event = Event::Refused;
    e.status = 400;
    e.upstream = None;
    assert!(line("combined", &e).contains("\"-\" 400 5"));
    e.event = Event::Rejected("max_connections");
    e.req = None;
    e.status = 0;
    let json = line("json", &e);
    assert!(json.contains("\"event\":\"rejected\"") && json.contains("\"reason\":\"max_connections\""));
    assert!(
        json.contains("\"method\":null") && json.contains("\"request_id\":null"),
        "{json}"
    );
}

#[test]
fn credentials_in_a_target_are_masked() {
    // The parser refuses them in requests; a log never shows them anyway.
    use super::format::loggable;
    assert_eq!(&*loggable(b"http://u:pw@x.test/a@b"), b"http://***@x.test/a@b");
    assert_eq!(&*loggable(b"user:pw@host.test:443"), b"***@host.test:443");
    assert_eq!(&*loggable(b"/path?x=a@b"), b"/path?x=a@b");
    assert_eq!(&*loggable(b"host.test:443"), b"host.test:443");
}

#[test]
fn unknown_formats_and_variables_are_refused_with_the_choices() {
    let err = LogFormat::parse("common").unwrap_err().0;
    assert!(err.contains("combined, squid, json"), "{err}");
    let err = LogFormat::parse("$remote_adr").unwrap_err().0;
    assert!(
        err.contains("$remote_adr") && err.contains("$remote_addr"),
        "{err}"
    );
    assert!(LogFormat::parse("cost: $").is_err());
    assert!(LogFormat::parse("${status").is_err());
}

#[test]
fn ipv6_clients_and_upstreams_are_written_as_their_addresses_are() {
    let req = parsed("GET / HTTP/1.1\r\nHost: x.test\r\n\r\n");
    let client = ClientInfo::new("[::1]:5000".parse().unwrap(), "[::1]:8080".parse().unwrap());
    let mut e = entry(&client, &req);
    e.upstream = Some("[::2]:9000".parse().unwrap());
    assert!(line("combined", &e).starts_with("::1 - - ["));
    let json = line("json", &e);
    assert!(
        json.contains("\"client\":\"[::1]:5000\"") && json.contains("\"upstream\":\"[::2]:9000\""),
        "{json}"
    );
    assert_eq!(
        line("$server_addr $remote_port $msec", &e),
        "[::1]:8080 5000 1796543439.007\n"
    );
}
