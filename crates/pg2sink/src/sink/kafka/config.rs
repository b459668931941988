//! Options of the Kafka sink (`--sink.kafka.*`).
//!
//! Promises: secrets (the SASL password, and pass-through properties whose
//! name says they hold a secret) never appear in `Debug` output, hence in
//! no log line.

use std::fmt;
use std::path::PathBuf;

use crate::secret::Secret;
use crate::sink::http::RetryPolicy;

/// How a change is written as a message value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueFormat {
    /// The `Modification` as JSON, as the file sink writes it.
    Json,
    /// The row as Avro binary, from the table's Avro schema.
    Avro,
}

#[derive(Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// Topics are named `<prefix>.<schema>.<table>`; schemas go to
    /// `<prefix>._schemas`.
    pub topic_prefix: String,
    /// Partitions of a topic the sink creates.
    pub partitions: i32,
    /// Replication factor of a topic the sink creates.
    pub replication_factor: i32,
    pub format: ValueFormat,
    /// Follow a delete (and the old key of an update that changed the key)
    /// with a tombstone, so log compaction can drop the key.
    pub tombstones: bool,
    /// Confluent schema registry: Avro values are then framed with the
    /// registered schema's id.
    pub schema_registry_url: Option<Secret>,
    /// `security.protocol`: plaintext, ssl, sasl_plaintext, sasl_ssl.
    pub security_protocol: Option<String>,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    /// PEM file of the CA that signed the brokers' certificates.
    pub ca_file: Option<PathBuf>,
    /// librdkafka properties, set last: they override the sink's own
    /// settings (documented in docs/sinks.md). Any may hold a secret.
    pub properties: Vec<(String, Secret)>,
    /// Delivery (librdkafka retries inside it) and registry requests give
    /// up after `retry.give_up_after`.
    pub retry: RetryPolicy,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            topic_prefix: "pg2sink".into(),
            partitions: 1,
            replication_factor: 1,
            format: ValueFormat::Json,
            tombstones: true,
            schema_registry_url: None,
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ca_file: None,
            properties: vec![],
            retry: RetryPolicy::default(),
        }
    }
}

/// Whether a librdkafka property holds a secret (its value is hidden in
/// logs and in `pg2sink config`).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "key.pem",
        "token",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| name.contains(s))
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: Vec<(String, String)> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    "****"
                } else {
                    v.expose()
                };
                (k.clone(), v.to_string())
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("format", &self.format)
            .field("tombstones", &self.tombstones)
            .field(
                "schema_registry_url",
                &self
                    .schema_registry_url
                    .as_ref()
                    .map(|u| crate::config::file::redact("url", u.expose())),
            )
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("ca_file", &self.ca_file)
            .field("properties", &properties)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Splits a `--sink.kafka.property` value at its first `=`. The value is
/// kept as a secret: whether it is one depends on the name.
pub fn parse_property(text: &str) -> Result<(String, Secret), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), Secret::from(v))),
        _ => Err(format!(
            "expected KEY=VALUE (a librdkafka property), got {text:?}"
        )),
    }
}
