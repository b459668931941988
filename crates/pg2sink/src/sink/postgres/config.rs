//! Options of the Postgres sink (`--sink.postgres.*`).

use std::time::Duration;

use crate::secret::Secret;
use crate::sink::http::RetryPolicy;

#[derive(Clone, Debug)]
pub struct PostgresSinkConfig {
    /// The target database: a `postgres://` URL or libpq `key=value`
    /// string. Unlike `--url`, libpq's `PG*` variables are not consulted
    /// (they describe the source).
    pub url: Secret,
    /// Schema of the target tables; `None` keeps each source table's schema.
    pub schema: Option<String>,
    /// Schema of the sink's position table in the target.
    pub state_schema: String,
    /// The stream whose position the target stores (the slot's name): one
    /// target can take several sources.
    pub stream: String,
    /// Rows per statement.
    pub batch_rows: usize,
    /// Limit for establishing a connection when the URL sets none.
    pub connect_timeout: Duration,
    /// How long the target may stay silent after a request
    /// (`--silence-timeout`); `None`: no bound.
    pub silence_timeout: Option<Duration>,
    pub retry: RetryPolicy,
}

impl Default for PostgresSinkConfig {
    fn default() -> Self {
        PostgresSinkConfig {
            url: Secret::default(),
            schema: None,
            state_schema: "pg2sink".into(),
            stream: "pg2sink".into(),
            batch_rows: 5000,
            connect_timeout: Duration::from_secs(10),
            silence_timeout: Some(Duration::from_secs(60)),
            retry: RetryPolicy::default(),
        }
    }
}
