//! `[listener.tls]` (termination: certificates by SNI, versions, ALPN,
//! client certificates) and `[[upstream]] tls` (TLS to servers), loaded
//! into `ringway_tls` acceptors and connectors. Certificate and key files
//! are read and checked here, so `ringway check` finds a key that does not
//! match its certificate, and names the file and the key.

use ringway_tls::{
    Acceptor, CertFiles, ClientTlsSettings, Connector, ServerTlsSettings, TlsConfigError, TlsVersion,
};

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerTlsSection {
    pub(crate) certs: Option<Vec<CertSection>>,
    pub(crate) min_version: Option<String>,
    pub(crate) alpn: Option<Vec<String>>,
    pub(crate) client_ca: Option<String>,
    pub(crate) handshake_timeout: Option<String>,
    pub(crate) session_cache: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertSection {
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) sni: Option<OneOrMany<String>>,
    pub(crate) ocsp: Option<String>,
}

/// `tls = true`, or a table of settings.
#[derive(Debug)]
pub(crate) enum UpstreamTlsValue {
    On(bool),
    Settings(UpstreamTlsSection),
}

/// By hand rather than `untagged`: a table's own errors (an unknown key)
/// reach the user instead of one message for any mistake.
impl<'de> Deserialize<'de> for UpstreamTlsValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UpstreamTlsValue;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false, or a table such as { sni = \"app.internal\", ca = \"ca.pem\" }")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(UpstreamTlsValue::On(v))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                UpstreamTlsSection::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(UpstreamTlsValue::Settings)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsSection {
    pub(crate) sni: Option<String>,
    pub(crate) ca: Option<String>,
    pub(crate) client_cert: Option<String>,
    pub(crate) client_key: Option<String>,
    pub(crate) insecure_skip_verify: Option<bool>,
    pub(crate) min_version: Option<String>,
}

/// A plain listener's `redirect_https`: `true` (to port 443) or a port.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "true, false, or the HTTPS port to redirect to")]
pub(crate) enum RedirectValue {
    On(bool),
    Port(i64),
}

impl Validator {
    fn tls_version(&mut self, at: KeyPath, value: Option<&str>) -> TlsVersion {
        match value {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(other) => {
                self.problem(
                    at,
                    format!("unknown version {other:?}: expected \"1.2\" or \"1.3\""),
                );
                TlsVersion::Tls12
            }
        }
    }

    fn tls_path(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    /// Reports `error` at the key it is about: a listener's `certs[i].key`
    /// when it says which, else the key whose file it names, else
    /// `fallback` (or its `key`).
    fn tls_problem(&mut self, error: TlsConfigError, files: &[(KeyPath, PathBuf)], fallback: KeyPath) {
        let at = match (error.cert, error.key) {
            (Some(index), key) if !key.is_empty() => fallback.key("certs").index(index).key(key),
            _ => error
                .file
                .as_deref()
                .and_then(|file| files.iter().find(|(_, p)| p.display().to_string() == file))
                .map(|(at, _)| at.clone())
                .unwrap_or_else(|| {
                    if error.key.is_empty() {
                        fallback.clone()
                    } else {
                        fallback.key(error.key)
                    }
                }),
        };
        self.problem(at, error.to_string());
    }

    /// `[listener.tls]`: the listener's acceptor, with every certificate
    /// loaded and checked.
    pub(super) fn listener_tls(&mut self, section: &ListenerTlsSection, at: &KeyPath) -> Option<Acceptor> {
        let mut settings = ServerTlsSettings::default();
        let mut files = Vec::new();
        let certs_at = at.key("certs");
        let mut seen_sni: Vec<(String, usize)> = Vec::new();
        match section.certs.as_deref() {
            None | Some([]) => {
                self.problem(
                    certs_at.clone(),
                    "a TLS listener needs at least one certificate: certs = [{ cert = \"site.pem\", key = \"site.key\" }]",
                );
                return None;
            }
            Some(certs) => {
                for (i, c) in certs.iter().enumerate() {
                    let cat = certs_at.index(i);
                    let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
                        self.problem(cat, "every certificate needs `cert` and `key` (PEM files)");
                        continue;
                    };
                    let sni: Vec<String> = c.sni.as_ref().map(|s| s.items().to_vec()).unwrap_or_default();
                    for (j, name) in sni.iter().enumerate() {
                        let bare = name.strip_prefix("*.").unwrap_or(name).trim_end_matches('.');
                        let lower = name.trim_end_matches('.').to_ascii_lowercase();
                        let problem = if bare.parse::<std::net::IpAddr>().is_ok() {
                            Some(format!(
                                "{name:?} is an address: clients send only DNS names as SNI (a certificate for an address is the default one)"
                            ))
                        } else if ringway_tls::rustls_pki_types::DnsName::try_from(bare.to_ascii_lowercase())
                            .is_err()
                        {
                            Some(format!(
                                "{name:?} is not a DNS name (a wildcard is \"*.\" before one, as in \"*.example.com\")"
                            ))
                        } else if let Some((_, other)) = seen_sni.iter().find(|(n, _)| *n == lower) {
                            Some(format!(
                                "{name:?} is already a name of certs[{other}]: which certificate it gets would be a guess"
                            ))
                        } else {
                            seen_sni.push((lower, i));
                            None
                        };
                        if let Some(problem) = problem {
                            self.problem(cat.key("sni").index(j), problem);
                        }
                    }
                    let files_of = CertFiles {
                        cert: self.tls_path(cert),
                        key: self.tls_path(key),
                        ocsp: c.ocsp.as_deref().map(|o| self.tls_path(o)),
                        sni,
                    };
                    files.push((cat.key("cert"), files_of.cert.clone()));
                    files.push((cat.key("key"), files_of.key.clone()));
                    if let Some(ocsp) = &files_of.ocsp {
                        files.push((cat.key("ocsp"), ocsp.clone()));
                    }
                    settings.certs.push(files_of);
                }
            }
        }
        settings.min_version = self.tls_version(at.key("min_version"), section.min_version.as_deref());
        if settings.certs.len() != section.certs.as_deref().map_or(0, <[_]>::len) {
            // An entry's problem is reported already; loading the others
            // would number their errors after the missing one.
            return None;
        }
        if let Some(alpn) = &section.alpn {
            if !alpn.is_empty() && !alpn.iter().any(|p| p == "http/1.1") {
                self.problem(
                    at.key("alpn"),
                    "alpn must offer \"http/1.1\": clients that speak it (all of them) would be refused",
                );
            }
            for (i, p) in alpn.iter().enumerate() {
                if p != "http/1.1" && p != "http/1.0" {
                    self.problem(
                        at.key("alpn").index(i),
                        format!("{p:?} is not served: \"http/1.1\" and \"http/1.0\" are (HTTP/2 is not implemented yet)"),
                    );
                }
            }
            settings.alpn = alpn.clone();
        }
        if let Some(ca) = &section.client_ca {
            let path = self.tls_path(ca);
            files.push((at.key("client_ca"), path.clone()));
            settings.client_ca = Some(path);
        }
        settings.handshake_timeout = self.duration(
            at.key("handshake_timeout"),
            section.handshake_timeout.as_ref(),
            settings.handshake_timeout,
        );
        if let Some(n) = section.session_cache {
            settings.session_cache = n;
        }
        if !self.outside {
            self.problem(at.clone(), "certificate files are not read here");
            return None;
        }
        match Acceptor::new(&settings) {
            Ok(acceptor) => {
                let warnings = acceptor.store().warnings().iter().map(|w| format!("{at}: {w}"));
                self.warnings.extend(warnings);
                Some(acceptor)
            }
            Err(e) => {
                self.tls_problem(e, &files, at.clone());
                None
            }
        }
    }

    /// `[[upstream]] tls`: the connector its servers are reached with.
    pub(super) fn upstream_tls(
        &mut self,
        value: &UpstreamTlsValue,
        name: &str,
        at: &KeyPath,
    ) -> Option<Connector> {
        let section = match value {
            UpstreamTlsValue::On(false) => return None,
            UpstreamTlsValue::On(true) => &UpstreamTlsSection::default(),
            UpstreamTlsValue::Settings(section) => section,
        };
        let mut files = Vec::new();
        let mut settings = ClientTlsSettings {
            sni: section.sni.clone(),
            ..ClientTlsSettings::default()
        };
        if let Some(ca) = &section.ca {
            let path = self.tls_path(ca);
            files.push((at.key("ca"), path.clone()));
            settings.ca = Some(path);
        }
        match (&section.client_cert, &section.client_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (self.tls_path(cert), self.tls_path(key));
                files.push((at.key("client_cert"), cert.clone()));
                files.push((at.key("client_key"), key.clone()));
                settings.client_cert = Some((cert, key));
            }
            (None, None) => {}
            (Some(_), None) => self.problem(at.key("client_key"), "client_cert needs client_key"),
            (None, Some(_)) => self.problem(at.key("client_cert"), "client_key needs client_cert"),
        }
        settings.insecure_skip_verify = section.insecure_skip_verify.unwrap_or(false);
        settings.min_version = self.tls_version(at.key("min_version"), section.min_version.as_deref());
        if settings.insecure_skip_verify && settings.ca.is_some() {
            self.problem(
                at.key("ca"),
                "insecure_skip_verify verifies nothing: remove one of the two",
            );
        }
        if !self.outside {
            return None;
        }
        match Connector::new(&settings) {
            Ok(connector) => {
                if settings.insecure_skip_verify {
                    self.warnings.push(format!(
                        "DANGEROUS: upstream {name:?} has tls.insecure_skip_verify: its servers' certificates \
                         are not verified, and anyone on the path can read and change its traffic"
                    ));
                }
                Some(connector)
            }
            Err(e) => {
                self.tls_problem(e, &files, at.clone());
                None
            }
        }
    }
}
