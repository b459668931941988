//! Where to connect, following libpq's conventions: a `postgres://` URL or a
//! `key=value` string, then the standard `PG*` environment variables, then
//! libpq's defaults. Also the TLS configuration of a connection (from the
//! parts in `tls` and `tls_files`) and the two kinds of connection pg2sink
//! opens (an ordinary query connection and a walsender connection in logical
//! replication mode, `pg::replication`).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::channel_binding::{ChannelBindingMode, MakeTls};
use super::error::{error_chain, into_io_error, BoxError, ConfigError, ConnectError, ServerError};
use super::pgpass;
use super::tls::SslMode;
use super::tls::{load_root_certs, NoVerification, PgCertVerifier};
use super::tls_files::{self, Roots, SYSTEM_ROOTS};
use crate::pg::socket::{Silence, Socket, TcpSettings};

/// Session settings of every query connection: the same as the replication
/// connection's startup parameters (`pg::replication`), so a value reads
/// the same through either and `model::value` can render it.
const QUERY_SESSION_OPTIONS: &str =
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=1 -c bytea_output=hex";

const DEFAULT_PORT: u16 = 5432;
/// The default of `--silence-timeout` (see [`ConnectionConfig::silence_timeout`]).
pub const DEFAULT_SILENCE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_APPLICATION_NAME: &str = "pg2sink";
/// Where Debian's (and most distributions') libpq looks for the server socket.
const DEBIAN_SOCKET_DIR: &str = "/var/run/postgresql";
/// libpq's compiled-in default socket directory.
const FALLBACK_SOCKET_DIR: &str = "/tmp";

/// The parameter names accepted in a URL's query or a `key=value` string.
const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "passfile",
    "sslcert",
    "sslkey",
    "channel_binding",
];

/// Where and how to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// A TCP host name or IP address, or a Unix-socket directory if it starts with `/`.
    pub host: String,
    /// The IP address to connect to instead of looking `host` up (libpq's
    /// `hostaddr`); `host` is then only the name the certificate is checked
    /// against.
    pub hostaddr: Option<IpAddr>,
    /// The TCP port, also the number in the Unix socket's file name.
    pub port: u16,
    /// The database user.
    pub user: String,
    /// The password, if any (never shown by `describe` or `Debug`).
    pub password: Option<crate::secret::Secret>,
    /// The database.
    pub dbname: String,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// PEM file with the trusted root certificate(s), or `system` for the
    /// built-in (Mozilla) roots.
    pub ssl_root_cert: Option<PathBuf>,
    /// Shown in `pg_stat_activity` / `pg_stat_replication`.
    pub application_name: String,
    /// Limit for establishing a connection (libpq's `connect_timeout`); `None` waits indefinitely.
    pub connect_timeout: Option<Duration>,
    /// The password file consulted when no password is given (`passfile`,
    /// PGPASSFILE, else `~/.pgpass`); read at each connection, as libpq.
    pub passfile: Option<PathBuf>,
    /// The client certificate (PEM) sent when the server asks for one:
    /// `sslcert`, PGSSLCERT, else `~/.postgresql/postgresql.crt` if it exists.
    pub ssl_cert: Option<PathBuf>,
    /// The client certificate's private key: `sslkey`, PGSSLKEY, else
    /// `~/.postgresql/postgresql.key`.
    pub ssl_key: Option<PathBuf>,
    /// SCRAM channel binding policy (`channel_binding`, PGCHANNELBINDING).
    pub channel_binding: ChannelBindingMode,
    /// Every host to try, in order (libpq's comma-separated `host`, `hostaddr`
    /// and `port`); `host`, `hostaddr` and `port` above are the first.
    pub hosts: Vec<Endpoint>,
    /// Which server of `hosts` is acceptable (libpq's `target_session_attrs`).
    pub target_session_attrs: TargetSessionAttrs,
    /// Keepalives and `TCP_USER_TIMEOUT` of every TCP socket.
    pub tcp: TcpSettings,
    /// How long a query connection that sent a request may hear nothing
    /// before it is taken for dead (`--silence-timeout`); `None`: no bound.
    pub silence_timeout: Option<Duration>,
}

/// One server to try: a host name, IP address or socket directory, with
/// the address to use instead of looking the name up, and the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

/// libpq's `target_session_attrs`. pg2sink writes (its schema, the
/// publication, the slot), so only the values that can pick a primary are
/// accepted; the others are refused when the settings are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// The first server that accepts the connection.
    #[default]
    Any,
    /// A server whose sessions are read-write by default.
    ReadWrite,
    /// A server not in recovery.
    Primary,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::Primary => "primary",
        }
    }

    fn parse(value: &str, origin: &'static str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::BadValue {
            key: "target_session_attrs",
            value: value.to_owned(),
            origin,
            reason: reason.into(),
        };
        match value {
            "any" => Ok(TargetSessionAttrs::Any),
            "read-write" => Ok(TargetSessionAttrs::ReadWrite),
            "primary" => Ok(TargetSessionAttrs::Primary),
            "read-only" | "standby" | "prefer-standby" => Err(bad(
                "pg2sink writes to the source (its schema, the publication, the slot), so it needs a primary: use any, read-write or primary",
            )),
            _ => Err(bad("expected any, read-write or primary")),
        }
    }

    /// The query that tells whether a server is acceptable, as libpq asks it.
    pub(super) fn check_sql(self) -> Option<&'static str> {
        match self {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite => {
                Some("select current_setting('transaction_read_only') = 'off'")
            }
            TargetSessionAttrs::Primary => Some("select not pg_is_in_recovery()"),
        }
    }
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("hosts", &self.hosts)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("tcp", &self.tcp)
            .field("silence_timeout", &self.silence_timeout)
            .field("passfile", &self.passfile)
            .field("ssl_cert", &self.ssl_cert)
            .field("ssl_key", &self.ssl_key)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

/// The settings one source (URL or key=value string) gave, by canonical key.
struct Given {
    values: HashMap<&'static str, String>,
    origin: &'static str,
}

impl ConnectionConfig {
    /// Resolves the settings: `url` (from --url / PG2SINK_URL) is a
    /// `postgres://` or `postgresql://` URL or a libpq `key=value` string.
    /// What it leaves out comes from PGHOST, PGHOSTADDR, PGPORT, PGUSER, PGPASSWORD,
    /// PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGAPPNAME and PGCONNECT_TIMEOUT
    /// (looked up with `env`), then libpq's defaults: the socket directory
    /// /var/run/postgresql if it exists, else /tmp; port 5432; the OS user
    /// ($USER or the passwd entry of the process's uid); dbname = user;
    /// sslmode prefer. Empty values count as absent, as in libpq.
    pub fn resolve(
        url: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let given = match url {
            Some(text) => parse_connection_string(text)?,
            None => Given {
                values: HashMap::new(),
                origin: "the connection URL",
            },
        };
        let pick = |key: &str, var: &'static str| -> Option<(String, &'static str)> {
            given
                .values
                .get(key)
                .filter(|value| !value.is_empty())
                .map(|value| (value.clone(), given.origin))
                .or_else(|| {
                    env(var)
                        .filter(|value| !value.is_empty())
                        .map(|value| (value, var))
                })
        };
        // Settings libpq reads from the connection string only (it has no
        // environment variable for them).
        let given_only = |key: &str| -> Option<(String, &'static str)> {
            given
                .values
                .get(key)
                .filter(|value| !value.is_empty())
                .map(|value| (value.clone(), given.origin))
        };

        // libpq's lists: several hosts, each with its own address and port
        // (one port or address may stand for all).
        let hosts: Vec<String> = match pick("host", "PGHOST") {
            Some((host, _)) => host.split(',').map(|h| h.trim().to_owned()).collect(),
            None => vec![default_socket_dir().to_owned()],
        };
        let hosts: Vec<String> = hosts
            .into_iter()
            .map(|h| {
                if h.is_empty() {
                    default_socket_dir().to_owned()
                } else {
                    h
                }
            })
            .collect();
        let list = |key: &'static str,
                    var: &'static str|
         -> Result<Vec<Option<(String, &'static str)>>, ConfigError> {
            let Some((value, origin)) = pick(key, var) else {
                return Ok(vec![None; hosts.len()]);
            };
            let items: Vec<Option<(String, &'static str)>> = value
                .split(',')
                .map(|item| {
                    let item = item.trim();
                    (!item.is_empty()).then(|| (item.to_owned(), origin))
                })
                .collect();
            match items.len() {
                1 => Ok(vec![items[0].clone(); hosts.len()]),
                n if n == hosts.len() => Ok(items),
                n => Err(ConfigError::BadValue {
                    key,
                    value,
                    origin,
                    reason: format!(
                        "{n} values for {} hosts: give one, or one per host",
                        hosts.len()
                    ),
                }),
            }
        };
        let ports = list("port", "PGPORT")?;
        let hostaddrs = list("hostaddr", "PGHOSTADDR")?;
        let mut endpoints = Vec::with_capacity(hosts.len());
        for ((host, port), hostaddr) in hosts.iter().zip(ports).zip(hostaddrs) {
            let port = match port {
                Some((value, origin)) => parse_port(&value, origin)?,
                None => DEFAULT_PORT,
            };
            let hostaddr = match hostaddr {
                Some((value, origin)) => {
                    Some(value.parse::<IpAddr>().map_err(|_| ConfigError::BadValue {
                        key: "hostaddr",
                        value,
                        origin,
                        reason: "not an IP address".into(),
                    })?)
                }
                None => None,
            };
            endpoints.push(Endpoint {
                host: host.clone(),
                hostaddr,
                port,
            });
        }
        let Endpoint {
            host,
            hostaddr,
            port,
        } = endpoints[0].clone();
        let target_session_attrs = match pick("target_session_attrs", "PGTARGETSESSIONATTRS") {
            Some((value, origin)) => TargetSessionAttrs::parse(&value, origin)?,
            None => TargetSessionAttrs::default(),
        };
        // With several hosts, "any" could land on a standby after a
        // failover; pg2sink writes and its slot and HA lock live on the
        // primary, so it always looks for the primary there.
        let target_session_attrs = match target_session_attrs {
            TargetSessionAttrs::Any if endpoints.len() > 1 => TargetSessionAttrs::Primary,
            other => other,
        };
        let mut tcp = TcpSettings::default();
        if let Some((value, origin)) = given_only("keepalives") {
            tcp.keepalives = parse_whole("keepalives", &value, origin)? != 0;
        }
        if let Some((value, origin)) = given_only("keepalives_idle") {
            tcp.idle = Duration::from_secs(parse_whole("keepalives_idle", &value, origin)?.max(1));
        }
        if let Some((value, origin)) = given_only("keepalives_interval") {
            tcp.interval =
                Duration::from_secs(parse_whole("keepalives_interval", &value, origin)?.max(1));
        }
        if let Some((value, origin)) = given_only("keepalives_count") {
            tcp.count = parse_whole("keepalives_count", &value, origin)?.clamp(1, 255) as u32;
        }
        if let Some((value, origin)) = given_only("tcp_user_timeout") {
            // Milliseconds; 0 means the kernel's default, as in libpq.
            tcp.user_timeout = match parse_whole("tcp_user_timeout", &value, origin)? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            };
        }
        let user = match pick("user", "PGUSER") {
            Some((user, _)) => user,
            None => env("USER")
                .filter(|user| !user.is_empty())
                .or_else(os_user_from_uid)
                .ok_or(ConfigError::NoUser)?,
        };
        let password = pick("password", "PGPASSWORD").map(|(password, _)| password.into());
        let dbname =
            pick("dbname", "PGDATABASE").map_or_else(|| user.clone(), |(dbname, _)| dbname);
        let ssl_mode_given = match pick("sslmode", "PGSSLMODE") {
            Some((value, origin)) => Some((SslMode::parse(&value, origin)?, origin)),
            None => None,
        };
        // libpq's files under the home directory: the default root
        // certificate, client certificate and key, and ~/.pgpass.
        let home = pgpass::home_dir(env);
        let ssl_root_cert = pick("sslrootcert", "PGSSLROOTCERT")
            .map(|(path, _)| PathBuf::from(path))
            .or_else(|| tls_files::existing_default(home.as_deref(), tls_files::DEFAULT_ROOT_CERT));
        let ssl_cert = pick("sslcert", "PGSSLCERT")
            .map(|(path, _)| PathBuf::from(path))
            .or_else(|| {
                tls_files::existing_default(home.as_deref(), tls_files::DEFAULT_CLIENT_CERT)
            });
        let ssl_key = pick("sslkey", "PGSSLKEY")
            .map(|(path, _)| PathBuf::from(path))
            .or_else(|| {
                home.as_deref()
                    .map(|home| home.join(tls_files::DEFAULT_CLIENT_KEY))
            });
        let passfile = pick("passfile", "PGPASSFILE")
            .map(|(path, _)| PathBuf::from(path))
            .or_else(|| home.as_deref().map(|home| home.join(".pgpass")));
        let channel_binding = match pick("channel_binding", "PGCHANNELBINDING") {
            Some((value, origin)) => {
                ChannelBindingMode::parse(&value).ok_or_else(|| ConfigError::BadValue {
                    key: "channel_binding",
                    value,
                    origin,
                    reason: "valid values are disable, prefer, require".into(),
                })?
            }
            None => ChannelBindingMode::default(),
        };
        let application_name = pick("application_name", "PGAPPNAME")
            .map_or_else(|| DEFAULT_APPLICATION_NAME.to_owned(), |(name, _)| name);
        let connect_timeout = match pick("connect_timeout", "PGCONNECT_TIMEOUT") {
            Some((value, origin)) => parse_connect_timeout(&value, origin)?,
            None => None,
        };

        let uses_system_roots = ssl_root_cert.as_deref() == Some(Path::new(SYSTEM_ROOTS));
        let ssl_mode = match ssl_mode_given {
            // As libpq 16+: the public roots make sense only with a host name check.
            Some((mode, origin)) if uses_system_roots && mode != SslMode::VerifyFull => {
                return Err(ConfigError::BadValue {
                    key: "sslmode",
                    value: mode.as_str().to_owned(),
                    origin,
                    reason: "sslrootcert=system requires sslmode verify-full".into(),
                });
            }
            Some((mode, _)) => mode,
            None if uses_system_roots => SslMode::VerifyFull,
            None => SslMode::default(),
        };

        let config = ConnectionConfig {
            host,
            hostaddr,
            port,
            user,
            password,
            dbname,
            ssl_mode,
            ssl_root_cert,
            application_name,
            connect_timeout,
            hosts: endpoints,
            target_session_attrs,
            tcp,
            silence_timeout: Some(DEFAULT_SILENCE_TIMEOUT),
            passfile,
            ssl_cert,
            ssl_key,
            channel_binding,
        };
        // Fail early on unusable TLS files if TLS will be used.
        if config.uses_tls() {
            let default_root = home
                .as_deref()
                .map(|home| home.join(tls_files::DEFAULT_ROOT_CERT));
            match tls_files::roots_for(
                config.ssl_mode,
                config.ssl_root_cert.as_deref(),
                default_root.as_deref(),
            )? {
                Roots::File(path) => {
                    load_root_certs(&path)?;
                }
                Roots::System | Roots::Unverified => {}
            }
            tls_files::load_client_identity(config.ssl_cert.as_deref(), config.ssl_key.as_deref())?;
        }
        // Channel binding needs TLS: without it, `require` can never log in.
        if config.channel_binding == ChannelBindingMode::Require && !config.uses_tls() {
            return Err(ConfigError::BadValue {
                key: "channel_binding",
                value: "require".into(),
                origin: "the resolved settings",
                reason: if config.is_unix_socket() {
                    "channel binding needs TLS, which a Unix-socket connection does not use: \
                     connect over TCP with TLS, or use channel_binding=prefer"
                        .into()
                } else {
                    "channel binding needs TLS, but sslmode is disable: use sslmode=require \
                     (or stronger), or channel_binding=prefer"
                        .into()
                },
            });
        }
        Ok(config)
    }

    /// [`ConnectionConfig::resolve`] with the process environment.
    pub fn from_env(url: Option<&str>) -> Result<Self, ConfigError> {
        Self::resolve(url, &|name| std::env::var(name).ok())
    }

    /// `host=... port=... dbname=... user=...` (plus `sslmode=...` for TCP);
    /// never includes the password, always one line. For error messages and
    /// logs.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "host={} port={} dbname={} user={}",
            quote_conninfo(&self.host),
            self.port,
            quote_conninfo(&self.dbname),
            quote_conninfo(&self.user),
        );
        if let Some(hostaddr) = self.hostaddr {
            text.push_str(&format!(" hostaddr={hostaddr}"));
        }
        if !self.is_unix_socket() {
            text.push_str(" sslmode=");
            text.push_str(self.ssl_mode.as_str());
        }
        // A control character in a name (a newline in a dbname) must not
        // break a log line in two.
        if text.chars().any(char::is_control) {
            text = text
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
        }
        text
    }

    /// The database.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The database user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether `host` names a Unix-socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `<dir>/.s.PGSQL.<port>` for a Unix-socket host.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.is_unix_socket()
            .then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// `host:port` (`[v6addr]:port`) or the socket path, for messages.
    pub fn target(&self) -> String {
        if let Some(path) = self.socket_path() {
            return path.display().to_string();
        }
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        match self.hostaddr {
            Some(addr) => format!("{host} (at {})", SocketAddr::new(addr, self.port)),
            None => host,
        }
    }

    /// An ordinary query connection (tokio-postgres), TLS per sslmode, to
    /// the first of `hosts` that accepts it and matches
    /// `target_session_attrs` (libpq's rules: a host that cannot be reached
    /// or is of the wrong kind is skipped; a server's refusal, such as a
    /// failed authentication, ends the search). The connection task is
    /// spawned on the current tokio runtime; it logs a warning if the
    /// connection ends with an error.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let mut last = None;
        for endpoint in self.endpoints() {
            match endpoint.connect_one().await {
                Ok(client) => match endpoint.check_query_session(&client).await {
                    Ok(()) => return Ok(client),
                    Err(e) => last = Some(e),
                },
                Err(e) if e.tries_next_host() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::Protocol("no host to connect to".into())))
    }

    /// This configuration once per host, each with that host as its only one.
    pub(crate) fn endpoints(&self) -> Vec<ConnectionConfig> {
        if self.hosts.len() <= 1 {
            return vec![self.clone()];
        }
        self.hosts
            .iter()
            .map(|endpoint| ConnectionConfig {
                host: endpoint.host.clone(),
                hostaddr: endpoint.hostaddr,
                port: endpoint.port,
                hosts: vec![endpoint.clone()],
                ..self.clone()
            })
            .collect()
    }

    /// The same settings without a silence bound on query connections, for
    /// statements that may rightly wait long for their answer (creating a
    /// slot waits for every transaction open on the server).
    pub fn patient(&self) -> ConnectionConfig {
        ConnectionConfig {
            silence_timeout: None,
            ..self.clone()
        }
    }

    /// Whether the server behind `client` is of the kind
    /// `target_session_attrs` asks for.
    async fn check_query_session(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), ConnectError> {
        let Some(sql) = self.target_session_attrs.check_sql() else {
            return Ok(());
        };
        let row = client
            .query_one(sql, &[])
            .await
            .map_err(|e| self.map_pg_error(e))?;
        let ok: bool = row.get(0);
        if ok {
            Ok(())
        } else {
            Err(self.wrong_session_kind())
        }
    }

    /// The error for a server that is not of the kind `target_session_attrs` wants.
    pub(crate) fn wrong_session_kind(&self) -> ConnectError {
        ConnectError::Unreachable {
            target: self.target(),
            source: io::Error::other(format!(
                "the server is not {} (target_session_attrs={}): it is read-only or a standby",
                match self.target_session_attrs {
                    TargetSessionAttrs::Primary => "a primary",
                    _ => "read-write",
                },
                self.target_session_attrs.as_str()
            )),
        }
    }

    /// The socket to this configuration's (first) host, with the TCP settings.
    pub(crate) async fn open_socket(&self) -> Result<Socket, ConnectError> {
        let unreachable = |source: io::Error| ConnectError::Unreachable {
            target: self.target(),
            source,
        };
        match self.socket_path() {
            Some(path) => Socket::unix(&path).await.map_err(unreachable),
            None => match self.hostaddr {
                Some(addr) => Socket::tcp((addr, self.port), &self.tcp).await,
                None => Socket::tcp((self.host.as_str(), self.port), &self.tcp).await,
            }
            .map_err(unreachable),
        }
    }

    async fn connect_one(&self) -> Result<tokio_postgres::Client, ConnectError> {
        // libpq's connect_timeout covers the whole startup (socket, TLS,
        // authentication), per host.
        let attempt = self.connect_one_unbounded();
        match self.connect_timeout {
            None => attempt.await,
            Some(limit) => match tokio::time::timeout(limit, attempt).await {
                Ok(result) => result,
                Err(_) => Err(ConnectError::Unreachable {
                    target: self.target(),
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {limit:?} (connect_timeout)"),
                    ),
                }),
            },
        }
    }

    async fn connect_one_unbounded(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let mut pg = tokio_postgres::Config::new();
        pg.user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            // The session settings of the replication connection, so values
            // read here (imports, the catalog) render identically.
            .options(QUERY_SESSION_OPTIONS);
        if let Some(password) = self.password_for_connect() {
            pg.password(password.expose());
        }
        pg.channel_binding(self.channel_binding.for_tokio_postgres());
        // The socket is ours (keepalives, the silence bound); tokio-postgres
        // speaks the protocol on it.
        let socket = Silence::new(self.open_socket().await?, self.silence_timeout);
        match self.tls_config()? {
            None => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let connected = pg.connect_raw(socket, tokio_postgres::NoTls).await;
                self.spawn_query_connection(connected)
            }
            Some(tls) => {
                pg.ssl_mode(if self.ssl_mode.allows_plaintext() {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                let mut make = MakeTls::new(tls);
                let tls = tokio_postgres::tls::MakeTlsConnect::<Silence<Socket>>::make_tls_connect(
                    &mut make, &self.host,
                )
                .map_err(|e| ConnectError::Tls {
                    target: self.target(),
                    source: Box::new(e),
                })?;
                let connected = pg.connect_raw(socket, tls).await;
                self.spawn_query_connection(connected)
            }
        }
    }

    fn spawn_query_connection<S, T>(
        &self,
        connected: Result<
            (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
            tokio_postgres::Error,
        >,
    ) -> Result<tokio_postgres::Client, ConnectError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (client, connection) = connected.map_err(|e| self.map_pg_error(e))?;
        let target = self.target();
        let cancel = client.cancel_token();
        let config = self.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%target, %error, "query connection to Postgres ended with an error");
                // Given up for silence: if the server is in fact alive (a
                // long lock wait, a slow statement), its backend would go on
                // with the request nobody waits for; ask it to stop.
                if is_silence(&error) {
                    if let Ok(socket) = config.open_socket().await {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            cancel.cancel_query_raw(socket, tokio_postgres::NoTls),
                        )
                        .await;
                    }
                }
            }
        });
        Ok(client)
    }

    /// Maps a tokio-postgres error from connecting to the same variants the
    /// replication connection uses.
    pub(crate) fn map_pg_error(&self, error: tokio_postgres::Error) -> ConnectError {
        if let Some(db) = error.as_db_error() {
            return ConnectError::from_server(ServerError::from_db_error(db), &self.user);
        }
        // tokio-postgres does not expose its error kinds; its Display text names them.
        let kind = error.to_string();
        match kind.as_str() {
            "error connecting to server" | "timeout waiting for server" => {
                ConnectError::Unreachable {
                    target: self.target(),
                    source: into_io_error(error),
                }
            }
            "error performing TLS handshake" => ConnectError::Tls {
                target: self.target(),
                source: error.into_source().unwrap_or_else(|| kind.into()),
            },
            "authentication error" => ConnectError::Auth {
                user: self.user.clone(),
                source: match error.into_source() {
                    // tokio-postgres's wording for channel_binding=require
                    // unmet; the replication connection's, for one message.
                    Some(cause) if cause.to_string() == "server did not use channel binding" => {
                        "channel_binding=require, but the server logged pg2sink in without \
                         channel binding (SCRAM-SHA-256-PLUS)"
                            .into()
                    }
                    Some(cause) => cause,
                    None => kind.into(),
                },
            },
            // tokio-postgres's wording when the server wants a password and none is set.
            "invalid configuration"
                if error
                    .source()
                    .is_some_and(|cause| cause.to_string() == "password missing") =>
            {
                ConnectError::Auth {
                    user: self.user.clone(),
                    source: "the server asks for a password, but none was given".into(),
                }
            }
            "error communicating with the server" | "connection closed" => {
                ConnectError::Io(into_io_error(error))
            }
            _ => ConnectError::Protocol(error_chain(&error)),
        }
    }

    fn uses_tls(&self) -> bool {
        !self.is_unix_socket() && self.ssl_mode != SslMode::Disable
    }

    /// The password to log in with: the given one, else the password
    /// file's (libpq's order), looked up at each connection attempt.
    pub(crate) fn password_for_connect(&self) -> Option<crate::secret::Secret> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        let passfile = self.passfile.as_deref()?;
        let port = self.port.to_string();
        // libpq matches its default socket directory as `localhost`; any
        // other socket directory as its path.
        let host = if self.is_unix_socket() && self.host == default_socket_dir() {
            "localhost"
        } else {
            self.host.as_str()
        };
        pgpass::password_from_file(
            passfile,
            pgpass::Lookup {
                host,
                port: &port,
                dbname: &self.dbname,
                user: &self.user,
            },
        )
        .map(crate::secret::Secret::from)
    }

    /// The rustls configuration for this sslmode, or `None` when TLS is not
    /// attempted (sslmode disable, or a Unix socket).
    pub(crate) fn tls_config(&self) -> Result<Option<ClientConfig>, ConnectError> {
        if !self.uses_tls() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_error = |source: BoxError| ConnectError::Tls {
            target: self.target(),
            source,
        };
        let roots = tls_files::roots_for(self.ssl_mode, self.ssl_root_cert.as_deref(), None)?;
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            Roots::Unverified => Arc::new(NoVerification {
                provider: provider.clone(),
            }),
            Roots::File(path) => {
                let pinned = load_root_certs(&path)?;
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(pinned.iter().cloned());
                if added == 0 {
                    return Err(ConfigError::SslRootCert {
                        path,
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "none of its certificates can be used as a trust anchor",
                        ),
                    }
                    .into());
                }
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| tls_error(Box::new(e)))?;
                // A root file checks the chain in every mode (libpq); the
                // name only for verify-full.
                Arc::new(PgCertVerifier {
                    inner,
                    check_name: self.ssl_mode == SslMode::VerifyFull,
                    pinned,
                })
            }
            Roots::System => {
                let roots = tls_files::system_roots()?;
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| tls_error(Box::new(e)))?;
                Arc::new(PgCertVerifier {
                    inner,
                    check_name: true,
                    pinned: Vec::new(),
                })
            }
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(Box::new(e)))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match tls_files::load_client_identity(
            self.ssl_cert.as_deref(),
            self.ssl_key.as_deref(),
        )? {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_cert_resolver(Arc::new(
                self.client_certified_key(&provider, chain, key)?,
            )),
        };
        // As libpq 17+; required by servers only for direct TLS, harmless otherwise.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(config))
    }

    /// The client certificate with its key, for the handshake. Not
    /// `with_client_auth_cert`: its WebPKI parse refuses X.509 v1
    /// certificates, which OpenSSL (libpq, the server) accepts; a key that
    /// is not the certificate's is still refused here.
    fn client_certified_key(
        &self,
        provider: &CryptoProvider,
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<rustls::sign::SingleCertAndKey, ConnectError> {
        let key_error = |reason: String| ConfigError::SslKey {
            path: self.ssl_key.clone().unwrap_or_default(),
            reason,
        };
        let cert_name = self
            .ssl_cert
            .as_deref()
            .unwrap_or(Path::new(""))
            .display()
            .to_string();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| key_error(format!("it cannot be used: {e}")))?;
        let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            certified.keys_match()
        {
            return Err(key_error(format!(
                "it is not the private key of the client certificate {cert_name}"
            ))
            .into());
        }
        Ok(rustls::sign::SingleCertAndKey::from(certified))
    }

    /// The name the server certificate is checked against (also sent as SNI
    /// for DNS names).
    pub(crate) fn tls_server_name(&self) -> Result<ServerName<'static>, ConnectError> {
        ServerName::try_from(self.host.as_str())
            .map(|name| name.to_owned())
            .map_err(|_| {
                ConfigError::BadValue {
                    key: "host",
                    value: self.host.clone(),
                    origin: "the resolved settings",
                    reason: "not a valid DNS name or IP address for TLS".into(),
                }
                .into()
            })
    }
}

fn default_socket_dir() -> &'static str {
    if Path::new(DEBIAN_SOCKET_DIR).is_dir() {
        DEBIAN_SOCKET_DIR
    } else {
        FALLBACK_SOCKET_DIR
    }
}

/// The user name of the process's uid, from /etc/passwd.
fn os_user_from_uid() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let entry_uid: u32 = fields.nth(1)?.parse().ok()?;
        (entry_uid == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// Whether a query connection ended because its silence bound passed.
fn is_silence(error: &tokio_postgres::Error) -> bool {
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        cause = e.source();
    }
    false
}

/// A whole, non-negative number, as libpq's integer parameters.
fn parse_whole(key: &'static str, value: &str, origin: &'static str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| ConfigError::BadValue {
            key,
            value: value.to_owned(),
            origin,
            reason: "expected a whole number".into(),
        })
}

fn parse_port(value: &str, origin: &'static str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ConfigError::BadPort {
            value: value.to_owned(),
            origin,
        }),
    }
}

/// Seconds as in libpq: 0 (or negative) waits forever, 1 counts as 2.
fn parse_connect_timeout(
    value: &str,
    origin: &'static str,
) -> Result<Option<Duration>, ConfigError> {
    let seconds: i64 = value.trim().parse().map_err(|_| ConfigError::BadValue {
        key: "connect_timeout",
        value: value.to_owned(),
        origin,
        reason: "expected a whole number of seconds".into(),
    })?;
    Ok(match seconds {
        i64::MIN..=0 => None,
        1 => Some(Duration::from_secs(2)),
        n => Some(Duration::from_secs(n.unsigned_abs())),
    })
}

fn canonical_key(key: &str) -> Option<&'static str> {
    KNOWN_KEYS.iter().copied().find(|known| *known == key)
}

fn unknown_key(key: &str) -> String {
    format!(
        "unknown parameter {key:?} (supported: {})",
        KNOWN_KEYS.join(", ")
    )
}

fn parse_connection_string(text: &str) -> Result<Given, ConfigError> {
    let trimmed = text.trim();
    if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        return Ok(Given {
            values: parse_url(rest)?,
            origin: "the connection URL",
        });
    }
    if trimmed.is_empty() || trimmed.contains('=') {
        return Ok(Given {
            values: parse_conninfo(trimmed)?,
            origin: "the connection string",
        });
    }
    Err(ConfigError::BadConnString {
        reason: "expected a postgres:// (or postgresql://) URL or libpq key=value pairs".into(),
    })
}

fn url_decode(part: &str, what: &str) -> Result<String, ConfigError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| ConfigError::BadUrl {
            reason: format!("the {what} is not valid UTF-8 after percent-decoding"),
        })
}

/// Parses what follows `postgresql://`:
/// `[user[:password]@][host][:port][/dbname][?key=value&...]`.
fn parse_url(rest: &str) -> Result<HashMap<&'static str, String>, ConfigError> {
    let bad = |reason: String| ConfigError::BadUrl { reason };
    let mut values = HashMap::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (before_query, None),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        values.insert("user", url_decode(user, "user")?);
        if let Some(password) = password {
            values.insert("password", url_decode(password, "password")?);
        }
    }
    // libpq's URL form for several hosts: host1:port1,host2:port2,...
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for hostport in hostport.split(',') {
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' around an IPv6 address".into()))?;
            let port =
                match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':').ok_or_else(|| {
                        bad(format!("unexpected {after:?} after the IPv6 address"))
                    })?),
                };
            (host, port)
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        let host = url_decode(host, "host")?;
        if host.contains(',') {
            return Err(bad(format!("host {host:?} contains a comma")));
        }
        hosts.push(host);
        ports.push(match port {
            Some(port) => url_decode(port, "port")?,
            None => String::new(),
        });
    }
    values.insert("host", hosts.join(","));
    if ports.iter().any(|port| !port.is_empty()) {
        values.insert("port", ports.join(","));
    }
    if let Some(path) = path {
        values.insert("dbname", url_decode(path, "database name")?);
    }
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("query parameter {pair:?} has no '='")))?;
        let key = url_decode(key, "query parameter name")?;
        let value = url_decode(value, "query parameter value")?;
        // JDBC-style `ssl=true`, which libpq also accepts in URLs.
        if key == "ssl" {
            if value != "true" {
                return Err(bad(format!("ssl={value:?}: only ssl=true is understood")));
            }
            values.insert("sslmode", "require".into());
            continue;
        }
        let key = canonical_key(&key).ok_or_else(|| bad(unknown_key(&key)))?;
        values.insert(key, value);
    }
    Ok(values)
}

/// Parses libpq `key=value` pairs; values may be single-quoted, and `\`
/// escapes the next character.
fn parse_conninfo(text: &str) -> Result<HashMap<&'static str, String>, ConfigError> {
    let bad = |reason: String| ConfigError::BadConnString { reason };
    let mut values = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(format!("missing \"=\" after {key:?}")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(bad(format!("unterminated quoted value for {key:?}"))),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(bad(format!("unterminated quoted value for {key:?}"))),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let key = canonical_key(&key).ok_or_else(|| bad(unknown_key(&key)))?;
        values.insert(key, value);
    }
    Ok(values)
}

/// Quotes a value for a libpq connection string when needed.
fn quote_conninfo(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_from(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    /// A home without libpq's files, unless the test gives HOME.
    const NO_HOME: &str = "/nonexistent/pg2sink-test-home";

    fn resolve(url: Option<&str>, vars: &[(&str, &str)]) -> Result<ConnectionConfig, ConfigError> {
        let mut vars = vars.to_vec();
        if !vars.iter().any(|(name, _)| *name == "HOME") {
            vars.push(("HOME", NO_HOME));
        }
        ConnectionConfig::resolve(url, &env_from(&vars))
    }

    #[test]
    fn defaults_follow_libpq() {
        let config = resolve(None, &[("USER", "alice")]).unwrap();
        assert_eq!(config.host, default_socket_dir());
        assert!(config.is_unix_socket());
        assert_eq!(config.port, 5432);
        assert_eq!(config.user(), "alice");
        assert_eq!(config.dbname(), "alice");
        assert_eq!(config.password, None);
        assert_eq!(config.ssl_mode, SslMode::Prefer);
        assert_eq!(config.ssl_root_cert, None);
        assert_eq!(config.application_name, "pg2sink");
        assert_eq!(config.connect_timeout, None);
        assert_eq!(
            config.socket_path().unwrap(),
            Path::new(default_socket_dir()).join(".s.PGSQL.5432")
        );
    }

    #[test]
    fn user_falls_back_to_the_uid_when_user_is_unset() {
        // Whoever runs the tests has a passwd entry on any sane machine.
        let config = resolve(None, &[]).unwrap();
        assert!(!config.user.is_empty());
        assert_eq!(config.dbname, config.user);
    }

    #[test]
    fn environment_fills_in() {
        let config = resolve(
            None,
            &[
                ("PGHOST", "db.example.com"),
                ("PGPORT", "6543"),
                ("PGUSER", "bob"),
                ("PGPASSWORD", "s3cret"),
                ("PGDATABASE", "shop"),
                ("PGSSLMODE", "require"),
                ("PGAPPNAME", "capture"),
                ("PGCONNECT_TIMEOUT", "10"),
                ("USER", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(config.host, "db.example.com");
        assert!(!config.is_unix_socket());
        assert_eq!(config.port, 6543);
        assert_eq!(config.user, "bob");
        assert_eq!(config.password, Some("s3cret".into()));
        assert_eq!(config.dbname, "shop");
        assert_eq!(config.ssl_mode, SslMode::Require);
        assert_eq!(config.application_name, "capture");
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(config.target(), "db.example.com:6543");
    }

    #[test]
    fn url_parts_win_over_environment() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "1111"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpass"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "disable"),
        ];
        let config = resolve(
            Some("postgres://urluser:urlpass@urlhost:2222/urldb?sslmode=verify-full&sslrootcert=system&application_name=x"),
            &env,
        )
        .unwrap();
        assert_eq!(config.host, "urlhost");
        assert_eq!(config.port, 2222);
        assert_eq!(config.user, "urluser");
        assert_eq!(config.password, Some("urlpass".into()));
        assert_eq!(config.dbname, "urldb");
        assert_eq!(config.ssl_mode, SslMode::VerifyFull);
        assert_eq!(config.application_name, "x");

        // Parts the URL leaves out come from the environment.
        let config = resolve(Some("postgresql://urlhost"), &env).unwrap();
        assert_eq!(config.host, "urlhost");
        assert_eq!(config.port, 1111);
        assert_eq!(config.user, "envuser");
        assert_eq!(config.password, Some("envpass".into()));
        assert_eq!(config.dbname, "envdb");
        assert_eq!(config.ssl_mode, SslMode::Disable);

        // An empty dbname defaults to the user, not the empty string.
        let config = resolve(Some("postgresql://u@h/"), &[]).unwrap();
        assert_eq!(config.dbname, "u");
    }

    #[test]
    fn url_percent_decoding_and_special_hosts() {
        let config = resolve(
            Some("postgres://us%40er:p%40ss%3Aw%2Fo%25rd@host/d%20b"),
            &[],
        )
        .unwrap();
        assert_eq!(config.user, "us@er");
        assert_eq!(config.password, Some("p@ss:w/o%rd".into()));
        assert_eq!(config.dbname, "d b");

        // An unencoded '@' in the password: the last '@' ends the user info.
        let config = resolve(Some("postgres://u:a@b@host/db"), &[]).unwrap();
        assert_eq!(config.password, Some("a@b".into()));
        assert_eq!(config.host, "host");

        let config = resolve(Some("postgresql://[::1]:5433/db"), &[("USER", "u")]).unwrap();
        assert_eq!(config.host, "::1");
        assert_eq!(config.port, 5433);
        assert_eq!(config.target(), "[::1]:5433");

        let config = resolve(Some("postgresql://%2Fvar%2Frun%2Fpg/db"), &[("USER", "u")]).unwrap();
        assert_eq!(config.host, "/var/run/pg");
        assert!(config.is_unix_socket());

        let config = resolve(
            Some("postgresql:///db?host=/tmp/sock&port=7000"),
            &[("PGHOST", "h"), ("USER", "u")],
        )
        .unwrap();
        assert_eq!(config.host, "/tmp/sock");
        assert_eq!(config.port, 7000);
        assert_eq!(
            config.socket_path().unwrap(),
            Path::new("/tmp/sock/.s.PGSQL.7000")
        );
        assert_eq!(config.dbname, "db");

        let config = resolve(Some("postgres://h/db?ssl=true"), &[("USER", "u")]).unwrap();
        assert_eq!(config.ssl_mode, SslMode::Require);
    }

    #[test]
    fn several_hosts_follow_libpq() {
        let config = resolve(
            Some("postgres://a:5433,[::1],b:6000/db?target_session_attrs=read-write"),
            &[("USER", "u")],
        )
        .unwrap();
        let hosts: Vec<(&str, u16)> = config
            .hosts
            .iter()
            .map(|e| (e.host.as_str(), e.port))
            .collect();
        assert_eq!(hosts, [("a", 5433), ("::1", 5432), ("b", 6000)]);
        assert_eq!((config.host.as_str(), config.port), ("a", 5433));
        assert_eq!(config.target_session_attrs, TargetSessionAttrs::ReadWrite);

        let config = resolve(
            Some("host=a,b port=7000 hostaddr=10.0.0.1,10.0.0.2 target_session_attrs=primary"),
            &[("USER", "u")],
        )
        .unwrap();
        assert_eq!(config.hosts[1].port, 7000);
        assert_eq!(config.hosts[1].hostaddr, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(config.target_session_attrs, TargetSessionAttrs::Primary);

        let config = resolve(
            None,
            &[
                ("USER", "u"),
                ("PGHOST", "x,y"),
                ("PGTARGETSESSIONATTRS", "primary"),
            ],
        )
        .unwrap();
        assert_eq!(config.hosts.len(), 2);
        assert_eq!(config.target_session_attrs, TargetSessionAttrs::Primary);

        let err = resolve(
            Some("host=a target_session_attrs=standby"),
            &[("USER", "u")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs a primary"), "{err}");
    }

    #[test]
    fn tcp_settings_follow_libpq_names() {
        let config = resolve(Some("host=a"), &[("USER", "u")]).unwrap();
        assert_eq!(config.tcp, TcpSettings::default());
        let config = resolve(
            Some("postgres://a/db?keepalives_idle=7&keepalives_interval=2&keepalives_count=4&tcp_user_timeout=9000"),
            &[("USER", "u")],
        )
        .unwrap();
        assert!(config.tcp.keepalives);
        assert_eq!(config.tcp.idle, Duration::from_secs(7));
        assert_eq!(config.tcp.interval, Duration::from_secs(2));
        assert_eq!(config.tcp.count, 4);
        assert_eq!(config.tcp.user_timeout, Some(Duration::from_millis(9000)));
        let config = resolve(
            Some("host=a keepalives=0 tcp_user_timeout=0"),
            &[("USER", "u")],
        )
        .unwrap();
        assert!(!config.tcp.keepalives);
        assert_eq!(config.tcp.user_timeout, None);
        let err = resolve(Some("host=a keepalives_idle=soon"), &[("USER", "u")]).unwrap_err();
        assert!(err.to_string().contains("keepalives_idle"), "{err}");
    }

    #[test]
    fn url_errors() {
        let err = resolve(Some("postgres://h:99999/db"), &[("USER", "u")]).unwrap_err();
        assert!(matches!(err, ConfigError::BadPort { .. }), "{err}");
        assert!(err.to_string().contains("99999"), "{err}");

        let err = resolve(Some("postgres://h:x/db"), &[("USER", "u")]).unwrap_err();
        assert!(matches!(err, ConfigError::BadPort { .. }), "{err}");

        let err = resolve(None, &[("USER", "u"), ("PGPORT", "0")]).unwrap_err();
        assert!(err.to_string().contains("PGPORT"), "{err}");

        let err = resolve(Some("postgres://h1,h2,h3:5/db?port=1,2"), &[("USER", "u")]).unwrap_err();
        assert!(err.to_string().contains("2 values for 3 hosts"), "{err}");

        let err = resolve(Some("postgres://h/db?sslcrt=x"), &[("USER", "u")]).unwrap_err();
        assert!(
            err.to_string().contains("unknown parameter \"sslcrt\""),
            "{err}"
        );

        let err = resolve(Some("postgres://[::1/db"), &[("USER", "u")]).unwrap_err();
        assert!(matches!(err, ConfigError::BadUrl { .. }), "{err}");

        let err = resolve(Some("mysql://h/db"), &[("USER", "u")]).unwrap_err();
        assert!(matches!(err, ConfigError::BadConnString { .. }), "{err}");
    }

    #[test]
    fn sslmode_errors_list_the_valid_values() {
        let err = resolve(
            Some("postgres://h/db?sslmode=verify_full"),
            &[("USER", "u")],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"verify_full\""), "{text}");
        assert!(text.contains("the connection URL"), "{text}");
        for mode in SslMode::ALL {
            assert!(text.contains(mode.as_str()), "{text}");
        }

        let err = resolve(None, &[("USER", "u"), ("PGSSLMODE", "on")]).unwrap_err();
        assert!(err.to_string().contains("PGSSLMODE"), "{err}");

        assert_eq!("verify-ca".parse::<SslMode>().unwrap(), SslMode::VerifyCa);
        assert!("VERIFY-CA".parse::<SslMode>().is_err());
    }

    #[test]
    fn key_value_strings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path());
        let config = resolve(
            Some("host=db.internal port = 6000 user=carol password='it''s \\'q\\' x' dbname=app sslmode=verify-ca"),
            &[("PGPASSWORD", "other")],
        );
        // '' is not an escape in libpq: the quoted value ends there.
        assert!(config.is_err());

        let config = resolve(
            Some("host=db.internal port = 6000 user=carol password='it\\'s a \\\\ secret' dbname=app sslmode=verify-ca"),
            &[("PGPASSWORD", "other"), ("PGSSLROOTCERT", ca.to_str().unwrap())],
        )
        .unwrap();
        assert_eq!(config.host, "db.internal");
        assert_eq!(config.port, 6000);
        assert_eq!(config.user, "carol");
        assert_eq!(config.password, Some("it's a \\ secret".into()));
        assert_eq!(config.dbname, "app");
        assert_eq!(config.ssl_mode, SslMode::VerifyCa);

        let config = resolve(Some("dbname=x"), &[("PGHOST", "envhost"), ("USER", "u")]).unwrap();
        assert_eq!(config.host, "envhost");
        assert_eq!(config.dbname, "x");

        let config = resolve(Some(""), &[("USER", "u")]).unwrap();
        assert_eq!(config.dbname, "u");

        let err = resolve(Some("host"), &[("USER", "u")]).unwrap_err();
        assert!(matches!(err, ConfigError::BadConnString { .. }), "{err}");
        let err = resolve(Some("host=a bogus=1"), &[("USER", "u")]).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = resolve(Some("host='a"), &[("USER", "u")]).unwrap_err();
        assert!(err.to_string().contains("unterminated"), "{err}");
    }

    #[test]
    fn hostaddr_connects_there_and_keeps_host_for_the_certificate() {
        let config = resolve(
            Some("host=db.example hostaddr=127.0.0.1 port=5433 user=u"),
            &[],
        )
        .unwrap();
        assert_eq!(config.host, "db.example");
        assert_eq!(config.hostaddr, Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(config.target(), "db.example:5433 (at 127.0.0.1:5433)");
        assert!(config.describe().contains("hostaddr=127.0.0.1"));
        let config = resolve(
            Some("postgres://u@db.example/app"),
            &[("PGHOSTADDR", "::1")],
        )
        .unwrap();
        assert_eq!(config.hostaddr, Some("::1".parse().unwrap()));
        let err = resolve(Some("hostaddr=db.example user=u"), &[]).unwrap_err();
        assert!(err.to_string().contains("not an IP address"), "{err}");
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        let timeout = |v: &str| {
            resolve(None, &[("USER", "u"), ("PGCONNECT_TIMEOUT", v)]).map(|c| c.connect_timeout)
        };
        assert_eq!(timeout("0").unwrap(), None);
        assert_eq!(timeout("1").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(timeout("30").unwrap(), Some(Duration::from_secs(30)));
        assert!(timeout("soon").is_err());
    }

    #[test]
    fn describe_never_shows_the_password() {
        let config = resolve(Some("postgres://bob:hunter2@db:5433/my%20db"), &[]).unwrap();
        let text = config.describe();
        assert_eq!(
            text,
            "host=db port=5433 dbname='my db' user=bob sslmode=prefer"
        );
        assert!(!text.contains("hunter2"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");

        let config = resolve(Some("host=/tmp/s user=u password=hunter2"), &[]).unwrap();
        assert_eq!(config.describe(), "host=/tmp/s port=5432 dbname=u user=u");
    }

    #[test]
    fn sslrootcert_is_checked_when_tls_is_used() {
        let err = resolve(
            Some("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/root.crt"),
            &[("USER", "u")],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::SslRootCert { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/root.crt"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.crt");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = resolve(
            None,
            &[
                ("USER", "u"),
                ("PGHOST", "h"),
                ("PGSSLROOTCERT", path.to_str().unwrap()),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");

        // Not used, so not read: plaintext or a Unix socket.
        resolve(
            Some("postgres://h/db?sslmode=disable&sslrootcert=/nonexistent"),
            &[("USER", "u")],
        )
        .unwrap();
        resolve(Some("host=/tmp sslrootcert=/nonexistent"), &[("USER", "u")]).unwrap();
    }

    #[test]
    fn sslrootcert_system_implies_verify_full() {
        let config = resolve(Some("postgres://h/db?sslrootcert=system"), &[("USER", "u")]).unwrap();
        assert_eq!(config.ssl_mode, SslMode::VerifyFull);
        let err = resolve(
            Some("postgres://h/db?sslrootcert=system&sslmode=require"),
            &[("USER", "u")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
    }

    #[test]
    fn tls_config_per_mode() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path());
        let config = |url: &str| {
            resolve(
                Some(url),
                &[("USER", "u"), ("PGSSLROOTCERT", ca.to_str().unwrap())],
            )
            .unwrap()
        };
        assert!(config("postgres://h/db?sslmode=disable")
            .tls_config()
            .unwrap()
            .is_none());
        assert!(config("host=/tmp sslmode=require")
            .tls_config()
            .unwrap()
            .is_none());
        for mode in ["allow", "prefer", "require", "verify-ca", "verify-full"] {
            let tls = config(&format!("postgres://h/db?sslmode={mode}"))
                .tls_config()
                .unwrap()
                .unwrap();
            assert_eq!(tls.alpn_protocols, vec![b"postgresql".to_vec()]);
        }
        assert!(config("postgres://127.0.0.1/db").tls_server_name().is_ok());
        assert!(config("postgres://[::1]/db").tls_server_name().is_ok());
    }

    #[test]
    fn connect_error_classification() {
        let server = |code: &str| ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        };
        let auth = ConnectError::from_server(server("28P01"), "bob");
        assert!(matches!(auth, ConnectError::Auth { .. }));
        assert!(!auth.is_transient());
        assert_eq!(auth.sqlstate(), Some("28P01"));
        assert!(
            auth.to_string()
                .contains("authentication failed for user \"bob\""),
            "{auth}"
        );
        assert!(auth.to_string().contains("PGPASSWORD"), "{auth}");
        assert!(matches!(
            ConnectError::from_server(server("28000"), "bob"),
            ConnectError::Auth { .. }
        ));
        for code in ["08006", "57P01", "57P02", "57P03", "53300"] {
            assert!(
                ConnectError::from_server(server(code), "u").is_transient(),
                "{code}"
            );
        }
        for code in ["42501", "3D000", "55006", "42704"] {
            assert!(
                !ConnectError::from_server(server(code), "u").is_transient(),
                "{code}"
            );
        }
        let unreachable = ConnectError::Unreachable {
            target: "db:5432".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(unreachable.is_transient());
        assert!(unreachable.to_string().contains("db:5432"));
        assert!(unreachable.to_string().contains("PGHOST"));
        assert!(ConnectError::Io(io::ErrorKind::UnexpectedEof.into()).is_transient());
        assert!(!ConnectError::Protocol("x".into()).is_transient());
        assert!(!ConnectError::Config(ConfigError::NoUser).is_transient());
        assert!(!ConnectError::Tls {
            target: "h:1".into(),
            source: "bad".into()
        }
        .is_transient());
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        // Bind then drop to find a port that is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = resolve(
            Some(&format!("postgres://u@127.0.0.1:{port}/db?sslmode=disable")),
            &[],
        )
        .unwrap();
        let err = config.connect().await.unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
        assert!(err.is_transient());
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        let err = config.connect_replication().await.unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");

        let dir = tempfile::tempdir().unwrap();
        let config = resolve(Some(&format!("host={} user=u", dir.path().display())), &[]).unwrap();
        let err = config.connect().await.unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
        let err = config.connect_replication().await.unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains(".s.PGSQL.5432"), "{err}");
    }

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

    /// A self-signed CA certificate in `dir/ca.crt` (key `ca.key`, 0600).
    fn make_ca(dir: &Path) -> PathBuf {
        openssl(
            dir,
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
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=test CA",
            ],
        );
        dir.join("ca.crt")
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn verify_modes_need_a_root_certificate_as_libpq() {
        // No sslrootcert and no ~/.postgresql/root.crt: verify-* is refused
        // (libpq's rule; no silent fallback to some public roots).
        for mode in ["verify-ca", "verify-full"] {
            let err = resolve(
                Some(&format!("postgres://h/db?sslmode={mode}")),
                &[("USER", "u")],
            )
            .unwrap_err();
            assert!(matches!(err, ConfigError::NoRootCert { .. }), "{err}");
            let text = err.to_string();
            for needle in [
                mode,
                "sslrootcert=system",
                "PGSSLROOTCERT",
                NO_HOME,
                "root.crt",
            ] {
                assert!(text.contains(needle), "{needle:?} in {text}");
            }
        }
        // ~/.postgresql/root.crt is used when it exists, in every mode.
        let home = tempfile::tempdir().unwrap();
        let dot = home.path().join(".postgresql");
        std::fs::create_dir(&dot).unwrap();
        let ca = make_ca(&dot);
        std::fs::rename(&ca, dot.join("root.crt")).unwrap();
        let home_var = home.path().to_str().unwrap();
        for mode in ["prefer", "require", "verify-ca", "verify-full"] {
            let config = resolve(
                Some(&format!("postgres://h/db?sslmode={mode}")),
                &[("USER", "u"), ("HOME", home_var)],
            )
            .unwrap();
            assert_eq!(config.ssl_root_cert, Some(dot.join("root.crt")), "{mode}");
            assert!(config.tls_config().unwrap().is_some());
        }
        // An sslrootcert given wins over the default file.
        let config = resolve(
            Some("postgres://h/db?sslmode=require&sslrootcert=/elsewhere/ca.crt"),
            &[("USER", "u"), ("HOME", home_var)],
        )
        .unwrap();
        assert_eq!(
            config.ssl_root_cert,
            Some(PathBuf::from("/elsewhere/ca.crt"))
        );
        // ... and, missing, means no verification for require (libpq), so
        // the TLS configuration still builds.
        assert!(config.tls_config().unwrap().is_some());
    }

    #[test]
    fn sslrootcert_system_builds_with_the_os_store() {
        let config = resolve(Some("postgres://h/db?sslrootcert=system"), &[("USER", "u")]).unwrap();
        let tls = config.tls_config().unwrap().unwrap();
        assert_eq!(tls.alpn_protocols, vec![b"postgresql".to_vec()]);
    }

    #[test]
    fn passfile_is_found_as_libpq_finds_it() {
        let home = tempfile::tempdir().unwrap();
        let home_var = home.path().to_str().unwrap();
        let pgpass = home.path().join(".pgpass");
        std::fs::write(
            &pgpass,
            "db:5432:shop:bob:from-home\nlocalhost:5432:shop:bob:from-socket\n",
        )
        .unwrap();
        chmod(&pgpass, 0o600);
        let config = resolve(Some("postgres://bob@db/shop"), &[("HOME", home_var)]).unwrap();
        assert_eq!(config.passfile, Some(pgpass.clone()));
        assert_eq!(
            config.password_for_connect().as_ref().map(|p| p.expose()),
            Some("from-home")
        );
        // A given password wins; an empty one counts as none.
        let config = resolve(Some("postgres://bob:given@db/shop"), &[("HOME", home_var)]).unwrap();
        assert_eq!(
            config.password_for_connect().as_ref().map(|p| p.expose()),
            Some("given")
        );
        let config = resolve(
            Some("postgres://bob@db/shop"),
            &[("HOME", home_var), ("PGPASSWORD", "")],
        )
        .unwrap();
        assert_eq!(
            config.password_for_connect().as_ref().map(|p| p.expose()),
            Some("from-home")
        );
        // The default socket directory is matched as localhost.
        let config = resolve(Some("dbname=shop user=bob"), &[("HOME", home_var)]).unwrap();
        assert!(config.is_unix_socket());
        assert_eq!(
            config.password_for_connect().as_ref().map(|p| p.expose()),
            Some("from-socket")
        );
        // Another socket directory by its path.
        let config = resolve(
            Some("host=/sock dbname=shop user=bob"),
            &[("HOME", home_var)],
        )
        .unwrap();
        assert_eq!(config.password_for_connect(), None);

        // PGPASSFILE, and passfile in the URL, over the default.
        let other = home.path().join("other");
        std::fs::write(&other, "*:*:*:*:from-other\n").unwrap();
        chmod(&other, 0o600);
        let other_var = other.to_str().unwrap();
        let config = resolve(
            Some("postgres://bob@db/shop"),
            &[("HOME", home_var), ("PGPASSFILE", other_var)],
        )
        .unwrap();
        assert_eq!(
            config.password_for_connect().as_ref().map(|p| p.expose()),
            Some("from-other")
        );
        let config = resolve(
            Some(&format!(
                "host=db dbname=shop user=bob passfile={other_var}"
            )),
            &[("HOME", home_var)],
        )
        .unwrap();
        assert_eq!(config.passfile, Some(other.clone()));
        assert_eq!(
            config.password_for_connect().as_ref().map(|p| p.expose()),
            Some("from-other")
        );

        // Group-readable: ignored (with a warning), as libpq.
        chmod(&pgpass, 0o640);
        let config = resolve(Some("postgres://bob@db/shop"), &[("HOME", home_var)]).unwrap();
        assert_eq!(config.password_for_connect(), None);
        // Edits are seen at the next connection (read each time).
        chmod(&pgpass, 0o600);
        assert_eq!(
            config.password_for_connect().as_ref().map(|p| p.expose()),
            Some("from-home")
        );
        // Never shown.
        assert!(!config.describe().contains("from-home"));
        assert!(!format!("{config:?}").contains("from-home"));
    }

    #[test]
    fn client_certificate_settings_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_ca(d);
        // ca.crt/ca.key serve as a client certificate here: the parsing
        // and the checks do not care who signed it.
        chmod(&d.join("ca.key"), 0o600);
        let cert = d.join("ca.crt");
        let key = d.join("ca.key");
        let (cert_var, key_var) = (cert.to_str().unwrap(), key.to_str().unwrap());

        let config = resolve(
            Some(&format!(
                "postgres://u@h/db?sslmode=require&sslcert={cert_var}&sslkey={key_var}"
            )),
            &[],
        )
        .unwrap();
        assert_eq!(config.ssl_cert.as_deref(), Some(cert.as_path()));
        assert_eq!(config.ssl_key.as_deref(), Some(key.as_path()));
        assert!(config
            .tls_config()
            .unwrap()
            .unwrap()
            .client_auth_cert_resolver
            .has_certs());
        let config = resolve(
            Some("postgres://u@h/db?sslmode=require"),
            &[("PGSSLCERT", cert_var), ("PGSSLKEY", key_var)],
        )
        .unwrap();
        assert!(config
            .tls_config()
            .unwrap()
            .unwrap()
            .client_auth_cert_resolver
            .has_certs());

        // No certificate anywhere: none sent.
        let config = resolve(Some("postgres://u@h/db?sslmode=require"), &[]).unwrap();
        assert_eq!(config.ssl_cert, None);
        assert!(!config
            .tls_config()
            .unwrap()
            .unwrap()
            .client_auth_cert_resolver
            .has_certs());

        // The defaults under HOME, when the certificate exists.
        let home = tempfile::tempdir().unwrap();
        let dot = home.path().join(".postgresql");
        std::fs::create_dir(&dot).unwrap();
        std::fs::copy(&cert, dot.join("postgresql.crt")).unwrap();
        std::fs::copy(&key, dot.join("postgresql.key")).unwrap();
        chmod(&dot.join("postgresql.key"), 0o600);
        let home_var = home.path().to_str().unwrap();
        let config = resolve(
            Some("postgres://u@h/db?sslmode=require"),
            &[("HOME", home_var)],
        )
        .unwrap();
        assert_eq!(config.ssl_cert, Some(dot.join("postgresql.crt")));
        assert_eq!(config.ssl_key, Some(dot.join("postgresql.key")));
        assert!(config
            .tls_config()
            .unwrap()
            .unwrap()
            .client_auth_cert_resolver
            .has_certs());

        // A key others may read: refused at once.
        chmod(&dot.join("postgresql.key"), 0o644);
        let err = resolve(
            Some("postgres://u@h/db?sslmode=require"),
            &[("HOME", home_var)],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::SslKey { .. }), "{err}");
        assert!(err.to_string().contains("postgresql.key"), "{err}");
        // Not used over a Unix socket or without TLS, so not read.
        resolve(Some("host=/tmp user=u"), &[("HOME", home_var)]).unwrap();
        resolve(
            Some("postgres://u@h/db?sslmode=disable"),
            &[("HOME", home_var)],
        )
        .unwrap();

        // A key that does not belong to the certificate.
        let other = tempfile::tempdir().unwrap();
        make_ca(other.path());
        let other_key = other.path().join("ca.key");
        chmod(&other_key, 0o600);
        let config = resolve(
            Some(&format!(
                "postgres://u@h/db?sslmode=require&sslcert={cert_var}&sslkey={}",
                other_key.display()
            )),
            &[],
        );
        let err = config.and_then(|c| {
            c.tls_config().map(|_| c).map_err(|e| match e {
                ConnectError::Config(e) => e,
                other => panic!("{other}"),
            })
        });
        let err = err.unwrap_err();
        assert!(matches!(err, ConfigError::SslKey { .. }), "{err}");
    }

    #[test]
    fn channel_binding_setting() {
        let config = resolve(Some("postgres://u@h/db"), &[]).unwrap();
        assert_eq!(config.channel_binding, ChannelBindingMode::Prefer);
        let config = resolve(
            Some("postgres://u@h/db?channel_binding=require&sslmode=require"),
            &[],
        )
        .unwrap();
        assert_eq!(config.channel_binding, ChannelBindingMode::Require);
        let config = resolve(
            Some("postgres://u@h/db"),
            &[("PGCHANNELBINDING", "disable")],
        )
        .unwrap();
        assert_eq!(config.channel_binding, ChannelBindingMode::Disable);
        let err = resolve(Some("postgres://u@h/db?channel_binding=yes"), &[]).unwrap_err();
        assert!(
            err.to_string().contains("disable, prefer, require"),
            "{err}"
        );
        // require cannot work without TLS: said at once.
        let err = resolve(
            Some("postgres://u@h/db?channel_binding=require&sslmode=disable"),
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("channel binding needs TLS") && text.contains("sslmode"),
            "{text}"
        );
        let err = resolve(Some("host=/tmp user=u channel_binding=require"), &[]).unwrap_err();
        assert!(err.to_string().contains("Unix-socket"), "{err}");
    }

    #[test]
    fn auth_errors_hint_at_what_to_fix() {
        let auth = |text: &str| ConnectError::Auth {
            user: "bob".into(),
            source: text.to_owned().into(),
        };
        let text =
            auth("connection requires a valid client certificate (SQLSTATE 28000)").to_string();
        for needle in ["sslcert", "sslkey", "PGSSLCERT"] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
        let text = auth(
            "channel_binding=require, but the server logged pg2sink in without channel binding",
        )
        .to_string();
        assert!(text.contains("scram-sha-256"), "{text}");
        let text = auth("password authentication failed").to_string();
        assert!(
            text.contains("PGPASSWORD") && text.contains("password file"),
            "{text}"
        );
    }
}
