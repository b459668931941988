//! The files TLS to Postgres uses, found and checked as libpq does: the root
//! certificates that verify the server (`sslrootcert`, else
//! `~/.postgresql/root.crt` when it exists, or `system` for the operating
//! system's trust store) and the client certificate and key pg2sink proves
//! itself with (`sslcert`/`sslkey`, else `~/.postgresql/postgresql.crt` and
//! `postgresql.key` when the certificate exists). A key file that others may
//! read is refused, by libpq's rule.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::error::ConfigError;
use super::tls::SslMode;

/// libpq's default root certificate file, under the home directory.
pub(crate) const DEFAULT_ROOT_CERT: &str = ".postgresql/root.crt";
/// libpq's default client certificate file, under the home directory.
pub(crate) const DEFAULT_CLIENT_CERT: &str = ".postgresql/postgresql.crt";
/// libpq's default client key file, under the home directory.
pub(crate) const DEFAULT_CLIENT_KEY: &str = ".postgresql/postgresql.key";
/// The `sslrootcert` value that means "the system's trusted roots" (libpq 16+).
pub(crate) const SYSTEM_ROOTS: &str = "system";

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// Not at all (allow/prefer/require without a root certificate file).
    Unverified,
    /// Against the certificates in this PEM file.
    File(PathBuf),
    /// Against the operating system's trust store (`sslrootcert=system`).
    System,
}

/// libpq's rule (`initialize_SSL`): `system` means the OS store; a root
/// certificate file that exists is always used, whatever the sslmode (so
/// require/prefer with `~/.postgresql/root.crt` check the chain, as
/// verify-ca does); without one, verify-ca and verify-full are an error and
/// the other modes do not check the certificate. `root_cert` is the
/// resolved setting (given, or the default file if it exists);
/// `default_path` only names the default file in the error.
pub(crate) fn roots_for(
    mode: SslMode,
    root_cert: Option<&Path>,
    default_path: Option<&Path>,
) -> Result<Roots, ConfigError> {
    let verifies = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    match root_cert {
        Some(path) if path == Path::new(SYSTEM_ROOTS) => Ok(Roots::System),
        // A missing file is reported by the load (ConfigError::SslRootCert).
        Some(path) if verifies => Ok(Roots::File(path.to_owned())),
        Some(path) => {
            if fs::metadata(path).is_ok() {
                Ok(Roots::File(path.to_owned()))
            } else {
                // libpq goes on without verification here; say so.
                tracing::warn!(
                    path = %path.display(),
                    "sslrootcert file \"{}\" does not exist, so the server's certificate is not \
                     verified (sslmode={mode})",
                    path.display()
                );
                Ok(Roots::Unverified)
            }
        }
        None if verifies => Err(ConfigError::NoRootCert {
            mode,
            default_path: default_path.map(Path::to_owned),
        }),
        None => Ok(Roots::Unverified),
    }
}

/// The operating system's trusted roots (what OpenSSL's default paths give
/// libpq: the distribution bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
/// An empty store is an error: no server could be verified against it.
pub(crate) fn system_roots() -> Result<RootCertStore, ConfigError> {
    roots_from(rustls_native_certs::load_native_certs())
}

fn roots_from(found: rustls_native_certs::CertificateResult) -> Result<RootCertStore, ConfigError> {
    for error in &found.errors {
        tracing::warn!(%error, "could not read part of the system's trusted root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "system root certificates rustls cannot use");
    }
    if added == 0 {
        return Err(ConfigError::SystemRoots {
            reason: format!(
                "no usable trusted root certificate was found in the system's store{} \
                 (install the ca-certificates package, or point SSL_CERT_FILE at a PEM bundle, \
                 or give the CA's certificate file as sslrootcert)",
                match found.errors.first() {
                    Some(error) => format!(" ({error})"),
                    None => String::new(),
                }
            ),
        });
    }
    Ok(roots)
}

/// The default file `relative` under `home`, if it exists.
pub(crate) fn existing_default(home: Option<&Path>, relative: &str) -> Option<PathBuf> {
    let path = home?.join(relative);
    fs::metadata(&path).is_ok().then_some(path)
}

/// A client certificate chain and its private key, for the TLS handshake.
pub(crate) type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Loads the client certificate and key, as libpq: no certificate file, no
/// client certificate (a named file that does not exist is skipped, with a
/// warning); with a certificate, the key file must exist, be a regular
/// file and pass [`key_permissions_ok`]. PEM; the key may be PKCS#8,
/// PKCS#1 (RSA) or SEC1 (EC), not encrypted.
pub(crate) fn load_client_identity(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<ClientIdentity>, ConfigError> {
    let Some(cert) = cert else {
        return Ok(None);
    };
    let cert_error = |reason: String| ConfigError::SslCert {
        path: cert.to_owned(),
        reason,
    };
    let data = match fs::read(cert) {
        Ok(data) => data,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            tracing::warn!(
                path = %cert.display(),
                "sslcert file \"{}\" does not exist; connecting without a client certificate",
                cert.display()
            );
            return Ok(None);
        }
        Err(error) => return Err(cert_error(error.to_string())),
    };
    let chain = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("it is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_error("it contains no PEM certificate".into()));
    }

    let Some(key) = key else {
        return Err(cert_error(
            "the certificate has no private key: give its file as sslkey (or PGSSLKEY)".into(),
        ));
    };
    let key_error = |reason: String| ConfigError::SslKey {
        path: key.to_owned(),
        reason,
    };
    let metadata = fs::metadata(key).map_err(|error| {
        if error.kind() == io::ErrorKind::NotFound {
            key_error(format!(
                "the client certificate {} is there but its private key file is not: give \
                 the key's file as sslkey (or PGSSLKEY)",
                cert.display()
            ))
        } else {
            key_error(error.to_string())
        }
    })?;
    if !metadata.is_file() {
        return Err(key_error("it is not a regular file".into()));
    }
    if !key_permissions_ok(metadata.uid(), metadata.mode()) {
        return Err(key_error(format!(
            "it has group or world access (mode {:04o}); it must have permissions u=rw (0600) \
             or less if owned by the current user, or u=rw,g=r (0640) or less if owned by \
             root (chmod 0600 it)",
            metadata.mode() & 0o7777
        )));
    }
    let data = fs::read(key).map_err(|e| key_error(e.to_string()))?;
    if String::from_utf8_lossy(&data).contains("ENCRYPTED PRIVATE KEY") {
        return Err(key_error(
            "it is encrypted, which pg2sink does not support (there is no sslpassword): \
             decrypt it, e.g. `openssl pkey -in KEY -out KEY.plain`"
                .into(),
        ));
    }
    let private_key = rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| key_error(format!("it is not valid PEM: {e}")))?
        .ok_or_else(|| {
            key_error("it contains no PEM private key (PKCS#8, PKCS#1 or SEC1)".into())
        })?;
    Ok(Some((chain, private_key)))
}

/// libpq's rule for the client key file: owned by root, mode 0640 or less
/// (so a group can share a system-wide key); otherwise 0600 or less.
pub(crate) fn key_permissions_ok(uid: u32, mode: u32) -> bool {
    if uid == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_permissions_follow_libpq() {
        for (uid, mode, ok) in [
            (1000, 0o600, true),
            (1000, 0o400, true),
            (1000, 0o640, false),
            (1000, 0o604, false),
            (1000, 0o700, true),
            (0, 0o600, true),
            (0, 0o640, true),
            (0, 0o440, true),
            (0, 0o660, false),
            (0, 0o650, false),
            (0, 0o644, false),
            (0, 0o604, false),
        ] {
            assert_eq!(
                key_permissions_ok(uid, 0o100_000 | mode),
                ok,
                "uid {uid} mode {mode:o}"
            );
        }
    }

    #[test]
    fn roots_follow_libpq() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("root.crt");
        std::fs::write(&file, "x").unwrap();
        let absent = dir.path().join("absent.crt");
        let system = Path::new(SYSTEM_ROOTS);
        for mode in [SslMode::Allow, SslMode::Prefer, SslMode::Require] {
            assert_eq!(roots_for(mode, None, None).unwrap(), Roots::Unverified);
            assert_eq!(
                roots_for(mode, Some(&file), None).unwrap(),
                Roots::File(file.clone())
            );
            assert_eq!(
                roots_for(mode, Some(&absent), None).unwrap(),
                Roots::Unverified
            );
        }
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = roots_for(mode, None, Some(&absent)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("absent.crt"), "{text}");
            assert!(text.contains("sslrootcert=system"), "{text}");
            assert_eq!(
                roots_for(mode, Some(&absent), None).unwrap(),
                Roots::File(absent.clone())
            );
        }
        assert_eq!(
            roots_for(SslMode::VerifyFull, Some(system), None).unwrap(),
            Roots::System
        );
    }

    /// A certificate and keys in every format, made with the openssl CLI.
    fn openssl(dir: &Path, args: &[&str]) {
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

    #[test]
    fn client_identity_formats_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-keyout",
                "ec.key",
                "-out",
                "ec.crt",
                "-days",
                "2",
                "-subj",
                "/CN=client",
            ],
        );
        openssl(d, &["ec", "-in", "ec.key", "-out", "ec-sec1.key"]);
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "rsa:2048",
                "-keyout",
                "rsa.key",
                "-out",
                "rsa.crt",
                "-days",
                "2",
                "-subj",
                "/CN=client",
            ],
        );
        openssl(
            d,
            &[
                "rsa",
                "-in",
                "rsa.key",
                "-traditional",
                "-out",
                "rsa-pkcs1.key",
            ],
        );
        let set_mode = |name: &str, mode: u32| {
            std::fs::set_permissions(d.join(name), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let load =
            |cert: &str, key: &str| load_client_identity(Some(&d.join(cert)), Some(&d.join(key)));
        for (cert, key, header) in [
            ("ec.crt", "ec.key", "BEGIN PRIVATE KEY"),
            ("ec.crt", "ec-sec1.key", "BEGIN EC PRIVATE KEY"),
            ("rsa.crt", "rsa.key", "BEGIN PRIVATE KEY"),
            ("rsa.crt", "rsa-pkcs1.key", "BEGIN RSA PRIVATE KEY"),
        ] {
            let text = std::fs::read_to_string(d.join(key)).unwrap();
            assert!(text.contains(header), "{key}: {text}");
            set_mode(key, 0o600);
            let (chain, _) = load(cert, key).unwrap().unwrap();
            assert_eq!(chain.len(), 1);
        }

        // No certificate: no identity, whatever the key.
        assert!(load_client_identity(None, Some(&d.join("nope")))
            .unwrap()
            .is_none());
        assert!(load("absent.crt", "ec.key").unwrap().is_none());
        // A certificate without its key.
        let err = load("ec.crt", "absent.key").unwrap_err();
        assert!(err.to_string().contains("sslkey"), "{err}");
        let err = load_client_identity(Some(&d.join("ec.crt")), None).unwrap_err();
        assert!(err.to_string().contains("sslkey"), "{err}");
        // Permissions: group-readable is refused (the tests may run as root,
        // where 0640 is allowed, so use 0644).
        set_mode("ec.key", 0o644);
        let err = load("ec.crt", "ec.key").unwrap_err();
        assert!(err.to_string().contains("group or world access"), "{err}");
        set_mode("ec.key", 0o600);
        // Not PEM.
        std::fs::write(d.join("junk.crt"), "junk").unwrap();
        let err = load("junk.crt", "ec.key").unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::write(d.join("junk.key"), "junk").unwrap();
        set_mode("junk.key", 0o600);
        let err = load("ec.crt", "junk.key").unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
        // Encrypted keys are refused with advice.
        openssl(
            d,
            &[
                "pkcs8", "-topk8", "-in", "ec.key", "-out", "enc.key", "-passout", "pass:x",
            ],
        );
        set_mode("enc.key", 0o600);
        let err = load("ec.crt", "enc.key").unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        // A directory as the key.
        std::fs::create_dir(d.join("dir.key")).unwrap();
        let err = load("ec.crt", "dir.key").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn system_roots_come_from_the_os_store_and_an_empty_one_is_an_error() {
        // Any machine running the tests has a CA bundle (ca-certificates).
        assert!(!system_roots().unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = roots_from(rustls_native_certs::load_certs_from_paths(
            Some(&empty),
            None,
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sslrootcert=system"), "{text}");
        assert!(text.contains("SSL_CERT_FILE"), "{text}");
        let err = roots_from(rustls_native_certs::load_certs_from_paths(
            Some(&dir.path().join("absent.pem")),
            None,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("no usable trusted root"), "{err}");
    }

    #[test]
    fn default_files_only_when_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(existing_default(Some(dir.path()), DEFAULT_ROOT_CERT), None);
        std::fs::create_dir(dir.path().join(".postgresql")).unwrap();
        std::fs::write(dir.path().join(DEFAULT_ROOT_CERT), "x").unwrap();
        assert_eq!(
            existing_default(Some(dir.path()), DEFAULT_ROOT_CERT),
            Some(dir.path().join(DEFAULT_ROOT_CERT))
        );
        assert_eq!(existing_default(None, DEFAULT_ROOT_CERT), None);
    }
}
