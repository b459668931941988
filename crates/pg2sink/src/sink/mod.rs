//! Sinks and the contract they follow.
//!
//! # The contract
//!
//! A sink receives [`SinkEvent`]s in commit order: schemas and modifications,
//! and after each transaction a [`SinkEvent::Commit`] carrying the WAL
//! position that ends it. [`Sink::flush`] makes everything written so far
//! durable. The driver ([`run`]) reports, through a `watch` channel, the
//! newest commit position whose events are all durable; the source confirms
//! to Postgres only up to that position, never further.
//!
//! Delivery is at least once: after a crash, changes past the last confirmed
//! position are sent again. Each sink documents how replays are made
//! harmless (the file sink: consumers de-duplicate on (`lsn`, `sequence`);
//! BigQuery and Elasticsearch: writes keyed on the primary key and ordered
//! by (`lsn`, `sequence`), so an older change never wins over a newer one;
//! Postgres: the applied position is stored with the rows and replays are
//! skipped, exactly once).
//! Kafka: messages keyed on the primary key, so a key's replays follow its
//! changes in one partition and consumers skip them by (`lsn`, `sequence`)).
//! NATS: JetStream discards a message whose `Nats-Msg-Id` it already holds).
//!
//! Every sink also:
//! - answers [`Sink::health_check`] before streaming starts, failing fast
//!   with a [`SinkError::Definite`] that says what is wrong and what to do
//!   (server unreachable, credentials refused, dataset or index unusable);
//! - batches: writes are buffered until the driver flushes, which it does
//!   by size ([`FlushPolicy::max_unflushed_bytes`]) and time
//!   ([`FlushPolicy::max_delay`]); a sink splits a flush into requests of
//!   its own bulk size;
//! - renders each change's rows once: a [`crate::model::Row`] is the tuple
//!   as pgoutput sent it, written as JSON straight from its text
//!   ([`crate::model::Row::write_json`]) or read as typed values
//!   ([`crate::model::Row::to_json`], [`crate::model::Row::get`]);
//! - reads a table's shape from [`SinkEvent::Schema`]'s `Arc<Table>` by
//!   field (names, columns, `Column::value_type`, key); only the sinks that
//!   publish the Avro schema render it ([`crate::model::Schema::avro`]);
//! - retries transient failures (network, 429, 5xx) with the crate's one
//!   retry runner ([`crate::retry::run`], or [`crate::retry::Attempts`] for
//!   a loop that changes the sink between attempts), supplying only the
//!   classifier, for `--sink.retry-timeout`; and returns
//!   [`SinkError::Definite`] with a [`Problem`] (what is wrong, a detail, a
//!   hint) at once for what retrying cannot fix (bad credentials, a schema
//!   or a row the server rejects);
//! - counts batches, latency, retries, errors and stale writes
//!   ([`http::SinkStats`]).
//!
//! One folder per sink, each of the same shape: `config` (options),
//! `client` (the server's API), `encoding` (rows as the server takes them),
//! `schema` or `mapping` (the server's tables from the source's `Table`),
//! `tests`. The contract, each sink's choices and the guide to writing a
//! sink ("Writing a sink") are in `docs/sinks.md`.

pub mod bigquery;
pub mod elasticsearch;
pub mod file;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod postgres;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::Problem;
use crate::model::{ImportChunk, Lsn, Modification, Schema};

/// What flows from the source to a sink, in commit order.
#[derive(Debug)]
pub enum SinkEvent {
    Schema(Schema),
    Modification(Modification),
    /// Rows of an import chunk, emitted together at the chunk's high
    /// watermark: to a sink, one `Modification` (`op: import`) per row.
    Import(ImportChunk),
    /// Every event before this one belongs to a transaction that ended at or
    /// before `end_lsn`; once they are durable, `end_lsn` may be confirmed.
    Commit {
        end_lsn: Lsn,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: the sink's server or storage may recover.
    #[error("{context}: {source}")]
    Transient {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Retrying will not help; stop and say why: what is wrong, the
    /// server's words as the detail, and what to do as the hint.
    #[error("{}", definite_text(.0))]
    Definite(Problem),
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient { .. })
    }

    /// A definite error: `message` says what failed, `detail` why (often
    /// the server's answer).
    pub fn definite(message: impl Into<String>, detail: impl std::fmt::Display) -> SinkError {
        SinkError::Definite(Problem::new(message).detail(detail.to_string()))
    }

    /// This error with `hint` (what to do) when it is definite; a
    /// transient error is returned as it is.
    pub fn hint(self, hint: impl Into<String>) -> SinkError {
        match self {
            SinkError::Definite(problem) => SinkError::Definite(problem.hint(hint)),
            transient => transient,
        }
    }

    /// The problem, when the error is definite.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            SinkError::Definite(problem) => Some(problem),
            SinkError::Transient { .. } => None,
        }
    }
}

/// A definite sink error as one line per part, as sink errors have always
/// read: `message: detail`, then the hint.
fn definite_text(problem: &Problem) -> String {
    let mut text = problem.message.clone();
    if let Some(detail) = &problem.detail {
        text.push_str(": ");
        text.push_str(detail);
    }
    if let Some(hint) = &problem.hint {
        text.push_str("\n  hint: ");
        text.push_str(hint);
    }
    text
}

/// What a sink knows of a change's table, by `schema.table`: the source
/// always sends a table's schema before its changes, so a miss is a bug.
pub fn table_of<'a, T>(
    tables: &'a HashMap<String, T>,
    m: &Modification,
) -> Result<&'a T, SinkError> {
    let qualified = format!("{}.{}", m.namespace, m.name);
    tables.get(&qualified).ok_or_else(|| {
        SinkError::definite(
            format!("a change of {qualified} came before its schema"),
            "the source sends a table's schema before its changes",
        )
    })
}

pub use crate::model::value::json_size;

/// One destination. Implementations buffer as they like; `flush` is the
/// only durability point.
#[allow(async_fn_in_trait)]
pub trait Sink: Send {
    /// A short name for logs and metrics (`file`, `bigquery`, ...).
    fn name(&self) -> &'static str;
    /// Checks, before streaming starts, that the sink can be written to
    /// (reachable, credentials accepted, destination usable), creating what
    /// it needs. Fails fast with a definite error saying what to do.
    async fn health_check(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn write_schema(&mut self, schema: &Schema) -> Result<(), SinkError>;
    async fn write_modification(&mut self, modification: &Modification) -> Result<(), SinkError>;
    /// Writes an import chunk's rows. The default writes each row's
    /// `Modification`; a sink may write the rows faster from their text.
    async fn write_import(&mut self, chunk: &ImportChunk) -> Result<(), SinkError> {
        for modification in chunk.modifications() {
            self.write_modification(&modification).await?;
        }
        Ok(())
    }
    /// The transaction whose modifications were written last ended at
    /// `end_lsn`. Sinks that keep source transactions whole (postgres) use
    /// it as a boundary; the others need not look.
    async fn write_commit(&mut self, _end_lsn: Lsn) -> Result<(), SinkError> {
        Ok(())
    }
    /// Makes every write so far durable — at least every write before the
    /// last [`Sink::write_commit`] (the driver reports only commits).
    async fn flush(&mut self) -> Result<(), SinkError>;
    /// Bytes written but not yet flushed; the driver flushes past a limit.
    fn unflushed_bytes(&self) -> usize;
}

/// When the driver flushes.
#[derive(Clone, Debug)]
pub struct FlushPolicy {
    /// Flush once this many bytes are unflushed, even mid-stream.
    pub max_unflushed_bytes: usize,
    /// Flush a finished transaction no later than this after it arrived.
    pub max_delay: Duration,
    /// When the queue runs dry, wait this long after the first unflushed
    /// commit for more before flushing: one fsync then covers many small
    /// transactions, at the cost of at most this much latency.
    pub linger: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_unflushed_bytes: 8 << 20,
            max_delay: Duration::from_millis(100),
            linger: Duration::from_millis(1),
        }
    }
}

/// Events as the source hands them over: in order, many at a time, so the
/// two sides meet once per batch rather than once per row.
#[derive(Debug)]
pub struct SinkBatch {
    pub events: Vec<SinkEvent>,
    /// Where the emptied vector goes back, for the source to fill again
    /// instead of allocating one per batch.
    pub recycle: Option<std::sync::mpsc::Sender<Vec<SinkEvent>>>,
}

/// The driver's side of the queue: events one at a time out of batches.
struct Inbox {
    batches: mpsc::Receiver<SinkBatch>,
    /// The batch being read, last event first.
    current: Vec<SinkEvent>,
    recycle: Option<std::sync::mpsc::Sender<Vec<SinkEvent>>>,
}

impl Inbox {
    /// The next event if one is queued, without waiting.
    fn try_recv(&mut self) -> Result<SinkEvent, mpsc::error::TryRecvError> {
        loop {
            if let Some(event) = self.current.pop() {
                return Ok(event);
            }
            let batch = self.batches.try_recv()?;
            self.open(batch);
        }
    }

    /// The next event; `None` once the source is gone.
    async fn recv(&mut self) -> Option<SinkEvent> {
        loop {
            if let Some(event) = self.current.pop() {
                return Some(event);
            }
            let batch = self.batches.recv().await?;
            self.open(batch);
        }
    }

    /// Gives the emptied batch back and starts reading `batch`.
    fn open(&mut self, mut batch: SinkBatch) {
        let done = std::mem::take(&mut self.current);
        if let Some(recycle) = self.recycle.take() {
            // The source may be gone (a reconnect): then the vector is freed.
            let _ = recycle.send(done);
        }
        batch.events.reverse();
        self.current = batch.events;
        self.recycle = batch.recycle;
    }
}

/// Drives a sink: writes events in order and flushes when a finished
/// transaction is waiting and either no more events are queued (group
/// commit: under load, events queue up while a flush runs), the byte limit
/// is reached, or `max_delay` has passed. Publishes the durable position on
/// `durable`. Returns when `events` closes, after a final flush.
pub async fn run<S: Sink>(
    mut sink: S,
    events: mpsc::Receiver<SinkBatch>,
    durable: watch::Sender<Lsn>,
    policy: FlushPolicy,
) -> Result<(), SinkError> {
    let mut events = Inbox {
        batches: events,
        current: Vec::new(),
        recycle: None,
    };
    // The newest commit written but not yet flushed, and when the oldest
    // such commit arrived.
    let mut pending: Option<(Lsn, Instant)> = None;
    loop {
        let event = match pending {
            Some((_, since)) if since.elapsed() >= policy.max_delay => None,
            Some((_, since)) => match events.try_recv() {
                Ok(event) => Some(event),
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Group commit: linger a moment for the next commit so
                    // one fsync covers many small transactions.
                    match policy.linger.checked_sub(since.elapsed()) {
                        Some(wait) if !wait.is_zero() => {
                            match tokio::time::timeout(wait, events.recv()).await {
                                Ok(Some(event)) => Some(event),
                                Ok(None) => {
                                    flush(&mut sink, &mut pending, &durable).await?;
                                    return Ok(());
                                }
                                Err(_) => None,
                            }
                        }
                        _ => None,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    flush(&mut sink, &mut pending, &durable).await?;
                    return Ok(());
                }
            },
            None => match events.recv().await {
                Some(event) => Some(event),
                None => {
                    // Only events of an unfinished transaction can be left:
                    // flushing them is harmless, confirming them is not.
                    sink.flush().await?;
                    return Ok(());
                }
            },
        };
        let Some(event) = event else {
            flush(&mut sink, &mut pending, &durable).await?;
            continue;
        };
        match event {
            SinkEvent::Schema(schema) => sink.write_schema(&schema).await?,
            SinkEvent::Modification(m) => {
                let started = std::time::Instant::now();
                sink.write_modification(&m).await?;
                crate::ops::metrics::sink_write(started.elapsed());
            }
            SinkEvent::Import(chunk) => {
                let started = std::time::Instant::now();
                sink.write_import(&chunk).await?;
                crate::ops::metrics::sink_write(started.elapsed());
            }
            SinkEvent::Commit { end_lsn } => {
                sink.write_commit(end_lsn).await?;
                let since = pending.map_or_else(Instant::now, |(_, since)| since);
                pending = Some((end_lsn, since));
            }
        }
        if pending.is_some() && sink.unflushed_bytes() >= policy.max_unflushed_bytes {
            flush(&mut sink, &mut pending, &durable).await?;
        }
    }
}

async fn flush<S: Sink>(
    sink: &mut S,
    pending: &mut Option<(Lsn, Instant)>,
    durable: &watch::Sender<Lsn>,
) -> Result<(), SinkError> {
    let (started, bytes) = (std::time::Instant::now(), sink.unflushed_bytes());
    sink.flush().await?;
    crate::ops::metrics::sink_flush(started.elapsed(), bytes);
    if let Some((lsn, _)) = pending.take() {
        durable.send_if_modified(|current| {
            let advanced = lsn > *current;
            if advanced {
                *current = lsn;
            }
            advanced
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::SinkError;

    #[test]
    fn definite_errors_carry_their_hint_as_a_field_and_read_as_before() {
        let e = SinkError::definite("cannot create topic t", "TopicAuthorizationFailed")
            .hint("create it yourself");
        assert!(!e.is_transient());
        let problem = e.problem().unwrap();
        assert_eq!(problem.message, "cannot create topic t");
        assert_eq!(problem.detail.as_deref(), Some("TopicAuthorizationFailed"));
        assert_eq!(problem.hint.as_deref(), Some("create it yourself"));
        assert_eq!(
            e.to_string(),
            "cannot create topic t: TopicAuthorizationFailed\n  hint: create it yourself"
        );
        let transient = SinkError::Transient {
            context: "a".into(),
            source: "b".into(),
        }
        .hint("ignored");
        assert!(transient.is_transient() && transient.problem().is_none());
        assert_eq!(transient.to_string(), "a: b");
    }

    #[test]
    fn json_size_is_the_length_of_the_text() {
        let value = json!({
            "id": 12345678901234567890u64,
            "amount": serde_json::from_str::<serde_json::Value>("1.50").unwrap(),
            "name": "quote \" and \u{1} and é",
            "tags": ["a", null, true],
        });
        assert_eq!(super::json_size(&value), value.to_string().len());
        assert_eq!(super::json_size(&serde_json::Value::Null), 4);
    }
}
