//! The Elasticsearch REST API as the sink uses it: the root (health check),
//! index creation and mappings, `_bulk`, `_mget`, `_refresh` and
//! `_delete_by_query`. Nothing else, so Elasticsearch 8 and OpenSearch 2
//! both answer it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::config::ElasticsearchConfig;
use crate::sink::http::{self, Reply, RetryPolicy, SinkStats};
use crate::sink::SinkError;

pub struct Client {
    http: reqwest::Client,
    urls: Vec<String>,
    /// The URL that answered last.
    current: AtomicUsize,
    retry: RetryPolicy,
    pub stats: Arc<SinkStats>,
}

/// A document as `_mget` found it.
pub struct Found {
    pub version: i64,
    pub source: Map<String, Value>,
}

impl Client {
    pub fn new(config: &ElasticsearchConfig) -> Result<Client, SinkError> {
        let definite = |context: String, e: Box<dyn std::error::Error + Send + Sync>| {
            SinkError::definite(context, e)
        };
        if config.urls.is_empty() {
            return Err(definite(
                "no Elasticsearch URL".into(),
                "set --sink.elasticsearch.url".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        let auth = match (&config.api_key, &config.username) {
            (Some(key), _) => Some(format!("ApiKey {}", key.expose())),
            (None, Some(user)) => {
                use base64::Engine;
                let pair = format!(
                    "{user}:{}",
                    config.password.as_ref().map_or("", |p| p.expose())
                );
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None) => None,
        };
        if let Some(auth) = auth {
            let mut value = HeaderValue::from_str(&auth)
                .map_err(|e| definite("the Elasticsearch credentials".into(), Box::new(e)))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.request_timeout)
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| definite(format!("reading {}", path.display()), Box::new(e)))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| definite(format!("reading {}", path.display()), Box::new(e)))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| definite("building the HTTP client".into(), Box::new(e)))?;
        Ok(Client {
            http,
            urls: config
                .urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            retry: config.retry.clone(),
            stats: Arc::new(SinkStats::default()),
        })
    }

    /// Sends a request, retrying transient failures on the next URL.
    async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Reply, SinkError> {
        let mut attempt = 0usize;
        let start = self.current.load(Ordering::Relaxed);
        let reply = http::send(what, &self.retry, &self.stats, || {
            let n = (start + attempt) % self.urls.len();
            attempt += 1;
            self.current.store(n, Ordering::Relaxed);
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.urls[n]));
            if let Some((bytes, content_type)) = &body {
                request = request
                    .header(CONTENT_TYPE, *content_type)
                    .body(bytes.clone());
            }
            request
        })
        .await?;
        Ok(reply)
    }

    async fn call_json(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<Reply, SinkError> {
        let bytes = Bytes::from(body.to_string());
        self.call(what, method, path, Some((bytes, "application/json")))
            .await
    }

    /// One try at the cluster's root on every URL: fails fast, saying why.
    pub async fn health_check(&self) -> Result<String, SinkError> {
        // A URL that answered was reached: "cannot reach" would send the
        // user to the network when the answer says what is wrong.
        let (mut failures, mut answered) = (vec![], vec![]);
        for (n, url) in self.urls.iter().enumerate() {
            match http::send_once(self.http.get(format!("{url}/"))).await {
                Ok(reply) if reply.is_success() => {
                    self.current.store(n, Ordering::Relaxed);
                    let version = reply.body["version"]["number"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_string();
                    let distribution = reply.body["version"]["distribution"]
                        .as_str()
                        .unwrap_or("elasticsearch");
                    return Ok(format!("{distribution} {version}"));
                }
                Ok(reply) if reply.status == 401 || reply.status == 403 => {
                    return Err(SinkError::definite(format!("Elasticsearch at {url} refused the credentials"), reply.error_text()).hint("check --sink.elasticsearch.username/password or --sink.elasticsearch.api-key"));
                }
                Ok(reply) => answered.push(format!("{url}: {}", reply.error_text())),
                Err(e) => failures.push(format!("{url}: {}", http::describe(&e))),
            }
        }
        if !answered.is_empty() {
            answered.extend(failures);
            return Err(SinkError::definite("Elasticsearch answered the start-up check with an error", answered.join("; ")).hint("the answer above says why; check that --sink.elasticsearch.url is the cluster's own address (no path) and the cluster's health"));
        }
        Err(SinkError::Transient {
            context: "cannot reach Elasticsearch".into(),
            source: format!(
                "{}\n  hint: check --sink.elasticsearch.url and that the cluster is up (TLS: --sink.elasticsearch.ca-file)",
                failures.join("; ")
            )
            .into(),
        })
    }

    /// Creates `index` with `properties`, or adds to its mapping the
    /// properties it lacks. Returns the fields whose existing mapping has
    /// another type (kept as they are).
    pub async fn ensure_index(
        &self,
        index: &str,
        properties: &Map<String, Value>,
    ) -> Result<Vec<String>, SinkError> {
        let path = format!("/{}", encode(index));
        let reply = self
            .call(
                "reading an index mapping",
                Method::GET,
                &format!("{path}/_mapping"),
                None,
            )
            .await?;
        let existing = match reply.status {
            404 => {
                let body = json!({
                    "settings": {"index": {"number_of_shards": 1}},
                    "mappings": {"dynamic": false, "properties": properties},
                });
                let created = self
                    .call_json("creating an index", Method::PUT, &path, &body)
                    .await?;
                if created.is_success() {
                    tracing::info!(index, "created Elasticsearch index");
                    return Ok(vec![]);
                }
                if created.body["error"]["type"] != "resource_already_exists_exception" {
                    return Err(created.definite(format!("creating index {index}")));
                }
                Map::new()
            }
            _ if reply.is_success() => reply
                .body
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|m| m["mappings"]["properties"].as_object())
                .cloned()
                .unwrap_or_default(),
            _ => return Err(reply.definite(format!("reading the mapping of {index}"))),
        };
        let mut missing = Map::new();
        let mut changed = vec![];
        for (name, mapping) in properties {
            match existing.get(name) {
                None => {
                    missing.insert(name.clone(), mapping.clone());
                }
                Some(old) if old.get("type") != mapping.get("type") => changed.push(name.clone()),
                Some(_) => {}
            }
        }
        if !missing.is_empty() {
            let reply = self
                .call_json(
                    "updating an index mapping",
                    Method::PUT,
                    &format!("{path}/_mapping"),
                    &json!({"properties": missing}),
                )
                .await?;
            if !reply.is_success() {
                return Err(reply.definite(format!("adding fields to the mapping of {index}")));
            }
            tracing::info!(index, fields = ?missing.keys().collect::<Vec<_>>(), "added fields to Elasticsearch mapping");
        }
        Ok(changed)
    }

    /// Sends one `_bulk` body (NDJSON); the answer's items say what
    /// happened to each action.
    pub async fn bulk(&self, body: Vec<u8>) -> Result<Reply, SinkError> {
        let reply = self
            .call(
                "_bulk",
                Method::POST,
                "/_bulk",
                Some((Bytes::from(body), "application/x-ndjson")),
            )
            .await?;
        if !reply.is_success() {
            return Err(reply.definite("a _bulk request was rejected"));
        }
        Ok(reply)
    }

    /// The current version and source of documents, by (index, id).
    pub async fn mget(
        &self,
        docs: &[(String, String)],
    ) -> Result<HashMap<(String, String), Found>, SinkError> {
        let mut found = HashMap::new();
        if docs.is_empty() {
            return Ok(found);
        }
        let body = json!({
            "docs": docs.iter().map(|(index, id)| json!({"_index": index, "_id": id})).collect::<Vec<_>>()
        });
        let reply = self
            .call_json("_mget", Method::POST, "/_mget", &body)
            .await?;
        if !reply.is_success() {
            return Err(reply.definite("reading documents with _mget"));
        }
        for doc in reply.body["docs"].as_array().into_iter().flatten() {
            if doc["found"] != true {
                continue;
            }
            let (Some(index), Some(id), Some(source)) = (
                doc["_index"].as_str(),
                doc["_id"].as_str(),
                doc["_source"].as_object(),
            ) else {
                continue;
            };
            found.insert(
                (index.to_string(), id.to_string()),
                Found {
                    version: doc["_version"].as_i64().unwrap_or(0),
                    source: source.clone(),
                },
            );
        }
        Ok(found)
    }

    /// Deletes every document of `index` (a truncated table).
    pub async fn delete_all(&self, index: &str) -> Result<(), SinkError> {
        let path = format!("/{}", encode(index));
        let reply = self
            .call("_refresh", Method::POST, &format!("{path}/_refresh"), None)
            .await?;
        if reply.status == 404 {
            return Ok(());
        }
        if !reply.is_success() {
            return Err(reply.definite(format!("refreshing {index}")));
        }
        let reply = self
            .call_json(
                "_delete_by_query",
                Method::POST,
                &format!("{path}/_delete_by_query?conflicts=proceed&refresh=true"),
                &json!({"query": {"match_all": {}}}),
            )
            .await?;
        if !reply.is_success() {
            return Err(reply.definite(format!("deleting the documents of {index}")));
        }
        if let Some(failures) = reply.body["failures"].as_array().filter(|f| !f.is_empty()) {
            return Err(SinkError::Transient {
                context: format!("deleting the documents of {index}"),
                source: Value::Array(failures.clone()).to_string().into(),
            });
        }
        Ok(())
    }
}

/// An index name in a URL path.
fn encode(index: &str) -> String {
    percent_encoding::utf8_percent_encode(index, percent_encoding::NON_ALPHANUMERIC).to_string()
}
