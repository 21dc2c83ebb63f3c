//! The differential test: a corpus of well-formed, malformed and mutated
//! requests (tests/differential/cases.py) goes through ringway to an
//! origin that reads what it receives with h11, an independent strict
//! parser (tests/differential/origin.py). For every case:
//!
//! - the origin never sees bytes h11 refuses, nor a message cut short;
//! - every message ringway forwarded is one that h11, reading the
//!   client's own bytes, also reads there, with the same method, target
//!   and body: never a second message where h11 sees one, never a body
//!   framed differently (request smuggling);
//! - the client gets one origin response per forwarded message, and at
//!   most one answer of ringway's own after them.
//!
//! Needs python3 with h11 (`pip install h11`, which `.ci/run` does); when
//! it is missing the test says so and passes, unless
//! `RINGWAY_REQUIRE_DIFFERENTIAL` is set, as CI sets it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ringway_core::DriverChoice;
use ringway_tests::{uring_available, ProxySetup};

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("differential")
}

fn h11_available() -> bool {
    Command::new("python3")
        .args(["-c", "import h11"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How h11 read one request of the client's bytes.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: String,
    body: String,
    ended: bool,
}

struct Case {
    name: String,
    data: Vec<u8>,
    h11_error: Option<String>,
    h11_requests: Vec<Request>,
}

fn unhex(text: &str) -> Vec<u8> {
    if text == "-" || text.is_empty() {
        return Vec::new();
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn cases() -> Vec<Case> {
    let out = Command::new("python3")
        .arg(here().join("cases.py"))
        .current_dir(here())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "cases.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            Case {
                name: fields[0].to_owned(),
                data: unhex(fields[1]),
                h11_error: (fields[2] != "-").then(|| fields[2].to_owned()),
                h11_requests: fields[3..]
                    .iter()
                    .map(|r| {
                        let parts: Vec<&str> = r.split(' ').collect();
                        Request {
                            method: String::from_utf8_lossy(&unhex(parts[0])).into_owned(),
                            target: String::from_utf8_lossy(&unhex(parts[1])).into_owned(),
                            body: if parts[2] == "-" {
                                String::new()
                            } else {
                                parts[2].to_owned()
                            },
                            ended: parts[3] == "1",
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

struct H11Origin {
    child: Child,
    addr: SocketAddr,
}

impl H11Origin {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(here().join("origin.py"))
            .current_dir(here())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start origin.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the origin's port");
        let port: u16 = line.trim().parse().expect("a port");
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The log entries from `since` on, one per line.
    fn log_since(&self, since: usize) -> Vec<String> {
        let mut s = TcpStream::connect(self.addr).expect("origin");
        s.write_all(
            format!("GET /__log?since={since} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("ask the origin");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("the log");
        let text = String::from_utf8_lossy(&out).into_owned();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        json_entries(body)
    }
}

impl Drop for H11Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits the origin's JSON list of flat objects into one compact string
/// per entry (no JSON parser needed: entries hold no nested lists but
/// `headers`, which is not compared).
fn json_entries(body: &str) -> Vec<String> {
    let mut entries = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    entries.push(body[start..=i].to_owned());
                }
            }
            _ => {}
        }
    }
    entries
}

/// A string field of a flat JSON object.
fn field<'a>(entry: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\": \"");
    let start = entry.find(&key)? + key.len();
    let end = entry[start..].find('"')? + start;
    Some(&entry[start..end])
}

/// The origin-form of a target, as ringway forwards absolute-form ones.
fn origin_form(target: &str) -> String {
    let lower = target.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("http://").map(|_| &target[7..]) else {
        return target.to_owned();
    };
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => format!("/{}", &rest[i..]),
        Some(i) => rest[i..].to_owned(),
        None => "/".to_owned(),
    }
}

/// Walks the client's responses in order against the requests h11 reads
/// in the client's bytes: response `i` answers request `i`; one from the
/// origin must match the next forwarded message, and that message must be
/// request `i` as h11 reads it. Interim responses answer nothing.
fn check_alignment(case: &Case, forwarded: &[(String, String, String)], answer: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bytes = answer;
    let mut next_forwarded = forwarded.iter();
    let mut index = 0;
    let mut answers = Vec::new();
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let n = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            _ if bytes.is_empty() => break,
            other => {
                problems.push(format!(
                    "the client got bytes that are no response ({other:?}): {:?}",
                    String::from_utf8_lossy(bytes)
                ));
                break;
            }
        };
        let code = resp.code.unwrap_or(0);
        let from_origin = resp
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("x-origin"));
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        answers.push((code, from_origin));
        let request = case.h11_requests.get(index);
        let head_request = request.is_some_and(|r| r.method == "HEAD");
        let body = if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
            0
        } else {
            length
        };
        bytes = &bytes[(n + body).min(bytes.len())..];
        if (100..200).contains(&code) {
            continue;
        }
        if from_origin {
            let Some((method, target, body)) = next_forwarded.next() else {
                problems.push("an origin response with no forwarded message".to_owned());
                break;
            };
            match request {
                Some(r) if r.ended && &r.method == method && &origin_form(&r.target) == target && &r.body == body => {}
                Some(r) => problems.push(format!(
                    "answer #{index}: forwarded {method} {target} body {body:?}; h11 reads {} {} body {:?} ended {}",
                    r.method, r.target, r.body, r.ended
                )),
                None => problems.push(format!(
                    "answer #{index}: forwarded {method} {target}, which h11 does not read there (h11: {:?})",
                    case.h11_error
                )),
            }
        }
        index += 1;
    }
    if next_forwarded.next().is_some() {
        problems.push(format!(
            "{} forwarded, the client got {answers:?}",
            forwarded.len()
        ));
    }
    problems
}

#[test]
fn every_forwarded_request_is_one_well_framed_message_as_h11_reads_it() {
    if !h11_available() {
        assert!(
            std::env::var_os("RINGWAY_REQUIRE_DIFFERENTIAL").is_none(),
            "python3 with h11 is required here (pip install h11)"
        );
        eprintln!("skipping the differential test: python3 with h11 is not installed (pip install h11)");
        return;
    }
    let cases = std::sync::Arc::new(cases());
    assert!(cases.len() > 1000, "the corpus has {} cases", cases.len());
    // Each driver with its own proxy and origin, side by side.
    let mut drivers = vec![DriverChoice::Legacy];
    if uring_available() {
        drivers.push(DriverChoice::Uring);
    }
    let runs: Vec<_> = drivers
        .into_iter()
        .map(|driver| {
            let cases = std::sync::Arc::clone(&cases);
            std::thread::spawn(move || run(driver, &cases))
        })
        .collect();
    for run in runs {
        if let Err(panic) = run.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

fn run(driver: DriverChoice, cases: &[Case]) {
    let origin = H11Origin::start();
    let mut setup = ProxySetup::new(driver, &[origin.addr]);
    setup.settings.timeouts.upstream_response = Duration::from_secs(5);
    setup.settings.proxy_headers.via = None;
    let proxy = setup.start();
    let mut seen = 0;
    let (mut forwarded, mut refused_by_both, mut stricter) = (0, 0, 0);
    let mut failures = Vec::new();
    for case in cases {
        let mut client = TcpStream::connect(proxy.addr()).expect("proxy");
        client
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let _ = client.write_all(&case.data);
        let _ = client.shutdown(Shutdown::Write);
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer);
        let log = origin.log_since(seen);
        seen += log.len();

        let mut problems = Vec::new();
        let mut got = Vec::new();
        for entry in &log {
            match field(entry, "kind") {
                Some("request") => {
                    let text = |name| {
                        String::from_utf8_lossy(&unhex(field(entry, name).unwrap_or("-"))).into_owned()
                    };
                    got.push((
                        text("method"),
                        text("target"),
                        field(entry, "body").unwrap_or_default().to_owned(),
                    ))
                }
                _ => problems.push(format!("the origin saw: {entry}")),
            }
        }
        problems.extend(check_alignment(case, &got, &answer));
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
        match (
            got.is_empty(),
            case.h11_requests.iter().filter(|r| r.ended).count(),
        ) {
            (false, _) => forwarded += 1,
            (true, 0) => refused_by_both += 1,
            (true, _) => stricter += 1,
        }
    }
    eprintln!(
        "{driver:?}: {} cases: {forwarded} forwarded, {refused_by_both} refused by both, \
         {stricter} refused by ringway that h11 reads",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{driver:?}: {} of {} cases broke the framing promise:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
