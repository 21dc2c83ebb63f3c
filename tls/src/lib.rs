//! ringway-tls: TLS termination and TLS to upstreams, with rustls over
//! monoio's ownership-passing IO.
//!
//! - [`stream`]: [`TlsStream`], a rustls session as an `AsyncReadRent +
//!   AsyncWriteRent` stream, and its halves for tunnels;
//! - [`certs`]: loading certificates and keys, picking one by SNI,
//!   reloading them;
//! - [`acceptor`]: a listener's server configuration and handshake;
//! - [`connector`]: an upstream's client configuration and handshake.
//!
//! The crypto provider is chosen here, once ([`crypto`]).

pub mod acceptor;
pub mod certs;
pub mod connector;
mod der;
mod rawbuf;
pub mod stream;

use std::{borrow::Cow, fmt, path::Path};

pub use acceptor::{Acceptor, HandshakeError, ServerTlsSettings, TlsInfo};
pub use certs::{CertFiles, CertStore};
pub use connector::{ClientTlsSettings, Connector};
pub use rustls::{pki_types as rustls_pki_types, ClientConnection, ServerConnection};
pub use stream::{release_unused_buffers, TlsReadHalf, TlsStream, TlsWriteHalf};

/// The oldest TLS version a side accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl TlsVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            Self::Tls12 => &BOTH,
            Self::Tls13 => &TLS13_ONLY,
        }
    }
}

/// A TLS setting that cannot be used: the key or file at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError {
    /// The file at fault, if a file is.
    pub file: Option<String>,
    /// The setting at fault (`cert`, `key`, `ocsp`, `min_version`...), or
    /// empty when only the file says.
    pub key: &'static str,
    /// Which of a listener's `certs` it is about, when it is one of them.
    pub cert: Option<usize>,
    /// Why.
    pub reason: Cow<'static, str>,
}

impl TlsConfigError {
    fn new(key: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            file: None,
            key,
            cert: None,
            reason: reason.into(),
        }
    }

    fn file(path: &Path, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            file: Some(path.display().to_string()),
            key: "",
            cert: None,
            reason: reason.into(),
        }
    }

    /// The same error, about the setting `key`.
    fn at(mut self, key: &'static str) -> Self {
        self.key = key;
        self
    }

    /// The same error, about the listener's certificate `index`.
    fn in_cert(mut self, index: usize) -> Self {
        self.cert = Some(index);
        self
    }
}

/// A PEM reading error in words (the library's own names its markers as
/// byte arrays).
fn pem_error_text(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a PEM section has no END line (is the file cut short?)".to_owned(),
        E::IllegalSectionStart { .. } => "a PEM section's BEGIN line is malformed".to_owned(),
        E::Base64Decode(_) => "a PEM section's base64 does not decode".to_owned(),
        E::Io(e) => format!("cannot read it: {e}"),
        E::NoItemsFound => "holds no PEM section of the expected kind".to_owned(),
        other => other.to_string(),
    }
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}: {}", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

impl std::error::Error for TlsConfigError {}

/// The crypto provider: aws-lc-rs with the `aws-lc-rs` feature (the
/// default), else ring. aws-lc-rs signs RSA 2048 in about a third of
/// ring's time (full handshakes with an RSA certificate cost 0.76x nginx's
/// CPU on it, 1.03x on ring) and encrypts records faster (keep-alive
/// requests 0.74-0.79x nginx's CPU, against 0.81-0.88x); see
/// `benches/results/tls-*.md`.
pub mod crypto {
    use std::sync::Arc;

    use rustls::{crypto::CryptoProvider, server::ProducesTickets};

    #[cfg(feature = "aws-lc-rs")]
    use rustls::crypto::aws_lc_rs as chosen;
    #[cfg(not(feature = "aws-lc-rs"))]
    use rustls::crypto::ring as chosen;

    /// The provider every configuration is built with.
    pub fn provider() -> Arc<CryptoProvider> {
        Arc::new(chosen::default_provider())
    }

    /// A session ticket producer whose keys rotate.
    pub fn ticketer() -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
        chosen::Ticketer::new()
    }

    /// The provider's name, for the start-up log.
    pub fn name() -> &'static str {
        if cfg!(feature = "aws-lc-rs") {
            "aws-lc-rs"
        } else {
            "ring"
        }
    }
}
