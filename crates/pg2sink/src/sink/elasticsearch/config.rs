//! Options of the Elasticsearch sink (`--sink.elasticsearch.*`).

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::sink::http::RetryPolicy;

#[derive(Clone, Debug)]
pub struct ElasticsearchConfig {
    /// Base URLs of the cluster's nodes; requests go to the first that
    /// answers, the next one after a connection failure.
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// An API key, sent as `Authorization: ApiKey <key>` (the base64 form
    /// Elasticsearch returns as `encoded`).
    pub api_key: Option<Secret>,
    /// PEM file of the CA that signed the cluster's certificate.
    pub ca_file: Option<PathBuf>,
    /// Indices are named `<prefix><schema>.<table>`, lowercased.
    pub index_prefix: String,
    /// Actions per `_bulk` request.
    pub bulk_actions: usize,
    /// Timeout of one request.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        ElasticsearchConfig {
            urls: vec!["http://127.0.0.1:9200".into()],
            username: None,
            password: None,
            api_key: None,
            ca_file: None,
            index_prefix: String::new(),
            bulk_actions: 1000,
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}
