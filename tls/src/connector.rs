//! TLS to upstream servers: a client configuration per upstream (the CAs
//! that verify the server, an optional client certificate, the name sent
//! as SNI) and the handshake over a fresh connection.
//!
//! Verification uses the configured CA file, or else the host's trust
//! store (the first of the usual bundle paths that exists).
//! `insecure_skip_verify` turns verification off; it exists for testing
//! against servers with throwaway certificates and is logged loudly.

use std::{
    hash::{Hash, Hasher},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::{
    certs::{load_chain, load_key, load_roots},
    crypto, TlsConfigError, TlsStream, TlsVersion,
};

/// Where a host's trusted CAs usually are, as one PEM bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

/// An upstream's TLS settings, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClientTlsSettings {
    /// The name sent as SNI and verified in the server's certificate;
    /// `None`: the server's configured host name, or its address.
    pub sni: Option<String>,
    /// PEM file of the CAs that verify the server; `None`: the host's.
    pub ca: Option<PathBuf>,
    /// PEM files of a client certificate and its key (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate. Dangerous.
    pub insecure_skip_verify: bool,
    /// The oldest protocol version used.
    pub min_version: TlsVersion,
}

/// Opens TLS sessions to one upstream's servers; shared by the workers.
/// Two connectors are equal when their settings are.
#[derive(Debug, Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    sni: Option<ServerName<'static>>,
    identity: u64,
    insecure: bool,
}

impl Connector {
    /// Builds the client configuration. Errors name the file at fault.
    pub fn new(settings: &ClientTlsSettings) -> Result<Self, TlsConfigError> {
        let provider = crypto::provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(settings.min_version.versions())
            .map_err(|e| TlsConfigError::new("min_version", e.to_string()))?;
        let builder = if settings.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(Arc::clone(&provider))))
        } else {
            builder.with_root_certificates(roots(settings.ca.as_deref())?)
        };
        let config = match &settings.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(load_chain(cert)?, load_key(key)?)
                .map_err(|e| {
                    TlsConfigError::file(
                        key,
                        format!("unusable as the client key of {}: {e}", cert.display()),
                    )
                })?,
        };
        let sni = match &settings.sni {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| TlsConfigError::new("sni", format!("`{name}` is not a server name: {e}")))?,
            ),
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        settings.hash(&mut hasher);
        Ok(Self {
            config: Arc::new(config),
            sni,
            identity: hasher.finish(),
            insecure: settings.insecure_skip_verify,
        })
    }

    /// Whether it verifies nothing (`insecure_skip_verify`).
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The name configured as `sni`, if any.
    pub fn sni(&self) -> Option<String> {
        self.sni.as_ref().map(|name| name.to_str().into_owned())
    }

    /// A number that differs between connectors with different settings:
    /// part of the key under which their connections are pooled.
    pub fn identity(&self) -> u64 {
        self.identity
    }

    /// The name a session to a server `host` (its configured name, if it
    /// has one) at `ip` is for.
    pub fn server_name(&self, host: Option<&str>, ip: IpAddr) -> ServerName<'static> {
        if let Some(sni) = &self.sni {
            return sni.clone();
        }
        host.and_then(|h| ServerName::try_from(h.to_owned()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }

    /// Runs the client handshake for `name` on `io`.
    pub async fn connect<IO>(
        &self,
        io: IO,
        name: ServerName<'static>,
    ) -> std::io::Result<TlsStream<IO, ClientConnection>>
    where
        IO: AsyncReadRent + AsyncWriteRent,
    {
        let session = ClientConnection::new(Arc::clone(&self.config), name).map_err(std::io::Error::other)?;
        let mut stream = TlsStream::new(io, session, true);
        stream.handshake().await?;
        Ok(stream)
    }
}

impl PartialEq for Connector {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

impl Eq for Connector {}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsConfigError> {
    let path = match ca {
        Some(path) => path,
        None => match SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
            Some(path) => path,
            None => return Err(TlsConfigError::new(
                "ca",
                "no CA file is given and the host has no CA bundle (install ca-certificates, or set `ca`)",
            )),
        },
    };
    load_roots(path, "ca")
}

/// `insecure_skip_verify`: takes any certificate, still checks that the
/// handshake's signatures are sound.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
