//! Options of the NATS JetStream sink (`--sink.nats.*`).

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::sink::http::RetryPolicy;

#[derive(Clone)]
pub struct NatsConfig {
    /// Server URLs (`nats://`, `tls://`); the client picks one and moves to
    /// another when it fails. User and password may be in the URL.
    pub urls: Vec<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A `.creds` file (JWT and NKey seed), as `nsc` writes them.
    pub creds_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Subjects are `<prefix>.<schema>.<table>`.
    pub subject_prefix: String,
    /// The stream that takes `<prefix>.>`; created if missing.
    pub stream: String,
    /// The duplicate window of a stream pg2sink creates: a change sent
    /// again within it (a replay after a restart) is discarded.
    pub duplicate_window: Duration,
    /// Replicas of a stream pg2sink creates (clusters).
    pub replicas: usize,
    /// Messages published whose acknowledgement has not come back yet.
    pub max_in_flight: usize,
    /// How long to wait for one acknowledgement (or API answer) before the
    /// message is sent again.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for NatsConfig {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("user", &self.user)
            .field("password", &self.password)
            .field("token", &self.token)
            .field("creds_file", &self.creds_file)
            .field("ca_file", &self.ca_file)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream", &self.stream)
            .field("duplicate_window", &self.duplicate_window)
            .finish_non_exhaustive()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            user: None,
            password: None,
            token: None,
            creds_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            subject_prefix: "pg2sink".into(),
            stream: "PG2SINK".into(),
            duplicate_window: Duration::from_secs(300),
            replicas: 1,
            max_in_flight: 4096,
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

/// A URL with its password (if any) replaced by `****`, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparsable: hide whatever could be credentials.
        Err(_) => match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://****@{host}"),
            _ => url.to_string(),
        },
    }
}
