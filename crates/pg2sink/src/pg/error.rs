//! Every error of talking to Postgres, and the one SQLSTATE classification
//! of the program: whether a server error may pass if tried again
//! (transient) or will come back the same (definite), for the walsender
//! connection, the query connections of the source and the Postgres sink
//! alike. The settings' errors (`ConfigError`), the connection's
//! (`ConnectError`) and the server's own words (`ServerError`) live here, so
//! the other files of `pg` share them without importing each other.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

use super::tls::SslMode;

/// Whether an error with this SQLSTATE may pass if tried again, after a
/// back-off, on the same or a new connection. One table for the whole
/// program; callers add what they know beyond the code (a broken
/// connection without a SQLSTATE, a login refused).
///
/// Three copies of this once disagreed (the query errors of the source, the
/// walsender connection, the Postgres sink). What was decided, and why:
/// - class 08 (connection exceptions): transient everywhere;
/// - 40000 transaction_rollback, 40001 serialization_failure, 40P01
///   deadlock_detected and 40003 statement_completion_unknown: transient
///   (the sink retried them all, the source's query connections 40001 and
///   40P01; the walsender never sees them). 40002 transaction_integrity_constraint_violation is a deferred
///   constraint failing at commit: the same commit fails again, so definite
///   (the sink used to retry the whole class 40);
/// - class 53 (insufficient resources): disk full, out of memory and too
///   many connections may pass when the server recovers, so transient; but
///   53400 configuration_limit_exceeded (e.g. every replication slot in use)
///   stays until someone changes the configuration, so definite (the sink
///   used to retry the whole class);
/// - class 57 (operator intervention): shutdowns (57P01-57P03), a cancelled
///   query (57014), 57000 and 57P05 idle_session_timeout pass on a new
///   connection: transient (the walsender used to stop on 57014, 57000 and
///   57P05); 57P04 database_dropped does not come back: definite (the source
///   used to retry every 57P code);
/// - class 58 (system errors outside Postgres): 58000 and 58030 io_error may
///   pass (a full or failing disk being fixed): transient, as the sink did;
///   58P01 undefined_file and 58P02 duplicate_file are an installation
///   problem (a missing library), definite;
/// - anything else (privileges, syntax, data, XX internal errors) is
///   definite: the same statement fails the same way.
pub fn sqlstate_is_transient(code: &str) -> bool {
    match code.get(..2) {
        Some("08") => true,
        Some("40") => matches!(code, "40000" | "40001" | "40003" | "40P01"),
        Some("53") => code != "53400",
        Some("57") => code != "57P04",
        Some("58") => matches!(code, "58000" | "58030"),
        _ => false,
    }
}

/// Whether a tokio-postgres error may pass if tried again: by SQLSTATE when
/// the server sent one; otherwise the connection broke (or closed), and a
/// new one may work.
pub fn query_error_is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => sqlstate_is_transient(db.code().code()),
        None => e.is_closed() || StdError::source(e).is_some(),
    }
}

/// The server's words in a tokio-postgres error, which prints only
/// "db error": `message (SQLSTATE code); detail: ...; hint: ...`.
pub fn describe_query_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => e.to_string(),
    }
}

/// A boxed error that can cross threads, used to keep causes attached.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `postgres://` URL is malformed.
    #[error("invalid connection URL: {reason}")]
    BadUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// The `key=value` connection string is malformed.
    #[error("invalid connection string: {reason}")]
    BadConnString {
        /// What is wrong with it.
        reason: String,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("invalid port {value:?} (from {origin}): expected a number from 1 to 65535")]
    BadPort {
        /// The value given.
        value: String,
        /// Where it came from (the URL or an environment variable).
        origin: &'static str,
    },
    /// An sslmode libpq does not know.
    #[error(
        "invalid sslmode {value:?} (from {origin}): valid values are disable, allow, prefer, \
         require, verify-ca, verify-full"
    )]
    BadSslMode {
        /// The value given.
        value: String,
        /// Where it came from.
        origin: &'static str,
    },
    /// Any other setting with an unusable value.
    #[error("invalid {key} {value:?} (from {origin}): {reason}")]
    BadValue {
        /// The setting's name.
        key: &'static str,
        /// The value given.
        value: String,
        /// Where it came from.
        origin: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The `sslrootcert` file cannot be read or holds no certificate.
    #[error("cannot use the sslrootcert file {}: {source}", path.display())]
    SslRootCert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No user given anywhere and the OS user is unknown.
    #[error("could not determine the database user: give it in --url or set PGUSER")]
    NoUser,
    /// sslmode verify-ca/verify-full without a root certificate (libpq's rule).
    #[error(
        "sslmode={mode} verifies the server's certificate, but no sslrootcert was given{}: \
         point sslrootcert (or PGSSLROOTCERT) at the certificate of the CA that signed the \
         server's, use sslrootcert=system for the system's trusted roots, or use sslmode=require \
         (encrypted, not verified)",
        match default_path {
            Some(path) => format!(" and {} does not exist", path.display()),
            None => String::new(),
        }
    )]
    NoRootCert {
        /// The sslmode that needs it.
        mode: SslMode,
        /// The default file that was looked for (`~/.postgresql/root.crt`).
        default_path: Option<PathBuf>,
    },
    /// `sslrootcert=system` and the system's trust store is unusable.
    #[error("sslrootcert=system: {reason}")]
    SystemRoots {
        /// What is wrong and what to do.
        reason: String,
    },
    /// The client certificate file (`sslcert`) is unusable.
    #[error("cannot use the client certificate file {} (sslcert): {reason}", path.display())]
    SslCert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client key file (`sslkey`) is unusable.
    #[error("cannot use the client key file {} (sslkey): {reason}", path.display())]
    SslKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Why a connection could not be made (or broke).
///
/// The `Display` text of each variant is complete on its own (it includes the
/// cause); the cause is also attached as [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TCP or Unix-socket connection could not be established.
    #[error(
        "could not connect to the server at {target}: {source} (is the server running and \
         accepting connections there? check --url / PGHOST / PGPORT)"
    )]
    Unreachable {
        /// `host:port` or the socket path.
        target: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server rejected the credentials (or has no pg_hba.conf entry for us).
    #[error("authentication failed for user \"{user}\": {source}{}", auth_hint(.source))]
    Auth {
        /// The user we tried to log in as.
        user: String,
        /// The server's error (a [`ServerError`]) or a client-side reason.
        #[source]
        source: BoxError,
    },
    /// The TLS handshake or the certificate verification failed, or the
    /// server refused TLS while the sslmode requires it.
    #[error("TLS with the server at {target} failed: {source}{}", tls_hint(.source))]
    Tls {
        /// `host:port`.
        target: String,
        /// The TLS library's error.
        #[source]
        source: BoxError,
    },
    /// Any other error the server reported.
    #[error("{0}")]
    Server(ServerError),
    /// The server sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Reading from or writing to the connection failed.
    #[error("I/O error on the connection to the server: {0}")]
    Io(#[source] io::Error),
}

impl ConnectError {
    /// Whether retrying later may succeed: the server was unreachable, the
    /// connection broke, or the server reported an error that
    /// [`sqlstate_is_transient`] says may pass.
    /// Authentication, TLS, configuration and protocol errors are definite.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. } | ConnectError::Io(_) => true,
            ConnectError::Server(error) => error.is_transient(),
            ConnectError::Config(_)
            | ConnectError::Auth { .. }
            | ConnectError::Tls { .. }
            | ConnectError::Protocol(_) => false,
        }
    }

    /// Whether, with several hosts, the next one is tried (as libpq does
    /// for anything short of the server refusing the login itself).
    pub fn tries_next_host(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. } | ConnectError::Io(_) | ConnectError::Tls { .. } => {
                true
            }
            ConnectError::Server(error) => error.is_transient(),
            ConnectError::Config(_) | ConnectError::Auth { .. } | ConnectError::Protocol(_) => {
                false
            }
        }
    }

    /// The server's error, if the server reported one (also for `Auth`).
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ConnectError::Server(error) => Some(error),
            ConnectError::Auth { source, .. } => source.downcast_ref::<ServerError>(),
            _ => None,
        }
    }

    /// The SQLSTATE of the server's error, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        self.server_error().map(|error| error.code.as_str())
    }

    /// Classifies an ErrorResponse received while logging in or later:
    /// invalid password (28P01) and invalid authorization (28000, e.g. no
    /// pg_hba.conf entry) become `Auth`, anything else `Server`.
    pub(crate) fn from_server(error: ServerError, user: &str) -> Self {
        match error.code.as_str() {
            "28P01" | "28000" => ConnectError::Auth {
                user: user.to_owned(),
                source: Box::new(error),
            },
            _ => ConnectError::Server(error),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(error: io::Error) -> Self {
        ConnectError::Io(error)
    }
}

/// What to do about a refused login: a missing client certificate (cert
/// authentication), channel binding, or else the password and pg_hba.conf.
fn auth_hint(source: &BoxError) -> &'static str {
    let text = source.to_string();
    if text.contains("client certificate") {
        " (the server wants a client certificate signed by a CA it trusts, whose common name \
         is the user: give it with sslcert and sslkey in --url, or PGSSLCERT and PGSSLKEY, or \
         put it in ~/.postgresql/postgresql.crt and postgresql.key)"
    } else if text.contains("channel binding") {
        " (channel_binding=require needs SCRAM-SHA-256 authentication (pg_hba.conf method \
         scram-sha-256, a SCRAM password) over TLS; or use channel_binding=prefer)"
    } else {
        " (check the password in --url, PGPASSWORD or the password file, and the server's \
         pg_hba.conf)"
    }
}

/// What to do about the certificate checks that fail most often, which
/// rustls names tersely.
fn tls_hint(source: &BoxError) -> &'static str {
    let text = source.to_string();
    if text.contains("UnknownCA")
        || text.contains("BadCertificate")
        || text.contains("CertificateRequired")
    {
        " (the server refused pg2sink's client certificate: it must be signed by a CA in the \
         server's ssl_ca_file; check sslcert/sslkey or PGSSLCERT/PGSSLKEY)"
    } else if text.contains("UnknownIssuer") {
        " (the server's certificate was not signed by a CA in sslrootcert: point sslrootcert or PGSSLROOTCERT at the CA that signed it)"
    } else if text.contains("not valid for name") {
        " (connect with a host name the certificate lists, or use sslmode=verify-ca, which checks the chain but not the name)"
    } else if text.contains("xpired") || text.contains("NotValidYet") {
        " (the server's certificate is outside its validity period: renew it, or check the clocks)"
    } else {
        ""
    }
}

pub(crate) fn into_io_error(error: tokio_postgres::Error) -> io::Error {
    let text = error.to_string();
    match error.into_source() {
        Some(source) => match source.downcast::<io::Error>() {
            Ok(io_error) => *io_error,
            Err(other) => io::Error::other(other),
        },
        None => io::Error::other(text),
    }
}

/// `error: cause: cause's cause ...`
pub(crate) fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// A server ErrorResponse, in PostgreSQL's primary/detail/hint shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC` (the non-localized one when the server sends it).
    pub severity: String,
    /// The SQLSTATE.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The optional detail.
    pub detail: Option<String>,
    /// The optional hint.
    pub hint: Option<String>,
}

impl ServerError {
    /// Whether this error may pass if tried again ([`sqlstate_is_transient`]).
    pub fn is_transient(&self) -> bool {
        sqlstate_is_transient(&self.code)
    }

    /// The same shape from a tokio-postgres error.
    pub fn from_db_error(error: &tokio_postgres::error::DbError) -> Self {
        ServerError {
            severity: error.severity().to_owned(),
            code: error.code().code().to_owned(),
            message: error.message().to_owned(),
            detail: error.detail().map(str::to_owned),
            hint: error.hint().map(str::to_owned),
        }
    }

    pub(crate) fn from_fields(mut fields: ErrorFields<'_>) -> Result<Self, ConnectError> {
        let mut error = ServerError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        let mut non_localized_severity = None;
        while let Some(field) = fields.next().map_err(|e| {
            ConnectError::Protocol(format!("malformed error or notice from the server: {e}"))
        })? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => error.severity = value,
                b'V' => non_localized_severity = Some(value),
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        if let Some(severity) = non_localized_severity {
            error.severity = severity;
        }
        Ok(error)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "\nDETAIL: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one table: SQLSTATE, transient?
    const TABLE: &[(&str, bool)] = &[
        ("08000", true),
        ("08001", true),
        ("08006", true),
        ("08P01", true),
        ("40000", true),
        ("40001", true),
        ("40002", false),
        ("40003", true),
        ("40P01", true),
        ("53000", true),
        ("53100", true),
        ("53200", true),
        ("53300", true),
        ("53400", false),
        ("57000", true),
        ("57014", true),
        ("57P01", true),
        ("57P02", true),
        ("57P03", true),
        ("57P04", false),
        ("57P05", true),
        ("58000", true),
        ("58030", true),
        ("58P01", false),
        ("58P02", false),
        ("22P02", false),
        ("23505", false),
        ("25006", false),
        ("28000", false),
        ("28P01", false),
        ("3D000", false),
        ("42501", false),
        ("42704", false),
        ("42P10", false),
        ("55000", false),
        ("55006", false),
        ("XX000", false),
        ("XX001", false),
        ("", false),
        ("0", false),
        ("é", false),
    ];

    #[test]
    fn sqlstates_split_into_transient_and_definite() {
        for &(code, transient) in TABLE {
            assert_eq!(sqlstate_is_transient(code), transient, "{code}");
            let error = ServerError {
                severity: "ERROR".into(),
                code: code.into(),
                message: "m".into(),
                detail: None,
                hint: None,
            };
            assert_eq!(error.is_transient(), transient, "{code}");
        }
    }
}
