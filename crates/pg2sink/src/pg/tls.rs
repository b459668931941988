//! TLS to Postgres as libpq does it: the `sslmode` values, the root
//! certificates of `sslrootcert`, and the two ways a server's certificate is
//! checked (not at all for `allow`/`prefer`/`require` without a root
//! certificate, the chain and, for `verify-full`, the name otherwise). The
//! files are found in `tls_files`; the per-connection `ClientConfig` is
//! built by `ConnectionConfig::tls_config` from these parts.

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::error::ConfigError;

/// libpq's sslmode values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Treated like [`SslMode::Prefer`].
    Allow,
    /// TLS if the server offers it (no certificate checks), else plaintext.
    #[default]
    Prefer,
    /// TLS, no certificate checks (unless `sslrootcert` is given: then as `VerifyCa`).
    Require,
    /// TLS, the certificate chain must lead to a trusted root; the host name is not checked.
    VerifyCa,
    /// TLS, chain and host name are checked.
    VerifyFull,
}

impl SslMode {
    /// Every mode, in libpq's order from weakest to strongest.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The libpq spelling (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server that refuses TLS is acceptable (plaintext fallback).
    pub fn allows_plaintext(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Allow | SslMode::Prefer)
    }

    pub(super) fn parse(value: &str, origin: &'static str) -> Result<Self, ConfigError> {
        SslMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == value)
            .ok_or_else(|| ConfigError::BadSslMode {
                value: value.to_owned(),
                origin,
            })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SslMode::parse(s, "sslmode")
    }
}

/// Reads a PEM file of root certificates.
pub(super) fn load_root_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let cert_error = |source: io::Error| ConfigError::SslRootCert {
        path: path.to_owned(),
        source,
    };
    let data = std::fs::read(path).map_err(cert_error)?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;
    if certs.is_empty() {
        return Err(cert_error(io::Error::new(
            io::ErrorKind::InvalidData,
            "it contains no PEM certificate",
        )));
    }
    Ok(certs)
}

/// sslmode allow/prefer/require without a root certificate: encryption
/// without authentication of the server, as libpq. Handshake signatures are
/// still checked.
#[derive(Debug)]
pub(super) struct NoVerification {
    pub(super) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// verify-ca / verify-full (and require with a root certificate): the
/// WebPKI chain check, with two libpq/OpenSSL behaviours added:
/// verify-ca ignores a host name mismatch, and a server certificate that is
/// itself listed in the sslrootcert file is trusted as is (a self-signed
/// certificate that is its own root, which WebPKI rejects when it is marked
/// as a CA); for verify-full its names are still checked.
#[derive(Debug)]
pub(super) struct PgCertVerifier {
    pub(super) inner: Arc<WebPkiServerVerifier>,
    pub(super) check_name: bool,
    pub(super) pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PgCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            Err(error) => {
                if !self
                    .pinned
                    .iter()
                    .any(|pinned| pinned.as_ref() == end_entity.as_ref())
                {
                    return Err(error);
                }
                if self.check_name {
                    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                    rustls::client::verify_server_name(&parsed, server_name)?;
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
