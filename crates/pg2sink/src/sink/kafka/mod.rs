//! The Kafka sink (`--sink=kafka`): a topic per table, a message per
//! change, keyed by the primary key.
//!
//! Promises: `flush` returns only once the brokers have acknowledged
//! (`acks=all`, idempotent producer) every message produced so far, so the
//! position the driver reports durable never passes an unacknowledged
//! message; in between, many messages are in flight at once. A message
//! whose delivery fails stops the sink with what went wrong: nothing after
//! it is confirmed, so a restart sends it (and what followed) again.
//!
//! Ordering: all changes of one key go to one partition, in commit order
//! (the idempotent producer keeps that order through its retries). A
//! truncate has no key: it is written to every partition of the table's
//! topic, so each partition sees it between the changes before and after.
//! An update that changed the primary key is written under the old key and
//! under the new one. A key left without a row (a delete's, or the old key
//! of such an update) then gets a tombstone, a message with no value and
//! the same headers, unless `--sink.kafka.tombstones=false`; on a compacted
//! topic it lets compaction drop the key.
//!
//! Replays (after a crash, changes past the last confirmed position are
//! sent again) append duplicates: a key's messages then read, e.g.,
//! `1 2 3 2 3 4`, never with a gap. A consumer that skips a message whose
//! (`lsn`, `sequence`) headers are not greater than the last it applied for
//! that key sees each change once, in order.
//!
//! Schemas: each table's Avro schema goes to `<prefix>._schemas` (keyed by
//! `schema.table`) before the table's first change and again when it
//! changes. With `--sink.kafka.format=avro` values are the row in Avro
//! binary ([`avro`]); with a schema registry, framed with its schema id.

pub mod avro;
pub mod client;
pub mod config;
pub mod encoding;
#[cfg(test)]
mod tests;
pub mod topic;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};

use self::avro::RowEncoder;
use self::client::Client;
pub use self::config::{KafkaConfig, ValueFormat};
use self::topic::TableTopic;
use super::http::SinkStats;
use super::{table_of, Sink, SinkError};
use crate::model::{Modification, Op, Schema};

/// A table as the sink knows it.
struct TableState {
    topic: TableTopic,
    partitions: i32,
    /// For Avro values.
    encoder: Option<RowEncoder>,
    /// The registry's id of the table's current schema.
    schema_id: Option<u32>,
}

/// A message produced but not yet acknowledged, with what names it in an
/// error.
struct InFlight {
    delivery: DeliveryFuture,
    what: String,
}

pub struct KafkaSink {
    config: KafkaConfig,
    client: Client,
    /// By `schema.table` (the real names).
    tables: HashMap<String, TableState>,
    schema_topic: String,
    in_flight: VecDeque<InFlight>,
    unflushed: usize,
    batch_started: Option<Instant>,
}

impl KafkaSink {
    pub fn new(config: KafkaConfig) -> Result<KafkaSink, SinkError> {
        if !topic::valid_prefix(&config.topic_prefix) {
            return Err(SinkError::definite(format!("--sink.kafka.topic-prefix {:?}", config.topic_prefix), "a topic prefix may hold only ASCII letters, digits, '.', '_' and '-' (at most 150)"));
        }
        if config.format == ValueFormat::Json && config.schema_registry_url.is_some() {
            tracing::warn!(
                "--sink.kafka.schema-registry-url is used only with --sink.kafka.format=avro"
            );
        }
        Ok(KafkaSink {
            client: Client::new(&config)?,
            schema_topic: topic::schema_topic(&config.topic_prefix),
            config,
            tables: HashMap::new(),
            in_flight: VecDeque::new(),
            unflushed: 0,
            batch_started: None,
        })
    }

    pub fn stats(&self) -> &SinkStats {
        &self.client.stats
    }

    /// Hands one message to the producer. When its queue is full, waits for
    /// the oldest message in flight to be acknowledged and tries again.
    async fn produce(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        what: String,
    ) -> Result<(), SinkError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        self.batch_started.get_or_insert_with(Instant::now);
        loop {
            match self.client.producer.send_result(record) {
                Ok(delivery) => {
                    self.unflushed +=
                        key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + 64;
                    self.in_flight.push_back(InFlight { delivery, what });
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if !self.acknowledge_oldest().await? {
                        // Nothing of ours in flight, yet the queue is
                        // full: give librdkafka a moment to drain.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
                Err((e, _)) => {
                    SinkStats::add(&self.client.stats.errors, 1);
                    return Err(SinkError::definite(format!("cannot produce {what}"), e).hint("for a message too large, raise message.max.bytes (--sink.kafka.property) and the topic's max.message.bytes; nothing after this change is confirmed, so a restart sends it again"));
                }
            }
        }
    }

    /// Waits for the oldest message in flight to be acknowledged; false
    /// when none is in flight.
    async fn acknowledge_oldest(&mut self) -> Result<bool, SinkError> {
        let Some(InFlight { delivery, what }) = self.in_flight.pop_front() else {
            return Ok(false);
        };
        let stats = &self.client.stats;
        let error = match delivery.await {
            Ok(Ok(_)) => {
                SinkStats::add(&stats.rows, 1);
                return Ok(true);
            }
            Ok(Err((e, _))) => e,
            Err(_) => KafkaError::Canceled,
        };
        SinkStats::add(&stats.errors, 1);
        let hint = if client::transient_delivery(&error) {
            "the brokers did not acknowledge it in time (librdkafka retried it until --sink.retry-timeout); check that they run and have enough in-sync replicas"
        } else {
            "the brokers refused it: check the topic's settings (message.max.bytes, ACLs) and the producer's --sink.kafka.property settings"
        };
        let hint =
            format!("{hint}; nothing after this change is confirmed, so a restart sends it again");
        let context = format!("Kafka did not take {what}");
        Err(if client::transient_delivery(&error) {
            SinkError::Transient {
                context,
                source: format!("{error}\n  hint: {hint}").into(),
            }
        } else {
            SinkError::definite(context, error).hint(hint)
        })
    }

    /// A change's message value.
    fn value(&self, table: &TableState, m: &Modification) -> Result<Option<Vec<u8>>, SinkError> {
        let Some(encoder) = &table.encoder else {
            return Ok(Some(encoding::json_value(m)));
        };
        let Some(row) = encoding::key_row(m) else {
            // A truncate: no row to encode; the headers say what it is.
            return Ok(None);
        };
        let datum = encoder.encode(&row.to_json()).map_err(|e| SinkError::definite(format!(
                "cannot encode a change of {} (lsn {}, sequence {}) as Avro",
                table.topic.qualified, m.lsn, m.sequence
            ), e).hint("this is a bug in pg2sink's type mapping; --sink.kafka.format=json writes the change as JSON"))?;
        Ok(Some(match table.schema_id {
            Some(id) => avro::confluent_frame(id, &datum),
            None => datum,
        }))
    }
}

fn owned_headers(pairs: &[(&str, String)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        let brokers = self.client.health_check().await?;
        let partitions = self.client.ensure_topic(&self.schema_topic).await?;
        tracing::info!(brokers, schema_topic = %self.schema_topic, partitions, "kafka sink ready");
        Ok(())
    }

    async fn write_schema(&mut self, schema: &Schema) -> Result<(), SinkError> {
        let table = TableTopic::from_table(&self.config.topic_prefix, &schema.table);
        if self.tables.get(&table.qualified).is_some_and(|t| {
            t.topic.fingerprint == table.fingerprint && t.topic.topic == table.topic
        }) {
            return Ok(());
        }
        let partitions = self.client.ensure_topic(&table.topic).await?;
        let (encoder, schema_id) = match self.config.format {
            ValueFormat::Json => (None, None),
            ValueFormat::Avro => {
                let encoder = RowEncoder::new(&table.schema).map_err(|e| {
                    SinkError::definite(format!("the Avro schema of {}", table.qualified), e)
                })?;
                let id = match &self.config.schema_registry_url {
                    Some(registry) => Some(
                        self.client
                            .register_schema(registry.expose(), &table.topic, &table.schema)
                            .await?,
                    ),
                    None => None,
                };
                (Some(encoder), id)
            }
        };
        // The schema message, in flight with the changes that follow it.
        let mut headers = vec![("schema.fingerprint", table.fingerprint.clone())];
        if let Some(id) = schema_id {
            headers.push(("schema.id", id.to_string()));
        }
        headers.push(("topic", table.topic.clone()));
        let payload = serde_json::to_vec(schema).unwrap_or_default();
        let schema_topic = self.schema_topic.clone();
        self.produce(
            &schema_topic,
            None,
            Some(table.qualified.as_bytes()),
            Some(&payload),
            owned_headers(&headers),
            format!("the schema of {}", table.qualified),
        )
        .await?;
        tracing::debug!(table = %table.qualified, topic = %table.topic, partitions, "table ready");
        self.tables.insert(
            table.qualified.clone(),
            TableState {
                topic: table,
                partitions,
                encoder,
                schema_id,
            },
        );
        Ok(())
    }

    async fn write_modification(&mut self, m: &Modification) -> Result<(), SinkError> {
        let table = table_of(&self.tables, m)?;
        let qualified = &table.topic.qualified;
        let key = encoding::key(&table.topic, m);
        let moved_from = encoding::moved_from(&table.topic, m);
        let value = self.value(table, m)?;
        let mut headers = encoding::headers(m);
        if table.encoder.is_some() {
            headers.push(("schema.fingerprint", table.topic.fingerprint.clone()));
            if !m.unchanged.is_empty() {
                headers.push((
                    "unchanged",
                    serde_json::to_string(&m.unchanged).unwrap_or_default(),
                ));
            }
        }
        let topic = table.topic.topic.clone();
        // A truncate concerns every key: one copy per partition keeps it in
        // order with each partition's changes. An update that changed the
        // key goes first to the old key's partition, then to the new one's.
        let copies: Vec<(Option<i32>, Option<&[u8]>)> = if m.op == Op::Truncate {
            (0..table.partitions.max(1))
                .map(|p| (Some(p), None))
                .collect()
        } else if let Some(old) = &moved_from {
            vec![(None, Some(old.as_slice())), (None, key.as_deref())]
        } else {
            vec![(None, key.as_deref())]
        };
        // The key the change leaves without a row gets a tombstone after
        // its message, so that compaction can drop the key.
        let tombstone = encoding::left_key(m, key.as_deref(), moved_from.as_deref())
            .filter(|_| self.config.tombstones);
        let what = format!(
            "the change at lsn {} sequence {} of {qualified}",
            m.lsn, m.sequence
        );
        for (partition, key) in copies {
            self.produce(
                &topic,
                partition,
                key,
                value.as_deref(),
                owned_headers(&headers),
                what.clone(),
            )
            .await?;
        }
        if let Some(key) = tombstone {
            let what = format!("the tombstone after {what}");
            self.produce(&topic, None, Some(key), None, owned_headers(&headers), what)
                .await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let messages = self.in_flight.len() as u64;
        while self.acknowledge_oldest().await? {}
        self.unflushed = 0;
        if let Some(started) = self.batch_started.take() {
            self.client
                .stats
                .batch("kafka", messages, started.elapsed());
        }
        Ok(())
    }

    fn unflushed_bytes(&self) -> usize {
        self.unflushed
    }
}
