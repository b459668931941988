//! The BigQuery REST API (v2) as the sink uses it: datasets, tables
//! (get, insert, patch), `tabledata.insertAll` and `jobs.query`.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

use super::config::{BigQueryConfig, DEFAULT_ENDPOINT};
use crate::sink::http::{self, Reply, RetryPolicy, SinkStats};
use crate::sink::SinkError;

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

pub struct Client {
    http: reqwest::Client,
    /// `<endpoint>/bigquery/v2/projects/<project>`.
    base: String,
    endpoint: String,
    pub project: String,
    pub dataset: String,
    location: String,
    table_expiration_ms: Option<u128>,
    credentials: Credentials,
    retry: RetryPolicy,
    pub stats: Arc<SinkStats>,
}

enum Credentials {
    /// An emulator: no Authorization header.
    None,
    KeyFile(std::path::PathBuf),
    ApplicationDefault,
    Ready(Arc<dyn gcp_auth::TokenProvider>),
}

fn definite(context: impl Into<String>, detail: impl std::fmt::Display) -> SinkError {
    SinkError::definite(context, detail)
}

impl Client {
    pub fn new(config: &BigQueryConfig) -> Result<Client, SinkError> {
        if config.project_id.is_empty() {
            return Err(definite(
                "no BigQuery project",
                "set --sink.bigquery.project-id (PG2SINK_SINK_BIGQUERY_PROJECT_ID)",
            ));
        }
        let endpoint = config
            .endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_string();
        let credentials = match (&config.credentials, &config.endpoint) {
            (Some(path), _) => Credentials::KeyFile(path.clone()),
            (None, Some(_)) => Credentials::None,
            (None, None) => Credentials::ApplicationDefault,
        };
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| definite("building the HTTP client", e))?;
        Ok(Client {
            http,
            base: format!("{endpoint}/bigquery/v2/projects/{}", config.project_id),
            endpoint,
            project: config.project_id.clone(),
            dataset: config.dataset.clone(),
            location: config.location.clone(),
            table_expiration_ms: config.table_expiration.map(|d| d.as_millis()),
            credentials,
            retry: config.retry.clone(),
            stats: Arc::new(SinkStats::default()),
        })
    }

    /// Loads the credentials once (at the health check).
    async fn load_credentials(&mut self) -> Result<(), SinkError> {
        let provider: Arc<dyn gcp_auth::TokenProvider> = match &self.credentials {
            Credentials::KeyFile(path) => Arc::new(
                gcp_auth::CustomServiceAccount::from_file(path).map_err(|e| {
                    definite(format!("reading the service-account key {}", path.display()), e)
                })?,
            ),
            Credentials::ApplicationDefault => gcp_auth::provider().await.map_err(|e| {
                definite("no Google credentials found", e).hint(
                    "pass --sink.bigquery.credentials=KEY.json, set GOOGLE_APPLICATION_CREDENTIALS, or run on GCP with a service account",
                )
            })?,
            Credentials::None | Credentials::Ready(_) => return Ok(()),
        };
        self.credentials = Credentials::Ready(provider);
        Ok(())
    }

    async fn token(&self) -> Result<Option<String>, SinkError> {
        match &self.credentials {
            Credentials::Ready(provider) => match provider.token(&[SCOPE]).await {
                Ok(token) => Ok(Some(format!("Bearer {}", token.as_str()))),
                Err(e) => Err(SinkError::Transient {
                    context: "getting a Google access token".into(),
                    source: Box::new(e),
                }),
            },
            _ => Ok(None),
        }
    }

    async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, SinkError> {
        let token = self.token().await?;
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| Bytes::from(b.to_string()));
        http::send(what, &self.retry, &self.stats, || {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(token) = &token {
                request = request.header(AUTHORIZATION, token);
            }
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            request
        })
        .await
    }

    /// Checks the endpoint and credentials with one request (no retry) and
    /// creates the dataset if it is missing.
    pub async fn health_check(&mut self) -> Result<(), SinkError> {
        self.load_credentials().await?;
        let token = self
            .token()
            .await
            .map_err(|e| definite("Google credentials", e.to_string()))?;
        let mut request = self
            .http
            .get(format!("{}/datasets/{}", self.base, self.dataset));
        if let Some(token) = &token {
            request = request.header(AUTHORIZATION, token);
        }
        let reply = http::send_once(request)
            .await
            .map_err(|e| SinkError::Transient {
                context: format!("cannot reach BigQuery at {}", self.endpoint),
                source: format!(
                    "{}\n  hint: check --sink.bigquery.endpoint and the network",
                    http::describe(&e)
                )
                .into(),
            })?;
        match reply.status {
            200..=299 => Ok(()),
            401 | 403 => Err(definite(
                format!("BigQuery refused access to project {} dataset {}", self.project, self.dataset),
                reply.error_text(),
            )
            .hint("check --sink.bigquery.credentials and the account's BigQuery roles (Data Editor, Job User)")),
            404 => self.create_dataset().await,
            _ => Err(reply.definite(format!("reading dataset {}.{}", self.project, self.dataset))),
        }
    }

    async fn create_dataset(&self) -> Result<(), SinkError> {
        let mut body = json!({
            "datasetReference": {"projectId": self.project, "datasetId": self.dataset},
            "location": self.location,
        });
        if let Some(ms) = self.table_expiration_ms {
            body["defaultTableExpirationMs"] = json!(ms.to_string());
        }
        let reply = self
            .call("creating a dataset", Method::POST, "/datasets", Some(&body))
            .await?;
        if reply.is_success() || reply.status == 409 {
            tracing::info!(project = %self.project, dataset = %self.dataset, location = %self.location, "created BigQuery dataset");
            return Ok(());
        }
        Err(definite(
            format!("cannot create dataset {}.{}", self.project, self.dataset),
            reply.error_text(),
        )
        .hint("create it yourself or grant the account BigQuery Data Editor on the project"))
    }

    /// The table's resource, or None when it does not exist.
    pub async fn get_table(&self, table: &str) -> Result<Option<Value>, SinkError> {
        let reply = self
            .call(
                "reading a table",
                Method::GET,
                &format!("/datasets/{}/tables/{table}", self.dataset),
                None,
            )
            .await?;
        match reply.status {
            404 => Ok(None),
            _ if reply.is_success() => Ok(Some(reply.body)),
            _ => Err(reply.definite(format!("reading table {table}"))),
        }
    }

    pub async fn create_table(&self, resource: &Value) -> Result<(), SinkError> {
        let reply = self
            .call(
                "creating a table",
                Method::POST,
                &format!("/datasets/{}/tables", self.dataset),
                Some(resource),
            )
            .await?;
        if reply.is_success() || reply.status == 409 {
            return Ok(());
        }
        Err(reply.definite("creating a table (schema rejected)"))
    }

    /// Replaces the table's schema (only ever with added columns).
    pub async fn patch_schema(&self, table: &str, fields: &[Value]) -> Result<(), SinkError> {
        let reply = self
            .call(
                "adding columns",
                Method::PATCH,
                &format!("/datasets/{}/tables/{table}", self.dataset),
                Some(&json!({"schema": {"fields": fields}})),
            )
            .await?;
        if reply.is_success() {
            return Ok(());
        }
        Err(reply.definite(format!("adding columns to {table} (schema rejected)")))
    }

    /// Runs a GoogleSQL statement; returns the answer (rows in `rows`).
    pub async fn query(&self, sql: &str) -> Result<Value, SinkError> {
        let body = json!({
            "query": sql,
            "useLegacySql": false,
            "location": self.location,
            "timeoutMs": 60000,
        });
        let reply = self
            .call("a query", Method::POST, "/queries", Some(&body))
            .await?;
        if !reply.is_success() {
            return Err(reply.definite(format!("query rejected: {sql}")));
        }
        let errors = &reply.body["errors"];
        let error_result = &reply.body["status"]["errorResult"];
        if errors.as_array().is_some_and(|e| !e.is_empty()) || error_result.is_object() {
            let what = if error_result.is_object() {
                error_result
            } else {
                errors
            };
            return Err(definite(format!("query failed: {sql}"), what.to_string()));
        }
        if reply.body["jobComplete"] == false {
            return Err(SinkError::Transient {
                context: "a query did not finish within 60s".into(),
                source: sql.to_string().into(),
            });
        }
        Ok(reply.body)
    }

    /// Streams rows with `tabledata.insertAll`; each row is `{insertId, json}`.
    pub async fn insert_all(&self, table: &str, rows: Vec<Value>) -> Result<(), SinkError> {
        let n = rows.len() as u64;
        let body = json!({"skipInvalidRows": false, "ignoreUnknownValues": false, "rows": rows});
        let reply = self
            .call(
                "insertAll",
                Method::POST,
                &format!("/datasets/{}/tables/{table}/insertAll", self.dataset),
                Some(&body),
            )
            .await?;
        if !reply.is_success() {
            return Err(reply.definite(format!("insertAll into {table} was rejected")));
        }
        let errors = reply.body["insertErrors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if errors.is_empty() {
            SinkStats::add(&self.stats.rows, n);
            return Ok(());
        }
        SinkStats::add(&self.stats.errors, errors.len() as u64);
        // "stopped" rows were fine but not written because another was not.
        let reasons: Vec<&Value> = errors
            .iter()
            .flat_map(|e| e["errors"].as_array().into_iter().flatten())
            .filter(|e| e["reason"] != "stopped")
            .collect();
        let transient = reasons.iter().all(|e| {
            matches!(
                e["reason"].as_str(),
                Some("backendError" | "internalError" | "timeout" | "rateLimitExceeded")
            )
        });
        let text = format!(
            "{} rows failed: {}",
            errors.len(),
            Value::Array(reasons.into_iter().cloned().collect())
        );
        if transient {
            return Err(SinkError::Transient {
                context: format!("insertAll into {table}"),
                source: text.into(),
            });
        }
        Err(definite(format!("BigQuery rejected rows of {table}"), text))
    }
}
