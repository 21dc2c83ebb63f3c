//! TLS termination: a listener's server configuration (certificates picked
//! by SNI, protocol versions, ALPN, client certificates, session
//! resumption) and the handshake that turns an accepted socket into a
//! [`TlsStream`].

use std::{path::PathBuf, sync::Arc, time::Duration};

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use rustls::{
    server::{ServerSessionMemoryCache, WebPkiClientVerifier},
    ServerConfig, ServerConnection,
};

use crate::{
    certs::{load_roots, CertFiles, CertStore},
    crypto, der, TlsConfigError, TlsStream, TlsVersion,
};

/// A listener's TLS settings, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    /// Its certificates (see [`CertStore::load`] for which is the default).
    pub certs: Vec<CertFiles>,
    /// The oldest protocol version accepted.
    pub min_version: TlsVersion,
    /// Application protocols offered by ALPN, most preferred first.
    pub alpn: Vec<String>,
    /// PEM file of the CAs whose client certificates are accepted; when
    /// set, a client must present one (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Time allowed for a whole handshake.
    pub handshake_timeout: Duration,
    /// TLS 1.2 sessions remembered for resumption by session ID, per
    /// listener (tickets need no memory on the server).
    pub session_cache: usize,
}

impl Default for ServerTlsSettings {
    fn default() -> Self {
        Self {
            certs: Vec::new(),
            min_version: TlsVersion::Tls12,
            // As nginx: HTTP/1.0 clients name their own protocol.
            alpn: vec!["http/1.1".to_owned(), "http/1.0".to_owned()],
            client_ca: None,
            handshake_timeout: Duration::from_secs(10),
            session_cache: 4096,
        }
    }
}

/// What a handshake established about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), lowercased.
    pub sni: Option<Box<str>>,
    /// The subject of the client's verified certificate (mutual TLS).
    pub client_subject: Option<Box<str>>,
    /// The protocol ALPN settled on.
    pub alpn: Option<Box<[u8]>>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
}

/// Why a handshake failed, with what the client had said by then.
#[derive(Debug)]
pub struct HandshakeError {
    /// The server name the client asked for, if it got that far.
    pub sni: Option<Box<str>>,
    /// What went wrong.
    pub error: std::io::Error,
    /// The handshake took longer than its timeout.
    pub timed_out: bool,
}

/// The answer to a plain HTTP request sent to a TLS listener.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 64\r\nConnection: close\r\n\r\n400 Bad Request: a plain HTTP request was sent to an HTTPS port\n";

/// Accepts TLS connections for one listener; shared by its workers.
#[derive(Debug, Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    store: Arc<CertStore>,
    timeout: Duration,
    client_certificates: bool,
}

impl Acceptor {
    /// Loads the certificates and builds the server configuration. Errors
    /// name the file at fault.
    pub fn new(settings: &ServerTlsSettings) -> Result<Self, TlsConfigError> {
        let provider = crypto::provider();
        let store = Arc::new(CertStore::load(settings.certs.clone(), Arc::clone(&provider))?);
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(settings.min_version.versions())
            .map_err(|e| TlsConfigError::new("min_version", e.to_string()))?;
        let builder = match &settings.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = load_roots(path, "client_ca")?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                        .build()
                        .map_err(|e| {
                            TlsConfigError::file(path, format!("cannot verify clients with it: {e}"))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&store) as _);
        config.alpn_protocols = settings.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.session_storage = ServerSessionMemoryCache::new(settings.session_cache.max(1));
        // Stateless resumption: keys rotate every 6 hours and are shared by
        // every worker through this configuration.
        config.ticketer = crypto::ticketer().map_err(|e| TlsConfigError::new("tls", e.to_string()))?;
        // No 0-RTT: early data can be replayed.
        config.max_early_data_size = 0;
        Ok(Self {
            config: Arc::new(config),
            store,
            timeout: settings.handshake_timeout,
            client_certificates: settings.client_ca.is_some(),
        })
    }

    /// Whether clients must present a certificate (`client_ca`).
    pub fn requires_client_certificates(&self) -> bool {
        self.client_certificates
    }

    /// The certificates (to reload them).
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Runs the server handshake on `io` within the handshake timeout.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<(TlsStream<IO, ServerConnection>, TlsInfo), HandshakeError>
    where
        IO: AsyncReadRent + AsyncWriteRent,
    {
        let session = ServerConnection::new(Arc::clone(&self.config)).map_err(|e| HandshakeError {
            sni: None,
            error: std::io::Error::other(e),
            timed_out: false,
        })?;
        let mut stream = TlsStream::new(io, session, false);
        let result = monoio::time::timeout(self.timeout, stream.handshake()).await;
        let sni = stream
            .session()
            .server_name()
            .map(|s| s.to_ascii_lowercase().into_boxed_str());
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                if error
                    .get_ref()
                    .is_some_and(|e| e.is::<crate::stream::PlainHttp>())
                {
                    // As nginx does: a readable answer, then close.
                    let _ = monoio::time::timeout(self.timeout, stream.write_plain(PLAIN_HTTP_ANSWER)).await;
                }
                return Err(HandshakeError {
                    sni,
                    error,
                    timed_out: false,
                });
            }
            Err(_) => {
                return Err(HandshakeError {
                    sni,
                    error: std::io::Error::new(std::io::ErrorKind::TimedOut, "the handshake took too long"),
                    timed_out: true,
                })
            }
        }
        let session = stream.session();
        let info = TlsInfo {
            sni,
            client_subject: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| der::subject(cert))
                .map(String::into_boxed_str),
            alpn: session.alpn_protocol().map(Box::from),
            version: match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLSv1.3",
            },
        };
        Ok((stream, info))
    }
}
