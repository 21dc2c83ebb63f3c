//! Server certificates: loading PEM chains and keys (checked against each
//! other and for expiry), picking one by SNI, and reloading them.
//!
//! A [`CertStore`] is shared by every worker of a listener. Each handshake
//! takes the current table once (a read lock and a reference count), so a
//! reload swaps all certificates at once between two handshakes and never
//! during one. A reload that fails on any file keeps every old certificate
//! and says which file and why.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{der, TlsConfigError};

/// One certificate of a listener, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM file: the certificate, then its chain.
    pub cert: PathBuf,
    /// PEM file: its private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or
    /// Ed25519).
    pub key: PathBuf,
    /// DER file with a stapled OCSP response, if any.
    pub ocsp: Option<PathBuf>,
    /// The server names it is for (`*.example.com` for a wildcard); empty
    /// for the default certificate.
    pub sni: Vec<String>,
}

/// Certificates by server name.
#[derive(Debug, Default)]
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the name after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(key) = self.exact.get(&name) {
                return Some(Arc::clone(key));
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = self.wildcard.get(parent) {
                    return Some(Arc::clone(key));
                }
            }
        }
        self.default.clone()
    }
}

/// Modification times and sizes of the files a store was loaded from.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// A listener's certificates, picked by SNI and reloadable.
pub struct CertStore {
    files: Vec<CertFiles>,
    provider: Arc<CryptoProvider>,
    table: RwLock<Arc<CertTable>>,
    stamps: Mutex<Stamps>,
    /// What the first load found worth a warning (expired certificates).
    warnings: Vec<String>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads `files`; the first without `sni` is the default (the first of
    /// all when every one names its servers).
    pub fn load(files: Vec<CertFiles>, provider: Arc<CryptoProvider>) -> Result<Self, TlsConfigError> {
        if files.is_empty() {
            return Err(TlsConfigError::new("certs", "at least one certificate is needed"));
        }
        if files.iter().filter(|f| f.sni.is_empty()).count() > 1 {
            return Err(TlsConfigError::new(
                "certs",
                "only one certificate may leave out `sni` (it is the default)",
            ));
        }
        let stamps = stamps(&files);
        let (table, warnings) = build_table(&files, &provider)?;
        Ok(Self {
            files,
            provider,
            table: RwLock::new(Arc::new(table)),
            stamps: Mutex::new(stamps),
            warnings,
        })
    }

    /// What the first load found worth a warning (an expired
    /// certificate), for the start-up log and `ringway check`; a reload
    /// logs its own.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Loads every file again and swaps the certificates if all loaded;
    /// otherwise keeps the old ones and says why.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let stamps = stamps(&self.files);
        let table = build_table(&self.files, &self.provider);
        // The stamps are taken either way: a bad file is reported once,
        // not at every check until it changes again.
        if let Ok(mut old) = self.stamps.lock() {
            *old = stamps;
        }
        let (table, warnings) = table?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        if let Ok(mut current) = self.table.write() {
            *current = Arc::new(table);
        }
        Ok(())
    }

    /// Reloads when a file's modification time or size changed since the
    /// last load. `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsConfigError> {
        let now = stamps(&self.files);
        let changed = self.stamps.lock().map(|old| *old != now).unwrap_or(true);
        if !changed {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// The certificate for a handshake that asked for `name`.
    pub fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.read().map(|t| Arc::clone(&t)).ok()?;
        table.pick(name)
    }

    /// The files the store loads.
    pub fn files(&self) -> &[CertFiles] {
        &self.files
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

fn stamps(files: &[CertFiles]) -> Stamps {
    files
        .iter()
        .flat_map(|f| [Some(&f.cert), Some(&f.key), f.ocsp.as_ref()])
        .flatten()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

fn build_table(
    files: &[CertFiles],
    provider: &Arc<CryptoProvider>,
) -> Result<(CertTable, Vec<String>), TlsConfigError> {
    let mut table = CertTable::default();
    let mut warnings = Vec::new();
    for (index, files) in files.iter().enumerate() {
        let (key, warning) = load_certified_key(files, provider).map_err(|e| e.in_cert(index))?;
        warnings.extend(warning);
        let key = Arc::new(key);
        if files.sni.is_empty() {
            table.default = Some(Arc::clone(&key));
        }
        for name in &files.sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => table.wildcard.insert(parent.to_owned(), Arc::clone(&key)),
                None => table.exact.insert(name, Arc::clone(&key)),
            };
        }
        if table.default.is_none() {
            table.default = Some(key);
        }
    }
    Ok((table, warnings))
}

/// Reads a PEM certificate chain.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let chain: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(path) {
        Ok(iter) => iter.collect(),
        Err(e) => return Err(TlsConfigError::file(path, crate::pem_error_text(&e)).at("cert")),
    };
    let chain = chain.map_err(|e| {
        TlsConfigError::file(
            path,
            format!("not a PEM certificate chain: {}", crate::pem_error_text(&e)),
        )
        .at("cert")
    })?;
    if chain.is_empty() {
        return Err(TlsConfigError::file(path, "holds no certificate (PEM `CERTIFICATE` block)").at("cert"));
    }
    Ok(chain)
}

/// Reads a PEM bundle of trusted CA certificates (`key` names the setting
/// in errors). Certificates webpki cannot use are skipped, as a host's
/// bundle may hold some; a file with none it can use is an error.
pub fn load_roots(path: &Path, key: &'static str) -> Result<rustls::RootCertStore, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _skipped) = roots.add_parsable_certificates(load_chain(path).map_err(|e| e.at(key))?);
    if added == 0 {
        return Err(TlsConfigError::file(path, "holds no usable CA certificate").at(key));
    }
    Ok(roots)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)".to_owned()
            }
            other => format!(
                "cannot read a private key from it: {}",
                crate::pem_error_text(&other)
            ),
        };
        TlsConfigError::file(path, why).at("key")
    })
}

/// Loads one certificate: its chain, its key (which must match it) and its
/// stapled OCSP response. An expired certificate is still used, as nginx
/// does, with a warning returned beside it.
pub(crate) fn load_certified_key(
    files: &CertFiles,
    provider: &Arc<CryptoProvider>,
) -> Result<(CertifiedKey, Option<String>), TlsConfigError> {
    let chain = load_chain(&files.cert)?;
    let key_der = load_key(&files.key)?;
    let key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsConfigError::file(&files.key, format!("unusable private key: {e}")).at("key"))?;
    let mut certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => {}
        // rustls cannot tell for some key types; webpki will on use.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(TlsConfigError::file(
                &files.key,
                format!("does not match the certificate in {}: {e}", files.cert.display()),
            )
            .at("key"))
        }
    }
    let mut warning = None;
    if let Some(not_after) = certified.end_entity_cert().ok().and_then(|c| der::not_after(c)) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if not_after < now {
            warning = Some(format!(
                "{}: the certificate has expired; it is served anyway, and clients will reject it",
                files.cert.display()
            ));
        }
    }
    if let Some(ocsp) = &files.ocsp {
        let response = std::fs::read(ocsp)
            .map_err(|e| TlsConfigError::file(ocsp, format!("cannot read it: {e}")).at("ocsp"))?;
        if !der::is_one_sequence(&response) {
            return Err(TlsConfigError::file(
                ocsp,
                "is not a DER OCSP response (`openssl ocsp ... -respout FILE` writes one)",
            )
            .at("ocsp"));
        }
        certified.ocsp = Some(response);
    }
    Ok((certified, warning))
}

/// The subject of a peer's certificate (RFC 4514), for logs and rules.
pub fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    der::subject(cert)
}
