//! Command-line flags: the one place where every setting is named, given its
//! default, and tied to an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::secret::Secret;

#[derive(Parser, Debug)]
#[command(
    name = "pg2sink",
    version,
    about = "Stream every committed change of a Postgres database to a sink, with nothing lost",
    long_about = "Stream every committed change of a Postgres database to a sink, with nothing lost.\n\n\
        Connection: --url (or PG2SINK_URL, or a file named by --url-file or PG2SINK_URL_FILE), else libpq's PGHOST, PGHOSTADDR, PGPORT, PGUSER, PGPASSWORD, \
        PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, PGCHANNELBINDING and PGPASSFILE; \
        without a password, ~/.pgpass; ~/.postgresql/root.crt, postgresql.crt and postgresql.key when \
        they exist.\n\n\
        Secrets: each secret flag --NAME (--url, --api.token, the sinks' passwords, tokens, keys and URLs) \
        can be read from a file instead, with --NAME-file or PG2SINK_NAME_FILE; one trailing newline is ignored.\n\n\
        Without a command, `stream` runs.",
    after_help = "Exit statuses: 0 stopped cleanly; 1 transient or unknown failure (a restart may succeed); \
        2 bad flags, environment or config file; 3 definite problem with the source or its settings \
        (wal_level, privileges, server version, credentials); 4 slot dropped or invalidated (resynchronise: \
        see the hint); 5 the sink refused definitely. `verify`: 0 same, 1 differs, 2 error. \
        systemd: RestartPreventExitStatus=2 3 4 5 (docs/operations.md).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub stream: StreamArgs,

    /// A TOML file of settings, keyed by long flag name (see docs/operations.md).
    /// Precedence: flag > PG2SINK_* variable > this file > default.
    #[arg(long, env = "PG2SINK_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log lines as text or as JSON objects.
    #[arg(
        long = "log-format",
        env = "PG2SINK_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: crate::config::logging::LogFormat,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream changes from the slot to the sink (the default).
    Stream(StreamArgs),
    /// Inspect or restart the imports of existing rows.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Show the slot (active, confirmed position, lag, WAL retained), the
    /// publication's tables and the imports' progress.
    Status(super::status::StatusArgs),
    /// Remove the slot and the publication (and with --all pg2sink's schema).
    Teardown(super::teardown::TeardownArgs),
    /// Compare what the sink holds with the source, table by table (row
    /// counts, missing, extra and different rows by key). Exit status 0
    /// when nothing differs, 1 when something does, 2 on error.
    Verify(super::verify::VerifyArgs),
    /// Print the settings `stream` would use, as TOML, with where each
    /// came from (flag, environment, file, default); secrets are hidden.
    Config(StreamArgs),
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// List import jobs and their progress.
    Status(SourceArgs),
    /// Start a table's import over (the running pg2sink picks it up).
    Resync {
        /// The table, as schema.table.
        table: String,
        #[command(flatten)]
        source: SourceArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// JSON lines in files (or stdout).
    File,
    /// BigQuery: a raw table of changes and a current-state view per table.
    Bigquery,
    /// Elasticsearch (or OpenSearch): an index per table, a document per row.
    Elasticsearch,
    /// Postgres: tables of the same shape in a target database, exactly once.
    Postgres,
    /// Kafka: a topic per table, a message per change keyed by the primary key.
    Kafka,
    /// NATS JetStream: a message per change on <prefix>.<schema>.<table>.
    Nats,
}

/// Where the source database is and which of pg2sink's objects to use.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Postgres connection URL (postgres://user:password@host:port/db?sslmode=...)
    /// or libpq key=value string. Parts left out come from PG* variables.
    #[arg(long, env = "PG2SINK_URL", hide_env_values = true)]
    pub url: Option<Secret>,

    /// A file holding the connection URL (--url), e.g. a mounted secret;
    /// one trailing newline is ignored.
    #[arg(
        long = "url-file",
        id = "url-file",
        env = "PG2SINK_URL_FILE",
        value_name = "FILE"
    )]
    pub url_file: Option<PathBuf>,

    /// Schema for pg2sink's own tables in the source database.
    #[arg(long, env = "PG2SINK_SCHEMA", default_value = "pg2sink")]
    pub schema: String,

    /// Name of the publication pg2sink manages; the slot's name derives from it.
    #[arg(
        long = "subscription-name",
        env = "PG2SINK_SUBSCRIPTION_NAME",
        default_value = "pg2sink"
    )]
    pub subscription_name: String,
}

#[derive(Args, Debug, Clone)]
pub struct StreamArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Where changes go.
    #[arg(long, env = "PG2SINK_SINK", value_enum, default_value = "file")]
    pub sink: SinkKind,

    /// File sink: where Schema messages are appended (one JSON object per line).
    #[arg(
        long = "sink.file.schemas-path",
        env = "PG2SINK_SINK_FILE_SCHEMAS_PATH",
        default_value = "/dev/stdout"
    )]
    pub file_schemas_path: PathBuf,

    /// File sink: where Modification messages are appended (one JSON object per line).
    #[arg(
        long = "sink.file.modifications-path",
        env = "PG2SINK_SINK_FILE_MODIFICATIONS_PATH",
        default_value = "/dev/stdout"
    )]
    pub file_modifications_path: PathBuf,

    /// File sink: start a new modifications file once it holds this many
    /// bytes; the full one is renamed `<path>.<first lsn>`. 0 never rotates.
    #[arg(
        long = "sink.file.rotate-bytes",
        env = "PG2SINK_SINK_FILE_ROTATE_BYTES",
        default_value_t = 0
    )]
    pub file_rotate_bytes: u64,

    /// File sink: start a new modifications file at least this often (e.g.
    /// 1h), if it is not empty. Unset never rotates by time.
    #[arg(long = "sink.file.rotate-interval", env = "PG2SINK_SINK_FILE_ROTATE_INTERVAL", value_parser = humantime::parse_duration)]
    pub file_rotate_interval: Option<Duration>,

    /// Flush (and fsync) once this many bytes are waiting, even mid-stream.
    #[arg(long = "sink.batch-bytes", env = "PG2SINK_SINK_BATCH_BYTES", default_value_t = 8 << 20)]
    pub sink_batch_bytes: usize,

    /// Flush a committed transaction no later than this after it arrived,
    /// even under a steady stream of changes.
    #[arg(long = "sink.flush-interval", env = "PG2SINK_SINK_FLUSH_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub sink_flush_interval: Duration,

    /// Remote sinks: how long a failing request is retried (exponential
    /// back-off with jitter) before the stream starts over from the
    /// confirmed position (pg2sink stops if the sink's start-up check then
    /// fails).
    #[arg(long = "sink.retry-timeout", env = "PG2SINK_SINK_RETRY_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub sink_retry_timeout: Duration,

    #[command(flatten)]
    pub bigquery: BigQueryArgs,

    #[command(flatten)]
    pub elasticsearch: ElasticsearchArgs,

    #[command(flatten)]
    pub postgres: PostgresSinkArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// High availability: when another pg2sink with the same publication
    /// is active, wait as a standby and take over (slot, imports, sink) as
    /// soon as it stops or dies. false: fail at once instead.
    #[arg(long = "ha", env = "PG2SINK_HA", default_value_t = true, action = clap::ArgAction::Set)]
    pub ha: bool,

    /// Print each decoded replication message, one per line, instead of
    /// writing to the sink. Confirms nothing.
    #[arg(long = "decode-only", env = "PG2SINK_DECODE_ONLY")]
    pub decode_only: bool,

    /// Make the slot a failover slot (PostgreSQL 17+), synchronised to
    /// standbys that have sync_replication_slots on, so streaming can go on
    /// from a promoted standby. `true` creates (or alters) the slot with
    /// FAILOVER, `false` without; unset leaves an existing slot as it is.
    #[arg(long = "slot.failover", env = "PG2SINK_SLOT_FAILOVER", action = clap::ArgAction::Set, default_missing_value = "true", num_args = 0..=1, require_equals = true, value_name = "BOOL")]
    pub slot_failover: Option<bool>,

    /// Keep the publication equal to the tables of the watched schemas.
    #[arg(long = "subscription-manager.enabled", env = "PG2SINK_SUBSCRIPTION_MANAGER_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub manager_enabled: bool,

    /// Schemas whose base tables are captured (repeatable).
    #[arg(
        long = "subscription-manager.schema",
        env = "PG2SINK_SUBSCRIPTION_MANAGER_SCHEMA",
        default_value = "public",
        value_delimiter = ','
    )]
    pub manager_schemas: Vec<String>,

    /// Capture only these tables, as schema.table (repeatable).
    #[arg(
        long = "subscription-manager.include",
        env = "PG2SINK_SUBSCRIPTION_MANAGER_INCLUDE",
        value_delimiter = ','
    )]
    pub manager_include: Vec<String>,

    /// Never capture these tables, as schema.table (repeatable).
    #[arg(
        long = "subscription-manager.exclude",
        env = "PG2SINK_SUBSCRIPTION_MANAGER_EXCLUDE",
        value_delimiter = ','
    )]
    pub manager_exclude: Vec<String>,

    /// How often the subscription manager re-reads the catalog.
    #[arg(long = "subscription-manager.poll-interval", env = "PG2SINK_SUBSCRIPTION_MANAGER_POLL_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub manager_poll_interval: Duration,

    /// Set REPLICA IDENTITY FULL on watched tables that have no primary key
    /// and no replica identity, so they can be captured (otherwise they are
    /// skipped with a warning). This changes the tables: their UPDATEs and
    /// DELETEs then log the whole old row.
    #[arg(long = "subscription-manager.replica-identity-full", env = "PG2SINK_SUBSCRIPTION_MANAGER_REPLICA_IDENTITY_FULL", default_value_t = false, action = clap::ArgAction::Set, default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub manager_replica_identity_full: bool,

    /// Import workers: tables imported in parallel (0 disables imports).
    #[arg(
        long = "import-worker-count",
        env = "PG2SINK_IMPORT_WORKER_COUNT",
        default_value_t = 2
    )]
    pub import_workers: usize,

    /// Rows per import chunk (one short statement each).
    #[arg(long = "import-worker.batch-limit", env = "PG2SINK_IMPORT_WORKER_BATCH_LIMIT", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub import_batch_limit: u32,

    /// Bytes (as COPY sends rows) an import chunk aims under: chunks of
    /// wide rows hold fewer than the batch limit, which bounds memory.
    #[arg(long = "import-worker.batch-bytes", env = "PG2SINK_IMPORT_WORKER_BATCH_BYTES", default_value_t = 4 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub import_batch_bytes: u64,

    /// Connections per import worker that read chunks of its table side by
    /// side (each worker also holds one control connection). 1 reads one
    /// chunk at a time and skips finding chunk boundaries first.
    #[arg(long = "import-worker.readers", env = "PG2SINK_IMPORT_WORKER_READERS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub import_readers: u32,

    /// How long a chunk waits for the stream to reach its high watermark
    /// before it is read again.
    #[arg(long = "import-worker.chunk-timeout", env = "PG2SINK_IMPORT_WORKER_CHUNK_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub import_chunk_timeout: Duration,

    /// How often a standby status update is sent to the server.
    #[arg(long = "status-interval", env = "PG2SINK_STATUS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,

    /// How long the replication connection may stay silent before it is
    /// taken for dead and reopened (a reply is requested after a third of
    /// it). "auto": the server's wal_sender_timeout (60s if disabled), at
    /// least 10s.
    #[arg(long = "replication-timeout", env = "PG2SINK_REPLICATION_TIMEOUT", default_value = "auto", value_parser = parse_auto_duration, value_name = "DURATION|auto")]
    pub replication_timeout: AutoDuration,

    /// How long a query connection that sent a request may hear nothing
    /// back before it is taken for dead and reopened; 0 disables.
    #[arg(long = "silence-timeout", env = "PG2SINK_SILENCE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub silence_timeout: Duration,

    /// HTTP address (host:port) serving /metrics, the API under /api/ and
    /// the web page at /; port 0 picks a free port; "off" disables.
    #[arg(
        long = "metrics-address",
        env = "PG2SINK_METRICS_ADDRESS",
        default_value = "127.0.0.1:9525"
    )]
    pub metrics_address: String,

    /// Bearer token the API's changing calls (add, stop, resync) require.
    /// Without one, a server bound to a non-loopback address is read-only.
    #[arg(long = "api.token", env = "PG2SINK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,

    /// A file holding the API token (--api.token).
    #[arg(
        long = "api.token-file",
        id = "api.token-file",
        env = "PG2SINK_API_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub api_token_file: Option<PathBuf>,

    /// Host names (or IPs), each optionally with :port, under which the API
    /// and web page may be reached besides the address they are served on
    /// and localhost (for a DNS name, a proxy or a forwarded port); other
    /// Host headers are refused, which defeats DNS rebinding.
    #[arg(
        long = "api.allowed-hosts",
        env = "PG2SINK_API_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub api_allowed_hosts: Vec<String>,

    /// While the captured tables are quiet, write a heartbeat message this
    /// often so the slot keeps advancing past WAL written elsewhere; 0 disables.
    #[arg(long = "heartbeat-interval", env = "PG2SINK_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
}

impl SourceArgs {
    /// The connection URL (from --url, PG2SINK_URL or their file), for
    /// [`crate::pg::settings::ConnectionConfig::from_env`].
    pub fn url(&self) -> Option<&str> {
        self.url.as_ref().map(Secret::expose)
    }
}

/// `--sink=bigquery` settings.
#[derive(Args, Debug, Clone)]
pub struct BigQueryArgs {
    /// BigQuery sink: the Google Cloud project holding the dataset.
    #[arg(
        long = "sink.bigquery.project-id",
        env = "PG2SINK_SINK_BIGQUERY_PROJECT_ID"
    )]
    pub project_id: Option<String>,

    /// BigQuery sink: the dataset (created if missing).
    #[arg(
        long = "sink.bigquery.dataset",
        env = "PG2SINK_SINK_BIGQUERY_DATASET",
        default_value = "pg2sink"
    )]
    pub dataset: String,

    /// BigQuery sink: where a dataset pg2sink creates lives.
    #[arg(
        long = "sink.bigquery.location",
        env = "PG2SINK_SINK_BIGQUERY_LOCATION",
        default_value = "US"
    )]
    pub location: String,

    /// BigQuery sink: default table expiration of a dataset pg2sink creates
    /// (e.g. 30d); none by default.
    #[arg(long = "sink.bigquery.table-expiration", env = "PG2SINK_SINK_BIGQUERY_TABLE_EXPIRATION", value_parser = humantime::parse_duration)]
    pub table_expiration: Option<Duration>,

    /// BigQuery sink: a service-account key file (JSON); otherwise the
    /// application-default credentials (GOOGLE_APPLICATION_CREDENTIALS,
    /// gcloud, the metadata server). None are used with --sink.bigquery.endpoint alone.
    #[arg(
        long = "sink.bigquery.credentials",
        env = "PG2SINK_SINK_BIGQUERY_CREDENTIALS"
    )]
    pub credentials: Option<PathBuf>,

    /// BigQuery sink: the REST endpoint, for emulators (default
    /// https://bigquery.googleapis.com).
    #[arg(
        long = "sink.bigquery.endpoint",
        env = "PG2SINK_SINK_BIGQUERY_ENDPOINT"
    )]
    pub endpoint: Option<String>,

    /// BigQuery sink: rows per insertAll request.
    #[arg(long = "sink.bigquery.batch-rows", env = "PG2SINK_SINK_BIGQUERY_BATCH_ROWS", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=50000))]
    pub batch_rows: u32,
}

/// `--sink=elasticsearch` settings.
#[derive(Args, Debug, Clone)]
pub struct ElasticsearchArgs {
    /// Elasticsearch sink: a node's URL (repeatable; the next is tried when
    /// one cannot be reached).
    #[arg(
        long = "sink.elasticsearch.url",
        env = "PG2SINK_SINK_ELASTICSEARCH_URL",
        default_value = "http://127.0.0.1:9200",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub urls: Vec<String>,

    /// Elasticsearch sink: user for basic authentication.
    #[arg(
        long = "sink.elasticsearch.username",
        env = "PG2SINK_SINK_ELASTICSEARCH_USERNAME"
    )]
    pub username: Option<String>,

    /// Elasticsearch sink: password for basic authentication.
    #[arg(
        long = "sink.elasticsearch.password",
        env = "PG2SINK_SINK_ELASTICSEARCH_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,

    /// Elasticsearch sink: a file holding the password (--sink.elasticsearch.password).
    #[arg(
        long = "sink.elasticsearch.password-file",
        id = "sink.elasticsearch.password-file",
        env = "PG2SINK_SINK_ELASTICSEARCH_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,

    /// Elasticsearch sink: an API key (the encoded form), instead of a user.
    #[arg(
        long = "sink.elasticsearch.api-key",
        env = "PG2SINK_SINK_ELASTICSEARCH_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<Secret>,

    /// Elasticsearch sink: a file holding the API key (--sink.elasticsearch.api-key).
    #[arg(
        long = "sink.elasticsearch.api-key-file",
        id = "sink.elasticsearch.api-key-file",
        env = "PG2SINK_SINK_ELASTICSEARCH_API_KEY_FILE",
        value_name = "FILE"
    )]
    pub api_key_file: Option<PathBuf>,

    /// Elasticsearch sink: PEM file of the CA that signed the cluster's certificate.
    #[arg(
        long = "sink.elasticsearch.ca-file",
        env = "PG2SINK_SINK_ELASTICSEARCH_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,

    /// Elasticsearch sink: indices are named <prefix><schema>.<table>, lowercased.
    #[arg(
        long = "sink.elasticsearch.index-prefix",
        env = "PG2SINK_SINK_ELASTICSEARCH_INDEX_PREFIX",
        default_value = ""
    )]
    pub index_prefix: String,

    /// Elasticsearch sink: actions per _bulk request.
    #[arg(long = "sink.elasticsearch.bulk-size", env = "PG2SINK_SINK_ELASTICSEARCH_BULK_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub bulk_size: u32,
}

/// `--sink=postgres` settings.
#[derive(Args, Debug, Clone)]
pub struct PostgresSinkArgs {
    /// Postgres sink: the target database, a postgres:// URL or libpq
    /// key=value string (PG* variables are not read for it).
    #[arg(
        long = "sink.postgres.url",
        value_name = "URL",
        env = "PG2SINK_SINK_POSTGRES_URL",
        hide_env_values = true
    )]
    pub postgres_url: Option<Secret>,

    /// Postgres sink: a file holding the target's URL (--sink.postgres.url).
    #[arg(
        long = "sink.postgres.url-file",
        id = "sink.postgres.url-file",
        env = "PG2SINK_SINK_POSTGRES_URL_FILE",
        value_name = "FILE"
    )]
    pub postgres_url_file: Option<PathBuf>,

    /// Postgres sink: schema of the target tables (created if missing).
    /// Default: the source table's own schema name.
    #[arg(
        long = "sink.postgres.schema",
        env = "PG2SINK_SINK_POSTGRES_SCHEMA",
        value_name = "SCHEMA"
    )]
    pub postgres_schema: Option<String>,

    /// Postgres sink: schema of the table in the target that stores the
    /// last applied position (created if missing).
    #[arg(
        long = "sink.postgres.state-schema",
        value_name = "SCHEMA",
        env = "PG2SINK_SINK_POSTGRES_STATE_SCHEMA",
        default_value = "pg2sink"
    )]
    pub postgres_state_schema: String,

    /// Postgres sink: rows per statement.
    #[arg(long = "sink.postgres.batch-rows", value_name = "ROWS", env = "PG2SINK_SINK_POSTGRES_BATCH_ROWS", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub postgres_batch_rows: u32,
}

/// How the Kafka sink writes a change as a message value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KafkaFormat {
    /// The Modification as JSON (as the file sink writes it).
    Json,
    /// The row as Avro binary, from the table's Avro schema.
    Avro,
}

/// `--sink=kafka` settings.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka sink: bootstrap brokers, host:port (repeatable or comma-separated).
    #[arg(
        long = "sink.kafka.brokers",
        env = "PG2SINK_SINK_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        value_delimiter = ','
    )]
    pub brokers: Vec<String>,

    /// Kafka sink: topics are named <prefix>.<schema>.<table>; schemas go to
    /// <prefix>._schemas.
    #[arg(
        long = "sink.kafka.topic-prefix",
        env = "PG2SINK_SINK_KAFKA_TOPIC_PREFIX",
        default_value = "pg2sink"
    )]
    pub topic_prefix: String,

    /// Kafka sink: partitions of a topic pg2sink creates (existing topics are
    /// used as they are).
    #[arg(long = "sink.kafka.partitions", env = "PG2SINK_SINK_KAFKA_PARTITIONS", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// Kafka sink: replication factor of a topic pg2sink creates.
    #[arg(long = "sink.kafka.replication-factor", env = "PG2SINK_SINK_KAFKA_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,

    /// Kafka sink: message values as the JSON Modification or the row in Avro binary.
    #[arg(
        long = "sink.kafka.format",
        env = "PG2SINK_SINK_KAFKA_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub format: KafkaFormat,

    /// Kafka sink: follow each delete (and the old key of an update that
    /// changed the key) with a tombstone, a message with the key and no
    /// value, so that log compaction can drop the key.
    #[arg(long = "sink.kafka.tombstones", env = "PG2SINK_SINK_KAFKA_TOMBSTONES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tombstones: bool,

    /// Kafka sink: a Confluent schema registry; Avro values are then framed
    /// with the registered schema's id (subject <topic>-value).
    #[arg(
        long = "sink.kafka.schema-registry-url",
        env = "PG2SINK_SINK_KAFKA_SCHEMA_REGISTRY_URL",
        hide_env_values = true
    )]
    pub schema_registry_url: Option<Secret>,

    /// Kafka sink: a file holding the schema registry's URL
    /// (--sink.kafka.schema-registry-url), when it carries a password.
    #[arg(
        long = "sink.kafka.schema-registry-url-file",
        id = "sink.kafka.schema-registry-url-file",
        env = "PG2SINK_SINK_KAFKA_SCHEMA_REGISTRY_URL_FILE",
        value_name = "FILE"
    )]
    pub schema_registry_url_file: Option<PathBuf>,

    /// Kafka sink: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long = "sink.kafka.security-protocol",
        env = "PG2SINK_SINK_KAFKA_SECURITY_PROTOCOL"
    )]
    pub security_protocol: Option<String>,

    /// Kafka sink: SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
    #[arg(
        long = "sink.kafka.sasl-mechanism",
        env = "PG2SINK_SINK_KAFKA_SASL_MECHANISM"
    )]
    pub sasl_mechanism: Option<String>,

    /// Kafka sink: SASL user name.
    #[arg(
        long = "sink.kafka.sasl-username",
        env = "PG2SINK_SINK_KAFKA_SASL_USERNAME"
    )]
    pub sasl_username: Option<String>,

    /// Kafka sink: SASL password.
    #[arg(
        long = "sink.kafka.sasl-password",
        env = "PG2SINK_SINK_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,

    /// Kafka sink: a file holding the SASL password (--sink.kafka.sasl-password).
    #[arg(
        long = "sink.kafka.sasl-password-file",
        id = "sink.kafka.sasl-password-file",
        env = "PG2SINK_SINK_KAFKA_SASL_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub sasl_password_file: Option<PathBuf>,

    /// Kafka sink: PEM file of the CA that signed the brokers' certificates.
    #[arg(
        id = "kafka_ca_file",
        long = "sink.kafka.ca-file",
        env = "PG2SINK_SINK_KAFKA_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,

    /// Kafka sink: a librdkafka property, KEY=VALUE (repeatable), applied
    /// after pg2sink's own settings.
    #[arg(
        long = "sink.kafka.property",
        env = "PG2SINK_SINK_KAFKA_PROPERTY",
        value_name = "KEY=VALUE",
        value_parser = crate::sink::kafka::config::parse_property,
        hide_env_values = true
    )]
    pub properties: Vec<(String, Secret)>,
}

/// `--sink=nats` settings.
#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS sink: a server URL (nats:// or tls://; repeatable or
    /// comma-separated). user:password@ in the URL is accepted.
    #[arg(
        long = "sink.nats.url",
        id = "nats-url",
        value_name = "URL",
        env = "PG2SINK_SINK_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub urls: Vec<String>,

    /// NATS sink: user name (with --sink.nats.password).
    #[arg(
        long = "sink.nats.user",
        id = "nats-user",
        value_name = "USER",
        env = "PG2SINK_SINK_NATS_USER"
    )]
    pub user: Option<String>,

    /// NATS sink: password of --sink.nats.user.
    #[arg(
        long = "sink.nats.password",
        id = "nats-password",
        value_name = "PASSWORD",
        env = "PG2SINK_SINK_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,

    /// NATS sink: a file holding the password (--sink.nats.password).
    #[arg(
        long = "sink.nats.password-file",
        id = "sink.nats.password-file",
        value_name = "FILE",
        env = "PG2SINK_SINK_NATS_PASSWORD_FILE"
    )]
    pub password_file: Option<PathBuf>,

    /// NATS sink: an authentication token.
    #[arg(
        long = "sink.nats.token",
        id = "nats-token",
        value_name = "TOKEN",
        env = "PG2SINK_SINK_NATS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Secret>,

    /// NATS sink: a file holding the authentication token (--sink.nats.token).
    #[arg(
        long = "sink.nats.token-file",
        id = "sink.nats.token-file",
        value_name = "FILE",
        env = "PG2SINK_SINK_NATS_TOKEN_FILE"
    )]
    pub token_file: Option<PathBuf>,

    /// NATS sink: a .creds file (user JWT and NKey seed, as nsc writes it).
    #[arg(
        long = "sink.nats.creds-file",
        id = "nats-creds-file",
        value_name = "FILE",
        env = "PG2SINK_SINK_NATS_CREDS_FILE"
    )]
    pub creds_file: Option<PathBuf>,

    /// NATS sink: PEM file of the CA that signed the server's certificate
    /// (TLS is then required).
    #[arg(
        long = "sink.nats.ca-file",
        id = "nats-ca-file",
        value_name = "FILE",
        env = "PG2SINK_SINK_NATS_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,

    /// NATS sink: client certificate (PEM), for servers that verify clients.
    #[arg(
        long = "sink.nats.client-cert",
        id = "nats-client-cert",
        value_name = "FILE",
        env = "PG2SINK_SINK_NATS_CLIENT_CERT"
    )]
    pub client_cert: Option<PathBuf>,

    /// NATS sink: the client certificate's private key (PEM).
    #[arg(
        long = "sink.nats.client-key",
        id = "nats-client-key",
        value_name = "FILE",
        env = "PG2SINK_SINK_NATS_CLIENT_KEY"
    )]
    pub client_key: Option<PathBuf>,

    /// NATS sink: subjects are <prefix>.<schema>.<table> (schemas on
    /// <prefix>._schemas.<schema>.<table>).
    #[arg(
        long = "sink.nats.subject-prefix",
        id = "nats-subject-prefix",
        value_name = "PREFIX",
        env = "PG2SINK_SINK_NATS_SUBJECT_PREFIX",
        default_value = "pg2sink"
    )]
    pub subject_prefix: String,

    /// NATS sink: the JetStream stream taking <prefix>.> (created if missing).
    #[arg(
        long = "sink.nats.stream",
        id = "nats-stream",
        value_name = "STREAM",
        env = "PG2SINK_SINK_NATS_STREAM",
        default_value = "PG2SINK"
    )]
    pub stream: String,

    /// NATS sink: duplicate window of a stream pg2sink creates; changes sent
    /// again within it (after a restart) are discarded by JetStream.
    #[arg(long = "sink.nats.duplicate-window", id = "nats-duplicate-window", value_name = "DURATION", env = "PG2SINK_SINK_NATS_DUPLICATE_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub duplicate_window: Duration,

    /// NATS sink: replicas of a stream pg2sink creates (in a cluster).
    #[arg(long = "sink.nats.replicas", id = "nats-replicas", value_name = "N", env = "PG2SINK_SINK_NATS_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=5))]
    pub replicas: u32,

    /// NATS sink: messages published and not yet acknowledged, at most.
    #[arg(long = "sink.nats.max-in-flight", id = "nats-max-in-flight", value_name = "N", env = "PG2SINK_SINK_NATS_MAX_IN_FLIGHT", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,
}

/// A duration, or `auto` for one derived at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoDuration {
    Auto,
    Fixed(Duration),
}

impl AutoDuration {
    /// The fixed duration, `None` for `auto`.
    pub fn fixed(self) -> Option<Duration> {
        match self {
            AutoDuration::Auto => None,
            AutoDuration::Fixed(d) => Some(d),
        }
    }
}

fn parse_auto_duration(text: &str) -> Result<AutoDuration, String> {
    if text.trim() == "auto" {
        return Ok(AutoDuration::Auto);
    }
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected a duration such as 30s, or auto)"))?;
    if duration < Duration::from_secs(1) {
        return Err(
            "must be at least 1s (or auto): shorter would take a quiet server for a dead one"
                .into(),
        );
    }
    Ok(AutoDuration::Fixed(duration))
}
