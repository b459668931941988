//! The Kafka side: the producer's settings, the admin calls (metadata,
//! topic creation) and the schema registry's REST API.
//!
//! Promises: the producer is idempotent with `acks=all` (the broker
//! acknowledges a message only once every in-sync replica has it, and
//! librdkafka's retries neither duplicate nor reorder messages within a
//! partition); properties given with `--sink.kafka.property` are applied
//! last, so they can change any of these, on purpose only. Start-up checks
//! fail fast with a message naming the brokers and what to check. Topic
//! creation and registry requests that fail transiently are retried with
//! the crate's back-off.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use serde_json::json;

use super::config::KafkaConfig;
use crate::retry::{self, Failure};
use crate::sink::http::{self, SinkStats};
use crate::sink::SinkError;

/// How long a start-up or admin request waits for the brokers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    pub producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    http: reqwest::Client,
    config: KafkaConfig,
    pub stats: SinkStats,
}

/// The producer's settings, before the user's pass-through properties.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", config.brokers.join(","))
        .set("client.id", "pg2sink")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        // librdkafka retries a failed produce request itself, with
        // exponential back-off between these bounds, until the message
        // has waited this long; then its delivery report fails.
        .set(
            "message.timeout.ms",
            millis(config.retry.give_up_after).max(1).to_string(),
        )
        .set("retry.backoff.ms", millis(config.retry.initial).to_string())
        .set(
            "retry.backoff.max.ms",
            millis(config.retry.max.max(config.retry.initial)).to_string(),
        )
        .set("linger.ms", "5")
        // Topics are created by the sink, with the configured partitions,
        // never as a side effect of a metadata request.
        .set("allow.auto.create.topics", "false")
        // Java clients' partitioner: a key lands in the same partition
        // whichever client wrote it.
        .set("partitioner", "murmur2_random");
    if let Some(p) = &config.security_protocol {
        c.set("security.protocol", p);
    }
    if let Some(m) = &config.sasl_mechanism {
        c.set("sasl.mechanism", m);
    }
    if let Some(u) = &config.sasl_username {
        c.set("sasl.username", u);
    }
    if let Some(p) = &config.sasl_password {
        c.set("sasl.password", p.expose());
    }
    if let Some(ca) = &config.ca_file {
        c.set("ssl.ca.location", ca.to_string_lossy());
    }
    for (k, v) in &config.properties {
        c.set(k, v.expose());
    }
    c
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u32::MAX >> 1)) as u64
}

impl Client {
    pub fn new(config: &KafkaConfig) -> Result<Client, SinkError> {
        let settings = client_config(config);
        let invalid = |e: KafkaError| {
            SinkError::definite("the Kafka client settings are invalid", e).hint(
                "check --sink.kafka.brokers, the security options and every --sink.kafka.property",
            )
        };
        let producer: FutureProducer = settings.create().map_err(invalid)?;
        let admin: AdminClient<DefaultClientContext> = settings.create().map_err(invalid)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| {
                SinkError::definite("cannot build the schema registry's HTTP client", e)
            })?;
        Ok(Client {
            producer,
            admin,
            http,
            config: config.clone(),
            stats: SinkStats::default(),
        })
    }

    /// The brokers' metadata, once, within [`ADMIN_TIMEOUT`]: the start-up
    /// check. Returns the number of brokers.
    pub async fn health_check(&self) -> Result<usize, SinkError> {
        let producer = self.producer.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(None, ADMIN_TIMEOUT)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| SinkError::definite("the Kafka metadata request", e))?;
        metadata.map_err(|e| SinkError::Transient {
            context: format!("cannot reach Kafka at {}", self.config.brokers.join(",")),
            source: format!(
                "{e} (no metadata within {ADMIN_TIMEOUT:?})\n  hint: check --sink.kafka.brokers, that the brokers run and are reachable, and the security options (--sink.kafka.security-protocol, --sink.kafka.sasl-*)"
            )
            .into(),
        })
    }

    /// The number of partitions of `topic`, or None when it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, SinkError> {
        let producer = self.producer.clone();
        let name = topic.to_string();
        let result = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer.client().fetch_metadata(Some(&name), ADMIN_TIMEOUT)
        })
        .await
        .map_err(|e| SinkError::Transient {
            context: format!("the metadata of topic {topic}"),
            source: e.into(),
        })?;
        let metadata = result.map_err(|e| SinkError::Transient {
            context: format!("the metadata of topic {topic}"),
            source: e.into(),
        })?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error() {
            None if !t.partitions().is_empty() => Ok(Some(t.partitions().len() as i32)),
            _ => Ok(None),
        }
    }

    /// Creates `topic` unless it exists; returns its partition count.
    /// Transient failures are retried until the retry policy gives up.
    pub async fn ensure_topic(&self, topic: &str) -> Result<i32, SinkError> {
        let stats = &self.stats;
        retry::run(
            &self.config.retry,
            "making the topic ready",
            |failure: &Failure<SinkError>| {
                if let Failure::Transient(_) = failure {
                    SinkStats::add(&stats.errors, 1);
                }
                failure.verdict()
            },
            |attempt| async move {
                if attempt > 0 {
                    SinkStats::add(&stats.retries, 1);
                }
                match self.try_ensure_topic(topic).await {
                    Ok(Some(n)) => Ok(n),
                    Ok(None) => Err(Failure::Transient(
                        "the topic was created but has no partitions yet".to_string(),
                    )),
                    Err(SinkError::Transient { context, source }) => {
                        Err(Failure::Transient(format!("{context}: {source}")))
                    }
                    Err(definite) => Err(Failure::Definite(definite)),
                }
            },
        )
        .await
        .map_err(|stopped| match stopped.into_inner() {
            Failure::Definite(definite) => definite,
            Failure::Transient(failure) => SinkError::Transient {
                context: format!(
                    "creating topic {topic}: still failing after {:?}",
                    self.config.retry.give_up_after
                ),
                source: failure.into(),
            },
        })
    }

    async fn try_ensure_topic(&self, topic: &str) -> Result<Option<i32>, SinkError> {
        // Create first, then read the partitions: an existing topic answers
        // "already exists", and no metadata request races the creation.
        let new = NewTopic::new(
            topic,
            self.config.partitions,
            TopicReplication::Fixed(self.config.replication_factor),
        );
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        SinkStats::add(&self.stats.requests, 1);
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| SinkError::Transient {
                context: format!("creating topic {topic}"),
                source: e.into(),
            })?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic, partitions = self.config.partitions,
                    replication_factor = self.config.replication_factor, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) if transient_admin_code(code) => {
                    return Err(SinkError::Transient {
                        context: format!("creating topic {topic}"),
                        source: code.to_string().into(),
                    })
                }
                Err((_, code)) => {
                    return Err(SinkError::definite(format!("cannot create topic {topic}"), code).hint("create it yourself, or allow pg2sink to (ACLs), or fix --sink.kafka.partitions / --sink.kafka.replication-factor"))
                }
            }
        }
        self.partitions(topic).await
    }

    /// Registers a value schema under the subject `<topic>-value` and
    /// returns its id (the registry answers the existing id for a schema it
    /// already holds).
    pub async fn register_schema(
        &self,
        registry: &str,
        topic: &str,
        schema: &serde_json::Value,
    ) -> Result<u32, SinkError> {
        let url = format!(
            "{}/subjects/{}-value/versions",
            registry.trim_end_matches('/'),
            topic
        );
        let body = json!({"schema": schema.to_string(), "schemaType": "AVRO"});
        let reply = http::send(
            "schema registration",
            &self.config.retry,
            &self.stats,
            || {
                self.http
                    .post(&url)
                    .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                    .json(&body)
            },
        )
        .await?;
        if !reply.is_success() {
            return Err(reply.definite(format!(
                "the schema registry refused the schema of topic {topic}"
            )));
        }
        reply.body["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| {
                SinkError::definite(
                    format!("the schema registry's answer for topic {topic}"),
                    format!("no schema id in {}", reply.body),
                )
            })
    }
}

/// Admin errors worth retrying: the cluster is busy or electing.
fn transient_admin_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::RequestTimedOut
            | C::OperationTimedOut
            | C::NotController
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NetworkException
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::ConcurrentTransactions
            | C::ThrottlingQuotaExceeded
    )
}

/// Whether a failed delivery may succeed on a later attempt (after a
/// restart): the broker or the network, not the message or permissions.
pub fn transient_delivery(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(code) => matches!(
            code,
            C::MessageTimedOut
                | C::RequestTimedOut
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NetworkException
                | C::PurgeQueue
                | C::PurgeInflight
        ),
        None => false,
    }
}
