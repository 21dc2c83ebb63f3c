//! TLS through the real wiring: listeners that terminate TLS (certificates
//! by SNI, ALPN, reload under traffic, client certificates, plain HTTP on
//! a TLS port, stalled handshakes), upstreams reached over TLS (verified,
//! pooled, refused with 502), an HTTPS forward proxy with CONNECT inside,
//! a plain listener that redirects to HTTPS, and the configuration errors.
//! Certificates are made in the test with rcgen; clients are rustls and
//! curl; every address is on 127.0.0.1.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use ringway::{config, factory};
use ringway_tests::{Origin, Reply};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

mod common;
use common::{temp_file, Running};

const DRIVERS: [&str; 2] = ["legacy", "io_uring"];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA: its issuer and the PEM file clients trust.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: PathBuf,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca cert");
        let pem = temp_file(&format!("{name}-ca.pem"), &cert.pem());
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` (the first is also its common name), with
    /// a key made by `alg`; returns the PEM files (cert, key) and the DER.
    fn leaf(&self, file: &str, names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate_for(alg).expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert: temp_file(&format!("{file}.pem"), &cert.pem()),
            key: temp_file(&format!("{file}.key"), &key.serialize_pem()),
            der: cert.der().to_vec(),
        }
    }
}

struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

/// Accepts any server certificate and remembers the last one shown, with
/// the OCSP response stapled to it.
#[derive(Debug, Default)]
struct Recorder {
    cert: Mutex<Vec<u8>>,
    ocsp: Mutex<Vec<u8>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        ocsp: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.cert.lock().expect("lock") = end_entity.to_vec();
        *self.ocsp.lock().expect("lock") = ocsp.to_vec();
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that records the server's certificate, offers `alpn`,
/// and presents `client` (cert, key) when given; every handshake is a full
/// one.
fn recording_client(alpn: &[&str], client: Option<&Leaf>) -> (Arc<rustls::ClientConfig>, Arc<Recorder>) {
    let (config, recorder) = client_config(alpn, client, rustls::client::Resumption::disabled(), &[]);
    (Arc::new(config), recorder)
}

fn client_config(
    alpn: &[&str],
    client: Option<&Leaf>,
    resumption: rustls::client::Resumption,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (rustls::ClientConfig, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let versions = if versions.is_empty() {
        rustls::DEFAULT_VERSIONS
    } else {
        versions
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&recorder) as _);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain: Vec<CertificateDer<'static>> = vec![CertificateDer::from(leaf.der.clone())];
            let key = PrivateKeyDer::from_pem_file_compat(&leaf.key);
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.resumption = resumption;
    (config, recorder)
}

trait KeyFromPem {
    fn from_pem_file_compat(path: &Path) -> PrivateKeyDer<'static>;
}

impl KeyFromPem for PrivateKeyDer<'static> {
    fn from_pem_file_compat(path: &Path) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_file(path).expect("key file")
    }
}

/// One request over a new TLS connection to `addr` asking for `sni`;
/// returns the whole response, or the handshake's or connection's error.
fn https_get(addr: SocketAddr, sni: &str, config: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    https_get_kind(addr, sni, config).map(|(response, _)| response)
}

/// As [`https_get`], with whether the handshake resumed a session.
fn https_get_kind(
    addr: SocketAddr,
    sni: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<(String, bool), String> {
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!("GET /hello HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // Servers that close without close_notify: what arrived counts.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok((String::from_utf8_lossy(&out).into_owned(), resumed))
}

/// A proxy started from `source` by the binary's own factory.
fn start(source: &str) -> factory::Running {
    let config = config::parse(Path::new("test.toml"), source).unwrap_or_else(|e| panic!("{e}\n{source}"));
    factory::start(&config).expect("the proxy starts")
}

/// A reverse proxy whose listener terminates TLS with `tls` (the keys of
/// `[listener.tls]`) in front of `origin`.
fn tls_reverse(driver: &str, tls: &str, origin: SocketAddr) -> factory::Running {
    start(&format!(
        "[runtime]\nworkers = 1\npin_cpus = false\ndriver = \"{driver}\"\n\n\
         [[listener]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
         [listener.tls]\n{tls}\n\n\
         [[listener.route]]\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n"
    ))
}

fn cert_entry(leaf: &Leaf, sni: &[&str]) -> String {
    let sni = if sni.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = sni.iter().map(|n| format!("\"{n}\"")).collect();
        format!(", sni = [{}]", names.join(", "))
    };
    format!(
        "{{ cert = \"{}\", key = \"{}\"{sni} }}",
        leaf.cert.display(),
        leaf.key.display()
    )
}

fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("curl is installed (apt-get install curl)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn sni_picks_the_exact_name_then_the_wildcard_then_the_default() {
    let ca = Ca::new("sni");
    let default = ca.leaf("sni-default", &["default.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let api = ca.leaf("sni-api", &["api.test"], &rcgen::PKCS_ED25519);
    let wild = ca.leaf("sni-wild", &["*.wild.test"], &rcgen::PKCS_ECDSA_P384_SHA384);
    let origin = Origin::start(|_| Reply::ok("hello"));
    for driver in DRIVERS {
        let certs = format!(
            "certs = [{}, {}, {}]",
            cert_entry(&default, &[]),
            cert_entry(&api, &["api.test"]),
            cert_entry(&wild, &["*.wild.test"])
        );
        let running = tls_reverse(driver, &certs, origin.addr());
        let addr = running.local_addrs()[0];
        let (client, recorder) = recording_client(&["http/1.1"], None);
        for (sni, expected, which) in [
            ("api.test", &api.der, "exact"),
            ("API.Test", &api.der, "exact, any case"),
            ("a.wild.test", &wild.der, "wildcard"),
            ("b.a.wild.test", &default.der, "a wildcard covers one label only"),
            ("wild.test", &default.der, "a wildcard does not cover its parent"),
            ("other.test", &default.der, "default"),
        ] {
            let response = https_get(addr, sni, &client).unwrap_or_else(|e| panic!("{driver} {sni}: {e}"));
            assert!(response.starts_with("HTTP/1.1 200"), "{driver} {sni}: {response}");
            assert!(response.ends_with("hello"), "{response}");
            assert_eq!(
                &*recorder.cert.lock().expect("lock"),
                expected,
                "{driver}: {sni} ({which})"
            );
        }
        // ALPN: http/1.1 is chosen among the client's offers; a client that
        // offers only h2 is refused rather than answered in a protocol it
        // did not ask for.
        let (both, _) = recording_client(&["h2", "http/1.1"], None);
        assert!(https_get(addr, "api.test", &both)
            .expect("alpn")
            .starts_with("HTTP/1.1 200"));
        let (h2_only, _) = recording_client(&["h2"], None);
        let refused = https_get(addr, "api.test", &h2_only).expect_err("no common protocol");
        assert!(
            refused.contains("NoApplicationProtocol") || refused.contains("no_application_protocol"),
            "{refused}"
        );
        running.shutdown();
        running.wait();
    }
}

#[test]
fn requests_over_tls_reach_the_origin_as_https_with_keep_alive_and_large_bodies() {
    let ca = Ca::new("basic");
    let leaf = ca.leaf("basic-site", &["site.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let big: Arc<Vec<u8>> = Arc::new((0..3_000_000u32).map(|i| (i % 251) as u8).collect());
    let served = Arc::clone(&big);
    let origin = Origin::start(move |seen| {
        if seen.target == "/big" {
            Reply::ok(served.as_slice())
        } else {
            let proto = seen.header("x-forwarded-proto").unwrap_or("none").to_owned();
            Reply::ok(format!("proto={proto} body={}", seen.body.len()))
        }
    });
    let upload = temp_file("basic-upload.bin", &"u".repeat(2_000_000));
    for driver in DRIVERS {
        let running = tls_reverse(
            driver,
            &format!("certs = [{}]", cert_entry(&leaf, &[])),
            origin.addr(),
        );
        let port = running.local_addrs()[0].port();
        let resolve = format!("site.test:{port}:127.0.0.1");
        let url = format!("https://site.test:{port}");
        let cacert = ca.pem.display().to_string();
        // Two requests on one connection (curl reuses it: one connect).
        let (code, out) = curl(&[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "-w",
            " connects=%{num_connects}",
            &format!("{url}/a"),
            &format!("{url}/b"),
        ]);
        assert_eq!(code, 0, "{driver}: {out}");
        assert_eq!(
            out, "proto=https body=0 connects=1proto=https body=0 connects=0",
            "{driver}"
        );
        let (code, out) = curl(&[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("{url}/upload"),
        ]);
        assert_eq!((code, out.as_str()), (0, "proto=https body=2000000"), "{driver}");
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "--cacert",
                &cacert,
                "--resolve",
                &resolve,
            ])
            .arg(format!("{url}/big"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{driver}");
        assert!(
            out.stdout == *big,
            "{driver}: the 3 MB body came back different ({} bytes)",
            out.stdout.len()
        );
        // TLS 1.2 too.
        let (code, out) = curl(&[
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            &format!("{url}/x"),
        ]);
        assert_eq!((code, out.as_str()), (0, "proto=https body=0"), "{driver}");
        running.shutdown();
        running.wait();
    }
}

#[test]
fn plain_http_on_a_tls_port_gets_400_and_a_stalled_handshake_is_closed() {
    let ca = Ca::new("stall");
    let leaf = ca.leaf("stall-site", &["site.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let origin = Origin::start(|_| Reply::ok("hello"));
    for driver in DRIVERS {
        let tls = format!(
            "certs = [{}]\nhandshake_timeout = \"300ms\"",
            cert_entry(&leaf, &[])
        );
        let running = tls_reverse(driver, &tls, origin.addr());
        let addr = running.local_addrs()[0];
        let mut plain = TcpStream::connect(addr).expect("connect");
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .expect("send");
        let mut answer = String::new();
        let _ = plain.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request"),
            "{driver}: {answer:?}"
        );
        assert!(
            answer.contains("plain HTTP request was sent to an HTTPS port"),
            "{answer}"
        );
        // A client that connects and says nothing is closed after the
        // handshake timeout, not kept.
        let mut silent = TcpStream::connect(addr).expect("connect");
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let closed = matches!(silent.read(&mut buf), Ok(0) | Err(_));
        assert!(
            closed && started.elapsed() < Duration::from_secs(5),
            "{driver}: a silent client was kept"
        );
        // Still serving.
        let (client, _) = recording_client(&["http/1.1"], None);
        assert!(https_get(addr, "site.test", &client)
            .expect("after")
            .starts_with("HTTP/1.1 200"));
        running.shutdown();
        running.wait();
    }
}

/// Rewrites a certificate's files in place the way a deploy tool should:
/// each file written aside, then renamed over the old one.
fn replace_files(target: &Leaf, with: &Leaf) {
    for (to, from) in [(&target.cert, &with.cert), (&target.key, &with.key)] {
        let aside = to.with_extension("new");
        std::fs::copy(from, &aside).expect("copy");
        std::fs::rename(&aside, to).expect("rename");
    }
}

#[test]
fn certificates_reload_under_traffic_without_a_failed_handshake_and_a_bad_file_keeps_the_old_one() {
    let ca = Ca::new("reload");
    let live = ca.leaf("reload-live", &["site.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let first_der = live.der.clone();
    let second = ca.leaf("reload-second", &["site.test"], &rcgen::PKCS_ED25519);
    let origin = Origin::start(|_| Reply::ok("hello"));
    let running = tls_reverse(
        "io_uring",
        &format!("certs = [{}]", cert_entry(&live, &[])),
        origin.addr(),
    );
    let addr = running.local_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let seen_second = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, failures, handshakes, seen_second) = (
                Arc::clone(&stop),
                Arc::clone(&failures),
                Arc::clone(&handshakes),
                Arc::clone(&seen_second),
            );
            let second_der = second.der.clone();
            thread::spawn(move || {
                let (client, recorder) = recording_client(&["http/1.1"], None);
                while !stop.load(Ordering::Relaxed) {
                    match https_get(addr, "site.test", &client) {
                        Ok(r) if r.starts_with("HTTP/1.1 200") => {}
                        Ok(r) => failures.lock().expect("lock").push(r),
                        Err(e) => failures.lock().expect("lock").push(e),
                    }
                    handshakes.fetch_add(1, Ordering::Relaxed);
                    if *recorder.cert.lock().expect("lock") == second_der {
                        seen_second.store(true, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Under traffic: the files change (the watcher picks it up), and a
    // SIGHUP-style reload runs at the same time.
    thread::sleep(Duration::from_millis(300));
    replace_files(&live, &second);
    running.reload_certificates();
    let until = Instant::now() + Duration::from_secs(10);
    while !seen_second.load(Ordering::Relaxed) && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen_second.load(Ordering::Relaxed),
        "the new certificate was never served"
    );
    // A broken file: the reload fails and the current certificate stays.
    std::fs::write(&live.key, "not a key").expect("write");
    running.reload_certificates();
    thread::sleep(Duration::from_millis(2500));
    let (client, recorder) = recording_client(&["http/1.1"], None);
    assert!(https_get(addr, "site.test", &client)
        .expect("after a bad reload")
        .starts_with("HTTP/1.1 200"));
    assert_eq!(
        *recorder.cert.lock().expect("lock"),
        second.der,
        "a bad file replaced a good certificate"
    );
    assert_ne!(first_der, second.der);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let failures = failures.lock().expect("lock");
    assert!(
        handshakes.load(Ordering::Relaxed) > 20,
        "too little traffic to judge"
    );
    assert!(
        failures.is_empty(),
        "{} of {} handshakes failed during reloads: {:?}",
        failures.len(),
        handshakes.load(Ordering::Relaxed),
        &failures[..failures.len().min(3)]
    );
    running.shutdown();
    running.wait();
}

#[test]
fn mutual_tls_accepts_clients_of_its_ca_and_refuses_the_others() {
    let ca = Ca::new("mtls");
    let site = ca.leaf("mtls-site", &["site.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let clients = Ca::new("mtls-clients");
    let alice = clients.leaf("mtls-alice", &["alice.client"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let strangers = Ca::new("mtls-strangers");
    let mallory = strangers.leaf(
        "mtls-mallory",
        &["mallory.client"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let origin = Origin::start(|_| Reply::ok("hello"));
    for driver in DRIVERS {
        let tls = format!(
            "certs = [{}]\nclient_ca = \"{}\"",
            cert_entry(&site, &[]),
            clients.pem.display()
        );
        let running = tls_reverse(driver, &tls, origin.addr());
        let addr = running.local_addrs()[0];
        let (with_cert, _) = recording_client(&["http/1.1"], Some(&alice));
        let ok = https_get(addr, "site.test", &with_cert).unwrap_or_else(|e| panic!("{driver}: {e}"));
        assert!(ok.starts_with("HTTP/1.1 200"), "{driver}: {ok}");
        let (without, _) = recording_client(&["http/1.1"], None);
        assert!(
            https_get(addr, "site.test", &without).is_err(),
            "{driver}: a client without a certificate got in"
        );
        let (stranger, _) = recording_client(&["http/1.1"], Some(&mallory));
        assert!(
            https_get(addr, "site.test", &stranger).is_err(),
            "{driver}: a certificate of another CA got in"
        );
        running.shutdown();
        running.wait();
    }
}

/// A TLS origin on 127.0.0.1 with `leaf`'s certificate: answers each
/// request on a connection with 200 and keeps the connection open;
/// counts connections.
struct TlsOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

/// How a [`TlsOrigin`] answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 200 with a length, keeping the connection.
    KeepAlive,
    /// 200 delimited by the close, then close_notify (`clean`) or a bare
    /// TCP close (a cut).
    UntilClose { clean: bool },
}

impl TlsOrigin {
    fn start(leaf: &Leaf) -> TlsOrigin {
        TlsOrigin::answering(leaf, Answer::KeepAlive)
    }

    fn answering(leaf: &Leaf, answer: Answer) -> TlsOrigin {
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> = vec![CertificateDer::from(leaf.der.clone())];
        let key = PrivateKeyDer::from_pem_file(&leaf.key).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::Relaxed);
                let config = Arc::clone(&config);
                thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    loop {
                        match tls.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                        if head.ends_with(b"\r\n\r\n") && answer != Answer::KeepAlive {
                            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\n\r\nthe whole body");
                            if answer == (Answer::UntilClose { clean: true }) {
                                tls.conn.send_close_notify();
                            }
                            let _ = tls.flush();
                            let _ = tls.sock.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        if head.ends_with(b"\r\n\r\n") {
                            head.clear();
                            let body = "over tls!";
                            let answer =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                            if tls
                                .write_all(answer.as_bytes())
                                .and_then(|()| tls.flush())
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        TlsOrigin { addr, connections }
    }
}

/// A plain reverse proxy in front of `origin`, whose upstream has `tls`.
fn to_tls_upstream(tls: &str, origin: SocketAddr) -> factory::Running {
    start(&format!(
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
         [[listener.route]]\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\nretries = 0\ntls = {tls}\n"
    ))
}

#[test]
fn upstream_tls_is_verified_pooled_and_refused_with_502() {
    let ca = Ca::new("upstream");
    let leaf = ca.leaf("upstream-app", &["app.internal"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let origin = TlsOrigin::start(&leaf);
    let good = to_tls_upstream(
        &format!("{{ sni = \"app.internal\", ca = \"{}\" }}", ca.pem.display()),
        origin.addr,
    );
    let mut client = ringway_tests::TestClient::connect(good.local_addrs()[0]);
    for _ in 0..5 {
        let response = client.get("/");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "over tls!");
    }
    assert_eq!(
        origin.connections.load(Ordering::Relaxed),
        1,
        "the upstream TLS connection was not reused"
    );
    good.shutdown();
    good.wait();

    // The name the certificate is not for, and a CA that did not sign it.
    let other_ca = Ca::new("upstream-other");
    for tls in [
        format!("{{ sni = \"wrong.internal\", ca = \"{}\" }}", ca.pem.display()),
        format!(
            "{{ sni = \"app.internal\", ca = \"{}\" }}",
            other_ca.pem.display()
        ),
    ] {
        let bad = to_tls_upstream(&tls, origin.addr);
        let mut client = ringway_tests::TestClient::connect(bad.local_addrs()[0]);
        let response = client.get("/");
        assert_eq!(response.status, 502, "{tls}");
        bad.shutdown();
        bad.wait();
    }

    let insecure = to_tls_upstream("{ insecure_skip_verify = true }", origin.addr);
    let mut client = ringway_tests::TestClient::connect(insecure.local_addrs()[0]);
    assert_eq!(client.get("/").status, 200);
    insecure.shutdown();
    insecure.wait();
}

#[test]
fn an_https_forward_proxy_takes_connect_and_absolute_form_inside_tls() {
    let ca = Ca::new("fwd");
    let proxy_leaf = ca.leaf("fwd-proxy", &["proxy.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let origin_leaf = ca.leaf("fwd-origin", &["allowed.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let tls_origin = TlsOrigin::start(&origin_leaf);
    let plain_origin = Origin::start(|_| Reply::ok("plain through https proxy"));
    for driver in DRIVERS {
        let running = start(&format!(
            "[runtime]\nworkers = 1\npin_cpus = false\ndriver = \"{driver}\"\n\n\
             [dns]\nhosts = {{ \"allowed.test\" = \"127.0.0.1\", \"proxy.test\" = \"127.0.0.1\" }}\nservers = [\"127.0.0.1:9\"]\ntimeout = \"200ms\"\n\n\
             [acl.corp]\ndefault = \"deny\"\nblock_private = true\nprivate_allow = [\"127.0.0.1/32\"]\nconnect_ports = [\"1025-65535\"]\n\n\
             [[acl.corp.rule]]\naction = \"allow\"\nsrc = [\"127.0.0.0/8\"]\n\n\
             [[listener]]\nname = \"outbound\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\nacl = \"corp\"\n\n\
             [listener.tls]\ncerts = [{}]\n",
            cert_entry(&proxy_leaf, &[])
        ));
        let port = running.local_addrs()[0].port();
        let proxy = format!("https://proxy.test:{port}");
        let resolve = format!("proxy.test:{port}:127.0.0.1");
        let cacert = ca.pem.display().to_string();
        // CONNECT inside TLS, then TLS to the origin inside the tunnel.
        let (code, out) = curl(&[
            "--proxy",
            &proxy,
            "--proxy-cacert",
            &cacert,
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            &format!("https://allowed.test:{}/", tls_origin.addr.port()),
        ]);
        assert_eq!((code, out.as_str()), (0, "over tls!"), "{driver}");
        // Absolute-form HTTP inside TLS.
        let (code, out) = curl(&[
            "--proxy",
            &proxy,
            "--proxy-cacert",
            &cacert,
            "--resolve",
            &resolve,
            &format!("http://allowed.test:{}/", plain_origin.addr().port()),
        ]);
        assert_eq!((code, out.as_str()), (0, "plain through https proxy"), "{driver}");
        running.shutdown();
        running.wait();
    }
}

#[test]
fn a_plain_listener_redirects_to_https_with_308() {
    let running = start(
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\nredirect_https = 8443\n\n\
         [[listener.route]]\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n",
    );
    let mut client = ringway_tests::TestClient::connect(running.local_addrs()[0]);
    client.send(b"POST /a/b?c=d HTTP/1.1\r\nHost: www.example.test:8080\r\nContent-Length: 0\r\n\r\n");
    let response = client.response();
    assert_eq!(response.status, 308);
    assert_eq!(
        response.header("location"),
        Some("https://www.example.test:8443/a/b?c=d")
    );
    // An absolute-form target's host wins over Host.
    client.send(b"GET http://other.test/abs HTTP/1.1\r\nHost: www.example.test\r\n\r\n");
    let response = client.response();
    assert_eq!(response.status, 308);
    assert_eq!(response.header("location"), Some("https://other.test:8443/abs"));
    running.shutdown();
    running.wait();
}

fn config_error(source: &str) -> String {
    match config::parse(Path::new("test.toml"), source) {
        Ok(_) => panic!("accepted:\n{source}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn certificate_problems_are_config_errors_naming_the_file_and_the_key() {
    let ca = Ca::new("errors");
    let a = ca.leaf("errors-a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let b = ca.leaf("errors-b", &["b.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let listener = |tls: &str| {
        format!(
            "[[listener]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\
             [listener.tls]\n{tls}\n\
             [[listener.route]]\nupstream = \"app\"\n\
             [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n"
        )
    };
    // A key that is not the certificate's.
    let mismatched = config_error(&listener(&format!(
        "certs = [{{ cert = \"{}\", key = \"{}\" }}]",
        a.cert.display(),
        b.key.display()
    )));
    assert!(
        mismatched.contains("listener[0].tls.certs[0].key"),
        "{mismatched}"
    );
    assert!(mismatched.contains(&b.key.display().to_string()), "{mismatched}");
    assert!(mismatched.contains("does not match"), "{mismatched}");
    // A file that is not there.
    let missing = config_error(&listener(
        "certs = [{ cert = \"/nonexistent/site.pem\", key = \"/nonexistent/site.key\" }]",
    ));
    assert!(
        missing.contains("listener[0].tls.certs[0].cert") && missing.contains("/nonexistent/site.pem"),
        "{missing}"
    );
    // No certificate, an unknown version, a bad name.
    assert!(config_error(&listener("min_version = \"1.2\"")).contains("listener[0].tls.certs"));
    let version = config_error(&listener(&format!(
        "certs = [{}]\nmin_version = \"1.1\"",
        cert_entry(&a, &[])
    )));
    assert!(version.contains("listener[0].tls.min_version"), "{version}");
    let name = config_error(&listener(&format!("certs = [{}]", cert_entry(&a, &["bad name"]))));
    assert!(name.contains("listener[0].tls.certs[0].sni[0]"), "{name}");
    // An expired certificate is served (as nginx does), with a warning.
    let mut params = CertificateParams::new(vec!["old.test".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let cert_file = temp_file("errors-expired.pem", &cert.pem());
    let key_file = temp_file("errors-expired.key", &key.serialize_pem());
    let source = listener(&format!(
        "certs = [{{ cert = \"{}\", key = \"{}\" }}]",
        cert_file.display(),
        key_file.display()
    ));
    let parsed =
        config::parse(Path::new("test.toml"), &source).expect("an expired certificate is not an error");
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w.contains("expired") && w.contains(&cert_file.display().to_string())),
        "{:?}",
        parsed.warnings
    );
    // Verifying nothing is allowed, and said loudly.
    let insecure = config::parse(
        Path::new("test.toml"),
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\
         [[listener.route]]\nupstream = \"app\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\ntls = { insecure_skip_verify = true }\n",
    )
    .expect("valid");
    assert!(
        insecure.warnings.iter().any(|w| w.contains("DANGEROUS")),
        "{:?}",
        insecure.warnings
    );
    // An upstream CA file that holds no certificate.
    let empty = temp_file("errors-empty-ca.pem", "nothing here\n");
    let upstream = config_error(&format!(
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\
         [[listener.route]]\nupstream = \"app\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\ntls = {{ ca = \"{}\" }}\n",
        empty.display()
    ));
    assert!(upstream.contains("upstream[0].tls.ca"), "{upstream}");
}

const OCSP_BYTES: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x00];

#[test]
fn sessions_resume_across_workers_by_ticket_and_by_session_id_and_ocsp_is_stapled() {
    let ca = Ca::new("resume");
    let leaf = ca.leaf("resume-site", &["site.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    // One DER SEQUENCE (what the check asks of an OCSP response); rustls
    // staples the bytes as they are.
    let ocsp = std::env::temp_dir().join(format!("ringway-test-{}-resume-ocsp.der", std::process::id()));
    std::fs::write(&ocsp, OCSP_BYTES).expect("write");
    let origin = Origin::start(|_| Reply::ok("hello"));
    let certs = format!(
        "certs = [{{ cert = \"{}\", key = \"{}\", ocsp = \"{}\" }}]",
        leaf.cert.display(),
        leaf.key.display(),
        ocsp.display()
    );
    let running = start(&format!(
        "[runtime]\nworkers = 2\npin_cpus = false\n\n\
         [[listener]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
         [listener.tls]\n{certs}\n\n\
         [[listener.route]]\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n",
        origin.addr()
    ));
    let addr = running.local_addrs()[0];
    use rustls::client::{Resumption, Tls12Resumption};
    for (what, resumption, versions) in [
        (
            "TLS 1.3 tickets",
            Resumption::in_memory_sessions(64),
            &[&rustls::version::TLS13][..],
        ),
        (
            "TLS 1.2 tickets",
            Resumption::in_memory_sessions(64),
            &[&rustls::version::TLS12][..],
        ),
        (
            "TLS 1.2 session IDs",
            Resumption::in_memory_sessions(64).tls12_resumption(Tls12Resumption::SessionIdOnly),
            &[&rustls::version::TLS12][..],
        ),
    ] {
        let (config, recorder) = client_config(&["http/1.1"], None, resumption, versions);
        let config = Arc::new(config);
        let (first, resumed) = https_get_kind(addr, "site.test", &config).expect("first");
        assert!(first.starts_with("HTTP/1.1 200") && !resumed, "{what}: {first}");
        assert_eq!(
            *recorder.ocsp.lock().expect("lock"),
            OCSP_BYTES,
            "{what}: OCSP stapled"
        );
        // Two workers behind one port: later connections land on either,
        // and every one resumes (the ticket keys and the session cache are
        // the listener's, not a worker's).
        for i in 0..6 {
            let (response, resumed) = https_get_kind(addr, "site.test", &config).expect("again");
            assert!(response.starts_with("HTTP/1.1 200"), "{what}: {response}");
            assert!(resumed, "{what}: connection {i} did not resume");
        }
    }
    running.shutdown();
    running.wait();
}

#[test]
fn bodies_delimited_by_the_close_end_with_close_notify_and_a_cut_one_is_not_passed_as_whole() {
    let ca = Ca::new("close");
    let site = ca.leaf("close-site", &["site.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    // To an HTTP/1.0 client over TLS, a body without a length ends with the
    // connection: the proxy's close_notify tells it the body is whole.
    let body = "z".repeat(100_000);
    let plain =
        Origin::start(move |_| Reply::BytesThenClose(format!("HTTP/1.1 200 OK\r\n\r\n{body}").into_bytes()));
    for driver in DRIVERS {
        let running = tls_reverse(
            driver,
            &format!("certs = [{}]", cert_entry(&site, &[])),
            plain.addr(),
        );
        let port = running.local_addrs()[0].port();
        let (code, out) = curl(&[
            "--http1.0",
            "--cacert",
            &ca.pem.display().to_string(),
            "--resolve",
            &format!("site.test:{port}:127.0.0.1"),
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("https://site.test:{port}/"),
        ]);
        assert_eq!((code, out.as_str()), (0, "100000"), "{driver}");
        running.shutdown();
        running.wait();
    }
    // A TLS upstream's close-delimited body: whole after its close_notify;
    // after a bare TCP close (what a cut on the path looks like) the
    // client's chunked response is not finished.
    let app = ca.leaf("close-app", &["app.internal"], &rcgen::PKCS_ECDSA_P256_SHA256);
    for (clean, whole) in [(true, true), (false, false)] {
        let origin = TlsOrigin::answering(&app, Answer::UntilClose { clean });
        let running = to_tls_upstream(
            &format!("{{ sni = \"app.internal\", ca = \"{}\" }}", ca.pem.display()),
            origin.addr,
        );
        let (code, out) = curl(&[&format!("http://{}/", running.local_addrs()[0])]);
        if whole {
            assert_eq!((code, out.as_str()), (0, "the whole body"));
        } else {
            assert_ne!(code, 0, "a cut body was passed on as complete: {out}");
        }
        running.shutdown();
        running.wait();
    }
}

#[test]
fn http_health_checks_of_a_tls_upstream_speak_tls_and_take_out_a_server_that_fails_verification() {
    let ca = Ca::new("health");
    let good_leaf = ca.leaf("health-good", &["app.internal"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let stranger = Ca::new("health-stranger");
    let bad_leaf = stranger.leaf("health-bad", &["app.internal"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let good = TlsOrigin::start(&good_leaf);
    let bad = TlsOrigin::start(&bad_leaf);
    let running = start(&format!(
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
         [[listener.route]]\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\", \"{}\"]\nretries = 0\n\
         tls = {{ sni = \"app.internal\", ca = \"{}\" }}\n\
         health = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", healthy = 1, unhealthy = 1 }}\n\
         passive = {{ failures = 0 }}\n",
        good.addr,
        bad.addr,
        ca.pem.display()
    ));
    // The server whose certificate does not verify fails its checks and
    // leaves; the one that verifies passes them over TLS and stays (a
    // plain HTTP check would fail both, and the group would fail open; a
    // check that did not verify would keep both). Passive health is off,
    // so only the active checks can take a server out.
    let addr = running.local_addrs()[0];
    let settled = ringway_tests::eventually(Duration::from_secs(10), || {
        let mut client = ringway_tests::TestClient::connect(addr);
        (0..6).all(|_| client.get("/").status == 200)
    });
    assert!(
        settled,
        "requests still went to the server that fails verification"
    );
    let mut client = ringway_tests::TestClient::connect(addr);
    for _ in 0..10 {
        assert_eq!(client.get("/").status, 200);
    }
    running.shutdown();
    running.wait();
}

#[test]
fn the_access_log_names_the_sni_and_the_verified_client_certificate() {
    let ca = Ca::new("log");
    let site = ca.leaf("log-site", &["site.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let clients = Ca::new("log-clients");
    let alice = clients.leaf("log-alice", &["alice.client"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let origin = Origin::start(|_| Reply::ok("hello"));
    let config = temp_file(
        "log.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n[log]\naccess_log = {{ format = \"json\" }}\n\n\
             [[listener]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
             [listener.tls]\ncerts = [{}]\nclient_ca = \"{}\"\n\n\
             [[listener.route]]\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n",
            cert_entry(&site, &[]),
            clients.pem.display(),
            origin.addr()
        ),
    );
    let running = Running::start(&["run", "--config", &config.display().to_string()]);
    let port = running.addr.port();
    let (code, out) = curl(&[
        "--cacert",
        &ca.pem.display().to_string(),
        "--cert",
        &alice.cert.display().to_string(),
        "--key",
        &alice.key.display().to_string(),
        "--resolve",
        &format!("site.test:{port}:127.0.0.1"),
        &format!("https://site.test:{port}/"),
    ]);
    assert_eq!((code, out.as_str()), (0, "hello"));
    let line = running.wait_for_log("\"status\":200");
    assert!(line.contains("\"sni\":\"site.test\""), "{line}");
    assert!(line.contains("\"tls\":\"TLSv1.3\""), "{line}");
    assert!(
        line.contains("\"client_cert\":\"") && line.contains("CN=alice.client"),
        "{line}"
    );
}

#[test]
fn long_cached_bodies_reach_tls_clients_whole() {
    // A body kept in a file is read in pieces for a TLS client (sendfile
    // would skip the encryption).
    let ca = Ca::new("cached");
    let leaf = ca.leaf("cached-site", &["site.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let body: String = (0..300_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let served = body.clone();
    let origin = Origin::start(move |_| {
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{served}",
                served.len()
            )
            .into_bytes(),
        )
    });
    for driver in DRIVERS {
        let running = start(&format!(
            "[runtime]\nworkers = 1\npin_cpus = false\ndriver = \"{driver}\"\n\n\
             [cache.main]\nmemory = \"16MiB\"\n\n\
             [[listener]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
             [listener.tls]\ncerts = [{}]\n\n\
             [[listener.route]]\nupstream = \"app\"\ncache = \"main\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n",
            cert_entry(&leaf, &[]),
            origin.addr()
        ));
        let port = running.local_addrs()[0].port();
        let resolve = format!("site.test:{port}:127.0.0.1");
        let url = format!("https://site.test:{port}/long-{driver}");
        let cacert = ca.pem.display().to_string();
        for _ in 0..2 {
            let (code, out) = curl(&["--cacert", &cacert, "--resolve", &resolve, &url]);
            assert_eq!(code, 0, "{driver}: {out}");
            assert!(out == body, "{driver}: {} bytes", out.len());
        }
        running.shutdown();
        running.wait();
    }
    assert_eq!(
        origin.seen().len(),
        2,
        "one fetch per driver, the rest from the store"
    );
}
