//! What HTTP sinks share: one way to send a request, classify the answer
//! and retry, so every sink treats the network, 429 and 5xx alike.
//!
//! Promises: a request that fails transiently (connection refused or reset,
//! timeout, 408, 429, 5xx) is sent again after the crate's one back-off
//! policy (the runner [`crate::retry::run`]: exponential, with jitter) until
//! [`RetryPolicy::give_up_after`] has passed; then it fails as
//! [`SinkError::Transient`]. Any other answer is returned to the caller, who
//! knows what a 404 or a 400 means for its request. 401 and 403 are
//! [`SinkError::Definite`]: retrying does not fix credentials.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::SinkError;
use crate::retry::{self, Failure};

/// How long and how patiently a sink retries a transient failure.
pub use crate::retry::Policy as RetryPolicy;

/// A sink's counters: what it sent, how long it took, what went wrong.
/// Each flush logs them (target `pg2sink::sink`); all but the batch timing
/// also feed `pg2sink_sink_events_total{event}` on `/metrics`.
#[derive(Debug)]
pub struct SinkStats {
    pub requests: SinkCounter,
    pub retries: SinkCounter,
    pub errors: SinkCounter,
    /// Rows (documents, table rows; for Kafka, messages, tombstones and
    /// truncate copies included) sent and accepted.
    pub rows: SinkCounter,
    /// Changes the sink refused because it already holds a newer version
    /// (expected after replays).
    pub stale: SinkCounter,
    pub batches: SinkCounter,
    pub latency_micros: SinkCounter,
}

/// One of [`SinkStats`]' counters, with the `event` label it feeds on
/// `/metrics` (none for the batch timing, which the sink driver's
/// histograms already show).
#[derive(Debug)]
pub struct SinkCounter {
    value: AtomicU64,
    event: Option<&'static str>,
}

impl SinkCounter {
    const fn new(event: Option<&'static str>) -> Self {
        Self {
            value: AtomicU64::new(0),
            event,
        }
    }
}

impl Default for SinkStats {
    fn default() -> Self {
        Self {
            requests: SinkCounter::new(Some("request")),
            retries: SinkCounter::new(Some("retry")),
            errors: SinkCounter::new(Some("error")),
            rows: SinkCounter::new(Some("row")),
            stale: SinkCounter::new(Some("stale")),
            batches: SinkCounter::new(None),
            latency_micros: SinkCounter::new(None),
        }
    }
}

impl SinkStats {
    pub fn add(counter: &SinkCounter, n: u64) {
        counter.value.fetch_add(n, Ordering::Relaxed);
        if let Some(event) = counter.event {
            crate::ops::metrics::sink_event(event, n);
        }
    }

    pub fn get(counter: &SinkCounter) -> u64 {
        counter.value.load(Ordering::Relaxed)
    }

    /// Records one flushed batch and logs it.
    pub fn batch(&self, sink: &'static str, rows: u64, elapsed: Duration) {
        Self::add(&self.batches, 1);
        Self::add(&self.latency_micros, elapsed.as_micros() as u64);
        tracing::debug!(
            target: "pg2sink::sink",
            sink,
            batch_rows = rows,
            latency_ms = elapsed.as_millis() as u64,
            rows_total = Self::get(&self.rows),
            retries_total = Self::get(&self.retries),
            errors_total = Self::get(&self.errors),
            stale_total = Self::get(&self.stale),
            "batch flushed"
        );
    }
}

/// An answer that was not a transient failure.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub body: Value,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The server's own words for an error, for messages.
    pub fn error_text(&self) -> String {
        let e = &self.body["error"];
        let text = match e {
            Value::String(s) => s.clone(),
            Value::Object(_) => e
                .get("message")
                .or_else(|| e.get("reason"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string()),
            _ => match &self.body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        };
        format!("HTTP {}: {}", self.status, truncate(&text, 2000))
    }

    /// A definite error for this answer.
    pub fn definite(&self, context: impl Into<String>) -> SinkError {
        SinkError::definite(context, self.error_text())
    }
}

/// Whether a status is worth retrying.
pub fn transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// Sends the request `make` builds (again for each attempt), retrying
/// transient failures. `what` names the request in logs and errors.
pub async fn send(
    what: &str,
    policy: &RetryPolicy,
    stats: &SinkStats,
    mut make: impl FnMut() -> reqwest::RequestBuilder,
) -> Result<Reply, SinkError> {
    let sent = retry::run(
        policy,
        what,
        |failure: &Failure<SinkError>| {
            SinkStats::add(&stats.errors, 1);
            failure.verdict()
        },
        |attempt| {
            if attempt > 0 {
                SinkStats::add(&stats.retries, 1);
            }
            SinkStats::add(&stats.requests, 1);
            let request = make();
            async move {
                match send_once(request).await {
                    Ok(reply) if transient_status(reply.status) => {
                        Err(Failure::Transient(reply.error_text()))
                    }
                    Ok(reply) if reply.status == 401 || reply.status == 403 => {
                        Err(Failure::Definite(reply.definite(format!(
                            "{what}: the server refused the credentials"
                        ))))
                    }
                    Ok(reply) => Ok(reply),
                    Err(e) => Err(Failure::Transient(describe(&e))),
                }
            }
        },
    )
    .await;
    sent.map_err(|stopped| match stopped.into_inner() {
        Failure::Definite(refused) => refused,
        Failure::Transient(failure) => SinkError::Transient {
            context: format!("{what}: still failing after {:?}", policy.give_up_after),
            source: failure.into(),
        },
    })
}

/// One attempt, no retry: for start-up health checks, which must fail fast.
pub async fn send_once(request: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(Reply { status, body })
}

/// A reqwest error with its causes (reqwest's own text omits them), and
/// without the password of its URL (reqwest's text quotes the URL whole).
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url().filter(|u| u.password().is_some()) {
        let mut hidden = url.clone();
        let _ = hidden.set_password(Some("****"));
        text = text.replace(url.as_str(), hidden.as_str());
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The key of a row as one string: the JSON text of the key column's value
/// when there is one key column and it is a string, else the JSON array of
/// the key values in column order. Unambiguous: two different keys never
/// give the same text.
pub fn key_text(values: &[&Value]) -> String {
    match values {
        [Value::String(s)] => s.clone(),
        [v] => v.to_string(),
        many => Value::Array(many.iter().map(|v| (*v).clone()).collect()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_unambiguous() {
        assert_eq!(key_text(&[&json!(1)]), "1");
        assert_eq!(key_text(&[&json!("a,b")]), "a,b");
        assert_eq!(key_text(&[&json!(7), &json!("x")]), r#"[7,"x"]"#);
        assert_ne!(
            key_text(&[&json!("a"), &json!("b,c")]),
            key_text(&[&json!("a,b"), &json!("c")])
        );
    }

    #[test]
    fn transient_statuses() {
        assert!(transient_status(429) && transient_status(503) && transient_status(408));
        assert!(!transient_status(400) && !transient_status(404) && !transient_status(409));
    }
}
