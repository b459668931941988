//! The NATS JetStream sink (`--sink=nats`): each change is one message on
//! `<prefix>.<schema>.<table>` in one stream, its body the JSON
//! `Modification`; each table's schema goes to
//! `<prefix>._schemas.<schema>.<table>` before the table's first change
//! (and again when it changes).
//!
//! Promises:
//! - **Nothing confirmed unacknowledged.** Messages are published without
//!   waiting (up to `max_in_flight` acknowledgements outstanding); `flush`
//!   returns only once JetStream acknowledged (PubAck) every message
//!   published so far, so the durable position never passes an
//!   unacknowledged message.
//! - **Publish order kept.** Each message but the first after a start or a
//!   failure carries `Nats-Expected-Last-Msg-Id` = the previous message's
//!   id: if one message of a pipeline is lost (connection dropped, server
//!   restarted), the ones after it are refused rather than stored out of
//!   order, and the sink sends everything unacknowledged again, in order,
//!   after the crate's back-off. The stream must be written by this
//!   pg2sink alone.
//! - **Replays discarded.** Every message has a `Nats-Msg-Id` naming the
//!   change ([`encoding::message_id`]), so what a restart sends again within
//!   the stream's duplicate window is acknowledged as a duplicate, not
//!   stored: consumers see each change once.
//! - Transient failures are retried for `--sink.retry-timeout`; a message
//!   JetStream can never take (over the size limit) stops the sink.

pub mod client;
pub mod config;
pub mod encoding;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::Context;
use async_nats::{HeaderMap, ServerAddr};
use bytes::Bytes;
use serde_json::Value;

pub use self::config::NatsConfig;
use super::http::SinkStats;
use super::{Sink, SinkError};
use crate::model::{Modification, Schema};
use crate::retry::{Attempts, Failure, Stopped};

/// A message published whose acknowledgement has not been checked yet.
struct InFlight {
    subject: String,
    /// Without the order-chain header, which depends on what precedes it
    /// when (re)sent.
    headers: HeaderMap,
    payload: Bytes,
    id: String,
    ack: Option<Result<PublishAckFuture, PublishError>>,
}

pub struct NatsSink {
    config: NatsConfig,
    servers: Vec<ServerAddr>,
    js: Option<Context>,
    pending: VecDeque<InFlight>,
    unflushed: usize,
    /// Id of the message published last, which the next one expects to
    /// follow; `None` at start and after a failure.
    last_id: Option<String>,
    /// By escaped `schema.table` (one-to-one, unlike the real names
    /// joined with a dot): the schema published last.
    published_schemas: HashMap<String, Value>,
    /// Schemas to publish before the table's next change.
    waiting_schemas: HashMap<String, Schema>,
    stats: SinkStats,
    batch_rows: u64,
    batch_started: Option<Instant>,
}

impl NatsSink {
    /// Checks the options; connecting waits for [`Sink::health_check`].
    pub fn new(config: NatsConfig) -> Result<NatsSink, SinkError> {
        let servers = client::check_config(&config)?;
        Ok(NatsSink {
            config,
            servers,
            js: None,
            pending: VecDeque::new(),
            unflushed: 0,
            last_id: None,
            published_schemas: HashMap::new(),
            waiting_schemas: HashMap::new(),
            stats: SinkStats::default(),
            batch_rows: 0,
            batch_started: None,
        })
    }

    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    fn js(&self) -> Result<Context, SinkError> {
        self.js.clone().ok_or_else(|| {
            SinkError::definite(
                "the NATS sink is not connected",
                "health_check connects it before streaming",
            )
        })
    }

    async fn send(
        js: &Context,
        m: &InFlight,
        expected: Option<&str>,
    ) -> Result<PublishAckFuture, PublishError> {
        let mut headers = m.headers.clone();
        if let Some(previous) = expected {
            headers.insert(encoding::EXPECTED_LAST_MSG_ID, previous);
        }
        js.send_publish(
            m.subject.clone(),
            async_nats::jetstream::message::PublishMessage::build()
                .headers(headers)
                .payload(m.payload.clone()),
        )
        .await
    }

    /// Publishes one message without waiting for its acknowledgement.
    async fn publish(
        &mut self,
        subject: String,
        headers: HeaderMap,
        payload: Vec<u8>,
        id: String,
    ) -> Result<(), SinkError> {
        let js = self.js()?;
        let mut m = InFlight {
            subject,
            headers,
            payload: Bytes::from(payload),
            id,
            ack: None,
        };
        let expected = self.last_id.replace(m.id.clone());
        let sent = Self::send(&js, &m, expected.as_deref()).await;
        let failed = sent.is_err();
        m.ack = Some(sent);
        SinkStats::add(&self.stats.requests, 1);
        self.unflushed += m.payload.len();
        self.pending.push_back(m);
        self.batch_started.get_or_insert_with(Instant::now);
        if failed {
            // The client could not even queue it (disconnected for long):
            // recover before taking more, so each message does not wait
            // out its own timeout.
            self.settle(0).await?;
        } else if self.pending.len() >= self.config.max_in_flight.max(1) {
            self.settle(self.config.max_in_flight / 2).await?;
        }
        Ok(())
    }

    /// Waits for acknowledgements, oldest first, until at most `keep`
    /// messages are unacknowledged. A failure sends every unacknowledged
    /// message again, in order, after a back-off.
    async fn settle(&mut self, keep: usize) -> Result<(), SinkError> {
        let policy = self.config.retry.clone();
        while self.pending.len() > keep {
            // One run per message: an acknowledgement is progress, so a
            // later failure gets the whole retry time again.
            let mut attempts = Attempts::new(&policy);
            let acked = loop {
                let failure = match self.front_acknowledged().await {
                    Ok(ack) => break Ok(ack),
                    Err(failure) => failure,
                };
                let verdict = failure.verdict();
                let what = "a NATS publish (the unacknowledged messages are sent again)";
                if let Err(stopped) = attempts.failed(what, failure, verdict).await {
                    break Err(stopped);
                }
                SinkStats::add(&self.stats.retries, 1);
                self.resend().await?;
            };
            let (id, subject) = self
                .pending
                .front()
                .map(|m| (m.id.clone(), m.subject.clone()))
                .unwrap_or_default();
            let ack = match acked.map_err(Stopped::into_inner) {
                Ok(Some(ack)) => ack,
                Ok(None) => break,
                Err(Failure::Definite(e)) => return Err(e),
                Err(Failure::Transient(why)) => {
                    return Err(SinkError::Transient {
                        context: format!(
                        "publishing to NATS: still failing after {:?} (message {id} on {subject})",
                        policy.give_up_after
                    ),
                        source: why.into(),
                    })
                }
            };
            let done = self.pending.pop_front().map_or(0, |m| m.payload.len());
            self.unflushed = self.unflushed.saturating_sub(done);
            if ack.duplicate {
                SinkStats::add(&self.stats.stale, 1);
            } else {
                SinkStats::add(&self.stats.rows, 1);
            }
            self.batch_rows += 1;
        }
        Ok(())
    }

    /// Waits for the oldest unacknowledged message's acknowledgement
    /// (`None` when nothing is unacknowledged).
    async fn front_acknowledged(&mut self) -> Result<Option<PublishAck>, Failure<SinkError>> {
        let Some(front) = self.pending.front_mut() else {
            return Ok(None);
        };
        let result = match front.ack.take() {
            Some(Ok(ack)) => ack.await,
            Some(Err(e)) => Err(e),
            // Not sent in the last round (an earlier one could not be).
            None => Err(PublishError::new(
                async_nats::jetstream::context::PublishErrorKind::BrokenPipe,
            )),
        };
        let error = match result {
            Ok(ack) => return Ok(Some(ack)),
            Err(e) => e,
        };
        SinkStats::add(&self.stats.errors, 1);
        let (id, subject) = (&front.id, &front.subject);
        match client::classify(&error) {
            client::Failure::Stop { why, hint } => Err(Failure::Definite(
                SinkError::definite(format!("JetStream refused message {id} on {subject}"), why)
                    .hint(format!(
                    "{hint}; nothing from this change on is confirmed, so a restart sends it again"
                )),
            )),
            client::Failure::Retry(why) => Err(Failure::Transient(format!(
                "message {id} on {subject}: {why}"
            ))),
        }
    }

    /// Sends every unacknowledged message again, in order: the first
    /// without an expected predecessor (everything before it was
    /// acknowledged), each next one expecting the one before. Stops at the
    /// first that cannot be sent; the rest wait for the next round.
    async fn resend(&mut self) -> Result<(), SinkError> {
        let js = self.js()?;
        let mut previous: Option<String> = None;
        let mut stopped = false;
        for m in self.pending.iter_mut() {
            // Dropping the old future hands its permit back after its
            // acknowledgement (or its timeout).
            if stopped {
                m.ack = None;
                continue;
            }
            let sent = Self::send(&js, m, previous.as_deref()).await;
            stopped = sent.is_err();
            m.ack = Some(sent);
            SinkStats::add(&self.stats.requests, 1);
            previous = Some(m.id.clone());
        }
        self.last_id = previous;
        Ok(())
    }

    /// Publishes the schema waiting for `m`'s table, if any, with an id
    /// taken from `m` (so a replay of `m` repeats it exactly).
    async fn publish_waiting_schema(&mut self, m: &Modification) -> Result<(), SinkError> {
        let key = encoding::table_tokens(&m.namespace, &m.name);
        let Some(schema) = self.waiting_schemas.remove(&key) else {
            return Ok(());
        };
        // NATS publishes the Avro schema: rendered once, for the body and
        // to compare with the next schema of the table.
        let avro = schema.avro();
        let body = serde_json::to_vec(&SchemaMessage {
            timestamp: &schema.timestamp,
            schema: &avro,
        })
        .map_err(|e| SinkError::definite(format!("encoding the schema of {key}"), e))?;
        let id = encoding::schema_message_id(m, &body);
        let subject = encoding::schema_subject(&self.config.subject_prefix, &m.namespace, &m.name);
        let headers = encoding::schema_headers(m, &id);
        self.published_schemas.insert(key, avro);
        self.publish(subject, headers, body, id).await
    }
}

/// A schema message's body: [`Schema`]'s JSON, from an Avro schema
/// already rendered.
#[derive(serde::Serialize)]
struct SchemaMessage<'a> {
    timestamp: &'a str,
    schema: &'a Value,
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        let nats = client::connect(&self.config, self.servers.clone()).await?;
        let server = nats.server_info();
        let js = client::context(nats, &self.config);
        client::check_jetstream(&js, &server.version).await?;
        let stream = client::ensure_stream(&js, &self.config).await?;
        tracing::info!(version = %server.version, %stream, "nats sink ready");
        self.js = Some(js);
        Ok(())
    }

    async fn write_schema(&mut self, schema: &Schema) -> Result<(), SinkError> {
        let key = encoding::table_tokens(&schema.table.namespace, &schema.table.name);
        if self.published_schemas.get(&key) == Some(&schema.avro()) {
            // Back to the shape consumers already have.
            self.waiting_schemas.remove(&key);
        } else {
            self.waiting_schemas.insert(key, schema.clone());
        }
        Ok(())
    }

    async fn write_modification(&mut self, m: &Modification) -> Result<(), SinkError> {
        self.publish_waiting_schema(m).await?;
        let body = m.to_json();
        let id = encoding::message_id(m, &body);
        let subject =
            encoding::modification_subject(&self.config.subject_prefix, &m.namespace, &m.name);
        let headers = encoding::modification_headers(m, &id);
        self.publish(subject, headers, body, id).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.settle(0).await?;
        if let Some(started) = self.batch_started.take() {
            self.stats.batch(
                "nats",
                std::mem::take(&mut self.batch_rows),
                started.elapsed(),
            );
        }
        Ok(())
    }

    fn unflushed_bytes(&self) -> usize {
        self.unflushed
    }
}
