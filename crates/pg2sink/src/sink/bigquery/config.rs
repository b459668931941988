//! Options of the BigQuery sink (`--sink.bigquery.*`).

use std::path::PathBuf;
use std::time::Duration;

use crate::sink::http::RetryPolicy;

#[derive(Clone, Debug)]
pub struct BigQueryConfig {
    pub project_id: String,
    /// Created if missing, in `location`, with `table_expiration`.
    pub dataset: String,
    pub location: String,
    /// Default expiration of the dataset's tables (only when pg2sink
    /// creates the dataset).
    pub table_expiration: Option<Duration>,
    /// A service-account key file; otherwise application-default
    /// credentials, or none at all when `endpoint` is set (an emulator).
    pub credentials: Option<PathBuf>,
    /// The REST endpoint (default `https://bigquery.googleapis.com`).
    pub endpoint: Option<String>,
    /// Rows per `insertAll` request.
    pub batch_rows: usize,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for BigQueryConfig {
    fn default() -> Self {
        BigQueryConfig {
            project_id: String::new(),
            dataset: "pg2sink".into(),
            location: "US".into(),
            table_expiration: None,
            credentials: None,
            endpoint: None,
            batch_rows: 500,
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

pub const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";
