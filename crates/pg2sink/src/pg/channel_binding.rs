//! SCRAM channel binding (`channel_binding`, `PGCHANNELBINDING`), as libpq:
//! the `tls-server-end-point` data of RFC 5929 (a hash of the server's
//! certificate) that ties a SCRAM-SHA-256-PLUS login to the TLS session, so
//! a man in the middle holding another certificate cannot relay it. Also the
//! TLS connector of the query connections (tokio-postgres), which hands
//! tokio-postgres that data.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ring::digest;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// libpq's channel_binding values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChannelBindingMode {
    /// Never use channel binding.
    Disable,
    /// Use it when the server offers SCRAM-SHA-256-PLUS over TLS.
    #[default]
    Prefer,
    /// Refuse to log in without it: only SCRAM-SHA-256-PLUS over TLS.
    Require,
}

impl ChannelBindingMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBindingMode::Disable => "disable",
            ChannelBindingMode::Prefer => "prefer",
            ChannelBindingMode::Require => "require",
        }
    }

    /// Parses a libpq value; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        [
            ChannelBindingMode::Disable,
            ChannelBindingMode::Prefer,
            ChannelBindingMode::Require,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == value)
    }

    /// tokio-postgres's equivalent.
    pub(crate) fn for_tokio_postgres(self) -> tokio_postgres::config::ChannelBinding {
        match self {
            ChannelBindingMode::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBindingMode::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBindingMode::Require => tokio_postgres::config::ChannelBinding::Require,
        }
    }
}

impl fmt::Display for ChannelBindingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `tls-server-end-point` channel-binding data of a server certificate
/// (DER): its hash with the hash function of its signature algorithm, SHA-256
/// when that is MD5 or SHA-1 (RFC 5929, section 4.1), as the Postgres server
/// computes it. `None` when the certificate cannot be parsed or its
/// signature algorithm names no hash (Ed25519, Ed448) or one not handled
/// (SHA-224): no channel binding is possible then.
pub(crate) fn tls_server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    let algorithm = signature_hash(certificate)?;
    Some(digest::digest(algorithm, certificate).as_ref().to_vec())
}

/// One DER element: (tag, contents, the rest after it). Never panics.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0_usize, |len, byte| (len << 8) | usize::from(*byte));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
/// `[0]` constructed, context-specific (RSASSA-PSS-params' hashAlgorithm).
const CONTEXT_0: u8 = 0xa0;

// Signature algorithm OIDs (DER contents).
const MD5_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
const SHA1_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const ECDSA_WITH_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const ECDSA_WITH_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_WITH_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_WITH_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
const DSA_WITH_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
const DSA_WITH_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02];
// Hash OIDs (in RSASSA-PSS parameters).
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

/// The hash for the certificate's `signatureAlgorithm` (the one after the
/// TBSCertificate, which is what was actually signed with).
fn signature_hash(certificate: &[u8]) -> Option<&'static digest::Algorithm> {
    let (tag, certificate, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_tbs_tag, _tbs, rest) = der_element(certificate)?;
    let (tag, algorithm, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, parameters) = der_element(algorithm)?;
    if tag != OID {
        return None;
    }
    match oid {
        MD5_WITH_RSA | SHA1_WITH_RSA | SHA256_WITH_RSA | ECDSA_WITH_SHA1 | ECDSA_WITH_SHA256
        | DSA_WITH_SHA1 | DSA_WITH_SHA256 => Some(&digest::SHA256),
        SHA384_WITH_RSA | ECDSA_WITH_SHA384 => Some(&digest::SHA384),
        SHA512_WITH_RSA | ECDSA_WITH_SHA512 => Some(&digest::SHA512),
        RSASSA_PSS => pss_hash(parameters),
        _ => None,
    }
}

/// RSASSA-PSS-params: `hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1`.
fn pss_hash(parameters: &[u8]) -> Option<&'static digest::Algorithm> {
    let (tag, parameters, _) = der_element(parameters)?;
    if tag != SEQUENCE {
        return None;
    }
    let hash_oid = match der_element(parameters) {
        Some((CONTEXT_0, explicit, _)) => {
            let (tag, identifier, _) = der_element(explicit)?;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, _) = der_element(identifier)?;
            if tag != OID {
                return None;
            }
            oid
        }
        _ => SHA1,
    };
    match hash_oid {
        SHA1 | SHA256 => Some(&digest::SHA256),
        SHA384 => Some(&digest::SHA384),
        SHA512 => Some(&digest::SHA512),
        _ => None,
    }
}

/// The query connections' TLS connector: rustls, with the channel-binding
/// data of the server's certificate given to tokio-postgres (which
/// `tokio-postgres-rustls` 0.13 fails to compute, so SCRAM-SHA-256-PLUS was
/// never used with it).
#[derive(Clone)]
pub(crate) struct MakeTls {
    config: Arc<ClientConfig>,
}

impl MakeTls {
    pub(crate) fn new(config: ClientConfig) -> Self {
        MakeTls {
            config: Arc::new(config),
        }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = TlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TlsConnect, io::Error> {
        let server_name = ServerName::try_from(domain)
            .map(|name| name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(TlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            server_name,
        })
    }
}

/// One handshake of [`MakeTls`].
pub(crate) struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for TlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connect = self.connector.connect(self.server_name, stream);
        Box::pin(async move { connect.await.map(TlsStream) })
    }
}

/// A TLS stream of a query connection.
pub(crate) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|certificate| tls_server_end_point(certificate))
        {
            Some(data) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(data),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?}");
    }

    fn der(dir: &std::path::Path, pem: &str) -> Vec<u8> {
        let data = std::fs::read(dir.join(pem)).unwrap();
        let certificate = rustls_pemfile::certs(&mut data.as_slice())
            .next()
            .unwrap()
            .unwrap();
        certificate.to_vec()
    }

    #[test]
    fn modes_parse_as_libpq_spells_them() {
        for mode in ["disable", "prefer", "require"] {
            assert_eq!(ChannelBindingMode::parse(mode).unwrap().as_str(), mode);
        }
        assert_eq!(ChannelBindingMode::parse("Require"), None);
        assert_eq!(ChannelBindingMode::default(), ChannelBindingMode::Prefer);
    }

    /// The hash follows the signature algorithm: certificates made by
    /// openssl with each digest, checked against openssl's own digest of
    /// the DER.
    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, key, md, expected) in [
            ("ec256", "ec", "-sha256", &digest::SHA256),
            ("ec384", "ec", "-sha384", &digest::SHA384),
            ("ec1", "ec", "-sha1", &digest::SHA256),
            ("rsa512", "rsa:2048", "-sha512", &digest::SHA512),
            ("rsa1", "rsa:2048", "-sha1", &digest::SHA256),
        ] {
            let mut args = vec!["req", "-x509", "-new", "-nodes", "-newkey", key];
            if key == "ec" {
                args.extend(["-pkeyopt", "ec_paramgen_curve:prime256v1"]);
            }
            let keyout = format!("{name}.key");
            let out = format!("{name}.crt");
            args.extend([
                md, "-keyout", &keyout, "-out", &out, "-days", "2", "-subj", "/CN=x",
            ]);
            openssl(d, &args);
            let certificate = der(d, &out);
            assert_eq!(
                tls_server_end_point(&certificate).unwrap(),
                digest::digest(expected, &certificate).as_ref(),
                "{name}"
            );
        }
        // RSASSA-PSS with SHA-384 in its parameters.
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "rsa:2048",
                "-sha384",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-keyout",
                "pss.key",
                "-out",
                "pss.crt",
                "-days",
                "2",
                "-subj",
                "/CN=x",
            ],
        );
        let certificate = der(d, "pss.crt");
        assert_eq!(
            tls_server_end_point(&certificate).unwrap(),
            digest::digest(&digest::SHA384, &certificate).as_ref()
        );
        // Ed25519 names no hash: no channel binding.
        openssl(
            d,
            &[
                "req", "-x509", "-new", "-nodes", "-newkey", "ed25519", "-keyout", "ed.key",
                "-out", "ed.crt", "-days", "2", "-subj", "/CN=x",
            ],
        );
        assert_eq!(tls_server_end_point(&der(d, "ed.crt")), None);
    }

    #[test]
    fn end_point_hash_never_panics_on_garbage() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x80],
            &[0x30, 0x03, 0x30, 0x01],
            &[0x30, 0x06, 0x30, 0x00, 0x30, 0x02, 0x06, 0x00],
            &[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        ] {
            assert_eq!(tls_server_end_point(input), None, "{input:?}");
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 48) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 57)) as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = 0x30;
            }
            let _ = tls_server_end_point(&bytes);
        }
    }
}
