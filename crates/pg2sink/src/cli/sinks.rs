//! Opening the sink `--sink` names, from its `--sink.NAME.*` flags: built,
//! health-checked (failing fast, before any change is read), then driven
//! by [`sink::run`] on a task of its own.

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::args::{KafkaFormat, SinkKind, StreamArgs};
use crate::error::{Error, ExitStatus, Problem};
use crate::model::Lsn;
use crate::sink::bigquery::{BigQueryConfig, BigQuerySink};
use crate::sink::elasticsearch::{ElasticsearchConfig, ElasticsearchSink};
use crate::sink::file::{FileSink, FileSinkConfig};
use crate::sink::http::RetryPolicy;
use crate::sink::kafka::{KafkaConfig, KafkaSink, ValueFormat};
use crate::sink::nats::{NatsConfig, NatsSink};
use crate::sink::postgres::{PostgresSink, PostgresSinkConfig};
use crate::sink::{self, FlushPolicy, Sink, SinkBatch, SinkError};

pub type SinkTask = JoinHandle<Result<(), SinkError>>;

/// Opens and checks the sink, then spawns its driver.
pub async fn spawn(
    args: &StreamArgs,
    events: mpsc::Receiver<SinkBatch>,
    durable: watch::Sender<Lsn>,
    policy: FlushPolicy,
) -> Result<SinkTask, Error> {
    // One arm per sink: each driver future is Send for its concrete type.
    Ok(match args.sink {
        SinkKind::File => {
            let sink = checked(FileSink::open(&FileSinkConfig {
                schemas_path: args.file_schemas_path.clone(),
                modifications_path: args.file_modifications_path.clone(),
                rotate_bytes: args.file_rotate_bytes,
                rotate_interval: args.file_rotate_interval,
            })?)
            .await?;
            tokio::spawn(sink::run(sink, events, durable, policy))
        }
        SinkKind::Bigquery => {
            let sink = checked(BigQuerySink::new(bigquery_config(args))?).await?;
            tokio::spawn(sink::run(sink, events, durable, policy))
        }
        SinkKind::Elasticsearch => {
            let sink = checked(ElasticsearchSink::new(elasticsearch_config(args))?).await?;
            tokio::spawn(sink::run(sink, events, durable, policy))
        }
        SinkKind::Postgres => {
            let sink = checked(PostgresSink::new(postgres_config(args))?).await?;
            tokio::spawn(sink::run(sink, events, durable, policy))
        }
        SinkKind::Kafka => {
            let sink = checked(KafkaSink::new(kafka_config(args))?).await?;
            tokio::spawn(sink::run(sink, events, durable, policy))
        }
        SinkKind::Nats => {
            let sink = checked(NatsSink::new(nats_config(args))?).await?;
            tokio::spawn(sink::run(sink, events, durable, policy))
        }
    })
}

/// The start-up check fails fast, whatever the cause: a sink that cannot
/// be reached stops pg2sink rather than being retried here, but with the
/// exit status that tells a supervisor a restart may succeed.
async fn checked<S: Sink>(mut sink: S) -> Result<S, Error> {
    match sink.health_check().await {
        Ok(()) => Ok(sink),
        Err(e) if e.is_transient() => Err(Problem::new(format!("sink: {e}"))
            .exit_status(ExitStatus::Transient)
            .into()),
        Err(e) => Err(e.into()),
    }
}

fn retry_policy(args: &StreamArgs) -> RetryPolicy {
    RetryPolicy {
        give_up_after: args.sink_retry_timeout,
        ..RetryPolicy::default()
    }
}

pub fn bigquery_config(args: &StreamArgs) -> BigQueryConfig {
    let a = &args.bigquery;
    BigQueryConfig {
        project_id: a.project_id.clone().unwrap_or_default(),
        dataset: a.dataset.clone(),
        location: a.location.clone(),
        table_expiration: a.table_expiration,
        credentials: a.credentials.clone(),
        endpoint: a.endpoint.clone(),
        batch_rows: a.batch_rows as usize,
        retry: retry_policy(args),
        ..BigQueryConfig::default()
    }
}

pub fn elasticsearch_config(args: &StreamArgs) -> ElasticsearchConfig {
    let a = &args.elasticsearch;
    ElasticsearchConfig {
        urls: a.urls.clone(),
        username: a.username.clone(),
        password: a.password.clone(),
        api_key: a.api_key.clone(),
        ca_file: a.ca_file.clone(),
        index_prefix: a.index_prefix.clone(),
        bulk_actions: a.bulk_size as usize,
        retry: retry_policy(args),
        ..ElasticsearchConfig::default()
    }
}

pub fn postgres_config(args: &StreamArgs) -> PostgresSinkConfig {
    let a = &args.postgres;
    // The position is kept per stream: the slot's name, as the source
    // derives it (one target may take several sources).
    let database = crate::pg::settings::ConnectionConfig::from_env(args.source.url())
        .map(|c| c.dbname().to_string())
        .unwrap_or_default();
    PostgresSinkConfig {
        url: a.postgres_url.clone().unwrap_or_default(),
        schema: a.postgres_schema.clone(),
        state_schema: a.postgres_state_schema.clone(),
        stream: crate::source::catalog::slot_name_for(&args.source.subscription_name, &database),
        batch_rows: a.postgres_batch_rows as usize,
        retry: retry_policy(args),
        silence_timeout: Some(args.silence_timeout).filter(|d| !d.is_zero()),
        ..PostgresSinkConfig::default()
    }
}

pub fn kafka_config(args: &StreamArgs) -> KafkaConfig {
    let a = &args.kafka;
    KafkaConfig {
        brokers: a.brokers.clone(),
        topic_prefix: a.topic_prefix.clone(),
        partitions: a.partitions,
        replication_factor: a.replication_factor,
        format: match a.format {
            KafkaFormat::Json => ValueFormat::Json,
            KafkaFormat::Avro => ValueFormat::Avro,
        },
        tombstones: a.tombstones,
        schema_registry_url: a.schema_registry_url.clone(),
        security_protocol: a.security_protocol.clone(),
        sasl_mechanism: a.sasl_mechanism.clone(),
        sasl_username: a.sasl_username.clone(),
        sasl_password: a.sasl_password.clone(),
        ca_file: a.ca_file.clone(),
        properties: a.properties.clone(),
        retry: retry_policy(args),
    }
}

pub fn nats_config(args: &StreamArgs) -> NatsConfig {
    let a = &args.nats;
    NatsConfig {
        urls: a.urls.clone(),
        user: a.user.clone(),
        password: a.password.clone(),
        token: a.token.clone(),
        creds_file: a.creds_file.clone(),
        ca_file: a.ca_file.clone(),
        client_cert: a.client_cert.clone(),
        client_key: a.client_key.clone(),
        subject_prefix: a.subject_prefix.clone(),
        stream: a.stream.clone(),
        duplicate_window: a.duplicate_window,
        replicas: a.replicas as usize,
        max_in_flight: a.max_in_flight as usize,
        retry: retry_policy(args),
        ..NatsConfig::default()
    }
}
